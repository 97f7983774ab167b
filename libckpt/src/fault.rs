//! Named failure points for tests (`CKPT_FAULT=name` or `name:kill`), compiled in only with the
//! `fault-points` feature.

use crate::sys::syscall::Errno;

#[cfg(feature = "fault-points")]
mod imp {
    use std::sync::OnceLock;

    use crate::sys::syscall::{self, Errno};

    static FAULT: OnceLock<Option<(String, bool)>> = OnceLock::new();

    /// Reads `CKPT_FAULT` once, in ordinary code (the signal handler only reads the result).
    pub fn arm() {
        FAULT.get_or_init(|| {
            let v = std::env::var("CKPT_FAULT").ok()?;
            Some(match v.strip_suffix(":kill") {
                Some(name) => (name.to_string(), true),
                None => (v, false),
            })
        });
    }

    pub fn point(name: &str) -> Result<(), Errno> {
        match FAULT.get() {
            Some(Some((n, kill))) if n == name => {
                if *kill {
                    syscall::raise(libc::SIGKILL);
                }
                Err(Errno(libc::ENOSPC))
            }
            _ => Ok(()),
        }
    }
}

/// Prepares the failure points from the environment.
pub fn arm() {
    #[cfg(feature = "fault-points")]
    imp::arm();
}

/// A failure point: `Err(ENOSPC)` (or the process killed) when `CKPT_FAULT` names it.
#[inline]
pub fn point(name: &str) -> Result<(), Errno> {
    #[cfg(feature = "fault-points")]
    return imp::point(name);
    #[cfg(not(feature = "fault-points"))]
    {
        let _ = name;
        Ok(())
    }
}
