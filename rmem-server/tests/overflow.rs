//! Remote memory running out in the middle of a generation: with a local directory the write
//! goes on there (any number of lanes, several shards of one stripe on the disk), commits, reads
//! back byte for byte, and maintenance returns it to remote memory once there is room; without
//! one, the commit fails cleanly and the previous generation stays. Real `rmem-server`
//! processes with a few MiB of capacity, filled by another pool (`common::Hog`).

mod common;

use std::path::Path;

use common::*;
use rmem_client::manifest::{LOST, Manifest, TargetRef};
use rmem_client::{Location, Pool, PoolError};

/// (stored shards on the local directory, all stored shards, most disk shards in one stripe).
fn disk_shards(m: &Manifest) -> (usize, usize, usize) {
    let k = m.k as usize;
    let (mut disk, mut all, mut most) = (0, 0, 0);
    for (s, st) in m.stripes.iter().enumerate() {
        let mut here = 0;
        for (j, l) in st.iter().enumerate() {
            if l.target == LOST || (j < k && s * k + j >= m.chunk_lens.len()) {
                continue;
            }
            all += 1;
            if m.targets[l.target as usize] == TargetRef::Disk {
                here += 1;
            }
        }
        disk += here;
        most = most.max(here);
    }
    (disk, all, most)
}

/// Generation `g`'s directory in the pool's local fallback directory.
fn live_dir(local: &Path, g: u64) -> std::path::PathBuf {
    local
        .join("live")
        .join(rmem_client::auth::encode_hex(&POOL))
        .join(format!("g{g:016x}"))
}

/// Servers filled by another pool down to `leave` free bytes each; a generation of `bytes` that
/// does not fit overflows onto the local directory, commits, and reads back; once the other pool
/// is gone, maintenance brings it back to remote memory with the pool's redundancy.
fn overflow_and_return(n: usize, red: &str, encrypted: bool, bytes: usize) {
    let mut srv = servers(n, "4M");
    let dir = TempDir::new("overflow");
    let cfg = config_local(&srv, red, encrypted, dir.path());
    let hogs: Vec<Hog> = srv.iter().map(|s| Hog::fill(s, 1 << 20)).collect();
    let mut pool = Pool::connect(cfg.clone()).unwrap();
    let runs = image(1, bytes);
    let info = write_gen(&mut pool, 1, &runs, b"over")
        .unwrap_or_else(|e| panic!("{red}: the write must go on on local disk: {e}"));
    // Honest about where it is: partly on the local directory, nothing lost.
    assert_eq!(info.location, Location::Disk, "{red}: {info:?}");
    assert!(!info.degraded, "{red}: {info:?}");
    let man = pool.manifest(1).unwrap();
    let (disk, all, most) = disk_shards(&man);
    assert!(
        disk > 0 && disk < all,
        "{red}: {disk} of {all} shards on disk"
    );
    assert_eq!(
        (info.disk_shards, info.shards),
        (disk, all),
        "{red}: {info:?}"
    );
    // Every lane overflowed: some stripe has more shards on the disk than the redundancy
    // covers, which the old write path lost.
    assert!(
        most > man.m as usize,
        "{red}: at most {most} shards of a stripe on disk"
    );
    assert_eq!(
        man.targets
            .iter()
            .filter(|t| **t == TargetRef::Disk)
            .count(),
        1,
        "{red}: the manifest names the local directory once: {:?}",
        man.targets
    );
    // The shards the full servers took before they filled up are part of the generation.
    assert!(
        pool_used(&mut pool).iter().all(|&u| u > 0),
        "{red}: shards stayed on the servers"
    );
    check_gen(&mut pool, 1, &runs, b"over").unwrap();
    // A restart (a new pool on the same directory) finds and reads it.
    drop(pool);
    let mut pool = Pool::connect(cfg.clone()).unwrap();
    let latest = pool.latest_committed().expect("generation 1 committed");
    assert_eq!((latest.generation, latest.location), (1, Location::Disk));
    check_gen(&mut pool, 1, &runs, b"over").unwrap();
    // The flusher copes with several shards of a stripe on the disk target.
    assert_eq!(pool.flush_committed().unwrap(), 1);
    // Still no room: maintenance leaves it where it is.
    let rep = pool.maintain();
    assert!(rep.errors.is_empty(), "{red}: {rep:?}");
    assert_eq!(rep.returned_to_remote, 0, "{red}: {rep:?}");
    check_gen(&mut pool, 1, &runs, b"over").unwrap();
    // Room again: the disk shards go back to remote memory, the disk copy goes.
    for h in hogs {
        h.release();
    }
    let rep = pool.maintain();
    assert!(rep.errors.is_empty(), "{red}: {rep:?}");
    assert_eq!(rep.returned_to_remote, 1, "{red}: {rep:?}");
    let info = pool.info(1).unwrap();
    assert_eq!(
        (info.location, info.degraded, info.disk_shards),
        (Location::Remote, false, 0),
        "{red}: {info:?}"
    );
    assert!(
        !live_dir(dir.path(), 1).exists(),
        "{red}: the disk copy is gone"
    );
    check_gen(&mut pool, 1, &runs, b"over").unwrap();
    // With the pool's redundancy again: one server may go.
    drop(pool);
    srv[0].kill9();
    let mut pool = Pool::connect(cfg).unwrap();
    check_gen(&mut pool, 1, &runs, b"over").unwrap();
}

#[test]
fn parity_overflowing_every_server_goes_on_on_local_disk_and_comes_back() {
    overflow_and_return(3, "parity", true, 4 << 20);
}

#[test]
fn mirror_overflowing_every_server_goes_on_on_local_disk_and_comes_back() {
    overflow_and_return(2, "mirror:2", false, 3 << 20);
}

#[test]
fn rs_overflowing_every_server_goes_on_on_local_disk_and_comes_back() {
    overflow_and_return(4, "rs:2+2", false, 3 << 20);
}

/// The servers fill up behind the writer's back (another client takes the memory after the
/// generation started): they refuse shards already sent, which go to the local directory
/// instead, never lost.
#[test]
fn shards_refused_by_full_servers_are_sent_to_local_disk() {
    let srv = servers(3, "4M");
    let dir = TempDir::new("refused");
    let mut pool = Pool::connect(config_local(&srv, "parity", false, dir.path())).unwrap();
    let runs = image(2, 5 << 20);
    let mut w = pool.begin_generation(1).unwrap();
    let half = runs.len() / 4;
    for (a, d) in &runs[..half] {
        w.put(*a, d).unwrap();
    }
    let hogs: Vec<Hog> = srv.iter().map(|s| Hog::fill(s, 0)).collect();
    for (a, d) in &runs[half..] {
        w.put(*a, d).unwrap();
    }
    let info = w
        .commit(b"refused")
        .expect("refused shards go to local disk");
    assert!(
        srv.iter().any(|s| s.metric("refused_full_total") > 0),
        "the servers refused nothing: the test did not test refusals"
    );
    assert_eq!(info.location, Location::Disk, "{info:?}");
    assert!(info.partly_on_disk() && !info.degraded, "{info:?}");
    check_gen(&mut pool, 1, &runs, b"refused").unwrap();
    for h in hogs {
        h.release();
    }
    let rep = pool.maintain();
    assert_eq!(rep.returned_to_remote, 1, "{rep:?}");
    assert_eq!(pool.info(1).unwrap().location, Location::Remote);
    check_gen(&mut pool, 1, &runs, b"refused").unwrap();
}

/// Fallback off (no local directory): the generation that does not fit fails while it is
/// written (the write that finds no space), with a message that says why, leaves nothing committed or stored, and the previous one
/// stays readable.
fn no_fallback(n: usize, red: &str) {
    let srv = servers(n, "4M");
    let mut pool = connect(&srv, red, true);
    let small = image(3, 512 << 10);
    let info = write_gen(&mut pool, 1, &small, b"small").unwrap();
    assert_eq!(info.location, Location::Remote);
    let before = pool_used(&mut pool);
    let big = image(4, 8 << 20);
    match write_gen(&mut pool, 2, &big, b"big") {
        Err(PoolError::DataLoss {
            generation: 2,
            detail,
        }) => assert!(
            detail.contains("no space") && detail.contains("no local directory"),
            "{red}: {detail}"
        ),
        other => panic!("{red}: expected a clean failure, got {other:?}"),
    }
    assert_eq!(pool.committed_generations(), vec![1], "{red}");
    assert_eq!(pool.latest_committed().map(|i| i.generation), Some(1));
    check_gen(&mut pool, 1, &small, b"small").unwrap();
    assert_eq!(
        pool_used(&mut pool),
        before,
        "{red}: the failed write was freed"
    );
    // And the pool goes on: a generation that fits commits.
    write_gen(&mut pool, 3, &small, b"again").unwrap();
    check_gen(&mut pool, 3, &small, b"again").unwrap();
}

#[test]
fn parity_without_local_directory_fails_cleanly() {
    no_fallback(3, "parity");
}

#[test]
fn mirror_without_local_directory_fails_cleanly() {
    no_fallback(2, "mirror:2");
}
