//! Multipart uploads: Create (chooses and seals the upload's object key), UploadPart and
//! UploadPartCopy (each part its own blob, part key derived from the object key and part
//! number), Complete (atomically publishes the chosen parts as the object; a repeated Complete
//! answers the same result), Abort, ListParts, ListMultipartUploads.

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::common;
use super::copy::copy_source;
use super::encryption::{self, EncryptionParams, WritePlan};
use super::errors::{ApiError, ApiResult};
use super::list::Names;
use super::object::{self, ContentHeaders, StoredChecksums, bucket_or_404};
use super::precondition;
use crate::crypto::keys::Binding;
use crate::crypto::sse::CustomerKey;
use crate::state::NodeState;
use crate::store::meta::{self, BlobRow, Bucket, Completion, Object, Upload};
use crate::store::objects;

const MIN_PART: u64 = 5 * 1024 * 1024;

pub(crate) async fn create(
    state: &NodeState,
    req: S3Request<CreateMultipartUploadInput>,
    request_id: &str,
) -> ApiResult<S3Response<CreateMultipartUploadOutput>> {
    let input = req.input;
    let bucket = bucket_or_404(state, &input.bucket).await?;
    object::check_new_key(&input.key)?;
    object::check_metadata(input.metadata.as_ref())?;
    let plan = encryption::plan_write(state, &bucket, &req.headers)?;
    let version_id = uuid::Uuid::new_v4().to_string();
    let upload_id = uuid::Uuid::new_v4().simple().to_string();
    let binding = Binding {
        bucket_id: &bucket.id,
        object_key: &input.key,
        version_id: &version_id,
    };
    let (_ok, stored) = common::seal_for(state, &bucket, &plan, &binding, request_id).await?;
    let mut headers = ContentHeaders::of(
        &input.cache_control,
        &input.content_disposition,
        &input.content_encoding,
        &input.content_language,
        &input.expires,
    );
    headers.checksum_algorithm = input
        .checksum_algorithm
        .as_ref()
        .map(|a| a.as_str().to_ascii_uppercase());
    let up = Upload {
        upload_id: upload_id.clone(),
        bucket: bucket.name.clone(),
        key: input.key.clone(),
        version_id,
        created_ms: meta::now_ms(),
        content_type: input.content_type.as_ref().map(|c| c.to_string()),
        headers: headers.to_json(),
        metadata: object::metadata_json(input.metadata.as_ref()),
        sse: stored,
        completed_etag: None,
    };
    if !state.meta.create_upload(&bucket, &up).await? {
        return Err(ApiError::NoSuchBucket);
    }
    let md5 = match &plan {
        WritePlan::SseC(k) => Some(k.key_md5_b64.as_str()),
        _ => None,
    };
    let enc = EncryptionParams::new(&up.sse, md5);
    let checksum_algorithm = input.checksum_algorithm.clone();
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(bucket.name),
        key: Some(input.key),
        upload_id: Some(upload_id),
        checksum_algorithm,
        server_side_encryption: enc.server_side_encryption(),
        ssekms_key_id: enc.kms_key_id(),
        bucket_key_enabled: enc.bucket_key_enabled(),
        ssekms_encryption_context: enc.kms_context(),
        sse_customer_algorithm: enc.customer_algorithm(),
        sse_customer_key_md5: enc.customer_key_md5(),
        ..Default::default()
    }))
}

/// The upload, its bucket and its object key opened with the request's trio (E17, E18).
async fn open_upload(
    state: &NodeState,
    bucket: &str,
    key: &str,
    upload_id: &str,
    customer: Option<&CustomerKey>,
    request_id: &str,
) -> ApiResult<(Bucket, Upload, Option<coffer_common::secret::SecretKey32>)> {
    let b = bucket_or_404(state, bucket).await?;
    let up = state
        .meta
        .upload(upload_id)
        .await?
        .filter(|u| u.bucket == bucket && u.key == key)
        .ok_or(ApiError::NoSuchUpload)?;
    if up.sse.is_sse_c() != customer.is_some() {
        return Err(ApiError::PartEncryptionRequired);
    }
    let binding = Binding {
        bucket_id: &b.id,
        object_key: &up.key,
        version_id: &up.version_id,
    };
    let key = common::open_key(state, &b, &up.sse, &binding, customer, request_id).await?;
    Ok((b, up, key))
}

async fn store_part(
    state: &NodeState,
    up: &Upload,
    part_number: i32,
    blob: crate::store::blobs::WrittenBlob,
    checksums: Option<String>,
) -> ApiResult<String> {
    let etag = EncryptionParams::new(&up.sse, None).etag(blob.md5.as_ref());
    let row = BlobRow {
        part_number: part_number as u32,
        size: blob.size,
        etag: etag.clone(),
        file: blob.file.clone(),
        created_ms: meta::now_ms(),
        checksums,
    };
    if objects::publish_part(&state.meta, &state.blobs, &up.upload_id, &row).await? {
        Ok(etag)
    } else if state.meta.bucket(&up.bucket).await?.is_none() {
        // DeleteBucket aborted the upload while this part was in flight.
        Err(ApiError::NoSuchBucket)
    } else {
        Err(ApiError::NoSuchUpload)
    }
}

fn check_part_number(n: i32) -> ApiResult<()> {
    if !(1..=10000).contains(&n) {
        return Err(ApiError::InvalidArgument(
            "Part number must be an integer between 1 and 10000, inclusive".into(),
        ));
    }
    Ok(())
}

pub(crate) async fn upload_part(
    state: &NodeState,
    req: S3Request<UploadPartInput>,
    request_id: &str,
) -> ApiResult<S3Response<UploadPartOutput>> {
    let customer = encryption::read_key(state, &req.headers)?;
    let input = req.input;
    check_part_number(input.part_number)?;
    let (_b, up, key) = open_upload(
        state,
        &input.bucket,
        &input.key,
        &input.upload_id,
        customer.as_ref(),
        request_id,
    )
    .await?;
    let expected = input.content_length.and_then(|l| u64::try_from(l).ok());
    let (blob, verified) = common::write_request_body(
        state,
        input.body,
        input.part_number as u32,
        key.as_ref().into(),
        &up.sse,
        expected,
        input.content_md5.as_deref(),
        &req.headers,
        req.trailing_headers.as_ref(),
    )
    .await?;
    let sums = super::object::StoredChecksums::from_verified(&verified);
    let json = (!sums.is_empty())
        .then(|| serde_json::to_string(&sums).ok())
        .flatten();
    let etag = store_part(state, &up, input.part_number, blob, json).await?;
    let enc = EncryptionParams::new(&up.sse, customer.as_ref().map(|c| c.key_md5_b64.as_str()));
    Ok(S3Response::new(UploadPartOutput {
        e_tag: Some(ETag::Strong(etag)),
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_crc64nvme: sums.crc64nvme,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        server_side_encryption: enc.server_side_encryption(),
        ssekms_key_id: enc.kms_key_id(),
        bucket_key_enabled: enc.bucket_key_enabled(),
        sse_customer_algorithm: enc.customer_algorithm(),
        sse_customer_key_md5: enc.customer_key_md5(),
        ..Default::default()
    }))
}

fn parse_copy_range(r: &str, size: u64) -> ApiResult<(u64, u64)> {
    let spec = r.strip_prefix("bytes=").ok_or(ApiError::InvalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy".into()))?;
    let (a, b) = spec.split_once('-').ok_or(ApiError::InvalidArgument(
        "Invalid copy source range".into(),
    ))?;
    let (a, b): (u64, u64) = (
        a.trim()
            .parse()
            .map_err(|_| ApiError::InvalidArgument("Invalid copy source range".into()))?,
        b.trim()
            .parse()
            .map_err(|_| ApiError::InvalidArgument("Invalid copy source range".into()))?,
    );
    if a > b || b >= size {
        return Err(ApiError::InvalidRange);
    }
    Ok((a, b))
}

pub(crate) async fn upload_part_copy(
    state: &NodeState,
    req: S3Request<UploadPartCopyInput>,
    request_id: &str,
) -> ApiResult<S3Response<UploadPartCopyOutput>> {
    let customer = encryption::read_key(state, &req.headers)?;
    let src_customer = encryption::copy_source_key(state, &req.headers)?;
    let input = req.input;
    check_part_number(input.part_number)?;
    let (_b, up, key) = open_upload(
        state,
        &input.bucket,
        &input.key,
        &input.upload_id,
        customer.as_ref(),
        request_id,
    )
    .await?;
    let (sb, sk, sv) = copy_source(&input.copy_source)?;
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
    let range = match input.copy_source_range.as_deref() {
        Some(r) => Some(parse_copy_range(r, src.obj.size)?),
        None => None,
    };
    let len = range.map_or(src.obj.size, |(a, b)| b - a + 1);
    let stream =
        objects::read_range(&state.blobs, &src.parts, src.key.as_ref().into(), range).await?;
    let blob = objects::write_part(
        &state.blobs,
        stream,
        input.part_number as u32,
        key.as_ref().into(),
        Some(len),
        EncryptionParams::new(&up.sse, None).needs_md5(),
        &mut |_| {},
    )
    .await?;
    let etag = store_part(state, &up, input.part_number, blob, None).await?;
    let enc = EncryptionParams::new(&up.sse, customer.as_ref().map(|c| c.key_md5_b64.as_str()));
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: Some(ETag::Strong(etag)),
            last_modified: Some(common::ts(meta::now_ms())),
            ..Default::default()
        }),
        server_side_encryption: enc.server_side_encryption(),
        ssekms_key_id: enc.kms_key_id(),
        bucket_key_enabled: enc.bucket_key_enabled(),
        sse_customer_algorithm: enc.customer_algorithm(),
        sse_customer_key_md5: enc.customer_key_md5(),
        ..Default::default()
    }))
}

/// CompleteMultipartUpload, top to bottom: check the upload and its SSE-C key, answer a
/// completed upload as it was answered, else choose the parts and publish the object.
pub(crate) async fn complete(
    state: &NodeState,
    req: S3Request<CompleteMultipartUploadInput>,
    request_id: &str,
) -> ApiResult<S3Response<CompleteMultipartUploadOutput>> {
    let customer = encryption::read_key(state, &req.headers)?;
    let input = req.input;
    let cond =
        precondition::write_condition(input.if_match.as_ref(), input.if_none_match.as_ref())?;
    let b = bucket_or_404(state, &input.bucket).await?;
    let up = state
        .meta
        .upload(&input.upload_id)
        .await?
        .filter(|u| u.bucket == input.bucket && u.key == input.key)
        .ok_or(ApiError::NoSuchUpload)?;
    if let Some(ck) = customer.as_ref() {
        check_upload_key(state, &b, &up, ck, request_id).await?;
    }
    let customer_md5 = customer.as_ref().map(|c| c.key_md5_b64.as_str());
    let respond = |etag: String, sums: StoredChecksums| completed(&up, customer_md5, etag, sums);
    if let Some(done) = up.completed_etag.clone() {
        return Ok(respond(done, StoredChecksums::default()));
    }
    precondition::precheck(state, &up.bucket, &up.key, &cond).await?;
    let wanted = input
        .multipart_upload
        .and_then(|m| m.parts)
        .unwrap_or_default();
    let chosen = match choose_parts(state, &up.upload_id, &wanted).await {
        Ok(c) => c,
        Err(e) => {
            // A concurrent Complete may have published the upload (moving its parts) since it
            // was read above: answer what that one answered.
            let now = state.meta.upload(&up.upload_id).await?;
            if let Some(done) = now.and_then(|u| u.completed_etag) {
                return Ok(respond(done, StoredChecksums::default()));
            }
            return Err(e);
        }
    };
    let obj = completed_object(&up, &chosen);
    let numbers: Vec<u32> = chosen.iter().map(|r| r.part_number).collect();
    match objects::complete_upload(&state.meta, &state.blobs, &up, &obj, &numbers, &cond).await? {
        Completion::Published(_) => {
            let sums = serde_json::from_str::<ContentHeaders>(&obj.headers)
                .map(|h| h.checksums)
                .unwrap_or_default();
            Ok(respond(obj.etag, sums))
        }
        Completion::AlreadyCompleted(done) => Ok(respond(done, StoredChecksums::default())),
        Completion::Gone => Err(ApiError::NoSuchUpload),
        Completion::BucketGone => Err(ApiError::NoSuchBucket),
        Completion::ConditionFailed(f) => Err(precondition::failed(f)),
    }
}

/// A Complete that sends an SSE-C key: the upload must be SSE-C and the key its own.
async fn check_upload_key(
    state: &NodeState,
    b: &Bucket,
    up: &Upload,
    ck: &CustomerKey,
    request_id: &str,
) -> ApiResult<()> {
    if !up.sse.is_sse_c() {
        return Err(ApiError::PartEncryptionRequired);
    }
    let binding = Binding {
        bucket_id: &b.id,
        object_key: &up.key,
        version_id: &up.version_id,
    };
    common::open_key(state, b, &up.sse, &binding, Some(ck), request_id).await?;
    Ok(())
}

/// The composite checksum of the chosen parts for the upload's `ChecksumAlgorithm` (issue 11
/// E21); none without an algorithm or when a part was sent without that checksum.
fn composite_checksum(up: &Upload, chosen: &[BlobRow]) -> StoredChecksums {
    let headers: ContentHeaders = serde_json::from_str(&up.headers).unwrap_or_default();
    let Some(alg) = headers.checksum_algorithm else {
        return StoredChecksums::default();
    };
    let parts: Vec<StoredChecksums> = chosen
        .iter()
        .map(|r| {
            r.checksums
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok())
                .unwrap_or_default()
        })
        .collect();
    let values: Vec<Option<&String>> = parts.iter().map(|p| p.get(&alg)).collect();
    super::checksum::composite(&alg, &values)
        .map(|v| StoredChecksums::only(&alg, v))
        .unwrap_or_default()
}

/// The object a Complete publishes from the chosen parts, with the composite checksum in its
/// content headers.
fn completed_object(up: &Upload, chosen: &[BlobRow]) -> Object {
    let mut headers: ContentHeaders = serde_json::from_str(&up.headers).unwrap_or_default();
    headers.checksums = composite_checksum(up, chosen);
    headers.checksum_algorithm = None;
    Object {
        bucket: up.bucket.clone(),
        key: up.key.clone(),
        version_id: up.version_id.clone(),
        size: chosen.iter().map(|r| r.size).sum(),
        etag: common::multipart_etag(&chosen.iter().map(|r| r.etag.clone()).collect::<Vec<_>>()),
        content_type: up.content_type.clone(),
        headers: headers.to_json(),
        metadata: up.metadata.clone(),
        last_modified_ms: meta::now_ms(),
        sse: up.sse.clone(),
        part_count: chosen.len() as u32,
        multipart: true,
    }
}

/// The answer to a Complete. The output type has no SSE-C fields; they are echoed as headers
/// like PutObject does.
fn completed(
    up: &Upload,
    customer_md5: Option<&str>,
    etag: String,
    sums: StoredChecksums,
) -> S3Response<CompleteMultipartUploadOutput> {
    let enc = EncryptionParams::new(&up.sse, customer_md5);
    let mut resp = S3Response::new(CompleteMultipartUploadOutput {
        checksum_crc32: sums.crc32,
        checksum_crc32c: sums.crc32c,
        checksum_sha1: sums.sha1,
        checksum_sha256: sums.sha256,
        bucket: Some(up.bucket.clone()),
        key: Some(up.key.clone()),
        e_tag: Some(ETag::Strong(etag)),
        location: Some(format!("/{}/{}", up.bucket, up.key)),
        server_side_encryption: enc.server_side_encryption(),
        ssekms_key_id: enc.kms_key_id(),
        bucket_key_enabled: enc.bucket_key_enabled(),
        ..Default::default()
    });
    for (name, value) in enc.customer_headers() {
        if let Some(v) = value.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            resp.headers.insert(name, v);
        }
    }
    resp
}

/// Every checksum a Complete names for a part equals the one verified when the part was
/// uploaded (issue 11 E21; a checksum the part was not uploaded with does not match), as AWS.
fn part_checksums_match(p: &CompletedPart, row: &BlobRow) -> bool {
    let stored: StoredChecksums = row
        .checksums
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    [
        (&p.checksum_crc32, &stored.crc32),
        (&p.checksum_crc32c, &stored.crc32c),
        (&p.checksum_crc64nvme, &stored.crc64nvme),
        (&p.checksum_sha1, &stored.sha1),
        (&p.checksum_sha256, &stored.sha256),
    ]
    .iter()
    .all(|(given, have)| given.as_ref().is_none_or(|g| have.as_ref() == Some(g)))
}

/// The stored parts a Complete names, validated as AWS does (ascending numbers, known parts
/// with matching ETags, every part but the last at least 5 MiB, at least one part).
async fn choose_parts(
    state: &NodeState,
    upload_id: &str,
    wanted: &[CompletedPart],
) -> ApiResult<Vec<BlobRow>> {
    if wanted.is_empty() {
        return Err(ApiError::MalformedXml);
    }
    let have = state.meta.blobs(upload_id).await?;
    let mut chosen = Vec::with_capacity(wanted.len());
    let mut last = 0i32;
    for p in wanted {
        let n = p.part_number.ok_or(ApiError::MalformedXml)?;
        if n <= last {
            return Err(ApiError::InvalidPartOrder);
        }
        last = n;
        let row = have
            .iter()
            .find(|r| r.part_number as i32 == n)
            .ok_or(ApiError::InvalidPart)?;
        let given = p
            .e_tag
            .as_ref()
            .map(|e| e.value().trim_matches('"').to_string());
        if given.as_deref().is_some_and(|g| g != row.etag) {
            return Err(ApiError::InvalidPart);
        }
        if !part_checksums_match(p, row) {
            return Err(ApiError::InvalidPart);
        }
        chosen.push(row.clone());
    }
    if chosen.iter().rev().skip(1).any(|r| r.size < MIN_PART) {
        return Err(ApiError::EntityTooSmall);
    }
    Ok(chosen)
}

pub(crate) async fn abort(
    state: &NodeState,
    req: S3Request<AbortMultipartUploadInput>,
) -> ApiResult<S3Response<AbortMultipartUploadOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let up = state
        .meta
        .upload(&input.upload_id)
        .await?
        .filter(|u| u.bucket == input.bucket && u.key == input.key)
        .ok_or(ApiError::NoSuchUpload)?;
    if !objects::abort_upload(&state.meta, &state.blobs, &up.upload_id).await? {
        return Err(ApiError::NoSuchUpload);
    }
    let mut resp = S3Response::new(AbortMultipartUploadOutput::default());
    resp.status = Some(http::StatusCode::NO_CONTENT);
    Ok(resp)
}

pub(crate) async fn list_parts(
    state: &NodeState,
    req: S3Request<ListPartsInput>,
    request_id: &str,
) -> ApiResult<S3Response<ListPartsOutput>> {
    let customer = encryption::read_key(state, &req.headers)?;
    let input = req.input;
    let b = bucket_or_404(state, &input.bucket).await?;
    let up = state
        .meta
        .upload(&input.upload_id)
        .await?
        .filter(|u| u.bucket == input.bucket && u.key == input.key && u.completed_etag.is_none())
        .ok_or(ApiError::NoSuchUpload)?;
    if let Some(ck) = customer.as_ref() {
        let binding = Binding {
            bucket_id: &b.id,
            object_key: &up.key,
            version_id: &up.version_id,
        };
        common::open_key(state, &b, &up.sse, &binding, Some(ck), request_id).await?;
    }
    let marker = input.part_number_marker.unwrap_or(0);
    let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
    let all: Vec<BlobRow> = state
        .meta
        .blobs(&up.upload_id)
        .await?
        .into_iter()
        .filter(|r| r.part_number as i32 > marker)
        .collect();
    let truncated = all.len() > max;
    let page: Vec<BlobRow> = all.into_iter().take(max).collect();
    let next = page.last().map(|r| r.part_number as i32);
    let parts = page
        .iter()
        .map(|r| Part {
            part_number: Some(r.part_number as i32),
            e_tag: Some(ETag::Strong(r.etag.clone())),
            size: Some(r.size as i64),
            last_modified: Some(common::ts(r.created_ms)),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(ListPartsOutput {
        bucket: Some(up.bucket.clone()),
        key: Some(up.key.clone()),
        upload_id: Some(up.upload_id.clone()),
        parts: Some(parts),
        is_truncated: Some(truncated),
        part_number_marker: input.part_number_marker,
        next_part_number_marker: if truncated { next } else { None },
        max_parts: Some(max as i32),
        ..Default::default()
    }))
}

/// ListMultipartUploads: uploads in progress ordered by key then initiation, with prefix,
/// delimiter/CommonPrefixes, max-uploads, key-marker/upload-id-marker and `encoding-type=url`.
pub(crate) async fn list_uploads(
    state: &NodeState,
    req: S3Request<ListMultipartUploadsInput>,
) -> ApiResult<S3Response<ListMultipartUploadsOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = input.max_uploads.unwrap_or(1000).clamp(0, 1000) as usize;
    let delimiter = input.delimiter.as_deref().filter(|d| !d.is_empty());
    let names = Names::new(input.encoding_type.as_ref());
    names.check_echoed(&[
        input.prefix.as_deref(),
        input.delimiter.as_deref(),
        input.key_marker.as_deref(),
        input.upload_id_marker.as_deref(),
    ])?;
    let all = state.meta.list_uploads(&input.bucket).await?;
    // A key marker that is a common prefix of this listing (the previous page's last entry)
    // resumes past every key under it, so pages never repeat a prefix.
    let marker_is_prefix = input.key_marker.as_deref().is_some_and(|k| {
        delimiter.is_some_and(|d| {
            k.strip_prefix(prefix.as_str())
                .and_then(|rest| rest.find(d).map(|i| i + d.len() == rest.len()))
                .unwrap_or(false)
        })
    });
    let after_marker = |u: &Upload| match (
        input.key_marker.as_deref(),
        input.upload_id_marker.as_deref(),
    ) {
        (None, _) => true,
        (Some(k), _) if marker_is_prefix => !u.key.starts_with(k) && u.key.as_str() > k,
        (Some(k), None) => u.key.as_str() > k,
        (Some(k), Some(_)) => u.key.as_str() >= k,
    };
    // With both markers, skip the marker key's uploads up to and including that upload id.
    let mut skipping_marker_key = input.key_marker.is_some() && input.upload_id_marker.is_some();
    let mut uploads = Vec::new();
    let mut prefixes: Vec<String> = Vec::new();
    let mut truncated = false;
    let mut next: Option<(String, Option<String>)> = None;
    for u in all
        .iter()
        .filter(|u| u.key.starts_with(&prefix) && after_marker(u))
    {
        if skipping_marker_key && Some(u.key.as_str()) == input.key_marker.as_deref() {
            if Some(u.upload_id.as_str()) == input.upload_id_marker.as_deref() {
                skipping_marker_key = false;
            }
            continue;
        }
        skipping_marker_key = false;
        let rest = u.key.get(prefix.len()..).unwrap_or_default();
        let cp = delimiter.and_then(|d| {
            rest.find(d)
                .map(|i| format!("{prefix}{}", &rest[..i + d.len()]))
        });
        if let Some(cp) = &cp
            && prefixes.last() == Some(cp)
        {
            continue;
        }
        if uploads.len() + prefixes.len() >= max {
            truncated = max > 0; // max-uploads=0 lists nothing and is not truncated, as S3
            break;
        }
        match cp {
            Some(cp) => {
                next = Some((cp.clone(), None));
                prefixes.push(cp);
            }
            None => {
                next = Some((u.key.clone(), Some(u.upload_id.clone())));
                uploads.push(MultipartUpload {
                    key: Some(names.one(&u.key)),
                    upload_id: Some(u.upload_id.clone()),
                    initiated: Some(common::ts(u.created_ms)),
                    storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                    ..Default::default()
                });
            }
        }
    }
    let (next_key, next_id) = match (truncated, next) {
        (true, Some((k, id))) => (Some(names.one(&k)), id),
        _ => (None, None),
    };
    Ok(S3Response::new(ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: names.opt(input.prefix.as_deref()),
        delimiter: names.opt(input.delimiter.as_deref().filter(|d| !d.is_empty())),
        key_marker: names.opt(input.key_marker.as_deref()),
        upload_id_marker: input.upload_id_marker,
        next_key_marker: next_key,
        next_upload_id_marker: next_id,
        common_prefixes: if prefixes.is_empty() {
            None
        } else {
            Some(
                prefixes
                    .iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(names.one(p)),
                    })
                    .collect(),
            )
        },
        uploads: Some(uploads),
        is_truncated: Some(truncated),
        max_uploads: Some(max as i32),
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}
