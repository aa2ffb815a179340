//! Bucket operations: Create/Head/Delete/List buckets, GetBucketLocation, bucket default
//! encryption (Put/Get/Delete), and object listings (v1, v2, versions of unversioned buckets).

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::common;
use super::errors::{ApiError, ApiResult};
use super::object::bucket_or_404;
use crate::state::{DefaultEncryption, NodeState};
use crate::store::meta::Object;

/// S3 bucket naming rules (3-63 chars, lowercase letters, digits, dots, hyphens; starts and
/// ends with a letter or digit; not an IP address; no `..`).
pub(crate) fn valid_bucket_name(n: &str) -> bool {
    let b = n.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
        && !n.contains("..")
        && n.parse::<std::net::Ipv4Addr>().is_err()
}

pub(crate) async fn create_bucket(
    state: &NodeState,
    req: S3Request<CreateBucketInput>,
) -> ApiResult<S3Response<CreateBucketOutput>> {
    let name = req.input.bucket;
    if !valid_bucket_name(&name) {
        return Err(ApiError::InvalidBucketName);
    }
    let default = match state.cfg.default_encryption {
        DefaultEncryption::SseS3 => Some("AES256"),
        DefaultEncryption::None => None,
    };
    state.meta.create_bucket(&name, default).await?;
    Ok(S3Response::new(CreateBucketOutput {
        location: Some(format!("/{name}")),
    }))
}

pub(crate) async fn head_bucket(
    state: &NodeState,
    req: S3Request<HeadBucketInput>,
) -> ApiResult<S3Response<HeadBucketOutput>> {
    bucket_or_404(state, &req.input.bucket).await?;
    Ok(S3Response::new(HeadBucketOutput {
        bucket_region: Some(state.cfg.region.clone()),
        ..Default::default()
    }))
}

pub(crate) async fn delete_bucket(
    state: &NodeState,
    req: S3Request<DeleteBucketInput>,
) -> ApiResult<S3Response<DeleteBucketOutput>> {
    bucket_or_404(state, &req.input.bucket).await?;
    if !state.meta.delete_bucket(&req.input.bucket).await? {
        return Err(ApiError::BucketNotEmpty);
    }
    let mut resp = S3Response::new(DeleteBucketOutput::default());
    resp.status = Some(http::StatusCode::NO_CONTENT);
    Ok(resp)
}

pub(crate) async fn list_buckets(state: &NodeState) -> ApiResult<S3Response<ListBucketsOutput>> {
    let buckets = state
        .meta
        .list_buckets()
        .await?
        .into_iter()
        .map(|(name, ms)| Bucket {
            name: Some(name),
            creation_date: Some(common::ts(ms)),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(ListBucketsOutput {
        buckets: Some(buckets),
        owner: Some(Owner {
            display_name: Some("coffer".into()),
            id: Some("coffer".into()),
        }),
        ..Default::default()
    }))
}

pub(crate) async fn get_bucket_location(
    state: &NodeState,
    req: S3Request<GetBucketLocationInput>,
) -> ApiResult<S3Response<GetBucketLocationOutput>> {
    bucket_or_404(state, &req.input.bucket).await?;
    let loc = if state.cfg.region == "us-east-1" {
        None
    } else {
        Some(BucketLocationConstraint::from(state.cfg.region.clone()))
    };
    Ok(S3Response::new(GetBucketLocationOutput {
        location_constraint: loc,
    }))
}

pub(crate) async fn put_bucket_encryption(
    state: &NodeState,
    req: S3Request<PutBucketEncryptionInput>,
) -> ApiResult<S3Response<PutBucketEncryptionOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let rules = input.server_side_encryption_configuration.rules;
    if rules.len() != 1 {
        return Err(ApiError::MalformedXml);
    }
    let Some(rule) = rules.first() else {
        return Err(ApiError::MalformedXml);
    };
    let Some(def) = rule.apply_server_side_encryption_by_default.as_ref() else {
        return Err(ApiError::MalformedXml);
    };
    let stored = match def.sse_algorithm.as_str() {
        "AES256" => {
            if def.kms_master_key_id.is_some() {
                return Err(ApiError::InvalidArgument("a KMSMasterKeyID is not applicable if the default sse algorithm is not aws:kms or aws:kms:dsse".into()));
            }
            "AES256"
        }
        // SSE-KMS is the next step; refuse it clearly rather than store a default no write can use.
        "aws:kms" | "aws:kms:dsse" => return Err(ApiError::KmsNotImplemented),
        _ => return Err(ApiError::MalformedXml),
    };
    state
        .meta
        .set_encryption_config(&input.bucket, Some(stored))
        .await?;
    Ok(S3Response::new(PutBucketEncryptionOutput::default()))
}

pub(crate) async fn get_bucket_encryption(
    state: &NodeState,
    req: S3Request<GetBucketEncryptionInput>,
) -> ApiResult<S3Response<GetBucketEncryptionOutput>> {
    let b = bucket_or_404(state, &req.input.bucket).await?;
    let cfg = b.encryption_config.ok_or(ApiError::NoEncryptionConfig)?;
    let (alg, key) = match cfg.strip_prefix("aws:kms:") {
        Some(k) => (
            "aws:kms",
            if k.is_empty() {
                None
            } else {
                Some(k.to_string())
            },
        ),
        None => ("AES256", None),
    };
    Ok(S3Response::new(GetBucketEncryptionOutput {
        server_side_encryption_configuration: Some(ServerSideEncryptionConfiguration {
            rules: vec![ServerSideEncryptionRule {
                apply_server_side_encryption_by_default: Some(ServerSideEncryptionByDefault {
                    sse_algorithm: ServerSideEncryption::from(alg.to_string()),
                    kms_master_key_id: key,
                }),
                bucket_key_enabled: Some(false),
            }],
        }),
    }))
}

pub(crate) async fn delete_bucket_encryption(
    state: &NodeState,
    req: S3Request<DeleteBucketEncryptionInput>,
) -> ApiResult<S3Response<DeleteBucketEncryptionOutput>> {
    bucket_or_404(state, &req.input.bucket).await?;
    state
        .meta
        .set_encryption_config(&req.input.bucket, None)
        .await?;
    let mut resp = S3Response::new(DeleteBucketEncryptionOutput::default());
    resp.status = Some(http::StatusCode::NO_CONTENT);
    Ok(resp)
}

/// One page of a listing: objects and common prefixes after `after`.
pub(crate) struct Page {
    pub objects: Vec<Object>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// Last key or prefix returned (for markers and continuation tokens).
    pub last: Option<String>,
}

/// Walk keys in order, folding keys that contain `delimiter` after `prefix` into common prefixes.
pub(crate) async fn list_page(
    state: &NodeState,
    bucket: &str,
    prefix: &str,
    delimiter: Option<&str>,
    after: &str,
    max: usize,
) -> ApiResult<Page> {
    let mut page = Page {
        objects: Vec::new(),
        prefixes: Vec::new(),
        truncated: false,
        last: None,
    };
    let mut cursor = after.to_string();
    loop {
        let batch = state
            .meta
            .list_objects(bucket, prefix, &cursor, 1000)
            .await?;
        if batch.is_empty() {
            return Ok(page);
        }
        for o in batch {
            cursor = o.key.clone();
            let rest = o.key.get(prefix.len()..).unwrap_or_default();
            let cp = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                rest.find(d)
                    .map(|i| format!("{prefix}{}", &rest[..i + d.len()]))
            });
            if let Some(cp) = cp {
                if page.prefixes.last() == Some(&cp) {
                    continue;
                }
                if page.objects.len() + page.prefixes.len() >= max {
                    page.truncated = true;
                    return Ok(page);
                }
                page.last = Some(cp.clone());
                page.prefixes.push(cp);
            } else {
                if page.objects.len() + page.prefixes.len() >= max {
                    page.truncated = true;
                    return Ok(page);
                }
                page.last = Some(o.key.clone());
                page.objects.push(o);
            }
        }
    }
}

fn to_object(o: &Object, owner: bool) -> s3s::dto::Object {
    s3s::dto::Object {
        key: Some(o.key.clone()),
        e_tag: Some(ETag::Strong(o.etag.clone())),
        size: Some(o.size as i64),
        last_modified: Some(common::ts(o.last_modified_ms)),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        owner: owner.then(|| Owner {
            display_name: Some("coffer".into()),
            id: Some("coffer".into()),
        }),
        ..Default::default()
    }
}

fn prefixes(p: Vec<String>) -> Option<Vec<CommonPrefix>> {
    if p.is_empty() {
        None
    } else {
        Some(
            p.into_iter()
                .map(|p| CommonPrefix { prefix: Some(p) })
                .collect(),
        )
    }
}

/// After a common prefix, skip every key under it.
fn resume_after(last: &str, delimiter: Option<&str>) -> String {
    match delimiter {
        Some(d) if !d.is_empty() && last.ends_with(d) => format!("{last}\u{10FFFF}"),
        _ => last.to_string(),
    }
}

pub(crate) async fn list_objects_v2(
    state: &NodeState,
    req: S3Request<ListObjectsV2Input>,
) -> ApiResult<S3Response<ListObjectsV2Output>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
    let after = match input.continuation_token.as_deref() {
        Some(t) => String::from_utf8(hex::decode(t).map_err(|_| {
            ApiError::InvalidArgument("The continuation token provided is incorrect".into())
        })?)
        .map_err(|_| {
            ApiError::InvalidArgument("The continuation token provided is incorrect".into())
        })?,
        None => input.start_after.clone().unwrap_or_default(),
    };
    let page = list_page(
        state,
        &input.bucket,
        &prefix,
        input.delimiter.as_deref(),
        &after,
        max,
    )
    .await?;
    let count = (page.objects.len() + page.prefixes.len()) as i32;
    let next = if page.truncated {
        page.last
            .as_deref()
            .map(|l| hex::encode(resume_after(l, input.delimiter.as_deref())))
    } else {
        None
    };
    let owner = input.fetch_owner.unwrap_or(false);
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: input.prefix,
        delimiter: input.delimiter,
        max_keys: Some(max as i32),
        key_count: Some(count),
        is_truncated: Some(page.truncated),
        contents: Some(page.objects.iter().map(|o| to_object(o, owner)).collect()),
        common_prefixes: prefixes(page.prefixes),
        continuation_token: input.continuation_token,
        next_continuation_token: next,
        start_after: input.start_after,
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

pub(crate) async fn list_objects(
    state: &NodeState,
    req: S3Request<ListObjectsInput>,
) -> ApiResult<S3Response<ListObjectsOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
    let after = input.marker.clone().unwrap_or_default();
    let page = list_page(
        state,
        &input.bucket,
        &prefix,
        input.delimiter.as_deref(),
        &after,
        max,
    )
    .await?;
    let next = if page.truncated && input.delimiter.is_some() {
        page.last.clone()
    } else {
        None
    };
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(input.bucket),
        prefix: input.prefix,
        delimiter: input.delimiter,
        marker: input.marker,
        max_keys: Some(max as i32),
        is_truncated: Some(page.truncated),
        contents: Some(page.objects.iter().map(|o| to_object(o, true)).collect()),
        common_prefixes: prefixes(page.prefixes),
        next_marker: next,
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

pub(crate) async fn list_object_versions(
    state: &NodeState,
    req: S3Request<ListObjectVersionsInput>,
) -> ApiResult<S3Response<ListObjectVersionsOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let max = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
    let after = input.key_marker.clone().unwrap_or_default();
    let page = list_page(
        state,
        &input.bucket,
        &prefix,
        input.delimiter.as_deref(),
        &after,
        max,
    )
    .await?;
    let versions = page
        .objects
        .iter()
        .map(|o| ObjectVersion {
            key: Some(o.key.clone()),
            version_id: Some("null".into()),
            is_latest: Some(true),
            e_tag: Some(ETag::Strong(o.etag.clone())),
            size: Some(o.size as i64),
            last_modified: Some(common::ts(o.last_modified_ms)),
            storage_class: Some(ObjectVersionStorageClass::from_static(
                ObjectVersionStorageClass::STANDARD,
            )),
            owner: Some(Owner {
                display_name: Some("coffer".into()),
                id: Some("coffer".into()),
            }),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(ListObjectVersionsOutput {
        name: Some(input.bucket),
        prefix: input.prefix,
        delimiter: input.delimiter,
        key_marker: input.key_marker,
        max_keys: Some(max as i32),
        is_truncated: Some(page.truncated),
        versions: Some(versions),
        common_prefixes: prefixes(page.prefixes),
        next_key_marker: if page.truncated { page.last } else { None },
        next_version_id_marker: None,
        ..Default::default()
    }))
}
