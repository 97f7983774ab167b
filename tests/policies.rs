//! The checkpoint policies of `docs/policies.md` at process level: every policy × tracker ×
//! example killed with SIGKILL at random moments (some in the middle of writing an image) and
//! restarted must finish with the uninterrupted run's digest; a memory map that changes between
//! incremental checkpoints; a kill in the middle of compacting a chain; a background writer
//! killed mid-write; memory written by the kernel between two checkpoints; `CKPT_BUSY=skip`.

mod common;

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::Child;
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;

/// Bound on any one run of a program here.
const LIMIT: Duration = Duration::from_secs(180);

/// Checkpoint interval of the kill-and-restart tests: several checkpoints per run.
const INTERVAL: &str = "100ms";

const POLICIES: &[&str] = &[
    "sequential",
    "incremental",
    "forked",
    "forked-incremental",
    "buffered",
    "buffered-incremental",
];

const TRACKERS: &[&str] = &["uffd-async", "mprotect"];

/// Whether a policy saves only the pages written since the previous checkpoint (and so uses a
/// dirty-page tracker).
fn incremental(policy: &str) -> bool {
    policy.ends_with("incremental")
}

/// Whether a policy hands the write to another process.
fn background(policy: &str) -> bool {
    policy.starts_with("forked") || policy.starts_with("buffered")
}

/// One way of checkpointing: a policy and, for the incremental ones, a forced tracker.
#[derive(Debug, Clone, Copy)]
struct Setup {
    policy: &'static str,
    tracker: Option<&'static str>,
}

impl Setup {
    fn env(&self) -> Vec<(&'static str, &'static str)> {
        let mut env = vec![("CKPT_POLICY", self.policy)];
        if let Some(t) = self.tracker {
            env.push(("CKPT_TRACKER", t));
        }
        env
    }
}

impl std::fmt::Display for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.tracker {
            Some(t) => write!(f, "{}/{t}", self.policy),
            None => write!(f, "{}", self.policy),
        }
    }
}

/// Whether `CKPT_TRACKER=tracker` works on this machine; prints why not once when it does not.
fn tracker_works(tracker: &str) -> bool {
    static UFFD: OnceLock<bool> = OnceLock::new();
    static MPROTECT: OnceLock<bool> = OnceLock::new();
    let cell = match tracker {
        "uffd-async" => &UFFD,
        "mprotect" => &MPROTECT,
        _ => unreachable!("unknown tracker {tracker}"),
    };
    *cell.get_or_init(|| {
        let store = TempDir::new(&format!("tracker-{tracker}"));
        let r = Program::new(rust_example("probe"), &["hold", "0"]).run(
            &[
                ("CKPT_DIR", store.path().to_str().unwrap()),
                ("CKPT_POLICY", "incremental"),
                ("CKPT_TRACKER", tracker),
            ],
            LIMIT,
        );
        if r.status.success() {
            return true;
        }
        assert!(
            r.stderr.contains("cannot be used"),
            "CKPT_TRACKER={tracker} failed without saying it cannot be used: {:?}\n{}",
            r.status,
            r.stderr
        );
        eprintln!("SKIPPED: tracker {tracker}: {}", r.stderr.trim());
        false
    })
}

/// Every policy, the incremental ones once per tracker that works here.
fn every_setup() -> Vec<Setup> {
    let mut v = Vec::new();
    for &policy in POLICIES {
        if incremental(policy) {
            for &t in TRACKERS {
                if tracker_works(t) {
                    v.push(Setup {
                        policy,
                        tracker: Some(t),
                    });
                }
            }
        } else {
            v.push(Setup {
                policy,
                tracker: None,
            });
        }
    }
    v
}

/// Every policy once; the incremental ones get trackers in turn, starting at `rotate`, so that
/// an example runs both trackers and, across examples, both trackers run every incremental
/// policy.
fn every_policy(rotate: usize) -> Vec<Setup> {
    let working: Vec<&'static str> = TRACKERS
        .iter()
        .copied()
        .filter(|t| tracker_works(t))
        .collect();
    let mut turn = rotate;
    POLICIES
        .iter()
        .filter_map(|&policy| {
            if !incremental(policy) {
                return Some(Setup {
                    policy,
                    tracker: None,
                });
            }
            if working.is_empty() {
                return None;
            }
            turn += 1;
            Some(Setup {
                policy,
                tracker: Some(working[(turn - 1) % working.len()]),
            })
        })
        .collect()
}

/// A running program whose stderr is read line by line as it comes.
struct Watched {
    child: Child,
    lines: Receiver<String>,
    stdout: Receiver<String>,
    log: String,
    start: Instant,
}

impl Watched {
    fn spawn(p: &Program, extra: &[(&str, &str)]) -> Watched {
        let start = Instant::now();
        let mut child = p.spawn(extra);
        let stderr = child.stderr.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the receiver is gone so the child never blocks.
                let _ = tx.send(line);
            }
        });
        let (otx, orx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            stdout.read_to_string(&mut s).ok();
            let _ = otx.send(s);
        });
        Watched {
            child,
            lines: rx,
            stdout: orx,
            log: String::new(),
            start,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line for which `hit` holds and returns it; `None` when the program
    /// ends first or `limit` (from the start of the program) passes.
    fn wait_for(&mut self, mut hit: impl FnMut(&str) -> bool, limit: Duration) -> Option<String> {
        loop {
            match self.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                    if hit(&line) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            }
            if self.start.elapsed() > limit {
                return None;
            }
        }
    }

    /// Lets the program run until `at` after its start; false if it ended before.
    fn run_until(&mut self, at: Duration) -> bool {
        while self.start.elapsed() < at {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Whether the program has ended.
    fn ended(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Kills the program with SIGKILL (if it still runs) and collects what it printed.
    fn kill(mut self) -> Run {
        let _ = self.child.kill();
        self.finish(LIMIT)
    }

    /// Waits for the program to end (killing it after `limit`) and collects what it printed.
    fn finish(mut self, limit: Duration) -> Run {
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if self.start.elapsed() > limit {
                let _ = self.child.kill();
                let st = self.child.wait().unwrap();
                self.drain();
                panic!("timed out after {limit:?} ({st:?})\nstderr:\n{}", self.log);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.drain();
        let stdout = self
            .stdout
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| "(stdout still open 5 s after the program ended)".into());
        Run {
            status,
            stdout,
            stderr: std::mem::take(&mut self.log),
            elapsed: self.start.elapsed(),
        }
    }

    /// Reads the rest of stderr. The pipe ends once every process holding it has closed it: a
    /// background writer that outlives the program holds it too, so give up after a while (and
    /// say so in the log).
    fn drain(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    self.log.push_str(&line);
                    self.log.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) if Instant::now() > until => {
                    self.log
                        .push_str("(stderr still open 5 s after the program ended)\n");
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// The pid in a `checkpoint G writing in the background (writer pid P, ...)` line.
fn writer_pid(line: &str) -> Option<u32> {
    let rest = &line[line.find("writer pid ")? + "writer pid ".len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// The generation `G` of a line containing `checkpoint G <what>`.
fn generation(line: &str, what: &str) -> Option<u64> {
    let i = line.find(what)?;
    let head = line[..i].trim_end();
    let n = head.rsplit(' ').next()?;
    let word = head[..head.len() - n.len()].trim_end();
    if !word.ends_with("checkpoint") {
        return None;
    }
    n.parse().ok()
}

/// Generations of every `checkpoint G committed` line of a log, in order.
fn committed(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| generation(l, "committed"))
        .collect()
}

/// The generation of the last `restored generation G` line of a log.
fn restored(log: &str) -> Option<u64> {
    log.lines().rev().find_map(|l| {
        let rest = &l[l.find("restored generation ")? + "restored generation ".len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// The parent of process `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are `state ppid ...`.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Sends SIGKILL to `pid` if it is still a descendant of `ancestor` (the writer of a program we
/// started, not a recycled pid). Returns whether it was sent.
fn kill_descendant(ancestor: u32, pid: u32) -> bool {
    let mut p = pid;
    for _ in 0..4 {
        match parent_of(p) {
            Some(pp) if pp == ancestor => {
                // Its parent chain is intact: not reaped, so not a recycled pid.
                return sigkill(pid);
            }
            Some(pp) if pp > 1 => p = pp,
            _ => return false,
        }
    }
    false
}

/// Committed generations in the store.
fn images(store: &Path) -> Vec<u64> {
    ckpt::store::list(store)
        .map(|g| g.into_iter().map(|g| g.number).collect())
        .unwrap_or_default()
}

/// How a kill-and-restart session went.
struct Session {
    /// The run that finished.
    last: Run,
    /// Every run's stderr, headed by how it ended.
    log: String,
    /// Whether a run was killed in the middle of writing an image.
    mid_checkpoint: bool,
}

/// Runs `p` under `setup` (plus `extra`) with checkpoints every [`INTERVAL`] into `store`,
/// killing it with SIGKILL `kills` times at random moments and restarting it each time, then
/// lets it finish. With `mid`, the first run dies while an image is being written: by the
/// `write-data:kill` fault point when the program writes its own images; for the background
/// policies by a SIGKILL to the program as soon as it has handed a checkpoint to its writer
/// (and, half the time, to the writer too: a crash of both).
#[allow(clippy::too_many_arguments)]
fn kill_and_restart_under(
    p: &Program,
    setup: Setup,
    extra: &[(&str, &str)],
    store: &Path,
    kills: usize,
    mid: bool,
    base: Duration,
    rng: &mut Rng,
) -> Session {
    let dir = store.to_str().unwrap();
    let mut env = vec![
        ("CKPT_DIR", dir),
        ("CKPT_INTERVAL", INTERVAL),
        ("CKPT_LOG", "info"),
    ];
    env.extend(setup.env());
    env.extend_from_slice(extra);
    let mut log = String::new();
    let mut mid_checkpoint = false;
    for k in 0..kills {
        let fault;
        let mut run_env = env.clone();
        let in_place_mid = mid && k == 0 && !background(setup.policy);
        let background_mid = mid && k == 0 && background(setup.policy);
        if in_place_mid {
            // Die inside the data of one of the first few images.
            fault = format!("write-data:kill@{}", 10 + (rng.unit() * 90.0) as u64);
            run_env.push(("CKPT_FAULT", &fault));
        }
        let mut w = Watched::spawn(p, &run_env);
        let how;
        if background_mid {
            let nth = 1 + (rng.unit() * 3.0) as usize;
            let both = rng.unit() < 0.5;
            let mut seen = 0;
            let line = w.wait_for(
                |l| {
                    seen += l.contains("writing in the background") as usize;
                    seen == nth
                },
                base * 4 + Duration::from_secs(10),
            );
            match line {
                Some(line) => {
                    let writer = writer_pid(&line)
                        .unwrap_or_else(|| panic!("no writer pid in {line:?}\n{}", w.log));
                    let sent = both && kill_descendant(w.pid(), writer);
                    let _ = w.child.kill();
                    mid_checkpoint = true;
                    how = format!(
                        "killed as background checkpoint {nth} began{}",
                        if sent { ", writer killed first" } else { "" }
                    );
                }
                None => how = format!("ended before background checkpoint {nth}"),
            }
        } else {
            let at = base.mul_f64(0.25 + 0.5 * rng.unit());
            if w.run_until(at) {
                let _ = w.child.kill();
                how = format!("killed after {at:?}");
            } else {
                how = format!("ended before {at:?}");
                // A death by SIGKILL before the timer is the fault point's.
                if in_place_mid
                    && w.child
                        .try_wait()
                        .unwrap()
                        .is_some_and(|s| s.code().is_none())
                {
                    mid_checkpoint = true;
                }
            }
        }
        let r = w.kill();
        log.push_str(&format!(
            "--- run {k} ({how}, {}): {:?}\n{}",
            fault_note(&run_env),
            r.status,
            r.stderr
        ));
        if r.status.success() {
            // Finished before we killed it: nothing more to interrupt.
            return Session {
                last: r,
                log,
                mid_checkpoint,
            };
        }
    }
    let r = Watched::spawn(p, &env).finish(base * 20 + Duration::from_secs(60));
    log.push_str(&format!("--- final run: {:?}\n{}", r.status, r.stderr));
    Session {
        last: r,
        log,
        mid_checkpoint,
    }
}

fn fault_note(env: &[(&str, &str)]) -> String {
    env.iter()
        .find(|(k, _)| *k == "CKPT_FAULT")
        .map(|(_, v)| format!("CKPT_FAULT={v}"))
        .unwrap_or_else(|| "no fault".into())
}

/// The checks every kill-and-restart session passes: the uninterrupted digest, a restore, and
/// log lines showing that the policy (and tracker) asked for is the one that ran.
fn assert_session(label: &str, setup: Setup, s: &Session, digest: &str) {
    let log = &s.log;
    assert!(
        s.last.status.success(),
        "{label} [{setup}]: final run failed: {:?}\nstdout:\n{}\n{log}",
        s.last.status,
        s.last.stdout
    );
    assert_eq!(
        s.last.digest().as_deref(),
        Some(digest),
        "{label} [{setup}]: digest differs after kill/restart\n{log}"
    );
    let policy = setup.policy;
    assert!(
        log.contains(&format!(", {policy}):")),
        "{label} [{setup}]: no `committed (KIND, {policy})` line\n{log}"
    );
    if incremental(policy) {
        assert!(
            log.contains(&format!("committed (incremental, {policy})")),
            "{label} [{setup}]: no incremental checkpoint committed\n{log}"
        );
    }
    if background(policy) {
        assert!(
            log.contains("writing in the background (writer pid "),
            "{label} [{setup}]: no checkpoint written in the background\n{log}"
        );
    }
    // A restore is due once a checkpoint committed before a kill (a run killed as its first
    // background checkpoint began leaves nothing to restore, and the next starts afresh).
    let killed_after_commit = log
        .split("--- ")
        .any(|run| run.contains("killed") && !committed(run).is_empty());
    if killed_after_commit {
        assert!(
            log.contains("restored generation"),
            "{label} [{setup}]: no restore happened\n{log}"
        );
    }
    if let Some(t) = setup.tracker {
        assert!(
            log.contains(t),
            "{label} [{setup}]: the log never names the tracker {t}\n{log}"
        );
    }
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed") && l.contains("checkpoint"))
        .collect();
    assert!(
        failed.is_empty(),
        "{label} [{setup}]: checkpoints failed without a fault: {failed:?}\n{log}"
    );
}

/// What a series of kill-and-restart sessions found. Every session runs even when an earlier
/// one failed, so that one run of the test shows the whole matrix.
#[derive(Default)]
struct Tally {
    sessions: usize,
    mid_checkpoint: usize,
    /// The first line of each failed session's message (the whole message was printed when it
    /// failed).
    failures: Vec<String>,
}

impl Tally {
    /// Panics, listing every failed session, unless all passed.
    fn assert_all_passed(&self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} sessions failed:\n{}",
            self.failures.len(),
            self.sessions,
            self.failures.join("\n")
        );
    }
}

/// Runs one case of a test, recording a failure in `tally` instead of ending the test.
fn case(tally: &mut Tally, label: &str, f: impl FnOnce()) {
    tally.sessions += 1;
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let text = panic_text(&*e);
        let first = text.lines().next().unwrap_or_default();
        tally.failures.push(format!("{label}: {first}"));
    }
}

/// The message of a caught panic.
fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(panic without a message)".into())
}

/// Kills and restarts `p` under each of `setups`, each in a fresh store, recording the outcome
/// of each session in `tally`.
fn survives_under(
    p: &Program,
    label: &str,
    setups: &[Setup],
    extra: &[(&str, &str)],
    kills: usize,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    let (digest, base) = baseline(p);
    for &setup in setups {
        let store = TempDir::new(&format!("{label}-{setup}"));
        let t = Instant::now();
        tally.sessions += 1;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let s = kill_and_restart_under(p, setup, extra, store.path(), kills, true, base, rng);
            assert_session(label, setup, &s, &digest);
            s.mid_checkpoint
        }));
        match outcome {
            Ok(mid) => {
                tally.mid_checkpoint += mid as usize;
                eprintln!(
                    "{label} [{setup}]: ok in {:.1} s{}",
                    t.elapsed().as_secs_f64(),
                    if mid { ", killed mid-checkpoint" } else { "" }
                );
            }
            Err(e) => {
                let text = panic_text(&*e);
                let first = text.lines().next().unwrap_or_default().to_string();
                eprintln!(
                    "{label} [{setup}]: FAILED in {:.1} s: {first}",
                    t.elapsed().as_secs_f64()
                );
                tally.failures.push(first);
            }
        }
    }
}

/// Rust examples at sizes that run about half a second here (dev profile, idle machine): the
/// every-example tests run each of them six times.
const RUST: &[(&str, &[&str])] = &[
    ("lu", &["1280", "2"]),
    ("matmul", &["768", "6"]),
    ("apsp", &["1024", "1"]),
    ("water", &["768", "80"]),
    ("ocean", &["512", "80"]),
    ("raytrace", &["512", "2"]),
    ("mapchurn", &["32", "5000"]),
];

/// C examples, run under `LD_PRELOAD=libckpt.so`, at about the same run times.
const C: &[(&str, &[&str])] = &[
    ("lu", &["1280", "2"]),
    ("matmul", &["768", "6"]),
    ("apsp", &["1024", "1"]),
    ("water", &["768", "80"]),
    ("ocean", &["512", "160"]),
    ("raytrace", &["512", "2"]),
];

fn rust(name: &str, args: &[&str]) -> Program {
    Program::new(rust_example(name), args)
}

fn c(name: &str, args: &[&str]) -> Program {
    let exe = native_examples("c").join(name);
    assert!(exe.exists(), "C example {} was not built", exe.display());
    Program::new(exe, args).env("LD_PRELOAD", libckpt_so().to_str().unwrap())
}

/// The Fortran matmul under preload, or `None` (said) without gfortran.
fn fortran() -> Option<Program> {
    if !have("gfortran") {
        eprintln!("SKIPPED: gfortran is not installed (scripts/test.sh installs it)");
        return None;
    }
    let exe = native_examples("fortran").join("matmul");
    assert!(exe.exists(), "Fortran example {} not built", exe.display());
    Some(Program::new(exe, &["768", "6"]).env("LD_PRELOAD", libckpt_so().to_str().unwrap()))
}

/// Short chains, so that the kill-and-restart runs also cross compactions.
const SHORT_CHAINS: &[(&str, &str)] = &[("CKPT_CHAIN_MAX", "3")];

#[test]
fn every_policy_and_tracker_survives_kills_rust_water() {
    // water: pages go from never touched to written once (uffd's WP_UNPOPULATED case).
    let mut rng = Rng::new("matrix-water");
    let mut tally = Tally::default();
    survives_under(
        &rust("water", &["1024", "80"]),
        "water",
        &every_setup(),
        SHORT_CHAINS,
        3,
        &mut rng,
        &mut tally,
    );
    tally.assert_all_passed();
    assert!(
        tally.mid_checkpoint > 0,
        "no session was killed mid-checkpoint"
    );
}

#[test]
fn every_policy_and_tracker_survives_kills_c_matmul() {
    let mut rng = Rng::new("matrix-c-matmul");
    let mut tally = Tally::default();
    survives_under(
        &c("matmul", &["896", "8"]),
        "matmul (C)",
        &every_setup(),
        SHORT_CHAINS,
        3,
        &mut rng,
        &mut tally,
    );
    tally.assert_all_passed();
    assert!(
        tally.mid_checkpoint > 0,
        "no session was killed mid-checkpoint"
    );
}

#[test]
fn every_rust_example_survives_kills_under_every_policy() {
    let mut rng = Rng::new("rust-policies");
    let mut tally = Tally::default();
    for (i, (name, args)) in RUST.iter().enumerate() {
        let setups = every_policy(i);
        survives_under(
            &rust(name, args),
            name,
            &setups,
            &[],
            2,
            &mut rng,
            &mut tally,
        );
    }
    tally.assert_all_passed();
}

#[test]
fn every_c_example_survives_kills_under_every_policy() {
    let mut rng = Rng::new("c-policies");
    let mut tally = Tally::default();
    for (i, (name, args)) in C.iter().enumerate() {
        let label = format!("{name} (C)");
        let setups = every_policy(i);
        survives_under(
            &c(name, args),
            &label,
            &setups,
            &[],
            2,
            &mut rng,
            &mut tally,
        );
    }
    tally.assert_all_passed();
}

#[test]
fn fortran_example_survives_kills_under_every_policy() {
    let Some(p) = fortran() else { return };
    let mut rng = Rng::new("fortran-policies");
    let mut tally = Tally::default();
    let setups = every_policy(0);
    survives_under(
        &p,
        "matmul (Fortran)",
        &setups,
        &[],
        2,
        &mut rng,
        &mut tally,
    );
    tally.assert_all_passed();
}

#[test]
fn a_changing_memory_map_survives_every_incremental_policy_and_tracker() {
    // mapchurn mmaps, munmaps, mremaps (grow, shrink, move) and mprotects regions and moves brk
    // both ways between checkpoints.
    let mut rng = Rng::new("mapchurn-incremental");
    let setups: Vec<Setup> = every_setup()
        .into_iter()
        .filter(|s| incremental(s.policy))
        .collect();
    let mut tally = Tally::default();
    survives_under(
        &rust("mapchurn", &["32", "8000"]),
        "mapchurn",
        &setups,
        SHORT_CHAINS,
        3,
        &mut rng,
        &mut tally,
    );
    tally.assert_all_passed();
}

/// The environment of a run checkpointing into `store` under `setup`, plus `extra`.
fn run_env<'a>(
    store: &'a Path,
    interval: &'a str,
    setup: Setup,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("CKPT_DIR", store.to_str().unwrap()),
        ("CKPT_INTERVAL", interval),
        ("CKPT_LOG", "info"),
    ];
    env.extend(setup.env());
    env.extend_from_slice(extra);
    env
}

/// The incremental policy with the `i`-th tracker that works here (rotating), if any works.
fn incremental_with(policy: &'static str, i: usize) -> Option<Setup> {
    let working: Vec<&'static str> = TRACKERS
        .iter()
        .copied()
        .filter(|t| tracker_works(t))
        .collect();
    if working.is_empty() {
        eprintln!("SKIPPED: {policy}: no dirty-page tracker works here");
        return None;
    }
    Some(Setup {
        policy,
        tracker: Some(working[i % working.len()]),
    })
}

/// The line of `log` that commits generation `g`, if any.
fn commit_line(log: &str, g: u64) -> Option<&str> {
    log.lines().find(|l| generation(l, "committed") == Some(g))
}

#[test]
fn a_kill_during_compaction_leaves_the_previous_chain_restorable() {
    // The chain is rebased (compacted into a new full image) once it is 2 images long, or once
    // its incremental data passes 1 % of its full image; the program dies while that full
    // image's pages are being written.
    let p = rust("water", &["1024", "80"]);
    let (digest, _) = baseline(&p);
    let mut rng = Rng::new("compaction-kill");
    let chains: [&[(&str, &str)]; 2] = [
        &[("CKPT_CHAIN_MAX", "2")],
        &[("CKPT_CHAIN_MAX", "1000"), ("CKPT_CHAIN_SIZE", "1")],
    ];
    let mut tally = Tally::default();
    for (i, chain) in chains.iter().enumerate() {
        case(&mut tally, &format!("{chain:?}"), || {
            let Some(setup) = incremental_with("incremental", i) else {
                return;
            };
            let store = TempDir::new("compaction-kill");
            let fault = format!("compact-data:kill@{}", 1 + (rng.unit() * 3.0) as u64);
            let mut extra = chain.to_vec();
            extra.push(("CKPT_FAULT", &fault));
            let label = format!("[{setup}] {chain:?} CKPT_FAULT={fault}");
            let killed =
                Watched::spawn(&p, &run_env(store.path(), INTERVAL, setup, &extra)).finish(LIMIT);
            let log = &killed.stderr;
            assert!(
                !killed.status.success() && killed.status.code().is_none(),
                "{label}: the program was not killed in a compaction: {:?}\n{log}",
                killed.status
            );
            let gens = committed(log);
            let last = *gens
                .last()
                .unwrap_or_else(|| panic!("{label}: nothing committed before the kill\n{log}"));
            assert!(
                commit_line(log, last).is_some_and(|l| l.contains("(incremental, ")),
                "{label}: the kill did not follow a chain of incremental images\n{log}"
            );
            let held = images(store.path());
            assert!(
                held.contains(&last),
                "{label}: generation {last} (the last committed) is not in the store: {held:?}\n{log}"
            );
            let again =
                Watched::spawn(&p, &run_env(store.path(), INTERVAL, setup, chain)).finish(LIMIT);
            let all = format!("{log}--- restart\n{}", again.stderr);
            again.assert_ok(&label);
            assert_eq!(
                restored(&again.stderr),
                Some(last),
                "{label}: the restart did not restore the last committed generation\n{all}"
            );
            assert_eq!(
                again.digest().as_deref(),
                Some(digest.as_str()),
                "{label}: wrong digest after the restart\n{all}"
            );
            assert!(
                again.stderr.contains("committed (full, "),
                "{label}: no full checkpoint after the restart\n{all}"
            );
        });
    }
    tally.assert_all_passed();
}

#[test]
fn a_background_writer_killed_in_a_compaction_keeps_the_chain() {
    // In the background policies the rebasing full image is written by the writer process:
    // only it dies; the program goes on, and a kill and restart still restores.
    let p = rust("water", &["1024", "80"]);
    let (digest, base) = baseline(&p);
    let mut tally = Tally::default();
    for (i, policy) in ["forked-incremental", "buffered-incremental"]
        .into_iter()
        .enumerate()
    {
        case(&mut tally, policy, || {
            let Some(setup) = incremental_with(policy, i) else {
                return;
            };
            let store = TempDir::new("bg-compaction-kill");
            let extra = [
                ("CKPT_CHAIN_MAX", "2"),
                ("CKPT_FAULT", "compact-data:kill@1"),
            ];
            let env = run_env(store.path(), INTERVAL, setup, &extra);
            let done = Watched::spawn(&p, &env).finish(LIMIT);
            let label = format!("[{setup}] {extra:?}");
            done.assert_ok(&label);
            assert_eq!(
                done.digest().as_deref(),
                Some(digest.as_str()),
                "{label}: wrong digest\n{}",
                done.stderr
            );
            assert!(
                done.stderr
                    .contains("failed in the background, the previous checkpoint is intact"),
                "{label}: the killed compaction was not reported\n{}",
                done.stderr
            );
            // Killed after such a failure, the program restarts from the chain it kept.
            let store = TempDir::new("bg-compaction-kill");
            let env = run_env(store.path(), INTERVAL, setup, &extra);
            let mut w = Watched::spawn(&p, &env);
            let failed = w.wait_for(
                |l| l.contains("failed in the background"),
                base * 10 + LIMIT,
            );
            let killed = w.kill();
            assert!(
                failed.is_some(),
                "{label}: no failure in the background\n{}",
                killed.stderr
            );
            let last = committed(&killed.stderr).last().copied();
            let again = Watched::spawn(&p, &run_env(store.path(), INTERVAL, setup, &extra[..1]))
                .finish(LIMIT);
            let all = format!("{}--- restart\n{}", killed.stderr, again.stderr);
            again.assert_ok(&label);
            assert!(
                last.is_some() && restored(&again.stderr) >= last,
                "{label}: the restart did not restore the last committed generation {last:?}\n{all}"
            );
            assert_eq!(
                again.digest().as_deref(),
                Some(digest.as_str()),
                "{label}: wrong digest after the restart\n{all}"
            );
        });
    }
    tally.assert_all_passed();
}

#[test]
fn the_store_always_holds_a_committed_checkpoint_across_compactions() {
    // Polled as fast as the directory can be listed while chains are rebased every third
    // checkpoint: once the first checkpoint is committed, the store never lacks one. The poll
    // stops, and the program is killed, at 60 % of its uninterrupted run time: a program that
    // finishes normally removes its checkpoints.
    let p = rust("water", &["1024", "80"]);
    let (digest, base) = baseline(&p);
    let mut tally = Tally::default();
    for (i, policy) in ["incremental", "forked-incremental"]
        .into_iter()
        .enumerate()
    {
        case(&mut tally, policy, || {
            let Some(setup) = incremental_with(policy, i) else {
                return;
            };
            let store = TempDir::new("always-committed");
            let env = run_env(store.path(), "20ms", setup, &[("CKPT_CHAIN_MAX", "2")]);
            let mut w = Watched::spawn(&p, &env);
            let (mut seen, mut polls, mut empty_after) = (0u64, 0u64, None);
            while w.start.elapsed() < base.mul_f64(0.6) && !w.ended() {
                let gens = images(store.path());
                polls += 1;
                if !gens.is_empty() {
                    seen = seen.max(*gens.iter().max().unwrap());
                } else if seen > 0 && empty_after.is_none() {
                    empty_after = Some(seen);
                }
            }
            let killed = w.kill();
            let label = format!("[{setup}]");
            assert!(
                seen > 3,
                "{label}: too few checkpoints seen ({seen} in {polls} polls)\n{}",
                killed.stderr
            );
            assert!(
                killed.stderr.contains("committed (full, ")
                    && killed.stderr.contains("committed (incremental, "),
                "{label}: no chain was built\n{}",
                killed.stderr
            );
            assert_eq!(
                empty_after, None,
                "{label}: the store held no committed checkpoint after generation {empty_after:?} \
             ({polls} polls)\n{}",
                killed.stderr
            );
            let again = Watched::spawn(&p, &env).finish(LIMIT);
            let all = format!("{}--- restart\n{}", killed.stderr, again.stderr);
            again.assert_ok(&label);
            assert!(
                again.stderr.contains("restored generation"),
                "{label}\n{all}"
            );
            assert_eq!(
                again.digest().as_deref(),
                Some(digest.as_str()),
                "{label}: wrong digest after the restart\n{all}"
            );
        });
    }
    tally.assert_all_passed();
}

#[test]
fn a_background_writer_killed_by_the_fault_point_leaves_the_program_running() {
    let p = rust("matmul", &["896", "8"]);
    let (digest, base) = baseline(&p);
    let mut rng = Rng::new("background-write-kill");
    let mut tally = Tally::default();
    for (i, policy) in POLICIES
        .iter()
        .copied()
        .filter(|p| background(p))
        .enumerate()
    {
        case(&mut tally, policy, || {
            let setup = if incremental(policy) {
                match incremental_with(policy, i) {
                    Some(s) => s,
                    None => return,
                }
            } else {
                Setup {
                    policy,
                    tracker: None,
                }
            };
            let fault = format!("background-write:kill@{}", 1 + (rng.unit() * 3.0) as u64);
            let extra = [("CKPT_FAULT", fault.as_str())];
            let label = format!("[{setup}] CKPT_FAULT={fault}");
            // Run to the end: the failure is logged, later checkpoints commit, the result is right.
            let store = TempDir::new("background-write-kill");
            let done =
                Watched::spawn(&p, &run_env(store.path(), INTERVAL, setup, &extra)).finish(LIMIT);
            done.assert_ok(&label);
            assert_eq!(
                done.digest().as_deref(),
                Some(digest.as_str()),
                "{label}: wrong digest\n{}",
                done.stderr
            );
            assert_failure_then_commit(&label, &done.stderr);
            // Killed after a later commit, it restarts from that one.
            let store = TempDir::new("background-write-kill");
            let env = run_env(store.path(), INTERVAL, setup, &extra);
            let mut w = Watched::spawn(&p, &env);
            let mut failed = false;
            let later = w.wait_for(
                |l| {
                    failed |= l.contains("failed in the background");
                    failed && generation(l, "committed").is_some()
                },
                base * 10 + LIMIT,
            );
            let killed = w.kill();
            let later = later
                .and_then(|l| generation(&l, "committed"))
                .unwrap_or_else(|| {
                    panic!("{label}: no commit after the failure\n{}", killed.stderr)
                });
            let again =
                Watched::spawn(&p, &run_env(store.path(), INTERVAL, setup, &[])).finish(LIMIT);
            let all = format!("{}--- restart\n{}", killed.stderr, again.stderr);
            again.assert_ok(&label);
            assert!(
                restored(&again.stderr) >= Some(later),
                "{label}: restored an older generation than {later}\n{all}"
            );
            assert_eq!(
                again.digest().as_deref(),
                Some(digest.as_str()),
                "{label}: wrong digest after the restart\n{all}"
            );
        });
    }
    tally.assert_all_passed();
}

/// A background checkpoint failed (and said the previous one is intact), and a later one
/// committed.
fn assert_failure_then_commit(label: &str, log: &str) {
    let lines: Vec<&str> = log.lines().collect();
    let fail = lines
        .iter()
        .position(|l| l.contains("failed in the background, the previous checkpoint is intact"))
        .unwrap_or_else(|| panic!("{label}: no failure in the background logged\n{log}"));
    assert!(
        lines[fail..]
            .iter()
            .any(|l| generation(l, "committed").is_some()),
        "{label}: no checkpoint committed after the failed one\n{log}"
    );
}

#[test]
fn a_background_writer_killed_from_outside_leaves_the_program_running() {
    // SIGKILL to the writer pid the log names, as soon as it is named: a 40 MiB full image is
    // still being written then.
    let p = rust("matmul", &["1280", "4"]);
    let (digest, base) = baseline(&p);
    let mut tally = Tally::default();
    for (i, policy) in POLICIES
        .iter()
        .copied()
        .filter(|p| background(p))
        .enumerate()
    {
        case(&mut tally, policy, || {
            let setup = if incremental(policy) {
                match incremental_with(policy, i) {
                    Some(s) => s,
                    None => return,
                }
            } else {
                Setup {
                    policy,
                    tracker: None,
                }
            };
            let label = format!("[{setup}] writer killed from outside");
            let store = TempDir::new("writer-sigkill");
            let env = run_env(store.path(), INTERVAL, setup, &[]);
            let mut w = Watched::spawn(&p, &env);
            let mut landed = None;
            for _ in 0..10 {
                let Some(line) = w.wait_for(|l| l.contains("writing in the background"), LIMIT)
                else {
                    break;
                };
                let g = generation(&line, "writing in the background").expect("generation");
                let pid = writer_pid(&line).expect("writer pid");
                if !kill_descendant(w.pid(), pid) {
                    continue;
                }
                let outcome = w
                    .wait_for(
                        |l| {
                            generation(l, "committed") == Some(g)
                                || generation(l, "failed in the background") == Some(g)
                        },
                        LIMIT,
                    )
                    .unwrap_or_default();
                if outcome.contains("failed in the background, the previous checkpoint is intact") {
                    landed = Some(g);
                    break;
                }
            }
            let Some(g) = landed else {
                let r = w.kill();
                panic!("{label}: no writer was killed mid-write\n{}", r.stderr);
            };
            // The program goes on and a later checkpoint commits.
            let later = w.wait_for(
                |l| generation(l, "committed").is_some_and(|n| n > g),
                base * 10 + LIMIT,
            );
            let killed = w.kill();
            let later = later
                .and_then(|l| generation(&l, "committed"))
                .unwrap_or_else(|| {
                    panic!(
                        "{label}: nothing committed after generation {g} failed\n{}",
                        killed.stderr
                    )
                });
            let again = Watched::spawn(&p, &env).finish(LIMIT);
            let all = format!("{}--- restart\n{}", killed.stderr, again.stderr);
            again.assert_ok(&label);
            assert!(
                restored(&again.stderr) >= Some(later),
                "{label}: restored an older generation than {later}\n{all}"
            );
            assert_eq!(
                again.digest().as_deref(),
                Some(digest.as_str()),
                "{label}: wrong digest after the restart\n{all}"
            );
        });
    }
    tally.assert_all_passed();
}

#[test]
fn kernel_writes_into_tracked_memory_are_restored_under_every_tracker() {
    // probe kernel-read: checkpoint, read(2) into tracked buffers (pages written before, pages
    // never touched, a heap buffer), an incremental checkpoint, a crash; the restored process
    // must find the data the kernel wrote.
    let mut tally = Tally::default();
    for &tracker in TRACKERS {
        case(&mut tally, tracker, || {
            if !tracker_works(tracker) {
                return;
            }
            let setup = Setup {
                policy: "incremental",
                tracker: Some(tracker),
            };
            let dir = TempDir::new(&format!("kernel-read-{tracker}"));
            let marker = dir.path().join("restored");
            let store = dir.path().join("s");
            let p = Program::new(
                rust_example("probe"),
                &["kernel-read", marker.to_str().unwrap()],
            );
            let mut env = vec![("CKPT_DIR", store.to_str().unwrap()), ("CKPT_LOG", "info")];
            env.extend(setup.env());
            let first = p.run(&env, LIMIT);
            assert!(
                first.stdout.contains("read(2) filled both buffers")
                    && first.stdout.contains("checkpointed"),
                "[{setup}]: {:?}\nstdout:\n{}\nstderr:\n{}",
                first.status,
                first.stdout,
                first.stderr
            );
            assert!(
                first
                    .stderr
                    .contains("committed (incremental, incremental)"),
                "[{setup}]: the second checkpoint was not incremental\n{}",
                first.stderr
            );
            std::fs::write(&marker, b"").unwrap();
            let second = p.run(&env, LIMIT);
            second.assert_ok(&format!("[{setup}] restored kernel-read"));
            assert!(
                second.stderr.contains("restored generation"),
                "[{setup}]: {}",
                second.stderr
            );
            for what in ["mapped", "heap"] {
                assert!(
                    second
                        .stdout
                        .contains(&format!("{what} buffer holds the data read")),
                    "[{setup}]: {}\n{}",
                    second.stdout,
                    second.stderr
                );
            }
        });
    }
    tally.assert_all_passed();
}

#[test]
fn busy_skip_skips_checkpoints_due_while_one_is_written() {
    // A 40 MiB image every 10 ms: checkpoints fall due while the previous is being written.
    let p = rust("matmul", &["1280", "4"]);
    let (digest, _) = baseline(&p);
    let mut tally = Tally::default();
    for (i, policy) in POLICIES
        .iter()
        .copied()
        .filter(|p| background(p))
        .enumerate()
    {
        case(&mut tally, policy, || {
            let setup = if incremental(policy) {
                match incremental_with(policy, i) {
                    Some(s) => s,
                    None => return,
                }
            } else {
                Setup {
                    policy,
                    tracker: None,
                }
            };
            let store = TempDir::new("busy-skip");
            let env = run_env(store.path(), "10ms", setup, &[("CKPT_BUSY", "skip")]);
            let r = Watched::spawn(&p, &env).finish(LIMIT);
            r.assert_ok(&format!("[{setup}] CKPT_BUSY=skip"));
            assert_eq!(
                r.digest().as_deref(),
                Some(digest.as_str()),
                "[{setup}]: wrong digest\n{}",
                r.stderr
            );
            let skips: Vec<&str> = r
                .stderr
                .lines()
                .filter(|l| l.contains("checkpoint skipped: checkpoint "))
                .collect();
            assert!(
                !skips.is_empty(),
                "[{setup}]: no `checkpoint skipped` with a 10 ms interval\n{}",
                r.stderr
            );
            for s in &skips {
                let g = generation(s, "is still being written")
                    .unwrap_or_else(|| panic!("[{setup}]: cannot parse {s:?}"));
                assert!(
                    r.stderr
                        .contains(&format!("checkpoint {g} writing in the background")),
                    "[{setup}]: {s:?} names a checkpoint never handed to a writer\n{}",
                    r.stderr
                );
            }
            assert!(
                r.stderr.contains("committed ("),
                "[{setup}]: nothing committed\n{}",
                r.stderr
            );
        });
    }
    tally.assert_all_passed();
}

#[test]
fn busy_wait_never_skips() {
    let p = rust("matmul", &["896", "4"]);
    let (digest, _) = baseline(&p);
    let setup = Setup {
        policy: "forked",
        tracker: None,
    };
    let store = TempDir::new("busy-wait");
    let env = run_env(store.path(), "10ms", setup, &[("CKPT_BUSY", "wait")]);
    let r = Watched::spawn(&p, &env).finish(LIMIT);
    r.assert_ok("CKPT_BUSY=wait");
    assert_eq!(r.digest().as_deref(), Some(digest.as_str()), "{}", r.stderr);
    assert!(!r.stderr.contains("skipped"), "{}", r.stderr);
    assert!(
        r.stderr.contains("committed (full, forked)"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_chain_restarts_under_every_policy() {
    // One chain, a full image and incremental ones, written under one policy; copies of the
    // store restarted under every policy (docs/policies.md: whatever the writing run's policy).
    let p = rust("water", &["1024", "80"]);
    let (digest, base) = baseline(&p);
    let Some(writer) = incremental_with("incremental", 0) else {
        return;
    };
    let store = TempDir::new("chain-any-policy");
    let env = run_env(
        store.path(),
        INTERVAL,
        writer,
        &[("CKPT_CHAIN_MAX", "1000")],
    );
    let mut w = Watched::spawn(&p, &env);
    let mut n = 0;
    let third = w.wait_for(
        |l| {
            n += l.contains("committed (incremental, ") as usize;
            n == 3
        },
        base * 10 + LIMIT,
    );
    let killed = w.kill();
    let last = third
        .and_then(|l| generation(&l, "committed"))
        .unwrap_or_else(|| panic!("no three incremental checkpoints\n{}", killed.stderr));
    let mut tally = Tally::default();
    for (i, setup) in every_policy(1).into_iter().enumerate() {
        case(&mut tally, &format!("{setup}"), || {
            let copy = TempDir::new("chain-any-policy-copy");
            for e in std::fs::read_dir(store.path()).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
                }
            }
            let r = Watched::spawn(&p, &run_env(copy.path(), INTERVAL, setup, &[])).finish(LIMIT);
            let label = format!("chain by [{writer}] restarted under [{setup}] ({i})");
            r.assert_ok(&label);
            assert!(
                restored(&r.stderr) >= Some(last),
                "{label}: did not restore generation {last}\n{}",
                r.stderr
            );
            assert_eq!(
                r.digest().as_deref(),
                Some(digest.as_str()),
                "{label}: wrong digest\n{}",
                r.stderr
            );
        });
    }
    tally.assert_all_passed();
}

/// The numbers of one `probe untouched` line: (full image, bytes written so far, bytes written
/// since the previous image, bytes the image saved from the buffer, the buffer's resident bytes).
fn untouched_line(line: &str) -> Option<(bool, u64, u64, u64, u64)> {
    let after = |key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((
        line.contains(" full image"),
        after("written ")?,
        after("since the previous image ")?,
        after("saved from the buffer ")?,
        after("buffer resident ")?,
    ))
}

#[test]
fn no_policy_saves_or_populates_pages_never_written() {
    // probe untouched: a 64 MiB mapping of which a few MiB are written, three checkpoints (the
    // second incremental under the incremental policies, the third full again). Every image
    // holds exactly the written pages of the mapping (a full one all of them, an incremental
    // one those written since), under every policy and tracker: registering memory with a
    // tracker must neither make its untouched pages count as data (uffd-async protects them
    // with page-table markers that PAGEMAP_SCAN reports as swapped) nor make them resident.
    let mut tally = Tally::default();
    for setup in every_setup() {
        case(&mut tally, &format!("{setup}"), || {
            let store = TempDir::new(&format!("untouched-{}", setup.policy));
            let mut env = vec![
                ("CKPT_DIR", store.path().to_str().unwrap()),
                ("CKPT_LOG", "info"),
                ("CKPT_CHAIN_MAX", "1"),
            ];
            env.extend(setup.env());
            let r = Program::new(rust_example("probe"), &["untouched"]).run(&env, LIMIT);
            r.assert_ok(&format!("[{setup}] probe untouched"));
            let lines: Vec<_> = r.stdout.lines().filter_map(untouched_line).collect();
            assert!(
                lines.len() == 3 && r.stdout.contains("untouched: done"),
                "[{setup}]: expected three images\n{}\n{}",
                r.stdout,
                r.stderr
            );
            for (full, written, since, saved, resident) in lines {
                let expect = if full { written } else { since };
                assert_eq!(
                    saved, expect,
                    "[{setup}]: an image saved {saved} bytes of the buffer, {expect} were \
                     written (full: {full})\n{}\n{}",
                    r.stdout, r.stderr
                );
                assert!(
                    resident <= written,
                    "[{setup}]: {resident} bytes of the buffer resident, {written} written\n{}",
                    r.stdout
                );
            }
        });
    }
    tally.assert_all_passed();
}
