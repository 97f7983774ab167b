//! The configuration contract shared by Rust, C and preload users: `Config` and `Config::from_env()`.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `ckpt` does at start when a store may hold a checkpoint of this program (`CKPT_RESTORE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreMode {
    /// Restore if a committed checkpoint of this program exists, else start fresh.
    #[default]
    Auto,
    /// Never restore; a fresh run (its first checkpoint replaces nothing until it commits).
    Never,
    /// Fail if there is no committed checkpoint to restore.
    Require,
}

/// How a checkpoint is taken (`CKPT_POLICY`); see `docs/policies.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Stop the program, save every saved page, resume (the paper's "sequential").
    #[default]
    Sequential,
    /// Stop the program, save the pages written since the previous checkpoint.
    Incremental,
    /// Fork; the child (a copy-on-write snapshot) writes every page while the program runs.
    Forked,
    /// Harvest the dirty pages, fork; the child writes them.
    ForkedIncremental,
    /// Copy every page into a buffer; a helper process writes it while the program runs.
    Buffered,
    /// Copy the dirty pages into a buffer; a helper process writes them.
    BufferedIncremental,
}

impl Policy {
    /// Every policy, in the order `docs/policies.md` lists them.
    pub fn all() -> [Policy; 6] {
        [
            Policy::Sequential,
            Policy::Incremental,
            Policy::Forked,
            Policy::ForkedIncremental,
            Policy::Buffered,
            Policy::BufferedIncremental,
        ]
    }

    /// The name `CKPT_POLICY` uses.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Sequential => "sequential",
            Policy::Incremental => "incremental",
            Policy::Forked => "forked",
            Policy::ForkedIncremental => "forked-incremental",
            Policy::Buffered => "buffered",
            Policy::BufferedIncremental => "buffered-incremental",
        }
    }

    /// Whether only pages written since the previous checkpoint are saved.
    pub fn incremental(self) -> bool {
        matches!(
            self,
            Policy::Incremental | Policy::ForkedIncremental | Policy::BufferedIncremental
        )
    }

    /// Whether the image is written by a child process (copy-on-write).
    pub fn forked(self) -> bool {
        matches!(self, Policy::Forked | Policy::ForkedIncremental)
    }

    /// Whether pages are copied into a buffer that a helper process writes.
    pub fn buffered(self) -> bool {
        matches!(self, Policy::Buffered | Policy::BufferedIncremental)
    }
}

impl core::fmt::Display for Policy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a background policy does when a checkpoint falls due while the previous one is still
/// being written (`CKPT_BUSY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusyMode {
    /// Wait for the previous one to finish, then take this one.
    #[default]
    Wait,
    /// Skip this one.
    Skip,
}

/// How much the library says on stderr (`CKPT_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    /// Nothing, not even errors of timer-driven checkpoints.
    Off,
    /// Errors, restores, fallbacks, and one line per checkpoint.
    #[default]
    Info,
    /// Everything, including per-region detail.
    Debug,
}

/// Where checkpoints are stored (`CKPT_STORE`, or `CKPT_DIR` for a directory); see
/// `docs/stores.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// A local directory, one file per generation (`dir:PATH`, `CKPT_DIR`).
    Dir(PathBuf),
    /// Remote memory through `rmem-client`, written by the `ckpt-rmem` helper
    /// (`rmem://HOST:PORT,...?key=FILE&...`, or `tiered:rmem://...` with a local copy).
    Remote(RemoteStore),
}

/// A remote-memory store as `CKPT_STORE` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStore {
    /// The specification as given.
    pub spec: String,
    /// `host:port` of each server, in order.
    pub servers: Vec<String>,
    /// `key=FILE`: the pre-shared key the servers authenticate clients with.
    pub key_file: PathBuf,
    /// `datakey=FILE`: the 32-byte key pages are encrypted under (only the client knows it);
    /// `None`: `$XDG_CONFIG_HOME/ckpt/rmem-data.key` (created at the first `init`).
    pub data_key_file: Option<PathBuf>,
    /// `plaintext`: pages are stored unencrypted (only when asked for).
    pub plaintext: bool,
    /// `redundancy=none|mirror:K|parity|rs:K+M`; `None`: parity over two or more servers.
    pub redundancy: Option<String>,
    /// `pool=NAME`: the namespace on the servers (at most 16 characters or 32 hex digits);
    /// `None`: derived from the executable's path.
    pub pool: Option<String>,
    /// `dir=PATH`: the local directory (store lock, disk fallback, the tiered copy); `None`:
    /// one derived from the pool under `$XDG_RUNTIME_DIR` or `/tmp`.
    pub dir: Option<PathBuf>,
    /// `tiered:`: committed generations are also copied to the local directory in the
    /// background, and recovery falls back to that copy.
    pub tiered: bool,
    /// `fallback=no` turns off writing to local disk when remote memory is short.
    pub fallback: bool,
    /// `min_free=SIZE`: below this much free remote memory, generations go to local disk.
    pub min_free: u64,
    /// `chunk=SIZE`: bytes per chunk (the unit of striping and encryption).
    pub chunk: Option<u64>,
    /// `timeout=DURATION`: how long one server operation may take before the server counts as
    /// failed.
    pub timeout: Option<Duration>,
    /// `width=N`: servers per generation (the others are spares).
    pub width: Option<u32>,
}

impl RemoteStore {
    /// Parses `rmem://...` or `tiered:rmem://...`.
    pub fn parse(spec: &str) -> Result<RemoteStore, ConfigError> {
        let bad = |reason: &'static str| err("CKPT_STORE", spec.to_string(), reason);
        let (tiered, rest) = match spec.strip_prefix("tiered:") {
            Some(r) => (true, r),
            None => (false, spec),
        };
        let Some(rest) = rest.strip_prefix("rmem://") else {
            return Err(bad(
                "expected dir:PATH, rmem://HOST:PORT,...?key=FILE or tiered:rmem://...",
            ));
        };
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let servers: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if servers.is_empty() {
            return Err(bad("no server: expected rmem://HOST:PORT[,HOST:PORT...]"));
        }
        if servers.iter().any(|h| {
            h.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        }) {
            return Err(bad("every server must be HOST:PORT"));
        }
        let mut r = RemoteStore {
            spec: spec.to_string(),
            servers,
            key_file: PathBuf::new(),
            data_key_file: None,
            plaintext: false,
            redundancy: None,
            pool: None,
            dir: None,
            tiered,
            fallback: true,
            min_free: 0,
            chunk: None,
            timeout: None,
            width: None,
        };
        let yes_no = |v: &str| match v {
            "" | "1" | "yes" | "true" | "on" => Some(true),
            "0" | "no" | "false" | "off" => Some(false),
            _ => None,
        };
        for kv in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "key" if !v.is_empty() => r.key_file = PathBuf::from(v),
                "datakey" if !v.is_empty() => r.data_key_file = Some(PathBuf::from(v)),
                "plaintext" => {
                    r.plaintext = yes_no(v).ok_or_else(|| bad("plaintext takes yes or no"))?
                }
                "redundancy" => {
                    if !valid_redundancy(v) {
                        return Err(bad("redundancy must be none, mirror:K, parity or rs:K+M"));
                    }
                    r.redundancy = Some(v.to_string());
                }
                "pool" => {
                    let hex = v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit());
                    if v.is_empty() || (v.len() > 16 && !hex) {
                        return Err(bad("pool takes at most 16 characters or 32 hex digits"));
                    }
                    r.pool = Some(v.to_string());
                }
                "dir" if !v.is_empty() => r.dir = Some(PathBuf::from(v)),
                "fallback" => {
                    r.fallback = yes_no(v).ok_or_else(|| bad("fallback takes yes or no"))?
                }
                "min_free" => {
                    r.min_free = if v.trim() == "0" {
                        0
                    } else {
                        parse_size(v).map_err(|_| bad("min_free takes a size such as 512M"))?
                    }
                }
                "chunk" => {
                    let n = parse_size(v)
                        .ok()
                        .filter(|&n| n <= 64 << 20)
                        .ok_or_else(|| bad("chunk takes a size from 1M to 64M"))?;
                    r.chunk = Some(n);
                }
                "timeout" => {
                    r.timeout = Some(
                        parse_duration(v)
                            .map_err(|_| bad("timeout takes a duration such as 30s"))?,
                    )
                }
                "width" => {
                    r.width = Some(
                        v.parse::<u32>()
                            .ok()
                            .filter(|&n| (1..=64).contains(&n))
                            .ok_or_else(|| bad("width takes a number of servers from 1 to 64"))?,
                    )
                }
                _ => {
                    return Err(bad(
                        "unknown or empty option; known: key, datakey, plaintext, redundancy, pool, dir, fallback, min_free, chunk, timeout, width",
                    ));
                }
            }
        }
        if r.key_file.as_os_str().is_empty() {
            return Err(bad(
                "key=FILE is required: the servers authenticate every client",
            ));
        }
        if r.tiered && !r.fallback {
            return Err(bad(
                "a tiered store needs its local directory: fallback=no is not allowed",
            ));
        }
        Ok(r)
    }

    /// The redundancy to use: as given, else parity over two or more servers.
    pub fn redundancy(&self) -> &str {
        match &self.redundancy {
            Some(r) => r,
            None if self.servers.len() >= 2 => "parity",
            None => "none",
        }
    }
}

/// Whether `v` is a redundancy rmem-client understands (it checks the numbers again).
fn valid_redundancy(v: &str) -> bool {
    let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match v {
        "none" | "parity" | "raid5" | "mirror" => true,
        _ => {
            if let Some(k) = v.strip_prefix("mirror:") {
                num(k)
            } else if let Some(km) = v.strip_prefix("rs:") {
                km.split_once('+').is_some_and(|(k, m)| num(k) && num(m))
            } else {
                false
            }
        }
    }
}

impl Store {
    /// Parses a `CKPT_STORE` value: `dir:PATH` (or a plain path), `rmem://...`, `tiered:...`.
    pub fn parse(spec: &str) -> Result<Store, ConfigError> {
        if spec.starts_with("rmem://") || spec.starts_with("tiered:") {
            return RemoteStore::parse(spec).map(Store::Remote);
        }
        if spec.contains("://") {
            return Err(err(
                "CKPT_STORE",
                spec.to_string(),
                "expected dir:PATH, rmem://HOST:PORT,...?key=FILE or tiered:rmem://...",
            ));
        }
        let path = spec.strip_prefix("dir:").unwrap_or(spec);
        if path.is_empty() {
            return Err(err("CKPT_STORE", spec.to_string(), "empty directory path"));
        }
        Ok(Store::Dir(PathBuf::from(path)))
    }
}

/// The configuration of one checkpointed run.
///
/// Build it with [`Config::from_env`] (the contract documented in the README) or with the
/// builder methods; `store == None` means checkpointing is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) store: Option<Store>,
    pub(crate) interval: Option<Duration>,
    pub(crate) policy: Policy,
    pub(crate) keep: u32,
    pub(crate) restore: RestoreMode,
    pub(crate) log: LogLevel,
    /// `CKPT_TRACKER`: `None` picks the best that works.
    pub(crate) tracker: Option<crate::dirty::TrackerKind>,
    /// Incremental images after a full one before the next is full.
    pub(crate) chain_max: u32,
    /// Percent of the full image's data the chain's incremental data may reach.
    pub(crate) chain_size_pct: u32,
    pub(crate) busy: BusyMode,
    /// Most bytes the buffered policies copy for one checkpoint.
    pub(crate) buffer_max: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: None,
            interval: None,
            policy: Policy::Sequential,
            // As in the paper, at most two image files: between checkpoints the newest and the
            // previous one (a fallback); while one is written, it and the newest.
            keep: 2,
            restore: RestoreMode::Auto,
            log: LogLevel::Info,
            tracker: None,
            chain_max: 8,
            chain_size_pct: 100,
            busy: BusyMode::Wait,
            buffer_max: 4 << 30,
        }
    }
}

/// A configuration value that cannot be used; the message names the variable or setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or builder setting) at fault.
    pub name: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it and what is accepted.
    pub reason: &'static str,
}

impl Config {
    /// A configuration with checkpointing off; enable it with [`Config::dir`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the `CKPT_*` environment variables. Unset variables keep their defaults; an
    /// invalid value is an error naming the variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Like [`Config::from_env`] but reading from `lookup`; used by tests and by the C side.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut cfg = Config::default();
        if let Some(v) = lookup("CKPT_DIR") {
            if v.is_empty() {
                return Err(err("CKPT_DIR", v, "must be a directory path"));
            }
            cfg.store = Some(Store::Dir(PathBuf::from(v)));
        }
        if let Some(v) = lookup("CKPT_STORE").filter(|v| !v.is_empty()) {
            if cfg.store.is_some() {
                return Err(err(
                    "CKPT_STORE",
                    v,
                    "CKPT_DIR is set too: set only one of them (CKPT_DIR=PATH is CKPT_STORE=dir:PATH)",
                ));
            }
            cfg.store = Some(Store::parse(&v)?);
        }
        if let Some(v) = lookup("CKPT_INTERVAL") {
            cfg.interval =
                Some(parse_duration(&v).map_err(|reason| err("CKPT_INTERVAL", v, reason))?);
        }
        if let Some(v) = lookup("CKPT_POLICY") {
            cfg.policy = match Policy::all().into_iter().find(|p| p.name() == v.trim()) {
                Some(p) => p,
                None => {
                    return Err(err(
                        "CKPT_POLICY",
                        v,
                        "expected `sequential`, `incremental`, `forked`, `forked-incremental`, `buffered` or `buffered-incremental`",
                    ));
                }
            };
        }
        if let Some(v) = lookup(crate::dirty::TRACKER_ENV).filter(|v| !v.trim().is_empty()) {
            cfg.tracker = Some(crate::dirty::TrackerKind::parse(&v).map_err(|_| {
                err(
                    "CKPT_TRACKER",
                    v.clone(),
                    "expected `uffd-async` or `mprotect`",
                )
            })?);
        }
        if let Some(v) = lookup("CKPT_CHAIN_MAX") {
            cfg.chain_max = match v.trim().parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(err(
                        "CKPT_CHAIN_MAX",
                        v,
                        "expected a whole number from 1 to 1000",
                    ));
                }
            };
        }
        if let Some(v) = lookup("CKPT_CHAIN_SIZE") {
            cfg.chain_size_pct = match v.trim().trim_end_matches('%').parse::<u32>() {
                Ok(n) if (1..=10000).contains(&n) => n,
                _ => {
                    return Err(err(
                        "CKPT_CHAIN_SIZE",
                        v,
                        "expected a percentage from 1 to 10000",
                    ));
                }
            };
        }
        if let Some(v) = lookup("CKPT_BUSY") {
            cfg.busy = match v.trim() {
                "wait" => BusyMode::Wait,
                "skip" => BusyMode::Skip,
                _ => return Err(err("CKPT_BUSY", v, "expected `wait` or `skip`")),
            };
        }
        if let Some(v) = lookup("CKPT_BUFFER") {
            cfg.buffer_max = parse_size(&v).map_err(|reason| err("CKPT_BUFFER", v, reason))?;
        }
        if let Some(v) = lookup("CKPT_KEEP") {
            cfg.keep = match v.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(err(
                        "CKPT_KEEP",
                        v,
                        "expected a whole number from 1 to 1000",
                    ));
                }
            };
        }
        if let Some(v) = lookup("CKPT_RESTORE") {
            cfg.restore = match v.as_str() {
                "auto" => RestoreMode::Auto,
                "never" => RestoreMode::Never,
                "require" => RestoreMode::Require,
                _ => {
                    return Err(err(
                        "CKPT_RESTORE",
                        v,
                        "expected `auto`, `never` or `require`",
                    ));
                }
            };
        }
        if let Some(v) = lookup("CKPT_LOG") {
            cfg.log = match v.as_str() {
                "off" => LogLevel::Off,
                "info" => LogLevel::Info,
                "debug" => LogLevel::Debug,
                _ => return Err(err("CKPT_LOG", v, "expected `off`, `info` or `debug`")),
            };
        }
        Ok(cfg)
    }

    /// Store checkpoints in this directory (created if missing) and turn checkpointing on.
    pub fn dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = Some(Store::Dir(path.into()));
        self
    }

    /// Store checkpoints where `spec` says (`CKPT_STORE` syntax) and turn checkpointing on.
    pub fn store(mut self, spec: &str) -> Result<Self, ConfigError> {
        self.store = Some(Store::parse(spec)?);
        Ok(self)
    }

    /// Checkpoint every `interval`; `None` means only on [`crate::checkpoint_now`].
    pub fn interval(mut self, interval: Option<Duration>) -> Self {
        self.interval = interval;
        self
    }

    /// The checkpoint policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The dirty-page tracker of the incremental policies (`None`: the best that works).
    pub fn tracker(mut self, kind: Option<crate::dirty::TrackerKind>) -> Self {
        self.tracker = kind;
        self
    }

    /// Incremental images after a full one before the next checkpoint is full (at least 1).
    pub fn chain_max(mut self, n: u32) -> Self {
        self.chain_max = n.max(1);
        self
    }

    /// The next checkpoint is full once the chain's incremental data exceeds `pct` percent of
    /// its full image's.
    pub fn chain_size_percent(mut self, pct: u32) -> Self {
        self.chain_size_pct = pct.max(1);
        self
    }

    /// What a background policy does when the previous checkpoint is still being written.
    pub fn busy(mut self, mode: BusyMode) -> Self {
        self.busy = mode;
        self
    }

    /// Most bytes the buffered policies copy for one checkpoint.
    pub fn buffer_max(mut self, bytes: u64) -> Self {
        self.buffer_max = bytes;
        self
    }

    /// The checkpoint policy in force.
    pub fn checkpoint_policy(&self) -> Policy {
        self.policy
    }

    /// How many committed generations to keep (at least 1).
    pub fn keep(mut self, keep: u32) -> Self {
        self.keep = keep.max(1);
        self
    }

    /// What to do at start when a checkpoint may exist.
    pub fn restore_mode(mut self, mode: RestoreMode) -> Self {
        self.restore = mode;
        self
    }

    /// How much to log on stderr.
    pub fn log(mut self, level: LogLevel) -> Self {
        self.log = level;
        self
    }

    /// The store directory, if checkpointing is on into a local directory.
    pub fn store_dir(&self) -> Option<&Path> {
        match &self.store {
            Some(Store::Dir(d)) => Some(d),
            _ => None,
        }
    }

    /// The store, if checkpointing is on.
    pub fn store_spec(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The timer interval, if any.
    pub fn checkpoint_interval(&self) -> Option<Duration> {
        self.interval
    }
}

fn err(name: &'static str, value: String, reason: &'static str) -> ConfigError {
    ConfigError {
        name,
        value,
        reason,
    }
}

/// Parses a byte count: `512M`, `4G`, `65536` (suffixes K, M, G, T are powers of 1024).
pub(crate) fn parse_size(text: &str) -> Result<u64, &'static str> {
    const HELP: &str = "expected a size such as `512M` or `4G` (at least 1M)";
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| HELP)?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(HELP),
    };
    let bytes = n.checked_mul(1u64 << shift).ok_or(HELP)?;
    if bytes < 1 << 20 {
        return Err(HELP);
    }
    Ok(bytes)
}

/// Parses `500ms`, `30s`, `5m`, `1h` (a whole number and a unit; no unit means seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    const HELP: &str = "expected a whole number with a unit: `500ms`, `30s`, `5m`, `1h`";
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| HELP)?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(HELP),
    }
    .ok_or(HELP)?;
    if ms == 0 {
        return Err("the interval must be greater than zero");
    }
    // Below ~10 ms the program would do nothing but checkpoint.
    if ms < 10 {
        return Err("the interval must be at least 10ms");
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in [
            "",
            "ms",
            "5x",
            "-1s",
            "1.5s",
            "0s",
            "5ms",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn env_contract() {
        let c = cfg(&[
            ("CKPT_DIR", "/tmp/x"),
            ("CKPT_INTERVAL", "250ms"),
            ("CKPT_KEEP", "3"),
            ("CKPT_RESTORE", "require"),
            ("CKPT_LOG", "debug"),
            ("CKPT_POLICY", "sequential"),
        ])
        .unwrap();
        assert_eq!(c.store_dir(), Some(Path::new("/tmp/x")));
        assert_eq!(c.interval, Some(Duration::from_millis(250)));
        assert_eq!(
            (c.keep, c.restore, c.log),
            (3, RestoreMode::Require, LogLevel::Debug)
        );
        let c = cfg(&[
            ("CKPT_POLICY", "forked-incremental"),
            ("CKPT_TRACKER", "mprotect"),
            ("CKPT_CHAIN_MAX", "3"),
            ("CKPT_CHAIN_SIZE", "50%"),
            ("CKPT_BUSY", "skip"),
            ("CKPT_BUFFER", "512M"),
        ])
        .unwrap();
        assert_eq!(c.policy, Policy::ForkedIncremental);
        assert!(c.policy.incremental() && c.policy.forked() && !c.policy.buffered());
        assert_eq!(c.tracker, Some(crate::dirty::TrackerKind::Mprotect));
        assert_eq!((c.chain_max, c.chain_size_pct), (3, 50));
        assert_eq!((c.busy, c.buffer_max), (BusyMode::Skip, 512 << 20));
        for p in Policy::all() {
            assert_eq!(cfg(&[("CKPT_POLICY", p.name())]).unwrap().policy, p);
        }
        let d = cfg(&[]).unwrap();
        assert_eq!(d, Config::default());
        assert_eq!(d.keep, 2);
    }

    #[test]
    fn stores() {
        let c = cfg(&[("CKPT_STORE", "dir:/tmp/y")]).unwrap();
        assert_eq!(c.store_dir(), Some(Path::new("/tmp/y")));
        assert_eq!(
            cfg(&[("CKPT_STORE", "/tmp/z")]).unwrap().store_dir(),
            Some(Path::new("/tmp/z"))
        );
        let c = cfg(&[(
            "CKPT_STORE",
            "rmem://10.0.0.1:7077,h2:7078?key=/k&redundancy=rs:2+1&pool=job&dir=/d&min_free=1G&timeout=5s&datakey=/dk",
        )])
        .unwrap();
        let Some(Store::Remote(r)) = c.store_spec() else {
            panic!("{c:?}")
        };
        assert_eq!(r.servers, ["10.0.0.1:7077", "h2:7078"]);
        assert_eq!(r.key_file, Path::new("/k"));
        assert_eq!(r.redundancy(), "rs:2+1");
        assert_eq!(
            (r.pool.as_deref(), r.dir.as_deref()),
            (Some("job"), Some(Path::new("/d")))
        );
        assert_eq!(
            (r.min_free, r.timeout, r.tiered, r.plaintext, r.fallback),
            (1 << 30, Some(Duration::from_secs(5)), false, false, true)
        );
        assert_eq!(r.data_key_file.as_deref(), Some(Path::new("/dk")));
        assert_eq!(c.store_dir(), None);
        let t = RemoteStore::parse("tiered:rmem://a:1,b:2,c:3?key=/k&plaintext&dir=/l").unwrap();
        assert!(t.tiered && t.plaintext);
        assert_eq!(t.redundancy(), "parity");
        assert_eq!(
            RemoteStore::parse("rmem://a:1?key=/k")
                .unwrap()
                .redundancy(),
            "none"
        );
        for bad in [
            "rmem://a:1",
            "rmem://?key=/k",
            "rmem://a?key=/k",
            "rmem://a:1?key=/k&redundancy=raid6",
            "rmem://a:1?key=/k&colour=blue",
            "rmem://a:1?key=/k&pool=this-name-is-far-too-long",
            "tiered:rmem://a:1?key=/k&fallback=no",
            "tiered:/x",
            "s3://bucket",
            "dir:",
        ] {
            let e = cfg(&[("CKPT_STORE", bad)]).unwrap_err();
            assert_eq!(e.name, "CKPT_STORE", "{bad}");
        }
        let e = cfg(&[("CKPT_STORE", "dir:/a"), ("CKPT_DIR", "/b")]).unwrap_err();
        assert_eq!(e.name, "CKPT_STORE");
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (k, v) in [
            ("CKPT_INTERVAL", "soon"),
            ("CKPT_POLICY", "magic"),
            ("CKPT_TRACKER", "soft-dirty"),
            ("CKPT_CHAIN_MAX", "0"),
            ("CKPT_CHAIN_SIZE", "lots"),
            ("CKPT_BUSY", "maybe"),
            ("CKPT_BUFFER", "12"),
            ("CKPT_KEEP", "0"),
            ("CKPT_RESTORE", "maybe"),
            ("CKPT_LOG", "loud"),
            ("CKPT_DIR", ""),
        ] {
            let e = cfg(&[(k, v)]).unwrap_err();
            assert_eq!(e.name, k);
            assert!(e.to_string().contains(k), "{e}");
        }
    }
}
