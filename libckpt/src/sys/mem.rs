//! Owned anonymous mappings and the `PAGEMAP_SCAN` ioctl that finds populated pages.
//!
//! # Safety
//!
//! [`Mapping`] owns the pages it maps and unmaps them in `Drop`; it hands out raw pointers only
//! within its length. [`scan`] passes the kernel a buffer it owns for the duration of the call.
#![allow(unsafe_code)]

use super::syscall::{self, Errno, SysResult};

/// The page size (x86_64 Linux base pages).
pub const PAGE: usize = 4096;

/// Rounds down to a page boundary.
pub const fn page_floor(x: usize) -> usize {
    x & !(PAGE - 1)
}

/// Rounds up to a page boundary.
pub const fn page_ceil(x: usize) -> usize {
    (x + PAGE - 1) & !(PAGE - 1)
}

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    addr: usize,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes read-write without reserving swap: untouched pages cost nothing.
    pub fn anonymous(len: usize) -> SysResult<Mapping> {
        let len = page_ceil(len.max(PAGE));
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: no MAP_FIXED: the kernel picks an unused range.
        let addr =
            unsafe { syscall::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) }?;
        Ok(Mapping { addr, len })
    }

    /// Maps `len` bytes read-write shared with the processes this one creates afterwards.
    pub fn shared(len: usize) -> SysResult<Mapping> {
        let len = page_ceil(len.max(PAGE));
        let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
        // SAFETY: no MAP_FIXED: the kernel picks an unused range.
        let addr =
            unsafe { syscall::mmap(0, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) }?;
        Ok(Mapping { addr, len })
    }

    /// Maps `len` bytes read-write at exactly `addr`, failing if anything is there already.
    pub fn anonymous_at(addr: usize, len: usize) -> SysResult<Mapping> {
        let len = page_ceil(len.max(PAGE));
        let flags = libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_NORESERVE
            | libc::MAP_FIXED_NOREPLACE;
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let got =
            unsafe { syscall::mmap(addr, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) }?;
        if got != addr {
            // Kernels before 4.17 ignore the flag and treat the address as a hint.
            // SAFETY: we just mapped [got, got + len) and nothing else refers to it.
            let _ = unsafe { syscall::munmap(got, len) };
            return Err(Errno(libc::EEXIST));
        }
        Ok(Mapping { addr, len })
    }

    /// First address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes.
    pub fn size(&self) -> usize {
        self.len
    }

    /// Gives up ownership: the pages stay mapped for the life of the process.
    pub fn leak(self) -> (usize, usize) {
        let r = (self.addr, self.len);
        core::mem::forget(self);
        r
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own [addr, addr + len) and nothing borrows it past our lifetime.
        let _ = unsafe { syscall::munmap(self.addr, self.len) };
    }
}

/// A range of pages reported by `PAGEMAP_SCAN`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `PAGE_IS_*` categories of these pages.
    pub categories: u64,
}

/// `struct pm_scan_arg` of linux/fs.h, the argument of the `PAGEMAP_SCAN` ioctl.
#[repr(C)]
#[derive(Debug, Default)]
pub struct PmScanArg {
    /// `size_of::<PmScanArg>()`.
    pub size: u64,
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Set by the kernel: where the walk stopped.
    pub walk_end: u64,
    /// Output vector of [`PageRegion`]s.
    pub vec: u64,
    /// Entries in `vec`.
    pub vec_len: u64,
    /// Most pages to report (0: no limit).
    pub max_pages: u64,
    /// Categories that count when absent.
    pub category_inverted: u64,
    /// Categories that must all match.
    pub category_mask: u64,
    /// Categories of which one must match.
    pub category_anyof_mask: u64,
    /// Categories to report.
    pub return_mask: u64,
}

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 =
    0xC000_0000 | ((size_of::<PmScanArg>() as u64) << 16) | (b'f' as u64) << 8 | 16;

/// Issues `PAGEMAP_SCAN` on `pagemap_fd` (an open `/proc/self/pagemap`); returns the number of
/// entries the kernel filled.
///
/// # Safety
/// `arg.vec` must point to `arg.vec_len` writable [`PageRegion`]s that outlive the call, and
/// `arg.size` must be `size_of::<PmScanArg>()`.
pub unsafe fn pagemap_scan(pagemap_fd: i32, arg: &mut PmScanArg) -> SysResult {
    // SAFETY: the caller guarantees the output vector; the kernel reads and updates `arg`.
    unsafe {
        syscall::syscall6(
            libc::SYS_ioctl,
            pagemap_fd as usize,
            PAGEMAP_SCAN as usize,
            arg as *mut PmScanArg as usize,
            0,
            0,
            0,
        )
    }
}
/// Page is present in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// Page is swapped out.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Page maps the shared zero page.
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// Page is not write-protected by userfaultfd (set for every page outside a range registered
/// for write-protection).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// Page is backed by a file's page cache (not an anonymous copy).
pub const PAGE_IS_FILE: u64 = 1 << 2;

/// Page is in a guard region (`madvise(MADV_GUARD_INSTALL)`, Linux 6.13+): any access to it
/// faults. Its page-table entry is a marker that `PAGEMAP_SCAN` otherwise reports as a swapped,
/// written page, so a guard page would count as data and reading it would kill the process. The
/// category exists since Linux 6.14; older kernels refuse the bit (`EINVAL`).
const PAGE_IS_GUARD: u64 = 1 << 8;

/// Whether this kernel knows [`PAGE_IS_GUARD`]: 0 not asked yet, 1 yes, 2 no.
static GUARD_KNOWN: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// [`PAGE_IS_GUARD`], or 0 on a kernel that does not know the category. A scan that excludes
/// guard pages requires the category to be absent (`category_inverted` and `category_mask`).
///
/// The first call asks the kernel with a scan of one page that can fail only for an unknown
/// category (aligned start, no flags, a one-entry vector): a raw `ioctl`, safe in the
/// checkpoint's signal handler, where the first scan may run.
pub fn guard_category(pagemap_fd: i32) -> u64 {
    use core::sync::atomic::Ordering::Relaxed;
    let known = match GUARD_KNOWN.load(Relaxed) {
        0 => {
            static PROBE: u8 = 0;
            let page = &PROBE as *const u8 as u64 & !(PAGE as u64 - 1);
            let mut out = [PageRegion::default(); 1];
            let mut arg = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                start: page,
                end: page + PAGE as u64,
                vec: out.as_mut_ptr() as u64,
                vec_len: 1,
                category_mask: PAGE_IS_GUARD,
                return_mask: PAGE_IS_GUARD,
                ..Default::default()
            };
            // SAFETY: `arg` is a valid pm_scan_arg whose vec points to `out`, one entry long.
            let refused = unsafe { pagemap_scan(pagemap_fd, &mut arg) } == Err(Errno(libc::EINVAL));
            let k = if refused { 2 } else { 1 };
            GUARD_KNOWN.store(k, Relaxed);
            k
        }
        k => k,
    };
    if known == 1 { PAGE_IS_GUARD } else { 0 }
}

/// Which pages [`scan_populated`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Anonymous memory: pages that hold data (present or swapped, not the shared zero page).
    /// Pages never touched read as zeros.
    Populated,
    /// A private file mapping: pages that are the process's own copies (written, or relocated
    /// by the dynamic linker), not the file's pages.
    Modified,
}

/// What a run reported by [`scan_populated`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Pages that hold data: present, or swapped out while not write-protected.
    Data,
    /// Page-table entries that are either pages holding data, swapped out or being migrated
    /// while write-protected by userfaultfd, or userfaultfd write-protect markers on pages never
    /// touched. The `uffd-async` tracker's protection (`UFFD_FEATURE_WP_UNPOPULATED`) installs
    /// such a marker in every empty entry of a range it protects, and `PAGEMAP_SCAN` reports a
    /// marker as swapped: nothing but reading the page tells the two apart. A marker reads as
    /// zeros without allocating memory (the read maps the shared zero page, which later scans
    /// skip).
    DataOrMarker,
}

/// Calls `each(start, end, found)` for every run of pages in `[start, end)` of the kind `scan`
/// asks for. Uses `buf` as the kernel's output vector.
pub fn scan_populated(
    pagemap_fd: i32,
    start: usize,
    end: usize,
    scan: Scan,
    buf: &mut [PageRegion],
    mut each: impl FnMut(usize, usize, Found) -> Result<(), crate::error::RawError>,
) -> Result<SysResult<()>, crate::error::RawError> {
    // Required-zero categories: the zero page for anonymous memory, file pages for file maps.
    let exclude = match scan {
        Scan::Populated => PAGE_IS_PFNZERO,
        Scan::Modified => PAGE_IS_FILE | PAGE_IS_PFNZERO,
    };
    // The kernel splits runs wherever the reported categories change (written or protected);
    // adjacent runs that hold the same are handed on as one.
    let mut pending: Option<(usize, usize, Found)> = None;
    let mut at = start as u64;
    while at < end as u64 {
        // Guard pages are never data (and reading one faults).
        let exclude = exclude | guard_category(pagemap_fd);
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            start: at,
            end: end as u64,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            // Require the excluded categories to be absent; accept present or swapped.
            category_inverted: exclude,
            category_mask: exclude,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            // WRITTEN tells swap entries without a userfaultfd protection bit (data) from the
            // rest (see `Found::DataOrMarker`).
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_WRITTEN,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose vec points to `buf`, which the kernel fills
        // with at most `buf.len()` entries.
        let n = match unsafe { pagemap_scan(pagemap_fd, &mut arg) } {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        for r in &buf[..n.min(buf.len())] {
            let unsure = r.categories & (PAGE_IS_PRESENT | PAGE_IS_WRITTEN) == 0;
            let found = if unsure {
                Found::DataOrMarker
            } else {
                Found::Data
            };
            let (s, e) = (r.start as usize, r.end as usize);
            match &mut pending {
                Some((_, pe, pf)) if *pe == s && *pf == found => *pe = e,
                _ => {
                    if let Some((ps, pe, pf)) = pending.replace((s, e, found)) {
                        each(ps, pe, pf)?;
                    }
                }
            }
        }
        if arg.walk_end <= at {
            break;
        }
        at = arg.walk_end;
    }
    if let Some((ps, pe, pf)) = pending {
        each(ps, pe, pf)?;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_only_written_pages() {
        let m = Mapping::anonymous(64 * PAGE).unwrap();
        // SAFETY: writes inside the mapping we own.
        unsafe {
            *((m.addr() + 3 * PAGE) as *mut u8) = 1;
            *((m.addr() + 4 * PAGE) as *mut u8) = 1;
            *((m.addr() + 40 * PAGE) as *mut u8) = 1;
            // A read maps the zero page: not data.
            let _ = core::ptr::read_volatile((m.addr() + 50 * PAGE) as *const u8);
        }
        let fd = syscall::open(b"/proc/self/pagemap\0", libc::O_RDONLY, 0).unwrap();
        let mut buf = [PageRegion::default(); 1];
        let mut runs = Vec::new();
        let r = scan_populated(
            fd,
            m.addr(),
            m.addr() + m.size(),
            Scan::Populated,
            &mut buf,
            |s, e, found| {
                assert_eq!(found, Found::Data);
                runs.push(((s - m.addr()) / PAGE, (e - m.addr()) / PAGE));
                Ok(())
            },
        )
        .unwrap();
        syscall::close(fd).unwrap();
        if r == Err(Errno(libc::ENOTTY)) || r == Err(Errno(libc::EINVAL)) {
            eprintln!("PAGEMAP_SCAN unsupported on this kernel; skipping");
            return;
        }
        r.unwrap();
        assert_eq!(runs, vec![(3, 5), (40, 41)]);
    }
}
