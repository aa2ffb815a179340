//! Cryptography of named KMS keys, free of I/O: sealing a key version's material under a root
//! key, wrapping data keys under a key version bound to an encryption context, the
//! self-describing ciphertext blob, and key references (key id, key ARN, alias, alias ARN).
//!
//! - Material of key `id` version `kv`: 32 random bytes, stored as AES-KW under
//!   `HKDF-SHA256(ikm = RK_rv, info = "kms-key" | u32 len | id | u32 kv)`.
//! - Data key: AES-KW under `HKDF-SHA256(ikm = material(kv), info = "kms-data-key" | u32 len |
//!   id | u32 kv | canonical context)`; canonical context = for each (k, v) sorted by k:
//!   `u32 len k | k | u32 len v | v`. Another context fails the AES-KW integrity check.
//! - Blob: `"CKB1" | u8 len | id (ASCII) | u32 kv | wrapped (40 bytes)`. Integers big-endian.
//!
//! Secret: the key material, the derived KEKs and the data keys (all [`SecretKey32`]).

use coffer_common::kms_api::EncryptionContext;
use coffer_common::secret::SecretKey32;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::seal::{unwrap_key, wrap_key};

/// Magic prefix of a ciphertext blob.
pub const BLOB_MAGIC: &[u8; 4] = b"CKB1";

fn hkdf32(ikm: &SecretKey32, info: &[u8]) -> SecretKey32 {
    let hk = Hkdf::<Sha256>::new(None, ikm.expose_secret());
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit, so expand cannot fail.
    let _ = hk.expand(info, okm.as_mut());
    SecretKey32::from_bytes(*okm)
}

fn push_len_prefixed(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Canonical bytes of an encryption context (sorted by key; a `BTreeMap` already is).
pub fn canonical_context(ctx: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in ctx {
        push_len_prefixed(&mut out, k.as_bytes());
        push_len_prefixed(&mut out, v.as_bytes());
    }
    out
}

fn material_kek(root: &SecretKey32, key_id: &str, version: u32) -> SecretKey32 {
    let mut info = b"kms-key".to_vec();
    push_len_prefixed(&mut info, key_id.as_bytes());
    info.extend_from_slice(&version.to_be_bytes());
    hkdf32(root, &info)
}

/// Seal key material of (`key_id`, `version`) under a root key.
pub fn seal_material(
    root: &SecretKey32,
    key_id: &str,
    version: u32,
    material: &SecretKey32,
) -> [u8; 40] {
    wrap_key(&material_kek(root, key_id, version), material)
}

/// Unseal key material; `None` when the integrity check fails.
pub fn unseal_material(
    root: &SecretKey32,
    key_id: &str,
    version: u32,
    sealed: &[u8],
) -> Option<SecretKey32> {
    let sealed: &[u8; 40] = sealed.try_into().ok()?;
    unwrap_key(&material_kek(root, key_id, version), sealed)
}

fn data_kek(
    material: &SecretKey32,
    key_id: &str,
    version: u32,
    ctx: &EncryptionContext,
) -> SecretKey32 {
    let mut info = b"kms-data-key".to_vec();
    push_len_prefixed(&mut info, key_id.as_bytes());
    info.extend_from_slice(&version.to_be_bytes());
    info.extend_from_slice(&canonical_context(ctx));
    hkdf32(material, &info)
}

/// Wrap a data key under (`key_id`, `version`) with `ctx` bound as associated data.
pub fn wrap_data_key(
    material: &SecretKey32,
    key_id: &str,
    version: u32,
    ctx: &EncryptionContext,
    data_key: &SecretKey32,
) -> [u8; 40] {
    wrap_key(&data_kek(material, key_id, version, ctx), data_key)
}

/// Unwrap a data key; `None` when the context (or anything else) differs.
pub fn unwrap_data_key(
    material: &SecretKey32,
    key_id: &str,
    version: u32,
    ctx: &EncryptionContext,
    wrapped: &[u8; 40],
) -> Option<SecretKey32> {
    unwrap_key(&data_kek(material, key_id, version, ctx), wrapped)
}

/// A parsed ciphertext blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub key_id: String,
    pub version: u32,
    pub wrapped: [u8; 40],
}

impl Blob {
    /// Encode as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 1 + self.key_id.len() + 4 + 40);
        out.extend_from_slice(BLOB_MAGIC);
        out.push(self.key_id.len() as u8);
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.wrapped);
        out
    }

    /// Decode; `None` for anything that is not exactly a blob.
    pub fn decode(b: &[u8]) -> Option<Blob> {
        let rest = b.strip_prefix(BLOB_MAGIC.as_slice())?;
        let (&len, rest) = rest.split_first()?;
        let len = usize::from(len);
        if len == 0 || rest.len() != len + 4 + 40 {
            return None;
        }
        let (id, rest) = rest.split_at(len);
        if !id.iter().all(|c| c.is_ascii_graphic()) {
            return None;
        }
        let (v, wrapped) = rest.split_at(4);
        Some(Blob {
            key_id: String::from_utf8(id.to_vec()).ok()?,
            version: u32::from_be_bytes(v.try_into().ok()?),
            wrapped: wrapped.try_into().ok()?,
        })
    }
}

/// Region and account id of this KMS, used in ARNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArnSettings {
    pub region: String,
    pub account_id: String,
}

impl Default for ArnSettings {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        }
    }
}

/// How a request names a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A key id (or the key part of a key ARN of this KMS).
    Id(String),
    /// `alias/NAME` (or from an alias ARN of this KMS).
    Alias(String),
    /// An ARN of another region or account, or garbage: never found.
    Foreign,
}

impl ArnSettings {
    /// Whether `region` is a plausible region and `account_id` 12 digits.
    pub fn validate(&self) -> Result<(), String> {
        if self.region.is_empty()
            || self.region.len() > 32
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "KMS region {:?} must be lowercase letters, digits and '-'",
                self.region
            ));
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "KMS account id {:?} must be 12 digits",
                self.account_id
            ));
        }
        Ok(())
    }

    /// `arn:aws:kms:REGION:ACCOUNT:key/ID`.
    pub fn key_arn(&self, key_id: &str) -> String {
        format!(
            "arn:aws:kms:{}:{}:key/{key_id}",
            self.region, self.account_id
        )
    }

    /// `arn:aws:kms:REGION:ACCOUNT:alias/NAME` of `alias/NAME`.
    pub fn alias_arn(&self, alias: &str) -> String {
        format!("arn:aws:kms:{}:{}:{alias}", self.region, self.account_id)
    }

    /// Parse a key reference.
    pub fn parse_ref(&self, s: &str) -> KeyRef {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("arn:") {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, service, region, account, resource] = parts.as_slice() else {
                return KeyRef::Foreign;
            };
            if *partition != "aws"
                || *service != "kms"
                || *region != self.region
                || *account != self.account_id
            {
                return KeyRef::Foreign;
            }
            return match resource.strip_prefix("key/") {
                Some(id) if valid_key_id(id) => KeyRef::Id(id.to_string()),
                Some(_) => KeyRef::Foreign,
                None if resource.starts_with("alias/") && valid_alias(resource) => {
                    KeyRef::Alias(resource.to_string())
                }
                None => KeyRef::Foreign,
            };
        }
        if s.starts_with("alias/") {
            return if valid_alias(s) {
                KeyRef::Alias(s.to_string())
            } else {
                KeyRef::Foreign
            };
        }
        if valid_key_id(s) {
            KeyRef::Id(s.to_ascii_lowercase())
        } else {
            KeyRef::Foreign
        }
    }
}

/// A key id: a UUID (as this KMS makes them).
pub fn valid_key_id(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok() && s.len() == 36
}

/// `alias/NAME`, NAME 1–250 of `A-Z a-z 0-9 / _ -`.
pub fn valid_alias(s: &str) -> bool {
    let Some(name) = s.strip_prefix("alias/") else {
        return false;
    };
    !name.is_empty()
        && name.len() <= 250
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
}

/// Aliases under `alias/aws/` are reserved (the deployment default key).
pub fn reserved_alias(s: &str) -> bool {
    s.starts_with("alias/aws/")
}

/// The S3 bucket named by a context's `aws:s3:arn` (`arn:aws:s3:::BUCKET[/KEY]`), or `""`.
pub fn context_bucket(ctx: &EncryptionContext) -> String {
    ctx.get("aws:s3:arn")
        .and_then(|a| a.strip_prefix("arn:aws:s3:::"))
        .map(|r| r.split('/').next().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn canonical_context_is_sorted_and_length_prefixed() {
        let a = ctx(&[("b", "2"), ("a", "1")]);
        assert_eq!(
            canonical_context(&a),
            b"\0\0\0\x01a\0\0\0\x011\0\0\0\x01b\0\0\0\x012".to_vec()
        );
        assert!(canonical_context(&EncryptionContext::new()).is_empty());
        // Concatenation ambiguity is impossible: ("ab", "") vs ("a", "b").
        assert_ne!(
            canonical_context(&ctx(&[("ab", "")])),
            canonical_context(&ctx(&[("a", "b")]))
        );
    }

    #[test]
    fn blob_round_trip_and_malformed() {
        let b = Blob {
            key_id: "0b7c2c4e-6a3f-4f2e-9d7a-1c2b3d4e5f60".into(),
            version: 7,
            wrapped: [9u8; 40],
        };
        let enc = b.encode();
        assert_eq!(&enc[..4], b"CKB1");
        assert_eq!(enc[4], 36);
        assert_eq!(&enc[41..45], &[0, 0, 0, 7]);
        assert_eq!(enc.len(), 4 + 1 + 36 + 4 + 40);
        assert_eq!(Blob::decode(&enc), Some(b));
        assert_eq!(Blob::decode(&enc[..enc.len() - 1]), None);
        let mut longer = enc.clone();
        longer.push(0);
        assert_eq!(Blob::decode(&longer), None);
        let mut magic = enc.clone();
        magic[3] = b'2';
        assert_eq!(Blob::decode(&magic), None);
        assert_eq!(Blob::decode(b""), None);
    }

    #[test]
    fn data_key_is_bound_to_context_key_and_version() {
        let m = SecretKey32::from_bytes([4u8; 32]);
        let dk = SecretKey32::generate();
        let c = ctx(&[("aws:s3:arn", "arn:aws:s3:::b/k"), ("x", "y")]);
        let w = wrap_data_key(&m, "k1", 1, &c, &dk);
        let back = unwrap_data_key(&m, "k1", 1, &c, &w).unwrap();
        assert_eq!(back.expose_secret(), dk.expose_secret());
        assert!(unwrap_data_key(&m, "k1", 1, &ctx(&[("x", "y")]), &w).is_none());
        assert!(unwrap_data_key(&m, "k1", 2, &c, &w).is_none());
        assert!(unwrap_data_key(&m, "k2", 1, &c, &w).is_none());
        let root = SecretKey32::from_bytes([1u8; 32]);
        let s = seal_material(&root, "k1", 1, &m);
        assert_eq!(
            unseal_material(&root, "k1", 1, &s).unwrap().expose_secret(),
            m.expose_secret()
        );
        assert!(unseal_material(&root, "k1", 2, &s).is_none());
        assert_eq!(context_bucket(&c), "b");
        assert_eq!(context_bucket(&ctx(&[])), "");
    }

    #[test]
    fn key_references() {
        let s = ArnSettings::default();
        let id = "0b7c2c4e-6a3f-4f2e-9d7a-1c2b3d4e5f60";
        assert_eq!(s.parse_ref(id), KeyRef::Id(id.into()));
        assert_eq!(s.parse_ref(&s.key_arn(id)), KeyRef::Id(id.into()));
        assert_eq!(
            s.parse_ref("alias/tenant-a/x"),
            KeyRef::Alias("alias/tenant-a/x".into())
        );
        assert_eq!(
            s.parse_ref(&s.alias_arn("alias/a")),
            KeyRef::Alias("alias/a".into())
        );
        assert_eq!(
            s.parse_ref(&format!("arn:aws:kms:eu-west-1:000000000000:key/{id}")),
            KeyRef::Foreign
        );
        assert_eq!(
            s.parse_ref(&format!("arn:aws:kms:us-east-1:111111111111:key/{id}")),
            KeyRef::Foreign
        );
        assert_eq!(s.parse_ref("alias/"), KeyRef::Foreign);
        assert_eq!(s.parse_ref("nope"), KeyRef::Foreign);
        assert!(s.validate().is_ok());
        assert!(
            ArnSettings {
                region: "x".into(),
                account_id: "12".into()
            }
            .validate()
            .is_err()
        );
    }
}
