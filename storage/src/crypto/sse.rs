//! What a request asks for in terms of server-side encryption, validated in the order of
//! `docs/s3-encryption.md` ("Validation order"): transport, conflicts, algorithm, key, key MD5,
//! key length, MD5 match. Object state (is it SSE-C, is the key right) is checked later by the
//! caller.
//!
//! Secret: the customer key inside [`CustomerKey`]. Its MD5 is kept only to echo it in the
//! response, as S3 does; it is never stored.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::secret::SecretKey32;
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A validated SSE-C key and the MD5 the client sent (to echo back).
pub struct CustomerKey {
    pub key: SecretKey32,
    pub key_md5_b64: String,
}

/// What a write asks for (PutObject, CopyObject destination, CreateMultipartUpload).
pub enum WriteSse {
    /// No SSE headers: the bucket default (or the node default) decides.
    Unspecified,
    /// `x-amz-server-side-encryption: AES256`.
    SseS3,
    /// `x-amz-server-side-encryption: aws:kms`.
    SseKms,
    /// `x-amz-server-side-encryption: aws:kms:dsse` (not implemented: 501).
    SseKmsDsse,
    /// The SSE-C trio.
    SseC(CustomerKey),
}

/// The SSE-related request headers, as the S3 edge received them.
#[derive(Default, Clone, Copy)]
pub struct SseHeaders<'a> {
    pub sse: Option<&'a str>,
    pub kms_key_id: Option<&'a str>,
    pub algorithm: Option<&'a str>,
    pub key: Option<&'a str>,
    pub key_md5: Option<&'a str>,
}

/// Request-level SSE errors (rows of the error table in `docs/s3-encryption.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// E9.
    #[error("SSE-C over plain HTTP")]
    InsecureTransport,
    /// E12.
    #[error("SSE-C combined with another method")]
    Incompatible,
    /// E14: AES256 with a KMS key id.
    #[error("KMS key id without aws:kms")]
    KmsKeyIdWithoutKms,
    /// E14: unknown `x-amz-server-side-encryption` value.
    #[error("unknown SSE value")]
    UnknownMethod,
    /// E6.
    #[error("SSE-C key without algorithm")]
    MissingAlgorithm,
    /// E7.
    #[error("SSE-C algorithm is not AES256")]
    BadAlgorithm,
    /// E5.
    #[error("SSE-C algorithm without key")]
    MissingKey,
    /// E4.
    #[error("SSE-C key without MD5")]
    MissingKeyMd5,
    /// E8.
    #[error("SSE-C key is not 32 bytes of base64")]
    BadKey,
    /// E3.
    #[error("SSE-C key MD5 mismatch")]
    KeyMd5Mismatch,
    /// E11: `x-amz-server-side-encryption` on GET/HEAD.
    #[error("SSE header on a read")]
    SseOnRead,
    /// SSE-KMS over plain HTTP (unless `allow_sse_kms_over_http`).
    #[error("SSE-KMS over plain HTTP")]
    KmsInsecureTransport,
    /// `x-amz-server-side-encryption-context` is not base64 JSON of a string map.
    #[error("bad SSE-KMS context")]
    BadKmsContext,
    /// `x-amz-server-side-encryption-bucket-key-enabled` is not true or false.
    #[error("bad bucket-key-enabled header")]
    BadBucketKeyHeader,
    /// An empty `x-amz-server-side-encryption-aws-kms-key-id`.
    #[error("empty KMS key id")]
    BadKmsKeyId,
    /// A KMS key id or context on GET/HEAD.
    #[error("SSE-KMS header on a read")]
    KmsHeaderOnRead,
}

impl SseError {
    /// HTTP status (all request-level SSE errors are 400).
    pub fn status(self) -> u16 {
        400
    }

    /// The S3 error code.
    pub fn code(self) -> &'static str {
        match self {
            SseError::InsecureTransport | SseError::SseOnRead | SseError::KmsInsecureTransport => {
                "InvalidRequest"
            }
            SseError::BadAlgorithm => "InvalidEncryptionAlgorithmError",
            SseError::Incompatible
            | SseError::KmsKeyIdWithoutKms
            | SseError::UnknownMethod
            | SseError::MissingAlgorithm
            | SseError::MissingKey
            | SseError::MissingKeyMd5
            | SseError::BadKey
            | SseError::KeyMd5Mismatch
            | SseError::BadKmsContext
            | SseError::BadBucketKeyHeader
            | SseError::BadKmsKeyId
            | SseError::KmsHeaderOnRead => "InvalidArgument",
        }
    }

    /// The S3 error message (AWS's wording where known).
    pub fn message(self) -> &'static str {
        match self {
            SseError::InsecureTransport => {
                "Requests specifying Server Side Encryption with Customer provided keys must be made over a secure connection."
            }
            SseError::Incompatible => {
                "Server Side Encryption with Customer provided key is incompatible with the encryption method specified."
            }
            SseError::KmsKeyIdWithoutKms => {
                "Server Side Encryption with AWS KMS managed key requires HTTP header x-amz-server-side-encryption : aws:kms"
            }
            SseError::UnknownMethod => "The encryption method specified is not supported",
            SseError::MissingAlgorithm => {
                "Requests specifying Server Side Encryption with Customer provided keys must provide a valid encryption algorithm."
            }
            SseError::BadAlgorithm => {
                "The encryption request you specified is not valid. The valid value is AES256."
            }
            SseError::MissingKey => {
                "Requests specifying Server Side Encryption with Customer provided keys must provide an appropriate secret key."
            }
            SseError::MissingKeyMd5 => {
                "Requests specifying Server Side Encryption with Customer provided keys must provide the client calculated MD5 of the secret key."
            }
            SseError::BadKey => "The secret key was invalid for the specified algorithm.",
            SseError::KeyMd5Mismatch => {
                "The calculated MD5 hash of the key did not match the hash that was provided."
            }
            SseError::SseOnRead => {
                "The x-amz-server-side-encryption header is not supported for this operation."
            }
            SseError::KmsInsecureTransport => {
                "Requests specifying Server Side Encryption with AWS KMS managed keys must be made over a secure connection."
            }
            SseError::BadKmsContext => {
                "The header 'x-amz-server-side-encryption-context' shall be Base64-encoded UTF-8 string holding JSON which represents a string-string map"
            }
            SseError::BadBucketKeyHeader => {
                "The header 'x-amz-server-side-encryption-bucket-key-enabled' must be true or false."
            }
            SseError::BadKmsKeyId => {
                "The header 'x-amz-server-side-encryption-aws-kms-key-id' must name a KMS key."
            }
            SseError::KmsHeaderOnRead => {
                "x-amz-server-side-encryption-aws-kms-key-id and x-amz-server-side-encryption-context are not supported for this operation."
            }
        }
    }
}

fn trio_present(h: &SseHeaders<'_>) -> bool {
    h.algorithm.is_some() || h.key.is_some() || h.key_md5.is_some()
}

/// Validate an SSE-C trio (steps 3-7). `Ok(None)` when no part of the trio is present.
fn customer_key(h: &SseHeaders<'_>) -> Result<Option<CustomerKey>, SseError> {
    if !trio_present(h) {
        return Ok(None);
    }
    let alg = h.algorithm.ok_or(SseError::MissingAlgorithm)?;
    if alg != "AES256" {
        return Err(SseError::BadAlgorithm);
    }
    let key_b64 = h.key.ok_or(SseError::MissingKey)?;
    let md5_b64 = h.key_md5.ok_or(SseError::MissingKeyMd5)?;
    let raw = Zeroizing::new(
        STANDARD
            .decode(key_b64.trim())
            .map_err(|_| SseError::BadKey)?,
    );
    let key = SecretKey32::from_slice(&raw).ok_or(SseError::BadKey)?;
    let digest = Md5::digest(raw.as_slice());
    let sent = STANDARD
        .decode(md5_b64.trim())
        .map_err(|_| SseError::KeyMd5Mismatch)?;
    if sent.len() != digest.len() || !bool::from(sent.as_slice().ct_eq(digest.as_slice())) {
        return Err(SseError::KeyMd5Mismatch);
    }
    Ok(Some(CustomerKey {
        key,
        key_md5_b64: md5_b64.trim().to_string(),
    }))
}

/// Validate the SSE headers of a write (steps 1-7).
pub fn parse_write(h: &SseHeaders<'_>, secure: bool) -> Result<WriteSse, SseError> {
    if trio_present(h) && !secure {
        return Err(SseError::InsecureTransport);
    }
    if trio_present(h) && h.sse.is_some() {
        return Err(SseError::Incompatible);
    }
    match h.sse {
        Some("AES256") if h.kms_key_id.is_some() => return Err(SseError::KmsKeyIdWithoutKms),
        Some("AES256") => return Ok(WriteSse::SseS3),
        Some("aws:kms") => return Ok(WriteSse::SseKms),
        Some("aws:kms:dsse") => return Ok(WriteSse::SseKmsDsse),
        Some(_) => return Err(SseError::UnknownMethod),
        None if h.kms_key_id.is_some() => return Err(SseError::KmsKeyIdWithoutKms),
        None => {}
    }
    Ok(customer_key(h)?.map_or(WriteSse::Unspecified, WriteSse::SseC))
}

/// Validate the SSE headers of a read (GET, HEAD, GetObjectAttributes, ListParts, UploadPart)
/// or a copy source: only the trio is accepted.
pub fn parse_read(h: &SseHeaders<'_>, secure: bool) -> Result<Option<CustomerKey>, SseError> {
    if trio_present(h) && !secure {
        return Err(SseError::InsecureTransport);
    }
    if h.sse.is_some() {
        return Err(if trio_present(h) {
            SseError::Incompatible
        } else {
            SseError::SseOnRead
        });
    }
    customer_key(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "pO3upElrwuEXSoFwCfnZPdSsmt/xWeFa0N9KgDijwVs=";
    const MD5_A: &str = "DWygnHRtgiJ77HCm+1rvHw==";
    const MD5_B: &str = "arxBvwY2V4SiOne6yppVPQ==";

    fn trio() -> SseHeaders<'static> {
        SseHeaders {
            algorithm: Some("AES256"),
            key: Some(KEY_A),
            key_md5: Some(MD5_A),
            ..Default::default()
        }
    }

    fn write_err(h: SseHeaders<'_>, secure: bool) -> Option<SseError> {
        parse_write(&h, secure).err()
    }

    #[test]
    fn valid_trio_and_sse_s3() {
        assert!(
            matches!(parse_write(&trio(), true), Ok(WriteSse::SseC(k)) if k.key_md5_b64 == MD5_A)
        );
        let s3 = SseHeaders {
            sse: Some("AES256"),
            ..Default::default()
        };
        assert!(matches!(parse_write(&s3, false), Ok(WriteSse::SseS3)));
        assert!(matches!(
            parse_write(&SseHeaders::default(), false),
            Ok(WriteSse::Unspecified)
        ));
        assert!(matches!(parse_read(&trio(), true), Ok(Some(_))));
    }

    #[test]
    fn errors_in_spec_order() {
        // E9 comes first, even when the trio is also malformed.
        let bad = SseHeaders {
            algorithm: Some("DES"),
            ..trio()
        };
        assert_eq!(write_err(bad, false), Some(SseError::InsecureTransport));
        // E12 before algorithm checks.
        assert_eq!(
            write_err(
                SseHeaders {
                    sse: Some("AES256"),
                    algorithm: Some("DES"),
                    ..trio()
                },
                true
            ),
            Some(SseError::Incompatible)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    sse: Some("AES256"),
                    kms_key_id: Some("k"),
                    ..Default::default()
                },
                true
            ),
            Some(SseError::KmsKeyIdWithoutKms)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    kms_key_id: Some("k"),
                    ..Default::default()
                },
                true
            ),
            Some(SseError::KmsKeyIdWithoutKms)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    sse: Some("AES128"),
                    ..Default::default()
                },
                true
            ),
            Some(SseError::UnknownMethod)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    algorithm: None,
                    ..trio()
                },
                true
            ),
            Some(SseError::MissingAlgorithm)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    algorithm: Some("AES128"),
                    key: None,
                    ..trio()
                },
                true
            ),
            Some(SseError::BadAlgorithm)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    key: None,
                    key_md5: None,
                    ..trio()
                },
                true
            ),
            Some(SseError::MissingKey)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    key_md5: None,
                    ..trio()
                },
                true
            ),
            Some(SseError::MissingKeyMd5)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    key: Some("AAAA"),
                    ..trio()
                },
                true
            ),
            Some(SseError::BadKey)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    key: Some("!!notbase64"),
                    ..trio()
                },
                true
            ),
            Some(SseError::BadKey)
        );
        assert_eq!(
            write_err(
                SseHeaders {
                    key_md5: Some(MD5_B),
                    ..trio()
                },
                true
            ),
            Some(SseError::KeyMd5Mismatch)
        );
        assert_eq!(
            parse_read(
                &SseHeaders {
                    sse: Some("AES256"),
                    ..Default::default()
                },
                true
            )
            .err(),
            Some(SseError::SseOnRead)
        );
    }

    #[test]
    fn codes_are_pinned() {
        assert_eq!(
            SseError::BadAlgorithm.code(),
            "InvalidEncryptionAlgorithmError"
        );
        assert_eq!(SseError::InsecureTransport.code(), "InvalidRequest");
        assert_eq!(SseError::KeyMd5Mismatch.code(), "InvalidArgument");
        assert_eq!(
            SseError::BadKey.message(),
            "The secret key was invalid for the specified algorithm."
        );
    }
}
