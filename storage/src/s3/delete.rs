//! DeleteObject and DeleteObjects: retire the visible version in one transaction, then remove
//! its blob files. Deleting a missing key succeeds (204, or reported deleted in a batch).
//! Buckets are unversioned: a `versionId` other than `null` names a version that does not
//! exist, so nothing is deleted (204 / reported deleted, as AWS answers for a missing version).

use s3s::dto::*;
use s3s::{S3Request, S3Response};

use super::errors::{ApiError, ApiResult};
use super::object::{bucket_or_404, names_current};
use crate::state::NodeState;
use crate::store::objects;

/// Keys one DeleteObjects may name (AWS).
const MAX_DELETE_KEYS: usize = 1000;

pub(crate) async fn delete_object(
    state: &NodeState,
    req: S3Request<DeleteObjectInput>,
) -> ApiResult<S3Response<DeleteObjectOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    if names_current(input.version_id.as_deref()) {
        objects::delete_object(&state.meta, &state.blobs, &input.bucket, &input.key).await?;
    }
    let mut resp = S3Response::new(DeleteObjectOutput {
        version_id: input.version_id,
        ..Default::default()
    });
    resp.status = Some(http::StatusCode::NO_CONTENT);
    Ok(resp)
}

pub(crate) async fn delete_objects(
    state: &NodeState,
    req: S3Request<DeleteObjectsInput>,
) -> ApiResult<S3Response<DeleteObjectsOutput>> {
    let input = req.input;
    bucket_or_404(state, &input.bucket).await?;
    // AWS: at most 1000 keys per request, MalformedXML above.
    if input.delete.objects.len() > MAX_DELETE_KEYS {
        return Err(ApiError::MalformedXml);
    }
    let quiet = input.delete.quiet.unwrap_or(false);
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for o in input.delete.objects {
        let result = if names_current(o.version_id.as_deref()) {
            objects::delete_object(&state.meta, &state.blobs, &input.bucket, &o.key).await
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                if !quiet {
                    deleted.push(DeletedObject {
                        key: Some(o.key),
                        version_id: o.version_id,
                        ..Default::default()
                    });
                }
            }
            Err(e) => {
                // Reported per key with the code a DeleteObject would answer (a full disk:
                // ServiceUnavailable, so the client retries those keys).
                let e = ApiError::from(e);
                super::errors::note(state, &e);
                let e = s3s::S3Error::from(e);
                errors.push(Error {
                    key: Some(o.key),
                    version_id: o.version_id,
                    code: Some(e.code().as_str().into()),
                    message: e.message().map(Into::into),
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
