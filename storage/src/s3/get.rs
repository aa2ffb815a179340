//! GetObject, HeadObject and GetObjectAttributes: resolve the visible version, evaluate the
//! conditional headers, then stream the requested plaintext range (or part) from its blobs.
//! Secret: the opened object key lives for the request only. Read-only.

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::common;
use super::encryption::{self, EncryptionParams};
use super::errors::{ApiError, ApiResult};
use super::object::{ContentHeaders, Resolved, metadata_from_json, part_range, resolve};
use crate::state::NodeState;
use crate::store::meta::Object;
use crate::store::objects;

/// The stored Content-Type, or S3's default for objects written without one.
fn stored_content_type(obj: &Object) -> Option<ContentType> {
    obj.content_type
        .as_deref()
        .unwrap_or("binary/octet-stream")
        .parse()
        .ok()
}

fn check_conditions(
    obj: &Object,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    ims: Option<&Timestamp>,
    ius: Option<&Timestamp>,
) -> ApiResult<()> {
    let matches = |c: &ETagCondition| super::precondition::etag_matches(c, &obj.etag);
    let lm = common::modified_secs(obj.last_modified_ms);
    let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(ApiError::PreconditionFailed);
        }
    } else if let Some(t) = ius
        && lm > secs(t)
    {
        return Err(ApiError::PreconditionFailed);
    }
    let not_modified = || ApiError::NotModified {
        etag: obj.etag.clone(),
        last_modified_ms: obj.last_modified_ms,
    };
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(not_modified());
        }
    } else if let Some(t) = ims
        && lm <= secs(t)
    {
        return Err(not_modified());
    }
    Ok(())
}

/// What GET and HEAD name in their requests before answering.
struct Preamble<'a> {
    bucket: &'a str,
    key: &'a str,
    version_id: Option<&'a str>,
    part_number: Option<i32>,
    has_range: bool,
    if_match: Option<&'a ETagCondition>,
    if_none_match: Option<&'a ETagCondition>,
    if_modified_since: Option<&'a Timestamp>,
    if_unmodified_since: Option<&'a Timestamp>,
    /// GET (true) or HEAD (false): HEAD does not open an SSE-KMS object's key.
    reads_data: bool,
}

/// The preamble GET and HEAD share: the SSE-C trio, Range and partNumber not both, the
/// visible version resolved (its key opened), then the conditional headers.
async fn read_preamble(
    state: &NodeState,
    headers: &http::HeaderMap,
    p: Preamble<'_>,
    request_id: &str,
) -> ApiResult<Resolved> {
    let customer = encryption::read_key_refusing_kms(state, headers)?;
    if p.part_number.is_some() && p.has_range {
        return Err(ApiError::InvalidRequest(
            "Cannot specify both Range header and partNumber query parameter.",
        ));
    }
    let r = resolve(
        state,
        p.bucket,
        p.key,
        p.version_id,
        customer,
        p.part_number,
        request_id,
        p.reads_data,
    )
    .await?;
    check_conditions(
        &r.obj,
        p.if_match,
        p.if_none_match,
        p.if_modified_since,
        p.if_unmodified_since,
    )?;
    Ok(r)
}

pub(crate) async fn get_object(
    state: &NodeState,
    req: S3Request<GetObjectInput>,
    request_id: &str,
) -> ApiResult<S3Response<GetObjectOutput>> {
    let input = req.input;
    let r = read_preamble(
        state,
        &req.headers,
        Preamble {
            bucket: &input.bucket,
            key: &input.key,
            version_id: input.version_id.as_deref(),
            part_number: input.part_number,
            has_range: input.range.is_some(),
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
            reads_data: true,
        },
        request_id,
    )
    .await?;
    let size = r.obj.size;
    let range = match (input.part_number, input.range.as_ref()) {
        (Some(n), _) if r.obj.multipart || n != 1 => {
            let (s, e, len) = part_range(&r.parts, n).ok_or(ApiError::InvalidPart)?;
            if len == 0 { None } else { Some((s, e)) }
        }
        (_, Some(rg)) => Some(common::resolve_range(rg, size)?),
        _ => None,
    };
    let body = objects::read_range(&state.blobs, &r.parts, r.key.as_ref().into(), range).await?;
    let content_length = range.map_or(size, |(s, e)| e - s + 1);
    let headers: ContentHeaders = serde_json::from_str(&r.obj.headers).unwrap_or_default();
    let stored_expires = headers.expires();
    let enc = EncryptionParams::new(&r.obj.sse, r.customer_md5.as_deref());
    let sums = checksums_for(
        input.checksum_mode.as_ref(),
        range.is_some() || input.part_number.is_some(),
        &headers,
    );
    let out = GetObjectOutput {
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        body: Some(StreamingBlob::wrap(sync_wrapper::SyncStream::new(body))),
        content_length: Some(content_length as i64),
        content_range: range.map(|(s, e)| format!("bytes {s}-{e}/{size}")),
        accept_ranges: Some("bytes".into()),
        e_tag: Some(ETag::Strong(r.obj.etag.clone())),
        last_modified: Some(common::ts(r.obj.last_modified_ms)),
        content_type: input
            .response_content_type
            .clone()
            .or_else(|| stored_content_type(&r.obj)),
        cache_control: input
            .response_cache_control
            .clone()
            .or(headers.cache_control),
        content_disposition: input
            .response_content_disposition
            .clone()
            .or(headers.content_disposition),
        content_encoding: input
            .response_content_encoding
            .clone()
            .or(headers.content_encoding),
        content_language: input
            .response_content_language
            .clone()
            .or(headers.content_language),
        expires: input.response_expires.clone().or(stored_expires),
        metadata: metadata_from_json(&r.obj.metadata),
        parts_count: if r.obj.multipart && input.part_number.is_some() {
            Some(r.obj.part_count as i32)
        } else {
            None
        },
        server_side_encryption: enc.server_side_encryption(),
        ssekms_key_id: enc.kms_key_id(),
        bucket_key_enabled: enc.bucket_key_enabled(),
        sse_customer_algorithm: enc.customer_algorithm(),
        sse_customer_key_md5: enc.customer_key_md5(),
        ..Default::default()
    };
    let mut resp = S3Response::new(out);
    if range.is_some() {
        resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
    }
    Ok(resp)
}

pub(crate) async fn head_object(
    state: &NodeState,
    req: S3Request<HeadObjectInput>,
    request_id: &str,
) -> ApiResult<S3Response<HeadObjectOutput>> {
    let input = req.input;
    let r = read_preamble(
        state,
        &req.headers,
        Preamble {
            bucket: &input.bucket,
            key: &input.key,
            version_id: input.version_id.as_deref(),
            part_number: input.part_number,
            has_range: input.range.is_some(),
            if_match: input.if_match.as_ref(),
            if_none_match: input.if_none_match.as_ref(),
            if_modified_since: input.if_modified_since.as_ref(),
            if_unmodified_since: input.if_unmodified_since.as_ref(),
            reads_data: false,
        },
        request_id,
    )
    .await?;
    let mut len = r.obj.size;
    let mut content_range = None;
    if let Some(n) = input.part_number.filter(|_| r.obj.multipart) {
        let (s, e, l) = part_range(&r.parts, n).ok_or(ApiError::InvalidPart)?;
        len = l;
        content_range = Some(format!("bytes {s}-{e}/{}", r.obj.size));
    } else if let Some(rg) = input.range.as_ref() {
        let (s, e) = common::resolve_range(rg, r.obj.size)?;
        len = e - s + 1;
        content_range = Some(format!("bytes {s}-{e}/{}", r.obj.size));
    }
    let headers: ContentHeaders = serde_json::from_str(&r.obj.headers).unwrap_or_default();
    let stored_expires = headers.expires();
    let enc = EncryptionParams::new(&r.obj.sse, r.customer_md5.as_deref());
    let sums = checksums_for(
        input.checksum_mode.as_ref(),
        content_range.is_some(),
        &headers,
    );
    Ok(S3Response::new(HeadObjectOutput {
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        content_length: Some(len as i64),
        content_range,
        accept_ranges: Some("bytes".into()),
        e_tag: Some(ETag::Strong(r.obj.etag.clone())),
        last_modified: Some(common::ts(r.obj.last_modified_ms)),
        content_type: stored_content_type(&r.obj),
        cache_control: headers.cache_control,
        content_disposition: headers.content_disposition,
        content_encoding: headers.content_encoding,
        expires: stored_expires,
        content_language: headers.content_language,
        metadata: metadata_from_json(&r.obj.metadata),
        parts_count: if r.obj.multipart {
            Some(r.obj.part_count as i32)
        } else {
            None
        },
        server_side_encryption: enc.server_side_encryption(),
        ssekms_key_id: enc.kms_key_id(),
        bucket_key_enabled: enc.bucket_key_enabled(),
        sse_customer_algorithm: enc.customer_algorithm(),
        sse_customer_key_md5: enc.customer_key_md5(),
        ..Default::default()
    }))
}

pub(crate) async fn get_object_attributes(
    state: &NodeState,
    req: S3Request<GetObjectAttributesInput>,
    request_id: &str,
) -> ApiResult<S3Response<GetObjectAttributesOutput>> {
    let customer = encryption::read_key(state, &req.headers)?;
    let input = req.input;
    let r = resolve(
        state,
        &input.bucket,
        &input.key,
        input.version_id.as_deref(),
        customer,
        None,
        request_id,
        false,
    )
    .await?;
    // The header may arrive as one comma-separated value or as several values.
    let want = |a: &str| {
        input
            .object_attributes
            .iter()
            .flat_map(|x| x.as_str().split(','))
            .any(|x| x.trim() == a)
    };
    let parts = if want(ObjectAttributes::OBJECT_PARTS) && r.obj.multipart {
        // One page of parts after PartNumberMarker, at most MaxParts (1000 by default), as AWS.
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000);
        let marker = input.part_number_marker.unwrap_or(0).max(0);
        let after: Vec<&crate::store::meta::BlobRow> = r
            .parts
            .iter()
            .filter(|p| i64::from(p.part_number) > i64::from(marker))
            .collect();
        let page: Vec<ObjectPart> = after
            .iter()
            .take(usize::try_from(max).unwrap_or(0))
            .map(|p| {
                // The part's checksums verified on upload (issue 11 E21).
                let sums: super::object::StoredChecksums = p
                    .checksums
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok())
                    .unwrap_or_default();
                ObjectPart {
                    part_number: i32::try_from(p.part_number).ok(),
                    size: i64::try_from(p.size).ok(),
                    checksum_crc32: sums.crc32,
                    checksum_crc32c: sums.crc32c,
                    checksum_crc64nvme: sums.crc64nvme,
                    checksum_sha1: sums.sha1,
                    checksum_sha256: sums.sha256,
                }
            })
            .collect();
        let truncated = after.len() > page.len();
        Some(GetObjectAttributesParts {
            total_parts_count: Some(r.obj.part_count as i32),
            max_parts: Some(max),
            part_number_marker: Some(marker),
            is_truncated: Some(truncated),
            next_part_number_marker: page.last().and_then(|p| p.part_number),
            parts: Some(page),
        })
    } else {
        None
    };
    let stored: ContentHeaders = serde_json::from_str(&r.obj.headers).unwrap_or_default();
    let sums = stored.checksums;
    let checksum = (want(ObjectAttributes::CHECKSUM) && !sums.is_empty()).then(|| Checksum {
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        ..Default::default()
    });
    Ok(S3Response::new(GetObjectAttributesOutput {
        checksum,
        e_tag: want(ObjectAttributes::ETAG).then(|| ETag::Strong(r.obj.etag.clone())),
        object_size: want(ObjectAttributes::OBJECT_SIZE).then_some(r.obj.size as i64),
        storage_class: want(ObjectAttributes::STORAGE_CLASS)
            .then(|| StorageClass::from_static(StorageClass::STANDARD)),
        object_parts: parts,
        last_modified: Some(common::ts(r.obj.last_modified_ms)),
        ..Default::default()
    }))
}

/// The stored checksums a HEAD or GET returns: with `x-amz-checksum-mode: ENABLED` and for the
/// whole object only (a range or part has no stored checksum), as AWS.
fn checksums_for(
    mode: Option<&ChecksumMode>,
    partial: bool,
    headers: &ContentHeaders,
) -> super::object::StoredChecksums {
    if partial || mode.is_none_or(|m| m.as_str() != ChecksumMode::ENABLED) {
        return super::object::StoredChecksums::default();
    }
    headers.checksums.clone()
}

/// Largest GetObjectAttributes answer rewritten (1000 parts of a few hundred bytes each).
const MAX_ATTRIBUTES_BODY: usize = 4 * 1024 * 1024;

/// GetObjectAttributes answers its `ETag` unquoted, as AWS does (s3s quotes every ETag it writes
/// in XML): a successful answer's small XML body is rewritten in memory. Plain HTTP.
pub(crate) async fn unquote_attributes_etag(
    resp: axum::response::Response,
) -> axum::response::Response {
    if !resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ATTRIBUTES_BODY).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "GetObjectAttributes body could not be read");
            return axum::response::Response::from_parts(parts, axum::body::Body::empty());
        }
    };
    let Some(text) = std::str::from_utf8(&bytes).ok().and_then(unquote_etag) else {
        return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(text.len()),
    );
    axum::response::Response::from_parts(parts, axum::body::Body::from(text))
}

/// The XML with its first `<ETag>"v"</ETag>` written `<ETag>v</ETag>`; `None` when there is none.
fn unquote_etag(xml: &str) -> Option<String> {
    let start = xml.find("<ETag>\"")? + "<ETag>".len();
    let end = start + xml.get(start..)?.find("</ETag>")?;
    let inner = xml.get(start..end)?;
    let bare = inner.strip_prefix('"')?.strip_suffix('"')?;
    Some(format!("{}{}{}", xml.get(..start)?, bare, xml.get(end..)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unquotes_the_first_etag_only() {
        let x = "<R><ETag>\"ab-2\"</ETag><Parts/></R>";
        assert_eq!(
            super::unquote_etag(x).as_deref(),
            Some("<R><ETag>ab-2</ETag><Parts/></R>")
        );
        assert_eq!(
            super::unquote_etag("<R><ObjectSize>1</ObjectSize></R>"),
            None
        );
    }
}
