//! Test harness of the pool's own integration tests: real `rmem-server` processes on loopback
//! (the binary of this workspace, built on first use), temporary directories, generations of
//! known bytes and a way to fill a server's memory from another pool.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rmem_client::backend::{Backend, BackendError};
use rmem_client::conn::{Conn, ConnConfig};
use rmem_client::{Encryption, GenInfo, Pool, PoolConfig, PoolError, Psk, Redundancy};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
pub const DATA_KEY: [u8; 32] = [0x5a; 32];
/// The pool under test.
pub const POOL: [u8; 16] = [7; 16];
/// Another pool sharing the servers (what fills them).
pub const OTHER: [u8; 16] = [9; 16];

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "rmem-client-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `rmem-server` of this workspace and profile: `cargo build -p rmem-server` once (a no-op when
/// it is up to date), as a dev-dependency on the server crate would make a cycle.
pub fn server_bin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>")
            .to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "rmem-server", "--bin", "rmem-server"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build -p rmem-server");
        assert!(st.success(), "building rmem-server failed");
        let bin = profile.join("rmem-server");
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
}

/// One server process, killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    admin: PathBuf,
    _dir: TempDir,
}

impl Server {
    /// A server lending `capacity` (e.g. `4M`).
    pub fn start(capacity: &str) -> Server {
        let dir = TempDir::new("srv");
        let kf = dir.path().join("key");
        std::fs::write(&kf, rmem_client::auth::encode_hex(KEY)).expect("write key");
        let log = dir.path().join("server.log");
        let mut child = Command::new(server_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--capacity", capacity])
            .arg("--key-file")
            .arg(&kf)
            .arg("--admin-socket")
            .arg(dir.path().join("admin.sock"))
            .env("RMEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn rmem-server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening ").map(str::to_string));
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        // Keep draining its standard output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child: Some(child),
            addr,
            admin: dir.path().join("admin.sock"),
            _dir: dir,
        }
    }

    /// Value of one of the server's metrics (`rmem-server stats`), e.g. `refused_full_total`.
    pub fn metric(&self, name: &str) -> u64 {
        let out = Command::new(server_bin())
            .arg("stats")
            .arg("--admin-socket")
            .arg(&self.admin)
            .output()
            .expect("run rmem-server stats");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("rmem_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in {text}"))
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn servers(n: usize, capacity: &str) -> Vec<Server> {
    (0..n).map(|_| Server::start(capacity)).collect()
}

/// A pool over `servers` with 64 KiB chunks; `local_dir` is the disk fallback (none: fallback
/// off).
pub fn config(
    servers: &[Server],
    red: &str,
    encrypted: bool,
    local_dir: Option<&Path>,
) -> PoolConfig {
    let enc = if encrypted {
        Encryption::Aead { key: DATA_KEY }
    } else {
        Encryption::Plaintext
    };
    let mut c = PoolConfig::new(
        servers.iter().map(|s| s.addr.clone()).collect(),
        Psk::new(KEY).expect("key"),
        POOL,
        enc,
        red.parse::<Redundancy>().expect("redundancy"),
    );
    c.chunk_size = 64 << 10;
    c.io_timeout = Duration::from_secs(20);
    c.local_dir = local_dir.map(Path::to_path_buf);
    c
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Page runs at spread-out addresses, `bytes` in all (about): a checkpoint image's data.
pub fn image(seed: u64, bytes: usize) -> Vec<(u64, Vec<u8>)> {
    let mut v = Vec::new();
    let mut addr = 0x7f00_0000_0000u64;
    let mut total = 0;
    let mut i = 0u64;
    while total < bytes {
        let len = (1 + (seed + i * 13) % 37) as usize * 4096 + (i % 3) as usize * 100;
        v.push((addr, pattern(len, seed * 1000 + i)));
        total += len;
        addr += (len as u64).next_multiple_of(4096) + 3 * 4096;
        i += 1;
    }
    v
}

/// Writes `runs` as generation `g` and commits with manifest `user`.
pub fn write_gen(
    pool: &mut Pool,
    g: u64,
    runs: &[(u64, Vec<u8>)],
    user: &[u8],
) -> Result<GenInfo, PoolError> {
    let mut w = pool.begin_generation(g)?;
    for (a, d) in runs {
        w.put(*a, d)?;
    }
    w.commit(user)
}

/// Reads every byte back, through both `get` and `read_all`, and compares.
pub fn check_gen(
    pool: &mut Pool,
    g: u64,
    runs: &[(u64, Vec<u8>)],
    user: &[u8],
) -> Result<(), PoolError> {
    let mut r = pool.read_generation(g)?;
    assert_eq!(r.user_manifest(), user);
    for (a, d) in runs {
        let got = r.get(*a, d.len() as u64)?;
        assert!(got == *d, "generation {g}: run at {a:#x} differs");
    }
    let mut joined: Vec<(u64, Vec<u8>)> = Vec::new();
    r.read_all(|a, b| {
        match joined.last_mut() {
            Some((la, lb)) if *la + lb.len() as u64 == a => lb.extend_from_slice(b),
            _ => joined.push((a, b.to_vec())),
        }
        Ok(())
    })?;
    assert_eq!(joined.len(), runs.len(), "generation {g}: run count");
    for ((a, d), (ja, jd)) in runs.iter().zip(&joined) {
        assert_eq!(a, ja);
        assert!(d == jd, "generation {g}: read_all run at {a:#x} differs");
    }
    Ok(())
}

/// Another pool's connection to a server, holding generation 1 of that pool.
#[derive(Debug)]
pub struct Hog(pub Conn);

impl Hog {
    /// Fills `srv` with another pool's objects until at most `leave` bytes are free (0: full,
    /// even while this pool's writes arrive at the same time). The other pool's generation stays
    /// uncommitted: nothing collects it while this connection holds it.
    pub fn fill(srv: &Server, leave: u64) -> Hog {
        let cfg = ConnConfig {
            key: Psk::new(KEY).expect("key"),
            pool: OTHER,
            name: "hog".into(),
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(20),
        };
        let mut c = Conn::connect(&srv.addr, &cfg).expect("connect the other pool");
        let free = c.status().expect("status").free();
        // 16 KiB: the servers' slot, so `leave` is met to the slot.
        let obj = vec![0x77u8; 16 << 10];
        for k in 0..free.saturating_sub(leave) / obj.len() as u64 {
            c.put(1, k, &obj).expect("put");
        }
        match c.sync() {
            Ok(()) => {}
            // Someone else took some of it meanwhile: full all the same.
            Err(BackendError::NoSpace { .. }) if leave == 0 => {}
            Err(e) => panic!("filling {}: {e}", srv.addr),
        }
        Hog(c)
    }

    /// Frees what the other pool holds.
    pub fn release(mut self) {
        self.0.free(1).expect("free the other pool's generation");
        self.0.sync().expect("sync");
    }
}

/// Bytes this pool holds on each server.
pub fn pool_used(pool: &mut Pool) -> Vec<u64> {
    pool.health()
        .iter()
        .map(|h| h.status.map_or(0, |s| s.pool_used))
        .collect()
}
