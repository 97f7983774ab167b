//! Helpers shared by the example workloads: argument parsing, a deterministic generator, digests.
//!
//! The examples in `examples/` are compute kernels that the checkpoint tests kill and restart;
//! a restarted run must end with the same `digest` line as an uninterrupted one. So everything
//! here is deterministic and dependency-free: no clock, no threads, no hashing with a random
//! seed, and the digest covers exact bit patterns (`f64::to_bits`), not rounded decimals.

use std::io::Write;

/// The positional command line every example takes: `<prog> SIZE [STEPS]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Args {
    /// Scales the memory the workload uses (its meaning is per example).
    pub size: usize,
    /// Scales the run time at a fixed memory size (time steps, iterations or repetitions).
    pub steps: usize,
}

/// What an example accepts, for [`Args::parse`] and its usage message.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// One line saying what SIZE means, e.g. `"SIZE: matrix order n (memory 8*n^2 bytes)"`.
    pub size_help: &'static str,
    /// One line saying what STEPS means.
    pub steps_help: &'static str,
    /// SIZE when none is given.
    pub default_size: usize,
    /// STEPS when none is given.
    pub default_steps: usize,
    /// Smallest accepted SIZE.
    pub min_size: usize,
    /// Largest accepted SIZE (keeps a typo from asking for terabytes).
    pub max_size: usize,
}

/// Why a command line was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// More than two positional arguments.
    TooMany,
    /// An argument is not a non-negative integer.
    NotANumber(String),
    /// SIZE is outside `[min_size, max_size]`.
    SizeOutOfRange(usize),
    /// STEPS is zero.
    ZeroSteps,
    /// `-h` or `--help`.
    Help,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgError::TooMany => write!(f, "too many arguments"),
            ArgError::NotANumber(s) => write!(f, "not a non-negative integer: {s:?}"),
            ArgError::SizeOutOfRange(n) => write!(f, "SIZE {n} is out of range"),
            ArgError::ZeroSteps => write!(f, "STEPS must be at least 1"),
            ArgError::Help => write!(f, "help requested"),
        }
    }
}

impl Args {
    /// Parses `SIZE [STEPS]` (the arguments after the program name) against `spec`.
    pub fn parse_from<I, S>(spec: &Spec, args: I) -> Result<Args, ArgError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|s| s.as_ref().to_owned()).collect();
        if args.iter().any(|a| a == "-h" || a == "--help") {
            return Err(ArgError::Help);
        }
        if args.len() > 2 {
            return Err(ArgError::TooMany);
        }
        let number = |s: &String| {
            s.parse::<usize>()
                .map_err(|_| ArgError::NotANumber(s.clone()))
        };
        let size = args
            .first()
            .map(number)
            .transpose()?
            .unwrap_or(spec.default_size);
        let steps = args
            .get(1)
            .map(number)
            .transpose()?
            .unwrap_or(spec.default_steps);
        if size < spec.min_size || size > spec.max_size {
            return Err(ArgError::SizeOutOfRange(size));
        }
        if steps == 0 {
            return Err(ArgError::ZeroSteps);
        }
        Ok(Args { size, steps })
    }

    /// Parses the process's own arguments; on error prints the usage to stderr and exits with
    /// status 2 (0 for `--help`).
    pub fn parse(spec: &Spec) -> Args {
        let mut argv = std::env::args();
        let prog = argv.next().unwrap_or_else(|| "workload".to_owned());
        match Args::parse_from(spec, argv) {
            Ok(args) => args,
            Err(e) => {
                let usage = format!(
                    "usage: {prog} [SIZE [STEPS]]\n  {}\n  {}\n  defaults: SIZE={} STEPS={}; \
                     SIZE must be in {}..={}",
                    spec.size_help,
                    spec.steps_help,
                    spec.default_size,
                    spec.default_steps,
                    spec.min_size,
                    spec.max_size
                );
                if e == ArgError::Help {
                    println!("{usage}");
                    std::process::exit(0);
                }
                eprintln!("{prog}: {e}\n{usage}");
                std::process::exit(2);
            }
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator whose whole state is one `u64`, so the
/// inputs of a workload are a pure function of its seed.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator that starts at `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 random bits (exactly representable, so no rounding).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform in `[0, n)` for `n > 0` (Lemire's multiply-shift; the tiny bias is irrelevant
    /// for test inputs and the result is still deterministic).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// 64-bit FNV-1a over little-endian bytes: simple, stable, and easy to reproduce in C.
#[derive(Debug, Clone)]
pub struct Digest {
    hash: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Digest::new()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Digest {
    /// An empty digest.
    pub fn new() -> Digest {
        Digest { hash: FNV_OFFSET }
    }

    /// Adds raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        let mut h = self.hash;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        self.hash = h;
    }

    /// Adds one `u64` as 8 little-endian bytes.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    /// Adds one `u32` as 4 little-endian bytes.
    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    /// Adds the exact bit pattern of an `f64` (so `0.0` and `-0.0` differ, as they should).
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    /// Adds every element of a slice of `f64`.
    pub fn f64s(&mut self, vs: &[f64]) {
        for &v in vs {
            self.f64(v);
        }
    }

    /// Adds every element of a slice of `u32`.
    pub fn u32s(&mut self, vs: &[u32]) {
        for &v in vs {
            self.u32(v);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.hash
    }
}

/// The line every example ends with, `digest <16 hex digits>`.
pub fn digest_line(digest: u64) -> String {
    format!("digest {digest:016x}")
}

/// Prints the final `digest` line to stdout and flushes it.
pub fn print_digest(digest: u64) {
    let mut out = std::io::stdout().lock();
    // A closed stdout is not worth a panic at the very end of a long run.
    let _ = writeln!(out, "{}", digest_line(digest));
    let _ = out.flush();
}

/// Prints an informational line to stdout (parameters, deterministic summaries) and flushes it,
/// so it is written before the next checkpoint rather than sitting in a buffer.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Calls back about ten times over `total` steps so an example can report progress on stderr
/// (stdout carries only deterministic lines).
#[derive(Debug)]
pub struct Progress {
    name: &'static str,
    total: usize,
    next_tenth: usize,
}

impl Progress {
    /// Progress over `total` units of work, reported under `name`.
    pub fn new(name: &'static str, total: usize) -> Progress {
        Progress {
            name,
            total,
            next_tenth: 1,
        }
    }

    /// Records that `done` units are complete; prints to stderr on each tenth passed, only when
    /// `WORKLOAD_PROGRESS` is set (so default output stays one header and one digest line).
    pub fn at(&mut self, done: usize) {
        while self.next_tenth <= 10 && done * 10 >= self.next_tenth * self.total {
            if std::env::var_os("WORKLOAD_PROGRESS").is_some() {
                eprintln!("{}: {}0%", self.name, self.next_tenth);
            }
            self.next_tenth += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        size_help: "SIZE",
        steps_help: "STEPS",
        default_size: 100,
        default_steps: 3,
        min_size: 2,
        max_size: 1000,
    };

    #[test]
    fn fnv1a_matches_published_vectors() {
        // Reference values of 64-bit FNV-1a from the algorithm's authors' test suite.
        let mut d = Digest::new();
        assert_eq!(d.finish(), 0xcbf2_9ce4_8422_2325);
        d.bytes(b"a");
        assert_eq!(d.finish(), 0xaf63_dc4c_8601_ec8c);
        let mut d = Digest::new();
        d.bytes(b"foobar");
        assert_eq!(d.finish(), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn digest_is_incremental_and_bit_exact() {
        let mut whole = Digest::new();
        whole.bytes(&1.5f64.to_bits().to_le_bytes());
        whole.bytes(&7u32.to_le_bytes());
        let mut parts = Digest::new();
        parts.f64(1.5);
        parts.u32(7);
        assert_eq!(whole.finish(), parts.finish());

        let mut pos = Digest::new();
        pos.f64(0.0);
        let mut neg = Digest::new();
        neg.f64(-0.0);
        assert_ne!(pos.finish(), neg.finish());
    }

    #[test]
    fn digest_line_has_sixteen_hex_digits() {
        assert_eq!(digest_line(0xab), "digest 00000000000000ab");
        assert_eq!(digest_line(u64::MAX), "digest ffffffffffffffff");
    }

    #[test]
    fn splitmix64_matches_reference_sequence() {
        // First outputs of the reference splitmix64.c seeded with 0.
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x.to_bits(), b.next_f64().to_bits());
            assert!((0.0..1.0).contains(&x));
            let y = a.range_f64(-2.0, 3.0);
            assert_eq!(y.to_bits(), b.range_f64(-2.0, 3.0).to_bits());
            assert!((-2.0..3.0).contains(&y));
            let k = a.below(7);
            assert_eq!(k, b.below(7));
            assert!(k < 7);
        }
    }

    #[test]
    fn args_defaults_and_values() {
        let none: [&str; 0] = [];
        assert_eq!(
            Args::parse_from(&SPEC, none),
            Ok(Args {
                size: 100,
                steps: 3
            })
        );
        assert_eq!(
            Args::parse_from(&SPEC, ["50"]),
            Ok(Args { size: 50, steps: 3 })
        );
        assert_eq!(
            Args::parse_from(&SPEC, ["50", "9"]),
            Ok(Args { size: 50, steps: 9 })
        );
    }

    #[test]
    fn args_errors() {
        assert_eq!(
            Args::parse_from(&SPEC, ["x"]),
            Err(ArgError::NotANumber("x".into()))
        );
        assert_eq!(
            Args::parse_from(&SPEC, ["-5"]),
            Err(ArgError::NotANumber("-5".into()))
        );
        assert_eq!(
            Args::parse_from(&SPEC, ["1"]),
            Err(ArgError::SizeOutOfRange(1))
        );
        assert_eq!(
            Args::parse_from(&SPEC, ["1001"]),
            Err(ArgError::SizeOutOfRange(1001))
        );
        assert_eq!(
            Args::parse_from(&SPEC, ["10", "0"]),
            Err(ArgError::ZeroSteps)
        );
        assert_eq!(
            Args::parse_from(&SPEC, ["1", "2", "3"]),
            Err(ArgError::TooMany)
        );
        assert_eq!(Args::parse_from(&SPEC, ["--help"]), Err(ArgError::Help));
    }
}
