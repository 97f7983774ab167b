//! The `mprotect` dirty tracker: read-only pages, a `SIGSEGV` handler that records and unprotects.
//!
//! libckpt's portable method. Tracking a range makes it `PROT_READ`; the first write to a page
//! faults, the handler sets the page's bit in a bitmap allocated when the range was tracked and
//! makes the page `PROT_READ | PROT_WRITE`, and the write is retried. A harvest walks the bitmap,
//! clears the bits it reports and protects those pages again. Because `mprotect` works on the
//! VMA, pages never touched are protected too.
//!
//! Costs and limits: one signal delivery plus one `mprotect` per first write (several µs); every
//! protected run splits the VMA, so a scattered dirty set can reach `vm.max_map_count`, after
//! which the handler counts the whole range as written and unprotects it in one piece (counted
//! by [`Mprotect::overflows`]; the next harvest reports the whole range and protects it again); the
//! kernel's own writes into a protected page fail with `EFAULT`, so the system calls that write
//! into a caller's buffer go through [`kernel_write`] (the C library's `read` family, replaced
//! by `sys::interpose`; the library's own calls use [`DirtyTracker::prepare_kernel_write`]; see
//! the parent module for what is not covered); the `[stack]` must not be tracked unless signals are
//! delivered on an alternate stack outside tracked memory (the kernel cannot push the signal
//! frame onto a read-only stack); a `SIGSEGV` handler the program installs is taken
//! over the next time a range is tracked (ours goes first again and chains to it: gfortran's
//! runtime installs one at startup), but one installed between two checkpoints receives the
//! tracked writes until then and breaks tracking.
//!
//! # Safety
//!
//! The handler's state is process-global: a fixed table of slots in statics, published with
//! release stores and read with acquire loads, and bitmaps in mappings the tracker owns. Only one
//! tracker exists at a time (`ACTIVE`), the process is single-threaded (the library's premise),
//! and a slot is retired (length 0) before its bitmap is unmapped, so the handler never reads a
//! freed bitmap. [`kernel_write`] (the `read` wrappers) runs on whichever thread calls it and
//! relies on the same premise: ranges are tracked, harvested and untracked only while the
//! process has one thread (a checkpoint refuses a second one), so no slot changes under it; a
//! harvest that protects its buffer again between its preparation and its system call (the
//! checkpoint signal on the same thread) makes the call fail with `EFAULT`, and it retries. The
//! handler and `kernel_write` use only atomics and raw system calls. The previous `SIGSEGV`
//! disposition is saved before ours is installed and the handler chains to it for faults that
//! are not ours.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{DirtyError, DirtyTracker, RunMerger, TrackerKind, check_range};
use crate::sys::mem::{Mapping, PAGE};
use crate::sys::syscall::{self, Errno};

const NAME: &str = "mprotect";
/// Tracked ranges at most (the handler's table is static).
const MAX_RANGES: usize = 256;
const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
/// Signals the kernel raises synchronously on a faulting instruction: never blocked around our
/// work (a blocked synchronous fault kills the process).
const SYNC_SIGNALS: [i32; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
];
/// `si_code` of a fault on a mapped page without the needed permission (asm-generic/siginfo.h).
const SEGV_ACCERR: i32 = 2;

/// One tracked range as the handler sees it. `len == 0`: free.
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    /// Address of the range's bitmap: one bit per page, in `u64` words.
    bits: AtomicUsize,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            bits: AtomicUsize::new(0),
        }
    }

    /// The slot's range and bitmap if it is in use.
    fn get(&self) -> Option<(usize, usize, usize)> {
        let len = self.len.load(Ordering::Acquire);
        (len != 0).then(|| {
            (
                self.start.load(Ordering::Relaxed),
                len,
                self.bits.load(Ordering::Relaxed),
            )
        })
    }
}

static SLOTS: [Slot; MAX_RANGES] = [const { Slot::new() }; MAX_RANGES];
/// A tracker exists.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// What the wrappers of system calls that write into memory read, in one load: bit 0 says a
/// tracker exists; the rest counts the times tracked pages were made read-only (or a tracker came
/// or went), so a call that failed with `EFAULT` can tell whether its buffer may have been
/// protected again after it was prepared (see `retrying`).
static PROTECTIONS: AtomicUsize = AtomicUsize::new(0);
/// The `SIGSEGV` disposition before ours: handler address and `SA_*` flags.
static PREV_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_FLAGS: AtomicUsize = AtomicUsize::new(0);
/// Faults that hit the VMA limit and made a whole range dirty (see `on_segv`).
static OVERFLOWS: AtomicUsize = AtomicUsize::new(0);
/// Mappings made writable again after their protected pages moved (see `unprotect_moved`).
static MOVED: AtomicUsize = AtomicUsize::new(0);

/// The bitmap word holding page `index`'s bit.
///
/// # Safety
/// `bits` must be the bitmap of a live slot and `index` a page of its range.
unsafe fn word<'a>(bits: usize, index: usize) -> &'a AtomicU64 {
    // SAFETY: the caller guarantees the bitmap covers `index`; the mapping is page-aligned and
    // zero-initialised, a valid array of `AtomicU64`, and lives while the slot is in use.
    unsafe { &*((bits as *const AtomicU64).add(index / 64)) }
}

/// Finds the live slot whose range holds `addr`: `(start, len, bits)`.
fn lookup(addr: usize) -> Option<(usize, usize, usize)> {
    SLOTS
        .iter()
        .filter_map(Slot::get)
        .find(|&(s, l, _)| addr >= s && addr - s < l)
}

/// Writes a fixed message and aborts: the only way out of a handler that cannot continue.
fn fatal(msg: &[u8]) -> ! {
    let _ = syscall::write(2, msg);
    // SAFETY: abort is async-signal-safe and does not return.
    unsafe { libc::abort() }
}

extern "C" fn on_segv(sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if code == SEGV_ACCERR
        && let Some((start, len, bits)) = lookup(addr)
    {
        // A write to a page we protected (tracked ranges are read-write by contract).
        let page = addr & !(PAGE - 1);
        // SAFETY: the slot is live and `page` is inside its range.
        unsafe { set_bits(bits, (page - start) / PAGE, (page - start) / PAGE + 1) };
        if unprotect_in(start, len, bits, page, page + PAGE) {
            return;
        }
        fatal(b"ckpt: mprotect dirty tracker: cannot unprotect a written page\n");
    }
    if code == SEGV_ACCERR && ACTIVE.load(Ordering::Acquire) && unprotect_moved(addr) {
        return;
    }
    chain(sig, info, ctx);
}

/// Pages this tracker protected can move out of their range without it knowing: the C
/// library's `realloc` moves large blocks with its internal `mremap`, which no wrapper sees.
/// A write fault on read-only private anonymous memory outside every range is taken to be
/// such a page: its whole mapping is made writable again (the next checkpoint finds it as a
/// new region, saves it whole and tracks it). The cost: while this tracker is active, a write
/// into anonymous memory the program itself made read-only no longer faults. Reads the memory
/// map with raw system calls into a stack buffer (async-signal-safe).
fn unprotect_moved(addr: usize) -> bool {
    let Ok(fd) = syscall::open(b"/proc/self/maps\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return false;
    };
    // Small: the handler may run on a small alternate signal stack. A line longer than the
    // buffer (a long path) is skipped; anonymous mappings have short lines.
    let mut buf = [0u8; 512];
    let mut have = 0;
    let mut skipping = false;
    let mut found = None;
    'read: loop {
        let n = match syscall::read(fd, &mut buf[have..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        have += n;
        let mut at = 0;
        while let Some(nl) = buf[at..have].iter().position(|&b| b == b'\n') {
            let line = &buf[at..at + nl];
            at += nl + 1;
            if core::mem::take(&mut skipping) {
                continue;
            }
            if let Some(Ok(e)) = super::super::maps::parse(line).next()
                && e.start <= addr
                && addr < e.end
            {
                let anon = e.inode == 0 && e.path.is_empty() || e.path == b"[heap]";
                let read_only = e.prot == libc::PROT_READ;
                found = (anon && !e.shared && read_only).then_some((e.start, e.end));
                break 'read;
            }
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if have == buf.len() {
            skipping = true;
            have = 0;
        }
    }
    let _ = syscall::close(fd);
    let Some((start, end)) = found else {
        return false;
    };
    MOVED.fetch_add(1, Ordering::Relaxed);
    // The kernel merges adjacent read-only anonymous mappings: this one may also hold pages of
    // tracked ranges, still clean. They count as written before they become writable, or
    // their next writes would go unseen.
    let _ = mark_written(start, end - start, |_, _| Ok(()));
    // SAFETY: private anonymous memory that faulted on a write; see above.
    unsafe { syscall::mprotect(start, end - start, RW) }.is_ok()
}

/// Sets the bits of pages `[first, last)` of a bitmap, a word at a time; whether any was clear.
///
/// # Safety
/// `bits` must be the bitmap of a live slot and `[first, last)` pages of its range.
unsafe fn set_bits(bits: usize, first: usize, last: usize) -> bool {
    let mut fresh = false;
    let mut p = first;
    while p < last {
        let bit = p % 64;
        let n = (64 - bit).min(last - p);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << bit
        };
        // SAFETY: the caller's bitmap covers page `p`.
        let old = unsafe { word(bits, p) }.fetch_or(mask, Ordering::Relaxed);
        fresh |= old & mask != mask;
        p += n;
    }
    fresh
}

/// Makes `[a, b)`, pages of the tracked range `[start, start + len)` already marked written,
/// writable. When that would split the range's mappings beyond `vm.max_map_count`, degrades
/// visibly ([`Mprotect::overflows`]): the whole range counts as written and is made writable in
/// one piece, which merges its mappings back. Whether the pages are writable.
fn unprotect_in(start: usize, len: usize, bits: usize, a: usize, b: usize) -> bool {
    // SAFETY: tracked memory, whose contract is read-write.
    match unsafe { syscall::mprotect(a, b - a, RW) } {
        Ok(()) => true,
        Err(Errno(libc::ENOMEM)) => {
            OVERFLOWS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the slot is live; these are all its pages.
            unsafe { set_bits(bits, 0, len / PAGE) };
            // SAFETY: as above, for the whole tracked range.
            unsafe { syscall::mprotect(start, len, RW) }.is_ok()
        }
        Err(_) => false,
    }
}

/// Tracked pages may be made read-only from now: wrappers whose call fails with `EFAULT` retry.
/// Called before the pages are protected, so a call that finds them protected sees the change.
fn protecting() {
    PROTECTIONS.fetch_add(2, Ordering::AcqRel);
}

/// Prepares `[start, start + len)` for the program's own `mremap`: tracked pages in it count
/// as written and become writable, so the range is one mapping again (the kernel refuses to
/// remap across mappings of different protections) and nothing read-only moves away.
fn remap_prepare(start: usize, len: usize) {
    let _ = mark_written(start, len, |a, n| protect_mapped(a, n, RW));
}

/// Prepares `[addr, addr + len)` for a write by the kernel (a system call's output buffer):
/// its tracked pages count as written and become writable. Async-signal-safe; one atomic load
/// when no tracker exists. A signal handler that runs between this and the system call can
/// protect the pages again (a checkpoint harvests): prefer [`kernel_write`], which retries.
pub fn before_kernel_write(addr: usize, len: usize) {
    if PROTECTIONS.load(Ordering::Acquire) & 1 != 0 {
        kernel_write_prepare(addr, len, true);
    }
}

/// Marks and unprotects one output buffer. Without `force`, pages already marked are taken to be
/// writable (every path that sets a bit unprotects the page, and protecting clears it), which
/// spares the `mprotect` when a buffer is filled again before the next harvest.
fn kernel_write_prepare(addr: usize, len: usize, force: bool) {
    if len == 0 {
        return;
    }
    let (lo, hi) = super::page_span(addr, addr.saturating_add(len));
    for (rs, rl, bits) in SLOTS.iter().filter_map(Slot::get) {
        let (a, b) = (lo.max(rs), hi.min(rs + rl));
        if a >= b {
            continue;
        }
        // SAFETY: the slot is live and these pages are inside its range.
        let fresh = unsafe { set_bits(bits, (a - rs) / PAGE, (b - rs) / PAGE) };
        if fresh || force {
            // A failure leaves the pages read-only: the call fails with EFAULT, as it would
            // have without us.
            unprotect_in(rs, rl, bits, a, b);
        }
    }
}

/// Runs `call`, a system call through which the kernel writes into the buffers `buffers`
/// lists (it calls its argument with each `(addr, len)`), so that it works on memory this
/// tracker protects: the buffers' tracked pages count as written and are made writable first.
///
/// A checkpoint signal can arrive after that and before or during the call (a blocking `read`
/// is restarted after the handler), and its harvest protects the pages again: the kernel's
/// write then fails with `EFAULT` having consumed nothing (files, pipes, stream sockets,
/// terminals copy before they consume). So on `EFAULT`, if tracked pages were protected since
/// the buffers were prepared, they are prepared again and the call is retried; if not, the
/// buffers are prepared once more without trusting the bitmap, and retried once; then the
/// `EFAULT` is the caller's (a bad pointer). When no tracker exists: one atomic load, the call.
/// Async-signal-safe.
pub fn kernel_write(
    buffers: impl Fn(&mut dyn FnMut(usize, usize)),
    call: impl FnMut() -> syscall::SysResult,
) -> syscall::SysResult {
    retrying(
        |force| buffers(&mut |a, n| kernel_write_prepare(a, n, force)),
        call,
    )
}

/// Runs `call`, the program's own `mprotect` of `[start, start + len)`, after every tracked
/// range it touches has stopped being tracked: made read-write again (its contract) and its slot
/// retired, so that the next checkpoint saves it whole and watches it afresh. The program's
/// protection must win: a write it forbids must fault for the program, not be taken for a
/// tracked write; and a range it made writable and read-only again between two checkpoints
/// must not look intact. Asynchronous signals (the checkpoint's) are blocked meanwhile.
pub(crate) fn reprotect(
    start: usize,
    len: usize,
    mut call: impl FnMut() -> syscall::SysResult,
) -> syscall::SysResult {
    if PROTECTIONS.load(Ordering::Acquire) & 1 == 0 {
        return call();
    }
    let sync = SYNC_SIGNALS.iter().fold(0u64, |m, &s| m | 1 << (s - 1));
    let mut old = 0u64;
    let _ = syscall::sigprocmask(libc::SIG_BLOCK, Some(&!sync), Some(&mut old));
    let (lo, hi) = super::page_span(start, start.saturating_add(len));
    for slot in &SLOTS {
        if let Some((s, l, _)) = slot.get()
            && s < hi
            && lo < s + l
        {
            let _ = protect_mapped(s, l, RW);
            // Retired: the handler stops claiming its faults; the tracker drops its bitmap.
            slot.len.store(0, Ordering::Release);
        }
    }
    let r = call();
    let _ = syscall::sigprocmask(libc::SIG_SETMASK, Some(&old), None);
    r
}

/// Runs `call`, the program's own `mremap` of `[start, start + len)`, after the tracked pages
/// in that range were marked written and made writable: the kernel refuses to remap across
/// mappings of different protections, which this tracker's page-by-page protection creates,
/// and nothing read-only must move away. Retries on `EFAULT` as [`kernel_write`] does (a range
/// protected again before the call fails that way too).
pub(crate) fn remap(
    start: usize,
    len: usize,
    call: impl FnMut() -> syscall::SysResult,
) -> syscall::SysResult {
    // Always unprotected (rare, and a range read-only by mistake would move away read-only).
    retrying(|_| remap_prepare(start, len), call)
}

/// Calls `prepare(force)` when a tracker exists, then `call`, retrying on `EFAULT` as
/// [`kernel_write`] says.
fn retrying(
    mut prepare: impl FnMut(bool),
    mut call: impl FnMut() -> syscall::SysResult,
) -> syscall::SysResult {
    /// Retries at most: each one but the forced one needs a checkpoint in between.
    const MAX_RETRIES: usize = 8;
    let mut seen = PROTECTIONS.load(Ordering::Acquire);
    if seen & 1 != 0 {
        prepare(false);
    }
    let mut forced = false;
    for _ in 0..MAX_RETRIES {
        let r = call();
        if r != Err(Errno(libc::EFAULT)) {
            return r;
        }
        let now = PROTECTIONS.load(Ordering::Acquire);
        let changed = now != seen;
        if !changed && (forced || now & 1 == 0) {
            return r;
        }
        forced = !changed;
        seen = now;
        if now & 1 != 0 {
            prepare(forced);
        }
    }
    call()
}

/// Marks the tracked pages of `[start, start + len)` (widened to whole pages) as written, then
/// hands each tracked piece to `unprotect(start, len)`: marked first, because once writable a
/// write is no longer seen by the handler.
fn mark_written(
    start: usize,
    len: usize,
    unprotect: impl Fn(usize, usize) -> Result<(), DirtyError>,
) -> Result<(), DirtyError> {
    let (lo, hi) = super::page_span(start, start.saturating_add(len));
    for (rs, rl, bits) in SLOTS.iter().filter_map(Slot::get) {
        let (a, b) = (lo.max(rs), hi.min(rs + rl));
        if a >= b {
            continue;
        }
        // SAFETY: the slot is live and these pages are inside its range.
        unsafe { set_bits(bits, (a - rs) / PAGE, (b - rs) / PAGE) };
        unprotect(a, b - a)?;
    }
    Ok(())
}

/// Hands a fault that is not ours to the handler that was there before.
fn chain(sig: i32, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let handler = PREV_HANDLER.load(Ordering::Acquire);
    let flags = PREV_FLAGS.load(Ordering::Relaxed);
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Default action: put it back and return; the faulting instruction runs again and the
        // kernel kills the process with SIGSEGV as if we had never been here. (Ignoring a
        // synchronous SIGSEGV is not possible either: the kernel kills on it.)
        let dfl = syscall::KernelSigaction::default();
        // SAFETY: SIG_DFL needs no handler.
        let _ = unsafe { syscall::sigaction(sig, Some(&dfl), None) };
        return;
    }
    if flags & libc::SA_SIGINFO as usize != 0 {
        // SAFETY: the previous disposition was installed with SA_SIGINFO, so its handler has
        // this signature; it receives the kernel's own arguments.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: without SA_SIGINFO the previous handler takes the signal number only.
        let f: extern "C" fn(i32) = unsafe { core::mem::transmute(handler) };
        f(sig);
    }
}

/// Installs the handler unless it is the current one, saving the current disposition first.
fn install() -> Result<(), DirtyError> {
    let err = |errno| DirtyError::Sys {
        tracker: NAME,
        op: "sigaction(SIGSEGV)",
        start: 0,
        len: 0,
        errno,
    };
    // SAFETY: an all-zero sigaction is valid plain data.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: a query; `old` is a valid sigaction to fill.
    if unsafe { libc::sigaction(libc::SIGSEGV, core::ptr::null(), &mut old) } != 0 {
        return Err(err(Errno(libc::EINVAL)));
    }
    if old.sa_sigaction == on_segv as *const () as usize {
        return Ok(());
    }
    // Ours was never installed, or the program installed its own since (gfortran's runtime
    // does at startup, after the preloaded library's init): that one becomes the handler we
    // chain to, and ours goes first again.
    PREV_HANDLER.store(old.sa_sigaction, Ordering::Relaxed);
    PREV_FLAGS.store(old.sa_flags as usize, Ordering::Release);
    // SAFETY: an all-zero sigaction is valid plain data.
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = on_segv as *const () as usize;
    // NODEFER: a chained handler may fault again; ONSTACK: a stack overflow still reaches a
    // handler when the application set an alternate stack. Every asynchronous signal is
    // blocked while the handler runs: a checkpoint signal taken inside it would capture the
    // process halfway through a fault and run the whole checkpoint on the (small) alternate
    // stack. The synchronous ones stay open (a blocked synchronous fault kills the process).
    act.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
    // SAFETY: `sa_mask` is a valid sigset_t to fill.
    unsafe {
        libc::sigfillset(&mut act.sa_mask);
        for sync in SYNC_SIGNALS {
            libc::sigdelset(&mut act.sa_mask, sync);
        }
    }
    // SAFETY: `on_segv` is an extern "C" SA_SIGINFO handler doing only async-signal-safe work;
    // glibc supplies the rt_sigreturn restorer.
    if unsafe { libc::sigaction(libc::SIGSEGV, &act, core::ptr::null_mut()) } != 0 {
        return Err(err(Errno(libc::EINVAL)));
    }
    Ok(())
}

/// The `mprotect` tracker. One per process at a time. See the module documentation.
#[derive(Debug)]
pub struct Mprotect {
    /// The bitmap mapping of each slot in use, by slot index.
    bitmaps: Vec<Option<Mapping>>,
}

impl Mprotect {
    /// Installs the `SIGSEGV` handler (once per process) and claims the process-global state.
    pub fn new() -> Result<Mprotect, DirtyError> {
        if ACTIVE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(DirtyError::Busy { tracker: NAME });
        }
        if let Err(e) = install() {
            ACTIVE.store(false, Ordering::Release);
            return Err(e);
        }
        // Bit 0 goes from 0 to 1 (`PROTECTIONS`).
        PROTECTIONS.fetch_add(1, Ordering::AcqRel);
        Ok(Mprotect {
            bitmaps: (0..MAX_RANGES).map(|_| None).collect(),
        })
    }

    /// How many times a write could not be tracked page by page because the process reached
    /// `vm.max_map_count`, so its whole range was counted as written (a degraded harvest, still
    /// a superset of the truth). Process-wide, since the process started.
    pub fn overflows(&self) -> usize {
        OVERFLOWS.load(Ordering::Relaxed)
    }

    fn mprotect(op: &'static str, start: usize, len: usize, prot: i32) -> Result<(), DirtyError> {
        if prot & libc::PROT_WRITE == 0 {
            protecting();
        }
        // SAFETY: only tracked ranges reach here: read-write memory by contract, made read-only
        // while tracked, whose writes our handler resolves.
        unsafe { syscall::mprotect(start, len, prot) }.map_err(|errno| DirtyError::Sys {
            tracker: NAME,
            op,
            start,
            len,
            errno,
        })
    }

    fn release(&mut self, i: usize) {
        // Retire the slot before its bitmap goes, so the handler never reads freed memory.
        SLOTS[i].len.store(0, Ordering::Release);
        self.bitmaps[i] = None;
    }
}

impl DirtyTracker for Mprotect {
    fn name(&self) -> &'static str {
        NAME
    }

    fn kind(&self) -> TrackerKind {
        TrackerKind::Mprotect
    }

    fn track(&mut self, start: usize, len: usize) -> Result<(), DirtyError> {
        check_range(NAME, start, len)?;
        install()?;
        // Drop the bitmaps of slots the program's own mprotect retired (see `reprotect`).
        for (i, slot) in SLOTS.iter().enumerate() {
            if slot.get().is_none() && self.bitmaps[i].is_some() {
                self.bitmaps[i] = None;
            }
        }
        let end = start + len;
        if SLOTS
            .iter()
            .filter_map(Slot::get)
            .any(|(s, l, _)| s < end && start < s + l)
        {
            return Err(DirtyError::Overlap {
                tracker: NAME,
                start,
                len,
            });
        }
        let Some(i) = self.bitmaps.iter().position(Option::is_none) else {
            return Err(DirtyError::TooManyRanges {
                tracker: NAME,
                max: MAX_RANGES,
            });
        };
        let pages = len / PAGE;
        let bitmap =
            Mapping::anonymous(pages.div_ceil(64) * 8).map_err(|errno| DirtyError::Sys {
                tracker: NAME,
                op: "mmap bitmap",
                start,
                len,
                errno,
            })?;
        SLOTS[i].start.store(start, Ordering::Relaxed);
        SLOTS[i].bits.store(bitmap.addr(), Ordering::Relaxed);
        SLOTS[i].len.store(len, Ordering::Release);
        self.bitmaps[i] = Some(bitmap);
        if let Err(e) = Self::mprotect("mprotect(PROT_READ)", start, len, libc::PROT_READ) {
            // Part of the range may be protected already: undo before forgetting it.
            let _ = Self::mprotect("mprotect", start, len, RW);
            self.release(i);
            return Err(e);
        }
        Ok(())
    }

    fn untrack(&mut self, start: usize, len: usize) -> Result<(), DirtyError> {
        let Some(i) = SLOTS
            .iter()
            .position(|slot| slot.get().is_some_and(|(s, l, _)| (s, l) == (start, len)))
        else {
            return Err(DirtyError::NotTracked {
                tracker: NAME,
                start,
                len,
            });
        };
        // What was unmapped since needs nothing undone; what is left becomes writable again.
        let r = protect_mapped(start, len, RW);
        self.release(i);
        r
    }

    fn harvest(
        &mut self,
        start: usize,
        end: usize,
        each: &mut dyn FnMut(usize, usize),
    ) -> Result<(), DirtyError> {
        let (start, end) = super::page_span(start, end);
        // Slots are unordered; harvest in address order so runs come out sorted and merged.
        let mut runs = RunMerger::new(each);
        let mut result = Ok(());
        let mut from = start;
        while let Some((rs, rl, bits)) = SLOTS
            .iter()
            .filter_map(Slot::get)
            .filter(|&(s, l, _)| s + l > from && s < end)
            .min_by_key(|&(s, _, _)| s)
        {
            let first = (from.max(rs) - rs) / PAGE;
            let last = (end.min(rs + rl) - rs).div_ceil(PAGE);
            let mut page = first;
            while page < last {
                // SAFETY: the slot is live and `page` is inside its range.
                let w = unsafe { word(bits, page) }.load(Ordering::Relaxed);
                let bit = page % 64;
                if w >> bit == 0 {
                    page = (page - bit + 64).min(last);
                    continue;
                }
                if w & (1 << bit) == 0 {
                    page += 1;
                    continue;
                }
                // A dirty run [page, run_end): clear its bits, then protect it again. Nothing
                // writes tracked memory between the two (single thread, `each` not yet called);
                // a write after the protection faults and is seen by the next harvest.
                let mut run_end = page;
                while run_end < last {
                    // SAFETY: as above.
                    let w = unsafe { word(bits, run_end) };
                    let mask = 1u64 << (run_end % 64);
                    if w.load(Ordering::Relaxed) & mask == 0 {
                        break;
                    }
                    w.fetch_and(!mask, Ordering::Relaxed);
                    run_end += 1;
                }
                let (a, b) = (rs + page * PAGE, rs + run_end * PAGE);
                if let Err(e) = Self::mprotect("mprotect(PROT_READ)", a, b - a, libc::PROT_READ) {
                    // The pages stay writable and unreported: mark them dirty again so the next
                    // harvest retries rather than losing them.
                    for p in page..run_end {
                        // SAFETY: as above.
                        unsafe { word(bits, p) }.fetch_or(1 << (p % 64), Ordering::Relaxed);
                    }
                    result = Err(e);
                    break;
                }
                runs.push(a, b);
                page = run_end;
            }
            if result.is_err() {
                break;
            }
            from = rs + rl;
        }
        runs.finish();
        result
    }

    fn prepare_kernel_write(&mut self, start: usize, len: usize) -> Result<(), DirtyError> {
        mark_written(start, len, |a, n| {
            Self::mprotect("mprotect(PROT_READ|PROT_WRITE)", a, n, RW)
        })
    }

    fn kernel_writes_transparent(&self) -> bool {
        false
    }

    fn internal_ranges(&self, each: &mut dyn FnMut(usize, usize)) {
        for m in self.bitmaps.iter().flatten() {
            each(m.addr(), m.addr() + m.size());
        }
    }

    fn reset(&mut self) -> Result<(), DirtyError> {
        for (start, len, bits) in SLOTS.iter().filter_map(Slot::get) {
            // Protect first, then clear: if mprotect fails, no writable page is left with a clear
            // bit (its writes would go unseen). Nothing writes in between: one thread.
            Self::mprotect("mprotect(PROT_READ)", start, len, libc::PROT_READ)?;
            for i in (0..len / PAGE).step_by(64) {
                // SAFETY: the slot is live and `i` is inside its range.
                unsafe { word(bits, i) }.store(0, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn untrack_all(&mut self) {
        for (i, slot) in SLOTS.iter().enumerate() {
            if let Some((s, l, _)) = slot.get() {
                let _ = protect_mapped(s, l, RW);
                self.release(i);
            }
        }
    }

    fn each_range(&self, each: &mut dyn FnMut(usize, usize)) {
        let mut from = 0;
        while let Some((s, l, _)) = SLOTS
            .iter()
            .filter_map(Slot::get)
            .filter(|&(s, _, _)| s >= from)
            .min_by_key(|&(s, _, _)| s)
        {
            each(s, s + l);
            from = s + l;
        }
    }

    fn each_fd(&self, _each: &mut dyn FnMut(i32)) {}

    fn renew(&mut self, _min_fd: i32) -> Result<(), DirtyError> {
        // The restored memory's protections are the image's (read-write), the bitmaps are
        // restored copies: forget the slots, drop (unmap) the bitmaps.
        for (i, slot) in SLOTS.iter().enumerate() {
            if slot.get().is_some() || self.bitmaps[i].is_some() {
                self.release(i);
            }
        }
        Ok(())
    }
}

/// `mprotect(start, len, prot)` on whatever of the range is still mapped: the kernel stops at
/// the first hole (`ENOMEM`), so a range that was partly unmapped is split until every mapped
/// piece has been changed.
fn protect_mapped(start: usize, len: usize, prot: i32) -> Result<(), DirtyError> {
    // SAFETY: see `Mprotect::mprotect`: only tracked ranges reach here.
    match unsafe { syscall::mprotect(start, len, prot) } {
        Ok(()) => Ok(()),
        Err(Errno(libc::ENOMEM)) if len > PAGE => {
            let half = (len / PAGE / 2) * PAGE;
            let a = protect_mapped(start, half, prot);
            let b = protect_mapped(start + half, len - half, prot);
            a.and(b)
        }
        Err(Errno(libc::ENOMEM)) => Ok(()),
        Err(errno) => Err(DirtyError::Sys {
            tracker: NAME,
            op: "mprotect",
            start,
            len,
            errno,
        }),
    }
}

impl Drop for Mprotect {
    fn drop(&mut self) {
        self.untrack_all();
        // Bit 0 goes from 1 to 0 and the count moves on (`PROTECTIONS`).
        PROTECTIONS.fetch_add(1, Ordering::AcqRel);
        ACTIVE.store(false, Ordering::Release);
    }
}
