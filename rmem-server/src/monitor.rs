//! Automatic revocation: the machine's owner comes back. Two signals, as in the paper's
//! "Memory revocation" section: free memory below a watermark (revoke at once: the owner needs
//! the pages now), and CPU busy above a threshold for a grace period (Condor waits five minutes,
//! since a user may only glance at mail and leave). Lending resumes after the machine has been
//! idle again for the idle grace period.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::server::{Reason, Shared};

/// Settings of the monitor; a `None` signal is not watched.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub min_free: Option<u64>,
    pub busy_threshold: Option<f64>,
    pub busy_grace: Duration,
    pub idle_grace: Duration,
    pub revoke_deadline: Duration,
    pub interval: Duration,
}

/// Errors reading the machine's state.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot parse {0}")]
    Parse(&'static str),
}

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn mem_available() -> Result<u64, MonitorError> {
    let t = std::fs::read_to_string("/proc/meminfo").map_err(|source| MonitorError::Read {
        path: "/proc/meminfo",
        source,
    })?;
    t.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or(MonitorError::Parse("MemAvailable in /proc/meminfo"))
}

/// (busy, total) jiffies from the first line of /proc/stat.
pub fn cpu_times() -> Result<(u64, u64), MonitorError> {
    let t = std::fs::read_to_string("/proc/stat").map_err(|source| MonitorError::Read {
        path: "/proc/stat",
        source,
    })?;
    let line = t.lines().next().ok_or(MonitorError::Parse("/proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return Err(MonitorError::Parse("/proc/stat"));
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4]; // idle + iowait
    Ok((total - idle, total))
}

/// Runs the monitor on its own thread until the server stops.
pub fn spawn(shared: Arc<Shared>, cfg: MonitorConfig) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("rmem-monitor".into())
        .spawn(move || run(shared, cfg))
        .map(|_| ())
}

fn run(sh: Arc<Shared>, cfg: MonitorConfig) {
    let mut prev = cpu_times().ok();
    let mut busy_since: Option<Instant> = None;
    let mut idle_since: Option<Instant> = None;
    while !sh.stop.load(Ordering::SeqCst) {
        std::thread::sleep(cfg.interval);
        let low_mem = match (cfg.min_free, mem_available()) {
            (Some(min), Ok(avail)) => avail < min,
            (Some(_), Err(e)) => {
                tracing::warn!(error = %e, "memory watermark unavailable");
                false
            }
            (None, _) => false,
        };
        let mut busy_now = false;
        if let Some(th) = cfg.busy_threshold {
            if let (Some((b0, t0)), Ok((b1, t1))) = (prev, cpu_times()) {
                let frac = if t1 > t0 {
                    (b1 - b0) as f64 / (t1 - t0) as f64
                } else {
                    0.0
                };
                busy_now = frac >= th;
                prev = Some((b1, t1));
            } else {
                prev = cpu_times().ok();
            }
        }
        let now = Instant::now();
        busy_since = if busy_now {
            busy_since.or(Some(now))
        } else {
            None
        };
        let busy = busy_since.is_some_and(|t| now.duration_since(t) >= cfg.busy_grace);
        if low_mem {
            sh.revoke(cfg.revoke_deadline, Reason::Watermark);
        } else if busy {
            sh.revoke(cfg.revoke_deadline, Reason::Busy);
        }
        // Resume only what the monitor itself revoked; an admin revocation waits for the admin.
        let auto_revoked = matches!(sh.revoked_reason(), Some(Reason::Watermark | Reason::Busy));
        if auto_revoked && !low_mem && !busy_now {
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) >= cfg.idle_grace {
                match sh.resume() {
                    Ok(_) => idle_since = None,
                    Err(e) => tracing::error!(error = %e, "cannot resume lending"),
                }
            }
        } else {
            idle_since = None;
        }
    }
}
