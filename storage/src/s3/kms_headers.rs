//! SSE-KMS at the S3 edge: which KMS key, context and bucket-key setting a write uses (request
//! headers first, then the bucket default, then `alias/aws/s3`), the bucket default as stored,
//! and the SSE-KMS headers a read must not carry. Errors are `SseError` rows (docs/s3-encryption.md
//! "SSE-KMS"). Nothing here is secret: key ids, contexts and ARNs are not.

use coffer_common::kms_api::EncryptionContext;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::common::hdr;
use crate::crypto::sse::SseError;
use crate::crypto::sse_kms::{self, KmsWrite};

pub(crate) const KEY_ID: &str = "x-amz-server-side-encryption-aws-kms-key-id";
pub(crate) const CONTEXT: &str = "x-amz-server-side-encryption-context";
pub(crate) const BUCKET_KEY: &str = "x-amz-server-side-encryption-bucket-key-enabled";

/// How a new SSE-KMS object or upload gets its data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KmsPlan {
    /// Key id, key ARN, alias or alias ARN (as the client or the bucket default named it).
    pub key_id: String,
    /// The client's `x-amz-server-side-encryption-context`.
    pub context: Option<EncryptionContext>,
    pub bucket_key: bool,
}

impl KmsPlan {
    pub(crate) fn write(&self) -> KmsWrite<'_> {
        KmsWrite {
            key_id: &self.key_id,
            client_context: self.context.as_ref(),
            bucket_key: self.bucket_key,
        }
    }
}

/// A bucket's default SSE-KMS settings (`PutBucketEncryption` with `aws:kms`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KmsDefault {
    /// `KMSMasterKeyID` as the client gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default)]
    pub bucket_key: bool,
}

/// Prefix of the stored `encryption_config` of an `aws:kms` default (JSON follows).
const STORED_PREFIX: &str = "aws:kms;";

impl KmsDefault {
    /// The `buckets.encryption_config` value.
    pub(crate) fn stored(&self) -> String {
        format!(
            "{STORED_PREFIX}{}",
            serde_json::to_string(self).unwrap_or_default()
        )
    }

    /// Read a stored value: `aws:kms;{json}`, or the older `aws:kms[:KEY]`.
    pub(crate) fn from_stored(s: &str) -> Option<Self> {
        if let Some(json) = s.strip_prefix(STORED_PREFIX) {
            return serde_json::from_str(json).ok();
        }
        let rest = s.strip_prefix("aws:kms")?;
        let key = rest.strip_prefix(':').filter(|k| !k.is_empty());
        Some(Self {
            key_id: key.map(str::to_string),
            bucket_key: false,
        })
    }
}

/// `x-amz-server-side-encryption-bucket-key-enabled`: `true`/`false` (any case); else 400.
fn bucket_key_header(h: &HeaderMap) -> Result<Option<bool>, SseError> {
    match hdr(h, BUCKET_KEY).map(str::trim) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(SseError::BadBucketKeyHeader),
    }
}

/// The plan of a write that asked for `aws:kms` (`requested`: the header said so) or whose
/// bucket default is `aws:kms` (`default`).
pub(crate) fn plan(
    h: &HeaderMap,
    default: Option<&KmsDefault>,
    secure: bool,
) -> Result<KmsPlan, SseError> {
    if !secure {
        return Err(SseError::KmsInsecureTransport);
    }
    let context = match hdr(h, CONTEXT) {
        Some(v) => Some(sse_kms::parse_context_header(v).map_err(|_| SseError::BadKmsContext)?),
        None => None,
    };
    let key_id = match hdr(h, KEY_ID).map(str::trim) {
        Some("") => return Err(SseError::BadKmsKeyId),
        Some(k) => k.to_string(),
        None => default
            .and_then(|d| d.key_id.clone())
            .unwrap_or_else(|| sse_kms::DEFAULT_KEY_ALIAS.to_string()),
    };
    let bucket_key = bucket_key_header(h)?.unwrap_or_else(|| default.is_some_and(|d| d.bucket_key));
    Ok(KmsPlan {
        key_id,
        context,
        bucket_key,
    })
}

/// A write that is not SSE-KMS must not carry a KMS context (the key id is checked with the
/// other SSE headers).
pub(crate) fn refuse_context_without_kms(h: &HeaderMap) -> Result<(), SseError> {
    if h.contains_key(CONTEXT) {
        return Err(SseError::KmsKeyIdWithoutKms);
    }
    Ok(())
}

/// GET and HEAD refuse SSE-KMS request headers, as AWS.
pub(crate) fn refuse_on_read(h: &HeaderMap) -> Result<(), SseError> {
    if h.contains_key(KEY_ID) || h.contains_key(CONTEXT) {
        return Err(SseError::KmsHeaderOnRead);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn key_choice_request_then_bucket_default_then_aws_s3() {
        let d = KmsDefault {
            key_id: Some("alias/bucket-default".into()),
            bucket_key: true,
        };
        let p = plan(&headers(&[(KEY_ID, "alias/mine")]), Some(&d), true).unwrap();
        assert_eq!((p.key_id.as_str(), p.bucket_key), ("alias/mine", true));
        let p = plan(&headers(&[(BUCKET_KEY, "FALSE")]), Some(&d), true).unwrap();
        assert_eq!(
            (p.key_id.as_str(), p.bucket_key),
            ("alias/bucket-default", false)
        );
        let p = plan(&HeaderMap::new(), None, true).unwrap();
        assert_eq!((p.key_id.as_str(), p.bucket_key), ("alias/aws/s3", false));
        let p = plan(&headers(&[(BUCKET_KEY, "true")]), None, true).unwrap();
        assert!(p.bucket_key);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            plan(&HeaderMap::new(), None, false),
            Err(SseError::KmsInsecureTransport)
        );
        assert_eq!(
            plan(&headers(&[(CONTEXT, "bm90IGpzb24=")]), None, true),
            Err(SseError::BadKmsContext)
        );
        assert_eq!(
            plan(&headers(&[(BUCKET_KEY, "yes")]), None, true),
            Err(SseError::BadBucketKeyHeader)
        );
        let ctx = base64::engine::general_purpose::STANDARD.encode(r#"{"team":"a"}"#);
        let p = plan(&headers(&[(CONTEXT, &ctx)]), None, true).unwrap();
        assert_eq!(
            p.context.unwrap().get("team").map(String::as_str),
            Some("a")
        );
        assert_eq!(
            refuse_on_read(&headers(&[(KEY_ID, "k")])),
            Err(SseError::KmsHeaderOnRead)
        );
        assert_eq!(refuse_on_read(&HeaderMap::new()), Ok(()));
    }

    #[test]
    fn bucket_default_round_trips_and_reads_the_older_form() {
        let d = KmsDefault {
            key_id: Some("arn:aws:kms:us-east-1:111122223333:key/x".into()),
            bucket_key: true,
        };
        assert_eq!(KmsDefault::from_stored(&d.stored()), Some(d));
        assert_eq!(
            KmsDefault::from_stored("aws:kms:k1"),
            Some(KmsDefault {
                key_id: Some("k1".into()),
                bucket_key: false
            })
        );
        assert_eq!(
            KmsDefault::from_stored("aws:kms"),
            Some(KmsDefault::default())
        );
        assert_eq!(KmsDefault::from_stored("AES256"), None);
    }
}
