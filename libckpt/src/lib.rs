//! ckpt: transparent checkpoint and restart of a running process.
//!
//! A program calls [`restore`] at the top of `main` (it returns only when there is nothing to
//! restore) and then [`init`], which arms a timer; every interval the process saves its writable
//! memory, registers and kernel state to a store, and after a crash the next run resumes exactly
//! where the last committed checkpoint was taken. [`start`] does both.

mod config;

pub use config::{Config, ConfigError, LogLevel, Policy, RestoreMode};

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Not available in this build.
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Resumes from the last committed checkpoint of this program, if the configuration says so.
///
/// Returns `Ok(())` when there is nothing to restore (or restoring is off). On success it does
/// not return: the process continues inside the checkpoint.
pub fn restore(config: &Config) -> Result<()> {
    if config.store_dir().is_none() {
        return Ok(());
    }
    Err(Error::Unsupported("restore"))
}

/// Starts checkpointing this process as `config` says.
pub fn init(config: Config) -> Result<()> {
    if config.store_dir().is_none() {
        return Ok(());
    }
    Err(Error::Unsupported("init"))
}

/// [`restore`] then [`init`]: what a program calls first thing in `main`.
pub fn start(config: Config) -> Result<()> {
    restore(&config)?;
    init(config)
}

/// Takes a checkpoint now and returns once it is committed.
pub fn checkpoint_now() -> Result<()> {
    Err(Error::Unsupported("checkpoint_now"))
}

/// Declares `[start, start + len)` not worth saving: its whole pages read as zero after a restore.
pub fn exclude(start: *const u8, len: usize) -> Result<()> {
    let _ = (start, len);
    Err(Error::Unsupported("exclude"))
}

/// Stops checkpointing (the timer is disarmed; committed checkpoints stay in the store).
pub fn shutdown() -> Result<()> {
    Ok(())
}
