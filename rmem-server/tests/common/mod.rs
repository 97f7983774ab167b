//! Test harness: real `rmem-server` processes on loopback, temporary directories, pool helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rmem_client::backend::{Backend, BackendError};
use rmem_client::conn::{Conn, ConnConfig};
use rmem_client::{Encryption, Pool, PoolConfig, Psk, Redundancy};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "rmem-test-{}-{}-{}",
            tag,
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

pub const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
pub const DATA_KEY: [u8; 32] = [0x5a; 32];
/// The pool of `config`.
pub const POOL: [u8; 16] = [7; 16];
/// Another pool sharing the servers (what `Hog` fills them with).
pub const OTHER: [u8; 16] = [9; 16];

pub fn key_file(dir: &Path, key: &[u8]) -> PathBuf {
    let p = dir.join(format!("key-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&p, rmem_client::auth::encode_hex(key)).expect("write key");
    p
}

/// One server process.
pub struct Server {
    pub child: Option<Child>,
    pub addr: String,
    pub admin: PathBuf,
    pub log: PathBuf,
    pub stats: Option<String>,
    _dir: TempDir,
}

pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rmem-server")
}

impl Server {
    pub fn start(capacity: &str) -> Server {
        Server::start_with(capacity, KEY, &[], "127.0.0.1:0")
    }

    pub fn start_with(capacity: &str, key: &[u8], extra: &[&str], listen: &str) -> Server {
        Server::start_in(capacity, key, extra, listen, None)
    }

    /// A server with extra environment (e.g. `RMEM_FAULT`).
    pub fn start_env(capacity: &str, env: &[(&str, &str)]) -> Server {
        Server::start_full(capacity, KEY, &[], "127.0.0.1:0", None, env)
    }

    /// `wrap` runs the server under a prefix command (e.g. `ip netns exec NS`).
    pub fn start_in(
        capacity: &str,
        key: &[u8],
        extra: &[&str],
        listen: &str,
        wrap: Option<&[&str]>,
    ) -> Server {
        Server::start_full(capacity, key, extra, listen, wrap, &[])
    }

    fn start_full(
        capacity: &str,
        key: &[u8],
        extra: &[&str],
        listen: &str,
        wrap: Option<&[&str]>,
        env: &[(&str, &str)],
    ) -> Server {
        let dir = TempDir::new("srv");
        let kf = key_file(dir.path(), key);
        let admin = dir.path().join("admin.sock");
        let log = dir.path().join("server.log");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            listen.into(),
            "--capacity".into(),
            capacity.into(),
            "--key-file".into(),
            kf.display().to_string(),
            "--admin-socket".into(),
            admin.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = match wrap {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(server_bin());
                c
            }
            None => Command::new(server_bin()),
        };
        cmd.args(&args)
            .envs(env.iter().copied())
            .env("RMEM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("spawn rmem-server");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let mut addr = None;
        let mut stats = None;
        for l in lines.by_ref() {
            let l = l.expect("read server stdout");
            if let Some(a) = l.strip_prefix("stats ") {
                stats = Some(a.to_string());
            }
            if let Some(a) = l.strip_prefix("listening ") {
                addr = Some(a.to_string());
                break;
            }
        }
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!(
                "server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child: Some(child),
            addr,
            admin,
            log,
            stats,
            _dir: dir,
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                self.child = None;
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn admin(&self, cmd: &str) -> String {
        let out = Command::new(server_bin())
            .args(cmd.split_whitespace())
            .arg("--admin-socket")
            .arg(&self.admin)
            .output()
            .expect("run admin command");
        assert!(
            out.status.success(),
            "admin {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Value of one Prometheus metric from `rmem-server stats`.
    pub fn metric(&self, name: &str) -> u64 {
        let s = self.admin("stats");
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("rmem_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in {s}"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

pub fn config(servers: &[Server], red: &str, encrypted: bool) -> PoolConfig {
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
    c.io_timeout = Duration::from_secs(10);
    c
}

/// `config` with `local_dir` as the disk fallback.
pub fn config_local(
    servers: &[Server],
    red: &str,
    encrypted: bool,
    local_dir: &Path,
) -> PoolConfig {
    let mut c = config(servers, red, encrypted);
    c.local_dir = Some(local_dir.to_path_buf());
    c
}

pub fn connect(servers: &[Server], red: &str, encrypted: bool) -> Pool {
    Pool::connect(config(servers, red, encrypted)).expect("connect pool")
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

/// The page runs of a checkpoint-image-like set, at spread-out addresses: (address, bytes).
fn runs_of(seed: u64) -> impl Iterator<Item = (u64, Vec<u8>)> {
    let mut addr = 0x7f00_0000_0000u64;
    (0..).map(move |i: usize| {
        let pages = 1 + (seed as usize * 7 + i * 13) % 37;
        let run = (
            addr,
            pattern(pages * 4096 + (i % 3) * 100, seed * 1000 + i as u64),
        );
        addr += (pages as u64 + 3) * 4096 * 2;
        run
    })
}

/// A checkpoint-image-like set of `runs` page runs: (address, bytes).
pub fn page_runs(seed: u64, runs: usize) -> Vec<(u64, Vec<u8>)> {
    runs_of(seed).take(runs).collect()
}

/// The same, as many runs as make at least `bytes`.
pub fn image(seed: u64, bytes: usize) -> Vec<(u64, Vec<u8>)> {
    let mut total = 0;
    runs_of(seed)
        .take_while(|(_, d)| {
            let more = total < bytes;
            total += d.len();
            more
        })
        .collect()
}

/// Writes `runs` as generation `g` and commits with manifest `user`.
pub fn write_gen(
    pool: &mut Pool,
    g: u64,
    runs: &[(u64, Vec<u8>)],
    user: &[u8],
) -> Result<rmem_client::GenInfo, rmem_client::PoolError> {
    let mut w = pool.begin_generation(g)?;
    for (a, d) in runs {
        w.put(*a, d)?;
    }
    w.commit(user)
}

/// Reads every run back and compares, through both `get` and `read_all`.
pub fn check_gen(
    pool: &mut Pool,
    g: u64,
    runs: &[(u64, Vec<u8>)],
    user: &[u8],
) -> Result<(), rmem_client::PoolError> {
    let mut r = pool.read_generation(g)?;
    assert_eq!(r.user_manifest(), user);
    for (a, d) in runs {
        let got = r.get(*a, d.len() as u64)?;
        assert!(got == *d, "generation {g}: run at {a:#x} differs");
    }
    let mut seen = Vec::new();
    r.read_all(|a, b| {
        seen.push((a, b.to_vec()));
        Ok(())
    })?;
    // read_all yields runs possibly split at chunk boundaries; join them back.
    let mut joined: Vec<(u64, Vec<u8>)> = Vec::new();
    for (a, b) in seen {
        match joined.last_mut() {
            Some((la, lb)) if *la + lb.len() as u64 == a => lb.extend_from_slice(&b),
            _ => joined.push((a, b)),
        }
    }
    assert_eq!(joined.len(), runs.len(), "generation {g}: run count");
    for ((a, d), (ja, jd)) in runs.iter().zip(&joined) {
        assert_eq!(a, ja);
        assert!(d == jd, "generation {g}: read_all run at {a:#x} differs");
    }
    Ok(())
}

/// Bytes the pool holds on each server (0 for one it cannot reach).
pub fn pool_used(pool: &mut Pool) -> Vec<u64> {
    pool.health()
        .iter()
        .map(|h| h.status.map_or(0, |s| s.pool_used))
        .collect()
}

/// Another pool's (`OTHER`) connection to a server, holding generation 1 of that pool.
pub struct Hog(pub Conn);

impl Hog {
    /// Fills `srv` with the other pool's objects until at most `leave` bytes are free (0: full,
    /// even while the pool under test writes at the same time). The other pool's generation stays
    /// uncommitted: nothing collects it while this connection holds it.
    pub fn fill(srv: &Server, leave: u64) -> Hog {
        let cfg = ConnConfig {
            key: Psk::new(KEY).expect("key"),
            pool: OTHER,
            name: "hog".into(),
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(10),
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

/// Polls `f` until it returns true (used to wait for an asynchronous server state, never to
/// assert on time: the bound only keeps a broken build from hanging).
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
pub mod proxy;

/// Client-side logs on stderr when `RMEM_TEST_LOG` is set (e.g. `RMEM_TEST_LOG=debug`).
pub fn init_log() {
    if let Ok(f) = std::env::var("RMEM_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_test_writer()
            .try_init();
    }
}
