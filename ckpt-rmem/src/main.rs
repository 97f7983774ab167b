//! `ckpt-rmem`: the helper program of ckpt's remote-memory store (`CKPT_STORE=rmem://...` and
//! `tiered:...`, see `docs/stores.md`). libckpt starts it for every pool operation, so that the
//! pool client (sockets, allocation, encryption) runs in a fresh process, never inside the
//! checkpoint signal handler or in a forked child of a program interrupted inside `malloc`.
//!
//! Commands (the options after them say which pool; libckpt builds them from `CKPT_STORE`):
//! - `put`: reads one image as a stream of records on standard input (a socket), stores each
//!   record at its offset in a new pool generation, commits it when the stream says so, answers
//!   with a reply record and exits 0 only once committed. Then, in a detached child, prunes the
//!   pool (keeping the newest generations and every image they build on), runs the pool's
//!   maintenance (reconnection, evacuation of revoking servers, rebuild, return from disk) and,
//!   for a tiered store, copies committed generations to the local directory.
//! - `fetch --into DIR`: writes the newest generation whose chain can be read, and its chain, as
//!   image files `gen-<20 digits>.ckpt` into DIR; prints `generation`, `chain`, `highest`,
//!   `bytes` and `from` lines. Exit 2: nothing committed. With `--generation G`, that generation
//!   and its chain (an error if it cannot be read). With `--all`, every committed generation,
//!   each on its own, printing `servers UP TOTAL` and one line per generation, newest first:
//!   `gen G parent P bytes N from remote|degraded|remote+disk|disk|copy` or `gen G error MESSAGE`. With
//!   `--meta`, only each image's header and manifest are written (the page data is left a hole
//!   of the file), for readers that do not check page data. `--progress-fd N` draws a progress
//!   bar of the transfer on descriptor N when it is a terminal.
//! - `status`: checks the servers, the key and the data key (creating a missing default data
//!   key with `--create-key`); prints `highest` (the newest committed generation, 0 if none).
//! - `clear`: removes every generation of the pool; prints `removed`.
//!
//! Exit status 3 (and a last line `ckpt-rmem: error: ...` on standard error) for any error.
#![deny(unsafe_code)]

mod sys;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rmem_client::{Encryption, Location, Pool, PoolConfig, PoolError, Psk, Redundancy};

/// The stream protocol (libckpt's `remote::proto`; documented in `docs/stores.md`).
mod proto {
    pub const MAGIC: u32 = 0x3152_4b43;
    pub const BEGIN: u32 = 1;
    pub const DATA: u32 = 2;
    pub const COMMIT: u32 = 3;
    pub const HEADER: usize = 24;
    pub const REPLY: usize = 256;
    pub const REPLY_MAGIC: u32 = 0x3150_4b43;
    pub const COMMITTED: u32 = 0;
    pub const FAILED: u32 = 1;
    pub const TAKEN: u32 = 2;
    pub const IN_REMOTE: u32 = 0;
    pub const ON_DISK: u32 = 1;
    /// Largest record accepted.
    pub const MAX_RECORD: u64 = 64 << 20;
    /// Largest image accepted.
    pub const MAX_IMAGE: u64 = 1 << 40;
}

/// What a generation's user manifest holds: which image it is.
const USER_MAGIC: &[u8; 8] = b"CKRMIMG1";

/// `(generation, parent, image length)` in a generation's user manifest.
fn user_manifest(generation: u64, parent: u64, total: u64) -> Vec<u8> {
    let mut v = USER_MAGIC.to_vec();
    for x in [generation, parent, total] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn parse_user(b: &[u8]) -> Option<(u64, u64, u64)> {
    if b.len() < 32 || &b[..8] != USER_MAGIC {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    Some((u(8), u(16), u(24)))
}

type Result<T, E = String> = std::result::Result<T, E>;

/// The command line.
#[derive(Debug, Default)]
struct Opts {
    mode: String,
    servers: Vec<String>,
    key: PathBuf,
    data_key: Option<PathBuf>,
    create_key: bool,
    plaintext: bool,
    redundancy: String,
    pool: [u8; 16],
    dir: PathBuf,
    tiered: bool,
    no_fallback: bool,
    min_free: u64,
    chunk: Option<usize>,
    timeout_ms: Option<u64>,
    width: Option<usize>,
    log: String,
    ppid: Option<i32>,
    into: Option<PathBuf>,
    generation: Option<u64>,
    all: bool,
    meta: bool,
    progress_fd: Option<i32>,
}

const USAGE: &str = "usage: ckpt-rmem put|fetch|status|clear --servers H:P,... --key FILE \
    (--data-key FILE [--create-key] | --plaintext) --redundancy R --pool HEX32 --dir DIR \
    [--tiered] [--no-fallback] [--min-free BYTES] [--chunk BYTES] [--timeout-ms MS] \
    [--width N] [--log off|warn|info|debug] [--ppid PID] [--into DIR] \
    [--generation G | --all] [--meta] [--progress-fd N]";

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        redundancy: "parity".into(),
        log: "warn".into(),
        ..Default::default()
    };
    let mut it = args.iter();
    o.mode = it.next().cloned().ok_or_else(|| USAGE.to_string())?;
    let mut have_pool = false;
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{a}: not a number: {v}"))
        };
        match a.as_str() {
            "--servers" => o.servers = val()?.split(',').map(str::to_string).collect(),
            "--key" => o.key = val()?.into(),
            "--data-key" => o.data_key = Some(val()?.into()),
            "--create-key" => o.create_key = true,
            "--plaintext" => o.plaintext = true,
            "--redundancy" => o.redundancy = val()?,
            "--pool" => {
                let v = val()?;
                let b = rmem_client::auth::decode_hex(v.as_bytes())
                    .filter(|b| b.len() == 16)
                    .ok_or_else(|| format!("--pool takes 32 hex digits, not {v}"))?;
                o.pool.copy_from_slice(&b);
                have_pool = true;
            }
            "--dir" => o.dir = val()?.into(),
            "--tiered" => o.tiered = true,
            "--no-fallback" => o.no_fallback = true,
            "--min-free" => o.min_free = num(val()?)?,
            "--chunk" => o.chunk = Some(num(val()?)? as usize),
            "--timeout-ms" => o.timeout_ms = Some(num(val()?)?),
            "--width" => o.width = Some(num(val()?)? as usize),
            "--log" => o.log = val()?,
            "--ppid" => o.ppid = Some(num(val()?)? as i32),
            "--into" => o.into = Some(val()?.into()),
            "--generation" => o.generation = Some(num(val()?)?),
            "--all" => o.all = true,
            "--meta" => o.meta = true,
            "--progress-fd" => o.progress_fd = Some(num(val()?)? as i32),
            _ => return Err(format!("unknown argument {a}; {USAGE}")),
        }
    }
    if o.servers.is_empty() || o.key.as_os_str().is_empty() || !have_pool {
        return Err(format!("--servers, --key and --pool are required; {USAGE}"));
    }
    if o.dir.as_os_str().is_empty() {
        return Err(format!("--dir is required; {USAGE}"));
    }
    if !o.plaintext && o.data_key.is_none() {
        return Err("give --data-key FILE or --plaintext".into());
    }
    if o.all && o.generation.is_some() {
        return Err(format!(
            "--all and --generation exclude each other; {USAGE}"
        ));
    }
    Ok(o)
}

fn main() {
    // Started from inside a checkpoint: every signal is blocked.
    sys::unblock_signals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ckpt-rmem: error: {e}");
            std::process::exit(4);
        }
    };
    // A put answers with its outcome, which the program logs; its warnings (a server down,
    // remote memory short) would repeat at every checkpoint. Its background child logs to a
    // file instead (see `put`).
    if o.mode != "put" {
        init_log(&o.log);
    }
    if let Some(p) = o.ppid
        && !sys::die_with_parent(p)
    {
        // The program is gone: nothing it asked for may land now.
        std::process::exit(1);
    }
    let r = match o.mode.as_str() {
        "put" => put(&o),
        "fetch" => fetch(&o),
        "status" => status(&o),
        "clear" => clear(&o),
        m => Err(format!("unknown command {m}; {USAGE}")),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ckpt-rmem: error: {e}");
            std::process::exit(3);
        }
    }
}

fn init_log(level: &str) {
    let filter = std::env::var("RMEM_LOG").unwrap_or_else(|_| level.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// Reads the 32-byte data key (hex, or raw bytes); with `create`, makes a new random one if the
/// file is missing (mode 0600, in a directory of mode 0700).
fn data_key(path: &Path, create: bool) -> Result<[u8; 32]> {
    let raw = match std::fs::read(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            if let Some(d) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(d)
                    .map_err(|e| format!("create {}: {e}", d.display()))?;
            }
            let mut k = [0u8; 32];
            rmem_client::auth::random_bytes(&mut k).map_err(|e| e.to_string())?;
            let text = rmem_client::auth::encode_hex(&k) + "\n";
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("create data key {}: {e}", path.display()))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("write data key {}: {e}", path.display()))?;
            tracing::warn!(path = %path.display(), "created a new data key: keep it, checkpoints cannot be read without it");
            text.into_bytes()
        }
        Err(e) => {
            return Err(format!(
                "cannot read the data key {}: {e} (without it the checkpoints cannot be decrypted)",
                path.display()
            ));
        }
    };
    let text: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let bytes = if text.len() == 64 && text.iter().all(|b| b.is_ascii_hexdigit()) {
        rmem_client::auth::decode_hex(&text).unwrap_or_default()
    } else {
        raw
    };
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "data key {} holds {} bytes: expected 32 (or 64 hex digits)",
            path.display(),
            b.len()
        )
    })
}

fn pool_config(o: &Opts) -> Result<PoolConfig> {
    let key = Psk::from_file(&o.key).map_err(|e| format!("pre-shared key: {e}"))?;
    let encryption = if o.plaintext {
        Encryption::Plaintext
    } else {
        let path = o.data_key.as_deref().ok_or("no data key")?;
        Encryption::Aead {
            key: data_key(path, o.create_key)?,
        }
    };
    let red: Redundancy = o
        .redundancy
        .parse()
        .map_err(|e| format!("redundancy {}: {e}", o.redundancy))?;
    let mut c = PoolConfig::new(o.servers.clone(), key, o.pool, encryption, red);
    if !o.no_fallback || o.tiered {
        c.local_dir = Some(o.dir.clone());
    }
    c.min_remote_free = o.min_free;
    if let Some(n) = o.chunk {
        c.chunk_size = n;
    }
    if let Some(ms) = o.timeout_ms {
        c.io_timeout = Duration::from_millis(ms);
    }
    c.connect_timeout = c.connect_timeout.min(c.io_timeout);
    c.stripe_width = o.width;
    c.name = format!(
        "ckpt-rmem {} pid {} (program pid {})",
        o.mode,
        std::process::id(),
        o.ppid.unwrap_or(0)
    );
    Ok(c)
}

fn connect(o: &Opts) -> Result<Pool> {
    Pool::connect(pool_config(o)?).map_err(|e| match e {
        PoolError::NoServers(why) => format!("no rmem server reachable: {why}"),
        e => e.to_string(),
    })
}

/// Serialises the helpers of one store: a put waits for the previous one's background work.
fn lock(dir: &Path) -> Result<File> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))?;
    let p = dir.join("rmem.lock");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&p)
        .map_err(|e| format!("open {}: {e}", p.display()))?;
    sys::lock_exclusive(&f).map_err(|e| format!("lock {}: {e}", p.display()))?;
    Ok(f)
}

/// One record of the stream: (kind, offset, payload length).
fn read_header(r: &mut impl Read) -> Result<Option<(u32, u64, u64)>> {
    let mut h = [0u8; proto::HEADER];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(format!("reading the image stream: {e}")),
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
    if u32_at(0) != proto::MAGIC {
        return Err("the image stream is not in the expected format".into());
    }
    let len = u64_at(16);
    if len > proto::MAX_RECORD {
        return Err(format!("a record of {len} bytes in the image stream"));
    }
    Ok(Some((u32_at(4), u64_at(8), len)))
}

fn reply(sock: &mut File, status: u32, location: u32, degraded: bool, msg: &str) {
    let mut b = [0u8; proto::REPLY];
    b[..4].copy_from_slice(&proto::REPLY_MAGIC.to_le_bytes());
    b[4..8].copy_from_slice(&status.to_le_bytes());
    b[8..12].copy_from_slice(&location.to_le_bytes());
    b[12..16].copy_from_slice(&(degraded as u32).to_le_bytes());
    let mut m = msg.as_bytes();
    if m.len() > proto::REPLY - 17 {
        let mut cut = proto::REPLY - 17;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        m = &m[..cut];
    }
    b[16..16 + m.len()].copy_from_slice(m);
    let _ = sock.write_all(&b);
}

/// `put`: one image from standard input into a new generation.
fn put(o: &Opts) -> Result<i32> {
    let mut sock = sys::stdin_file();
    let fail = |sock: &mut File, status: u32, msg: String| {
        tracing::debug!(%msg, "put failed");
        reply(sock, status, 0, false, &msg);
        Ok(1)
    };
    // Waits for the previous helper's background work (pruning, maintenance, the tiered copy).
    let lock = match lock(&o.dir) {
        Ok(l) => l,
        Err(e) => return fail(&mut sock, proto::FAILED, e),
    };
    let mut pool = match connect(o) {
        Ok(p) => p,
        Err(e) => return fail(&mut sock, proto::FAILED, e),
    };
    let mut input =
        std::io::BufReader::with_capacity(1 << 20, sock.try_clone().map_err(|e| e.to_string())?);
    let (generation, parent) = match read_header(&mut input)? {
        Some((proto::BEGIN, _, 16)) => {
            let mut b = [0u8; 16];
            input.read_exact(&mut b).map_err(|e| e.to_string())?;
            let g = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
            (g, u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8])))
        }
        Some(_) => {
            return fail(
                &mut sock,
                proto::FAILED,
                "the image stream does not begin with BEGIN".into(),
            );
        }
        None => return Ok(1),
    };
    let mut w = match pool.begin_generation(generation) {
        Ok(w) => w,
        Err(e @ PoolError::AlreadyCommitted(_)) => {
            return fail(&mut sock, proto::TAKEN, e.to_string());
        }
        Err(e) => {
            return fail(
                &mut sock,
                proto::FAILED,
                format!("generation {generation}: {e}"),
            );
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    let (total, keep) = loop {
        let Some((kind, off, len)) = read_header(&mut input)? else {
            // The program stopped (a failure, or it died): nothing is committed.
            w.abort();
            return Ok(1);
        };
        if buf.len() < len as usize {
            buf.resize(len as usize, 0);
        }
        let body = &mut buf[..len as usize];
        input
            .read_exact(body)
            .map_err(|e| format!("reading the image stream: {e}"))?;
        match kind {
            proto::DATA => {
                if off.saturating_add(len) > proto::MAX_IMAGE {
                    return fail(
                        &mut sock,
                        proto::FAILED,
                        format!("image offset {off} out of range"),
                    );
                }
                if let Err(e) = w.put(off, body) {
                    return fail(
                        &mut sock,
                        proto::FAILED,
                        format!("generation {generation}: {e}"),
                    );
                }
            }
            proto::COMMIT if len == 16 => {
                let u = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
                break (u(0), u(8).max(1));
            }
            k => {
                return fail(
                    &mut sock,
                    proto::FAILED,
                    format!("unexpected record kind {k}"),
                );
            }
        }
    };
    let info = match w.commit(&user_manifest(generation, parent, total)) {
        Ok(i) => i,
        Err(e) => {
            return fail(
                &mut sock,
                proto::FAILED,
                format!("generation {generation}: {e}"),
            );
        }
    };
    tracing::debug!(generation, ?info, "committed");
    let location = if info.location == Location::Disk {
        proto::ON_DISK
    } else {
        proto::IN_REMOTE
    };
    // The commit is done: answer at once, and leave the rest of the work to a detached child
    // (it keeps the lock, so the next put waits for it).
    match sys::fork() {
        Some(0) => {
            drop(input);
            let log = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(o.dir.join("background.log"))
                .ok();
            sys::detach(log.as_ref());
            init_log(&o.log);
            drop(sock);
            background(o, &mut pool, generation, keep);
            drop(lock);
            sys::exit_now(0)
        }
        Some(_) => {
            reply(&mut sock, proto::COMMITTED, location, info.degraded, "");
            sys::exit_now(0)
        }
        None => {
            reply(&mut sock, proto::COMMITTED, location, info.degraded, "");
            drop(sock);
            background(o, &mut pool, generation, keep);
            Ok(0)
        }
    }
}

/// After a commit: prune, maintain, and for a tiered store copy to the local directory.
fn background(o: &Opts, pool: &mut Pool, current: u64, keep: u64) {
    prune(pool, current, keep);
    let rep = pool.maintain();
    for e in &rep.errors {
        tracing::warn!(error = %e, "pool maintenance");
    }
    if rep != Default::default() {
        tracing::info!(?rep, "pool maintenance");
    }
    if o.tiered {
        match pool.flush_committed() {
            Ok(n) => tracing::debug!(flushed = n, "copied to the local directory"),
            Err(e) => tracing::warn!(error = %e, "copying to the local directory"),
        }
    }
}

/// The parent of committed generation `g` (0: a full image, or unreadable).
fn parent_of(pool: &mut Pool, g: u64) -> Option<u64> {
    let m = pool.manifest(g).ok()?;
    parse_user(&m.user).map(|(_, p, _)| p)
}

/// Frees every committed generation up to `current` that is neither among the newest `keep`
/// nor one a kept generation builds on (as a local directory store prunes, IMAGE-FORMAT.md).
fn prune(pool: &mut Pool, current: u64, keep: u64) {
    let gens: Vec<u64> = pool
        .committed_generations()
        .into_iter()
        .filter(|&g| g <= current)
        .collect();
    let mut needed = BTreeSet::new();
    for &g in gens.iter().take(keep as usize) {
        let mut at = g;
        while at != 0 && needed.insert(at) {
            at = match parent_of(pool, at) {
                Some(p) if p < at => p,
                _ => 0,
            };
        }
    }
    for &g in &gens {
        if !needed.contains(&g) {
            match pool.free_generation(g) {
                Ok(()) => tracing::debug!(generation = g, "pruned"),
                Err(e) => tracing::warn!(generation = g, error = %e, "pruning"),
            }
        }
    }
}

/// `fetch`: generations and their chains as image files (see the module's documentation).
fn fetch(o: &Opts) -> Result<i32> {
    let into = o.into.as_deref().ok_or("fetch needs --into DIR")?;
    let _lock = lock(&o.dir)?;
    let mut pool = connect(o)?;
    let gens = pool.committed_generations();
    let servers = pool.health();
    let up = servers.iter().filter(|s| s.connected).count();
    let Some(&highest) = gens.first() else {
        if up == 0 {
            // Nothing on local disk, and no server to ask: whether a checkpoint exists is
            // unknown, and starting over would be silent.
            return Err(format!(
                "no rmem server reachable ({}), and no generation on local disk",
                unreachable(&servers)
            ));
        }
        println!("highest 0");
        return Ok(2);
    };
    let servers = (up, servers.len());
    if o.all {
        return fetch_all(o, &mut pool, &gens, into, servers);
    }
    let candidates = match o.generation {
        Some(g) if gens.contains(&g) => vec![g],
        Some(g) => {
            return Err(format!(
                "generation {g} is not committed in the pool (it holds generation {})",
                gens.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        None => gens.clone(),
    };
    let mut first_err: Option<String> = None;
    for &g in &candidates {
        let mut made = Vec::new();
        let bar = Progress::new(o, || chain_bytes(&mut pool, g));
        let r = fetch_chain(&mut pool, g, into, o.meta, &bar, &mut made);
        bar.finish();
        match r {
            Ok((chain, bytes)) => {
                if g != highest && o.generation.is_none() {
                    tracing::warn!(
                        newest = highest,
                        restoring = g,
                        "newer generations cannot be read; using an older one"
                    );
                }
                println!("generation {g}");
                println!(
                    "chain {}",
                    chain
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                println!("highest {highest}");
                println!("bytes {bytes}");
                println!("from {}", from_text(&mut pool, g, servers));
                return Ok(0);
            }
            Err(e) => {
                for p in made {
                    let _ = std::fs::remove_file(p);
                }
                if o.generation.is_some() {
                    // The pool's own errors name the generation already.
                    return Err(if e.starts_with(&format!("generation {g}")) {
                        e
                    } else {
                        format!("generation {g}: {e}")
                    });
                }
                tracing::warn!(generation = g, error = %e, "cannot read this generation; trying the previous one");
                first_err.get_or_insert(format!("generation {g}: {e}"));
            }
        }
    }
    Err(format!(
        "no committed generation could be read ({} tried; newest: {})",
        gens.len(),
        first_err.unwrap_or_default()
    ))
}

/// `fetch --all`: every committed generation on its own (a chain link that cannot be read is
/// reported on its own line and does not stop the others).
fn fetch_all(
    o: &Opts,
    pool: &mut Pool,
    gens: &[u64],
    into: &Path,
    servers: (usize, usize),
) -> Result<i32> {
    let bar = Progress::new(o, || {
        gens.iter()
            .map(|&g| image_bytes(pool, g).unwrap_or(0))
            .sum()
    });
    println!("servers {} {}", servers.0, servers.1);
    for &g in gens {
        let mut made = Vec::new();
        match fetch_image(pool, g, into, o.meta, &bar, &mut made) {
            Ok((parent, bytes)) => {
                let from = match pool.info(g) {
                    Ok(i) if i.location == Location::Disk && i.partly_on_disk() => "remote+disk",
                    Ok(i) => match (i.location, i.degraded) {
                        (Location::Remote, false) => "remote",
                        (Location::Remote, true) => "degraded",
                        (Location::Disk, _) => "disk",
                        (Location::Flushed, _) => "copy",
                    },
                    Err(_) => "remote",
                };
                println!("gen {g} parent {parent} bytes {bytes} from {from}");
            }
            Err(e) => {
                for p in made {
                    let _ = std::fs::remove_file(p);
                }
                println!("gen {g} error {}", e.replace('\n', " "));
            }
        }
    }
    bar.finish();
    Ok(0)
}

/// Where generation `g` is read from, for the restore's log line.
fn from_text(pool: &mut Pool, g: u64, (up, n): (usize, usize)) -> String {
    match pool.info(g) {
        Ok(i) => match i.location {
            Location::Remote if i.degraded => {
                format!("remote memory, degraded ({up} of {n} servers up)")
            }
            Location::Remote => format!("remote memory ({up} of {n} servers up)"),
            Location::Disk if i.partly_on_disk() => format!(
                "remote memory and the local fallback directory ({} of {} shards on disk; {up} of \
                 {n} servers up)",
                i.disk_shards, i.shards
            ),
            Location::Disk => "the local fallback directory".into(),
            Location::Flushed => format!("the local copy ({up} of {n} servers up)"),
        },
        Err(_) => "remote memory".into(),
    }
}

/// The image length of committed generation `g`, from its user manifest.
fn image_bytes(pool: &mut Pool, g: u64) -> Option<u64> {
    let m = pool.manifest(g).ok()?;
    parse_user(&m.user).map(|(_, _, total)| total)
}

/// Bytes of generation `g` and every image it builds on (what a fetch of it transfers), as far
/// as the manifests can be read.
fn chain_bytes(pool: &mut Pool, g: u64) -> u64 {
    let mut total = 0;
    let mut at = g;
    while at != 0 {
        let Some((_, parent, bytes)) = pool.manifest(at).ok().and_then(|m| parse_user(&m.user))
        else {
            break;
        };
        total += bytes;
        at = if parent < at { parent } else { 0 };
    }
    total
}

/// Writes generation `g` and the images it builds on into `into`; returns the chain (newest
/// first) and the bytes written. Files created are added to `made`.
fn fetch_chain(
    pool: &mut Pool,
    g: u64,
    into: &Path,
    meta: bool,
    bar: &Progress,
    made: &mut Vec<PathBuf>,
) -> Result<(Vec<u64>, u64)> {
    let mut chain = Vec::new();
    let mut bytes = 0;
    let mut at = g;
    loop {
        let (parent, n) = fetch_image(pool, at, into, meta, bar, made)?;
        chain.push(at);
        bytes += n;
        if parent == 0 {
            return Ok((chain, bytes));
        }
        if parent >= at {
            return Err(format!(
                "generation {at} builds on generation {parent}, which is not older"
            ));
        }
        at = parent;
    }
}

/// Offsets in an image's header (`libckpt/IMAGE-FORMAT.md`): `manifest_offset`,
/// `manifest_len` and `total_len`, and the header's size.
mod header {
    pub const MANIFEST_OFFSET: usize = 56;
    pub const MANIFEST_LEN: usize = 64;
    pub const TOTAL_LEN: usize = 72;
    pub const SIZE: u64 = 88;
}

/// Writes generation `g` as the image file `gen-<20 digits>.ckpt` in `into` (with `meta`, only
/// its header and manifest); returns its parent and its length.
fn fetch_image(
    pool: &mut Pool,
    g: u64,
    into: &Path,
    meta: bool,
    bar: &Progress,
    made: &mut Vec<PathBuf>,
) -> Result<(u64, u64)> {
    let mut r = pool.read_generation(g).map_err(|e| e.to_string())?;
    let (gen_, parent, total) = parse_user(r.user_manifest())
        .ok_or_else(|| format!("generation {g} is not a checkpoint image"))?;
    if gen_ != g || total > proto::MAX_IMAGE {
        return Err(format!("generation {g}: inconsistent image record"));
    }
    let path = into.join(format!("gen-{g:020}.ckpt"));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    made.push(path.clone());
    f.set_len(total)
        .map_err(|e| format!("size {}: {e}", path.display()))?;
    let write = |addr: u64, b: &[u8]| -> Result<(), PoolError> {
        if addr.saturating_add(b.len() as u64) > total {
            return Err(PoolError::NotPresent {
                generation: g,
                addr,
                len: b.len() as u64,
            });
        }
        f.write_all_at(b, addr).map_err(PoolError::Io)
    };
    if meta {
        // The header, then the manifest it points to; a header that does not point inside the
        // image is written as it is, for the reader to report.
        let h = r.get(0, header::SIZE).map_err(|e| e.to_string())?;
        write(0, &h).map_err(|e| e.to_string())?;
        let u = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
        let (off, len) = (u(header::MANIFEST_OFFSET), u(header::MANIFEST_LEN));
        if u(header::TOTAL_LEN) == total
            && off >= header::SIZE
            && off.checked_add(len) == Some(total)
        {
            let m = r.get(off, len).map_err(|e| e.to_string())?;
            write(off, &m).map_err(|e| e.to_string())?;
        }
    } else {
        r.read_all(|addr, b| {
            write(addr, b)?;
            bar.inc(b.len() as u64);
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    }
    Ok((parent, total))
}

/// A progress bar of a transfer on the descriptor `--progress-fd` names, drawn only when that is
/// a terminal and the transfer is large enough to take a noticeable time.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// Below this, a transfer takes well under a second even at 100 Mb/s: no bar.
    const MIN_BYTES: u64 = 16 << 20;

    /// `total` reads the manifests (a round trip to the servers per generation): called only
    /// when a bar may be drawn. A fetch of headers only (`--meta`) moves no page data: no bar.
    fn new(o: &Opts, total: impl FnOnce() -> u64) -> Progress {
        let fd = match o.progress_fd {
            Some(fd) if !o.meta => fd,
            _ => return Progress(None),
        };
        let total = total();
        if total < Self::MIN_BYTES {
            return Progress(None);
        }
        let Some(out) = sys::file_of_fd(fd) else {
            return Progress(None);
        };
        let term = console::Term::read_write_pair(std::io::stdin(), out);
        if !term.is_term() {
            return Progress(None);
        }
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::term(term, 10),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message("fetching from remote memory");
        Progress(Some(pb))
    }

    fn inc(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

/// `status`: the pool is usable; the newest committed generation.
fn status(o: &Opts) -> Result<i32> {
    let mut pool = connect(o)?;
    let health = pool.health();
    let up = health.iter().filter(|s| s.connected).count();
    if up == 0 {
        return Err(format!(
            "no rmem server reachable ({})",
            unreachable(&health)
        ));
    }
    for s in health.iter().filter(|s| !s.connected) {
        tracing::warn!(server = %s.addr, error = s.last_error.as_deref().unwrap_or(""), "server unavailable");
    }
    let highest = pool.committed_generations().first().copied().unwrap_or(0);
    println!("servers {up} of {}", health.len());
    println!("highest {highest}");
    Ok(0)
}

/// Why each server is not connected.
fn unreachable(health: &[rmem_client::ServerHealth]) -> String {
    health
        .iter()
        .filter(|s| !s.connected)
        .map(|s| {
            format!(
                "{}: {}",
                s.addr,
                s.last_error.as_deref().unwrap_or("not connected")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `clear`: every generation of the pool goes.
fn clear(o: &Opts) -> Result<i32> {
    let _lock = lock(&o.dir)?;
    let mut pool = connect(o)?;
    // Uncommitted leftovers too: the program killed its last writer (and with it that writer's
    // `put`) before asking, so nothing else would ever free them.
    let n = pool.free_all().map_err(|e| e.to_string())?;
    println!("removed {n}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_manifest_round_trips() {
        let u = user_manifest(7, 5, 123456);
        assert_eq!(parse_user(&u), Some((7, 5, 123456)));
        assert_eq!(parse_user(&u[..20]), None);
    }

    #[test]
    fn args_parse() {
        let a: Vec<String> = "put --servers a:1,b:2 --key k --pool 00112233445566778899aabbccddeeff --dir d --plaintext --ppid 9"
            .split(' ')
            .map(str::to_string)
            .collect();
        let o = parse_args(&a).unwrap();
        assert_eq!(o.servers, ["a:1", "b:2"]);
        assert_eq!(o.pool[15], 0xff);
        assert_eq!(o.ppid, Some(9));
        assert!(parse_args(&a[..3]).is_err());
    }
}
