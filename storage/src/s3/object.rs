//! PutObject, GetObject, HeadObject, DeleteObject(s): the single-object operations. Bytes stream
//! through the blob store (encrypted per the write plan); metadata rows are committed only after
//! the blob is durable.

use std::collections::BTreeMap;

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::common;
use super::errors::{ApiError, ApiResult};
use crate::crypto::keys::Binding;
use crate::state::NodeState;
use crate::store::meta::{self, BlobRow, Bucket, Object};

pub(crate) async fn bucket_or_404(state: &NodeState, name: &str) -> ApiResult<Bucket> {
    state.meta.bucket(name).await?.ok_or(ApiError::NoSuchBucket)
}

/// Standard content headers kept with an object.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ContentHeaders {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
}

impl ContentHeaders {
    /// The content headers a write request carries.
    pub(crate) fn of(
        cache_control: &Option<String>,
        content_disposition: &Option<String>,
        content_encoding: &Option<String>,
        content_language: &Option<String>,
    ) -> Self {
        Self {
            cache_control: cache_control.clone(),
            content_disposition: content_disposition.clone(),
            content_encoding: content_encoding.clone(),
            content_language: content_language.clone(),
        }
    }

    /// The JSON stored in the `headers` column.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

pub(crate) fn metadata_json(m: Option<&Metadata>) -> String {
    let map: BTreeMap<String, String> = m
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn metadata_from_json(s: &str) -> Option<Metadata> {
    let map: BTreeMap<String, String> = serde_json::from_str(s).ok()?;
    if map.is_empty() {
        return None;
    }
    Some(map.into_iter().collect())
}

pub(crate) async fn put_object(
    state: &NodeState,
    req: S3Request<PutObjectInput>,
    request_id: &str,
) -> ApiResult<S3Response<PutObjectOutput>> {
    let input = req.input;
    let bucket = bucket_or_404(state, &input.bucket).await?;
    let plan = common::plan_write(state, &bucket, &req.headers)?;
    let writing = state.meta.begin_version(&bucket.name, &input.key).await?;
    let version_id = writing.version_id().to_string();
    let binding = Binding {
        bucket_id: &bucket.id,
        object_key: &input.key,
        version_id: &version_id,
    };
    let (ok, stored) = common::seal_for(state, &bucket, &plan, &binding, request_id).await?;
    let cipher = ok
        .as_ref()
        .map(|k| crate::crypto::format::PartCipher::for_write(k, 1));
    let expected = input.content_length.and_then(|l| u64::try_from(l).ok());
    let blob = common::write_request_body(
        state,
        input.body,
        cipher,
        expected,
        input.content_md5.as_deref(),
        &req.headers,
        req.trailing_headers.as_ref(),
    )
    .await?;
    let etag = common::new_etag(&stored, &blob.md5);
    let headers = ContentHeaders::of(
        &input.cache_control,
        &input.content_disposition,
        &input.content_encoding,
        &input.content_language,
    );
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
    };
    common::publish_single_part(state, &obj, &row).await?;
    writing.published();
    let md5 = match &plan {
        common::WritePlan::SseC(k) => Some(k.key_md5_b64.as_str()),
        _ => None,
    };
    let (sse, alg, kmd5) = common::sse_out(&obj.sse, md5);
    Ok(S3Response::new(PutObjectOutput {
        e_tag: Some(ETag::Strong(etag)),
        server_side_encryption: sse,
        sse_customer_algorithm: alg,
        sse_customer_key_md5: kmd5,
        ..Default::default()
    }))
}

/// Everything a GET or HEAD needs about the object.
pub(crate) struct Resolved {
    pub obj: Object,
    pub parts: Vec<BlobRow>,
    pub key: Option<coffer_common::secret::SecretKey32>,
    pub customer_md5: Option<String>,
}

/// Look up an object and open its key with the request's trio (validation order of the spec:
/// trio syntax first, then part number, then object state and key).
pub(crate) async fn resolve(
    state: &NodeState,
    bucket: &str,
    key: &str,
    customer: Option<crate::crypto::sse::CustomerKey>,
    part_number: Option<i32>,
    request_id: &str,
) -> ApiResult<Resolved> {
    let b = bucket_or_404(state, bucket).await?;
    let obj = state
        .meta
        .object(bucket, key)
        .await?
        .ok_or(ApiError::NoSuchKey)?;
    let parts = state.meta.blobs(&obj.version_id).await?;
    if let Some(n) = part_number
        && (n < 1 || n as usize > parts.len())
    {
        return Err(ApiError::InvalidPart);
    }
    let binding = Binding {
        bucket_id: &b.id,
        object_key: key,
        version_id: &obj.version_id,
    };
    let k = common::open_key(state, &b, &obj.sse, &binding, customer.as_ref(), request_id).await?;
    Ok(Resolved {
        obj,
        parts,
        key: k,
        customer_md5: customer.map(|c| c.key_md5_b64),
    })
}

/// Byte range of part `n` (1-based, index into the completed list) within the object.
pub(crate) fn part_range(parts: &[BlobRow], n: i32) -> Option<(u64, u64, u64)> {
    let idx = usize::try_from(n).ok()?.checked_sub(1)?;
    let start: u64 = parts.iter().take(idx).map(|p| p.size).sum();
    let p = parts.get(idx)?;
    Some((start, start + p.size.saturating_sub(1), p.size))
}

fn check_conditions(
    obj: &Object,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    ims: Option<&Timestamp>,
    ius: Option<&Timestamp>,
) -> ApiResult<()> {
    let matches = |c: &ETagCondition| {
        c.is_any()
            || c.as_etag()
                .is_some_and(|e| e.value().trim_matches('"') == obj.etag)
    };
    let lm = time::OffsetDateTime::from(common::ts(obj.last_modified_ms));
    let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(ApiError::PreconditionFailed);
        }
    } else if let Some(t) = ius
        && lm.unix_timestamp() > secs(t)
    {
        return Err(ApiError::PreconditionFailed);
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(ApiError::NotModified);
        }
    } else if let Some(t) = ims
        && lm.unix_timestamp() <= secs(t)
    {
        return Err(ApiError::NotModified);
    }
    Ok(())
}

pub(crate) async fn get_object(
    state: &NodeState,
    req: S3Request<GetObjectInput>,
    request_id: &str,
) -> ApiResult<S3Response<GetObjectOutput>> {
    let customer = common::read_key(state, &req.headers)?;
    let input = req.input;
    let r = resolve(
        state,
        &input.bucket,
        &input.key,
        customer,
        input.part_number,
        request_id,
    )
    .await?;
    check_conditions(
        &r.obj,
        input.if_match.as_ref(),
        input.if_none_match.as_ref(),
        input.if_modified_since.as_ref(),
        input.if_unmodified_since.as_ref(),
    )?;
    let size = r.obj.size;
    let range = match (input.part_number, input.range.as_ref()) {
        (Some(n), _) if r.obj.multipart || n != 1 => {
            let (s, e, len) = part_range(&r.parts, n).ok_or(ApiError::InvalidPart)?;
            if len == 0 { None } else { Some((s, e)) }
        }
        (_, Some(rg)) => Some(common::resolve_range(rg, size)?),
        _ => None,
    };
    let body = common::object_stream(state, &r.parts, r.key.as_ref(), range).await?;
    let content_length = range.map_or(size, |(s, e)| e - s + 1);
    let headers: ContentHeaders = serde_json::from_str(&r.obj.headers).unwrap_or_default();
    let (sse, alg, kmd5) = common::sse_out(&r.obj.sse, r.customer_md5.as_deref());
    let out = GetObjectOutput {
        body: Some(StreamingBlob::wrap(sync_wrapper::SyncStream::new(body))),
        content_length: Some(content_length as i64),
        content_range: range.map(|(s, e)| format!("bytes {s}-{e}/{size}")),
        accept_ranges: Some("bytes".into()),
        e_tag: Some(ETag::Strong(r.obj.etag.clone())),
        last_modified: Some(common::ts(r.obj.last_modified_ms)),
        content_type: input
            .response_content_type
            .clone()
            .or_else(|| r.obj.content_type.as_ref().and_then(|c| c.parse().ok())),
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
        expires: input.response_expires.clone(),
        metadata: metadata_from_json(&r.obj.metadata),
        parts_count: if r.obj.multipart && input.part_number.is_some() {
            Some(r.obj.part_count as i32)
        } else {
            None
        },
        server_side_encryption: sse,
        sse_customer_algorithm: alg,
        sse_customer_key_md5: kmd5,
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
    let customer = common::read_key(state, &req.headers)?;
    let input = req.input;
    let r = resolve(
        state,
        &input.bucket,
        &input.key,
        customer,
        input.part_number,
        request_id,
    )
    .await?;
    check_conditions(
        &r.obj,
        input.if_match.as_ref(),
        input.if_none_match.as_ref(),
        input.if_modified_since.as_ref(),
        input.if_unmodified_since.as_ref(),
    )?;
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
    let (sse, alg, kmd5) = common::sse_out(&r.obj.sse, r.customer_md5.as_deref());
    Ok(S3Response::new(HeadObjectOutput {
        content_length: Some(len as i64),
        content_range,
        accept_ranges: Some("bytes".into()),
        e_tag: Some(ETag::Strong(r.obj.etag.clone())),
        last_modified: Some(common::ts(r.obj.last_modified_ms)),
        content_type: r.obj.content_type.as_ref().and_then(|c| c.parse().ok()),
        cache_control: headers.cache_control,
        content_disposition: headers.content_disposition,
        content_encoding: headers.content_encoding,
        content_language: headers.content_language,
        metadata: metadata_from_json(&r.obj.metadata),
        parts_count: if r.obj.multipart {
            Some(r.obj.part_count as i32)
        } else {
            None
        },
        server_side_encryption: sse,
        sse_customer_algorithm: alg,
        sse_customer_key_md5: kmd5,
        ..Default::default()
    }))
}

pub(crate) async fn delete_object(
    state: &NodeState,
    req: S3Request<DeleteObjectInput>,
) -> ApiResult<S3Response<DeleteObjectOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    for f in state.meta.delete_object(&input.bucket, &input.key).await? {
        state.blobs.remove(&f).await;
    }
    let mut resp = S3Response::new(DeleteObjectOutput::default());
    resp.status = Some(http::StatusCode::NO_CONTENT);
    Ok(resp)
}

pub(crate) async fn delete_objects(
    state: &NodeState,
    req: S3Request<DeleteObjectsInput>,
) -> ApiResult<S3Response<DeleteObjectsOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let quiet = input.delete.quiet.unwrap_or(false);
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for o in input.delete.objects {
        match state.meta.delete_object(&input.bucket, &o.key).await {
            Ok(files) => {
                for f in files {
                    state.blobs.remove(&f).await;
                }
                if !quiet {
                    deleted.push(DeletedObject {
                        key: Some(o.key),
                        ..Default::default()
                    });
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "delete failed");
                errors.push(Error {
                    key: Some(o.key),
                    code: Some("InternalError".into()),
                    message: Some("We encountered an internal error.".into()),
                    ..Default::default()
                });
            }
        }
    }
    Ok(S3Response::new(DeleteObjectsOutput {
        deleted: if deleted.is_empty() {
            None
        } else {
            Some(deleted)
        },
        errors: if errors.is_empty() {
            None
        } else {
            Some(errors)
        },
        ..Default::default()
    }))
}

pub(crate) async fn get_object_attributes(
    state: &NodeState,
    req: S3Request<GetObjectAttributesInput>,
    request_id: &str,
) -> ApiResult<S3Response<GetObjectAttributesOutput>> {
    let customer = common::read_key(state, &req.headers)?;
    let input = req.input;
    let r = resolve(state, &input.bucket, &input.key, customer, None, request_id).await?;
    // The header may arrive as one comma-separated value or as several values.
    let want = |a: &str| {
        input
            .object_attributes
            .iter()
            .flat_map(|x| x.as_str().split(','))
            .any(|x| x.trim() == a)
    };
    let parts = if want(ObjectAttributes::OBJECT_PARTS) && r.obj.multipart {
        Some(GetObjectAttributesParts {
            total_parts_count: Some(r.obj.part_count as i32),
            ..Default::default()
        })
    } else {
        None
    };
    Ok(S3Response::new(GetObjectAttributesOutput {
        e_tag: want(ObjectAttributes::ETAG).then(|| ETag::Strong(r.obj.etag.clone())),
        object_size: want(ObjectAttributes::OBJECT_SIZE).then_some(r.obj.size as i64),
        storage_class: want(ObjectAttributes::STORAGE_CLASS)
            .then(|| StorageClass::from_static(StorageClass::STANDARD)),
        object_parts: parts,
        last_modified: Some(common::ts(r.obj.last_modified_ms)),
        ..Default::default()
    }))
}
