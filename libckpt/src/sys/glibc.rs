//! glibc state that mirrors kernel state: the thread id cached in the thread descriptor, and
//! the restartable-sequences (rseq) area registered with the kernel.
//!
//! # Safety
//!
//! The thread descriptor is found at the thread pointer; it is read only within its first 2 KiB
//! and never past the end of the mapping that holds it, and written only at the offset proven to
//! hold the kernel thread id. rseq registration uses glibc's exported `__rseq_offset`/`__rseq_size`.
#![allow(unsafe_code)]

use super::syscall;

/// How far into the thread descriptor the tid may be looked for (glibc keeps it at 0x2d0 on
/// x86_64; `struct pthread` is about 2.3 KiB).
const DESCRIPTOR_SCAN: usize = 2048;
/// The signature glibc registers rseq areas with on x86.
pub const RSEQ_SIG: u32 = 0x5305_3053;
const RSEQ_FLAG_UNREGISTER: i32 = 1;

/// How many bytes from `addr` are readable in the mapping that holds it (0 if none). glibc puts
/// a thread's descriptor at the very end of its stack mapping, so a fixed-size scan could run
/// off it.
fn readable_from(addr: usize) -> usize {
    let Ok(text) = std::fs::read("/proc/self/maps") else {
        return 0;
    };
    super::maps::parse(&text)
        .flatten()
        .find(|m| (m.start..m.end).contains(&addr) && m.prot & libc::PROT_READ != 0)
        .map_or(0, |m| m.end - addr)
}

fn tid_candidates(tp: usize, tid: i32) -> Vec<usize> {
    let limit = DESCRIPTOR_SCAN.min(readable_from(tp));
    (0..limit / 4)
        .map(|i| i * 4)
        // SAFETY: the loads stay inside the readable mapping that holds the thread pointer
        // (`limit`), are aligned, and read plain integers.
        .filter(|&off| unsafe { core::ptr::read_volatile((tp + off) as *const i32) } == tid)
        .collect()
}

/// Finds where glibc caches the kernel thread id in the thread descriptor, so that a restored
/// process can put its new tid there (glibc's `pthread_kill`, `raise` and mutex owner checks
/// read it). Returns `None` when no single offset can be proven.
pub fn find_tid_offset() -> Option<usize> {
    let main = tid_candidates(syscall::get_fs_base(), syscall::gettid());
    if main.len() == 1 {
        return main.first().copied();
    }
    // Several words happen to equal the tid: keep those that hold the tid in another thread too.
    let other = std::thread::spawn(|| tid_candidates(syscall::get_fs_base(), syscall::gettid()))
        .join()
        .ok()?;
    let both: Vec<usize> = main.into_iter().filter(|o| other.contains(o)).collect();
    (both.len() == 1).then(|| both[0])
}

/// Writes the current thread's kernel tid at `offset` of the thread descriptor.
///
/// # Safety
/// `offset` must come from [`find_tid_offset`] in the same binary and libc.
pub unsafe fn patch_tid(offset: usize) {
    let tp = syscall::get_fs_base();
    // SAFETY: the caller guarantees `offset` is glibc's tid field inside the descriptor.
    unsafe { core::ptr::write_volatile((tp + offset) as *mut i32, syscall::gettid()) };
}

/// The rseq registration glibc made for the main thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rseq {
    /// Offset of the area from the thread pointer.
    pub offset: isize,
    /// Registered length candidates: glibc's `__rseq_size` and the full area size.
    pub size: u32,
}

fn lookup(name: &[u8]) -> Option<usize> {
    // SAFETY: `name` is NUL-terminated; RTLD_DEFAULT searches the global scope.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr() as *const libc::c_char) };
    (!p.is_null()).then_some(p as usize)
}

/// glibc's rseq registration, if it made one (glibc ≥ 2.35 and not disabled by tunable).
pub fn rseq_info() -> Option<Rseq> {
    let off = lookup(b"__rseq_offset\0")?;
    let size = lookup(b"__rseq_size\0")?;
    // SAFETY: glibc exports these as `const ptrdiff_t` and `const unsigned int`.
    let (offset, size) = unsafe { (*(off as *const isize), *(size as *const u32)) };
    (size > 0).then_some(Rseq { offset, size })
}

/// The lengths the kernel may have recorded for the registration: glibc registers
/// `max(__rseq_size, 32)` bytes in every release so far.
fn lengths(r: Rseq) -> [u32; 3] {
    [r.size.max(32), r.size, 32]
}

/// Unregisters the rseq area at `tp + offset`; returns the length that was registered, if any.
///
/// Must run before memory is overwritten: the kernel writes the current CPU into the area on
/// every preemption, which would corrupt restored memory if the area moved.
pub fn rseq_unregister(r: Rseq, tp: usize) -> Option<u32> {
    let area = tp.wrapping_add_signed(r.offset);
    lengths(r).into_iter().find(|&len| {
        // SAFETY: unregistering only stops kernel writes to the area.
        unsafe { syscall::rseq(area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) }.is_ok()
    })
}

/// Registers the rseq area of the (restored) thread at `tp + offset` with length `len`.
///
/// # Safety
/// The area must be glibc's rseq area in this thread's restored descriptor.
pub unsafe fn rseq_register(r: Rseq, tp: usize, len: u32) -> bool {
    let area = tp.wrapping_add_signed(r.offset);
    // SAFETY: forwarded to the caller; the area lives as long as the thread.
    unsafe { syscall::rseq(area, len, 0, RSEQ_SIG) }.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cached_tid() {
        let off = find_tid_offset().expect("glibc caches the tid");
        // pthread_self() is the descriptor address on x86_64 glibc.
        // SAFETY: reading our own descriptor at the proven offset.
        let cached = unsafe { *((libc::pthread_self() as usize + off) as *const i32) };
        assert_eq!(cached, syscall::gettid());
    }

    #[test]
    fn rseq_round_trip() {
        let Some(r) = rseq_info() else {
            eprintln!("glibc does not register rseq here; skipping");
            return;
        };
        // Run on a thread of our own so the test harness's threads are not disturbed.
        std::thread::spawn(move || {
            let tp = syscall::get_fs_base();
            let len = rseq_unregister(r, tp).expect("glibc registered the area");
            // SAFETY: re-registering the same area of this thread.
            assert!(unsafe { rseq_register(r, tp, len) });
        })
        .join()
        .unwrap();
    }
}
