//! The restorer: lays this process's memory out as the image says and jumps into it.
//!
//! # Safety
//!
//! This is the one module that uses `MAP_FIXED`. It runs in two phases. The *plan* phase (no
//! allocation once the current memory map has been read) decides, for every current mapping,
//! whether it stays (identical to a saved one: same range, file, offset and protection) or goes,
//! and for every saved region how it is re-created; it checks that the code, the vDSO and the
//! program break will be where the image needs them, and only then blocks all signals. The
//! *body* runs on a private stack inside the plan's own mapping, which overlaps no saved region
//! and no current mapping; from there it unmaps, maps, reads page data straight from the image
//! into the target addresses with `pread` (every checksum was verified before the plan, with the
//! store locked), restores the thread pointer and resumes the saved register context. It touches
//! no heap memory and makes no call through the GOT or the PLT: only inline system calls, plain
//! loops and wrapping arithmetic (no overflow-panic paths), whatever the build profile. File
//! mappings that stay are never reset to the file, so a relocated GOT stays valid throughout.
#![allow(unsafe_code)]

use core::ffi::c_void;

use super::arch::{self, Context};
use super::maps;
use super::mem::{Mapping, PAGE, page_ceil};
use super::syscall;
use crate::image::*;

/// What the restored process needs after the jump to re-create its kernel state.
#[repr(C)]
#[derive(Debug)]
pub struct RestoreInfo {
    /// The generation restored.
    pub generation: u64,
    /// The next generation number to write.
    pub next_gen: u64,
    /// Store directory and lock descriptors opened by the restoring process.
    pub dir_fd: i32,
    /// See `dir_fd`.
    pub lock_fd: i32,
    /// Open files to re-create.
    pub files: &'static [FileRec],
    /// Signal dispositions.
    pub signals: &'static [SignalRec],
    /// The saved process record (cwd, umask, altstack, rseq).
    pub process: ProcessRec,
    /// Strings the records refer to.
    pub strings: &'static [u8],
    /// When the restore started (monotonic ns), and bytes of page data read.
    pub started_ns: u64,
    /// Bytes of page data.
    pub bytes: u64,
    /// The plan mapping, to be unmapped once this info has been consumed.
    pub plan_range: (usize, usize),
    /// The restarting run's settings, which replace the ones remembered in the image.
    pub settings: Settings,
}

/// Settings of the restarting run that outlive the memory it replaces.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Checkpoint interval in nanoseconds, 0 for none.
    pub interval_ns: u64,
    /// Generations kept.
    pub keep: u32,
    /// Log level.
    pub log: crate::config::LogLevel,
    /// Fault-injection setting.
    pub fault: crate::fault::Spec,
}

/// The most page data the body reads with one `pread`: large enough to cost nothing in system
/// calls, small enough that the progress bar moves.
const RESTORE_PIECE: usize = 8 << 20;

const OP_MAP: u32 = 1;
const OP_RESET: u32 = 2;
const OP_HEAP: u32 = 3;
const OP_STACK: u32 = 4;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Op {
    kind: u32,
    prot_fill: i32,
    prot_final: i32,
    flags: i32,
    fd: i32,
    start: usize,
    len: usize,
    offset: u64,
    /// OP_STACK: where the current stack starts (it is grown down to `start`).
    aux: usize,
}

/// One page run as the body applies it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanRun {
    /// Address in the process.
    pub addr: usize,
    /// Bytes.
    pub len: usize,
    /// Offset of the data in its image file.
    pub off: u64,
    /// Index of the image file (0 = the newest of the chain).
    pub fd: u32,
    /// The pages read as zeros (no data).
    pub zero: bool,
}

#[repr(C)]
struct Plan {
    image_fds: &'static [i32],
    ctx: Context,
    fs_base: usize,
    brk: usize,
    unmaps: &'static [(usize, usize)],
    ops: &'static [Op],
    runs: &'static [PlanRun],
    /// The progress bar of the page data read (drawn only on a terminal, for large images).
    meter: crate::progress::Meter,
    info: RestoreInfo,
}

/// Bump allocation inside the plan mapping.
struct Bump {
    next: usize,
    end: usize,
}

impl Bump {
    fn take<T>(&mut self, n: usize) -> Option<&'static mut [T]> {
        let start = (self.next + 63) & !63;
        let end = start.checked_add(n.checked_mul(size_of::<T>())?)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        // SAFETY: [start, end) lies in the zeroed plan mapping, aligned, handed out once; the
        // element types used here are plain data valid when zeroed.
        Some(unsafe { core::slice::from_raw_parts_mut(start as *mut T, n) })
    }

    fn copy<T: Copy>(&mut self, from: &[T]) -> Option<&'static [T]> {
        let to = self.take::<T>(from.len())?;
        to.copy_from_slice(from);
        Some(to)
    }
}

/// Why the plan phase gave up (nothing has been changed yet).
#[derive(Debug)]
pub struct PlanError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(s.into()))
}

const PLAN_STACK: usize = 512 << 10;
const MAPS_BUF: usize = 8 << 20;
const MAX_UNMAPS: usize = 64 << 10;

fn dev_of(st: &libc::stat) -> u64 {
    (libc::major(st.st_dev) as u64) << 32 | libc::minor(st.st_dev) as u64
}

/// Builds the plan and jumps into the image. `m` is the newest image's manifest, `runs` what
/// to apply (see `restore::merged_runs`), `image_fds` the chain's files, newest first.
/// Returns only on failure, before anything changed.
#[allow(clippy::too_many_arguments)]
pub fn restore_into(
    m: &Manifest,
    runs: &[PlanRun],
    image_fds: &[i32],
    dir_fd: i32,
    lock_fd: i32,
    next_gen: u64,
    settings: Settings,
    bytes: u64,
) -> Result<core::convert::Infallible, PlanError> {
    let debug = settings.log >= crate::config::LogLevel::Debug;
    let started_ns = syscall::monotonic_ns();
    // Everything that allocates happens first: the map of this process read afterwards is
    // then the one the body will find.
    let saved_ranges: Vec<(usize, usize)> = m
        .regions
        .iter()
        .map(|r| (r.start as usize, r.end as usize))
        .collect();
    let size = PLAN_STACK
        + MAPS_BUF
        + MAX_UNMAPS * 16
        + m.regions.len() * size_of::<Op>()
        + size_of_val(runs)
        + size_of_val(image_fds)
        + m.files.len() * size_of::<FileRec>()
        + m.signals.len() * size_of::<SignalRec>()
        + m.strings.len()
        + 64 * 1024;
    let size = page_ceil(size);
    let current = std::fs::read("/proc/self/maps")
        .map_err(|e| PlanError(format!("read /proc/self/maps: {e}")))?;
    let mut cur_ranges: Vec<(usize, usize)> = Vec::new();
    for e in maps::parse(&current) {
        let e = e.map_err(|_| PlanError("unparsable /proc/self/maps".into()))?;
        cur_ranges.push((e.start, e.end));
    }
    let base = find_gap(&saved_ranges, &cur_ranges, size)
        .ok_or_else(|| PlanError("no free address range for the restorer".into()))?;
    let plan_map = Mapping::anonymous_at(base, size)
        .map_err(|e| PlanError(format!("map restorer at {base:#x}: {e}")))?;
    let mut bump = Bump {
        next: plan_map.addr(),
        end: plan_map.addr() + plan_map.size(),
    };
    let stack = bump
        .take::<u8>(PLAN_STACK)
        .ok_or_else(|| PlanError("plan too small".into()))?;
    let stack_top = (stack.as_ptr() as usize + stack.len()) & !15;
    let too_small = || PlanError("plan too small".into());
    let info = RestoreInfo {
        generation: m.header.generation,
        next_gen,
        dir_fd,
        lock_fd,
        files: bump.copy(&m.files).ok_or_else(too_small)?,
        signals: bump.copy(&m.signals).ok_or_else(too_small)?,
        process: m.process,
        strings: bump.copy(&m.strings).ok_or_else(too_small)?,
        started_ns,
        bytes,
        plan_range: (plan_map.addr(), plan_map.addr() + plan_map.size()),
        settings,
    };
    let runs = bump.copy(runs).ok_or_else(too_small)?;
    let image_fds = bump.copy(image_fds).ok_or_else(too_small)?;
    let ops = bump.take::<Op>(m.regions.len() + 2).ok_or_else(too_small)?;
    let unmaps = bump
        .take::<(usize, usize)>(MAX_UNMAPS)
        .ok_or_else(too_small)?;
    let maps_buf = bump.take::<u8>(MAPS_BUF).ok_or_else(too_small)?;
    let plan_slot = bump.take::<Plan>(1).ok_or_else(too_small)?;
    let mut opened: [i32; 256] = [-1; 256];
    let mut n_opened = 0;

    // From here on: no allocation except to build an error.
    let result = (|| -> Result<(usize, usize), PlanError> {
        let len = syscall::read_file(b"/proc/self/maps\0", maps_buf)
            .map_err(|e| PlanError(format!("read /proc/self/maps: {e}")))?;
        let cur = &maps_buf[..len];
        let (mut n_ops, mut n_unmaps) = (0usize, 0usize);
        let code = restore_body as *const () as usize;
        let libc_code = [
            libc::memcpy as *const () as usize,
            libc::memset as *const () as usize,
        ];
        let p = &m.process;
        let mut cur_stack = None;
        let mut cur_heap_start = None;
        for e in maps::parse(cur) {
            let e = e.map_err(|_| PlanError("unparsable /proc/self/maps".into()))?;
            match e.path {
                b"[vdso]" if p.vdso != 0 && e.start as u64 != p.vdso => {
                    return err(format!(
                        "the vDSO moved ({:#x}, was {:#x}); is address randomisation on?",
                        e.start, p.vdso
                    ));
                }
                b"[vvar]" if p.vvar != 0 && e.start as u64 != p.vvar => {
                    return err("the vvar page moved");
                }
                b"[stack]" => cur_stack = Some((e.start, e.end)),
                b"[heap]" => cur_heap_start = Some(e.start),
                _ => {}
            }
        }
        let cur_brk_start = super::process::start_brk()
            .or(cur_heap_start)
            .unwrap_or_else(|| syscall::brk(0));
        if cur_brk_start as u64 != p.brk_start {
            return err(format!(
                "the program break starts at {cur_brk_start:#x}, the image's at {:#x}",
                p.brk_start
            ));
        }
        let Some(cur_stack) = cur_stack else {
            return err("this process has no [stack] mapping");
        };

        // Which current mappings stay: identical to a saved one that is not rebuilt.
        let identical = |e: &maps::MapEntry<'_>, r: &RegionRec| {
            e.start as u64 == r.start
                && e.end as u64 == r.end
                && e.prot as u32 == r.prot
                && e.shared == (r.flags & REGION_SHARED != 0)
                && if r.flags & REGION_FILE != 0 {
                    e.inode == r.ino && e.dev == r.dev && e.offset == r.offset
                } else {
                    e.inode == 0
                }
        };
        let mut kept_code = false;
        let mut kept_libc = [false; 2];
        for e in maps::parse(cur) {
            let e = e.map_err(|_| PlanError("unparsable /proc/self/maps".into()))?;
            let ours = e.start >= plan_map.addr() && e.end <= plan_map.addr() + plan_map.size();
            if ours || e.is_kernel_special() || e.path == b"[stack]" || e.path == b"[heap]" {
                continue;
            }
            let keep = m.regions.iter().any(|r| {
                r.flags & (REGION_SPECIAL | REGION_HEAP | REGION_STACK) == 0 && identical(&e, r)
            });
            if keep {
                kept_code |= (e.start..e.end).contains(&code);
                for (k, &a) in kept_libc.iter_mut().zip(&libc_code) {
                    *k |= (e.start..e.end).contains(&a);
                }
                continue;
            }
            if n_unmaps == unmaps.len() {
                return err("too many mappings to remove");
            }
            unmaps[n_unmaps] = (e.start, e.end);
            n_unmaps += 1;
        }
        if !kept_code || kept_libc.contains(&false) {
            return err(
                "the restorer's own code or the C library is not mapped where the image has it (different binary or libraries?)",
            );
        }

        for r in &m.regions {
            let (start, len) = (r.start as usize, (r.end - r.start) as usize);
            let saved = r.flags & REGION_SAVED != 0;
            let prot_final = r.prot as i32;
            let prot_fill = if saved {
                prot_final | libc::PROT_READ | libc::PROT_WRITE
            } else {
                prot_final
            };
            let mut op = Op {
                start,
                len,
                prot_fill,
                prot_final,
                fd: -1,
                ..Default::default()
            };
            if r.flags & REGION_SPECIAL != 0 {
                continue;
            } else if r.flags & REGION_HEAP != 0 {
                op.kind = OP_HEAP;
            } else if r.flags & REGION_STACK != 0 {
                op.kind = OP_STACK;
                op.aux = cur_stack.0;
            } else if maps::parse(cur).flatten().any(|e| identical(&e, r)) {
                op.kind = OP_RESET;
                // Only anonymous private memory is reset (to zeros) before its pages are read
                // back. File mappings keep their pages: a writable one is saved whole, a
                // read-only one has its modified pages saved, and resetting it to the file
                // would leave a relocated GOT unrelocated until its pages are read.
                if r.flags & (REGION_FILE | REGION_SHARED) == 0 {
                    op.flags = libc::MAP_ANONYMOUS;
                }
            } else if r.flags & REGION_FILE != 0 {
                op.kind = OP_MAP;
                op.flags = if r.flags & REGION_SHARED != 0 {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                } | libc::MAP_FIXED;
                op.offset = r.offset;
                let path =
                    &m.strings[r.path.offset as usize..(r.path.offset + r.path.len) as usize];
                let mut c = crate::text::FixedStr::<4097>::new();
                c.push_bytes(path);
                let cpath = c
                    .as_cstr()
                    .ok_or_else(|| PlanError("mapped file path too long".into()))?;
                let writable =
                    r.flags & REGION_SHARED != 0 && r.prot & libc::PROT_WRITE as u32 != 0;
                let mode = if writable {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                let fd = syscall::open(cpath, mode | libc::O_CLOEXEC, 0).map_err(|e| {
                    PlanError(format!(
                        "open mapped file {}: {e}",
                        crate::text::Bytes(path)
                    ))
                })?;
                if n_opened < opened.len() {
                    opened[n_opened] = fd;
                    n_opened += 1;
                } else {
                    let _ = syscall::close(fd);
                    return err("too many mapped files to reopen");
                }
                let st = syscall::fstat(fd)
                    .map_err(|e| PlanError(format!("stat {}: {e}", crate::text::Bytes(path))))?;
                if st.st_ino != r.ino || dev_of(&st) != r.dev {
                    return err(format!(
                        "mapped file {} was replaced since the checkpoint",
                        crate::text::Bytes(path)
                    ));
                }
                op.fd = fd;
            } else {
                op.kind = OP_MAP;
                let share = if r.flags & REGION_SHARED != 0 {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                op.flags = share | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE;
            }
            ops[n_ops] = op;
            n_ops += 1;
        }
        Ok((n_ops, n_unmaps))
    })();
    let close_opened = |opened: &[i32]| {
        for &fd in opened {
            let _ = syscall::close(fd);
        }
    };
    let (n_ops, n_unmaps) = match result {
        Ok(v) => v,
        Err(e) => {
            close_opened(&opened[..n_opened]);
            return Err(e);
        }
    };
    let _ = close_opened;
    plan_slot[0] = Plan {
        image_fds,
        ctx: Context::from(&m.process.ctx),
        fs_base: m.process.fs_base as usize,
        brk: m.process.brk as usize,
        unmaps: &unmaps[..n_unmaps],
        ops: &ops[..n_ops],
        runs,
        meter: crate::progress::Meter::new(
            crate::progress::wanted(settings.log),
            b"restoring",
            runs.iter().filter(|r| !r.zero).map(|r| r.len as u64).sum(),
        ),
        info,
    };
    if debug {
        let mapped = ops[..n_ops].iter().filter(|o| o.kind == OP_MAP).count();
        crate::text::log_line(format_args!(
            "restore plan: {} regions ({} kept in place, {} mapped afresh), {} current mappings removed, {} page runs, restorer at {:#x}",
            n_ops,
            n_ops - mapped,
            mapped,
            n_unmaps,
            runs.len(),
            plan_map.addr()
        ));
    }
    let (plan_addr, _) = plan_map.leak();
    let _ = plan_addr;
    // Point of no return. Block every signal; stop the kernel writing the CPU number into the
    // rseq area of this thread's descriptor, which the image is about to replace.
    let _ = syscall::sigprocmask(libc::SIG_SETMASK, Some(&!0u64), None);
    if let Some(r) = super::glibc::rseq_info() {
        let _ = super::glibc::rseq_unregister(r, syscall::get_fs_base());
    }
    // SAFETY: stack_top is the aligned top of the plan's private stack; restore_body never
    // returns; the plan lives in the leaked plan mapping.
    unsafe {
        arch::run_on_stack(
            stack_top,
            restore_body,
            &mut plan_slot[0] as *mut Plan as *mut c_void,
        )
    }
}

/// The lowest address range of `size` bytes above 4 GiB that overlaps neither list.
fn find_gap(a: &[(usize, usize)], b: &[(usize, usize)], size: usize) -> Option<usize> {
    let mut all: Vec<(usize, usize)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut at = 1usize << 32;
    for (s, e) in all {
        if e <= at {
            continue;
        }
        if s >= at + size + PAGE {
            return Some(at);
        }
        at = page_ceil(e) + PAGE;
    }
    (at + size < 0x7f00_0000_0000).then_some(at)
}

/// Reports a failure after memory was replaced and exits. Uses only raw system calls and a
/// hand-rolled hex conversion: the C library's state may already be gone.
fn die(msg: &[u8], addr: usize) -> ! {
    let mut hex = [0u8; 19];
    hex[0] = b'0';
    hex[1] = b'x';
    let mut i = 0;
    while i < 16 {
        let nibble = (addr >> (60 - 4 * i)) & 0xf;
        hex[2 + i] = if nibble < 10 {
            b'0' + nibble as u8
        } else {
            b'a' + nibble as u8 - 10
        };
        i += 1;
    }
    hex[18] = b'\n';
    let _ = syscall::write(2, b"ckpt: restore failed after memory was replaced: ");
    let _ = syscall::write(2, msg);
    let _ = syscall::write(2, b" at ");
    let _ = syscall::write(2, &hex);
    syscall::exit_group(70)
}

unsafe extern "C" fn restore_body(arg: *mut c_void) -> ! {
    // SAFETY: `arg` is the plan in the leaked plan mapping, which nothing below unmaps.
    let p = unsafe { &*(arg as *const Plan) };
    for &(s, e) in p.unmaps {
        // SAFETY: the plan proved these mappings are neither kept, nor ours, nor special.
        if unsafe { syscall::munmap(s, e.wrapping_sub(s)) }.is_err() {
            die(b"munmap", s);
        }
    }
    for op in p.ops {
        match op.kind {
            OP_MAP => {
                // SAFETY: a saved region's range, which the plan proved overlaps neither the plan
                // mapping nor the code this body runs.
                let got = unsafe {
                    syscall::mmap(op.start, op.len, op.prot_fill, op.flags, op.fd, op.offset)
                };
                if got != Ok(op.start) {
                    die(b"mmap", op.start);
                }
            }
            // SAFETY: a saved region's range, which the plan proved overlaps neither the plan
            // mapping nor the code this body runs.
            OP_RESET => unsafe {
                if syscall::mprotect(op.start, op.len, op.prot_fill).is_err() {
                    die(b"mprotect", op.start);
                }
                // Anonymous private pages go back to zero; unsaved ones must read as zeros.
                if op.flags & libc::MAP_ANONYMOUS != 0 {
                    let _ = syscall::madvise(op.start, op.len, libc::MADV_DONTNEED);
                }
            },
            OP_HEAP => {
                if syscall::brk(p.brk) != p.brk {
                    die(b"brk", p.brk);
                }
                if p.brk > op.start {
                    // SAFETY: a saved region's range, which the plan proved overlaps neither the plan
                    // mapping nor the code this body runs.
                    let _ = unsafe {
                        let end = p.brk.wrapping_add(PAGE - 1) & !(PAGE - 1);
                        syscall::madvise(op.start, end.wrapping_sub(op.start), libc::MADV_DONTNEED)
                    };
                }
            }
            // SAFETY: a saved region's range, which the plan proved overlaps neither the plan
            // mapping nor the code this body runs.
            OP_STACK => unsafe {
                // Grow the stack down to the saved size by touching it (the kernel extends a
                // grows-down mapping on fault), then zero it.
                let mut a = op.aux;
                while a > op.start {
                    a = a.wrapping_sub(PAGE);
                    core::ptr::write_volatile(a as *mut u8, 0);
                }
                let _ = syscall::madvise(op.start, op.len, libc::MADV_DONTNEED);
            },
            _ => die(b"unknown plan step", op.start),
        }
    }
    let mut meter = p.meter;
    for run in p.runs {
        let (mut addr, mut left, mut off) = (run.addr, run.len, run.off);
        if run.zero {
            // SAFETY: the run lies in a chain region: anonymous private memory of the image.
            let _ = unsafe { syscall::madvise(addr, left, libc::MADV_DONTNEED) };
            continue;
        }
        let fd = match p.image_fds.get(run.fd as usize) {
            Some(&fd) => fd,
            None => die(b"page run of an unknown image", addr),
        };
        while left > 0 {
            // In pieces, so that the bar moves during a large run.
            let piece = if left < RESTORE_PIECE {
                left
            } else {
                RESTORE_PIECE
            };
            // SAFETY: the piece lies in the run, in a saved region, now mapped writable.
            match unsafe { syscall::pread_raw(fd, addr, piece, off) } {
                Ok(0) => die(b"image shorter than its runs", addr),
                Ok(n) => {
                    addr = addr.wrapping_add(n);
                    left = left.wrapping_sub(n.min(left));
                    off = off.wrapping_add(n as u64);
                    meter.add(n as u64);
                }
                Err(syscall::Errno(libc::EINTR)) => {}
                Err(_) => die(b"read of page data", addr),
            }
        }
    }
    meter.finish();
    for op in p.ops {
        if op.prot_fill != op.prot_final && op.kind != OP_HEAP && op.kind != OP_STACK {
            // SAFETY: the final protection of a saved region.
            let _ = unsafe { syscall::mprotect(op.start, op.len, op.prot_final) };
        }
        if op.fd >= 0 {
            let _ = syscall::close(op.fd);
        }
    }
    for &fd in p.image_fds {
        let _ = syscall::close(fd);
    }
    // SAFETY: the saved thread descriptor is back in memory at this address.
    if unsafe { syscall::set_fs_base(p.fs_base) }.is_err() {
        die(b"arch_prctl(ARCH_SET_FS)", p.fs_base);
    }
    // SAFETY: memory now equals the image; the context returns into the checkpoint's
    // trampoline with a pointer to the info, which stays mapped until consumed.
    unsafe { arch::resume(&p.ctx, &p.info as *const RestoreInfo as usize) }
}
