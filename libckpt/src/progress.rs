//! The progress bar of a long restore, on the terminal: first while the images are read and
//! checked, then while their pages are read into place.
//!
//! The second phase runs in the restorer's body, after the process's memory (the C library's
//! included) was replaced, so a [`Meter`] builds its line on the stack and draws it with one raw
//! `write`: no allocation, no formatting machinery, and no panic path (bytes are stored through
//! `get`/`get_mut`, arithmetic wraps or saturates, division is by constants or checked). It is
//! drawn only on a terminal and only when logging is on; in a pipe or a file, a restore's output
//! stays its log lines.

use crate::config::LogLevel;
use crate::sys::syscall;

/// Below this much page data a restore takes well under a second: no bar.
pub(crate) const MIN_BYTES: u64 = 64 << 20;
/// Characters between the brackets.
const WIDTH: u64 = 32;
/// Longest line drawn.
const LINE: usize = 112;
/// `shown` before the first line is drawn.
const NOTHING_SHOWN: u64 = u64::MAX;

/// Whether a restore that logs at `log` draws progress bars: standard error is a terminal and
/// logging is on.
pub(crate) fn wanted(log: LogLevel) -> bool {
    log != LogLevel::Off && syscall::isatty(2)
}

/// A bar over `total` bytes under a label, or none (drawing nothing).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    /// Where to draw, or -1 for no bar.
    fd: i32,
    /// What is being done ("verifying", "restoring"): a literal in the library's text.
    label: &'static [u8],
    /// Bytes in all, and so far.
    total: u64,
    done: u64,
    /// The percentage last drawn.
    shown: u64,
}

impl Meter {
    /// A meter that draws nothing.
    pub(crate) const OFF: Meter = Meter {
        fd: -1,
        label: b"",
        total: 0,
        done: 0,
        shown: NOTHING_SHOWN,
    };

    /// A bar on standard error when `on` (see [`wanted`]) and `total` is at least
    /// [`MIN_BYTES`]; else [`Meter::OFF`].
    pub(crate) fn new(on: bool, label: &'static [u8], total: u64) -> Meter {
        if !on || total < MIN_BYTES {
            return Meter::OFF;
        }
        Meter {
            fd: 2,
            label,
            total,
            ..Meter::OFF
        }
    }

    /// `n` more bytes done; redraws when the percentage changed.
    pub(crate) fn add(&mut self, n: u64) {
        if self.fd < 0 || self.total == 0 {
            return;
        }
        self.done = self.done.saturating_add(n).min(self.total);
        let pct = self
            .done
            .saturating_mul(100)
            .checked_div(self.total)
            .unwrap_or(100);
        if pct != self.shown {
            self.shown = pct;
            self.draw(pct);
        }
    }

    /// Erases the bar (the log line that follows says what was done).
    pub(crate) fn finish(&mut self) {
        if self.fd >= 0 && self.shown != NOTHING_SHOWN {
            let _ = syscall::write(self.fd, b"\r\x1b[K");
        }
        self.shown = NOTHING_SHOWN;
    }

    fn draw(&self, pct: u64) {
        let _ = syscall::write(self.fd, self.render(pct).bytes());
    }

    /// `\rckpt: LABEL [=====>     ]  42%  512 of 1213 MiB`, then clear to the end of the line.
    fn render(&self, pct: u64) -> Line {
        let mut line = Line {
            buf: [0; LINE],
            len: 0,
        };
        line.push(b"\rckpt: ");
        line.push(self.label);
        line.push(b" [");
        let filled = pct.saturating_mul(WIDTH) / 100;
        let mut i = 0;
        while i < WIDTH {
            line.byte(if i < filled {
                b'='
            } else if i == filled {
                b'>'
            } else {
                b' '
            });
            i = i.wrapping_add(1);
        }
        line.push(b"] ");
        if pct < 100 {
            line.byte(b' ');
        }
        if pct < 10 {
            line.byte(b' ');
        }
        line.number(pct);
        line.push(b"%  ");
        line.number(self.done >> 20);
        line.push(b" of ");
        line.number(self.total >> 20);
        line.push(b" MiB\x1b[K");
        line
    }
}

/// A line on the stack; what does not fit is dropped.
struct Line {
    buf: [u8; LINE],
    len: usize,
}

impl Line {
    fn byte(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len = self.len.wrapping_add(1);
        }
    }

    fn push(&mut self, s: &[u8]) {
        for &b in s {
            self.byte(b);
        }
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut k = 0;
        loop {
            if let Some(d) = digits.get_mut(k) {
                *d = b'0' + (n % 10) as u8;
            }
            k = k.wrapping_add(1);
            n /= 10;
            if n == 0 || k >= digits.len() {
                break;
            }
        }
        while k > 0 {
            k = k.wrapping_sub(1);
            if let Some(&d) = digits.get(k) {
                self.byte(d);
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Meter, pct: u64) -> String {
        String::from_utf8(m.render(pct).bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_line_shows_label_bar_percentage_and_sizes() {
        let mut m = Meter::new(true, b"restoring", 1000 << 20);
        m.done = 420 << 20;
        assert_eq!(
            text(&m, 42),
            "\rckpt: restoring [=============>                  ]  42%  420 of 1000 MiB\x1b[K"
        );
        m.done = m.total;
        assert!(text(&m, 100).contains("[================================] 100%  1000 of 1000"));
        m.done = 0;
        assert!(text(&m, 0).contains("[>                               ]   0%  0 of 1000"));
    }

    #[test]
    fn numbers_render_in_decimal_and_a_full_line_is_cut_not_a_panic() {
        let mut l = Line {
            buf: [0; LINE],
            len: 0,
        };
        for n in [0u64, 7, 10, 1213, u64::MAX] {
            l.number(n);
            l.byte(b' ');
        }
        assert_eq!(l.bytes(), b"0 7 10 1213 18446744073709551615 ");
        for _ in 0..LINE {
            l.push(b"0123456789");
        }
        assert_eq!(l.bytes().len(), LINE);
    }

    #[test]
    fn small_or_unwanted_restores_draw_nothing() {
        assert_eq!(Meter::new(false, b"x", 1 << 40).fd, -1);
        assert_eq!(Meter::new(true, b"x", MIN_BYTES - 1).fd, -1);
        assert_eq!(Meter::new(true, b"x", MIN_BYTES).fd, 2);
        let mut off = Meter::OFF;
        off.add(u64::MAX);
        off.finish();
        assert_eq!(off.done, 0, "a meter that draws nothing counts nothing");
    }
}
