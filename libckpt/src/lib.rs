//! ckpt: transparent checkpoint and restart of a running process.
