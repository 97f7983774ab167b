//! Real `rmem-server` processes on loopback for the remote-store tests, the `ckpt-rmem` helper,
//! and kill-and-restart runs against a `CKPT_STORE`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;

/// `rmem-server` and `ckpt-rmem` of this profile, built on first use.
pub fn bins() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        let release = profile.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "rmem-server", "-p", "ckpt-rmem", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .expect("run cargo build -p rmem-server -p ckpt-rmem");
        assert!(st.success(), "building rmem-server and ckpt-rmem failed");
        let b = (profile.join("rmem-server"), profile.join("ckpt-rmem"));
        assert!(b.0.exists() && b.1.exists(), "{b:?} missing after build");
        b
    })
}

/// The `ckpt-rmem` helper.
pub fn helper() -> &'static Path {
    &bins().1
}

/// One `rmem-server` process.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// `host:port` it listens on.
    pub addr: String,
    admin: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Starts a server lending `capacity` (e.g. `256M`), authenticating with `key_file`, its
    /// admin socket and log in `dir`.
    pub fn start(dir: &Path, n: usize, capacity: &str, key_file: &Path) -> Server {
        let admin = dir.join(format!("admin-{n}.sock"));
        let log = dir.join(format!("server-{n}.log"));
        let mut child = Command::new(&bins().0)
            .args(["serve", "--listen", "127.0.0.1:0", "--capacity", capacity])
            .arg("--key-file")
            .arg(key_file)
            .arg("--admin-socket")
            .arg(&admin)
            .env("RMEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("spawn rmem-server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening ").map(str::to_string));
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!(
                "rmem-server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        // Keep draining its standard output.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child: Some(child),
            addr,
            admin,
            log,
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `rmem-server ARGS --admin-socket ...`; its standard output.
    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(&bins().0)
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin)
            .output()
            .expect("run rmem-server admin command");
        assert!(
            out.status.success(),
            "rmem-server {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Revokes the lent memory with `deadline` (e.g. `1s`) and waits until it is released.
    pub fn revoke(&self, deadline: &str) {
        self.admin(&["revoke", "--deadline", deadline]);
        let t = Instant::now();
        while !self.admin(&["state"]).contains("revoked") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "server {} still not revoked: {}",
                self.addr,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Servers sharing a pre-shared key, a client data key and a local directory for the store.
#[derive(Debug)]
pub struct Pool {
    /// The servers.
    pub servers: Vec<Server>,
    /// Pre-shared key file.
    pub key: PathBuf,
    /// Data key file.
    pub data_key: PathBuf,
    /// The store's local directory (`dir=`).
    pub local: PathBuf,
    /// Holds everything; dropped last.
    pub tmp: TempDir,
}

impl Pool {
    /// `n` servers of `capacity` each.
    pub fn start(name: &str, n: usize, capacity: &str) -> Pool {
        let tmp = TempDir::new(name);
        let key = tmp.path().join("psk");
        std::fs::write(
            &key,
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        )
        .unwrap();
        let data_key = tmp.path().join("datakey");
        std::fs::write(&data_key, "5a".repeat(32)).unwrap();
        let servers = (0..n)
            .map(|i| Server::start(tmp.path(), i, capacity, &key))
            .collect();
        Pool {
            servers,
            key,
            data_key: data_key.clone(),
            local: tmp.path().join("local"),
            tmp,
        }
    }

    /// Waits until no `ckpt-rmem` holds the store's lock (`dir/rmem.lock`): the background
    /// maintenance a killed program's last helper left running is over, so it cannot rebuild
    /// onto other places what a test is about to take away.
    pub fn wait_for_background(&self) {
        let Ok(f) = std::fs::File::open(self.local.join("rmem.lock")) else {
            return;
        };
        let t = Instant::now();
        loop {
            #[allow(unsafe_code)] // flock(2): no safe wrapper among this package's dependencies
            // SAFETY: flock on a descriptor this function owns; closing it releases the lock.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return;
            }
            // Only a bound against a hung helper, not a timed assertion.
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "the store's lock is still held"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `rmem://...` with this pool's servers and keys, plus `extra` options (`&k=v...`).
    pub fn spec(&self, extra: &str) -> String {
        format!(
            "rmem://{}?key={}&datakey={}&dir={}{extra}",
            self.servers
                .iter()
                .map(|s| s.addr.as_str())
                .collect::<Vec<_>>()
                .join(","),
            self.key.display(),
            self.data_key.display(),
            self.local.display()
        )
    }

    /// The helper's command for this pool under namespace `pool` (32 hex digits).
    pub fn helper(&self, mode: &str, pool: &str) -> Command {
        let mut c = Command::new(helper());
        c.arg(mode)
            .arg("--servers")
            .arg(
                self.servers
                    .iter()
                    .map(|s| s.addr.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .arg("--key")
            .arg(&self.key)
            .arg("--plaintext")
            .args(["--redundancy", "parity", "--pool", pool])
            .arg("--dir")
            .arg(self.tmp.path().join(format!("other-{pool}")));
        c
    }

    /// Fills `mib` MiB of the servers' memory with a generation of another pool (namespace
    /// `pool`), written through the helper's stream protocol (docs/stores.md).
    pub fn hog(&self, pool: &str, mib: usize) {
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut child = self
            .helper("put", pool)
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn ckpt-rmem put");
        let rec = |kind: u32, off: u64, body: &[u8]| {
            let mut v = Vec::with_capacity(24 + body.len());
            v.extend_from_slice(&0x3152_4b43u32.to_le_bytes());
            v.extend_from_slice(&kind.to_le_bytes());
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&(body.len() as u64).to_le_bytes());
            v.extend_from_slice(body);
            v
        };
        let mut begin = 1u64.to_le_bytes().to_vec();
        begin.extend_from_slice(&0u64.to_le_bytes());
        ours.write_all(&rec(1, 0, &begin)).unwrap();
        let chunk = vec![0x77u8; 1 << 20];
        for i in 0..mib {
            ours.write_all(&rec(2, (i as u64) << 20, &chunk)).unwrap();
        }
        let mut commit = ((mib as u64) << 20).to_le_bytes().to_vec();
        commit.extend_from_slice(&1u64.to_le_bytes());
        ours.write_all(&rec(3, 0, &commit)).unwrap();
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        ours.read_to_end(&mut reply).unwrap();
        let st = child.wait().unwrap();
        assert!(
            st.success() && reply.len() == 256 && reply[4..8] == [0, 0, 0, 0],
            "hog generation not committed: {st:?} {:?}",
            String::from_utf8_lossy(&reply[16.min(reply.len())..])
        );
    }

    /// Removes the other pool's generations again.
    pub fn unhog(&self, pool: &str) {
        let out = self.helper("clear", pool).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs `p` with `env`, killing it with SIGKILL `kills` times at random moments of its first
/// `base` of run time (the first in the middle of writing an image when `mid_checkpoint`),
/// restarting each time, then lets it finish. Returns the final run and every run's stderr.
pub fn kill_and_restart_with(
    p: &Program,
    env: &[(&str, &str)],
    kills: usize,
    mid_checkpoint: bool,
    base: Duration,
    rng: &mut Rng,
) -> (Run, String) {
    let mut log = String::new();
    for k in 0..kills {
        let fault;
        let mut extra = env.to_vec();
        if mid_checkpoint && k == 0 {
            fault = format!("write-data:kill@{}", 40 + (rng.unit() * 80.0) as u64);
            extra.push(("CKPT_FAULT", &fault));
        }
        let start = Instant::now();
        let mut child = p.spawn(&extra);
        let at = base.mul_f64(0.3 + 0.4 * rng.unit());
        while start.elapsed() < at {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let r = finish(child, Duration::from_secs(60), start);
        log.push_str(&format!(
            "--- run {k} (killed after {at:?}): {:?}\n{}",
            r.status, r.stderr
        ));
        if r.status.success() {
            return (r, log);
        }
    }
    let r = p.run(env, base * 20 + Duration::from_secs(60));
    log.push_str(&format!("--- final run: {:?}\n{}", r.status, r.stderr));
    (r, log)
}

/// A running program whose standard error is read line by line as it comes.
#[derive(Debug)]
pub struct Watch {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Everything read so far.
    pub log: String,
    start: Instant,
}

impl Watch {
    /// Starts `p` with `env`.
    pub fn spawn(p: &Program, env: &[(&str, &str)]) -> Watch {
        let mut child = p.spawn(env);
        let stderr = child.stderr.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        // Standard output is read at the end; drain it meanwhile so the program never blocks.
        let (otx, orx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            let _ = otx.send(s);
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
            // The end of standard error, then the whole standard output.
            if let Ok(out) = orx.recv() {
                let _ = tx.send(format!("\u{0}{out}"));
            }
        });
        Watch {
            child,
            lines: rx,
            log: String::new(),
            start: Instant::now(),
        }
    }

    /// Waits until a line containing `needle` has been logged (counting lines already read
    /// when `count` of them are needed); panics if the program ends first or `limit` passes.
    pub fn wait_for(&mut self, needle: &str, count: usize, limit: Duration) {
        let t = Instant::now();
        while self.log.matches(needle).count() < count {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(l) if l.starts_with('\u{0}') => {
                    panic!(
                        "program ended before logging {needle:?} x{count}\n{}",
                        self.log
                    )
                }
                Ok(l) => {
                    self.log.push_str(&l);
                    self.log.push('\n');
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => panic!("program ended before logging {needle:?}\n{}", self.log),
            }
            assert!(
                t.elapsed() < limit,
                "no {needle:?} x{count} within {limit:?}\n{}",
                self.log
            );
        }
    }

    /// SIGKILL, and wait for it.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log
    }

    /// Waits for the end (bounded by `limit`); the run with the whole log.
    pub fn finish(mut self, limit: Duration) -> Run {
        let mut stdout = String::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(l) if l.starts_with('\u{0}') => {
                    stdout = l[1..].to_string();
                    break;
                }
                Ok(l) => {
                    self.log.push_str(&l);
                    self.log.push('\n');
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
            if self.start.elapsed() > limit {
                let _ = self.child.kill();
                panic!("timed out after {limit:?}\n{}", self.log);
            }
        }
        let status = self.child.wait().unwrap();
        Run {
            status,
            stdout,
            stderr: self.log,
            elapsed: self.start.elapsed(),
        }
    }
}
