//! Dirty-tracker benchmark: the cost of a first write to a tracked page, and of a harvest.
//!
//! Run: `cargo bench --bench dirty`. Environment: `CKPT_BENCH_DIRTY_MIB=256` (size of the
//! first-write buffer), `CKPT_BENCH_SCAN_MIB=1024` (size of the harvested range),
//! `CKPT_BENCH_RUNS=5` (repetitions; the median is printed).
//!
//! First write: one byte written to every page of a buffer, timed per page, for
//! - the reference: an untracked buffer whose pages are already populated (a plain store that
//!   hits the TLB or a page walk, no fault), and, for scale, an untracked first touch (a
//!   page fault that allocates and zeroes a page);
//! - each tracker on populated pages (the write-protect fault alone) and on pages never
//!   touched (fault + allocation + zeroing + the tracker's work).
//!
//! Harvest: a populated range is tracked, a fraction of its pages is written (in runs of
//! `RUN_PAGES` pages at pseudo-random places, and for uffd-async also as scattered single pages;
//! the mprotect tracker is not given scattered single pages over a large range: each splits
//! the VMA, the process reaches `vm.max_map_count` and the tracker degrades to reporting the
//! whole range), and one harvest is timed: it reports the
//! written pages and protects them again. The range is populated before tracking, except in
//! the "never touched" rows, where only the written pages ever get memory (under uffd-async the
//! rest hold write-protect markers from `UFFD_FEATURE_WP_UNPOPULATED`).
//!
//! # Safety
//!
//! The benchmark maps its own anonymous buffers and writes only inside them.
#![allow(unsafe_code)]

use std::time::Instant;

use ckpt::dirty::{DirtyTracker, TrackerKind};

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;
/// Length of each dirty run in the clustered harvest pattern (32 KiB).
const RUN_PAGES: usize = 8;

/// An anonymous private mapping, unmapped on drop.
struct Buffer {
    addr: usize,
    len: usize,
}

impl Buffer {
    fn new(len: usize) -> Buffer {
        // SAFETY: a fresh anonymous mapping; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap {len} bytes");
        // Base pages only: a huge page would turn 512 first writes into one.
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        Buffer {
            addr: p as usize,
            len,
        }
    }

    fn pages(&self) -> usize {
        self.len / PAGE
    }

    fn populate(&self) {
        self.touch_all(1);
    }

    /// Writes one byte to every page, in order.
    fn touch_all(&self, v: u8) {
        for p in 0..self.pages() {
            self.touch(p, v);
        }
    }

    fn touch(&self, page: usize, v: u8) {
        // SAFETY: inside our mapping; volatile so every write happens.
        unsafe { core::ptr::write_volatile((self.addr + page * PAGE) as *mut u8, v) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: our mapping; nothing uses it after drop.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median over `runs` of `f()`, which returns nanoseconds per page.
fn measure(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    median((0..runs).map(|_| f()).collect())
}

fn time_touch(b: &Buffer) -> f64 {
    let t = Instant::now();
    b.touch_all(2);
    t.elapsed().as_nanos() as f64 / b.pages() as f64
}

/// ns/page of the first write to every page of a `len`-byte buffer under `tracker` (or none),
/// populated before tracking or not.
fn first_write(
    tracker: Option<&mut dyn DirtyTracker>,
    len: usize,
    populated: bool,
) -> Result<f64, String> {
    let b = Buffer::new(len);
    if populated {
        b.populate();
    }
    let Some(t) = tracker else {
        return Ok(time_touch(&b));
    };
    t.track(b.addr, len).map_err(|e| e.to_string())?;
    let ns = time_touch(&b);
    // Every page must have been seen, or the figure measures something else.
    let mut pages = 0;
    t.harvest(b.addr, b.addr + len, &mut |s, e| pages += (e - s) / PAGE)
        .map_err(|e| e.to_string())?;
    t.untrack(b.addr, len).map_err(|e| e.to_string())?;
    if pages != b.pages() {
        return Err(format!(
            "{} reported {pages} of {} written pages",
            t.name(),
            b.pages()
        ));
    }
    Ok(ns)
}

/// A small deterministic generator, so every run and tracker dirties the same pages.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % below
    }
}

/// Writes about `percent`% of the pages of `b`, in runs of `run` pages; returns how many.
fn dirty(b: &Buffer, percent: usize, run: usize, seed: u64) -> usize {
    let runs = b.pages() * percent / 100 / run;
    let slots = b.pages() / run;
    let mut rng = Lcg(seed);
    let mut written = vec![false; slots];
    let mut n = 0;
    while n < runs {
        let s = rng.next(slots);
        if !written[s] {
            written[s] = true;
            n += 1;
            for p in s * run..(s + 1) * run {
                b.touch(p, 3);
            }
        }
    }
    runs * run
}

/// Milliseconds of one harvest of a `len`-byte range (populated before tracking, or never
/// touched) with `percent`% written.
fn harvest_ms(
    t: &mut dyn DirtyTracker,
    len: usize,
    populated: bool,
    percent: usize,
    run: usize,
    runs: usize,
) -> Result<f64, String> {
    let b = Buffer::new(len);
    if populated {
        b.populate();
    }
    t.track(b.addr, len).map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for round in 0..runs {
        let want = dirty(&b, percent, run, 7 + round as u64);
        let mut got = 0;
        let start = Instant::now();
        t.harvest(b.addr, b.addr + len, &mut |s, e| got += (e - s) / PAGE)
            .map_err(|e| e.to_string())?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if got != want {
            return Err(format!(
                "{} reported {got} of {want} written pages",
                t.name()
            ));
        }
    }
    t.untrack(b.addr, len).map_err(|e| e.to_string())?;
    Ok(median(times))
}

fn main() {
    let len = env_usize("CKPT_BENCH_DIRTY_MIB", 256) * MIB;
    let scan_len = env_usize("CKPT_BENCH_SCAN_MIB", 1024) * MIB;
    let runs = env_usize("CKPT_BENCH_RUNS", 5).max(1);

    let mut trackers: Vec<Box<dyn DirtyTracker>> = Vec::new();
    for kind in TrackerKind::all() {
        match kind.open() {
            Ok(t) => trackers.push(t),
            Err(e) => println!("SKIPPED {kind}: {e}"),
        }
    }

    println!(
        "first write, {} MiB ({} pages), median of {runs}:",
        len / MIB,
        len / PAGE
    );
    let reference = measure(runs, || first_write(None, len, true).expect("untracked"));
    let first_touch = measure(runs, || first_write(None, len, false).expect("untracked"));
    println!(
        "  {:<44} {reference:>8.1} ns/page  (reference)",
        "untracked, populated"
    );
    println!(
        "  {:<44} {first_touch:>8.1} ns/page  {:>6.1}x reference",
        "untracked, first touch (fault + zero)",
        first_touch / reference
    );
    for t in &mut trackers {
        for populated in [true, false] {
            let what = format!(
                "{}, {}",
                t.name(),
                if populated {
                    "populated"
                } else {
                    "never touched"
                }
            );
            let mut err = None;
            let ns = measure(runs, || {
                first_write(Some(&mut **t), len, populated).unwrap_or_else(|e| {
                    err = Some(e);
                    f64::NAN
                })
            });
            match err {
                Some(e) => println!("  {what:<44} failed: {e}"),
                None if populated => println!(
                    "  {what:<44} {ns:>8.1} ns/page  {:>6.1}x reference",
                    ns / reference
                ),
                None => println!(
                    "  {what:<44} {ns:>8.1} ns/page  {:>6.1}x reference, {:.2}x first touch",
                    ns / reference,
                    ns / first_touch
                ),
            }
        }
    }

    println!("harvest of {} MiB, median of {runs}:", scan_len / MIB);
    for t in &mut trackers {
        let mut patterns = vec![(true, RUN_PAGES, format!("runs of {RUN_PAGES} pages"))];
        if t.kind() == TrackerKind::UffdAsync {
            patterns.push((true, 1, "scattered pages".to_owned()));
        }
        patterns.push((false, RUN_PAGES, "never touched before".to_owned()));
        for (populated, run, pattern) in &patterns {
            for percent in [0, 1, 5, 25] {
                let what = format!("{}, {percent:>2}% written, {pattern}", t.name());
                match harvest_ms(&mut **t, scan_len, *populated, percent, *run, runs) {
                    Ok(ms) => println!("  {what:<50} {ms:>8.2} ms"),
                    Err(e) => println!("  {what:<50} failed: {e}"),
                }
            }
        }
    }
}
