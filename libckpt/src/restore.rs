//! Restoring: finding the newest usable checkpoint, proving it belongs to this program,
//! verifying every checksum before touching memory, and re-creating kernel state afterwards.
//!
//! # Safety
//!
//! Only [`after_restore`] uses unsafe code: it runs in the restored process, reads the
//! restorer's info block (still mapped, unmapped at its end), writes the new thread id into the
//! restored thread descriptor, re-registers rseq, and reinstalls signal dispositions whose
//! handler addresses come from the same binary's image.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::{Config, RemoteStore, RestoreMode, Store};
use crate::error::{Error, Result};
use crate::image::{self, FILE_REGULAR, FormatError, Manifest};
use crate::progress::{self, Meter};
use crate::runtime::{self, Runtime, log_at};
use crate::store;
use crate::sys::restore::RestoreInfo;
use crate::sys::{glibc, signals, syscall};

/// Why one generation could not be used.
pub(crate) enum Reject {
    /// Damaged: try the previous generation.
    Corrupt(FormatError),
    /// Not ours, or not restorable here: stop.
    Fatal(Error),
}

/// Reads and checks one image; on success returns the manifest and the open file.
pub fn load(path: &Path) -> Result<(Manifest, File), Reject> {
    let io = |op, e| {
        Reject::Fatal(Error::Io {
            op,
            path: path.to_path_buf(),
            source: e,
        })
    };
    let file = File::open(path).map_err(|e| io("open", e))?;
    let len = file.metadata().map_err(|e| io("stat", e))?.len();
    let mut head = vec![0u8; size_of::<image::Header>()];
    if len < head.len() as u64 {
        return Err(Reject::Corrupt(FormatError::Truncated { what: "header" }));
    }
    file.read_exact_at(&mut head, 0)
        .map_err(|e| io("read", e))?;
    let header = image::check_header(&head, len).map_err(Reject::Corrupt)?;
    let mut man = vec![0u8; header.manifest_len as usize];
    file.read_exact_at(&mut man, header.manifest_offset)
        .map_err(|e| io("read", e))?;
    let m = image::parse_manifest(header, &man).map_err(Reject::Corrupt)?;
    Ok((m, file))
}

/// Checks that this process runs the executable and libraries the image was taken with.
pub fn check_identity(m: &Manifest, image: &Path) -> Result<()> {
    let wrong = |reason: String| Error::WrongBinary {
        image: image.to_path_buf(),
        reason,
    };
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| Error::Io {
        op: "readlink",
        path: "/proc/self/exe".into(),
        source: e,
    })?;
    let meta = std::fs::metadata("/proc/self/exe").map_err(|e| Error::Io {
        op: "stat",
        path: exe.clone(),
        source: e,
    })?;
    for id in &m.identity {
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(m.str(id.path)));
        let (what, st) = if id.is_exe != 0 {
            ("executable", Some(meta.clone()))
        } else {
            ("library or mapped file", std::fs::metadata(&path).ok())
        };
        let Some(st) = st else {
            return Err(wrong(format!("{what} {} no longer exists", path.display())));
        };
        let same = st.ino() == id.ino
            && st.size() == id.size
            && st.mtime() == id.mtime_sec
            && st.mtime_nsec() == id.mtime_nsec;
        if !same {
            let shown = if id.is_exe != 0 {
                format!("{} (this process runs {})", path.display(), exe.display())
            } else {
                path.display().to_string()
            };
            return Err(wrong(format!(
                "{what} {shown} differs: checkpoint has {} bytes, mtime {}, inode {}; found {} bytes, mtime {}, inode {}",
                id.size,
                id.mtime_sec,
                id.ino,
                st.size(),
                st.mtime(),
                st.ino()
            )));
        }
    }
    Ok(())
}

/// One image of a chain, loaded and verified.
pub(crate) struct Link {
    pub manifest: Manifest,
    pub file: File,
}

/// Loads generation `g` and, if it is incremental, every older image it builds on, then
/// checks every image's checksums (with a progress bar on the terminal when `bar` and the chain
/// is large). Newest first.
pub(crate) fn load_chain(dir: &Path, g: u64, bar: bool) -> Result<Vec<Link>, Reject> {
    let mut chain: Vec<Link> = Vec::new();
    let mut want = g;
    loop {
        let path = dir.join(store::name(want, store::IMAGE).as_str());
        if !path.exists() && !chain.is_empty() {
            return Err(Reject::Corrupt(FormatError::Malformed(format!(
                "generation {want}, which this incremental image builds on, is missing"
            ))));
        }
        let (m, f) = load(&path)?;
        if m.header.generation != want {
            return Err(Reject::Corrupt(FormatError::Malformed(format!(
                "file of generation {want} holds generation {}",
                m.header.generation
            ))));
        }
        let parent = m.header.parent;
        if parent >= want {
            return Err(Reject::Corrupt(FormatError::Malformed(format!(
                "generation {want} builds on generation {parent}, which is not older"
            ))));
        }
        chain.push(Link {
            manifest: m,
            file: f,
        });
        if parent == 0 {
            break;
        }
        want = parent;
    }
    let data = |m: &Manifest| -> u64 {
        m.runs
            .iter()
            .filter(|r| r.kind == image::RUN_DATA)
            .map(|r| r.len)
            .sum()
    };
    let total = chain.iter().map(|l| data(&l.manifest)).sum();
    let mut meter = Meter::new(bar, b"verifying", total);
    let checked = chain
        .iter()
        .try_for_each(|l| verify_runs(&l.manifest, &l.file, &mut meter));
    meter.finish();
    checked.map(|()| chain)
}

/// The page runs that rebuild memory from a chain (newest first), in the order they must be
/// applied: oldest link first. A link's runs (data and zero) apply only where every newer link
/// continued from it: inside the regions flagged [`image::REGION_CHAIN`] in all of them. Where a
/// newer link saved a region whole instead (a region new since its parent, or re-created at the
/// same address), that link is the base: older links held other memory there, and pages it did
/// not save are zeros (restored regions start zeroed).
pub(crate) fn merged_runs(chain: &[Link]) -> Vec<crate::sys::restore::PlanRun> {
    let manifests: Vec<&Manifest> = chain.iter().map(|l| &l.manifest).collect();
    merge_plan(&manifests)
}

/// Sorted, disjoint address intervals.
type Spans = Vec<(u64, u64)>;

/// The intersection of two sorted, disjoint interval lists.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Spans {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (lo, hi) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if lo < hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// See [`merged_runs`]; `chain[0]` is the newest image.
fn merge_plan(chain: &[&Manifest]) -> Vec<crate::sys::restore::PlanRun> {
    use crate::sys::restore::PlanRun;
    let chained = |m: &Manifest| -> Spans {
        let mut v: Spans = m
            .regions
            .iter()
            .filter(|r| r.flags & image::REGION_CHAIN != 0)
            .map(|r| (r.start, r.end))
            .collect();
        v.sort_unstable();
        v
    };
    // reach[i]: where link i's runs apply. Everywhere for the newest; for an older one, where
    // every newer link continued from its parent.
    let mut reach: Vec<Option<Spans>> = vec![None];
    let mut acc: Option<Spans> = None;
    for m in &chain[..chain.len().saturating_sub(1)] {
        let c = chained(m);
        let next = match &acc {
            None => c,
            Some(prev) => intersect(prev, &c),
        };
        reach.push(Some(next.clone()));
        acc = Some(next);
    }
    let mut out = Vec::new();
    for (i, m) in chain.iter().enumerate().rev() {
        for run in &m.runs {
            let zero = run.kind == image::RUN_ZERO;
            let (a, b) = (run.addr, run.addr + run.len);
            let mut push = |lo: u64, hi: u64| {
                out.push(PlanRun {
                    addr: lo as usize,
                    len: (hi - lo) as usize,
                    off: if zero { 0 } else { run.data_off + (lo - a) },
                    fd: i as u32,
                    zero,
                });
            };
            match &reach[i] {
                None => push(a, b),
                Some(spans) => {
                    let from = spans.partition_point(|&(_, e)| e <= a);
                    for &(s, e) in spans[from..].iter().take_while(|&&(s, _)| s < b) {
                        let (lo, hi) = (a.max(s), b.min(e));
                        if lo < hi {
                            push(lo, hi);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Checks every page run's checksum by reading the image once, without touching memory;
/// `meter` advances by the bytes read.
fn verify_runs(m: &Manifest, file: &File, meter: &mut Meter) -> Result<(), Reject> {
    let mut buf = vec![0u8; crate::arena::RUN_MAX];
    for run in m.runs.iter().filter(|r| r.kind == image::RUN_DATA) {
        let mut crc = 0u32;
        let mut done = 0u64;
        while done < run.len {
            let n = ((run.len - done) as usize).min(buf.len());
            match file.read_exact_at(&mut buf[..n], run.data_off + done) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(Reject::Corrupt(FormatError::Truncated {
                        what: "page data",
                    }));
                }
                Err(e) => {
                    return Err(Reject::Fatal(Error::Io {
                        op: "read",
                        path: PathBuf::new(),
                        source: e,
                    }));
                }
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            done += n as u64;
            meter.add(n as u64);
        }
        if crc != run.crc {
            return Err(Reject::Corrupt(FormatError::Checksum {
                what: format!("page run at {:#x} ({} KiB)", run.addr, run.len >> 10),
            }));
        }
    }
    Ok(())
}

/// Checks that the files the image had open can be reopened: the same file (device and inode)
/// is still at each path, and a regular file is at least as long as it was (what was written
/// after the checkpoint is cut off at restore; what was there before must still be there).
fn check_files(m: &Manifest, image: &Path) -> Result<()> {
    for f in &m.files {
        let path = Path::new(std::ffi::OsStr::from_bytes(m.str(f.path)));
        let fail = |what: String| Error::Layout {
            image: image.to_path_buf(),
            reason: format!(
                "file {} (open at fd {} when the checkpoint was taken) {what}",
                path.display(),
                f.fd
            ),
        };
        let st = std::fs::metadata(path).map_err(|e| fail(format!("cannot be opened: {e}")))?;
        let born = st
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        let same_birth = match born {
            Some(b) if f.btime_sec != 0 => {
                b.as_secs() as i64 == f.btime_sec && b.subsec_nanos() == f.btime_nsec
            }
            _ => true,
        };
        if st.dev() != f.dev || st.ino() != f.ino || !same_birth {
            return Err(fail("was replaced by another file since".into()));
        }
        if f.kind == FILE_REGULAR && st.size() < f.size {
            return Err(fail(format!(
                "shrank from {} to {} bytes since",
                f.size,
                st.size()
            )));
        }
    }
    Ok(())
}

/// `ckpt::restore`.
pub fn restore(cfg: &Config) -> Result<()> {
    if cfg.restore == RestoreMode::Never {
        return Ok(());
    }
    match &cfg.store {
        None => Ok(()),
        Some(Store::Dir(dir)) => restore_dir(cfg, dir),
        Some(Store::Remote(r)) => restore_remote(cfg, r),
    }
}

/// Restores from a local directory store.
fn restore_dir(cfg: &Config, dir: &Path) -> Result<()> {
    let gens = match store::list(dir) {
        Ok(g) => g,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(Error::Io {
                op: "list",
                path: dir.to_path_buf(),
                source: e,
            });
        }
    };
    if gens.is_empty() {
        return match cfg.restore {
            RestoreMode::Require => Err(Error::NoCheckpoint(dir.to_path_buf())),
            _ => Ok(()),
        };
    }
    ensure_fixed_layout()?;
    let (dir_fd, lock_fd) = runtime::open_store(dir)?;
    let next_gen = store::highest(dir).unwrap_or(0) + 1;
    restore_from(cfg, dir, &gens, (dir_fd, lock_fd), next_gen, &|| {})
}

/// Restores from remote memory: the `ckpt-rmem` helper stages the newest restorable generation
/// and its chain as image files in a private memory-backed directory (remote memory first; a
/// server lost or revoked is covered by the redundancy; a tiered store falls back to its local
/// copy), then the images are checked and restored as from a directory. The staging directory
/// is removed before the jump (the restorer reads the images through open descriptors).
fn restore_remote(cfg: &Config, r: &RemoteStore) -> Result<()> {
    // Before the helper runs: the first call re-executes the program.
    ensure_fixed_layout()?;
    let helper = crate::remote::Helper::prepare(r, cfg.log)?;
    // The store's lock, on its local directory: another process using the same pool is an
    // error before anything is read.
    let (dir_fd, lock_fd) = runtime::open_store(&helper.dir)?;
    let close = || {
        let _ = syscall::close(lock_fd);
        let _ = syscall::close(dir_fd);
    };
    let t0 = std::time::Instant::now();
    let fetched = crate::remote::Staging::new().and_then(|s| Ok((helper.fetch(&s.0)?, s)));
    let (fetched, staging) = match fetched {
        Ok((Some(f), s)) => (f, s),
        Ok((None, _)) => {
            close();
            return match cfg.restore {
                RestoreMode::Require => Err(Error::NoCheckpoint(PathBuf::from(&r.spec))),
                _ => Ok(()),
            };
        }
        Err(e) => {
            close();
            return Err(e);
        }
    };
    log_at!(
        cfg,
        Info,
        "fetched generation {} ({} image(s), {:.1} MiB) from {} in {:.1} ms",
        fetched.generation,
        fetched.chain.len(),
        fetched.bytes as f64 / 1048576.0,
        fetched.from,
        t0.elapsed().as_secs_f64() * 1e3
    );
    let gens = store::list(&staging.0).map_err(|e| {
        close();
        Error::Io {
            op: "list",
            path: staging.0.clone(),
            source: e,
        }
    })?;
    let r = restore_from(
        cfg,
        &staging.0,
        &gens,
        (dir_fd, lock_fd),
        fetched.highest + 1,
        &|| staging.remove(),
    );
    drop(staging);
    r
}

/// Restores the newest usable generation of `gens` (image files in `dir`, newest first) with
/// the store open and locked as `fds` (directory, lock; closed on failure). `before_jump` runs
/// once the images are open and verified, just before memory is replaced.
fn restore_from(
    cfg: &Config,
    dir: &Path,
    gens: &[store::Generation],
    (dir_fd, lock_fd): (i32, i32),
    next_gen: u64,
    before_jump: &dyn Fn(),
) -> Result<()> {
    let close = || {
        let _ = syscall::close(lock_fd);
        let _ = syscall::close(dir_fd);
    };
    let mut rejected: Vec<(u64, String)> = Vec::new();
    for g in gens {
        let loaded = load_chain(dir, g.number, progress::wanted(cfg.log)).and_then(|chain| {
            let m = &chain[0].manifest;
            check_identity(m, &g.path).map_err(Reject::Fatal)?;
            check_files(m, &g.path).map_err(Reject::Fatal)?;
            Ok(chain)
        });
        let chain = match loaded {
            Ok(v) => v,
            Err(Reject::Corrupt(reason)) => {
                log_at!(
                    cfg,
                    Info,
                    "checkpoint {} is unusable ({reason}); trying the previous one",
                    g.path.display()
                );
                rejected.push((g.number, reason.to_string()));
                continue;
            }
            Err(Reject::Fatal(e)) => {
                close();
                return Err(e);
            }
        };
        // Set the damaged newer generations aside so that rotation keeps good ones.
        for (n, _) in &rejected {
            let _ = std::fs::rename(
                dir.join(store::name(*n, store::IMAGE).as_str()),
                dir.join(store::name(*n, store::CORRUPT).as_str()),
            );
        }
        if !rejected.is_empty() {
            log_at!(
                cfg,
                Info,
                "falling back to generation {} after {} unusable newer one(s)",
                g.number,
                rejected.len()
            );
        }
        let runs = merged_runs(&chain);
        let bytes: u64 = chain.iter().map(|l| l.manifest.header.data_len).sum();
        let how = if chain.len() == 1 {
            "full image".to_string()
        } else {
            format!(
                "incremental, a chain of {} images from generation {}",
                chain.len(),
                chain[chain.len() - 1].manifest.header.generation
            )
        };
        log_at!(
            cfg,
            Info,
            "restoring generation {} from {} ({how}, {:.1} MiB)",
            g.number,
            g.path.display(),
            bytes as f64 / 1048576.0
        );
        use std::os::fd::IntoRawFd;
        let mut links = chain.into_iter();
        let newest = links.next().expect("a chain holds its newest image");
        let mut fds = vec![newest.file.into_raw_fd()];
        fds.extend(links.map(|l| l.file.into_raw_fd()));
        let m = newest.manifest;
        before_jump();
        let err = crate::sys::restore::restore_into(
            &m,
            &runs,
            &fds,
            dir_fd,
            lock_fd,
            next_gen,
            settings(cfg),
            bytes,
        )
        .unwrap_err();
        for fd in fds {
            let _ = syscall::close(fd);
        }
        close();
        return Err(Error::Layout {
            image: g.path.clone(),
            reason: err.0,
        });
    }
    close();
    let newest = rejected
        .first()
        .map(|(n, r)| format!("generation {n}: {r}"))
        .unwrap_or_default();
    Err(Error::AllCorrupt {
        dir: dir.to_path_buf(),
        count: rejected.len(),
        newest,
    })
}

/// The restarting run's settings that the restored process takes over.
fn settings(cfg: &Config) -> crate::sys::restore::Settings {
    crate::sys::restore::Settings {
        interval_ns: cfg.interval.map_or(0, |d| d.as_nanos() as u64),
        keep: cfg.keep,
        log: cfg.log,
        fault: crate::fault::from_env(),
    }
}

/// Runs in the restored process, inside the checkpoint that was taken, right after the jump:
/// re-creates the kernel state the image's memory refers to. Async-signal-safe: it may run
/// inside the timer's handler.
pub(crate) fn after_restore(rt: &mut Runtime, info_addr: usize) {
    // SAFETY: the restorer passed the address of its RestoreInfo, still mapped.
    let info = unsafe { &*(info_addr as *const RestoreInfo) };
    // The restarting run's environment decides how checkpointing goes on.
    let s = &info.settings;
    rt.cfg.interval = (s.interval_ns > 0).then(|| std::time::Duration::from_nanos(s.interval_ns));
    rt.cfg.keep = s.keep;
    rt.cfg.log = s.log;
    crate::fault::install(s.fault);
    if let Some(off) = rt.tid_offset {
        // SAFETY: the offset was proven at init in this same binary and libc.
        unsafe { glibc::patch_tid(off) };
    }
    if let (Some(r), true) = (rt.rseq, info.process.rseq_len > 0) {
        // SAFETY: the restored thread descriptor holds glibc's rseq area at this offset.
        if !unsafe { glibc::rseq_register(r, syscall::get_fs_base(), info.process.rseq_len) } {
            log_at!(
                rt.cfg,
                Info,
                "could not re-register the rseq area; sched_getcpu may report a stale CPU"
            );
        }
    }
    // Our own descriptors: adopt the restorer's store and lock, out of the way of the files.
    let top = info.files.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 1;
    let mv = |fd: i32| -> i32 {
        match syscall::fcntl(fd, libc::F_DUPFD_CLOEXEC, top as usize) {
            Ok(n) => {
                let _ = syscall::close(fd);
                n as i32
            }
            Err(_) => fd,
        }
    };
    rt.dir_fd = mv(info.dir_fd);
    rt.lock_fd = mv(info.lock_fd);
    rt.pagemap_fd = -1;
    rt.mem_fd = -1;
    // The writer the image's process may have had died with it.
    rt.writer = None;
    rt.deleter = 0;
    // Close whatever else the restoring process had open.
    let mut stray = [0i32; 256];
    let mut n = 0;
    // SAFETY: the arena is reachable only through the runtime, which we hold busy.
    let dents = unsafe { &mut *rt.arena }.dents as *mut [u8];
    // SAFETY: as above; the slice is not aliased during this call.
    let _ = store::each_dirent(b"/proc/self/fd\0", unsafe { &mut *dents }, |name| {
        let fd = crate::text::parse_dec(name).and_then(|v| i32::try_from(v).ok());
        if let Some(fd) = fd
            && fd > 2
            && fd != rt.dir_fd
            && fd != rt.lock_fd
            && n < stray.len()
        {
            stray[n] = fd;
            n += 1;
        }
    });
    for &fd in &stray[..n] {
        let _ = syscall::close(fd);
    }
    for f in info.files {
        reopen(rt, info, f);
    }
    // Opened only now and moved above the files' numbers: opened earlier it could take a
    // number a file is about to be restored to.
    let pm = runtime::open_pagemap();
    rt.pagemap_fd = if pm >= 0 { mv(pm) } else { -1 };
    let mem = runtime::open_mem();
    rt.mem_fd = if mem >= 0 { mv(mem) } else { -1 };
    // The tracker's kernel objects belonged to the dead process: new ones, watching nothing,
    // and the next checkpoint is a full one.
    rt.chain = Default::default();
    if let Some(t) = rt.tracker.as_deref_mut()
        && let Err(e) = t.renew(top)
    {
        log_at!(
            rt.cfg,
            Info,
            "could not renew the dirty tracker: {e}; checkpoints will be full"
        );
    }
    for s in info.signals {
        // SAFETY: handlers and restorers come from this same binary's image.
        let _ = unsafe { signals::set_action(s.sig as i32, &s.action()) };
    }
    let p = &info.process;
    if p.altstack_size > 0 {
        let st = libc::stack_t {
            ss_sp: p.altstack_sp as *mut libc::c_void,
            ss_flags: p.altstack_flags as i32,
            ss_size: p.altstack_size as usize,
        };
        // SAFETY: the alternate stack's memory was restored with the image.
        let _ = unsafe { signals::set_altstack(&st) };
    }
    let mut cwd = crate::text::FixedStr::<4097>::new();
    cwd.push_bytes(&info.strings[p.cwd.offset as usize..(p.cwd.offset + p.cwd.len) as usize]);
    if let Some(c) = cwd.as_cstr() {
        let _ = syscall::chdir(c);
    }
    syscall::umask(p.umask);
    runtime::restart_timer(rt);
    if let (Some(id), Some(interval)) = (rt.timer, rt.cfg.interval) {
        let _ = signals::timer_arm(id, interval.as_nanos() as u64);
    }
    rt.next_gen = info.next_gen;
    rt.last_error = None;
    let ms = (syscall::monotonic_ns() - info.started_ns) as f64 / 1e6;
    log_at!(
        rt.cfg,
        Info,
        "restored generation {} ({:.1} MiB) in {:.1} ms; continuing",
        info.generation,
        info.bytes as f64 / 1048576.0,
        ms
    );
    let (s, e) = info.plan_range;
    // SAFETY: nothing refers to the plan mapping once the info has been read.
    let _ = unsafe { syscall::munmap(s, e - s) };
}

fn reopen(rt: &Runtime, info: &RestoreInfo, f: &image::FileRec) {
    let mut path = crate::text::FixedStr::<4097>::new();
    path.push_bytes(&info.strings[f.path.offset as usize..(f.path.offset + f.path.len) as usize]);
    let Some(c) = path.as_cstr() else { return };
    let flags = f.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_CLOEXEC)
        | libc::O_CLOEXEC;
    let fd = match syscall::open(c, flags, 0) {
        Ok(fd) => fd,
        Err(e) => {
            log_at!(
                rt.cfg,
                Info,
                "could not reopen {} at fd {}: {e}",
                crate::text::Bytes(path.as_bytes()),
                f.fd
            );
            return;
        }
    };
    if f.kind == FILE_REGULAR {
        // Output written after the checkpoint is undone, so the re-run writes it exactly once.
        let writable = f.flags & libc::O_ACCMODE != libc::O_RDONLY;
        if writable && syscall::fstat(fd).is_ok_and(|st| st.st_size as u64 > f.size) {
            let _ = syscall::ftruncate(fd, f.size);
        }
        let _ = syscall::lseek(fd, f.offset as i64, libc::SEEK_SET);
    }
    let cloexec = if f.flags & libc::O_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    if fd != f.fd {
        let _ = syscall::dup3(fd, f.fd, cloexec);
        let _ = syscall::close(fd);
    } else if cloexec == 0 {
        let _ = syscall::fcntl(fd, libc::F_SETFD, 0);
    }
}

/// Makes sure this process runs without address-space randomisation, so that a restart finds
/// text, data, heap, stack and libraries at the same addresses: sets `ADDR_NO_RANDOMIZE` and
/// re-executes the program once, with the same arguments and environment.
pub fn ensure_fixed_layout() -> Result<()> {
    const GUARD: &str = "CKPT_REEXECED";
    if std::fs::read_to_string("/proc/sys/kernel/randomize_va_space").is_ok_and(|s| s.trim() == "0")
    {
        return Ok(());
    }
    let pers = crate::sys::process::personality_get();
    if pers & libc::ADDR_NO_RANDOMIZE as u32 != 0 {
        crate::sys::process::unset_env(GUARD);
        return Ok(());
    }
    if std::env::var_os(GUARD).is_some() {
        return Err(Error::Aslr(
            "personality(ADDR_NO_RANDOMIZE) did not survive exec".into(),
        ));
    }
    crate::sys::process::personality_set(pers | libc::ADDR_NO_RANDOMIZE as u32)
        .map_err(|e| Error::Aslr(format!("personality: {e}")))?;
    let args = std::fs::read("/proc/self/cmdline")
        .map_err(|e| Error::Aslr(format!("read /proc/self/cmdline: {e}")))?;
    let args: Vec<CString> = args
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| CString::new(s).expect("split on NUL"))
        .collect();
    crate::sys::process::set_env(GUARD, "1");
    let e = crate::sys::process::reexec(&args);
    Err(Error::Aslr(format!("re-exec /proc/self/exe: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{REGION_CHAIN, REGION_SAVED, RUN_DATA, RUN_ZERO, RegionRec, RunRec};

    fn manifest(regions: &[(u64, u64, bool)], runs: &[(u64, u64, u64, bool)]) -> Manifest {
        Manifest {
            header: Default::default(),
            strings: Vec::new(),
            process: Default::default(),
            identity: Vec::new(),
            regions: regions
                .iter()
                .map(|&(start, end, chain)| RegionRec {
                    start,
                    end,
                    flags: REGION_SAVED | if chain { REGION_CHAIN } else { 0 },
                    ..Default::default()
                })
                .collect(),
            runs: runs
                .iter()
                .map(|&(addr, len, data_off, zero)| RunRec {
                    addr,
                    len,
                    data_off,
                    kind: if zero { RUN_ZERO } else { RUN_DATA },
                    ..Default::default()
                })
                .collect(),
            files: Vec::new(),
            signals: Vec::new(),
        }
    }

    #[test]
    fn older_links_apply_only_where_every_newer_one_continued() {
        // R: tracked since the oldest (full) image. Q: re-created at the same address after it,
        // so the middle image saved it whole; the oldest image's data there is other memory.
        let oldest = manifest(
            &[(0x1000, 0x5000, false), (0x10000, 0x12000, false)],
            &[(0x1000, 0x4000, 100, false), (0x10000, 0x2000, 900, false)],
        );
        let middle = manifest(
            &[(0x1000, 0x5000, true), (0x10000, 0x12000, false)],
            &[
                (0x2000, 0x1000, 200, false),
                (0x4000, 0x1000, 0, true),
                (0x10000, 0x1000, 300, false),
            ],
        );
        let newest = manifest(
            &[(0x1000, 0x5000, true), (0x10000, 0x12000, true)],
            &[(0x11000, 0x1000, 400, false), (0x3000, 0x1000, 0, true)],
        );
        let plan: Vec<(usize, usize, u64, u32, bool)> = merge_plan(&[&newest, &middle, &oldest])
            .iter()
            .map(|r| (r.addr, r.len, r.off, r.fd, r.zero))
            .collect();
        assert_eq!(
            plan,
            vec![
                // The oldest image: R only (Q was saved whole by the middle one).
                (0x1000, 0x4000, 100, 2, false),
                // The middle one, inside the newest one's chained regions, in its own order.
                (0x2000, 0x1000, 200, 1, false),
                (0x4000, 0x1000, 0, 1, true),
                (0x10000, 0x1000, 300, 1, false),
                // The newest one everywhere.
                (0x11000, 0x1000, 400, 0, false),
                (0x3000, 0x1000, 0, 0, true),
            ]
        );
    }

    #[test]
    fn interval_intersection() {
        assert_eq!(
            intersect(&[(0, 10), (20, 30)], &[(5, 25), (28, 40)]),
            vec![(5, 10), (20, 25), (28, 30)]
        );
        assert!(intersect(&[(0, 10)], &[]).is_empty());
    }
}
