//! Operations: stats endpoint, max clients, graceful shutdown, revocation by watermark and by
//! CPU load, resume, migration to local disk, disk fallback below a capacity threshold, the
//! background flusher and recovery from the disk copy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rmem_client::{Location, Pool, PoolError, spawn_maintainer};

#[test]
fn stats_endpoint_serves_prometheus_text() {
    let s = Server::start_with("8M", KEY, &["--stats-listen", "127.0.0.1:0"], "127.0.0.1:0");
    let mut pool = connect(std::slice::from_ref(&s), "none", true);
    let runs = page_runs(40, 10);
    write_gen(&mut pool, 1, &runs, b"").unwrap();
    check_gen(&mut pool, 1, &runs, b"").unwrap();
    let mut t = TcpStream::connect(s.stats.as_ref().expect("stats address")).unwrap();
    t.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    t.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    let metric = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("rmem_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(metric("capacity_bytes"), 8 << 20);
    assert!(metric("used_bytes") >= runs.iter().map(|r| r.1.len() as u64).sum::<u64>());
    assert_eq!(metric("clients"), 1);
    assert!(metric("bytes_in_total") > metric("used_bytes") / 2);
    assert!(metric("bytes_out_total") > 0);
    assert_eq!(metric("revocations_total"), 0);
    assert_eq!(metric("state"), 0);
}

#[test]
fn max_clients_refuses_extra_connections() {
    let s = Server::start_with("8M", KEY, &["--max-clients", "1"], "127.0.0.1:0");
    let _first = connect(std::slice::from_ref(&s), "none", true);
    let err = Pool::connect(config(std::slice::from_ref(&s), "none", true))
        .expect_err("second client over the limit");
    assert!(err.to_string().contains("max-clients"), "{err}");
}

#[test]
fn sigterm_revokes_then_exits_after_clients_moved_their_data() {
    let mut a = Server::start_with("16M", KEY, &["--shutdown-deadline", "20s"], "127.0.0.1:0");
    let b = Server::start("16M");
    let srv_addrs = [a.addr.clone(), b.addr.clone()];
    let mut cfg = config(std::slice::from_ref(&a), "none", true);
    cfg.servers = srv_addrs.to_vec();
    cfg.stripe_width = Some(1);
    let mut pool = Pool::connect(cfg).unwrap();
    let runs = page_runs(41, 20);
    write_gen(&mut pool, 1, &runs, b"s").unwrap();
    a.sigterm();
    wait_until("shutdown revocation", || pool.health()[0].revoking);
    let rep = pool.maintain();
    assert_eq!(rep.evacuated_servers, 1, "{rep:?}");
    assert!(rep.shards_moved > 0);
    // All data released: the server leaves well before its 20 s deadline, cleanly.
    assert_eq!(a.wait_exit(Duration::from_secs(15)), Some(0));
    check_gen(&mut pool, 1, &runs, b"s").unwrap();
}

#[test]
fn watermark_revokes_and_data_moves_to_local_disk() {
    // A watermark no machine meets: the server revokes as soon as it samples memory.
    let s = Server::start_with(
        "16M",
        KEY,
        &[
            "--min-free",
            "1000T",
            "--monitor-interval",
            "300ms",
            "--revoke-deadline",
            "5s",
            "--idle-grace",
            "1h",
        ],
        "127.0.0.1:0",
    );
    let dir = TempDir::new("wm");
    let mut pool = Pool::connect(config_local(
        std::slice::from_ref(&s),
        "none",
        true,
        dir.path(),
    ))
    .unwrap();
    let runs = page_runs(42, 20);
    // The write may land before or after the revocation starts; either way it must survive.
    write_gen(&mut pool, 1, &runs, b"w").unwrap();
    wait_until("watermark revocation", || {
        s.admin("state").contains("watermark")
    });
    pool.maintain();
    wait_until("memory released", || s.admin("state").contains("revoked("));
    check_gen(&mut pool, 1, &runs, b"w").expect("data moved to local disk before the deadline");
    assert!(s.metric("revocations_total") >= 1);
    // The pool no longer writes to the revoked server: new generations go to disk.
    let info = write_gen(&mut pool, 2, &runs, b"w2").unwrap();
    assert_eq!(info.location, Location::Disk);
}

#[test]
fn busy_cpu_revokes_after_grace_period() {
    let s = Server::start_with(
        "8M",
        KEY,
        &[
            "--busy-threshold",
            "0",
            "--busy-grace",
            "300ms",
            "--monitor-interval",
            "100ms",
            "--revoke-deadline",
            "1s",
        ],
        "127.0.0.1:0",
    );
    wait_until("busy revocation", || s.admin("state").contains("busy"));
    wait_until("memory released", || {
        s.admin("state").contains("revoked(busy)")
    });
    assert_eq!(s.metric("capacity_bytes"), 0);
}

#[test]
fn admin_revoke_and_resume() {
    let s = Server::start("8M");
    let mut pool = connect(std::slice::from_ref(&s), "none", true);
    s.admin("revoke --deadline 200ms");
    wait_until("revoked", || s.admin("state").contains("revoked(admin)"));
    assert_eq!(s.metric("capacity_bytes"), 0);
    match write_gen(&mut pool, 1, &page_runs(43, 3), b"") {
        Err(PoolError::Geometry(_) | PoolError::DataLoss { .. }) => {}
        other => panic!("writes to a revoked server must fail: {other:?}"),
    }
    s.admin("resume");
    assert!(s.admin("state").contains("lending"));
    assert_eq!(s.metric("capacity_bytes"), 8 << 20);
    pool.maintain();
    let runs = page_runs(44, 5);
    write_gen(&mut pool, 2, &runs, b"").unwrap();
    check_gen(&mut pool, 2, &runs, b"").unwrap();
}

#[test]
fn below_capacity_threshold_writes_go_to_disk_and_come_back() {
    let srv = servers(2, "16M");
    let dir = TempDir::new("fallback");
    let mut cfg = config(&srv, "mirror:2", true);
    cfg.local_dir = Some(dir.path().to_path_buf());
    cfg.min_remote_free = 1 << 40;
    let mut pool = Pool::connect(cfg.clone()).unwrap();
    let runs = page_runs(45, 20);
    assert_eq!(
        write_gen(&mut pool, 1, &runs, b"d").unwrap().location,
        Location::Disk
    );
    check_gen(&mut pool, 1, &runs, b"d").unwrap();
    // Capacity is back (threshold met): the next generation is remote again.
    drop(pool);
    cfg.min_remote_free = 1 << 20;
    let mut pool = Pool::connect(cfg).unwrap();
    assert_eq!(
        pool.latest_committed().map(|i| (i.generation, i.location)),
        Some((1, Location::Disk))
    );
    assert_eq!(
        write_gen(&mut pool, 2, &runs, b"r").unwrap().location,
        Location::Remote
    );
    assert_eq!(
        pool.latest_committed().map(|i| (i.generation, i.location)),
        Some((2, Location::Remote))
    );
    // The generation written to disk moves back into remote memory, with the pool's redundancy.
    let rep = pool.maintain();
    assert_eq!(rep.returned_to_remote, 1, "{rep:?}");
    let info = pool.info(1).unwrap();
    assert_eq!(
        (info.location, info.degraded, info.manifest_version),
        (Location::Remote, false, 2)
    );
    check_gen(&mut pool, 1, &runs, b"d").unwrap();
    let live = dir
        .path()
        .join("live")
        .join(rmem_client::auth::encode_hex(&[7; 16]));
    assert!(
        !live.join("g0000000000000001").exists(),
        "the disk copy is gone"
    );
    // Mirrored now: one server may go.
    let mut srv = srv;
    srv[0].kill9();
    check_gen(&mut pool, 1, &runs, b"d").unwrap();
}

#[test]
fn flusher_copy_recovers_when_remote_memory_is_gone() {
    let mut srv = servers(3, "16M");
    let dir = TempDir::new("flush");
    let mut cfg = config(&srv, "parity", true);
    cfg.local_dir = Some(dir.path().to_path_buf());
    let pool = Arc::new(Mutex::new(Pool::connect(cfg.clone()).unwrap()));
    let runs = page_runs(46, 30);
    write_gen(&mut pool.lock().unwrap(), 1, &runs, b"f").unwrap();
    // The background maintainer flushes committed generations to disk.
    let m = spawn_maintainer(pool.clone(), Duration::from_millis(50), true).unwrap();
    let flushed = dir.path().join("flushed");
    wait_until("generation flushed", || {
        std::fs::read_dir(&flushed)
            .into_iter()
            .flatten()
            .flatten()
            .any(|p| p.path().join("g0000000000000001").join("MANIFEST").exists())
    });
    drop(m);
    drop(pool);
    for s in &mut srv {
        s.kill9();
    }
    // Recovery after losing every server: remote first (gone), then the disk copy.
    let mut pool = Pool::connect(cfg).unwrap();
    let info = pool.latest_committed().expect("disk copy found");
    assert_eq!((info.generation, info.location), (1, Location::Flushed));
    check_gen(&mut pool, 1, &runs, b"f").unwrap();
}

#[test]
fn rebuild_onto_spare_after_losing_a_server() {
    let mut srv = servers(4, "16M");
    let mut cfg = config(&srv, "parity", true);
    cfg.stripe_width = Some(3);
    let mut pool = Pool::connect(cfg).unwrap();
    let runs = page_runs(47, 40);
    write_gen(&mut pool, 1, &runs, b"rb").unwrap();
    srv[1].kill9();
    assert!(pool.info(1).unwrap().degraded || pool.read_generation(1).is_ok());
    let rep = pool.maintain();
    assert!(rep.shards_rebuilt > 0, "{rep:?}");
    let info = pool.info(1).unwrap();
    assert!(!info.degraded, "{info:?}");
    assert!(info.manifest_version > 1);
    // Now a second server may die and the generation still reads.
    srv[0].kill9();
    check_gen(&mut pool, 1, &runs, b"rb").unwrap();
}

#[test]
fn mlock_capacity_is_lent() {
    let s = Server::start_with("8M", KEY, &["--mlock"], "127.0.0.1:0");
    assert_eq!(s.metric("capacity_bytes"), 8 << 20);
    let mut pool = connect(std::slice::from_ref(&s), "none", true);
    let runs = page_runs(48, 5);
    write_gen(&mut pool, 1, &runs, b"").unwrap();
    check_gen(&mut pool, 1, &runs, b"").unwrap();
}

#[test]
fn deadline_passes_with_a_passive_client_data_is_dropped_and_loss_reported() {
    let s = Server::start("8M");
    let mut pool = connect(std::slice::from_ref(&s), "none", true);
    let runs = page_runs(49, 10);
    write_gen(&mut pool, 1, &runs, b"").unwrap();
    // The client never calls maintain(): the server must not wait for it past the deadline.
    s.admin("revoke --deadline 300ms");
    wait_until("revoked at the deadline", || {
        s.admin("state").contains("revoked(admin)")
    });
    assert_eq!(s.metric("used_bytes"), 0);
    assert!(
        pool.read_generation(1).is_err(),
        "revoked data cannot be read back"
    );
}

#[test]
fn concurrent_clients_share_a_server_without_interference() {
    let srv = servers(2, "64M");
    let addrs: Vec<String> = srv.iter().map(|s| s.addr.clone()).collect();
    let handles: Vec<_> = (0..4u8)
        .map(|c| {
            let mut cfg = config(&srv, "mirror:2", true);
            cfg.servers = addrs.clone();
            cfg.pool_id = [c + 100; 16];
            std::thread::spawn(move || {
                let mut pool = Pool::connect(cfg).unwrap();
                for g in 1..=3u64 {
                    let runs = page_runs(u64::from(c) * 10 + g, 12);
                    write_gen(&mut pool, g, &runs, &[c]).unwrap();
                    check_gen(&mut pool, g, &runs, &[c]).unwrap();
                    if g > 1 {
                        pool.free_generation(g - 1).unwrap();
                    }
                }
                pool.latest_committed().map(|i| i.generation)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(3));
    }
    assert_eq!(srv[0].metric("pools"), 4);
}

#[test]
fn inspector_lists_shows_and_verifies() {
    let mut srv = servers(3, "16M");
    let mut pool = connect(&srv, "parity", true);
    let runs = page_runs(50, 10);
    write_gen(&mut pool, 4, &runs, b"i").unwrap();
    let dir = TempDir::new("inspect");
    let kf = key_file(dir.path(), KEY);
    let dk = dir.path().join("data.key");
    std::fs::write(&dk, rmem_client::auth::encode_hex(&DATA_KEY)).unwrap();
    let inspect = |args: &[&str], srv: &[Server]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rmem-inspect"));
        for s in srv {
            c.arg("--server").arg(&s.addr);
        }
        c.arg("--key-file")
            .arg(&kf)
            .arg("--data-key-file")
            .arg(&dk)
            .arg("--pool")
            .arg(rmem_client::auth::encode_hex(&[7; 16]));
        let out = c.args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = inspect(&["list"], &srv);
    assert!(
        ok && out.contains("generation 4:") && !out.contains("DEGRADED"),
        "{out}"
    );
    let (ok, out) = inspect(&["show", "4"], &srv);
    assert!(
        ok && out.contains("code Xor k=2 m=1") && out.contains("shards without a copy: 0"),
        "{out}"
    );
    let (ok, out) = inspect(&["verify", "4"], &srv);
    assert!(ok && out.contains("OK"), "{out}");
    srv[2].kill9();
    let (ok, out) = inspect(&["verify", "4"], &srv);
    assert!(ok && out.contains("OK"), "degraded but readable: {out}");
    let (_, out) = inspect(&["list"], &srv);
    assert!(out.contains("DEGRADED"), "{out}");
    // A wrong data key: nothing authenticates.
    std::fs::write(&dk, rmem_client::auth::encode_hex(&[1; 32])).unwrap();
    let (ok, _) = inspect(&["verify", "4"], &srv);
    assert!(!ok);
}

#[test]
fn abandoned_uncommitted_generations_are_collected() {
    use rmem_client::backend::Backend;
    use rmem_client::conn::{Conn, ConnConfig};
    let s = Server::start("16M");
    let mut pool = connect(std::slice::from_ref(&s), "none", true);
    write_gen(&mut pool, 1, &page_runs(51, 3), b"").unwrap();
    // A writer that died before its commit left objects of generation 2 behind.
    let cfg = ConnConfig {
        key: rmem_client::Psk::new(KEY).unwrap(),
        pool: [7; 16],
        name: "crashed writer".into(),
        connect_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(10),
    };
    let mut dead = Conn::connect(&s.addr, &cfg).unwrap();
    dead.put(2, 0, &[1u8; 100_000]).unwrap();
    dead.put(5, 0, &[1u8; 100_000]).unwrap();
    dead.sync().unwrap();
    drop(dead);
    write_gen(&mut pool, 3, &page_runs(52, 3), b"").unwrap();
    // A writer dropped without commit cleans up after itself.
    {
        let mut w = pool.begin_generation(4).unwrap();
        w.put(0, &[2u8; 300_000]).unwrap();
    }
    pool.maintain();
    let cfg2 = ConnConfig {
        name: "observer".into(),
        ..cfg
    };
    let mut c = Conn::connect(&s.addr, &cfg2).unwrap();
    let gens: Vec<(u64, bool)> = c
        .list()
        .unwrap()
        .iter()
        .map(|e| (e.generation, e.committed))
        .collect();
    // 2 was abandoned below the newest commit; 4 was aborted by its writer; 5 may be in progress.
    assert_eq!(gens, vec![(1, true), (3, true), (5, false)]);
}

#[test]
fn sigterm_on_a_revoked_server_exits_at_once() {
    let mut s = Server::start("8M");
    s.admin("revoke --deadline 100ms");
    wait_until("revoked", || s.admin("state").contains("revoked(admin)"));
    s.sigterm();
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn restarted_server_comes_back_empty_and_is_refilled() {
    let mut srv = servers(3, "16M");
    let mut pool = connect(&srv, "parity", true);
    let runs = page_runs(53, 30);
    write_gen(&mut pool, 1, &runs, b"r").unwrap();
    // Same address, new process: its memory (and instance id) are new.
    let addr = srv[1].addr.clone();
    srv[1].kill9();
    srv[1] = Server::start_with("16M", KEY, &[], &addr);
    let rep = pool.maintain();
    assert_eq!(rep.reconnected, 1, "{rep:?}");
    assert!(rep.shards_rebuilt > 0, "{rep:?}");
    assert!(!pool.info(1).unwrap().degraded);
    assert!(
        srv[1].metric("used_bytes") > 0,
        "the restarted server holds rebuilt shards"
    );
    // Any one server may go again.
    srv[2].kill9();
    check_gen(&mut pool, 1, &runs, b"r").unwrap();
}

fn rss_bytes(s: &Server) -> u64 {
    let pid = s.child.as_ref().expect("running").id();
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
fn lent_memory_is_resident_and_given_back_on_revocation() {
    let s = Server::start("256M");
    // Pre-faulted at start: the capacity is resident before any client writes.
    assert!(rss_bytes(&s) >= 256 << 20, "rss {}", rss_bytes(&s));
    s.admin("revoke --deadline 100ms");
    wait_until("revoked", || s.admin("state").contains("revoked(admin)"));
    // Taken back: the owner gets the memory, not just the server's bookkeeping.
    wait_until("memory returned to the system", || rss_bytes(&s) < 64 << 20);
    s.admin("resume");
    assert!(rss_bytes(&s) >= 256 << 20, "lending again pre-faults again");
}
