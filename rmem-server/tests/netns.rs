//! The failure scenarios across several "hosts": one network namespace per server and one for the
//! client, joined by veth pairs shaped with `tc netem` (latency, bandwidth). Needs root and
//! iproute2; elsewhere every test prints why it is skipped and passes.
//!
//! The client runs in the test thread after `setns(2)` into the client namespace (network
//! namespaces are per thread), so nothing is configured in the machine's own namespace.
//! Kernels without `sch_netem` (CONFIG_NET_SCH_NETEM unset, as on the development machine) get
//! the bandwidth shaped with `tbf` instead, without added latency; the tests print a note.

mod common;

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use rmem_client::{Pool, PoolConfig, PoolError};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why the multi-host tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    for tool in ["ip", "tc"] {
        if Command::new(tool).arg("-V").output().is_err() {
            return Some(format!("`{tool}` (iproute2) not installed"));
        }
    }
    let probe = format!("rmem{}probe", std::process::id());
    if let Err(e) = run(&["ip", "netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = run(&["ip", "netns", "del", &probe]);
    None
}

macro_rules! require_netns {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
}

/// A star of namespaces: the client's and one per server, each server on its own veth link.
struct Net {
    client: String,
    servers: Vec<String>,
}

impl Net {
    /// `netem` is applied on both ends of every link, e.g. `delay 2ms rate 1gbit`.
    fn new(n: usize, netem: &str) -> Net {
        let tag = format!(
            "rmem{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let net = Net {
            client: format!("{tag}c"),
            servers: (0..n).map(|i| format!("{tag}s{i}")).collect(),
        };
        let r = |a: &[&str]| run(a).unwrap_or_else(|e| panic!("network setup: {e}"));
        r(&["ip", "netns", "add", &net.client]);
        r(&["ip", "-n", &net.client, "link", "set", "lo", "up"]);
        for (i, s) in net.servers.iter().enumerate() {
            let (c_if, s_if) = (format!("c{i}"), format!("s{i}"));
            let (c_ip, s_ip) = (format!("10.77.{i}.1/24"), format!("10.77.{i}.2/24"));
            r(&["ip", "netns", "add", s]);
            r(&["ip", "-n", s, "link", "set", "lo", "up"]);
            r(&[
                "ip",
                "-n",
                &net.client,
                "link",
                "add",
                &c_if,
                "type",
                "veth",
                "peer",
                "name",
                &s_if,
                "netns",
                s,
            ]);
            r(&["ip", "-n", &net.client, "addr", "add", &c_ip, "dev", &c_if]);
            r(&["ip", "-n", s, "addr", "add", &s_ip, "dev", &s_if]);
            r(&["ip", "-n", &net.client, "link", "set", &c_if, "up"]);
            r(&["ip", "-n", s, "link", "set", &s_if, "up"]);
            let shape = |ns: &str, dev: &str| {
                let mut a = vec![
                    "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                ];
                a.extend(netem.split_whitespace());
                if let Err(e) = run(&a) {
                    // Kernels built without CONFIG_NET_SCH_NETEM: shape the bandwidth with a token
                    // bucket instead (no added latency), and say so.
                    eprintln!(
                        "note: netem unavailable ({e}); shaping with tbf, without added latency"
                    );
                    let words: Vec<&str> = netem.split_whitespace().collect();
                    let rate = words
                        .iter()
                        .position(|w| *w == "rate")
                        .and_then(|i| words.get(i + 1))
                        .copied()
                        .unwrap_or("10gbit");
                    // The burst must exceed a 64 KiB GSO packet or tbf drops it.
                    r(&[
                        "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                        "rate", rate, "burst", "512kb", "latency", "100ms",
                    ]);
                }
            };
            shape(&net.client, &c_if);
            shape(s, &s_if);
        }
        net
    }

    fn server_addr(i: usize) -> String {
        format!("10.77.{i}.2:7077")
    }

    /// Starts `rmem-server` inside server namespace `i`.
    fn start_server(&self, i: usize, capacity: &str) -> Server {
        let wrap = ["ip", "netns", "exec", self.servers[i].as_str()];
        Server::start_in(capacity, KEY, &[], &Net::server_addr(i), Some(&wrap))
    }

    /// Moves the calling thread into the client namespace.
    fn enter_client(&self) {
        let f = File::open(format!("/var/run/netns/{}", self.client)).expect("client netns handle");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("setns into the client namespace");
    }

    /// Cuts server `i`'s link without telling anyone: packets just stop.
    fn cut(&self, i: usize) {
        run(&[
            "ip",
            "-n",
            &self.servers[i],
            "link",
            "set",
            &format!("s{i}"),
            "down",
        ])
        .expect("link down");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for s in &self.servers {
            let _ = run(&["ip", "netns", "del", s]);
        }
        let _ = run(&["ip", "netns", "del", &self.client]);
    }
}

fn cfg(addrs: &[String], red: &str) -> PoolConfig {
    let mut c = PoolConfig::new(
        addrs.to_vec(),
        rmem_client::Psk::new(KEY).expect("key"),
        [3; 16],
        rmem_client::Encryption::Aead { key: DATA_KEY },
        red.parse().expect("redundancy"),
    );
    c.chunk_size = 64 << 10;
    // A partitioned server is silent, not closed: this is how long the client waits for it.
    c.io_timeout = Duration::from_secs(2);
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn addrs(n: usize) -> Vec<String> {
    (0..n).map(Net::server_addr).collect()
}

#[test]
fn netns_parity_roundtrip_over_shaped_links() {
    require_netns!();
    let net = Net::new(3, "delay 2ms rate 1gbit");
    let _srv: Vec<Server> = (0..3).map(|i| net.start_server(i, "32M")).collect();
    net.enter_client();
    let mut pool = Pool::connect(cfg(&addrs(3), "parity")).unwrap();
    let runs = page_runs(60, 30);
    write_gen(&mut pool, 1, &runs, b"n").unwrap();
    check_gen(&mut pool, 1, &runs, b"n").unwrap();
}

#[test]
fn netns_kill9_during_write_mirror_at_100mbit() {
    require_netns!();
    // The paper's network: 100 Mb/s Ethernet.
    let net = Net::new(3, "delay 1ms rate 100mbit");
    let mut srv: Vec<Server> = (0..3).map(|i| net.start_server(i, "32M")).collect();
    net.enter_client();
    let mut c = cfg(&addrs(3), "mirror:2");
    c.stripe_width = Some(2);
    let mut pool = Pool::connect(c).unwrap();
    let runs = page_runs(61, 30);
    let mut w = pool.begin_generation(1).unwrap();
    for (a, d) in &runs[..15] {
        w.put(*a, d).unwrap();
    }
    srv[0].kill9();
    for (a, d) in &runs[15..] {
        w.put(*a, d).unwrap();
    }
    w.commit(b"k").expect("mirror absorbs the dead host");
    check_gen(&mut pool, 1, &runs, b"k").unwrap();
    assert!(
        !pool.info(1).unwrap().degraded,
        "rebuilt onto the third host"
    );
}

#[test]
fn netns_partition_during_read_parity() {
    require_netns!();
    let net = Net::new(4, "delay 1ms rate 1gbit");
    let _srv: Vec<Server> = (0..4).map(|i| net.start_server(i, "32M")).collect();
    net.enter_client();
    let mut pool = Pool::connect(cfg(&addrs(4), "parity")).unwrap();
    let runs = page_runs(62, 30);
    write_gen(&mut pool, 1, &runs, b"p").unwrap();
    let mut r = pool.read_generation(1).unwrap();
    let mut n = 0u64;
    let mut cut = false;
    r.read_all(|_, b| {
        if !cut {
            // A silent partition: no RST, no FIN. The read must time out and reconstruct.
            net.cut(2);
            cut = true;
        }
        n += b.len() as u64;
        Ok(())
    })
    .expect("degraded read across a partition");
    assert_eq!(n, runs.iter().map(|r| r.1.len() as u64).sum::<u64>());
    drop(r);
    check_gen(&mut pool, 1, &runs, b"p").unwrap();
}

#[test]
fn netns_partition_without_redundancy_is_an_error() {
    require_netns!();
    let net = Net::new(2, "delay 1ms");
    let _srv: Vec<Server> = (0..2).map(|i| net.start_server(i, "32M")).collect();
    net.enter_client();
    let mut pool = Pool::connect(cfg(&addrs(2), "none")).unwrap();
    let runs = page_runs(63, 20);
    write_gen(&mut pool, 1, &runs, b"").unwrap();
    net.cut(1);
    match check_gen(&mut pool, 1, &runs, b"") {
        Err(PoolError::DataLoss { .. }) => {}
        other => {
            panic!("a partitioned server without redundancy must be a reported loss: {other:?}")
        }
    }
}

#[test]
fn netns_revoke_mid_write_moves_to_spare_host() {
    require_netns!();
    let net = Net::new(2, "delay 1ms rate 100mbit");
    let srv: Vec<Server> = (0..2).map(|i| net.start_server(i, "32M")).collect();
    net.enter_client();
    let mut c = cfg(&addrs(2), "none");
    c.stripe_width = Some(1);
    let mut pool = Pool::connect(c).unwrap();
    let runs = page_runs(64, 30);
    let mut w = pool.begin_generation(1).unwrap();
    for (a, d) in &runs[..15] {
        w.put(*a, d).unwrap();
    }
    srv[0].admin("revoke --deadline 5s");
    for (a, d) in &runs[15..] {
        w.put(*a, d).unwrap();
    }
    w.commit(b"r").unwrap();
    wait_until("host 0 released its memory", || {
        srv[0].admin("state").contains("revoked(")
    });
    check_gen(&mut pool, 1, &runs, b"r").unwrap();
}

#[test]
fn netns_wrong_key_across_hosts() {
    require_netns!();
    let net = Net::new(1, "delay 1ms");
    let wrap = ["ip", "netns", "exec", net.servers[0].as_str()];
    let s = Server::start_in(
        "8M",
        b"another key, not the client's!",
        &[],
        &Net::server_addr(0),
        Some(&wrap),
    );
    net.enter_client();
    let e = Pool::connect(cfg(&addrs(1), "none")).expect_err("wrong key");
    assert!(e.to_string().contains("wrong key"), "{e}");
    wait_until("server logged it", || s.log_text().contains("wrong key"));
}

#[test]
fn netns_kill9_during_read_rs() {
    require_netns!();
    let net = Net::new(4, "delay 1ms rate 1gbit");
    let mut srv: Vec<Server> = (0..4).map(|i| net.start_server(i, "32M")).collect();
    net.enter_client();
    let mut pool = Pool::connect(cfg(&addrs(4), "rs:2+2")).unwrap();
    let runs = page_runs(65, 30);
    write_gen(&mut pool, 1, &runs, b"rs").unwrap();
    let mut r = pool.read_generation(1).unwrap();
    let mut n = 0u64;
    let mut killed = false;
    r.read_all(|_, b| {
        if !killed {
            // Two hosts die mid-read: RS k=2, m=2 still has every stripe.
            srv[0].kill9();
            srv[3].kill9();
            killed = true;
        }
        n += b.len() as u64;
        Ok(())
    })
    .expect("RS survives two dead hosts");
    assert_eq!(n, runs.iter().map(|r| r.1.len() as u64).sum::<u64>());
}

#[test]
fn netns_full_host_spills_to_spare_host() {
    require_netns!();
    let net = Net::new(2, "delay 1ms rate 1gbit");
    let _srv = [net.start_server(0, "1M"), net.start_server(1, "32M")];
    net.enter_client();
    let mut c = cfg(&addrs(2), "none");
    c.stripe_width = Some(1);
    let mut pool = Pool::connect(c).unwrap();
    let runs = page_runs(66, 40);
    write_gen(&mut pool, 1, &runs, b"f").expect("the write continues on the spare host");
    check_gen(&mut pool, 1, &runs, b"f").unwrap();
}

#[test]
fn netns_corrupting_proxy_between_hosts() {
    require_netns!();
    use common::proxy::{Fault, Proxy};
    let net = Net::new(2, "delay 1ms rate 1gbit");
    let _srv: Vec<Server> = (0..2).map(|i| net.start_server(i, "32M")).collect();
    net.enter_client();
    // The proxy's threads start in the client namespace (a new thread inherits it).
    for fault in [
        Fault::Corrupt,
        Fault::Forge,
        Fault::Reorder,
        Fault::Replay,
        Fault::Truncate,
    ] {
        let proxy = Proxy::start(&Net::server_addr(0), fault, 2);
        let mut c = cfg(&addrs(2), "mirror:2");
        c.servers[0] = proxy.addr.clone();
        c.pool_id = [fault as u8 + 10; 16];
        let mut pool = Pool::connect(c).unwrap();
        let runs = page_runs(67, 30);
        write_gen(&mut pool, 1, &runs, b"p").unwrap();
        check_gen(&mut pool, 1, &runs, b"p").unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(
            proxy.fired.load(Ordering::SeqCst),
            1,
            "{fault:?} never fired"
        );
    }
}
