//! An object's encryption at the S3 edge, in one place: reading the SSE request headers
//! ([`read_key`], [`copy_source_key`], [`plan_write`], request first, then the bucket default),
//! and, for a stored object or upload, [`EncryptionParams`]: the SSE response fields every
//! output carries and the ETag policy (an SSE-C ETag never derives from the plaintext). See
//! docs/s3-encryption.md. Secret: customer keys pass through here and are dropped (zeroized)
//! at the end of each request; none is ever put in a response.

use http::HeaderMap;
use s3s::dto::ServerSideEncryption;

use super::common::{hdr, random_etag};
use super::errors::{ApiError, ApiResult};
use super::kms_headers::{self, KmsDefault, KmsPlan};
use crate::crypto::envelope::StoredSse;
use crate::crypto::sse::{self, CustomerKey, SseHeaders, WriteSse};
use crate::state::NodeState;
use crate::store::meta::Bucket;

/// The SSE headers of the request (`copy_source` selects the copy-source trio).
pub(crate) fn sse_headers(h: &HeaderMap, copy_source: bool) -> SseHeaders<'_> {
    if copy_source {
        SseHeaders {
            sse: None,
            kms_key_id: None,
            algorithm: hdr(
                h,
                "x-amz-copy-source-server-side-encryption-customer-algorithm",
            ),
            key: hdr(h, "x-amz-copy-source-server-side-encryption-customer-key"),
            key_md5: hdr(
                h,
                "x-amz-copy-source-server-side-encryption-customer-key-md5",
            ),
        }
    } else {
        SseHeaders {
            sse: hdr(h, "x-amz-server-side-encryption"),
            kms_key_id: hdr(h, "x-amz-server-side-encryption-aws-kms-key-id"),
            algorithm: hdr(h, "x-amz-server-side-encryption-customer-algorithm"),
            key: hdr(h, "x-amz-server-side-encryption-customer-key"),
            key_md5: hdr(h, "x-amz-server-side-encryption-customer-key-md5"),
        }
    }
}

/// The trio of a read-like request (GET, HEAD, UploadPart, ...).
pub(crate) fn read_key(state: &NodeState, h: &HeaderMap) -> ApiResult<Option<CustomerKey>> {
    Ok(sse::parse_read(
        &sse_headers(h, false),
        state.ssec_allowed(),
    )?)
}

/// The copy-source trio.
pub(crate) fn copy_source_key(state: &NodeState, h: &HeaderMap) -> ApiResult<Option<CustomerKey>> {
    Ok(sse::parse_read(
        &sse_headers(h, true),
        state.ssec_allowed(),
    )?)
}

/// How a new object or upload is encrypted.
pub(crate) enum WritePlan {
    Plain,
    SseS3,
    SseC(CustomerKey),
    SseKms(KmsPlan),
}

/// Request headers first, then the bucket default; SSE-C is never a default.
pub(crate) fn plan_write(
    state: &NodeState,
    bucket: &Bucket,
    h: &HeaderMap,
) -> ApiResult<WritePlan> {
    let default = bucket_default(bucket);
    let kms_default = match &default {
        Some(BucketDefault::SseKms(d)) => Some(d),
        _ => None,
    };
    let requested = sse::parse_write(&sse_headers(h, false), state.ssec_allowed())?;
    if !matches!(requested, WriteSse::SseKms) {
        kms_headers::refuse_context_without_kms(h)?;
    }
    match requested {
        WriteSse::SseS3 => Ok(WritePlan::SseS3),
        WriteSse::SseKms => Ok(WritePlan::SseKms(kms_headers::plan(
            h,
            kms_default,
            state.sse_kms_allowed(),
        )?)),
        WriteSse::SseKmsDsse => Err(ApiError::NotImplemented(
            "DSSE-KMS (aws:kms:dsse) is not implemented; use aws:kms.",
        )),
        WriteSse::SseC(k) => Ok(WritePlan::SseC(k)),
        WriteSse::Unspecified => Ok(match default {
            Some(BucketDefault::SseS3) => WritePlan::SseS3,
            Some(BucketDefault::SseKms(d)) => {
                WritePlan::SseKms(kms_headers::plan(h, Some(&d), state.sse_kms_allowed())?)
            }
            None => WritePlan::Plain,
        }),
    }
}

pub(crate) enum BucketDefault {
    SseS3,
    SseKms(KmsDefault),
}

/// The bucket's default encryption as stored (`AES256`, or `aws:kms;{json}` / the older
/// `aws:kms[:key]`).
pub(crate) fn bucket_default(bucket: &Bucket) -> Option<BucketDefault> {
    match bucket.encryption_config.as_deref() {
        Some("AES256") => Some(BucketDefault::SseS3),
        Some(s) => KmsDefault::from_stored(s).map(BucketDefault::SseKms),
        None => None,
    }
}

/// GET/HEAD: the SSE-C trio, and no SSE-KMS headers (400, as AWS).
pub(crate) fn read_key_refusing_kms(
    state: &NodeState,
    h: &HeaderMap,
) -> ApiResult<Option<CustomerKey>> {
    let key = read_key(state, h)?;
    kms_headers::refuse_on_read(h)?;
    Ok(key)
}

/// The encryption of a stored object or upload as the S3 answers show it: its SSE response
/// fields and its ETag policy.
pub(crate) struct EncryptionParams<'a> {
    stored: &'a StoredSse,
    /// The request's SSE-C key MD5 (base64), echoed for SSE-C objects.
    customer_key_md5: Option<&'a str>,
}

impl<'a> EncryptionParams<'a> {
    pub(crate) fn new(stored: &'a StoredSse, customer_key_md5: Option<&'a str>) -> Self {
        Self {
            stored,
            customer_key_md5,
        }
    }

    /// `x-amz-server-side-encryption` (SSE-S3: `AES256`, SSE-KMS: `aws:kms`).
    pub(crate) fn server_side_encryption(&self) -> Option<ServerSideEncryption> {
        match self.stored {
            StoredSse::SseS3(..) => Some(ServerSideEncryption::from_static(
                ServerSideEncryption::AES256,
            )),
            StoredSse::SseKms(..) => Some(ServerSideEncryption::from_static(
                ServerSideEncryption::AWS_KMS,
            )),
            StoredSse::None | StoredSse::SseC(_) => None,
        }
    }

    /// `x-amz-server-side-encryption-aws-kms-key-id`: the canonical key ARN (SSE-KMS only).
    pub(crate) fn kms_key_id(&self) -> Option<String> {
        self.stored.kms().map(|m| m.key_arn.clone())
    }

    /// `x-amz-server-side-encryption-context`, when the client gave one (SSE-KMS only).
    pub(crate) fn kms_context(&self) -> Option<String> {
        self.stored.kms().and_then(|m| m.context_header())
    }

    /// `x-amz-server-side-encryption-bucket-key-enabled: true` when a bucket key was used.
    pub(crate) fn bucket_key_enabled(&self) -> Option<bool> {
        self.stored.kms().and_then(|m| m.bucket_key.then_some(true))
    }

    /// `x-amz-server-side-encryption-customer-algorithm` (SSE-C objects only).
    pub(crate) fn customer_algorithm(&self) -> Option<String> {
        match self.stored {
            StoredSse::SseC(_) => Some("AES256".into()),
            StoredSse::None | StoredSse::SseS3(..) | StoredSse::SseKms(..) => None,
        }
    }

    /// `x-amz-server-side-encryption-customer-key-MD5` (SSE-C objects only).
    pub(crate) fn customer_key_md5(&self) -> Option<String> {
        match self.stored {
            StoredSse::SseC(_) => self.customer_key_md5.map(str::to_string),
            StoredSse::None | StoredSse::SseS3(..) | StoredSse::SseKms(..) => None,
        }
    }

    /// The SSE-C response fields as headers, for outputs that have no fields for them.
    pub(crate) fn customer_headers(&self) -> [(&'static str, Option<String>); 2] {
        [
            (
                "x-amz-server-side-encryption-customer-algorithm",
                self.customer_algorithm(),
            ),
            (
                "x-amz-server-side-encryption-customer-key-md5",
                self.customer_key_md5(),
            ),
        ]
    }

    /// Whether a write needs the MD5 of its plaintext for its ETag (SSE-C and SSE-KMS ETags
    /// are random, as AWS's are not the MD5 of the data, so such a write hashes only to check a
    /// `Content-MD5` header).
    pub(crate) fn needs_md5(&self) -> bool {
        !self.stored.random_etag()
    }

    /// The ETag of a new part or single-part object: the plaintext MD5, or (SSE-C, SSE-KMS) a
    /// random value. `md5` is present whenever [`needs_md5`](Self::needs_md5) said so.
    pub(crate) fn etag(&self, md5: Option<&[u8; 16]>) -> String {
        match md5 {
            Some(m) if !self.stored.random_etag() => hex::encode(m),
            _ => random_etag(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::{SEALED_LEN, SealedKey};

    fn sealed() -> SealedKey {
        SealedKey {
            salt: [0; 32],
            sealed: [0; SEALED_LEN],
        }
    }

    /// Each stored form's response fields and ETag policy (docs/s3-encryption.md).
    #[test]
    fn response_fields_and_etag_policy() {
        let md5 = [7u8; 16];
        let plain = StoredSse::None;
        let s3 = StoredSse::SseS3(sealed(), 1);
        let c = StoredSse::SseC(sealed());
        for (stored, sse, alg, key_md5, md5_etag) in [
            (&plain, None, None, None, true),
            (&s3, Some("AES256"), None, None, true),
            (&c, None, Some("AES256"), Some("k=="), false),
        ] {
            let e = EncryptionParams::new(stored, Some("k=="));
            assert_eq!(e.server_side_encryption().as_ref().map(|s| s.as_str()), sse);
            assert_eq!(e.customer_algorithm().as_deref(), alg);
            assert_eq!(e.customer_key_md5().as_deref(), key_md5);
            assert_eq!(e.needs_md5(), md5_etag);
            let etag = e.etag(Some(&md5));
            assert_eq!(etag == hex::encode(md5), md5_etag, "SSE-C ETags are random");
            assert_eq!(etag.len(), 32);
        }
    }
}
