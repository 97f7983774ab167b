//! The local-directory store: one file per generation, committed by rename.
//!
//! Layout of a store directory:
//! - `gen-<20 digits>.ckpt` — a committed image;
//! - `gen-<20 digits>.tmp` — an image being written (or left by a checkpoint that was killed);
//! - `gen-<20 digits>.corrupt` — an image a restore found damaged and set aside;
//! - `gen-<20 digits>.spare` — at most one: a full image no kept generation needs any more,
//!   kept (not deleted) so that the next full image overwrites its blocks in place instead of
//!   allocating new ones, and its deletion stays out of a checkpoint's pause.
//!
//! The one process using a store holds an `flock` on the directory itself.

use core::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::sys::syscall::{self, Errno, SysResult};
use crate::text::FixedStr;

/// Suffix of committed images.
pub const IMAGE: &str = "ckpt";
/// Suffix of images being written.
pub const TMP: &str = "tmp";
/// Suffix of images set aside as damaged.
pub const CORRUPT: &str = "corrupt";
/// Suffix of the one retired full image kept for the next full image to overwrite.
pub const SPARE: &str = "spare";
/// Suffix of images no kept generation needs, renamed out of the way to be deleted outside a
/// checkpoint's pause (deleting a large file costs about 170 ms per GiB here).
pub const RETIRED: &str = "retired";

/// Generations `prune` renamed to [`RETIRED`], for the caller to delete.
#[derive(Debug, Clone, Copy)]
pub struct Retired {
    /// The generations.
    pub gens: [u64; 64],
    /// How many.
    pub n: usize,
}

impl Default for Retired {
    fn default() -> Retired {
        Retired {
            gens: [0; 64],
            n: 0,
        }
    }
}

/// Deletes the [`RETIRED`] files of `retired`.
pub fn delete_retired(dir_fd: i32, retired: &Retired) {
    for &g in &retired.gens[..retired.n] {
        let mut nm = name(g, RETIRED);
        if let Some(c) = nm.as_cstr() {
            let _ = syscall::unlinkat(dir_fd, c);
        }
    }
}
/// Most generations a directory listing considers at once.
const MAX_LISTED: usize = 4096;

/// The file name of generation `g` with `suffix`.
pub fn name(g: u64, suffix: &str) -> FixedStr<48> {
    let mut s = FixedStr::new();
    let _ = write!(s, "gen-{g:020}.{suffix}");
    s
}

/// Parses a store file name into (generation, suffix).
pub fn parse_name(name: &[u8]) -> Option<(u64, &[u8])> {
    let rest = name.strip_prefix(b"gen-")?;
    if rest.len() < 22 || rest[20] != b'.' {
        return None;
    }
    let digits = &rest[..20];
    let g = digits.iter().try_fold(0u64, |a, &b| {
        b.is_ascii_digit()
            .then(|| a.wrapping_mul(10) + (b - b'0') as u64)
    })?;
    Some((g, &rest[21..]))
}

/// The generation number the spare file is named after, if the store has one.
pub fn spare(dir_fd: i32, dents: &mut [u8]) -> Option<u64> {
    let mut found = None;
    let _ = each_dirent_at(dir_fd, b".\0", dents, |n| {
        if let Some((g, suffix)) = parse_name(n)
            && suffix == SPARE.as_bytes()
        {
            found = Some(g);
        }
    });
    found
}

/// Calls `f` with each entry name of the directory at `path` (NUL-terminated), using `buf`.
pub fn each_dirent(path: &[u8], buf: &mut [u8], f: impl FnMut(&[u8])) -> SysResult<()> {
    each_dirent_at(libc::AT_FDCWD, path, buf, f)
}

/// Like [`each_dirent`], with `path` relative to the directory open at `dir_fd`.
pub fn each_dirent_at(
    dir_fd: i32,
    path: &[u8],
    buf: &mut [u8],
    f: impl FnMut(&[u8]),
) -> SysResult<()> {
    let fd = syscall::openat(
        dir_fd,
        path,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )?;
    let r = each_dirent_fd(fd, buf, f);
    let _ = syscall::close(fd);
    r
}

fn each_dirent_fd(fd: i32, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> SysResult<()> {
    loop {
        let n = syscall::getdents64(fd, buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut at = 0;
        while at + 19 <= n {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name[].
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 || at + reclen > n {
                return Err(Errno(libc::EIO));
            }
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                f(name);
            }
            at += reclen;
        }
    }
}

/// Fills `out` with the committed generations of the store, oldest first; returns how many.
pub fn committed(dir_fd: i32, dents: &mut [u8], out: &mut [u64]) -> usize {
    let mut n = 0;
    let _ = each_dirent_at(dir_fd, b".\0", dents, |name| {
        if let Some((g, suffix)) = parse_name(name)
            && suffix == IMAGE.as_bytes()
            && n < out.len()
        {
            out[n] = g;
            n += 1;
        }
    });
    out[..n].sort_unstable();
    n
}

/// The generation committed image `g` is relative to (its header's `parent`): 0 for a full
/// image, and also 0 when the header cannot be read or is damaged (such an image cannot be
/// restored, so it needs nothing older). Async-signal-safe.
pub fn parent_of(dir_fd: i32, g: u64) -> u64 {
    use zerocopy::FromBytes;
    let mut nm = name(g, IMAGE);
    let Some(c) = nm.as_cstr() else { return 0 };
    let Ok(fd) = syscall::openat(dir_fd, c, libc::O_RDONLY | libc::O_CLOEXEC, 0) else {
        return 0;
    };
    let mut buf = [0u8; size_of::<crate::image::Header>()];
    let read = syscall::pread_exact(fd, &mut buf, 0);
    let _ = syscall::close(fd);
    if read != Ok(true) {
        return 0;
    }
    match crate::image::Header::read_from_bytes(&buf) {
        Ok(h) if h.magic == crate::image::MAGIC && h.compute_crc() == h.header_crc => h.parent,
        _ => 0,
    }
}

/// Calls `visit` with `of`, then the generation it builds on, and so on down to the full image,
/// while `visit` returns true. Parents are strictly older; a damaged link (unreadable header,
/// or a parent not older) ends the walk.
fn walk_chain(dir_fd: i32, of: u64, mut visit: impl FnMut(u64) -> bool) {
    let mut at = of;
    while at != 0 && visit(at) {
        let p = parent_of(dir_fd, at);
        at = if p < at { p } else { 0 };
    }
}

/// Whether generation `g` is `of` or one of the images `of`'s chain is built on.
pub fn in_chain(dir_fd: i32, of: u64, g: u64) -> bool {
    let mut found = false;
    walk_chain(dir_fd, of, |at| {
        found |= at == g;
        at > g
    });
    found
}

/// Deletes committed generations that neither are among the newest `keep` nor are needed by
/// one of them (the images an incremental one is built on), damaged ones older than those kept,
/// and temporaries older than `current`. Best effort: a failure leaves extra files, never fewer.
pub fn prune(
    dir_fd: i32,
    dents: &mut [u8],
    current: u64,
    keep: u32,
    mut retire: Option<&mut Retired>,
) {
    let mut images = [0u64; MAX_LISTED];
    let n = committed(dir_fd, dents, &mut images);
    let n = images[..n].iter().take_while(|&&g| g <= current).count();
    let images = &mut images[..n];
    let keep = keep.max(1) as usize;
    let first_kept = images.len().saturating_sub(keep);
    // The oldest image a kept generation needs: kept ones and everything their chains reach.
    let mut oldest_kept = images.get(first_kept).copied().unwrap_or(0);
    let mut needed = [0u64; MAX_LISTED];
    let mut n_needed = 0;
    for &g in &images[first_kept..] {
        walk_chain(dir_fd, g, |at| {
            if n_needed == needed.len() || needed[..n_needed].contains(&at) {
                return false;
            }
            needed[n_needed] = at;
            n_needed += 1;
            oldest_kept = oldest_kept.min(at);
            true
        });
    }
    let mut have_spare = spare(dir_fd, dents).is_some();
    for &g in images.iter() {
        if needed[..n_needed].contains(&g) {
            continue;
        }
        let mut nm = name(g, IMAGE);
        let Some(c) = nm.as_cstr() else {
            continue;
        };
        // The first retired full image becomes the spare (a rename, not a deletion of a large
        // file inside the pause); the rest go.
        if !have_spare && parent_of(dir_fd, g) == 0 {
            let mut to = name(g, SPARE);
            if let Some(to_c) = to.as_cstr()
                && syscall::renameat(dir_fd, c, to_c).is_ok()
            {
                have_spare = true;
                continue;
            }
        }
        if let Some(r) = retire.as_deref_mut()
            && r.n < r.gens.len()
        {
            let mut to = name(g, RETIRED);
            if let Some(to_c) = to.as_cstr()
                && syscall::renameat(dir_fd, c, to_c).is_ok()
            {
                r.gens[r.n] = g;
                r.n += 1;
                continue;
            }
        }
        let _ = syscall::unlinkat(dir_fd, c);
    }
    // Damaged and temporary leftovers: remove those older than what we keep.
    let mut stale = [0u64; 64];
    let mut stale_kind = [CORRUPT; 64];
    let mut m = 0;
    let _ = each_dirent_at(dir_fd, b".\0", dents, |name| {
        if let Some((g, suffix)) = parse_name(name) {
            let old_corrupt = suffix == CORRUPT.as_bytes() && g < oldest_kept;
            let old_tmp = suffix == TMP.as_bytes() && g < current;
            // Left by a deleter that was killed (a retired file of this prune is not listed:
            // its deleter has not started).
            let retired = suffix == RETIRED.as_bytes()
                && !retire
                    .as_deref()
                    .is_some_and(|r| r.gens[..r.n].contains(&g));
            let kind = if old_tmp {
                TMP
            } else if retired {
                RETIRED
            } else {
                CORRUPT
            };
            if (old_corrupt || old_tmp || retired) && m < stale.len() {
                stale[m] = g;
                stale_kind[m] = kind;
                m += 1;
            }
        }
    });
    for i in 0..m {
        let mut nm = name(stale[i], stale_kind[i]);
        if let Some(c) = nm.as_cstr() {
            let _ = syscall::unlinkat(dir_fd, c);
        }
    }
}

/// Deletes every generation file (committed, temporary, damaged) in the store; returns how many.
pub fn remove_all(dir_fd: i32, dents: &mut [u8]) -> usize {
    let mut removed = 0;
    // Committed images first, newest first: an image only builds on older ones, so a removal
    // interrupted here (the program killed as it exits) leaves a restorable store, never an
    // image whose chain is gone.
    let mut images = [0u64; MAX_LISTED];
    let n = committed(dir_fd, dents, &mut images);
    for &g in images[..n].iter().rev() {
        let mut nm = name(g, IMAGE);
        if let Some(c) = nm.as_cstr()
            && syscall::unlinkat(dir_fd, c).is_ok()
        {
            removed += 1;
        }
    }
    // Deleting while listing can skip entries; list again until a pass finds nothing.
    loop {
        let mut batch = [[0u8; 48]; 64];
        let mut n = 0;
        let listed = each_dirent_at(dir_fd, b".\0", dents, |name| {
            if parse_name(name).is_some() && n < batch.len() && name.len() < 48 {
                batch[n][..name.len()].copy_from_slice(name);
                n += 1;
            }
        });
        if listed.is_err() || n == 0 {
            return removed;
        }
        for name in &batch[..n] {
            let len = name.iter().position(|&b| b == 0).unwrap_or(47);
            let mut c = [0u8; 48];
            c[..len].copy_from_slice(&name[..len]);
            if syscall::unlinkat(dir_fd, &c[..=len]).is_ok() {
                removed += 1;
            } else {
                return removed;
            }
        }
    }
}

/// A committed generation found in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Its number.
    pub number: u64,
    /// Its image file.
    pub path: PathBuf,
}

/// Committed generations in `dir`, newest first.
pub fn list(dir: &Path) -> std::io::Result<Vec<Generation>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((g, suffix)) = parse_name(name.as_encoded_bytes())
            && suffix == IMAGE.as_bytes()
        {
            out.push(Generation {
                number: g,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|g| std::cmp::Reverse(g.number));
    Ok(out)
}

/// The highest generation number of any file in `dir` (committed, damaged or temporary).
pub fn highest(dir: &Path) -> std::io::Result<u64> {
    let mut max = 0;
    for entry in std::fs::read_dir(dir)? {
        if let Some((g, _)) = parse_name(entry?.file_name().as_encoded_bytes()) {
            max = max.max(g);
        }
    }
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = name(42, IMAGE);
        assert_eq!(n.as_str(), "gen-00000000000000000042.ckpt");
        assert_eq!(parse_name(n.as_bytes()), Some((42, &b"ckpt"[..])));
        assert_eq!(parse_name(b"gen-1.ckpt"), None);
        assert_eq!(parse_name(b"lock"), None);
    }

    #[test]
    fn prune_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("ckpt-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for g in 1..=5 {
            std::fs::write(dir.join(name(g, IMAGE).as_str()), b"x").unwrap();
        }
        std::fs::write(dir.join(name(2, CORRUPT).as_str()), b"x").unwrap();
        std::fs::write(dir.join(name(5, CORRUPT).as_str()), b"x").unwrap();
        std::fs::write(dir.join(name(3, TMP).as_str()), b"x").unwrap();
        let fd = syscall::open(
            format!("{}\0", dir.display()).as_bytes(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        prune(fd, &mut buf, 5, 2, None);
        syscall::close(fd).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // The oldest retired image (unreadable here, so taken for a full one) is kept as the
        // spare; a second prune keeps that one spare and deletes the next.
        assert_eq!(
            left,
            vec![
                name(1, SPARE).to_string(),
                name(4, IMAGE).to_string(),
                name(5, IMAGE).to_string(),
                name(5, CORRUPT).to_string()
            ]
        );
        assert_eq!(
            list(&dir)
                .unwrap()
                .iter()
                .map(|g| g.number)
                .collect::<Vec<_>>(),
            vec![5, 4]
        );
        assert_eq!(highest(&dir).unwrap(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
