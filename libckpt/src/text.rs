//! Fixed-capacity text for code that may not allocate: the signal handler, the restorer, logs.

use core::fmt;

/// A string of at most `N` bytes kept inline; writes past the end are cut off, never fail.
#[derive(Clone, Copy)]
pub struct FixedStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> FixedStr<N> {
    /// An empty string.
    pub const fn new() -> Self {
        FixedStr {
            buf: [0; N],
            len: 0,
        }
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text (invalid UTF-8 cut at a boundary is shown lossily by `Display`).
    pub fn as_str(&self) -> &str {
        match core::str::from_utf8(self.as_bytes()) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&self.buf[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// Appends raw bytes, truncating at capacity.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// The bytes with a terminating NUL, for system calls; `None` if there is no room for it.
    pub fn as_cstr(&mut self) -> Option<&[u8]> {
        if self.len >= N || self.as_bytes().contains(&0) {
            return None;
        }
        self.buf[self.len] = 0;
        Some(&self.buf[..=self.len])
    }

    /// Empties the string.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl<const N: usize> Default for FixedStr<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for FixedStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

impl<const N: usize> fmt::Display for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Shows bytes (a path from the kernel) as text without allocating.
pub struct Bytes<'a>(pub &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

/// Parses a decimal number of 1 to 20 ASCII digits without overflow (kernel-produced text:
/// inode numbers, descriptor and thread ids); `None` for anything else.
pub fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(10)?
            .checked_add((b as char).to_digit(10)? as u64)
    })
}

/// Writes one formatted line to stderr with a single `write(2)`, without allocating.
pub fn log_line(args: fmt::Arguments<'_>) {
    let mut line = FixedStr::<1024>::new();
    let _ = fmt::write(
        &mut line,
        format_args!("ckpt[{}]: {}\n", crate::sys::syscall::getpid(), args),
    );
    let _ = crate::sys::syscall::write(2, line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn truncates_and_terminates() {
        let mut s = FixedStr::<8>::new();
        s.write_str("abcdefghij").unwrap();
        assert_eq!(s.as_bytes(), b"abcdefgh");
        assert_eq!(s.as_cstr(), None);
        let mut t = FixedStr::<8>::new();
        t.push_bytes(b"ab");
        assert_eq!(t.as_cstr(), Some(&b"ab\0"[..]));
        assert_eq!(Bytes(b"a\xffb").to_string(), "a\u{fffd}b");
    }
}
