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
