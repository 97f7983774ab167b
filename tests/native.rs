//! Unmodified C programs under `LD_PRELOAD=libckpt.so`, and a Fortran program, pass the same
//! kill-and-restart test as the Rust examples.

mod common;

use common::*;

const C: &[&str] = &["lu", "matmul", "apsp", "ocean", "water", "raytrace"];

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
fn c_examples_under_preload_survive_kill_and_restart() {
    let so = libckpt_so();
    let bin = native_examples("c");
    for name in C {
        let exe = bin.join(name);
        assert!(exe.exists(), "C example {} was not built", exe.display());
        let p = Program::new(exe, &[]).env("LD_PRELOAD", so.to_str().unwrap());
        survives(&p, &format!("{name} (C)"));
    }
}

#[test]
fn fortran_example_survives_kill_and_restart() {
    if !have("gfortran") {
        eprintln!("SKIPPED: gfortran is not installed (scripts/test.sh installs it)");
        return;
    }
    let so = libckpt_so();
    let exe = native_examples("fortran").join("matmul");
    assert!(
        exe.exists(),
        "Fortran example {} was not built",
        exe.display()
    );
    let p = Program::new(exe, &[]).env("LD_PRELOAD", so.to_str().unwrap());
    survives(&p, "matmul (Fortran)");
}
