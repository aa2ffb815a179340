//! The unsealed root keys, by version, and the data-key operations on them: bucket KEKs are
//! derived per (bucket id, root version) with HKDF-SHA256, and data keys are wrapped with AES-KW
//! under the bucket KEK, so a key wrapped for one bucket fails the integrity check for another.
//!
//! Secret: every root key, bucket KEK and data key here (all [`SecretKey32`], zeroized on drop).
//! Nothing in this module does I/O.

use std::collections::BTreeMap;

use coffer_common::secret::SecretKey32;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::seal::{unwrap_key, wrap_key};

/// Why a data key could not be unwrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error("unknown root key version")]
    UnknownVersion,
    #[error("wrapped key failed its integrity check (wrong bucket, version or corrupted)")]
    Integrity,
}

/// Root keys by version; the highest is active.
#[derive(Default)]
pub struct Keyring {
    keys: BTreeMap<u32, SecretKey32>,
}

/// Bucket KEK: HKDF-SHA256(ikm = RK_v, no salt,
/// info = "bucket-kek" | u32 len | bucket id | u32 version), big-endian lengths.
pub fn bucket_kek(root: &SecretKey32, bucket_id: &str, version: u32) -> SecretKey32 {
    let hk = Hkdf::<Sha256>::new(None, root.expose_secret());
    let mut info = Vec::with_capacity(10 + 8 + bucket_id.len());
    info.extend_from_slice(b"bucket-kek");
    info.extend_from_slice(&(bucket_id.len() as u32).to_be_bytes());
    info.extend_from_slice(bucket_id.as_bytes());
    info.extend_from_slice(&version.to_be_bytes());
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(&info, okm.as_mut());
    SecretKey32::from_bytes(*okm)
}

/// Registry lookup id of one wrapping: SHA-256(u32 len | bucket | u32 version | wrapped).
pub fn wrapping_lookup(bucket_id: &str, version: u32, wrapped: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update((bucket_id.len() as u32).to_be_bytes());
    h.update(bucket_id.as_bytes());
    h.update(version.to_be_bytes());
    h.update(wrapped);
    h.finalize().to_vec()
}

/// Public fingerprint of a wrapped key for audit records: first 16 hex digits of its SHA-256.
pub fn wrapped_fingerprint(wrapped: &[u8]) -> String {
    let d = Sha256::digest(wrapped);
    format!("dk-{}", hex::encode(d.get(..8).unwrap_or_default()))
}

impl Keyring {
    /// Add an unsealed root key version.
    pub fn insert(&mut self, version: u32, key: SecretKey32) {
        self.keys.insert(version, key);
    }

    /// Forget a retired version (its key is zeroized on drop).
    pub fn remove(&mut self, version: u32) {
        self.keys.remove(&version);
    }

    /// The active (newest) version, if any key is loaded.
    pub fn active_version(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    /// The root key of `version` (named-key material is sealed under it).
    pub fn root(&self, version: u32) -> Option<&SecretKey32> {
        self.keys.get(&version)
    }

    /// Versions loaded, ascending.
    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Wrap `data_key` for `bucket_id` under root version `version`.
    pub fn wrap(
        &self,
        bucket_id: &str,
        version: u32,
        data_key: &SecretKey32,
    ) -> Result<[u8; 40], UnwrapError> {
        let root = self.keys.get(&version).ok_or(UnwrapError::UnknownVersion)?;
        Ok(wrap_key(&bucket_kek(root, bucket_id, version), data_key))
    }

    /// Unwrap a data key for `bucket_id` wrapped under root version `version`.
    pub fn unwrap(
        &self,
        bucket_id: &str,
        version: u32,
        wrapped: &[u8],
    ) -> Result<SecretKey32, UnwrapError> {
        let root = self.keys.get(&version).ok_or(UnwrapError::UnknownVersion)?;
        let wrapped: &[u8; 40] = wrapped.try_into().map_err(|_| UnwrapError::Integrity)?;
        unwrap_key(&bucket_kek(root, bucket_id, version), wrapped).ok_or(UnwrapError::Integrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        let mut r = Keyring::default();
        r.insert(1, SecretKey32::from_bytes([1u8; 32]));
        r.insert(2, SecretKey32::from_bytes([2u8; 32]));
        r
    }

    #[test]
    fn hkdf_binds_bucket_and_version() {
        let root = SecretKey32::from_bytes([1u8; 32]);
        let a = bucket_kek(&root, "bucket-a", 1);
        let b = bucket_kek(&root, "bucket-b", 1);
        let a2 = bucket_kek(&root, "bucket-a", 2);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_ne!(a.expose_secret(), a2.expose_secret());
        assert_eq!(
            a.expose_secret(),
            bucket_kek(&root, "bucket-a", 1).expose_secret()
        );
        // Length prefix: ("ab", ..) and ("a", "b"..) cannot collide by concatenation.
        assert_ne!(
            bucket_kek(&root, "a\u{0}\u{0}\u{0}\u{1}", 1).expose_secret(),
            bucket_kek(&root, "a", 1).expose_secret()
        );
    }

    #[test]
    fn wrapped_for_bucket_a_does_not_unwrap_for_b() {
        let r = ring();
        assert_eq!(r.active_version(), Some(2));
        let dk = SecretKey32::generate();
        let w = r.wrap("bucket-a", 2, &dk).unwrap();
        let back = r.unwrap("bucket-a", 2, &w).unwrap();
        assert_eq!(back.expose_secret(), dk.expose_secret());
        assert_eq!(
            r.unwrap("bucket-b", 2, &w).err(),
            Some(UnwrapError::Integrity)
        );
        assert_eq!(
            r.unwrap("bucket-a", 1, &w).err(),
            Some(UnwrapError::Integrity)
        );
        assert_eq!(
            r.unwrap("bucket-a", 9, &w).err(),
            Some(UnwrapError::UnknownVersion)
        );
        assert_eq!(
            r.unwrap("bucket-a", 2, &w[..39]).err(),
            Some(UnwrapError::Integrity)
        );
    }
}
