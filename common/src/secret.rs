//! Secret key types. What is secret: every byte inside [`SecretKey32`].
//!
//! Key types zeroize on drop and deliberately implement neither `Debug`, `Display`, `Clone` nor
//! `Serialize`; reading the bytes requires an explicit, greppable `expose_secret()` call.

use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

/// A 256-bit secret key (root key, bucket data key, object key, customer key, KEK...).
pub struct SecretKey32(Zeroizing<[u8; 32]>);

impl SecretKey32 {
    /// Wrap raw key bytes. The caller should zeroize its own copy.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copy key bytes from a slice; `None` unless it is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        let key = Self::from_bytes(arr);
        let mut arr = arr;
        arr.zeroize();
        Some(key)
    }

    /// 32 fresh bytes from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Self(k)
    }

    /// Decode standard base64 into a key; `None` if not base64 of exactly 32 bytes.
    pub fn from_base64(b64: &str) -> Option<Self> {
        use base64::Engine;
        let bytes = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64).ok()?);
        Self::from_slice(&bytes)
    }

    /// Base64 of the key, for the one place that must send it on the wire (KMS responses).
    pub fn to_base64(&self) -> Zeroizing<String> {
        use base64::Engine;
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.as_ref()))
    }

    /// The raw key bytes. Keep calls to this few and easy to find.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// An explicit copy (there is no `Clone`, so copies are visible in code review).
    pub fn duplicate(&self) -> Self {
        Self::from_bytes(*self.0)
    }
}

/// A passphrase read from a file, the environment or a prompt. Zeroized on drop.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wrap a passphrase; trailing newlines (from files and prompts) are removed.
    pub fn new(mut s: String) -> Self {
        while s.ends_with('\n') || s.ends_with('\r') {
            s.pop();
        }
        Self(Zeroizing::new(s))
    }

    /// The passphrase bytes.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// True when the passphrase is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_length_check() {
        let k = SecretKey32::generate();
        let b = k.to_base64();
        let k2 = SecretKey32::from_base64(&b).map(|k| *k.expose_secret());
        assert_eq!(k2, Some(*k.expose_secret()));
        assert!(SecretKey32::from_base64("AAAA").is_none());
        assert!(SecretKey32::from_base64("not base64!").is_none());
    }

    #[test]
    fn passphrase_trims_newlines_only() {
        let p = Passphrase::new(" pass word \n".to_string());
        assert_eq!(p.expose_secret(), b" pass word ");
    }
}
