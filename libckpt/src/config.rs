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

/// How a checkpoint is taken (`CKPT_POLICY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Stop the program, save every saved page, resume (the paper's "sequential").
    #[default]
    Sequential,
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

/// The configuration of one checkpointed run.
///
/// Build it with [`Config::from_env`] (the contract documented in the README) or with the
/// builder methods; `store_dir == None` means checkpointing is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) store_dir: Option<PathBuf>,
    pub(crate) interval: Option<Duration>,
    pub(crate) policy: Policy,
    pub(crate) keep: u32,
    pub(crate) restore: RestoreMode,
    pub(crate) log: LogLevel,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store_dir: None,
            interval: None,
            policy: Policy::Sequential,
            // As in the paper, at most two image files: between checkpoints the newest and the
            // previous one (a fallback); while one is written, it and the newest.
            keep: 2,
            restore: RestoreMode::Auto,
            log: LogLevel::Info,
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
            cfg.store_dir = Some(PathBuf::from(v));
        }
        if let Some(v) = lookup("CKPT_INTERVAL") {
            cfg.interval =
                Some(parse_duration(&v).map_err(|reason| err("CKPT_INTERVAL", v, reason))?);
        }
        if let Some(v) = lookup("CKPT_POLICY") {
            cfg.policy = match v.as_str() {
                "sequential" => Policy::Sequential,
                _ => return Err(err("CKPT_POLICY", v, "expected `sequential`")),
            };
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
        self.store_dir = Some(path.into());
        self
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

    /// The store directory, if checkpointing is on.
    pub fn store_dir(&self) -> Option<&Path> {
        self.store_dir.as_deref()
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
        let d = cfg(&[]).unwrap();
        assert_eq!(d, Config::default());
        assert_eq!(d.keep, 2);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (k, v) in [
            ("CKPT_INTERVAL", "soon"),
            ("CKPT_POLICY", "magic"),
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
