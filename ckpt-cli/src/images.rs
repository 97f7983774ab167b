//! Reading a store's image files with the library's own checks (`ckpt::image`,
//! `ckpt::store`), and checking what a restore checks (`libckpt/IMAGE-FORMAT.md`, "What a reader
//! checks"): header, manifest, every data run's CRC-32C, the generation in the file name, and
//! the chain links.
//!
//! Nothing here writes to a store: a running program may be using it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ckpt::image::{self, FormatError, Header, Manifest};
use ckpt::store;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Why an image (or the chain it builds on) cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The header or manifest is damaged (the library's check says how).
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the library's check found.
        source: FormatError,
    },
    /// A data run's bytes do not match its checksum.
    #[error(
        "{path}: checksum mismatch in data run {index} at address {addr:#x}-{end:#x} ({len} bytes \
         at file offset {off:#x}): stored CRC-32C {expected:08x}, the data gives {found:08x}",
        end = addr + len
    )]
    RunChecksum {
        /// The file.
        path: PathBuf,
        /// The run's index in the manifest's Runs section.
        index: usize,
        /// Its address in the process.
        addr: u64,
        /// Its length.
        len: u64,
        /// Its offset in the file.
        off: u64,
        /// The CRC the manifest holds.
        expected: u32,
        /// The CRC of the bytes found.
        found: u32,
    },
    /// A data run extends past the end of the file.
    #[error(
        "{path}: data run {index} at address {addr:#x} ({len} bytes at file offset {off:#x}) is cut off by the end of the file"
    )]
    RunTruncated {
        /// The file.
        path: PathBuf,
        /// The run's index.
        index: usize,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u64,
        /// Its offset in the file.
        off: u64,
    },
    /// The file name says one generation, the header another.
    #[error("{path}: the file is named generation {named} but holds generation {found}")]
    WrongGeneration {
        /// The file.
        path: PathBuf,
        /// From the name.
        named: u64,
        /// From the header.
        found: u64,
    },
    /// An incremental image whose parent is not older.
    #[error("{path}: generation {generation} builds on generation {parent}, which is not older")]
    ParentNotOlder {
        /// The file.
        path: PathBuf,
        /// This image's generation.
        generation: u64,
        /// Its parent.
        parent: u64,
    },
    /// An incremental image whose parent is not a committed image of the store.
    #[error(
        "generation {generation} builds on generation {parent}, which is not a committed image in {dir}{note}"
    )]
    ParentMissing {
        /// The store.
        dir: PathBuf,
        /// The incremental image.
        generation: u64,
        /// Its missing parent.
        parent: u64,
        /// Where the parent went, when a file of it is left.
        note: String,
    },
    /// The image itself failed a check (the message names the file and the check).
    #[error("{0}")]
    Unusable(String),
    /// An older image of the chain is damaged.
    #[error("generation {generation} builds on generation {parent}, which is unusable: {reason}")]
    ParentUnusable {
        /// The image whose chain is broken.
        generation: u64,
        /// The damaged link.
        parent: u64,
        /// Why.
        reason: String,
    },
}

/// An image whose header and manifest passed the library's checks.
#[derive(Debug)]
pub struct Image {
    /// The file.
    pub path: PathBuf,
    /// Open for reading.
    pub file: File,
    /// The checked manifest (with the header).
    pub manifest: Manifest,
}

impl Image {
    /// The header.
    pub fn header(&self) -> &Header {
        &self.manifest.header
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads and checks the header of `path` (magic, version, sizes, `header_crc`, offsets).
pub fn read_header(path: &Path) -> Result<(File, u64, Header), ImageError> {
    let file = File::open(path).map_err(io("open", path))?;
    let len = file.metadata().map_err(io("stat", path))?.len();
    let mut head = vec![0u8; size_of::<Header>()];
    let got = read_at_most(&file, &mut head, 0).map_err(io("read", path))?;
    let header = image::check_header(&head[..got], len).map_err(|source| ImageError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((file, len, header))
}

/// Opens an image and checks its header and manifest (not the page data).
pub fn open(path: &Path) -> Result<Image, ImageError> {
    let (file, _, header) = read_header(path)?;
    let mut man = vec![0u8; header.manifest_len as usize];
    file.read_exact_at(&mut man, header.manifest_offset)
        .map_err(io("read", path))?;
    let manifest = image::parse_manifest(header, &man).map_err(|source| ImageError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Image {
        path: path.to_path_buf(),
        file,
        manifest,
    })
}

fn read_at_most(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The generation a store file's name says, if it is a store file name.
pub fn named_generation(path: &Path) -> Option<(u64, String)> {
    let name = path.file_name()?;
    store::parse_name(name.as_encoded_bytes())
        .map(|(g, s)| (g, String::from_utf8_lossy(s).into_owned()))
}

/// What a restore checks of one image by itself: the generation its name says, every data run's
/// CRC-32C (read once, in file order; `progress` advances by the bytes read), and a parent
/// strictly older. Returns the bytes of page data read.
pub fn check_image(img: &Image, progress: &ProgressBar) -> Result<u64, ImageError> {
    let h = img.header();
    if let Some((named, _)) = named_generation(&img.path)
        && named != h.generation
    {
        return Err(ImageError::WrongGeneration {
            path: img.path.clone(),
            named,
            found: h.generation,
        });
    }
    let mut order: Vec<usize> = (0..img.manifest.runs.len())
        .filter(|&i| img.manifest.runs[i].kind == image::RUN_DATA)
        .collect();
    order.sort_by_key(|&i| img.manifest.runs[i].data_off);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for i in order {
        let run = img.manifest.runs[i];
        let mut crc = 0u32;
        let mut done = 0u64;
        while done < run.len {
            let n = ((run.len - done) as usize).min(buf.len());
            let got = read_at_most(&img.file, &mut buf[..n], run.data_off + done)
                .map_err(io("read", &img.path))?;
            if got < n {
                return Err(ImageError::RunTruncated {
                    path: img.path.clone(),
                    index: i,
                    addr: run.addr,
                    len: run.len,
                    off: run.data_off,
                });
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            done += n as u64;
            progress.inc(n as u64);
        }
        if crc != run.crc {
            return Err(ImageError::RunChecksum {
                path: img.path.clone(),
                index: i,
                addr: run.addr,
                len: run.len,
                off: run.data_off,
                expected: run.crc,
                found: crc,
            });
        }
        total += run.len;
    }
    if h.parent != 0 && h.parent >= h.generation {
        return Err(ImageError::ParentNotOlder {
            path: img.path.clone(),
            generation: h.generation,
            parent: h.parent,
        });
    }
    Ok(total)
}

/// The state of a store file, from its suffix (`libckpt/src/store.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// `gen-N.ckpt`: committed.
    Committed,
    /// `gen-N.tmp`: being written, or left by a checkpoint that was killed.
    Tmp,
    /// `gen-N.corrupt`: a restore found it damaged and set it aside.
    Corrupt,
    /// `gen-N.spare`: a full image no kept generation needs, kept for the next full image to
    /// overwrite in place.
    Spare,
    /// `gen-N.retired`: no longer needed, about to be deleted.
    Retired,
}

impl FileState {
    /// From a store file suffix.
    pub fn from_suffix(s: &str) -> Option<FileState> {
        Some(match s {
            store::IMAGE => FileState::Committed,
            store::TMP => FileState::Tmp,
            store::CORRUPT => FileState::Corrupt,
            store::SPARE => FileState::Spare,
            store::RETIRED => FileState::Retired,
            _ => return None,
        })
    }

    /// The name shown.
    pub fn name(self) -> &'static str {
        match self {
            FileState::Committed => "committed",
            FileState::Tmp => "tmp",
            FileState::Corrupt => "corrupt",
            FileState::Spare => "spare",
            FileState::Retired => "retired",
        }
    }
}

/// One generation file of a store.
#[derive(Debug, Clone)]
pub struct StoreFile {
    /// The generation its name says.
    pub generation: u64,
    /// Its state.
    pub state: FileState,
    /// Its path.
    pub path: PathBuf,
}

/// Every generation file of the store, newest first (committed before other states of the same
/// generation).
pub fn store_files(dir: &Path) -> Result<Vec<StoreFile>, ImageError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some((g, suffix)) = store::parse_name(name.as_encoded_bytes()) else {
            continue;
        };
        let Some(state) = std::str::from_utf8(suffix)
            .ok()
            .and_then(FileState::from_suffix)
        else {
            continue;
        };
        out.push(StoreFile {
            generation: g,
            state,
            path: entry.path(),
        });
    }
    out.sort_by_key(|f| {
        (
            std::cmp::Reverse(f.generation),
            f.state != FileState::Committed,
            f.state.name(),
        )
    });
    Ok(out)
}

/// The committed image file of generation `g` in `dir`.
pub fn committed_path(dir: &Path, g: u64) -> PathBuf {
    dir.join(committed_name(g))
}

/// The file name of committed generation `g`.
pub fn committed_name(g: u64) -> String {
    store::name(g, store::IMAGE).as_str().to_string()
}

/// Checks images and the chains they build on, each image once.
#[derive(Debug)]
pub struct ChainChecker<'a> {
    dir: &'a Path,
    data: bool,
    progress: &'a ProgressBar,
    /// Generation -> its parent, or why the image itself is unusable.
    seen: HashMap<u64, Result<u64, String>>,
}

impl<'a> ChainChecker<'a> {
    /// Checks in `dir`; with `data`, every data run's checksum too.
    pub fn new(dir: &'a Path, data: bool, progress: &'a ProgressBar) -> Self {
        ChainChecker {
            dir,
            data,
            progress,
            seen: HashMap::new(),
        }
    }

    /// Checks committed generation `g` alone (cached); returns its parent.
    fn link(&mut self, g: u64) -> Result<u64, String> {
        if let Some(r) = self.seen.get(&g) {
            return r.clone();
        }
        let path = committed_path(self.dir, g);
        let r = open(&path)
            .and_then(|img| {
                if self.data {
                    check_image(&img, self.progress)?;
                } else {
                    let mut quick = img;
                    // Only the name and the parent: no runs to read.
                    quick.manifest.runs.retain(|r| r.kind != image::RUN_DATA);
                    check_image(&quick, self.progress)?;
                    return Ok(quick.header().parent);
                }
                Ok(img.header().parent)
            })
            .map_err(|e| e.to_string());
        self.seen.insert(g, r.clone());
        r
    }

    /// Whether a restore could use committed generation `g`: it and every image it builds on
    /// pass their checks and exist. Returns the chain, newest first.
    pub fn chain(&mut self, g: u64) -> Result<Vec<u64>, ImageError> {
        let mut chain = vec![];
        let mut at = g;
        loop {
            if !committed_path(self.dir, at).exists() {
                let child = *chain.last().unwrap_or(&g);
                return Err(self.missing(child, at));
            }
            match self.link(at) {
                Ok(parent) => {
                    chain.push(at);
                    if parent == 0 {
                        return Ok(chain);
                    }
                    at = parent;
                }
                Err(reason) if at == g => return Err(ImageError::Unusable(reason)),
                Err(reason) => {
                    return Err(ImageError::ParentUnusable {
                        generation: *chain.last().unwrap_or(&g),
                        parent: at,
                        reason,
                    });
                }
            }
        }
    }

    /// The error for a missing parent, saying where a file of it went if one is left.
    pub fn missing(&self, generation: u64, parent: u64) -> ImageError {
        let others = [store::CORRUPT, store::SPARE, store::RETIRED, store::TMP];
        let note = others
            .iter()
            .map(|s| self.dir.join(store::name(parent, s).as_str()))
            .find(|p| p.exists())
            .map(|p| format!(" (a file of it is left as {})", p.display()))
            .unwrap_or_default();
        ImageError::ParentMissing {
            dir: self.dir.to_path_buf(),
            generation,
            parent,
            note,
        }
    }
}

/// A progress bar over `total` bytes on stderr, drawn only on a terminal and only when the
/// work is large enough to take a noticeable time (64 MiB, about 30 ms of checksums here, more
/// when the images are not in the page cache).
pub fn progress(total: u64, what: &str) -> ProgressBar {
    if total < 64 << 20 {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Whether a program holds the store's lock (the library takes an exclusive `flock` on the
/// directory for as long as it, or its background writer, uses the store).
pub fn in_use(dir: &Path) -> bool {
    File::open(dir)
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

/// What a restore of this image would refuse because it changed on disk since the checkpoint:
/// the executable or a mapped library (inode, size, mtime), or an open file (device, inode,
/// birth time, a regular file shorter than it was). The checks of `restore.rs`, against the
/// files as they are now rather than a running program.
pub fn changed_on_disk(m: &Manifest) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for id in &m.identity {
        let path = m.text(id.path);
        let what = if id.is_exe != 0 {
            "executable"
        } else {
            "library or mapped file"
        };
        match std::fs::metadata(&path) {
            Err(e) => out.push(format!("{what} {path} cannot be read: {e}")),
            Ok(st)
                if st.ino() != id.ino
                    || st.size() != id.size
                    || st.mtime() != id.mtime_sec
                    || st.mtime_nsec() != id.mtime_nsec =>
            {
                out.push(format!(
                    "{what} {path} changed: checkpoint has {} bytes, mtime {}, inode {}; found {} bytes, mtime {}, inode {}",
                    id.size,
                    id.mtime_sec,
                    id.ino,
                    st.size(),
                    st.mtime(),
                    st.ino()
                ));
            }
            Ok(_) => {}
        }
    }
    for f in &m.files {
        let path = m.text(f.path);
        match std::fs::metadata(&path) {
            Err(e) => out.push(format!(
                "open file {path} (fd {}) cannot be read: {e}",
                f.fd
            )),
            Ok(st) => {
                let born = st
                    .created()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                let same_birth = match born {
                    Some(b) if f.btime_sec != 0 => {
                        b.as_secs() as i64 == f.btime_sec && b.subsec_nanos() == f.btime_nsec
                    }
                    _ => true,
                };
                if st.dev() != f.dev || st.ino() != f.ino || !same_birth {
                    out.push(format!(
                        "open file {path} (fd {}) was replaced by another file",
                        f.fd
                    ));
                } else if f.kind == image::FILE_REGULAR && st.size() < f.size {
                    out.push(format!(
                        "open file {path} (fd {}) shrank from {} to {} bytes",
                        f.fd,
                        f.size,
                        st.size()
                    ));
                }
            }
        }
    }
    out
}

/// The image file a [`crate::spec::ImageTarget`] names, and its state in the store.
pub fn resolve(
    t: &crate::spec::ImageTarget,
) -> Result<(PathBuf, Option<FileState>), crate::error::CliError> {
    use crate::error::CliError;
    use crate::spec::Which;
    let state_of = |p: &Path| named_generation(p).and_then(|(_, s)| FileState::from_suffix(&s));
    match &t.which {
        Which::File(p) => Ok((p.clone(), state_of(p))),
        Which::Newest => {
            let files = store_files(&t.dir)?;
            if files.is_empty() {
                return Err(CliError::StoreEmpty(t.dir.clone()));
            }
            match files.iter().find(|f| f.state == FileState::Committed) {
                Some(f) => Ok((f.path.clone(), Some(f.state))),
                None => Err(CliError::NoCommitted {
                    dir: t.dir.clone(),
                    others: describe(&files),
                }),
            }
        }
        Which::Generation(g) => {
            let files = store_files(&t.dir)?;
            // The committed file first (store_files sorts it first), else any other state.
            match files.iter().find(|f| f.generation == *g) {
                Some(f) => Ok((f.path.clone(), Some(f.state))),
                None if files.is_empty() => Err(CliError::StoreEmpty(t.dir.clone())),
                None => Err(CliError::NoGeneration {
                    dir: t.dir.clone(),
                    generation: *g,
                    have: describe(&files),
                }),
            }
        }
    }
}

/// What a store holds, briefly: `it holds generation 7 (committed), 6 (committed), 5 (spare)`.
pub fn describe(files: &[StoreFile]) -> String {
    let list: Vec<String> = files
        .iter()
        .take(12)
        .map(|f| format!("{} ({})", f.generation, f.state.name()))
        .collect();
    let more = if files.len() > 12 {
        format!(" and {} more", files.len() - 12)
    } else {
        String::new()
    };
    format!("it holds generation {}{more}", list.join(", "))
}
