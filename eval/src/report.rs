//! The paper's Tables III-VI (and its Figures 5-10 as numbers and SVG) from the runs of one
//! regime, as `report.md`, `overhead.svg`, `latency-*.svg` and `runs.csv` in one folder.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::run::{POLICIES, RemoteSupport, Run, StoreKind, WorkloadRuns};
use crate::stage::{PoolUsage, Regime};
use crate::svg::{self, Series};
use crate::{RegimeResult, Result};

const STORES: [StoreKind; 2] = [StoreKind::Remote, StoreKind::Disk];
const COLORS: [&str; 4] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"];

fn f2(v: Option<f64>) -> String {
    v.map_or_else(|| "n/m".into(), |x| format!("{x:.2}"))
}

fn f1(v: Option<f64>) -> String {
    v.map_or_else(|| "n/m".into(), |x| format!("{x:.1}"))
}

fn f0(v: Option<f64>) -> String {
    v.map_or_else(|| "n/m".into(), |x| format!("{x:.0}"))
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

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

/// `(1 - a/b) x 100`.
fn improvement(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b.abs() > 1e-9).then(|| (1.0 - a / b) * 100.0)
}

fn remote_measured(r: &RegimeResult) -> bool {
    matches!(r.remote, RemoteSupport::Yes)
}

/// Table III: the overhead into remote memory over the overhead into the local disk.
pub fn table3(r: &RegimeResult) -> String {
    let mut s = String::new();
    s.push_str("| AP |");
    for (_, short) in POLICIES {
        let _ = write!(s, " {short} R/D (s) | {short} % |");
    }
    s.push_str("\n| --- |");
    for _ in POLICIES {
        s.push_str(" ---: | ---: |");
    }
    s.push('\n');
    for w in &r.workloads {
        let _ = write!(s, "| {} |", label(w));
        for (p, _) in POLICIES {
            let rr = w.overhead(StoreKind::Remote, p);
            let dd = w.overhead(StoreKind::Disk, p);
            let _ = write!(s, " {}/{} | {} |", f2(rr), f2(dd), f1(improvement(rr, dd)));
        }
        s.push('\n');
    }
    s
}

/// Table III again, from the pauses the library logged instead of the run times: the direct
/// cost only (no copy-on-write faults, no writer competing for a CPU), but free of the run-to-run
/// noise of a shared machine, which hides overheads of a few percent.
pub fn table3_pauses(r: &RegimeResult) -> String {
    let mut s = String::new();
    s.push_str("| AP |");
    for (_, short) in POLICIES {
        let _ = write!(s, " {short} R/D (s) | {short} % |");
    }
    s.push_str("\n| --- |");
    for _ in POLICIES {
        s.push_str(" ---: | ---: |");
    }
    s.push('\n');
    for w in &r.workloads {
        let _ = write!(s, "| {} |", label(w));
        for (p, _) in POLICIES {
            let sum = |st: StoreKind| w.cell(st, p).map(|x| x.pauses.iter().sum::<f64>() / 1e3);
            let (rr, dd) = (sum(StoreKind::Remote), sum(StoreKind::Disk));
            let _ = write!(s, " {}/{} | {} |", f2(rr), f2(dd), f1(improvement(rr, dd)));
        }
        s.push('\n');
    }
    s
}

/// `% (MiB)` of the servers' memory in use.
fn util(u: Option<PoolUsage>) -> String {
    match u {
        None => "n/m".into(),
        Some(u) => format!(
            "{} ({:.1})",
            f1(u.percent()),
            u.used as f64 / f64::from(1 << 20)
        ),
    }
}

/// What the servers lent in the remote runs, for the text: " (3 x 512 MiB)".
fn lent_note(r: &RegimeResult) -> String {
    let cap = r
        .workloads
        .iter()
        .flat_map(|w| w.runs.values().flatten())
        .find_map(|x| x.pool_before.map(|u| u.capacity));
    cap.map_or(String::new(), |c| {
        format!(" ({:.0} MiB in all)", c as f64 / f64::from(1 << 20))
    })
}

fn label(w: &WorkloadRuns) -> String {
    format!("{} ({})", w.w.paper, w.w.name)
}

/// The table printed at the end of a run.
pub fn key_table(r: &RegimeResult) -> String {
    let mut s = format!(
        "\n{} regime{}: Table III, checkpoint overhead R/D in seconds and (1 - R/D) x 100{}\n\n",
        r.regime.name(),
        if r.quick { " (quick)" } else { "" },
        match &r.remote {
            RemoteSupport::Yes => String::new(),
            RemoteSupport::No(why) => format!("\nremote memory: not measured ({why})"),
        }
    );
    s.push_str(&table3(r));
    s.push_str("\nThe same from the pauses the library logged (sum per run, s):\n\n");
    s.push_str(&table3_pauses(r));
    s
}

/// Writes the report of one regime into `dir`.
pub fn write(dir: &Path, r: &RegimeResult) -> Result<()> {
    fs::create_dir_all(dir)?;
    let mut md = String::new();
    let title = format!(
        "# The paper's evaluation: {} regime{}",
        r.regime.name(),
        if r.quick { ", quick" } else { "" }
    );
    let _ = writeln!(md, "{title}\n");
    let _ = writeln!(
        md,
        "Written by `cargo run -p eval --release --{} --regime {}` (see `docs/evaluation.md`) on {}; \
         {}. The regime took {:.0} s.{}\n",
        if r.quick { " --quick" } else { "" },
        r.regime.name(),
        r.date,
        r.machine,
        r.secs,
        if r.interrupted {
            " **Interrupted: the tables are partial.**"
        } else {
            ""
        }
    );
    md.push_str("## Setup\n\n");
    for n in &r.notes {
        let _ = writeln!(md, "- {n}");
    }
    let _ = writeln!(
        md,
        "- every configuration run {} time(s), the fastest reported; run time = wall time from spawn \
         to exit minus the time the workload's thread waited for a CPU (`/proc/PID/schedstat`), \
         so other work on this shared 2-core machine is not counted as checkpoint overhead",
        r.reps
    );
    let _ = writeln!(
        md,
        "- checkpoint interval: the run time without checkpoints / {} (about {} checkpoints per \
         run; the paper took 4-8); `CKPT_KEEP=2`, other settings default (`CKPT_CHAIN_MAX=8`, \
         `CKPT_BUSY=wait`, the best dirty tracker)",
        r.checkpoints + 1,
        r.checkpoints
    );
    let _ = writeln!(
        md,
        "- remote memory: {}",
        match &r.remote {
            RemoteSupport::Yes =>
                "three rmem-servers, `CKPT_STORE=rmem://...?redundancy=parity` (the paper: 100 MB \
                 on each of three machines)"
                    .to_string(),
            RemoteSupport::No(why) => format!("**not measured** ({why})"),
        }
    );
    md.push_str("\nPhysical references measured in this run:\n\n");
    for (k, v) in &r.refs {
        let _ = writeln!(md, "- {k}: {v}");
    }
    md.push_str("\nWorkloads (the paper's Table II):\n\n");
    md.push_str("| AP | SIZE STEPS | run time without checkpoints (s) | interval (ms) | full checkpoint, page data (MiB) |\n| --- | --- | ---: | ---: | ---: |\n");
    for w in &r.workloads {
        let full = w.cell(StoreKind::Disk, "sequential").and_then(|run| {
            mean(
                &run.commits
                    .iter()
                    .filter_map(|c| c.data_mib)
                    .collect::<Vec<_>>(),
            )
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            label(w),
            w.w.args.join(" "),
            f2(w.base_time()),
            w.interval_ms,
            f1(full)
        );
    }

    md.push_str(
        "\n## Table III: checkpoint overhead and the improvement by remote memory\n\n\
         Overhead = run time with checkpoints - run time without, in seconds; R: remote memory, \
         D: local disk; % = (1 - R/D) x 100. S: sequential, I: incremental, S+F: sequential + \
         fork (`forked`), I+F: incremental + fork (`forked-incremental`).\n\n",
    );
    md.push_str(&table3(r));

    md.push_str(
        "\nThe same overhead from the library's log: the sum of the application's pauses per run \
         (s). This is the direct cost only (for S+F and I+F just the fork: not the copy-on-write \
         faults nor the writer competing for a CPU), but it is free of the run-to-run noise of a \
         shared machine, which hides overheads of a few percent in the table above.\n\n",
    );
    md.push_str(&table3_pauses(r));

    md.push_str(
        "\nThe checkpoint timer counts wall-clock time, so a run whose checkpoints are slow takes \
         more of them: the overhead per checkpoint (ms), and the number of checkpoints:\n\n",
    );
    md.push_str("| AP |");
    for (_, short) in POLICIES {
        let _ = write!(md, " {short} R/D (ms) | {short} # R/D |");
    }
    md.push_str("\n| --- |");
    for _ in POLICIES {
        md.push_str(" ---: | ---: |");
    }
    md.push('\n');
    for w in &r.workloads {
        let _ = write!(md, "| {} |", label(w));
        for (p, _) in POLICIES {
            let per = |s: StoreKind| {
                let n = w.cell(s, p)?.commits.len();
                (n > 0).then(|| w.overhead(s, p).map(|o| o * 1e3 / n as f64))?
            };
            let count = |s: StoreKind| {
                w.cell(s, p)
                    .map_or("n/m".to_string(), |x| x.commits.len().to_string())
            };
            let _ = write!(
                md,
                " {}/{} | {}/{} |",
                f0(per(StoreKind::Remote)),
                f0(per(StoreKind::Disk)),
                count(StoreKind::Remote),
                count(StoreKind::Disk)
            );
        }
        md.push('\n');
    }

    md.push_str(
        "\n## Table IV: execution times, checkpoint sizes, number of checkpoints\n\n\
         Run times in seconds. Size S: mean page data of a sequential checkpoint (local disk \
         run); size I: mean page data of the incremental checkpoints after the first (which is \
         full), as the paper counts them; #: checkpoints of the sequential run.\n\n",
    );
    md.push_str("| AP | NO | D: S | D: I | D: S+F | D: I+F | R: S | R: I | R: S+F | R: I+F | size S (MiB) | size I (MiB) | # |\n");
    md.push_str("| --- |");
    for _ in 0..12 {
        md.push_str(" ---: |");
    }
    md.push('\n');
    for w in &r.workloads {
        let _ = write!(md, "| {} | {} |", label(w), f2(w.base_time()));
        for store in [StoreKind::Disk, StoreKind::Remote] {
            for (p, _) in POLICIES {
                let _ = write!(md, " {} |", f2(w.cell(store, p).map(Run::time)));
            }
        }
        let seq = w.cell(StoreKind::Disk, "sequential");
        let inc = w.cell(StoreKind::Disk, "incremental");
        let size_s = seq.and_then(|x| {
            mean(
                &x.commits
                    .iter()
                    .filter_map(|c| c.data_mib)
                    .collect::<Vec<_>>(),
            )
        });
        let size_i = inc.and_then(|x| {
            mean(
                &x.commits
                    .iter()
                    .skip(1)
                    .filter(|c| c.incremental())
                    .filter_map(|c| c.data_mib)
                    .collect::<Vec<_>>(),
            )
        });
        let _ = writeln!(
            md,
            " {} | {} | {} |",
            f1(size_s),
            f1(size_i),
            seq.map_or("n/m".into(), |x| x.commits.len().to_string())
        );
    }

    md.push_str(
        "\n## Improvement by policy (the paper's Figures 7 and 8, as numbers)\n\n\
         Incremental over sequential: (1 - overhead I / overhead S) x 100; copy-on-write (fork) \
         over none: (1 - overhead S+F / overhead S) x 100 and (1 - overhead I+F / overhead I) x \
         100, per store.\n\n\
         | AP | I over S, D | I over S, R | S+F over S, D | S+F over S, R | I+F over I, D | I+F over I, R |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for w in &r.workloads {
        let o = |s, p| w.overhead(s, p);
        let _ = write!(md, "| {} |", label(w));
        for (a, b) in [
            ("incremental", "sequential"),
            ("forked", "sequential"),
            ("forked-incremental", "incremental"),
        ] {
            for store in [StoreKind::Disk, StoreKind::Remote] {
                let _ = write!(md, " {} |", f1(improvement(o(store, a), o(store, b))));
            }
        }
        md.push('\n');
    }

    md.push_str(
        "\n## What the application waited for: pause per checkpoint\n\n\
         Median pause of the application per checkpoint in ms, as the library logs it (for S and \
         I the whole checkpoint; for S+F and I+F the fork, the writer process does the rest), \
         and the median latency of a checkpoint (start to commit).\n\n\
         | AP | store |",
    );
    for (_, short) in POLICIES {
        let _ = write!(md, " {short} pause | {short} latency |");
    }
    md.push_str("\n| --- | --- |");
    for _ in POLICIES {
        md.push_str(" ---: | ---: |");
    }
    md.push('\n');
    for w in &r.workloads {
        for store in [StoreKind::Disk, StoreKind::Remote] {
            if store == StoreKind::Remote && !remote_measured(r) {
                continue;
            }
            let _ = write!(md, "| {} | {} |", label(w), store.short());
            for (p, _) in POLICIES {
                let run = w.cell(store, p);
                let pause = run.and_then(|x| median(&x.pauses));
                let lat = run.and_then(|x| {
                    median(&x.commits.iter().filter_map(|c| c.ms).collect::<Vec<_>>())
                });
                let _ = write!(md, " {} | {} |", f0(pause), f0(lat));
            }
            md.push('\n');
        }
    }

    let _ = write!(
        md,
        "\n## Tables V and VI: latency of every checkpoint\n\n\
         Latency in ms from the start of each checkpoint to its commit, as the library logs it \
         (for S+F and I+F: written by the forked writer while the program runs). Inc. size: page \
         data of each checkpoint of the incremental run into the local disk (the first is \
         full). Util.: the paper's last column, remote memory utilisation after each checkpoint \
         of the sequential (S) and incremental (I) runs into remote memory: the bytes in use on \
         the three servers (whole 16 KiB slots: parity shards, manifests, encryption's tags) as a \
         percentage of the bytes they lend{}, and in MiB, less what was on the servers before \
         the run (data earlier runs left, see Checks); read once the checkpoint committed and \
         the store pruned what `CKPT_KEEP=2` no longer needs, just before the next checkpoint \
         (the servers' admin socket, sampled every {} ms). LU and Water-Nsquared first, as in \
         the paper, then the others.\n",
        lent_note(r),
        crate::run::POOL_SAMPLE.as_millis()
    );
    let mut order: Vec<&WorkloadRuns> = r.workloads.iter().collect();
    order.sort_by_key(|w| match w.w.name.as_str() {
        "lu" => 0,
        "water" => 1,
        _ => 2,
    });
    for w in &order {
        let _ = writeln!(md, "\n### {}\n", label(w));
        md.push_str("| CKP | D: S | D: I | D: S+F | D: I+F | R: S | R: I | R: S+F | R: I+F | Inc. size (MiB) | Util. R: S, % (MiB) | Util. R: I, % (MiB) |\n| ---: |");
        for _ in 0..11 {
            md.push_str(" ---: |");
        }
        md.push('\n');
        let n = [StoreKind::Disk, StoreKind::Remote]
            .iter()
            .flat_map(|s| POLICIES.iter().map(move |(p, _)| (*s, *p)))
            .filter_map(|(s, p)| w.cell(s, p).map(|x| x.commits.len()))
            .max()
            .unwrap_or(0);
        for i in 0..n {
            let _ = write!(md, "| {} |", i + 1);
            for store in [StoreKind::Disk, StoreKind::Remote] {
                for (p, _) in POLICIES {
                    let cell = match w.cell(store, p) {
                        None => "n/m".to_string(),
                        Some(x) => match x.commits.get(i) {
                            None => String::new(),
                            // Under the incremental policies, say which checkpoints were full.
                            Some(c) => format!(
                                "{}{}",
                                f0(c.ms),
                                if p.ends_with("incremental") && !c.incremental() {
                                    " (full)"
                                } else {
                                    ""
                                }
                            ),
                        },
                    };
                    let _ = write!(md, " {cell} |");
                }
            }
            let inc = w
                .cell(StoreKind::Disk, "incremental")
                .and_then(|x| x.commits.get(i))
                .and_then(|c| c.data_mib);
            let _ = write!(md, " {} |", f1(inc).replace("n/m", ""));
            for p in ["sequential", "incremental"] {
                let cell = match w.cell(StoreKind::Remote, p) {
                    None => "n/m".to_string(),
                    Some(x) if i >= x.commits.len() => String::new(),
                    Some(x) => util(x.pool_own(i)),
                };
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
    }

    md.push_str("\n## Checks\n\n");
    let mut problems = Vec::new();
    let mut checked = 0;
    for w in &r.workloads {
        let digest = w.digest();
        for ((store, p), runs) in &w.runs {
            for run in runs {
                checked += 1;
                if let Some(e) = &run.error {
                    problems.push(format!("{}, {p}, {}: {e}", w.w.name, store.name()));
                } else if run.digest.as_deref() != digest {
                    problems.push(format!(
                        "{}, {p}, {}: digest {} differs from the run without checkpoints ({})",
                        w.w.name,
                        store.name(),
                        run.digest.as_deref().unwrap_or("(none)"),
                        digest.unwrap_or("(none)")
                    ));
                }
                if run.commits.is_empty() && run.error.is_none() {
                    problems.push(format!(
                        "{}, {p}, {}: no checkpoint committed",
                        w.w.name,
                        store.name()
                    ));
                }
                for f in run.failed.iter().take(2) {
                    problems.push(format!("{}, {p}, {}: {f}", w.w.name, store.name()));
                }
                let off = run.commits.iter().filter(|c| c.off_remote()).count();
                if off > 0 {
                    problems.push(format!(
                        "{}, {p}, {}: {off} checkpoint(s) not whole in remote memory ({})",
                        w.w.name,
                        store.name(),
                        run.commits
                            .iter()
                            .find(|c| c.off_remote())
                            .and_then(|c| c.placement.clone())
                            .unwrap_or_default()
                    ));
                }
                if let Some(left) = run.pool_left().filter(|&b| b > 0) {
                    problems.push(format!(
                        "{}, {p}, {}: {:.1} MiB stayed on the servers after the program \
                         exited normally (it should have removed its generations)",
                        w.w.name,
                        store.name(),
                        left as f64 / f64::from(1 << 20)
                    ));
                }
                if run.skipped > 0 {
                    problems.push(format!(
                        "{}, {p}, {}: {} checkpoint(s) skipped",
                        w.w.name,
                        store.name(),
                        run.skipped
                    ));
                }
                if p.starts_with("forked") && run.background == 0 && !run.commits.is_empty() {
                    problems.push(format!(
                        "{}, {p}, {}: no checkpoint was written in the background",
                        w.w.name,
                        store.name()
                    ));
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "- {checked} checkpointed runs; each one's output digest compared with the run without \
         checkpoints: {}",
        if problems.is_empty() {
            "all equal, no failure".to_string()
        } else {
            format!("{} problem(s):", problems.len())
        }
    );
    for p in &problems {
        let _ = writeln!(md, "  - {p}");
    }
    let inits: std::collections::BTreeSet<String> = r
        .workloads
        .iter()
        .flat_map(|w| w.runs.values().flatten())
        .filter_map(|x| x.init.clone())
        .map(|i| {
            // The store path and the interval differ per run; keep what the library chose.
            i.find("policy ")
                .map_or(i.clone(), |at| i[at..].to_string())
        })
        .collect();
    for i in inits.iter().take(8) {
        let _ = writeln!(md, "- the library said at init: `{i}`");
    }

    // Plots.
    let mut series = Vec::new();
    let mut idx = Vec::new();
    for (k, (p, short)) in POLICIES.iter().enumerate() {
        for store in STORES {
            if store == StoreKind::Remote && !remote_measured(r) {
                continue;
            }
            series.push(Series {
                label: format!("{short} {}", store.name()),
                color: COLORS[k],
                alt: store == StoreKind::Disk,
            });
            idx.push((store, *p));
        }
    }
    let groups: Vec<(String, Vec<Option<f64>>)> = r
        .workloads
        .iter()
        .map(|w| {
            (
                w.w.paper.to_string(),
                idx.iter().map(|(s, p)| w.overhead(*s, p)).collect(),
            )
        })
        .collect();
    let overhead = svg::bars(
        &format!(
            "Checkpoint overhead, {} regime{} (the paper's Figures 5 and 6)",
            r.regime.name(),
            if r.quick { ", quick" } else { "" }
        ),
        "overhead (s)",
        "",
        &series,
        &groups,
    );
    fs::write(dir.join("overhead.svg"), overhead)?;
    md.push_str(
        "\n## Plots\n\n![Checkpoint overhead per workload, policy and store](overhead.svg)\n",
    );
    for w in &order {
        let mut ls = Vec::new();
        for (k, (p, short)) in POLICIES.iter().enumerate() {
            for store in STORES {
                let Some(run) = w.cell(store, p) else {
                    continue;
                };
                let pts: Vec<(f64, f64)> = run
                    .commits
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| Some(((i + 1) as f64, c.ms?)))
                    .collect();
                ls.push((
                    Series {
                        label: format!("{short} {}", store.name()),
                        color: COLORS[k],
                        alt: store == StoreKind::Remote,
                    },
                    pts,
                ));
            }
        }
        let file = format!("latency-{}.svg", w.w.name);
        fs::write(
            dir.join(&file),
            svg::lines(
                &format!(
                    "Latency of every checkpoint, {}, {} regime (the paper's Figures 9 and 10)",
                    w.w.paper,
                    r.regime.name()
                ),
                "checkpoint",
                "latency (ms)",
                "",
                &ls,
            ),
        )?;
        let _ = writeln!(
            md,
            "\n![Latency of every checkpoint of {}]({file})",
            w.w.paper
        );
    }
    fs::write(dir.join("report.md"), md)?;
    fs::write(dir.join("runs.csv"), csv(r))?;
    Ok(())
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or(String::new(), |b| {
        format!("{:.1}", b as f64 / f64::from(1 << 20))
    })
}

/// Every run, one line each.
fn csv(r: &RegimeResult) -> String {
    let mut s = String::from(
        "regime,workload,args,store,policy,interval_ms,wall_s,cpu_wait_s,time_s,cpu_s,checkpoints,incremental,background,page_data_mib,latencies_ms,pauses_ms,pool_capacity_mib,pool_used_before_mib,pool_used_after_each_mib,pool_peak_mib,pool_used_after_exit_mib,digest_ok,error\n",
    );
    let regime = match r.regime {
        Regime::Paper => "paper",
        Regime::Unshaped => "unshaped",
    };
    for w in &r.workloads {
        let digest = w.digest();
        let mut all: Vec<(&str, &str, &Run)> = w.base.iter().map(|x| ("none", "none", x)).collect();
        for ((store, p), runs) in &w.runs {
            for x in runs {
                all.push((
                    match store {
                        StoreKind::Disk => "disk",
                        StoreKind::Remote => "remote",
                    },
                    p.as_str(),
                    x,
                ));
            }
        }
        for (store, p, x) in all {
            let join = |v: Vec<String>| v.join(" ");
            let _ = writeln!(
                s,
                "{regime},{},{},{store},{p},{},{:.3},{:.3},{:.3},{:.3},{},{},{},{:.1},{},{},{},{},{},{},{},{},{}",
                w.w.name,
                w.w.args.join(" "),
                w.interval_ms,
                x.wall,
                x.waited,
                x.time(),
                x.cpu,
                x.commits.len(),
                x.commits.iter().filter(|c| c.incremental()).count(),
                x.background,
                x.commits.iter().filter_map(|c| c.data_mib).sum::<f64>(),
                join(x.commits.iter().map(|c| f1(c.ms)).collect()),
                join(x.pauses.iter().map(|v| format!("{v:.1}")).collect()),
                mib(x.pool_before.map(|u| u.capacity)),
                mib(x.pool_before.map(|u| u.used)),
                join(
                    x.pool_after
                        .iter()
                        .map(|u| mib(u.map(|u| u.used)))
                        .collect()
                ),
                mib(x.pool_peak.map(|u| u.used)),
                mib(x.pool_exit.map(|u| u.used)),
                x.digest.as_deref() == digest,
                x.error.as_deref().unwrap_or("").replace([',', '\n'], ";")
            );
        }
    }
    s
}
