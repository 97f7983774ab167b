//! Support code shared by the top-level examples, tests and benchmarks.

pub mod workload;

/// Turns checkpointing on as the `CKPT_*` environment says (restoring first if a checkpoint
/// exists), or exits with a clear message: the first line of every Rust example's `main`.
pub fn checkpointing_from_env() {
    let result = ckpt::Config::from_env()
        .map_err(ckpt::Error::from)
        .and_then(ckpt::start);
    if let Err(e) = result {
        eprintln!("ckpt: {e}");
        std::process::exit(75);
    }
}
