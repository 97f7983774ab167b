//! Checkpoint-policy benchmark (issue 4, item 7 b–d), every figure beside a reference measured in
//! the same run, as a ratio:
//!
//! - **(b) incremental latency**: a checkpoint of a heap with 1 %, 5 % and 25 % of its pages
//!   written since the previous one, against a full checkpoint of the same heap in the same
//!   process, per tracker (`CKPT_TRACKER=uffd-async|mprotect`). Target at 5 %: ≤ 0.10.
//! - **(c) forked pause**: how long the application is stopped by a `forked` and a
//!   `forked-incremental` checkpoint, against the pause of a `sequential` one of the same heap.
//!   Target at 1 GiB: ≤ 20 ms.
//! - **(d) checkpoint overhead** (the paper's Table III, local store): extra run time of each
//!   example checkpointed every N seconds under each policy over the same example run without
//!   checkpoints.
//!
//! Run: `cargo bench --bench policies` (6-10 minutes), or `cargo bench --bench policies --
//! --quick` (`CKPT_BENCH_QUICK=1`, about 3 minutes: 256 MiB heaps, one run per example). See
//! `docs/benchmarks.md` for the settings (`CKPT_BENCH_*`).
//!
//! The figures come from the library's own log (`CKPT_LOG=info`, contract in
//! `docs/policies.md`): `checkpoint G committed (KIND, POLICY): ... N ms, paused X ms` gives the
//! latency, the kind and the pause; `writing in the background (writer pid P, paused X ms)`,
//! `failed` and `skipped` lines are counted too. The caller's own timing of `checkpoint_now()`
//! is printed beside the logged pause: both are what the application waits for, so a large
//! difference means one of them is wrong.
//!
//! As in `benches/checkpoint.rs`, everything checkpointed runs in a child process (the
//! checkpointer refuses a second thread, and `init` re-executes the program): this binary
//! re-executes itself with `CKPT_BENCH_CHILD=heap` for (b) and (c), and runs the examples'
//! release binaries for (d). The children's `CKPT_*` settings come from the environment the
//! parent gives them (`ckpt::Config::from_env`), so a policy the library does not know yet is
//! reported as not available rather than failing the build.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
/// Dirty pages are written in runs of this many pages (32 KiB) at pseudo-random places, as in
/// `benches/dirty.rs`: scattered single pages over 1 GiB would push the mprotect tracker past
/// `vm.max_map_count` (each one splits a VMA) and measure its degraded mode instead.
const RUN_PAGES: usize = 8;
/// Target (b): incremental latency at 5 % dirty over a full checkpoint.
const TARGET_INCREMENTAL: f64 = 0.10;
/// Target (c): pause of a forked checkpoint of 1 GiB.
const TARGET_PAUSE_MS: f64 = 20.0;
/// The dirty shares of (b), in per mille.
const SHARES: [u32; 3] = [10, 50, 250];
/// Share written before each checkpoint of (c), per mille: some work between checkpoints, so
/// that forked-incremental has something to harvest.
const FORK_DIRTY: u32 = 50;
/// How long to wait for a (background) checkpoint to commit before calling it lost.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a heap child may take to answer a command (fill a heap, take a checkpoint).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one example run may take before it is killed (the longest take a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

const CHILD_ENV: &str = "CKPT_BENCH_CHILD";
const TRACKERS: [&str; 2] = ["uffd-async", "mprotect"];
const POLICIES: [&str; 6] = [
    "sequential",
    "incremental",
    "forked",
    "forked-incremental",
    "buffered",
    "buffered-incremental",
];
/// The examples of (d), in the paper's order where it has them, with `SIZE STEPS` for about
/// 1–1.5 s of CPU each on the development machine (`examples/README.md`): the memory of their
/// defaults, fewer steps, so that three runs of every policy fit in a few minutes.
const EXAMPLES: [(&str, &str); 7] = [
    ("lu", "2048 1"),
    ("ocean", "1024 50"),
    ("raytrace", "1024 1"),
    ("water", "1536 50"),
    ("apsp", "1536 1"),
    ("matmul", "1280 4"),
    ("mapchurn", "64 6000"),
];

fn main() {
    let r = match std::env::var(CHILD_ENV) {
        Ok(mode) if mode == "heap" => heap_child(),
        Ok(mode) => Err(format!("{CHILD_ENV}={mode:?}: unknown mode").into()),
        Err(_) => parent(),
    };
    if let Err(e) = r {
        eprintln!("policies bench: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Settings.

#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    parts: String,
    /// (b): heap size in MiB.
    heap_mib: usize,
    /// (c): heap sizes in MiB.
    fork_mib: Vec<usize>,
    /// (b), (c): measured rounds, and unreported rounds before them.
    runs: usize,
    warmup: usize,
    /// (d): runs of every example under every configuration.
    example_runs: usize,
    examples: Vec<String>,
    policies: Vec<String>,
    /// (d): checkpoints wanted per run; the interval is the no-checkpoint time divided by this.
    checkpoints: usize,
    /// (d): a fixed interval instead.
    interval_ms: Option<u64>,
    root: PathBuf,
    verbose: bool,
    /// `CKPT_LOG` of the children: `info`, or `debug` with `CKPT_BENCH_LOG=debug`.
    log: String,
    /// (b): the trackers.
    trackers: Vec<String>,
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let quick = std::env::args().any(|a| a == "--quick") || var("CKPT_BENCH_QUICK").is_some();
        let num =
            |n: &str, default: usize| -> Result<usize> {
                match var(n) {
                    Some(v) => v.parse::<usize>().ok().filter(|&x| x > 0).ok_or_else(|| {
                        format!("{n}={v:?}: expected a positive whole number").into()
                    }),
                    None => Ok(default),
                }
            };
        let list = |n: &str, default: &[&str]| -> Vec<String> {
            match var(n) {
                Some(v) => v.split(',').map(|x| x.trim().to_string()).collect(),
                None => default.iter().map(|x| x.to_string()).collect(),
            }
        };
        let fork_mib = list(
            "CKPT_BENCH_FORK_SIZES",
            if quick { &["256"] } else { &["256", "1024"] },
        )
        .iter()
        .map(|x| x.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("CKPT_BENCH_FORK_SIZES: expected MiB like 256,1024: {e}"))?;
        let root = var("CKPT_BENCH_DIR")
            .map_or_else(|| PathBuf::from("target/bench-policies"), PathBuf::from);
        Ok(Settings {
            quick,
            parts: var("CKPT_BENCH_PARTS").unwrap_or_else(|| "bcd".into()),
            heap_mib: num("CKPT_BENCH_HEAP_MIB", if quick { 256 } else { 1024 })?,
            fork_mib,
            runs: num("CKPT_BENCH_RUNS", if quick { 3 } else { 5 })?,
            warmup: var("CKPT_BENCH_WARMUP")
                .map(|v| v.parse())
                .transpose()?
                .unwrap_or(if quick { 1 } else { 2 }),
            example_runs: num("CKPT_BENCH_EXAMPLE_RUNS", if quick { 1 } else { 2 })?,
            examples: list(
                "CKPT_BENCH_EXAMPLES",
                &EXAMPLES.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            ),
            policies: list("CKPT_BENCH_POLICIES", &POLICIES),
            checkpoints: num("CKPT_BENCH_CHECKPOINTS", 5)?,
            interval_ms: var("CKPT_BENCH_INTERVAL_MS")
                .map(|v| v.parse())
                .transpose()?,
            root: std::path::absolute(root)?,
            verbose: var("CKPT_BENCH_VERBOSE").is_some(),
            log: match var("CKPT_BENCH_LOG").as_deref() {
                Some("debug") => "debug".into(),
                _ => "info".into(),
            },
            trackers: list("CKPT_BENCH_TRACKERS", &TRACKERS),
        })
    }

    fn part(&self, p: char) -> bool {
        self.parts.contains(p)
    }
}

// ---------------------------------------------------------------------------------------------
// The child of (b) and (c): a populated heap, dirtied and checkpointed on request.

/// Calls `ckpt::init` with the `CKPT_*` environment the parent set, fills a heap of
/// `CKPT_BENCH_BYTES`, prints `ready`, then serves commands from stdin until it ends:
/// `dirty <per mille> <seed>` (answers `t <ns> <pages written>`) and `ckpt` (answers
/// `t <ns>`, the time `checkpoint_now()` kept the caller).
fn heap_child() -> Result<()> {
    let bytes: usize = std::env::var("CKPT_BENCH_BYTES")?.parse()?;
    // Nothing printed before init: it re-executes this program once.
    let cfg = ckpt::Config::from_env()?.restore_mode(ckpt::RestoreMode::Never);
    ckpt::init(cfg)?;
    let mut heap = vec![0u8; bytes];
    fill(&mut heap);
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut input = std::io::stdin().lock();
    let mut cmd = String::new();
    loop {
        cmd.clear();
        if input.read_line(&mut cmd)? == 0 {
            break;
        }
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let t = Instant::now();
        match words.as_slice() {
            ["dirty", share, seed] => {
                let pages = dirty(&mut heap, share.parse()?, seed.parse()?);
                writeln!(out, "t {} {pages}", t.elapsed().as_nanos())?;
            }
            ["ckpt"] => {
                let r = ckpt::checkpoint_now();
                let ns = t.elapsed().as_nanos();
                match r {
                    Ok(()) => writeln!(out, "t {ns}")?,
                    Err(e) => writeln!(out, "error {e}")?,
                }
            }
            _ => return Err(format!("unknown command {cmd:?}").into()),
        }
        out.flush()?;
    }
    std::hint::black_box(&heap);
    ckpt::shutdown()?;
    Ok(())
}

/// Deterministic, never-zero contents, so every page is populated and distinct.
fn fill(buf: &mut [u8]) {
    for (i, w) in buf.chunks_mut(8).enumerate() {
        let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let z = ((z ^ (z >> 31)) | 1).to_ne_bytes();
        w.copy_from_slice(&z[..w.len()]);
    }
}

/// Writes one byte in every page of `share`‰ of the heap's runs of `RUN_PAGES` pages, chosen
/// without repetition by a stride coprime with the number of runs (so the count is exact);
/// `seed` moves the pattern. Returns the pages written.
fn dirty(heap: &mut [u8], share: u32, seed: u64) -> usize {
    // The heap need not start on a page: write from its first whole page.
    let skip = heap.as_ptr().align_offset(PAGE).min(heap.len());
    let heap = &mut heap[skip..];
    let slots = heap.len() / PAGE / RUN_PAGES;
    if slots == 0 {
        return 0;
    }
    let want = (slots as u64 * u64::from(share)).div_ceil(1000) as usize;
    let mut stride = (0x9e37_79b9usize % slots).max(1);
    while gcd(stride, slots) != 1 {
        stride += 1;
    }
    let start = (seed as usize).wrapping_mul(7919) % slots;
    for i in 0..want.min(slots) {
        let s = (start + i * stride) % slots;
        for p in s * RUN_PAGES..(s + 1) * RUN_PAGES {
            let b = &mut heap[p * PAGE];
            *b = b.wrapping_add(1);
        }
    }
    want.min(slots) * RUN_PAGES
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

// ---------------------------------------------------------------------------------------------
// The library's log lines (docs/policies.md).

/// What one `ckpt[pid]: ...` line says, as far as this bench cares.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// `checkpoint G committed (KIND, POLICY): ... N MiB ... N ms ..., paused X ms`.
    Committed(Commit),
    /// `checkpoint G writing in the background (writer pid P, paused X ms)`.
    Background {
        paused_ms: Option<f64>,
    },
    /// `checkpoint G failed...` (in the foreground or the background).
    Failed(String),
    /// `checkpoint skipped: ...`.
    Skipped(String),
    /// The `checkpointing into ...` line of `init`.
    Init(String),
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Commit {
    generation: u64,
    kind: Option<String>,
    policy: Option<String>,
    data_mib: Option<f64>,
    ms: Option<f64>,
    paused_ms: Option<f64>,
    /// Pid of the process that wrote the line (the writer, for background policies).
    pid: u32,
}

fn parse_event(line: &str) -> Event {
    let Some(rest) = line.strip_prefix("ckpt[") else {
        return Event::Other(line.to_string());
    };
    let Some((pid, msg)) = rest.split_once("]: ") else {
        return Event::Other(line.to_string());
    };
    let pid: u32 = pid.parse().unwrap_or(0);
    if msg.starts_with("checkpointing into ") {
        return Event::Init(msg.to_string());
    }
    if msg.starts_with("checkpoint skipped") {
        return Event::Skipped(msg.to_string());
    }
    let Some(after) = msg.strip_prefix("checkpoint ") else {
        return Event::Other(line.to_string());
    };
    let (g, tail) = after.split_once(' ').unwrap_or((after, ""));
    let Ok(generation) = g.parse::<u64>() else {
        return Event::Other(line.to_string());
    };
    if tail.starts_with("writing in the background") {
        return Event::Background {
            paused_ms: number_before(tail, "paused", "ms"),
        };
    }
    if tail.starts_with("failed") {
        return Event::Failed(msg.to_string());
    }
    let Some(tail) = tail.strip_prefix("committed") else {
        return Event::Other(line.to_string());
    };
    // Optional "(KIND, POLICY)" before the colon.
    let (head, body) = tail.split_once(':').unwrap_or(("", tail));
    let inner = head.trim().trim_start_matches('(').trim_end_matches(')');
    let mut kp = inner.split(',').map(|s| s.trim().to_string());
    let kind = kp.next().filter(|s| !s.is_empty());
    let policy = kp.next().filter(|s| !s.is_empty());
    // The latency is the first "<x> ms" not preceded by "paused".
    let words: Vec<&str> = body
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let mut ms = None;
    let mut data_mib = None;
    for i in 1..words.len() {
        let v = words[i - 1].parse::<f64>().ok();
        if words[i] == "ms" && ms.is_none() && (i < 2 || words[i - 2] != "paused") {
            ms = v;
        }
        if words[i] == "MiB" && data_mib.is_none() {
            data_mib = v;
        }
    }
    Event::Committed(Commit {
        generation,
        kind,
        policy,
        data_mib,
        ms,
        paused_ms: number_before(body, "paused", "ms"),
        pid,
    })
}

/// The parser against the contract's examples (and the pre-policy format of the commit line),
/// so that a change of format shows up as an error here rather than as empty tables.
fn check_parser() -> Result<()> {
    let c = |generation, kind: Option<&str>, policy: Option<&str>, mib, ms, paused| {
        Event::Committed(Commit {
            generation,
            kind: kind.map(String::from),
            policy: policy.map(String::from),
            data_mib: Some(mib),
            ms: Some(ms),
            paused_ms: paused,
            pid: 12,
        })
    };
    let cases = [
        (
            "ckpt[12]: checkpoint 3 committed (incremental, forked-incremental): 51.2 MiB in 800 runs, 40.1 ms (1277 MiB/s), paused 2.5 ms",
            c(
                3,
                Some("incremental"),
                Some("forked-incremental"),
                51.2,
                40.1,
                Some(2.5),
            ),
        ),
        (
            "ckpt[12]: checkpoint 9 committed (full, sequential): 256.1 MiB in 3 runs, 60.5 ms, paused 60.5 ms (4233 MiB/s)",
            c(9, Some("full"), Some("sequential"), 256.1, 60.5, Some(60.5)),
        ),
        (
            "ckpt[12]: checkpoint 7 committed: 1024.1 MiB in 5 runs, 236.0 ms (4338 MiB/s)",
            c(7, None, None, 1024.1, 236.0, None),
        ),
        (
            "ckpt[12]: checkpoint 4 writing in the background (writer pid 99, paused 3.5 ms)",
            Event::Background {
                paused_ms: Some(3.5),
            },
        ),
    ];
    for (line, want) in cases {
        let got = parse_event(line);
        if got != want {
            return Err(format!("log parser: {line:?} gave {got:?}, expected {want:?}").into());
        }
    }
    Ok(())
}

/// The number between `word` and `unit` in `text` ("paused 3.2 ms" -> 3.2).
fn number_before(text: &str, word: &str, unit: &str) -> Option<f64> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(3)
        .find(|w| w[0] == word && w[2] == unit)
        .and_then(|w| w[1].parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Children driven by the parent.

/// Reads a pipe line by line on a thread (the parent may have threads; the children may not)
/// and hands the lines over a channel.
fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A heap child with its log.
#[derive(Debug)]
struct HeapProc {
    what: String,
    child: Child,
    to: Option<ChildStdin>,
    /// Its stdout, line by line (a channel, so that a hung child times out).
    from: Receiver<String>,
    log: Receiver<String>,
    /// Every log line seen, for error messages.
    seen: Vec<String>,
    init: Option<String>,
    verbose: bool,
}

/// One checkpoint as the parent saw it.
#[derive(Debug, Clone)]
struct Taken {
    /// `checkpoint_now()` as timed by the caller.
    caller_ms: f64,
    /// The pause the library logged (background line, or the commit line).
    paused_ms: Option<f64>,
    commit: Option<Commit>,
    failure: Option<String>,
}

impl HeapProc {
    fn spawn(s: &Settings, what: &str, bytes: usize, env: &[(&str, String)]) -> Result<HeapProc> {
        let mut cmd = Command::new(std::env::current_exe()?);
        clear_ckpt_env(&mut cmd);
        cmd.env(CHILD_ENV, "heap")
            .env("CKPT_BENCH_BYTES", bytes.to_string())
            .env("CKPT_LOG", &s.log)
            .env("CKPT_RESTORE", "never")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let to = child.stdin.take();
        let from = lines_of(child.stdout.take().ok_or("no stdout")?);
        let log = lines_of(child.stderr.take().ok_or("no stderr")?);
        let mut p = HeapProc {
            what: what.to_string(),
            child,
            to,
            from,
            log,
            seen: Vec::new(),
            init: None,
            verbose: s.verbose,
        };
        let line = p.line()?;
        if line != "ready" {
            return Err(p.failed(&format!("ready, got {line:?}")));
        }
        // The library's messages about a failed start come before "ready".
        // The init line comes before "ready".
        while let Ok(l) = p.log.recv_timeout(Duration::from_millis(50)) {
            p.note(l);
        }
        Ok(p)
    }

    fn note(&mut self, l: String) {
        if self.verbose {
            eprintln!("    [{}] {l}", self.what);
        }
        if let Event::Init(m) = parse_event(&l) {
            self.init = Some(m);
        }
        self.seen.push(l);
    }

    /// The child's next answer; a child that gives none within `ANSWER_TIMEOUT` is killed.
    fn line(&mut self) -> Result<String> {
        match self.from.recv_timeout(ANSWER_TIMEOUT) {
            Ok(l) => Ok(l.trim_end().to_string()),
            Err(RecvTimeoutError::Timeout) => Err(self.failed(&format!(
                "an answer within {ANSWER_TIMEOUT:?} (hung; killed)"
            ))),
            Err(RecvTimeoutError::Disconnected) => Ok(String::new()),
        }
    }

    fn ask(&mut self, cmd: &str) -> Result<Vec<u64>> {
        let to = self.to.as_mut().ok_or("child stdin closed")?;
        writeln!(to, "{cmd}")?;
        to.flush()?;
        let line = self.line()?;
        if let Some(e) = line.strip_prefix("error ") {
            return Err(format!("{}: {cmd}: {e}", self.what).into());
        }
        let v: Option<Vec<u64>> = line
            .strip_prefix("t ")
            .and_then(|l| l.split(' ').map(|n| n.parse().ok()).collect());
        v.ok_or_else(|| self.failed(&format!("t <ns> in answer to {cmd:?}, got {line:?}")))
    }

    fn dirty(&mut self, share: u32, seed: u64) -> Result<usize> {
        Ok(self.ask(&format!("dirty {share} {seed}"))?[1] as usize)
    }

    /// Takes one checkpoint and waits until it has committed or failed (for the background
    /// policies: until the writer says so), so that the next one starts from a quiet state.
    fn checkpoint(&mut self) -> Result<Taken> {
        let to = self.to.as_mut().ok_or("child stdin closed")?;
        writeln!(to, "ckpt")?;
        to.flush()?;
        let line = self.line()?;
        let mut taken = Taken {
            caller_ms: 0.0,
            paused_ms: None,
            commit: None,
            failure: None,
        };
        if let Some(e) = line.strip_prefix("error ") {
            taken.failure = Some(e.to_string());
        } else {
            let ns: u64 = line
                .strip_prefix("t ")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| self.failed(&format!("t <ns> after ckpt, got {line:?}")))?;
            taken.caller_ms = ns as f64 / 1e6;
        }
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = match self.log.recv_timeout(left) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no commit or failure logged within {COMMIT_TIMEOUT:?} of a checkpoint",
                        self.what
                    )
                    .into());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failed("a commit line"));
                }
            };
            let ev = parse_event(&l);
            self.note(l);
            match ev {
                Event::Background { paused_ms } => taken.paused_ms = paused_ms,
                Event::Committed(c) => {
                    taken.paused_ms = taken.paused_ms.or(c.paused_ms);
                    taken.commit = Some(c);
                    return Ok(taken);
                }
                Event::Failed(m) | Event::Skipped(m) => {
                    taken.failure = Some(m);
                    return Ok(taken);
                }
                Event::Init(_) | Event::Other(_) => {}
            }
        }
    }

    fn finish(mut self) -> Result<()> {
        drop(self.to.take());
        let status = wait_timeout(&mut self.child, ANSWER_TIMEOUT)?;
        if !status.success() {
            return Err(self.failed(&format!("a clean exit, got {status}")));
        }
        Ok(())
    }

    fn failed(&mut self, want: &str) -> Box<dyn Error> {
        drop(self.to.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.log.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        let tail: Vec<&str> = self
            .seen
            .iter()
            .rev()
            .take(6)
            .rev()
            .map(String::as_str)
            .collect();
        format!(
            "{}: expected {want}; its last log lines: {}",
            self.what,
            if tail.is_empty() {
                "(none)".to_string()
            } else {
                tail.join(" | ")
            }
        )
        .into()
    }
}

impl Drop for HeapProc {
    /// A child left behind by an error is killed, not orphaned with gigabytes of heap.
    fn drop(&mut self) {
        drop(self.to.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` to exit, killing it after `limit`.
fn wait_timeout(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            child.wait()?;
            return Err(format!("a child did not exit within {limit:?}; killed").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Children start from a clean `CKPT_*` environment: only what the bench sets applies.
fn clear_ckpt_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CKPT_") {
            cmd.env_remove(k);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting.

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn size_name(mib: usize) -> String {
    if mib >= 1024 && mib.is_multiple_of(1024) {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// Short form of an error for a table cell's footnote.
fn short(e: &str) -> String {
    let e = e.replace('\n', " ");
    if e.chars().count() > 220 {
        format!("{}...", e.chars().take(220).collect::<String>())
    } else {
        e
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.

fn parent() -> Result<()> {
    let s = Settings::from_env()?;
    check_parser()?;
    cloexec_inherited()?;
    let _ = fs::remove_dir_all(&s.root);
    fs::create_dir_all(&s.root)?;
    print_header(&s);
    let started = Instant::now();
    let mut targets: Vec<String> = Vec::new();
    if s.part('b') {
        match part_b(&s) {
            Ok(t) => targets.extend(t),
            Err(e) => {
                println!("(b) failed: {e}");
                targets.push(
                    "target (b): incremental/full at 5 % <= 0.10: MISS (not measured)".into(),
                );
            }
        }
    }
    if s.part('c') {
        match part_c(&s) {
            Ok(t) => targets.extend(t),
            Err(e) => {
                println!("(c) failed: {e}");
                targets
                    .push("target (c): forked pause at 1 GiB <= 20 ms: MISS (not measured)".into());
            }
        }
    }
    if s.part('d')
        && let Err(e) = part_d(&s)
    {
        println!("(d) failed: {e}");
    }
    let _ = fs::remove_dir_all(&s.root);
    println!();
    for t in &targets {
        println!("{t}");
    }
    println!("total bench time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Store directory for one child, on the disk of `CKPT_BENCH_DIR`.
fn store(s: &Settings, name: &str) -> PathBuf {
    let p = s.root.join(name);
    let _ = fs::remove_dir_all(&p);
    p
}

// ----- (b) -----------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct IncRow {
    /// Per share (per mille): (logged ms, caller ms, saved MiB, written MiB, kind).
    inc: BTreeMap<u32, Vec<Taken>>,
    written_mib: BTreeMap<u32, f64>,
    /// The full checkpoints of the same process (the chain's bases).
    full: Vec<Taken>,
    /// The sequential policy's full checkpoints of the same heap, in another process.
    seq: Vec<Taken>,
    /// Checkpoints whose logged kind was not the one expected.
    surprises: Vec<String>,
    init: Option<String>,
}

fn logged_ms(t: &Taken) -> Option<f64> {
    t.commit.as_ref().and_then(|c| c.ms)
}

fn part_b(s: &Settings) -> Result<Vec<String>> {
    let bytes = s.heap_mib * MIB;
    println!();
    println!(
        "(b) incremental checkpoint latency, {} heap, runs of {RUN_PAGES} pages written at \
         pseudo-random places; reference: the full checkpoint of the same heap in the same process \
         (CKPT_CHAIN_MAX=3: each round is full, 1 %, 5 %, 25 %); also the sequential policy's full \
         checkpoint in another process; {} + {} rounds, medians of the logged latency",
        size_name(s.heap_mib),
        s.warmup,
        s.runs
    );
    eprint!("(b) ...");
    let mut seq = HeapProc::spawn(
        s,
        "sequential",
        bytes,
        &[
            ("CKPT_DIR", store(s, "b-seq").display().to_string()),
            ("CKPT_POLICY", "sequential".into()),
        ],
    )?;
    let mut rows: Vec<(&str, std::result::Result<IncRow, String>)> = Vec::new();
    for tracker in &s.trackers {
        let tracker = tracker.as_str();
        eprint!(" {tracker}");
        let r = measure_b(s, bytes, tracker, &mut seq).map_err(|e| e.to_string());
        let _ = fs::remove_dir_all(s.root.join(format!("b-{tracker}")));
        rows.push((tracker, r));
    }
    seq.finish()?;
    let _ = fs::remove_dir_all(s.root.join("b-seq"));
    eprintln!(" done");

    println!(
        "{:<11} {:>8} {:>8} {:>9} | {:>7} {:>10} {:>10} {:>7} {:>7} {:>7}",
        "tracker",
        "seq ms",
        "full ms",
        "full/seq",
        "dirty",
        "written MiB",
        "saved MiB",
        "incr ms",
        "/full",
        "/seq"
    );
    let mut targets = Vec::new();
    for (tracker, r) in &rows {
        let row = match r {
            Ok(r) => r,
            Err(e) => {
                println!("{tracker:<11} not available: {}", short(e));
                targets.push(format!(
                    "target (b): {tracker}: incremental/full at 5 % <= {TARGET_INCREMENTAL:.2}: MISS (not measured)"
                ));
                continue;
            }
        };
        let full = median(&row.full.iter().filter_map(logged_ms).collect::<Vec<_>>());
        let seqm = median(&row.seq.iter().filter_map(logged_ms).collect::<Vec<_>>());
        for (i, share) in SHARES.iter().enumerate() {
            let takes = row.inc.get(share).map_or(&[][..], |v| &v[..]);
            let incm = median(&takes.iter().filter_map(logged_ms).collect::<Vec<_>>());
            let saved = median(
                &takes
                    .iter()
                    .filter_map(|t| t.commit.as_ref()?.data_mib)
                    .collect::<Vec<_>>(),
            );
            let ratio = incm.zip(full).map(|(i, f)| i / f);
            let ratio_seq = incm.zip(seqm).map(|(i, f)| i / f);
            let (a, b, c) = if i == 0 {
                (
                    opt(seqm, 1),
                    opt(full, 1),
                    opt(full.zip(seqm).map(|(f, q)| f / q), 2),
                )
            } else {
                (String::new(), String::new(), String::new())
            };
            println!(
                "{:<11} {:>8} {:>8} {:>9} | {:>6.0}% {:>10.1} {:>10} {:>7} {:>7} {:>7}",
                if i == 0 { tracker } else { "" },
                a,
                b,
                c,
                f64::from(*share) / 10.0,
                row.written_mib.get(share).copied().unwrap_or(0.0),
                opt(saved, 1),
                opt(incm, 1),
                opt(ratio, 3),
                opt(ratio_seq, 3),
            );
            if *share == 50 {
                // Two readings of "a full checkpoint": the incremental policy's own (the chain's
                // base, what compaction costs) and the sequential policy's (the cheapest full
                // checkpoint of that heap the library takes). Both are printed.
                for (r, what) in [(ratio, "its own full"), (ratio_seq, "a sequential full")] {
                    targets.push(match r {
                        Some(r) => format!(
                            "target (b): {tracker}: incremental at 5 % / {what} <= {TARGET_INCREMENTAL:.2}: {} ({r:.3})",
                            verdict(r <= TARGET_INCREMENTAL)
                        ),
                        None => format!(
                            "target (b): {tracker}: incremental at 5 % / {what} <= {TARGET_INCREMENTAL:.2}: MISS (no incremental checkpoint committed)"
                        ),
                    });
                }
            }
        }
        if let Some(i) = &row.init {
            println!("{:<11} init: {i}", "");
        }
        for w in &row.surprises {
            println!("{:<11} note: {w}", "");
        }
    }
    println!(
        "(full ms, incr ms: the latency the library logged; seq: CKPT_POLICY=sequential; saved: page \
         data the commit line reports; /full: incremental latency over the full one in the same \
         process; /seq: over the sequential policy's full checkpoint)"
    );
    Ok(targets)
}

fn measure_b(s: &Settings, bytes: usize, tracker: &str, seq: &mut HeapProc) -> Result<IncRow> {
    let mut inc = HeapProc::spawn(
        s,
        tracker,
        bytes,
        &[
            (
                "CKPT_DIR",
                store(s, &format!("b-{tracker}")).display().to_string(),
            ),
            ("CKPT_POLICY", "incremental".into()),
            ("CKPT_TRACKER", tracker.into()),
            ("CKPT_CHAIN_MAX", "3".into()),
            ("CKPT_CHAIN_SIZE", "10000".into()),
        ],
    )?;
    let mut row = IncRow {
        init: inc.init.clone(),
        ..IncRow::default()
    };
    for round in 0..s.warmup + s.runs {
        let keep = round >= s.warmup;
        // The two processes alternate, so both see the same disk state and load.
        let q = seq.checkpoint()?;
        let f = inc.checkpoint()?;
        check_kind(&mut row.surprises, &f, "full", "chain base");
        if let Some(e) = &f.failure {
            return Err(format!("{tracker}: full checkpoint failed: {e}").into());
        }
        if keep {
            row.seq.push(q);
            row.full.push(f);
        }
        for (i, &share) in SHARES.iter().enumerate() {
            let pages = inc.dirty(share, (round * 3 + i) as u64)?;
            let t = inc.checkpoint()?;
            if let Some(e) = &t.failure {
                return Err(format!("{tracker}: incremental checkpoint failed: {e}").into());
            }
            check_kind(
                &mut row.surprises,
                &t,
                "incremental",
                &format!("{}% dirty", share / 10),
            );
            if let (Some(c), true) = (&t.commit, keep) {
                let written = (pages * PAGE) as f64 / MIB as f64;
                if let Some(saved) = c.data_mib
                    && c.kind.as_deref() == Some("incremental")
                    && (saved < written * 0.99 || saved > written * 1.5 + 8.0)
                {
                    row.surprises.push(format!(
                        "generation {}: {written:.1} MiB written, but the image holds {saved:.1} MiB of pages",
                        c.generation
                    ));
                }
            }
            if keep {
                row.written_mib
                    .insert(share, (pages * PAGE) as f64 / MIB as f64);
                row.inc.entry(share).or_default().push(t);
            }
        }
    }
    inc.finish()?;
    Ok(row)
}

fn check_kind(notes: &mut Vec<String>, t: &Taken, want: &str, what: &str) {
    let Some(c) = &t.commit else { return };
    let got = c.kind.as_deref().unwrap_or("(no kind logged)");
    if got != want && notes.len() < 6 {
        notes.push(format!(
            "generation {} ({what}) was logged as {got}, expected {want}",
            c.generation
        ));
    }
}

// ----- (c) -----------------------------------------------------------------------------------

fn part_c(s: &Settings) -> Result<Vec<String>> {
    println!();
    println!(
        "(c) application pause of forked checkpoints; reference: the sequential checkpoint's pause \
         of the same heap (its whole latency); {}‰ of the heap written before each checkpoint; \
         {} + {} rounds, the three processes alternating; medians",
        FORK_DIRTY, s.warmup, s.runs
    );
    println!(
        "{:<8} {:<19} {:>10} {:>10} {:>9} {:>10} {:>9}  notes",
        "size", "policy", "paused ms", "caller ms", "/seq", "commit ms", "saved MiB"
    );
    let policies = ["sequential", "forked", "forked-incremental"];
    let mut targets = Vec::new();
    for &mib in &s.fork_mib {
        eprint!("(c) {} ...", size_name(mib));
        let bytes = mib * MIB;
        let mut procs: Vec<(&str, std::result::Result<HeapProc, String>)> = Vec::new();
        for p in policies {
            let r = HeapProc::spawn(
                s,
                p,
                bytes,
                &[
                    (
                        "CKPT_DIR",
                        store(s, &format!("c-{p}")).display().to_string(),
                    ),
                    ("CKPT_POLICY", p.into()),
                    ("CKPT_BUSY", "wait".into()),
                ],
            );
            procs.push((p, r.map_err(|e| e.to_string())));
        }
        let mut takes: BTreeMap<&str, Vec<Taken>> = BTreeMap::new();
        let mut errors: BTreeMap<&str, String> = BTreeMap::new();
        let mut failures: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for round in 0..s.warmup + s.runs {
            for (p, proc_) in procs.iter_mut() {
                let Ok(h) = proc_ else { continue };
                if errors.contains_key(p) {
                    continue;
                }
                let r = h
                    .dirty(FORK_DIRTY, round as u64)
                    .and_then(|_| h.checkpoint());
                match r {
                    Ok(t) => {
                        if let Some(f) = &t.failure {
                            failures.entry(p).or_default().push(f.clone());
                        }
                        if round >= s.warmup {
                            takes.entry(p).or_default().push(t);
                        }
                    }
                    Err(e) => {
                        errors.insert(p, e.to_string());
                    }
                }
            }
        }
        let mut inits = Vec::new();
        for (p, proc_) in procs {
            match proc_ {
                Ok(h) => {
                    if let Some(i) = &h.init {
                        inits.push(format!("{p}: {i}"));
                    }
                    if let Err(e) = h.finish() {
                        errors.entry(p).or_insert_with(|| e.to_string());
                    }
                }
                Err(e) => {
                    errors.insert(p, e);
                }
            }
            let _ = fs::remove_dir_all(s.root.join(format!("c-{p}")));
        }
        eprintln!(" done");
        let committed = |p: &str| -> Vec<Taken> {
            takes
                .get(p)
                .map(|v| v.iter().filter(|t| t.commit.is_some()).cloned().collect())
                .unwrap_or_default()
        };
        let seq_pause = median(
            &committed("sequential")
                .iter()
                .map(|t| t.paused_ms.unwrap_or(t.caller_ms).max(t.caller_ms))
                .collect::<Vec<_>>(),
        );
        for p in policies {
            let ok = committed(p);
            let paused = median(&ok.iter().filter_map(|t| t.paused_ms).collect::<Vec<_>>());
            let caller = median(&ok.iter().map(|t| t.caller_ms).collect::<Vec<_>>());
            let commit_ms = median(&ok.iter().filter_map(logged_ms).collect::<Vec<_>>());
            let saved = median(
                &ok.iter()
                    .filter_map(|t| t.commit.as_ref()?.data_mib)
                    .collect::<Vec<_>>(),
            );
            // The pause the application saw: the larger of what was logged and what the
            // caller measured.
            let pause = match (paused, caller) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let mut notes = Vec::new();
            if let Some(e) = errors.get(p) {
                notes.push(format!("not available: {}", short(e)));
            }
            if let Some(f) = failures.get(p) {
                notes.push(format!("{} failed: {}", f.len(), short(&f[0])));
            }
            if !ok.is_empty() && paused.is_none() {
                notes.push("no `paused X ms` in the log".into());
            }
            if let (Some(a), Some(b)) = (paused, caller)
                && (b - a).abs() > 1.0 + 0.25 * a.max(b)
            {
                notes.push(format!(
                    "logged pause {a:.1} ms but checkpoint_now kept the caller {b:.1} ms"
                ));
            }
            let kinds: Vec<String> = ok
                .iter()
                .filter_map(|t| t.commit.as_ref()?.kind.clone())
                .collect();
            if p == "forked-incremental"
                && !kinds.is_empty()
                && !kinds.iter().any(|k| k == "incremental")
            {
                notes.push(format!("every checkpoint was logged as {}", kinds[0]));
            }
            if p.starts_with("forked")
                && !ok.is_empty()
                && ok.iter().all(|t| {
                    t.commit.as_ref().map(|c| c.pid) == ok[0].commit.as_ref().map(|c| c.pid)
                })
                && ok.len() > 1
            {
                notes.push("every commit line came from the same pid (no writer process?)".into());
            }
            println!(
                "{:<8} {:<19} {:>10} {:>10} {:>9} {:>10} {:>9}  {}",
                size_name(mib),
                p,
                opt(paused, 1),
                opt(caller, 1),
                opt(pause.zip(seq_pause).map(|(a, b)| a / b), 3),
                opt(commit_ms, 1),
                opt(saved, 1),
                notes.join("; ")
            );
            if p != "sequential" && mib == 1024 {
                targets.push(match pause {
                    Some(x) => format!(
                        "target (c): {p} pause at 1 GiB <= {TARGET_PAUSE_MS} ms: {} ({x:.1} ms, {} the sequential pause)",
                        verdict(x <= TARGET_PAUSE_MS),
                        opt(seq_pause.map(|q| x / q), 3)
                    ),
                    None => format!(
                        "target (c): {p} pause at 1 GiB <= {TARGET_PAUSE_MS} ms: MISS (no checkpoint committed)"
                    ),
                });
            }
        }
        for i in inits {
            println!("{:<8} init: {i}", "");
        }
    }
    println!(
        "(paused ms: logged by the library; caller ms: checkpoint_now() as timed by its caller; /seq: \
         the larger of the two over the sequential pause; commit ms: the checkpoint's latency as \
         logged with its commit, written in the background by the forked policies)"
    );
    if !s.fork_mib.contains(&1024) {
        targets.push(format!(
            "target (c): forked pause at 1 GiB <= {TARGET_PAUSE_MS} ms: not measured (quick run; sizes {:?} MiB)",
            s.fork_mib
        ));
    }
    Ok(targets)
}

// ----- (d) -----------------------------------------------------------------------------------

/// One run of an example.
#[derive(Debug, Clone)]
struct Run {
    /// Wall time from spawn to exit.
    secs: f64,
    /// Of which the application thread waited for a CPU (`/proc/PID/schedstat` run_delay).
    waited: f64,
    /// User + system CPU of the example and of the children it reaped (writer processes).
    cpu: f64,
    digest: Option<String>,
    commits: Vec<Commit>,
    pauses: Vec<f64>,
    /// Checkpoints handed to a writer process (`writing in the background` lines).
    background: usize,
    failed: Vec<String>,
    skipped: usize,
    init: Option<String>,
    error: Option<String>,
}

fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .and_then(Path::parent)
        .ok_or("bench binary not in target/<profile>/deps")?
        .to_path_buf())
}

/// `cargo bench --bench policies` builds this bench only: build the examples it runs.
fn build_examples() -> Result<PathBuf> {
    let dir = profile_dir()?;
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--examples", "-q"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // The jobserver descriptors these name were closed (made close-on-exec) at start.
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    if release {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() {
        return Err("cargo build --examples failed".into());
    }
    Ok(dir.join("examples"))
}

fn run_example(s: &Settings, exe: &Path, policy: Option<&str>, interval_ms: u64) -> Result<Run> {
    let mut cmd = Command::new(exe);
    clear_ckpt_env(&mut cmd);
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    if let Some((_, args)) = EXAMPLES.iter().find(|(e, _)| *e == name) {
        cmd.args(args.split(' '));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let dir = store(s, "d-store");
    if let Some(p) = policy {
        cmd.env("CKPT_DIR", &dir)
            .env("CKPT_POLICY", p)
            .env("CKPT_INTERVAL", format!("{interval_ms}ms"))
            .env("CKPT_LOG", &s.log)
            .env("CKPT_RESTORE", "never");
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let out = lines_of(child.stdout.take().ok_or("no stdout")?);
    let err = lines_of(child.stderr.take().ok_or("no stderr")?);
    // A watchdog kills a hung run; the exit is awaited without reaping, so the pid it may kill
    // stays this child's until the watchdog is told to stand down.
    let (stop, stopped) = mpsc::channel::<()>();
    let pid = child.id();
    let dog = std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(RUN_TIMEOUT) {
            sys::kill(pid);
            return true;
        }
        false
    });
    sys::wait_exit(&child)?;
    let secs = t0.elapsed().as_secs_f64();
    let _ = stop.send(());
    let killed = dog.join().unwrap_or(false);
    // Time the main (application) thread was runnable but waiting for a CPU: other work on a
    // shared machine. Read from the zombie before reaping it.
    let waited = fs::read_to_string(format!("/proc/{}/schedstat", child.id()))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9);
    let (status, cpu) = sys::wait_rusage(&child)?;
    // A background writer may still hold stderr: wait for it (bounded).
    let mut run = Run {
        secs,
        waited,
        cpu,
        digest: None,
        commits: Vec::new(),
        pauses: Vec::new(),
        background: 0,
        failed: Vec::new(),
        skipped: 0,
        init: None,
        error: None,
    };
    // A background writer may still hold stdout and stderr: read them until it lets go,
    // within a bound.
    let deadline = Instant::now() + COMMIT_TIMEOUT;
    while let Ok(l) = out.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if let Some(d) = l.strip_prefix("digest ") {
            run.digest = Some(d.to_string());
        }
    }
    let mut other = Vec::new();
    let (mut commit_pauses, mut background_pauses) = (Vec::new(), Vec::new());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = match err.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => break,
        };
        if s.verbose {
            eprintln!(
                "    [{}] {l}",
                exe.file_name().unwrap_or_default().to_string_lossy()
            );
        }
        match parse_event(&l) {
            Event::Committed(c) => {
                // A checkpoint taken in the foreground logs its pause only in the commit line
                // (and before the policy work the line had no pause: all of it was one).
                commit_pauses.extend(c.paused_ms.or(c.ms));
                run.commits.push(c);
            }
            Event::Background { paused_ms } => {
                run.background += 1;
                background_pauses.extend(paused_ms);
            }
            Event::Failed(m) => run.failed.push(m),
            Event::Skipped(_) => run.skipped += 1,
            Event::Init(m) => run.init = Some(m),
            Event::Other(l) => other.push(l),
        }
    }
    // A background checkpoint's commit line is the writer's; its pause is in the handover line.
    run.pauses = if run.background > 0 {
        background_pauses
    } else {
        commit_pauses
    };
    let _ = fs::remove_dir_all(&dir);
    if killed {
        run.error = Some(format!("still running after {RUN_TIMEOUT:?}; killed"));
    } else if !status.success() {
        run.error = Some(format!(
            "exited with {status}: {}",
            short(
                &other
                    .iter()
                    .rev()
                    .take(3)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        ));
    }
    Ok(run)
}

fn part_d(s: &Settings) -> Result<()> {
    eprint!("(d) building the examples ...");
    let dir = build_examples()?;
    eprintln!(" done");
    let mut configs: Vec<Option<String>> = vec![None];
    configs.extend(s.policies.iter().cloned().map(Some));
    // results[example][config index] = runs
    let mut results: Vec<(String, u64, Vec<Vec<Run>>)> = Vec::new();
    for ex in &s.examples {
        let exe = dir.join(ex);
        if !exe.exists() {
            return Err(format!("example {ex} not found at {}", exe.display()).into());
        }
        // The interval: the paper took 4-8 checkpoints per run; aim at `checkpoints`.
        eprint!("(d) {ex}: calibrating ...");
        let base = run_example(s, &exe, None, 0)?;
        if let Some(e) = &base.error {
            return Err(format!("{ex} without checkpoints: {e}").into());
        }
        let interval = s.interval_ms.unwrap_or_else(|| {
            let ms = base.time() * 1e3 / (s.checkpoints as f64 + 1.0);
            ((ms / 10.0).floor() as u64 * 10).max(50)
        });
        eprintln!(" {:.2} s, checkpoint every {interval} ms", base.secs);
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
        runs[0].push(base);
        results.push((ex.clone(), interval, runs));
    }
    for rep in 0..s.example_runs {
        for (ex, interval, runs) in results.iter_mut() {
            eprint!("(d) run {}/{}: {ex}", rep + 1, s.example_runs);
            let exe = dir.join(&*ex);
            // Rotate the order each repetition, so no configuration always follows another.
            let n = configs.len();
            for k in 0..n {
                let i = (k + rep) % n;
                if i == 0 && rep == 0 {
                    continue; // the calibration run is this repetition's baseline
                }
                eprint!(" {}", configs[i].as_deref().unwrap_or("none"));
                let r = run_example(s, &exe, configs[i].as_deref(), *interval)?;
                runs[i].push(r);
            }
            eprintln!();
        }
    }
    print_d(s, &configs, &results);
    Ok(())
}

impl Run {
    /// Run time without the waits for a CPU.
    fn time(&self) -> f64 {
        self.secs - self.waited
    }
}

fn best(v: impl Iterator<Item = f64>) -> Option<f64> {
    v.min_by(f64::total_cmp)
}

fn print_d(s: &Settings, configs: &[Option<String>], results: &[(String, u64, Vec<Vec<Run>>)]) {
    println!();
    println!(
        "(d) checkpoint overhead: extra run time of each example checkpointed every N ms (about {} \
         checkpoints per run) over the same example without checkpoints; local store on {}. Run \
         time = wall time from spawn to exit minus the time the application's thread waited for a \
         CPU (schedstat run_delay: other work on a shared machine), best of {} run(s) each; \
         release builds. Shaped like the paper's Table III (its D columns: local disk); cells: \
         overhead in seconds (% of the no-checkpoint run time).",
        s.checkpoints,
        s.root.display(),
        s.example_runs
    );
    println!();
    let mut head = "| example (SIZE STEPS) | no checkpoint | every |".to_string();
    let mut rule = "| --- | ---: | ---: |".to_string();
    for c in &configs[1..] {
        head += &format!(" {} |", c.as_deref().unwrap_or(""));
        rule += " ---: |";
    }
    println!("{head}");
    println!("{rule}");
    let mut notes: Vec<String> = Vec::new();
    let mut detail: Vec<String> = Vec::new();
    // Background policies whose checkpoints were all taken in the foreground: the examples.
    let mut foreground: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut inits: BTreeMap<String, String> = BTreeMap::new();
    for (ex, interval, runs) in results {
        let base_runs = &runs[0];
        let base = best(base_runs.iter().map(Run::time)).unwrap_or(0.0);
        let base_wall = best(base_runs.iter().map(|r| r.secs)).unwrap_or(0.0);
        let base_cpu = best(base_runs.iter().map(|r| r.cpu)).unwrap_or(0.0);
        let digest = base_runs.first().and_then(|r| r.digest.clone());
        let args = EXAMPLES
            .iter()
            .find(|(e, _)| e == ex)
            .map_or(String::new(), |(_, a)| format!(" ({a})"));
        let mut line = format!("| {ex}{args} | {base:.2} s | {interval} ms |");
        let mut dline = format!("| {ex} | {base_cpu:.2} s |");
        for (i, c) in configs.iter().enumerate().skip(1) {
            let c = c.as_deref().unwrap_or("");
            let rs = &runs[i];
            if let Some(e) = rs.iter().find_map(|r| r.error.as_deref()) {
                notes.push(format!("{ex}, {c}: {}", short(e)));
                line += " n/a |";
                dline += " n/a |";
                continue;
            }
            let t = best(rs.iter().map(Run::time)).unwrap_or(0.0);
            let wall = best(rs.iter().map(|r| r.secs)).unwrap_or(0.0);
            let cpu = best(rs.iter().map(|r| r.cpu)).unwrap_or(0.0);
            let over = t - base;
            let mut mark = String::new();
            if rs.iter().any(|r| r.digest != digest) {
                mark += " wrong digest!";
                notes.push(format!(
                    "{ex}, {c}: the digest differs from the run without checkpoints"
                ));
            }
            if rs.iter().all(|r| r.commits.is_empty()) {
                mark += " no checkpoint";
            }
            line += &format!(" {over:+.2} s ({:+.0} %){mark} |", over / base * 100.0);
            // The runs' medians of what the log says.
            let m = |f: &dyn Fn(&Run) -> f64| {
                median(&rs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
            };
            let full = m(&|r| {
                r.commits
                    .iter()
                    .filter(|c| c.kind.as_deref() != Some("incremental"))
                    .count() as f64
            });
            let inc = m(&|r| {
                r.commits
                    .iter()
                    .filter(|c| c.kind.as_deref() == Some("incremental"))
                    .count() as f64
            });
            let pause_sum = m(&|r| r.pauses.iter().sum::<f64>()) + 0.0;
            let count = m(&|r| r.commits.len() as f64);
            let bg = m(&|r| r.background as f64);
            let mib = m(&|r| r.commits.iter().filter_map(|c| c.data_mib).sum::<f64>());
            let fails = m(&|r| r.failed.len() as f64);
            let skips = m(&|r| r.skipped as f64);
            dline += &format!(
                " {full:.0}+{inc:.0}{}, {mib:.0} MiB, {pause_sum:.0} ms, {:+.0} ms/ckpt, cpu {:+.2} s, wall {:+.2} s{}{} |",
                if bg > 0.0 {
                    format!(" ({bg:.0} in the background)")
                } else {
                    String::new()
                },
                over * 1e3 / count.max(1.0),
                cpu - base_cpu,
                wall - base_wall,
                if fails > 0.0 {
                    format!(", {fails:.0} failed")
                } else {
                    String::new()
                },
                if skips > 0.0 {
                    format!(", {skips:.0} skipped")
                } else {
                    String::new()
                },
            );
            if (c.starts_with("forked") || c.starts_with("buffered"))
                && rs
                    .iter()
                    .all(|r| r.background == 0 && !r.commits.is_empty())
            {
                foreground
                    .entry(c.to_string())
                    .or_default()
                    .push(ex.clone());
            }
            if let Some(f) = rs.iter().find_map(|r| r.failed.first()) {
                notes.push(format!("{ex}, {c}: {}", short(f)));
            }
            if let Some(i) = rs.first().and_then(|r| r.init.as_ref()) {
                inits.entry(c.to_string()).or_insert_with(|| i.clone());
            }
        }
        println!("{line}");
        detail.push(dline);
    }
    println!();
    println!(
        "What the checkpoints were (medians per run): checkpoints committed, full+incremental; page \
         data written; sum of the pauses the library logged; the overhead above per checkpoint \
         (the timer is wall-clock, so a loaded machine takes more checkpoints per run); extra CPU \
         (user+system, best run) of the example and the writer processes it reaped; extra wall \
         time (best run, uncorrected):"
    );
    println!();
    let mut head = "| example | CPU, no checkpoint |".to_string();
    let mut rule = "| --- | ---: |".to_string();
    for c in &configs[1..] {
        head += &format!(" {} |", c.as_deref().unwrap_or(""));
        rule += " ---: |";
    }
    println!("{head}");
    println!("{rule}");
    for d in detail {
        println!("{d}");
    }
    for (c, exs) in foreground {
        notes.push(format!(
            "{c}: no `writing in the background` line in any run of {}: every checkpoint was taken \
             in the foreground",
            exs.join(", ")
        ));
    }
    notes.dedup();
    println!();
    for n in notes.iter().take(40) {
        println!("- {n}");
    }
    for (c, i) in inits {
        println!("- init, {c}: {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Header and platform odds and ends.

fn print_header(s: &Settings) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let thp = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let (src, fstype) = filesystem_of(&s.root);
    println!(
        "ckpt policies benchmark{}: {cores} cores, Linux {}, load {} (1/5/15 min), THP {}",
        if s.quick { " (quick)" } else { "" },
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        thp.trim()
    );
    println!("stores:  {} on {src} ({fstype})", s.root.display());
    if fstype == "tmpfs" {
        println!(
            "warning: the store is on tmpfs; set CKPT_BENCH_DIR to a directory on a real disk"
        );
    }
}

/// (source, fstype) of the mount holding `path`.
fn filesystem_of(path: &Path) -> (String, String) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, (String, String))> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|&x| x == "-") else {
            continue;
        };
        let (Some(mnt), Some(ty), Some(src)) = (f.get(4), f.get(dash + 1), f.get(dash + 2)) else {
            continue;
        };
        if path.starts_with(mnt) && best.as_ref().is_none_or(|(l, _)| mnt.len() >= *l) {
            best = Some((mnt.len(), (src.to_string(), ty.to_string())));
        }
    }
    best.map(|(_, v)| v)
        .unwrap_or_else(|| ("?".into(), "?".into()))
}

mod sys {
    //! `fcntl` on inherited descriptors, `wait4` for a child's CPU time.
    //!
    //! # Safety
    //!
    //! `F_GETFD`/`F_SETFD` take no pointers; a descriptor closed since it was listed fails with
    //! `EBADF` and is skipped. `wait4` writes only into the locals it is given.
    #![allow(unsafe_code)]

    /// SIGKILL to `pid`.
    pub fn kill(pid: u32) {
        // SAFETY: no pointers; the caller guarantees `pid` is its own unreaped child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }

    /// Waits until `child` has exited without reaping it, so that its `/proc` entry (a zombie
    /// now) can still be read.
    pub fn wait_exit(child: &std::process::Child) -> std::io::Result<()> {
        loop {
            // SAFETY: all-zero is a valid `siginfo_t`; the kernel writes into this local.
            let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
            // SAFETY: `info` is a live local; `child` is our unreaped child.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    child.id(),
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Reaps `child` with `wait4`: its exit status and the user + system CPU seconds it and
    /// the children it waited for used.
    pub fn wait_rusage(
        child: &std::process::Child,
    ) -> std::io::Result<(std::process::ExitStatus, f64)> {
        use std::os::unix::process::ExitStatusExt;
        let mut status = 0;
        // SAFETY: all-zero is a valid `rusage` (plain integers).
        let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
        loop {
            // SAFETY: `status` and `ru` are live locals the kernel writes; `child` is our
            // unreaped child (std never reaps it unless asked to wait).
            let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
            if r >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok((
            std::process::ExitStatus::from_raw(status),
            secs(ru.ru_utime) + secs(ru.ru_stime),
        ))
    }

    /// Marks every inherited descriptor above stderr close-on-exec, so the checkpointed
    /// children hold only fds 0-2 (the checkpointer refuses pipes; cargo may pass a jobserver
    /// pipe).
    pub fn cloexec_inherited() -> std::io::Result<()> {
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: see the module comment.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
        Ok(())
    }
}

use sys::cloexec_inherited;
