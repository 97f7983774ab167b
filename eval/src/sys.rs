//! The few system calls std does not offer: waiting for a child without reaping it (so its
//! `/proc/PID/schedstat` can still be read), its rusage, `kill`/`killpg`, `setns` between fork
//! and exec, and close-on-exec for inherited descriptors.
//!
//! # Safety
//!
//! Every call passes either no pointer or a pointer to a live local the kernel writes into; the
//! pids passed are this process's own unreaped children (or their process groups). The
//! `pre_exec` hook calls only `setns(2)`, which is async-signal-safe, on a descriptor the
//! parent keeps open until the child has been spawned.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};

/// SIGKILL to `pid` and to its process group (the example and any writer process it forked).
pub fn kill_tree(pid: u32) {
    // SAFETY: no pointers; `pid` is our unreaped child, spawned as a process-group leader.
    unsafe {
        libc::killpg(pid as i32, libc::SIGKILL);
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    // SAFETY: no pointers; `pid` is our unreaped child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
}

/// Whether `child` has exited, without reaping it; `Ok(false)` while it runs.
pub fn exited(child: &Child) -> io::Result<bool> {
    loop {
        // SAFETY: all-zero is a valid `siginfo_t`; the kernel writes into this local.
        let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
        // SAFETY: `info` is a live local; `child` is our unreaped child.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        if r == 0 {
            // SAFETY: waitid filled `info` (si_pid is 0 when the child has not exited).
            return Ok(unsafe { info.si_pid() } != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps `child` with `wait4`: its exit status and the user + system CPU seconds it and the
/// children it waited for used.
pub fn reap(child: &Child) -> io::Result<(ExitStatus, f64)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: all-zero is a valid `rusage` (plain integers).
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are live locals the kernel writes; `child` is our unreaped
        // child (std reaps it only when asked to wait).
        let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        ExitStatus::from_raw(status),
        secs(ru.ru_utime) + secs(ru.ru_stime),
    ))
}

/// Makes the child of `cmd` enter the network namespace open at `netns` before it executes.
/// The caller keeps `netns` open until `cmd` has been spawned.
pub fn enter_netns_on_exec(cmd: &mut Command, netns: RawFd) {
    // SAFETY: the hook runs between fork and exec and calls only setns(2), async-signal-safe;
    // it allocates nothing. `netns` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Marks every inherited descriptor above stderr close-on-exec, so the checkpointed children
/// hold only fds 0-2 (the checkpointer refuses pipes; cargo may pass a jobserver pipe).
pub fn cloexec_inherited() -> io::Result<()> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD take no pointers; a descriptor closed since it was listed
        // (the read_dir handle itself) fails with EBADF and is skipped.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}
