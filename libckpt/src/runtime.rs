//! The live checkpointing runtime: global state, the timer signal handler, `checkpoint_now`.
//!
//! # Safety
//!
//! The runtime is created once by `init` and reached through one global pointer. Mutable access
//! happens only while `busy` is held (a checkpoint) or, for `init`/`shutdown`, while the
//! checkpoint signal is blocked and no checkpoint runs; the signal handler bails out if `busy`
//! is already set. The handler itself only reads configuration, writes the arena and the
//! counters, and issues raw system calls.
#![allow(unsafe_code)]

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use crate::arena::Arena;
use crate::capture::{self, CaptureStats, Captured, Mode, Report, Writer};
use crate::config::{BusyMode, Config, LogLevel, Store};
use crate::dirty::DirtyTracker;
use crate::error::{Error, RawError, Result, raw_err};
use crate::remote::{ExecSpec, Helper};
use crate::store;
use crate::sys::arch::{self, Context};
use crate::sys::glibc::{self, Rseq};
use crate::sys::mem::{PAGE, PageRegion, page_ceil, page_floor};
use crate::sys::signals::{self, TimerId};
use crate::sys::syscall;

/// Most ranges `exclude` accepts.
pub const MAX_EXCLUDES: usize = 256;

/// The process-wide checkpointing state.
#[derive(Debug)]
pub struct Runtime {
    pub(crate) cfg: Config,
    /// The store directory, open (for a remote store: its local directory).
    pub(crate) dir_fd: i32,
    /// The store's lock file, held with `flock`.
    pub(crate) lock_fd: i32,
    /// `/proc/self/pagemap` when `PAGEMAP_SCAN` works, else -1.
    pub(crate) pagemap_fd: i32,
    /// `/proc/self/mem`, to read memory mapped without read permission, else -1.
    pub(crate) mem_fd: i32,
    pub(crate) sig: i32,
    pub(crate) timer: Option<TimerId>,
    pub(crate) tid_offset: Option<usize>,
    pub(crate) rseq: Option<Rseq>,
    pub(crate) arena: *mut Arena,
    pub(crate) next_gen: u64,
    pub(crate) excludes: [(usize, usize); MAX_EXCLUDES],
    pub(crate) n_excludes: usize,
    pub(crate) busy: AtomicBool,
    pub(crate) committed: u64,
    pub(crate) failed: u64,
    pub(crate) last_error: Option<RawError>,
    /// The dirty tracker of the incremental policies.
    pub(crate) tracker: Option<Box<dyn DirtyTracker>>,
    /// The chain of incremental images the next one can build on.
    pub(crate) chain: Chain,
    /// The forked and buffered policies: the page their writer process reports in (shared).
    pub(crate) report: *mut Report,
    /// The buffered policies: the buffer pages are copied into (`CKPT_BUFFER` bytes): address
    /// and length.
    pub(crate) buffer: (usize, usize),
    /// Mappings of ours a capture records without contents, `(start, end)`: the report page and
    /// the buffer.
    pub(crate) own_maps: [(usize, usize); 2],
    /// The background writer still to be reaped.
    pub(crate) writer: Option<Background>,
    /// The process deleting retired images after an in-place commit, still to be reaped.
    pub(crate) deleter: i32,
    /// A remote store: its helper, and the command line a checkpoint starts it with.
    pub(crate) remote: Option<Remote>,
}

/// A remote store's part of the runtime.
#[derive(Debug)]
pub(crate) struct Remote {
    pub helper: Helper,
    pub exec: ExecSpec,
}

/// A checkpoint being written by a writer process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Background {
    pub pid: i32,
    pub generation: u64,
}

/// Where the incremental chain stands.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Chain {
    /// The newest committed generation of the chain; 0: the next checkpoint must be full
    /// (none yet, a failure lost a harvested dirty set, or this process was just restored).
    pub head: u64,
    /// Incremental images since the full one.
    pub len: u32,
    /// Page data of the full image.
    pub base_bytes: u64,
    /// Page data of the incremental images since.
    pub bytes: u64,
}

impl Chain {
    /// After generation `stats` committed.
    fn committed(&mut self, stats: &CaptureStats) {
        if stats.parent == 0 {
            *self = Chain {
                head: stats.generation,
                len: 0,
                base_bytes: stats.data_bytes,
                bytes: 0,
            };
        } else {
            self.head = stats.generation;
            self.len += 1;
            self.bytes += stats.data_bytes;
        }
    }
}

static RUNTIME: AtomicPtr<Runtime> = AtomicPtr::new(core::ptr::null_mut());
/// `init` ran with checkpointing off (no store): `checkpoint_now` and `exclude` do nothing.
static OFF: AtomicBool = AtomicBool::new(false);

/// Logs a line when the configuration's level is at least `$lvl`.
macro_rules! log_at {
    ($cfg:expr, $lvl:ident, $($arg:tt)*) => {
        if $cfg.log >= $crate::config::LogLevel::$lvl {
            crate::text::log_line(format_args!($($arg)*));
        }
    };
}
pub(crate) use log_at;

impl Runtime {
    /// Whether `fd` is one of the runtime's own descriptors (not the application's).
    pub fn owns_fd(&self, fd: i32) -> bool {
        let mut tracker = false;
        if let Some(t) = self.tracker.as_deref() {
            t.each_fd(&mut |f| tracker |= f == fd);
        }
        tracker
            || fd == self.dir_fd
            || fd == self.lock_fd
            || fd == self.pagemap_fd
            || fd == self.mem_fd
    }

    /// How the next checkpoint saves pages: incremental on the chain while it is short enough,
    /// else full (which compacts a chain into a new base).
    fn next_mode(&self) -> Mode {
        let c = &self.chain;
        // Without PAGEMAP_SCAN an incremental image could not say which of its pages went back
        // to zero (`capture::save_zero_gaps`): every checkpoint is then full.
        if !self.cfg.policy.incremental() || self.tracker.is_none() || self.pagemap_fd < 0 {
            return Mode::default();
        }
        let short = c.len < self.cfg.chain_max
            && c.bytes.saturating_mul(100)
                <= c.base_bytes.saturating_mul(self.cfg.chain_size_pct as u64);
        if c.head != 0 && short {
            Mode {
                parent: c.head,
                rebase: false,
            }
        } else {
            Mode {
                parent: 0,
                rebase: c.head != 0,
            }
        }
    }

    /// If `addr` lies in an excluded page range, where that range ends.
    pub fn excluded_until(&self, addr: usize) -> Option<usize> {
        self.excludes[..self.n_excludes]
            .iter()
            .find(|(s, e)| (*s..*e).contains(&addr))
            .map(|&(_, e)| e)
    }

    /// The start of the first excluded range above `addr`.
    pub fn next_exclusion_after(&self, addr: usize) -> Option<usize> {
        self.excludes[..self.n_excludes]
            .iter()
            .map(|&(s, _)| s)
            .filter(|&s| s > addr)
            .min()
    }
}

/// How long `open_store` waits for a store lock held by another process.
const LOCK_WAIT_NS: u64 = 2_000_000_000;

/// Opens (creating) the store directory and takes its lock. Returns (dir fd, lock fd).
pub(crate) fn open_store(dir: &std::path::Path) -> Result<(i32, i32)> {
    let io = |op, source| Error::Io {
        op,
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create store directory", e))?;
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io("open", std::io::ErrorKind::InvalidInput.into()))?;
    let dir_fd = syscall::open(
        c.as_bytes_with_nul(),
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )
    .map_err(|e| io("open store directory", e.io()))?;
    // The lock is the directory itself, opened a second time: it needs nothing written, so a
    // store that has become read-only still restores (and its checkpoints fail cleanly).
    let lock = syscall::openat(
        dir_fd,
        b".\0",
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    );
    let lock_fd = match lock {
        Ok(fd) => fd,
        Err(e) => {
            let _ = syscall::close(dir_fd);
            return Err(io("open store directory", e.io()));
        }
    };
    // A background writer of the previous run holds the lock until it exits, which it does
    // as soon as it finds its program gone (PR_SET_PDEATHSIG): give it a moment.
    let mut locked = syscall::flock(lock_fd, libc::LOCK_EX | libc::LOCK_NB);
    let deadline = syscall::monotonic_ns() + LOCK_WAIT_NS;
    while matches!(locked, Err(e) if e.0 == libc::EWOULDBLOCK) && syscall::monotonic_ns() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        locked = syscall::flock(lock_fd, libc::LOCK_EX | libc::LOCK_NB);
    }
    if let Err(e) = locked {
        let _ = syscall::close(lock_fd);
        let _ = syscall::close(dir_fd);
        return Err(if e.0 == libc::EWOULDBLOCK {
            Error::StoreBusy(dir.to_path_buf())
        } else {
            io("lock", e.io())
        });
    }
    Ok((dir_fd, lock_fd))
}

/// Opens `/proc/self/pagemap` if `PAGEMAP_SCAN` works on this kernel, else returns -1.
pub(crate) fn open_pagemap() -> i32 {
    let Ok(fd) = syscall::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return -1;
    };
    let probe = [0u8; 1];
    let addr = page_floor(probe.as_ptr() as usize);
    let mut buf = [PageRegion::default(); 1];
    let scan = crate::sys::mem::Scan::Populated;
    match crate::sys::mem::scan_populated(fd, addr, addr + PAGE, scan, &mut buf, |_, _, _| Ok(())) {
        Ok(Ok(())) => fd,
        _ => {
            let _ = syscall::close(fd);
            -1
        }
    }
}

/// Opens `/proc/self/mem` for reading, or returns -1.
pub(crate) fn open_mem() -> i32 {
    syscall::open(b"/proc/self/mem\0", libc::O_RDONLY | libc::O_CLOEXEC, 0).unwrap_or(-1)
}

/// `ckpt::init`.
pub fn init(cfg: Config) -> Result<()> {
    let Some(store) = cfg.store.clone() else {
        OFF.store(true, Ordering::Release);
        if cfg.log >= LogLevel::Debug {
            crate::text::log_line(format_args!(
                "neither CKPT_DIR nor CKPT_STORE is set; checkpointing is off"
            ));
        }
        return Ok(());
    };
    if !RUNTIME.load(Ordering::Acquire).is_null() {
        return Err(Error::AlreadyInitialized);
    }
    crate::restore::ensure_fixed_layout()?;
    // A remote store: find the helper and check the pool before anything is set up, so that a
    // missing helper, an unreachable pool or a wrong key is an error here, not at every
    // checkpoint. Its local directory takes the place of the store directory (the lock).
    let (dir, remote) = match &store {
        Store::Dir(d) => (d.clone(), None),
        Store::Remote(r) => {
            let helper = Helper::prepare(r, cfg.log)?;
            let exec = helper.exec_spec()?;
            (helper.dir.clone(), Some(Remote { helper, exec }))
        }
    };
    crate::fault::install(crate::fault::from_env());
    let tracker = if cfg.policy.incremental() {
        let t = crate::dirty::open(cfg.tracker).map_err(|e| {
            Error::Checkpoint(format!(
                "policy {} needs a dirty-page tracker: {e}",
                cfg.policy
            ))
        })?;
        Some(t)
    } else {
        None
    };
    let (dir_fd, lock_fd) = open_store(&dir)?;
    let close = || {
        let _ = syscall::close(lock_fd);
        let _ = syscall::close(dir_fd);
    };
    let next_gen = match &remote {
        None => store::highest(&dir).map_err(|e| Error::Io {
            op: "list",
            path: dir.clone(),
            source: e,
        }),
        Some(r) => r.helper.status(),
    };
    let next_gen = match next_gen {
        Ok(h) => h + 1,
        Err(e) => {
            close();
            return Err(e);
        }
    };
    let arena = match Arena::new() {
        Ok(a) => Box::into_raw(Box::new(a)),
        Err(e) => {
            let _ = syscall::close(lock_fd);
            let _ = syscall::close(dir_fd);
            return Err(Error::Io {
                op: "map checkpoint arena for",
                path: dir,
                source: e.io(),
            });
        }
    };
    // Warm up the checksum's CPU-feature detection now: its cache lives in memory the capture saves.
    let _ = crc32c::crc32c(b"warm");

    let (report, buffer) = match background_maps(&cfg) {
        Ok(v) => v,
        Err(e) => {
            let _ = syscall::close(lock_fd);
            let _ = syscall::close(dir_fd);
            return Err(e);
        }
    };
    let rt = Box::new(Runtime {
        sig: signals::checkpoint_signal(),
        dir_fd,
        lock_fd,
        pagemap_fd: open_pagemap(),
        mem_fd: open_mem(),
        timer: None,
        tid_offset: glibc::find_tid_offset(),
        rseq: glibc::rseq_info(),
        arena,
        next_gen,
        excludes: [(0, 0); MAX_EXCLUDES],
        n_excludes: 0,
        busy: AtomicBool::new(false),
        committed: 0,
        failed: 0,
        last_error: None,
        tracker,
        chain: Chain::default(),
        report: report.0 as *mut Report,
        buffer,
        own_maps: [
            (report.0, report.0 + report.1),
            (buffer.0, buffer.0 + buffer.1),
        ],
        writer: None,
        deleter: 0,
        remote,
        cfg,
    });
    let rt = Box::into_raw(rt);
    // SAFETY: freshly allocated, not yet shared.
    let r = unsafe { &mut *rt };
    // Published before the timer is armed: a first expiry that found no runtime would never
    // re-arm the one-shot timer.
    RUNTIME.store(rt, Ordering::Release);
    if let Err(e) = start_timer(r) {
        RUNTIME.store(core::ptr::null_mut(), Ordering::Release);
        teardown(rt);
        return Err(e);
    }
    static AT_EXIT: AtomicBool = AtomicBool::new(false);
    if !AT_EXIT.swap(true, Ordering::AcqRel) {
        // SAFETY: registering a plain extern "C" function; glibc passes it the exit status.
        unsafe { on_exit(on_program_exit, core::ptr::null_mut()) };
    }
    let into = match &r.remote {
        None => dir.display().to_string(),
        Some(x) => format!(
            "{} (helper {}, local directory {})",
            x.helper.spec,
            x.helper.path.display(),
            x.helper.dir.display()
        ),
    };
    log_at!(
        r.cfg,
        Info,
        "checkpointing into {} {}, policy {}{}, keeping {} (pages found by {})",
        into,
        Interval(r.cfg.interval),
        r.cfg.policy,
        TrackerNote(r),
        r.cfg.keep,
        if r.pagemap_fd >= 0 {
            "PAGEMAP_SCAN"
        } else {
            "full scan"
        }
    );
    Ok(())
}

/// The report page of the background policies and the buffer of the buffered ones, mapped for
/// the life of the process (a restore recreates them in place); `(0, 0)` where not needed.
fn background_maps(cfg: &Config) -> Result<((usize, usize), (usize, usize))> {
    let err = |what: &str, e: syscall::Errno| {
        Error::Checkpoint(format!("policy {}: cannot map the {what}: {e}", cfg.policy))
    };
    let mut report = (0, 0);
    let mut buffer = (0, 0);
    if cfg.policy.forked() || cfg.policy.buffered() {
        report = crate::sys::mem::Mapping::shared(size_of::<Report>())
            .map_err(|e| err("writer's report page", e))?
            .leak();
    }
    if cfg.policy.buffered() {
        // Reserved, not populated: the first checkpoints fault its pages in, later ones reuse
        // them.
        buffer = crate::sys::mem::Mapping::anonymous(cfg.buffer_max as usize)
            .map_err(|e| err("checkpoint buffer (CKPT_BUFFER)", e))?
            .leak();
    }
    Ok((report, buffer))
}

/// `, tracker NAME` when the policy uses one.
struct TrackerNote<'a>(&'a Runtime);

impl core::fmt::Display for TrackerNote<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0.tracker.as_deref() {
            Some(t) => write!(
                f,
                ", tracker {} (full image every {} or at {}% of the full image's size)",
                t.name(),
                self.0.cfg.chain_max + 1,
                self.0.cfg.chain_size_pct
            ),
            None => Ok(()),
        }
    }
}

struct Interval(Option<std::time::Duration>);

impl core::fmt::Display for Interval {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "every {d:?}"),
            None => f.write_str("on demand only"),
        }
    }
}

/// Installs the handler and arms the timer (if an interval is set).
fn start_timer(rt: &mut Runtime) -> Result<()> {
    signals::install_handler(rt.sig, on_signal).map_err(|e| {
        Error::Checkpoint(format!(
            "cannot install the handler for signal {}: {e}",
            rt.sig
        ))
    })?;
    if let Some(interval) = rt.cfg.interval {
        let id = signals::timer_create(rt.sig, syscall::gettid())
            .map_err(|e| Error::Checkpoint(format!("cannot create the checkpoint timer: {e}")))?;
        rt.timer = Some(id);
        signals::timer_arm(id, interval.as_nanos() as u64)
            .map_err(|e| Error::Checkpoint(format!("cannot arm the timer: {e}")))?;
    }
    Ok(())
}

/// Re-creates the timer after a restore (the old one belonged to the dead process).
pub(crate) fn restart_timer(rt: &mut Runtime) {
    rt.timer = None;
    if rt.cfg.interval.is_some() {
        rt.timer = signals::timer_create(rt.sig, syscall::gettid()).ok();
    }
    if rt.timer.is_none() && rt.cfg.interval.is_some() {
        log_at!(
            rt.cfg,
            Info,
            "could not re-create the checkpoint timer after restore; only checkpoint_now will work"
        );
    }
}

fn rearm(rt: &Runtime) {
    if let (Some(id), Some(interval)) = (rt.timer, rt.cfg.interval) {
        let _ = signals::timer_arm(id, interval.as_nanos() as u64);
    }
}

fn teardown(rt: *mut Runtime) {
    // SAFETY: the caller has unpublished `rt` (or never published it) and blocked the signal.
    let mut r = unsafe { Box::from_raw(rt) };
    kill_writer(&mut r);
    if let Some(id) = r.timer {
        let _ = signals::timer_delete(id);
    }
    signals::uninstall_handler(r.sig);
    for fd in [r.pagemap_fd, r.mem_fd, r.lock_fd, r.dir_fd] {
        if fd >= 0 {
            let _ = syscall::close(fd);
        }
    }
    // The arena stays mapped: a restored image may refer to it; it is untouched pages only.
}

unsafe extern "C" {
    /// glibc's `on_exit`: like `atexit`, but the handler receives the exit status.
    fn on_exit(f: extern "C" fn(i32, *mut c_void), arg: *mut c_void) -> i32;
}

/// A program that exits with status 0 has finished its computation: its checkpoints are
/// retired so the next run of the same command starts afresh instead of resuming at the end.
/// Any other status (a Rust panic exits with 101) keeps them, and so do a crash, a kill and
/// `_exit`, which never get here.
extern "C" fn on_program_exit(status: i32, _arg: *mut c_void) {
    let rt = RUNTIME.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if rt.is_null() {
        return;
    }
    // SAFETY: published by init; unpublished above, so no new checkpoint starts.
    let r = unsafe { &mut *rt };
    // Not the faults: the exit handlers that run after this one (the dynamic linker's
    // `_dl_fini`) still write into memory the mprotect tracker keeps read-only.
    let _ = syscall::sigprocmask(libc::SIG_BLOCK, Some(&!FAULTS), None);
    if let Some(id) = r.timer {
        let _ = signals::timer_delete(id);
    }
    if status != 0 {
        // The checkpoint being written in the background is let finish: it is the newest.
        reap_deleter(r);
        reap(r, true);
        log_at!(
            r.cfg,
            Info,
            "exiting with status {status}; checkpoints kept"
        );
        return;
    }
    // Finished: a checkpoint being written is of no use, and must not land after the removal.
    kill_writer(r);
    // A checkpoint can only be in progress here if exit() was called from inside one (every
    // signal is blocked while a capture runs, so not from a handler): leave the store alone.
    if r.busy.swap(true, Ordering::Acquire) {
        return;
    }
    if let Some(id) = r.timer {
        let _ = signals::timer_delete(id);
    }
    if let Some(remote) = &r.remote {
        match remote.helper.clear() {
            Ok(n) => log_at!(
                r.cfg,
                Info,
                "finished normally; removed {n} generation(s) from the remote store"
            ),
            Err(e) => log_at!(
                r.cfg,
                Info,
                "finished normally, but the remote store's generations could not be removed: {e}"
            ),
        }
        return;
    }
    // SAFETY: we hold `busy`, so the arena is ours.
    let dents = unsafe { &mut *r.arena }.dents as *mut [u8];
    // SAFETY: as above.
    let removed = store::remove_all(r.dir_fd, unsafe { &mut *dents });
    log_at!(
        r.cfg,
        Info,
        "finished normally; removed {removed} checkpoint file(s)"
    );
}

/// `ckpt::shutdown`.
pub fn shutdown() -> Result<()> {
    let rt = RUNTIME.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if rt.is_null() {
        return Ok(());
    }
    // SAFETY: rt was published by init; the handler returns early now that the global is null,
    // and a handler already inside a checkpoint finishes before we take `busy`.
    let r = unsafe { &*rt };
    while r.busy.swap(true, Ordering::Acquire) {
        std::thread::yield_now();
    }
    teardown(rt);
    Ok(())
}

/// How a checkpoint call ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A new generation was committed.
    Committed(#[allow(dead_code)] CaptureStats),
    /// We are the restored process, continuing from a checkpoint.
    Restored,
    /// Handed to a writer process (the forked and buffered policies).
    Background,
}

struct Job {
    rt: *mut Runtime,
    generation: u64,
    mode: Mode,
    mask: u64,
    writer: Writer,
    result: Option<Result<Captured, RawError>>,
}

unsafe extern "C" fn capture_cb(ctx: *mut Context, arg: *mut c_void) -> usize {
    // SAFETY: `arg` is the Job on checkpoint()'s frame and `ctx` its Context; both outlive this
    // call; the runtime is held busy by checkpoint().
    let job = unsafe { &mut *(arg as *mut Job) };
    // SAFETY: as above; the arena and the tracker are only reached by the capture holding
    // `busy`. The tracker is a separate allocation, not part of the runtime the capture reads.
    let (rt, arena, ctx, tracker) = unsafe {
        let tracker = (*job.rt)
            .tracker
            .as_deref_mut()
            .map(|t| t as *mut dyn DirtyTracker);
        (
            &*job.rt,
            &mut *(*job.rt).arena,
            &*ctx,
            tracker.map(|t| &mut *t),
        )
    };
    // While registered, the kernel rewrites the rseq area in the thread descriptor whenever the
    // thread is preempted or migrates: that memory would change between its checksum and its
    // write. Unregister for the capture; the image records the length to register again with.
    let tp = syscall::get_fs_base();
    let rseq_len = rt.rseq.and_then(|r| glibc::rseq_unregister(r, tp));
    let r = capture::capture(
        rt,
        arena,
        tracker,
        job.mode,
        ctx,
        job.mask,
        job.generation,
        rseq_len.unwrap_or(0),
        job.writer,
    );
    if let (Some(seq), Some(len)) = (rt.rseq, rseq_len) {
        // SAFETY: the same area of this thread's descriptor that glibc registered.
        unsafe { glibc::rseq_register(seq, tp, len) };
    }
    // Written only now: the job lives in saved stack memory, which must not change while the
    // image is being written.
    job.result = Some(r);
    0
}

/// Takes one checkpoint with the runtime held. `mask` is the caller's signal mask.
fn checkpoint(rt: *mut Runtime, mask: u64) -> core::result::Result<Outcome, RawError> {
    // SAFETY: rt is the published runtime; `busy` serialises mutable use.
    let r = unsafe { &mut *rt };
    if r.busy.swap(true, Ordering::Acquire) {
        return Err(raw_err!(Busy, "a checkpoint is already in progress"));
    }
    // The previous background checkpoint must have ended (and its outcome be known: the next
    // incremental image builds on it) before the next one starts; so must the deletion of the
    // images the previous commit retired (it uses the arena's writer stack).
    reap_deleter(r);
    reap(r, r.cfg.busy == BusyMode::Wait);
    if let Some(w) = r.writer {
        log_at!(
            r.cfg,
            Info,
            "checkpoint skipped: checkpoint {} is still being written",
            w.generation
        );
        r.busy.store(false, Ordering::Release);
        return Err(raw_err!(
            Busy,
            "checkpoint {} is still being written",
            w.generation
        ));
    }
    let t0 = syscall::monotonic_ns();
    let writer = if r.cfg.policy.forked() && !r.report.is_null() {
        Writer::Fork {
            report: r.report,
            started: t0,
        }
    } else if r.cfg.policy.buffered() && !r.report.is_null() && r.buffer.1 > 0 {
        Writer::Buffer {
            report: r.report,
            buf: r.buffer,
            started: t0,
        }
    } else {
        Writer::InPlace
    };
    let mut job = Job {
        rt,
        generation: r.next_gen,
        mode: r.next_mode(),
        mask,
        writer,
        result: None,
    };
    let mut ctx = Context::default();
    // SAFETY: ctx and job live on this frame for the whole call; capture_cb matches CaptureFn.
    let back = unsafe {
        arch::save_and_call(
            &mut ctx,
            capture_cb,
            &mut job as *mut Job as *mut c_void,
            (*r.arena).stack_top,
        )
    };
    // Re-derive the reference: after a restore, memory is the image's, registers were reloaded.
    // SAFETY: as above.
    let r = unsafe { &mut *rt };
    let outcome = if back != 0 {
        crate::restore::after_restore(r, back);
        Ok(Outcome::Restored)
    } else {
        let ms = (syscall::monotonic_ns() - t0) as f64 / 1e6;
        match job
            .result
            .take()
            .unwrap_or_else(|| Err(raw_err!(Io, "capture did not run")))
        {
            Ok(Captured::Committed(stats)) => {
                if stats.spilled {
                    log_at!(
                        r.cfg,
                        Info,
                        "checkpoint {} did not fit the {} MiB buffer (CKPT_BUFFER); written in place",
                        stats.generation,
                        r.buffer.1 >> 20
                    );
                }
                committed(r, &stats);
                log_committed(r, &stats, ms, ms);
                Ok(Outcome::Committed(stats))
            }
            Ok(Captured::Background { pid }) => {
                r.writer = Some(Background {
                    pid,
                    generation: job.generation,
                });
                r.next_gen = job.generation + 1;
                log_at!(
                    r.cfg,
                    Info,
                    "checkpoint {} writing in the background (writer pid {pid}, paused {ms:.1} ms)",
                    job.generation
                );
                Ok(Outcome::Background)
            }
            Err(e) => {
                failed(r, e);
                log_at!(
                    r.cfg,
                    Info,
                    "checkpoint {} failed, the previous checkpoint is intact: {}",
                    r.next_gen,
                    e.msg
                );
                skip_failed(r, job.generation);
                Err(e)
            }
        }
    };
    r.busy.store(false, Ordering::Release);
    outcome
}

/// Waits for the process deleting retired images, if one runs (it is usually long done).
fn reap_deleter(r: &mut Runtime) {
    if r.deleter > 0 {
        let _ = syscall::wait_child(r.deleter, libc::__WALL);
        r.deleter = 0;
    }
}

/// Books a committed generation.
fn committed(r: &mut Runtime, stats: &CaptureStats) {
    if stats.deleter > 0 {
        r.deleter = stats.deleter;
    }
    r.next_gen = stats.generation + 1;
    r.committed += 1;
    r.last_error = None;
    r.chain.committed(stats);
}

/// Books a failed checkpoint: the dirty set harvested for it is gone, so the next one is full.
fn failed(r: &mut Runtime, e: RawError) {
    r.failed += 1;
    r.last_error = Some(e);
    r.chain.head = 0;
}

/// A remote store does not reuse the number of a failed generation: what its helper stored is
/// collected later, and the number may even have been committed by a helper of an earlier run
/// that outlived it.
fn skip_failed(r: &mut Runtime, generation: u64) {
    if r.remote.is_some() {
        r.next_gen = r.next_gen.max(generation + 1);
    }
}

/// Learns how the background writer ended, if it has (waiting for it with `block`), and books
/// its outcome. Its generation number is reused after a failure (the next capture removes the
/// temporary file it may have left).
fn reap(r: &mut Runtime, block: bool) {
    let Some(w) = r.writer else {
        return;
    };
    let options = libc::__WALL | if block { 0 } else { libc::WNOHANG };
    let status = match syscall::wait_child(w.pid, options) {
        Ok(None) => return,
        Ok(Some(status)) => Some(status),
        // Reaped by someone else (a program waiting with __WALL): the report still says.
        Err(_) => None,
    };
    r.writer = None;
    // SAFETY: the writer is gone; the report page is ours again.
    let report = unsafe { &*r.report };
    let exited_ok = status.is_none_or(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0);
    if report.generation == w.generation && report.outcome == capture::REPORT_COMMITTED && exited_ok
    {
        let stats = report.stats;
        committed(r, &stats);
        return;
    }
    let e = match (report.outcome, status) {
        (capture::REPORT_FAILED, _) if report.generation == w.generation => report
            .error
            .unwrap_or_else(|| raw_err!(Io, "the writer failed")),
        (_, Some(s)) if libc::WIFSIGNALED(s) => raw_err!(
            Io,
            "the writer process {} was killed by signal {}",
            w.pid,
            libc::WTERMSIG(s)
        ),
        (_, Some(s)) => raw_err!(
            Io,
            "the writer process {} exited with status {} without committing",
            w.pid,
            libc::WEXITSTATUS(s)
        ),
        (_, None) => raw_err!(
            Io,
            "the writer process {} vanished without committing",
            w.pid
        ),
    };
    failed(r, e);
    r.next_gen = w.generation;
    skip_failed(r, w.generation);
    log_at!(
        r.cfg,
        Info,
        "checkpoint {} failed in the background, the previous checkpoint is intact: {}",
        w.generation,
        e.msg
    );
}

/// Stops the background writer, if any, without booking it (the program is going away), and
/// waits for the deleter.
fn kill_writer(r: &mut Runtime) {
    reap_deleter(r);
    if let Some(w) = r.writer.take() {
        let _ = syscall::kill(w.pid, libc::SIGKILL);
        let _ = syscall::wait_child(w.pid, libc::__WALL);
    }
}

/// The `checkpoint G committed (...)` line (see docs/policies.md): `ms` from the start of the
/// checkpoint to the commit, `paused_ms` of it with the program stopped.
pub(crate) fn log_committed(r: &Runtime, stats: &CaptureStats, ms: f64, paused_ms: f64) {
    let mib = stats.data_bytes as f64 / (1 << 20) as f64;
    log_at!(
        r.cfg,
        Info,
        "checkpoint {} committed ({}, {}): {:.1} MiB in {} runs, {:.1} ms, paused {:.1} ms ({:.0} MiB/s){}",
        stats.generation,
        if stats.parent == 0 {
            "full"
        } else {
            "incremental"
        },
        r.cfg.policy,
        mib,
        stats.runs,
        ms,
        paused_ms,
        mib / (ms / 1e3).max(1e-9),
        stats.placement.note()
    );
    log_at!(
        r.cfg,
        Debug,
        "checkpoint {}: {} regions ({} with saved contents, {} from the dirty tracker), {} open files, image {} bytes ({})",
        stats.generation,
        stats.regions.0,
        stats.regions.1,
        stats.harvested,
        stats.files,
        stats.file_bytes,
        if stats.recycled {
            "oldest image file overwritten in place"
        } else {
            "new file"
        }
    );
}

extern "C" fn on_signal(_sig: i32, _info: *mut libc::siginfo_t, _uctx: *mut c_void) {
    // SAFETY: __errno_location returns this thread's errno slot; saved and put back so the
    // interrupted code sees it unchanged.
    let errno = unsafe { *libc::__errno_location() };
    let rt = RUNTIME.load(Ordering::Acquire);
    if !rt.is_null() {
        // The mprotect tracker resolves writes to tracked memory (the runtime's own state
        // included) in a SIGSEGV handler, which a blocked SIGSEGV would turn into a kill.
        let _ = syscall::sigprocmask(libc::SIG_UNBLOCK, Some(&FAULTS), None);
        // The handler runs with every signal blocked; the interrupted mask is in the frame.
        let _ = checkpoint(rt, 0);
        // SAFETY: rt stays valid until shutdown, which waits for `busy`.
        rearm(unsafe { &*rt });
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Synchronous fault signals, never blocked during a checkpoint (see `on_signal`).
const FAULTS: u64 = (1 << (libc::SIGSEGV - 1)) | (1 << (libc::SIGBUS - 1));

/// The running runtime; `None` when `init` found checkpointing off (callers then do nothing);
/// an error before `init`.
fn published() -> Result<Option<*mut Runtime>> {
    let rt = RUNTIME.load(Ordering::Acquire);
    if !rt.is_null() {
        Ok(Some(rt))
    } else if OFF.load(Ordering::Acquire) {
        Ok(None)
    } else {
        Err(Error::NotInitialized)
    }
}

/// `ckpt::checkpoint_now`.
pub fn checkpoint_now() -> Result<()> {
    let Some(rt) = published()? else {
        return Ok(());
    };
    // Every signal is blocked while the capture runs, as in the timer's handler: an application
    // handler must neither change memory being written nor run exit() in the middle.
    let mut old = 0u64;
    let _ = syscall::sigprocmask(libc::SIG_BLOCK, Some(&!FAULTS), Some(&mut old));
    let r = checkpoint(rt, old);
    let _ = syscall::sigprocmask(libc::SIG_SETMASK, Some(&old), None);
    r.map(drop).map_err(Error::from)
}

/// `ckpt::exclude`.
pub fn exclude(start: usize, len: usize) -> Result<()> {
    let Some(rt) = published()? else {
        return Ok(());
    };
    // Only whole pages inside the range can be left out.
    let (s, e) = (page_ceil(start), page_floor(start.saturating_add(len)));
    if s >= e {
        return Ok(());
    }
    // SAFETY: published by init.
    let sig = unsafe { (*rt).sig };
    let mut old = 0u64;
    let _ = syscall::sigprocmask(libc::SIG_BLOCK, Some(&signals::sigbit(sig)), Some(&mut old));
    // SAFETY: the checkpoint signal is blocked, so no capture reads the table meanwhile.
    let r = unsafe { &mut *rt };
    let res = if r.n_excludes == MAX_EXCLUDES {
        Err(Error::Checkpoint(format!(
            "more than {MAX_EXCLUDES} excluded ranges"
        )))
    } else {
        r.excludes[r.n_excludes] = (s, e);
        r.n_excludes += 1;
        Ok(())
    };
    let _ = syscall::sigprocmask(libc::SIG_SETMASK, Some(&old), None);
    res
}

/// The message of the last failed checkpoint, if the last one failed.
pub fn last_error() -> Option<String> {
    let rt = RUNTIME.load(Ordering::Acquire);
    if rt.is_null() {
        return None;
    }
    // The timer's handler writes the message: block it while copying.
    let mut old = 0u64;
    let _ = syscall::sigprocmask(libc::SIG_BLOCK, Some(&!FAULTS), Some(&mut old));
    // SAFETY: published by init; with every signal blocked no capture runs on this thread.
    let msg = unsafe { (*rt).last_error };
    let _ = syscall::sigprocmask(libc::SIG_SETMASK, Some(&old), None);
    msg.map(|e| e.msg.to_string())
}
