//! Checkpoints in remote memory (`CKPT_STORE=rmem://...`, `tiered:...`) against real
//! `rmem-server` processes on loopback: kill -9 and restart under every policy, a server killed
//! or revoked between the crash and the restart, a tiered store recovering from its local copy
//! with every server dead, remote capacity falling below the threshold mid-run, servers filling
//! up in the middle of a checkpoint, and the errors `init` gives for a pool it cannot use. See
//! docs/stores.md.

mod common;
#[path = "common/servers.rs"]
mod servers;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use servers::*;

/// One test at a time: each runs servers and a CPU-bound workload on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The workload: LU on 1280² doubles (12.5 MiB), 6 factorisations (about 2 s here).
fn workload() -> Program {
    Program::new(rust_example("lu"), &["1280", "6"])
}

/// The uninterrupted digest and duration, once.
fn reference() -> &'static (String, Duration) {
    static REF: std::sync::OnceLock<(String, Duration)> = std::sync::OnceLock::new();
    REF.get_or_init(|| baseline(&workload()))
}

fn env<'a>(store: &'a str, policy: &'a str, interval: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CKPT_STORE", store),
        ("CKPT_POLICY", policy),
        ("CKPT_INTERVAL", interval),
        ("CKPT_LOG", "info"),
        ("CKPT_RMEM_HELPER", helper().to_str().unwrap()),
    ]
}

fn assert_digest(run: &Run, what: &str, log: &str) {
    run.assert_ok(what);
    assert_eq!(
        run.digest().as_deref(),
        Some(reference().0.as_str()),
        "{what}: digest differs after kill/restart\n{log}"
    );
}

#[test]
fn every_policy_survives_kill_and_restart_in_remote_memory() {
    let _g = serial();
    let (_, base) = reference().clone();
    let pool = Pool::start("remote-policies", 3, "256M");
    let store = pool.spec("&redundancy=parity");
    let mut rng = Rng::new("remote-policies");
    for (policy, kills, mid) in [
        ("sequential", 2, true),
        ("incremental", 1, false),
        ("forked", 2, true),
        ("forked-incremental", 1, false),
        ("buffered", 1, false),
        ("buffered-incremental", 1, false),
    ] {
        let (run, log) = kill_and_restart_with(
            &workload(),
            &env(&store, policy, "150ms"),
            kills,
            mid,
            base,
            &mut rng,
        );
        assert_digest(&run, policy, &log);
        assert!(
            log.contains("restored generation"),
            "{policy}: no restore happened\n{log}"
        );
        assert!(
            log.contains("; in remote memory"),
            "{policy}: nothing committed to remote memory\n{log}"
        );
        assert!(
            log.contains("fetched generation") && log.contains("from remote memory (3 of 3"),
            "{policy}: not restored from remote memory\n{log}"
        );
        assert!(
            run.stderr.contains("removed") && run.stderr.contains("from the remote store"),
            "{policy}: the finished run left its generations\n{}",
            run.stderr
        );
    }
}

/// Runs until generation `n` is committed, then SIGKILL.
fn crash_after(store: &str, policy: &str, n: u32) -> String {
    let mut w = Watch::spawn(&workload(), &env(store, policy, "150ms"));
    w.wait_for(
        &format!("checkpoint {n} committed"),
        1,
        Duration::from_secs(60),
    );
    w.kill()
}

#[test]
fn a_server_killed_after_the_crash_is_covered_by_parity() {
    let _g = serial();
    let mut pool = Pool::start("remote-server-killed", 3, "256M");
    let store = pool.spec("&redundancy=parity");
    let mut log = crash_after(&store, "incremental", 4);
    // The last helper's background maintenance would otherwise rebuild the dead server's shards
    // onto the local directory (no spare server), and the restart would read around nothing.
    pool.wait_for_background();
    pool.servers[0].kill9();
    let run = workload().run(
        &env(&store, "incremental", "150ms"),
        Duration::from_secs(120),
    );
    log.push_str(&run.stderr);
    assert_digest(&run, "restart with a server dead", &log);
    assert!(
        run.stderr.contains("from remote memory") && run.stderr.contains("(2 of 3 servers up)"),
        "not read from the two servers left\n{log}"
    );
    // The restored run goes on checkpointing over the two servers left.
    let after = run.stderr.split("restored generation").nth(1).unwrap_or("");
    assert!(after.contains("; in remote memory"), "{log}");
}

#[test]
fn a_server_revoked_after_the_crash_is_covered_by_parity() {
    let _g = serial();
    let pool = Pool::start("remote-server-revoked", 3, "256M");
    let store = pool.spec("&redundancy=parity");
    let mut log = crash_after(&store, "forked", 4);
    // Nobody moves the data off it before the deadline: the program is dead.
    pool.servers[1].revoke("500ms");
    let run = workload().run(&env(&store, "forked", "150ms"), Duration::from_secs(120));
    log.push_str(&run.stderr);
    assert_digest(&run, "restart with a server revoked", &log);
    assert!(run.stderr.contains("fetched generation"), "{log}");
    let after = run.stderr.split("restored generation").nth(1).unwrap_or("");
    assert!(after.contains("; in remote memory"), "{log}");
}

#[test]
fn a_server_revoked_mid_run_is_evacuated_before_its_deadline() {
    let _g = serial();
    let pool = Pool::start("remote-revoked-mid-run", 3, "256M");
    let store = pool.spec("&redundancy=parity");
    let e = env(&store, "forked-incremental", "150ms");
    let mut w = Watch::spawn(&workload(), &e);
    w.wait_for("; in remote memory", 3, Duration::from_secs(60));
    // The owner comes back: the next commit and the helper's background maintenance move
    // this pool's shards off the server before the deadline.
    pool.servers[2].revoke("3s");
    let run = w.finish(Duration::from_secs(120));
    assert_digest(&run, "a run with a server revoked", &run.stderr);
    // Without the terminal colours.
    let mut log = String::new();
    let mut esc = false;
    for c in pool.servers[2].log_text().chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => log.push(c),
        }
    }
    assert!(
        log.contains("memory revoked and released") && log.contains("dropped_bytes=0"),
        "data was left on the revoked server\n{log}"
    );
    assert!(!run.stderr.contains("failed"), "{}", run.stderr);
}

#[test]
fn tiered_recovers_from_its_local_copy_when_every_server_is_dead() {
    let _g = serial();
    let mut pool = Pool::start("remote-tiered", 3, "256M");
    let store = format!("tiered:{}", pool.spec(""));
    // Each put waits for the previous one's background copy: once generation 4 is committed,
    // generations up to 3 are on local disk.
    let mut log = crash_after(&store, "sequential", 4);
    for s in &mut pool.servers {
        s.kill9();
    }
    let run = workload().run(
        &env(&store, "sequential", "150ms"),
        Duration::from_secs(120),
    );
    log.push_str(&run.stderr);
    assert_digest(&run, "tiered restart with every server dead", &log);
    assert!(
        run.stderr
            .contains("from the local copy (0 of 3 servers up)"),
        "not restored from the local copy\n{log}"
    );
    // With remote memory gone, the restored run checkpoints to local disk.
    let after = run.stderr.split("restored generation").nth(1).unwrap_or("");
    assert!(
        after.contains("on local disk (remote memory short)"),
        "{log}"
    );
}

#[test]
fn remote_capacity_below_the_threshold_moves_checkpoints_to_local_disk_and_back() {
    let _g = serial();
    // 3 x 64 MiB lent; below 100 MiB free, generations go to local disk. One generation of the
    // workload takes ~19 MiB of remote memory with parity, so 2-3 of them leave ~140 MiB free;
    // another pool's 64 MiB generation (96 MiB with parity) takes it below the threshold.
    let pool = Pool::start("remote-capacity", 3, "64M");
    let store = pool.spec("&redundancy=parity&min_free=100M");
    let other = "6f746865722d706f6f6c000000000000";
    let e = env(&store, "sequential", "150ms");
    let mut w = Watch::spawn(&workload(), &e);
    w.wait_for("; in remote memory", 2, Duration::from_secs(60));
    pool.hog(other, 64);
    w.wait_for(
        "on local disk (remote memory short)",
        2,
        Duration::from_secs(60),
    );
    let mut log = w.kill();
    // The newest generation is on local disk: the restart reads it there; once capacity is
    // back, checkpoints go to remote memory again.
    let mut w = Watch::spawn(&workload(), &e);
    w.wait_for("restored generation", 1, Duration::from_secs(60));
    pool.unhog(other);
    let run = w.finish(Duration::from_secs(120));
    log.push_str(&run.stderr);
    assert_digest(&run, "restart from the local fallback", &log);
    assert!(
        run.stderr.contains("from the local fallback directory"),
        "not restored from the disk fallback\n{log}"
    );
    let after = run.stderr.split("restored generation").nth(1).unwrap_or("");
    assert!(
        after.contains("; in remote memory"),
        "checkpoints did not return to remote memory\n{log}"
    );
}

#[test]
fn servers_filling_up_during_a_checkpoint_continue_it_on_local_disk() {
    let _g = serial();
    // 3 x 4 MiB lent, the minimum free threshold at 0: every generation starts in remote
    // memory, and the servers fill up in the middle of each image (12.5 MiB of pages, ~19 MiB
    // with parity), whose shards then go on in the local directory. Before, the second full
    // server's shards were lost and every checkpoint failed.
    let pool = Pool::start("remote-fill-up", 3, "4M");
    let store = pool.spec("&redundancy=parity");
    let e = env(&store, "sequential", "150ms");
    let mut w = Watch::spawn(&workload(), &e);
    w.wait_for(
        "on local disk (remote memory short)",
        2,
        Duration::from_secs(60),
    );
    let mut log = w.kill();
    assert!(!log.contains("failed"), "a checkpoint failed\n{log}");
    // The restart reads the newest image from the servers and the local directory together.
    let run = workload().run(&e, Duration::from_secs(120));
    log.push_str(&run.stderr);
    assert_digest(&run, "restart from servers that filled up", &log);
    // "from the local fallback directory" when the newest generation went wholly to disk,
    // "from remote memory and the local fallback directory (N of M shards on disk; ...)"
    // when only its last stripes did: which one depends on what the servers still held.
    assert!(
        run.stderr.contains("the local fallback directory"),
        "not restored from the generation partly on local disk\n{log}"
    );
    let after = run.stderr.split("restored generation").nth(1).unwrap_or("");
    assert!(
        after.contains("on local disk (remote memory short)") && !after.contains("failed"),
        "{log}"
    );
    // Without the fallback, the same checkpoints fail cleanly and the program goes on.
    let run = workload().run(
        &env(&format!("{store}&fallback=no"), "sequential", "150ms"),
        Duration::from_secs(120),
    );
    assert!(
        run.stderr
            .contains("failed, the previous checkpoint is intact")
            && run.stderr.contains("no local directory"),
        "{}",
        run.stderr
    );
    assert_digest(
        &run,
        "checkpoints failing for lack of remote memory",
        &run.stderr,
    );
}

#[test]
fn init_says_why_a_remote_store_cannot_be_used() {
    let _g = serial();
    let pool = Pool::start("remote-errors", 1, "16M");
    let p = workload();
    let fail = |store: &str, helper: Option<&str>, want: &str| {
        let mut e = env(store, "sequential", "150ms");
        if let Some(h) = helper {
            e.retain(|(k, _)| *k != "CKPT_RMEM_HELPER");
            e.push(("CKPT_RMEM_HELPER", h));
        }
        let r = p.run(&e, Duration::from_secs(60));
        assert_eq!(r.status.code(), Some(75), "{store}: {}", r.stderr);
        assert!(
            r.stderr.contains(want),
            "{store}: want {want:?}\n{}",
            r.stderr
        );
    };
    // A server nobody listens on (the port of a socket bound and closed again).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    fail(
        &pool
            .spec("")
            .replace(&pool.servers[0].addr, &dead.to_string()),
        None,
        "no rmem server reachable",
    );
    let wrong = pool.tmp.path().join("wrong-psk");
    std::fs::write(&wrong, "ff".repeat(32)).unwrap();
    fail(
        &pool
            .spec("")
            .replace(pool.key.to_str().unwrap(), wrong.to_str().unwrap()),
        None,
        "wrong key",
    );
    fail(
        &pool.spec(""),
        Some("/nonexistent/ckpt-rmem"),
        "CKPT_RMEM_HELPER=/nonexistent/ckpt-rmem is not an executable",
    );
    fail(
        &format!("{}&redundancy=rs:0+1", pool.spec("")),
        None,
        "redundancy",
    );
}

/// Bytes in use on the pool's servers (their `rmem_used_bytes` statistic).
fn used_on_servers(pool: &Pool) -> u64 {
    pool.servers
        .iter()
        .map(|s| {
            let stats = s.admin(&["stats"]);
            stats
                .lines()
                .find_map(|l| l.strip_prefix("rmem_used_bytes "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no rmem_used_bytes in:\n{stats}")) as u64
        })
        .sum()
}

#[test]
fn a_normal_exit_with_a_writer_in_flight_leaves_nothing_on_the_servers() {
    // The program exits while its forked writer streams 512 MiB into the pool: the writer and
    // its `put` helper are killed before their commit, and the exit's clear must free the
    // shards they had written too, not only the committed generations.
    let _g = serial();
    let pool = Pool::start("remote-exit-in-flight", 3, "512M");
    let store = pool.spec("&redundancy=parity");
    let before = used_on_servers(&pool);
    let marker = pool.tmp.path().join("exit-now");
    let probe = Program::new(
        rust_example("probe"),
        &["exit-while-writing", "512", marker.to_str().unwrap()],
    );
    let child = probe.spawn(&env(&store, "forked", "1h"));
    let start = Instant::now();
    // Exit once the writer has put something on the servers (a bound, not a timed assertion).
    while used_on_servers(&pool) <= before && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&marker, b"").unwrap();
    let run = finish(child, Duration::from_secs(120), start);
    run.assert_ok("exit while writing");
    assert!(
        run.stdout.contains("exiting") && run.stderr.contains("writing in the background"),
        "no background writer\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains(" committed ("),
        "the writer finished before the exit: nothing was cut short\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("from the remote store"),
        "{}",
        run.stderr
    );
    pool.wait_for_background();
    assert_eq!(
        used_on_servers(&pool),
        before,
        "the finished program left data on the servers\n{}",
        run.stderr
    );
}
