//! `rmem-inspect`: the offline inspector of a pool's generations (STYLE §7): list committed
//! generations, show a manifest, verify that every byte of a generation reads back and
//! authenticates, show the servers' health. It connects like a client (it needs the keys).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rmem_client::auth::decode_hex;
use rmem_client::manifest::{LOST, TargetRef};
use rmem_client::{Encryption, Pool, PoolConfig, Psk, Redundancy};

#[derive(Parser, Debug)]
#[command(
    name = "rmem-inspect",
    version,
    about = "Inspect and verify the generations of an rmem pool"
)]
struct Cli {
    /// Server addresses (repeat the flag).
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Pre-shared key file of the servers.
    #[arg(long)]
    key_file: PathBuf,
    /// The pool's data key (32 bytes, hex or raw); without it the pool is read as plaintext.
    #[arg(long)]
    data_key_file: Option<PathBuf>,
    /// Pool id: 32 hex digits, or up to 16 characters.
    #[arg(long)]
    pool: String,
    /// The pool's local directory (disk fallback and flushed copies).
    #[arg(long)]
    local_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Committed generations, newest first.
    List,
    /// A generation's manifest.
    Show { generation: u64 },
    /// Read a whole generation back, checking every chunk's authentication.
    Verify { generation: u64 },
    /// State of every server.
    Health,
}

/// Errors of the inspector.
#[derive(Debug, thiserror::Error)]
enum InspectError {
    #[error("bad pool id {0:?}: 32 hex digits or at most 16 characters")]
    PoolId(String),
    #[error("cannot read the data key {path}: {msg}")]
    DataKey { path: String, msg: String },
    #[error(transparent)]
    Auth(#[from] rmem_client::auth::AuthError),
    #[error(transparent)]
    Pool(#[from] rmem_client::PoolError),
}

fn pool_id(s: &str) -> Result<[u8; 16], InspectError> {
    if s.len() == 32
        && let Some(b) = decode_hex(s.as_bytes())
    {
        let mut id = [0u8; 16];
        id.copy_from_slice(&b);
        return Ok(id);
    }
    if s.len() > 16 {
        return Err(InspectError::PoolId(s.into()));
    }
    let mut id = [0u8; 16];
    id[..s.len()].copy_from_slice(s.as_bytes());
    Ok(id)
}

fn data_key(p: &PathBuf) -> Result<[u8; 32], InspectError> {
    let err = |msg: String| InspectError::DataKey {
        path: p.display().to_string(),
        msg,
    };
    let raw = std::fs::read(p).map_err(|e| err(e.to_string()))?;
    let text: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let bytes = decode_hex(&text).filter(|b| b.len() == 32).unwrap_or(raw);
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| err(format!("{} bytes, 32 needed", b.len())))
}

fn run(cli: Cli) -> Result<bool, InspectError> {
    let enc = match &cli.data_key_file {
        Some(p) => Encryption::Aead { key: data_key(p)? },
        None => Encryption::Plaintext,
    };
    let mut cfg = PoolConfig::new(
        cli.servers.clone(),
        Psk::from_file(&cli.key_file)?,
        pool_id(&cli.pool)?,
        enc,
        Redundancy::None,
    );
    cfg.local_dir = cli.local_dir.clone();
    cfg.name = "rmem-inspect".into();
    let mut pool = Pool::connect(cfg)?;
    match cli.cmd {
        Cmd::List => {
            for g in pool.committed_generations() {
                match pool.info(g) {
                    Ok(i) => println!(
                        "generation {g}: {} bytes, {:?}, manifest v{}{}",
                        i.bytes,
                        i.location,
                        i.manifest_version,
                        if i.degraded { ", DEGRADED" } else { "" }
                    ),
                    Err(e) => println!("generation {g}: unreadable: {e}"),
                }
            }
        }
        Cmd::Show { generation } => {
            let m = pool.manifest(generation)?;
            println!("generation {} manifest v{}", m.generation, m.version);
            println!(
                "  code {:?} k={} m={} chunk size {}",
                m.code, m.k, m.m, m.chunk_size
            );
            println!(
                "  {} chunks, {} stripes, {} extents, {} bytes, caller manifest {} bytes",
                m.chunk_lens.len(),
                m.stripes.len(),
                m.extents.len(),
                m.bytes(),
                m.user.len()
            );
            for (i, t) in m.targets.iter().enumerate() {
                let n = m
                    .stripes
                    .iter()
                    .flatten()
                    .filter(|l| l.target as usize == i)
                    .count();
                match t {
                    TargetRef::Remote { instance, addr } => {
                        println!(
                            "  target {i}: server {addr} instance {} ({n} shards)",
                            rmem_client::auth::encode_hex(instance)
                        )
                    }
                    TargetRef::Disk => println!("  target {i}: local disk ({n} shards)"),
                }
            }
            let lost = m
                .stripes
                .iter()
                .flatten()
                .filter(|l| l.target == LOST && l.len > 0)
                .count();
            println!("  shards without a copy: {lost}");
        }
        Cmd::Verify { generation } => {
            let mut r = pool.read_generation(generation)?;
            let mut n = 0u64;
            let res = r.read_all(|_, b| {
                n += b.len() as u64;
                Ok(())
            });
            match res {
                Ok(()) => println!("generation {generation}: OK, {n} bytes read and authenticated"),
                Err(e) => {
                    println!("generation {generation}: FAILED after {n} bytes: {e}");
                    return Ok(false);
                }
            }
        }
        Cmd::Health => {
            for h in pool.health() {
                let st = h.status.map_or("-".to_string(), |s| {
                    format!(
                        "{:?} capacity {} used {} (this pool {})",
                        s.state, s.capacity, s.used, s.pool_used
                    )
                });
                println!(
                    "{}: {} {}{}",
                    h.addr,
                    if h.connected { "up" } else { "DOWN" },
                    st,
                    h.last_error
                        .map(|e| format!(" last error: {e}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(true)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rmem-inspect: {e}");
            ExitCode::FAILURE
        }
    }
}
