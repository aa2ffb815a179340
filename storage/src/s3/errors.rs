//! The S3 edge's one error enum and its exhaustive mapping to S3 error codes and statuses.
//! Internal causes are logged with the request id and answered with a generic message; nothing
//! secret is ever put in a message.

use s3s::{S3Error, S3ErrorCode};

use crate::crypto::envelope::EnvelopeError;
use crate::crypto::kms_client::KmsError;
use crate::crypto::sse::SseError;
use crate::store::blobs::BlobError;
use crate::store::disk;
use crate::store::objects::ReadError;

/// Everything an S3 handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("no such key")]
    NoSuchKey,
    #[error("no such upload")]
    NoSuchUpload,
    #[error("no such version")]
    NoSuchVersion,
    #[error("bucket not empty")]
    BucketNotEmpty,
    #[error("invalid bucket name")]
    InvalidBucketName,
    #[error("sse: {0}")]
    Sse(#[from] SseError),
    #[error("SSE-C object read without key")]
    SseCKeyRequired,
    #[error("SSE-C key given for a non SSE-C object")]
    SseCNotApplicable,
    #[error("wrong SSE-C key")]
    AccessDenied,
    #[error("multipart part encryption mismatch")]
    PartEncryptionRequired,
    #[error("aws:kms not implemented")]
    KmsNotImplemented,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("SSE requested but no KMS configured")]
    NoKms,
    #[error("KMS unavailable: {0}")]
    KmsUnavailable(String),
    /// The data dir's file system is full (ENOSPC, SQLITE_FULL): retry once space is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("bad digest")]
    BadDigest,
    #[error("invalid range")]
    InvalidRange,
    #[error("invalid part")]
    InvalidPart,
    #[error("invalid part order")]
    InvalidPartOrder,
    #[error("entity too small")]
    EntityTooSmall,
    #[error("malformed xml")]
    MalformedXml,
    #[error("metadata too large")]
    MetadataTooLarge,
    #[error("precondition failed")]
    PreconditionFailed,
    /// 304, answered with the object's ETag and Last-Modified (as AWS and RFC 7232).
    #[error("not modified")]
    NotModified { etag: String, last_modified_ms: i64 },
    #[error("no bucket encryption configuration")]
    NoEncryptionConfig,
    #[error("incomplete body")]
    IncompleteBody,
    #[error("internal: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if disk::db_is_full(&e) {
            return ApiError::DiskFull(format!("metadata: {e}"));
        }
        ApiError::Internal(format!("metadata: {e}"))
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::LengthMismatch { .. } | BlobError::Body(_) => ApiError::IncompleteBody,
            BlobError::Io(e) if disk::io_is_full(&e) => ApiError::DiskFull(format!("blob: {e}")),
            BlobError::Io(e) => ApiError::Internal(format!("blob: {e}")),
            BlobError::Format(e) => ApiError::Internal(format!("blob format: {e}")),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Blob(b) => b.into(),
            ReadError::Header(f) => ApiError::Internal(format!("part header: {f}")),
        }
    }
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> Self {
        if e.is_unavailable() {
            return ApiError::KmsUnavailable(e.to_string());
        }
        match e {
            KmsError::NotConfigured => ApiError::NoKms,
            KmsError::Unavailable(m) => ApiError::KmsUnavailable(m),
            KmsError::Refused { .. } | KmsError::Malformed => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<EnvelopeError> for ApiError {
    fn from(e: EnvelopeError) -> Self {
        match e {
            EnvelopeError::Kms(k) => k.into(),
            EnvelopeError::WrongCustomerKey => ApiError::AccessDenied,
            EnvelopeError::CustomerKeyRequired => ApiError::SseCKeyRequired,
            EnvelopeError::Corrupt => ApiError::Internal("sealed key failed authentication".into()),
            EnvelopeError::Store(m) => ApiError::Internal(m),
        }
    }
}

impl From<ApiError> for S3Error {
    fn from(e: ApiError) -> Self {
        use S3ErrorCode as C;
        let (code, msg): (S3ErrorCode, String) = match &e {
            ApiError::NoSuchBucket => (C::NoSuchBucket, "The specified bucket does not exist".into()),
            ApiError::NoSuchKey => (C::NoSuchKey, "The specified key does not exist.".into()),
            ApiError::NoSuchVersion => (C::NoSuchVersion, "The specified version does not exist.".into()),
            ApiError::NoSuchUpload => (C::NoSuchUpload, "The specified multipart upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or completed.".into()),
            ApiError::BucketNotEmpty => (C::BucketNotEmpty, "The bucket you tried to delete is not empty".into()),
            ApiError::InvalidBucketName => (C::InvalidBucketName, "The specified bucket is not valid.".into()),
            ApiError::Sse(s) => (S3ErrorCode::from_bytes(s.code().as_bytes()).unwrap_or(C::InvalidArgument), s.message().into()),
            ApiError::SseCKeyRequired => (C::InvalidRequest, "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.".into()),
            ApiError::SseCNotApplicable => (C::InvalidRequest, "The encryption parameters are not applicable to this object.".into()),
            ApiError::AccessDenied => (C::AccessDenied, "Access Denied".into()),
            ApiError::PartEncryptionRequired => (C::InvalidRequest, "The multipart upload initiate requested encryption. Subsequent part requests must include the appropriate encryption parameters.".into()),
            ApiError::KmsNotImplemented => (C::NotImplemented, "SSE-KMS (aws:kms) is not implemented yet; use AES256 (SSE-S3) or SSE-C.".into()),
            ApiError::NotImplemented(m) => (C::NotImplemented, (*m).into()),
            ApiError::NoKms => (C::NotImplemented, "Server-side encryption was requested but this node has no KMS configured.".into()),
            ApiError::KmsUnavailable(_) => (C::ServiceUnavailable, "The key service is unavailable. Please retry.".into()),
            ApiError::DiskFull(cause) => {
                tracing::warn!(%cause, "write refused: disk full");
                (C::ServiceUnavailable, "The storage node is out of disk space. Please retry later.".into())
            }
            ApiError::InvalidRequest(m) => (C::InvalidRequest, (*m).into()),
            ApiError::InvalidArgument(m) => (C::InvalidArgument, m.clone()),
            ApiError::BadDigest => (C::BadDigest, "The Content-MD5 you specified did not match what we received.".into()),
            ApiError::InvalidRange => (C::InvalidRange, "The requested range is not satisfiable".into()),
            ApiError::InvalidPart => (C::InvalidPart, "One or more of the specified parts could not be found.".into()),
            ApiError::InvalidPartOrder => (C::InvalidPartOrder, "The list of parts was not in ascending order.".into()),
            ApiError::EntityTooSmall => (C::EntityTooSmall, "Your proposed upload is smaller than the minimum allowed object size.".into()),
            ApiError::MalformedXml => (C::MalformedXML, "The XML you provided was not well-formed or did not validate against our published schema.".into()),
            ApiError::MetadataTooLarge => (C::MetadataTooLarge, "Your metadata headers exceed the maximum allowed metadata size.".into()),
            ApiError::PreconditionFailed => (C::PreconditionFailed, "At least one of the pre-conditions you specified did not hold".into()),
            ApiError::NotModified { .. } => (C::NotModified, "Not Modified".into()),
            ApiError::NoEncryptionConfig => (C::ServerSideEncryptionConfigurationNotFoundError, "The server side encryption configuration was not found".into()),
            ApiError::IncompleteBody => (C::IncompleteBody, "You did not provide the number of bytes specified by the Content-Length HTTP header.".into()),
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (C::InternalError, "We encountered an internal error. Please try again.".into())
            }
        };
        let mut err = S3Error::with_message(code, msg);
        if let ApiError::AccessDenied = e {
            err.set_status_code(http::StatusCode::FORBIDDEN);
        }
        if let ApiError::Sse(_) = e {
            err.set_status_code(http::StatusCode::BAD_REQUEST);
        }
        if let ApiError::NoEncryptionConfig = e {
            err.set_status_code(http::StatusCode::NOT_FOUND);
        }
        if let ApiError::NotModified { .. } = e {
            err.set_status_code(http::StatusCode::NOT_MODIFIED);
        }
        if let ApiError::KmsUnavailable(_) | ApiError::DiskFull(_) = e {
            err.set_status_code(http::StatusCode::SERVICE_UNAVAILABLE);
        }
        err
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant's S3 code and HTTP status, pinned (AWS values).
    #[test]
    fn each_error_maps_to_its_s3_code_and_status() {
        let cases: Vec<(ApiError, &str, u16)> = vec![
            (ApiError::NoSuchBucket, "NoSuchBucket", 404),
            (ApiError::NoSuchKey, "NoSuchKey", 404),
            (ApiError::NoSuchUpload, "NoSuchUpload", 404),
            (ApiError::NoSuchVersion, "NoSuchVersion", 404),
            (ApiError::BucketNotEmpty, "BucketNotEmpty", 409),
            (ApiError::InvalidBucketName, "InvalidBucketName", 400),
            (
                ApiError::Sse(SseError::InsecureTransport),
                "InvalidRequest",
                400,
            ),
            (ApiError::SseCKeyRequired, "InvalidRequest", 400),
            (ApiError::SseCNotApplicable, "InvalidRequest", 400),
            (ApiError::AccessDenied, "AccessDenied", 403),
            (ApiError::PartEncryptionRequired, "InvalidRequest", 400),
            (ApiError::KmsNotImplemented, "NotImplemented", 501),
            (ApiError::NoKms, "NotImplemented", 501),
            (ApiError::NotImplemented("x"), "NotImplemented", 501),
            (
                ApiError::KmsUnavailable("down".into()),
                "ServiceUnavailable",
                503,
            ),
            (
                ApiError::DiskFull("cause".into()),
                "ServiceUnavailable",
                503,
            ),
            (ApiError::InvalidRequest("x"), "InvalidRequest", 400),
            (
                ApiError::InvalidArgument("x".into()),
                "InvalidArgument",
                400,
            ),
            (ApiError::BadDigest, "BadDigest", 400),
            (ApiError::InvalidRange, "InvalidRange", 416),
            (ApiError::InvalidPart, "InvalidPart", 400),
            (ApiError::InvalidPartOrder, "InvalidPartOrder", 400),
            (ApiError::EntityTooSmall, "EntityTooSmall", 400),
            (ApiError::MalformedXml, "MalformedXML", 400),
            (ApiError::MetadataTooLarge, "MetadataTooLarge", 400),
            (ApiError::PreconditionFailed, "PreconditionFailed", 412),
            (
                ApiError::NotModified {
                    etag: "e".into(),
                    last_modified_ms: 0,
                },
                "NotModified",
                304,
            ),
            (
                ApiError::NoEncryptionConfig,
                "ServerSideEncryptionConfigurationNotFoundError",
                404,
            ),
            (ApiError::IncompleteBody, "IncompleteBody", 400),
            (ApiError::Internal("cause".into()), "InternalError", 500),
        ];
        for (e, code, status) in cases {
            let what = format!("{e:?}");
            let s3 = S3Error::from(e);
            assert_eq!(s3.code().as_str(), code, "{what}");
            assert_eq!(s3.status_code().map(|s| s.as_u16()), Some(status), "{what}");
            assert!(
                !s3.message().unwrap_or_default().contains("cause"),
                "internal causes are not answered: {what}"
            );
        }
    }
}
