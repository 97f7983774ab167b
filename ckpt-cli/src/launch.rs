//! `ckpt run` and `ckpt restart`: set the `CKPT_*` environment, preload `libckpt.so` unless the
//! program links ckpt itself, and replace this process with the program.
//!
//! The program is exec'd, not spawned: the library re-executes the program once at `init`
//! (to turn address randomisation off), and the caller's signals, exit status and process id
//! must be the program's own.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::error::CliError;
use crate::spec::{self, Store};
use crate::{Result, RunArgs};

/// Whether to preload `libckpt.so`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preload {
    /// Unless the program links ckpt itself (a Rust program using the `ckpt` crate, a C
    /// program linked with `-lckpt`): two copies of the library would both start.
    Auto,
    /// Always.
    Always,
    /// Never: the program calls ckpt itself and reads the same variables.
    Never,
}

/// Bytes found in every program that links ckpt: the name of the library's re-exec guard
/// variable (statically linked), or the library's soname (dynamically linked).
const LINKED_MARKERS: [&[u8]; 2] = [b"CKPT_REEXECED", b"libckpt.so"];

/// The variable the remote-store support reads; a library without it cannot take
/// `rmem://` or `tiered:` stores.
const STORE_VAR: &[u8] = b"CKPT_STORE";

/// The environment changes `run`/`restart` make: set (`Some`) or remove (`None`).
type Env = Vec<(&'static str, Option<OsString>)>;

/// Runs `ckpt run` (`restart` false) or `ckpt restart`.
pub fn run(a: RunArgs, restart: bool) -> Result<ExitCode> {
    let (program, args) = a.command.split_first().expect("clap requires the program");
    let exe = find_program(program).ok_or_else(|| CliError::Exec {
        program: program.to_string_lossy().into_owned(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found (nor on PATH)"),
    })?;
    let store = spec::from_arg_or_env(a.store.as_deref())?.ok_or(CliError::NoStore)?;
    let mut env: Env = Vec::new();
    match &store {
        Store::Dir(d) => {
            let abs = std::path::absolute(d).map_err(|source| CliError::Io {
                op: "resolve",
                path: d.clone(),
                source,
            })?;
            env.push(("CKPT_DIR", Some(abs.into_os_string())));
            env.push(("CKPT_STORE", None));
        }
        Store::Remote { spec, .. } | Store::Tiered(spec) => {
            env.push(("CKPT_STORE", Some(spec.into())));
            env.push(("CKPT_DIR", None));
        }
    }
    for (var, v) in [
        ("CKPT_INTERVAL", &a.interval),
        ("CKPT_POLICY", &a.policy),
        ("CKPT_TRACKER", &a.tracker),
        ("CKPT_KEEP", &a.keep),
        ("CKPT_LOG", &a.log),
    ] {
        if let Some(v) = v {
            env.push((var, Some(v.into())));
        }
    }
    if restart && a.fresh {
        return Err(CliError::Unsupported(
            "--fresh starts afresh, `restart` restores: use `ckpt run --fresh`".into(),
        ));
    }
    if restart {
        env.push(("CKPT_RESTORE", Some("require".into())));
    } else if a.fresh {
        env.push(("CKPT_RESTORE", Some("never".into())));
    }
    // Refuse here, with the variable named, what the library would refuse at start.
    let lookup = |k: &str| match env.iter().find(|(n, _)| *n == k) {
        Some((_, v)) => v.as_ref().map(|v| v.to_string_lossy().into_owned()),
        None => std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()),
    };
    ckpt::Config::from_lookup(lookup)?;
    if restart && let Store::Dir(d) = &store {
        check_restorable(d)?;
    }

    let binary = std::fs::read(&exe).map_err(|source| CliError::Io {
        op: "read",
        path: exe.clone(),
        source,
    })?;
    let linked = LINKED_MARKERS.iter().any(|m| contains(&binary, m));
    let preload = match a.preload {
        Preload::Auto => !linked,
        Preload::Always => true,
        Preload::Never => false,
    };
    let mut checked_lib = None;
    if preload {
        let lib = find_library(a.lib.as_deref())?;
        let mut list = lib.clone().into_os_string();
        if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
            list.push(":");
            list.push(old);
        }
        env.push(("LD_PRELOAD", Some(list)));
        checked_lib = Some(lib);
    }
    if let Some(spec) = store.remote_spec() {
        let (who, bytes) = match &checked_lib {
            Some(lib) => (
                lib.clone(),
                std::fs::read(lib).map_err(|source| CliError::Io {
                    op: "read",
                    path: lib.clone(),
                    source,
                })?,
            ),
            None => (exe.clone(), binary),
        };
        if !contains(&bytes, STORE_VAR) {
            return Err(CliError::Unsupported(format!(
                "{} has no remote-store support (it does not read CKPT_STORE), so it cannot \
                 checkpoint into {spec}; use a local store (--store dir:PATH) or a libckpt built \
                 with remote-store support",
                who.display()
            )));
        }
    }
    warn_inherited_fds(program);

    if a.dry_run {
        for (k, v) in &env {
            match v {
                Some(v) => println!("{k}={}", v.to_string_lossy()),
                None => println!("unset {k}"),
            }
        }
        let words: Vec<String> = std::iter::once(exe.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        println!("exec {}", words.join(" "));
        return Ok(ExitCode::SUCCESS);
    }
    let mut cmd = std::process::Command::new(&exe);
    // argv[0] as the user typed it, as a shell would.
    cmd.arg0(program).args(args);
    for (k, v) in &env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let err = cmd.exec();
    eprintln!("ckpt: cannot run {}: {err}", exe.display());
    Ok(ExitCode::from(
        if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    ))
}

/// `restart` of a local store: fail before starting the program if nothing can be restored
/// (the library would also stop, with status 75, but only after the program started).
fn check_restorable(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(CliError::NothingToRestore(format!(
            "store {} does not exist",
            dir.display()
        )));
    }
    let files = crate::images::store_files(dir)?;
    if !files
        .iter()
        .any(|f| f.state == crate::images::FileState::Committed)
    {
        return Err(CliError::NothingToRestore(if files.is_empty() {
            format!("store {} is empty", dir.display())
        } else {
            format!(
                "store {} holds no committed checkpoint ({})",
                dir.display(),
                crate::images::describe(&files)
            )
        }));
    }
    Ok(())
}

/// The program to exec: a path as given, else the first executable of that name on `PATH`.
fn find_program(p: &OsStr) -> Option<PathBuf> {
    if p.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(p)).find(|c| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `libckpt.so`: `--lib`, else `CKPT_LIB`, else next to this executable, in `../lib` (an
/// installed prefix), or in the cargo target directory this `ckpt` was built in.
pub fn find_library(arg: Option<&Path>) -> Result<PathBuf> {
    let given = arg
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CKPT_LIB").map(PathBuf::from));
    if let Some(p) = given {
        return std::fs::canonicalize(&p)
            .map_err(|e| CliError::NoLibrary(format!("{}: {e}", p.display())));
    }
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("libckpt.so"));
        candidates.push(dir.join("../lib/libckpt.so"));
        // Built by cargo as this crate's dependency, from the same sources as `ckpt` itself.
        candidates.push(dir.join("deps/libckpt.so"));
        // target/<profile>/deps/ (a test binary) or target/<profile>/examples/.
        candidates.push(dir.join("../libckpt.so"));
    }
    let profiles: [&str; 2] = if cfg!(debug_assertions) {
        ["debug", "release"]
    } else {
        ["release", "debug"]
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for p in profiles {
        candidates.push(target.join(p).join("libckpt.so"));
    }
    for c in candidates {
        if c.is_file() {
            return std::fs::canonicalize(&c)
                .map_err(|e| CliError::NoLibrary(format!("{}: {e}", c.display())));
        }
        tried.push(c.display().to_string());
    }
    Err(CliError::NoLibrary(format!("tried {}", tried.join(", "))))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Warns about descriptors the program would inherit that a checkpoint refuses (pipes, sockets,
/// other kernel objects): every checkpoint would fail. They are left open: the program may
/// need them; closing them is the caller's choice.
fn warn_inherited_fds(program: &OsStr) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let mut bad = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if fd <= 2 {
            continue;
        }
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy().into_owned();
        let kernel_object =
            t.starts_with("pipe:") || t.starts_with("socket:") || t.starts_with("anon_inode:");
        // O_CLOEXEC (octal 02000000) in fdinfo's flags: not inherited.
        let cloexec = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .is_some_and(|f| f & 0o2000000 != 0);
        if kernel_object && !cloexec {
            bad.push(format!("{fd} ({t})"));
        }
    }
    if !bad.is_empty() {
        eprintln!(
            "ckpt: warning: {} inherits descriptor(s) {}; a checkpoint refuses pipes, sockets and \
             other kernel objects, so every checkpoint would fail: close them before running \
             ckpt (in a shell: `exec N>&-`)",
            program.to_string_lossy(),
            bad.join(", ")
        );
    }
}
