//! Bad input gets a clear error and loses nothing: damaged images, every image damaged, another
//! binary, a store that fails or fills up, a busy store, bad configuration; and the restore
//! hazards: files at their descriptors and lengths, excluded memory, refused resources.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(120);

fn smoke() -> Program {
    Program::new(rust_example("smoke"), &["4000000", "400"])
}

fn images(store: &Path) -> Vec<PathBuf> {
    ckpt::store::list(store)
        .map(|g| g.into_iter().map(|g| g.path).collect())
        .unwrap_or_default()
}

/// Runs `p` with checkpoints every 100 ms until the store holds `n` committed images, then
/// kills it. Returns the stderr.
fn checkpoint_then_kill(p: &Program, store: &Path, n: usize, extra: &[(&str, &str)]) -> String {
    let dir = store.to_str().unwrap();
    let mut env = vec![
        ("CKPT_DIR", dir),
        ("CKPT_INTERVAL", "100ms"),
        ("CKPT_LOG", "info"),
    ];
    env.extend_from_slice(extra);
    let start = Instant::now();
    let mut child = p.spawn(&env);
    while images(store).len() < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "program ended before {n} checkpoints"
        );
        assert!(start.elapsed() < LIMIT, "no {n} checkpoints in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    finish(child, LIMIT, start).stderr
}

fn restart(p: &Program, store: &Path) -> Run {
    p.run(
        &[
            ("CKPT_DIR", store.to_str().unwrap()),
            ("CKPT_INTERVAL", "100ms"),
            ("CKPT_LOG", "info"),
        ],
        LIMIT,
    )
}

fn damage(path: &Path, how: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match how {
        "data bit" => bytes[4096 + 12345] ^= 0x10,
        "header bit" => bytes[20] ^= 0x01,
        "manifest bit" => {
            let n = bytes.len();
            bytes[n - 100] ^= 0x80;
        }
        "truncation" => bytes.truncate(bytes.len() / 2),
        _ => unreachable!(),
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damaged_newest_image_falls_back_to_the_previous_one() {
    let p = smoke();
    let (digest, _) = baseline(&p);
    for how in ["data bit", "header bit", "manifest bit", "truncation"] {
        let store = TempDir::new("fallback");
        checkpoint_then_kill(&p, store.path(), 2, &[]);
        let newest = images(store.path())[0].clone();
        damage(&newest, how);
        let r = restart(&p, store.path());
        r.assert_ok(how);
        assert!(
            r.stderr.contains("is unusable") && r.stderr.contains("falling back"),
            "{how}: no fallback said\n{}",
            r.stderr
        );
        assert_eq!(
            r.digest().as_deref(),
            Some(digest.as_str()),
            "{how}: wrong result after fallback\n{}",
            r.stderr
        );
        assert!(
            !newest.exists(),
            "{how}: the damaged image was not set aside"
        );
    }
}

#[test]
fn every_image_damaged_is_a_clear_error() {
    let p = smoke();
    let store = TempDir::new("allbad");
    checkpoint_then_kill(&p, store.path(), 2, &[]);
    for img in images(store.path()) {
        damage(&img, "data bit");
    }
    for _ in 0..2 {
        // Twice: a failed restore must not destroy the evidence or turn into a fresh start.
        let r = restart(&p, store.path());
        assert_eq!(
            r.status.code(),
            Some(75),
            "expected exit 75, got {:?}\n{}",
            r.status,
            r.stderr
        );
        assert!(r.stderr.contains("are unusable"), "{}", r.stderr);
        assert!(r.digest().is_none(), "must not run from scratch silently");
    }
}

#[test]
fn another_binary_is_refused() {
    let dir = TempDir::new("wrongbin");
    let prog = dir.path().join("prog");
    std::fs::copy(rust_example("smoke"), &prog).unwrap();
    let p = Program::new(&prog, &["4000000", "400"]);
    let store = TempDir::new("wrongbin-store");
    checkpoint_then_kill(&p, store.path(), 1, &[]);
    // Replace the program with a different one at the same path.
    std::fs::remove_file(&prog).unwrap();
    std::fs::copy(rust_example("probe"), &prog).unwrap();
    let r = restart(&p, store.path());
    assert_eq!(r.status.code(), Some(75), "{:?}\n{}", r.status, r.stderr);
    assert!(r.stderr.contains("different program"), "{}", r.stderr);
    assert_eq!(
        images(store.path()).len(),
        1,
        "the checkpoint must stay in the store"
    );
}

#[test]
fn failing_store_writes_keep_the_program_running_and_the_previous_checkpoint() {
    // Image writes fail with ENOSPC from the 60th page run on (a few images in).
    let p = smoke();
    let (digest, _) = baseline(&p);
    let store = TempDir::new("enospc");
    let dir = store.path().to_str().unwrap();
    let failing = [
        ("CKPT_DIR", dir),
        ("CKPT_INTERVAL", "100ms"),
        ("CKPT_LOG", "info"),
        ("CKPT_FAULT", "write-data@60"),
    ];
    let r = p.run(&failing, LIMIT);
    r.assert_ok("run with failing writes");
    assert_eq!(
        r.digest().as_deref(),
        Some(digest.as_str()),
        "the program must finish correctly"
    );
    assert!(
        r.stderr
            .contains("failed, the previous checkpoint is intact")
            && r.stderr.contains("no space left"),
        "{}",
        r.stderr
    );
    // Again, killed after a failed checkpoint: the last good one restores and finishes.
    let log = run_until_logged(
        &p,
        &failing,
        "failed, the previous checkpoint is intact",
        LIMIT,
    );
    let tmp = std::fs::read_dir(store.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(tmp, 0, "a failed checkpoint left its temporary file\n{log}");
    assert!(
        !images(store.path()).is_empty(),
        "no committed checkpoint before the failure\n{log}"
    );
    let again = p.run(
        &[
            ("CKPT_DIR", dir),
            ("CKPT_RESTORE", "require"),
            ("CKPT_LOG", "info"),
        ],
        LIMIT,
    );
    again.assert_ok("restore after failing writes");
    assert!(
        again.stderr.contains("restored generation"),
        "{}",
        again.stderr
    );
    assert_eq!(again.digest().as_deref(), Some(digest.as_str()));
}

/// Mounts a tmpfs of `size` at `dir`; `None` (with a message) when not permitted here.
fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
    if !is_root() {
        eprintln!("SKIPPED: mounting a small filesystem needs root");
        return None;
    }
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status();
    if !ok.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mount -t tmpfs is not permitted here");
        return None;
    }
    Some(Mount(dir.to_path_buf()))
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_store_fails_checkpoints_cleanly() {
    let p = smoke();
    let (digest, _) = baseline(&p);
    let dir = TempDir::new("full");
    // One ~31 MiB image fits; a second does not.
    let Some(_m) = tmpfs(dir.path(), "48m") else {
        return;
    };
    let env = [
        ("CKPT_DIR", dir.path().to_str().unwrap()),
        ("CKPT_INTERVAL", "100ms"),
        ("CKPT_LOG", "info"),
    ];
    let r = p.run(&env, LIMIT);
    r.assert_ok("run on a full store");
    assert_eq!(r.digest().as_deref(), Some(digest.as_str()));
    assert!(r.stderr.contains("no space left on device"), "{}", r.stderr);
    let log = run_until_logged(&p, &env, "no space left on device", LIMIT);
    assert_eq!(images(dir.path()).len(), 1, "{log}");
    let again = p.run(
        &[
            ("CKPT_DIR", dir.path().to_str().unwrap()),
            ("CKPT_RESTORE", "require"),
            ("CKPT_LOG", "info"),
        ],
        LIMIT,
    );
    again.assert_ok("restore from a full store");
    assert_eq!(again.digest().as_deref(), Some(digest.as_str()));
}

#[test]
fn read_only_store_fails_checkpoints_cleanly() {
    let p = smoke();
    let (digest, _) = baseline(&p);
    let dir = TempDir::new("rostore");
    let Some(_m) = tmpfs(dir.path(), "256m") else {
        return;
    };
    let store = dir.path().join("s");
    let env = [
        ("CKPT_DIR", store.to_str().unwrap()),
        ("CKPT_INTERVAL", "100ms"),
        ("CKPT_LOG", "info"),
    ];
    checkpoint_then_kill(&p, &store, 1, &[]);
    let before = images(&store);
    let ro = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ro.success());
    // The restore works from the read-only store; every later checkpoint fails cleanly and the
    // program runs on.
    let log = run_until_logged(&p, &env, "read-only file system", LIMIT);
    assert!(log.contains("restored generation"), "{log}");
    let _ = std::process::Command::new("mount")
        .args(["-o", "remount,rw"])
        .arg(dir.path())
        .status();
    assert_eq!(
        images(&store),
        before,
        "the read-only run changed the store"
    );
    let again = p.run(
        &[
            ("CKPT_DIR", store.to_str().unwrap()),
            ("CKPT_RESTORE", "require"),
            ("CKPT_LOG", "info"),
        ],
        LIMIT,
    );
    again.assert_ok("restore after read-only");
    assert_eq!(again.digest().as_deref(), Some(digest.as_str()));
}

#[test]
fn unrestorable_resources_are_refused_by_name() {
    let store = TempDir::new("refuse");
    let r = Program::new(rust_example("probe"), &["refuse"]).run(
        &[
            ("CKPT_DIR", store.path().to_str().unwrap()),
            ("CKPT_LOG", "off"),
        ],
        LIMIT,
    );
    r.assert_ok("probe refuse");
    for what in ["pipe", "socket", "thread", "shared writable file mapping"] {
        assert!(
            r.stdout.contains(&format!("refused {what}:")),
            "{what} not refused\n{}",
            r.stdout
        );
    }
    assert!(
        r.stdout.contains("refused io_uring:") || r.stdout.contains("skipped io_uring"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("checkpointed after releasing everything"));
}

#[test]
fn files_come_back_at_their_descriptor_offset_and_length() {
    let mut rng = Rng::new("files");
    let dir = TempDir::new("files");
    let out = dir.path().join("out.txt");
    let p = Program::new(
        rust_example("probe"),
        &["files", out.to_str().unwrap(), "400"],
    );
    let store = dir.path().join("store");
    let base = Duration::from_millis(2500);
    let (r, log) = kill_and_restart(&p, &store, "1h", 4, false, base, &mut rng);
    r.assert_ok("files");
    assert!(log.contains("restored generation"), "{log}");
    let text = std::fs::read_to_string(&out).unwrap();
    let want: String = (0..400).map(|i| format!("line {i}\n")).collect();
    assert!(
        text == want,
        "output file differs after restarts ({} bytes, want {})\n{log}",
        text.len(),
        want.len()
    );
}

#[test]
fn excluded_pages_read_as_zero_after_restore() {
    let out = restored_scenario("exclude");
    assert!(out.contains("page sums [700416, 0, 700416]"), "{out}");
}

#[test]
fn a_store_in_use_is_refused() {
    let store = TempDir::new("busy");
    let dir = store.path().to_str().unwrap();
    let holder = Program::new(rust_example("probe"), &["hold", "30"]);
    // The holder logs "checkpointing into" once it holds the store.
    let (mut child, _) = spawn_waiting_for(
        &holder,
        &[("CKPT_DIR", dir), ("CKPT_LOG", "info")],
        "checkpointing into",
        LIMIT,
    );
    let r = Program::new(rust_example("probe"), &["hold", "0"]).run(&[("CKPT_DIR", dir)], LIMIT);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.status.code(), Some(75), "{:?} {}", r.status, r.stderr);
    assert!(
        r.stderr.contains("in use by another process"),
        "{}",
        r.stderr
    );
}

#[test]
fn configuration_errors_name_the_variable() {
    let p = Program::new(rust_example("probe"), &["hold", "0"]);
    for (k, v) in [
        ("CKPT_INTERVAL", "soon"),
        ("CKPT_KEEP", "0"),
        ("CKPT_RESTORE", "perhaps"),
        ("CKPT_POLICY", "magic"),
        ("CKPT_LOG", "loud"),
    ] {
        let r = p.run(&[("CKPT_DIR", "/nonexistent/never-created"), (k, v)], LIMIT);
        assert_eq!(r.status.code(), Some(75), "{k}={v}: {:?}", r.status);
        assert!(
            r.stderr.contains(k),
            "{k}={v}: message does not name it: {}",
            r.stderr
        );
    }
}

#[test]
fn restore_modes() {
    let store = TempDir::new("modes");
    let dir = store.path().to_str().unwrap();
    let p = smoke();
    let r = p.run(&[("CKPT_DIR", dir), ("CKPT_RESTORE", "require")], LIMIT);
    assert_eq!(r.status.code(), Some(75));
    assert!(
        r.stderr.contains("holds no committed checkpoint"),
        "{}",
        r.stderr
    );
    checkpoint_then_kill(&p, store.path(), 1, &[]);
    let fresh = p.run(
        &[
            ("CKPT_DIR", dir),
            ("CKPT_RESTORE", "never"),
            ("CKPT_LOG", "info"),
        ],
        LIMIT,
    );
    fresh.assert_ok("never");
    assert!(
        !fresh.stderr.contains("restored generation"),
        "{}",
        fresh.stderr
    );
}

/// Runs a probe scenario that checkpoints and then dies, then runs it again as the restored
/// process; returns the second run's stdout.
fn restored_scenario(mode: &str) -> String {
    restored_scenario_with(mode, &[])
}

/// [`restored_scenario`] with more variables (a policy, a tracker).
fn restored_scenario_with(mode: &str, more: &[(&str, &str)]) -> String {
    let dir = TempDir::new(mode);
    let marker = dir.path().join("restored");
    let store = dir.path().join("s");
    let p = Program::new(rust_example("probe"), &[mode, marker.to_str().unwrap()]);
    let mut env = vec![("CKPT_DIR", store.to_str().unwrap()), ("CKPT_LOG", "info")];
    env.extend_from_slice(more);
    let first = p.run(&env, LIMIT);
    if first.stdout.contains("skipped") {
        return first.stdout;
    }
    assert!(
        first.stdout.contains("checkpointed"),
        "{mode}: {}\n{}",
        first.stdout,
        first.stderr
    );
    std::fs::write(&marker, b"").unwrap();
    let second = p.run(&env, LIMIT);
    second.assert_ok(mode);
    assert!(
        second.stderr.contains("restored generation"),
        "{mode}: {}",
        second.stderr
    );
    second.stdout
}

#[test]
fn a_library_loaded_with_dlopen_works_after_restore() {
    let out = restored_scenario("dlopen");
    if out.contains("skipped") {
        eprintln!("SKIPPED: {out}");
        return;
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("zlib crc32"))
        .unwrap_or_else(|| panic!("{out}"));
    let v: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(v[3], v[5], "{line}");
}

#[test]
fn a_checkpoint_taken_on_the_alternate_signal_stack_restores() {
    let out = restored_scenario("altstack");
    assert!(
        out.contains("restored from a checkpoint taken on the alternate stack"),
        "{out}"
    );
}

#[test]
fn rseq_is_registered_again_after_restore() {
    let out = restored_scenario("rseq");
    if out.contains("skipped") {
        eprintln!("SKIPPED: {out}");
        return;
    }
    assert!(out.contains("(registered)"), "{out}");
}

#[test]
fn data_in_prot_none_memory_survives() {
    let out = restored_scenario("protnone");
    assert!(out.contains("value in PROT_NONE page: 42"), "{out}");
}

#[test]
fn guard_pages_are_not_data_under_any_policy() {
    // MADV_GUARD_INSTALL (Linux 6.13+) leaves page-table markers that PAGEMAP_SCAN reports like
    // written pages; a checkpoint that took them for data read them and died of SIGSEGV.
    for (policy, tracker) in [
        ("sequential", ""),
        ("incremental", "uffd-async"),
        ("incremental", "mprotect"),
        ("forked-incremental", "uffd-async"),
        ("buffered-incremental", "uffd-async"),
    ] {
        let mut env = vec![("CKPT_POLICY", policy)];
        if !tracker.is_empty() {
            env.push(("CKPT_TRACKER", tracker));
        }
        let out = restored_scenario_with("guard", &env);
        if out.contains("skipped") {
            eprintln!("SKIPPED: {out}");
            return;
        }
        assert!(
            out.contains("guard: 0 wrong bytes"),
            "{policy}/{tracker}: {out}"
        );
    }
}

#[test]
fn a_failed_run_keeps_its_checkpoints() {
    let store = TempDir::new("panic");
    let r = Program::new(rust_example("probe"), &["panic"]).run(
        &[
            ("CKPT_DIR", store.path().to_str().unwrap()),
            ("CKPT_LOG", "info"),
        ],
        LIMIT,
    );
    assert_eq!(r.status.code(), Some(101), "{}", r.stderr);
    assert!(r.stderr.contains("checkpoints kept"), "{}", r.stderr);
    assert_eq!(images(store.path()).len(), 1);
}

#[test]
fn a_file_opened_before_init_and_checkpoints_after_restore() {
    // The file gets a low descriptor (3) that the restoring process also uses for its own
    // purposes: after each restore, checkpoints must keep working.
    let mut rng = Rng::new("early-files");
    let dir = TempDir::new("early-files");
    let out = dir.path().join("out.txt");
    let p = Program::new(
        rust_example("probe"),
        &["early-files", out.to_str().unwrap(), "400"],
    );
    let (r, log) = kill_and_restart(
        &p,
        &dir.path().join("store"),
        "1h",
        4,
        false,
        Duration::from_millis(2500),
        &mut rng,
    );
    r.assert_ok("early-files");
    assert!(log.contains("restored generation"), "{log}");
    assert!(
        !log.contains("failed"),
        "a checkpoint failed after a restore\n{log}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let want: String = (0..400).map(|i| format!("line {i}\n")).collect();
    assert!(text == want, "output differs after restarts\n{log}");
}

#[test]
fn a_replaced_file_is_refused_not_truncated() {
    let dir = TempDir::new("replaced");
    let out = dir.path().join("out.txt");
    let store = dir.path().join("store");
    let p = Program::new(
        rust_example("probe"),
        &["files", out.to_str().unwrap(), "400"],
    );
    let env = [("CKPT_DIR", store.to_str().unwrap()), ("CKPT_LOG", "info")];
    run_until_logged(&p, &env, "checkpoint 3 committed", LIMIT);
    // Another file of the same name and contents (as after a log rotation).
    let text = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    std::fs::write(&out, &text).unwrap();
    let r = p.run(&env, LIMIT);
    assert_eq!(r.status.code(), Some(75), "{:?}\n{}", r.status, r.stderr);
    assert!(
        r.stderr.contains("was replaced by another file"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        text,
        "the replacing file was changed"
    );
}
