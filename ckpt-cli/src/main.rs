//! `ckpt`: runs programs under checkpointing and restarts them, and lists, inspects and verifies
//! the images of a store (the offline inspector of STYLE §7), and shows a remote-memory pool.
//!
//! Every subcommand is documented in `docs/cli.md`. Exit status: 0 on success; 1 when a store,
//! image or server has a problem (the message on stderr says which); 2 for a usage error; `run`
//! and `restart` replace themselves with the program, whose status is theirs.
#![deny(unsafe_code)]

mod error;
mod images;
mod inspect;
mod launch;
mod ls;
mod remote;
mod servers;
mod spec;
mod text;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::CliError;

#[derive(Parser, Debug)]
#[command(
    name = "ckpt",
    version,
    about = "Checkpoint and restart programs; list, inspect and verify checkpoint images",
    after_help = "Stores: `dir:PATH` or a plain PATH (a local directory); `rmem://HOST:PORT,...` and \
                  `tiered:...` (remote memory; need the remote-store support of libckpt). Without \
                  --store, CKPT_STORE or CKPT_DIR from the environment is used. See docs/cli.md."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run PROGRAM with checkpointing (libckpt.so preloaded, or the program's own linked ckpt);
    /// restores from the store first when it holds a checkpoint of this program.
    Run(RunArgs),
    /// Restart PROGRAM from the store's last committed checkpoint (fails if there is none).
    Restart(RunArgs),
    /// List the store's generations: kind, size, time, state, and which one a restore would use.
    Ls(LsArgs),
    /// Show one image: header, identity, process record, regions, chain, files, signals.
    Inspect(InspectArgs),
    /// Check every checksum of images and their chain links.
    Verify(VerifyArgs),
    /// Show the state of a remote-memory pool's servers.
    Servers(ServersArgs),
}

/// Options of `run` and `restart`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Checkpoint interval (`500ms`, `30s`, `5m`, `1h`); CKPT_INTERVAL.
    #[arg(long, value_name = "D")]
    pub interval: Option<String>,
    /// Checkpoint policy (sequential, incremental, forked, forked-incremental, buffered,
    /// buffered-incremental); CKPT_POLICY.
    #[arg(long, value_name = "P")]
    pub policy: Option<String>,
    /// Store: `dir:PATH`, a plain PATH, `rmem://HOST:PORT,...?...` or `tiered:...`.
    #[arg(long, value_name = "S")]
    pub store: Option<String>,
    /// Dirty-page tracker of the incremental policies (uffd-async, mprotect); CKPT_TRACKER.
    #[arg(long, value_name = "T")]
    pub tracker: Option<String>,
    /// Committed generations kept (1-1000); CKPT_KEEP.
    #[arg(long, value_name = "N")]
    pub keep: Option<String>,
    /// Library log level (off, info, debug), on stderr; CKPT_LOG.
    #[arg(long, value_name = "L")]
    pub log: Option<String>,
    /// `run` only: start afresh even if the store holds a checkpoint (CKPT_RESTORE=never).
    #[arg(long)]
    pub fresh: bool,
    /// The libckpt.so to preload (default: CKPT_LIB, else next to this executable, in
    /// ../lib, or in the cargo target directory).
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,
    /// Whether to preload libckpt.so: `auto` preloads unless the program links ckpt itself.
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    pub preload: launch::Preload,
    /// Print the environment and command instead of running it.
    #[arg(long)]
    pub dry_run: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM ARGS")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug)]
struct LsArgs {
    /// Store (default: CKPT_STORE or CKPT_DIR).
    #[arg(long, value_name = "S")]
    store: Option<String>,
    /// A remote store without `pool=`: the program whose checkpoints to read (its pool is named
    /// after the program's path).
    #[arg(long, value_name = "PATH")]
    program: Option<PathBuf>,
    /// Check headers, manifests and chain links only, not the page data's checksums, to find
    /// the generation a restore would use.
    #[arg(long)]
    quick: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Store (default: CKPT_STORE or CKPT_DIR).
    #[arg(long, value_name = "S")]
    store: Option<String>,
    /// A remote store without `pool=`: the program whose checkpoints to read (its pool is named
    /// after the program's path).
    #[arg(long, value_name = "PATH")]
    program: Option<PathBuf>,
    /// Also list every page run.
    #[arg(long)]
    runs: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Generation number (default: the newest committed), or the path of an image file.
    generation: Option<String>,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Store (default: CKPT_STORE or CKPT_DIR).
    #[arg(long, value_name = "S")]
    store: Option<String>,
    /// A remote store without `pool=`: the program whose checkpoints to read (its pool is named
    /// after the program's path).
    #[arg(long, value_name = "PATH")]
    program: Option<PathBuf>,
    /// Verify every image file of the store (committed, spare, retired, set aside).
    #[arg(long, conflicts_with = "generation")]
    all: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Generation number or image path (default: the newest committed generation); its chain
    /// is verified with it.
    generation: Option<String>,
}

#[derive(Args, Debug)]
struct ServersArgs {
    /// The pool: `rmem://HOST:PORT,...[?key=FILE&pool=ID]` (default: CKPT_STORE).
    #[arg(long, value_name = "S")]
    store: Option<String>,
    /// Pre-shared key file of the servers (or `key=FILE` in the store, or RMEM_KEY_FILE).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// A store without `pool=`: the program whose pool to show (named after its path).
    #[arg(long, value_name = "PATH")]
    program: Option<PathBuf>,
    /// Also read this Prometheus stats endpoint (rmem-server --stats-listen); repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    stats: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(a) => launch::run(a, false),
        Cmd::Restart(a) => launch::run(a, true),
        Cmd::Ls(a) => ls(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Verify(a) => verify(a),
        Cmd::Servers(a) => servers::servers(
            a.store.as_deref(),
            a.key_file,
            a.program.as_deref(),
            &a.stats,
            a.json,
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ckpt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ls(a: LsArgs) -> Result<ExitCode> {
    match spec::source(a.store.as_deref(), a.program.as_deref(), "ls")? {
        spec::Source::Local(dir) => ls::ls(&dir, a.quick, a.json),
        spec::Source::Remote(r, program) => remote::ls(&r, program.as_deref(), a.quick, a.json),
    }
}

/// A GENERATION argument of a remote store: a number, or none (a path names a local file).
fn remote_generation(g: Option<&str>) -> Option<Option<u64>> {
    match g.map(str::trim) {
        None => Some(None),
        Some(g) => g.parse().ok().map(Some),
    }
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    if let Some(g) = remote_generation(a.generation.as_deref())
        && let spec::Source::Remote(r, program) =
            spec::source(a.store.as_deref(), a.program.as_deref(), "inspect")?
    {
        return remote::inspect(&r, program.as_deref(), g, a.runs, a.json);
    }
    spec::image_target(a.store.as_deref(), a.generation.as_deref(), "inspect")
        .and_then(|t| inspect::inspect(&t, a.runs, a.json))
}

fn verify(a: VerifyArgs) -> Result<ExitCode> {
    if let Some(g) = remote_generation(a.generation.as_deref())
        && let spec::Source::Remote(r, program) =
            spec::source(a.store.as_deref(), a.program.as_deref(), "verify")?
    {
        return remote::verify(&r, program.as_deref(), g, a.all, a.json);
    }
    let target = if a.all {
        spec::local_store(a.store.as_deref(), "verify").map(verify::Target::All)
    } else {
        spec::image_target(a.store.as_deref(), a.generation.as_deref(), "verify")
            .map(verify::Target::One)
    };
    target.and_then(|t| verify::verify(&t, a.json))
}

/// What subcommands return: an exit status, or an error printed as `ckpt: MESSAGE` (status 1).
pub type Result<T, E = CliError> = std::result::Result<T, E>;
