//! Starting a helper program and talking to it from inside a checkpoint: a socket pair, sends
//! that never raise `SIGPIPE`, and `clone(CLONE_VM | CLONE_VFORK)` + `execve`, all as raw
//! system calls.
//!
//! # Safety
//!
//! [`spawn_exec`] runs the child on a stack buffer in the caller's frame: with `CLONE_VFORK`
//! the caller is suspended until the child has called `execve` (or exited), so the buffer, the
//! argument block and the `argv`/`envp` arrays the caller passes stay valid and unchanged for
//! as long as the child uses them. The child shares the caller's memory until `execve`; it
//! only makes raw system calls on its own descriptor table (a copy: no `CLONE_FILES`) and
//! writes one word of the argument block, so it changes nothing the caller relies on. It never
//! touches thread-local state (no `errno`), since it runs on the caller's thread descriptor.
#![allow(unsafe_code)]

use core::ffi::{c_char, c_void};

use super::syscall::{self, Errno, SysResult, syscall6};

/// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`.
pub fn socketpair() -> SysResult<(i32, i32)> {
    let mut fds = [-1i32; 2];
    // SAFETY: `fds` holds the two ints the kernel fills in.
    unsafe {
        syscall6(
            libc::SYS_socketpair,
            libc::AF_UNIX as usize,
            (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as usize,
            0,
            fds.as_mut_ptr() as usize,
            0,
            0,
        )
    }?;
    Ok((fds[0], fds[1]))
}

/// Sends every byte of `parts`, in order, on the stream socket `fd`. `MSG_NOSIGNAL`: a peer that
/// has gone away is `EPIPE`, never a `SIGPIPE` (which would be left pending in a program whose
/// signals are blocked during the checkpoint, and kill it afterwards).
pub fn send_all(fd: i32, parts: &[&[u8]]) -> SysResult<()> {
    let mut iov = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    }; 4];
    let mut n = 0;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        if n == iov.len() {
            return Err(Errno(libc::EINVAL));
        }
        iov[n] = libc::iovec {
            iov_base: p.as_ptr() as *mut c_void,
            iov_len: p.len(),
        };
        n += 1;
    }
    let mut first = 0;
    while first < n {
        // SAFETY: a zeroed msghdr is valid; it points at the iovecs above, which point at the
        // caller's slices, all alive for the call.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = iov[first..].as_mut_ptr();
        msg.msg_iovlen = n - first;
        // SAFETY: the kernel only reads the message and the buffers it points at.
        let sent = match unsafe {
            syscall6(
                libc::SYS_sendmsg,
                fd as usize,
                &msg as *const libc::msghdr as usize,
                libc::MSG_NOSIGNAL as usize,
                0,
                0,
                0,
            )
        } {
            Ok(s) => s,
            Err(Errno(libc::EINTR)) => continue,
            Err(e) => return Err(e),
        };
        let mut left = sent;
        while first < n && left >= iov[first].iov_len {
            left -= iov[first].iov_len;
            first += 1;
        }
        if left > 0 {
            // A partial send inside this iovec: move its start on.
            iov[first].iov_base = (iov[first].iov_base as usize + left) as *mut c_void;
            iov[first].iov_len -= left;
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the peer closes; returns the bytes read.
pub fn recv_full(fd: i32, buf: &mut [u8]) -> SysResult<usize> {
    let mut at = 0;
    while at < buf.len() {
        match syscall::read(fd, &mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// `shutdown(fd, SHUT_WR)`: the peer reads end-of-file after what was sent.
pub fn shutdown_write(fd: i32) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe {
        syscall6(
            libc::SYS_shutdown,
            fd as usize,
            libc::SHUT_WR as usize,
            0,
            0,
            0,
            0,
        )
    }
    .map(drop)
}

/// What the child of [`spawn_exec`] needs, and where it reports an `execve` failure.
#[repr(C)]
struct ExecArgs {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    stdin_fd: i32,
    /// Set by the child when `execve` failed (the positive errno).
    failed: i32,
}

/// Bytes of the child's stack: it only makes a handful of system calls.
const CHILD_STACK: usize = 16 << 10;

/// Starts program `path` with `argv` and `envp` (NULL-terminated arrays of NUL-terminated
/// strings) in a new process whose standard input is `stdin_fd`, whose standard output is the
/// caller's standard error, and which has no other descriptor. Returns its pid once it runs the
/// new program. Its exit signal is none: only a `wait4` with `__WALL` reaps it, so the
/// program's own `wait` and `SIGCHLD` handler never see it. Async-signal-safe.
///
/// The new program starts with the caller's signal mask (inside a checkpoint: everything
/// blocked) and ignored signals; it must set them up itself.
///
/// # Safety
/// `path`, `argv` and `envp` must be valid as described, and stay so until this returns.
pub unsafe fn spawn_exec(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    stdin_fd: i32,
) -> SysResult<i32> {
    #[repr(C, align(16))]
    struct Stack([u8; CHILD_STACK]);
    let mut stack = Stack([0; CHILD_STACK]);
    let mut args = ExecArgs {
        path,
        argv,
        envp,
        stdin_fd,
        failed: 0,
    };
    let top = (stack.0.as_mut_ptr() as usize + CHILD_STACK) & !15;
    // SAFETY: see the module's Safety section: the caller is suspended until the child execs
    // or exits, so the stack and `args` outlive the child's use of them.
    let pid = unsafe {
        syscall::spawn(
            libc::CLONE_VM | libc::CLONE_VFORK,
            top,
            exec_child,
            &mut args as *mut ExecArgs as *mut c_void,
        )
    }?;
    // SAFETY: the child has exec'd or exited; nothing else writes `failed` now. Read through a
    // volatile load: the compiler cannot see the child's write.
    let failed = unsafe { core::ptr::read_volatile(&args.failed) };
    if failed != 0 {
        let _ = syscall::wait_child(pid, libc::__WALL);
        return Err(Errno(failed));
    }
    Ok(pid)
}

/// The child of [`spawn_exec`]: sets up descriptors 0–2 and executes the program.
extern "C" fn exec_child(arg: *mut c_void) -> i32 {
    // SAFETY: `arg` is the ExecArgs on the suspended caller's frame.
    let a = unsafe { &mut *(arg as *mut ExecArgs) };
    let fail = |a: &mut ExecArgs, e: Errno| -> i32 {
        // SAFETY: the caller reads it only after we are gone (vfork).
        unsafe { core::ptr::write_volatile(&mut a.failed, e.0.max(1)) };
        // SAFETY: ends this process only (no CLONE_THREAD): `exit`, not `exit_group`, so that
        // nothing of the shared address space's other users is touched.
        let _ = unsafe { syscall6(libc::SYS_exit, 127, 0, 0, 0, 0, 0) };
        127
    };
    if a.stdin_fd != 0
        && let Err(e) = syscall::dup3(a.stdin_fd, 0, 0)
    {
        return fail(a, e);
    }
    if a.stdin_fd == 0 {
        // Keep it across execve.
        let _ = syscall::fcntl(0, libc::F_SETFD, 0);
    }
    if let Err(e) = syscall::dup3(2, 1, 0) {
        return fail(a, e);
    }
    // SAFETY: close_range only affects this process's own (copied) descriptor table.
    let _ = unsafe { syscall6(libc::SYS_close_range, 3, u32::MAX as usize, 0, 0, 0, 0) };
    // SAFETY: path, argv and envp are valid per spawn_exec's contract.
    let r = unsafe {
        syscall6(
            libc::SYS_execve,
            a.path as usize,
            a.argv as usize,
            a.envp as usize,
            0,
            0,
            0,
        )
    };
    match r {
        Ok(_) => 0,
        Err(e) => fail(a, e),
    }
}
