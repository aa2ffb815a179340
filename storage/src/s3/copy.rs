//! CopyObject: re-encrypting copies (source decrypted with its key, destination sealed under its
//! own plan) and the self-copy re-seal used for SSE-C key rotation, which changes only the
//! sealed object key (the blob is not rewritten). Conditions: `x-amz-copy-source-if-*` on the
//! source, `If-Match`/`If-None-Match` on the destination (checked again when it is published).

use s3s::dto::*;
use s3s::{S3Request, S3Response};
use subtle::ConstantTimeEq;

use super::common;
use super::encryption::{self, EncryptionParams, WritePlan};
use super::errors::{ApiError, ApiResult};
use super::object::{self, ContentHeaders, bucket_or_404};
use super::precondition;
use crate::crypto::envelope::StoredSse;
use crate::crypto::keys::Binding;
use crate::crypto::sse::CustomerKey;
use crate::state::NodeState;
use crate::store::conditions::WriteCondition;
use crate::store::meta::{self, BlobRow, Bucket, Meta, Object};
use crate::store::objects;
use coffer_common::secret::SecretKey32;

/// Parse `CopySource` into (bucket, key, versionId).
pub(crate) fn copy_source(cs: &CopySource) -> ApiResult<(String, String, Option<String>)> {
    match cs {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => Ok((
            bucket.to_string(),
            key.to_string(),
            version_id.as_deref().map(str::to_string),
        )),
        CopySource::AccessPoint { .. } | CopySource::Outpost { .. } => Err(
            ApiError::InvalidArgument("Access point copy sources are not supported".into()),
        ),
    }
}

/// CopyObject, top to bottom: read the request, resolve and check the source, refuse a copy
/// that changes nothing, then either re-seal in place (an encrypted self-copy) or stream a
/// re-encrypted copy into a new object.
pub(crate) async fn copy_object(
    state: &NodeState,
    req: S3Request<CopyObjectInput>,
    request_id: &str,
) -> ApiResult<S3Response<CopyObjectOutput>> {
    let src_customer = encryption::copy_source_key(state, &req.headers)?;
    let input = req.input;
    let (sb, sk, sv) = copy_source(&input.copy_source)?;
    let dst_bucket = bucket_or_404(state, &input.bucket).await?;
    object::check_new_key(&input.key)?;
    let plan = encryption::plan_write(state, &dst_bucket, &req.headers)?;
    let cond = precondition::write_condition_from_headers(&req.headers)?;
    // Compared before the source trio is consumed: an SSE-C self-copy with the same key changes nothing.
    let same_customer_key = same_customer_key(&plan, src_customer.as_ref());
    let src = object::resolve(
        state,
        &sb,
        &sk,
        sv.as_deref(),
        src_customer,
        None,
        request_id,
        true,
    )
    .await?;
    precondition::check_copy_source(
        &src.obj,
        input.copy_source_if_match.as_ref(),
        input.copy_source_if_none_match.as_ref(),
        input.copy_source_if_modified_since.as_ref(),
        input.copy_source_if_unmodified_since.as_ref(),
    )?;
    precondition::precheck(state, &dst_bucket.name, &input.key, &cond).await?;
    let replace = input
        .metadata_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    let self_copy = sb == input.bucket && sk == input.key;
    if self_copy && !replace && unchanged_encryption(&plan, &src.obj.sse, same_customer_key) {
        return Err(ApiError::InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let attrs = Attributes::of_copy(&input, &src.obj, replace)?;
    let sums = serde_json::from_str::<ContentHeaders>(&attrs.headers)
        .map(|h| h.checksums)
        .unwrap_or_default();
    let dst = Destination {
        state,
        bucket: &dst_bucket,
        key: &input.key,
        plan: &plan,
        request_id,
        now: meta::now_ms(),
    };
    let (etag, sse) = match (self_copy, src.key.as_ref(), &plan) {
        (true, Some(ok), WritePlan::SseS3 | WritePlan::SseC(_) | WritePlan::SseKms(_)) => {
            reseal_in_place(&dst, &src, ok, attrs).await?
        }
        _ => copy_reencrypting(&dst, &src, attrs, &cond).await?,
    };
    let dst_md5 = match &plan {
        WritePlan::SseC(k) => Some(k.key_md5_b64.as_str()),
        _ => None,
    };
    let enc = EncryptionParams::new(&sse, dst_md5);
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(common::ts(dst.now)),
            checksum_crc32: sums.crc32,
            checksum_crc32c: sums.crc32c,
            checksum_crc64nvme: sums.crc64nvme,
            checksum_sha1: sums.sha1,
            checksum_sha256: sums.sha256,
            ..Default::default()
        }),
        server_side_encryption: enc.server_side_encryption(),
        ssekms_key_id: enc.kms_key_id(),
        bucket_key_enabled: enc.bucket_key_enabled(),
        ssekms_encryption_context: enc.kms_context(),
        sse_customer_algorithm: enc.customer_algorithm(),
        sse_customer_key_md5: enc.customer_key_md5(),
        copy_source_version_id: sv,
        ..Default::default()
    }))
}

/// Whether the destination's SSE-C key is the source's (compared in constant time).
fn same_customer_key(plan: &WritePlan, src: Option<&CustomerKey>) -> bool {
    match (plan, src) {
        (WritePlan::SseC(dst), Some(src)) => {
            bool::from(src.key.expose_secret().ct_eq(dst.key.expose_secret()))
        }
        _ => false,
    }
}

/// Whether writing under `plan` keeps the source's encryption as it is.
fn unchanged_encryption(plan: &WritePlan, src: &StoredSse, same_customer_key: bool) -> bool {
    match (plan, src) {
        (WritePlan::Plain, StoredSse::None) | (WritePlan::SseS3, StoredSse::SseS3(..)) => true,
        (WritePlan::SseC(_), StoredSse::SseC(_)) => same_customer_key,
        _ => false,
    }
}

/// The copy's content type, content headers and user metadata: the request's (REPLACE) or the
/// source's (COPY).
struct Attributes {
    content_type: Option<String>,
    headers: String,
    metadata: String,
}

impl Attributes {
    fn of_copy(input: &CopyObjectInput, src: &Object, replace: bool) -> ApiResult<Self> {
        if !replace {
            let headers = match serde_json::from_str::<ContentHeaders>(&src.headers) {
                Ok(mut h) => {
                    h.checksums = copied_checksums(src);
                    h.to_json()
                }
                Err(_) => src.headers.clone(),
            };
            return Ok(Attributes {
                content_type: src.content_type.clone(),
                headers,
                metadata: src.metadata.clone(),
            });
        }
        object::check_metadata(input.metadata.as_ref())?;
        let mut h = ContentHeaders::of(
            &input.cache_control,
            &input.content_disposition,
            &input.content_encoding,
            &input.content_language,
            &input.expires,
        );
        h.checksums = copied_checksums(src);
        Ok(Attributes {
            content_type: input.content_type.as_ref().map(|c| c.to_string()),
            headers: h.to_json(),
            metadata: object::metadata_json(input.metadata.as_ref()),
        })
    }
}

/// The copy's checksums (issue 11 E21): the bytes are the source's, so are their full-object
/// checksums; a multipart composite (`...-N`) describes parts the copy does not have and is
/// not carried (AWS computes a new checksum for the copy).
fn copied_checksums(src: &Object) -> object::StoredChecksums {
    let mut s = serde_json::from_str::<ContentHeaders>(&src.headers)
        .map(|h| h.checksums)
        .unwrap_or_default();
    for v in [
        &mut s.crc32,
        &mut s.crc32c,
        &mut s.crc64nvme,
        &mut s.sha1,
        &mut s.sha256,
    ] {
        if v.as_deref().is_some_and(|x| x.contains('-')) {
            *v = None;
        }
    }
    s
}

/// Where a copy goes.
struct Destination<'a> {
    state: &'a NodeState,
    bucket: &'a Bucket,
    key: &'a str,
    plan: &'a WritePlan,
    request_id: &'a str,
    now: i64,
}

/// Self-copy between encrypted forms: re-seal the object key only (the blob is not rewritten).
/// Answers the new ETag and stored encryption.
async fn reseal_in_place(
    dst: &Destination<'_>,
    src: &object::Resolved,
    ok: &SecretKey32,
    attrs: Attributes,
) -> ApiResult<(String, StoredSse)> {
    let binding = Binding {
        bucket_id: &dst.bucket.id,
        object_key: dst.key,
        version_id: &src.obj.version_id,
    };
    let sse = common::seal_existing(
        dst.state,
        dst.bucket,
        dst.plan,
        &binding,
        ok,
        dst.request_id,
    )
    .await?;
    // An SSE-C or SSE-KMS object's ETag never derives from its plaintext (issue 11 B6):
    // re-sealing an MD5-tagged object under such a key gives it, and its parts, random ETags.
    let (etag, part_etags) = if sse.random_etag() && !src.obj.sse.random_etag() {
        let parts: Vec<(u32, String)> = src
            .parts
            .iter()
            .map(|p| (p.part_number, common::random_etag()))
            .collect();
        let etag = if src.obj.multipart {
            common::multipart_etag(&parts.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>())
        } else {
            common::random_etag()
        };
        (etag, parts)
    } else {
        (src.obj.etag.clone(), Vec::new())
    };
    let updated = Object {
        sse,
        etag,
        content_type: attrs.content_type,
        headers: attrs.headers,
        metadata: attrs.metadata,
        last_modified_ms: dst.now,
        ..src.obj.clone()
    };
    if !dst
        .state
        .meta
        .update_object_in_place(&updated, &part_etags)
        .await?
    {
        return Err(ApiError::NoSuchKey);
    }
    Ok((updated.etag, updated.sse))
}

/// Re-encrypting copy: stream plaintext from the source into a new single-part object,
/// published if `cond` still holds. Answers the new ETag and stored encryption.
async fn copy_reencrypting(
    dst: &Destination<'_>,
    src: &object::Resolved,
    attrs: Attributes,
    cond: &WriteCondition,
) -> ApiResult<(String, StoredSse)> {
    let state = dst.state;
    let version_id = Meta::new_version_id();
    let binding = Binding {
        bucket_id: &dst.bucket.id,
        object_key: dst.key,
        version_id: &version_id,
    };
    // The key first: while the KMS is unavailable this 503s before any row is written.
    let (ok, stored) =
        common::seal_for(state, dst.bucket, dst.plan, &binding, dst.request_id).await?;
    let writing = state
        .meta
        .begin_version(dst.bucket, dst.key, &version_id)
        .await?
        .ok_or(ApiError::NoSuchBucket)?;
    let stream =
        objects::read_range(&state.blobs, &src.parts, src.key.as_ref().into(), None).await?;
    let blob = objects::write_part(
        &state.blobs,
        stream,
        1,
        ok.as_ref().into(),
        Some(src.obj.size),
        EncryptionParams::new(&stored, None).needs_md5(),
        &mut |_| {},
    )
    .await?;
    let etag = EncryptionParams::new(&stored, None).etag(blob.md5.as_ref());
    let obj = Object {
        bucket: dst.bucket.name.clone(),
        key: dst.key.to_string(),
        version_id,
        size: blob.size,
        etag: etag.clone(),
        content_type: attrs.content_type,
        headers: attrs.headers,
        metadata: attrs.metadata,
        last_modified_ms: dst.now,
        sse: stored,
        part_count: 1,
        multipart: false,
    };
    let row = BlobRow {
        part_number: 1,
        size: blob.size,
        etag: etag.clone(),
        file: blob.file.clone(),
        created_ms: dst.now,
        checksums: None,
    };
    objects::publish_single_part_if(&state.meta, &state.blobs, &obj, &row, cond)
        .await?
        .map_err(precondition::failed)?;
    writing.published();
    Ok((etag, obj.sse))
}
