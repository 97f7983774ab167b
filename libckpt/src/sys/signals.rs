//! The checkpoint timer (a kernel POSIX timer aimed at the main thread) and signal state capture.
//!
//! # Safety
//!
//! Timers are created with raw system calls so that no glibc helper thread is ever involved.
//! Handlers are installed through `libc::sigaction` so glibc supplies its `rt_sigreturn`
//! restorer; the saved/restored dispositions use the kernel structure directly and are put back
//! exactly as the kernel reported them.
#![allow(unsafe_code)]

use super::syscall::{self, Errno, KernelSigaction, SysResult};

/// The signal the checkpoint timer raises: a real-time signal near the top of the range, which
/// glibc does not reserve and applications rarely use.
pub fn checkpoint_signal() -> i32 {
    libc::SIGRTMAX() - 2
}

#[repr(C)]
struct KernelSigevent {
    value: usize,
    signo: i32,
    notify: i32,
    tid: i32,
    pad: [i32; 11],
}

#[repr(C)]
struct KernelItimerspec {
    interval: libc::timespec,
    value: libc::timespec,
}

/// A kernel POSIX timer id (not owned by glibc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerId(i32);

/// Creates a CLOCK_MONOTONIC timer that sends `sig` to thread `tid` when it expires.
pub fn timer_create(sig: i32, tid: i32) -> SysResult<TimerId> {
    let sev = KernelSigevent {
        value: 0,
        signo: sig,
        notify: libc::SIGEV_THREAD_ID,
        tid,
        pad: [0; 11],
    };
    let mut id: i32 = -1;
    // SAFETY: the kernel reads one sigevent and writes one timer id.
    unsafe {
        syscall::syscall6(
            libc::SYS_timer_create,
            libc::CLOCK_MONOTONIC as usize,
            &sev as *const KernelSigevent as usize,
            &mut id as *mut i32 as usize,
            0,
            0,
            0,
        )
    }?;
    Ok(TimerId(id))
}

/// Arms `timer` to fire once after `ns` nanoseconds (0 disarms it).
pub fn timer_arm(timer: TimerId, ns: u64) -> SysResult<()> {
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let spec = KernelItimerspec {
        interval: zero,
        value: libc::timespec {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_nsec: (ns % 1_000_000_000) as i64,
        },
    };
    // SAFETY: the kernel reads one itimerspec; no old value is requested.
    unsafe {
        syscall::syscall6(
            libc::SYS_timer_settime,
            timer.0 as usize,
            0,
            &spec as *const KernelItimerspec as usize,
            0,
            0,
            0,
        )
    }
    .map(drop)
}

/// Deletes `timer`.
pub fn timer_delete(timer: TimerId) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { syscall::syscall6(libc::SYS_timer_delete, timer.0 as usize, 0, 0, 0, 0, 0) }.map(drop)
}

/// The checkpoint handler's signature.
pub type Handler = extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `sig` with every other signal blocked while it runs (so no
/// application handler changes memory in the middle of a capture) and `SA_RESTART`.
/// Fails with `EBUSY` if the application already handles `sig`.
pub fn install_handler(sig: i32, handler: Handler) -> SysResult<()> {
    // SAFETY: an all-zero sigaction is valid plain data.
    let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
    // SAFETY: queries only.
    if unsafe { libc::sigaction(sig, core::ptr::null(), &mut old) } != 0 {
        return Err(Errno(libc::EINVAL));
    }
    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != handler as usize {
        return Err(Errno(libc::EBUSY));
    }
    // SAFETY: an all-zero sigaction is valid plain data.
    let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
    act.sa_sigaction = handler as usize;
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: sa_mask is a valid sigset_t owned by `act`.
    unsafe { libc::sigfillset(&mut act.sa_mask) };
    // SAFETY: `handler` is an extern "C" function with the SA_SIGINFO signature; glibc adds its
    // rt_sigreturn restorer.
    if unsafe { libc::sigaction(sig, &act, core::ptr::null_mut()) } != 0 {
        return Err(Errno(libc::EINVAL));
    }
    Ok(())
}

/// Puts `sig` back to its default disposition.
pub fn uninstall_handler(sig: i32) {
    let dfl = KernelSigaction::default();
    // SAFETY: SIG_DFL needs no handler.
    let _ = unsafe { syscall::sigaction(sig, Some(&dfl), None) };
}

/// The kernel's bit for signal `sig` in a 64-bit set.
pub fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

/// Signals whose dispositions are saved and restored: all but SIGKILL and SIGSTOP.
pub fn restorable_signals() -> impl Iterator<Item = i32> {
    (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
}

/// Reads the disposition of `sig`.
pub fn get_action(sig: i32) -> SysResult<KernelSigaction> {
    let mut a = KernelSigaction::default();
    // SAFETY: query only.
    unsafe { syscall::sigaction(sig, None, Some(&mut a)) }?;
    Ok(a)
}

/// Reinstalls a disposition saved by [`get_action`] in the same executable.
///
/// # Safety
/// The handler and restorer addresses must be valid in this process, which holds when the
/// memory was restored from a checkpoint of the same binary and libraries.
pub unsafe fn set_action(sig: i32, a: &KernelSigaction) -> SysResult<()> {
    // SAFETY: forwarded to the caller.
    unsafe { syscall::sigaction(sig, Some(a), None) }
}

/// The alternate signal stack.
pub fn get_altstack() -> SysResult<libc::stack_t> {
    let mut s = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: query only.
    unsafe { syscall::sigaltstack(None, Some(&mut s)) }?;
    Ok(s)
}

/// Re-establishes an alternate signal stack saved by [`get_altstack`].
///
/// # Safety
/// The stack memory must be mapped (it is, after a restore of the same memory map).
pub unsafe fn set_altstack(s: &libc::stack_t) -> SysResult<()> {
    let mut s = *s;
    // SS_ONSTACK is a state the kernel reports, not a flag it accepts.
    s.ss_flags &= !libc::SS_ONSTACK;
    // SAFETY: forwarded to the caller.
    unsafe { syscall::sigaltstack(Some(&s), None) }
}
