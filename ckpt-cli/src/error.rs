//! The errors of the `ckpt` command: one variant per thing that can fail, each naming the
//! store, image, generation or server involved.

use std::path::PathBuf;

use crate::images::ImageError;

/// Why a subcommand could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Neither `--store` nor the environment names a store.
    #[error(
        "no store given: pass --store PATH (or dir:PATH, rmem://...), or set CKPT_DIR or CKPT_STORE"
    )]
    NoStore,
    /// The store directory is not there.
    #[error("store {0} does not exist")]
    StoreMissing(PathBuf),
    /// The store path names something that is not a directory.
    #[error("store {0} is not a directory")]
    NotADirectory(PathBuf),
    /// The store holds no image file at all.
    #[error("store {0} is empty: it holds no checkpoint")]
    StoreEmpty(PathBuf),
    /// The store holds files but no committed generation.
    #[error("store {dir} holds no committed checkpoint ({others})")]
    NoCommitted {
        /// The store.
        dir: PathBuf,
        /// What it does hold.
        others: String,
    },
    /// A remote or tiered store where this subcommand reads only a local directory.
    #[error(
        "`ckpt {cmd}` reads local directory stores only; {spec} is a remote-memory store, whose \
         images need the remote-store support of libckpt (CKPT_STORE), which is not there yet{hint}"
    )]
    RemoteStore {
        /// The subcommand.
        cmd: &'static str,
        /// The store as given.
        spec: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// A store spec that cannot be parsed.
    #[error("bad store {spec:?}: {reason}")]
    BadStore {
        /// As given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The generation asked for is not in the store.
    #[error("generation {generation} does not exist in {dir} ({have})")]
    NoGeneration {
        /// The store.
        dir: PathBuf,
        /// Asked for.
        generation: u64,
        /// What the store holds instead.
        have: String,
    },
    /// A GENERATION argument that is neither a number nor an image file.
    #[error("{0:?} is neither a generation number nor an image file")]
    BadGeneration(String),
    /// A file or directory operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An image that cannot be read (the message says where it is damaged).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A `CKPT_*` value the library would refuse.
    #[error("{0} (from the command line or the environment)")]
    Config(#[from] ckpt::ConfigError),
    /// libckpt.so was not found.
    #[error(
        "cannot find libckpt.so ({0}); build it with `cargo build -p ckpt`, or pass --lib PATH or set CKPT_LIB"
    )]
    NoLibrary(String),
    /// The library or program cannot take the store asked for.
    #[error("{0}")]
    Unsupported(String),
    /// `restart` with nothing to restore.
    #[error("nothing to restart from: {0}")]
    NothingToRestore(String),
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file of the pool.
    #[error(transparent)]
    Key(#[from] rmem_client::auth::AuthError),
    /// The pool could not be reached.
    #[error("remote-memory pool: {0}")]
    Pool(#[from] rmem_client::PoolError),
    /// A stats endpoint could not be read.
    #[error("stats endpoint {addr}: {reason}")]
    Stats {
        /// The endpoint.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// Reading a remote store failed (the helper's message).
    #[error("{0}")]
    Remote(String),
    /// JSON output failed.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}
