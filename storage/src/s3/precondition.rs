//! Conditional requests as AWS evaluates them (issue 11 E17). Writes: `If-None-Match: *` and
//! `If-Match: <etag>` on PutObject, CopyObject (destination) and CompleteMultipartUpload become a
//! [`WriteCondition`] that the publishing transaction checks (a check here, before the body is
//! read, only fails early). Copy sources: `x-amz-copy-source-if-match`, `-if-none-match`,
//! `-if-modified-since`, `-if-unmodified-since` on CopyObject and UploadPartCopy, every failure
//! answering 412. Reads (GET/HEAD) live in `get`. Nothing secret.

use http::HeaderMap;
use s3s::dto::{ETag, ETagCondition, Timestamp};

use super::common;
use super::errors::{ApiError, ApiResult};
use crate::state::NodeState;
use crate::store::conditions::{ConditionFailed, IfMatch, WriteCondition};
use crate::store::meta::Object;

/// Whether an ETag condition names a stored (unquoted) ETag: `*` names any object, otherwise
/// s3s's weak comparison (AWS matches `W/"x"` as `"x"` in both If-Match and If-None-Match).
pub(crate) fn etag_matches(c: &ETagCondition, etag: &str) -> bool {
    c.is_any()
        || c.as_etag()
            .is_some_and(|e| e.weak_cmp(&ETag::Strong(etag.to_owned())))
}

/// The preconditions of a write. AWS accepts only `*` in `If-None-Match` on a write; another
/// value answers 501 NotImplemented.
pub(crate) fn write_condition(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> ApiResult<WriteCondition> {
    let if_none_match_any = match if_none_match {
        None => false,
        Some(c) if c.is_any() => true,
        Some(_) => {
            return Err(ApiError::NotImplemented(
                "If-None-Match on a write accepts only '*'.",
            ));
        }
    };
    let if_match = match if_match {
        None => None,
        Some(c) if c.is_any() => Some(IfMatch::Any),
        Some(c) => Some(IfMatch::ETag(
            c.as_etag()
                .map(|e| e.value().to_owned())
                .unwrap_or_default(),
        )),
    };
    Ok(WriteCondition {
        if_none_match_any,
        if_match,
    })
}

/// The destination preconditions of a CopyObject (s3s does not parse them for this operation).
pub(crate) fn write_condition_from_headers(h: &HeaderMap) -> ApiResult<WriteCondition> {
    let parse = |name: &str| -> ApiResult<Option<ETagCondition>> {
        h.get(name)
            .map(|v| {
                ETagCondition::parse_http_header(v.as_bytes())
                    .map_err(|_| ApiError::InvalidArgument(format!("Invalid {name} header")))
            })
            .transpose()
    };
    write_condition(
        parse("if-match")?.as_ref(),
        parse("if-none-match")?.as_ref(),
    )
}

/// The answer to a precondition that does not hold (AWS: If-Match on a missing key is 404).
pub(crate) fn failed(f: ConditionFailed) -> ApiError {
    match f {
        ConditionFailed::Exists | ConditionFailed::ETagDiffers => ApiError::PreconditionFailed,
        ConditionFailed::Missing => ApiError::NoSuchKey,
        ConditionFailed::BucketGone => ApiError::NoSuchBucket,
    }
}

/// Fail early, before a body is read, when the preconditions already do not hold.
pub(crate) async fn precheck(
    state: &NodeState,
    bucket: &str,
    key: &str,
    cond: &WriteCondition,
) -> ApiResult<()> {
    if cond.is_none() {
        return Ok(());
    }
    let current = state.meta.object(bucket, key).await?;
    cond.check(current.as_ref().map(|o| o.etag.as_str()))
        .map_err(failed)
}

/// The `x-amz-copy-source-if-*` conditions against the source object. As AWS: when
/// `-if-match` holds, `-if-unmodified-since` is not considered, and when `-if-none-match` holds
/// `-if-modified-since` is not; every failure is 412 PreconditionFailed.
pub(crate) fn check_copy_source(
    src: &Object,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> ApiResult<()> {
    let modified = common::modified_secs(src.last_modified_ms);
    let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    match (if_match, if_unmodified_since) {
        (Some(c), _) if !etag_matches(c, &src.etag) => return Err(ApiError::PreconditionFailed),
        (None, Some(t)) if modified > secs(t) => return Err(ApiError::PreconditionFailed),
        _ => {}
    }
    match (if_none_match, if_modified_since) {
        (Some(c), _) if etag_matches(c, &src.etag) => return Err(ApiError::PreconditionFailed),
        (None, Some(t)) if modified <= secs(t) => return Err(ApiError::PreconditionFailed),
        _ => {}
    }
    Ok(())
}
