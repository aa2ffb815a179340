//! Bucket operations: Create/Head/Delete/List buckets, GetBucketLocation, bucket default
//! encryption (Put/Get/Delete). Object listings live in `list`.

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use coffer_common::kms_api::KmsKeyState;

use super::common;
use super::encryption::{self, BucketDefault};
use super::errors::{ApiError, ApiResult, KmsKeyProblem};
use super::kms_headers::KmsDefault;
use super::object::bucket_or_404;
use crate::state::{DefaultEncryption, NodeState};
use crate::store::objects;

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
    // Object Lock promises retention Coffer does not enforce: refuse rather than create a
    // bucket without it (issue 11 E22).
    if req.input.object_lock_enabled_for_bucket == Some(true) {
        return Err(ApiError::NotImplemented(
            "Object Lock is not implemented; the bucket was not created.",
        ));
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
    if !objects::delete_bucket(&state.meta, &state.blobs, &req.input.bucket).await? {
        return Err(ApiError::BucketNotEmpty);
    }
    let mut resp = S3Response::new(DeleteBucketOutput::default());
    resp.status = Some(http::StatusCode::NO_CONTENT);
    Ok(resp)
}

/// ListBuckets: every bucket by name, or pages of `max-buckets` (1..=10000) resumed with the
/// answered `ContinuationToken`; `prefix` filters.
pub(crate) async fn list_buckets(
    state: &NodeState,
    req: S3Request<ListBucketsInput>,
) -> ApiResult<S3Response<ListBucketsOutput>> {
    let input = req.input;
    let max = match input.max_buckets {
        None => usize::MAX,
        Some(n @ 1..=10_000) => n as usize,
        Some(_) => {
            return Err(ApiError::InvalidArgument(
                "max-buckets must be an integer between 1 and 10000".into(),
            ));
        }
    };
    let bad_token =
        || ApiError::InvalidArgument("The continuation token provided is incorrect".into());
    let after = match input.continuation_token.as_deref() {
        Some(t) => {
            String::from_utf8(hex::decode(t).map_err(|_| bad_token())?).map_err(|_| bad_token())?
        }
        None => String::new(),
    };
    let prefix = input.prefix.clone().unwrap_or_default();
    let mut all = state
        .meta
        .list_buckets()
        .await?
        .into_iter()
        .filter(|(name, _)| name.as_str() > after.as_str() && name.starts_with(&prefix));
    let page: Vec<(String, i64)> = all.by_ref().take(max).collect();
    let token = match (all.next(), page.last()) {
        (Some(_), Some((last, _))) => Some(hex::encode(last)),
        _ => None,
    };
    let buckets = page
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
        prefix: input.prefix,
        continuation_token: token,
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
    request_id: &str,
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
            "AES256".to_string()
        }
        "aws:kms" => {
            let key_id = def
                .kms_master_key_id
                .as_deref()
                .map(str::trim)
                .filter(|k| !k.is_empty());
            if let Some(k) = key_id {
                check_kms_key(state, k, request_id).await?;
            }
            KmsDefault {
                key_id: key_id.map(str::to_string),
                bucket_key: rule.bucket_key_enabled.unwrap_or(false),
            }
            .stored()
        }
        "aws:kms:dsse" => {
            return Err(ApiError::NotImplemented(
                "DSSE-KMS (aws:kms:dsse) is not implemented; use aws:kms.",
            ));
        }
        _ => return Err(ApiError::MalformedXml),
    };
    state
        .meta
        .set_encryption_config(&input.bucket, Some(&stored))
        .await?;
    Ok(S3Response::new(PutBucketEncryptionOutput::default()))
}

/// A bucket default's `KMSMasterKeyID` must name an enabled key the node may use (described by
/// the KMS): not found (or destroyed) 400 KMS.NotFoundException, disabled 400
/// KMS.DisabledException, pending deletion 400 KMS.KMSInvalidStateException, out of the node's
/// key scope 403 AccessDenied.
async fn check_kms_key(state: &NodeState, key_id: &str, request_id: &str) -> ApiResult<()> {
    let kms = state.keys.client()?;
    let info = kms
        .describe_named(key_id, request_id)
        .await
        .map_err(|e| ApiError::from_named_kms(e, key_id))?;
    let problem = match info.state {
        KmsKeyState::Enabled => return Ok(()),
        KmsKeyState::Disabled => KmsKeyProblem::Disabled,
        KmsKeyState::PendingDeletion => KmsKeyProblem::InvalidState,
        KmsKeyState::Destroyed => KmsKeyProblem::NotFound,
    };
    Err(ApiError::KmsKey(problem, key_id.to_string()))
}

pub(crate) async fn get_bucket_encryption(
    state: &NodeState,
    req: S3Request<GetBucketEncryptionInput>,
) -> ApiResult<S3Response<GetBucketEncryptionOutput>> {
    let b = bucket_or_404(state, &req.input.bucket).await?;
    let (alg, key, bucket_key) = match encryption::bucket_default(&b) {
        Some(BucketDefault::SseS3) => ("AES256", None, false),
        Some(BucketDefault::SseKms(d)) => ("aws:kms", d.key_id, d.bucket_key),
        None => return Err(ApiError::NoEncryptionConfig),
    };
    Ok(S3Response::new(GetBucketEncryptionOutput {
        server_side_encryption_configuration: Some(ServerSideEncryptionConfiguration {
            rules: vec![ServerSideEncryptionRule {
                apply_server_side_encryption_by_default: Some(ServerSideEncryptionByDefault {
                    sse_algorithm: ServerSideEncryption::from(alg.to_string()),
                    kms_master_key_id: key,
                }),
                bucket_key_enabled: Some(bucket_key),
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
