//! SSE-KMS (`x-amz-server-side-encryption: aws:kms`): data keys from named KMS keys, and what an
//! SSE-KMS object stores about them. See docs/s3-encryption.md ("SSE-KMS") and docs/design.md.
//!
//! The envelope is the same as for SSE-S3 and SSE-C: a random 32-byte object key (OK) encrypts
//! the blobs, and OK is sealed with AES-KW under `HKDF(ikm = DK, salt, "sse-kms" | binding)`.
//! DK is a data key the KMS generates under the named key:
//! - without an S3 Bucket Key, one DK per object, bound to the encryption context
//!   `{"aws:s3:arn": "arn:aws:s3:::BUCKET/KEY"}` merged with the client's context: one generate
//!   per object write, one decrypt per object read (nothing cached);
//! - with `BucketKeyEnabled`, one DK per (bucket, KMS key, client context), bound to
//!   `{"aws:s3:arn": "arn:aws:s3:::BUCKET"}` merged with the client's context, cached here for
//!   the key cache's TTL (writes by key id, reads by ciphertext blob): a warm bucket makes no
//!   KMS call. After the TTL a write generates a fresh bucket-level DK (as AWS's time-limited
//!   bucket keys).
//!
//! Every SSE-KMS object keeps [`KmsMeta`]: the canonical key ARN, the DK's ciphertext blob, the
//! full context it is bound to (sent back on decrypt), whether the client gave a context (echoed
//! then) and whether it used a bucket key. A self-copy to another KMS key re-seals only OK.
//!
//! Secret: the plaintext DKs (cached behind `Arc<SecretKey32>`, zeroized when dropped). The
//! blob, the context and the ARN are not secret.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::kms_api::EncryptionContext;
use coffer_common::secret::SecretKey32;
use moka::future::Cache;
use serde::{Deserialize, Serialize};

use super::key_cache::{BucketKeys, KmsCallMode, KmsOp};
use super::kms_client::KmsError;

/// The key used when neither the request nor the bucket default names one (the KMS creates it
/// on first use).
pub const DEFAULT_KEY_ALIAS: &str = "alias/aws/s3";
/// The context pair S3 always adds.
pub const ARN_CONTEXT_KEY: &str = "aws:s3:arn";
/// Longest accepted `x-amz-server-side-encryption-context` header (base64), as a bound.
pub const MAX_CONTEXT_HEADER: usize = 8192;

/// What an SSE-KMS object or upload stores besides its sealed object key (the `sse_kms` JSON
/// column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsMeta {
    /// Canonical ARN of the KMS key.
    pub key_arn: String,
    /// Base64 of the data key's ciphertext blob.
    pub blob: String,
    /// The full context the data key is bound to.
    pub context: EncryptionContext,
    /// The client sent `x-amz-server-side-encryption-context` (the context is echoed then).
    #[serde(default)]
    pub client_context: bool,
    /// The data key is a bucket-level key.
    #[serde(default)]
    pub bucket_key: bool,
}

impl KmsMeta {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Option<Self> {
        serde_json::from_str(s).ok()
    }

    /// `x-amz-server-side-encryption-context` of responses: base64 of the context's JSON, when
    /// the client gave one.
    pub fn context_header(&self) -> Option<String> {
        self.client_context.then(|| context_header(&self.context))
    }
}

/// The context header is not base64 of a JSON object of string values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("encryption context is not base64 JSON of a string map")]
pub struct BadContext;

/// Parse `x-amz-server-side-encryption-context`: base64 of UTF-8 JSON holding a string → string
/// map.
pub fn parse_context_header(v: &str) -> Result<EncryptionContext, BadContext> {
    if v.len() > MAX_CONTEXT_HEADER {
        return Err(BadContext);
    }
    let raw = STANDARD.decode(v.trim()).map_err(|_| BadContext)?;
    let text = std::str::from_utf8(&raw).map_err(|_| BadContext)?;
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|_| BadContext)?;
    map.into_iter()
        .map(|(k, v)| match v {
            // An empty key is refused here (the KMS refuses it too, which would be a 500).
            serde_json::Value::String(s) if !k.is_empty() => Ok((k, s)),
            _ => Err(BadContext),
        })
        .collect()
}

/// Base64 of the context's JSON (keys in canonical order).
pub fn context_header(ctx: &EncryptionContext) -> String {
    STANDARD.encode(serde_json::to_string(ctx).unwrap_or_default())
}

/// `arn:aws:s3:::BUCKET/KEY`.
pub fn object_arn(bucket: &str, key: &str) -> String {
    format!("arn:aws:s3:::{bucket}/{key}")
}

/// `arn:aws:s3:::BUCKET`.
pub fn bucket_arn(bucket: &str) -> String {
    format!("arn:aws:s3:::{bucket}")
}

/// What a write asks of the KMS.
#[derive(Debug, Clone)]
pub struct KmsWrite<'a> {
    /// Key id, key ARN, alias or alias ARN.
    pub key_id: &'a str,
    /// The client's context, if it sent one.
    pub client_context: Option<&'a EncryptionContext>,
    pub bucket_key: bool,
}

/// A cached bucket-level data key for writes.
struct WriteKey {
    key: Arc<SecretKey32>,
    blob: String,
    arn: String,
}

/// The SSE-KMS bucket-key cache (owned by [`BucketKeys`], same TTL and capacity as the SSE-S3
/// bucket keys): writes find their bucket-level key by (bucket, key id, context), reads by
/// (bucket, blob).
pub struct KmsKeyCache {
    writes: Cache<String, Arc<WriteKey>>,
    reads: Cache<String, Arc<SecretKey32>>,
}

impl KmsKeyCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let cap = capacity.max(1) as u64;
        Self {
            writes: Cache::builder().max_capacity(cap).time_to_live(ttl).build(),
            reads: Cache::builder().max_capacity(cap).time_to_live(ttl).build(),
        }
    }

    /// Drop every cached key (the KMS was lost).
    pub fn invalidate_all(&self) {
        self.writes.invalidate_all();
        self.reads.invalidate_all();
    }

    /// Drop expired keys now.
    pub async fn sweep(&self) {
        self.writes.run_pending_tasks().await;
        self.reads.run_pending_tasks().await;
    }
}

fn read_cache_key(bucket_id: &str, blob_b64: &str) -> String {
    format!("{bucket_id}\0{blob_b64}")
}

fn counted<T>(keys: &BucketKeys, r: Result<T, KmsError>) -> Result<T, KmsError> {
    if r.is_err() {
        keys.stats.kms_failures.fetch_add(1, Ordering::Relaxed);
    }
    r
}

/// The data key that seals a new object's key in bucket `bucket` (name; `bucket_id` its id),
/// object `object`, and what the object stores about it.
pub async fn data_key_for_write(
    keys: &BucketKeys,
    bucket_id: &str,
    bucket: &str,
    object: &str,
    w: &KmsWrite<'_>,
    request_id: &str,
) -> Result<(Arc<SecretKey32>, KmsMeta), KmsError> {
    let kms = keys.client()?;
    let mut context = w.client_context.cloned().unwrap_or_default();
    if w.bucket_key {
        context.insert(ARN_CONTEXT_KEY.into(), bucket_arn(bucket));
        let cache_key = format!(
            "{bucket_id}\0{}\0{}",
            w.key_id,
            serde_json::to_string(&context).unwrap_or_default()
        );
        let entry = keys
            .kms_keys
            .writes
            .try_get_with(cache_key, async {
                keys.stats
                    .count_call(KmsCallMode::SseKmsBucketKey, KmsOp::Generate);
                let g = counted(
                    keys,
                    kms.generate_named(w.key_id, &context, request_id).await,
                )?;
                let blob = STANDARD.encode(&g.blob);
                let key = Arc::new(g.plaintext);
                keys.kms_keys
                    .reads
                    .insert(read_cache_key(bucket_id, &blob), key.clone())
                    .await;
                Ok::<_, KmsError>(Arc::new(WriteKey {
                    key,
                    blob,
                    arn: g.key_arn,
                }))
            })
            .await
            .map_err(|e| (*e).clone())?;
        let meta = KmsMeta {
            key_arn: entry.arn.clone(),
            blob: entry.blob.clone(),
            context,
            client_context: w.client_context.is_some(),
            bucket_key: true,
        };
        return Ok((entry.key.clone(), meta));
    }
    context.insert(ARN_CONTEXT_KEY.into(), object_arn(bucket, object));
    keys.stats.count_call(KmsCallMode::SseKms, KmsOp::Generate);
    let g = counted(
        keys,
        kms.generate_named(w.key_id, &context, request_id).await,
    )?;
    let meta = KmsMeta {
        key_arn: g.key_arn,
        blob: STANDARD.encode(&g.blob),
        context,
        client_context: w.client_context.is_some(),
        bucket_key: false,
    };
    Ok((Arc::new(g.plaintext), meta))
}

/// The data key of a stored SSE-KMS object or upload: a bucket key from the cache (or one
/// decrypt, shared by concurrent misses), else one decrypt.
pub async fn data_key_for_read(
    keys: &BucketKeys,
    bucket_id: &str,
    meta: &KmsMeta,
    request_id: &str,
) -> Result<Arc<SecretKey32>, KmsError> {
    let kms = keys.client()?;
    let blob = STANDARD
        .decode(&meta.blob)
        .map_err(|_| KmsError::Malformed)?;
    if meta.bucket_key {
        return keys
            .kms_keys
            .reads
            .try_get_with(read_cache_key(bucket_id, &meta.blob), async {
                keys.stats
                    .count_call(KmsCallMode::SseKmsBucketKey, KmsOp::Decrypt);
                counted(
                    keys,
                    kms.decrypt_named(&blob, &meta.context, request_id).await,
                )
                .map(|(k, _)| Arc::new(k))
            })
            .await
            .map_err(|e| (*e).clone());
    }
    keys.stats.count_call(KmsCallMode::SseKms, KmsOp::Decrypt);
    let (k, _) = counted(
        keys,
        kms.decrypt_named(&blob, &meta.context, request_id).await,
    )?;
    Ok(Arc::new(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    /// The context header is base64 of a JSON string map; anything else is refused.
    #[test]
    fn context_header_must_be_base64_json_of_a_string_map() {
        let ok = parse_context_header(&b64(r#"{"b":"2","a":"1"}"#)).unwrap();
        assert_eq!(ok.get("a").map(String::as_str), Some("1"));
        assert_eq!(
            context_header(&ok),
            b64(r#"{"a":"1","b":"2"}"#),
            "echoed in canonical order"
        );
        assert!(parse_context_header(&b64("{}")).unwrap().is_empty());
        for bad in [
            "not base64!".to_string(),
            b64("not json"),
            b64(r#"["a"]"#),
            b64(r#"{"a":1}"#),
            b64(r#"{"a":{"b":"c"}}"#),
            b64(r#"{"a":null}"#),
            b64(r#"{"":"x"}"#),
            b64(r#""s""#),
            STANDARD.encode([0xff, 0xfe]),
            "A".repeat(MAX_CONTEXT_HEADER + 4),
        ] {
            assert_eq!(parse_context_header(&bad), Err(BadContext), "{bad:.40}");
        }
    }

    #[test]
    fn meta_round_trips_and_echoes_only_a_client_context() {
        let mut context = EncryptionContext::new();
        context.insert(ARN_CONTEXT_KEY.into(), object_arn("b", "k"));
        let m = KmsMeta {
            key_arn: "arn:aws:kms:us-east-1:111122223333:key/x".into(),
            blob: "AAAA".into(),
            context,
            client_context: false,
            bucket_key: true,
        };
        assert_eq!(KmsMeta::from_json(&m.to_json()), Some(m.clone()));
        assert_eq!(m.context_header(), None);
        let echoed = KmsMeta {
            client_context: true,
            ..m
        };
        assert_eq!(
            echoed.context_header(),
            Some(b64(r#"{"aws:s3:arn":"arn:aws:s3:::b/k"}"#))
        );
    }

    /// No KMS: every SSE-KMS key request fails with NotConfigured (S3: 501), nothing cached.
    #[tokio::test]
    async fn without_a_kms_nothing_is_generated() {
        let keys = BucketKeys::new(None, Duration::from_secs(60), 10);
        let w = KmsWrite {
            key_id: DEFAULT_KEY_ALIAS,
            client_context: None,
            bucket_key: true,
        };
        let r = data_key_for_write(&keys, "id", "b", "k", &w, "r").await;
        assert_eq!(r.err(), Some(KmsError::NotConfigured));
    }
}
