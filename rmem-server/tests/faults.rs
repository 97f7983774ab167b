//! Failure scenarios against real server processes: kill -9 while writing and while reading,
//! revocation in the middle of a write, a full server, a misbehaving proxy (corrupt, truncate,
//! reorder, replay, forged frames), a lying server replaying old pages, malformed frames, a wrong
//! key.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::proxy::{Fault, Proxy};
use common::*;
use rmem_client::backend::Backend;
use rmem_client::conn::{Conn, ConnConfig};
use rmem_client::{Pool, PoolError, Psk};

/// Writes half the runs, kills server `victim`, writes the rest, commits.
fn write_with_kill(
    srv: &mut [Server],
    pool: &mut Pool,
    g: u64,
    runs: &[(u64, Vec<u8>)],
    victim: usize,
) -> Result<rmem_client::GenInfo, PoolError> {
    let mut w = pool.begin_generation(g)?;
    let half = runs.len() / 2;
    for (a, d) in &runs[..half] {
        w.put(*a, d)?;
    }
    srv[victim].kill9();
    for (a, d) in &runs[half..] {
        w.put(*a, d)?;
    }
    w.commit(b"k")
}

fn kill_during_write(n: usize, red: &str, spare: bool) {
    let mut srv = servers(n + spare as usize, "64M");
    let mut cfg = config(&srv, red, true);
    cfg.stripe_width = Some(n);
    let mut pool = Pool::connect(cfg).unwrap();
    let runs = page_runs(11, 60);
    let info = write_with_kill(&mut srv, &mut pool, 1, &runs, 0)
        .expect("redundancy must absorb one dead server");
    check_gen(&mut pool, 1, &runs, b"k").expect("read after losing a server mid-write");
    if spare {
        // The lost shards were rebuilt onto the spare at commit.
        let i = pool.info(1).unwrap();
        assert!(
            !i.degraded,
            "{red}: still degraded after rebuild onto the spare ({info:?})"
        );
    }
}

#[test]
fn kill9_during_write_mirror() {
    kill_during_write(2, "mirror:2", false);
}
#[test]
fn kill9_during_write_mirror_with_spare() {
    kill_during_write(2, "mirror:2", true);
}
#[test]
fn kill9_during_write_parity() {
    kill_during_write(3, "parity", false);
}
#[test]
fn kill9_during_write_parity_with_spare() {
    kill_during_write(3, "parity", true);
}
#[test]
fn kill9_during_write_rs() {
    kill_during_write(5, "rs:3+2", false);
}

#[test]
fn kill9_during_write_none_reports_loss() {
    let mut srv = servers(2, "64M");
    let mut pool = connect(&srv, "none", true);
    let runs = page_runs(12, 60);
    let addr = srv[0].addr.clone();
    match write_with_kill(&mut srv, &mut pool, 1, &runs, 0) {
        Err(PoolError::DataLoss { detail, .. }) => assert!(
            detail.contains(&addr),
            "loss report names the dead server: {detail}"
        ),
        other => panic!("expected a data-loss error, got {other:?}"),
    }
    assert!(
        pool.latest_committed().is_none(),
        "nothing half-written may look committed"
    );
}

fn kill_during_read(n: usize, red: &str) -> Result<(), PoolError> {
    let mut srv = servers(n, "64M");
    let mut pool = connect(&srv, red, true);
    let runs = page_runs(13, 80);
    write_gen(&mut pool, 1, &runs, b"r").unwrap();
    let mut r = pool.read_generation(1)?;
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut killed = false;
    r.read_all(|a, b| {
        if !killed {
            srv[1].kill9();
            killed = true;
        }
        got.push((a, b.to_vec()));
        Ok(())
    })?;
    let flat: Vec<u8> = got.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let want: Vec<u8> = runs.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    assert!(flat == want, "{red}: data read across the kill differs");
    drop(r);
    check_gen(&mut pool, 1, &runs, b"r")
}

#[test]
fn kill9_during_read_mirror() {
    kill_during_read(3, "mirror:2").unwrap();
}
#[test]
fn kill9_during_read_parity() {
    kill_during_read(4, "parity").unwrap();
}
#[test]
fn kill9_during_read_rs() {
    kill_during_read(4, "rs:2+2").unwrap();
}
#[test]
fn kill9_during_read_none_reports_loss_never_zeros() {
    match kill_during_read(2, "none") {
        Err(PoolError::DataLoss { detail, .. }) => assert!(
            detail.contains("unavailable") || detail.contains("shard"),
            "{detail}"
        ),
        other => panic!("expected a data-loss error, got {other:?}"),
    }
    // Point reads also fail loudly.
    let mut srv = servers(2, "64M");
    let mut pool = connect(&srv, "none", true);
    let runs = page_runs(14, 20);
    write_gen(&mut pool, 1, &runs, b"").unwrap();
    srv[0].kill9();
    srv[1].kill9();
    let r = pool.read_generation(1);
    assert!(r.is_err(), "all servers dead: nothing may be read");
}

fn revoke_mid_write(red: &str, width: usize, total: usize) {
    init_log();
    let srv = servers(total, "64M");
    let mut cfg = config(&srv, red, true);
    cfg.stripe_width = Some(width);
    let mut pool = Pool::connect(cfg).unwrap();
    let runs = page_runs(15, 60);
    let mut w = pool.begin_generation(1).unwrap();
    for (a, d) in &runs[..30] {
        w.put(*a, d).unwrap();
    }
    srv[0].admin("revoke --deadline 3s");
    for (a, d) in &runs[30..] {
        w.put(*a, d).unwrap();
    }
    w.commit(b"rv").expect("commit during a revocation");
    // Commit moved everything off the revoking server; make sure and wait until it has let go.
    let rep = pool.maintain();
    assert!(rep.errors.is_empty(), "{:?}", rep.errors);
    wait_until("server 0 revoked", || {
        srv[0].admin("state").contains("revoked")
    });
    assert_eq!(srv[0].metric("used_bytes"), 0);
    let h = pool.health();
    assert!(h[0].evacuated, "{h:?}");
    check_gen(&mut pool, 1, &runs, b"rv").expect("data survives the revocation");
    let i = pool.info(1).unwrap();
    assert!(!i.degraded, "{i:?}");
}

#[test]
fn revoke_mid_write_none_moves_to_spare() {
    revoke_mid_write("none", 1, 2);
}
#[test]
fn revoke_mid_write_mirror() {
    revoke_mid_write("mirror:2", 2, 3);
}
#[test]
fn revoke_mid_write_parity() {
    revoke_mid_write("parity", 3, 4);
}

#[test]
fn full_server_spills_to_spare() {
    let small = Server::start("1M");
    let big = Server::start("64M");
    let srv = [small, big];
    let mut cfg = config(&srv, "none", true);
    cfg.stripe_width = Some(1);
    let mut pool = Pool::connect(cfg).unwrap();
    let runs = page_runs(16, 60);
    write_gen(&mut pool, 1, &runs, b"f").expect("write continues on the spare");
    check_gen(&mut pool, 1, &runs, b"f").unwrap();
    assert!(srv[0].metric("used_bytes") > 0);
}

#[test]
fn full_server_alone_is_a_clear_error() {
    let srv = [Server::start("1M")];
    let mut pool = connect(&srv, "none", true);
    let runs = page_runs(17, 60);
    match write_gen(&mut pool, 1, &runs, b"") {
        Err(PoolError::DataLoss { detail, .. }) => assert!(detail.contains("no space"), "{detail}"),
        other => panic!("expected a no-space data loss, got {other:?}"),
    }
    assert!(pool.latest_committed().is_none());
    // The server itself refuses too when a client ignores its free space.
    let cfg = ConnConfig {
        key: Psk::new(KEY).unwrap(),
        pool: [1; 16],
        name: "raw".into(),
        connect_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(10),
    };
    let mut c = Conn::connect(&srv[0].addr, &cfg).unwrap();
    for k in 0..20 {
        let _ = c.put(9, k, &[0u8; 256 << 10]);
    }
    let e = c.sync().expect_err("server must refuse beyond capacity");
    assert!(e.to_string().contains("no space"), "{e}");
    assert!(srv[0].metric("refused_full_total") > 0);
}

/// Mirror over a proxied server and a direct one: every response fault on the proxied path is
/// detected and the read is served from the other copy.
fn proxy_fault(fault: Fault, encrypted: bool) {
    let srv = servers(2, "64M");
    let proxy = Proxy::start(&srv[0].addr, fault, 2);
    let mut cfg = config(&srv, "mirror:2", encrypted);
    cfg.servers[0] = proxy.addr.clone();
    let mut pool = Pool::connect(cfg).unwrap();
    let runs = page_runs(18, 40);
    write_gen(&mut pool, 1, &runs, b"p").unwrap();
    check_gen(&mut pool, 1, &runs, b"p").unwrap_or_else(|e| panic!("{fault:?}: {e}"));
    assert_eq!(
        proxy.fired.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{fault:?} never fired"
    );
}

#[test]
fn proxy_corrupt_frame() {
    proxy_fault(Fault::Corrupt, true);
}
#[test]
fn proxy_truncated_frame() {
    proxy_fault(Fault::Truncate, true);
}
#[test]
fn proxy_reordered_frames() {
    proxy_fault(Fault::Reorder, true);
}
#[test]
fn proxy_replayed_frame() {
    proxy_fault(Fault::Replay, true);
}
#[test]
fn proxy_forged_frame_encrypted() {
    proxy_fault(Fault::Forge, true);
}
#[test]
fn proxy_forged_frame_plaintext() {
    proxy_fault(Fault::Forge, false);
}

#[test]
fn proxy_forged_frame_without_redundancy_is_an_error() {
    let srv = servers(1, "64M");
    let proxy = Proxy::start(&srv[0].addr, Fault::Forge, 1);
    let mut cfg = config(&srv, "none", true);
    cfg.servers[0] = proxy.addr.clone();
    let mut pool = Pool::connect(cfg).unwrap();
    let runs = page_runs(19, 40);
    write_gen(&mut pool, 1, &runs, b"p").unwrap();
    let r = check_gen(&mut pool, 1, &runs, b"p");
    assert!(matches!(r, Err(PoolError::DataLoss { .. })), "{r:?}");
}

#[test]
fn corrupt_request_closes_only_that_connection() {
    let srv = servers(2, "64M");
    let proxy = Proxy::start(&srv[0].addr, Fault::CorruptRequest, 3);
    let mut cfg = config(&srv, "mirror:2", true);
    cfg.servers[0] = proxy.addr.clone();
    let mut pool = Pool::connect(cfg).unwrap();
    // A bystander client on the same server, connected directly.
    let mut other = connect(&srv[..1], "none", true);
    let runs = page_runs(20, 40);
    write_gen(&mut pool, 1, &runs, b"c").expect("mirror absorbs the closed connection");
    check_gen(&mut pool, 1, &runs, b"c").unwrap();
    wait_until("bad frame counted", || {
        srv[0].metric("bad_frames_total") >= 1
    });
    assert!(srv[0].log_text().contains("malformed frame"));
    let runs2 = page_runs(21, 10);
    write_gen(&mut other, 1, &runs2, b"o").expect("other clients are not disturbed");
    check_gen(&mut other, 1, &runs2, b"o").unwrap();
}

#[test]
fn garbage_and_oversized_frames_are_refused() {
    let mut s = Server::start("16M");
    // Garbage before any handshake.
    let mut t = TcpStream::connect(&s.addr).unwrap();
    t.write_all(&[0xAB; 100]).unwrap();
    let mut buf = Vec::new();
    let _ = t.read_to_end(&mut buf);
    // A well-formed header announcing a payload beyond the limit.
    let mut h =
        rmem_client::proto::FrameHeader::new(rmem_client::proto::Op::Hello, 1, &[]).to_bytes();
    h[16..20].copy_from_slice(&(64u32 << 20).to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut t = TcpStream::connect(&s.addr).unwrap();
    t.write_all(&h).unwrap();
    let mut buf = Vec::new();
    let _ = t.read_to_end(&mut buf);
    assert!(s.alive());
    assert!(s.metric("bad_frames_total") >= 2);
    let log = s.log_text();
    assert!(
        log.contains("bad magic") && log.contains("exceeds the limit"),
        "{log}"
    );
    // The server still serves.
    let mut pool = connect(std::slice::from_ref(&s), "none", true);
    write_gen(&mut pool, 1, &page_runs(1, 3), b"").unwrap();
    s.kill9();
}

/// A lying server: it answers reads of generation 2 with generation 1's objects (rollback) or
/// with another position's object (swap). The client must never return those bytes.
fn lying_server(red: &str, n: usize, encrypted: bool) -> Result<(), PoolError> {
    let srv = servers(n, "64M");
    let mut pool = connect(&srv, red, encrypted);
    // Same addresses and lengths in both generations, different contents.
    let g1 = page_runs(30, 20);
    let g2: Vec<(u64, Vec<u8>)> = g1
        .iter()
        .enumerate()
        .map(|(i, (a, d))| (*a, pattern(d.len(), 500 + i as u64)))
        .collect();
    write_gen(&mut pool, 1, &g1, b"").unwrap();
    write_gen(&mut pool, 2, &g2, b"").unwrap();
    let cfg = ConnConfig {
        key: Psk::new(KEY).unwrap(),
        pool: [7; 16],
        name: "liar".into(),
        connect_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(10),
    };
    let mut liar = Conn::connect(&srv[0].addr, &cfg).unwrap();
    let objs = liar
        .list()
        .unwrap()
        .iter()
        .find(|e| e.generation == 2)
        .map(|e| e.objects)
        .unwrap();
    assert!(objs > 1);
    // Roll every object of generation 2 on this server back to generation 1's version.
    for key in (0..64u64).flat_map(|s| (0..8u64).map(move |j| (s << 8) | j)) {
        if let Ok(old) = liar.get(1, key) {
            liar.put(2, key, &old).unwrap();
        }
    }
    liar.sync().unwrap();
    check_gen(&mut pool, 2, &g2, b"")
}

#[test]
fn replayed_old_pages_are_rejected_mirror() {
    lying_server("mirror:2", 2, true).expect("served from the honest copy");
}
#[test]
fn replayed_old_pages_are_rejected_parity_plaintext() {
    lying_server("parity", 3, false).expect("reconstructed around the liar");
}
#[test]
fn replayed_old_pages_without_redundancy_are_an_error() {
    let r = lying_server("none", 1, true);
    assert!(matches!(r, Err(PoolError::DataLoss { .. })), "{r:?}");
}

#[test]
fn wrong_key_is_refused_on_both_sides() {
    let s = Server::start_with("16M", b"a completely different key!!", &[], "127.0.0.1:0");
    let err = Pool::connect(config(std::slice::from_ref(&s), "none", true))
        .expect_err("wrong key must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("authentication failed") && msg.contains("wrong key"),
        "{msg}"
    );
    wait_until("server logs the refusal", || {
        s.log_text().contains("wrong key")
    });
    assert_eq!(s.metric("auth_failures_total"), 1);
    assert_eq!(s.metric("clients"), 0);
}

/// The revocation deadline passes in the middle of a write: the shards the server held are gone
/// before the commit. Mirror rebuilds them from the other copy; `none` refuses to commit.
fn deadline_passes_mid_write(red: &str) -> Result<(), PoolError> {
    let srv = servers(3, "64M");
    let mut cfg = config(&srv, red, true);
    cfg.stripe_width = Some(2);
    let mut pool = Pool::connect(cfg).unwrap();
    let runs = page_runs(22, 40);
    let mut w = pool.begin_generation(1).unwrap();
    for (a, d) in &runs[..20] {
        w.put(*a, d).unwrap();
    }
    srv[0].admin("revoke --deadline 200ms");
    wait_until("server 0 dropped its data", || {
        srv[0].admin("state").contains("revoked(")
    });
    for (a, d) in &runs[20..] {
        w.put(*a, d)?;
    }
    if let Err(e) = w.commit(b"d") {
        // A refused commit must leave nothing that looks committed.
        assert!(
            pool.latest_committed().is_none(),
            "a failed commit left a generation behind"
        );
        return Err(e);
    }
    check_gen(&mut pool, 1, &runs, b"d")?;
    assert!(!pool.info(1)?.degraded);
    Ok(())
}

#[test]
fn deadline_passing_mid_write_mirror_rebuilds() {
    deadline_passes_mid_write("mirror:2").expect("the other copies cover the dropped shards");
}

#[test]
fn deadline_passing_mid_write_none_refuses_to_commit() {
    match deadline_passes_mid_write("none") {
        // Refused at commit (the helper checks nothing was left committed), not found lost later.
        Err(PoolError::DataLoss { detail, .. })
            if detail.contains("lost") && detail.contains("redundancy covers 0") => {}
        other => panic!("the dropped shards must make the commit fail, got {other:?}"),
    }
}
