//! The `ckpt` command against real stores: a Rust example and a C example (under preload)
//! checkpointed by `ckpt run`, killed mid-run, examined with `ls`/`inspect`/`verify` (text and
//! JSON), damaged on purpose, and finished by `ckpt restart` with the uninterrupted output;
//! `ckpt servers` against a real `rmem-server`.
//!
//! Self-contained (it does not use the root package's `tests/common`): it builds the examples
//! it needs into the target directory of this build.
//!
//! # Safety
//!
//! Only `on_terminal` uses unsafe code: it calls `openpty` for two new descriptors and takes
//! ownership of them at once.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `target/<profile>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn release() -> bool {
    profile_dir().file_name().is_some_and(|n| n == "release")
}

fn cargo_build(args: &[&str]) {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build").args(args).current_dir(workspace());
    if release() {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("run cargo build");
    assert!(st.success(), "cargo build {args:?} failed");
}

/// A Rust example of the root package (built once).
fn rust_example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo_build(&["-p", "ckpt-suite", "--examples"]));
    let p = profile_dir().join("examples").join(name);
    assert!(p.exists(), "{} not built", p.display());
    p
}

/// A C example built with its Makefile into a directory of this test's own.
fn c_example(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let out = profile_dir().join("ckpt-cli-tests").join("c");
        std::fs::create_dir_all(&out).unwrap();
        let st = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(workspace().join("examples/c"))
            .arg(format!("OUT={}", out.display()))
            .status()
            .expect("run make");
        assert!(st.success(), "make examples/c failed");
        out
    });
    dir.join(name)
}

/// A fresh directory under the target directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = profile_dir()
            .join("ckpt-cli-tests")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn store(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command whose inherited descriptors beyond stdio are closed first (a harness's stray pipe
/// would make every checkpoint fail), with no `CKPT_*` variable from the caller's environment.
fn command(program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(
            "for fd in $(ls /proc/$$/fd); do [ \"$fd\" -gt 2 ] && eval \"exec $fd>&-\"; done; \
             exec \"$0\" \"$@\"",
        )
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CKPT_") || k == "LD_PRELOAD" {
            c.env_remove(k);
        }
    }
    c
}

fn ckpt(args: &[&str]) -> Output {
    command(Path::new(env!("CARGO_BIN_EXE_ckpt")), args)
        .output()
        .expect("run ckpt")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json(out: &Output, what: &str) -> Value {
    serde_json::from_str(&ok(out, what))
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{}", text(&out.stdout)))
}

fn digest(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("digest "))
        .map(|s| s.trim().to_string())
}

/// The uninterrupted run's digest.
fn baseline(program: &Path, args: &[&str]) -> String {
    let out = command(program, args).output().expect("run");
    digest(&ok(&out, "uninterrupted run")).expect("a digest line")
}

/// Spawns `ckpt ARGS` and kills it once its stderr has said `commits` checkpoints were
/// committed. Returns the stderr so far.
fn run_and_kill(args: &[&str], commits: usize) -> String {
    let mut child: Child = command(Path::new(env!("CARGO_BIN_EXE_ckpt")), args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ckpt run");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let start = Instant::now();
    let mut log = String::new();
    let mut seen = 0;
    while seen < commits {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                seen += usize::from(line.contains(" committed ("));
                log.push_str(&line);
                log.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let st = child.wait().unwrap();
                panic!("program ended ({st:?}) after {seen} checkpoints\n{log}");
            }
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("fewer than {commits} checkpoints within 30 s\n{log}");
        }
    }
    // `ckpt run` exec'd the program: this is the program itself.
    child.kill().unwrap();
    let _ = child.wait();
    log
}

fn committed(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().ok()?;
            n.strip_prefix("gen-")?.strip_suffix(".ckpt")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn rust_example_store_ls_inspect_verify_restart() {
    let water = rust_example("water");
    let args = ["1536", "100"];
    let want = baseline(&water, &args);
    let tmp = TempDir::new("rust");
    let store = tmp.store("store");
    let s = store.to_str().unwrap();
    let w = water.to_str().unwrap();
    // The Rust example links ckpt: no second copy of the library is preloaded.
    let dry = ok(
        &ckpt(&["run", "--store", s, "--dry-run", "--", w]),
        "run --dry-run",
    );
    assert!(!dry.contains("LD_PRELOAD"), "{dry}");
    let log = run_and_kill(
        &[
            "run",
            "--store",
            s,
            "--interval",
            "150ms",
            "--policy",
            "incremental",
            "--keep",
            "3",
            "--log",
            "info",
            "--",
            w,
            args[0],
            args[1],
        ],
        3,
    );
    let gens = committed(&store);
    assert!(gens.len() >= 2, "{gens:?}\n{log}");
    let newest = *gens.last().unwrap();

    // ls, text and JSON.
    let out = ok(&ckpt(&["ls", "--store", s]), "ls");
    assert!(out.contains("committed"), "{out}");
    assert!(
        out.contains(&format!("a restore would use generation {newest}")),
        "{out}"
    );
    let l = json(&ckpt(&["ls", "--store", s, "--json"]), "ls --json");
    assert_eq!(l["restore"]["generation"], newest, "{l:#}");
    assert_eq!(l["restore"]["data_checked"], true);
    let entries = l["generations"].as_array().unwrap();
    let listed: Vec<u64> = entries
        .iter()
        .filter(|e| e["state"] == "committed")
        .map(|e| e["generation"].as_u64().unwrap())
        .collect();
    let mut sorted = gens.clone();
    sorted.reverse();
    assert_eq!(listed, sorted);
    for e in entries.iter().filter(|e| e["state"] == "committed") {
        assert!(e["created_ns"].as_u64().unwrap() > 0);
        assert!(e["kind"] == "full" || e["kind"] == "incremental", "{e}");
        assert_eq!(e["policy"], "incremental");
        assert!(e["problem"].is_null(), "{e}");
    }
    // The newest committed generation (a `.tmp` of a checkpoint cut by the kill may list first).
    let top = entries.iter().find(|e| e["state"] == "committed").unwrap();
    assert_eq!(top["generation"], newest);
    assert_eq!(top["restore"], true);

    // inspect, text and JSON.
    let out = ok(&ckpt(&["inspect", "--store", s]), "inspect");
    for needle in [
        "[heap]", "[stack]", "regions", "chain", "identity", "signals",
    ] {
        assert!(out.contains(needle), "inspect lacks {needle}:\n{out}");
    }
    let i = json(
        &ckpt(&["inspect", "--store", s, "--json"]),
        "inspect --json",
    );
    assert_eq!(i["header"]["generation"], newest);
    assert_eq!(i["header"]["version"], 2);
    assert!(i["process"]["exe"].as_str().unwrap().ends_with("/water"));
    assert_eq!(i["process"]["policy"], "incremental");
    assert!(
        i["identity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["executable"] == true)
    );
    let regions = i["regions"].as_array().unwrap();
    assert!(regions.iter().any(|r| {
        r["flags"].as_array().unwrap().iter().any(|f| f == "heap")
            && r["saved_bytes"].as_u64() > Some(0)
    }));
    let chain = i["chain"].as_array().unwrap();
    assert_eq!(chain[0]["generation"], newest);
    assert_eq!(chain.last().unwrap()["kind"], "full", "{chain:?}");
    assert!(i["changed_on_disk"].as_array().unwrap().is_empty());
    assert!(i["signals"]["recorded"].as_u64().unwrap() > 30);

    // verify: the newest and its chain, then everything.
    let out = ok(&ckpt(&["verify", "--store", s]), "verify");
    assert!(out.contains("every checksum and link is good"), "{out}");
    let v = json(
        &ckpt(&["verify", "--store", s, "--all", "--json"]),
        "verify --all",
    );
    assert_eq!(v["ok"], true);
    assert!(v["images"].as_array().unwrap().len() >= gens.len());

    // Errors: a generation that does not exist, a missing and an empty store.
    let bad = ckpt(&["inspect", "--store", s, "999999"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("generation 999999 does not exist"),
        "{}",
        text(&bad.stderr)
    );
    let missing = tmp.store("nowhere");
    let bad = ckpt(&["ls", "--store", missing.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("does not exist"));
    let empty = tmp.store("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for sub in ["ls", "verify", "inspect"] {
        let bad = ckpt(&[sub, "--store", empty.to_str().unwrap()]);
        assert!(!bad.status.success(), "{sub}");
        assert!(
            text(&bad.stderr).contains("is empty"),
            "{sub}: {}",
            text(&bad.stderr)
        );
    }

    // A damaged copy: flip one byte inside a data run of the newest image.
    let broken = tmp.store("broken");
    copy_dir(&store, &broken);
    let b = broken.to_str().unwrap();
    let i = json(
        &ckpt(&["inspect", "--store", b, "--runs", "--json"]),
        "inspect --runs",
    );
    let runs = i["runs"]["list"].as_array().unwrap();
    let (index, run) = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r["kind"] == "data")
        .max_by_key(|(_, r)| r["len"].as_u64())
        .unwrap();
    let addr = run["addr"].as_str().unwrap().to_string();
    let off = run["data_off"].as_u64().unwrap() + 100;
    let image = broken.join(format!("gen-{newest:020}.ckpt"));
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[off as usize] ^= 0x5a;
    std::fs::write(&image, bytes).unwrap();
    let out = ckpt(&["verify", "--store", b]);
    assert!(!out.status.success());
    let msg = text(&out.stdout);
    assert!(
        msg.contains(&format!(
            "checksum mismatch in data run {index} at address {addr}"
        )),
        "{msg}"
    );
    let v: Value =
        serde_json::from_slice(&ckpt(&["verify", "--store", b, "--json"]).stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["images"][0]["problem"].as_str().unwrap().contains(&addr));
    // ls says a restore would skip it for an older generation.
    let l = json(
        &ckpt(&["ls", "--store", b, "--json"]),
        "ls of a damaged store",
    );
    assert_eq!(l["restore"]["unusable"][0], newest);
    assert!(l["restore"]["generation"].as_u64().unwrap() < newest);
    let damaged = l["generations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["generation"] == newest && e["state"] == "committed")
        .unwrap();
    assert!(damaged["problem"].as_str().unwrap().contains(&addr));

    // restart finishes with the uninterrupted output.
    let out = command(
        Path::new(env!("CARGO_BIN_EXE_ckpt")),
        &["restart", "--store", s, "--", w, args[0], args[1]],
    )
    .output()
    .unwrap();
    let stdout = ok(&out, "ckpt restart");
    assert_eq!(digest(&stdout).as_deref(), Some(want.as_str()), "{stdout}");
    assert!(text(&out.stderr).contains("restored generation"));
}

#[test]
fn c_example_under_preload_killed_then_restarted() {
    let water = c_example("water");
    let args = ["1024", "100"];
    let want = baseline(&water, &args);
    let tmp = TempDir::new("c");
    let store = tmp.store("store");
    let s = store.to_str().unwrap();
    let w = water.to_str().unwrap();
    // The C program does not link ckpt: `run` preloads libckpt.so.
    let dry = ok(
        &ckpt(&["run", "--store", s, "--dry-run", "--", w]),
        "run --dry-run",
    );
    assert!(
        dry.contains("LD_PRELOAD=") && dry.contains("libckpt.so"),
        "{dry}"
    );
    let log = run_and_kill(
        &[
            "run",
            "--store",
            s,
            "--interval",
            "200ms",
            "--",
            w,
            args[0],
            args[1],
        ],
        1,
    );
    assert!(!committed(&store).is_empty(), "{log}");
    let v = json(&ckpt(&["verify", "--store", s, "--json"]), "verify");
    assert_eq!(v["ok"], true);
    let i = json(&ckpt(&["inspect", "--store", s, "--json"]), "inspect");
    assert!(i["process"]["exe"].as_str().unwrap().ends_with("/water"));
    // The preloaded library is one of the mapped files the image records.
    assert!(
        i["identity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["path"].as_str().unwrap().ends_with("libckpt.so")),
        "{:#}",
        i["identity"]
    );
    let out = command(
        Path::new(env!("CARGO_BIN_EXE_ckpt")),
        &["restart", "--store", s, "--", w, args[0], args[1]],
    )
    .output()
    .unwrap();
    let stdout = ok(&out, "ckpt restart");
    assert_eq!(digest(&stdout).as_deref(), Some(want.as_str()), "{stdout}");
    assert!(text(&out.stderr).contains("restored generation"));
}

#[test]
fn restart_without_a_checkpoint_fails_clearly() {
    let tmp = TempDir::new("nothing");
    let s = tmp.store("store");
    let out = ckpt(&["restart", "--store", s.to_str().unwrap(), "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("nothing to restart from"), "{e}");
    std::fs::create_dir_all(&s).unwrap();
    let out = ckpt(&["restart", "--store", s.to_str().unwrap(), "--", "/bin/true"]);
    assert!(text(&out.stderr).contains("is empty"));
    // A bad setting is refused before the program starts, naming the variable.
    let out = ckpt(&[
        "run",
        "--store",
        s.to_str().unwrap(),
        "--interval",
        "soon",
        "--",
        "/bin/true",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("CKPT_INTERVAL"),
        "{}",
        text(&out.stderr)
    );
    assert!(tmp.path().exists());
}

#[test]
fn remote_store_is_passed_through_or_refused_clearly() {
    let tmp = TempDir::new("remote");
    let key = tmp.path().join("key");
    std::fs::write(&key, "00112233445566778899aabbccddeeff").unwrap();
    let spec = format!(
        "rmem://127.0.0.1:9,127.0.0.1:10?key={}&redundancy=mirror:2",
        key.display()
    );
    let out = ckpt(&["run", "--store", &spec, "--dry-run", "--", "/bin/true"]);
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    if out.status.success() {
        // A library with remote-store support: the spec goes through unchanged.
        assert!(o.contains(&format!("CKPT_STORE={spec}")), "{o}");
        assert!(o.contains("unset CKPT_DIR"), "{o}");
    } else {
        // Without it, a clear refusal; with it, the library's own parser may refuse the spec
        // (naming CKPT_STORE) before the program starts.
        assert!(
            e.contains("remote-store support") || e.contains("CKPT_STORE"),
            "{e}"
        );
    }
    // A pool named after its program cannot be read without knowing the program.
    let out = ckpt(&[
        "ls",
        "--store",
        &format!("rmem://127.0.0.1:9?key={}", key.display()),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--program"),
        "{}",
        text(&out.stderr)
    );
}

/// Starts an rmem-server on a free loopback port; kills it on drop.
struct Server {
    child: Child,
    addr: String,
    stats: String,
}

impl Server {
    fn start(key: &Path) -> Server {
        Server::with_capacity(key, "16M")
    }

    fn with_capacity(key: &Path, capacity: &str) -> Server {
        let exe = profile_dir().join("rmem-server");
        if !exe.exists() {
            cargo_build(&["-p", "rmem-server", "--bin", "rmem-server"]);
        }
        let mut child = command(
            &exe,
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--capacity",
                capacity,
                "--key-file",
                key.to_str().unwrap(),
                "--stats-listen",
                "127.0.0.1:0",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rmem-server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut addr, mut stats) = (String::new(), String::new());
        while addr.is_empty() {
            let line = lines.next().expect("rmem-server output").unwrap();
            if let Some(a) = line.strip_prefix("listening ") {
                addr = a.trim().into();
            } else if let Some(s) = line.strip_prefix("stats ") {
                stats = s.trim().into();
            }
        }
        Server { child, addr, stats }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn servers_shows_the_pool() {
    let tmp = TempDir::new("servers");
    let key = tmp.path().join("key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    let srv = Server::start(&key);
    let spec = format!("rmem://{}?pool=ckpt-cli-test", srv.addr);
    let k = key.to_str().unwrap();
    let out = ok(
        &ckpt(&[
            "servers",
            "--store",
            &spec,
            "--key-file",
            k,
            "--stats",
            &srv.stats,
        ]),
        "servers",
    );
    assert!(out.contains(&srv.addr) && out.contains("lending"), "{out}");
    assert!(out.contains("16.0 MiB"), "{out}");
    let j = json(
        &ckpt(&[
            "servers",
            "--store",
            &spec,
            "--key-file",
            k,
            "--stats",
            &srv.stats,
            "--json",
        ]),
        "servers --json",
    );
    assert_eq!(j["ok"], true);
    assert_eq!(j["servers"][0]["state"], "lending");
    assert_eq!(j["servers"][0]["capacity"], 16 << 20);
    assert_eq!(j["servers"][0]["pool_used"], 0);
    assert_eq!(j["generations"], serde_json::json!([]));
    assert_eq!(
        j["stats"][0]["metrics"]["capacity_bytes"],
        (16 << 20) as f64
    );
    // A server that is down is reported, and the exit status says the pool is not whole.
    let spec2 = format!("rmem://{},127.0.0.1:1", srv.addr);
    let out = ckpt(&["servers", "--store", &spec2, "--key-file", k, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["servers"][1]["connected"], false);
    assert_eq!(j["servers"][0]["connected"], true);
    // Without the key: a clear message.
    let out = ckpt(&["servers", "--store", &spec]);
    assert!(
        text(&out.stderr).contains("--key-file"),
        "{}",
        text(&out.stderr)
    );
}

/// The remote store end to end through the command: `ckpt run` checkpoints into three servers
/// with parity, the program is killed, `ls`/`inspect`/`verify` read the pool (text and JSON),
/// a server dies and `restart` still finishes with the uninterrupted output, and with a second
/// server gone every generation is reported unreadable and `verify` fails.
#[test]
fn remote_store_ls_inspect_verify_restart() {
    let helper = profile_dir().join("ckpt-rmem");
    if !helper.exists() {
        cargo_build(&["-p", "ckpt-rmem"]);
    }
    let water = rust_example("water");
    let args = ["1536", "100"];
    let want = baseline(&water, &args);
    let tmp = TempDir::new("remote-rw");
    let key = tmp.path().join("psk");
    let data_key = tmp.path().join("data.key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    std::fs::write(
        &data_key,
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
    )
    .unwrap();
    let mut servers: Vec<Option<Server>> = (0..3)
        .map(|_| Some(Server::with_capacity(&key, "256M")))
        .collect();
    let addrs: Vec<String> = servers.iter().flatten().map(|s| s.addr.clone()).collect();
    let spec = format!(
        "rmem://{}?key={}&datakey={}&redundancy=parity&dir={}",
        addrs.join(","),
        key.display(),
        data_key.display(),
        tmp.path().join("local").display()
    );
    let label = format!("rmem://{}", addrs.join(","));
    let w = water.to_str().unwrap();
    let log = run_and_kill(
        &[
            "run",
            "--store",
            &spec,
            "--interval",
            "150ms",
            "--policy",
            "incremental",
            "--keep",
            "3",
            "--log",
            "info",
            "--",
            w,
            args[0],
            args[1],
        ],
        3,
    );
    assert!(log.contains("in remote memory"), "{log}");
    let read = |cmd: &[&str]| {
        let mut a = cmd.to_vec();
        a.extend(["--store", &spec, "--program", w]);
        ckpt(&a)
    };

    // ls: every generation in remote memory, the newest restorable.
    let out = ok(&read(&["ls"]), "ls of a remote store");
    assert!(out.contains(&format!("store {label} (")), "{out}");
    assert!(out.contains("3 of 3 servers up"), "{out}");
    assert!(out.contains("  remote  "), "{out}");
    assert!(
        out.contains("<- restore") && out.contains("every checksum verified"),
        "{out}"
    );
    assert!(
        !out.contains("/dev/shm"),
        "the staging directory leaks into the output:\n{out}"
    );
    let j = json(&read(&["ls", "--json"]), "ls --json of a remote store");
    let gens = j["generations"].as_array().unwrap();
    assert!(gens.len() >= 2, "{j}");
    assert!(gens.iter().all(|g| g["location"] == "remote"), "{j}");
    let newest = gens[0]["generation"].as_u64().unwrap();
    assert_eq!(j["restore"]["generation"], newest);
    assert_eq!(j["remote"]["servers_up"], 3);
    // servers: the program's pool, found from --program as ls finds it.
    let sj = json(&read(&["servers", "--json"]), "servers --program");
    assert_eq!(sj["generations"][0], newest, "{sj}");
    assert!(sj["servers"][0]["pool_used"].as_u64().unwrap() > 0, "{sj}");
    let q = json(&read(&["ls", "--quick", "--json"]), "ls --quick");
    assert_eq!(q["restore"]["data_checked"], false);
    assert_eq!(q["restore"]["generation"], newest);

    // inspect: the newest generation and its chain, headers and manifests only.
    let out = ok(&read(&["inspect"]), "inspect of a remote store");
    assert!(out.contains(&format!("image       {label}/gen-")), "{out}");
    assert!(out.contains(&format!("generation  {newest} ")), "{out}");
    assert!(out.contains("chain ("), "{out}");
    let oldest = gens.last().unwrap()["generation"].as_u64().unwrap();
    let ji = json(
        &read(&["inspect", "--json", &oldest.to_string()]),
        "inspect G --json",
    );
    assert_eq!(ji["header"]["generation"], oldest);
    let missing = read(&["inspect", "999"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("generation 999 is not committed"),
        "{}",
        text(&missing.stderr)
    );

    // verify: every byte fetched, every checksum checked.
    let out = ok(
        &read(&["verify", "--all"]),
        "verify --all of a remote store",
    );
    assert!(out.contains("every checksum and link is good"), "{out}");
    let jv = json(&read(&["verify", "--json"]), "verify --json");
    assert_eq!(jv["ok"], true);
    assert_eq!(jv["images"][0]["generation"], newest);

    // One server dies: parity covers it; the restart finishes with the uninterrupted output.
    servers[2] = None;
    let j = json(&read(&["ls", "--json"]), "ls with a server dead");
    assert_eq!(j["remote"]["servers_up"], 2);
    assert!(
        j["generations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["location"] == "degraded"),
        "{j}"
    );
    ok(&read(&["verify", "--all"]), "verify with a server dead");
    let out = command(
        Path::new(env!("CARGO_BIN_EXE_ckpt")),
        &[
            "restart",
            "--store",
            &spec,
            "--interval",
            "10s",
            "--log",
            "info",
            "--",
            w,
            args[0],
            args[1],
        ],
    )
    .output()
    .unwrap();
    let stdout = ok(&out, "restart from remote memory with a server dead");
    assert!(
        text(&out.stderr).contains("degraded"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(digest(&stdout).as_deref(), Some(want.as_str()));

    // The finished run removed its generations: the store is empty now.
    let out = read(&["ls"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("holds no checkpoint"),
        "{}",
        text(&out.stderr)
    );
}

/// Beyond the redundancy: with two of three servers gone, `ls` lists every generation as
/// unreadable (a restore would fail) and `verify` fails, naming what was lost.
#[test]
fn remote_store_beyond_its_redundancy_is_reported_unreadable() {
    let helper = profile_dir().join("ckpt-rmem");
    if !helper.exists() {
        cargo_build(&["-p", "ckpt-rmem"]);
    }
    let lu = rust_example("lu");
    let tmp = TempDir::new("remote-lost");
    let key = tmp.path().join("psk");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    let mut servers: Vec<Option<Server>> = (0..3)
        .map(|_| Some(Server::with_capacity(&key, "128M")))
        .collect();
    let addrs: Vec<String> = servers.iter().flatten().map(|s| s.addr.clone()).collect();
    let spec = format!(
        "rmem://{}?key={}&plaintext&pool=cli-lost&dir={}",
        addrs.join(","),
        key.display(),
        tmp.path().join("local").display()
    );
    run_and_kill(
        &[
            "run",
            "--store",
            &spec,
            "--interval",
            "150ms",
            "--log",
            "info",
            "--",
            lu.to_str().unwrap(),
            "512",
            "400",
        ],
        2,
    );
    // pool= names the pool: no --program needed.
    ok(
        &ckpt(&["verify", "--store", &spec]),
        "verify, every server up",
    );
    servers[1] = None;
    servers[2] = None;
    let out = ckpt(&["ls", "--store", &spec]);
    let o = ok(&out, "ls beyond the redundancy");
    assert!(o.contains("unreadable") && o.contains("data lost"), "{o}");
    assert!(
        o.contains("a restore would find every committed generation unusable"),
        "{o}"
    );
    let out = ckpt(&["verify", "--store", &spec, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert!(
        j["images"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("data lost"),
        "{j}"
    );
}

/// Servers too small for one image (LU 1024: 8 MiB, parity over three 4 MiB servers): the
/// checkpoint goes on in the local fallback directory, and
/// `ls` says each generation lies partly in remote memory and partly on disk.
#[test]
fn remote_store_overflowing_to_local_disk_is_shown_as_such() {
    let helper = profile_dir().join("ckpt-rmem");
    if !helper.exists() {
        cargo_build(&["-p", "ckpt-rmem"]);
    }
    let lu = rust_example("lu");
    let tmp = TempDir::new("remote-overflow");
    let key = tmp.path().join("psk");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    let servers: Vec<Server> = (0..3).map(|_| Server::with_capacity(&key, "4M")).collect();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let spec = format!(
        "rmem://{}?key={}&plaintext&pool=cli-overflow&dir={}",
        addrs.join(","),
        key.display(),
        tmp.path().join("local").display()
    );
    let log = run_and_kill(
        &[
            "run",
            "--store",
            &spec,
            "--interval",
            "200ms",
            "--log",
            "info",
            "--",
            lu.to_str().unwrap(),
            "1024",
            "400",
        ],
        2,
    );
    assert!(log.contains("on local disk (remote memory short)"), "{log}");
    let j = json(
        &ckpt(&["ls", "--store", &spec, "--json"]),
        "ls of an overflowed pool",
    );
    let gens = j["generations"].as_array().unwrap();
    assert!(
        gens.iter()
            .all(|g| g["location"] == "remote+disk" || g["location"] == "disk"),
        "{j}"
    );
    assert!(gens.iter().any(|g| g["location"] == "remote+disk"), "{j}");
    assert!(j["restore"]["generation"].is_u64(), "{j}");
    ok(
        &ckpt(&["verify", "--all", "--store", &spec]),
        "verify of an overflowed pool",
    );
}

/// Runs `cmd` with its standard error (and output) on a new pseudo-terminal until what it
/// wrote there contains `until` (then kills it) or it exits; returns everything it wrote.
fn on_terminal(mut cmd: Command, until: &str, limit: Duration) -> String {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the integers; no name, settings or size.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = cmd
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .expect("spawn on a terminal");
    // The parent's copies of the terminal's end went with `cmd`'s: the reader sees EIO once
    // the child and its descendants are gone.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut master = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(b) => out.extend_from_slice(&b),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if text(&out).contains(until) {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no {until:?} on the terminal within {limit:?}:\n{}",
                text(&out)
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    text(&out)
}

/// The page data of the first commit line of a library log.
fn first_commit_mib(log: &str) -> f64 {
    log.lines()
        .find_map(|l| {
            l.split(" committed (")
                .nth(1)?
                .split("): ")
                .nth(1)?
                .split(" MiB")
                .next()
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no commit line:\n{log}"))
}

#[test]
fn long_restores_and_verifications_show_progress_on_a_terminal_only() {
    // 72 MiB of page data: above the 64 MiB from which a restore or a verification draws a
    // bar, and the 16 MiB from which a fetch from remote memory does.
    let lu = rust_example("lu");
    let (l, args) = (lu.to_str().unwrap(), ["3072", "50"]);
    let tmp = TempDir::new("progress");
    let dir = tmp.store("local");
    let d = dir.to_str().unwrap();
    let run = |store: &str| {
        let log = run_and_kill(
            &[
                "run",
                "--store",
                store,
                "--interval",
                "1s",
                "--",
                l,
                args[0],
                args[1],
            ],
            1,
        );
        assert!(
            first_commit_mib(&log) >= 64.0,
            "image too small for a bar:\n{log}"
        );
    };
    let restart = |store: &str| {
        let mut c = command(
            Path::new(env!("CARGO_BIN_EXE_ckpt")),
            &["restart", "--store", store],
        );
        c.args(["--", l, args[0], args[1]]).env("TERM", "xterm");
        c
    };
    run(d);

    // The library's two phases: reading and checking the images, then reading them into place.
    let out = on_terminal(restart(d), "restored generation", Duration::from_secs(60));
    for want in [
        "ckpt: verifying [",
        "ckpt: restoring [",
        "100%  72 of 72 MiB",
        "\r\x1b[K",
    ] {
        assert!(out.contains(want), "no {want:?} on the terminal:\n{out:?}");
    }
    // The bars are erased: the log lines that follow start at the left margin.
    assert!(out.contains("\r\x1b[Kckpt["), "{out:?}");

    // In a pipe, nothing but log lines.
    let log = run_and_kill(
        &[
            "restart",
            "--store",
            d,
            "--interval",
            "1s",
            "--",
            l,
            args[0],
            args[1],
        ],
        1,
    );
    assert!(log.contains("restored generation"), "{log}");
    assert!(
        !log.contains('\r') && !log.contains("[="),
        "a bar in a pipe:\n{log:?}"
    );

    // ckpt verify on a terminal.
    let mut c = command(
        Path::new(env!("CARGO_BIN_EXE_ckpt")),
        &["verify", "--store", d],
    );
    c.env("TERM", "xterm");
    let out = on_terminal(
        c,
        "every checksum and link is good",
        Duration::from_secs(60),
    );
    assert!(
        out.contains("verifying ["),
        "no bar on the terminal:\n{out:?}"
    );

    // A restore from remote memory draws the fetch's bar first.
    let helper = profile_dir().join("ckpt-rmem");
    if !helper.exists() {
        cargo_build(&["-p", "ckpt-rmem"]);
    }
    let key = tmp.path().join("psk");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
    )
    .unwrap();
    let servers: Vec<Server> = (0..3)
        .map(|_| Server::with_capacity(&key, "256M"))
        .collect();
    let addrs: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
    let spec = format!(
        "rmem://{}?key={}&redundancy=parity&dir={}",
        addrs.join(","),
        key.display(),
        tmp.store("remote").display()
    );
    run(&spec);
    let out = on_terminal(
        restart(&spec),
        "restored generation",
        Duration::from_secs(60),
    );
    for want in [
        "fetching from remote memory [",
        "ckpt: verifying [",
        "ckpt: restoring [",
    ] {
        assert!(out.contains(want), "no {want:?} on the terminal:\n{out:?}");
    }
}
