//! Redundancy schemes and their codes: none, mirroring, XOR parity (RAID-5), Reed–Solomon.
//!
//! A generation's chunks are grouped in stripes of `k` data shards plus `m` redundancy shards,
//! placed on `k + m` distinct servers, rotating from stripe to stripe so parity load is spread
//! (RAID-5 style). Codes work on equal-length shards: data shards are zero-padded to the stripe's
//! shard length for coding, but stored unpadded (the manifest keeps each stored length).

use std::cell::RefCell;
use std::collections::BTreeMap;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

/// Errors of redundancy configuration and coding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ErasureError {
    #[error("bad redundancy {0:?} (none | mirror:K | parity | rs:K+M)")]
    Parse(String),
    #[error("{scheme} needs at least {need} servers in the stripe, {have} available")]
    TooFewServers {
        scheme: String,
        need: usize,
        have: usize,
    },
    #[error("stripe has {have} of the {need} shards needed to reconstruct")]
    TooManyLost { need: usize, have: usize },
    #[error("Reed-Solomon: {0}")]
    Rs(String),
}

/// How each stripe is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redundancy {
    None,
    /// `copies` identical copies on distinct servers (RAID-1 when 2).
    Mirror {
        copies: u8,
    },
    /// `width - 1` data shards + 1 XOR shard (RAID-5).
    Parity,
    /// Reed–Solomon: `k` data + `m` recovery shards; survives any `m` losses.
    Rs {
        k: u8,
        m: u8,
    },
}

impl std::str::FromStr for Redundancy {
    type Err = ErasureError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ErasureError::Parse(s.to_string());
        let t = s.trim().to_ascii_lowercase();
        Ok(match t.as_str() {
            "none" => Redundancy::None,
            "parity" | "raid5" => Redundancy::Parity,
            _ => {
                if let Some(c) = t.strip_prefix("mirror:") {
                    let copies: u8 = c.parse().map_err(|_| bad())?;
                    if copies < 2 {
                        return Err(bad());
                    }
                    Redundancy::Mirror { copies }
                } else if t == "mirror" {
                    Redundancy::Mirror { copies: 2 }
                } else if let Some(km) = t.strip_prefix("rs:") {
                    let (k, m) = km.split_once('+').ok_or_else(bad)?;
                    let (k, m): (u8, u8) =
                        (k.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
                    if k == 0 || m == 0 || k as usize + m as usize > 64 {
                        return Err(bad());
                    }
                    Redundancy::Rs { k, m }
                } else {
                    return Err(bad());
                }
            }
        })
    }
}

impl std::fmt::Display for Redundancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Redundancy::None => write!(f, "none"),
            Redundancy::Mirror { copies } => write!(f, "mirror:{copies}"),
            Redundancy::Parity => write!(f, "parity"),
            Redundancy::Rs { k, m } => write!(f, "rs:{k}+{m}"),
        }
    }
}

/// Coding scheme as recorded in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// No redundancy shards (k = 1, m = 0).
    None = 0,
    /// Redundancy shards are copies of the single data shard (k = 1).
    Copy = 1,
    /// One XOR shard.
    Xor = 2,
    Rs = 3,
}

impl Code {
    pub fn from_u8(v: u8) -> Option<Code> {
        Some(match v {
            0 => Code::None,
            1 => Code::Copy,
            2 => Code::Xor,
            3 => Code::Rs,
            _ => return None,
        })
    }
}

/// Stripe geometry for a redundancy over `width` servers: (code, k, m).
pub fn geometry(r: Redundancy, width: usize) -> Result<(Code, usize, usize), ErasureError> {
    let too_few = |need: usize| ErasureError::TooFewServers {
        scheme: r.to_string(),
        need,
        have: width,
    };
    match r {
        Redundancy::None if width >= 1 => Ok((Code::None, 1, 0)),
        Redundancy::None => Err(too_few(1)),
        Redundancy::Mirror { copies } if width >= copies as usize => {
            Ok((Code::Copy, 1, copies as usize - 1))
        }
        Redundancy::Mirror { copies } => Err(too_few(copies as usize)),
        Redundancy::Parity if width >= 2 => Ok((Code::Xor, width - 1, 1)),
        Redundancy::Parity => Err(too_few(2)),
        Redundancy::Rs { k, m } if width >= (k + m) as usize => {
            Ok((Code::Rs, k as usize, m as usize))
        }
        Redundancy::Rs { k, m } => Err(too_few((k + m) as usize)),
    }
}

/// Shard length used for coding a stripe whose longest data shard is `max` bytes: Reed–Solomon
/// wants an even length; 64 keeps the SIMD paths on their fast track.
pub fn coded_len(max: usize) -> usize {
    max.div_ceil(64).max(1) * 64
}

/// Computes the `m` redundancy shards for `data` (each zero-padded to `len` for coding).
pub fn encode(
    code: Code,
    data: &[&[u8]],
    m: usize,
    len: usize,
) -> Result<Vec<Vec<u8>>, ErasureError> {
    match code {
        Code::None => Ok(Vec::new()),
        Code::Copy => Ok((0..m).map(|_| data[0].to_vec()).collect()),
        Code::Xor => {
            let mut p = crate::bufpool::take_zeroed(len);
            for d in data {
                xor_into(&mut p[..d.len()], d);
            }
            Ok(vec![p])
        }
        Code::Rs => rs_encode(data, m, len),
    }
}

/// XOR parity of `data` (each zero-padded to `len`) into `out`, reusing its allocation: the first
/// shard is copied and the others XORed in, with no separate zeroing pass.
pub fn xor_parity_into(data: &[Vec<u8>], len: usize, out: &mut Vec<u8>) {
    out.clear();
    if let Some(d) = data.first() {
        out.extend_from_slice(&d[..d.len().min(len)]);
    }
    out.resize(len, 0);
    for d in data.iter().skip(1) {
        xor_into(out, d);
    }
}

/// Rebuilds the missing data shards of a stripe in place. `shards` holds k data then m redundancy
/// shards (`None` = lost); `lens` the stored length of each data shard.
pub fn reconstruct(
    code: Code,
    k: usize,
    m: usize,
    shards: &mut [Option<Vec<u8>>],
    lens: &[usize],
) -> Result<(), ErasureError> {
    let missing: Vec<usize> = (0..k).filter(|&i| shards[i].is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let have = shards.iter().filter(|s| s.is_some()).count();
    let too_many = || ErasureError::TooManyLost { need: k, have };
    match code {
        Code::None => Err(too_many()),
        Code::Copy => {
            let copy = shards[1..]
                .iter()
                .flatten()
                .next()
                .cloned()
                .ok_or_else(too_many)?;
            shards[0] = Some(copy[..lens[0].min(copy.len())].to_vec());
            Ok(())
        }
        Code::Xor => {
            if missing.len() > 1 {
                return Err(too_many());
            }
            let mut p = shards[k].clone().ok_or_else(too_many)?;
            for (i, d) in shards[..k].iter().enumerate() {
                if i != missing[0]
                    && let Some(d) = d
                {
                    xor_into(&mut p[..d.len()], d);
                }
            }
            p.truncate(lens[missing[0]]);
            shards[missing[0]] = Some(p);
            Ok(())
        }
        Code::Rs => {
            if have < k {
                return Err(too_many());
            }
            let len = shards.iter().flatten().map(|s| s.len()).max().unwrap_or(0);
            let len = coded_len(len);
            let originals: Vec<(usize, &[u8])> = (0..k)
                .filter_map(|i| shards[i].as_deref().map(|s| (i, s)))
                .collect();
            let recovery: Vec<(usize, &[u8])> = (0..m)
                .filter_map(|j| shards[k + j].as_deref().map(|s| (j, s)))
                .collect();
            let restored = rs_decode(k, m, len, &originals, &recovery)?;
            for i in missing {
                let mut s = restored.get(&i).cloned().ok_or_else(too_many)?;
                s.truncate(lens[i]);
                shards[i] = Some(s);
            }
            Ok(())
        }
    }
}

thread_local! {
    // Encoder and decoder keep their work space between stripes: building one per call costs an
    // allocation of (k + m) shards and made Reed–Solomon run at ~1 GB/s instead of tens.
    // Per thread (no lock), so a forked child can use them.
    static RS_ENC: RefCell<Option<ReedSolomonEncoder>> = const { RefCell::new(None) };
    static RS_DEC: RefCell<Option<ReedSolomonDecoder>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn rs_err(e: reed_solomon_simd::Error) -> ErasureError {
    ErasureError::Rs(e.to_string())
}

/// Feeds `d` zero-padded to `len` (copying only when it is shorter).
fn with_padded<R>(d: &[u8], len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
    if d.len() == len {
        return f(d);
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.extend_from_slice(d);
        s.resize(len, 0);
        f(&s)
    })
}

fn rs_encode(data: &[&[u8]], m: usize, len: usize) -> Result<Vec<Vec<u8>>, ErasureError> {
    RS_ENC.with(|cell| {
        let mut cell = cell.borrow_mut();
        match cell.as_mut() {
            Some(e) => e.reset(data.len(), m, len).map_err(rs_err)?,
            None => *cell = Some(ReedSolomonEncoder::new(data.len(), m, len).map_err(rs_err)?),
        }
        let enc = cell
            .as_mut()
            .ok_or_else(|| ErasureError::Rs("no encoder".into()))?;
        for d in data {
            with_padded(d, len, |p| enc.add_original_shard(p)).map_err(rs_err)?;
        }
        let r = enc.encode().map_err(rs_err)?;
        Ok(r.recovery_iter()
            .map(|s| {
                let mut v = crate::bufpool::take(s.len());
                v.copy_from_slice(s);
                v
            })
            .collect())
    })
}

fn rs_decode(
    k: usize,
    m: usize,
    len: usize,
    originals: &[(usize, &[u8])],
    recovery: &[(usize, &[u8])],
) -> Result<BTreeMap<usize, Vec<u8>>, ErasureError> {
    RS_DEC.with(|cell| {
        let mut cell = cell.borrow_mut();
        match cell.as_mut() {
            Some(d) => d.reset(k, m, len).map_err(rs_err)?,
            None => *cell = Some(ReedSolomonDecoder::new(k, m, len).map_err(rs_err)?),
        }
        let dec = cell
            .as_mut()
            .ok_or_else(|| ErasureError::Rs("no decoder".into()))?;
        for (i, s) in originals {
            with_padded(s, len, |p| dec.add_original_shard(*i, p)).map_err(rs_err)?;
        }
        for (i, s) in recovery {
            with_padded(s, len, |p| dec.add_recovery_shard(*i, p)).map_err(rs_err)?;
        }
        let r = dec.decode().map_err(rs_err)?;
        Ok(r.restored_original_iter()
            .map(|(i, s)| (i, s.to_vec()))
            .collect())
    })
}

/// Rebuilds a redundancy shard `j` (0-based among the m) from complete data shards.
pub fn rebuild_redundancy(
    code: Code,
    data: &[&[u8]],
    m: usize,
    j: usize,
) -> Result<Vec<u8>, ErasureError> {
    let len = coded_len(data.iter().map(|d| d.len()).max().unwrap_or(0));
    let mut all = encode(code, data, m, len)?;
    Ok(all.swap_remove(j))
}

/// `dst ^= src`, a word at a time (the compiler vectorizes the chunked loop).
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    let n = dst.len().min(src.len());
    let (d, s) = (&mut dst[..n], &src[..n]);
    let mut dc = d.chunks_exact_mut(8);
    let mut sc = s.chunks_exact(8);
    for (a, b) in (&mut dc).zip(&mut sc) {
        let x = u64::from_ne_bytes(a.try_into().unwrap_or([0; 8]))
            ^ u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
        a.copy_from_slice(&x.to_ne_bytes());
    }
    for (a, b) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
        *a ^= b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_parity_into_matches_encode_and_crc_is_affine() {
        let data: Vec<Vec<u8>> = (0..3u8)
            .map(|i| (0..4096).map(|x| (x as u8).wrapping_mul(31) ^ i).collect())
            .collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let want = encode(Code::Xor, &refs, 1, 4096).unwrap();
        let mut p = vec![9u8; 10];
        xor_parity_into(&data, 4096, &mut p);
        assert_eq!(p, want[0]);
        // What the writer relies on to derive the parity CRC from the data shards' CRCs.
        let z = crc32c::crc32c(&[0u8; 4096]);
        let derived = data.iter().fold(0, |a, d| a ^ crc32c::crc32c(d));
        assert_eq!(derived, crc32c::crc32c(&p), "odd count: no zero term");
        let derived2 = crc32c::crc32c(&data[0]) ^ crc32c::crc32c(&data[1]) ^ z;
        xor_parity_into(&data[..2], 4096, &mut p);
        assert_eq!(derived2, crc32c::crc32c(&p), "even count: one zero term");
        let short = vec![data[0][..100].to_vec(), data[1].clone()];
        xor_parity_into(&short, 4096, &mut p);
        let refs: Vec<&[u8]> = short.iter().map(|d| d.as_slice()).collect();
        assert_eq!(p, encode(Code::Xor, &refs, 1, 4096).unwrap()[0]);
    }

    fn shards(k: usize) -> Vec<Vec<u8>> {
        (0..k)
            .map(|i| {
                (0..(1000 + i * 37))
                    .map(|x| (x * 7 + i * 13) as u8)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_code_recovers_up_to_m_losses() {
        for (code, k, m) in [
            (Code::Copy, 1, 2),
            (Code::Xor, 4, 1),
            (Code::Rs, 4, 2),
            (Code::Rs, 6, 3),
        ] {
            let data = shards(k);
            let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            let len = coded_len(data.iter().map(|d| d.len()).max().unwrap());
            let red = encode(code, &refs, m, len).unwrap();
            let lens: Vec<usize> = data.iter().map(|d| d.len()).collect();
            // Lose the first m data shards (or all but one for Copy).
            let mut s: Vec<Option<Vec<u8>>> = data
                .iter()
                .cloned()
                .map(Some)
                .chain(red.iter().cloned().map(Some))
                .collect();
            for x in s.iter_mut().take(m.min(k)) {
                *x = None;
            }
            reconstruct(code, k, m, &mut s, &lens).unwrap();
            for i in 0..k {
                assert_eq!(s[i].as_ref().unwrap(), &data[i], "{code:?} shard {i}");
            }
            // One loss too many is an error, never garbage.
            let mut s: Vec<Option<Vec<u8>>> = data
                .iter()
                .cloned()
                .map(Some)
                .chain(red.iter().cloned().map(Some))
                .collect();
            for x in s.iter_mut().take(m + 1) {
                *x = None;
            }
            if code != Code::Copy {
                assert!(reconstruct(code, k, m, &mut s, &lens).is_err(), "{code:?}");
            }
        }
        let mut s = vec![None];
        assert!(reconstruct(Code::None, 1, 0, &mut s, &[3]).is_err());
    }

    #[test]
    fn parse_and_geometry() {
        assert_eq!("mirror:3".parse(), Ok(Redundancy::Mirror { copies: 3 }));
        assert_eq!("rs:4+2".parse(), Ok(Redundancy::Rs { k: 4, m: 2 }));
        assert!("rs:4".parse::<Redundancy>().is_err());
        assert_eq!(geometry(Redundancy::Parity, 4).unwrap(), (Code::Xor, 3, 1));
        assert!(geometry(Redundancy::Rs { k: 4, m: 2 }, 5).is_err());
    }
}
