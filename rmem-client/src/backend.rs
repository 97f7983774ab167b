//! The storage interface every place a shard can live implements: a remote server connection
//! ([`crate::conn::Conn`]) or a local directory ([`crate::disk::DiskStore`]).
//!
//! Writes may be pipelined: `put` can return before the data is acknowledged and report a failure
//! on a later call; `sync` waits for every earlier `put`. Reads are pipelined by `send_get`
//! followed, in the same order, by `recv_get`.

use crate::proto::{GenEntry, Status};

/// Errors of a backend operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The object or generation is not there (never silently read as zeros).
    #[error("{target}: not found: {what}")]
    NotFound { target: String, what: String },
    #[error("{target}: no space: {msg}")]
    NoSpace { target: String, msg: String },
    #[error("{target}: memory is being revoked: {msg}")]
    Revoked { target: String, msg: String },
    /// The server refused a request for another reason (it stays usable).
    #[error("{target}: refused: {msg}")]
    Refused { target: String, msg: String },
    /// Authentication failed in either direction (wrong key on one side).
    #[error("{target}: authentication failed: {msg}")]
    Auth { target: String, msg: String },
    /// The target is unusable (connection lost, protocol violation, disk error).
    #[error("{target}: unavailable: {msg}")]
    Down { target: String, msg: String },
}

impl BackendError {
    /// Whether the backend is still usable after this error.
    pub fn is_down(&self) -> bool {
        matches!(self, BackendError::Down { .. } | BackendError::Auth { .. })
    }
}

/// Shorthand for backend results.
pub type BResult<T> = Result<T, BackendError>;

/// A place to keep shards and manifests of a pool's generations.
pub trait Backend: std::fmt::Debug + Send {
    /// Human-readable name (address or path) used in errors and logs.
    fn name(&self) -> String;
    /// Stores one object; may return before it is acknowledged (see [`Backend::sync`]).
    fn put(&mut self, generation: u64, key: u64, data: &[u8]) -> BResult<()>;
    /// Waits until every earlier `put` is acknowledged; reports the first failure among them.
    fn sync(&mut self) -> BResult<()>;
    /// Queues a read; its result comes from the matching [`Backend::recv_get`], in order.
    fn send_get(&mut self, generation: u64, key: u64) -> BResult<()>;
    fn recv_get(&mut self) -> BResult<Vec<u8>>;
    /// Pushes queued requests onto the wire now (they may sit in a buffer until the first
    /// `recv_get` otherwise, and then the servers of a batch would start one after another).
    fn flush_requests(&mut self) -> BResult<()> {
        Ok(())
    }
    /// Makes a manifest the committed state of a generation on this backend (atomic).
    fn commit(&mut self, generation: u64, manifest: &[u8]) -> BResult<()>;
    fn manifest(&mut self, generation: u64) -> BResult<Vec<u8>>;
    fn list(&mut self) -> BResult<Vec<GenEntry>>;
    /// Frees every object and the manifest of a generation (idempotent).
    fn free(&mut self, generation: u64) -> BResult<()>;
    fn status(&mut self) -> BResult<Status>;

    /// `put` of data whose CRC32C the caller already knows (saves a pass over the data).
    fn put_crc(&mut self, generation: u64, key: u64, data: &[u8], crc: u32) -> BResult<()> {
        let _ = crc;
        self.put(generation, key, data)
    }

    /// `recv_get` with the CRC32C of the data (from the frame when the transport has one).
    fn recv_get_crc(&mut self) -> BResult<(Vec<u8>, u32)> {
        let d = self.recv_get()?;
        let c = crate::crc::crc32c(&d);
        Ok((d, c))
    }

    /// Objects whose pipelined put was refused since the last call, as (generation, key); the
    /// backend stays usable and the other puts were stored.
    fn take_failed_puts(&mut self) -> Vec<(u64, u64)> {
        Vec::new()
    }

    /// Number of puts sent so far (a put's sequence number is this value right after it).
    fn puts_sent(&self) -> u64 {
        0
    }

    /// Puts up to this sequence number are acknowledged as stored. Backends whose `put` is
    /// synchronous never have unacknowledged puts.
    fn puts_acked(&self) -> u64 {
        u64::MAX
    }

    /// One read, not pipelined.
    fn get(&mut self, generation: u64, key: u64) -> BResult<Vec<u8>> {
        self.send_get(generation, key)?;
        self.recv_get()
    }
}
