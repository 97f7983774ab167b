//! Unmodified C programs under `LD_PRELOAD=libckpt.so`, and a Fortran program, pass the same
//! kill-and-restart test as the Rust examples.

mod common;

use common::*;

const C: &[&str] = &["lu", "matmul", "apsp", "ocean", "water", "raytrace"];

#[test]
fn c_examples_under_preload_survive_kill_and_restart() {
    let so = libckpt_so();
    let bin = native_examples("c");
    for name in C {
        let exe = bin.join(name);
        assert!(exe.exists(), "C example {} was not built", exe.display());
        let p = Program::new(exe, &[]).env("LD_PRELOAD", so.to_str().unwrap());
        assert_survives(&p, &format!("{name} (C)"), "150ms", 4, true);
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
    assert_survives(&p, "matmul (Fortran)", "150ms", 4, true);
}
