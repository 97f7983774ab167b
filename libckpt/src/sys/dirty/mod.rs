//! Dirty-page tracking for incremental checkpoints: which pages were written since the last look.
//!
//! A [`DirtyTracker`] watches page-aligned ranges. [`DirtyTracker::harvest`] reports the runs of
//! pages written since the previous harvest and, in the same step, marks them clean again, so
//! every write lands in exactly one harvest. Harvesting is async-signal-safe (no allocation, no
//! locks, raw system calls into buffers the tracker allocated when it was created), so the
//! checkpoint signal handler can call it.
//!
//! Two implementations (DESIGN.md §4):
//!
//! - [`UffdAsync`]: userfaultfd write-protection in asynchronous mode. The kernel resolves the
//!   write fault itself (no signal, no thread); `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`
//!   returns the written pages and write-protects them again in one ioctl. Needs Linux 6.7+.
//! - [`Mprotect`]: libckpt's way, portable. Tracked pages are made read-only; a `SIGSEGV`
//!   handler marks the page in a bitmap and makes it writable again.
//!
//! [`best_available`] picks the best one that works on this kernel, or the one named by
//! `CKPT_TRACKER=uffd-async|mprotect`, and fails clearly when the named one does not work.
//!
//! # Writes by the kernel
//!
//! A system call that writes into a tracked page (`read(2)` into a buffer) must work under every
//! tracker, and the page must be reported:
//!
//! - `UffdAsync`: works transparently. The kernel's own access to a write-protected page takes
//!   the same asynchronous resolution as a user write, so the page is written and reported.
//! - `Mprotect`: the kernel does not raise `SIGSEGV` for its own accesses; the system call fails
//!   with `EFAULT` and nothing is written. Two remedies:
//!   - The program's own calls: `ckpt` replaces the C library's `read`, `pread`, `readv`,
//!     `preadv`, `preadv2`, `recv`, `recvfrom`, `recvmsg`, `recvmmsg`, `getrandom` (and the
//!     64-bit and `_FORTIFY_SOURCE` variants) for the whole program (`sys::interpose`): while
//!     this tracker exists they run the system call through [`kernel_write`], which marks the
//!     destination's tracked pages written and unprotects them first, and retries if a
//!     checkpoint protected them again before or during the call (a blocking `read` restarted
//!     after the checkpoint signal). Without a tracker they cost one atomic load. Not covered:
//!     raw `syscall(SYS_read, ...)`, the C library's internal reads (stdio's `fread`, `fgets`,
//!     `fscanf`...; `readdir`), asynchronous I/O (io_uring, AIO), and calls that fill small
//!     results (`stat`, `poll`, `getdents64`, ...), usually on the stack, which this tracker does
//!     not track (`sys::interpose` lists them).
//!   - The library's own calls: code that lets the kernel write into tracked memory calls
//!     [`DirtyTracker::prepare_kernel_write`] on the buffer first, which marks its pages dirty
//!     and unprotects them (cheap, async-signal-safe, a no-op under `UffdAsync`), or issues the
//!     call through [`kernel_write`]. [`DirtyTracker::kernel_writes_transparent`] says which
//!     case applies.
//!
//!   Prefer `UffdAsync`, which [`best_available`] does.
//!
//! # Contract for callers
//!
//! - Tracked ranges are private read-write memory: anonymous (heap, anonymous `mmap`, `.bss`)
//!   or private file mappings (`.data`; both trackers see their copy-on-write, tested on Linux
//!   6.18). The `[stack]` only under `UffdAsync` (see [`Mprotect`]). If the kernel refuses to
//!   register a range, `track` fails (`UFFDIO_REGISTER`): treat that region as dirty every time.
//! - Never track the tracker's own memory ([`DirtyTracker::internal_ranges`]).
//! - When a tracked region is unmapped, shrinks or is replaced, untrack it before the next
//!   harvest (and track what replaced it): under `UffdAsync` a harvest over a mapping that is not
//!   registered fails (`EPERM`); under `Mprotect` dirty pages that are no longer mapped make the
//!   harvest fail (`ENOMEM`) and writes to a replacing mapping are not seen.
//! - A failed harvest has still delivered every run it re-armed; treat the failure as "dirty set
//!   unknown" and take a full checkpoint.
//! - After a restore, trackers are kernel state that did not survive: create a new one and take
//!   a full checkpoint first.
//! - Under `Mprotect`, code that writes tracked memory must not run with `SIGSEGV` blocked: a
//!   fault on a blocked `SIGSEGV` kills the process. The checkpoint handler therefore must leave
//!   `SIGSEGV` out of its mask if its callbacks write into tracked memory.
//! - `harvest` re-arms at once: if the checkpoint then fails before it commits, the runs it
//!   harvested are clean to the tracker but not saved. Keep them until the commit, or take a
//!   full checkpoint after a failed one.
//! - Regions created or grown after the last checkpoint count as dirty; the tracker only knows
//!   the ranges it was given, and a shrinking `brk` or an `munmap` shows in the region table.
//!   Not handled here: pages discarded with `MADV_DONTNEED` inside a tracked range read as zeros
//!   but are not reported (allocators such as jemalloc rely on those zeros). Capture must find
//!   them another way, e.g. by also saving which pages are populated
//!   (`sys::mem::scan_populated`) and restoring the rest as zeros.
//! - Transparent huge pages are reported whole (a write to one 4 KiB page of a 2 MiB page under
//!   `UffdAsync` may report the 2 MiB page): a superset, never less.

use std::fmt;

use super::syscall::Errno;

mod mprotect;
mod uffd;

pub use mprotect::{Mprotect, before_kernel_write, kernel_write};
pub(crate) use mprotect::{remap, reprotect};
pub use uffd::UffdAsync;

/// The environment variable that forces a tracker.
pub const TRACKER_ENV: &str = "CKPT_TRACKER";

/// A failure of a tracker operation. `Copy` and allocation-free: it is built in signal handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirtyError {
    /// The kernel lacks something the tracker needs.
    #[error("{tracker} dirty tracking is unavailable: {reason}")]
    Unavailable {
        /// The tracker's name.
        tracker: &'static str,
        /// What is missing.
        reason: &'static str,
    },
    /// A system call failed.
    #[error("{tracker}: {op} of {start:#x}+{len:#x} failed: {errno}")]
    Sys {
        /// The tracker's name.
        tracker: &'static str,
        /// The operation (`userfaultfd`, `UFFDIO_REGISTER`, `PAGEMAP_SCAN`, `mprotect`, ...).
        op: &'static str,
        /// First address involved (0 when none).
        start: usize,
        /// Length involved (0 when none).
        len: usize,
        /// The error.
        errno: Errno,
    },
    /// A range is empty or not page-aligned.
    #[error("{tracker}: range {start:#x}+{len:#x} is empty or not page-aligned")]
    Unaligned {
        /// The tracker's name.
        tracker: &'static str,
        /// First address.
        start: usize,
        /// Length.
        len: usize,
    },
    /// A range overlaps one already tracked.
    #[error("{tracker}: range {start:#x}+{len:#x} overlaps a tracked range")]
    Overlap {
        /// The tracker's name.
        tracker: &'static str,
        /// First address.
        start: usize,
        /// Length.
        len: usize,
    },
    /// `untrack` was given a range that is not tracked.
    #[error("{tracker}: range {start:#x}+{len:#x} is not tracked")]
    NotTracked {
        /// The tracker's name.
        tracker: &'static str,
        /// First address.
        start: usize,
        /// Length.
        len: usize,
    },
    /// The fixed-size range table is full.
    #[error("{tracker}: at most {max} ranges can be tracked")]
    TooManyRanges {
        /// The tracker's name.
        tracker: &'static str,
        /// The table's size.
        max: usize,
    },
    /// Another tracker of this kind is alive (the mprotect tracker's state is process-global).
    #[error("{tracker}: another tracker of this kind is active in this process")]
    Busy {
        /// The tracker's name.
        tracker: &'static str,
    },
}

/// Tracks writes to page-aligned ranges of this process's memory.
///
/// Addresses are passed as `usize`; ranges are `[start, start + len)` with both page-aligned.
/// `harvest`, `prepare_kernel_write`, `reset` and `untrack_all` are async-signal-safe.
pub trait DirtyTracker: fmt::Debug + Send {
    /// The tracker's name as `CKPT_TRACKER` spells it.
    fn name(&self) -> &'static str;

    /// Which kind this is.
    fn kind(&self) -> TrackerKind;

    /// Starts tracking `[start, start + len)`: from now its pages count as clean. The range must
    /// be mapped and must not overlap a tracked range.
    fn track(&mut self, start: usize, len: usize) -> Result<(), DirtyError>;

    /// Stops tracking a range given to [`track`](Self::track) (exactly that range). Writes to
    /// it are no longer seen and its pages are left writable. A range that was unmapped since
    /// is forgotten without error.
    fn untrack(&mut self, start: usize, len: usize) -> Result<(), DirtyError>;

    /// Calls `each(run_start, run_end)` for every run of tracked pages overlapping
    /// `[start, end)` (widened to whole pages) written
    /// since the last harvest of them, in address order, adjacent runs merged, and marks those
    /// pages clean again, atomically with respect to further writes: a write after a page was
    /// reported is reported by the next harvest. `each` may write to tracked memory.
    fn harvest(
        &mut self,
        start: usize,
        end: usize,
        each: &mut dyn FnMut(usize, usize),
    ) -> Result<(), DirtyError>;

    /// Makes a coming kernel write (a system call's output buffer) into `[start, start + len)`
    /// work: its tracked pages are marked dirty and, where needed, unprotected. Unaligned
    /// ranges are widened to whole pages; untracked parts are ignored.
    fn prepare_kernel_write(&mut self, start: usize, len: usize) -> Result<(), DirtyError>;

    /// Whether a system call can write into tracked memory without
    /// [`prepare_kernel_write`](Self::prepare_kernel_write) (and the page is reported).
    fn kernel_writes_transparent(&self) -> bool;

    /// Calls `each(start, end)` for memory the tracker itself writes from user space while
    /// harvesting or handling a fault (the mprotect tracker's bitmaps): it must not be tracked,
    /// and need not be checkpointed.
    fn internal_ranges(&self, each: &mut dyn FnMut(usize, usize));

    /// Forgets the dirty set: every tracked page counts as clean from now, as if just tracked,
    /// without being reported (after a full checkpoint).
    fn reset(&mut self) -> Result<(), DirtyError>;

    /// Stops tracking every range (as `untrack` on each, errors ignored); the tracker can be
    /// used again.
    fn untrack_all(&mut self);

    /// Calls `each(start, end)` for every tracked range, in address order.
    fn each_range(&self, each: &mut dyn FnMut(usize, usize));

    /// Calls `each(fd)` for every file descriptor the tracker holds (none are the
    /// application's; a checkpoint must not record them).
    fn each_fd(&self, each: &mut dyn FnMut(i32));

    /// Forgets every range without touching memory and re-creates the tracker's kernel objects,
    /// giving its descriptors numbers at least `min_fd`: for a process just restored from a
    /// checkpoint, whose memory holds this tracker but whose kernel state (descriptors,
    /// registrations, protections) is new. The descriptor numbers remembered in the restored
    /// memory are not closed: they may belong to files restored since. Allocation-free.
    fn renew(&mut self, min_fd: i32) -> Result<(), DirtyError>;
}

/// The trackers this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackerKind {
    /// userfaultfd asynchronous write-protection + `PAGEMAP_SCAN`.
    UffdAsync,
    /// `mprotect` read-only + `SIGSEGV` handler.
    Mprotect,
}

impl TrackerKind {
    /// Every kind, best first. (A function, not an associated constant: cbindgen would export
    /// the constant's type into the C header.)
    pub fn all() -> [TrackerKind; 2] {
        [TrackerKind::UffdAsync, TrackerKind::Mprotect]
    }

    /// The name `CKPT_TRACKER` uses.
    pub fn name(self) -> &'static str {
        match self {
            TrackerKind::UffdAsync => "uffd-async",
            TrackerKind::Mprotect => "mprotect",
        }
    }

    /// Parses a `CKPT_TRACKER` value.
    pub fn parse(s: &str) -> Result<TrackerKind, SelectError> {
        TrackerKind::all()
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| SelectError::Unknown(s.to_owned()))
    }

    /// The kind forced by `CKPT_TRACKER`, if set and not empty.
    pub fn from_env() -> Result<Option<TrackerKind>, SelectError> {
        match std::env::var(TRACKER_ENV) {
            Ok(v) if !v.trim().is_empty() => TrackerKind::parse(&v).map(Some),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(SelectError::Unknown(v.to_string_lossy().into_owned()))
            }
        }
    }

    /// Creates a tracker of this kind, or says why it does not work here.
    pub fn open(self) -> Result<Box<dyn DirtyTracker>, DirtyError> {
        Ok(match self {
            TrackerKind::UffdAsync => Box::new(UffdAsync::new()?),
            TrackerKind::Mprotect => Box::new(Mprotect::new()?),
        })
    }
}

impl fmt::Display for TrackerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why no tracker could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// `CKPT_TRACKER` names no tracker.
    #[error("CKPT_TRACKER={0:?} is not a dirty tracker (expected uffd-async or mprotect)")]
    Unknown(String),
    /// The forced tracker does not work here.
    #[error("CKPT_TRACKER={kind} was requested but cannot be used: {source}")]
    Forced {
        /// The requested kind.
        kind: TrackerKind,
        /// Why it failed.
        source: DirtyError,
    },
    /// No tracker works here; the failure of each, best first.
    #[error("no dirty tracker works here: uffd-async: {uffd}; mprotect: {mprotect}")]
    NoneAvailable {
        /// Why `UffdAsync` failed.
        uffd: DirtyError,
        /// Why `Mprotect` failed.
        mprotect: DirtyError,
    },
}

/// The tracker `CKPT_TRACKER` names, else the best one that works on this kernel. Which one was
/// chosen is [`DirtyTracker::name`].
pub fn best_available() -> Result<Box<dyn DirtyTracker>, SelectError> {
    open(TrackerKind::from_env()?)
}

/// `Some(kind)`: that tracker or an error saying why not. `None`: the best that works.
pub fn open(kind: Option<TrackerKind>) -> Result<Box<dyn DirtyTracker>, SelectError> {
    if let Some(kind) = kind {
        return kind
            .open()
            .map_err(|source| SelectError::Forced { kind, source });
    }
    let uffd = match TrackerKind::UffdAsync.open() {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    TrackerKind::Mprotect
        .open()
        .map_err(|mprotect| SelectError::NoneAvailable { uffd, mprotect })
}

/// Merges adjacent runs before handing them on, so every tracker reports the same runs whatever
/// the kernel's or the bitmap's chunking.
struct RunMerger<'a> {
    pending: Option<(usize, usize)>,
    each: &'a mut dyn FnMut(usize, usize),
}

impl<'a> RunMerger<'a> {
    fn new(each: &'a mut dyn FnMut(usize, usize)) -> Self {
        RunMerger {
            pending: None,
            each,
        }
    }

    fn push(&mut self, start: usize, end: usize) {
        match self.pending {
            Some((s, e)) if e == start => self.pending = Some((s, end)),
            Some((s, e)) => {
                self.pending = Some((start, end));
                (self.each)(s, e);
            }
            None => self.pending = Some((start, end)),
        }
    }

    fn finish(mut self) {
        if let Some((s, e)) = self.pending.take() {
            (self.each)(s, e);
        }
    }
}

/// `[start, end)` widened to whole pages (saturating at the top of the address space).
fn page_span(start: usize, end: usize) -> (usize, usize) {
    use super::mem::PAGE;
    let lo = start & !(PAGE - 1);
    let hi = end
        .checked_next_multiple_of(PAGE)
        .unwrap_or(usize::MAX & !(PAGE - 1));
    (lo, hi)
}

/// Checks a range given to `track`/`untrack`.
fn check_range(tracker: &'static str, start: usize, len: usize) -> Result<(), DirtyError> {
    use super::mem::PAGE;
    if len == 0
        || !start.is_multiple_of(PAGE)
        || !len.is_multiple_of(PAGE)
        || start.checked_add(len).is_none()
    {
        return Err(DirtyError::Unaligned {
            tracker,
            start,
            len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
