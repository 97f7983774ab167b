//! Named failure points for tests, compiled in only with the `fault-points` feature.
//!
//! `CKPT_FAULT=name` makes every pass through point `name` fail with `ENOSPC`;
//! `name@N` starts failing at the N-th pass; `name:kill@N` kills the process with SIGKILL at the
//! N-th pass only (a crash at an exact place, e.g. in the middle of writing an image; in a
//! background writer process only that writer dies, and later passes go on). The state is
//! plain atomics so the signal handler can read it; the pass count lives in memory shared with
//! the writer processes, so that their passes count too. A restore installs the restarting
//! run's setting rather than the one remembered in the image.
//!
//! # Safety
//!
//! The shared pass counter is one leaked, zero-filled shared page holding an `AtomicU64`: it is
//! never unmapped, and only reached through atomic operations.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

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
/// Passes counted when the shared page could not be mapped.
static LOCAL_PASSES: AtomicU64 = AtomicU64::new(0);
/// The pass count, in a page shared with writer processes (mapped by the first `install`).
static PASSES: AtomicPtr<AtomicU64> = AtomicPtr::new(core::ptr::null_mut());

fn passes() -> &'static AtomicU64 {
    let p = PASSES.load(Ordering::Acquire);
    if p.is_null() {
        &LOCAL_PASSES
    } else {
        // SAFETY: a leaked shared mapping of at least one page, zero-initialised, aligned.
        unsafe { &*p }
    }
}

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
    if spec.name != 0
        && PASSES.load(Ordering::Acquire).is_null()
        && let Ok(m) = crate::sys::mem::Mapping::shared(8)
    {
        PASSES.store(m.leak().0 as *mut AtomicU64, Ordering::Release);
    }
    passes().store(0, Ordering::Relaxed);
    NAME.store(spec.name, Ordering::Release);
}

/// A failure point: `Err(ENOSPC)` (or the process killed) when the active setting names it.
#[inline]
pub fn point(name: &str) -> Result<(), Errno> {
    let active = NAME.load(Ordering::Acquire);
    if active == 0 || active != hash(name) {
        return Ok(());
    }
    let pass = passes().fetch_add(1, Ordering::Relaxed) + 1;
    let from = FROM.load(Ordering::Relaxed);
    if pass < from {
        return Ok(());
    }
    if KILL.load(Ordering::Relaxed) {
        if pass > from {
            return Ok(());
        }
        syscall::raise(libc::SIGKILL);
    }
    Err(Errno(libc::ENOSPC))
}
