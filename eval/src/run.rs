//! One run of one workload: spawned with its `CKPT_*` settings (in the client's network
//! namespace in the paper regime), timed, its log parsed, its digest kept.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::logline::{self, Commit, Event};
use crate::stage::{PoolUsage, Stage};
use crate::{INTERRUPTED, Result, sys};

/// Where checkpoints go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreKind {
    Remote,
    Disk,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Remote => "remote memory",
            StoreKind::Disk => "local disk",
        }
    }
    pub fn short(self) -> &'static str {
        match self {
            StoreKind::Remote => "R",
            StoreKind::Disk => "D",
        }
    }
}

/// The paper's four policies, in its column order, with its names.
pub const POLICIES: [(&str, &str); 4] = [
    ("sequential", "S"),
    ("incremental", "I"),
    ("forked", "S+F"),
    ("forked-incremental", "I+F"),
];

/// A program to run.
#[derive(Debug, Clone)]
pub struct Workload {
    /// `lu`, `lu-c`, `matmul-f90`, ...
    pub name: String,
    /// The paper's name of the workload it stands for.
    pub paper: &'static str,
    pub exe: PathBuf,
    pub args: Vec<String>,
    /// `LD_PRELOAD` (C and Fortran programs).
    pub preload: Option<PathBuf>,
}

/// What to checkpoint into, for one run.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    pub policy: String,
    pub interval_ms: u64,
    /// `CKPT_DIR` or `CKPT_STORE`, as the variable and its value.
    pub var: (&'static str, String),
    /// Directory to remove after the run.
    pub scratch: Option<PathBuf>,
}

impl Checkpointing {
    /// Into the servers' memory (`CKPT_STORE=rmem://...`): the run samples their use.
    pub fn remote(&self) -> bool {
        self.var.0 == "CKPT_STORE"
    }
}

/// One run, as measured.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Wall time from spawn to exit.
    pub wall: f64,
    /// Of which the main thread waited for a CPU (`/proc/PID/schedstat` run_delay).
    pub waited: f64,
    /// User + system CPU of the example and the children it reaped.
    pub cpu: f64,
    pub digest: Option<String>,
    pub commits: Vec<Commit>,
    /// The application's pause per checkpoint (handover lines for background policies).
    pub pauses: Vec<f64>,
    pub background: usize,
    pub failed: Vec<String>,
    pub skipped: usize,
    pub init: Option<String>,
    pub error: Option<String>,
    /// The last lines of standard error that are not the library's checkpoint lines.
    pub other: Vec<String>,
    /// Remote memory runs: the servers' use just before the program started, ...
    pub pool_before: Option<PoolUsage>,
    /// ... after each checkpoint (one per commit, see [`pool_after_each`]), ...
    pub pool_after: Vec<Option<PoolUsage>>,
    /// ... the most seen during the run (sampled every [`POOL_SAMPLE`]) ...
    pub pool_peak: Option<PoolUsage>,
    /// ... and once the program and its helpers were gone (more than before: it left data).
    pub pool_exit: Option<PoolUsage>,
}

impl Run {
    /// The servers' use after checkpoint `i` less their use before the run: this run's
    /// generations only, not what earlier runs left behind.
    pub fn pool_own(&self, i: usize) -> Option<PoolUsage> {
        let u = self.pool_after.get(i).copied().flatten()?;
        let before = self.pool_before.map_or(0, |b| b.used);
        Some(PoolUsage {
            used: u.used.saturating_sub(before),
            ..u
        })
    }

    /// Bytes this run left on the servers after it exited.
    pub fn pool_left(&self) -> Option<u64> {
        Some(self.pool_exit?.used.saturating_sub(self.pool_before?.used))
    }
}

impl Run {
    /// Run time without the waits for a CPU (other work on a shared machine).
    pub fn time(&self) -> f64 {
        self.wall - self.waited
    }
}

/// How long one run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a background writer may hold the pipes after the example exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a remote-memory run samples the servers' use (three admin-socket requests, well
/// under a millisecond of this harness's time; the workload does not see them).
pub const POOL_SAMPLE: Duration = Duration::from_millis(50);

/// The lines of `r`, each with the time it arrived.
fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// The servers' use after each checkpoint, from the samples taken during the run: the last
/// sample before the next checkpoint started (its commit line's time less its latency), so the
/// reading includes what the helper pruned after the commit (`CKPT_KEEP`); after the last
/// checkpoint, the last sample before the program began to remove its generations at exit
/// (`end`). A window without a sample (checkpoints back to back) takes the first sample after
/// the commit. `commits` are (seconds since spawn the commit line arrived, latency in ms).
fn pool_after_each(
    samples: &[(f64, PoolUsage)],
    commits: &[(f64, Option<f64>)],
    end: f64,
) -> Vec<Option<PoolUsage>> {
    (0..commits.len())
        .map(|i| {
            let from = commits[i].0;
            let to = commits
                .get(i + 1)
                .map_or(end, |&(at, ms)| at - ms.unwrap_or(0.0) / 1e3);
            samples
                .iter()
                .rev()
                .find(|(t, _)| *t >= from && *t < to)
                .or_else(|| samples.iter().find(|(t, _)| *t >= from))
                .map(|&(_, u)| u)
        })
        .collect()
}

/// Runs `w` once, with checkpointing as `ck` says (none if `None`).
pub fn run(
    stage: &Stage,
    w: &Workload,
    ck: Option<&Checkpointing>,
    extra_env: &[(String, String)],
    verbose: bool,
) -> Result<Run> {
    let mut cmd = Command::new(&w.exe);
    cmd.args(&w.args);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CKPT_") || k == "LD_PRELOAD" || k == "WORKLOAD_PROGRESS" {
            cmd.env_remove(k);
        }
    }
    if let Some(p) = &w.preload {
        cmd.env("LD_PRELOAD", p);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Some(ck) = ck {
        if let Some(s) = &ck.scratch {
            let _ = fs::remove_dir_all(s);
        }
        cmd.env(ck.var.0, &ck.var.1)
            .env("CKPT_POLICY", &ck.policy)
            .env("CKPT_INTERVAL", format!("{}ms", ck.interval_ms))
            .env("CKPT_LOG", "info")
            .env("CKPT_RESTORE", "never");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
    }
    if let Some(f) = &stage.netns {
        sys::enter_netns_on_exec(&mut cmd, f.as_raw_fd());
    }
    let sample_pool = ck.is_some_and(Checkpointing::remote);
    let pool_before = if sample_pool {
        stage.pool_usage()
    } else {
        None
    };
    let mut samples: Vec<(f64, PoolUsage)> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", w.exe.display()))?;
    let out = lines_of(child.stdout.take().ok_or("no stdout")?);
    let err = lines_of(child.stderr.take().ok_or("no stderr")?);
    let mut killed = None;
    loop {
        if sys::exited(&child)? {
            break;
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            sys::kill_tree(child.id());
            killed = Some("interrupted");
        } else if t0.elapsed() > RUN_TIMEOUT {
            sys::kill_tree(child.id());
            killed = Some("timed out");
        }
        if sample_pool && t0.elapsed() >= next_sample {
            next_sample = t0.elapsed() + POOL_SAMPLE;
            if let Some(u) = stage.pool_usage() {
                samples.push((t0.elapsed().as_secs_f64(), u));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = t0.elapsed().as_secs_f64();
    // Read from the zombie before reaping it.
    let waited = fs::read_to_string(format!("/proc/{}/schedstat", child.id()))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9);
    let (status, cpu) = sys::reap(&child)?;
    let mut run = Run {
        wall,
        waited,
        cpu,
        pool_before,
        pool_peak: samples.iter().map(|&(_, u)| u).max_by_key(|u| u.used),
        ..Run::default()
    };
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while let Ok((_, l)) = out.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(d) = l.strip_prefix("digest ") {
            run.digest = Some(d.trim().to_string());
        }
    }
    let (mut commit_pauses, mut background_pauses) = (Vec::new(), Vec::new());
    // When each commit line came, and when the program began to remove its generations.
    let mut commit_times = Vec::new();
    let mut end = wall;
    while let Ok((at, l)) = err.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if verbose {
            eprintln!("    [{}] {l}", w.name);
        }
        let at = at.saturating_duration_since(t0).as_secs_f64();
        match logline::parse(&l) {
            Event::Committed(c) => {
                commit_pauses.extend(c.paused_ms.or(c.ms));
                commit_times.push((at, c.ms));
                run.commits.push(c);
            }
            Event::Background { paused_ms } => {
                run.background += 1;
                background_pauses.extend(paused_ms);
            }
            Event::Failed(m) => run.failed.push(m),
            Event::Skipped(_) => run.skipped += 1,
            Event::Init(m) => run.init = Some(m),
            Event::Other(l) => {
                // "finished normally; removed N generation(s) from the remote store": logged
                // after the removal, which takes a few tens of ms; keep the samples clear of it.
                if l.contains("finished normally") {
                    end = end.min(at - 2.0 * POOL_SAMPLE.as_secs_f64());
                }
                run.other.push(l);
                if run.other.len() > 20 {
                    run.other.remove(0);
                }
            }
        }
    }
    if sample_pool {
        run.pool_after = pool_after_each(&samples, &commit_times, end);
        run.pool_exit = stage.pool_usage();
    }
    run.pauses = if run.background > 0 {
        background_pauses
    } else {
        commit_pauses
    };
    if let Some(s) = ck.and_then(|c| c.scratch.as_ref()) {
        let _ = fs::remove_dir_all(s);
    }
    if let Some(k) = killed {
        run.error = Some(k.to_string());
        if k == "interrupted" {
            return Err("interrupted".into());
        }
    } else if !status.success() {
        run.error = Some(format!(
            "exited with {status}: {}",
            run.other
                .iter()
                .rev()
                .take(3)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    Ok(run)
}

/// Whether the library understands `CKPT_STORE=rmem://...`, from one short run.
#[derive(Debug, Clone)]
pub enum RemoteSupport {
    Yes,
    /// Not measured, and why.
    No(String),
}

/// Runs `w` once against the remote store `spec` and reads what happened.
pub fn probe_remote(
    stage: &Stage,
    w: &Workload,
    ck: &Checkpointing,
    extra_env: &[(String, String)],
) -> RemoteSupport {
    if stage.servers.is_empty() {
        return RemoteSupport::No("no rmem-server binary was built".into());
    }
    let r = match run(stage, w, Some(ck), extra_env, false) {
        Ok(r) => r,
        Err(e) => return RemoteSupport::No(format!("probe run failed: {e}")),
    };
    let mentions: Vec<&String> = r
        .other
        .iter()
        .filter(|l| l.contains("CKPT_STORE") || l.contains("rmem") || l.contains("ckpt"))
        .collect();
    if !r.commits.is_empty() && r.error.is_none() && r.failed.is_empty() {
        return RemoteSupport::Yes;
    }
    if let Some(f) = r.failed.first() {
        return RemoteSupport::No(format!("checkpoints into rmem:// failed: {f}"));
    }
    if let Some(e) = &r.error {
        return RemoteSupport::No(format!("the probe run {e}"));
    }
    if r.init.is_none() {
        return RemoteSupport::No(format!(
            "store support missing: given CKPT_STORE=rmem://... and no CKPT_DIR, the library took \
             no checkpoint and said nothing of the store{}",
            mentions
                .first()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ));
    }
    RemoteSupport::No(format!(
        "no checkpoint committed in the probe run ({})",
        r.init.unwrap_or_default()
    ))
}

/// The runs of one workload.
#[derive(Debug, Clone)]
pub struct WorkloadRuns {
    pub w: Workload,
    pub interval_ms: u64,
    pub base: Vec<Run>,
    pub runs: BTreeMap<(StoreKind, String), Vec<Run>>,
}

impl WorkloadRuns {
    /// The run with the shortest corrected time among `runs`.
    pub fn best(runs: &[Run]) -> Option<&Run> {
        runs.iter()
            .filter(|r| r.error.is_none())
            .min_by(|a, b| a.time().total_cmp(&b.time()))
    }

    pub fn base_time(&self) -> Option<f64> {
        Self::best(&self.base).map(Run::time)
    }

    pub fn cell(&self, store: StoreKind, policy: &str) -> Option<&Run> {
        Self::best(self.runs.get(&(store, policy.to_string()))?)
    }

    /// Overhead in seconds of `policy` into `store` over the run without checkpoints.
    pub fn overhead(&self, store: StoreKind, policy: &str) -> Option<f64> {
        Some(self.cell(store, policy)?.time() - self.base_time()?)
    }

    pub fn digest(&self) -> Option<&str> {
        self.base.first()?.digest.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(used: u64) -> PoolUsage {
        PoolUsage {
            used,
            capacity: 100,
        }
    }

    #[test]
    fn pool_reading_is_the_last_sample_before_the_next_checkpoint() {
        let samples: Vec<(f64, PoolUsage)> =
            [(0.0, 0), (1.05, 30), (1.5, 20), (2.0, 40), (3.0, 20)]
                .into_iter()
                .map(|(t, x)| (t, u(x)))
                .collect();
        // Commit 1 at 1.0 s; the second started at 2.6 - 0.8 = 1.8 s and committed at 2.6 s.
        let commits = [(1.0, Some(500.0)), (2.6, Some(800.0))];
        let after = pool_after_each(&samples, &commits, 3.5);
        assert_eq!(after, vec![Some(u(20)), Some(u(20))]);
        // A window with no sample takes the first one after the commit.
        let after = pool_after_each(&samples, &[(1.0, None), (1.02, Some(0.0))], 1.04);
        assert_eq!(after, vec![Some(u(30)), Some(u(30))]);
    }
}
