//! Scratch memory prepared at `init` for the checkpoint signal handler, which may not allocate.
//!
//! # Safety
//!
//! The arena is one anonymous mapping carved into disjoint typed slices. Every record type is
//! plain data for which all-zero bytes are a valid value, and the mapping starts zeroed, so each
//! slice is initialised. The mapping is never unmapped while the runtime lives, and the slices
//! are only reached through `&mut Arena`, which the runtime hands to one capture at a time.
#![allow(unsafe_code)]

use crate::image::{FileRec, IdentityRec, RegionRec, RunRec, SignalRec};
use crate::sys::mem::{Mapping, PAGE, PageRegion};
use crate::sys::syscall::SysResult;

/// Capacities, chosen for large scientific processes; untouched arena pages cost nothing.
pub mod cap {
    /// Bytes of `/proc/self/maps` text.
    pub const MAPS: usize = 8 << 20;
    /// Bytes of strings in one image.
    pub const STRINGS: usize = 4 << 20;
    /// Bytes of directory entries read at once.
    pub const DENTS: usize = 64 << 10;
    /// Memory regions.
    pub const REGIONS: usize = 32 << 10;
    /// Page runs (each at most [`super::RUN_MAX`] bytes).
    pub const RUNS: usize = 1 << 20;
    /// Mapped files.
    pub const IDENTITY: usize = 4 << 10;
    /// Open files.
    pub const FILES: usize = 4 << 10;
    /// `PAGEMAP_SCAN` output entries per call.
    pub const SCAN: usize = 16 << 10;
    /// Runs of written pages harvested for one incremental checkpoint.
    pub const DIRTY: usize = 1 << 20;
    /// Ranges the dirty tracker watches.
    pub const TRACKED: usize = 2048;
}

/// One range the dirty tracker watched at the start of a capture.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracked {
    /// The range.
    pub start: usize,
    /// See `start`.
    pub end: usize,
    /// Its harvested runs: `dirty[first..last]`.
    pub first: usize,
    /// See `first`.
    pub last: usize,
    /// Harvested, still the same mapping, still tracked: its dirty runs are the truth.
    pub intact: bool,
}

/// Longest page run: long enough for sequential I/O, short enough that a damaged run is found
/// precisely and that checksum and write share the cache.
pub const RUN_MAX: usize = 1 << 20;

/// Bytes of the stack the capture runs on.
pub const CAPTURE_STACK: usize = 512 << 10;

/// Bytes of the stack a background writer process runs on.
pub const WRITER_STACK: usize = 512 << 10;

/// Typed scratch slices; see the module documentation.
#[derive(Debug)]
pub struct Arena {
    /// The whole mapping, excluded from checkpoints.
    pub range: (usize, usize),
    /// Top of the capture's own stack (16-byte aligned), above a guard page.
    pub stack_top: usize,
    /// Top of the background writer's stack, above a guard page (see `capture::Writer`).
    pub writer_stack_top: usize,
    /// `/proc/self/maps` text.
    pub maps: &'static mut [u8],
    /// The image's string table.
    pub strings: &'static mut [u8],
    /// `getdents64` output.
    pub dents: &'static mut [u8],
    /// Region records.
    pub regions: &'static mut [RegionRec],
    /// Run records.
    pub runs: &'static mut [RunRec],
    /// Identity records.
    pub identity: &'static mut [IdentityRec],
    /// File records.
    pub files: &'static mut [FileRec],
    /// Signal records.
    pub signals: &'static mut [SignalRec; 64],
    /// `PAGEMAP_SCAN` output.
    pub scan: &'static mut [PageRegion],
    /// Holds a run read through `/proc/self/mem` (memory without read permission).
    pub bounce: &'static mut [u8],
    /// Harvested runs of written pages, `(start, end)`.
    pub dirty: &'static mut [(usize, usize)],
    /// The tracker's ranges at the start of a capture.
    pub tracked: &'static mut [Tracked],
}

struct Carver {
    next: usize,
    end: usize,
}

impl Carver {
    /// Takes `n` values of `T` (zero-initialised plain data) from the mapping.
    ///
    /// # Safety
    /// All-zero bytes must be a valid `T`; the returned slice must be the only reference to
    /// those bytes.
    unsafe fn take<T>(&mut self, n: usize) -> &'static mut [T] {
        let align = align_of::<T>().max(64);
        let start = (self.next + align - 1) & !(align - 1);
        let bytes = n * size_of::<T>();
        assert!(
            start + bytes <= self.end,
            "arena layout exceeds its mapping"
        );
        self.next = start + bytes;
        // SAFETY: [start, start + bytes) lies in the zeroed mapping, is aligned for T, and is
        // handed out once (the cursor only moves forward).
        unsafe { core::slice::from_raw_parts_mut(start as *mut T, n) }
    }
}

impl Arena {
    /// Maps and carves a new arena. The mapping lives until the process ends (the restored
    /// runtime refers to it by address, and a restore re-creates it in place as zeros).
    pub fn new() -> SysResult<Arena> {
        let size = PAGE
            + CAPTURE_STACK
            + PAGE
            + WRITER_STACK
            + cap::MAPS
            + cap::STRINGS
            + cap::DENTS
            + cap::REGIONS * size_of::<RegionRec>()
            + cap::RUNS * size_of::<RunRec>()
            + cap::IDENTITY * size_of::<IdentityRec>()
            + cap::FILES * size_of::<FileRec>()
            + 64 * size_of::<SignalRec>()
            + cap::SCAN * size_of::<PageRegion>()
            + RUN_MAX
            + cap::DIRTY * size_of::<(usize, usize)>()
            + cap::TRACKED * size_of::<Tracked>()
            + PAGE
            + 18 * 64;
        let (addr, len) = Mapping::anonymous(size)?.leak();
        // The capture stack comes first, above a guard page: an overflow faults instead of
        // running into the buffers.
        // SAFETY: the first page of the fresh mapping is ours and holds nothing.
        unsafe { crate::sys::syscall::mprotect(addr, PAGE, libc::PROT_NONE) }?;
        let stack_top = addr + PAGE + CAPTURE_STACK;
        // SAFETY: the page above the capture stack is ours and holds nothing.
        unsafe { crate::sys::syscall::mprotect(stack_top, PAGE, libc::PROT_NONE) }?;
        let writer_stack_top = stack_top + PAGE + WRITER_STACK;
        let mut c = Carver {
            next: writer_stack_top,
            end: addr + len,
        };
        // SAFETY: every type below is plain data valid when zeroed, and each slice is disjoint.
        unsafe {
            Ok(Arena {
                range: (addr, addr + len),
                stack_top,
                writer_stack_top,
                maps: c.take(cap::MAPS),
                strings: c.take(cap::STRINGS),
                dents: c.take(cap::DENTS),
                regions: c.take(cap::REGIONS),
                runs: c.take(cap::RUNS),
                identity: c.take(cap::IDENTITY),
                files: c.take(cap::FILES),
                signals: &mut *(c.take::<SignalRec>(64).as_mut_ptr() as *mut [SignalRec; 64]),
                scan: c.take(cap::SCAN),
                bounce: c.take(RUN_MAX),
                dirty: c.take(cap::DIRTY),
                tracked: c.take(cap::TRACKED),
            })
        }
    }
}
