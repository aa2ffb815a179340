//! The S3 edge: the only module that knows s3s types. [`CofferS3`] implements the `s3s::S3`
//! trait by delegating each operation to its family file (`bucket`, `list`, `put`, `get`,
//! `copy`, `delete`, `multipart`; shared helpers in `object`, `common` and `encryption`) and mapping [`errors::ApiError`] to S3 errors in one place.
//! Operations not listed here answer 501 NotImplemented (s3s's default).

mod bucket;
mod checksum;
mod common;
mod copy;
mod delete;
mod encryption;
pub mod errors;
mod get;
mod kms_headers;
mod list;
mod multipart;
mod object;
pub(crate) mod post;
mod precondition;
mod put;

/// HTTP Range resolution against an object size (public for the fuzz targets).
pub use common::resolve_range;

use std::sync::Arc;

use s3s::dto::*;
use s3s::{S3, S3Error, S3Request, S3Response, S3Result};

use crate::state::NodeState;
use errors::ApiError;
pub(crate) use get::unquote_attributes_etag;
pub(crate) use object::xml_safe;

/// The S3 service.
#[derive(Clone)]
pub struct CofferS3 {
    state: Arc<NodeState>,
}

impl CofferS3 {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

/// The id the HTTP layer minted for this request (`crate::server::RequestId`): the client's
/// `x-amz-request-id`, the request's log span and the id sent to the KMS for the key operations
/// it causes, so that its KMS audit record carries it too.
fn request_id<T>(req: &S3Request<T>) -> String {
    req.extensions
        .get::<crate::server::RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// The S3 error answering `e` (see [`errors::ApiError::wire`]); a full disk also marks the
/// data dir full for `/ready`.
pub(crate) fn s3_error(state: &NodeState, op: &'static str, e: ApiError) -> S3Error {
    tracing::debug!(op, error = %e, "request failed");
    errors::note(state, &e);
    S3Error::from(e)
}

impl CofferS3 {
    /// An operation's result as s3s wants it (errors as [`s3_error`]).
    fn map<T>(&self, op: &'static str, r: Result<T, ApiError>) -> S3Result<T> {
        r.map_err(|e| s3_error(&self.state, op, e))
    }
}

#[async_trait::async_trait]
impl S3 for CofferS3 {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.map(
            "CreateBucket",
            bucket::create_bucket(&self.state, req).await,
        )
    }
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.map("HeadBucket", bucket::head_bucket(&self.state, req).await)
    }
    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.map(
            "DeleteBucket",
            bucket::delete_bucket(&self.state, req).await,
        )
    }
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.map("ListBuckets", bucket::list_buckets(&self.state, req).await)
    }
    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.map(
            "GetBucketLocation",
            bucket::get_bucket_location(&self.state, req).await,
        )
    }
    async fn put_bucket_encryption(
        &self,
        req: S3Request<PutBucketEncryptionInput>,
    ) -> S3Result<S3Response<PutBucketEncryptionOutput>> {
        let rid = request_id(&req);
        self.map(
            "PutBucketEncryption",
            bucket::put_bucket_encryption(&self.state, req, &rid).await,
        )
    }
    async fn get_bucket_encryption(
        &self,
        req: S3Request<GetBucketEncryptionInput>,
    ) -> S3Result<S3Response<GetBucketEncryptionOutput>> {
        self.map(
            "GetBucketEncryption",
            bucket::get_bucket_encryption(&self.state, req).await,
        )
    }
    async fn delete_bucket_encryption(
        &self,
        req: S3Request<DeleteBucketEncryptionInput>,
    ) -> S3Result<S3Response<DeleteBucketEncryptionOutput>> {
        self.map(
            "DeleteBucketEncryption",
            bucket::delete_bucket_encryption(&self.state, req).await,
        )
    }
    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.map("ListObjects", list::list_objects(&self.state, req).await)
    }
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.map(
            "ListObjectsV2",
            list::list_objects_v2(&self.state, req).await,
        )
    }
    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        self.map(
            "ListObjectVersions",
            list::list_object_versions(&self.state, req).await,
        )
    }
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let rid = request_id(&req);
        self.map("PutObject", put::put_object(&self.state, req, &rid).await)
    }
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let rid = request_id(&req);
        self.map("GetObject", get::get_object(&self.state, req, &rid).await)
    }
    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let rid = request_id(&req);
        self.map("HeadObject", get::head_object(&self.state, req, &rid).await)
    }
    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.map(
            "DeleteObject",
            delete::delete_object(&self.state, req).await,
        )
    }
    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.map(
            "DeleteObjects",
            delete::delete_objects(&self.state, req).await,
        )
    }
    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let rid = request_id(&req);
        self.map(
            "CopyObject",
            copy::copy_object(&self.state, req, &rid).await,
        )
    }
    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let rid = request_id(&req);
        self.map(
            "GetObjectAttributes",
            get::get_object_attributes(&self.state, req, &rid).await,
        )
    }
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let rid = request_id(&req);
        self.map(
            "CreateMultipartUpload",
            multipart::create(&self.state, req, &rid).await,
        )
    }
    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let rid = request_id(&req);
        self.map(
            "UploadPart",
            multipart::upload_part(&self.state, req, &rid).await,
        )
    }
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let rid = request_id(&req);
        self.map(
            "UploadPartCopy",
            multipart::upload_part_copy(&self.state, req, &rid).await,
        )
    }
    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let rid = request_id(&req);
        self.map(
            "CompleteMultipartUpload",
            multipart::complete(&self.state, req, &rid).await,
        )
    }
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.map(
            "AbortMultipartUpload",
            multipart::abort(&self.state, req).await,
        )
    }
    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let rid = request_id(&req);
        self.map(
            "ListParts",
            multipart::list_parts(&self.state, req, &rid).await,
        )
    }
    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.map(
            "ListMultipartUploads",
            multipart::list_uploads(&self.state, req).await,
        )
    }
}

#[cfg(test)]
mod tests;
