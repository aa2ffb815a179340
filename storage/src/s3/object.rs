//! What the single-object operations share (`put`, `get`, `delete`, `copy`, `multipart`): the
//! bucket lookup, stored content headers and user metadata, and resolving the visible version of
//! a key with its parts and opened object key. Secret: `Resolved::key` (dropped with it).

use std::collections::BTreeMap;

use s3s::dto::*;

use super::common;
use super::errors::{ApiError, ApiResult};
use crate::crypto::envelope::StoredSse;
use crate::crypto::keys::Binding;
use crate::state::NodeState;
use crate::store::meta::{BlobRow, Bucket, Object};

pub(crate) async fn bucket_or_404(state: &NodeState, name: &str) -> ApiResult<Bucket> {
    state.meta.bucket(name).await?.ok_or(ApiError::NoSuchBucket)
}

/// Standard content headers kept with an object.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ContentHeaders {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// `Expires`, as Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// The `x-amz-checksum-*` values verified on upload (issue 11 E21).
    #[serde(default, skip_serializing_if = "StoredChecksums::is_empty")]
    pub checksums: StoredChecksums,
    /// A multipart upload's `ChecksumAlgorithm` (CreateMultipartUpload), kept so Complete can
    /// compose the object's checksum from the parts' (issue 11 E21).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
}

/// The `x-amz-checksum-*` values (base64) an upload sent and the node verified, returned by
/// PutObject and UploadPart and, with `x-amz-checksum-mode: ENABLED`, by HEAD and GET.
#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredChecksums {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl StoredChecksums {
    /// From the verified `(header name, base64)` pairs.
    pub(crate) fn from_verified(verified: &[(&str, String)]) -> Self {
        let get = |name: &str| {
            verified
                .iter()
                .find(|(n, _)| n.strip_prefix("x-amz-checksum-") == Some(name))
                .map(|(_, v)| v.clone())
        };
        Self {
            crc32: get("crc32"),
            crc32c: get("crc32c"),
            crc64nvme: get("crc64nvme"),
            sha1: get("sha1"),
            sha256: get("sha256"),
        }
    }

    /// The value for an AWS algorithm name (`CRC32`, `CRC32C`, `CRC64NVME`, `SHA1`, `SHA256`).
    pub(crate) fn get(&self, algorithm: &str) -> Option<&String> {
        match algorithm.to_ascii_uppercase().as_str() {
            "CRC32" => self.crc32.as_ref(),
            "CRC32C" => self.crc32c.as_ref(),
            "CRC64NVME" => self.crc64nvme.as_ref(),
            "SHA1" => self.sha1.as_ref(),
            "SHA256" => self.sha256.as_ref(),
            _ => None,
        }
    }

    /// Only `value` for `algorithm` (an unknown name gives none).
    pub(crate) fn only(algorithm: &str, value: String) -> Self {
        let v = Some(value);
        match algorithm.to_ascii_uppercase().as_str() {
            "CRC32" => Self {
                crc32: v,
                ..Self::default()
            },
            "CRC32C" => Self {
                crc32c: v,
                ..Self::default()
            },
            "CRC64NVME" => Self {
                crc64nvme: v,
                ..Self::default()
            },
            "SHA1" => Self {
                sha1: v,
                ..Self::default()
            },
            "SHA256" => Self {
                sha256: v,
                ..Self::default()
            },
            _ => Self::default(),
        }
    }

    /// True when no checksum was verified.
    pub(crate) fn is_empty(&self) -> bool {
        self.crc32.is_none()
            && self.crc32c.is_none()
            && self.crc64nvme.is_none()
            && self.sha1.is_none()
            && self.sha256.is_none()
    }
}

/// The Content-Encoding to store: the sent one without `aws-chunked`, which frames the request
/// body only (AWS never stores it); none when nothing else was sent.
fn stored_content_encoding(sent: &str) -> Option<String> {
    let kept: Vec<&str> = sent
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

impl ContentHeaders {
    /// The content headers a write request carries.
    pub(crate) fn of(
        cache_control: &Option<String>,
        content_disposition: &Option<String>,
        content_encoding: &Option<String>,
        content_language: &Option<String>,
        expires: &Option<Timestamp>,
    ) -> Self {
        Self {
            cache_control: cache_control.clone(),
            content_disposition: content_disposition.clone(),
            content_encoding: content_encoding
                .as_deref()
                .and_then(stored_content_encoding),
            content_language: content_language.clone(),
            expires_ms: expires.as_ref().map(|t| {
                let t = time::OffsetDateTime::from(t.clone());
                (t.unix_timestamp_nanos() / 1_000_000) as i64
            }),
            checksums: StoredChecksums::default(),
            checksum_algorithm: None,
        }
    }

    /// The stored `Expires` header.
    pub(crate) fn expires(&self) -> Option<Timestamp> {
        self.expires_ms.map(super::common::ts)
    }

    /// The JSON stored in the `headers` column.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

/// AWS's bound on user metadata: the UTF-8 bytes of every `x-amz-meta-*` name (without the
/// prefix) and value, summed.
pub(crate) const MAX_METADATA_BYTES: usize = 2048;

/// 400 MetadataTooLarge above [`MAX_METADATA_BYTES`].
pub(crate) fn check_metadata(m: Option<&Metadata>) -> ApiResult<()> {
    let size: usize = m.map_or(0, |m| m.iter().map(|(k, v)| k.len() + v.len()).sum());
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::MetadataTooLarge);
    }
    Ok(())
}

/// Whether XML 1.0 element text carries `c` unchanged: not the C0 controls other than tab and
/// line feed (CR is legal XML, but written raw, as s3s writes text, a parser reads it as LF),
/// nor U+FFFE/U+FFFF.
pub(crate) fn xml_safe(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A new object's key must be listable as XML 1.0 (issue 11 D15): keys with characters XML
/// cannot carry are refused (400 InvalidArgument) rather than written and listed as broken XML.
pub(crate) fn check_new_key(key: &str) -> ApiResult<()> {
    if key.chars().all(xml_safe) {
        return Ok(());
    }
    Err(ApiError::InvalidArgument(
        "Object key contains a control character (other than tab or line feed) that an XML listing cannot carry.".into(),
    ))
}

pub(crate) fn metadata_json(m: Option<&Metadata>) -> String {
    let map: BTreeMap<String, String> = m
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn metadata_from_json(s: &str) -> Option<Metadata> {
    let map: BTreeMap<String, String> = serde_json::from_str(s).ok()?;
    if map.is_empty() {
        return None;
    }
    Some(map.into_iter().collect())
}

/// Everything a GET or HEAD needs about the object.
pub(crate) struct Resolved {
    pub obj: Object,
    pub parts: Vec<BlobRow>,
    pub key: Option<coffer_common::secret::SecretKey32>,
    pub customer_md5: Option<String>,
}

/// Buckets are unversioned: the only version id that names the current object is `null`
/// (Coffer never answers another one). Any other id names a version that does not exist.
pub(crate) fn names_current(version_id: Option<&str>) -> bool {
    version_id.is_none_or(|v| v == "null")
}

/// Look up an object and open its key with the request's trio (validation order of
/// `docs/s3-encryption.md`: trio syntax first, then part number, then object state and key).
/// `version_id`: the request's `versionId` (404 NoSuchVersion unless it names the current
/// object). `reads_data: false` (HEAD, GetObjectAttributes) leaves an SSE-KMS object's key
/// closed: as AWS, such requests make no KMS call.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn resolve(
    state: &NodeState,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    customer: Option<crate::crypto::sse::CustomerKey>,
    part_number: Option<i32>,
    request_id: &str,
    reads_data: bool,
) -> ApiResult<Resolved> {
    let b = bucket_or_404(state, bucket).await?;
    if !names_current(version_id) {
        return Err(ApiError::NoSuchVersion);
    }
    let obj = state
        .meta
        .object(bucket, key)
        .await?
        .ok_or(ApiError::NoSuchKey)?;
    let parts = state.meta.blobs(&obj.version_id).await?;
    if let Some(n) = part_number
        && (n < 1 || n as usize > parts.len())
    {
        return Err(ApiError::InvalidPart);
    }
    let binding = Binding {
        bucket_id: &b.id,
        object_key: key,
        version_id: &obj.version_id,
    };
    let k = match (&obj.sse, &customer) {
        (StoredSse::SseKms(..), None) if !reads_data => {
            common::check_kms_transport(state)?;
            None
        }
        _ => common::open_key(state, &b, &obj.sse, &binding, customer.as_ref(), request_id).await?,
    };
    Ok(Resolved {
        obj,
        parts,
        key: k,
        customer_md5: customer.map(|c| c.key_md5_b64),
    })
}

/// Byte range of part `n` (1-based, index into the completed list) within the object.
pub(crate) fn part_range(parts: &[BlobRow], n: i32) -> Option<(u64, u64, u64)> {
    let idx = usize::try_from(n).ok()?.checked_sub(1)?;
    let start: u64 = parts.iter().take(idx).map(|p| p.size).sum();
    let p = parts.get(idx)?;
    Some((start, start + p.size.saturating_sub(1), p.size))
}
