//! How numbers, times and record fields are shown: sizes, UTC times, protection and flag bits,
//! policy and tracker indices.

use ckpt::image;

/// Bytes in binary units: `512 B`, `4.0 KiB`, `1.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Nanoseconds since the epoch as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
pub fn time(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns / 1_000_000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Nanoseconds since the epoch as RFC 3339 (`2026-11-25T03:39:31.123456789Z`), for JSON.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ns % 1_000_000_000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// How long ago `ns` was, roughly: `12s ago`, `3m ago`, `2h ago`, `5d ago`.
pub fn age(ns: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let Some(s) = now.checked_sub(ns).map(|d| d / 1_000_000_000) else {
        return "in the future".into();
    };
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        7200..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `PROT_*` bits and the sharing flag as in `/proc/PID/maps`: `rw-p`.
pub fn prot(prot: u32, flags: u32) -> String {
    let bit = |b: i32, c: char| if prot & b as u32 != 0 { c } else { '-' };
    let mut s = String::with_capacity(4);
    s.push(bit(libc_prot::READ, 'r'));
    s.push(bit(libc_prot::WRITE, 'w'));
    s.push(bit(libc_prot::EXEC, 'x'));
    s.push(if flags & image::REGION_SHARED != 0 {
        's'
    } else {
        'p'
    });
    s
}

/// `PROT_*` values (Linux, every architecture).
mod libc_prot {
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const EXEC: i32 = 4;
}

/// The names of a region's `REGION_*` bits (and `unknown(0x..)` for others).
pub fn region_flags(flags: u32) -> Vec<String> {
    let names = [
        (image::REGION_SHARED, "shared"),
        (image::REGION_FILE, "file"),
        (image::REGION_HEAP, "heap"),
        (image::REGION_STACK, "stack"),
        (image::REGION_SAVED, "saved"),
        (image::REGION_SPECIAL, "special"),
        (image::REGION_CHAIN, "chain"),
    ];
    let mut out: Vec<String> = names
        .iter()
        .filter(|(b, _)| flags & b != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let known = names.iter().fold(0, |a, (b, _)| a | b);
    if flags & !known != 0 {
        out.push(format!("unknown({:#x})", flags & !known));
    }
    out
}

/// The policy an image records (its index in `Policy::all()`).
pub fn policy(index: u32) -> String {
    ckpt::Policy::all()
        .get(index as usize)
        .map_or_else(|| format!("unknown({index})"), |p| p.name().to_string())
}

/// The tracker an image records: 0 none, else 1 + its index in `TrackerKind::all()`.
pub fn tracker(index: u32) -> String {
    if index == 0 {
        return "none".into();
    }
    ckpt::dirty::TrackerKind::all()
        .get(index as usize - 1)
        .map_or_else(|| format!("unknown({index})"), |t| t.name().to_string())
}

/// `open` flags as names: `rdwr|append|cloexec`.
pub fn open_flags(flags: i32) -> String {
    // Linux x86_64 values (the images are written and read on x86_64).
    let mut out = vec![match flags & 3 {
        0 => "rdonly",
        1 => "wronly",
        2 => "rdwr",
        _ => "accmode3",
    }];
    for (bit, name) in [
        (0o2000, "append"),
        (0o4000, "nonblock"),
        (0o4010000, "sync"),
        (0o40000, "direct"),
        (0o200000, "directory"),
        (0o1000000, "noatime"),
        (0o2000000, "cloexec"),
        (0o10000000, "path"),
    ] {
        if flags & bit == bit {
            out.push(name);
        }
    }
    out.join("|")
}

/// A `FILE_*` kind.
pub fn file_kind(kind: u32) -> String {
    match kind {
        image::FILE_REGULAR => "regular".into(),
        image::FILE_CHARDEV => "chardev".into(),
        image::FILE_DIR => "directory".into(),
        k => format!("unknown({k})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(time(0), "1970-01-01 00:00:00.000");
        // 2026-11-25 03:39:31.5 UTC
        assert_eq!(time(1_795_577_971_500_000_000), "2026-11-25 03:39:31.500");
        assert_eq!(
            rfc3339(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(prot(3, 0), "rw-p");
        assert_eq!(prot(5, image::REGION_SHARED), "r-xs");
        assert_eq!(region_flags(16 | 64 | 4), ["heap", "saved", "chain"]);
        assert_eq!(open_flags(0o2000002), "rdwr|cloexec");
        assert_eq!(policy(1), "incremental");
        assert_eq!(tracker(0), "none");
        assert_eq!(tracker(1), "uffd-async");
    }
}
