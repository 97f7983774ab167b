//! Functions of the C library that `ckpt` replaces for the whole program (the executable's or a
//! preloaded library's definition wins over the C library's at link and load time).
//!
//! # Safety
//!
//! `mremap` keeps the C function's contract: it forwards its arguments unchanged to the system
//! call after making tracked pages in the old range writable, and reports failure the C way
//! (`MAP_FAILED` and `errno`). It is declared with five fixed arguments; on x86_64 a variadic
//! caller passes the optional fifth one in the same register, and it is read only when
//! `MREMAP_FIXED` says it was passed.
#![allow(unsafe_code)]

use core::ffi::{c_int, c_void};

use super::syscall;

/// `mremap(2)`, as the C library's, except that pages the `mprotect` dirty tracker protected
/// become writable (and count as written) first: the kernel refuses to remap a range whose
/// pages have different protections, which that tracker's page-by-page protection creates.
///
/// # Safety
/// As the C function: the caller owns the mapping it remaps.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_size: usize,
    new_size: usize,
    flags: c_int,
    new_address: *mut c_void,
) -> *mut c_void {
    super::dirty::before_remap(old as usize, old_size);
    let target = if flags & libc::MREMAP_FIXED != 0 {
        new_address as usize
    } else {
        0
    };
    // SAFETY: the arguments are the caller's, forwarded unchanged.
    let r = unsafe {
        syscall::syscall6(
            libc::SYS_mremap,
            old as usize,
            old_size,
            new_size,
            flags as usize,
            target,
            0,
        )
    };
    match r {
        Ok(addr) => addr as *mut c_void,
        Err(e) => {
            // SAFETY: this thread's errno slot.
            unsafe { *libc::__errno_location() = e.0 };
            libc::MAP_FAILED
        }
    }
}
