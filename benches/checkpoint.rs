//! Checkpoint and restore benchmark (being written).
fn main() {}
