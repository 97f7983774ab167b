//! Remote-memory pool client and the rmem wire protocol.
//!
//! A [`Pool`] spreads checkpoint generations over many `rmem-server`s with striping and
//! redundancy (`none`, `mirror:k`, `parity`, `rs:k+m`), encrypts and authenticates every chunk
//! on the client, survives servers dying, lying or being revoked, and falls back to local disk.
//!
//! # Use from a forked child
//! Nothing in the write or read path starts or needs a thread: a [`Pool`] drives its blocking
//! sockets itself, so a `fork`ed child (which has only the forking thread) can call
//! [`Pool::begin_generation`], [`GenWriter::put`] and [`GenWriter::commit`] on the pool it
//! inherited. The connections are shared with the parent after `fork`: the parent must not use
//! the pool until the child is done (or the child calls [`Pool::connect`] for its own
//! connections). [`spawn_maintainer`] is the only thread, and is optional.
//!
//! The protocol is described in `PROTOCOL.md` next to this crate's `Cargo.toml`.
#![deny(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod bufpool;
pub mod conn;
pub mod crc;
pub mod crypto;
pub mod disk;
pub mod erasure;
pub mod manifest;
pub mod pool;
pub mod proto;

pub use auth::Psk;
pub use crypto::Encryption;
pub use erasure::Redundancy;
pub use pool::{
    GenInfo, GenReader, GenWriter, Location, MaintainReport, Pool, PoolConfig, PoolError,
    ServerHealth, spawn_maintainer,
};
