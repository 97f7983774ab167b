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
];

fn survives(p: &Program, name: &str) {
    let mut rng = Rng::new(name);
    let (digest, base) = baseline(p);
    let store = TempDir::new(name);
    let (run, log) = kill_and_restart(p, store.path(), "150ms", 4, true, base, &mut rng);
    run.assert_ok(name);
    assert_eq!(
        run.digest().as_deref(),
        Some(digest.as_str()),
        "{name}: digest differs after kill/restart\n{log}"
    );
    assert!(
        log.contains("restored generation"),
        "{name}: no restore happened\n{log}"
    );
}

#[test]
fn rust_examples_survive_kill_and_restart() {
    // One after another: the machine has two cores and each workload is CPU bound.
    for (name, args) in RUST {
        survives(&Program::new(rust_example(name), args), name);
    }
}
