//! Process-level calls that need libc: personality, environment, re-exec.
//!
//! # Safety
//!
//! These run in ordinary code at start-up (before any checkpoint), on the main thread, before
//! the program has started threads of its own, which is when glibc's environment functions are
//! safe to call.
#![allow(unsafe_code)]

use std::ffi::CString;

use super::syscall::Errno;

/// The current personality flags.
pub fn personality_get() -> u32 {
    // SAFETY: 0xffffffff queries without changing.
    unsafe { libc::personality(0xffff_ffff) as u32 }
}

/// Sets the personality flags.
pub fn personality_set(p: u32) -> Result<(), Errno> {
    // SAFETY: personality only changes flags applied at the next exec.
    if unsafe { libc::personality(p as libc::c_ulong) } == -1 {
        Err(Errno(libc::EINVAL))
    } else {
        Ok(())
    }
}

/// `setenv(name, value, 1)`.
pub fn set_env(name: &str, value: &str) {
    let (n, v) = (
        CString::new(name).expect("no NUL"),
        CString::new(value).expect("no NUL"),
    );
    // SAFETY: single-threaded start-up (see module docs); the strings are NUL-terminated.
    unsafe { libc::setenv(n.as_ptr(), v.as_ptr(), 1) };
}

/// `unsetenv(name)`.
pub fn unset_env(name: &str) {
    let n = CString::new(name).expect("no NUL");
    // SAFETY: as for set_env.
    unsafe { libc::unsetenv(n.as_ptr()) };
}

/// Replaces the process with `/proc/self/exe` and `args`, keeping the environment. Returns
/// only on failure.
pub fn reexec(args: &[CString]) -> std::io::Error {
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(core::ptr::null());
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings that outlive the call;
    // `environ` is glibc's current environment.
    unsafe {
        unsafe extern "C" {
            static environ: *const *const libc::c_char;
        }
        libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), environ);
    }
    std::io::Error::last_os_error()
}

/// The start of the program break area (`start_brk`, field 47 of `/proc/self/stat`).
/// `/proc/self/maps` cannot tell it reliably: the kernel labels `[heap]` every mapping that
/// touches the break area, including one that ends where it starts. Allocation-free.
pub fn start_brk() -> Option<usize> {
    let mut buf = [0u8; 1024];
    let n = super::syscall::read_file(b"/proc/self/stat\0", &mut buf).ok()?;
    let text = &buf[..n];
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let after = text.iter().rposition(|&b| b == b')')? + 2;
    let field = text.get(after..)?.split(|&b| b == b' ').nth(47 - 3)?;
    crate::text::parse_dec(field).map(|v| v as usize)
}
