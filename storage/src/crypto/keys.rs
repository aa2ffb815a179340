//! Key derivations and object-key sealing (`docs/design.md` "Key hierarchy"; byte layout and
//! test vectors in `docs/format.md`).
//!
//! Secret: every key here (bucket keys, customer keys, KEKs, object keys). Sealed object keys
//! (AES-KW, 40 bytes) and salts are not secret and are what the metadata store keeps.
//!
//! KEK derivation: `HKDF-SHA256(ikm, salt, info)` where `info` is the mode label followed by
//! length-prefixed fields: `label | u32 len | bucket id | u32 len | object key | u32 len | version id`
//! (label `sse-s3` with the bucket data key as ikm, `sse-c` with the customer key as ikm,
//! `sse-kms` with a KMS data key as ikm).
//! Length prefixes make the binding unambiguous. Sealing is AES-KW (RFC 3394) of the 32-byte
//! object key under the KEK; a wrong key or another binding fails the integrity check.

use aes_kw::KekAes256;
use coffer_common::secret::SecretKey32;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Length of an AES-KW wrapped 32-byte key.
pub const SEALED_LEN: usize = 40;

/// HKDF-SHA256 into a 32-byte key.
pub fn hkdf32(ikm: &SecretKey32, salt: &[u8], info: &[u8]) -> SecretKey32 {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm.expose_secret());
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(info, okm.as_mut());
    SecretKey32::from_bytes(*okm)
}

/// How an object key is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealMode {
    /// Under a KEK derived from the bucket data key.
    SseS3,
    /// Under a KEK derived from the customer's key.
    SseC,
    /// Under a KEK derived from a data key of a named KMS key (per object, or a bucket key).
    SseKms,
}

impl SealMode {
    fn label(self) -> &'static [u8] {
        match self {
            SealMode::SseS3 => b"sse-s3",
            SealMode::SseC => b"sse-c",
            SealMode::SseKms => b"sse-kms",
        }
    }
}

/// What a sealed object key is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub bucket_id: &'a str,
    pub object_key: &'a str,
    pub version_id: &'a str,
}

impl Binding<'_> {
    fn info(&self, mode: SealMode) -> Vec<u8> {
        let mut info = Vec::with_capacity(64);
        info.extend_from_slice(mode.label());
        for field in [self.bucket_id, self.object_key, self.version_id] {
            info.extend_from_slice(&(field.len() as u32).to_be_bytes());
            info.extend_from_slice(field.as_bytes());
        }
        info
    }
}

/// A sealed object key as stored in metadata: HKDF salt + AES-KW output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    pub salt: [u8; 32],
    pub sealed: [u8; SEALED_LEN],
}

/// The sealed key failed its integrity check: wrong key or wrong binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed key does not open with this key and binding")]
pub struct UnsealError;

fn kek(mode: SealMode, secret: &SecretKey32, salt: &[u8; 32], binding: &Binding<'_>) -> KekAes256 {
    let k = hkdf32(secret, salt, &binding.info(mode));
    KekAes256::from(*k.expose_secret())
}

/// Seal `object_key` under `secret` (bucket key or customer key) for `binding`, fresh salt.
pub fn seal(
    mode: SealMode,
    secret: &SecretKey32,
    binding: &Binding<'_>,
    object_key: &SecretKey32,
) -> SealedKey {
    let mut salt = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    seal_with_salt(mode, secret, binding, object_key, salt)
}

/// Deterministic sealing (test vectors).
pub fn seal_with_salt(
    mode: SealMode,
    secret: &SecretKey32,
    binding: &Binding<'_>,
    object_key: &SecretKey32,
    salt: [u8; 32],
) -> SealedKey {
    let mut sealed = [0u8; SEALED_LEN];
    // AES-KW of a 32-byte input into a 40-byte buffer cannot fail.
    let _ = kek(mode, secret, &salt, binding).wrap(object_key.expose_secret(), &mut sealed);
    SealedKey { salt, sealed }
}

/// Open a sealed object key; fails on a wrong key or a different binding.
pub fn unseal(
    mode: SealMode,
    secret: &SecretKey32,
    binding: &Binding<'_>,
    sealed: &SealedKey,
) -> Result<SecretKey32, UnsealError> {
    let mut out = Zeroizing::new([0u8; 32]);
    kek(mode, secret, &sealed.salt, binding)
        .unwrap(&sealed.sealed, out.as_mut())
        .map_err(|_| UnsealError)?;
    Ok(SecretKey32::from_bytes(*out))
}

/// A fresh random object key.
pub fn new_object_key() -> SecretKey32 {
    SecretKey32::generate()
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Binding<'static> = Binding {
        bucket_id: "b1",
        object_key: "k",
        version_id: "v1",
    };

    #[test]
    fn seal_round_trip_and_binding() {
        let bk = SecretKey32::generate();
        let ok = new_object_key();
        let s = seal(SealMode::SseS3, &bk, &B, &ok);
        let back = unseal(SealMode::SseS3, &bk, &B, &s).map(|k| *k.expose_secret());
        assert_eq!(back, Ok(*ok.expose_secret()));
        let other_bucket = Binding {
            bucket_id: "b2",
            ..B
        };
        let other_key = Binding {
            object_key: "k2",
            ..B
        };
        let other_version = Binding {
            version_id: "v2",
            ..B
        };
        for b in [other_bucket, other_key, other_version] {
            assert!(unseal(SealMode::SseS3, &bk, &b, &s).is_err());
        }
        assert!(
            unseal(SealMode::SseC, &bk, &B, &s).is_err(),
            "mode is bound"
        );
        assert!(
            unseal(SealMode::SseKms, &bk, &B, &s).is_err(),
            "mode is bound"
        );
        let k = seal(SealMode::SseKms, &bk, &B, &ok);
        assert_eq!(
            unseal(SealMode::SseKms, &bk, &B, &k).map(|k| *k.expose_secret()),
            Ok(*ok.expose_secret())
        );
        assert!(
            unseal(SealMode::SseS3, &SecretKey32::generate(), &B, &s).is_err(),
            "wrong key"
        );
    }

    /// The sealing vector in docs/format.md: secret = 32×0x42, object key = 32×0x07,
    /// salt = 32×0x33, binding (bucket "bkt-1", key "photos/cat.jpg", version "v-1").
    #[test]
    fn published_seal_vector() {
        let b = Binding {
            bucket_id: "bkt-1",
            object_key: "photos/cat.jpg",
            version_id: "v-1",
        };
        let secret = SecretKey32::from_bytes([0x42; 32]);
        let ok = SecretKey32::from_bytes([0x07; 32]);
        let s3 = seal_with_salt(SealMode::SseS3, &secret, &b, &ok, [0x33; 32]);
        let c = seal_with_salt(SealMode::SseC, &secret, &b, &ok, [0x33; 32]);
        assert_eq!(hex::encode(s3.sealed), SEAL_VECTOR_SSE_S3);
        assert_eq!(hex::encode(c.sealed), SEAL_VECTOR_SSE_C);
    }

    const SEAL_VECTOR_SSE_S3: &str =
        "46bdc59795351007abe4b7ad8bdaad427ca715335e1f25b64aae8e592d359021fee1a7e70a06eb09";
    const SEAL_VECTOR_SSE_C: &str =
        "56d530f69f6979639af038afbb89ec7f84b016a37688b2da1d4fb512884657352d6e3afea7249214";

    #[test]
    fn length_prefix_prevents_field_shifting() {
        let a = Binding {
            bucket_id: "ab",
            object_key: "c",
            version_id: "v",
        };
        let b = Binding {
            bucket_id: "a",
            object_key: "bc",
            version_id: "v",
        };
        assert_ne!(a.info(SealMode::SseC), b.info(SealMode::SseC));
    }
}
