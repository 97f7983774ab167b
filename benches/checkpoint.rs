//! Full-checkpoint and restore benchmark, each figure printed beside a physical reference measured
//! in the same run (`memcpy`, a sequential file write with fsync, a cold sequential read).
//!
//! Run: `cargo bench --bench checkpoint` (see `docs/benchmarks.md`). Environment:
//! `CKPT_BENCH_SIZES=64,256,1024` (heap sizes in MiB), `CKPT_BENCH_RUNS=5` (measured repetitions
//! of every figure; the median is reported), `CKPT_BENCH_WARMUP=3` (unreported rounds before
//! them), `CKPT_BENCH_DIR=target/bench-store` (where images and reference files go; put it on
//! the disk you care about, not on tmpfs), `CKPT_BENCH_LOG=info` (show the library's log),
//! `CKPT_BENCH_VERBOSE=1` (print every trial).
//!
//! The references run in their own child, shaped like the checkpointed one (a populated buffer of
//! the same size), and alternate with the checkpoints round by round; the ratios are medians of
//! per-round ratios. The write reference goes through the same file lifecycle as the store: a
//! new file per round in the store's directory, fsync'd, and the file from two rounds back
//! deleted (the store keeps two generations). Virtual disks are often much faster on blocks
//! written before than on fresh ones, so a reference that rewrote one file would measure another
//! disk than the checkpoint's.
//!
//! The checkpointer refuses a process with a second thread or an open pipe, and `init` re-executes
//! the program once, so every measured checkpoint and restore runs in a child: this binary
//! re-executes itself with `CKPT_BENCH_CHILD` set. The child's mode and parameters come from the
//! environment, which survives that re-exec; after a restore the child's memory is the
//! checkpointed one, so "am I the restored process?" is answered from outside memory (the pid
//! changed, or the parent's marker file exists).

use std::error::Error;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const MIB: usize = 1 << 20;
/// Size of each `write(2)`/`read(2)` in the file references: the library's page-run size, large
/// enough that per-call overhead is noise.
const IO_CHUNK: usize = MIB;
/// The target from the issue: checkpoint throughput at least this fraction of write+fsync.
const TARGET_RATIO: f64 = 0.8;
/// Committed generations the store keeps (the library's default, set explicitly so that the
/// write reference can recycle its files the same way).
const KEEP: u32 = 2;

/// Child modes (value of `CKPT_BENCH_CHILD`).
const CHILD_ENV: &str = "CKPT_BENCH_CHILD";
const MODE_CHECKPOINT: &str = "checkpoint";
const MODE_RESTORE: &str = "restore";
const MODE_SPAWN: &str = "spawn";
const MODE_REFERENCE: &str = "reference";

fn main() {
    // `cargo bench` passes `--bench` (and any filter); nothing here takes arguments.
    let r = match std::env::var(CHILD_ENV) {
        Ok(mode) => child::run(&mode),
        Err(_) => parent(),
    };
    if let Err(e) = r {
        eprintln!("checkpoint bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Settings shared by parent and child (all from the environment).

#[derive(Debug, Clone)]
struct Settings {
    sizes_mib: Vec<usize>,
    runs: usize,
    warmup: usize,
    root: PathBuf,
    log: ckpt::LogLevel,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let sizes_mib = match std::env::var("CKPT_BENCH_SIZES") {
            Ok(s) => s
                .split(',')
                .map(|x| x.trim().parse::<usize>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| format!("CKPT_BENCH_SIZES={s:?}: expected MiB like 64,256: {e}"))?,
            Err(_) => vec![64, 256, 1024],
        };
        if sizes_mib.is_empty() || sizes_mib.contains(&0) {
            return Err("CKPT_BENCH_SIZES must list sizes of at least 1 MiB".into());
        }
        let count = |name: &str, min: usize, default: usize| -> Result<usize> {
            match std::env::var(name) {
                Ok(s) => match s.parse::<usize>() {
                    Ok(n) if (min..=100).contains(&n) => Ok(n),
                    _ => Err(format!("{name}={s:?}: expected {min} to 100").into()),
                },
                Err(_) => Ok(default),
            }
        };
        let runs = count("CKPT_BENCH_RUNS", 1, 5)?;
        let warmup = count("CKPT_BENCH_WARMUP", 0, 3)?;
        let root = std::env::var_os("CKPT_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench-store"));
        let root = std::path::absolute(&root)?;
        let log = match std::env::var("CKPT_BENCH_LOG").as_deref() {
            Ok("info") => ckpt::LogLevel::Info,
            Ok("debug") => ckpt::LogLevel::Debug,
            _ => ckpt::LogLevel::Off,
        };
        Ok(Settings {
            sizes_mib,
            runs,
            warmup,
            root,
            log,
        })
    }

    fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Exists only while restore runs are measured: tells a resumed child it was restored.
    fn marker(&self) -> PathBuf {
        self.root.join("restoring")
    }

    /// The write reference's file of round `k`, next to the images.
    fn reference_file(&self, k: usize) -> PathBuf {
        self.store().join(format!("reference-{k}.bin"))
    }
}

/// Deterministic, never-zero contents, so every page of a buffer is populated and distinct.
fn fill(buf: &mut [u8], seed: u64) {
    for (i, w) in buf.chunks_mut(8).enumerate() {
        let mut z = (i as u64 ^ seed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let z = ((z ^ (z >> 31)) | 1).to_ne_bytes();
        w.copy_from_slice(&z[..w.len()]);
    }
}

/// FNV-1a over 8-byte words: enough to notice a page restored wrong or as zeros.
fn digest(buf: &[u8]) -> u64 {
    buf.chunks(8).fold(0xcbf2_9ce4_8422_2325, |h, w| {
        let mut x = [0u8; 8];
        x[..w.len()].copy_from_slice(w);
        (h ^ u64::from_ne_bytes(x)).wrapping_mul(0x100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// The child: the process that is checkpointed, or restored.

mod child {
    use super::*;

    pub fn run(mode: &str) -> Result<()> {
        match mode {
            MODE_SPAWN => {
                // The spawn baseline: what a restore would cost if restoring were free.
                println!("ready");
                Ok(())
            }
            MODE_CHECKPOINT => checkpoint(),
            MODE_REFERENCE => reference(),
            MODE_RESTORE => restore(),
            other => Err(format!("{CHILD_ENV}={other:?}: unknown mode").into()),
        }
    }

    fn config(s: &Settings) -> ckpt::Config {
        ckpt::Config::new()
            .dir(s.store())
            .interval(None)
            .keep(KEEP)
            .log(s.log)
    }

    /// Allocates and fills the heap, prints `ready`, then takes one checkpoint per line read
    /// from stdin, printing `t <ns>` for each, until stdin ends. A process restored from
    /// one of them resumes in this loop, prints `restored`, checks its heap and exits.
    fn checkpoint() -> Result<()> {
        let s = Settings::from_env()?;
        let bytes: usize = std::env::var("CKPT_BENCH_BYTES")?.parse()?;
        // Prints nothing before init: init re-executes this program once.
        ckpt::init(config(&s).restore_mode(ckpt::RestoreMode::Never))?;
        let mut heap = vec![0u8; bytes];
        fill(&mut heap, bytes as u64);
        let expect = digest(&heap);
        let marker = s.marker();
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        // The parent paces the rounds, so that its reference and our checkpoint alternate.
        let mut input = std::io::stdin().lock();
        let mut go = String::new();
        for i in 0.. {
            go.clear();
            if input.read_line(&mut go)? == 0 {
                break;
            }
            let pid = std::process::id();
            let t = Instant::now();
            ckpt::checkpoint_now()?;
            let ns = t.elapsed().as_nanos();
            if std::process::id() != pid || marker.exists() {
                // Restored: tell the parent first (it is timing us), then prove the heap is back.
                writeln!(out, "restored {i}")?;
                out.flush()?;
                // Keep the images for the next restore run: a process that exits normally with
                // checkpointing on retires its checkpoints (an atexit handler of the library).
                ckpt::shutdown()?;
                let got = digest(&heap);
                if got != expect {
                    return Err(format!(
                        "restored heap differs: digest {got:016x}, expected {expect:016x}"
                    )
                    .into());
                }
                writeln!(out, "verified")?;
                return Ok(());
            }
            writeln!(out, "t {ns}")?;
            // Nothing buffered may be captured: the restored process would print it again.
            out.flush()?;
        }
        ckpt::shutdown()?;
        Ok(())
    }

    /// The references, in a process shaped like the checkpointed one (its own populated buffer
    /// of the same size, spawned the same way), so that neither side is favoured by the state of
    /// its process. Reads commands from stdin and answers each with `t <ns>...`:
    /// `memcpy`; `write <k>` (write reference file k over whatever it holds, cut it to size,
    /// fsync: write ns, fsync ns); `recycle <j> <k>` (rename file j to k, as the store recycles
    /// its oldest image); `read <k>` (evict file k from the page cache, then read it whole).
    fn reference() -> Result<()> {
        let s = Settings::from_env()?;
        let bytes: usize = std::env::var("CKPT_BENCH_BYTES")?.parse()?;
        let mut src = vec![0u8; bytes];
        fill(&mut src, 1);
        let mut dst = vec![0u8; bytes];
        fill(&mut dst, 2); // populate: page faults are not the copy
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready")?;
        out.flush()?;
        for cmd in std::io::stdin().lock().lines() {
            let cmd = cmd?;
            let mut words = cmd.split(' ');
            let op = words.next().unwrap_or("");
            let k: usize = words.next().unwrap_or("0").parse()?;
            let path = s.reference_file(k);
            let t = Instant::now();
            let reply = match op {
                "memcpy" => {
                    dst.copy_from_slice(&src);
                    std::hint::black_box(&mut dst);
                    vec![t.elapsed()]
                }
                "write" => {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)?;
                    for chunk in src.chunks(IO_CHUNK) {
                        f.write_all(chunk)?;
                    }
                    f.set_len(src.len() as u64)?;
                    let written = t.elapsed();
                    f.sync_all()?;
                    drop(f);
                    vec![written, t.elapsed() - written]
                }
                "recycle" => {
                    let to: usize = words.next().ok_or("recycle needs two files")?.parse()?;
                    fs::rename(&path, s.reference_file(to))?;
                    vec![t.elapsed()]
                }
                "read" => {
                    sys::drop_cache(&File::open(&path)?)?;
                    let t = Instant::now();
                    let mut f = File::open(&path)?;
                    for chunk in src.chunks_mut(IO_CHUNK) {
                        f.read_exact(chunk)?;
                    }
                    vec![t.elapsed()]
                }
                _ => return Err(format!("unknown command {cmd:?}").into()),
            };
            let ns: Vec<String> = reply.iter().map(|d| d.as_nanos().to_string()).collect();
            writeln!(out, "t {}", ns.join(" "))?;
            out.flush()?;
        }
        Ok(())
    }

    /// Restores the newest checkpoint in the store; on success this call does not return.
    fn restore() -> Result<()> {
        let s = Settings::from_env()?;
        ckpt::restore(&config(&s).restore_mode(ckpt::RestoreMode::Require))?;
        Err("ckpt::restore returned without restoring".into())
    }
}

// ---------------------------------------------------------------------------------------------
// Platform calls std does not offer.

mod sys {
    //! `fcntl` and `posix_fadvise` wrappers.
    //!
    //! # Safety
    //!
    //! Each wrapper passes a descriptor that is open for the duration of the call (borrowed from
    //! a `File` or just listed in `/proc/self/fd`) and no pointers; the calls cannot touch this
    //! process's memory.
    #![allow(unsafe_code)]

    use std::fs::File;
    use std::os::fd::AsRawFd;

    /// Marks every inherited descriptor above stderr close-on-exec, so the measured children
    /// hold only fds 0-2 (the checkpointer refuses pipes; cargo may pass a jobserver pipe).
    pub fn cloexec_inherited() -> std::io::Result<()> {
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: F_GETFD/F_SETFD take no pointer; a descriptor closed since the listing
            // (the listing's own) just fails with EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
        Ok(())
    }

    /// Evicts a file's (clean) pages from the page cache, so the next read comes from the disk.
    pub fn drop_cache(f: &File) -> std::io::Result<()> {
        f.sync_all()?;
        // SAFETY: the descriptor is borrowed from `f`, open for this call; no pointers.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: references, children, table.

/// Repeated timings of one thing.
#[derive(Debug, Clone)]
struct Times(Vec<Duration>);

impl Times {
    fn best(&self) -> Duration {
        self.0.iter().copied().min().unwrap_or_default()
    }

    /// Throughput of these trials relative to `reference`'s, round by round (same length): the
    /// median of reference time / own time. Pairing cancels drift in disk state and load.
    fn paired_ratio(&self, reference: &Times) -> f64 {
        let mut r: Vec<f64> = self
            .0
            .iter()
            .zip(&reference.0)
            .map(|(own, re)| re.as_secs_f64() / own.as_secs_f64().max(1e-9))
            .collect();
        r.sort_by(f64::total_cmp);
        r.get(r.len() / 2).copied().unwrap_or(0.0)
    }

    /// Drops the first `n` (warm-up) trials.
    fn skip(mut self, n: usize) -> Times {
        self.0.drain(..n.min(self.0.len()));
        self
    }

    fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn size_name(mib: usize) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

#[derive(Debug)]
struct Row {
    mib: usize,
    refs: Refs,
    ckpt: Times,
    image_bytes: u64,
    spawn: Times,
    warm: Times,
    cold: Times,
}

impl Row {
    /// Every trial, in order, in ms (`CKPT_BENCH_VERBOSE=1`): shows warm-up and outliers.
    fn print_trials(&self) {
        let all = [
            ("memcpy", &self.refs.memcpy),
            ("write+fsync", &self.refs.write_fsync),
            ("write(2)", &self.refs.write_calls),
            ("fsync", &self.refs.fsync),
            ("unlink", &self.refs.unlink),
            ("cold read", &self.refs.cold_read),
            ("checkpoint", &self.ckpt),
            ("spawn", &self.spawn),
            ("warm restore", &self.warm),
            ("cold restore", &self.cold),
        ];
        for (what, t) in all {
            let v: Vec<String> = t.0.iter().map(|&d| format!("{:.1}", ms(d))).collect();
            eprintln!(
                "  {:<8} {what:<13} ms: {}",
                size_name(self.mib),
                v.join(" ")
            );
        }
    }
}

fn parent() -> Result<()> {
    let s = Settings::from_env()?;
    sys::cloexec_inherited()?;
    fs::create_dir_all(&s.root)?;
    print_header(&s)?;
    let mut rows = Vec::new();
    for &mib in &s.sizes_mib {
        eprint!("measuring {} ...", size_name(mib));
        let row = measure(&s, mib);
        // Leave no gigabytes behind, whatever happened.
        let _ = fs::remove_dir_all(s.store());
        let _ = fs::remove_file(s.marker());
        let row = row?;
        eprintln!(" done");
        if std::env::var_os("CKPT_BENCH_VERBOSE").is_some() {
            row.print_trials();
        }
        rows.push(row);
    }
    let _ = fs::remove_dir(&s.root);
    print_tables(&s, &rows);
    Ok(())
}

/// All figures for one heap size. The references and the checkpoints alternate, round by
/// round, so that both see the same disk state and the same background load.
fn measure(s: &Settings, mib: usize) -> Result<Row> {
    let bytes = mib * MIB;
    let _ = fs::remove_dir_all(s.store());
    let _ = fs::remove_file(s.marker());
    fs::create_dir_all(s.store())?;

    let mut refc = Driven::spawn(s, MODE_REFERENCE, bytes)?;
    let mut ckpt = Driven::spawn(s, MODE_CHECKPOINT, bytes)?;
    let rounds = s.warmup + s.runs;
    let keep = KEEP as usize;
    let mut t = RoundTimes::default();
    for k in 1..=rounds {
        // memcpy opens the round; then the write and the checkpoint alternate which goes
        // first, so that each equally often inherits the other's aftermath (freed page cache,
        // a pending journal commit, discards) or follows the memcpy.
        t.memcpy.push(refc.ask("memcpy")?[0]);
        let ckpt_first = k % 2 == 0;
        if ckpt_first {
            t.ckpt.push(ckpt.ask("go")?[0]);
        }
        // The store's lifecycle: once it holds KEEP files, round k overwrites the file of round
        // k - KEEP in place (renamed first), so the reference writes the same kind of blocks.
        if k > keep {
            t.unlink
                .push(refc.ask(&format!("recycle {} {k}", k - keep))?[0]);
        }
        let w = refc.ask(&format!("write {k}"))?;
        t.write_calls.push(w[0]);
        t.fsync.push(w[1]);
        t.write_fsync.push(w[0] + w[1]);
        if !ckpt_first {
            t.ckpt.push(ckpt.ask("go")?[0]);
        }
    }
    ckpt.finish()?;
    let image_bytes = newest_image(&s.store())?;
    let cold_read = repeat(s.runs, || Ok(refc.ask(&format!("read {rounds}"))?[0]))?;
    refc.finish()?;
    for k in rounds.saturating_sub(keep - 1).max(1)..=rounds {
        fs::remove_file(s.reference_file(k))?;
    }

    let spawn = repeat(s.runs, || {
        time_to_line(spawn_child(s, MODE_SPAWN, 0, false)?, "ready")
    })?;
    File::create(s.marker())?;
    let warm = repeat(s.runs, || restore_once(s, false))?;
    let cold = repeat(s.runs, || restore_once(s, true))?;
    let unlink_warmup = t.unlink.len().saturating_sub(s.runs);
    Ok(Row {
        mib,
        refs: Refs {
            memcpy: Times(t.memcpy).skip(s.warmup),
            write_fsync: Times(t.write_fsync).skip(s.warmup),
            write_calls: Times(t.write_calls).skip(s.warmup),
            fsync: Times(t.fsync).skip(s.warmup),
            unlink: Times(t.unlink).skip(unlink_warmup),
            cold_read,
        },
        ckpt: Times(t.ckpt).skip(s.warmup),
        image_bytes,
        spawn,
        warm,
        cold,
    })
}

/// Per-round timings, warm-up rounds included.
#[derive(Debug, Default)]
struct RoundTimes {
    memcpy: Vec<Duration>,
    write_fsync: Vec<Duration>,
    write_calls: Vec<Duration>,
    fsync: Vec<Duration>,
    unlink: Vec<Duration>,
    ckpt: Vec<Duration>,
}

fn repeat(n: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Times> {
    (0..n).map(|_| f()).collect::<Result<Vec<_>>>().map(Times)
}

/// The physical references for one size, measured from populated buffers.
#[derive(Debug)]
struct Refs {
    memcpy: Times,
    /// Create, `write(2)` and fsync a new file: the reference the target is about.
    write_fsync: Times,
    /// The `write(2)` calls alone (into the page cache) ...
    write_calls: Times,
    /// ... and the fsync alone (the device).
    fsync: Times,
    /// Deleting the file of two rounds back, which the store does inside each checkpoint.
    unlink: Times,
    /// Sequential read of the file after evicting it from the page cache.
    cold_read: Times,
}

/// A child driven one command at a time over its stdin: the checkpointed process or the
/// reference process.
#[derive(Debug)]
struct Driven {
    child: Child,
    to: Option<std::process::ChildStdin>,
    from: BufReader<ChildStdout>,
}

impl Driven {
    /// Starts the child and waits until its buffers are filled.
    fn spawn(s: &Settings, mode: &str, bytes: usize) -> Result<Driven> {
        let (mut child, _) = spawn_child(s, mode, bytes, true)?;
        let to = child.stdin.take();
        let from = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut c = Driven { child, to, from };
        let line = c.line()?;
        if line != "ready" {
            return Err(c.failed("ready", &line));
        }
        Ok(c)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.from.read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    /// Sends one command; returns the durations the child measured (`t <ns>...`).
    fn ask(&mut self, cmd: &str) -> Result<Vec<Duration>> {
        let to = self.to.as_mut().ok_or("child stdin closed")?;
        writeln!(to, "{cmd}")?;
        to.flush()?;
        let line = self.line()?;
        let ns: Option<Vec<Duration>> = line.strip_prefix("t ").and_then(|l| {
            l.split(' ')
                .map(|n| n.parse::<u64>().ok().map(Duration::from_nanos))
                .collect()
        });
        match ns {
            Some(ns) if !ns.is_empty() => Ok(ns),
            _ => Err(self.failed(&format!("t <ns> (answer to {cmd:?})"), &line)),
        }
    }

    /// Closes its stdin (the child finishes) and checks it exited cleanly.
    fn finish(mut self) -> Result<()> {
        drop(self.to.take());
        let mut rest = String::new();
        self.from.read_to_string(&mut rest)?;
        let status = self.child.wait()?;
        if !status.success() || !rest.is_empty() {
            return Err(child_failed("nothing", "", &rest, status));
        }
        Ok(())
    }

    fn failed(&mut self, want: &str, got: &str) -> Box<dyn Error> {
        drop(self.to.take());
        let mut rest = String::new();
        let _ = self.from.read_to_string(&mut rest);
        match self.child.wait() {
            Ok(status) => child_failed(want, got, &rest, status),
            Err(e) => e.into(),
        }
    }
}

fn spawn_child(s: &Settings, mode: &str, bytes: usize, stdin: bool) -> Result<(Child, Instant)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CHILD_ENV, mode)
        .env("CKPT_BENCH_BYTES", bytes.to_string())
        .env("CKPT_BENCH_RUNS", s.runs.to_string())
        .env("CKPT_BENCH_WARMUP", s.warmup.to_string())
        .env("CKPT_BENCH_DIR", &s.root)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let t = Instant::now();
    let child = cmd.spawn()?;
    Ok((child, t))
}

/// Waits for `line` on the child's stdout; returns the time from spawn to it, then reaps the child.
fn time_to_line((mut child, t0): (Child, Instant), line: &str) -> Result<Duration> {
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut got = String::new();
    out.read_line(&mut got)?;
    let dt = t0.elapsed();
    let rest = drain(out)?;
    let status = child.wait()?;
    if !got.starts_with(line) || !status.success() {
        return Err(child_failed(line, &got, &rest, status));
    }
    Ok(dt)
}

fn drain(mut out: BufReader<ChildStdout>) -> Result<String> {
    let mut rest = String::new();
    out.read_to_string(&mut rest)?;
    Ok(rest)
}

fn child_failed(want: &str, first: &str, rest: &str, status: ExitStatus) -> Box<dyn Error> {
    format!(
        "child expected to print {want:?} printed {:?} then {:?} and ended with {status} (see its stderr above)",
        first.trim_end(),
        rest.trim_end()
    )
    .into()
}

fn newest_image(store: &Path) -> Result<u64> {
    let mut newest: Option<(String, u64)> = None;
    for e in fs::read_dir(store)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".ckpt") && newest.as_ref().is_none_or(|(n, _)| name > *n) {
            newest = Some((name, e.metadata()?.len()));
        }
    }
    Ok(newest.ok_or("no committed image in the store")?.1)
}

/// One restore of the newest image, from the page cache or (`cold`) from the disk; returns the
/// time from spawn to the restored process's first line. The restored child verifies its heap.
fn restore_once(s: &Settings, cold: bool) -> Result<Duration> {
    if cold {
        for e in fs::read_dir(s.store())? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "ckpt") {
                sys::drop_cache(&File::open(p)?)?;
            }
        }
    }
    let (mut child, t0) = spawn_child(s, MODE_RESTORE, 0, false)?;
    let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut got = String::new();
    out.read_line(&mut got)?;
    let dt = t0.elapsed();
    let rest = drain(out)?;
    let status = child.wait()?;
    if !got.starts_with("restored") || rest.trim_end() != "verified" || !status.success() {
        return Err(child_failed("restored / verified", &got, &rest, status));
    }
    Ok(dt)
}

fn print_header(s: &Settings) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (source, fstype, opts) = filesystem_of(&s.root);
    println!("ckpt checkpoint benchmark: full (sequential) checkpoints to a local-directory store");
    println!(
        "machine: {cores} cores ({cpu}), {mem_gib:.1} GiB RAM, Linux {}",
        kernel.trim()
    );
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    println!(
        "load:    {} (1/5/15 min){}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        if load1 > 0.5 * cores as f64 {
            ": busy machine, figures will be noisy"
        } else {
            ""
        }
    );
    println!(
        "store:   {} on {source} ({fstype}, {opts})",
        s.store().display()
    );
    println!(
        "method:  {} rounds after {} warm-up rounds, each a memcpy, then a write+fsync and \
         a checkpoint in alternating order; medians; MiB/s = heap size / time; checkpoint ratios = median over \
         rounds of (reference time / checkpoint time) in the same round",
        s.runs, s.warmup
    );
    Ok(())
}

/// (source, fstype, mount options) of the mount holding `path`, from /proc/self/mountinfo.
fn filesystem_of(path: &Path) -> (String, String, String) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, (String, String, String))> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|&x| x == "-") else {
            continue;
        };
        let (Some(mnt), Some(opts), Some(ty), Some(src)) =
            (f.get(4), f.get(5), f.get(dash + 1), f.get(dash + 2))
        else {
            continue;
        };
        // Mount options, then the superblock's (where ext4 shows `discard`).
        let opts = format!("{opts}; {}", f.get(dash + 3).unwrap_or(&""));
        if path.starts_with(mnt) && best.as_ref().is_none_or(|(l, _)| mnt.len() >= *l) {
            best = Some((
                mnt.len(),
                (src.to_string(), ty.to_string(), opts.to_string()),
            ));
        }
    }
    best.map(|(_, v)| v)
        .unwrap_or_else(|| ("?".into(), "?".into(), "?".into()))
}

fn print_tables(s: &Settings, rows: &[Row]) {
    println!();
    println!(
        "checkpoint: full checkpoints of a populated heap, one child process, {} + {} rounds",
        s.warmup, s.runs
    );
    println!(
        "{:<8} {:>9} {:>8} {:>9} {:>10} {:>17} {:>6} {:>12} {:>6}",
        "size",
        "image MiB",
        "best ms",
        "median ms",
        "ckpt MiB/s",
        "write+fsync MiB/s",
        "ratio",
        "memcpy MiB/s",
        "ratio"
    );
    for r in rows {
        let b = r.mib * MIB;
        let c = mib_s(b, r.ckpt.median());
        let w = mib_s(b, r.refs.write_fsync.median());
        let m = mib_s(b, r.refs.memcpy.median());
        println!(
            "{:<8} {:>9.1} {:>8.1} {:>9.1} {:>10.0} {:>17.0} {:>6.2} {:>12.0} {:>6.3}",
            size_name(r.mib),
            r.image_bytes as f64 / MIB as f64,
            ms(r.ckpt.best()),
            ms(r.ckpt.median()),
            c,
            w,
            r.ckpt.paired_ratio(&r.refs.write_fsync),
            m,
            r.ckpt.paired_ratio(&r.refs.memcpy)
        );
    }
    println!();
    println!(
        "restore: spawn to the restored process running, minus the spawn baseline (spawn to the \
         first line of this binary doing nothing); cold = image evicted from the page cache"
    );
    println!(
        "{:<8} {:>8} {:>7} {:>10} {:>12} {:>6} {:>7} {:>10} {:>14} {:>6}",
        "size",
        "spawn ms",
        "warm ms",
        "warm MiB/s",
        "memcpy MiB/s",
        "ratio",
        "cold ms",
        "cold MiB/s",
        "cold read MiB/s",
        "ratio"
    );
    for r in rows {
        let b = r.mib * MIB;
        let base = r.spawn.median();
        let warm = r.warm.median().saturating_sub(base);
        let cold = r.cold.median().saturating_sub(base);
        let (wm, cm) = (mib_s(b, warm), mib_s(b, cold));
        let (m, rd) = (
            mib_s(b, r.refs.memcpy.median()),
            mib_s(b, r.refs.cold_read.median()),
        );
        println!(
            "{:<8} {:>8.1} {:>7.1} {:>10.0} {:>12.0} {:>6.3} {:>7.1} {:>10.0} {:>14.0} {:>6.2}",
            size_name(r.mib),
            ms(base),
            ms(warm),
            wm,
            m,
            wm / m,
            ms(cold),
            cm,
            rd,
            cm / rd
        );
    }
    println!();
    println!(
        "where a checkpoint's time can go (medians, ms): the reference split into its write(2) \
         calls and its fsync, and the rename that recycles the oldest file (as the store does)"
    );
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>8} {:>13} {:>10}",
        "size", "ckpt", "write(2)", "fsync", "rename", "sum of three", "ckpt - sum"
    );
    for r in rows {
        let (c, w, f, u) = (
            ms(r.ckpt.median()),
            ms(r.refs.write_calls.median()),
            ms(r.refs.fsync.median()),
            ms(r.refs.unlink.median()),
        );
        println!(
            "{:<8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>13.1} {:>10.1}",
            size_name(r.mib),
            c,
            w,
            f,
            u,
            w + f + u,
            c - (w + f + u)
        );
    }
    println!();
    let mut worst: Option<f64> = None;
    for r in rows {
        let ratio = r.ckpt.paired_ratio(&r.refs.write_fsync);
        println!(
            "target: checkpoint throughput >= {TARGET_RATIO}x write+fsync at {:<7}: {} ({ratio:.2})",
            size_name(r.mib),
            verdict(ratio)
        );
        worst = Some(worst.map_or(ratio, |w: f64| w.min(ratio)));
    }
    if let Some(w) = worst {
        println!(
            "target: checkpoint throughput >= {TARGET_RATIO}x write+fsync: {} (worst {w:.2})",
            verdict(w)
        );
    }
}

fn verdict(ratio: f64) -> &'static str {
    if ratio >= TARGET_RATIO {
        "PASS"
    } else {
        "MISS"
    }
}
