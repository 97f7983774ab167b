//! `ckpt ls`: every generation file of a store, and the generation a restore would use.

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::Result;
use crate::error::CliError;
use crate::images::{self, ChainChecker, FileState};
use crate::text;

/// The JSON of `ckpt ls --json`.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// The store directory.
    pub store: String,
    /// Whether a program holds the store's lock (is running on it, or its background writer is).
    pub in_use: bool,
    /// Every generation file, newest first.
    pub generations: Vec<Entry>,
    /// What a restore would do now.
    pub restore: Restore,
    /// A remote store: its servers and local directory; absent for a directory store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteState>,
}

/// The state of a remote store, as `ls` read it.
#[derive(Debug, Serialize)]
pub struct RemoteState {
    /// Servers that answered.
    pub servers_up: usize,
    /// Servers of the store.
    pub servers: usize,
    /// Its local directory (lock, disk fallback, tiered copy).
    pub local_dir: String,
}

/// One generation file.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// Its generation number (from the file name).
    pub generation: u64,
    /// The file name.
    pub file: String,
    /// `committed`, `tmp`, `corrupt`, `spare` or `retired`.
    pub state: FileState,
    /// Length of the file.
    pub size: u64,
    /// `full` or `incremental`, when the header is readable.
    pub kind: Option<&'static str>,
    /// The generation an incremental image builds on.
    pub parent: Option<u64>,
    /// Bytes of page data.
    pub data_bytes: Option<u64>,
    /// When the checkpoint was taken (header `created_ns`).
    pub created_ns: Option<u64>,
    /// The same, RFC 3339 UTC.
    pub created: Option<String>,
    /// The policy that wrote it.
    pub policy: Option<String>,
    /// The dirty tracker in use.
    pub tracker: Option<String>,
    /// Why the image cannot be read, or (committed images) why a restore would set it aside.
    pub problem: Option<String>,
    /// Whether a restore would use this generation.
    pub restore: bool,
    /// A remote store: where the generation is (`remote`, `degraded`, `remote+disk` when its
    /// last stripes went to the local fallback directory, `disk` for that directory alone,
    /// `copy` for only the tiered store's local copy, `unreadable` when it cannot be read);
    /// absent for a directory store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// What a restore would do.
#[derive(Debug, Serialize)]
pub struct Restore {
    /// The generation it would restore, if any.
    pub generation: Option<u64>,
    /// That generation and the images it builds on, newest first.
    pub chain: Vec<u64>,
    /// Whether the page data's checksums were checked (`false` with `--quick`).
    pub data_checked: bool,
    /// Newer committed generations that are unusable (a restore sets them aside as `.corrupt`
    /// when it finds an older usable one; with none it fails and leaves them).
    pub unusable: Vec<u64>,
    /// Why a restore of `generation` would refuse to go on: the executable, a library or an
    /// open file changed on disk since the checkpoint.
    pub would_refuse: Vec<String>,
}

/// Runs `ckpt ls`.
pub fn ls(dir: &Path, quick: bool, json: bool) -> Result<ExitCode> {
    let listing = listing(dir, quick, &[])?;
    write(&mut std::io::stdout().lock(), &listing, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `listing` as text or JSON.
pub fn write(out: &mut dyn std::io::Write, listing: &Listing, json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, listing)?;
        let _ = writeln!(out);
    } else {
        print_text(out, listing);
    }
    Ok(())
}

/// Builds the listing of `dir`. `unreadable`: committed generations that have no file there
/// because they could not be read (a remote store's), with why; they are listed as unusable.
pub fn listing(dir: &Path, quick: bool, unreadable: &[(u64, String)]) -> Result<Listing> {
    let files = images::store_files(dir)?;
    if files.is_empty() && unreadable.is_empty() {
        return Err(CliError::StoreEmpty(dir.to_path_buf()));
    }
    let mut entries = Vec::new();
    let mut committed_data = 0u64;
    for f in &files {
        let size = std::fs::metadata(&f.path).map_or(0, |m| m.len());
        let file = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut e = Entry {
            generation: f.generation,
            file,
            state: f.state,
            size,
            kind: None,
            parent: None,
            data_bytes: None,
            created_ns: None,
            created: None,
            policy: None,
            tracker: None,
            problem: None,
            restore: false,
            location: None,
        };
        match images::open(&f.path) {
            Ok(img) => {
                let h = img.header();
                e.kind = Some(if h.parent == 0 { "full" } else { "incremental" });
                e.parent = (h.parent != 0).then_some(h.parent);
                e.data_bytes = Some(h.data_len);
                e.created_ns = Some(h.created_ns);
                e.created = Some(text::rfc3339(h.created_ns));
                e.policy = Some(text::policy(img.manifest.process.policy));
                e.tracker = Some(text::tracker(img.manifest.process.tracker));
                if f.state == FileState::Committed {
                    committed_data += h.data_len;
                }
            }
            // A header that is not written yet is what a checkpoint in progress looks like.
            Err(e2) if f.state == FileState::Tmp => {
                e.problem = Some(format!("incomplete ({})", short(&e2.to_string(), &f.path)));
            }
            Err(e2) => e.problem = Some(e2.to_string()),
        }
        entries.push(e);
    }
    for (g, why) in unreadable {
        entries.push(Entry {
            generation: *g,
            file: images::committed_name(*g),
            state: FileState::Committed,
            size: 0,
            kind: None,
            parent: None,
            data_bytes: None,
            created_ns: None,
            created: None,
            policy: None,
            tracker: None,
            problem: Some(format!("cannot be read: {why}")),
            restore: false,
            location: None,
        });
    }
    if !unreadable.is_empty() {
        // Newest first, as store_files orders them.
        entries.sort_by_key(|e| std::cmp::Reverse(e.generation));
    }
    let progress = images::progress(committed_data, "verifying");
    let mut checker = ChainChecker::new(dir, !quick, &progress);
    let mut restore = Restore {
        generation: None,
        chain: Vec::new(),
        data_checked: !quick,
        unusable: Vec::new(),
        would_refuse: Vec::new(),
    };
    for e in entries
        .iter_mut()
        .filter(|e| e.state == FileState::Committed)
    {
        if restore.generation.is_some() {
            break;
        }
        match checker.chain(e.generation) {
            Ok(chain) => {
                e.restore = true;
                restore.generation = Some(e.generation);
                restore.chain = chain;
                if let Ok(img) = images::open(&e.path_in(dir)) {
                    restore.would_refuse = images::changed_on_disk(&img.manifest);
                }
            }
            Err(err) => {
                restore.unusable.push(e.generation);
                e.problem.get_or_insert_with(|| err.to_string());
            }
        }
    }
    progress.finish_and_clear();
    Ok(Listing {
        store: dir.display().to_string(),
        in_use: images::in_use(dir),
        generations: entries,
        restore,
        remote: None,
    })
}

impl Entry {
    fn path_in(&self, dir: &Path) -> std::path::PathBuf {
        dir.join(&self.file)
    }
}

/// An error message without the file's path at its front (the listing shows the file).
fn short(msg: &str, path: &Path) -> String {
    let p = format!("{}: ", path.display());
    msg.strip_prefix(&p).unwrap_or(msg).to_string()
}

fn print_text(out: &mut dyn std::io::Write, l: &Listing) {
    let _ = writeln!(
        out,
        "store {} ({}){}",
        l.store,
        if l.in_use {
            "in use by a running program"
        } else {
            "not in use"
        },
        l.remote.as_ref().map_or(String::new(), |r| format!(
            ": {} of {} servers up; local directory {}",
            r.servers_up, r.servers, r.local_dir
        ))
    );
    let _ = writeln!(
        out,
        "{:>6}  {:<11}  {:<20}  {:>10}  {:>10}  {:<23}  {:<9}  POLICY/TRACKER",
        "GEN", "STATE", "KIND", "FILE", "PAGE DATA", "CREATED (UTC)", "AGE"
    );
    for e in &l.generations {
        let kind = match (e.kind, e.parent) {
            (Some(_), Some(p)) => format!("incremental on {p}"),
            (Some(k), None) => k.to_string(),
            (None, _) => "?".into(),
        };
        let _ = writeln!(
            out,
            "{:>6}  {:<11}  {:<20}  {:>10}  {:>10}  {:<23}  {:<9}  {}{}",
            e.generation,
            e.location.as_deref().unwrap_or(e.state.name()),
            kind,
            text::bytes(e.size),
            e.data_bytes.map(text::bytes).unwrap_or_default(),
            e.created_ns.map(text::time).unwrap_or_default(),
            e.created_ns.map(text::age).unwrap_or_default(),
            match (&e.policy, &e.tracker) {
                (Some(p), Some(t)) => format!("{p}/{t}"),
                _ => String::new(),
            },
            if e.restore { "  <- restore" } else { "" }
        );
        if let Some(p) = &e.problem {
            let _ = writeln!(
                out,
                "{:>8}{}",
                "",
                short(p, &Path::new(&l.store).join(&e.file))
            );
        }
    }
    let r = &l.restore;
    match r.generation {
        Some(g) => {
            let chain: Vec<String> = r.chain.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "a restore would use generation {g}{} ({})",
                if r.chain.len() > 1 {
                    format!(
                        ", a chain of {} images: {}",
                        r.chain.len(),
                        chain.join(" <- ")
                    )
                } else {
                    ", a full image".into()
                },
                if r.data_checked {
                    "every checksum verified"
                } else {
                    "headers, manifests and links checked; page data not read (--quick)"
                }
            );
        }
        None if l
            .generations
            .iter()
            .any(|e| e.state == FileState::Committed) =>
        {
            let _ = writeln!(
                out,
                "a restore would find every committed generation unusable and fail"
            );
        }
        None => {
            let _ = writeln!(
                out,
                "no committed generation: a restore would find nothing to restore"
            );
        }
    }
    if !r.unusable.is_empty() && r.generation.is_some() {
        let g: Vec<String> = r.unusable.iter().map(u64::to_string).collect();
        let _ = writeln!(
            out,
            "a restore would set aside as corrupt: generation {}",
            g.join(", ")
        );
    }
    for c in &r.would_refuse {
        let _ = writeln!(out, "a restore would refuse: {c}");
    }
}
