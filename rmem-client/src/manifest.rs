//! The generation manifest: where every shard of a generation lives, how it is coded, which
//! address ranges it holds, plus the caller's own manifest bytes. Committed last, on every server
//! of the stripe; its presence is what makes a generation exist.
//!
//! Blob layout (little-endian):
//! `"RMMF" | version u16 | flags u16 | pool [16] | generation u64 | nonce [12] | body_len u32 |
//!  body (AES-GCM ciphertext with the preceding header as associated data, or plaintext) | crc32c u32`.
//! The body is described in `PROTOCOL.md`.

use crate::crypto::{CryptoError, Sealer};
use crate::erasure::Code;
use crate::proto::{Cursor, InstanceId, PoolId, ProtoError};

const MAGIC: &[u8; 4] = b"RMMF";
const FORMAT: u16 = 1;
const FLAG_ENCRYPTED: u16 = 1;
const HEADER: usize = 4 + 2 + 2 + 16 + 8 + 12 + 4;
/// Stripe slot of a shard that is not stored anywhere.
pub const LOST: u16 = u16::MAX;

/// Errors of manifest encoding and decoding.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is malformed: {0}")]
    Malformed(String),
    #[error("manifest checksum mismatch")]
    Checksum,
    #[error("manifest belongs to pool/generation {got_gen} elsewhere, expected {want_gen}")]
    Mismatch { want_gen: u64, got_gen: u64 },
    #[error("manifest is {got} but this pool is configured {want}")]
    Encryption {
        got: &'static str,
        want: &'static str,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl From<ProtoError> for ManifestError {
    fn from(e: ProtoError) -> Self {
        ManifestError::Malformed(e.to_string())
    }
}

/// Where a target of the manifest is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRef {
    /// A server process, identified by its instance id (a restarted server has a new one and has
    /// lost its memory) and the address it was reached at.
    Remote { instance: InstanceId, addr: String },
    /// The client's local spill directory.
    Disk,
}

/// One shard's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLoc {
    /// Index into `targets`, or [`LOST`].
    pub target: u16,
    /// Stored length (ciphertext for data shards of encrypted pools).
    pub len: u32,
    /// CRC32C of the stored bytes: a cheap first check before decryption, and the only
    /// integrity check of redundancy shards, which are not encrypted.
    pub crc: u32,
}

/// A run of caller addresses stored contiguously in one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub addr: u64,
    pub len: u32,
    pub chunk: u32,
    pub off: u32,
}

/// Decoded manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub pool: PoolId,
    pub generation: u64,
    /// Bumped each time the manifest is re-committed after data moved (migration, rebuild).
    pub version: u32,
    pub salt: u64,
    pub code: Code,
    pub k: u8,
    pub m: u8,
    pub chunk_size: u32,
    /// Plaintext length of each data chunk.
    pub chunk_lens: Vec<u32>,
    pub targets: Vec<TargetRef>,
    /// `k + m` shard places per stripe.
    pub stripes: Vec<Vec<ShardLoc>>,
    pub extents: Vec<Extent>,
    /// The caller's manifest (e.g. the checkpoint's region table).
    pub user: Vec<u8>,
}

/// Object key of shard `j` of stripe `s` on a server.
pub fn shard_key(stripe: usize, j: usize) -> u64 {
    ((stripe as u64) << 8) | j as u64
}

impl Manifest {
    /// Total bytes of caller data.
    pub fn bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len as u64).sum()
    }

    fn body(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            64 + self.chunk_lens.len() * 4
                + self.stripes.len() * 40
                + self.extents.len() * 20
                + self.user.len(),
        );
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&self.salt.to_le_bytes());
        v.extend_from_slice(&[self.code as u8, self.k, self.m]);
        v.extend_from_slice(&self.chunk_size.to_le_bytes());
        v.extend_from_slice(&(self.chunk_lens.len() as u32).to_le_bytes());
        for l in &self.chunk_lens {
            v.extend_from_slice(&l.to_le_bytes());
        }
        v.extend_from_slice(&(self.targets.len() as u16).to_le_bytes());
        for t in &self.targets {
            match t {
                TargetRef::Remote { instance, addr } => {
                    v.push(0);
                    v.extend_from_slice(instance);
                    let a = &addr.as_bytes()[..addr.len().min(255)];
                    v.push(a.len() as u8);
                    v.extend_from_slice(a);
                }
                TargetRef::Disk => v.push(1),
            }
        }
        v.extend_from_slice(&(self.stripes.len() as u32).to_le_bytes());
        for s in &self.stripes {
            for l in s {
                v.extend_from_slice(&l.target.to_le_bytes());
                v.extend_from_slice(&l.len.to_le_bytes());
                v.extend_from_slice(&l.crc.to_le_bytes());
            }
        }
        v.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            v.extend_from_slice(&e.addr.to_le_bytes());
            v.extend_from_slice(&e.len.to_le_bytes());
            v.extend_from_slice(&e.chunk.to_le_bytes());
            v.extend_from_slice(&e.off.to_le_bytes());
        }
        v.extend_from_slice(&(self.user.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.user);
        v
    }

    /// Encodes and seals the manifest with a fresh random nonce.
    pub fn seal(&self, sealer: &Sealer) -> Result<Vec<u8>, ManifestError> {
        let mut nonce = [0u8; 12];
        crate::auth::random_bytes(&mut nonce)
            .map_err(|e| ManifestError::Malformed(e.to_string()))?;
        let body = self.body();
        let ct_len = body.len() + sealer.overhead();
        let mut out = Vec::with_capacity(HEADER + ct_len + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(
            &(if sealer.encrypted() {
                FLAG_ENCRYPTED
            } else {
                0
            })
            .to_le_bytes(),
        );
        out.extend_from_slice(&self.pool);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&(ct_len as u32).to_le_bytes());
        let ct = sealer.seal_manifest(&out[..HEADER], nonce, &body)?;
        out.extend_from_slice(&ct);
        let crc = crate::crc::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Verifies and decodes a manifest blob fetched for (`pool`, `generation`).
    pub fn open(
        blob: &[u8],
        sealer: &Sealer,
        pool: &PoolId,
        generation: u64,
    ) -> Result<Manifest, ManifestError> {
        if blob.len() < HEADER + 4 {
            return Err(ManifestError::Malformed("too short".into()));
        }
        let (data, crc) = blob.split_at(blob.len() - 4);
        if crate::crc::crc32c(data) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(ManifestError::Checksum);
        }
        let mut c = Cursor::new(data, "manifest header");
        if c.bytes(4)? != MAGIC {
            return Err(ManifestError::Malformed("bad magic".into()));
        }
        let fmt = c.u16()?;
        if fmt != FORMAT {
            return Err(ManifestError::Malformed(format!("unknown format {fmt}")));
        }
        let flags = c.u16()?;
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        if encrypted != sealer.encrypted() {
            let name = |e: bool| if e { "encrypted" } else { "plaintext" };
            return Err(ManifestError::Encryption {
                got: name(encrypted),
                want: name(sealer.encrypted()),
            });
        }
        let p: PoolId = c.array()?;
        let g = c.u64()?;
        if &p != pool || g != generation {
            return Err(ManifestError::Mismatch {
                want_gen: generation,
                got_gen: g,
            });
        }
        let nonce: [u8; 12] = c.array()?;
        let n = c.u32()? as usize;
        let ct = c.bytes(n)?;
        c.finish()?;
        let body = sealer.open_manifest(&data[..HEADER], nonce, ct)?;
        Self::decode_body(&body, p, g)
    }

    fn decode_body(b: &[u8], pool: PoolId, generation: u64) -> Result<Manifest, ManifestError> {
        let mut c = Cursor::new(b, "manifest body");
        let version = c.u32()?;
        let salt = c.u64()?;
        let code = Code::from_u8(c.u8()?)
            .ok_or_else(|| ManifestError::Malformed("unknown code".into()))?;
        let (k, m) = (c.u8()?, c.u8()?);
        if k == 0 || (k as usize + m as usize) > 255 {
            return Err(ManifestError::Malformed("bad geometry".into()));
        }
        let chunk_size = c.u32()?;
        let nchunks = c.u32()? as usize;
        // Bound every count by the bytes actually present before allocating.
        let bound = |n: usize, each: usize, c: &Cursor| -> Result<(), ManifestError> {
            let _ = c;
            if n.saturating_mul(each) > b.len() {
                Err(ManifestError::Malformed("count exceeds size".into()))
            } else {
                Ok(())
            }
        };
        bound(nchunks, 4, &c)?;
        let chunk_lens = (0..nchunks)
            .map(|_| c.u32())
            .collect::<Result<Vec<_>, _>>()?;
        let nt = c.u16()? as usize;
        let mut targets = Vec::with_capacity(nt);
        for _ in 0..nt {
            targets.push(match c.u8()? {
                0 => {
                    let instance = c.array()?;
                    let l = c.u8()? as usize;
                    TargetRef::Remote {
                        instance,
                        addr: String::from_utf8_lossy(c.bytes(l)?).into_owned(),
                    }
                }
                1 => TargetRef::Disk,
                _ => return Err(ManifestError::Malformed("unknown target kind".into())),
            });
        }
        let ns = c.u32()? as usize;
        let w = k as usize + m as usize;
        bound(ns, w * 10, &c)?;
        let mut stripes = Vec::with_capacity(ns);
        for _ in 0..ns {
            let mut s = Vec::with_capacity(w);
            for _ in 0..w {
                let l = ShardLoc {
                    target: c.u16()?,
                    len: c.u32()?,
                    crc: c.u32()?,
                };
                if l.target != LOST && l.target as usize >= targets.len() {
                    return Err(ManifestError::Malformed("shard target out of range".into()));
                }
                s.push(l);
            }
            stripes.push(s);
        }
        if ns != nchunks.div_ceil(k as usize) {
            return Err(ManifestError::Malformed(
                "stripe count does not match chunks".into(),
            ));
        }
        let ne = c.u32()? as usize;
        bound(ne, 20, &c)?;
        let mut extents = Vec::with_capacity(ne);
        for _ in 0..ne {
            let e = Extent {
                addr: c.u64()?,
                len: c.u32()?,
                chunk: c.u32()?,
                off: c.u32()?,
            };
            let fits = (e.chunk as usize) < nchunks
                && e.off as u64 + e.len as u64 <= chunk_lens[e.chunk as usize] as u64;
            if !fits {
                return Err(ManifestError::Malformed("extent outside its chunk".into()));
            }
            extents.push(e);
        }
        let ul = c.u32()? as usize;
        let user = c.bytes(ul)?.to_vec();
        c.finish()?;
        Ok(Manifest {
            pool,
            generation,
            version,
            salt,
            code,
            k,
            m,
            chunk_size,
            chunk_lens,
            targets,
            stripes,
            extents,
            user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Encryption;

    fn sample() -> Manifest {
        Manifest {
            pool: [1; 16],
            generation: 9,
            version: 2,
            salt: 42,
            code: Code::Xor,
            k: 2,
            m: 1,
            chunk_size: 100,
            chunk_lens: vec![100, 50],
            targets: vec![
                TargetRef::Remote {
                    instance: [5; 16],
                    addr: "127.0.0.1:1".into(),
                },
                TargetRef::Disk,
            ],
            stripes: vec![vec![
                ShardLoc {
                    target: 0,
                    len: 116,
                    crc: 1,
                },
                ShardLoc {
                    target: 1,
                    len: 66,
                    crc: 2,
                },
                ShardLoc {
                    target: LOST,
                    len: 128,
                    crc: 3,
                },
            ]],
            extents: vec![
                Extent {
                    addr: 4096,
                    len: 150,
                    chunk: 0,
                    off: 0,
                }
                .clamp_to(100),
                Extent {
                    addr: 4196,
                    len: 50,
                    chunk: 1,
                    off: 0,
                },
            ],
            user: b"regions".to_vec(),
        }
    }

    impl Extent {
        fn clamp_to(mut self, n: u32) -> Extent {
            self.len = self.len.min(n);
            self
        }
    }

    #[test]
    fn roundtrip_and_binding() {
        for enc in [Encryption::Aead { key: [3; 32] }, Encryption::Plaintext] {
            let s = Sealer::new(&enc, [1; 16]);
            let m = sample();
            let blob = m.seal(&s).unwrap();
            assert_eq!(Manifest::open(&blob, &s, &[1; 16], 9).unwrap(), m);
            assert!(
                Manifest::open(&blob, &s, &[1; 16], 8).is_err(),
                "served for another generation"
            );
            for i in [0, 10, HEADER + 3, blob.len() - 1] {
                let mut b = blob.clone();
                b[i] ^= 4;
                assert!(Manifest::open(&b, &s, &[1; 16], 9).is_err());
            }
        }
        // A forged blob with a recomputed CRC still fails authentication.
        let s = Sealer::new(&Encryption::Aead { key: [3; 32] }, [1; 16]);
        let mut b = sample().seal(&s).unwrap();
        let n = b.len();
        b[HEADER + 2] ^= 1;
        let crc = crc32c::crc32c(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Manifest::open(&b, &s, &[1; 16], 9),
            Err(ManifestError::Crypto(_))
        ));
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use crate::crypto::Encryption;

    /// Random corruption of a plaintext manifest (whose CRC is recomputed, as a lying server
    /// would) must give an error or a valid manifest, never a panic or an oversized allocation.
    #[test]
    fn mutated_manifests_never_panic() {
        let s = Sealer::new(&Encryption::Plaintext, [1; 16]);
        let base = Manifest {
            pool: [1; 16],
            generation: 3,
            version: 1,
            salt: 9,
            code: Code::Xor,
            k: 2,
            m: 1,
            chunk_size: 100,
            chunk_lens: vec![100, 100, 30],
            targets: vec![TargetRef::Disk],
            stripes: vec![
                vec![
                    ShardLoc {
                        target: 0,
                        len: 100,
                        crc: 1
                    };
                    3
                ];
                2
            ],
            extents: vec![
                Extent {
                    addr: 0,
                    len: 100,
                    chunk: 0,
                    off: 0,
                },
                Extent {
                    addr: 100,
                    len: 30,
                    chunk: 2,
                    off: 0,
                },
            ],
            user: vec![5; 40],
        };
        let blob = base.seal(&s).unwrap();
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut b = blob.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() as usize) % (b.len() - 4);
                b[i] = rnd() as u8;
            }
            if rnd() % 8 == 0 {
                let cut = (rnd() as usize) % b.len();
                b.truncate(cut.max(4));
            }
            let n = b.len();
            let crc = crc32c::crc32c(&b[..n - 4]);
            b[n - 4..].copy_from_slice(&crc.to_le_bytes());
            if let Ok(m) = Manifest::open(&b, &s, &[1; 16], 3) {
                // Whatever decodes is internally consistent.
                assert_eq!(m.stripes.len(), m.chunk_lens.len().div_ceil(m.k as usize));
                for e in &m.extents {
                    assert!(e.off as u64 + e.len as u64 <= m.chunk_lens[e.chunk as usize] as u64);
                }
            }
        }
    }
}
