//! The two regimes' machines, built before the runs and taken down after them (also on an
//! error, a panic or Ctrl-C: every step that changes the machine pushes its undo first).
//!
//! - **paper**: the paper's four PCs on Fast Ethernet. A switch namespace holds a bridge; the
//!   client (the namespace the workloads run in) and three memory servers each have their own
//!   namespace and a veth port on it. Every end of every port is shaped to 100 Mb/s (`netem
//!   delay D rate R` where the kernel has `sch_netem`, else `tbf`, which cannot add delay): the
//!   client's port carries all its traffic, as the paper's one NIC did. The local disk is an
//!   ext4 filesystem on a loop device over a file in tmpfs, written at most 5 MB/s by the cgroup
//!   this harness moves itself (and so every workload, writer process and helper) into: cgroup
//!   v2 `io.max` where the io controller is on a v2 hierarchy, else cgroup v1
//!   `blkio.throttle.write_bps_device`. The loop device gives the throttle a device of its own
//!   (nobody else's I/O is on it), and tmpfs behind it makes the throttle the disk's only cost.
//! - **unshaped**: this machine as it is: servers on loopback, the store on the target
//!   directory's disk.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::sys;
use crate::{Error, Result};

/// Names of everything the paper regime creates, fixed so that a later run removes what a
/// killed one left behind.
const NS_SWITCH: &str = "ckev-sw";
const NS_CLIENT: &str = "ckev-c";
const NS_SERVER: [&str; 3] = ["ckev-s0", "ckev-s1", "ckev-s2"];
const CLIENT_IP: &str = "10.78.0.1";
const SERVER_IP: [&str; 3] = ["10.78.0.11", "10.78.0.12", "10.78.0.13"];
const SERVER_PORT: u16 = 7077;
const SINK_PORT: u16 = 7099;
const DISK_DIR: &str = "/dev/shm/ckpt-eval";
const MOUNT: &str = "/run/ckpt-eval/disk";
const CGROUP: &str = "ckpt-eval";

/// Which machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Regime {
    Paper,
    Unshaped,
}

impl Regime {
    pub fn name(self) -> &'static str {
        match self {
            Regime::Paper => "paper",
            Regime::Unshaped => "unshaped",
        }
    }
}

/// How the paper regime shapes the machine.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Local disk write limit, bytes per second.
    pub disk_bps: u64,
    /// tc rate of every link, e.g. `100mbit`.
    pub net_rate: String,
    /// One-way delay added on every host's link end when netem exists, e.g. `100us`.
    pub net_delay: String,
    /// Size of the loop disk in MiB.
    pub disk_mib: u64,
}

/// The programs the stage starts.
#[derive(Debug, Clone)]
pub struct Bins {
    pub rmem_server: Option<PathBuf>,
    /// This harness (the TCP sink and source of the network reference).
    pub me: PathBuf,
}

/// One undo step, run in reverse order of the steps done.
#[derive(Debug)]
enum Undo {
    DelNetns(String),
    Umount(PathBuf),
    DetachLoop(String),
    RemoveDir(PathBuf),
    /// Move this process back to `parent`'s `cgroup.procs`, then remove `dir`.
    LeaveCgroup {
        dir: PathBuf,
        parent: PathBuf,
    },
}

/// A machine set up for one regime.
#[derive(Debug)]
pub struct Stage {
    pub regime: Regime,
    /// Where the local-disk stores go.
    pub disk_dir: PathBuf,
    /// The workloads' network namespace (paper regime).
    pub netns: Option<File>,
    pub servers: Vec<Server>,
    pub key: PathBuf,
    pub data_key: PathBuf,
    /// How the regime was built: one line per choice made.
    pub notes: Vec<String>,
    /// Physical references measured on this stage.
    pub refs: Vec<(String, String)>,
    undo: Vec<Undo>,
}

/// Runs a command; its standard output, or an error naming it with its standard error.
pub fn cmd(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into())
    }
}

fn quiet(args: &[&str]) {
    let _ = cmd(args);
}

impl Stage {
    /// This machine as it is.
    pub fn unshaped(work: &Path, bins: &Bins, capacity: &str) -> Result<Stage> {
        let disk_dir = work.join("unshaped-disk");
        let _ = fs::remove_dir_all(&disk_dir);
        fs::create_dir_all(&disk_dir)?;
        let mut st = Stage::empty(Regime::Unshaped, disk_dir.clone(), work)?;
        st.undo.push(Undo::RemoveDir(disk_dir.clone()));
        let (src, fstype) = filesystem_of(&disk_dir);
        st.notes.push(format!(
            "local disk: {} on {src} ({fstype}), unshaped",
            disk_dir.display()
        ));
        st.notes
            .push("network: loopback (127.0.0.1), unshaped; three servers".into());
        if let Some(server) = &bins.rmem_server {
            for i in 0..3 {
                let s = Server::start(server, None, "127.0.0.1:0", capacity, &st.key, i)?;
                st.servers.push(s);
            }
        }
        Ok(st)
    }

    /// The paper's machines, emulated.
    pub fn paper(work: &Path, bins: &Bins, shape: &Shape, capacity: &str) -> Result<Stage> {
        if !sys::is_root() {
            return Err(
                "the paper regime needs root (network namespaces, loop device, cgroup)".into(),
            );
        }
        for tool in ["ip", "tc", "losetup", "mkfs.ext4", "mount", "umount"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
            {
                return Err(format!("the paper regime needs `{tool}`").into());
            }
        }
        remove_leftovers();
        let mount = PathBuf::from(MOUNT);
        let mut st = Stage::empty(Regime::Paper, mount.join("store"), work)?;
        st.setup_disk(shape)?;
        st.setup_network(shape)?;
        if let Some(server) = &bins.rmem_server {
            for (i, ns) in NS_SERVER.iter().enumerate() {
                let addr = format!("{}:{SERVER_PORT}", SERVER_IP[i]);
                let s = Server::start(server, Some(ns), &addr, capacity, &st.key, i)?;
                st.servers.push(s);
            }
        }
        Ok(st)
    }

    fn empty(regime: Regime, disk_dir: PathBuf, work: &Path) -> Result<Stage> {
        let keys = work.join("keys");
        fs::create_dir_all(&keys)?;
        let key = keys.join("psk");
        fs::write(
            &key,
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
        )?;
        let data_key = keys.join("datakey");
        fs::write(&data_key, "5a".repeat(32))?;
        Ok(Stage {
            regime,
            disk_dir,
            netns: None,
            servers: Vec::new(),
            key,
            data_key,
            notes: Vec::new(),
            refs: Vec::new(),
            undo: Vec::new(),
        })
    }

    fn setup_disk(&mut self, shape: &Shape) -> Result<()> {
        fs::create_dir_all(DISK_DIR)?;
        self.undo.push(Undo::RemoveDir(DISK_DIR.into()));
        let img = Path::new(DISK_DIR).join("disk.img");
        File::create(&img)?.set_len(shape.disk_mib << 20)?;
        let img_s = img.to_string_lossy().into_owned();
        let dev = cmd(&["losetup", "-f", "--show", &img_s])?
            .trim()
            .to_string();
        self.undo.push(Undo::DetachLoop(dev.clone()));
        // Inode tables and journal initialised now, so no kernel thread writes in the
        // background (unthrottled) while the runs measure.
        cmd(&[
            "mkfs.ext4",
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &dev,
        ])?;
        fs::create_dir_all(MOUNT)?;
        cmd(&["mount", "-o", "discard", &dev, MOUNT])?;
        self.undo.push(Undo::Umount(MOUNT.into()));
        fs::create_dir_all(&self.disk_dir)?;
        let devname = dev.trim_start_matches("/dev/");
        let majmin = fs::read_to_string(format!("/sys/block/{devname}/dev"))?
            .trim()
            .to_string();
        let how = self.limit_writes(&majmin, shape.disk_bps)?;
        self.notes.push(format!(
            "local disk: ext4 on {dev} ({majmin}), a loop device over {img_s} (tmpfs, {} MiB), \
             writes limited to {:.1} MB/s by {how}",
            shape.disk_mib,
            shape.disk_bps as f64 / 1e6
        ));
        Ok(())
    }

    /// Moves this process into a new cgroup whose writes to `majmin` are limited to `bps`.
    fn limit_writes(&mut self, majmin: &str, bps: u64) -> Result<String> {
        // cgroup v2, wherever a v2 hierarchy has the io controller.
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let root = Path::new(root);
            let ctl = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if !ctl.split_whitespace().any(|c| c == "io") {
                continue;
            }
            let _ = fs::write(root.join("cgroup.subtree_control"), "+io");
            let dir = root.join(CGROUP);
            fs::create_dir_all(&dir)?;
            self.undo.push(Undo::LeaveCgroup {
                dir: dir.clone(),
                parent: root.to_path_buf(),
            });
            fs::write(dir.join("io.max"), format!("{majmin} wbps={bps}"))
                .map_err(|e| format!("{}/io.max: {e}", dir.display()))?;
            fs::write(dir.join("cgroup.procs"), std::process::id().to_string())?;
            return Ok(format!("cgroup v2 io.max (wbps) in {}", dir.display()));
        }
        // cgroup v1 blkio (a hybrid hierarchy, as on the development machine).
        let root = Path::new("/sys/fs/cgroup/blkio");
        if root.join("blkio.throttle.write_bps_device").exists() {
            let dir = root.join(CGROUP);
            fs::create_dir_all(&dir)?;
            self.undo.push(Undo::LeaveCgroup {
                dir: dir.clone(),
                parent: root.to_path_buf(),
            });
            fs::write(
                dir.join("blkio.throttle.write_bps_device"),
                format!("{majmin} {bps}"),
            )?;
            fs::write(dir.join("cgroup.procs"), std::process::id().to_string())?;
            return Ok(format!(
                "cgroup v1 blkio.throttle.write_bps_device in {} (no v2 hierarchy here has the io \
                 controller)",
                dir.display()
            ));
        }
        Err("no cgroup io limit available (neither a v2 io controller nor v1 blkio)".into())
    }

    fn setup_network(&mut self, shape: &Shape) -> Result<()> {
        let mut hosts: Vec<(&str, &str)> = vec![(NS_CLIENT, CLIENT_IP)];
        hosts.extend(NS_SERVER.iter().copied().zip(SERVER_IP));
        cmd(&["ip", "netns", "add", NS_SWITCH])?;
        self.undo.push(Undo::DelNetns(NS_SWITCH.into()));
        cmd(&["ip", "-n", NS_SWITCH, "link", "set", "lo", "up"])?;
        cmd(&[
            "ip", "-n", NS_SWITCH, "link", "add", "br0", "type", "bridge",
        ])?;
        cmd(&["ip", "-n", NS_SWITCH, "link", "set", "br0", "up"])?;
        let mut qdiscs = Vec::new();
        for (i, (ns, ip)) in hosts.iter().enumerate() {
            cmd(&["ip", "netns", "add", ns])?;
            self.undo.push(Undo::DelNetns(ns.to_string()));
            cmd(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            let port = format!("p{i}");
            cmd(&[
                "ip", "-n", NS_SWITCH, "link", "add", &port, "type", "veth", "peer", "name",
                "eth0", "netns", ns,
            ])?;
            cmd(&["ip", "-n", NS_SWITCH, "link", "set", &port, "master", "br0"])?;
            cmd(&["ip", "-n", NS_SWITCH, "link", "set", &port, "up"])?;
            cmd(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ])?;
            cmd(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            // Both directions of the port: the host's sending end, and the switch's end
            // towards it. The delay goes on the host ends only (one hop each way).
            qdiscs.push(shape_link(ns, "eth0", shape, true)?);
            qdiscs.push(shape_link(NS_SWITCH, &port, shape, false)?);
        }
        qdiscs.dedup();
        self.notes.push(format!(
            "network: client {CLIENT_IP} and servers {} in namespaces {NS_CLIENT}, {}, each on \
             a veth port of bridge br0 in {NS_SWITCH}; every port end shaped: {}",
            SERVER_IP.join(", "),
            NS_SERVER.join(", "),
            qdiscs.join("; ")
        ));
        self.netns = Some(File::open(format!("/var/run/netns/{NS_CLIENT}"))?);
        Ok(())
    }

    /// `host:port` of every server.
    pub fn server_addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.addr.clone()).collect()
    }

    /// Measures the physical references of this stage: the local disk's write + fsync and a
    /// raw TCP stream from the client to one server and to all three at once.
    pub fn measure_references(&mut self, me: &Path, disk_mib: usize, net_mib: usize) {
        match disk_reference(&self.disk_dir, disk_mib) {
            Ok(r) => self.refs.push((
                format!("local disk: write {disk_mib} MiB + fsync"),
                format!("{:.2} MB/s ({:.2} s)", r.0, r.1),
            )),
            Err(e) => self
                .refs
                .push(("local disk: write + fsync".into(), format!("failed: {e}"))),
        }
        let hosts: Vec<(Option<&str>, String)> = match self.regime {
            Regime::Paper => NS_SERVER
                .iter()
                .zip(SERVER_IP)
                .map(|(ns, ip)| (Some(*ns), format!("{ip}:{SINK_PORT}")))
                .collect(),
            Regime::Unshaped => (0..3).map(|_| (None, "127.0.0.1:0".to_string())).collect(),
        };
        for n in [1usize, 3] {
            let r = self.net_reference(me, &hosts[..n], net_mib);
            let what = format!(
                "network: raw TCP, {net_mib} MiB from the client to {n} server{}",
                if n > 1 { "s at once" } else { "" }
            );
            self.refs.push(match r {
                Ok((mbs, secs)) => (what, format!("{mbs:.2} MB/s ({secs:.2} s)")),
                Err(e) => (what, format!("failed: {e}")),
            });
        }
    }

    fn net_reference(
        &self,
        me: &Path,
        hosts: &[(Option<&str>, String)],
        mib: usize,
    ) -> Result<(f64, f64)> {
        let mut sinks = Vec::new();
        let mut addrs = Vec::new();
        for (ns, addr) in hosts {
            let mut c = wrap_netns(*ns, me);
            c.args(["__sink", addr]);
            let mut s = Spawned::start(c, "listening ", None)?;
            addrs.push(s.take_line()?);
            sinks.push(s);
        }
        let mut c = Command::new(me);
        c.args(["__source", &addrs.join(","), &(mib << 20).to_string()]);
        if let Some(f) = &self.netns {
            sys::enter_netns_on_exec(&mut c, f.as_raw_fd());
        }
        let out = c.stderr(Stdio::inherit()).output()?;
        drop(sinks);
        let text = String::from_utf8_lossy(&out.stdout);
        let secs: f64 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("source said {text:?}"))?;
        Ok(((mib << 20) as f64 / secs / 1e6, secs))
    }
}

/// `ip netns exec NS PROGRAM`, or PROGRAM itself.
fn wrap_netns(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Shapes the egress of `dev` in `ns`; the qdisc used, for the notes.
fn shape_link(ns: &str, dev: &str, shape: &Shape, delay: bool) -> Result<String> {
    let base = [
        "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
    ];
    let mut netem: Vec<&str> = base.to_vec();
    netem.push("netem");
    if delay {
        netem.extend(["delay", shape.net_delay.as_str()]);
    }
    netem.extend(["rate", shape.net_rate.as_str(), "limit", "10000"]);
    if cmd(&netem).is_ok() {
        return Ok(format!(
            "netem rate {}{}",
            shape.net_rate,
            if delay {
                format!(" delay {} (host ends)", shape.net_delay)
            } else {
                String::new()
            }
        ));
    }
    // No sch_netem in this kernel: a token bucket for the rate, no added delay. The burst
    // holds two 64 KiB GSO packets (veth sends them whole).
    let mut tbf: Vec<&str> = base.to_vec();
    tbf.extend([
        "tbf",
        "rate",
        shape.net_rate.as_str(),
        "burst",
        "128kb",
        "latency",
        "50ms",
    ]);
    cmd(&tbf)?;
    Ok(format!(
        "tbf rate {} burst 128kb (sch_netem is not in this kernel: no delay added)",
        shape.net_rate
    ))
}

/// Removes what a killed earlier run of the paper regime left.
fn remove_leftovers() {
    for ns in [NS_CLIENT, NS_SWITCH].iter().chain(NS_SERVER.iter()) {
        if Path::new("/var/run/netns").join(ns).exists() {
            quiet(&["ip", "netns", "del", ns]);
        }
    }
    if is_mounted(MOUNT) {
        quiet(&["umount", "-l", MOUNT]);
    }
    let img = format!("{DISK_DIR}/disk.img");
    if let Ok(out) = cmd(&["losetup", "-j", &img]) {
        for line in out.lines() {
            if let Some((dev, _)) = line.split_once(':') {
                quiet(&["losetup", "-d", dev]);
            }
        }
    }
    let _ = fs::remove_dir_all(DISK_DIR);
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/blkio",
    ] {
        let dir = Path::new(root).join(CGROUP);
        if dir.is_dir() {
            leave_cgroup(&dir, Path::new(root));
        }
    }
}

fn is_mounted(path: &str) -> bool {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

/// Moves every process of `dir` (this one included) to `parent`, then removes `dir`.
fn leave_cgroup(dir: &Path, parent: &Path) {
    for _ in 0..3 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = fs::write(parent.join("cgroup.procs"), pid);
        }
        if fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // Servers first: they live in the namespaces about to go.
        self.servers.clear();
        self.netns = None;
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::DelNetns(ns) => quiet(&["ip", "netns", "del", &ns]),
                Undo::Umount(p) => {
                    if cmd(&["umount", &p.to_string_lossy()]).is_err() {
                        quiet(&["umount", "-l", &p.to_string_lossy()]);
                    }
                }
                Undo::DetachLoop(dev) => quiet(&["losetup", "-d", &dev]),
                Undo::RemoveDir(p) => {
                    let _ = fs::remove_dir_all(p);
                }
                Undo::LeaveCgroup { dir, parent } => leave_cgroup(&dir, &parent),
            }
        }
    }
}

/// A child process that announces itself with one line on stdout.
#[derive(Debug)]
struct Spawned {
    child: Child,
    first: Option<String>,
}

impl Spawned {
    /// Starts `c` and waits (10 s at most) for a stdout line starting with `prefix`.
    fn start(mut c: Command, prefix: &str, log: Option<&Path>) -> Result<Spawned> {
        c.stdin(Stdio::null()).stdout(Stdio::piped());
        match log {
            Some(p) => c.stderr(File::create(p)?),
            None => c.stderr(Stdio::inherit()),
        };
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let mut child = c.spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        let prefix = prefix.to_string();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let first = lines
                .by_ref()
                .map_while(std::result::Result::ok)
                .find_map(|l| l.strip_prefix(&prefix).map(str::to_string));
            let _ = tx.send(first);
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(first)) => Ok(Spawned {
                child,
                first: Some(first),
            }),
            _ => {
                sys::kill_tree(child.id());
                let _ = child.wait();
                Err(format!("{c:?} did not start").into())
            }
        }
    }

    fn take_line(&mut self) -> Result<String> {
        self.first
            .take()
            .ok_or_else(|| Error::from("no first line"))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            sys::terminate(self.child.id());
            let t = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) {
                if t.elapsed() > Duration::from_secs(3) {
                    sys::kill_tree(self.child.id());
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// One `rmem-server`.
#[derive(Debug)]
pub struct Server {
    /// Held for its `Drop`, which stops the server.
    _proc: Spawned,
    pub addr: String,
    /// Its admin socket: a path in the file system, so reachable from this (the root) network
    /// namespace while the server listens in its own.
    admin: PathBuf,
}

/// Bytes in use and bytes lent on the servers, from one `stats` request to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub used: u64,
    pub capacity: u64,
}

impl PoolUsage {
    pub fn percent(self) -> Option<f64> {
        (self.capacity > 0).then(|| self.used as f64 * 100.0 / self.capacity as f64)
    }
}

impl Server {
    fn start(
        bin: &Path,
        ns: Option<&str>,
        listen: &str,
        capacity: &str,
        key: &Path,
        i: usize,
    ) -> Result<Server> {
        let log = key.with_file_name(format!("server-{i}.log"));
        let admin = key.with_file_name(format!("admin-{i}.sock"));
        let mut c = wrap_netns(ns, bin);
        c.args(["serve", "--listen", listen, "--capacity", capacity])
            .arg("--key-file")
            .arg(key)
            .arg("--admin-socket")
            .arg(&admin)
            .env("RMEM_LOG", "warn");
        let mut proc_ = Spawned::start(c, "listening ", Some(&log)).map_err(|e| {
            format!(
                "rmem-server {i}: {e}: {}",
                fs::read_to_string(&log).unwrap_or_default().trim()
            )
        })?;
        let addr = proc_.take_line()?;
        Ok(Server {
            _proc: proc_,
            addr,
            admin,
        })
    }

    /// `(used, capacity)` in bytes: the server's `rmem_used_bytes` (whole 16 KiB slots holding
    /// any client's data) and `rmem_capacity_bytes` (memory lent now), from its admin socket.
    fn usage(&self) -> Option<(u64, u64)> {
        use std::io::Read;
        use std::os::unix::net::UnixStream;
        let mut s = UnixStream::connect(&self.admin).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"stats\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let metric = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        };
        Some((metric("rmem_used_bytes")?, metric("rmem_capacity_bytes")?))
    }
}

impl Stage {
    /// The servers' memory in use and lent, summed over all of them; `None` if one does not
    /// answer (the percentage would mean nothing).
    pub fn pool_usage(&self) -> Option<PoolUsage> {
        if self.servers.is_empty() {
            return None;
        }
        let mut u = PoolUsage {
            used: 0,
            capacity: 0,
        };
        for s in &self.servers {
            let (used, cap) = s.usage()?;
            u.used += used;
            u.capacity += cap;
        }
        Some(u)
    }
}

/// Writes `mib` MiB in 1 MiB calls to a new file in `dir` and fsyncs it: (MB/s, seconds).
fn disk_reference(dir: &Path, mib: usize) -> Result<(f64, f64)> {
    let path = dir.join("reference.bin");
    let buf: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 + 7) as u8).collect();
    let t = Instant::now();
    let mut f = File::create(&path)?;
    for _ in 0..mib {
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(&path)?;
    Ok(((mib << 20) as f64 / secs / 1e6, secs))
}

/// (source, fstype) of the mount holding `path`.
pub fn filesystem_of(path: &Path) -> (String, String) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, (String, String))> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(dash) = f.iter().position(|&x| x == "-") else {
            continue;
        };
        let (Some(mnt), Some(ty), Some(src)) = (f.get(4), f.get(dash + 1), f.get(dash + 2)) else {
            continue;
        };
        if path.starts_with(mnt) && best.as_ref().is_none_or(|(l, _)| mnt.len() >= *l) {
            best = Some((mnt.len(), (src.to_string(), ty.to_string())));
        }
    }
    best.map(|(_, v)| v)
        .unwrap_or_else(|| ("?".into(), "?".into()))
}

/// `__sink ADDR`: accepts one connection, reads it to the end, answers one byte, exits.
pub fn sink(addr: &str) -> Result<()> {
    use std::io::Read;
    let l = std::net::TcpListener::bind(addr)?;
    println!("listening {}", l.local_addr()?);
    std::io::stdout().flush()?;
    let (mut s, _) = l.accept()?;
    let mut buf = vec![0u8; 1 << 20];
    while s.read(&mut buf)? > 0 {}
    s.write_all(b"k")?;
    Ok(())
}

/// `__source ADDRS BYTES`: sends BYTES split over the sinks at ADDRS at once, and prints
/// `secs S` once every sink has read everything.
pub fn source(addrs: &str, bytes: &str) -> Result<()> {
    use std::io::Read;
    let addrs: Vec<String> = addrs.split(',').map(str::to_string).collect();
    let total: usize = bytes.parse()?;
    let each = total / addrs.len();
    let t = Instant::now();
    let handles: Vec<_> = addrs
        .into_iter()
        .map(|a| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = std::net::TcpStream::connect(&a)?;
                let buf = vec![0x5au8; 1 << 20];
                let mut left = each;
                while left > 0 {
                    let n = left.min(buf.len());
                    s.write_all(&buf[..n])?;
                    left -= n;
                }
                s.shutdown(std::net::Shutdown::Write)?;
                let mut k = [0u8; 1];
                s.read_exact(&mut k)?;
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "sender panicked")??;
    }
    println!("secs {}", t.elapsed().as_secs_f64());
    Ok(())
}
