//! Shared harness for the process-level tests: finding and building the programs under test,
//! running them with a checkpoint store, killing them at random moments, restarting them.
//!
//! # Safety
//!
//! Children are spawned with a `pre_exec` hook that only calls `close_range` (async-signal-safe)
//! so that no descriptor of the test harness leaks into a program whose checkpoint would then
//! refuse it.
#![allow(unsafe_code, dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The cargo target directory for this build profile (`target/debug` or `target/release`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// A Rust example of the root package. `cargo test --test NAME` does not build examples, so
/// the first call builds them (a no-op when they are up to date).
pub fn rust_example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let release = profile_dir().file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--examples"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().expect("run cargo build --examples").success(),
            "cargo build --examples failed"
        );
    });
    let p = profile_dir().join("examples").join(name);
    assert!(p.exists(), "example {name} not built at {}", p.display());
    p
}

/// `libckpt.so`, rebuilt for this profile if needed (`cargo test` builds only the rlib).
pub fn libckpt_so() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile = profile_dir();
            let release = profile.file_name().is_some_and(|n| n == "release");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-p", "ckpt", "--lib", "--features", "fault-points"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if release {
                cmd.arg("--release");
            }
            let st = cmd.status().expect("run cargo build -p ckpt");
            assert!(st.success(), "cargo build -p ckpt failed");
            let so = profile.join("libckpt.so");
            assert!(so.exists(), "{} missing after build", so.display());
            so
        })
        .clone()
}

/// Builds the examples of `examples/<lang>` (`c` or `fortran`) with their Makefile into the
/// target directory; returns the directory holding the programs.
pub fn native_examples(lang: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = profile_dir().join("native-examples").join(lang);
    std::fs::create_dir_all(&out).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(lang);
    let st = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(&dir)
        .arg(format!("OUT={}", out.display()))
        .status()
        .expect("run make");
    assert!(st.success(), "make in {} failed", dir.display());
    out
}

/// Whether a command is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root (needed for mounts).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Sends SIGKILL to process `pid`; whether it was sent. The caller makes sure `pid` is a
/// process it started (or one of their descendants), not a recycled number.
pub fn sigkill(pid: u32) -> bool {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) == 0 }
}

/// A fresh, empty directory under the target directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `target/<profile>/test-tmp/<name>-<pid>-<n>`.
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let p = profile_dir()
            .join("test-tmp")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A program and its arguments, plus environment for every run.
#[derive(Debug, Clone)]
pub struct Program {
    /// Executable.
    pub exe: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Program {
    /// A program with arguments.
    pub fn new(exe: impl Into<PathBuf>, args: &[&str]) -> Program {
        Program {
            exe: exe.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable to every run.
    pub fn env(mut self, k: &str, v: impl AsRef<str>) -> Program {
        self.env.push((k.to_string(), v.as_ref().to_string()));
        self
    }

    fn command(&self, extra: &[(&str, &str)]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Every variable the library reads (config.rs, the tracker choice, fault points, the
        // re-exec guard), so a developer's shell does not leak into a test.
        for k in [
            "CKPT_DIR",
            "CKPT_INTERVAL",
            "CKPT_POLICY",
            "CKPT_TRACKER",
            "CKPT_CHAIN_MAX",
            "CKPT_CHAIN_SIZE",
            "CKPT_BUSY",
            "CKPT_BUFFER",
            "CKPT_KEEP",
            "CKPT_RESTORE",
            "CKPT_LOG",
            "CKPT_FAULT",
            "CKPT_REEXECED",
            "LD_PRELOAD",
        ] {
            c.env_remove(k);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        // SAFETY: close_range is async-signal-safe and only closes descriptors the child
        // inherited beyond stdio.
        unsafe {
            c.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        c
    }

    /// Starts the program.
    pub fn spawn(&self, extra: &[(&str, &str)]) -> Child {
        self.command(extra)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.exe.display()))
    }

    /// Runs to completion (bounded by `limit`).
    pub fn run(&self, extra: &[(&str, &str)], limit: Duration) -> Run {
        let start = Instant::now();
        let child = self.spawn(extra);
        finish(child, limit, start)
    }
}

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Run {
    /// The value of the last `digest` line.
    pub fn digest(&self) -> Option<String> {
        self.stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("digest "))
            .map(|s| s.trim().to_string())
    }

    /// Panics with the run's output unless it exited 0.
    pub fn assert_ok(&self, what: &str) -> &Run {
        assert!(
            self.status.success(),
            "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Waits for a child, killing it after `limit`, and collects its output.
pub fn finish(mut child: Child, limit: Duration, start: Instant) -> Run {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let (o, e) = (t_out.join().unwrap(), t_err.join().unwrap());
            panic!("timed out after {limit:?} ({st:?})\nstdout:\n{o}\nstderr:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
        elapsed: start.elapsed(),
    }
}

/// A small deterministic generator for kill times, seeded per test and printed for replay.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeds from `CKPT_TEST_SEED` or the clock.
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("CKPT_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: CKPT_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    /// A uniform number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The uninterrupted run's digest and duration.
pub fn baseline(p: &Program) -> (String, Duration) {
    let r = p.run(&[], Duration::from_secs(600));
    r.assert_ok("uninterrupted run");
    (r.digest().expect("a digest line"), r.elapsed)
}

/// Runs `p` with checkpoints into `store`, killing it with SIGKILL `kills` times at random
/// moments (the first of them, when `mid_checkpoint` is set, in the middle of writing an
/// image), restarting each time, then lets it finish. Returns the final run and every run's
/// stderr.
pub fn kill_and_restart(
    p: &Program,
    store: &Path,
    interval: &str,
    kills: usize,
    mid_checkpoint: bool,
    base: Duration,
    rng: &mut Rng,
) -> (Run, String) {
    let dir = store.to_str().unwrap();
    let env = [
        ("CKPT_DIR", dir),
        ("CKPT_INTERVAL", interval),
        ("CKPT_LOG", "info"),
    ];
    let mut log = String::new();
    for k in 0..kills {
        let fault;
        let mut extra = env.to_vec();
        if mid_checkpoint && k == 0 {
            // Die inside the data of the 2nd to 4th image written.
            fault = format!("write-data:kill@{}", 40 + (rng.unit() * 80.0) as u64);
            extra.push(("CKPT_FAULT", &fault));
        }
        let start = Instant::now();
        let mut child = p.spawn(&extra);
        let at = base.mul_f64(0.25 + 0.5 * rng.unit());
        while start.elapsed() < at {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let r = finish(child, Duration::from_secs(60), start);
        log.push_str(&format!(
            "--- run {k} (killed after {:?}): {:?}\n{}",
            at, r.status, r.stderr
        ));
        if r.status.success() {
            // Finished before we killed it: nothing more to interrupt.
            return (r, log);
        }
    }
    let r = p.run(&env, base * 20 + Duration::from_secs(60));
    log.push_str(&format!("--- final run: {:?}\n{}", r.status, r.stderr));
    (r, log)
}

/// Starts `p` and waits until a line of its stderr contains `needle`; returns the running
/// child (its stderr keeps being drained) and the stderr so far. Panics if the program ends
/// first or `limit` passes.
pub fn spawn_waiting_for(
    p: &Program,
    extra: &[(&str, &str)],
    needle: &str,
    limit: Duration,
) -> (Child, String) {
    use std::io::BufRead;
    let start = Instant::now();
    let mut child = p.spawn(extra);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // Keep draining after the receiver is gone so the child never blocks on stderr.
            let _ = tx.send(line);
        }
    });
    let mut log = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                let hit = line.contains(needle);
                log.push_str(&line);
                log.push('\n');
                if hit {
                    return (child, log);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.wait().unwrap();
                panic!("program ended ({st:?}) before logging {needle:?}\n{log}");
            }
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("no {needle:?} within {limit:?}\n{log}");
        }
    }
}

/// Runs `p` until a line of its stderr contains `needle`, then kills it with SIGKILL. Returns
/// the stderr so far.
pub fn run_until_logged(
    p: &Program,
    extra: &[(&str, &str)],
    needle: &str,
    limit: Duration,
) -> String {
    let (mut child, log) = spawn_waiting_for(p, extra, needle, limit);
    let _ = child.kill();
    let _ = child.wait();
    log
}

/// The kill-and-restart check every workload passes: an uninterrupted run gives the reference
/// digest; then, checkpointing every `interval` ("1h" leaves checkpoints to the program's own
/// calls), it is killed `kills` times at random moments (the first in the middle of writing an
/// image when `mid_checkpoint`), restarted each time, and must end with the same digest.
pub fn assert_survives(
    p: &Program,
    name: &str,
    interval: &str,
    kills: usize,
    mid_checkpoint: bool,
) {
    let mut rng = Rng::new(name);
    let (digest, base) = baseline(p);
    let store = TempDir::new(name);
    let (run, log) = kill_and_restart(
        p,
        store.path(),
        interval,
        kills,
        mid_checkpoint,
        base,
        &mut rng,
    );
    run.assert_ok(name);
    assert_eq!(
        run.digest().as_deref(),
        Some(digest.as_str()),
        "{name}: digest differs after kill/restart\n{log}"
    );
    assert!(
        log.contains("restored generation"),
        "{name}: no restore happened\n{log}"
    );
}
