//! The S3 edge's one error enum and its one exhaustive mapping to the wire: [`ApiError::wire`]
//! gives every error's HTTP status, S3 code, message and `Retry-After` (a `match` with no
//! catch-all arm, pinned by the table test below), as the KMS's `ApiError::wire` does. Every S3
//! error the node sends is answered from here: through s3s ([`S3Error`]) for the operations,
//! and as a ready XML answer ([`http_response`]) for refusals made before s3s (auth gate,
//! unreadable SSE headers, body size cap, form POSTs). `Resource` and `RequestId` are added to
//! every XML error body on the way out by `crate::error_body` (s3s writes neither), from the
//! request path and the id in the `x-amz-request-id` header.
//!
//! Internal causes (database errors keep their source) are logged and answered with a generic
//! message; nothing secret is ever put in a message.

use std::borrow::Cow;
use std::error::Error as StdError;

use http::{HeaderMap, HeaderValue, StatusCode};
use s3s::{S3Error, S3ErrorCode};

use crate::auth_gate::{Refusal, SIGV2_MESSAGE};
use crate::crypto::envelope::EnvelopeError;
use crate::crypto::kms_client::KmsError;
use crate::crypto::sse::SseError;
use crate::post_policy::PostError;
use crate::store::blobs::BlobError;
use crate::store::disk;
use crate::store::objects::ReadError;

use super::post::FormError;

/// Everything an S3 handler, or the HTTP layer in front of s3s, can fail with.
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
    /// A named KMS key refused an SSE-KMS request (AWS's `KMS.*` codes); the key as named.
    #[error("KMS key {1}: {0:?}")]
    KmsKey(KmsKeyProblem, String),
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("SSE requested but no KMS configured")]
    NoKms,
    #[error("KMS unavailable: {0}")]
    KmsUnavailable(String),
    /// The data dir's file system is full (ENOSPC, SQLITE_FULL): retry once space is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// The S3 blob backend failed or timed out; nothing was committed or sent.
    #[error("blob store unavailable: {0}")]
    BlobStoreUnavailable(String),
    /// The metadata database (PostgreSQL) could not be reached or timed out; nothing committed.
    #[error("metadata database unavailable: {0}")]
    MetaUnavailable(String),
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
    /// A body above the node's size cap (declared, or found while reading it).
    #[error("entity too large")]
    EntityTooLarge,
    /// An aws-chunked body whose chunk signature does not verify.
    #[error("chunk signature does not match")]
    SignatureDoesNotMatch,
    /// An unknown access key.
    #[error("unknown access key")]
    InvalidAccessKeyId,
    /// A form POST to the service root or to an object.
    #[error("method not allowed")]
    MethodNotAllowed,
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
    /// The body ended early or the client went away.
    #[error("incomplete body")]
    IncompleteBody,
    /// Refused by the auth gate before s3s.
    #[error("refused: {0:?}")]
    Refused(Refusal),
    /// A form POST refused.
    #[error("form: {0}")]
    Form(Box<FormError>),
    /// The metadata database failed (the source is kept and logged).
    #[error("metadata: {0}")]
    Db(#[source] sqlx::Error),
    #[error("internal: {0}")]
    Internal(String),
}

/// Why a named KMS key could not be used (SSE-KMS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsKeyProblem {
    /// No such key or alias (also: destroyed).
    NotFound,
    /// The key is disabled.
    Disabled,
    /// Pending deletion (or another state that refuses the operation).
    InvalidState,
}

/// A key name from a request or a stored object, bounded before it is put in a message.
fn key_shown(key: &str) -> String {
    key.chars().take(300).collect()
}

/// One error as the wire carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Seconds for `Retry-After` (transient refusals only).
    pub retry_after: Option<&'static str>,
    /// An extra `<Region>` element (AWS names the expected region when a credential names
    /// another).
    pub region: Option<String>,
}

fn w(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Wire {
    Wire {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        code,
        message: message.into(),
        retry_after: None,
        region: None,
    }
}

/// A client-sent region, bounded before it is echoed in an error message.
fn shown(region: &str) -> String {
    region.chars().take(64).collect()
}

const INTERNAL_MESSAGE: &str = "We encountered an internal error. Please try again.";
const TOO_LARGE_MESSAGE: &str = "Your proposed upload exceeds the maximum allowed object size.";

impl ApiError {
    /// The status, code, message and `Retry-After` of every error: the node's one S3 error
    /// table.
    pub fn wire(&self) -> Wire {
        match self {
            ApiError::NoSuchBucket => w(404, "NoSuchBucket", "The specified bucket does not exist"),
            ApiError::NoSuchKey => w(404, "NoSuchKey", "The specified key does not exist."),
            ApiError::NoSuchVersion => w(
                404,
                "NoSuchVersion",
                "The specified version does not exist.",
            ),
            ApiError::NoSuchUpload => w(
                404,
                "NoSuchUpload",
                "The specified multipart upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or completed.",
            ),
            ApiError::BucketNotEmpty => w(
                409,
                "BucketNotEmpty",
                "The bucket you tried to delete is not empty",
            ),
            ApiError::InvalidBucketName => w(
                400,
                "InvalidBucketName",
                "The specified bucket is not valid.",
            ),
            ApiError::Sse(s) => w(400, s.code(), s.message()),
            ApiError::SseCKeyRequired => w(
                400,
                "InvalidRequest",
                "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.",
            ),
            ApiError::SseCNotApplicable => w(
                400,
                "InvalidRequest",
                "The encryption parameters are not applicable to this object.",
            ),
            ApiError::AccessDenied => w(403, "AccessDenied", "Access Denied"),
            ApiError::PartEncryptionRequired => w(
                400,
                "InvalidRequest",
                "The multipart upload initiate requested encryption. Subsequent part requests must include the appropriate encryption parameters.",
            ),
            ApiError::KmsKey(KmsKeyProblem::NotFound, k) => w(
                400,
                "KMS.NotFoundException",
                if k.starts_with("alias/") || k.contains(":alias/") {
                    format!("Alias {} is not found.", key_shown(k))
                } else {
                    format!("Invalid keyId '{}'", key_shown(k))
                },
            ),
            ApiError::KmsKey(KmsKeyProblem::Disabled, k) => w(
                400,
                "KMS.DisabledException",
                format!("{} is disabled.", key_shown(k)),
            ),
            ApiError::KmsKey(KmsKeyProblem::InvalidState, k) => w(
                400,
                "KMS.KMSInvalidStateException",
                format!("{} is pending deletion.", key_shown(k)),
            ),
            ApiError::NotImplemented(m) => w(501, "NotImplemented", *m),
            ApiError::NoKms => w(
                501,
                "NotImplemented",
                "Server-side encryption was requested but this node has no KMS configured.",
            ),
            ApiError::KmsUnavailable(_) => Wire {
                retry_after: Some("1"),
                ..w(
                    503,
                    "ServiceUnavailable",
                    "The key service is unavailable. Please retry.",
                )
            },
            // Freeing space takes an operator: retry later than for the KMS.
            ApiError::DiskFull(_) => Wire {
                retry_after: Some("10"),
                ..w(
                    503,
                    "ServiceUnavailable",
                    "The storage node is out of disk space. Please retry later.",
                )
            },
            ApiError::BlobStoreUnavailable(_) => Wire {
                retry_after: Some("1"),
                ..w(
                    503,
                    "ServiceUnavailable",
                    "The blob store is unavailable. Please retry.",
                )
            },
            ApiError::MetaUnavailable(_) => Wire {
                retry_after: Some("1"),
                ..w(
                    503,
                    "ServiceUnavailable",
                    "The metadata database is unavailable. Please retry.",
                )
            },
            ApiError::InvalidRequest(m) => w(400, "InvalidRequest", *m),
            ApiError::InvalidArgument(m) => w(400, "InvalidArgument", m.clone()),
            ApiError::BadDigest => w(
                400,
                "BadDigest",
                "The Content-MD5 you specified did not match what we received.",
            ),
            ApiError::InvalidRange => w(
                416,
                "InvalidRange",
                "The requested range is not satisfiable",
            ),
            ApiError::InvalidPart => w(
                400,
                "InvalidPart",
                "One or more of the specified parts could not be found.",
            ),
            ApiError::InvalidPartOrder => w(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order.",
            ),
            ApiError::EntityTooSmall => w(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
            ),
            ApiError::EntityTooLarge => w(400, "EntityTooLarge", TOO_LARGE_MESSAGE),
            ApiError::SignatureDoesNotMatch => w(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            ),
            ApiError::InvalidAccessKeyId => w(
                403,
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.",
            ),
            ApiError::MethodNotAllowed => w(
                405,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            ),
            ApiError::MalformedXml => w(
                400,
                "MalformedXML",
                "The XML you provided was not well-formed or did not validate against our published schema.",
            ),
            ApiError::MetadataTooLarge => w(
                400,
                "MetadataTooLarge",
                "Your metadata headers exceed the maximum allowed metadata size.",
            ),
            ApiError::PreconditionFailed => w(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            ),
            ApiError::NotModified { .. } => w(304, "NotModified", "Not Modified"),
            ApiError::NoEncryptionConfig => w(
                404,
                "ServerSideEncryptionConfigurationNotFoundError",
                "The server side encryption configuration was not found",
            ),
            ApiError::IncompleteBody => w(
                400,
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header.",
            ),
            ApiError::Refused(r) => refusal_wire(r),
            ApiError::Form(f) => form_wire(f),
            ApiError::Db(_) | ApiError::Internal(_) => w(500, "InternalError", INTERNAL_MESSAGE),
        }
    }

    /// The answer's extra headers: `Retry-After`, and a 304's validators (RFC 7232 4.1).
    fn headers(&self, wire: &Wire) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(secs) = wire.retry_after {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        if let ApiError::NotModified {
            etag,
            last_modified_ms,
        } = self
        {
            if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
                h.insert(http::header::ETAG, v);
            }
            let mut date = Vec::new();
            if super::common::ts(*last_modified_ms)
                .format(s3s::dto::TimestampFormat::HttpDate, &mut date)
                .is_ok()
                && let Ok(v) = HeaderValue::from_bytes(&date)
            {
                h.insert(http::header::LAST_MODIFIED, v);
            }
        }
        h
    }

    /// Log what the answer does not say (internal causes, a full disk).
    fn log(&self) {
        match self {
            ApiError::Db(e) => {
                tracing::error!(error = %e, source = ?e.source(), "metadata database error")
            }
            ApiError::Internal(cause) => tracing::error!(%cause, "internal error"),
            ApiError::DiskFull(cause) => tracing::warn!(%cause, "write refused: disk full"),
            ApiError::BlobStoreUnavailable(cause) => {
                tracing::warn!(%cause, "blob store unavailable")
            }
            ApiError::MetaUnavailable(cause) => {
                tracing::warn!(%cause, "metadata database unavailable")
            }
            ApiError::Form(f) => {
                if let FormError::Write(e) = &**f {
                    e.log();
                }
            }
            _ => {}
        }
    }

    /// The error that decides the answer's side effects (a form's write error is its own).
    fn innermost(&self) -> &ApiError {
        match self {
            ApiError::Form(f) => match &**f {
                FormError::Write(e) => e.innermost(),
                _ => self,
            },
            _ => self,
        }
    }
}
/// A form's authentication or policy refusal (AWS wording).
fn post_wire(p: &PostError) -> Wire {
    let (status, code, message): (u16, &'static str, String) = match p {
            PostError::SigV2 => (
                400,
                "InvalidRequest",
                crate::auth_gate::SIGV2_MESSAGE.into(),
            ),
            PostError::Anonymous => (403, "AccessDenied", "Access Denied".into()),
            PostError::MissingField(f) => (
                400,
                "InvalidArgument",
                format!(
                    "Bucket POST must contain a field named '{f}'.  If it is specified, please check the order of the fields."
                ),
            ),
            PostError::Algorithm => (
                400,
                "InvalidArgument",
                "Only the AWS4-HMAC-SHA256 algorithm is supported for x-amz-algorithm.".into(),
            ),
            PostError::Malformed(f) => (400, "InvalidArgument", format!("Invalid {f} field.")),
            PostError::Region { got, expected } => (
                400,
                "AuthorizationQueryParametersError",
                format!(
                    "Error parsing the X-Amz-Credential parameter; the region '{}' is wrong; expecting '{expected}'",
                    got.chars().take(64).collect::<String>()
                ),
            ),
            PostError::AccessKey => (
                403,
                "InvalidAccessKeyId",
                "The AWS Access Key Id you provided does not exist in our records.".into(),
            ),
            PostError::Signature => (
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.".into(),
            ),
            PostError::PolicyDocument(why) => (
                400,
                "InvalidPolicyDocument",
                format!("Invalid Policy: {why}"),
            ),
            PostError::Expired => (
                403,
                "AccessDenied",
                "Invalid according to Policy: Policy expired.".into(),
            ),
            PostError::Condition(c) => (
                403,
                "AccessDenied",
                format!("Invalid according to Policy: Policy Condition failed: {c}"),
            ),
            PostError::ExtraField(f) => (
                403,
                "AccessDenied",
                format!("Invalid according to Policy: Extra input fields: {f}"),
            ),
        };
    w(status, code, message)
}

/// A form POST's refusal.
fn form_wire(f: &FormError) -> Wire {
    let (status, code, message): (u16, &'static str, String) = match f {
        FormError::Malformed => (
            400,
            "MalformedPOSTRequest",
            "The body of your POST request is not well-formed multipart/form-data.".into(),
        ),
        FormError::NoFile => (
            400,
            "IncorrectNumberOfFilesInPostRequest",
            "POST requires exactly one file upload per request.".into(),
        ),
        FormError::PreDataTooLarge => (
            400,
            "MaxPostPreDataLengthExceededError",
            "Your POST request fields preceding the upload file were too large.".into(),
        ),
        FormError::BadField => (
            400,
            "InvalidArgument",
            "A form field is not a valid header name or value.".into(),
        ),
        FormError::BadExpires => (
            400,
            "InvalidArgument",
            "The Expires field is not an HTTP date.".into(),
        ),
        FormError::EmptyKey => (
            400,
            "InvalidArgument",
            "User key must have a length greater than 0.".into(),
        ),
        FormError::TooLarge => (
            400,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size".into(),
        ),
        FormError::TooSmall => (
            400,
            "EntityTooSmall",
            "Your proposed upload is smaller than the minimum allowed size".into(),
        ),
        FormError::Post(p) => return post_wire(p),
        FormError::Write(e) => return e.wire(),
    };
    w(status, code, message)
}

/// The auth gate's refusals (AWS codes, statuses, messages; see docs/s3-compat.md).
fn refusal_wire(r: &Refusal) -> Wire {
    let (status, code, message): (u16, &'static str, String) = match r {
        Refusal::SigV2 => (400, "InvalidRequest", SIGV2_MESSAGE.to_string()),
        Refusal::QueryParameters(m) => (400, "AuthorizationQueryParametersError", m.clone()),
        Refusal::Expired => (403, "AccessDenied", "Request has expired".to_string()),
        Refusal::HeaderRegion { got, expected } => (
            400,
            "AuthorizationHeaderMalformed",
            format!(
                "The authorization header is malformed; the region '{}' is wrong; expecting '{expected}'",
                shown(got)
            ),
        ),
        Refusal::QueryRegion { got, expected } => (
            400,
            "AuthorizationQueryParametersError",
            format!(
                "Error parsing the X-Amz-Credential parameter; the region '{}' is wrong; expecting '{expected}'",
                shown(got)
            ),
        ),
    };
    let region = match r {
        Refusal::HeaderRegion { expected, .. } | Refusal::QueryRegion { expected, .. } => {
            Some(expected.clone())
        }
        Refusal::SigV2 | Refusal::QueryParameters(_) | Refusal::Expired => None,
    };
    Wire {
        region,
        ..w(status, code, message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if disk::db_is_full(&e) {
            return ApiError::DiskFull(format!("metadata: {e}"));
        }
        if crate::store::db::is_unreachable(&e) {
            return ApiError::MetaUnavailable(e.to_string());
        }
        if crate::store::db::is_unstorable_text(&e) {
            return ApiError::InvalidArgument(
                "The name or value contains a character the metadata database cannot store (U+0000)."
                    .into(),
            );
        }
        ApiError::Db(e)
    }
}

/// Why a request body stream failed, from its error chain: the size cap
/// (`http_body_util::Limited`) is EntityTooLarge, a bad aws-chunked chunk signature is
/// SignatureDoesNotMatch, anything else (the client went away, a stall, a truncated body) is
/// IncompleteBody. s3s's chunk decoder error is not a public type and wraps what it reads
/// without exposing it as a source, so its variants are recognised by their text.
fn body_error(e: &(dyn StdError + 'static)) -> ApiError {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return ApiError::EntityTooLarge;
        }
        let text = err.to_string();
        if text.starts_with("AwsChunkedStreamError: SignatureMismatch") {
            return ApiError::SignatureDoesNotMatch;
        }
        if text.contains("length limit exceeded") {
            return ApiError::EntityTooLarge;
        }
        cur = err.source();
    }
    ApiError::IncompleteBody
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::LengthMismatch { .. } => ApiError::IncompleteBody,
            BlobError::DigestMismatch => ApiError::BadDigest,
            BlobError::Body(b) => {
                let e = body_error(&*b);
                tracing::debug!(error = %b, answer = ?e, "request body failed");
                e
            }
            BlobError::Io(e) if disk::io_is_full(&e) => ApiError::DiskFull(format!("blob: {e}")),
            BlobError::Io(e) => ApiError::Internal(format!("blob: {e}")),
            BlobError::Format(e) => ApiError::Internal(format!("blob format: {e}")),
            BlobError::Backend(e) => ApiError::BlobStoreUnavailable(e),
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

impl ApiError {
    /// An error from a call under the named KMS key `key` (SSE-KMS): the KMS's key-state codes
    /// become AWS's `KMS.*` errors, an identity outside the key's scope is AccessDenied, and
    /// everything else maps as any KMS failure (unreachable, sealed or throttled: 503).
    pub(crate) fn from_named_kms(e: KmsError, key: &str) -> Self {
        if let KmsError::Refused { code, .. } = &e {
            let problem = match code.as_str() {
                "kms_key_not_found" => Some(KmsKeyProblem::NotFound),
                "kms_key_disabled" => Some(KmsKeyProblem::Disabled),
                "kms_key_invalid_state" => Some(KmsKeyProblem::InvalidState),
                "forbidden_scope" => return ApiError::AccessDenied,
                _ => None,
            };
            if let Some(p) = problem {
                return ApiError::KmsKey(p, key.to_string());
            }
        }
        e.into()
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

impl From<FormError> for ApiError {
    fn from(e: FormError) -> Self {
        match e {
            FormError::Write(e) => e,
            other => ApiError::Form(Box::new(other)),
        }
    }
}

/// Account for an error about to be answered: log what the answer does not say, and mark the
/// data dir full on a full disk (for `/ready`).
pub(crate) fn note(state: &crate::state::NodeState, e: &ApiError) {
    e.log();
    if let ApiError::DiskFull(_) = e.innermost() {
        state.blobs.disk().mark_full();
    }
}

/// The S3 error s3s answers for `e` (status, code, message and headers from [`ApiError::wire`]).
impl From<ApiError> for S3Error {
    fn from(e: ApiError) -> Self {
        let wire = e.wire();
        let code =
            S3ErrorCode::from_bytes(wire.code.as_bytes()).unwrap_or(S3ErrorCode::InternalError);
        let mut err = S3Error::with_message(code, wire.message.clone());
        err.set_status_code(wire.status);
        let headers = e.headers(&wire);
        if !headers.is_empty() {
            err.set_headers(headers);
        }
        if let ApiError::Db(source) = e {
            err.set_source(Box::new(source));
        }
        err
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// `e` as a ready S3 XML answer, for refusals made outside s3s (`Resource` and `RequestId` are
/// added by `crate::error_body`).
pub(crate) fn http_response(e: &ApiError) -> axum::response::Response {
    let wire = e.wire();
    let region = wire
        .region
        .as_deref()
        .map(|r| format!("<Region>{}</Region>", xml_escape(r)))
        .unwrap_or_default();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>{}</Message>{region}</Error>",
        wire.code,
        xml_escape(&wire.message)
    );
    let mut resp = axum::response::Response::new(axum::body::Body::from(body));
    *resp.status_mut() = wire.status;
    let mut headers = e.headers(&wire);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp.headers_mut().extend(headers);
    resp
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The variant's position; a `match` with no catch-all, so a new variant does not compile
    /// until it is added here, and the table test then fails until it is in the table.
    fn variant(e: &ApiError) -> usize {
        match e {
            ApiError::NoSuchBucket => 0,
            ApiError::NoSuchKey => 1,
            ApiError::NoSuchUpload => 2,
            ApiError::NoSuchVersion => 3,
            ApiError::BucketNotEmpty => 4,
            ApiError::InvalidBucketName => 5,
            ApiError::Sse(_) => 6,
            ApiError::SseCKeyRequired => 7,
            ApiError::SseCNotApplicable => 8,
            ApiError::AccessDenied => 9,
            ApiError::PartEncryptionRequired => 10,
            ApiError::KmsKey(..) => 11,
            ApiError::NotImplemented(_) => 12,
            ApiError::NoKms => 13,
            ApiError::KmsUnavailable(_) => 14,
            ApiError::DiskFull(_) => 15,
            ApiError::InvalidRequest(_) => 16,
            ApiError::InvalidArgument(_) => 17,
            ApiError::BadDigest => 18,
            ApiError::InvalidRange => 19,
            ApiError::InvalidPart => 20,
            ApiError::InvalidPartOrder => 21,
            ApiError::EntityTooSmall => 22,
            ApiError::EntityTooLarge => 23,
            ApiError::SignatureDoesNotMatch => 24,
            ApiError::InvalidAccessKeyId => 25,
            ApiError::MethodNotAllowed => 26,
            ApiError::MalformedXml => 27,
            ApiError::MetadataTooLarge => 36,
            ApiError::PreconditionFailed => 28,
            ApiError::NotModified { .. } => 29,
            ApiError::NoEncryptionConfig => 30,
            ApiError::IncompleteBody => 31,
            ApiError::Refused(_) => 32,
            ApiError::Form(_) => 33,
            ApiError::Db(_) => 34,
            ApiError::Internal(_) => 35,
            ApiError::BlobStoreUnavailable(_) => 37,
            ApiError::MetaUnavailable(_) => 38,
        }
    }
    const VARIANTS: usize = 39;

    fn form(f: FormError) -> ApiError {
        ApiError::from(f)
    }

    /// Every error the node answers: (error, status, code, Retry-After), AWS values.
    fn table() -> Vec<(ApiError, u16, &'static str, Option<&'static str>)> {
        let region = || ("eu-west-1".to_string(), "us-east-1".to_string());
        vec![
            (ApiError::NoSuchBucket, 404, "NoSuchBucket", None),
            (ApiError::NoSuchKey, 404, "NoSuchKey", None),
            (ApiError::NoSuchUpload, 404, "NoSuchUpload", None),
            (ApiError::NoSuchVersion, 404, "NoSuchVersion", None),
            (ApiError::BucketNotEmpty, 409, "BucketNotEmpty", None),
            (ApiError::InvalidBucketName, 400, "InvalidBucketName", None),
            (
                ApiError::Sse(SseError::InsecureTransport),
                400,
                "InvalidRequest",
                None,
            ),
            (
                ApiError::Sse(SseError::BadAlgorithm),
                400,
                "InvalidEncryptionAlgorithmError",
                None,
            ),
            (
                ApiError::Sse(SseError::BadKey),
                400,
                "InvalidArgument",
                None,
            ),
            (ApiError::SseCKeyRequired, 400, "InvalidRequest", None),
            (ApiError::SseCNotApplicable, 400, "InvalidRequest", None),
            (ApiError::AccessDenied, 403, "AccessDenied", None),
            (
                ApiError::PartEncryptionRequired,
                400,
                "InvalidRequest",
                None,
            ),
            (
                ApiError::KmsKey(KmsKeyProblem::NotFound, "alias/x".into()),
                400,
                "KMS.NotFoundException",
                None,
            ),
            (
                ApiError::KmsKey(KmsKeyProblem::Disabled, "k".into()),
                400,
                "KMS.DisabledException",
                None,
            ),
            (
                ApiError::KmsKey(KmsKeyProblem::InvalidState, "k".into()),
                400,
                "KMS.KMSInvalidStateException",
                None,
            ),
            (
                ApiError::Sse(SseError::BadKmsContext),
                400,
                "InvalidArgument",
                None,
            ),
            (
                ApiError::Sse(SseError::KmsInsecureTransport),
                400,
                "InvalidRequest",
                None,
            ),
            (ApiError::NotImplemented("x"), 501, "NotImplemented", None),
            (ApiError::NoKms, 501, "NotImplemented", None),
            (
                ApiError::KmsUnavailable("down".into()),
                503,
                "ServiceUnavailable",
                Some("1"),
            ),
            (
                ApiError::DiskFull("cause".into()),
                503,
                "ServiceUnavailable",
                Some("10"),
            ),
            (
                ApiError::BlobStoreUnavailable("timeout".into()),
                503,
                "ServiceUnavailable",
                Some("1"),
            ),
            (
                ApiError::MetaUnavailable("connection refused".into()),
                503,
                "ServiceUnavailable",
                Some("1"),
            ),
            (ApiError::InvalidRequest("x"), 400, "InvalidRequest", None),
            (
                ApiError::InvalidArgument("x".into()),
                400,
                "InvalidArgument",
                None,
            ),
            (ApiError::BadDigest, 400, "BadDigest", None),
            (ApiError::InvalidRange, 416, "InvalidRange", None),
            (ApiError::InvalidPart, 400, "InvalidPart", None),
            (ApiError::InvalidPartOrder, 400, "InvalidPartOrder", None),
            (ApiError::EntityTooSmall, 400, "EntityTooSmall", None),
            (ApiError::EntityTooLarge, 400, "EntityTooLarge", None),
            (
                ApiError::SignatureDoesNotMatch,
                403,
                "SignatureDoesNotMatch",
                None,
            ),
            (
                ApiError::InvalidAccessKeyId,
                403,
                "InvalidAccessKeyId",
                None,
            ),
            (ApiError::MethodNotAllowed, 405, "MethodNotAllowed", None),
            (ApiError::MalformedXml, 400, "MalformedXML", None),
            (ApiError::MetadataTooLarge, 400, "MetadataTooLarge", None),
            (
                ApiError::PreconditionFailed,
                412,
                "PreconditionFailed",
                None,
            ),
            (
                ApiError::NotModified {
                    etag: "e".into(),
                    last_modified_ms: 0,
                },
                304,
                "NotModified",
                None,
            ),
            (
                ApiError::NoEncryptionConfig,
                404,
                "ServerSideEncryptionConfigurationNotFoundError",
                None,
            ),
            (ApiError::IncompleteBody, 400, "IncompleteBody", None),
            (
                ApiError::Refused(Refusal::SigV2),
                400,
                "InvalidRequest",
                None,
            ),
            (
                ApiError::Refused(Refusal::QueryParameters("x".into())),
                400,
                "AuthorizationQueryParametersError",
                None,
            ),
            (
                ApiError::Refused(Refusal::Expired),
                403,
                "AccessDenied",
                None,
            ),
            (
                ApiError::Refused(Refusal::HeaderRegion {
                    got: region().0,
                    expected: region().1,
                }),
                400,
                "AuthorizationHeaderMalformed",
                None,
            ),
            (
                ApiError::Refused(Refusal::QueryRegion {
                    got: region().0,
                    expected: region().1,
                }),
                400,
                "AuthorizationQueryParametersError",
                None,
            ),
            (
                form(FormError::Malformed),
                400,
                "MalformedPOSTRequest",
                None,
            ),
            (
                form(FormError::NoFile),
                400,
                "IncorrectNumberOfFilesInPostRequest",
                None,
            ),
            (
                form(FormError::PreDataTooLarge),
                400,
                "MaxPostPreDataLengthExceededError",
                None,
            ),
            (form(FormError::BadField), 400, "InvalidArgument", None),
            (form(FormError::BadExpires), 400, "InvalidArgument", None),
            (form(FormError::EmptyKey), 400, "InvalidArgument", None),
            (form(FormError::TooLarge), 400, "EntityTooLarge", None),
            (form(FormError::TooSmall), 400, "EntityTooSmall", None),
            (
                form(FormError::Post(PostError::SigV2)),
                400,
                "InvalidRequest",
                None,
            ),
            (
                form(FormError::Post(PostError::Anonymous)),
                403,
                "AccessDenied",
                None,
            ),
            (
                form(FormError::Post(PostError::MissingField("key"))),
                400,
                "InvalidArgument",
                None,
            ),
            (
                form(FormError::Post(PostError::Algorithm)),
                400,
                "InvalidArgument",
                None,
            ),
            (
                form(FormError::Post(PostError::Malformed("x"))),
                400,
                "InvalidArgument",
                None,
            ),
            (
                form(FormError::Post(PostError::Region {
                    got: region().0,
                    expected: region().1,
                })),
                400,
                "AuthorizationQueryParametersError",
                None,
            ),
            (
                form(FormError::Post(PostError::AccessKey)),
                403,
                "InvalidAccessKeyId",
                None,
            ),
            (
                form(FormError::Post(PostError::Signature)),
                403,
                "SignatureDoesNotMatch",
                None,
            ),
            (
                form(FormError::Post(PostError::PolicyDocument("x"))),
                400,
                "InvalidPolicyDocument",
                None,
            ),
            (
                form(FormError::Post(PostError::Expired)),
                403,
                "AccessDenied",
                None,
            ),
            (
                form(FormError::Post(PostError::Condition("c".into()))),
                403,
                "AccessDenied",
                None,
            ),
            (
                form(FormError::Post(PostError::ExtraField("f".into()))),
                403,
                "AccessDenied",
                None,
            ),
            // A form's write error is answered as the PUT would be (Retry-After included).
            (
                ApiError::Form(Box::new(FormError::Write(ApiError::KmsUnavailable(
                    "d".into(),
                )))),
                503,
                "ServiceUnavailable",
                Some("1"),
            ),
            (
                ApiError::Db(sqlx::Error::PoolClosed),
                500,
                "InternalError",
                None,
            ),
            (
                ApiError::Internal("cause".into()),
                500,
                "InternalError",
                None,
            ),
        ]
    }

    /// Every variant's (status, code, Retry-After), through both ways an error leaves the node:
    /// s3s's `S3Error` and the XML answer made before s3s.
    #[test]
    fn error_table() {
        let mut seen = [false; VARIANTS];
        for (e, status, code, retry_after) in table() {
            let what = format!("{e:?}");
            seen[variant(&e)] = true;
            let wire = e.wire();
            assert_eq!(
                (wire.status.as_u16(), wire.code, wire.retry_after),
                (status, code, retry_after),
                "{what}"
            );
            assert!(
                !wire.message.contains("cause") && !wire.message.is_empty(),
                "internal causes are not answered: {what}"
            );
            let resp = http_response(&e);
            assert_eq!(resp.status().as_u16(), status, "{what}");
            assert_eq!(
                resp.headers()
                    .get(http::header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap_or_default()),
                retry_after,
                "{what}"
            );
            let s3 = S3Error::from(e);
            assert_eq!(s3.code().as_str(), code, "{what}");
            assert_eq!(s3.status_code().map(|s| s.as_u16()), Some(status), "{what}");
            assert_eq!(
                s3.headers()
                    .and_then(|h| h.get(http::header::RETRY_AFTER))
                    .map(|v| v.to_str().unwrap_or_default()),
                retry_after,
                "{what}"
            );
        }
        let missing: Vec<usize> = (0..VARIANTS).filter(|i| !seen[*i]).collect();
        assert!(missing.is_empty(), "variants not in the table: {missing:?}");
    }

    #[test]
    fn not_modified_carries_validators() {
        let s3 = S3Error::from(ApiError::NotModified {
            etag: "abc".into(),
            last_modified_ms: 1_000,
        });
        let h = s3.headers().expect("headers");
        assert_eq!(h[http::header::ETAG], "\"abc\"");
        assert_eq!(
            h[http::header::LAST_MODIFIED],
            "Thu, 01 Jan 1970 00:00:01 GMT"
        );
    }

    #[test]
    fn database_errors_keep_their_source() {
        let e = ApiError::from(sqlx::Error::RowNotFound);
        assert!(matches!(e, ApiError::Db(_)));
        assert!(e.source().is_some());
        let s3 = S3Error::from(e);
        assert_eq!(s3.code().as_str(), "InternalError");
        assert!(s3.source().is_some());
    }

    #[test]
    fn region_refusals_name_the_expected_region() {
        let e = ApiError::Refused(Refusal::HeaderRegion {
            got: "eu-west-1".into(),
            expected: "us-east-1".into(),
        });
        assert_eq!(e.wire().region.as_deref(), Some("us-east-1"));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("AwsChunkedStreamError: SignatureMismatch")]
    struct ChunkSignature;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] BoxedError);
    type BoxedError = Box<dyn StdError + Send + Sync>;

    /// Body-stream failures stay typed on the way up.
    #[tokio::test]
    async fn body_stream_failures_keep_their_kind() {
        use http_body_util::BodyExt;
        let over = http_body_util::Limited::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"0123456789")),
            4,
        )
        .collect()
        .await
        .expect_err("over the cap");
        let cases: Vec<(BoxedError, &str)> = vec![
            (over, "EntityTooLarge"),
            (Box::new(ChunkSignature), "SignatureDoesNotMatch"),
            (
                Box::new(Wrapped(Box::new(ChunkSignature))),
                "SignatureDoesNotMatch",
            ),
            (
                Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "reset",
                )),
                "IncompleteBody",
            ),
        ];
        for (b, code) in cases {
            let what = b.to_string();
            let e = ApiError::from(BlobError::Body(b));
            assert_eq!(e.wire().code, code, "{what}");
        }
        let short = ApiError::from(BlobError::LengthMismatch { got: 1, want: 2 });
        assert_eq!(short.wire().code, "IncompleteBody");
    }

    /// The KMS's named-key codes become AWS's answers; none is a 500.
    #[test]
    fn named_kms_refusals_map_to_aws_codes() {
        let refused = |status: u16, code: &str| KmsError::Refused {
            status,
            code: code.into(),
        };
        for (e, status, code) in [
            (
                refused(404, "kms_key_not_found"),
                400,
                "KMS.NotFoundException",
            ),
            (
                refused(409, "kms_key_disabled"),
                400,
                "KMS.DisabledException",
            ),
            (
                refused(409, "kms_key_invalid_state"),
                400,
                "KMS.KMSInvalidStateException",
            ),
            (refused(403, "forbidden_scope"), 403, "AccessDenied"),
            (refused(503, "sealed"), 503, "ServiceUnavailable"),
            (refused(429, "throttled"), 503, "ServiceUnavailable"),
            (refused(500, "internal"), 503, "ServiceUnavailable"),
            (refused(502, "unknown"), 503, "ServiceUnavailable"),
            (refused(401, "invalid_token"), 500, "InternalError"),
            (
                KmsError::Unavailable("reset".into()),
                503,
                "ServiceUnavailable",
            ),
        ] {
            let wire = ApiError::from_named_kms(e.clone(), "alias/k").wire();
            assert_eq!((wire.status.as_u16(), wire.code), (status, code), "{e:?}");
        }
        let wire = ApiError::from_named_kms(refused(404, "kms_key_not_found"), "alias/k").wire();
        assert_eq!(wire.message, "Alias alias/k is not found.");
    }
}
