//! The tamper-evident audit log: record and checkpoint formats, the hash chain and checkpoint
//! signatures. Only this module (through [`writer`]) writes audit records.
//!
//! Chain: `hash = SHA-256("coffer-audit-v1\n" | JSON of the record with "hash": "")`, and every
//! record carries the previous record's hash (`prev_hash`, 64 zeros for the first). Checkpoints
//! sign `"coffer-audit-checkpoint-v1\n" | u64 seq | head hash | time | final flag` with the KMS's
//! Ed25519 audit key; an export ends with a `final` checkpoint over its last record, which is how
//! a truncated tail is detected. Records never contain key material: only identities, bucket ids,
//! versions, fingerprints of wrapped keys, results and request ids. Secret: the audit signing key.
//! Overview: `docs/design.md` ("The audit log").

pub mod refusals;
pub mod verify;
pub mod writer;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Hash of "no previous record".
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record, exactly as hashed and exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// RFC 3339 UTC time.
    pub time: String,
    pub request_id: String,
    /// Authenticated identity, or `-` when the caller was not authenticated.
    pub identity: String,
    /// Client address.
    pub client: String,
    /// Operation, e.g. `generate`, `unwrap`, `client.create`, `rotate`.
    pub operation: String,
    pub bucket: Option<String>,
    pub key_version: Option<u32>,
    /// Fingerprint of the wrapped key concerned (never the key).
    pub key_id: Option<String>,
    /// `ok` or the error code answered.
    pub result: String,
    /// Non-secret details (scopes granted, claimed identity of a refused token, counts...).
    pub detail: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// What a handler knows about an event; the writer adds seq, time and the chain.
#[derive(Debug, Clone, Default)]
pub struct AuditEvent {
    pub request_id: String,
    pub identity: String,
    pub client: String,
    pub operation: String,
    pub bucket: Option<String>,
    pub key_version: Option<u32>,
    pub key_id: Option<String>,
    pub result: String,
    pub detail: Option<String>,
}

/// A signed statement "the chain had head `head_hash` at record `seq`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub head_hash: String,
    pub time: String,
    /// True only for the checkpoint that closes an export.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Base64 Ed25519 signature.
    pub signature: String,
}

/// One line of an export (JSON lines).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportLine {
    Record(AuditRecord),
    Checkpoint(Checkpoint),
}

impl AuditRecord {
    /// The chain hash of this record (hex), computed over every field except `hash`.
    pub fn compute_hash(&self) -> String {
        let mut body = self.clone();
        body.hash = String::new();
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(b"coffer-audit-v1\n");
        h.update(&json);
        hex::encode(h.finalize())
    }
}

fn checkpoint_message(seq: u64, head_hash: &str, time: &str, is_final: bool) -> Vec<u8> {
    let mut m = b"coffer-audit-checkpoint-v1\n".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head_hash.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(time.as_bytes());
    m.push(u8::from(is_final));
    m
}

impl Checkpoint {
    /// Sign a checkpoint over (`seq`, `head_hash`).
    pub fn sign(key: &SigningKey, seq: u64, head_hash: &str, is_final: bool) -> Self {
        let time = now_rfc3339();
        let sig = key.sign(&checkpoint_message(seq, head_hash, &time, is_final));
        Self {
            seq,
            head_hash: head_hash.to_string(),
            time,
            is_final,
            signature: STANDARD.encode(sig.to_bytes()),
        }
    }

    /// True when the signature is valid under `key`.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify(
            &checkpoint_message(self.seq, &self.head_hash, &self.time, self.is_final),
            &sig,
        )
        .is_ok()
    }
}

/// Current time, RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parse the audit public key file (base64 of 32 bytes, surrounding whitespace ignored).
pub fn parse_public_key(text: &str) -> Option<VerifyingKey> {
    let bytes = STANDARD.decode(text.trim()).ok()?;
    let arr: [u8; 32] = bytes.as_slice().try_into().ok()?;
    VerifyingKey::from_bytes(&arr).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_covers_every_field_and_checkpoint_signatures_verify() {
        let r = AuditRecord {
            seq: 1,
            time: now_rfc3339(),
            request_id: "r".into(),
            identity: "node".into(),
            client: "127.0.0.1:1".into(),
            operation: "generate".into(),
            bucket: Some("b".into()),
            key_version: Some(1),
            key_id: None,
            result: "ok".into(),
            detail: None,
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        };
        let h = r.compute_hash();
        let mut r2 = r.clone();
        r2.bucket = Some("c".into());
        assert_ne!(h, r2.compute_hash());
        let mut r3 = r.clone();
        r3.hash = "anything".into();
        assert_eq!(h, r3.compute_hash());
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let cp = Checkpoint::sign(&key, 1, &h, false);
        assert!(cp.verify(&key.verifying_key()));
        let mut forged = cp.clone();
        forged.is_final = true;
        assert!(!forged.verify(&key.verifying_key()));
        let other = SigningKey::from_bytes(&[4u8; 32]);
        assert!(!cp.verify(&other.verifying_key()));
    }
}
