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

use core::fmt::Write as _;

use zerocopy::IntoBytes;

use crate::arena::{Arena, RUN_MAX, Tracked};
use crate::dirty::{DirtyTracker, TrackerKind};
use crate::error::{RawError, raw_err};
use crate::image::*;
use crate::runtime::Runtime;
use crate::store;
use crate::sys::arch::Context;
use crate::sys::maps;
use crate::sys::mem::{PAGE, Scan, page_ceil, page_floor, scan_populated};
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

impl Tables<'_> {
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
) -> Result<CaptureStats, RawError> {
    let mut t = Tables {
        arena,
        strings_len: 0,
        n_regions: 0,
        n_runs: 0,
        n_identity: 0,
        n_files: 0,
        n_signals: 0,
    };
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

    let mut tmp = store::name(generation, store::TMP);
    let mut fin = store::name(generation, store::IMAGE);
    let (tmp_c, fin_c) = (
        tmp.as_cstr().unwrap_or(b"\0"),
        fin.as_cstr().unwrap_or(b"\0"),
    );
    // A stale file of this name is the leftover of a checkpoint killed mid-write.
    let _ = syscall::unlinkat(rt.dir_fd, tmp_c);
    let (fd, recycled) = open_image(rt, t.arena.dents, tmp_c)?;
    let result = write_image(
        rt,
        &mut t,
        Saver {
            tracker,
            mode,
            n_tracked,
        },
        fd,
        &mut process,
        ctx,
        generation,
    );
    let closed = syscall::close(fd);
    let result = result.and_then(|s| {
        closed
            .map(|_| s)
            .map_err(|e| RawError::sys("close", tmp_c, e))
    });
    let stats = match result {
        Ok(s) => CaptureStats { recycled, ..s },
        Err(e) => {
            let _ = syscall::unlinkat(rt.dir_fd, tmp_c);
            return Err(e);
        }
    };
    crate::fault::point("before-commit").map_err(|e| {
        let _ = syscall::unlinkat(rt.dir_fd, tmp_c);
        RawError::sys("commit", fin_c, e)
    })?;
    // Commit: the rename is atomic, and the directory fsync makes it durable. Until here the
    // previous generation is the one a restore would use.
    syscall::renameat(rt.dir_fd, tmp_c, fin_c).map_err(|e| {
        let _ = syscall::unlinkat(rt.dir_fd, tmp_c);
        RawError::sys("rename", fin_c, e)
    })?;
    syscall::fsync(rt.dir_fd).map_err(|e| RawError::sys("fsync directory of", fin_c, e))?;
    store::prune(rt.dir_fd, t.arena.dents, generation, rt.cfg.keep);
    Ok(stats)
}

/// Opens the file the new image is written to. When the store already holds `keep` committed
/// images (and `keep` ≥ 2, so another stays committed throughout), the oldest is renamed to the
/// temporary name and overwritten in place: the paper's "at most two files", no delete on the
/// critical path, and blocks the disk has already allocated.
fn open_image(rt: &Runtime, dents: &mut [u8], tmp_c: &[u8]) -> Result<(i32, bool), RawError> {
    let mut gens = [0u64; 64];
    let n = store::committed(rt.dir_fd, dents, &mut gens);
    let keep = rt.cfg.keep as usize;
    // The oldest file may be reused only if the newest image does not build on it.
    if keep >= 2 && n >= keep && !store::in_chain(rt.dir_fd, gens[n - 1], gens[0]) {
        let mut oldest = store::name(gens[0], store::IMAGE);
        if let Some(old_c) = oldest.as_cstr()
            && syscall::renameat(rt.dir_fd, old_c, tmp_c).is_ok()
        {
            return syscall::openat(rt.dir_fd, tmp_c, libc::O_WRONLY | libc::O_CLOEXEC, 0)
                .map(|fd| (fd, true))
                .map_err(|e| RawError::sys("open", tmp_c, e));
        }
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
    let (arena_start, arena_end) = t.arena.range;
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
        } else if m.start >= arena_start && m.end <= arena_end {
            // Our scratch arena (and its guard page): restored as zeros.
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
    }
    if p.brk_start == 0 {
        p.brk_start = p.brk;
    }
    let _ = rt;
    Ok(())
}

/// Writes header, data and manifest to `fd`; returns the stats once everything is on disk.
fn write_image(
    rt: &Runtime,
    t: &mut Tables<'_>,
    mut sv: Saver<'_>,
    fd: i32,
    p: &mut ProcessRec,
    ctx: &Context,
    generation: u64,
) -> Result<CaptureStats, RawError> {
    let mut off = HEADER_SPACE;
    let rsp = ctx.rsp as usize;
    let mut harvested = 0;
    for i in 0..t.n_regions {
        let r = t.arena.regions[i];
        let (start, end) = (r.start as usize, r.end as usize);
        let readable = r.prot & libc::PROT_READ as u32 != 0;
        let runs_before = t.n_runs;
        // Private anonymous memory is tracked: any of it under uffd-async (registering only
        // some would keep mappings from merging as they do untracked, and a later mremap of
        // what the program sees as one mapping would fail), read-write memory under mprotect.
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        let trackable = match sv.tracker.as_deref().map(|tr| tr.kind()) {
            None => false,
            Some(TrackerKind::UffdAsync) => true,
            Some(TrackerKind::Mprotect) => r.prot & rw == rw && !kernel_writes_into(p, start, end),
        } && private_anon(&r)
            && !sv.internal(start, end);
        if trackable && sv.mode.parent != 0 {
            let k = t.arena.tracked[..sv.n_tracked]
                .iter()
                .position(|k| k.intact && k.start <= start && end <= k.end);
            if let Some(k) = k {
                let Tracked { first, last, .. } = t.arena.tracked[k];
                for j in first..last {
                    let (a, b) = t.arena.dirty[j];
                    let (a, b) = (a.max(start), b.min(end));
                    if a < b {
                        save_span(rt, t, fd, &mut off, sv.mode, a, b, !readable)?;
                    }
                }
                save_zero_gaps(rt, t, start, end)?;
                t.arena.regions[i].flags |= REGION_SAVED | REGION_CHAIN;
                harvested += 1;
                continue;
            }
        }
        if trackable && let Some(tr) = sv.tracker.as_deref_mut() {
            // New since the previous checkpoint (or a full one): saved below, watched from now.
            // A range the tracker refuses is saved whole every time.
            let _ = tr.track(start, end - start);
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
            (rt.pagemap_fd >= 0)
                .then_some((start, end, Some(Scan::Modified)))
                .or(Some((start, end, None)))
        } else if r.flags & (REGION_FILE | REGION_SHARED | WHOLE) != 0 || rt.pagemap_fd < 0 {
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
        if via_mem && rt.mem_fd < 0 {
            return Err(raw_err!(
                Refused,
                "memory at {start:#x} is not readable and /proc/self/mem is unavailable"
            ));
        }
        let mode = sv.mode;
        match scan {
            None => save_span(rt, t, fd, &mut off, mode, from, to, via_mem)?,
            Some(kind) => {
                let scan_buf: &mut [crate::sys::mem::PageRegion] =
                    // SAFETY: the scan buffer is disjoint from everything save_span touches.
                    unsafe { core::slice::from_raw_parts_mut(t.arena.scan.as_mut_ptr(), t.arena.scan.len()) };
                let scanned = scan_populated(rt.pagemap_fd, from, to, kind, scan_buf, |s, e| {
                    save_span(rt, t, fd, &mut off, mode, s, e, via_mem)
                })?;
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
        r.flags &= !(CANDIDATE | WHOLE);
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
                syscall::pwrite_all(fd, bytes, *off)
                    .map_err(|e| RawError::sys("write", b"manifest", e))?;
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
        parent: sv.mode.parent,
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
    syscall::pwrite_all(fd, h.as_bytes(), 0).map_err(|e| RawError::sys("write", b"header", e))?;
    // A recycled file may be longer than this image.
    syscall::ftruncate(fd, off).map_err(|e| RawError::sys("truncate", b"image", e))?;
    syscall::fsync(fd).map_err(|e| RawError::sys("fsync", b"image", e))?;
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
        parent: sv.mode.parent,
        harvested,
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

/// What `write_image` needs to save pages incrementally.
struct Saver<'a> {
    tracker: Option<&'a mut dyn DirtyTracker>,
    mode: Mode,
    /// Entries of `arena.tracked` filled by [`harvest_tracked`].
    n_tracked: usize,
}

impl Saver<'_> {
    /// Whether `[start, end)` overlaps the tracker's own memory.
    fn internal(&self, start: usize, end: usize) -> bool {
        let mut hit = false;
        if let Some(tr) = self.tracker.as_deref() {
            tr.internal_ranges(&mut |s, e| hit |= s < end && start < e);
        }
        hit
    }
}

/// Starts an incremental capture: lists the tracker's ranges and harvests each one's written
/// pages into the arena (which also re-arms them). For a full capture, stops watching
/// everything instead: each region is watched afresh as it is saved. Returns the number of
/// ranges listed.
fn harvest_tracked(
    t: &mut Tables<'_>,
    tracker: &mut dyn DirtyTracker,
    mode: Mode,
) -> Result<usize, RawError> {
    if mode.parent == 0 {
        tracker.untrack_all();
        return Ok(0);
    }
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
fn save_zero_gaps(
    rt: &Runtime,
    t: &mut Tables<'_>,
    start: usize,
    end: usize,
) -> Result<(), RawError> {
    if rt.pagemap_fd < 0 {
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
        rt.pagemap_fd,
        start,
        end,
        Scan::Populated,
        scan_buf,
        |s, e| {
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
    fd: i32,
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
        write_run(rt, t, fd, off, mode, at, stop - at, via_mem)?;
        at = stop;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_run(
    rt: &Runtime,
    t: &mut Tables<'_>,
    fd: i32,
    off: &mut u64,
    mode: Mode,
    addr: usize,
    len: usize,
    via_mem: bool,
) -> Result<(), RawError> {
    // Checked before the data is written, as well as when the run is recorded.
    run_room(t)?;
    crate::fault::point("write-data").map_err(|e| RawError::sys("write", b"page data", e))?;
    if mode.rebase {
        crate::fault::point("compact-data").map_err(|e| RawError::sys("write", b"page data", e))?;
    }
    let bytes: &[u8] = if via_mem {
        let buf = &mut t.arena.bounce[..len];
        match syscall::pread_exact(rt.mem_fd, buf, addr as u64) {
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
    syscall::pwrite_all(fd, bytes, *off)
        .map_err(|e: Errno| RawError::sys("write", b"page data", e))?;
    // Start the device on what is written so far, so that its work overlaps the checksums and
    // copies of the rest instead of all waiting for the final fsync.
    let flushed = *off / WRITEBACK_BATCH;
    if (*off + len as u64) / WRITEBACK_BATCH > flushed {
        let from = flushed * WRITEBACK_BATCH;
        let _ = syscall::start_writeback(fd, from, *off + len as u64 - from);
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
