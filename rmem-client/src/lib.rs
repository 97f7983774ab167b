//! Remote-memory pool client and the rmem wire protocol.
#![deny(unsafe_code)]
pub mod auth;
pub mod proto;
