//! Sealing of the KMS's long-lived secrets (root keys, audit signing key) under the operator
//! passphrase: Argon2id(passphrase, salt, m, t, p) gives the passphrase key, and AES-KW (RFC 3394)
//! under it gives the sealed bytes stored in the database together with the KDF parameters.
//!
//! Secret: the passphrase, the passphrase key ([`PassphraseKey`]) and every unsealed key. The
//! passphrase key lives only in memory (it is needed to seal new root key versions on rotation).
//! A wrong passphrase is detected by the AES-KW integrity check, never by a stored hash.

use argon2::{Algorithm, Argon2, Params, Version};
use coffer_common::secret::{Passphrase, SecretKey32};
use rand::RngCore;
use zeroize::Zeroizing;

/// Argon2id cost parameters, stored next to each sealed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// Production default: m = 256 MiB, t = 3, p = 4.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 256 * 1024,
        t: 3,
        p: 4,
    };
    /// Development/test profile (`--argon2 dev`): m = 8 MiB, t = 1, p = 1. Not for production.
    pub const DEV: KdfParams = KdfParams {
        m_kib: 8 * 1024,
        t: 1,
        p: 1,
    };
}

/// Why sealing or unsealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the passphrase is wrong (sealed key failed its integrity check)")]
    WrongPassphrase,
    #[error("invalid Argon2id parameters: {0}")]
    BadParams(String),
    #[error("sealed key has the wrong length")]
    Malformed,
}

/// The key derived from the passphrase. Secret; zeroized on drop.
pub struct PassphraseKey {
    key: SecretKey32,
    /// Parameters it was derived with.
    pub params: KdfParams,
    /// Salt it was derived with.
    pub salt: [u8; 16],
}

impl PassphraseKey {
    /// Derive with Argon2id. Slow by design (the default profile takes about a second).
    pub fn derive(
        passphrase: &Passphrase,
        params: KdfParams,
        salt: [u8; 16],
    ) -> Result<Self, SealError> {
        let p = Params::new(params.m_kib, params.t, params.p, Some(32))
            .map_err(|e| SealError::BadParams(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.expose_secret(), &salt, out.as_mut())
            .map_err(|e| SealError::BadParams(e.to_string()))?;
        Ok(Self {
            key: SecretKey32::from_bytes(*out),
            params,
            salt,
        })
    }

    /// A fresh random salt.
    pub fn new_salt() -> [u8; 16] {
        let mut s = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut s);
        s
    }

    /// Seal a 32-byte key: AES-KW, 40 bytes out.
    pub fn seal(&self, key: &SecretKey32) -> Vec<u8> {
        wrap_key(&self.key, key).to_vec()
    }

    /// Unseal; a wrong passphrase fails the AES-KW integrity check.
    pub fn unseal(&self, sealed: &[u8]) -> Result<SecretKey32, SealError> {
        let sealed: &[u8; 40] = sealed.try_into().map_err(|_| SealError::Malformed)?;
        unwrap_key(&self.key, sealed).ok_or(SealError::WrongPassphrase)
    }
}

/// AES-256-KW (RFC 3394) of a 32-byte key under a 32-byte KEK.
pub fn wrap_key(kek: &SecretKey32, key: &SecretKey32) -> [u8; 40] {
    let kw = aes_kw::KekAes256::from(*kek.expose_secret());
    let mut out = [0u8; 40];
    // Wrapping 32 bytes into a 40-byte buffer cannot fail (length is a multiple of 8, buffer fits).
    if kw.wrap(key.expose_secret(), &mut out).is_err() {
        out = [0u8; 40];
    }
    out
}

/// AES-256-KW unwrap; `None` when the integrity check fails.
pub fn unwrap_key(kek: &SecretKey32, wrapped: &[u8; 40]) -> Option<SecretKey32> {
    let kw = aes_kw::KekAes256::from(*kek.expose_secret());
    let mut out = Zeroizing::new([0u8; 32]);
    kw.unwrap(wrapped, out.as_mut()).ok()?;
    Some(SecretKey32::from_bytes(*out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.to_string())
    }

    #[test]
    fn seal_round_trip_and_wrong_passphrase() {
        let salt = PassphraseKey::new_salt();
        let pk = PassphraseKey::derive(&pass("correct horse"), KdfParams::DEV, salt).unwrap();
        let root = SecretKey32::generate();
        let sealed = pk.seal(&root);
        assert_eq!(sealed.len(), 40);
        assert_ne!(&sealed[8..], root.expose_secret().as_slice());
        let again = PassphraseKey::derive(&pass("correct horse"), KdfParams::DEV, salt).unwrap();
        let back = again.unseal(&sealed).unwrap();
        assert_eq!(back.expose_secret(), root.expose_secret());
        let wrong = PassphraseKey::derive(&pass("correct horsf"), KdfParams::DEV, salt).unwrap();
        assert!(matches!(
            wrong.unseal(&sealed),
            Err(SealError::WrongPassphrase)
        ));
        // Same passphrase, other salt: another key.
        let other_salt =
            PassphraseKey::derive(&pass("correct horse"), KdfParams::DEV, [0u8; 16]).unwrap();
        assert!(other_salt.unseal(&sealed).is_err());
        assert!(matches!(
            again.unseal(&sealed[..39]),
            Err(SealError::Malformed)
        ));
    }

    #[test]
    fn default_params_are_the_documented_ones_and_work() {
        assert_eq!(
            KdfParams::DEFAULT,
            KdfParams {
                m_kib: 262_144,
                t: 3,
                p: 4
            }
        );
        let salt = [9u8; 16];
        let pk = PassphraseKey::derive(&pass("pw"), KdfParams::DEFAULT, salt).unwrap();
        let k = SecretKey32::generate();
        let back = pk.unseal(&pk.seal(&k)).unwrap();
        assert_eq!(back.expose_secret(), k.expose_secret());
    }

    /// RFC 3394 section 4.6: wrap 256 bits of key data with a 256-bit KEK.
    #[test]
    fn aes_kw_rfc3394_vector() {
        let kek = SecretKey32::from_slice(
            &hex::decode("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
                .unwrap(),
        )
        .unwrap();
        let data = SecretKey32::from_slice(
            &hex::decode("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
                .unwrap(),
        )
        .unwrap();
        let expected = hex::decode(
            "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21",
        )
        .unwrap();
        let wrapped = wrap_key(&kek, &data);
        assert_eq!(wrapped.as_slice(), expected.as_slice());
        let back = unwrap_key(&kek, &wrapped).unwrap();
        assert_eq!(back.expose_secret(), data.expose_secret());
        let mut bad = wrapped;
        bad[5] ^= 1;
        assert!(unwrap_key(&kek, &bad).is_none());
    }
}
