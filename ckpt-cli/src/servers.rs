//! `ckpt servers`: the state of a remote-memory pool's servers, from the servers themselves
//! (`rmem_client::Pool::health`, the protocol's STATUS request: capacity, use, lending state)
//! and, optionally, their Prometheus stats endpoints (`rmem-server --stats-listen`).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rmem_client::proto::LendState;
use rmem_client::{Encryption, Pool, PoolConfig, PoolError, Psk, Redundancy};
use serde::Serialize;

use crate::Result;
use crate::error::CliError;
use crate::spec::{self, Store};
use crate::text;

/// The JSON of `ckpt servers --json`.
#[derive(Debug, Serialize)]
pub struct PoolState {
    /// The pool's servers, in the order given.
    pub servers: Vec<ServerOut>,
    /// Committed generations of the pool named by `pool=`, newest first (`null` without it).
    pub generations: Option<Vec<u64>>,
    /// Every stats endpoint read.
    pub stats: Vec<StatsOut>,
    /// Whether every server is reachable and lending.
    pub ok: bool,
}

/// One server.
#[derive(Debug, Serialize)]
pub struct ServerOut {
    /// `host:port`.
    pub addr: String,
    /// Whether a connection is up.
    pub connected: bool,
    /// `lending`, `revoking`, `revoked`, or `unknown` (no answer).
    pub state: &'static str,
    /// Milliseconds left before a revoking server drops its data.
    pub revoke_deadline_ms: Option<u64>,
    /// Bytes lent.
    pub capacity: Option<u64>,
    /// Bytes holding client data.
    pub used: Option<u64>,
    /// Bytes free for new data (0 unless lending).
    pub free: Option<u64>,
    /// Bytes the pool named by `pool=` holds there.
    pub pool_used: Option<u64>,
    /// The client moved its data off it after a revocation.
    pub evacuated: bool,
    /// The last error seen talking to it.
    pub error: Option<String>,
}

/// One stats endpoint.
#[derive(Debug, Serialize)]
pub struct StatsOut {
    /// `host:port`.
    pub endpoint: String,
    /// Metric name (without the `rmem_` prefix) to value.
    pub metrics: BTreeMap<String, f64>,
}

/// Runs `ckpt servers`.
pub fn servers(
    store: Option<&str>,
    key_file: Option<PathBuf>,
    program: Option<&std::path::Path>,
    stats: &[String],
    json: bool,
) -> Result<ExitCode> {
    let store = spec::from_arg_or_env(store)?;
    let remote = match store {
        Some(Store::Remote {
            servers, params, ..
        }) => Some((servers, params)),
        Some(Store::Tiered(s)) => match s.find("rmem://") {
            // The remote part of a tiered spec, up to the next separator.
            Some(i) => match spec::parse(s[i..].split([';', ' ', '|']).next().unwrap_or(""))? {
                Store::Remote {
                    servers, params, ..
                } => Some((servers, params)),
                _ => None,
            },
            None => {
                return Err(CliError::BadStore {
                    spec: s,
                    reason: "no rmem:// part to find the servers in".into(),
                });
            }
        },
        Some(Store::Dir(d)) if stats.is_empty() => {
            return Err(CliError::BadStore {
                spec: d.display().to_string(),
                reason: "a local directory has no servers: pass --store rmem://HOST:PORT,..."
                    .into(),
            });
        }
        Some(Store::Dir(_)) | None if !stats.is_empty() => None,
        _ => return Err(CliError::NoStore),
    };
    let mut state = PoolState {
        servers: Vec::new(),
        generations: None,
        stats: Vec::new(),
        ok: true,
    };
    if let Some((addrs, params)) = remote {
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let key_path = key_file
            .or_else(|| param("key").map(PathBuf::from))
            .or_else(|| std::env::var_os("RMEM_KEY_FILE").map(PathBuf::from))
            .ok_or_else(|| {
                CliError::Unsupported(
                    "the servers authenticate every client: pass --key-file FILE (or key=FILE in \
                     the store, or set RMEM_KEY_FILE)"
                        .into(),
                )
            })?;
        let key = Psk::from_file(&key_path)?;
        let pool = match (param("pool"), program) {
            (Some(p), _) => Some(pool_id(&p)?),
            (None, Some(prog)) => Some(ckpt::program_pool(&spec::program_path(prog).map_err(
                |source| CliError::Io {
                    op: "find the program",
                    path: prog.to_path_buf(),
                    source,
                },
            )?)),
            (None, None) => None,
        };
        query(&mut state, addrs, key, pool)?;
    }
    for ep in stats {
        let metrics = read_stats(ep)?;
        if metrics.get("state").is_some_and(|&v| v != 0.0) {
            state.ok = false;
        }
        state.stats.push(StatsOut {
            endpoint: ep.clone(),
            metrics,
        });
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &state)?;
        let _ = writeln!(out);
    } else {
        print_text(&mut out, &state);
    }
    Ok(if state.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A pool id as `rmem-inspect` takes it: 32 hex digits, or up to 16 characters.
fn pool_id(s: &str) -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    if s.len() == 32
        && let Some(b) = rmem_client::auth::decode_hex(s.as_bytes())
    {
        id.copy_from_slice(&b);
        return Ok(id);
    }
    if s.len() > 16 {
        return Err(CliError::BadStore {
            spec: s.into(),
            reason: "pool= takes 32 hex digits or at most 16 characters".into(),
        });
    }
    id[..s.len()].copy_from_slice(s.as_bytes());
    Ok(id)
}

fn query(
    state: &mut PoolState,
    addrs: Vec<String>,
    key: Psk,
    pool: Option<[u8; 16]>,
) -> Result<()> {
    // A status query neither reads nor writes data: no data key, no redundancy needed.
    let mut cfg = PoolConfig::new(
        addrs.clone(),
        key,
        pool.unwrap_or(*b"ckpt-servers\0\0\0\0"),
        Encryption::Plaintext,
        Redundancy::None,
    );
    cfg.name = format!("ckpt servers (pid {})", std::process::id());
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.io_timeout = Duration::from_secs(5);
    let mut p = match Pool::connect(cfg) {
        Ok(p) => p,
        // Not one server answered: say so for each.
        Err(PoolError::NoServers(why)) => {
            state.ok = false;
            for addr in addrs {
                state.servers.push(ServerOut {
                    addr,
                    connected: false,
                    state: "unknown",
                    revoke_deadline_ms: None,
                    capacity: None,
                    used: None,
                    free: None,
                    pool_used: None,
                    evacuated: false,
                    error: Some(why.clone()),
                });
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    for h in p.health() {
        let (name, deadline) = match h.status.map(|s| s.state) {
            Some(LendState::Lending) => ("lending", None),
            Some(LendState::Revoking { deadline_ms }) => ("revoking", Some(deadline_ms)),
            Some(LendState::Revoked) => ("revoked", None),
            None => ("unknown", None),
        };
        state.ok &= h.connected && name == "lending";
        state.servers.push(ServerOut {
            addr: h.addr,
            connected: h.connected,
            state: name,
            revoke_deadline_ms: deadline,
            capacity: h.status.map(|s| s.capacity),
            used: h.status.map(|s| s.used),
            free: h.status.map(|s| s.free()),
            pool_used: pool.and(h.status.map(|s| s.pool_used)),
            evacuated: h.evacuated,
            error: h.last_error,
        });
    }
    if pool.is_some() {
        state.generations = Some(p.committed_generations());
    }
    Ok(())
}

/// Reads a Prometheus text endpoint over HTTP/1.0; returns `rmem_*` metrics without the prefix.
fn read_stats(ep: &str) -> Result<BTreeMap<String, f64>> {
    let fail = |reason: String| CliError::Stats {
        addr: ep.to_string(),
        reason,
    };
    let addr = ep
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address".into()))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| fail(e.to_string()))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {ep}\r\n\r\n").map_err(|e| fail(e.to_string()))?;
    let mut body = String::new();
    // Bounded: the endpoint's metrics are a few KiB.
    s.take(1 << 20)
        .read_to_string(&mut body)
        .map_err(|e| fail(e.to_string()))?;
    let Some((head, text)) = body.split_once("\r\n\r\n") else {
        return Err(fail("not an HTTP answer".into()));
    };
    let status = head.split(' ').nth(1);
    if !head.starts_with("HTTP/1.") || status != Some("200") {
        return Err(fail(format!(
            "answered {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            let name = name.strip_prefix("rmem_").unwrap_or(name);
            Some((name.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

fn print_text(w: &mut impl std::io::Write, s: &PoolState) {
    if !s.servers.is_empty() {
        let _ = writeln!(
            w,
            "{:<22} {:<9} {:>10} {:>10} {:>10} {:>10}  NOTE",
            "SERVER", "STATE", "CAPACITY", "USED", "FREE", "THIS POOL"
        );
    }
    let opt = |v: Option<u64>| v.map(text::bytes).unwrap_or_else(|| "-".into());
    for sv in &s.servers {
        let mut note = Vec::new();
        if !sv.connected {
            note.push("unreachable".to_string());
        }
        if let Some(d) = sv.revoke_deadline_ms {
            note.push(format!("data dropped in {d} ms"));
        }
        if sv.evacuated {
            note.push("evacuated".into());
        }
        if let Some(e) = &sv.error {
            note.push(e.clone());
        }
        let _ = writeln!(
            w,
            "{:<22} {:<9} {:>10} {:>10} {:>10} {:>10}  {}",
            sv.addr,
            sv.state,
            opt(sv.capacity),
            opt(sv.used),
            opt(sv.free),
            opt(sv.pool_used),
            note.join("; ")
        );
    }
    if let Some(g) = &s.generations {
        let list: Vec<String> = g.iter().map(u64::to_string).collect();
        let _ = writeln!(
            w,
            "committed generations of this pool: {}",
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        );
    }
    for st in &s.stats {
        let _ = writeln!(w, "stats {}:", st.endpoint);
        for (k, v) in &st.metrics {
            let _ = writeln!(w, "  {k:<40} {v}");
        }
    }
}
