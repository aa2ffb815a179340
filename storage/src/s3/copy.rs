//! CopyObject: re-encrypting copies (source decrypted with its key, destination sealed under its
//! own plan) and the self-copy re-seal used for SSE-C key rotation, which changes only the
//! sealed object key (the blob is not rewritten). Conditions: `x-amz-copy-source-if-*` on the
//! source, `If-Match`/`If-None-Match` on the destination (checked again when it is published).

use s3s::dto::*;
use s3s::{S3Request, S3Response};
use subtle::ConstantTimeEq;

use super::common::{self, WritePlan};
use super::errors::{ApiError, ApiResult};
use super::object::{self, ContentHeaders, bucket_or_404};
use super::precondition;
use crate::crypto::envelope::{self, StoredSse};
use crate::crypto::keys::{Binding, SealMode};
use crate::state::NodeState;
use crate::store::meta::{self, BlobRow, Meta, Object};
use crate::store::objects;

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

pub(crate) async fn copy_object(
    state: &NodeState,
    req: S3Request<CopyObjectInput>,
    request_id: &str,
) -> ApiResult<S3Response<CopyObjectOutput>> {
    let src_customer = common::copy_source_key(state, &req.headers)?;
    let input = req.input;
    let (sb, sk, sv) = copy_source(&input.copy_source)?;
    let dst_bucket = bucket_or_404(state, &input.bucket).await?;
    object::check_new_key(&input.key)?;
    let plan = common::plan_write(state, &dst_bucket, &req.headers)?;
    let cond = precondition::write_condition_from_headers(&req.headers)?;
    // Compared before the source trio is consumed: an SSE-C self-copy with the same key changes nothing.
    let same_customer_key = match (&plan, src_customer.as_ref()) {
        (WritePlan::SseC(dst), Some(src)) => {
            bool::from(src.key.expose_secret().ct_eq(dst.key.expose_secret()))
        }
        _ => false,
    };
    let src = object::resolve(
        state,
        &sb,
        &sk,
        sv.as_deref(),
        src_customer,
        None,
        request_id,
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
    let unchanged_encryption = match (&plan, &src.obj.sse) {
        (WritePlan::Plain, StoredSse::None) | (WritePlan::SseS3, StoredSse::SseS3(_)) => true,
        (WritePlan::SseC(_), StoredSse::SseC(_)) => same_customer_key,
        _ => false,
    };
    if self_copy && !replace && unchanged_encryption {
        return Err(ApiError::InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.",
        ));
    }
    let now = meta::now_ms();
    if replace {
        object::check_metadata(input.metadata.as_ref())?;
    }
    let (content_type, headers, metadata) = if replace {
        let h = ContentHeaders::of(
            &input.cache_control,
            &input.content_disposition,
            &input.content_encoding,
            &input.content_language,
            &input.expires,
        );
        (
            input.content_type.as_ref().map(|c| c.to_string()),
            h.to_json(),
            object::metadata_json(input.metadata.as_ref()),
        )
    } else {
        (
            src.obj.content_type.clone(),
            src.obj.headers.clone(),
            src.obj.metadata.clone(),
        )
    };
    let dst_md5 = match &plan {
        WritePlan::SseC(k) => Some(k.key_md5_b64.clone()),
        _ => None,
    };

    // Self-copy between encrypted forms: re-seal the object key only.
    if let (true, Some(ok), false) = (
        self_copy,
        src.key.as_ref(),
        matches!(plan, WritePlan::Plain),
    ) {
        let binding = Binding {
            bucket_id: &dst_bucket.id,
            object_key: &input.key,
            version_id: &src.obj.version_id,
        };
        let sse = match &plan {
            WritePlan::SseS3 => {
                let bk = common::bucket_key(state, &dst_bucket, request_id).await?;
                envelope::reseal(SealMode::SseS3, &bk, &binding, ok)
            }
            WritePlan::SseC(ck) => envelope::reseal(SealMode::SseC, &ck.key, &binding, ok),
            WritePlan::Plain => return Err(ApiError::Internal("unreachable plain reseal".into())),
        };
        // An SSE-C object's ETag never derives from its plaintext (issue 11 B6): re-sealing an
        // MD5-tagged object under a customer key gives it, and its parts, random ETags.
        let (etag, part_etags) = if sse.is_sse_c() && !src.obj.sse.is_sse_c() {
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
            content_type,
            headers,
            metadata,
            last_modified_ms: now,
            ..src.obj.clone()
        };
        if !state
            .meta
            .update_object_in_place(&updated, &part_etags)
            .await?
        {
            return Err(ApiError::NoSuchKey);
        }
        let (s, a, m) = common::sse_out(&updated.sse, dst_md5.as_deref());
        return Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(updated.etag.clone())),
                last_modified: Some(common::ts(now)),
                ..Default::default()
            }),
            server_side_encryption: s,
            sse_customer_algorithm: a,
            sse_customer_key_md5: m,
            copy_source_version_id: sv.clone(),
            ..Default::default()
        }));
    }

    // Re-encrypting copy: stream plaintext from the source into a new single-part object.
    let version_id = Meta::new_version_id();
    let binding = Binding {
        bucket_id: &dst_bucket.id,
        object_key: &input.key,
        version_id: &version_id,
    };
    // The key first: while the KMS is unavailable this 503s before any row is written.
    let (ok, stored) = common::seal_for(state, &dst_bucket, &plan, &binding, request_id).await?;
    let writing = state
        .meta
        .begin_version(&dst_bucket, &input.key, &version_id)
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
        common::etag_needs_md5(&stored),
        &mut |_| {},
    )
    .await?;
    let etag = common::new_etag(&stored, blob.md5.as_ref());
    let obj = Object {
        bucket: dst_bucket.name.clone(),
        key: input.key.clone(),
        version_id,
        size: blob.size,
        etag: etag.clone(),
        content_type,
        headers,
        metadata,
        last_modified_ms: now,
        sse: stored,
        part_count: 1,
        multipart: false,
    };
    let row = BlobRow {
        part_number: 1,
        size: blob.size,
        etag: etag.clone(),
        file: blob.file.clone(),
        created_ms: now,
    };
    objects::publish_single_part_if(&state.meta, &state.blobs, &obj, &row, &cond)
        .await?
        .map_err(precondition::failed)?;
    writing.published();
    let (s, a, m) = common::sse_out(&obj.sse, dst_md5.as_deref());
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(common::ts(now)),
            ..Default::default()
        }),
        server_side_encryption: s,
        sse_customer_algorithm: a,
        sse_customer_key_md5: m,
        copy_source_version_id: sv,
        ..Default::default()
    }))
}
