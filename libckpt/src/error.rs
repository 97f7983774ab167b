//! Error types: [`Error`] for callers, [`RawError`] for code that may not allocate.

use std::path::PathBuf;

use crate::image::FormatError;
use crate::sys::syscall::Errno;
use crate::text::FixedStr;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// An operation on the store or the system failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The checkpoint was refused because the process holds something that cannot be restored.
    #[error("cannot checkpoint: {0}")]
    Refused(String),
    /// A checkpoint failed for another reason; the previous checkpoint is intact.
    #[error("checkpoint failed: {0}")]
    Checkpoint(String),
    /// An image is damaged.
    #[error("checkpoint {path} is unusable: {reason}")]
    Corrupt {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        reason: FormatError,
    },
    /// Every committed checkpoint in the store is damaged.
    #[error("all {count} checkpoint(s) in {dir} are unusable (newest: {newest})")]
    AllCorrupt {
        /// The store.
        dir: PathBuf,
        /// How many were tried.
        count: usize,
        /// Why the newest was rejected.
        newest: String,
    },
    /// The checkpoint belongs to another program or another build of it.
    #[error("checkpoint {image} was taken by a different program: {reason}")]
    WrongBinary {
        /// The image file.
        image: PathBuf,
        /// What differs.
        reason: String,
    },
    /// This process cannot be laid out as the checkpointed one was.
    #[error("cannot restore {image}: {reason}")]
    Layout {
        /// The image file.
        image: PathBuf,
        /// What is in the way.
        reason: String,
    },
    /// `CKPT_RESTORE=require` and there is nothing to restore.
    #[error("CKPT_RESTORE=require but {0} holds no committed checkpoint")]
    NoCheckpoint(PathBuf),
    /// Another process is using the same store.
    #[error("store {0} is in use by another process")]
    StoreBusy(PathBuf),
    /// A checkpoint is already being taken.
    #[error("a checkpoint is already in progress")]
    Busy,
    /// `init` has not been called (or `shutdown` was).
    #[error("checkpointing is not initialised")]
    NotInitialized,
    /// `init` was called twice.
    #[error("checkpointing is already initialised")]
    AlreadyInitialized,
    /// The process must run without address-space randomisation and could not arrange it.
    #[error("cannot disable address-space randomisation: {0}")]
    Aslr(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure a [`RawError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawKind {
    /// Refused: the process holds a resource that cannot be restored.
    Refused,
    /// An I/O or system-call failure.
    Io,
    /// A fixed capacity prepared at `init` was exceeded.
    Capacity,
    /// Another checkpoint is running.
    Busy,
}

/// An error built without allocating (inside the signal handler).
#[derive(Debug, Clone, Copy)]
pub struct RawError {
    /// The kind.
    pub kind: RawKind,
    /// The message.
    pub msg: FixedStr<320>,
}

impl RawError {
    /// An error with a formatted message.
    pub fn new(kind: RawKind, args: core::fmt::Arguments<'_>) -> Self {
        let mut msg = FixedStr::new();
        let _ = core::fmt::write(&mut msg, args);
        RawError { kind, msg }
    }

    /// A failed system call: `op` on `what`.
    pub fn sys(op: &str, what: &[u8], e: Errno) -> Self {
        Self::new(
            RawKind::Io,
            format_args!("{op} {}: {e}", crate::text::Bytes(what)),
        )
    }
}

impl From<RawError> for Error {
    fn from(e: RawError) -> Self {
        match e.kind {
            RawKind::Refused => Error::Refused(e.msg.to_string()),
            RawKind::Busy => Error::Busy,
            RawKind::Io | RawKind::Capacity => Error::Checkpoint(e.msg.to_string()),
        }
    }
}

/// Builds a [`RawError`] with `format!` syntax.
macro_rules! raw_err {
    ($kind:ident, $($arg:tt)*) => {
        $crate::error::RawError::new($crate::error::RawKind::$kind, format_args!($($arg)*))
    };
}
pub(crate) use raw_err;
