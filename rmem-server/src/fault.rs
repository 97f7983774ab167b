//! Named failure points (STYLE §9), compiled in only with the `fault-points` feature, so tests
//! can make a server fail at an exact place: `RMEM_FAULT=name:N` fires on the Nth time the point
//! is reached (N = 1 by default). Points:
//!
//! * `crash-at-put` — the process aborts on receiving the Nth PUT, before storing it;
//! * `crash-at-commit` — aborts after storing the Nth manifest, before answering it;
//! * `corrupt-get` — the Nth DATA reply goes out with one byte flipped under a valid-looking
//!   header (the client's frame checksum must catch it);
//! * `stall-get` — from the Nth GET on, the connection stops answering (a hung peer).

#[cfg(feature = "fault-points")]
mod imp {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    static SPEC: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNTS: OnceLock<Mutex<HashMap<String, AtomicU64>>> = OnceLock::new();

    fn spec() -> &'static Option<(String, u64)> {
        SPEC.get_or_init(|| {
            let v = std::env::var("RMEM_FAULT").ok()?;
            let (name, n) = match v.split_once(':') {
                Some((a, b)) => (a.to_string(), b.parse().unwrap_or(1)),
                None => (v, 1),
            };
            tracing::warn!(point = %name, n, "fault point armed");
            Some((name, n))
        })
    }

    /// True when point `name` fires now.
    pub fn hit(name: &str) -> bool {
        let Some((armed, n)) = spec() else {
            return false;
        };
        if armed != name {
            return false;
        }
        let counts = COUNTS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        let k = c
            .entry(name.to_string())
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        let fire = if name == "stall-get" {
            k >= *n
        } else {
            k == *n
        };
        if fire {
            tracing::warn!(point = name, count = k, "fault point fires");
        }
        fire
    }
}

#[cfg(feature = "fault-points")]
pub use imp::hit;

/// Without the feature every point is inert and compiles to nothing.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub fn hit(_name: &str) -> bool {
    false
}
