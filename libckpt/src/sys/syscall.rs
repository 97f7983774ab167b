//! Raw Linux system calls that never touch `errno` or any libc state.
//!
//! # Safety
//!
//! The checkpoint signal handler and the restorer run while the process's own memory is either
//! in an arbitrary state (a handler interrupted `malloc`) or being overwritten (restore). libc
//! wrappers write `errno` in thread-local memory and may check stack canaries kept there, so these
//! paths issue system calls directly. The wrappers below are `unsafe` exactly where the kernel
//! reads or writes memory through a pointer argument; callers guarantee those pointers are valid.
#![allow(unsafe_code)]

use core::arch::asm;

/// A failed system call: the positive `errno` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The `std::io::Error` for this errno.
    pub fn io(self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.0)
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // strerror is not async-signal-safe; name the common ones and print the number otherwise.
        let name = match self.0 {
            libc::EPERM => "operation not permitted",
            libc::ENOENT => "no such file or directory",
            libc::EINTR => "interrupted",
            libc::EIO => "input/output error",
            libc::EBADF => "bad file descriptor",
            libc::ENOMEM => "out of memory",
            libc::EACCES => "permission denied",
            libc::EFAULT => "bad address",
            libc::EEXIST => "file exists",
            libc::EINVAL => "invalid argument",
            libc::ENOSPC => "no space left on device",
            libc::EROFS => "read-only file system",
            libc::EDQUOT => "disk quota exceeded",
            libc::ENAMETOOLONG => "file name too long",
            libc::ENOSYS => "function not implemented",
            _ => "",
        };
        if name.is_empty() {
            write!(f, "errno {}", self.0)
        } else {
            write!(f, "{name} (errno {})", self.0)
        }
    }
}

/// The result of a raw system call.
pub type SysResult<T = usize> = Result<T, Errno>;

#[inline(always)]
fn check(ret: isize) -> SysResult {
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

/// Issues system call `nr` with six arguments.
///
/// # Safety
/// The arguments must be valid for the system call: any pointer the kernel dereferences must
/// point to memory of the size the call expects, and the call must not unmap or change memory
/// the caller still relies on.
#[inline(always)]
pub unsafe fn syscall6(
    nr: i64,
    a: usize,
    b: usize,
    c: usize,
    d: usize,
    e: usize,
    f: usize,
) -> SysResult {
    let ret: isize;
    // SAFETY: the x86_64 Linux syscall ABI: number in rax, arguments in rdi, rsi, rdx, r10, r8,
    // r9; the kernel clobbers rcx and r11. The caller vouches for the arguments.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    check(ret)
}

macro_rules! sys {
    ($nr:expr) => { syscall6($nr, 0, 0, 0, 0, 0, 0) };
    ($nr:expr, $a:expr) => { syscall6($nr, $a as usize, 0, 0, 0, 0, 0) };
    ($nr:expr, $a:expr, $b:expr) => { syscall6($nr, $a as usize, $b as usize, 0, 0, 0, 0) };
    ($nr:expr, $a:expr, $b:expr, $c:expr) => { syscall6($nr, $a as usize, $b as usize, $c as usize, 0, 0, 0) };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr) => {
        syscall6($nr, $a as usize, $b as usize, $c as usize, $d as usize, 0, 0)
    };
    ($nr:expr, $a:expr, $b:expr, $c:expr, $d:expr, $e:expr, $f:expr) => {
        syscall6($nr, $a as usize, $b as usize, $c as usize, $d as usize, $e as usize, $f as usize)
    };
}

/// `openat(AT_FDCWD, path, flags, mode)`; `path` must end with a NUL byte.
pub fn open(path: &[u8], flags: i32, mode: u32) -> SysResult<i32> {
    if path.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `path` is a NUL-terminated byte string the kernel only reads.
    unsafe { sys!(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, mode) }
        .map(|fd| fd as i32)
}

/// `openat(dirfd, name, flags, mode)`; `name` must end with a NUL byte.
pub fn openat(dirfd: i32, name: &[u8], flags: i32, mode: u32) -> SysResult<i32> {
    if name.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `name` is a NUL-terminated byte string the kernel only reads.
    unsafe { sys!(libc::SYS_openat, dirfd, name.as_ptr(), flags, mode) }.map(|fd| fd as i32)
}

/// `close(fd)`.
pub fn close(fd: i32) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_close, fd) }.map(drop)
}

/// `read(fd, buf)`.
pub fn read(fd: i32, buf: &mut [u8]) -> SysResult {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    unsafe { sys!(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) }
}

/// `pread64` into raw memory.
///
/// # Safety
/// `[addr, addr + len)` must be mapped writable and owned by the caller.
pub unsafe fn pread_raw(fd: i32, addr: usize, len: usize, offset: u64) -> SysResult {
    // SAFETY: the caller guarantees the destination range.
    unsafe { sys!(libc::SYS_pread64, fd, addr, len, offset) }
}

/// Whether `fd` is a terminal (`isatty`, as the `TCGETS` request that answers it).
pub fn isatty(fd: i32) -> bool {
    let mut t = core::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: TCGETS writes at most one `termios` through the pointer.
    unsafe { sys!(libc::SYS_ioctl, fd, libc::TCGETS, t.as_mut_ptr()) }.is_ok()
}

/// `write(fd, buf)`.
pub fn write(fd: i32, buf: &[u8]) -> SysResult {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    unsafe { sys!(libc::SYS_write, fd, buf.as_ptr(), buf.len()) }
}

/// `pwrite64(fd, buf, offset)`.
pub fn pwrite(fd: i32, buf: &[u8], offset: u64) -> SysResult {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`.
    unsafe { sys!(libc::SYS_pwrite64, fd, buf.as_ptr(), buf.len(), offset) }
}

/// Writes all of `buf` at `offset`, retrying short writes and EINTR.
pub fn pwrite_all(fd: i32, mut buf: &[u8], mut offset: u64) -> SysResult<()> {
    while !buf.is_empty() {
        match pwrite(fd, buf, offset) {
            Ok(0) => return Err(Errno(libc::EIO)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset`; `Ok(false)` if the file ends first.
pub fn pread_exact(fd: i32, buf: &mut [u8], mut offset: u64) -> SysResult<bool> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the kernel writes at most the remaining length into `buf`.
        match unsafe {
            pread_raw(
                fd,
                buf[done..].as_mut_ptr() as usize,
                buf.len() - done,
                offset,
            )
        } {
            Ok(0) => return Ok(false),
            Ok(n) => {
                done += n;
                offset += n as u64;
            }
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads a whole small file (from /proc) into `buf`; returns the length or `ENOBUFS` if it
/// does not fit.
pub fn read_file(path: &[u8], buf: &mut [u8]) -> SysResult {
    let fd = open(path, libc::O_RDONLY | libc::O_CLOEXEC, 0)?;
    let mut len = 0;
    let result = loop {
        if len == buf.len() {
            break Err(Errno(libc::ENOBUFS));
        }
        match read(fd, &mut buf[len..]) {
            Ok(0) => break Ok(len),
            Ok(n) => len += n,
            Err(Errno(libc::EINTR)) => {}
            Err(e) => break Err(e),
        }
    };
    let _ = close(fd);
    result
}

/// `fsync(fd)`.
pub fn fsync(fd: i32) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_fsync, fd) }.map(drop)
}

/// `sync_file_range(fd, off, len, SYNC_FILE_RANGE_WRITE)`: starts writeback of a range
/// without waiting for it.
pub fn start_writeback(fd: i32, off: u64, len: u64) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe {
        sys!(
            libc::SYS_sync_file_range,
            fd,
            off,
            len,
            libc::SYNC_FILE_RANGE_WRITE
        )
    }
    .map(drop)
}

/// `renameat(dirfd, from, dirfd, to)`; names NUL-terminated.
pub fn renameat(dirfd: i32, from: &[u8], to: &[u8]) -> SysResult<()> {
    if from.last() != Some(&0) || to.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: both names are NUL-terminated strings the kernel only reads.
    unsafe { sys!(libc::SYS_renameat, dirfd, from.as_ptr(), dirfd, to.as_ptr()) }.map(drop)
}

/// `unlinkat(dirfd, name, 0)`; `name` NUL-terminated.
pub fn unlinkat(dirfd: i32, name: &[u8]) -> SysResult<()> {
    if name.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `name` is a NUL-terminated string the kernel only reads.
    unsafe { sys!(libc::SYS_unlinkat, dirfd, name.as_ptr(), 0) }.map(drop)
}

/// `getdents64(fd, buf)`.
pub fn getdents64(fd: i32, buf: &mut [u8]) -> SysResult {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    unsafe { sys!(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) }
}

/// `readlinkat(AT_FDCWD, path, buf)`; `path` NUL-terminated.
pub fn readlink(path: &[u8], buf: &mut [u8]) -> SysResult {
    if path.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `path` is NUL-terminated; the kernel writes at most `buf.len()` bytes into `buf`.
    unsafe {
        sys!(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            path.as_ptr(),
            buf.as_mut_ptr(),
            buf.len()
        )
    }
}

/// `fstat(fd)`.
pub fn fstat(fd: i32) -> SysResult<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value of the plain-data struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: the kernel fills one `struct stat`.
    unsafe { sys!(libc::SYS_fstat, fd, &mut st as *mut libc::stat) }?;
    Ok(st)
}

/// `newfstatat(AT_FDCWD, path, 0)`; `path` NUL-terminated.
pub fn stat(path: &[u8]) -> SysResult<libc::stat> {
    if path.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: an all-zero `stat` is a valid value of the plain-data struct.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated; the kernel fills one `struct stat`.
    unsafe {
        sys!(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut st as *mut libc::stat,
            0
        )
    }?;
    Ok(st)
}

/// The birth time of the file open at `fd` (`statx` with `STATX_BTIME`), if the filesystem
/// records one.
pub fn birth_time(fd: i32) -> Option<(i64, u32)> {
    // SAFETY: an all-zero statx is valid plain data.
    let mut stx: libc::statx = unsafe { core::mem::zeroed() };
    // SAFETY: the kernel fills one `struct statx`; the empty path names `fd` itself.
    let r = unsafe {
        syscall6(
            libc::SYS_statx,
            fd as usize,
            c"".as_ptr() as usize,
            libc::AT_EMPTY_PATH as usize,
            libc::STATX_BTIME as usize,
            &mut stx as *mut libc::statx as usize,
            0,
        )
    };
    (r.is_ok() && stx.stx_mask & libc::STATX_BTIME != 0)
        .then_some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec))
}

/// `lseek(fd, off, whence)`.
pub fn lseek(fd: i32, off: i64, whence: i32) -> SysResult<u64> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_lseek, fd, off, whence) }.map(|v| v as u64)
}

/// `fcntl(fd, cmd, arg)` for integer commands.
pub fn fcntl(fd: i32, cmd: i32, arg: usize) -> SysResult {
    // SAFETY: only integer commands are passed here by callers.
    unsafe { sys!(libc::SYS_fcntl, fd, cmd, arg) }
}

/// `dup3(old, new, flags)`.
pub fn dup3(old: i32, new: i32, flags: i32) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_dup3, old, new, flags) }.map(drop)
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: i32, len: u64) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_ftruncate, fd, len) }.map(drop)
}

/// `gettid()`.
pub fn gettid() -> i32 {
    // SAFETY: no arguments; cannot fail.
    unsafe { sys!(libc::SYS_gettid) }
        .map(|v| v as i32)
        .unwrap_or(0)
}

/// `getpid()`.
pub fn getpid() -> i32 {
    // SAFETY: no arguments; cannot fail.
    unsafe { sys!(libc::SYS_getpid) }
        .map(|v| v as i32)
        .unwrap_or(0)
}

/// `clock_gettime(CLOCK_MONOTONIC)` in nanoseconds (the raw syscall, not the vDSO).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `clock_gettime(CLOCK_REALTIME)` in nanoseconds since the epoch.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel fills one `timespec`.
    match unsafe {
        sys!(
            libc::SYS_clock_gettime,
            clock,
            &mut ts as *mut libc::timespec
        )
    } {
        Ok(_) => ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        Err(_) => 0,
    }
}

/// `mmap` of anonymous or file memory. Returns the address.
///
/// # Safety
/// With `MAP_FIXED` the call replaces whatever is mapped at `addr`: the caller must own that range.
pub unsafe fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32, off: u64) -> SysResult {
    // SAFETY: the caller owns the target range (see above).
    unsafe { sys!(libc::SYS_mmap, addr, len, prot, flags, fd, off) }
}

/// `munmap(addr, len)`.
///
/// # Safety
/// Nothing may use the range afterwards.
pub unsafe fn munmap(addr: usize, len: usize) -> SysResult<()> {
    // SAFETY: the caller no longer uses the range.
    unsafe { sys!(libc::SYS_munmap, addr, len) }.map(drop)
}

/// `mprotect(addr, len, prot)`.
///
/// # Safety
/// Removing access from memory still in use makes later accesses fault.
pub unsafe fn mprotect(addr: usize, len: usize, prot: i32) -> SysResult<()> {
    // SAFETY: the caller accepts the new protection.
    unsafe { sys!(libc::SYS_mprotect, addr, len, prot) }.map(drop)
}

/// `madvise(addr, len, advice)`.
///
/// # Safety
/// `MADV_DONTNEED` discards the contents of private anonymous memory.
pub unsafe fn madvise(addr: usize, len: usize, advice: i32) -> SysResult<()> {
    // SAFETY: the caller accepts the advice's effect on the range.
    unsafe { sys!(libc::SYS_madvise, addr, len, advice) }.map(drop)
}

/// `brk(addr)`: returns the new break (equal to the old one when the request failed).
pub fn brk(addr: usize) -> usize {
    // SAFETY: brk only moves the program break; memory above the new break is released, which
    // callers intend.
    unsafe { sys!(libc::SYS_brk, addr) }.unwrap_or(0)
}

/// `rt_sigprocmask(how, set, old)` over the kernel's 64-bit signal set.
pub fn sigprocmask(how: i32, set: Option<&u64>, old: Option<&mut u64>) -> SysResult<()> {
    let set = set.map_or(core::ptr::null(), |s| s as *const u64);
    let old = old.map_or(core::ptr::null_mut(), |s| s as *mut u64);
    // SAFETY: both pointers are null or point to one 8-byte signal set.
    unsafe { sys!(libc::SYS_rt_sigprocmask, how, set, old, 8) }.map(drop)
}

/// The kernel's `struct sigaction` on x86_64 (not glibc's, whose mask is 128 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelSigaction {
    /// Handler address, `SIG_DFL` (0) or `SIG_IGN` (1).
    pub handler: usize,
    /// `SA_*` flags.
    pub flags: u64,
    /// The restorer trampoline (`SA_RESTORER`).
    pub restorer: usize,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

/// `rt_sigaction(sig, new, old)` with the kernel's structure.
///
/// # Safety
/// Installing a handler makes the kernel jump to `new.handler` on delivery: it must be a valid
/// handler, with a restorer that performs `rt_sigreturn`.
pub unsafe fn sigaction(
    sig: i32,
    new: Option<&KernelSigaction>,
    old: Option<&mut KernelSigaction>,
) -> SysResult<()> {
    let new = new.map_or(core::ptr::null(), |s| s as *const KernelSigaction);
    let old = old.map_or(core::ptr::null_mut(), |s| s as *mut KernelSigaction);
    // SAFETY: both pointers are null or point to one kernel sigaction; the caller vouches for
    // the handler.
    unsafe { sys!(libc::SYS_rt_sigaction, sig, new, old, 8) }.map(drop)
}

/// `sigaltstack(new, old)`.
///
/// # Safety
/// A new alternate stack must be mapped and large enough for the handlers that use it.
pub unsafe fn sigaltstack(
    new: Option<&libc::stack_t>,
    old: Option<&mut libc::stack_t>,
) -> SysResult<()> {
    let new = new.map_or(core::ptr::null(), |s| s as *const libc::stack_t);
    let old = old.map_or(core::ptr::null_mut(), |s| s as *mut libc::stack_t);
    // SAFETY: both pointers are null or point to one `stack_t`; the caller vouches for the stack.
    unsafe { sys!(libc::SYS_sigaltstack, new, old) }.map(drop)
}

/// `chdir(path)`; NUL-terminated.
pub fn chdir(path: &[u8]) -> SysResult<()> {
    if path.last() != Some(&0) {
        return Err(Errno(libc::EINVAL));
    }
    // SAFETY: `path` is NUL-terminated.
    unsafe { sys!(libc::SYS_chdir, path.as_ptr()) }.map(drop)
}

/// `getcwd(buf)`: returns the length including the NUL.
pub fn getcwd(buf: &mut [u8]) -> SysResult {
    // SAFETY: the kernel writes at most `buf.len()` bytes.
    unsafe { sys!(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) }
}

/// `umask(mask)`: returns the previous mask.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: no pointers; cannot fail.
    unsafe { sys!(libc::SYS_umask, mask) }
        .map(|v| v as u32)
        .unwrap_or(0o022)
}

/// `arch_prctl(ARCH_GET_FS)`: the thread pointer.
pub fn get_fs_base() -> usize {
    let mut base: usize = 0;
    // SAFETY: the kernel writes one `unsigned long`.
    let _ = unsafe { sys!(libc::SYS_arch_prctl, 0x1003, &mut base as *mut usize) };
    base
}

/// `arch_prctl(ARCH_SET_FS, base)`.
///
/// # Safety
/// Every thread-local access afterwards goes through `base`.
pub unsafe fn set_fs_base(base: usize) -> SysResult<()> {
    // SAFETY: the caller provides the thread block that TLS accesses must reach.
    unsafe { sys!(libc::SYS_arch_prctl, 0x1002, base) }.map(drop)
}

/// `flock(fd, op)`.
pub fn flock(fd: i32, op: i32) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_flock, fd, op) }.map(drop)
}

/// `rseq(area, len, flags, sig)`.
///
/// # Safety
/// Registering makes the kernel write to `area` on every preemption until unregistered.
pub unsafe fn rseq(area: usize, len: u32, flags: i32, sig: u32) -> SysResult<()> {
    // SAFETY: the caller owns `area` for as long as it is registered.
    unsafe { sys!(libc::SYS_rseq, area, len, flags, sig) }.map(drop)
}

/// `exit_group(code)`.
pub fn exit_group(code: i32) -> ! {
    // SAFETY: ends the process.
    let _ = unsafe { sys!(libc::SYS_exit_group, code) };
    unreachable_exit()
}

fn unreachable_exit() -> ! {
    loop {
        // SAFETY: exit_group does not return; this loop only satisfies the type.
        let _ = unsafe { sys!(libc::SYS_exit_group, 127) };
    }
}

/// `getppid()`.
pub fn getppid() -> i32 {
    // SAFETY: no arguments; cannot fail.
    unsafe { sys!(libc::SYS_getppid) }
        .map(|v| v as i32)
        .unwrap_or(0)
}

/// `kill(pid, sig)`.
pub fn kill(pid: i32, sig: i32) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_kill, pid, sig) }.map(drop)
}

/// `prctl(PR_SET_PDEATHSIG, sig)`: `sig` is sent to the caller when its parent exits.
pub fn set_parent_death_signal(sig: i32) -> SysResult<()> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, sig) }.map(drop)
}

/// `wait4(pid, &status, options, NULL)`: `Ok(None)` when `WNOHANG` found it still running,
/// else its wait status. Retries on `EINTR`.
pub fn wait_child(pid: i32, options: i32) -> SysResult<Option<i32>> {
    let mut status = 0i32;
    loop {
        // SAFETY: `status` is a valid int for the kernel to fill.
        match unsafe { sys!(libc::SYS_wait4, pid, &mut status as *mut i32, options, 0) } {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(Errno(libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Starts `f(arg)` in a new process created with `clone(flags)` (the exit signal is the low
/// byte of `flags`) on the stack ending at `stack_top`; the process exits with `f`'s result.
///
/// # Safety
/// `stack_top` must be the 16-byte aligned top of memory the child may use as its stack for its
/// whole life, and `f` must be safe to run in the child with `arg`: with `CLONE_VM` it shares
/// this address space (and thread descriptor: it must not touch thread-local state), without
/// it, it runs in a copy that holds only the calling thread.
pub unsafe fn spawn(
    flags: i32,
    stack_top: usize,
    f: extern "C" fn(*mut core::ffi::c_void) -> i32,
    arg: *mut core::ffi::c_void,
) -> SysResult<i32> {
    // SAFETY: see above; glibc's clone only issues the system call and, in the child, calls `f`
    // and then exit.
    let pid = unsafe { libc::clone(f, stack_top as *mut core::ffi::c_void, flags, arg) };
    if pid < 0 {
        // SAFETY: this thread's errno slot, set by the failed clone.
        Err(Errno(unsafe { *libc::__errno_location() }))
    } else {
        Ok(pid)
    }
}

/// `tgkill(getpid(), gettid(), sig)`.
pub fn raise(sig: i32) {
    // SAFETY: no pointers.
    let _ = unsafe { sys!(libc::SYS_tgkill, getpid(), gettid(), sig) };
}

/// `userfaultfd(flags)`: a new userfaultfd, owned by the caller.
pub fn userfaultfd(flags: i32) -> SysResult<i32> {
    // SAFETY: no pointers.
    unsafe { sys!(libc::SYS_userfaultfd, flags) }.map(|fd| fd as i32)
}

/// `ioctl(fd, request, arg)` with a pointer or integer argument.
///
/// # Safety
/// When `request` makes the kernel read or write through `arg`, `arg` must point to memory of
/// the layout and size that request expects, valid for the duration of the call.
pub unsafe fn ioctl(fd: i32, request: u64, arg: usize) -> SysResult {
    // SAFETY: the caller vouches for `arg` (see above).
    unsafe { sys!(libc::SYS_ioctl, fd, request, arg) }
}
