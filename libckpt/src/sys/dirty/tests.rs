//! Tests of the dirty trackers: one conformance scenario run against every tracker, each in a
//! child process (trackers install signal handlers and register memory with the kernel).
//!
//! A test re-executes the test binary with `CKPT_DIRTY_CHILD` naming itself; the child runs the
//! scenario and the parent checks its exit status and shows its output. A tracker the kernel
//! cannot provide prints a `SKIPPED` line, unless `CKPT_DIRTY_REQUIRE=uffd-async,mprotect` lists
//! it, which turns the skip into a failure (for CI on a known kernel).
#![allow(unsafe_code)]

use super::*;
use crate::sys::mem::{Mapping, PAGE};
use crate::sys::syscall;

const CHILD_ENV: &str = "CKPT_DIRTY_CHILD";

/// Runs `body` in a child process (this test binary, only test `name`), or runs it here when
/// this process is that child.
fn in_child(name: &str, body: fn()) {
    in_child_env(name, &[], body)
}

/// [`in_child`] with extra environment variables for the child.
fn in_child_env(name: &str, env: &[(&str, &str)], body: fn()) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        body();
        return;
    }
    // libtest names tests by their path without the crate name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let test = format!("{module}::{name}");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary path"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .envs(env.iter().copied())
        .output()
        .expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "child for {test} failed: {}",
        out.status
    );
    // The child really ran the test (a wrong name would run nothing and succeed).
    assert!(stdout.contains("1 passed"), "child did not run {test}");
}

/// Opens `kind`, or prints SKIPPED and returns `None` if this kernel cannot provide it.
fn open_or_skip(kind: TrackerKind) -> Option<Box<dyn DirtyTracker>> {
    match kind.open() {
        Ok(t) => Some(t),
        Err(e) => {
            let required = std::env::var("CKPT_DIRTY_REQUIRE").unwrap_or_default();
            assert!(
                !required.split(',').any(|r| r.trim() == kind.name()),
                "{kind} is required (CKPT_DIRTY_REQUIRE) but unavailable: {e}"
            );
            println!("SKIPPED: {kind} dirty tracker unavailable here: {e}");
            None
        }
    }
}

/// The runs a harvest of `[lo, hi)` reports, as page indexes relative to `base`.
fn harvest_pages(
    t: &mut dyn DirtyTracker,
    base: usize,
    lo: usize,
    hi: usize,
) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    t.harvest(base + lo * PAGE, base + hi * PAGE, &mut |s, e| {
        runs.push(((s - base) / PAGE, (e - base) / PAGE))
    })
    .expect("harvest");
    runs
}

fn poke(base: usize, page: usize, value: u8) {
    // SAFETY: callers pass pages of a mapping they own; the write is volatile so it happens.
    unsafe { core::ptr::write_volatile((base + page * PAGE + 17) as *mut u8, value) }
}

fn peek(base: usize, page: usize) -> u8 {
    // SAFETY: as `poke`, a read.
    unsafe { core::ptr::read_volatile((base + page * PAGE + 17) as *const u8) }
}

/// `read(2)` of `len` bytes from a pipe holding `data` into `dst`.
fn pipe_read_into(dst: usize, data: &[u8]) -> Result<usize, syscall::Errno> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (r, w) = (fds[0], fds[1]);
    assert_eq!(syscall::write(w, data), Ok(data.len()));
    // SAFETY: `dst` is `data.len()` bytes of a mapping the caller owns.
    let got = unsafe { syscall::pread_raw(r, dst, data.len(), 0) };
    // pread on a pipe is ESPIPE: use read through a slice instead.
    let got = match got {
        Err(syscall::Errno(libc::ESPIPE)) => {
            // SAFETY: as above: the caller owns these bytes and nothing else borrows them.
            let buf = unsafe { core::slice::from_raw_parts_mut(dst as *mut u8, data.len()) };
            syscall::read(r, buf)
        }
        other => other,
    };
    let _ = syscall::close(r);
    let _ = syscall::close(w);
    got
}

/// The behaviour every tracker must have.
fn conformance(kind: TrackerKind) {
    let Some(mut t) = open_or_skip(kind) else {
        return;
    };
    let t = &mut *t;
    assert_eq!(t.name(), kind.name());
    assert_eq!(t.kind(), kind);
    let m = Mapping::anonymous(64 * PAGE).expect("mmap");
    let base = m.addr();
    // Pages 0..32 populated before tracking; 32..64 never touched.
    for p in 0..32 {
        poke(base, p, 1);
    }
    t.track(base, 64 * PAGE).expect("track");
    assert_eq!(
        harvest_pages(t, base, 0, 64),
        [],
        "writes before track count"
    );

    // Populated (3, 4) and unpopulated (40: WP_UNPOPULATED for uffd) pages.
    poke(base, 3, 2);
    poke(base, 4, 2);
    poke(base, 40, 2);
    assert_eq!(harvest_pages(t, base, 0, 64), [(3, 5), (40, 41)]);
    assert_eq!(harvest_pages(t, base, 0, 64), [], "harvest re-arms");
    assert_eq!((peek(base, 3), peek(base, 4), peek(base, 40)), (2, 2, 2));

    poke(base, 4, 3);
    assert_eq!(harvest_pages(t, base, 0, 64), [(4, 5)]);

    // A read maps the zero page: not a write. The later write is one.
    assert_eq!(peek(base, 50), 0);
    assert_eq!(harvest_pages(t, base, 0, 64), []);
    poke(base, 50, 4);
    assert_eq!(harvest_pages(t, base, 0, 64), [(50, 51)]);

    // A harvest of part of the range leaves the rest for later.
    poke(base, 20, 5);
    poke(base, 30, 5);
    assert_eq!(harvest_pages(t, base, 25, 64), [(30, 31)]);
    assert_eq!(harvest_pages(t, base, 0, 64), [(20, 21)]);

    // Unaligned bounds are widened to the pages they touch.
    poke(base, 12, 5);
    poke(base, 13, 5);
    let mut seen = Vec::new();
    t.harvest(base + 12 * PAGE + 5, base + 13 * PAGE + 1, &mut |s, e| {
        seen.push(((s - base) / PAGE, (e - base) / PAGE))
    })
    .expect("harvest");
    assert_eq!(seen, [(12, 14)]);

    // Writes inside the callback land in the next harvest.
    poke(base, 7, 6);
    let mut seen = Vec::new();
    t.harvest(base, base + 64 * PAGE, &mut |s, e| {
        seen.push(((s - base) / PAGE, (e - base) / PAGE));
        poke(base, 8, 6);
    })
    .expect("harvest");
    assert_eq!(seen, [(7, 8)]);
    assert_eq!(harvest_pages(t, base, 0, 64), [(8, 9)]);

    // The kernel writes into a tracked page: read(2) from a pipe, into a populated page (10)
    // and into one never touched (60).
    let data: Vec<u8> = (0..200u8).collect();
    for page in [10, 60] {
        let dst = base + page * PAGE + 100;
        if !t.kernel_writes_transparent() {
            // The documented limitation: unprepared, the kernel's write fails and nothing
            // changes.
            assert_eq!(
                pipe_read_into(dst, &data),
                Err(syscall::Errno(libc::EFAULT))
            );
            assert_eq!(harvest_pages(t, base, 0, 64), []);
        }
        t.prepare_kernel_write(dst, data.len()).expect("prepare");
        assert_eq!(pipe_read_into(dst, &data), Ok(data.len()));
        // SAFETY: the bytes just read, inside the mapping.
        let got = unsafe { core::slice::from_raw_parts(dst as *const u8, data.len()) };
        assert_eq!(got, &data[..]);
        assert_eq!(harvest_pages(t, base, 0, 64), [(page, page + 1)]);
    }

    // Errors: bad ranges are refused.
    assert!(matches!(
        t.track(base + 1, PAGE),
        Err(DirtyError::Unaligned { .. })
    ));
    assert!(matches!(
        t.track(base + 8 * PAGE, PAGE),
        Err(DirtyError::Overlap { .. })
    ));
    assert!(matches!(
        t.untrack(base, PAGE),
        Err(DirtyError::NotTracked { .. })
    ));

    // Untracked: writes are not seen (and do not fault).
    t.untrack(base, 64 * PAGE).expect("untrack");
    poke(base, 5, 7);
    poke(base, 45, 7);
    assert_eq!(harvest_pages(t, base, 0, 64), []);

    // A range unmapped while tracked is forgotten without error.
    let gone = Mapping::anonymous(4 * PAGE).expect("mmap");
    let (gone_addr, gone_len) = (gone.addr(), gone.size());
    t.track(gone_addr, gone_len).expect("track");
    poke(gone_addr, 1, 1);
    drop(gone);
    t.untrack(gone_addr, gone_len)
        .expect("untrack an unmapped range");

    // Two ranges, reset and untrack_all.
    let m2 = Mapping::anonymous(16 * PAGE).expect("mmap");
    t.track(base, 64 * PAGE).expect("track again");
    t.track(m2.addr(), 16 * PAGE).expect("track second");
    poke(m2.addr(), 15, 8);
    poke(base, 63, 8);
    let mut all = Vec::new();
    t.harvest(0, usize::MAX & !(PAGE - 1), &mut |s, e| all.push((s, e)))
        .expect("harvest all");
    let mut want = vec![
        (base + 63 * PAGE, base + 64 * PAGE),
        (m2.addr() + 15 * PAGE, m2.addr() + 16 * PAGE),
    ];
    want.sort();
    assert_eq!(all, want);
    poke(base, 2, 9);
    poke(m2.addr(), 3, 9);
    t.reset().expect("reset");
    assert_eq!(harvest_pages(t, base, 0, 64), [], "reset forgets writes");
    assert_eq!(harvest_pages(t, m2.addr(), 0, 16), []);
    poke(base, 2, 10);
    poke(m2.addr(), 3, 10);
    assert_eq!(harvest_pages(t, base, 0, 64), [(2, 3)], "reset re-arms");
    assert_eq!(harvest_pages(t, m2.addr(), 0, 16), [(3, 4)]);
    t.untrack_all();
    poke(base, 1, 11);
    poke(m2.addr(), 1, 11);
    assert_eq!(harvest_pages(t, base, 0, 64), []);
    assert_eq!(harvest_pages(t, m2.addr(), 0, 16), []);
    let mut internal = 0;
    t.internal_ranges(&mut |_, _| internal += 1);
    assert_eq!(internal, 0, "untrack_all releases the per-range memory");
    t.track(m2.addr(), 16 * PAGE)
        .expect("usable after untrack_all");
    poke(m2.addr(), 0, 12);
    assert_eq!(harvest_pages(t, m2.addr(), 0, 16), [(0, 1)]);
    println!("{kind}: conformance passed");
}

#[test]
fn uffd_async_conformance() {
    in_child("uffd_async_conformance", || {
        conformance(TrackerKind::UffdAsync)
    });
}

#[test]
fn mprotect_conformance() {
    in_child("mprotect_conformance", || {
        conformance(TrackerKind::Mprotect)
    });
}

static PREV_CALLS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

extern "C" fn previous_handler(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    PREV_CALLS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    // SAFETY: the kernel's siginfo; the fault is on a page the test made read-only itself.
    let page = unsafe { (*info).si_addr() } as usize & !(PAGE - 1);
    // SAFETY: that page belongs to the test's own mapping.
    let _ = unsafe { syscall::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_WRITE) };
}

/// Faults outside tracked ranges reach the handler installed before the tracker's.
#[test]
fn mprotect_chains_foreign_faults() {
    in_child("mprotect_chains_foreign_faults", || {
        // SAFETY: an all-zero sigaction is valid plain data.
        let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
        act.sa_sigaction = previous_handler as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        // SAFETY: a valid SA_SIGINFO handler; this child process owns its signal state.
        let installed = unsafe { libc::sigaction(libc::SIGSEGV, &act, core::ptr::null_mut()) };
        assert_eq!(installed, 0);
        let Some(mut t) = open_or_skip(TrackerKind::Mprotect) else {
            return;
        };
        let tracked = Mapping::anonymous(4 * PAGE).expect("mmap");
        let foreign = Mapping::anonymous(PAGE).expect("mmap");
        t.track(tracked.addr(), 4 * PAGE).expect("track");
        // SAFETY: the test's own page; its handler makes it writable again. (Not read-only:
        // the tracker takes a write to read-only anonymous memory outside its ranges for one of
        // its own pages moved by the C library's mremap, see `unprotect_moved`.)
        unsafe { syscall::mprotect(foreign.addr(), PAGE, libc::PROT_NONE) }.expect("mprotect");
        poke(tracked.addr(), 2, 1);
        assert_eq!(PREV_CALLS.load(core::sync::atomic::Ordering::Relaxed), 0);
        poke(foreign.addr(), 0, 1);
        assert_eq!(PREV_CALLS.load(core::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(peek(foreign.addr(), 0), 1);
        assert_eq!(harvest_pages(&mut *t, tracked.addr(), 0, 4), [(2, 3)]);
        // One mprotect tracker per process: its state is global.
        assert!(matches!(Mprotect::new(), Err(DirtyError::Busy { .. })));
        drop(t);
        let again = Mprotect::new().expect("a new tracker after the first is dropped");
        drop(again);
    });
}

/// Selection: names parse, unknown ones are refused clearly, and `open(None)` picks uffd-async
/// when it works.
#[test]
fn selection() {
    in_child("selection", || {
        assert_eq!(
            TrackerKind::parse("uffd-async").unwrap(),
            TrackerKind::UffdAsync
        );
        assert_eq!(
            TrackerKind::parse("mprotect").unwrap(),
            TrackerKind::Mprotect
        );
        let e = TrackerKind::parse("soft-dirty").unwrap_err().to_string();
        assert!(e.contains("soft-dirty") && e.contains("uffd-async"), "{e}");
        let uffd_works = UffdAsync::new().is_ok();
        let t = open(None).expect("some tracker works");
        let want = if uffd_works { "uffd-async" } else { "mprotect" };
        assert_eq!(t.name(), want);
        drop(t);
        // Forcing mprotect while one is alive: a clear error naming the forced tracker.
        let first = open(Some(TrackerKind::Mprotect)).expect("mprotect");
        let e = open(Some(TrackerKind::Mprotect)).unwrap_err().to_string();
        assert!(e.contains("CKPT_TRACKER=mprotect"), "{e}");
        drop(first);
    });
}

/// `CKPT_TRACKER` forces a tracker, and a bad value is a clear error.
#[test]
fn selection_env_forced() {
    in_child_env("selection_env_forced", &[(TRACKER_ENV, "mprotect")], || {
        let t = best_available().expect("forced mprotect");
        assert_eq!(t.name(), "mprotect");
    });
}

#[test]
fn selection_env_unknown() {
    in_child_env(
        "selection_env_unknown",
        &[(TRACKER_ENV, "soft-dirty")],
        || {
            let e = best_available().unwrap_err().to_string();
            assert!(e.contains("CKPT_TRACKER=\"soft-dirty\""), "{e}");
        },
    );
}

/// Counts allocations, so a test can check that harvesting makes none.
struct CountingAlloc;

static ALLOCATIONS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's layout is passed on as given.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        // SAFETY: as `alloc` and `dealloc`.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static COUNTING: CountingAlloc = CountingAlloc;

/// What the signal handler below harvests with: the tracker, the range and where runs go.
static HANDLER_TRACKER: core::sync::atomic::AtomicPtr<Box<dyn DirtyTracker>> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());
static HANDLER_BASE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
static HANDLER_RUNS: [core::sync::atomic::AtomicUsize; 8] =
    [const { core::sync::atomic::AtomicUsize::new(0) }; 8];
static HANDLER_RESULT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

extern "C" fn harvest_in_handler(_: i32) {
    use core::sync::atomic::Ordering::Relaxed;
    let base = HANDLER_BASE.load(Relaxed);
    // SAFETY: the test stored a pointer to its live tracker and does nothing else with it
    // until the signal (raised synchronously) has been handled.
    let t = unsafe { &mut *HANDLER_TRACKER.load(Relaxed) };
    let mut n = 0;
    let r = t.harvest(base, base + 64 * PAGE, &mut |s, e| {
        if n + 1 < HANDLER_RUNS.len() {
            HANDLER_RUNS[n].store((s - base) / PAGE, Relaxed);
            HANDLER_RUNS[n + 1].store((e - base) / PAGE, Relaxed);
        }
        n += 2;
    });
    HANDLER_RESULT.store(if r.is_ok() { n + 1 } else { usize::MAX }, Relaxed);
}

/// Harvest inside a signal handler, as the checkpoint handler will: it works and allocates
/// nothing (checked with a counting global allocator).
fn harvest_from_signal_handler(kind: TrackerKind) {
    use core::sync::atomic::Ordering::Relaxed;
    let Some(mut t) = open_or_skip(kind) else {
        return;
    };
    let m = Mapping::anonymous(64 * PAGE).expect("mmap");
    t.track(m.addr(), 64 * PAGE).expect("track");
    poke(m.addr(), 9, 1);
    poke(m.addr(), 10, 1);
    poke(m.addr(), 33, 1);
    HANDLER_BASE.store(m.addr(), Relaxed);
    HANDLER_TRACKER.store(&mut t, Relaxed);
    // SAFETY: a plain handler (signal number only) doing only the harvest into statics.
    let old = unsafe { libc::signal(libc::SIGUSR1, harvest_in_handler as *const () as usize) };
    assert_ne!(old, libc::SIG_ERR);
    let before = ALLOCATIONS.load(Relaxed);
    syscall::raise(libc::SIGUSR1);
    let after = ALLOCATIONS.load(Relaxed);
    HANDLER_TRACKER.store(core::ptr::null_mut(), Relaxed);
    assert_eq!(after, before, "harvest allocated");
    assert_eq!(HANDLER_RESULT.load(Relaxed), 5, "two runs, harvest Ok");
    let runs: Vec<usize> = HANDLER_RUNS[..4].iter().map(|r| r.load(Relaxed)).collect();
    assert_eq!(runs, [9, 11, 33, 34]);
    assert_eq!(harvest_pages(&mut *t, m.addr(), 0, 64), []);
}

#[test]
fn uffd_async_harvest_in_signal_handler() {
    in_child("uffd_async_harvest_in_signal_handler", || {
        harvest_from_signal_handler(TrackerKind::UffdAsync)
    });
}

#[test]
fn mprotect_harvest_in_signal_handler() {
    in_child("mprotect_harvest_in_signal_handler", || {
        harvest_from_signal_handler(TrackerKind::Mprotect)
    });
}

/// A private file mapping (like `.data`): its pages are the file's until written, then the
/// process's own copies; both trackers see the copy-on-write, for pages read before and not.
fn private_file_mapping(kind: TrackerKind) {
    let Some(mut t) = open_or_skip(kind) else {
        return;
    };
    let exe = std::fs::File::open(std::env::current_exe().expect("exe")).expect("open exe");
    // SAFETY: a new private mapping of our own executable; the kernel picks the address.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            4 * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&exe),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let base = p as usize;
    let _ = peek(base, 1);
    t.track(base, 4 * PAGE)
        .expect("track a private file mapping");
    assert_eq!(harvest_pages(&mut *t, base, 0, 4), []);
    poke(base, 1, 1);
    poke(base, 3, 1);
    assert_eq!(harvest_pages(&mut *t, base, 0, 4), [(1, 2), (3, 4)]);
    assert_eq!(harvest_pages(&mut *t, base, 0, 4), []);
    poke(base, 3, 2);
    assert_eq!(harvest_pages(&mut *t, base, 0, 4), [(3, 4)]);
    t.untrack(base, 4 * PAGE).expect("untrack");
    // SAFETY: our mapping, no longer used.
    unsafe { libc::munmap(p, 4 * PAGE) };
}

#[test]
fn uffd_async_private_file_mapping() {
    in_child("uffd_async_private_file_mapping", || {
        private_file_mapping(TrackerKind::UffdAsync)
    });
}

#[test]
fn mprotect_private_file_mapping() {
    in_child("mprotect_private_file_mapping", || {
        private_file_mapping(TrackerKind::Mprotect)
    });
}

/// More runs than one kernel scan buffer holds (uffd-async continues at `walk_end`), and a long
/// run: every run comes out once, merged, in order.
fn many_runs(kind: TrackerKind) {
    let Some(mut t) = open_or_skip(kind) else {
        return;
    };
    const PAGES: usize = 4096;
    let m = Mapping::anonymous(PAGES * PAGE).expect("mmap");
    let base = m.addr();
    for p in (0..PAGES).step_by(3) {
        poke(base, p, 1);
    }
    t.track(base, PAGES * PAGE).expect("track");
    let mut want = Vec::new();
    for p in (0..2400).step_by(2) {
        poke(base, p, 2);
        want.push((p, p + 1));
    }
    for p in 2600..4000 {
        poke(base, p, 2);
    }
    want.push((2600, 4000));
    assert_eq!(harvest_pages(&mut *t, base, 0, PAGES), want);
    assert_eq!(harvest_pages(&mut *t, base, 0, PAGES), []);
    poke(base, PAGES - 1, 3);
    assert_eq!(harvest_pages(&mut *t, base, 0, PAGES), [(PAGES - 1, PAGES)]);
}

#[test]
fn uffd_async_many_runs() {
    in_child("uffd_async_many_runs", || many_runs(TrackerKind::UffdAsync));
}

#[test]
fn mprotect_many_runs() {
    in_child("mprotect_many_runs", || many_runs(TrackerKind::Mprotect));
}

/// Scattered writes past `vm.max_map_count` VMAs: the mprotect tracker degrades to "the whole
/// range is written" instead of aborting, says so, and recovers at the next harvest.
#[test]
fn mprotect_survives_map_count_limit() {
    in_child("mprotect_survives_map_count_limit", || {
        let max: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(65530);
        if max > 1 << 18 {
            println!("SKIPPED: vm.max_map_count={max} is too large to reach quickly");
            return;
        }
        let mut t = Mprotect::new().expect("mprotect tracker");
        assert_eq!(t.overflows(), 0);
        // Every other page written: each write adds two VMAs until the limit.
        let pages = 2 * max + 64;
        let m = Mapping::anonymous(pages * PAGE).expect("mmap");
        let base = m.addr();
        t.track(base, pages * PAGE).expect("track");
        for p in (0..pages).step_by(2) {
            poke(base, p, 1);
        }
        assert!(t.overflows() >= 1, "the overflow is counted");
        let runs = harvest_pages(&mut t, base, 0, pages);
        assert_eq!(runs, [(0, pages)], "degraded: the whole range is written");
        assert_eq!(harvest_pages(&mut t, base, 0, pages), []);
        poke(base, 5, 2);
        assert_eq!(harvest_pages(&mut t, base, 0, pages), [(5, 6)]);
    });
}

/// A pipe holding `data`: `(read end, write end)`.
fn pipe_with(data: &[u8]) -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    if !data.is_empty() {
        assert_eq!(syscall::write(fds[1], data), Ok(data.len()));
    }
    (fds[0], fds[1])
}

/// The C library's way to say how a call ended: its count, or `-errno`.
fn c_result(n: isize) -> isize {
    if n < 0 {
        // SAFETY: this thread's errno, right after the failed call.
        -(unsafe { *libc::__errno_location() } as isize)
    } else {
        n
    }
}

/// The bytes at `base + page * PAGE + off`.
fn bytes_at<'a>(base: usize, page: usize, off: usize, len: usize) -> &'a [u8] {
    // SAFETY: callers name bytes of a mapping they own and do not write meanwhile.
    unsafe { core::slice::from_raw_parts((base + page * PAGE + off) as *const u8, len) }
}

/// The program's own calls through which the kernel writes into tracked memory, made through
/// the C library's names as an unmodified program makes them: `read`, `pread`, `readv`,
/// `preadv`, `recv`, `recvfrom`, `recvmsg`, `getrandom`, and std's `File::read`. Under `mprotect` they work only
/// because this test binary's `libc::read` and friends are `sys::interpose`'s (the executable's
/// own definition wins at link time); the first assertion checks that.
fn kernel_writes_through_libc(kind: TrackerKind) {
    // The linker bound the C library's names to the wrappers: same address.
    use crate::sys::interpose;
    assert_eq!(
        libc::read as *const () as usize,
        interpose::read as *const () as usize,
        "read"
    );
    assert_eq!(
        libc::pread as *const () as usize,
        interpose::pread as *const () as usize,
        "pread"
    );
    assert_eq!(
        libc::readv as *const () as usize,
        interpose::readv as *const () as usize,
        "readv"
    );
    assert_eq!(
        libc::recvmsg as *const () as usize,
        interpose::recvmsg as *const () as usize,
        "recvmsg"
    );
    let Some(mut t) = open_or_skip(kind) else {
        return;
    };
    let m = Mapping::anonymous(32 * PAGE).expect("mmap");
    let base = m.addr();
    poke(base, 2, 1);
    t.track(base, 32 * PAGE).expect("track");
    let data: Vec<u8> = (0..3 * PAGE).map(|i| (i * 7 % 251) as u8).collect();

    // read(2) across three pages, the first populated before, the others never touched.
    let (r, w) = pipe_with(&data[..2 * PAGE + 200]);
    let dst = base + 2 * PAGE + 100;
    // SAFETY: `dst` is 2 * PAGE + 200 bytes of the mapping.
    let n = unsafe { libc::read(r, dst as *mut libc::c_void, 2 * PAGE + 200) };
    assert_eq!(c_result(n), 2 * PAGE as isize + 200, "read");
    assert_eq!(
        bytes_at(base, 2, 100, 2 * PAGE + 200),
        &data[..2 * PAGE + 200]
    );
    assert_eq!(harvest_pages(&mut *t, base, 0, 32), [(2, 5)]);
    // Again into the same pages, now clean and protected once more.
    assert_eq!(syscall::write(w, &data[..50]), Ok(50));
    // SAFETY: as above.
    let n = unsafe { libc::read(r, (base + 3 * PAGE) as *mut libc::c_void, 50) };
    assert_eq!(c_result(n), 50, "read again");
    assert_eq!(harvest_pages(&mut *t, base, 0, 32), [(3, 4)]);

    // readv(2) into two buffers on separate pages.
    assert_eq!(syscall::write(w, &data[..300]), Ok(300));
    let iov = [
        libc::iovec {
            iov_base: (base + 7 * PAGE) as *mut libc::c_void,
            iov_len: 100,
        },
        libc::iovec {
            iov_base: (base + 9 * PAGE + 10) as *mut libc::c_void,
            iov_len: 200,
        },
    ];
    // SAFETY: both buffers are inside the mapping.
    let n = unsafe { libc::readv(r, iov.as_ptr(), 2) };
    assert_eq!(c_result(n), 300, "readv");
    assert_eq!(bytes_at(base, 7, 0, 100), &data[..100]);
    assert_eq!(bytes_at(base, 9, 10, 200), &data[100..300]);
    assert_eq!(harvest_pages(&mut *t, base, 0, 32), [(7, 8), (9, 10)]);
    let _ = syscall::close(r);
    let _ = syscall::close(w);

    // pread(2) and preadv(2) from a file.
    let path = std::env::temp_dir().join(format!("ckpt-kw-{}", std::process::id()));
    std::fs::write(&path, &data).expect("write the data file");
    let f = std::fs::File::open(&path).expect("open the data file");
    let _ = std::fs::remove_file(&path);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: 1000 bytes of the mapping.
    let n = unsafe { libc::pread(fd, (base + 11 * PAGE) as *mut libc::c_void, 1000, 5) };
    assert_eq!(c_result(n), 1000, "pread");
    assert_eq!(bytes_at(base, 11, 0, 1000), &data[5..1005]);
    let iov = [libc::iovec {
        iov_base: (base + 12 * PAGE + 4000) as *mut libc::c_void,
        iov_len: 200,
    }];
    // SAFETY: 200 bytes of the mapping, across pages 12 and 13.
    let n = unsafe { libc::preadv(fd, iov.as_ptr(), 1, 7) };
    assert_eq!(c_result(n), 200, "preadv");
    assert_eq!(bytes_at(base, 12, 4000, 200), &data[7..207]);
    // std's `File::read` calls the C library's `read`, so the wrapper.
    // SAFETY: 300 bytes of the mapping, borrowed by nothing else.
    let dst = unsafe { core::slice::from_raw_parts_mut((base + 29 * PAGE) as *mut u8, 300) };
    let n = std::io::Read::read(&mut &f, dst).expect("File::read");
    assert_eq!(n, 300, "File::read");
    assert_eq!(bytes_at(base, 29, 0, 300), &data[..300]);
    assert_eq!(harvest_pages(&mut *t, base, 0, 32), [(11, 14), (29, 30)]);
    drop(f);

    // recv, recvfrom and recvmsg from a datagram socket pair; recvmsg's header itself is in
    // tracked memory too (the kernel writes its lengths and flags).
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into `sv`.
    let ok = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    assert_eq!(ok, 0);
    for k in 0..3 {
        assert_eq!(syscall::write(sv[1], &data[k * 10..k * 10 + 100]), Ok(100));
    }
    // SAFETY: 100 bytes of the mapping.
    let n = unsafe { libc::recv(sv[0], (base + 15 * PAGE) as *mut libc::c_void, 100, 0) };
    assert_eq!(c_result(n), 100, "recv");
    assert_eq!(bytes_at(base, 15, 0, 100), &data[..100]);
    let addrlen = (base + 17 * PAGE + 8) as *mut libc::socklen_t;
    // SAFETY: the length and the address live in the mapping (page 17). (An unnamed socket's
    // address is empty: the kernel writes only the length.)
    unsafe { addrlen.write_volatile(core::mem::size_of::<libc::sockaddr_un>() as u32) };
    // SAFETY: buffer, address and length all inside the mapping.
    let n = unsafe {
        libc::recvfrom(
            sv[0],
            (base + 16 * PAGE) as *mut libc::c_void,
            100,
            0,
            (base + 17 * PAGE + 64) as *mut libc::sockaddr,
            addrlen,
        )
    };
    assert_eq!(c_result(n), 100, "recvfrom");
    assert_eq!(bytes_at(base, 16, 0, 100), &data[10..110]);
    let msg = (base + 20 * PAGE) as *mut libc::msghdr;
    let iov = (base + 20 * PAGE + 512) as *mut libc::iovec;
    // SAFETY: header and iovec in the mapping (page 20); the data goes to page 22.
    unsafe {
        iov.write_volatile(libc::iovec {
            iov_base: (base + 22 * PAGE) as *mut libc::c_void,
            iov_len: 100,
        });
        let mut h: libc::msghdr = core::mem::zeroed();
        h.msg_iov = iov;
        h.msg_iovlen = 1;
        h.msg_flags = -1;
        msg.write_volatile(h);
    }
    assert_eq!(harvest_pages(&mut *t, base, 0, 32), [(15, 18), (20, 21)]);
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(sv[0], msg, 0) };
    assert_eq!(c_result(n), 100, "recvmsg");
    assert_eq!(bytes_at(base, 22, 0, 100), &data[20..120]);
    // SAFETY: the header the kernel just filled.
    let flags = unsafe { (*msg).msg_flags };
    assert_eq!(flags, 0, "the kernel wrote the header");
    assert_eq!(harvest_pages(&mut *t, base, 0, 32), [(20, 21), (22, 23)]);
    let _ = syscall::close(sv[0]);
    let _ = syscall::close(sv[1]);

    // getrandom(2).
    // SAFETY: 64 bytes of the mapping.
    let n = unsafe { libc::getrandom((base + 25 * PAGE) as *mut libc::c_void, 64, 0) };
    assert_eq!(c_result(n), 64, "getrandom");
    assert_eq!(harvest_pages(&mut *t, base, 0, 32), [(25, 26)]);

    // A bad pointer still fails the C way, and nothing is reported.
    let (r, w) = pipe_with(b"x");
    // SAFETY: the kernel checks the address; nothing is mapped at 8.
    let n = unsafe { libc::read(r, 8 as *mut libc::c_void, 1) };
    assert_eq!(c_result(n), -(libc::EFAULT as isize), "bad pointer");
    let _ = syscall::close(r);
    let _ = syscall::close(w);
    assert_eq!(harvest_pages(&mut *t, base, 0, 32), []);

    if kind == TrackerKind::Mprotect {
        // The bitmap says written, the page is read-only (an mprotect that failed halfway, or
        // a handler that protected it between the two): the wrapper does not trust the bitmap
        // after an EFAULT and prepares the buffer again.
        poke(base, 27, 1);
        // SAFETY: a page of the mapping, tracked, made read-only behind the tracker's back.
        unsafe { syscall::mprotect(base + 27 * PAGE, PAGE, libc::PROT_READ) }.expect("mprotect");
        let (r, w) = pipe_with(&data[..10]);
        // SAFETY: 10 bytes of the mapping.
        let n = unsafe { libc::read(r, (base + 27 * PAGE) as *mut libc::c_void, 10) };
        assert_eq!(
            c_result(n),
            10,
            "read into a page the bitmap calls writable"
        );
        assert_eq!(bytes_at(base, 27, 0, 10), &data[..10]);
        let _ = syscall::close(r);
        let _ = syscall::close(w);
        assert_eq!(harvest_pages(&mut *t, base, 0, 32), [(27, 28)]);
    }
}

#[test]
fn uffd_async_kernel_writes_through_libc() {
    in_child("uffd_async_kernel_writes_through_libc", || {
        kernel_writes_through_libc(TrackerKind::UffdAsync)
    });
}

#[test]
fn mprotect_kernel_writes_through_libc() {
    in_child("mprotect_kernel_writes_through_libc", || {
        kernel_writes_through_libc(TrackerKind::Mprotect)
    });
}

/// What the `SIGALRM` handler below harvests: the tracker, the range and what it saw.
static ALARM_TRACKER: core::sync::atomic::AtomicPtr<Box<dyn DirtyTracker>> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());
static ALARM_BASE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// Pages the handler's harvest reported, one bit each (of the first 64).
static ALARM_PAGES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static ALARM_RUNS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// The handler has run.
static ALARM_DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

extern "C" fn harvest_on_alarm(_: i32) {
    use core::sync::atomic::Ordering::Relaxed;
    let base = ALARM_BASE.load(Relaxed);
    // SAFETY: the test stored a pointer to its live tracker and does not use it until the
    // alarm was handled.
    let t = unsafe { &mut *ALARM_TRACKER.load(Relaxed) };
    let _ = t.harvest(base, base + 64 * PAGE, &mut |s, e| {
        ALARM_RUNS.fetch_add(1, Relaxed);
        for p in (s - base) / PAGE..(e - base) / PAGE {
            ALARM_PAGES.fetch_or(1 << p, Relaxed);
        }
    });
    ALARM_DONE.store(true, core::sync::atomic::Ordering::Release);
}

/// A checkpoint (here: a harvest in a `SA_RESTART` signal handler, as the checkpoint signal
/// does) while the program is blocked in `read(2)` into tracked memory: the harvest reports the
/// buffer's pages (prepared for the kernel's write, so written) and protects them again, the
/// kernel restarts the read, and the data arrives afterwards. The read must still succeed and
/// the pages be reported again by the next harvest.
fn kernel_read_across_harvest(kind: TrackerKind) {
    use core::sync::atomic::Ordering::Relaxed;
    let Some(mut t) = open_or_skip(kind) else {
        return;
    };
    let m = Mapping::anonymous(64 * PAGE).expect("mmap");
    let base = m.addr();
    t.track(base, 64 * PAGE).expect("track");
    ALARM_BASE.store(base, Relaxed);
    ALARM_TRACKER.store(&mut t, Relaxed);
    // SAFETY: an all-zero sigaction is valid plain data.
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = harvest_on_alarm as *const () as usize;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: a handler that only harvests into statics; SA_RESTART as the checkpoint signal.
    let ok = unsafe { libc::sigaction(libc::SIGALRM, &act, core::ptr::null_mut()) };
    assert_eq!(ok, 0);
    let (r, w) = pipe_with(&[]);
    // The writer thread must not take the alarm: it starts with SIGALRM blocked.
    // SAFETY: an all-zero sigset_t is valid plain data.
    let mut set: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: sigset operations on a local set; the mask of this thread only.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGALRM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut());
    }
    let writer = std::thread::spawn(move || {
        // After the harvest, while the reader is still blocked.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ALARM_DONE.load(core::sync::atomic::Ordering::Acquire)
            && std::time::Instant::now() < give_up
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(syscall::write(w, b"late data"), Ok(9));
        let _ = syscall::close(w);
    });
    // SAFETY: as above.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, core::ptr::null_mut()) };
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        },
    };
    // SAFETY: a one-shot timer; the old value is not wanted.
    let ok = unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, core::ptr::null_mut()) };
    assert_eq!(ok, 0);
    let dst = base + 5 * PAGE + 10;
    // SAFETY: 9 bytes of the mapping; blocks until the writer writes (after the alarm).
    let n = unsafe { libc::read(r, dst as *mut libc::c_void, 9) };
    writer.join().expect("writer");
    ALARM_TRACKER.store(core::ptr::null_mut(), Relaxed);
    let _ = syscall::close(r);
    assert_eq!(c_result(n), 9, "read across a harvest");
    assert_eq!(bytes_at(base, 5, 10, 9), b"late data");
    assert!(ALARM_DONE.load(Relaxed), "the alarm was handled");
    if kind == TrackerKind::Mprotect {
        // The wrapper marked the page written before blocking: the handler's harvest saw it.
        assert_eq!(
            ALARM_PAGES.load(Relaxed),
            1 << 5,
            "the harvest in the handler"
        );
    }
    assert!(ALARM_RUNS.load(Relaxed) <= 1);
    assert_eq!(
        harvest_pages(&mut *t, base, 0, 64),
        [(5, 6)],
        "after the read"
    );
}

#[test]
fn uffd_async_kernel_read_across_harvest() {
    in_child("uffd_async_kernel_read_across_harvest", || {
        kernel_read_across_harvest(TrackerKind::UffdAsync)
    });
}

#[test]
fn mprotect_kernel_read_across_harvest() {
    in_child("mprotect_kernel_read_across_harvest", || {
        kernel_read_across_harvest(TrackerKind::Mprotect)
    });
}

/// What `sys::mem::scan_populated` (capture's search for pages holding data) makes of a tracked
/// range: pages never touched are not data under any tracker. Under `uffd-async` the protection
/// puts a marker in their page-table entries, which `PAGEMAP_SCAN` reports as swapped: the scan
/// must hand such runs on as `Found::DataOrMarker` (read to tell), never as `Found::Data`, and
/// tracking must not make them resident.
fn scan_after_track(kind: TrackerKind) {
    use crate::sys::mem::{Found, PageRegion, Scan, scan_populated};
    let Some(mut t) = open_or_skip(kind) else {
        return;
    };
    let m = Mapping::anonymous(256 * PAGE).expect("mmap");
    let base = m.addr();
    for p in [3, 4, 100] {
        poke(base, p, 1);
    }
    let resident = |m: &Mapping| {
        let mut v = vec![0u8; 256];
        // SAFETY: mincore writes one byte per page of the mapping into `v`, which has 256.
        let r = unsafe { libc::mincore(m.addr() as *mut _, m.size(), v.as_mut_ptr()) };
        assert_eq!(r, 0);
        v.iter().filter(|&&b| b & 1 != 0).count()
    };
    assert_eq!(resident(&m), 3);
    t.track(base, 256 * PAGE).expect("track");
    assert_eq!(resident(&m), 3, "tracking made pages resident");
    let fd = syscall::open(b"/proc/self/pagemap\0", libc::O_RDONLY, 0).expect("pagemap");
    let mut buf = [PageRegion::default(); 4];
    let (mut data, mut unsure) = (Vec::new(), 0);
    let r = scan_populated(
        fd,
        base,
        base + 256 * PAGE,
        Scan::Populated,
        &mut buf,
        |s, e, f| {
            match f {
                Found::Data => data.push(((s - base) / PAGE, (e - base) / PAGE)),
                Found::DataOrMarker => unsure += (e - s) / PAGE,
            }
            Ok(())
        },
    )
    .expect("scan callback");
    let _ = syscall::close(fd);
    if r == Err(syscall::Errno(libc::ENOTTY)) {
        println!("SKIPPED: no PAGEMAP_SCAN here");
        return;
    }
    r.expect("PAGEMAP_SCAN");
    assert_eq!(data, [(3, 5), (100, 101)], "{kind}");
    if kind == TrackerKind::UffdAsync {
        // The 253 pages never touched carry markers (the kernel's behaviour this guards).
        assert_eq!(unsure, 253, "{kind}");
    } else {
        assert_eq!(unsure, 0, "{kind}");
    }
    println!("{kind}: scan after track passed");
}

#[test]
fn uffd_async_scan_after_track() {
    in_child("uffd_async_scan_after_track", || {
        scan_after_track(TrackerKind::UffdAsync)
    });
}

#[test]
fn mprotect_scan_after_track() {
    in_child("mprotect_scan_after_track", || {
        scan_after_track(TrackerKind::Mprotect)
    });
}
