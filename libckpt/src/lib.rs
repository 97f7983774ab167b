//! ckpt: transparent checkpoint and restart of a running process.
//!
//! A program calls [`restore`] at the top of `main` (it returns only when there is nothing to
//! restore) and then [`init`], which arms a timer; every interval the process saves its writable
//! memory, registers and kernel state to a store, and after a crash the next run resumes exactly
//! where the last committed checkpoint was taken. [`start`] does both.
#![deny(unsafe_code)]
// RawError is carried inline: it is built inside the signal handler, which may not allocate.
#![allow(clippy::result_large_err)]

mod arena;
mod capture;
mod config;
mod error;
mod fault;
pub mod ffi;
pub mod image;
mod progress;
mod remote;
mod restore;
mod runtime;
pub mod store;
mod sys;
mod text;

pub use config::{
    BusyMode, Config, ConfigError, LogLevel, Policy, RemoteStore, RestoreMode, Store,
};
pub use error::{Error, Result};
pub use remote::{RemoteImages, StageWhat, Staged, StagedGeneration, program_pool};
/// Dirty-page trackers for incremental checkpoints (also used by the benchmarks).
pub use sys::dirty;

/// Resumes from the last committed checkpoint of this program, if the configuration says so.
///
/// Returns `Ok(())` when there is nothing to restore (or restoring is off). On success it does
/// not return: the process continues inside the checkpoint. A damaged newest checkpoint is set
/// aside and the previous one used; a checkpoint of another program is refused.
pub fn restore(config: &Config) -> Result<()> {
    restore::restore(config)
}

/// Starts checkpointing this process as `config` says. With no store configured it does
/// nothing. The first call re-executes the program once with address randomisation off.
pub fn init(config: Config) -> Result<()> {
    runtime::init(config)
}

/// [`restore`] then [`init`]: what a program calls first thing in `main`.
pub fn start(config: Config) -> Result<()> {
    restore(&config)?;
    init(config)
}

/// Takes a checkpoint now and returns once it is committed (or failed, leaving the previous
/// checkpoint intact). After a restore from this checkpoint, it returns `Ok(())` again, in the
/// restarted process. When `init` ran with checkpointing off it does nothing; before `init` it
/// is [`Error::NotInitialized`].
pub fn checkpoint_now() -> Result<()> {
    runtime::checkpoint_now()
}

/// Declares `[start, start + len)` not worth saving: its whole pages are left out of every
/// checkpoint and read as zeros after a restore.
pub fn exclude(start: *const u8, len: usize) -> Result<()> {
    runtime::exclude(start as usize, len)
}

/// Stops checkpointing: the timer is disarmed and the store released; committed checkpoints stay.
pub fn shutdown() -> Result<()> {
    runtime::shutdown()
}

/// The message of the last checkpoint if it failed (timer-driven failures are also logged).
pub fn last_error() -> Option<String> {
    runtime::last_error()
}
