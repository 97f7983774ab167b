//! One conformance suite, run against real server processes for every redundancy mode, with and
//! without encryption; plus the shared `Backend` conformance run on a server connection and on the
//! local-disk store.

mod common;

use std::time::Duration;

use common::*;
use rmem_client::backend::{Backend, BackendError};
use rmem_client::conn::{Conn, ConnConfig};
use rmem_client::disk::DiskStore;
use rmem_client::{Location, PoolError, Psk};

/// The pool-level contract every redundancy mode must meet.
fn conformance(nservers: usize, red: &str, encrypted: bool) {
    init_log();
    let srv = servers(nservers, "64M");
    let mut pool = connect(&srv, red, encrypted);
    assert!(pool.latest_committed().is_none());

    // Generation 1: page runs (sparse addresses), committed with a caller manifest.
    let g1 = page_runs(1, 40);
    let info = write_gen(&mut pool, 1, &g1, b"manifest one").expect("commit 1");
    assert_eq!(info.location, Location::Remote);
    assert!(!info.degraded);
    assert_eq!(info.bytes, g1.iter().map(|r| r.1.len() as u64).sum::<u64>());
    check_gen(&mut pool, 1, &g1, b"manifest one").expect("read 1");
    assert_eq!(pool.latest_committed().map(|i| i.generation), Some(1));

    // Sub-range reads and reads of absent ranges.
    {
        let mut r = pool.read_generation(1).unwrap();
        let (a, d) = &g1[3];
        assert_eq!(r.get(a + 100, 5000).unwrap(), d[100..5100]);
        assert!(matches!(
            r.get(a - 4096, 10),
            Err(PoolError::NotPresent { .. })
        ));
        assert_eq!(r.ranges().len(), g1.len());
    }

    // Generation 2 in stream mode; the previous one is freed only after commit.
    let stream = pattern(3 * (64 << 10) + 12345, 99);
    {
        let mut w = pool.begin_generation(2).unwrap();
        use std::io::Write;
        for piece in stream.chunks(7000) {
            w.write_all(piece).unwrap();
        }
        w.commit(b"stream").unwrap();
    }
    assert_eq!(pool.latest_committed().map(|i| i.generation), Some(2));
    check_gen(&mut pool, 1, &g1, b"manifest one").expect("generation 1 intact until freed");
    pool.free_generation(1).unwrap();
    assert!(matches!(
        pool.read_generation(1),
        Err(PoolError::NotFound(1))
    ));
    let mut out = Vec::new();
    assert_eq!(
        pool.read_generation(2)
            .unwrap()
            .read_stream(&mut out)
            .unwrap(),
        stream.len() as u64
    );
    assert!(out == stream);

    // A committed generation is never overwritten.
    assert!(matches!(
        pool.begin_generation(2),
        Err(PoolError::AlreadyCommitted(2))
    ));

    // An interrupted write (no commit) leaves the last committed generation in place, and a
    // later attempt at the same generation starts from fresh slots.
    {
        let mut w = pool.begin_generation(3).unwrap();
        w.put(0, &pattern(200_000, 5)).unwrap();
        drop(w);
    }
    assert_eq!(pool.latest_committed().map(|i| i.generation), Some(2));
    let g3 = page_runs(3, 10);
    write_gen(&mut pool, 3, &g3, b"three").unwrap();

    // A new client process (recovery after a crash) finds and reads the latest generation.
    drop(pool);
    let mut pool = connect(&srv, red, encrypted);
    assert_eq!(pool.latest_committed().map(|i| i.generation), Some(3));
    check_gen(&mut pool, 3, &g3, b"three").unwrap();

    // Empty generation.
    write_gen(&mut pool, 4, &[], b"").unwrap();
    check_gen(&mut pool, 4, &[], b"").unwrap();
    let h = pool.health();
    assert_eq!(h.len(), nservers);
    assert!(
        h.iter()
            .all(|s| s.connected && s.status.is_some_and(|st| st.pool_used > 0))
    );
}

#[test]
fn conformance_none_one_server() {
    conformance(1, "none", true);
}
#[test]
fn conformance_none_striped() {
    conformance(3, "none", true);
}
#[test]
fn conformance_none_plaintext() {
    conformance(2, "none", false);
}
#[test]
fn conformance_mirror() {
    conformance(3, "mirror:2", true);
}
#[test]
fn conformance_mirror3_plaintext() {
    conformance(3, "mirror:3", false);
}
#[test]
fn conformance_parity() {
    conformance(4, "parity", true);
}
#[test]
fn conformance_parity_plaintext() {
    conformance(3, "parity", false);
}
#[test]
fn conformance_rs() {
    conformance(6, "rs:4+2", true);
}

/// The contract of a storage backend, shared by every implementation.
fn backend_conformance(b: &mut dyn Backend) {
    let d1 = pattern(100_000, 1);
    b.put(1, 10, &d1).unwrap();
    b.put(1, 11, b"small").unwrap();
    b.put(1, 10, &d1[..5000]).unwrap(); // replace
    b.sync().unwrap();
    assert_eq!(b.get(1, 10).unwrap(), d1[..5000]);
    // Pipelined reads come back in order, errors in their place.
    b.send_get(1, 11).unwrap();
    b.send_get(1, 99).unwrap();
    b.send_get(1, 10).unwrap();
    assert_eq!(b.recv_get().unwrap(), b"small");
    assert!(matches!(b.recv_get(), Err(BackendError::NotFound { .. })));
    assert_eq!(b.recv_get().unwrap().len(), 5000);
    let l = b.list().unwrap();
    assert!(
        l.iter()
            .any(|e| e.generation == 1 && !e.committed && e.objects == 2)
    );
    assert!(matches!(b.manifest(1), Err(BackendError::NotFound { .. })));
    b.commit(1, b"M1").unwrap();
    assert_eq!(b.manifest(1).unwrap(), b"M1");
    b.commit(1, b"M1 v2").unwrap();
    assert_eq!(b.manifest(1).unwrap(), b"M1 v2");
    assert!(
        b.list()
            .unwrap()
            .iter()
            .any(|e| e.generation == 1 && e.committed)
    );
    b.free(1).unwrap();
    b.free(1).unwrap();
    assert!(matches!(b.get(1, 10), Err(BackendError::NotFound { .. })));
    assert!(b.list().unwrap().iter().all(|e| e.generation != 1));
    assert!(b.status().is_ok());
}

#[test]
fn backend_conformance_remote() {
    let s = Server::start("16M");
    let cfg = ConnConfig {
        key: Psk::new(KEY).unwrap(),
        pool: [9; 16],
        name: "conformance".into(),
        connect_timeout: Duration::from_secs(3),
        io_timeout: Duration::from_secs(10),
    };
    let mut c = Conn::connect(&s.addr, &cfg).unwrap();
    backend_conformance(&mut c);
}

#[test]
fn backend_conformance_disk() {
    let d = TempDir::new("disk");
    let mut b = DiskStore::open(d.path(), &[9; 16]).unwrap();
    backend_conformance(&mut b);
}
