//! Checkpoint image format v1: a header, the page data, and a manifest of typed sections.
//!
//! The layout is documented in `libckpt/IMAGE-FORMAT.md`. Records are fixed-layout
//! little-endian structs (`zerocopy`), so the writer, which runs inside the checkpoint signal
//! handler, only copies bytes into buffers prepared at `init`; the reader, which runs before a
//! restore in ordinary code, checks every size and checksum before trusting anything.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::sys::arch::Context;
use crate::sys::syscall::KernelSigaction;

/// First bytes of every image.
pub const MAGIC: [u8; 8] = *b"CKPTIMG\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 2;
/// The header occupies the first page; page data starts page-aligned after it.
pub const HEADER_SPACE: u64 = 4096;
/// Bound on a manifest read from disk: 256 MiB.
pub const MAX_MANIFEST: u64 = 256 << 20;
/// Bound on one string in the string table.
pub const MAX_STRING: u32 = 4096;

/// Image header (first page of the file).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// `size_of::<Header>()`.
    pub header_size: u32,
    /// This checkpoint's generation number (1, 2, …).
    pub generation: u64,
    /// The generation this one is relative to; 0 for a full image.
    pub parent: u64,
    /// Wall-clock time of the checkpoint, nanoseconds since the epoch.
    pub created_ns: u64,
    /// Offset of the page data (== [`HEADER_SPACE`]).
    pub data_offset: u64,
    /// Bytes of page data.
    pub data_len: u64,
    /// Offset of the manifest.
    pub manifest_offset: u64,
    /// Bytes of manifest.
    pub manifest_len: u64,
    /// Length of the whole file.
    pub total_len: u64,
    /// CRC-32C of the manifest.
    pub manifest_crc: u32,
    /// CRC-32C of this header with this field set to zero.
    pub header_crc: u32,
}

/// Section kinds of the manifest.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// Raw bytes that [`StrRef`]s point into.
    Strings = 1,
    /// One [`ProcessRec`].
    Process = 2,
    /// [`IdentityRec`]s: the executable and every mapped file.
    Identity = 3,
    /// [`RegionRec`]s: the memory map.
    Regions = 4,
    /// [`RunRec`]s: where each saved page run is in the data.
    Runs = 5,
    /// [`FileRec`]s: open files.
    Files = 6,
    /// [`SignalRec`]s: signal dispositions.
    Signals = 7,
}

/// Precedes each section: what it holds and how many bytes follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SectionHeader {
    /// A [`SectionKind`].
    pub kind: u32,
    /// Number of records.
    pub count: u32,
    /// Bytes that follow.
    pub len: u64,
}

/// A string in the string table.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct StrRef {
    /// Offset in the string table.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// Process-wide state: registers, thread pointer, break, stack, masks, working directory.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ProcessRec {
    /// The trampoline's saved registers.
    pub ctx: ContextRec,
    /// The thread pointer (`%fs` base).
    pub fs_base: u64,
    /// Start of the program break area.
    pub brk_start: u64,
    /// The program break.
    pub brk: u64,
    /// Signal mask at the time of the checkpoint (outside the handler).
    pub sigmask: u64,
    /// Alternate signal stack: `ss_sp`, `ss_size`.
    pub altstack_sp: u64,
    /// Size of the alternate signal stack.
    pub altstack_size: u64,
    /// `ss_flags` of the alternate stack.
    pub altstack_flags: u32,
    /// File creation mask.
    pub umask: u32,
    /// Current directory.
    pub cwd: StrRef,
    /// `/proc/self/exe`.
    pub exe: StrRef,
    /// Process id at capture (informational).
    pub pid: u32,
    /// Offset of the kernel thread id inside glibc's thread descriptor, or -1 if unknown.
    pub tid_offset: i32,
    /// Address of the registered rseq area, 0 if none.
    pub rseq_area: u64,
    /// Length the rseq area was registered with.
    pub rseq_len: u32,
    /// Signature the rseq area was registered with.
    pub rseq_sig: u32,
    /// Start of `[vdso]`, which must not move between checkpoint and restore.
    pub vdso: u64,
    /// Start of `[vvar]`.
    pub vvar: u64,
    /// Bytes of the image's page data, for progress reporting.
    pub saved_bytes: u64,
    /// The policy that took the checkpoint: its index in `Policy::all()`
    /// (0 `sequential`, 1 `incremental`, 2 `forked`, 3 `forked-incremental`, 4 `buffered`,
    /// 5 `buffered-incremental`).
    pub policy: u32,
    /// The dirty tracker in use: 0 none, else 1 + its index in `TrackerKind::all()`
    /// (1 `uffd-async`, 2 `mprotect`).
    pub tracker: u32,
}

/// The saved registers, as stored (the in-memory [`Context`] padded to a fixed layout).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ContextRec {
    /// rbx, rbp, r12–r15.
    pub callee_saved: [u64; 6],
    /// Stack pointer.
    pub rsp: u64,
    /// Return address.
    pub rip: u64,
    /// MXCSR.
    pub mxcsr: u32,
    /// x87 control word and padding.
    pub fpucw: u32,
}

impl From<&Context> for ContextRec {
    fn from(c: &Context) -> Self {
        ContextRec {
            callee_saved: c.callee_saved,
            rsp: c.rsp,
            rip: c.rip,
            mxcsr: c.mxcsr,
            fpucw: c.fpucw as u32,
        }
    }
}

impl From<&ContextRec> for Context {
    fn from(c: &ContextRec) -> Self {
        Context {
            callee_saved: c.callee_saved,
            rsp: c.rsp,
            rip: c.rip,
            mxcsr: c.mxcsr,
            fpucw: c.fpucw as u16,
            pad: 0,
        }
    }
}

/// Identity of a mapped file, checked before a restore.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct IdentityRec {
    /// Path.
    pub path: StrRef,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: i64,
    /// 1 for the executable, 0 for a library or other mapped file.
    pub is_exe: u32,
    /// Padding, zero.
    pub pad: u32,
}

/// Region flag: mapped `MAP_SHARED`.
pub const REGION_SHARED: u32 = 1;
/// Region flag: backed by a file (`path`, `offset`, `dev`, `ino` are meaningful).
pub const REGION_FILE: u32 = 2;
/// Region flag: the `[heap]` (program break) area.
pub const REGION_HEAP: u32 = 4;
/// Region flag: the main thread's `[stack]`.
pub const REGION_STACK: u32 = 8;
/// Region flag: contents saved in this image's runs (else restored from the file or as zeros).
pub const REGION_SAVED: u32 = 16;
/// Region flag: a kernel special mapping (`[vdso]`, `[vvar]`, `[vsyscall]`), left alone.
pub const REGION_SPECIAL: u32 = 32;
/// Region flag (incremental images): the region's contents are the chain's. Page runs of the
/// older images of the chain that fall inside it apply (oldest first, this image's last), then
/// this image's zero runs. Outside such regions only this image's runs apply.
pub const REGION_CHAIN: u32 = 64;

/// Run kind: `len` bytes of page data stored at `data_off`.
pub const RUN_DATA: u32 = 0;
/// Run kind: `len` bytes that read as zeros (pages not populated at the checkpoint); no data.
pub const RUN_ZERO: u32 = 1;

/// One mapping of the checkpointed process.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RegionRec {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset.
    pub offset: u64,
    /// Device of the file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Path or pseudo-path.
    pub path: StrRef,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `REGION_*` bits.
    pub flags: u32,
}

/// A run of saved pages: `len` bytes at `addr`, stored at `data_off` in the file.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RunRec {
    /// Address in the process.
    pub addr: u64,
    /// Length in bytes (a multiple of the page size).
    pub len: u64,
    /// Offset in the image file.
    pub data_off: u64,
    /// CRC-32C of the bytes.
    pub crc: u32,
    /// [`RUN_DATA`] or [`RUN_ZERO`].
    pub kind: u32,
}

/// File kind: a regular file, reopened by path at the same descriptor and offset.
pub const FILE_REGULAR: u32 = 1;
/// File kind: a character device such as `/dev/null`, reopened by path.
pub const FILE_CHARDEV: u32 = 2;
/// File kind: a directory, reopened by path.
pub const FILE_DIR: u32 = 3;

/// An open file descriptor.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct FileRec {
    /// Descriptor number.
    pub fd: i32,
    /// `open` flags (`F_GETFL`), plus `O_CLOEXEC` if `FD_CLOEXEC` was set.
    pub flags: i32,
    /// File offset.
    pub offset: u64,
    /// File size at the checkpoint (files open for writing are cut back to it on restore).
    pub size: u64,
    /// `FILE_*` kind.
    pub kind: u32,
    /// Padding, zero.
    pub pad: u32,
    /// Path.
    pub path: StrRef,
    /// Device of the file (`st_dev`): a restore refuses a path that now names another file.
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Birth time of the file, seconds (0 when the filesystem does not report one): inode
    /// numbers are reused at once, so this is what tells a replaced file apart.
    pub btime_sec: i64,
    /// Birth time, nanoseconds.
    pub btime_nsec: u32,
    /// Padding, zero.
    pub pad2: u32,
}

/// A signal's disposition.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SignalRec {
    /// Signal number.
    pub sig: u32,
    /// Padding, zero.
    pub pad: u32,
    /// Handler address (or 0/1 for default/ignore).
    pub handler: u64,
    /// `SA_*` flags.
    pub flags: u64,
    /// Restorer.
    pub restorer: u64,
    /// Mask during the handler.
    pub mask: u64,
}

impl From<(i32, &KernelSigaction)> for SignalRec {
    fn from((sig, a): (i32, &KernelSigaction)) -> Self {
        SignalRec {
            sig: sig as u32,
            pad: 0,
            handler: a.handler as u64,
            flags: a.flags,
            restorer: a.restorer as u64,
            mask: a.mask,
        }
    }
}

impl SignalRec {
    /// The kernel structure to reinstall.
    pub fn action(&self) -> KernelSigaction {
        KernelSigaction {
            handler: self.handler as usize,
            flags: self.flags,
            restorer: self.restorer as usize,
            mask: self.mask,
        }
    }
}

impl Header {
    /// The CRC of the header with `header_crc` zeroed.
    pub fn compute_crc(&self) -> u32 {
        let mut h = *self;
        h.header_crc = 0;
        crc32c::crc32c(h.as_bytes())
    }
}

/// Why an image cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The file is shorter than its header says.
    #[error("truncated: {what}")]
    Truncated {
        /// Which part is missing.
        what: &'static str,
    },
    /// Not an image at all.
    #[error("bad magic (not a ckpt image)")]
    BadMagic,
    /// An image of another format version.
    #[error("format version {found} (this build reads version {VERSION})")]
    Version {
        /// The version found.
        found: u32,
    },
    /// A checksum does not match.
    #[error("checksum mismatch in {what}")]
    Checksum {
        /// Which part.
        what: String,
    },
    /// A size or offset is out of bounds.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// A parsed, checked manifest with owned records.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// The header.
    pub header: Header,
    /// The string table.
    pub strings: Vec<u8>,
    /// Process state.
    pub process: ProcessRec,
    /// Mapped files' identities.
    pub identity: Vec<IdentityRec>,
    /// The memory map.
    pub regions: Vec<RegionRec>,
    /// Saved page runs.
    pub runs: Vec<RunRec>,
    /// Open files.
    pub files: Vec<FileRec>,
    /// Signal dispositions.
    pub signals: Vec<SignalRec>,
}

impl Manifest {
    /// The bytes of a string reference (bounds were checked at parse time).
    pub fn str(&self, r: StrRef) -> &[u8] {
        &self.strings[r.offset as usize..(r.offset + r.len) as usize]
    }

    /// A string reference as text, for messages.
    pub fn text(&self, r: StrRef) -> String {
        String::from_utf8_lossy(self.str(r)).into_owned()
    }
}

/// Checks a header read from the first bytes of a file of length `file_len`.
pub fn check_header(bytes: &[u8], file_len: u64) -> Result<Header, FormatError> {
    let (h, _) =
        Header::read_from_prefix(bytes).map_err(|_| FormatError::Truncated { what: "header" })?;
    if h.magic != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if h.version != VERSION {
        return Err(FormatError::Version { found: h.version });
    }
    if h.header_size as usize != size_of::<Header>() || h.compute_crc() != h.header_crc {
        return Err(FormatError::Checksum {
            what: "header".into(),
        });
    }
    if h.total_len != file_len {
        return Err(if file_len < h.total_len {
            FormatError::Truncated {
                what: "file shorter than its header says",
            }
        } else {
            FormatError::Malformed(format!(
                "file is {file_len} bytes, header says {}",
                h.total_len
            ))
        });
    }
    let data_end = h.data_offset.checked_add(h.data_len);
    let man_end = h.manifest_offset.checked_add(h.manifest_len);
    match (data_end, man_end) {
        (Some(d), Some(m))
            if h.data_offset == HEADER_SPACE
                && d <= h.manifest_offset
                && m == h.total_len
                && h.manifest_len <= MAX_MANIFEST => {}
        _ => {
            return Err(FormatError::Malformed(
                "section offsets out of bounds".into(),
            ));
        }
    }
    Ok(h)
}

/// Parses and checks a manifest (its bytes as read from `header.manifest_offset`).
pub fn parse_manifest(header: Header, bytes: &[u8]) -> Result<Manifest, FormatError> {
    if bytes.len() as u64 != header.manifest_len {
        return Err(FormatError::Truncated { what: "manifest" });
    }
    if crc32c::crc32c(bytes) != header.manifest_crc {
        return Err(FormatError::Checksum {
            what: "manifest".into(),
        });
    }
    let mut m = Manifest {
        header,
        ..Default::default()
    };
    let mut rest = bytes;
    let mut seen_process = false;
    while !rest.is_empty() {
        let (sh, tail) =
            SectionHeader::read_from_prefix(rest).map_err(|_| FormatError::Truncated {
                what: "section header",
            })?;
        let len = usize::try_from(sh.len).ok().filter(|&l| l <= tail.len());
        let Some(len) = len else {
            return Err(FormatError::Malformed(format!(
                "section {} overruns the manifest",
                sh.kind
            )));
        };
        let (body, tail) = tail.split_at(len);
        rest = tail;
        match sh.kind {
            k if k == SectionKind::Strings as u32 => m.strings = body.to_vec(),
            k if k == SectionKind::Process as u32 => {
                m.process = records::<ProcessRec>(body, sh.count, "process")?
                    .first()
                    .copied()
                    .ok_or_else(|| FormatError::Malformed("empty process section".into()))?;
                seen_process = true;
            }
            k if k == SectionKind::Identity as u32 => {
                m.identity = records(body, sh.count, "identity")?
            }
            k if k == SectionKind::Regions as u32 => {
                m.regions = records(body, sh.count, "regions")?
            }
            k if k == SectionKind::Runs as u32 => m.runs = records(body, sh.count, "runs")?,
            k if k == SectionKind::Files as u32 => m.files = records(body, sh.count, "files")?,
            k if k == SectionKind::Signals as u32 => {
                m.signals = records(body, sh.count, "signals")?
            }
            // Sections of later minor revisions are skipped: the version field guards real breaks.
            _ => {}
        }
    }
    if !seen_process {
        return Err(FormatError::Malformed("no process section".into()));
    }
    check_refs(&m)?;
    Ok(m)
}

fn records<T: FromBytes + Copy>(
    body: &[u8],
    count: u32,
    what: &str,
) -> Result<Vec<T>, FormatError> {
    let size = size_of::<T>();
    if body.len() != size * count as usize {
        return Err(FormatError::Malformed(format!(
            "{what} section is {} bytes for {count} records",
            body.len()
        )));
    }
    Ok(body
        .chunks_exact(size)
        .map(|c| T::read_from_bytes(c).expect("chunk has the record's size"))
        .collect())
}

fn check_refs(m: &Manifest) -> Result<(), FormatError> {
    let ok = |r: StrRef| {
        r.len <= MAX_STRING && (r.offset as u64 + r.len as u64) <= m.strings.len() as u64
    };
    let p = &m.process;
    let refs = [p.cwd, p.exe]
        .into_iter()
        .chain(m.identity.iter().map(|i| i.path))
        .chain(m.regions.iter().map(|r| r.path))
        .chain(m.files.iter().map(|f| f.path));
    if !refs.into_iter().all(ok) {
        return Err(FormatError::Malformed(
            "string reference out of bounds".into(),
        ));
    }
    let page = 4096u64;
    let h = &m.header;
    for r in &m.regions {
        if r.start % page != 0 || r.end % page != 0 || r.end <= r.start {
            return Err(FormatError::Malformed(format!(
                "region {:#x}-{:#x} not page aligned",
                r.start, r.end
            )));
        }
    }
    for run in &m.runs {
        let end = run.data_off.checked_add(run.len);
        let in_data = match run.kind {
            RUN_DATA => end
                .is_some_and(|e| run.data_off >= h.data_offset && e <= h.data_offset + h.data_len),
            RUN_ZERO => run.data_off == 0 && run.crc == 0,
            _ => false,
        };
        let aligned = run.addr % page == 0 && run.len % page == 0 && run.len > 0;
        if !in_data || !aligned || run.addr.checked_add(run.len).is_none() {
            return Err(FormatError::Malformed(format!(
                "page run at {:#x} out of bounds",
                run.addr
            )));
        }
        let needs = if run.kind == RUN_ZERO {
            REGION_CHAIN
        } else {
            REGION_SAVED
        };
        let inside = m
            .regions
            .iter()
            .any(|r| r.start <= run.addr && run.addr + run.len <= r.end && r.flags & needs != 0);
        if !inside {
            return Err(FormatError::Malformed(format!(
                "page run at {:#x} outside every saved region",
                run.addr
            )));
        }
    }
    Ok(())
}

// The sizes IMAGE-FORMAT.md documents.
const _: () = assert!(size_of::<Header>() == 88);
const _: () = assert!(
    size_of::<RegionRec>() == 56 && size_of::<RunRec>() == 32 && size_of::<FileRec>() == 72
);
