//! Parsing `/proc/self/maps` without allocating (it runs inside the checkpoint signal handler).

/// One line of `/proc/self/maps`, borrowing its path from the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry<'a> {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: i32,
    /// `s` (shared) rather than `p` (private).
    pub shared: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// Device of the backing file (`major << 32 | minor`), 0 for anonymous memory.
    pub dev: u64,
    /// Inode of the backing file, 0 for anonymous memory.
    pub inode: u64,
    /// The path or pseudo-path (`[heap]`, `[stack]`, `[vdso]`…), empty for anonymous memory.
    pub path: &'a [u8],
}

impl MapEntry<'_> {
    /// Backed by a file (a real path and an inode).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.first() == Some(&b'/')
    }

    /// One of the kernel's special mappings that a restore must leave alone.
    pub fn is_kernel_special(&self) -> bool {
        matches!(
            self.path,
            b"[vdso]" | b"[vvar]" | b"[vsyscall]" | b"[vvar_vclock]" | b"[uprobes]"
        )
    }

    /// Whether a file path has been deleted since it was mapped.
    pub fn is_deleted(&self) -> bool {
        self.path.ends_with(b" (deleted)")
    }
}

/// Iterates the entries of a maps buffer; malformed lines end the iteration with an error.
#[derive(Debug, Clone)]
pub struct MapsIter<'a> {
    rest: &'a [u8],
}

/// A line of the maps file that did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadLine;

/// Parses a maps buffer.
pub fn parse(buf: &[u8]) -> MapsIter<'_> {
    MapsIter { rest: buf }
}

impl<'a> Iterator for MapsIter<'a> {
    type Item = Result<MapEntry<'a>, BadLine>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.rest.first() == Some(&b'\n') {
            self.rest = &self.rest[1..];
        }
        if self.rest.is_empty() {
            return None;
        }
        let nl = self
            .rest
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.rest.len());
        let line = &self.rest[..nl];
        self.rest = if nl < self.rest.len() {
            &self.rest[nl + 1..]
        } else {
            &[]
        };
        let parsed = parse_line(line).ok_or(BadLine);
        if parsed.is_err() {
            self.rest = &[];
        }
        Some(parsed)
    }
}

fn parse_line(line: &[u8]) -> Option<MapEntry<'_>> {
    let mut fields = Fields { rest: line };
    let range = fields.next()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = hex(&range[..dash])? as usize;
    let end = hex(&range[dash + 1..])? as usize;
    let perms = fields.next()?;
    if perms.len() != 4 || end <= start {
        return None;
    }
    let mut prot = 0;
    if perms[0] == b'r' {
        prot |= libc::PROT_READ;
    }
    if perms[1] == b'w' {
        prot |= libc::PROT_WRITE;
    }
    if perms[2] == b'x' {
        prot |= libc::PROT_EXEC;
    }
    let shared = perms[3] == b's';
    let offset = hex(fields.next()?)?;
    let dev = fields.next()?;
    let colon = dev.iter().position(|&b| b == b':')?;
    let dev = (hex(&dev[..colon])? << 32) | hex(&dev[colon + 1..])?;
    let inode = crate::text::parse_dec(fields.next()?)?;
    // The path is the rest of the line after the padding; it may contain spaces.
    let path = fields.rest_trimmed();
    Some(MapEntry {
        start,
        end,
        prot,
        shared,
        offset,
        dev,
        inode,
        path,
    })
}

struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        let skip = self.rest.iter().position(|&b| b != b' ')?;
        let rest = &self.rest[skip..];
        let len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        self.rest = &rest[len..];
        Some(&rest[..len])
    }

    fn rest_trimmed(&self) -> &'a [u8] {
        let skip = self
            .rest
            .iter()
            .position(|&b| b != b' ')
            .unwrap_or(self.rest.len());
        &self.rest[skip..]
    }
}

fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        Some(acc << 4 | (b as char).to_digit(16)? as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] =
        b"555555554000-555555556000 r--p 00000000 fe:01 1234567    /usr/bin/my prog\n\
555555556000-55555555a000 r-xp 00002000 fe:01 1234567    /usr/bin/my prog\n\
55555555c000-55555557d000 rw-p 00000000 00:00 0          [heap]\n\
7ffff7d80000-7ffff7da0000 rw-s 00000000 00:05 99         /dev/zero (deleted)\n\
7ffff7fc1000-7ffff7fc5000 r--p 00000000 00:00 0          [vvar]\n\
7ffff7ff0000-7ffff7ff1000 ---p 00000000 00:00 0 \n\
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0          [stack]\n\
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";

    #[test]
    fn parses_every_kind_of_line() {
        let e: Vec<_> = parse(SAMPLE).collect::<Result<_, _>>().unwrap();
        assert_eq!(e.len(), 8);
        assert_eq!(e[0].start, 0x555555554000);
        assert_eq!(e[0].path, b"/usr/bin/my prog");
        assert!(e[0].is_file());
        assert_eq!(e[1].prot, libc::PROT_READ | libc::PROT_EXEC);
        assert_eq!(e[1].offset, 0x2000);
        assert_eq!(e[1].dev, 0xfe << 32 | 1);
        assert_eq!(e[1].inode, 1234567);
        assert_eq!(e[2].path, b"[heap]");
        assert!(!e[2].is_file());
        assert!(e[3].shared && e[3].is_deleted());
        assert!(e[4].is_kernel_special());
        assert_eq!((e[5].prot, e[5].path), (0, &b""[..]));
        assert_eq!(e[7].end, 0xffffffffff601000);
        assert!(e[7].is_kernel_special());
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            &b"zz-10 rw-p 0 00:00 0\n"[..],
            b"10-5 rw-p 0 00:00 0\n",
            b"1000-2000 rw 0 00:00 0\n",
        ] {
            assert_eq!(
                parse(bad).next(),
                Some(Err(BadLine)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn reads_this_process() {
        let text = std::fs::read("/proc/self/maps").unwrap();
        let e: Vec<_> = parse(&text).collect::<Result<_, _>>().unwrap();
        assert!(e.iter().any(|m| m.path == b"[stack]"));
        assert!(e.windows(2).all(|w| w[0].end <= w[1].start));
    }
}
