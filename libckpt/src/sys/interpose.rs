//! Functions of the C library that `ckpt` replaces for the whole program (the executable's or a
//! preloaded library's definition wins over the C library's at link and load time), so that the
//! `mprotect` dirty tracker's read-only pages do not break them.
//!
//! - `mremap`: the kernel refuses to remap a range whose pages have different protections,
//!   which that tracker's page-by-page protection creates.
//! - The calls through which the kernel writes into the caller's buffers: `read`, `pread`,
//!   `pread64`, `readv`, `preadv`, `preadv64`, `preadv2`, `preadv64v2`, `recv`, `recvfrom`,
//!   `recvmsg`, `recvmmsg`, `getrandom`, and the fortified `__read_chk`, `__pread_chk`,
//!   `__pread64_chk`, `__recv_chk`, `__recvfrom_chk` that `-D_FORTIFY_SOURCE` compiles calls
//!   to (the C library's own call its internal `read` directly). The kernel does not fault on
//!   a read-only page: the call fails with `EFAULT` and nothing is written.
//!
//! Each one, when a tracker exists, has [`dirty::kernel_write`](super::dirty::kernel_write)
//! mark the destination's tracked pages written and make them writable, then issues the system
//! call itself, retrying if a checkpoint protected the pages again meanwhile; with no tracker it
//! costs one atomic load. Under `uffd-async` nothing is needed (a kernel write into an
//! asynchronously write-protected page is resolved and recorded like a user one); its tracker
//! does not set the flag, so the wrappers go straight to the system call.
//!
//! Differences from the C library's functions: they are not pthread cancellation points (a
//! thread blocked in one is cancelled only at its next cancellation point; Rust never cancels,
//! and the checkpointer supports one thread); `preadv2` emulates a missing system call as the C
//! library does; a wrapper reads the caller's `iovec` array, `msghdr` and address length before
//! the kernel does, so an invalid pointer there faults in the wrapper (`SIGSEGV`) instead of
//! failing with `EFAULT` (only while a tracker exists).
//!
//! Not covered (the kernel's write into a tracked page under `mprotect` still fails with
//! `EFAULT`): raw `syscall(SYS_read, ...)`; the C library's internal reads, which call the
//! system call directly rather than `read` (`fread`, `fgets`, `fscanf`, `getline` and the rest
//! of stdio, which fill their `malloc`ed buffer or, for large `fread`s, the caller's;
//! `readdir`; `getcwd(NULL, 0)`); asynchronous I/O (io_uring, POSIX and Linux AIO), whose
//! kernel writes happen outside any call; calls that fill a small result (`stat`/`fstat`/
//! `statx`, `getdents64`, `readlink`, `poll`/`epoll_wait`/`select`, `wait4`, `pipe`,
//! `getsockopt`, `ioctl`, ...): their results are usually on the stack, which `mprotect` does
//! not track. `uffd-async` handles all of these.
//!
//! # Safety
//!
//! Every function keeps the C function's contract: it forwards its arguments unchanged to the
//! system call the C library would make, and reports failure the C way (`-1` or `MAP_FAILED`,
//! and `errno`). What a wrapper does before that touches only tracked pages (marking them
//! written and making them writable: they are read-write memory by the tracker's contract) and
//! reads the argument structures the kernel is about to read. They are async-signal-safe: no
//! allocation, no locks, atomics and raw system calls. `mremap` is declared with five fixed
//! arguments; on x86_64 a variadic caller passes the optional fifth one in the same register,
//! and it is read only when `MREMAP_FIXED` says it was passed.
#![allow(unsafe_code)]

use core::ffi::{c_int, c_uint, c_void};

use super::dirty;
use super::syscall::{self, Errno, SysResult};

/// `UIO_MAXIOV`: the kernel refuses longer `iovec` arrays (`EINVAL`, `EMSGSIZE`) and reads at
/// most this many `mmsghdr`s.
const MAX_IOV: usize = 1024;
/// Longest socket address the kernel writes (`sockaddr_storage`).
const MAX_ADDR: usize = core::mem::size_of::<libc::sockaddr_storage>();

/// The C way to return a count: the value, or -1 with `errno` set.
fn c_ret(r: SysResult) -> isize {
    match r {
        Ok(n) => n as isize,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

fn set_errno(e: Errno) {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = e.0 };
}

/// Reports each `(iov_base, iov_len)` of `iovcnt` `iovec`s at `iov` (none if the kernel would
/// refuse the count).
///
/// # Safety
/// `iov` must be readable for `iovcnt` elements when `0 < iovcnt <= MAX_IOV`.
unsafe fn each_iov(iov: *const libc::iovec, iovcnt: usize, each: &mut dyn FnMut(usize, usize)) {
    if iov.is_null() || iovcnt > MAX_IOV {
        return;
    }
    for i in 0..iovcnt {
        // SAFETY: the caller's array, which the kernel is about to read too.
        let v = unsafe { iov.add(i).read() };
        each(v.iov_base as usize, v.iov_len);
    }
}

/// Reports what `recvmsg` writes: the header itself (the kernel sets `msg_namelen`,
/// `msg_controllen` and `msg_flags`), the name, the control buffer and the data buffers.
///
/// # Safety
/// `msg`, if not null, must point to a `msghdr` whose `msg_iov` holds `msg_iovlen` elements.
unsafe fn each_msg(msg: *const libc::msghdr, each: &mut dyn FnMut(usize, usize)) {
    if msg.is_null() {
        return;
    }
    each(msg as usize, core::mem::size_of::<libc::msghdr>());
    // SAFETY: the caller's header, which the kernel is about to read too.
    let m = unsafe { msg.read() };
    if !m.msg_name.is_null() {
        each(m.msg_name as usize, (m.msg_namelen as usize).min(MAX_ADDR));
    }
    if !m.msg_control.is_null() {
        each(m.msg_control as usize, m.msg_controllen);
    }
    // SAFETY: the header's own array, as the caller guarantees.
    unsafe { each_iov(m.msg_iov, m.msg_iovlen, each) };
}

/// `mremap(2)`, as the C library's, except that pages the `mprotect` dirty tracker protected
/// become writable (and count as written) first.
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
    let target = if flags & libc::MREMAP_FIXED != 0 {
        new_address as usize
    } else {
        0
    };
    let r = dirty::remap(old as usize, old_size, || {
        // SAFETY: the arguments are the caller's, forwarded unchanged.
        unsafe {
            syscall::syscall6(
                libc::SYS_mremap,
                old as usize,
                old_size,
                new_size,
                flags as usize,
                target,
                0,
            )
        }
    });
    match r {
        Ok(addr) => addr as *mut c_void,
        Err(e) => {
            set_errno(e);
            libc::MAP_FAILED
        }
    }
}

/// `mprotect(2)`, as the C library's, except that ranges the `mprotect` dirty tracker watches
/// and the call touches stop being watched first (see `dirty::reprotect`): the program's
/// protection wins, and the next checkpoint saves those ranges whole.
///
/// # Safety
/// As the C function: the caller owns the mapping it changes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    let r = dirty::reprotect(addr as usize, len, || {
        // SAFETY: the arguments are the caller's, forwarded unchanged.
        unsafe {
            syscall::syscall6(
                libc::SYS_mprotect,
                addr as usize,
                len,
                prot as usize,
                0,
                0,
                0,
            )
        }
    });
    match r {
        Ok(_) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// `read(2)` into `buf`, tracked pages prepared.
///
/// # Safety
/// As the C function.
unsafe fn read_into(fd: c_int, buf: *mut c_void, count: usize) -> isize {
    c_ret(dirty::kernel_write(
        |each| each(buf as usize, count),
        // SAFETY: the caller's arguments, forwarded unchanged.
        || unsafe { syscall::syscall6(libc::SYS_read, fd as usize, buf as usize, count, 0, 0, 0) },
    ))
}

/// `pread64(2)` into `buf`, tracked pages prepared.
///
/// # Safety
/// As the C function.
unsafe fn pread_into(fd: c_int, buf: *mut c_void, count: usize, offset: i64) -> isize {
    c_ret(dirty::kernel_write(
        |each| each(buf as usize, count),
        // SAFETY: the caller's arguments, forwarded unchanged.
        || unsafe {
            syscall::syscall6(
                libc::SYS_pread64,
                fd as usize,
                buf as usize,
                count,
                offset as usize,
                0,
                0,
            )
        },
    ))
}

/// `recvfrom(2)` into `buf` (and the sender's address), tracked pages prepared.
///
/// # Safety
/// As the C function.
unsafe fn recvfrom_into(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    addrlen: *mut libc::socklen_t,
) -> isize {
    c_ret(dirty::kernel_write(
        |each| {
            each(buf as usize, len);
            if !addrlen.is_null() {
                each(addrlen as usize, core::mem::size_of::<libc::socklen_t>());
                if !addr.is_null() {
                    // SAFETY: the caller's length, which the kernel is about to read too.
                    let n = unsafe { addrlen.read() } as usize;
                    each(addr as usize, n.min(MAX_ADDR));
                }
            }
        },
        // SAFETY: the caller's arguments, forwarded unchanged.
        || unsafe {
            syscall::syscall6(
                libc::SYS_recvfrom,
                fd as usize,
                buf as usize,
                len,
                flags as usize,
                addr as usize,
                addrlen as usize,
            )
        },
    ))
}

/// `preadv2(2)`; `offset == -1` reads at the file position, as the kernel does.
///
/// # Safety
/// As the C function.
unsafe fn preadv2_into(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: i64,
    flags: c_int,
) -> isize {
    let r = dirty::kernel_write(
        // SAFETY: the caller's array of `iovcnt` elements.
        |each| unsafe { each_iov(iov, iovcnt as usize, each) },
        // SAFETY: the caller's arguments, forwarded unchanged; the offset in two halves as
        // the C library passes it (a 64-bit kernel uses the low one).
        || unsafe {
            syscall::syscall6(
                libc::SYS_preadv2,
                fd as usize,
                iov as usize,
                iovcnt as usize,
                offset as usize,
                (offset as u64 >> 32) as usize,
                flags as usize,
            )
        },
    );
    match r {
        // Kernels before 4.6, as the C library: no flags can be emulated.
        Err(Errno(libc::ENOSYS)) if flags != 0 => c_ret(Err(Errno(libc::EOPNOTSUPP))),
        // SAFETY: the caller's arguments.
        Err(Errno(libc::ENOSYS)) if offset == -1 => unsafe { readv(fd, iov, iovcnt) },
        // SAFETY: the caller's arguments.
        Err(Errno(libc::ENOSYS)) => unsafe { preadv(fd, iov, iovcnt, offset) },
        r => c_ret(r),
    }
}

/// `read(2)`, as the C library's, with tracked pages of `buf` prepared (module docs).
///
/// # Safety
/// As the C function: `buf` is writable for `count` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize {
    // SAFETY: the caller's arguments.
    unsafe { read_into(fd, buf, count) }
}

/// `pread(2)` (the same as `pread64` on x86_64), with tracked pages prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread(fd: c_int, buf: *mut c_void, count: usize, offset: i64) -> isize {
    // SAFETY: the caller's arguments.
    unsafe { pread_into(fd, buf, count, offset) }
}

/// `pread64(2)`, with tracked pages prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pread64(fd: c_int, buf: *mut c_void, count: usize, offset: i64) -> isize {
    // SAFETY: the caller's arguments.
    unsafe { pread_into(fd, buf, count, offset) }
}

/// `readv(2)`, with the tracked pages of every buffer prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, iovcnt: c_int) -> isize {
    c_ret(dirty::kernel_write(
        // SAFETY: the caller's array of `iovcnt` elements.
        |each| unsafe { each_iov(iov, iovcnt as usize, each) },
        // SAFETY: the caller's arguments, forwarded unchanged.
        || unsafe {
            syscall::syscall6(
                libc::SYS_readv,
                fd as usize,
                iov as usize,
                iovcnt as usize,
                0,
                0,
                0,
            )
        },
    ))
}

/// `preadv(2)`, with the tracked pages of every buffer prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: i64,
) -> isize {
    c_ret(dirty::kernel_write(
        // SAFETY: the caller's array of `iovcnt` elements.
        |each| unsafe { each_iov(iov, iovcnt as usize, each) },
        // SAFETY: the caller's arguments, forwarded unchanged (the offset as `preadv2_into`).
        || unsafe {
            syscall::syscall6(
                libc::SYS_preadv,
                fd as usize,
                iov as usize,
                iovcnt as usize,
                offset as usize,
                (offset as u64 >> 32) as usize,
                0,
            )
        },
    ))
}

/// `preadv64(2)`: `preadv` on x86_64.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv64(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: i64,
) -> isize {
    // SAFETY: the caller's arguments.
    unsafe { preadv(fd, iov, iovcnt, offset) }
}

/// `preadv2(2)`, with the tracked pages of every buffer prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv2(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: i64,
    flags: c_int,
) -> isize {
    // SAFETY: the caller's arguments.
    unsafe { preadv2_into(fd, iov, iovcnt, offset, flags) }
}

/// `preadv64v2(2)`: `preadv2` on x86_64.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn preadv64v2(
    fd: c_int,
    iov: *const libc::iovec,
    iovcnt: c_int,
    offset: i64,
    flags: c_int,
) -> isize {
    // SAFETY: the caller's arguments.
    unsafe { preadv2_into(fd, iov, iovcnt, offset, flags) }
}

/// `recv(2)`: `recvfrom` without an address, as the C library does on x86_64.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize {
    // SAFETY: the caller's arguments.
    unsafe {
        recvfrom_into(
            fd,
            buf,
            len,
            flags,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
        )
    }
}

/// `recvfrom(2)`, with the tracked pages of the buffer and of the address prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    addrlen: *mut libc::socklen_t,
) -> isize {
    // SAFETY: the caller's arguments.
    unsafe { recvfrom_into(fd, buf, len, flags, addr, addrlen) }
}

/// `recvmsg(2)`, with the tracked pages of the header, name, control and data buffers
/// prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    c_ret(dirty::kernel_write(
        // SAFETY: the caller's header.
        |each| unsafe { each_msg(msg, each) },
        // SAFETY: the caller's arguments, forwarded unchanged.
        || unsafe {
            syscall::syscall6(
                libc::SYS_recvmsg,
                fd as usize,
                msg as usize,
                flags as usize,
                0,
                0,
                0,
            )
        },
    ))
}

/// `recvmmsg(2)`, with every header's buffers (and the timeout, which the kernel updates)
/// prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgvec: *mut libc::mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    c_ret(dirty::kernel_write(
        |each| {
            if !timeout.is_null() {
                each(timeout as usize, core::mem::size_of::<libc::timespec>());
            }
            if msgvec.is_null() {
                return;
            }
            for i in 0..(vlen as usize).min(MAX_IOV) {
                // SAFETY: the caller's array of `vlen` headers (the kernel reads at most
                // `MAX_IOV`).
                let m = unsafe { msgvec.add(i) };
                each(m as usize, core::mem::size_of::<libc::mmsghdr>());
                // SAFETY: as above, the header inside the element.
                unsafe { each_msg(&raw const (*m).msg_hdr, each) };
            }
        },
        // SAFETY: the caller's arguments, forwarded unchanged.
        || unsafe {
            syscall::syscall6(
                libc::SYS_recvmmsg,
                fd as usize,
                msgvec as usize,
                vlen as usize,
                flags as usize,
                timeout as usize,
                0,
            )
        },
    )) as c_int
}

/// `getrandom(2)`, with the tracked pages of `buf` prepared.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(buf: *mut c_void, len: usize, flags: c_uint) -> isize {
    c_ret(dirty::kernel_write(
        |each| each(buf as usize, len),
        // SAFETY: the caller's arguments, forwarded unchanged.
        || unsafe {
            syscall::syscall6(
                libc::SYS_getrandom,
                buf as usize,
                len,
                flags as usize,
                0,
                0,
                0,
            )
        },
    ))
}

unsafe extern "C" {
    /// The C library's report of a buffer overflow caught by a fortified function; aborts.
    fn __chk_fail() -> !;
}

/// Fails as the C library's fortified functions do when `len` exceeds the buffer's size.
fn check_len(len: usize, buflen: usize) {
    if len > buflen {
        // SAFETY: reports the overflow and aborts, as the C library's own check does.
        unsafe { __chk_fail() }
    }
}

/// `read` as `-D_FORTIFY_SOURCE` calls it: `buflen` is the buffer's size as the compiler knows
/// it. The C library's goes to its internal `read`, past ours.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    buflen: usize,
) -> isize {
    check_len(count, buflen);
    // SAFETY: the caller's arguments.
    unsafe { read_into(fd, buf, count) }
}

/// `pread` as `-D_FORTIFY_SOURCE` calls it.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __pread_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: i64,
    buflen: usize,
) -> isize {
    check_len(count, buflen);
    // SAFETY: the caller's arguments.
    unsafe { pread_into(fd, buf, count, offset) }
}

/// `pread64` as `-D_FORTIFY_SOURCE` calls it.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __pread64_chk(
    fd: c_int,
    buf: *mut c_void,
    count: usize,
    offset: i64,
    buflen: usize,
) -> isize {
    check_len(count, buflen);
    // SAFETY: the caller's arguments.
    unsafe { pread_into(fd, buf, count, offset) }
}

/// `recv` as `-D_FORTIFY_SOURCE` calls it.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    buflen: usize,
    flags: c_int,
) -> isize {
    check_len(len, buflen);
    // SAFETY: the caller's arguments.
    unsafe {
        recvfrom_into(
            fd,
            buf,
            len,
            flags,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
        )
    }
}

/// `recvfrom` as `-D_FORTIFY_SOURCE` calls it.
///
/// # Safety
/// As the C function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    buflen: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    addrlen: *mut libc::socklen_t,
) -> isize {
    check_len(len, buflen);
    // SAFETY: the caller's arguments.
    unsafe { recvfrom_into(fd, buf, len, flags, addr, addrlen) }
}
