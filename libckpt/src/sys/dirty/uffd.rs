//! The `uffd-async` dirty tracker: userfaultfd asynchronous write-protection + `PAGEMAP_SCAN`.
//!
//! Tracking a range registers it with a userfaultfd in `UFFDIO_REGISTER_MODE_WP` and
//! write-protects it. With `UFFD_FEATURE_WP_ASYNC` a write to a protected page is resolved by the
//! kernel itself: it lifts the protection and the write proceeds, no message is queued and no
//! thread has to answer (so kernel writes, `read(2)` into a buffer, work too). With
//! `UFFD_FEATURE_WP_UNPOPULATED` pages never touched are protected as well (the kernel installs
//! a marker in their page-table entries), so their first write is seen. A page whose protection
//! was lifted is `PAGE_IS_WRITTEN` to `PAGEMAP_SCAN`; the scan with `PM_SCAN_WP_MATCHING` reports
//! such pages and protects them again in the same walk, under the page-table lock, so no write
//! between "reported" and "protected again" can be lost. Kernel references:
//! Documentation/admin-guide/mm/userfaultfd.rst ("Write Protect Notifications", asynchronous
//! mode) and Documentation/admin-guide/mm/pagemap.rst ("Pagemap Scan IOCTL").
//!
//! # Safety
//!
//! The ioctls take pointers to structures on the stack and to the tracker's scan buffer, all
//! valid for the duration of each call; the kernel writes at most `vec_len` entries into the
//! buffer. File descriptors are held as `OwnedFd`, created from fresh system-call results.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{DirtyError, DirtyTracker, RunMerger, TrackerKind, check_range};
use crate::sys::mem::{PAGE_IS_WRITTEN, PageRegion, PmScanArg, guard_category, pagemap_scan};
use crate::sys::syscall::{self, Errno};

const NAME: &str = "uffd-async";

// linux/userfaultfd.h (the features are newer than most installed headers).
const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: i32 = 1;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFDIO_WRITEPROTECT_NR: u64 = 0x06;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `_IOC(dir, type, nr, size)` for x86_64.
const fn ioc(dir: u64, ty: u8, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0xAA, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0xAA,
    0x00,
    size_of::<UffdioRegister>(),
);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0xAA, 0x01, size_of::<UffdioRange>());
const UFFDIO_WRITEPROTECT: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0xAA,
    UFFDIO_WRITEPROTECT_NR,
    size_of::<UffdioWriteprotect>(),
);

// linux/fs.h: PAGEMAP_SCAN flags and categories (the argument struct is `sys::mem::PmScanArg`).
/// Write-protect the pages the scan matches.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail (`EPERM`) on a VMA not registered for asynchronous write-protection, rather than
/// silently reporting nothing for it.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// Entries in the scan buffer: each is a run, so one ioctl reports up to this many runs; more
/// take more ioctls, continuing at `walk_end`.
const SCAN_ENTRIES: usize = 512;
/// The userfaultfd features this tracker needs.
const WANT: u64 = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
/// Ranges one tracker can hold (the table is allocated up front so `harvest` never allocates).
const MAX_RANGES: usize = 1024;

/// The `uffd-async` tracker. See the module documentation.
#[derive(Debug)]
pub struct UffdAsync {
    uffd: OwnedFd,
    pagemap: OwnedFd,
    /// Tracked ranges as `(start, end)`, sorted, disjoint; capacity fixed at creation.
    ranges: Vec<(usize, usize)>,
    /// The kernel's output vector for `PAGEMAP_SCAN`.
    buf: Vec<PageRegion>,
}

fn sys_err(op: &'static str, start: usize, len: usize) -> impl Fn(Errno) -> DirtyError {
    move |errno| DirtyError::Sys {
        tracker: NAME,
        op,
        start,
        len,
        errno,
    }
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful system call and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens a userfaultfd for this process's user-space faults only, which unprivileged processes
/// may do whatever `vm.unprivileged_userfaultfd` says, and completes the API handshake asking
/// for `features`. Returns the fd and the features the kernel reports.
fn open_uffd(features: u64) -> Result<(OwnedFd, u64), DirtyError> {
    let fd = syscall::userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY)
        .map_err(sys_err("userfaultfd", 0, 0))?;
    let fd = owned(fd);
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes one `struct uffdio_api`, which `api` is.
    unsafe {
        syscall::ioctl(
            fd.as_raw_fd(),
            UFFDIO_API,
            &mut api as *mut UffdioApi as usize,
        )
    }
    .map_err(sys_err("UFFDIO_API", 0, 0))?;
    Ok((fd, api.features))
}

/// Opens `/proc/self/pagemap`, which `PAGEMAP_SCAN` is issued on.
fn open_pagemap() -> Result<OwnedFd, DirtyError> {
    syscall::open(b"/proc/self/pagemap\0", libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .map(owned)
        .map_err(sys_err("open /proc/self/pagemap", 0, 0))
}

impl UffdAsync {
    /// Opens the userfaultfd and `/proc/self/pagemap` and checks that the kernel has
    /// everything this tracker needs.
    pub fn new() -> Result<UffdAsync, DirtyError> {
        // The handshake happens once per fd and fails outright on an unknown feature bit, so a
        // throwaway fd asks with no features to learn which ones the kernel reports.
        let (probe, reported) = open_uffd(0).map_err(|e| match e {
            DirtyError::Sys {
                errno: Errno(libc::ENOSYS),
                ..
            } => DirtyError::Unavailable {
                tracker: NAME,
                reason: "the kernel has no userfaultfd",
            },
            e => e,
        })?;
        drop(probe);
        if reported & UFFD_FEATURE_WP_ASYNC == 0 {
            return Err(DirtyError::Unavailable {
                tracker: NAME,
                reason: "the kernel does not report UFFD_FEATURE_WP_ASYNC (Linux 6.7+)",
            });
        }
        if reported & UFFD_FEATURE_WP_UNPOPULATED == 0 {
            return Err(DirtyError::Unavailable {
                tracker: NAME,
                reason: "the kernel does not report UFFD_FEATURE_WP_UNPOPULATED",
            });
        }
        let (uffd, granted) = open_uffd(WANT)?;
        if granted & WANT != WANT {
            return Err(DirtyError::Unavailable {
                tracker: NAME,
                reason: "UFFDIO_API did not grant WP_ASYNC and WP_UNPOPULATED",
            });
        }
        let mut tracker = UffdAsync {
            uffd,
            pagemap: open_pagemap()?,
            ranges: Vec::with_capacity(MAX_RANGES),
            buf: vec![PageRegion::default(); SCAN_ENTRIES],
        };
        // An empty scan tells whether the kernel has PAGEMAP_SCAN (ENOTTY before 6.7).
        match tracker.scan(0, 0, 0) {
            Ok(_) => Ok(tracker),
            Err(Errno(libc::ENOTTY)) => Err(DirtyError::Unavailable {
                tracker: NAME,
                reason: "the kernel has no PAGEMAP_SCAN ioctl (Linux 6.7+)",
            }),
            Err(errno) => Err(sys_err("PAGEMAP_SCAN", 0, 0)(errno)),
        }
    }

    /// One `PAGEMAP_SCAN` of `[start, end)` with `flags`, reporting written pages into `buf`.
    /// Returns the number of entries filled and where the walk stopped.
    /// Guard pages (`MADV_GUARD_INSTALL`) read as written but are never data: left out.
    fn scan(&mut self, start: usize, end: usize, flags: u64) -> Result<(usize, usize), Errno> {
        let guard = guard_category(self.pagemap.as_raw_fd());
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags,
            start: start as u64,
            end: end as u64,
            vec: self.buf.as_mut_ptr() as u64,
            vec_len: self.buf.len() as u64,
            category_inverted: guard,
            category_mask: PAGE_IS_WRITTEN | guard,
            return_mask: PAGE_IS_WRITTEN,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid `struct pm_scan_arg` whose `vec` points to `self.buf`,
        // which the kernel fills with at most `vec_len` entries during the call.
        let n = unsafe { pagemap_scan(self.pagemap.as_raw_fd(), &mut arg) }?;
        Ok((n.min(self.buf.len()), arg.walk_end as usize))
    }

    fn write_protect(&self, start: usize, len: usize) -> Result<(), DirtyError> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads one `struct uffdio_writeprotect`, which `wp` is.
        unsafe {
            syscall::ioctl(
                self.uffd.as_raw_fd(),
                UFFDIO_WRITEPROTECT,
                &mut wp as *mut UffdioWriteprotect as usize,
            )
        }
        .map(drop)
        .map_err(sys_err("UFFDIO_WRITEPROTECT", start, len))
    }

    fn unregister(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER reads one `struct uffdio_range`, which `range` is.
        unsafe {
            syscall::ioctl(
                self.uffd.as_raw_fd(),
                UFFDIO_UNREGISTER,
                &mut range as *mut UffdioRange as usize,
            )
        }
        .map(drop)
    }
}

impl DirtyTracker for UffdAsync {
    fn name(&self) -> &'static str {
        NAME
    }

    fn kind(&self) -> TrackerKind {
        TrackerKind::UffdAsync
    }

    fn track(&mut self, start: usize, len: usize) -> Result<(), DirtyError> {
        check_range(NAME, start, len)?;
        let end = start + len;
        let at = self.ranges.partition_point(|&(_, e)| e <= start);
        if self.ranges.get(at).is_some_and(|&(s, _)| s < end) {
            return Err(DirtyError::Overlap {
                tracker: NAME,
                start,
                len,
            });
        }
        if self.ranges.len() == self.ranges.capacity() {
            return Err(DirtyError::TooManyRanges {
                tracker: NAME,
                max: self.ranges.capacity(),
            });
        }
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one `struct uffdio_register`, which `reg` is.
        unsafe {
            syscall::ioctl(
                self.uffd.as_raw_fd(),
                UFFDIO_REGISTER,
                &mut reg as *mut UffdioRegister as usize,
            )
        }
        .map_err(sys_err("UFFDIO_REGISTER", start, len))?;
        let armed = if reg.ioctls & (1 << UFFDIO_WRITEPROTECT_NR) == 0 {
            Err(DirtyError::Unavailable {
                tracker: NAME,
                reason: "UFFDIO_WRITEPROTECT is not supported on this range",
            })
        } else {
            // With WP_UNPOPULATED this also protects pages never touched.
            self.write_protect(start, len)
        };
        if let Err(e) = armed {
            let _ = self.unregister(start, len);
            return Err(e);
        }
        self.ranges.insert(at, (start, end));
        Ok(())
    }

    fn untrack(&mut self, start: usize, len: usize) -> Result<(), DirtyError> {
        let Some(i) = self.ranges.iter().position(|&r| r == (start, start + len)) else {
            return Err(DirtyError::NotTracked {
                tracker: NAME,
                start,
                len,
            });
        };
        // Unregistering also clears the protection bits. A range unmapped since (ENOMEM) or
        // replaced by an unregistered mapping (EINVAL) has nothing left to undo.
        match self.unregister(start, len) {
            Ok(()) | Err(Errno(libc::ENOMEM)) | Err(Errno(libc::EINVAL)) => {
                self.ranges.remove(i);
                Ok(())
            }
            Err(errno) => Err(sys_err("UFFDIO_UNREGISTER", start, len)(errno)),
        }
    }

    fn harvest(
        &mut self,
        start: usize,
        end: usize,
        each: &mut dyn FnMut(usize, usize),
    ) -> Result<(), DirtyError> {
        let (start, end) = super::page_span(start, end);
        let mut runs = RunMerger::new(each);
        let mut result = Ok(());
        // Index loop: `scan` borrows `self` mutably for the buffer.
        'ranges: for i in 0..self.ranges.len() {
            let (rs, re) = self.ranges[i];
            let (s, e) = (rs.max(start), re.min(end));
            let mut at = s;
            while at < e {
                let (n, walk_end) =
                    match self.scan(at, e, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC) {
                        Ok(r) => r,
                        Err(errno) => {
                            result = Err(sys_err("PAGEMAP_SCAN", at, e - at)(errno));
                            break 'ranges;
                        }
                    };
                for r in &self.buf[..n] {
                    runs.push(r.start as usize, r.end as usize);
                }
                if walk_end <= at {
                    // No progress would loop forever; the kernel always advances.
                    result = Err(sys_err("PAGEMAP_SCAN", at, e - at)(Errno(libc::EIO)));
                    break 'ranges;
                }
                at = walk_end;
            }
        }
        // Pages already reported by the kernel are protected again: hand them on even when a
        // later scan failed, or their writes would be lost.
        runs.finish();
        result
    }

    fn prepare_kernel_write(&mut self, _start: usize, _len: usize) -> Result<(), DirtyError> {
        // The kernel resolves its own faults on protected pages asynchronously, as user ones.
        Ok(())
    }

    fn kernel_writes_transparent(&self) -> bool {
        true
    }

    fn internal_ranges(&self, _each: &mut dyn FnMut(usize, usize)) {
        // The scan buffer is written only by the kernel, which works on tracked pages: it may
        // share a tracked heap. Nothing needs to be kept out.
    }

    fn reset(&mut self) -> Result<(), DirtyError> {
        // Protecting every page again is what makes a page clean: PAGE_IS_WRITTEN is "not
        // write-protected".
        for &(s, e) in &self.ranges {
            self.write_protect(s, e - s)?;
        }
        Ok(())
    }

    fn untrack_all(&mut self) {
        for &(s, e) in &self.ranges {
            let _ = self.unregister(s, e - s);
        }
        self.ranges.clear();
    }

    fn each_range(&self, each: &mut dyn FnMut(usize, usize)) {
        for &(s, e) in &self.ranges {
            each(s, e);
        }
    }

    fn each_fd(&self, each: &mut dyn FnMut(i32)) {
        each(self.uffd.as_raw_fd());
        each(self.pagemap.as_raw_fd());
    }

    fn renew(&mut self, min_fd: i32) -> Result<(), DirtyError> {
        self.ranges.clear();
        let (uffd, _) = open_uffd(WANT)?;
        let (uffd, pagemap) = (raise(uffd, min_fd), raise(open_pagemap()?, min_fd));
        // The old numbers were this process's before the restore; forget them unclosed.
        core::mem::forget(core::mem::replace(&mut self.uffd, uffd));
        core::mem::forget(core::mem::replace(&mut self.pagemap, pagemap));
        Ok(())
    }
}

/// `fd` moved to a number at least `min_fd` (kept where it is if that fails).
fn raise(fd: OwnedFd, min_fd: i32) -> OwnedFd {
    if fd.as_raw_fd() >= min_fd {
        return fd;
    }
    match syscall::fcntl(
        fd.as_raw_fd(),
        libc::F_DUPFD_CLOEXEC,
        min_fd.max(0) as usize,
    ) {
        Ok(n) => owned(n as i32),
        Err(_) => fd,
    }
}

impl Drop for UffdAsync {
    fn drop(&mut self) {
        // Closing the userfaultfd would unregister too; doing it explicitly clears the
        // protection bits at once rather than when the last reference to the file goes.
        self.untrack_all();
    }
}
