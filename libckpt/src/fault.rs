//! Named failure points for tests, compiled in only with the `fault-points` feature.
//!
//! `CKPT_FAULT=name` makes every pass through point `name` fail with `ENOSPC`;
//! `name@N` starts failing at the N-th pass; `name:kill@N` kills the process with SIGKILL at the
//! N-th pass (a crash at an exact place, e.g. in the middle of writing an image). The state is
//! plain atomics so the signal handler can read it, and a restore installs the restarting run's
//! setting rather than the one remembered in the image.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sys::syscall::{self, Errno};

/// A fault setting that can cross a restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spec {
    /// FNV-1a hash of the point's name; 0 when off.
    name: u64,
    kill: bool,
    from: u64,
}

static NAME: AtomicU64 = AtomicU64::new(0);
static KILL: AtomicBool = AtomicBool::new(false);
static FROM: AtomicU64 = AtomicU64::new(0);
static PASSES: AtomicU64 = AtomicU64::new(0);

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The setting `CKPT_FAULT` asks for (off unless the `fault-points` feature is on).
pub fn from_env() -> Spec {
    if !cfg!(feature = "fault-points") {
        return Spec::default();
    }
    let Ok(v) = std::env::var("CKPT_FAULT") else {
        return Spec::default();
    };
    let (spec, from) = match v.split_once('@') {
        Some((s, n)) => (s, n.parse().unwrap_or(1)),
        None => (v.as_str(), 1),
    };
    let (name, kill) = match spec.strip_suffix(":kill") {
        Some(n) => (n, true),
        None => (spec, false),
    };
    Spec {
        name: hash(name),
        kill,
        from,
    }
}

/// Makes `spec` the active setting and restarts the pass count.
pub fn install(spec: Spec) {
    KILL.store(spec.kill, Ordering::Relaxed);
    FROM.store(spec.from, Ordering::Relaxed);
    PASSES.store(0, Ordering::Relaxed);
    NAME.store(spec.name, Ordering::Release);
}

/// A failure point: `Err(ENOSPC)` (or the process killed) when the active setting names it.
#[inline]
pub fn point(name: &str) -> Result<(), Errno> {
    let active = NAME.load(Ordering::Acquire);
    if active == 0 || active != hash(name) {
        return Ok(());
    }
    let pass = PASSES.fetch_add(1, Ordering::Relaxed) + 1;
    if pass < FROM.load(Ordering::Relaxed) {
        return Ok(());
    }
    if KILL.load(Ordering::Relaxed) {
        syscall::raise(libc::SIGKILL);
    }
    Err(Errno(libc::ENOSPC))
}
