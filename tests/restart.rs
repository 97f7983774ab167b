//! Kill-and-restart of every example workload: each is run uninterrupted, then checkpointed on a
//! short timer, killed with SIGKILL at random moments (once in the middle of writing an image),
//! restarted each time, and must finish with the uninterrupted run's digest.

mod common;

use common::*;

/// The Rust workloads and the size each test runs them at (a few seconds each here).
const RUST: &[(&str, &[&str])] = &[
    ("lu", &[]),
    ("matmul", &[]),
    ("apsp", &[]),
    ("water", &[]),
    ("ocean", &[]),
    ("raytrace", &[]),
    ("mapchurn", &[]),
    // About a second each (dev profile): the classified volume is written once, then only read.
    ("volrend", &["128", "40"]),
    ("water_spatial", &["12000", "40"]),
];

#[test]
fn rust_examples_survive_kill_and_restart() {
    // One after another: the machine has two cores and each workload is CPU bound.
    for (name, args) in RUST {
        assert_survives(
            &Program::new(rust_example(name), args),
            name,
            "150ms",
            4,
            true,
        );
    }
}
