//! `eval`: the paper's evaluation reproduced (issue 6, item 4). Every example workload under
//! the paper's four checkpoint policies (sequential, incremental, sequential + fork,
//! incremental + fork), checkpointing into remote memory (three `rmem-server`s, parity) and
//! into the local disk; execution time with and without checkpoints, the overhead, the
//! improvement ratio (1 - R/D) x 100, checkpoint sizes and the latency of every checkpoint:
//! the paper's Tables III-VI as markdown, and its Figures 5-6 and 9-10 as SVG, in `results/`.
//!
//! Two regimes: `paper` emulates the paper's hardware (100 Mb/s links, a 5 MB/s disk; see
//! `stage.rs`), `unshaped` is this machine as it is. Run:
//!
//! ```sh
//! cargo run -p eval --release -- [--quick] [--regime paper|unshaped|both]
//! ```
//!
//! See `docs/evaluation.md`. When the library does not understand `CKPT_STORE=rmem://...`
//! yet, the remote-memory half is reported as not measured and the local-disk half still runs.

mod logline;
mod report;
mod run;
mod stage;
mod svg;
mod sys;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use clap::{Parser, ValueEnum};

use run::{Checkpointing, POLICIES, RemoteSupport, StoreKind, Workload, WorkloadRuns};
use stage::{Bins, Regime, Shape, Stage};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Set by SIGINT/SIGTERM/SIGHUP: the current run is killed, the stage taken down, and what was
/// measured so far is written out.
pub static INTERRUPTED: LazyLock<Arc<AtomicBool>> =
    LazyLock::new(|| Arc::new(AtomicBool::new(false)));

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RegimeArg {
    Paper,
    Unshaped,
    Both,
}

/// The paper's evaluation (Tables III-VI), reproduced on this machine.
#[derive(Debug, Parser)]
#[command(name = "eval", version)]
struct Cli {
    /// Smaller workloads and fewer checkpoints: both regimes in under ten minutes.
    #[arg(long)]
    quick: bool,
    /// Which machine: the paper's emulated (100 Mb/s, 5 MB/s disk), this one as is, or both.
    #[arg(long, value_enum, default_value = "both")]
    regime: RegimeArg,
    /// Also run the C (and, with gfortran, Fortran) examples under LD_PRELOAD.
    #[arg(long)]
    with_c: bool,
    /// Only these workloads (comma-separated: lu,ocean,raytrace,volrend,water,water_spatial,
    /// apsp,matmul[,lu-c...]).
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Only these policies (sequential,incremental,forked,forked-incremental).
    #[arg(long, value_delimiter = ',')]
    policies: Option<Vec<String>>,
    /// Runs of every configuration; the fastest (CPU-wait corrected) is reported.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Checkpoints wanted per run (interval = run time without checkpoints / (N + 1)); default
    /// 3 with --quick, else 5 (the paper took 4-8).
    #[arg(long)]
    checkpoints: Option<usize>,
    /// Local disk write limit of the paper regime, MB/s.
    #[arg(long, default_value_t = 5.0)]
    disk_mbs: f64,
    /// Link rate of the paper regime (tc syntax).
    #[arg(long, default_value = "100mbit")]
    net_rate: String,
    /// One-way delay added per host link in the paper regime, where the kernel has netem.
    #[arg(long, default_value = "100us")]
    net_delay: String,
    /// Where the tables and plots go (a folder per regime inside).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Print the library's log lines as they come.
    #[arg(long)]
    verbose: bool,
}

/// `SIZE STEPS` of each Rust example: quick and full for the paper regime (small heaps, runs of
/// about 4 s and 30 s, so that a 5 MB/s disk takes a fraction of an interval), quick and full
/// for the unshaped one (the examples' defaults, about 2.5 s, and about 10 s).
const SIZES: [(&str, &str, [&str; 4]); 8] = [
    ("lu", "LU", ["640 220", "1280 200", "2048 2", "3072 2"]),
    (
        "ocean",
        "Ocean",
        ["256 3300", "512 6200", "1024 100", "1024 400"],
    ),
    (
        "raytrace",
        "Raytrace",
        ["360 30", "768 50", "1024 2", "2048 2"],
    ),
    (
        "volrend",
        "Volrend",
        ["96 400", "136 1100", "192 32", "256 56"],
    ),
    (
        "water",
        "Water-Nsquared",
        ["8192 6", "16384 12", "1536 100", "3072 100"],
    ),
    (
        "water_spatial",
        "Water-Spatial",
        ["8000 230", "24000 600", "40000 28", "100000 40"],
    ),
    (
        "apsp",
        "All-Pair",
        ["640 28", "1280 26", "1792 1", "2816 1"],
    ),
    (
        "matmul",
        "Matrix",
        ["360 550", "768 420", "1280 8", "2048 4"],
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The network reference's two ends (run by the stage in the namespaces).
    let internal = match args.get(1).map(String::as_str) {
        Some("__sink") => Some(stage::sink(args.get(2).map_or("", String::as_str))),
        Some("__source") => Some(stage::source(
            args.get(2).map_or("", String::as_str),
            args.get(3).map_or("0", String::as_str),
        )),
        _ => None,
    };
    if let Some(r) = internal {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("eval: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    match main_(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("eval: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main_(cli: Cli) -> Result<()> {
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        // A second signal ends the harness at once (without cleaning up).
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&INTERRUPTED))?;
        signal_hook::flag::register(sig, Arc::clone(&INTERRUPTED))?;
    }
    sys::cloexec_inherited()?;
    let root = workspace_root();
    let started = Instant::now();
    let built = build(&root, &cli)?;
    let work = built.profile.join("eval-work");
    std::fs::create_dir_all(&work)?;
    let regimes: Vec<Regime> = match cli.regime {
        RegimeArg::Paper => vec![Regime::Paper],
        RegimeArg::Unshaped => vec![Regime::Unshaped],
        RegimeArg::Both => vec![Regime::Unshaped, Regime::Paper],
    };
    let out = if cli.out.is_absolute() {
        cli.out.clone()
    } else {
        root.join(&cli.out)
    };
    let mut summary = Vec::new();
    for regime in regimes {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        let r = run_regime(&cli, regime, &built, &work)?;
        let dir = out.join(format!(
            "{}{}",
            regime.name(),
            if cli.quick { "-quick" } else { "" }
        ));
        report::write(&dir, &r)?;
        eprintln!("[{}] written to {}", regime.name(), dir.display());
        println!("{}", report::key_table(&r));
        summary.push(dir);
    }
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "eval: done in {:.0} s; results: {}",
        started.elapsed().as_secs_f64(),
        summary
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted: the results written are partial".into());
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// What the build produced.
#[derive(Debug)]
struct Built {
    profile: PathBuf,
    workloads: Vec<Workload>,
    bins: Bins,
    helper: Option<PathBuf>,
    notes: Vec<String>,
}

/// Builds the examples, the servers and (if the workspace has it) the store helper, with the
/// profile of this binary.
fn build(root: &Path, cli: &Cli) -> Result<Built> {
    let me = std::env::current_exe()?;
    let profile = me
        .parent()
        .ok_or("the harness binary has no directory")?
        .to_path_buf();
    let release = profile.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_build = |args: &[&str]| -> bool {
        let mut c = Command::new(&cargo);
        c.arg("build").args(args).arg("-q").current_dir(root);
        // The jobserver descriptors these name were made close-on-exec at start.
        c.env_remove("CARGO_MAKEFLAGS")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS");
        if release {
            c.arg("--release");
        }
        c.status().is_ok_and(|s| s.success())
    };
    let mut notes = Vec::new();
    if !release {
        notes.push("built with the dev profile (opt-level 1): use --release".into());
    }
    eprintln!("eval: building the examples, rmem-server and ckpt-rmem ...");
    if !cargo_build(&["-p", "ckpt-suite", "--examples", "-p", "ckpt", "--lib"]) {
        return Err("cargo build of the examples failed".into());
    }
    let server = cargo_build(&["-p", "rmem-server", "--bin", "rmem-server"])
        .then(|| profile.join("rmem-server"))
        .filter(|p| p.exists());
    let helper = (root.join("ckpt-rmem/Cargo.toml").exists() && cargo_build(&["-p", "ckpt-rmem"]))
        .then(|| profile.join("ckpt-rmem"))
        .filter(|p| p.exists());
    if helper.is_none() {
        notes.push("ckpt-rmem (the remote store's helper) is not in this workspace yet".into());
    }
    let quick = usize::from(cli.quick);
    let mut workloads = Vec::new();
    for (name, paper, sizes) in SIZES {
        // Paper sizes for the paper regime are chosen per regime later; keep both.
        let _ = sizes[quick];
        workloads.push(Workload {
            name: name.into(),
            paper,
            exe: profile.join("examples").join(name),
            args: Vec::new(),
            preload: None,
        });
    }
    if cli.with_c {
        let lib = profile.join("libckpt.so");
        let cdir = profile.join("eval-c");
        let ok = Command::new("make")
            .args(["-s", "-C"])
            .arg(root.join("examples/c"))
            .arg(format!("OUT={}", cdir.display()))
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            // Not every kernel has a C version (volrend and water_spatial do not).
            for &(name, paper, _) in SIZES.iter().filter(|(n, _, _)| cdir.join(n).exists()) {
                workloads.push(Workload {
                    name: format!("{name}-c"),
                    paper,
                    exe: cdir.join(name),
                    args: Vec::new(),
                    preload: Some(lib.clone()),
                });
            }
        } else {
            notes.push("the C examples did not build (make, cc)".into());
        }
        let fdir = profile.join("eval-f90");
        let has_gfortran = Command::new("gfortran").arg("--version").output().is_ok();
        if has_gfortran
            && Command::new("make")
                .args(["-s", "-C"])
                .arg(root.join("examples/fortran"))
                .arg(format!("OUT={}", fdir.display()))
                .status()
                .is_ok_and(|s| s.success())
        {
            workloads.push(Workload {
                name: "matmul-f90".into(),
                paper: "Matrix",
                exe: fdir.join("matmul"),
                args: Vec::new(),
                preload: Some(lib),
            });
        } else {
            notes.push("the Fortran example was not built (gfortran missing or failed)".into());
        }
    }
    if let Some(only) = &cli.workloads {
        workloads.retain(|w| only.contains(&w.name));
        if workloads.is_empty() {
            return Err(format!("--workloads {only:?}: none of these exists").into());
        }
    }
    Ok(Built {
        bins: Bins {
            rmem_server: server,
            me,
        },
        profile,
        workloads,
        helper,
        notes,
    })
}

/// `SIZE STEPS` of workload `name` in `regime`.
fn size_args(name: &str, regime: Regime, quick: bool) -> Vec<String> {
    let base = name.trim_end_matches("-c").trim_end_matches("-f90");
    let col = match (regime, quick) {
        (Regime::Paper, true) => 0,
        (Regime::Paper, false) => 1,
        (Regime::Unshaped, true) => 2,
        (Regime::Unshaped, false) => 3,
    };
    SIZES
        .iter()
        .find(|(n, _, _)| *n == base)
        .map(|(_, _, s)| s[col].split(' ').map(str::to_string).collect())
        .unwrap_or_default()
}

/// Everything measured in one regime.
#[derive(Debug)]
pub struct RegimeResult {
    pub regime: Regime,
    pub quick: bool,
    pub notes: Vec<String>,
    pub refs: Vec<(String, String)>,
    pub remote: RemoteSupport,
    pub workloads: Vec<WorkloadRuns>,
    pub checkpoints: usize,
    pub reps: usize,
    pub secs: f64,
    pub date: String,
    pub machine: String,
    pub interrupted: bool,
}

fn run_regime(cli: &Cli, regime: Regime, built: &Built, work: &Path) -> Result<RegimeResult> {
    let t0 = Instant::now();
    let name = regime.name();
    eprintln!("[{name}] setting up ...");
    // Room for two generations and an incremental chain of the largest image, with parity.
    let capacity = "512M";
    let mut stage = match regime {
        Regime::Unshaped => Stage::unshaped(work, &built.bins, capacity)?,
        Regime::Paper => Stage::paper(
            work,
            &built.bins,
            &Shape {
                disk_bps: (cli.disk_mbs * 1e6) as u64,
                net_rate: cli.net_rate.clone(),
                net_delay: cli.net_delay.clone(),
                disk_mib: 2048,
            },
            capacity,
        )?,
    };
    for n in &stage.notes {
        eprintln!("[{name}] {n}");
    }
    let (disk_mib, net_mib) = match (regime, cli.quick) {
        (Regime::Paper, true) => (8, 8),
        (Regime::Paper, false) => (32, 32),
        (Regime::Unshaped, _) => (256, 256),
    };
    stage.measure_references(&built.bins.me, disk_mib, net_mib);
    for (k, v) in &stage.refs {
        eprintln!("[{name}] reference: {k}: {v}");
    }
    let checkpoints = cli.checkpoints.unwrap_or(if cli.quick { 3 } else { 5 });
    let policies: Vec<&str> = POLICIES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| {
            cli.policies
                .as_ref()
                .is_none_or(|only| only.iter().any(|o| o == p))
        })
        .collect();
    let mut extra_env: Vec<(String, String)> = Vec::new();
    if let Some(h) = &built.helper {
        extra_env.push(("CKPT_RMEM_HELPER".into(), h.display().to_string()));
    }
    let mut pool_no = 0u32;
    let mut remote_ck = |policy: &str, interval_ms: u64| -> Checkpointing {
        pool_no += 1;
        let local = stage_disk(&stage).join(format!("rmem-local-{pool_no}"));
        Checkpointing {
            policy: policy.into(),
            interval_ms,
            var: (
                "CKPT_STORE",
                format!(
                    "rmem://{}?redundancy=parity&key={}&datakey={}&dir={}&pool=ev{}-{pool_no}",
                    stage.server_addrs().join(","),
                    stage.key.display(),
                    stage.data_key.display(),
                    local.display(),
                    &name[..1],
                ),
            ),
            scratch: Some(local),
        }
    };
    // Does the library understand rmem:// yet?
    let probe = Workload {
        name: "lu".into(),
        paper: "LU",
        exe: built.profile.join("examples/lu"),
        args: vec!["384".into(), "150".into()],
        preload: None,
    };
    let remote = run::probe_remote(&stage, &probe, &remote_ck("sequential", 150), &extra_env);
    match &remote {
        RemoteSupport::Yes => eprintln!("[{name}] remote memory: CKPT_STORE=rmem:// works"),
        RemoteSupport::No(why) => {
            eprintln!("[{name}] remote memory: not measured ({why})")
        }
    }
    let stores: Vec<StoreKind> = match remote {
        RemoteSupport::Yes => vec![StoreKind::Disk, StoreKind::Remote],
        RemoteSupport::No(_) => vec![StoreKind::Disk],
    };
    let mut results: Vec<WorkloadRuns> = Vec::new();
    'workloads: for w in &built.workloads {
        let w = Workload {
            args: size_args(&w.name, regime, cli.quick),
            ..w.clone()
        };
        eprint!("[{name}] {} {}: ", w.name, w.args.join(" "));
        let base = match run::run(&stage, &w, None, &[], cli.verbose) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{e}");
                break;
            }
        };
        if let Some(e) = &base.error {
            eprintln!("without checkpoints: {e}");
            continue;
        }
        let interval_ms =
            ((base.time() * 1e3 / (checkpoints as f64 + 1.0) / 10.0).floor() as u64 * 10).max(100);
        eprintln!(
            "{:.2} s without checkpoints, a checkpoint every {interval_ms} ms",
            base.time()
        );
        let mut wr = WorkloadRuns {
            w: w.clone(),
            interval_ms,
            base: vec![base],
            runs: Default::default(),
        };
        let mut configs: Vec<Option<(StoreKind, &str)>> = vec![None];
        for p in &policies {
            for s in &stores {
                configs.push(Some((*s, p)));
            }
        }
        for rep in 0..cli.reps {
            let n = configs.len();
            for k in 0..n {
                // Rotate the order each repetition, so no configuration always follows another.
                // The calibration run counts as one run without checkpoints; each repetition
                // adds one more (the fastest is the reference).
                let cfg = configs[(k + rep) % n];
                if INTERRUPTED.load(Ordering::SeqCst) {
                    results.push(wr);
                    break 'workloads;
                }
                let ck = cfg.map(|(s, p)| match s {
                    StoreKind::Disk => Checkpointing {
                        policy: p.into(),
                        interval_ms,
                        var: (
                            "CKPT_DIR",
                            stage.disk_dir.join("store").display().to_string(),
                        ),
                        scratch: Some(stage.disk_dir.join("store")),
                    },
                    StoreKind::Remote => remote_ck(p, interval_ms),
                });
                let r = match run::run(&stage, &w, ck.as_ref(), &extra_env, cli.verbose) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("[{name}] {}: {e}", w.name);
                        results.push(wr);
                        break 'workloads;
                    }
                };
                let label = match cfg {
                    None => "none".to_string(),
                    Some((s, p)) => format!("{}/{p}", s.short()),
                };
                let ok = r.error.is_none() && r.digest.as_deref() == wr.digest();
                eprintln!(
                    "[{name}]   {label}: {:.2} s ({:+.2} s), {} checkpoints{}",
                    r.time(),
                    r.time() - wr.base_time().unwrap_or(0.0),
                    r.commits.len(),
                    if ok {
                        String::new()
                    } else {
                        format!(
                            ", FAILED: {}",
                            r.error.clone().unwrap_or_else(|| "wrong digest".into())
                        )
                    }
                );
                match cfg {
                    None => wr.base.push(r),
                    Some((s, p)) => wr.runs.entry((s, p.to_string())).or_default().push(r),
                }
            }
        }
        results.push(wr);
    }
    let mut notes = stage.notes.clone();
    notes.extend(built.notes.iter().cloned());
    let refs = stage.refs.clone();
    drop(stage);
    Ok(RegimeResult {
        regime,
        quick: cli.quick,
        notes,
        refs,
        remote,
        workloads: results,
        checkpoints,
        reps: cli.reps,
        secs: t0.elapsed().as_secs_f64(),
        date: Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        machine: machine(),
        interrupted: INTERRUPTED.load(Ordering::SeqCst),
    })
}

fn stage_disk(stage: &Stage) -> PathBuf {
    stage.disk_dir.clone()
}

/// Cores, kernel, load: the header of every report.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(String::new(), |kb| format!(", {:.1} GiB", kb / 1048576.0));
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    format!(
        "{cores} cores{mem}, Linux {}, THP {}, load {} at the end",
        kernel.trim(),
        thp.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
