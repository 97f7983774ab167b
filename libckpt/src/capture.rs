//! Taking a checkpoint: runs inside the trampoline (often inside the timer's signal handler), so
//! it allocates nothing, takes no lock and calls no libc function that could; it uses raw system
//! calls and the arena prepared at `init`.
//!
//! # Safety
//!
//! The image is written straight from the process's memory. The only memory that changes while
//! it is read is the capture's own stack (below the saved stack pointer, not saved except for
//! the one page that holds that pointer, which is copied first) and the arena (never saved).
//! Everything above the saved stack pointer, the heap and the runtime are left untouched until
//! the image is committed, so each run's checksum matches the bytes written.
#![allow(unsafe_code)]

use core::ffi::c_void;
use core::fmt::Write as _;

use zerocopy::IntoBytes;

use crate::arena::{Arena, RUN_MAX, Tracked};
use crate::dirty::{DirtyTracker, TrackerKind};
use crate::error::{RawError, raw_err};
use crate::image::*;
use crate::remote::{Placement, Stream};
use crate::runtime::Runtime;
use crate::store;
use crate::sys::arch::Context;
use crate::sys::maps;
use crate::sys::mem::{Found, PAGE, Scan, page_ceil, page_floor, scan_populated};
use crate::sys::signals;
use crate::sys::syscall::{self, Errno};
use crate::text::{Bytes, FixedStr, parse_dec};

/// What a committed checkpoint cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureStats {
    /// Generation committed.
    pub generation: u64,
    /// Bytes of page data.
    pub data_bytes: u64,
    /// Runs written.
    pub runs: u32,
    /// Regions in the memory map, and how many of them had contents saved.
    pub regions: (u32, u32),
    /// Open files recorded.
    pub files: u32,
    /// Bytes of the image file.
    pub file_bytes: u64,
    /// The older image file was overwritten in place rather than a new one created.
    pub recycled: bool,
    /// The generation this image is relative to; 0 for a full image.
    pub parent: u64,
    /// Regions whose pages came from the dirty tracker (incremental images).
    pub harvested: u32,
    /// A full image that replaces a chain (compaction).
    pub rebase: bool,
    /// Buffered, but larger than the buffer: finished in place.
    pub spilled: bool,
    /// The process deleting the images this commit retired (0: none): the caller reaps it.
    pub deleter: i32,
    /// Where the image went (a remote store says).
    pub placement: Placement,
}

/// How one capture saves pages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// 0: a full image. Else the committed generation this incremental image builds on: only
    /// pages the tracker reports written since then are saved in the regions it watched.
    pub parent: u64,
    /// A full image that replaces a chain of incremental ones (compaction).
    pub rebase: bool,
}

/// Everything [`capture`] fills in, apart from the image file.
struct Tables<'a> {
    arena: &'a mut Arena,
    strings_len: usize,
    n_regions: usize,
    n_runs: usize,
    n_identity: usize,
    n_files: usize,
    n_signals: usize,
}

/// How far each table of the arena is filled: what a writer process needs to pick them up.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    strings_len: usize,
    n_regions: usize,
    n_runs: usize,
    n_identity: usize,
    n_files: usize,
    n_signals: usize,
}

impl<'a> Tables<'a> {
    fn with(arena: &'a mut Arena, c: Counts) -> Tables<'a> {
        Tables {
            arena,
            strings_len: c.strings_len,
            n_regions: c.n_regions,
            n_runs: c.n_runs,
            n_identity: c.n_identity,
            n_files: c.n_files,
            n_signals: c.n_signals,
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            strings_len: self.strings_len,
            n_regions: self.n_regions,
            n_runs: self.n_runs,
            n_identity: self.n_identity,
            n_files: self.n_files,
            n_signals: self.n_signals,
        }
    }

    fn string(&mut self, s: &[u8]) -> Result<StrRef, RawError> {
        let len = s.len().min(MAX_STRING as usize);
        let end = self.strings_len + len;
        if end > self.arena.strings.len() {
            return Err(raw_err!(
                Capacity,
                "string table full ({} bytes)",
                self.arena.strings.len()
            ));
        }
        self.arena.strings[self.strings_len..end].copy_from_slice(&s[..len]);
        let r = StrRef {
            offset: self.strings_len as u32,
            len: len as u32,
        };
        self.strings_len = end;
        Ok(r)
    }
}

/// Writes a checkpoint of the calling process as generation `generation` and commits it.
///
/// `ctx` is the trampoline's saved context; `mask` is the signal mask to restore with it.
#[allow(clippy::too_many_arguments)]
pub fn capture(
    rt: &Runtime,
    arena: &mut Arena,
    mut tracker: Option<&mut dyn DirtyTracker>,
    mode: Mode,
    ctx: &Context,
    mask: u64,
    generation: u64,
    rseq_len: u32,
    writer: Writer,
) -> Result<Captured, RawError> {
    let mut t = Tables::with(arena, Counts::default());
    refuse_threads(&mut t)?;
    let mut process = ProcessRec {
        ctx: ContextRec::from(ctx),
        sigmask: mask,
        ..Default::default()
    };
    capture_process(rt, &mut t, &mut process, rseq_len)?;
    process.policy = crate::config::Policy::all()
        .iter()
        .position(|&p| p == rt.cfg.policy)
        .unwrap_or(0) as u32;
    process.tracker = tracker.as_deref().map_or(0, |t| {
        TrackerKind::all()
            .iter()
            .position(|&k| k == t.kind())
            .map_or(0, |i| i as u32 + 1)
    });
    capture_files(rt, &mut t)?;
    capture_signals(&mut t)?;
    // Harvest before the memory map is read: under the mprotect tracker, harvesting protects
    // the written pages again, which merges the map's fragments back.
    let n_tracked = match tracker.as_deref_mut() {
        Some(tr) => harvest_tracked(&mut t, tr, mode)?,
        None => 0,
    };
    let (strings, identity) = (t.strings_len, t.n_identity);
    capture_regions(rt, &mut t, &mut process)?;
    if let Some(tr) = tracker.as_deref_mut()
        && n_tracked > 0
        && settle_tracking(&mut t, tr, n_tracked)
    {
        // Protections changed: read the map again.
        (t.strings_len, t.n_identity, t.n_regions) = (strings, identity, 0);
        capture_regions(rt, &mut t, &mut process)?;
    }
    if let Some(tr) = tracker.as_deref() {
        split_at_tracked(&mut t, n_tracked, tr.kind() == TrackerKind::Mprotect)?;
    }

    if let Some(tr) = tracker {
        plan_tracking(&mut t, tr, mode, n_tracked, &process);
    }

    // A remote store: the image goes to a `ckpt-rmem put` helper, started by whoever writes the
    // first byte (this thread, the forked writer, or the buffered writer).
    let stream = rt
        .remote
        .as_ref()
        .map(|r| Stream::new(&r.exec, generation, mode.parent));
    let (fd, recycled) = if stream.is_some() {
        (-1, false)
    } else {
        let mut tmp = store::name(generation, store::TMP);
        let tmp_c = tmp.as_cstr().unwrap_or(b"\0");
        // A stale file of this name is the leftover of a checkpoint killed mid-write.
        let _ = syscall::unlinkat(rt.dir_fd, tmp_c);
        open_image(rt, t.arena.dents, tmp_c, mode.parent == 0)?
    };
    let pending = Pending {
        counts: t.counts(),
        process,
        generation,
        mode,
        n_tracked,
        fd,
        recycled,
    };
    let arena = t.arena;
    match writer {
        Writer::InPlace => {
            let mut out = Out::file(fd, rt.pagemap_fd, rt.mem_fd, stream);
            let mut retired = store::Retired::default();
            let stats = write_and_commit(rt, arena, &pending, &mut out, &mut retired)?;
            Ok(Captured::Committed(CaptureStats {
                deleter: spawn_deleter(rt, arena, &retired),
                ..stats
            }))
        }
        Writer::Fork { report, started } => {
            let out = Out::file(fd, rt.pagemap_fd, rt.mem_fd, stream);
            spawn_writer(rt, arena, pending, out, report, None, started)
        }
        Writer::Buffer {
            report,
            buf,
            started,
        } => {
            // The copy into the buffer is the pause; the writer only writes the buffer out.
            let mut out = Out::buffer(fd, rt.pagemap_fd, rt.mem_fd, buf, stream);
            let mut t = Tables::with(arena, pending.counts);
            let written = write_image(rt, &mut t, &mut out, &pending);
            let counts = t.counts();
            let stats = match written {
                Ok(s) => s,
                Err(e) => return Err(abandon(rt, &pending, &mut out, e)),
            };
            if out.spilled {
                // Larger than the buffer: what it held went to the file and the rest followed
                // in place; finish in place too.
                let mut retired = store::Retired::default();
                let s = finish(&mut out, &stats)
                    .and_then(|()| {
                        commit(
                            rt,
                            arena.dents,
                            &pending,
                            &mut out,
                            stats,
                            Some(&mut retired),
                        )
                    })
                    .map_err(|e| abandon(rt, &pending, &mut out, e))?;
                return Ok(Captured::Committed(CaptureStats {
                    spilled: true,
                    deleter: spawn_deleter(rt, arena, &retired),
                    ..s
                }));
            }
            let pending = Pending { counts, ..pending };
            spawn_writer(rt, arena, pending, out, report, Some(stats), started)
        }
    }
}

/// Who writes the image out.
#[derive(Debug, Clone, Copy)]
pub enum Writer {
    /// The calling thread, before `capture` returns.
    InPlace,
    /// A child process (a copy-on-write snapshot of this one) writes and commits; it says how
    /// it went in `report`.
    Fork {
        /// Shared memory the writer fills in.
        report: *mut Report,
        /// When the checkpoint began (monotonic ns): the pause ends when the writer starts.
        started: u64,
    },
    /// The pages are copied into `buf` now; a helper process sharing this address space writes
    /// the buffer out and commits.
    Buffer {
        /// Shared memory the writer fills in.
        report: *mut Report,
        /// The buffer, prepared at `init` and used by one checkpoint at a time.
        buf: (usize, usize),
        /// See `Fork`.
        started: u64,
    },
}

/// How a capture ended.
#[derive(Debug, Clone, Copy)]
pub enum Captured {
    /// Committed before `capture` returned.
    Committed(CaptureStats),
    /// Handed to writer process `pid`, which reports in the `Report`.
    Background {
        /// The writer.
        pid: i32,
    },
}

/// What a background writer tells its parent, in memory shared with it. The parent reads it
/// only after reaping the writer.
#[derive(Debug)]
#[repr(C)]
pub struct Report {
    /// The generation the writer was given.
    pub generation: u64,
    /// 1: committed (`stats` valid); 2: failed (`error` valid); 0: died before saying.
    pub outcome: u32,
    /// The committed image.
    pub stats: CaptureStats,
    /// Why it failed.
    pub error: Option<RawError>,
}

/// Outcome codes of [`Report::outcome`].
pub const REPORT_COMMITTED: u32 = 1;
/// See [`REPORT_COMMITTED`].
pub const REPORT_FAILED: u32 = 2;

/// An image whose tables are complete and whose file is open: what a writer needs besides the
/// arena.
#[derive(Debug, Clone, Copy)]
struct Pending {
    counts: Counts,
    process: ProcessRec,
    generation: u64,
    mode: Mode,
    n_tracked: usize,
    fd: i32,
    recycled: bool,
}

/// Everything a writer process starts from, placed at the top of its stack.
struct WriterArgs {
    rt: *const Runtime,
    arena: *mut Arena,
    pending: Pending,
    out: Out,
    report: *mut Report,
    /// The page data is already in `out`'s buffer: only write it out.
    stats: Option<CaptureStats>,
    parent: i32,
    /// When the checkpoint began, and how long the program was paused for it (up to the
    /// writer's start).
    started: u64,
    paused_ns: u64,
}

/// Starts the writer process of `pending`, on the arena's writer stack.
fn spawn_writer(
    rt: &Runtime,
    arena: &mut Arena,
    pending: Pending,
    out: Out,
    report: *mut Report,
    stats: Option<CaptureStats>,
    started: u64,
) -> Result<Captured, RawError> {
    // With the page data already copied into the buffer, the writer only writes it out and
    // can share this address space; otherwise it must be a snapshot of it.
    let shared_vm = stats.is_some();
    // SAFETY: `report` is the runtime's shared page; no writer runs now (the runtime reaps the
    // previous one before a capture).
    unsafe {
        core::ptr::write(
            report,
            Report {
                generation: pending.generation,
                outcome: 0,
                stats: CaptureStats::default(),
                error: None,
            },
        )
    };
    let args = WriterArgs {
        rt,
        arena: arena as *mut Arena,
        pending,
        out,
        report,
        stats,
        parent: syscall::getpid(),
        started,
        paused_ns: syscall::monotonic_ns().saturating_sub(started),
    };
    let flags = if shared_vm { libc::CLONE_VM } else { 0 };
    // SAFETY: nothing else uses the writer stack while a writer may run (one at a time);
    // `writer_main` uses only raw system calls, the arena and its arguments (see its
    // documentation).
    match unsafe { spawn_on_writer_stack(arena, flags, args, writer_main) } {
        Ok(pid) => {
            // The writer has its own copy of the descriptor table; ours must not leak the image.
            let _ = syscall::close(pending.fd);
            Ok(Captured::Background { pid })
        }
        Err(e) => {
            let mut out = out;
            Err(abandon(
                rt,
                &pending,
                &mut out,
                RawError::sys("clone", b"a writer process", e),
            ))
        }
    }
}

/// Starts `f(&args)` in a new process created with `clone(flags)` and exit signal 0 (the
/// program's own `wait()` and `SIGCHLD` handler never see it; the runtime reaps it with
/// `__WALL`), on the arena's writer stack, with `args` placed at its top.
///
/// # Safety
/// Nothing else may use the writer stack until the process is reaped, and `f` must be safe to
/// run in it (see [`syscall::spawn`]) with a pointer to `args`.
unsafe fn spawn_on_writer_stack<T>(
    arena: &mut Arena,
    flags: i32,
    args: T,
    f: extern "C" fn(*mut c_void) -> i32,
) -> syscall::SysResult<i32> {
    let slot = (arena.writer_stack_top - size_of::<T>()) & !63;
    // SAFETY: the slot lies in the writer stack, unused by anything else (the caller's
    // contract), and is aligned for T (at most 64-byte alignment here).
    unsafe { core::ptr::write(slot as *mut T, args) };
    // SAFETY: the stack below `slot` is the new process's own; the caller vouches for `f`.
    unsafe { syscall::spawn(flags, slot & !15, f, slot as *mut c_void) }
}

/// Makes the calling writer process die with the program (`PR_SET_PDEATHSIG`), and says
/// whether the program is already gone: an orphan must neither commit a checkpoint the
/// restarting program does not expect nor hold the store's lock.
fn orphaned(parent: i32) -> bool {
    let _ = syscall::set_parent_death_signal(libc::SIGKILL);
    syscall::getppid() != parent
}

/// The writer process: writes (or writes out) the image, commits it, reports, exits.
///
/// Runs either in a copy of the process taken at the checkpoint (its memory is the image's) or,
/// for the buffered policies, in the parent's address space, where it touches only the buffer,
/// the arena (which the parent leaves alone until it has reaped the writer) and the report.
/// It uses raw system calls only and no thread-local state.
extern "C" fn writer_main(arg: *mut c_void) -> i32 {
    // SAFETY: `arg` is the WriterArgs spawn_writer placed on this stack.
    let a = unsafe { &mut *(arg as *mut WriterArgs) };
    if orphaned(a.parent) {
        syscall::exit_group(3);
    }
    // SAFETY: the runtime outlives the writer (the parent reaps it first), or this is a copy.
    let (rt, arena) = unsafe { (&*a.rt, &mut *a.arena) };
    let pending = a.pending;
    let result = (|| {
        crate::fault::point("background-write")
            .map_err(|e| RawError::sys("write", b"image (background)", e))?;
        let stats = match a.stats {
            Some(stats) => {
                finish(&mut a.out, &stats)?;
                stats
            }
            None => {
                // A copy of the process: read its own memory, not the parent's.
                if a.out.pagemap_fd >= 0 {
                    a.out.pagemap_fd = crate::runtime::open_pagemap();
                }
                if a.out.mem_fd >= 0 {
                    a.out.mem_fd = crate::runtime::open_mem();
                }
                let mut t = Tables::with(arena, pending.counts);
                let stats = write_image(rt, &mut t, &mut a.out, &pending)?;
                finish(&mut a.out, &stats)?;
                stats
            }
        };
        commit(rt, arena.dents, &pending, &mut a.out, stats, None)
    })();
    // SAFETY: the report page is shared with the parent, which reads it after reaping us.
    let report = unsafe { &mut *a.report };
    match result {
        Ok(stats) => {
            report.stats = stats;
            report.outcome = REPORT_COMMITTED;
            let ms = (syscall::monotonic_ns() - a.started) as f64 / 1e6;
            crate::runtime::log_committed(rt, &stats, ms, a.paused_ns as f64 / 1e6);
            syscall::exit_group(0)
        }
        Err(e) => {
            let _ = abandon(rt, &pending, &mut a.out, e);
            report.error = Some(e);
            report.outcome = REPORT_FAILED;
            syscall::exit_group(1)
        }
    }
}

/// Starts a process that deletes the files `retired` names, on the arena's writer stack and in
/// this address space (`CLONE_VM`: nothing is copied); returns its pid, or 0 when there is
/// nothing to delete, or deletes them here if no process can be started. Deleting a large file
/// frees its blocks and cached pages synchronously, which must not lengthen the pause.
fn spawn_deleter(rt: &Runtime, arena: &mut Arena, retired: &store::Retired) -> i32 {
    if retired.n == 0 {
        return 0;
    }
    struct DeleterArgs {
        dir_fd: i32,
        retired: store::Retired,
        parent: i32,
    }
    extern "C" fn deleter_main(arg: *mut c_void) -> i32 {
        // SAFETY: the DeleterArgs spawn_deleter placed on this stack.
        let a = unsafe { &*(arg as *const DeleterArgs) };
        if !orphaned(a.parent) {
            store::delete_retired(a.dir_fd, &a.retired);
        }
        0
    }
    let args = DeleterArgs {
        dir_fd: rt.dir_fd,
        retired: *retired,
        parent: syscall::getpid(),
    };
    // SAFETY: the writer stack is unused by the in-place policies (whose pause this is), and
    // the runtime reaps the deleter before the next capture; `deleter_main` only makes raw
    // system calls on its arguments and its own stack.
    match unsafe { spawn_on_writer_stack(arena, libc::CLONE_VM, args, deleter_main) } {
        Ok(pid) => pid,
        Err(_) => {
            store::delete_retired(rt.dir_fd, retired);
            0
        }
    }
}

/// Writes the page data, manifest and header of `pending` through `out`, then finishes and
/// commits it.
fn write_and_commit(
    rt: &Runtime,
    arena: &mut Arena,
    pending: &Pending,
    out: &mut Out,
    retired: &mut store::Retired,
) -> Result<CaptureStats, RawError> {
    let mut t = Tables::with(arena, pending.counts);
    let r = write_image(rt, &mut t, out, pending)
        .and_then(|stats| finish(out, &stats).map(|()| stats))
        .and_then(|stats| commit(rt, t.arena.dents, pending, out, stats, Some(retired)));
    r.map_err(|e| abandon(rt, pending, out, e))
}

/// Cleans up after a failed write: closes the file (if still open) and removes the temporary;
/// for a remote store, stops the helper before it commits.
fn abandon(rt: &Runtime, pending: &Pending, out: &mut Out, e: RawError) -> RawError {
    if let Some(s) = out.stream.as_mut() {
        s.abandon();
        return e;
    }
    let _ = syscall::close(pending.fd);
    let mut tmp = store::name(pending.generation, store::TMP);
    let _ = syscall::unlinkat(rt.dir_fd, tmp.as_cstr().unwrap_or(b"\0"));
    e
}

/// Makes the image durable in its temporary file: writes out a buffered image, trims a
/// recycled file to the image's length, fsyncs.
fn finish(out: &mut Out, stats: &CaptureStats) -> Result<(), RawError> {
    if let Some((addr, _)) = out.buf {
        // SAFETY: the buffer holds the image's first `stats.file_bytes` bytes, written by
        // `write_image`, and nothing changes it until the writer is reaped.
        let bytes =
            unsafe { core::slice::from_raw_parts(addr as *const u8, stats.file_bytes as usize) };
        if let Some(s) = out.stream.as_mut() {
            // The page data and manifest, then the header (the padding after it is zeros, which
            // a fetched image file has anyway).
            let mut at = HEADER_SPACE as usize;
            while at < bytes.len() {
                let n = (bytes.len() - at).min(RUN_MAX);
                crate::fault::point("write-data")
                    .map_err(|e| RawError::sys("write", b"page data", e))?;
                if stats.rebase {
                    crate::fault::point("compact-data")
                        .map_err(|e| RawError::sys("write", b"page data", e))?;
                }
                s.data(at as u64, &bytes[at..at + n])?;
                at += n;
            }
            return s.data(0, &bytes[..size_of::<Header>().min(bytes.len())]);
        }
        let mut at = 0;
        while at < bytes.len() {
            let n = (bytes.len() - at).min(WRITEBACK_BATCH as usize);
            crate::fault::point("write-data")
                .map_err(|e| RawError::sys("write", b"page data", e))?;
            if stats.rebase {
                crate::fault::point("compact-data")
                    .map_err(|e| RawError::sys("write", b"page data", e))?;
            }
            syscall::pwrite_all(out.fd, &bytes[at..at + n], at as u64)
                .map_err(|e| RawError::sys("write", b"image", e))?;
            let _ = syscall::start_writeback(out.fd, at as u64, n as u64);
            at += n;
        }
    }
    if out.stream.is_some() {
        // Durable once the helper has committed it.
        return Ok(());
    }
    // A recycled file may be longer than this image.
    syscall::ftruncate(out.fd, stats.file_bytes)
        .map_err(|e| RawError::sys("truncate", b"image", e))?;
    syscall::fsync(out.fd).map_err(|e| RawError::sys("fsync", b"image", e))
}

/// Commits the finished image: closes it, renames it to its generation's name (atomic) and
/// makes the rename durable, then prunes the store. With `retire`, images no longer needed are
/// renamed for [`spawn_deleter`] instead of deleted (the caller is the paused program).
fn commit(
    rt: &Runtime,
    dents: &mut [u8],
    pending: &Pending,
    out: &mut Out,
    stats: CaptureStats,
    retire: Option<&mut store::Retired>,
) -> Result<CaptureStats, RawError> {
    if let Some(s) = out.stream.as_mut() {
        crate::fault::point("before-commit")
            .map_err(|e| RawError::sys("commit", b"remote generation", e))?;
        // The helper commits the generation and prunes the pool (keeping the newest `keep`
        // and what they build on) in the background, after its answer.
        let reply = s.commit(stats.file_bytes, rt.cfg.keep)?;
        return Ok(CaptureStats {
            placement: reply.placement,
            ..stats
        });
    }
    let mut tmp = store::name(pending.generation, store::TMP);
    let mut fin = store::name(pending.generation, store::IMAGE);
    let (tmp_c, fin_c) = (
        tmp.as_cstr().unwrap_or(b"\0"),
        fin.as_cstr().unwrap_or(b"\0"),
    );
    syscall::close(pending.fd).map_err(|e| RawError::sys("close", tmp_c, e))?;
    crate::fault::point("before-commit").map_err(|e| RawError::sys("commit", fin_c, e))?;
    // Until the rename the previous generation is the one a restore would use.
    syscall::renameat(rt.dir_fd, tmp_c, fin_c).map_err(|e| RawError::sys("rename", fin_c, e))?;
    syscall::fsync(rt.dir_fd).map_err(|e| RawError::sys("fsync directory of", fin_c, e))?;
    store::prune(rt.dir_fd, dents, pending.generation, rt.cfg.keep, retire);
    Ok(CaptureStats {
        recycled: pending.recycled,
        ..stats
    })
}

/// Where an image's bytes go, and how the memory they come from is read.
#[derive(Debug, Clone, Copy)]
struct Out {
    /// The image file (a local directory store), else -1.
    fd: i32,
    /// Buffered: bytes are copied here at their file offsets, to be written out later.
    buf: Option<(usize, usize)>,
    /// The buffer overflowed: what it held went to the file, and the rest follows in place.
    spilled: bool,
    pagemap_fd: i32,
    mem_fd: i32,
    /// A remote store: bytes go to the `ckpt-rmem` helper instead of `fd`.
    stream: Option<Stream>,
}

impl Out {
    fn file(fd: i32, pagemap_fd: i32, mem_fd: i32, stream: Option<Stream>) -> Out {
        Out {
            fd,
            buf: None,
            spilled: false,
            pagemap_fd,
            mem_fd,
            stream,
        }
    }

    fn buffer(
        fd: i32,
        pagemap_fd: i32,
        mem_fd: i32,
        buf: (usize, usize),
        stream: Option<Stream>,
    ) -> Out {
        Out {
            buf: Some(buf),
            ..Out::file(fd, pagemap_fd, mem_fd, stream)
        }
    }

    /// Puts `bytes` (`what`, for messages) at image offset `off`; `high` is the end of
    /// everything put so far.
    fn put(&mut self, bytes: &[u8], off: u64, high: u64, what: &[u8]) -> Result<(), RawError> {
        let sys = |e: Errno| RawError::sys("write", what, e);
        if let Some((addr, len)) = self.buf {
            let end = off as usize + bytes.len();
            if end <= len {
                // SAFETY: inside the buffer, which only this capture uses.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        (addr + off as usize) as *mut u8,
                        bytes.len(),
                    )
                };
                return Ok(());
            }
            // SAFETY: the buffer holds every byte put so far, below `high`.
            let held =
                unsafe { core::slice::from_raw_parts(addr as *const u8, (high as usize).min(len)) };
            match self.stream.as_mut() {
                // The header is put last, so the space before the page data holds nothing yet.
                Some(s) => {
                    let from = (HEADER_SPACE as usize).min(held.len());
                    let mut at = from;
                    while at < held.len() {
                        let n = (held.len() - at).min(RUN_MAX);
                        s.data(at as u64, &held[at..at + n])?;
                        at += n;
                    }
                }
                None => syscall::pwrite_all(self.fd, held, 0).map_err(sys)?,
            }
            self.buf = None;
            self.spilled = true;
        }
        match self.stream.as_mut() {
            Some(s) => s.data(off, bytes),
            None => syscall::pwrite_all(self.fd, bytes, off).map_err(sys),
        }
    }
}

/// Opens the file the new image is written to. When the store already holds `keep` committed
/// images (and `keep` ≥ 2, so another stays committed throughout), the oldest is renamed to the
/// temporary name and overwritten in place: the paper's "at most two files", no delete on the
/// critical path, and blocks the disk has already allocated. Only a full image recycles: an
/// incremental one is usually far smaller, and cutting a large old file down to it would free
/// its blocks inside the pause. The oldest file may be reused only if no other image builds
/// on it.
fn open_image(
    rt: &Runtime,
    dents: &mut [u8],
    tmp_c: &[u8],
    full: bool,
) -> Result<(i32, bool), RawError> {
    let reuse = |from: &mut FixedStr<48>| -> Option<Result<(i32, bool), RawError>> {
        let from_c = from.as_cstr()?;
        syscall::renameat(rt.dir_fd, from_c, tmp_c).ok()?;
        Some(
            syscall::openat(rt.dir_fd, tmp_c, libc::O_WRONLY | libc::O_CLOEXEC, 0)
                .map(|fd| (fd, true))
                .map_err(|e| RawError::sys("open", tmp_c, e)),
        )
    };
    // A retired full image kept for this (see `store::SPARE`).
    if full
        && let Some(g) = store::spare(rt.dir_fd, dents)
        && let Some(r) = reuse(&mut store::name(g, store::SPARE))
    {
        return r;
    }
    let mut gens = [0u64; 64];
    let n = store::committed(rt.dir_fd, dents, &mut gens);
    let keep = rt.cfg.keep as usize;
    if full
        && keep >= 2
        && n >= keep
        && !gens[1..n]
            .iter()
            .any(|&g| store::in_chain(rt.dir_fd, g, gens[0]))
        && let Some(r) = reuse(&mut store::name(gens[0], store::IMAGE))
    {
        return r;
    }
    syscall::openat(
        rt.dir_fd,
        tmp_c,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
        0o600,
    )
    .map(|fd| (fd, false))
    .map_err(|e| RawError::sys("create", tmp_c, e))
}

fn refuse_threads(t: &mut Tables<'_>) -> Result<(), RawError> {
    let me = syscall::gettid();
    let mut other = 0;
    store::each_dirent(b"/proc/self/task\0", t.arena.dents, |name| {
        if let Some(tid) = parse_dec(name).map(|t| t as i32)
            && tid != me
            && other == 0
        {
            other = tid;
        }
    })
    .map_err(|e| RawError::sys("list", b"/proc/self/task", e))?;
    if other != 0 {
        return Err(raw_err!(
            Refused,
            "a second thread is running (tid {other}); only single-threaded programs can be checkpointed"
        ));
    }
    Ok(())
}

fn capture_process(
    rt: &Runtime,
    t: &mut Tables<'_>,
    p: &mut ProcessRec,
    rseq_len: u32,
) -> Result<(), RawError> {
    p.fs_base = syscall::get_fs_base() as u64;
    p.brk = syscall::brk(0) as u64;
    p.brk_start = crate::sys::process::start_brk().unwrap_or(0) as u64;
    p.pid = syscall::getpid() as u32;
    p.tid_offset = rt.tid_offset.map_or(-1, |o| o as i32);
    if let Some(r) = rt.rseq {
        p.rseq_area = p.fs_base.wrapping_add_signed(r.offset as i64);
        p.rseq_len = rseq_len;
        p.rseq_sig = crate::sys::glibc::RSEQ_SIG;
    }
    let old = syscall::umask(0o022);
    syscall::umask(old);
    p.umask = old;
    let alt = signals::get_altstack().map_err(|e| RawError::sys("sigaltstack", b"", e))?;
    (p.altstack_sp, p.altstack_size, p.altstack_flags) =
        (alt.ss_sp as u64, alt.ss_size as u64, alt.ss_flags as u32);
    let mut buf = [0u8; 4096];
    let n = syscall::getcwd(&mut buf).map_err(|e| RawError::sys("getcwd", b"", e))?;
    p.cwd = t.string(&buf[..n.saturating_sub(1)])?;
    let n = syscall::readlink(b"/proc/self/exe\0", &mut buf)
        .map_err(|e| RawError::sys("readlink", b"/proc/self/exe", e))?;
    p.exe = t.string(&buf[..n])?;
    let st = syscall::stat(&cstr(&buf[..n])).map_err(|e| RawError::sys("stat", &buf[..n], e))?;
    push_identity(t, p.exe, &st, true)
}

fn push_identity(
    t: &mut Tables<'_>,
    path: StrRef,
    st: &libc::stat,
    is_exe: bool,
) -> Result<(), RawError> {
    if t.n_identity == t.arena.identity.len() {
        return Err(raw_err!(
            Capacity,
            "more than {} mapped files",
            t.arena.identity.len()
        ));
    }
    t.arena.identity[t.n_identity] = IdentityRec {
        path,
        dev: st.st_dev,
        ino: st.st_ino,
        size: st.st_size as u64,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec,
        is_exe: is_exe as u32,
        pad: 0,
    };
    t.n_identity += 1;
    Ok(())
}

fn capture_files(rt: &Runtime, t: &mut Tables<'_>) -> Result<(), RawError> {
    // Collect descriptor numbers first: the listing itself holds a descriptor.
    let mut fds = [0i32; 1024];
    let mut n = 0;
    let mut overflow = false;
    store::each_dirent(b"/proc/self/fd\0", t.arena.dents, |name| {
        if let Some(fd) = parse_dec(name) {
            if n < fds.len() {
                fds[n] = fd as i32;
                n += 1
            } else {
                overflow = true
            }
        }
    })
    .map_err(|e| RawError::sys("list", b"/proc/self/fd", e))?;
    if overflow {
        return Err(raw_err!(
            Capacity,
            "more than {} open file descriptors",
            fds.len()
        ));
    }
    for &fd in &fds[..n] {
        // Standard streams belong to whoever starts the restart; our own descriptors are
        // re-created by the runtime.
        if fd <= 2 || rt.owns_fd(fd) {
            continue;
        }
        let Ok(st) = syscall::fstat(fd) else { continue }; // the listing's own, now closed
        let mut link = FixedStr::<64>::new();
        let _ = write!(link, "/proc/self/fd/{fd}");
        let mut target = [0u8; 4096];
        let len = syscall::readlink(link.as_cstr().unwrap_or(b"\0"), &mut target).unwrap_or(0);
        let target = &target[..len];
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => FILE_REGULAR,
            libc::S_IFCHR => FILE_CHARDEV,
            libc::S_IFDIR => FILE_DIR,
            libc::S_IFSOCK => {
                return Err(raw_err!(
                    Refused,
                    "fd {fd} is a socket ({}){INHERITED}",
                    Bytes(target)
                ));
            }
            libc::S_IFIFO => {
                return Err(raw_err!(
                    Refused,
                    "fd {fd} is a pipe or FIFO ({}){INHERITED}",
                    Bytes(target)
                ));
            }
            _ if target.starts_with(b"anon_inode:[io_uring]") => {
                return Err(raw_err!(Refused, "fd {fd} is an io_uring instance"));
            }
            _ => {
                return Err(raw_err!(
                    Refused,
                    "fd {fd} is a kernel object that cannot be restored ({})",
                    Bytes(target)
                ));
            }
        };
        if target.ends_with(b" (deleted)") || target.first() != Some(&b'/') {
            return Err(raw_err!(
                Refused,
                "fd {fd} refers to a deleted or unnamed file ({})",
                Bytes(target)
            ));
        }
        let mut flags = syscall::fcntl(fd, libc::F_GETFL, 0)
            .map_err(|e| RawError::sys("F_GETFL", target, e))? as i32;
        if syscall::fcntl(fd, libc::F_GETFD, 0).is_ok_and(|f| f as i32 & libc::FD_CLOEXEC != 0) {
            flags |= libc::O_CLOEXEC;
        }
        let offset = if kind == FILE_REGULAR {
            syscall::lseek(fd, 0, libc::SEEK_CUR).unwrap_or(0)
        } else {
            0
        };
        if t.n_files == t.arena.files.len() {
            return Err(raw_err!(
                Capacity,
                "more than {} open files",
                t.arena.files.len()
            ));
        }
        let path = t.string(target)?;
        let btime = syscall::birth_time(fd).unwrap_or((0, 0));
        t.arena.files[t.n_files] = FileRec {
            fd,
            flags,
            offset,
            size: st.st_size as u64,
            kind,
            pad: 0,
            path,
            dev: st.st_dev,
            ino: st.st_ino,
            btime_sec: btime.0,
            btime_nsec: btime.1,
            pad2: 0,
        };
        t.n_files += 1;
    }
    Ok(())
}

fn capture_signals(t: &mut Tables<'_>) -> Result<(), RawError> {
    for sig in signals::restorable_signals() {
        let a = signals::get_action(sig).map_err(|e| raw_err!(Io, "sigaction({sig}): {e}"))?;
        t.arena.signals[t.n_signals] = SignalRec::from((sig, &a));
        t.n_signals += 1;
    }
    Ok(())
}

fn capture_regions(rt: &Runtime, t: &mut Tables<'_>, p: &mut ProcessRec) -> Result<(), RawError> {
    let len = syscall::read_file(b"/proc/self/maps\0", t.arena.maps)
        .map_err(|e| RawError::sys("read", b"/proc/self/maps", e))?;
    // The maps text lives in the arena, which the tables also borrow: walk it by raw slice.
    // SAFETY: `maps` is not written again until this function returns.
    let text: &[u8] = unsafe { core::slice::from_raw_parts(t.arena.maps.as_ptr(), len) };
    let mut last_ino = (0u64, 0u64);
    for entry in maps::parse(text) {
        let m = entry.map_err(|_| raw_err!(Io, "unparsable line in /proc/self/maps"))?;
        let mut flags = 0;
        if m.is_kernel_special() {
            flags |= REGION_SPECIAL;
            match m.path {
                b"[vdso]" => p.vdso = m.start as u64,
                b"[vvar]" => p.vvar = m.start as u64,
                _ => {}
            }
        } else if m.shared {
            if m.path.starts_with(b"/SYSV") {
                return Err(raw_err!(
                    Refused,
                    "System V shared memory at {:#x}",
                    m.start
                ));
            }
            let anon_shared = m.path == b"/dev/zero (deleted)" || m.path.is_empty();
            if !anon_shared && m.prot & libc::PROT_WRITE != 0 {
                return Err(raw_err!(
                    Refused,
                    "shared writable mapping of {} at {:#x}",
                    Bytes(m.path),
                    m.start
                ));
            }
            if anon_shared {
                flags |= REGION_SHARED | CANDIDATE;
            } else {
                flags |= REGION_SHARED | REGION_FILE;
            }
        } else if m.is_file() && !m.is_deleted() {
            flags |= REGION_FILE | CANDIDATE;
        } else if m.is_deleted() {
            // A private mapping of a deleted file cannot be mapped again: every page is saved.
            flags |= CANDIDATE | WHOLE;
        } else {
            // Anonymous memory, the heap, the stack, including memory mapped PROT_NONE.
            flags |= CANDIDATE;
        }
        // The kernel labels `[heap]` any mapping that reaches into the break area: one that
        // merely ends where it starts, or one merged with it (userfaultfd registration merges
        // the anonymous end of the data segment with the heap). The heap can be several
        // mappings (a tracked part and what brk added); only what lies above the break's start
        // is heap, so a mapping straddling it is recorded as two regions, below.
        let mut heap_from = None;
        match m.path {
            b"[heap]" if p.brk_start == 0 || m.start as u64 >= p.brk_start => {
                flags |= REGION_HEAP;
                if p.brk_start == 0 {
                    p.brk_start = m.start as u64;
                }
            }
            b"[heap]" if p.brk_start < m.end as u64 => heap_from = Some(p.brk_start as usize),
            b"[stack]" => flags |= REGION_STACK,
            _ => {}
        }
        let path = if m.path.is_empty() {
            StrRef::default()
        } else {
            t.string(m.path)?
        };
        if flags & REGION_FILE != 0 && (m.dev, m.inode) != last_ino {
            last_ino = (m.dev, m.inode);
            if let Ok(st) = syscall::stat(&cstr(m.path)) {
                let already = t.arena.identity[..t.n_identity]
                    .iter()
                    .any(|i| i.ino == st.st_ino && i.dev == st.st_dev);
                if !already && st.st_ino == m.inode {
                    push_identity(t, path, &st, false)?;
                }
            }
        }
        if t.n_regions == t.arena.regions.len() {
            return Err(raw_err!(
                Capacity,
                "more than {} memory regions",
                t.arena.regions.len()
            ));
        }
        t.arena.regions[t.n_regions] = RegionRec {
            start: m.start as u64,
            end: m.end as u64,
            offset: m.offset,
            dev: m.dev,
            ino: m.inode,
            path,
            prot: m.prot as u32,
            flags,
        };
        t.n_regions += 1;
        if let Some(at) = heap_from {
            split_region_at(t, at)?;
            t.arena.regions[t.n_regions - 1].flags |= REGION_HEAP;
        }
        // Our own mappings (the arena, the writers' report page and buffer) are recorded
        // without contents, and recreated empty by a restore (shared again if shared). The
        // kernel may have merged one with a neighbour of the same kind: split it out.
        let first = t.n_regions - 1;
        for (s, e) in [t.arena.range, rt.own_maps[0], rt.own_maps[1]] {
            if s >= e || e <= m.start || m.end <= s {
                continue;
            }
            split_region_at(t, s)?;
            split_region_at(t, e)?;
            for r in &mut t.arena.regions[first..t.n_regions] {
                if r.start >= s as u64 && r.end <= e as u64 {
                    r.flags &= REGION_SHARED;
                }
            }
        }
    }
    if p.brk_start == 0 {
        p.brk_start = p.brk;
    }
    let _ = rt;
    Ok(())
}

/// Decides, region by region, where an incremental image's pages come from: a region inside a
/// range the tracker watched intact since the parent is saved from its harvested dirty runs
/// (flagged [`FROM_DIRTY`]); any other trackable region is saved whole and watched from now on
/// (tracked here, before a writer process is started, because the tracker is the program's).
fn plan_tracking(
    t: &mut Tables<'_>,
    tracker: &mut dyn DirtyTracker,
    mode: Mode,
    n_tracked: usize,
    p: &ProcessRec,
) {
    let is_internal = |tr: &dyn DirtyTracker, start: usize, end: usize| {
        let mut hit = false;
        tr.internal_ranges(&mut |s, e| hit |= s < end && start < e);
        hit
    };
    for i in 0..t.n_regions {
        let r = t.arena.regions[i];
        let (start, end) = (r.start as usize, r.end as usize);
        // Private anonymous memory is tracked: any of it under uffd-async (registering only
        // some would keep mappings from merging as they do untracked, and a later mremap of
        // what the program sees as one mapping would fail), read-write memory under mprotect.
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        let trackable = match tracker.kind() {
            TrackerKind::UffdAsync => true,
            TrackerKind::Mprotect => r.prot & rw == rw && !kernel_writes_into(p, start, end),
        } && private_anon(&r);
        if !trackable || is_internal(&*tracker, start, end) {
            continue;
        }
        if t.arena.tracked[..n_tracked]
            .iter()
            .any(|k| k.intact && k.start <= start && end <= k.end)
        {
            // Watched and re-armed by the harvest: an incremental image takes its written
            // pages, a full one all of it.
            if mode.parent != 0 {
                t.arena.regions[i].flags |= FROM_DIRTY;
            }
            continue;
        }
        // New since the previous checkpoint (or a full one): saved whole, watched from now.
        // A range the tracker refuses is saved whole every time.
        let _ = tracker.track(start, end - start);
    }
}

/// Writes page data, manifest and header through `out`; returns the stats. The image is not
/// durable yet: see [`finish`].
fn write_image(
    rt: &Runtime,
    t: &mut Tables<'_>,
    out: &mut Out,
    pending: &Pending,
) -> Result<CaptureStats, RawError> {
    let mut p = pending.process;
    let p = &mut p;
    let (generation, mode) = (pending.generation, pending.mode);
    let mut off = HEADER_SPACE;
    let rsp = p.ctx.rsp as usize;
    let mut harvested = 0;
    for i in 0..t.n_regions {
        let r = t.arena.regions[i];
        let (start, end) = (r.start as usize, r.end as usize);
        let readable = r.prot & libc::PROT_READ as u32 != 0;
        let runs_before = t.n_runs;
        if r.flags & FROM_DIRTY != 0 {
            let k = t.arena.tracked[..pending.n_tracked]
                .iter()
                .position(|k| k.intact && k.start <= start && end <= k.end);
            if let Some(k) = k {
                let Tracked { first, last, .. } = t.arena.tracked[k];
                for j in first..last {
                    let (a, b) = t.arena.dirty[j];
                    let (a, b) = (a.max(start), b.min(end));
                    if a < b {
                        save_span(rt, t, out, &mut off, mode, a, b, !readable)?;
                    }
                }
                save_zero_gaps(t, out, start, end)?;
                t.arena.regions[i].flags |= REGION_SAVED | REGION_CHAIN;
                harvested += 1;
                continue;
            }
        }
        let how = if r.flags & REGION_SPECIAL != 0 || r.flags & CANDIDATE == 0 {
            None
        } else if r.flags & REGION_STACK != 0 && (start..end).contains(&rsp) {
            // Below the saved stack pointer the main stack is dead (and frozen: the capture
            // runs on its own stack), so only the pages from the one holding it are saved.
            Some((page_floor(rsp), end, None))
        } else if r.flags & REGION_FILE != 0 && r.prot & libc::PROT_WRITE as u32 == 0 {
            // Read-only private file mapping (text, rodata, relocated RELRO of a library
            // loaded with dlopen): only the process's own copies of pages differ from the file.
            (out.pagemap_fd >= 0)
                .then_some((start, end, Some(Scan::Modified)))
                .or(Some((start, end, None)))
        } else if r.flags & (REGION_FILE | REGION_SHARED | WHOLE) != 0 || out.pagemap_fd < 0 {
            // Writable file-backed pages and shared memory are saved whole: the restoring
            // process may have dirtied its own copy of the file's private pages.
            Some((start, end, None))
        } else {
            // Anonymous memory never touched reads as zeros: save only populated pages.
            Some((start, end, Some(Scan::Populated)))
        };
        let Some((from, to, scan)) = how else {
            continue;
        };
        // Unreadable memory (PROT_NONE) is read through /proc/self/mem, which may.
        let via_mem = !readable;
        if via_mem && out.mem_fd < 0 {
            return Err(raw_err!(
                Refused,
                "memory at {start:#x} is not readable and /proc/self/mem is unavailable"
            ));
        }
        match scan {
            None => save_span(rt, t, out, &mut off, mode, from, to, via_mem)?,
            Some(kind) => {
                let scan_buf: &mut [crate::sys::mem::PageRegion] =
                    // SAFETY: the scan buffer is disjoint from everything save_span touches.
                    unsafe { core::slice::from_raw_parts_mut(t.arena.scan.as_mut_ptr(), t.arena.scan.len()) };
                let pagemap_fd = out.pagemap_fd;
                let scanned = scan_populated(
                    pagemap_fd,
                    from,
                    to,
                    kind,
                    scan_buf,
                    |s, e, found| match found {
                        Found::Data => save_span(rt, t, out, &mut off, mode, s, e, via_mem),
                        Found::DataOrMarker => {
                            save_nonzero(rt, t, out, &mut off, mode, s, e, via_mem)
                        }
                    },
                )?;
                if let Err(e) = scanned {
                    return Err(RawError::sys("PAGEMAP_SCAN", b"/proc/self/pagemap", e));
                }
            }
        }
        if t.n_runs > runs_before {
            t.arena.regions[i].flags |= REGION_SAVED;
        }
    }
    for r in &mut t.arena.regions[..t.n_regions] {
        r.flags &= !(CANDIDATE | WHOLE | FROM_DIRTY);
    }
    let data_len = off - HEADER_SPACE;
    p.saved_bytes = data_len;
    crate::fault::point("write-manifest").map_err(|e| RawError::sys("write", b"manifest", e))?;

    let manifest_offset = off;
    let mut crc = 0u32;
    let mut section =
        |kind: SectionKind, count: usize, body: &[u8], off: &mut u64| -> Result<(), RawError> {
            let sh = SectionHeader {
                kind: kind as u32,
                count: count as u32,
                len: body.len() as u64,
            };
            for bytes in [sh.as_bytes(), body] {
                crc = crc32c::crc32c_append(crc, bytes);
                out.put(bytes, *off, *off, b"manifest")?;
                *off += bytes.len() as u64;
            }
            Ok(())
        };
    section(
        SectionKind::Strings,
        t.strings_len,
        &t.arena.strings[..t.strings_len],
        &mut off,
    )?;
    section(SectionKind::Process, 1, p.as_bytes(), &mut off)?;
    section(
        SectionKind::Identity,
        t.n_identity,
        t.arena.identity[..t.n_identity].as_bytes(),
        &mut off,
    )?;
    section(
        SectionKind::Regions,
        t.n_regions,
        t.arena.regions[..t.n_regions].as_bytes(),
        &mut off,
    )?;
    section(
        SectionKind::Runs,
        t.n_runs,
        t.arena.runs[..t.n_runs].as_bytes(),
        &mut off,
    )?;
    section(
        SectionKind::Files,
        t.n_files,
        t.arena.files[..t.n_files].as_bytes(),
        &mut off,
    )?;
    section(
        SectionKind::Signals,
        t.n_signals,
        t.arena.signals[..t.n_signals].as_bytes(),
        &mut off,
    )?;

    let mut h = Header {
        magic: MAGIC,
        version: VERSION,
        header_size: size_of::<Header>() as u32,
        generation,
        parent: mode.parent,
        created_ns: syscall::realtime_ns(),
        data_offset: HEADER_SPACE,
        data_len,
        manifest_offset,
        manifest_len: off - manifest_offset,
        total_len: off,
        manifest_crc: crc,
        header_crc: 0,
    };
    h.header_crc = h.compute_crc();
    out.put(h.as_bytes(), 0, off, b"header")?;
    let saved = t.arena.regions[..t.n_regions]
        .iter()
        .filter(|r| r.flags & REGION_SAVED != 0)
        .count();
    Ok(CaptureStats {
        generation,
        data_bytes: data_len,
        runs: t.n_runs as u32,
        regions: (t.n_regions as u32, saved as u32),
        files: t.n_files as u32,
        file_bytes: off,
        recycled: false,
        parent: mode.parent,
        harvested,
        rebase: mode.rebase,
        spilled: false,
        deleter: 0,
        placement: Placement::LocalDir,
    })
}

/// Whether the kernel itself writes into `[start, end)` behind the program's back: the thread
/// descriptor (rseq's CPU number, the thread id cleared at exit) and the alternate signal stack
/// (signal frames). The mprotect tracker must leave such memory writable: a kernel write into
/// a protected page there is a fatal `SIGSEGV`, not a fault a handler can resolve.
fn kernel_writes_into(p: &ProcessRec, start: usize, end: usize) -> bool {
    let hit = |a: u64, len: u64| len > 0 && (a as usize) < end && start < (a + len) as usize;
    hit(p.fs_base.saturating_sub(PAGE as u64), 2 * PAGE as u64)
        || hit(p.rseq_area, p.rseq_len.max(32) as u64)
        || hit(p.altstack_sp, p.altstack_size)
}

/// Private anonymous memory other than the main stack (heap included): what a dirty tracker
/// can watch. (Kernel special mappings and the arena are never candidates.)
fn private_anon(r: &RegionRec) -> bool {
    r.flags & (CANDIDATE | REGION_FILE | REGION_SHARED | WHOLE | REGION_STACK) == CANDIDATE
}

/// Starts a capture under a tracker: lists the tracker's ranges and harvests each one's written
/// pages into the arena, which also re-arms them (a full capture does it too: harvesting only
/// touches the written pages, so it is the cheapest way to start a new clean dirty set, and the
/// ranges stay watched). Returns the number of ranges listed.
fn harvest_tracked(
    t: &mut Tables<'_>,
    tracker: &mut dyn DirtyTracker,
    mode: Mode,
) -> Result<usize, RawError> {
    let _ = mode;
    let mut n = 0;
    let mut overflow = false;
    let tracked = &mut *t.arena.tracked;
    tracker.each_range(&mut |s, e| {
        if n < tracked.len() {
            tracked[n] = Tracked {
                start: s,
                end: e,
                ..Default::default()
            };
            n += 1;
        } else {
            overflow = true;
        }
    });
    if overflow {
        return Err(raw_err!(
            Capacity,
            "the tracker watches more than {} ranges",
            tracked.len()
        ));
    }
    let mut used = 0;
    for k in 0..n {
        let Tracked { start, end, .. } = t.arena.tracked[k];
        let dirty = &mut *t.arena.dirty;
        let first = used;
        let mut full = false;
        let ok = tracker.harvest(start, end, &mut |a, b| {
            if used < dirty.len() {
                dirty[used] = (a, b);
                used += 1;
            } else {
                full = true;
            }
        });
        // A failed or overflowing harvest: the range is saved whole (all its populated pages)
        // and watched afresh, which is right whatever was written.
        t.arena.tracked[k] = Tracked {
            start,
            end,
            first,
            last: used,
            intact: ok.is_ok() && !full,
        };
    }
    Ok(n)
}

/// Checks each harvested range against the memory map just read: it is still intact if the
/// same mapping is there (`uffd-async`: one mapping of exactly that range, which is still
/// registered since the harvest worked; `mprotect`: mappings of anonymous private memory
/// covering it, all read-only again after the harvest). Ranges that changed are no longer
/// watched; their regions are saved as new. Returns whether protections changed, so that the
/// map must be read again.
fn settle_tracking(t: &mut Tables<'_>, tracker: &mut dyn DirtyTracker, n: usize) -> bool {
    let mprotect = tracker.kind() == TrackerKind::Mprotect;
    let mut changed = false;
    for k in 0..n {
        let Tracked {
            start, end, intact, ..
        } = t.arena.tracked[k];
        let regions = &t.arena.regions[..t.n_regions];
        let still = intact
            && if mprotect {
                let mut at = start;
                for r in regions
                    .iter()
                    .filter(|r| r.end as usize > start && (r.start as usize) < end)
                {
                    if r.start as usize > at || !private_anon(r) || r.prot != libc::PROT_READ as u32
                    {
                        break;
                    }
                    at = r.end as usize;
                }
                at >= end
            } else {
                // Registration survives the kernel merging the range with registered neighbours
                // (one mapping then holds several ranges); a mapping made anew over any of it
                // is unregistered, and its harvest failed.
                regions
                    .iter()
                    .any(|r| r.start as usize <= start && end <= r.end as usize && private_anon(r))
            };
        if !still {
            t.arena.tracked[k].intact = false;
            let _ = tracker.untrack(start, end - start);
            changed |= mprotect;
        }
    }
    changed
}

/// Splits regions that straddle an intact range's ends, so that every region lies wholly inside
/// or outside each range (a mapping can hold several ranges, or a range and memory added since).
/// Under the mprotect tracker, the pages of intact ranges are read-only only because the tracker
/// made them so: they are recorded as the read-write memory they are.
fn split_at_tracked(t: &mut Tables<'_>, n: usize, mprotect: bool) -> Result<(), RawError> {
    for k in 0..n {
        let Tracked {
            start, end, intact, ..
        } = t.arena.tracked[k];
        if !intact {
            continue;
        }
        split_region_at(t, start)?;
        split_region_at(t, end)?;
        if !mprotect {
            continue;
        }
        for r in &mut t.arena.regions[..t.n_regions] {
            if r.start as usize >= start && r.end as usize <= end {
                r.prot |= (libc::PROT_READ | libc::PROT_WRITE) as u32;
            }
        }
    }
    Ok(())
}

/// Splits the region that strictly contains `addr` into two at `addr`.
fn split_region_at(t: &mut Tables<'_>, addr: usize) -> Result<(), RawError> {
    let addr = addr as u64;
    let Some(i) = t.arena.regions[..t.n_regions]
        .iter()
        .position(|r| r.start < addr && addr < r.end)
    else {
        return Ok(());
    };
    if t.n_regions == t.arena.regions.len() {
        return Err(raw_err!(
            Capacity,
            "more than {} memory regions",
            t.arena.regions.len()
        ));
    }
    t.arena.regions.copy_within(i..t.n_regions, i + 1);
    t.n_regions += 1;
    let r = &mut t.arena.regions[i];
    r.end = addr;
    let tail = &mut t.arena.regions[i + 1];
    tail.offset += addr - tail.start;
    tail.start = addr;
    Ok(())
}

/// Records the pages of `[start, end)` that hold no data (never touched, or discarded) as zero
/// runs: in an incremental image, older images of the chain may hold stale contents for them.
fn save_zero_gaps(t: &mut Tables<'_>, out: &Out, start: usize, end: usize) -> Result<(), RawError> {
    if out.pagemap_fd < 0 {
        return Ok(());
    }
    let scan_buf: &mut [crate::sys::mem::PageRegion] =
        // SAFETY: the scan buffer is disjoint from the run table, the only other arena part used.
        unsafe { core::slice::from_raw_parts_mut(t.arena.scan.as_mut_ptr(), t.arena.scan.len()) };
    let mut at = start;
    let zero = |t: &mut Tables<'_>, a: usize, b: usize| -> Result<(), RawError> {
        if a >= b {
            return Ok(());
        }
        push_run(
            t,
            RunRec {
                addr: a as u64,
                len: (b - a) as u64,
                data_off: 0,
                crc: 0,
                kind: RUN_ZERO,
            },
        )
    };
    let scanned = scan_populated(
        out.pagemap_fd,
        start,
        end,
        Scan::Populated,
        scan_buf,
        // Runs the scan cannot classify (`Found::DataOrMarker`) are no zero runs: a marker is a
        // page not written since the chain's older images, which hold it as zeros, and the
        // rest (swapped out or being migrated while protected) hold data.
        |s, e, _| {
            zero(t, at, s)?;
            at = e;
            Ok(())
        },
    )?;
    if let Err(e) = scanned {
        return Err(RawError::sys("PAGEMAP_SCAN", b"/proc/self/pagemap", e));
    }
    zero(t, at, end)
}

/// Saves `[start, end)` minus excluded pages as runs of at most [`RUN_MAX`] bytes; with
/// `via_mem`, the bytes are read through `/proc/self/mem` (for memory mapped without read
/// permission).
#[allow(clippy::too_many_arguments)]
fn save_span(
    rt: &Runtime,
    t: &mut Tables<'_>,
    out: &mut Out,
    off: &mut u64,
    mode: Mode,
    start: usize,
    end: usize,
    via_mem: bool,
) -> Result<(), RawError> {
    let mut at = start;
    while at < end {
        // Skip excluded pages (whole pages only), then find where the next exclusion begins.
        if let Some(skip_to) = rt.excluded_until(at) {
            at = skip_to.min(end).max(at + PAGE);
            continue;
        }
        let stop = rt
            .next_exclusion_after(at)
            .unwrap_or(end)
            .min(end)
            .min(at + RUN_MAX);
        write_run(t, out, off, mode, at, stop - at, via_mem)?;
        at = stop;
    }
    Ok(())
}

/// Saves the pages of `[start, end)` that do not read as zeros, for a run the scan could not
/// classify ([`Found::DataOrMarker`]): userfaultfd markers on pages never touched, which the
/// `uffd-async` tracker installs when it protects a range (and which are no data: a full image
/// holding them saved the whole of a large buffer the program had only begun to fill), or
/// pages swapped out or being migrated while protected. Reading a marker maps the shared zero
/// page, which makes nothing resident. A page of zeros left out restores as zeros, as every
/// page of a region saved whole (not `CHAIN`) that no run covers.
#[allow(clippy::too_many_arguments)]
fn save_nonzero(
    rt: &Runtime,
    t: &mut Tables<'_>,
    out: &mut Out,
    off: &mut u64,
    mode: Mode,
    start: usize,
    end: usize,
    via_mem: bool,
) -> Result<(), RawError> {
    let mut at = start;
    while at < end {
        // One chunk at a time (through the bounce buffer when the memory is not readable);
        // saving a run of non-zero pages reuses the buffer, so the scan resumes after it.
        let stop = end.min(at + RUN_MAX);
        let chunk: &[u8] = if via_mem {
            let buf = &mut t.arena.bounce[..stop - at];
            match syscall::pread_exact(out.mem_fd, buf, at as u64) {
                Ok(true) => buf,
                Ok(false) => {
                    return Err(raw_err!(
                        Io,
                        "short read of memory at {at:#x} through /proc/self/mem"
                    ));
                }
                Err(e) => return Err(RawError::sys("read /proc/self/mem at", b"", e)),
            }
        } else {
            // SAFETY: [at, stop) is a readable region of this process whose contents do not
            // change during the capture (see the module's Safety section).
            unsafe { core::slice::from_raw_parts(at as *const u8, stop - at) }
        };
        // An OR over the whole page, without an early exit, so that it vectorises: the pages
        // tested are nearly all zeros.
        let zero = |i: usize| {
            chunk[i * PAGE..(i + 1) * PAGE]
                .iter()
                .fold(0, |a, &b| a | b)
                == 0
        };
        let pages = chunk.len() / PAGE;
        let Some(first) = (0..pages).find(|&i| !zero(i)) else {
            at = stop;
            continue;
        };
        let last = (first..pages).find(|&i| zero(i)).unwrap_or(pages);
        let (s, e) = (at + first * PAGE, at + last * PAGE);
        save_span(rt, t, out, off, mode, s, e, via_mem)?;
        at = e;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_run(
    t: &mut Tables<'_>,
    out: &mut Out,
    off: &mut u64,
    mode: Mode,
    addr: usize,
    len: usize,
    via_mem: bool,
) -> Result<(), RawError> {
    // Checked before the data is written, as well as when the run is recorded.
    run_room(t)?;
    crate::fault::point("write-data").map_err(|e| RawError::sys("write", b"page data", e))?;
    // Buffered, the data reaches the file in the writer process (see `finish`), and so does
    // this failure point.
    if mode.rebase && out.buf.is_none() {
        crate::fault::point("compact-data").map_err(|e| RawError::sys("write", b"page data", e))?;
    }
    let bytes: &[u8] = if via_mem {
        let buf = &mut t.arena.bounce[..len];
        match syscall::pread_exact(out.mem_fd, buf, addr as u64) {
            Ok(true) => &buf[..],
            Ok(false) => {
                return Err(raw_err!(
                    Io,
                    "short read of memory at {addr:#x} through /proc/self/mem"
                ));
            }
            Err(e) => return Err(RawError::sys("read /proc/self/mem at", b"", e)),
        }
    } else {
        // SAFETY: [addr, addr + len) is a readable region of this process whose contents do not
        // change during the capture (see the module's Safety section).
        unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
    };
    let crc = crc32c::crc32c(bytes);
    out.put(bytes, *off, *off, b"page data")?;
    // Start the device on what is written so far, so that its work overlaps the checksums and
    // copies of the rest instead of all waiting for the final fsync.
    let flushed = *off / WRITEBACK_BATCH;
    if out.buf.is_none() && out.fd >= 0 && (*off + len as u64) / WRITEBACK_BATCH > flushed {
        let from = flushed * WRITEBACK_BATCH;
        let _ = syscall::start_writeback(out.fd, from, *off + len as u64 - from);
    }
    push_run(
        t,
        RunRec {
            addr: addr as u64,
            len: len as u64,
            data_off: *off,
            crc,
            kind: RUN_DATA,
        },
    )?;
    *off += len as u64;
    Ok(())
}

/// Fails if the run table is full.
fn run_room(t: &Tables<'_>) -> Result<(), RawError> {
    if t.n_runs == t.arena.runs.len() {
        return Err(raw_err!(
            Capacity,
            "more than {} page runs",
            t.arena.runs.len()
        ));
    }
    Ok(())
}

/// Appends a run record to the image's run table.
fn push_run(t: &mut Tables<'_>, run: RunRec) -> Result<(), RawError> {
    run_room(t)?;
    t.arena.runs[t.n_runs] = run;
    t.n_runs += 1;
    Ok(())
}

/// Added to refusals of pipes and sockets, which are often inherited without the program knowing.
const INHERITED: &str = "; if the program inherited it, whatever starts the program must close it or mark it close-on-exec";

/// Capture-time region flag: contents may need saving (never written to an image).
const CANDIDATE: u32 = 1 << 30;
/// Capture-time region flag: save every page, not only populated ones.
const WHOLE: u32 = 1 << 29;
/// Capture-time region flag: inside a range the tracker watched intact since the parent image:
/// saved from its harvested dirty runs (see `plan_tracking`).
const FROM_DIRTY: u32 = 1 << 28;

/// Bytes of image written between two writeback kicks.
const WRITEBACK_BATCH: u64 = 16 << 20;

/// Copies a path into a NUL-terminated buffer.
fn cstr(s: &[u8]) -> [u8; 4097] {
    let mut b = [0u8; 4097];
    let n = s.len().min(4096);
    b[..n].copy_from_slice(&s[..n]);
    b
}

#[allow(dead_code)]
fn _assert_page_math() {
    const _: () = assert!(page_ceil(1) == PAGE);
}
