//! A per-thread pool of large byte buffers, so that shards read or coded at gigabytes per second
//! do not cost a fresh allocation each: for megabyte buffers the allocator maps and later trims
//! memory, and every reuse then pays page faults and zeroing.
//!
//! Per thread, not behind a lock: a forked child inherits its thread's pool as is and can never
//! find it locked by a thread that does not exist in the child.

use std::cell::RefCell;

/// Buffers smaller than this are not worth keeping.
const MIN_KEEP: usize = 64 << 10;
/// Bytes of buffer capacity kept per thread at most.
const MAX_KEPT: usize = 64 << 20;

thread_local! {
    static POOL: RefCell<(Vec<Vec<u8>>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

/// A buffer of exactly `len` bytes. Its contents are unspecified (old data): callers overwrite it.
pub fn take(len: usize) -> Vec<u8> {
    let reused = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.0.iter().position(|b| b.capacity() >= len)?;
        let b = p.0.swap_remove(i);
        p.1 -= b.capacity();
        Some(b)
    });
    match reused {
        Some(mut b) => {
            // Shrinking keeps the bytes; growing (within capacity) zero-fills only the new tail.
            b.resize(len, 0);
            b
        }
        None => vec![0u8; len],
    }
}

/// A zero-filled buffer of `len` bytes.
pub fn take_zeroed(len: usize) -> Vec<u8> {
    let mut b = take(len);
    b.fill(0);
    b
}

/// Returns a buffer for reuse.
pub fn give(b: Vec<u8>) {
    let cap = b.capacity();
    if cap < MIN_KEEP {
        return;
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.1 + cap <= MAX_KEPT {
            p.1 += cap;
            p.0.push(b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_sizes() {
        let b = take(1 << 20);
        assert_eq!(b.len(), 1 << 20);
        let p = b.as_ptr();
        give(b);
        let c = take(100_000);
        assert_eq!(c.len(), 100_000);
        assert_eq!(c.as_ptr(), p, "the kept buffer is reused");
        let z = take_zeroed(5000);
        assert!(z.iter().all(|&x| x == 0));
    }
}
