//! `ckpt verify`: every check a restore makes of an image before touching memory (header,
//! manifest, every data run's CRC-32C, the generation in the name, the chain links), reporting
//! the first problem of each image.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::Result;
use crate::error::CliError;
use crate::images::{self, FileState, ImageError};
use crate::spec::ImageTarget;
use crate::text;

/// What to verify.
#[derive(Debug)]
pub enum Target {
    /// One image and the chain it builds on.
    One(ImageTarget),
    /// Every image file of the store.
    All(PathBuf),
}

/// The JSON of `ckpt verify --json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The store directory.
    pub store: String,
    /// Whether every image verified.
    pub ok: bool,
    /// Each image checked, in the order checked.
    pub images: Vec<Checked>,
    /// Files not checked (`.tmp`: being written, or left by a killed checkpoint).
    pub skipped: Vec<String>,
}

/// One image checked.
#[derive(Debug, Serialize)]
pub struct Checked {
    /// Generation (from the header, else the file name).
    pub generation: u64,
    /// The file.
    pub file: String,
    /// Its state in the store.
    pub state: Option<FileState>,
    /// Whether it passed every check.
    pub ok: bool,
    /// `full` or `incremental`, when the header is readable.
    pub kind: Option<&'static str>,
    /// Its parent.
    pub parent: Option<u64>,
    /// Data runs checked.
    pub data_runs: usize,
    /// Bytes of page data checked.
    pub data_bytes: u64,
    /// The first problem found.
    pub problem: Option<String>,
}

/// Runs `ckpt verify`.
pub fn verify(t: &Target, json: bool) -> Result<ExitCode> {
    let ok = write(&mut std::io::stdout().lock(), t, json, &[])?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Verifies `t` and writes the report as text or JSON; whether every image verified.
/// `unreadable`: committed generations that have no file in the store because they could not be
/// read (a remote store's), with why: they fail.
pub fn write(
    out: &mut dyn std::io::Write,
    t: &Target,
    json: bool,
    unreadable: &[(u64, String)],
) -> Result<bool> {
    let (dir, todo, skipped) = match plan(t) {
        Err(CliError::StoreEmpty(_)) if !unreadable.is_empty() => {
            let dir = match t {
                Target::All(d) => d.clone(),
                Target::One(it) => it.dir.clone(),
            };
            (dir, Vec::new(), Vec::new())
        }
        r => r?,
    };
    let total: u64 = todo
        .iter()
        .filter_map(|(p, _)| images::read_header(p).ok())
        .map(|(_, _, h)| h.data_len)
        .sum();
    let progress = images::progress(total, "verifying");
    let mut report = Report {
        store: dir.display().to_string(),
        ok: true,
        images: Vec::new(),
        skipped,
    };
    let mut i = 0;
    let mut todo = todo;
    while i < todo.len() {
        let (path, state) = todo[i].clone();
        let checked = check_one(&dir, &path, state, &progress);
        // Verifying one generation covers its chain: queue the parent (once).
        if matches!(t, Target::One(_))
            && let Some(parent) = checked.parent
            && checked.problem.is_none()
        {
            let p = images::committed_path(&dir, parent);
            if !todo.iter().any(|(q, _)| *q == p) {
                todo.push((p, Some(FileState::Committed)));
            }
        }
        report.images.push(checked);
        i += 1;
    }
    progress.finish_and_clear();
    for (g, why) in unreadable {
        report.images.push(Checked {
            generation: *g,
            file: images::committed_path(&dir, *g).display().to_string(),
            state: Some(FileState::Committed),
            ok: false,
            kind: None,
            parent: None,
            data_runs: 0,
            data_bytes: 0,
            problem: Some(format!("cannot be read: {why}")),
        });
    }
    if !unreadable.is_empty() {
        report
            .images
            .sort_by_key(|e| std::cmp::Reverse(e.generation));
    }
    broken_chains(&mut report.images);
    for c in &report.images {
        report.ok &= c.ok;
        if !json {
            print_line(out, c);
        }
    }
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        let _ = writeln!(out);
    } else {
        for s in &report.skipped {
            let _ = writeln!(out, "skipped {s}");
        }
        let bad = report.images.iter().filter(|c| !c.ok).count();
        let bytes: u64 = report.images.iter().map(|c| c.data_bytes).sum();
        if bad == 0 {
            let _ = writeln!(
                out,
                "verified {} image(s), {} of page data: every checksum and link is good",
                report.images.len(),
                text::bytes(bytes)
            );
        } else {
            let _ = writeln!(
                out,
                "{bad} of {} image(s) FAILED verification",
                report.images.len()
            );
        }
    }
    Ok(report.ok)
}

/// The store and the files to check first (a single image's parents are added as found).
type Plan = (PathBuf, Vec<(PathBuf, Option<FileState>)>, Vec<String>);

fn plan(t: &Target) -> Result<Plan> {
    match t {
        Target::One(it) => {
            let (path, state) = images::resolve(it)?;
            Ok((it.dir.clone(), vec![(path, state)], Vec::new()))
        }
        Target::All(dir) => {
            let files = images::store_files(dir)?;
            if files.is_empty() {
                return Err(CliError::StoreEmpty(dir.clone()));
            }
            let (tmp, rest): (Vec<_>, Vec<_>) =
                files.into_iter().partition(|f| f.state == FileState::Tmp);
            let skipped = tmp
                .iter()
                .map(|f| {
                    format!(
                        "{} (a checkpoint being written, or left by one that was killed)",
                        f.path.display()
                    )
                })
                .collect();
            Ok((
                dir.clone(),
                rest.into_iter().map(|f| (f.path, Some(f.state))).collect(),
                skipped,
            ))
        }
    }
}

fn check_one(
    dir: &Path,
    path: &Path,
    state: Option<FileState>,
    progress: &indicatif::ProgressBar,
) -> Checked {
    let mut c = Checked {
        generation: images::named_generation(path).map_or(0, |(g, _)| g),
        file: path.display().to_string(),
        state,
        ok: false,
        kind: None,
        parent: None,
        data_runs: 0,
        data_bytes: 0,
        problem: None,
    };
    let result = (|| -> Result<(), ImageError> {
        if state == Some(FileState::Committed) && !path.exists() {
            return Err(ImageError::Io {
                op: "open",
                path: path.to_path_buf(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        let img = images::open(path)?;
        let h = *img.header();
        c.generation = h.generation;
        c.kind = Some(if h.parent == 0 { "full" } else { "incremental" });
        c.parent = (h.parent != 0).then_some(h.parent);
        c.data_runs = img
            .manifest
            .runs
            .iter()
            .filter(|r| r.kind == ckpt::image::RUN_DATA)
            .count();
        c.data_bytes = images::check_image(&img, progress)?;
        // A committed image's chain must be there: the parent a committed image of the store.
        if h.parent != 0
            && state.is_none_or(|s| s == FileState::Committed)
            && !images::committed_path(dir, h.parent).exists()
        {
            let checker = images::ChainChecker::new(dir, false, progress);
            return Err(checker.missing(h.generation, h.parent));
        }
        Ok(())
    })();
    match result {
        Ok(()) => c.ok = true,
        Err(e) => c.problem = Some(e.to_string()),
    }
    c
}

/// With every image checked by itself, a committed image whose chain reaches a committed image
/// that failed cannot be restored either: it fails too, naming the broken link.
fn broken_chains(images: &mut [Checked]) {
    let committed: std::collections::HashMap<u64, (bool, Option<u64>)> = images
        .iter()
        .filter(|c| c.state == Some(FileState::Committed))
        .map(|c| (c.generation, (c.ok, c.parent)))
        .collect();
    for c in images
        .iter_mut()
        .filter(|c| c.ok && c.state == Some(FileState::Committed))
    {
        let mut at = c.parent;
        while let Some(p) = at {
            match committed.get(&p) {
                Some((true, next)) => at = *next,
                Some((false, _)) => {
                    c.ok = false;
                    c.problem = Some(format!(
                        "generation {} builds on generation {p}, which failed verification",
                        c.generation
                    ));
                    break;
                }
                // A missing direct parent fails its child's own check; stop here.
                None => break,
            }
        }
    }
}

fn print_line(out: &mut dyn std::io::Write, c: &Checked) {
    let state = c.state.map(|s| s.name()).unwrap_or("file");
    let kind = match (c.kind, c.parent) {
        (_, Some(p)) => format!("incremental on {p}"),
        (Some(k), None) => k.to_string(),
        (None, None) => "unreadable".into(),
    };
    let _ = match &c.problem {
        None => writeln!(
            out,
            "ok      generation {} ({state}, {kind}): {} data runs, {} checked",
            c.generation,
            c.data_runs,
            text::bytes(c.data_bytes)
        ),
        Some(p) => writeln!(
            out,
            "FAILED  generation {} ({state}, {kind}): {p}",
            c.generation
        ),
    };
}
