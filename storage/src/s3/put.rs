//! PutObject: the request body streams through the blob store (encrypted per the write plan,
//! checksums verified) into a durable blob; the version is `writing` until the metadata commit
//! publishes it, if its preconditions (If-Match, If-None-Match) hold then. Secret: the object
//! key lives for the request only.

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::common;
use super::encryption::{self, EncryptionParams};
use super::errors::{ApiError, ApiResult};
use super::object::{
    ContentHeaders, StoredChecksums, bucket_or_404, check_metadata, check_new_key, metadata_json,
};
use super::precondition;
use crate::crypto::keys::Binding;
use crate::state::NodeState;
use crate::store::meta::{self, BlobRow, Meta, Object};
use crate::store::objects;

pub(crate) async fn put_object(
    state: &NodeState,
    req: S3Request<PutObjectInput>,
    request_id: &str,
) -> ApiResult<S3Response<PutObjectOutput>> {
    let input = req.input;
    let bucket = bucket_or_404(state, &input.bucket).await?;
    check_new_key(&input.key)?;
    check_metadata(input.metadata.as_ref())?;
    let plan = encryption::plan_write(state, &bucket, &req.headers)?;
    let cond =
        precondition::write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
    precondition::precheck(state, &bucket.name, &input.key, &cond).await?;
    let version_id = Meta::new_version_id();
    let binding = Binding {
        bucket_id: &bucket.id,
        object_key: &input.key,
        version_id: &version_id,
    };
    // The key first: while the KMS is unavailable this 503s before any row is written.
    let (ok, stored) = common::seal_for(state, &bucket, &plan, &binding, request_id).await?;
    let writing = state
        .meta
        .begin_version(&bucket, &input.key, &version_id)
        .await?
        .ok_or(ApiError::NoSuchBucket)?;
    let expected = input.content_length.and_then(|l| u64::try_from(l).ok());
    let (blob, verified) = common::write_request_body(
        state,
        input.body,
        1,
        ok.as_ref().into(),
        &stored,
        expected,
        input.content_md5.as_deref(),
        &req.headers,
        req.trailing_headers.as_ref(),
    )
    .await?;
    let etag = EncryptionParams::new(&stored, None).etag(blob.md5.as_ref());
    let mut headers = ContentHeaders::of(
        &input.cache_control,
        &input.content_disposition,
        &input.content_encoding,
        &input.content_language,
        &input.expires,
    );
    headers.checksums = StoredChecksums::from_verified(&verified);
    let sums = headers.checksums.clone();
    let now = meta::now_ms();
    let obj = Object {
        bucket: bucket.name.clone(),
        key: input.key.clone(),
        version_id: version_id.clone(),
        size: blob.size,
        etag: etag.clone(),
        content_type: input.content_type.as_ref().map(|c| c.to_string()),
        headers: headers.to_json(),
        metadata: metadata_json(input.metadata.as_ref()),
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
        checksums: None,
    };
    objects::publish_single_part_if(&state.meta, &state.blobs, &obj, &row, &cond)
        .await?
        .map_err(precondition::failed)?;
    writing.published();
    let md5 = match &plan {
        encryption::WritePlan::SseC(k) => Some(k.key_md5_b64.as_str()),
        _ => None,
    };
    let enc = EncryptionParams::new(&obj.sse, md5);
    Ok(S3Response::new(PutObjectOutput {
        e_tag: Some(ETag::Strong(etag)),
        server_side_encryption: enc.server_side_encryption(),
        ssekms_key_id: enc.kms_key_id(),
        bucket_key_enabled: enc.bucket_key_enabled(),
        ssekms_encryption_context: enc.kms_context(),
        sse_customer_algorithm: enc.customer_algorithm(),
        sse_customer_key_md5: enc.customer_key_md5(),
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        ..Default::default()
    }))
}
