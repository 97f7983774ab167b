//! `ls`, `inspect` and `verify` of a remote store (`rmem://`, `tiered:`).
//!
//! The generations are fetched through the store's `ckpt-rmem` helper, exactly as a restore
//! fetches them (remote memory first, rebuilding around dead or revoked servers from the
//! redundancy, then the local fallback directory and the tiered copy), into a private
//! memory-backed directory ([`ckpt::RemoteImages`]), where the directory store's readers check
//! them. Headers and manifests only, when the page data is not checked (`ls --quick`,
//! `inspect`). The output names the store instead of that directory, and `ls` says where each
//! generation lies.

use std::path::Path;
use std::process::ExitCode;

use ckpt::{RemoteImages, RemoteStore, StageWhat, Staged};

use crate::Result;
use crate::error::CliError;
use crate::spec::{ImageTarget, Which};

/// A remote store opened for reading.
struct Remote {
    images: RemoteImages,
    /// What names the store in the output: `rmem://HOST:PORT,...` (or `tiered:rmem://...`).
    label: String,
}

impl Remote {
    fn open(store: &RemoteStore, program: Option<&Path>) -> Result<Remote> {
        let label = store
            .spec
            .split_once('?')
            .map_or(store.spec.as_str(), |(s, _)| s)
            .to_string();
        let images = RemoteImages::open(store, program).map_err(|e| error(e, &label))?;
        Ok(Remote { images, label })
    }

    /// Stages `what`; an empty pool is an error naming the store.
    fn stage(&self, what: StageWhat, meta: bool) -> Result<Staged> {
        self.images
            .stage(what, meta)
            .map_err(|e| error(e, &self.label))?
            .ok_or_else(|| {
                CliError::Remote(format!("remote store {} holds no checkpoint", self.label))
            })
    }

    /// Prints `out` with the staging directory's path replaced by the store's name.
    fn print(&self, out: Vec<u8>) {
        use std::io::Write as _;
        let text = String::from_utf8_lossy(&out);
        let dir = self.images.staging_dir().display().to_string();
        let _ = std::io::stdout()
            .lock()
            .write_all(text.replace(&dir, &self.label).as_bytes());
    }

    /// The generations `fetch --all` could not read, for the listing and the report.
    fn unreadable(s: &Staged) -> Vec<(u64, String)> {
        s.generations
            .iter()
            .filter_map(|g| {
                let e = g.error.as_deref()?;
                let prefix = format!("generation {}: ", g.generation);
                Some((
                    g.generation,
                    e.strip_prefix(&prefix).unwrap_or(e).to_string(),
                ))
            })
            .collect()
    }
}

/// The library's error about the store, as the command says it: without the library's
/// "checkpoint failed" (nothing was checkpointing) and with the store named by `label`.
fn error(e: ckpt::Error, label: &str) -> CliError {
    let msg = e.to_string();
    let msg = msg.strip_prefix("checkpoint failed: ").unwrap_or(&msg);
    // The helper names the store by its whole specification, keys' paths and all.
    let msg = match msg
        .strip_prefix("remote store ")
        .and_then(|m| m.split_once(": "))
    {
        Some((_, why)) => format!("remote store {label}: {why}"),
        None => msg.to_string(),
    };
    CliError::Remote(msg)
}

/// `ckpt ls` of a remote store.
pub fn ls(
    store: &RemoteStore,
    program: Option<&Path>,
    quick: bool,
    json: bool,
) -> Result<ExitCode> {
    let r = Remote::open(store, program)?;
    let staged = r.stage(StageWhat::All, quick)?;
    let mut listing =
        crate::ls::listing(r.images.staging_dir(), quick, &Remote::unreadable(&staged))?;
    listing.in_use = crate::images::in_use(r.images.local_dir());
    for e in &mut listing.generations {
        e.location = staged
            .generations
            .iter()
            .find(|g| g.generation == e.generation && g.error.is_none())
            .map(|g| g.location.clone())
            .or(Some("unreadable".into()));
    }
    listing.remote = Some(crate::ls::RemoteState {
        servers_up: staged.servers.0,
        servers: staged.servers.1,
        local_dir: r.images.local_dir().display().to_string(),
    });
    let mut out = Vec::new();
    crate::ls::write(&mut out, &listing, json)?;
    r.print(out);
    Ok(ExitCode::SUCCESS)
}

/// The generation a GENERATION argument names in a remote store (`None`: the newest whose whole
/// chain can be read, as a restore would take it).
fn which(r: &Remote, generation: Option<u64>, meta: bool) -> Result<(Staged, u64)> {
    let what = match generation {
        Some(g) => StageWhat::Generation(g),
        None => StageWhat::Newest,
    };
    let staged = r.stage(what, meta)?;
    let g = staged.chain.first().copied().unwrap_or(0);
    Ok((staged, g))
}

/// `ckpt inspect` of a remote store: headers and manifests of the generation and its chain.
pub fn inspect(
    store: &RemoteStore,
    program: Option<&Path>,
    generation: Option<u64>,
    runs: bool,
    json: bool,
) -> Result<ExitCode> {
    let r = Remote::open(store, program)?;
    let (staged, g) = which(&r, generation, true)?;
    if generation.is_none() && g != staged.highest && !json {
        eprintln!(
            "ckpt: generation {} of {} cannot be read; showing generation {g}, the newest that can",
            staged.highest, r.label
        );
    }
    let t = ImageTarget {
        dir: r.images.staging_dir().to_path_buf(),
        which: Which::Generation(g),
    };
    let mut out = Vec::new();
    crate::inspect::write(&mut out, &t, runs, json)?;
    r.print(out);
    Ok(ExitCode::SUCCESS)
}

/// `ckpt verify` of a remote store: one generation and its chain (default: the newest
/// committed), or every generation with `all`, every byte fetched and every checksum checked.
pub fn verify(
    store: &RemoteStore,
    program: Option<&Path>,
    generation: Option<u64>,
    all: bool,
    json: bool,
) -> Result<ExitCode> {
    let r = Remote::open(store, program)?;
    let dir = r.images.staging_dir().to_path_buf();
    let mut out = Vec::new();
    let ok = if all {
        let staged = r.stage(StageWhat::All, false)?;
        crate::verify::write(
            &mut out,
            &crate::verify::Target::All(dir),
            json,
            &Remote::unreadable(&staged),
        )?
    } else {
        // The newest committed generation, not the newest readable one: a damaged newest
        // generation must fail here, not be skipped.
        let g = match generation {
            Some(g) => g,
            None => match r.images.highest().map_err(|e| error(e, &r.label))? {
                0 => {
                    return Err(CliError::Unsupported(format!(
                        "remote store {} holds no checkpoint",
                        r.label
                    )));
                }
                g => g,
            },
        };
        match which(&r, Some(g), false) {
            Ok(_) => crate::verify::write(
                &mut out,
                &crate::verify::Target::One(ImageTarget {
                    dir,
                    which: Which::Generation(g),
                }),
                json,
                &[],
            )?,
            Err(CliError::Remote(why)) => {
                let why = why
                    .rsplit_once(&format!("generation {g}: "))
                    .map_or(why.as_str(), |(_, w)| w)
                    .to_string();
                crate::verify::write(
                    &mut out,
                    &crate::verify::Target::All(dir),
                    json,
                    &[(g, why)],
                )?
            }
            Err(e) => return Err(e),
        }
    };
    r.print(out);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
