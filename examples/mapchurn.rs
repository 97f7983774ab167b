//! A workload that keeps changing its own memory map: anonymous `mmap`s, `munmap`s, `mremap`s
//! that grow, shrink and move regions, `mprotect`s that split a region into a read-only prefix
//! and a writable rest, and heap blocks from `Vec` that grow and shrink the `brk` heap (small
//! blocks) or come from malloc's own mmaps (large ones). Contents stay deterministic, so a run
//! restarted from a checkpoint must print the same digest as an uninterrupted one: this is the
//! example that tests whether restore re-creates the regions of the moment, not of the start.
//!
//! Usage: `mapchurn [SIZE [STEPS]]`
//! - SIZE = budget of live memory in MiB (default 64): mapped regions plus heap blocks stay
//!   below it; max RSS ≈ 1.1·SIZE MiB (malloc keeps some freed heap).
//! - STEPS = operations (default 12000); time ≈ STEPS · SIZE (each operation touches up to
//!   SIZE/8 MiB).
//!
//! Measured on the 2-core development machine, release build (the dev profile, opt-level 1,
//! takes up to 1.7× as long), with `/usr/bin/time`: CPU (user) time, wall time, max RSS.
//! Other sessions shared the machine meanwhile, so the wall times are inflated.
//!
//! | command                       | CPU    | wall   | max RSS |
//! | ----------------------------- | ------ | ------ | ------- |
//! | `mapchurn 64 4000`            | 0.4 s  | 1.4 s  | 63 MiB  |
//! | `mapchurn 64 12000` (default) | 1.3 s  | 2.9 s  | 75 MiB  |
//! | `mapchurn 256 12000`          | 4.8 s  | 16.6 s | 290 MiB |
//! | `mapchurn 256 32000`          | 13 s   | 45 s   | 290 MiB |
//! | `mapchurn 512 30000`          | 24 s   | 71 s   | 552 MiB |
//!
//! Most of the rest of the wall time is system time: mapping, zeroing and unmapping pages.
//!
//! Output: one header line, the count of each operation, then `digest <hex>` over the contents
//! of every region and block when it was released and of all of them at the end.
//!
//! # Safety
//!
//! The unsafe code is confined to `Mapping`, which owns one private anonymous mapping: it is
//! created by `mmap` and released by `munmap` in `Drop` only; `mremap` replaces its address and
//! length together; the slices it hands out cover exactly the mapped length (always readable)
//! or the part after its read-only prefix (writable), and borrow the `Mapping`, so none
//! outlives a remap or an unmap.
#![allow(unsafe_code)]

use ckpt_suite::workload::{Args, Digest, Rng, Spec, print_digest, say};
use std::io;
use std::ptr::NonNull;

const SPEC: Spec = Spec {
    size_help: "SIZE: live memory budget in MiB (regions plus heap blocks)",
    steps_help: "STEPS: number of map/unmap/remap/protect/alloc/free/write operations",
    default_size: 64,
    default_steps: 12000,
    min_size: 1,
    max_size: 1 << 16,
};

const PAGE: usize = 4096;
const WORDS_PER_PAGE: usize = PAGE / 8;
const REGION_SLOTS: usize = 24;
const BLOCK_SLOTS: usize = 32;

/// One private anonymous mapping of whole pages, of `u64` words; the first `ro_pages` pages
/// are read-only, the rest read-write.
struct Mapping {
    ptr: NonNull<u64>,
    pages: usize,
    ro_pages: usize,
}

impl Mapping {
    fn new(pages: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing
        // cannot alias anything we hold; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u64>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping {
            ptr,
            pages,
            ro_pages: 0,
        })
    }

    fn words(&self) -> &[u64] {
        // SAFETY: the mapping is `pages` pages long, page-aligned, always readable, zero-filled
        // or written by us (so initialised), and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.pages * WORDS_PER_PAGE) }
    }

    /// The writable part: every page after the read-only prefix.
    fn writable(&mut self) -> &mut [u64] {
        let skip = self.ro_pages * WORDS_PER_PAGE;
        // SAFETY: pages ro_pages..pages are mapped read-write (see `protect_prefix`), the
        // range lies inside the mapping, and `&mut self` makes this the only live borrow.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().add(skip),
                (self.pages - self.ro_pages) * WORDS_PER_PAGE,
            )
        }
    }

    /// Makes the first `ro` pages read-only and the rest read-write; a prefix strictly inside
    /// the region splits it into two VMAs.
    fn protect_prefix(&mut self, ro: usize) -> io::Result<()> {
        let ro = ro.min(self.pages);
        let base = self.ptr.as_ptr().cast::<libc::c_void>();
        // SAFETY: both ranges lie inside our own mapping; changing its protection affects no
        // Rust reference, since slices borrow `self` and none is live across this call.
        let rc = unsafe {
            let a = libc::mprotect(base, ro * PAGE, libc::PROT_READ);
            let b = libc::mprotect(
                base.cast::<u8>().add(ro * PAGE).cast(),
                (self.pages - ro) * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
            );
            a | b
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.ro_pages = ro;
        Ok(())
    }

    /// Grows or shrinks the mapping to `pages`, letting the kernel move it; the new pages read
    /// as zero. The whole region is made writable first: `mremap` needs one VMA.
    fn remap(&mut self, pages: usize) -> io::Result<()> {
        self.protect_prefix(0)?;
        // SAFETY: the old range is exactly our mapping; with MREMAP_MAYMOVE the kernel either
        // returns the new address (the old one is then invalid, and we replace it here before
        // any slice can be taken) or fails and leaves the mapping unchanged.
        let p = unsafe {
            libc::mremap(
                self.ptr.as_ptr().cast(),
                self.pages * PAGE,
                pages * PAGE,
                libc::MREMAP_MAYMOVE,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.ptr = NonNull::new(p.cast::<u64>())
            .ok_or_else(|| io::Error::other("mremap returned null"))?;
        self.pages = pages;
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own the mapping and no slice of it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.pages * PAGE);
        }
    }
}

/// A cheap word-wise fold of a region's contents (an FNV-1a byte loop over hundreds of MiB
/// would dominate the run); its result goes into the FNV-1a digest.
fn fold(words: &[u64]) -> u64 {
    words.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29)
    })
}

/// Fills `words` with a deterministic stream from `seed`.
fn fill(words: &mut [u64], seed: u64) {
    let mut rng = Rng::new(seed);
    words.iter_mut().for_each(|w| *w = rng.next_u64());
}

#[derive(Default)]
struct Counts {
    mmap: u64,
    munmap: u64,
    mremap: u64,
    mprotect: u64,
    write: u64,
    alloc: u64,
    free: u64,
}

struct Churn {
    rng: Rng,
    digest: Digest,
    budget: usize,
    live: usize,
    regions: Vec<Option<Mapping>>,
    blocks: Vec<Option<Vec<u64>>>,
    counts: Counts,
}

impl Churn {
    fn release_region(&mut self, slot: usize) {
        if let Some(m) = self.regions[slot].take() {
            self.digest.u64(fold(m.words()));
            self.live -= m.pages * PAGE;
            self.counts.munmap += 1;
        }
    }

    fn release_block(&mut self, slot: usize) {
        if let Some(b) = self.blocks[slot].take() {
            self.digest.u64(fold(&b));
            self.live -= b.len() * 8;
            self.counts.free += 1;
        }
    }

    /// A size in pages for a new region or block: mostly small, sometimes up to budget/8.
    fn pages(&mut self) -> usize {
        let max = (self.budget / PAGE / 8).max(1) as u64;
        let limit = if self.rng.below(4) == 0 {
            max
        } else {
            (max / 16).max(1)
        };
        1 + self.rng.below(limit) as usize
    }

    fn step(&mut self) -> io::Result<()> {
        let op = self.rng.below(100);
        let slot = self.rng.below(REGION_SLOTS as u64) as usize;
        let bslot = self.rng.below(BLOCK_SLOTS as u64) as usize;
        match op {
            0..=19 => {
                self.release_region(slot);
                let pages = self.pages();
                if self.live + pages * PAGE <= self.budget {
                    let mut m = Mapping::new(pages)?;
                    let seed = self.rng.next_u64();
                    fill(m.writable(), seed);
                    self.live += pages * PAGE;
                    self.regions[slot] = Some(m);
                    self.counts.mmap += 1;
                }
            }
            20..=29 => self.release_region(slot),
            30..=44 => {
                let new_pages = self.pages();
                let seed = self.rng.next_u64();
                let live = self.live;
                let budget = self.budget;
                if let Some(m) = self.regions[slot].as_mut() {
                    let old = m.pages;
                    if live - old * PAGE + new_pages * PAGE <= budget {
                        m.remap(new_pages)?;
                        if new_pages > old {
                            fill(&mut m.writable()[old * WORDS_PER_PAGE..], seed);
                        }
                        self.live = live - old * PAGE + new_pages * PAGE;
                        self.counts.mremap += 1;
                    }
                }
            }
            45..=54 => {
                let r = self.rng.next_u64();
                if let Some(m) = self.regions[slot].as_mut() {
                    let ro = if m.ro_pages > 0 {
                        0
                    } else {
                        (r % (m.pages as u64 + 1)) as usize
                    };
                    m.protect_prefix(ro)?;
                    self.counts.mprotect += 1;
                }
            }
            55..=74 => {
                let seed = self.rng.next_u64();
                if let Some(m) = self.regions[slot].as_mut() {
                    // Rewrite a stride of the writable part: some pages dirty, some not.
                    let words = m.writable();
                    let mut rng = Rng::new(seed);
                    let stride = 1 + rng.below(4 * WORDS_PER_PAGE as u64) as usize;
                    for w in words.iter_mut().step_by(stride) {
                        *w = w.rotate_left(7) ^ rng.next_u64();
                    }
                    self.counts.write += 1;
                }
            }
            75..=89 => {
                self.release_block(bslot);
                // Mostly small blocks (below malloc's mmap threshold: they move `brk`).
                let words = if self.rng.below(4) == 0 {
                    self.pages() * WORDS_PER_PAGE
                } else {
                    512 + self.rng.below(12 * 1024) as usize
                };
                if self.live + words * 8 <= self.budget {
                    let mut b = vec![0u64; words];
                    fill(&mut b, self.rng.next_u64());
                    self.live += words * 8;
                    self.blocks[bslot] = Some(b);
                    self.counts.alloc += 1;
                }
            }
            _ => self.release_block(bslot),
        }
        Ok(())
    }
}

fn run(budget_mib: usize, steps: usize) -> io::Result<()> {
    let mut churn = Churn {
        rng: Rng::new(0x7),
        digest: Digest::new(),
        budget: budget_mib << 20,
        live: 0,
        regions: (0..REGION_SLOTS).map(|_| None).collect(),
        blocks: (0..BLOCK_SLOTS).map(|_| None).collect(),
        counts: Counts::default(),
    };
    for _ in 0..steps {
        churn.step()?;
    }
    for slot in 0..REGION_SLOTS {
        churn.release_region(slot);
    }
    for slot in 0..BLOCK_SLOTS {
        churn.release_block(slot);
    }
    let c = &churn.counts;
    say(&format!(
        "mapchurn: mmap {} munmap {} mremap {} mprotect {} write {} alloc {} free {}",
        c.mmap, c.munmap, c.mremap, c.mprotect, c.write, c.alloc, c.free
    ));
    print_digest(churn.digest.finish());
    Ok(())
}

fn main() {
    ckpt_suite::checkpointing_from_env();
    let Args { size, steps } = Args::parse(&SPEC);
    say(&format!("mapchurn: budget={size} MiB steps={steps}"));
    if let Err(e) = run(size, steps) {
        eprintln!("mapchurn: {e}");
        std::process::exit(1);
    }
}
