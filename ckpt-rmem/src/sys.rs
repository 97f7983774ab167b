//! The few process-level calls the helper needs from libc.
//!
//! # Safety
//!
//! Each wrapper calls one libc function with arguments it owns; `fork` is called while the
//! helper has a single thread (the pool client starts none), so the child may go on running
//! ordinary Rust code.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// Unblocks every signal: a checkpoint starts the helper with all of them blocked.
pub fn unblock_signals() {
    // SAFETY: a zeroed sigset is valid; sigemptyset and sigprocmask only touch it.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, core::ptr::null_mut());
    }
}

/// Dies with SIGKILL when the parent does, and checks the parent is still `ppid` (it may have
/// died before the request was made). Returns false if it is already gone.
pub fn die_with_parent(ppid: i32) -> bool {
    // SAFETY: prctl with integer arguments; getppid has no preconditions.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        libc::getppid() == ppid
    }
}

/// Standard input as a file (the socket a checkpoint writes the image into).
pub fn stdin_file() -> File {
    // SAFETY: descriptor 0 is open (the checkpoint made it the socket) and owned by nobody else
    // in this program.
    unsafe { File::from_raw_fd(0) }
}

/// `flock(file, LOCK_EX)`, waiting.
pub fn lock_exclusive(f: &File) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `fork()`: `Some(0)` in the child, `Some(pid)` in the parent, `None` on failure.
pub fn fork() -> Option<i32> {
    // SAFETY: single-threaded (see the module's Safety section).
    let pid = unsafe { libc::fork() };
    (pid >= 0).then_some(pid)
}

/// Detaches the background child: a session of its own, standard input and output closed,
/// standard error to `log`.
pub fn detach(log: Option<&File>) {
    // SAFETY: setsid, close and dup2 on descriptors of this process.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
        if let Some(l) = log {
            libc::dup2(l.as_raw_fd(), 2);
        }
    }
}

/// `_exit(code)`: no destructors, no buffered output flushed twice after a fork.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: ends the process.
    unsafe { libc::_exit(code) }
}

/// A file owning a duplicate of descriptor `fd` (`None` if `fd` is not open).
pub fn file_of_fd(fd: i32) -> Option<File> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, owned by the returned file alone.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    // SAFETY: `dup` is a fresh descriptor nobody else owns.
    (dup >= 0).then(|| unsafe { File::from_raw_fd(dup) })
}
