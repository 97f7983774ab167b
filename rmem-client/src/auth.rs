//! Pre-shared-key mutual authentication: HMAC-SHA256 challenge-response, and key-file loading.
//!
//! Both sides send a fresh random nonce; each proves knowledge of the key by sending
//! `HMAC(key, role || client_nonce || server_nonce || pool)`. The role label differs for the two
//! directions so a proof cannot be reflected back, and both nonces are bound so a proof cannot be
//! replayed on another connection. Proofs are compared in constant time (`verify_slice`).

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::proto::{NONCE_LEN, PoolId};

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted: 128 bits.
pub const MIN_KEY_LEN: usize = 16;

/// Errors of key handling.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read key file {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("key is {0} bytes; at least {MIN_KEY_LEN} are required")]
    ShortKey(usize),
    #[error("key file {0} is not valid hex")]
    BadHex(String),
    #[error("no OS randomness: {0}")]
    Random(String),
}

/// Which side produces a proof.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    Server,
    Client,
}

/// A pre-shared key. `Debug` never prints the bytes.
#[derive(Clone)]
pub struct Psk(Vec<u8>);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Psk({} bytes)", self.0.len())
    }
}

impl Psk {
    pub fn new(bytes: &[u8]) -> Result<Psk, AuthError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(AuthError::ShortKey(bytes.len()));
        }
        Ok(Psk(bytes.to_vec()))
    }

    /// Reads a key file: hex text (whitespace ignored) when it parses as such, else raw bytes.
    pub fn from_file(path: &Path) -> Result<Psk, AuthError> {
        let raw = std::fs::read(path).map_err(|source| AuthError::ReadKey {
            path: path.display().to_string(),
            source,
        })?;
        let text: Vec<u8> = raw
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if !text.is_empty() && text.iter().all(|b| b.is_ascii_hexdigit()) {
            let bytes =
                decode_hex(&text).ok_or_else(|| AuthError::BadHex(path.display().to_string()))?;
            return Psk::new(&bytes);
        }
        Psk::new(&raw)
    }

    pub fn proof(
        &self,
        role: Role,
        client_nonce: &[u8; NONCE_LEN],
        server_nonce: &[u8; NONCE_LEN],
        pool: &PoolId,
    ) -> [u8; 32] {
        self.mac(role, client_nonce, server_nonce, pool)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Constant-time check of a peer's proof.
    pub fn verify(
        &self,
        role: Role,
        client_nonce: &[u8; NONCE_LEN],
        server_nonce: &[u8; NONCE_LEN],
        pool: &PoolId,
        proof: &[u8],
    ) -> bool {
        self.mac(role, client_nonce, server_nonce, pool)
            .verify_slice(proof)
            .is_ok()
    }

    fn mac(
        &self,
        role: Role,
        cn: &[u8; NONCE_LEN],
        sn: &[u8; NONCE_LEN],
        pool: &PoolId,
    ) -> HmacSha256 {
        // HMAC accepts keys of any length; new_from_slice cannot fail for HMAC.
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(match role {
            Role::Server => b"rmem-v1 server proof",
            Role::Client => b"rmem-v1 client proof",
        });
        m.update(cn);
        m.update(sn);
        m.update(pool);
        m
    }
}

/// Fills `buf` from the OS random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), AuthError> {
    getrandom::fill(buf).map_err(|e| AuthError::Random(e.to_string()))
}

pub fn decode_hex(t: &[u8]) -> Option<Vec<u8>> {
    if !t.len().is_multiple_of(2) {
        return None;
    }
    t.chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

pub fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_role_nonces_and_key() {
        let k = Psk::new(&[7; 32]).unwrap();
        let k2 = Psk::new(&[8; 32]).unwrap();
        let (cn, sn, pool) = ([1; 32], [2; 32], [3; 16]);
        let p = k.proof(Role::Server, &cn, &sn, &pool);
        assert!(k.verify(Role::Server, &cn, &sn, &pool, &p));
        assert!(
            !k.verify(Role::Client, &cn, &sn, &pool, &p),
            "reflection accepted"
        );
        assert!(!k.verify(Role::Server, &sn, &cn, &pool, &p));
        assert!(
            !k2.verify(Role::Server, &cn, &sn, &pool, &p),
            "wrong key accepted"
        );
        assert!(Psk::new(&[1; 8]).is_err());
        assert_eq!(decode_hex(b"00ff10").unwrap(), vec![0, 255, 16]);
        assert_eq!(encode_hex(&[0, 255]), "00ff");
    }
}
