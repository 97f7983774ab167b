//! Client-side authenticated encryption of shards and manifests (AES-256-GCM, aws-lc-rs).
//!
//! Servers are other people's machines: they only ever see ciphertext. Each data chunk is sealed
//! with nonce `salt || chunk_index`, where `salt` is 64 random bits drawn per generation write, so
//! a nonce is never reused under the key (rewriting a generation draws a new salt). The associated
//! data binds the pool, the generation, the chunk index and the plaintext length, so a server that
//! returns another generation's chunk (rollback), another position's chunk (swap) or altered bytes
//! is caught by the tag. Manifests are sealed with a random nonce carried in their header.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::proto::PoolId;

/// Length of the GCM tag appended to every sealed chunk.
pub const TAG_LEN: usize = 16;

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error(
        "authentication failed for {what}: altered, swapped or replayed data, or the wrong data key"
    )]
    Tampered { what: String },
    #[error("encryption failed")]
    Seal,
}

/// How page contents are protected.
#[derive(Clone)]
pub enum Encryption {
    /// AES-256-GCM under a key only the client knows.
    Aead { key: [u8; 32] },
    /// Stored as plaintext; integrity only against accidents (CRC). Must be chosen explicitly.
    Plaintext,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encryption::Aead { .. } => "Aead(AES-256-GCM)",
            Encryption::Plaintext => "Plaintext",
        })
    }
}

/// A ready-to-use sealer for one pool.
#[derive(Clone)]
pub struct Sealer {
    key: Option<Arc<LessSafeKey>>,
    pool: PoolId,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(encrypted: {})", self.key.is_some())
    }
}

fn chunk_aad(pool: &PoolId, generation: u64, index: u32, len: u32) -> [u8; 44] {
    let mut a = [0u8; 44];
    a[..12].copy_from_slice(b"rmem-chunk-1");
    a[12..28].copy_from_slice(pool);
    a[28..36].copy_from_slice(&generation.to_le_bytes());
    a[36..40].copy_from_slice(&index.to_le_bytes());
    a[40..44].copy_from_slice(&len.to_le_bytes());
    a
}

fn chunk_nonce(salt: u64, index: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&salt.to_le_bytes());
    n[8..].copy_from_slice(&index.to_le_bytes());
    n
}

impl Sealer {
    pub fn new(enc: &Encryption, pool: PoolId) -> Sealer {
        let key = match enc {
            // A 32-byte key is always a valid AES-256 key.
            Encryption::Aead { key } => UnboundKey::new(&AES_256_GCM, key)
                .ok()
                .map(|k| Arc::new(LessSafeKey::new(k))),
            Encryption::Plaintext => None,
        };
        Sealer { key, pool }
    }

    pub fn encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// Bytes added to each chunk.
    pub fn overhead(&self) -> usize {
        if self.key.is_some() { TAG_LEN } else { 0 }
    }

    /// Seals `buf` in place (appending the tag). The nonce is unique per key because `salt` is
    /// drawn at random for every generation write and `index` counts the chunks of that write.
    /// Whether chunks are sealed (AEAD) rather than stored as they are.
    pub fn encrypts(&self) -> bool {
        self.key.is_some()
    }

    pub fn seal_chunk(
        &self,
        generation: u64,
        salt: u64,
        index: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let Some(k) = &self.key else { return Ok(()) };
        let aad = chunk_aad(&self.pool, generation, index, buf.len() as u32);
        k.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(chunk_nonce(salt, index)),
            Aad::from(&aad[..]),
            buf,
        )
        .map_err(|_| CryptoError::Seal)
    }

    /// Opens a sealed chunk in place (removing the tag); `plain_len` is what the manifest recorded.
    pub fn open_chunk(
        &self,
        generation: u64,
        salt: u64,
        index: u32,
        plain_len: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let tampered = || CryptoError::Tampered {
            what: format!("chunk {index} of generation {generation}"),
        };
        let Some(k) = &self.key else {
            return if buf.len() == plain_len as usize {
                Ok(())
            } else {
                Err(tampered())
            };
        };
        let aad = chunk_aad(&self.pool, generation, index, plain_len);
        let n = k
            .open_in_place(
                Nonce::assume_unique_for_key(chunk_nonce(salt, index)),
                Aad::from(&aad[..]),
                buf,
            )
            .map_err(|_| tampered())?
            .len();
        buf.truncate(n);
        if n != plain_len as usize {
            return Err(tampered());
        }
        Ok(())
    }

    /// Seals a manifest body; `aad` is its header. Returns the ciphertext with its tag.
    pub fn seal_manifest(
        &self,
        aad: &[u8],
        nonce: [u8; 12],
        body: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut v = body.to_vec();
        if let Some(k) = &self.key {
            k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut v)
                .map_err(|_| CryptoError::Seal)?;
        }
        Ok(v)
    }

    pub fn open_manifest(
        &self,
        aad: &[u8],
        nonce: [u8; 12],
        ct: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut v = ct.to_vec();
        if let Some(k) = &self.key {
            let n = k
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut v)
                .map_err(|_| CryptoError::Tampered {
                    what: "manifest".into(),
                })?
                .len();
            v.truncate(n);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_binding() {
        let s = Sealer::new(&Encryption::Aead { key: [9; 32] }, [1; 16]);
        let mut b = b"hello pages".to_vec();
        s.seal_chunk(5, 77, 3, &mut b).unwrap();
        assert_ne!(&b[..11], b"hello pages");
        let mut ok = b.clone();
        s.open_chunk(5, 77, 3, 11, &mut ok).unwrap();
        assert_eq!(ok, b"hello pages");
        // Another generation (rollback), another index (swap), a flipped bit, another pool.
        assert!(s.open_chunk(4, 77, 3, 11, &mut b.clone()).is_err());
        assert!(s.open_chunk(5, 77, 2, 11, &mut b.clone()).is_err());
        let mut f = b.clone();
        f[0] ^= 1;
        assert!(s.open_chunk(5, 77, 3, 11, &mut f).is_err());
        let other = Sealer::new(&Encryption::Aead { key: [9; 32] }, [2; 16]);
        assert!(other.open_chunk(5, 77, 3, 11, &mut b.clone()).is_err());
    }
}
