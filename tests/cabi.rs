//! The C ABI as an installed library: a C program linked through pkg-config and a Fortran
//! program using the `ckpt` module both survive kill and restart with manual checkpoints.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Installs the library for this build profile into a fresh prefix with the project's script.
fn installed() -> (TempDir, PathBuf) {
    libckpt_so();
    let prefix = TempDir::new("prefix");
    let profile = profile_dir();
    let profile = profile.file_name().unwrap().to_str().unwrap();
    let st = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-c.sh"))
        .arg(prefix.path())
        .env("PROFILE", profile)
        .status()
        .unwrap();
    assert!(st.success(), "install-c.sh failed");
    let lib = prefix.path().join("lib");
    (prefix, lib)
}

#[test]
fn c_program_linked_through_pkg_config() {
    let (prefix, lib) = installed();
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "ckpt"])
        .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
        .output();
    let Some(flags) = flags.ok().filter(|o| o.status.success()) else {
        eprintln!("SKIPPED: pkg-config is not installed");
        return;
    };
    let flags = String::from_utf8(flags.stdout).unwrap();
    let exe = prefix.path().join("explicit");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/explicit.c");
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .status()
        .unwrap();
    assert!(
        st.success(),
        "compiling explicit.c against the installed library failed"
    );
    assert_survives(
        &Program::new(&exe, &["1000000", "400"]),
        "explicit_c",
        "1h",
        3,
        false,
    );
}

#[test]
fn fortran_program_using_the_module() {
    if !have("gfortran") {
        eprintln!("SKIPPED: gfortran is not installed (scripts/test.sh installs it)");
        return;
    }
    let (prefix, lib) = installed();
    let exe = prefix.path().join("module_use");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/module.f90");
    let st = Command::new("gfortran")
        .args(["-O2", "-J"])
        .arg(prefix.path())
        .arg("-o")
        .arg(&exe)
        .arg(prefix.path().join("include/ckpt.f90"))
        .arg(&src)
        .arg(format!("-L{}", lib.display()))
        .arg("-lckpt")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .status()
        .unwrap();
    assert!(
        st.success(),
        "compiling module.f90 with the ckpt module failed"
    );
    assert_survives(&Program::new(&exe, &[]), "module_f90", "1h", 3, false);
}
