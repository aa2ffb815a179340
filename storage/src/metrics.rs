//! The storage node's Prometheus metrics: S3 requests by operation and status, time to response
//! headers per operation, request bodies received and the bucket-key cache and KMS counters.
//!
//! The operation is named from the request line alone (method, query parameters, whether a
//! bucket and key are addressed), with AWS's operation names, so it is known before s3s runs and
//! also for requests s3s refuses. Label values are operation names and status codes only; no
//! bucket or object names (unbounded, and possibly sensitive) reach the metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use coffer_common::metrics::{CounterVec, HistogramVec, LATENCY_BUCKETS, Registry};
use http::Method;

use crate::crypto::key_cache::BucketKeys;

/// Handles to the node's metric families.
pub struct NodeMetrics {
    registry: Registry,
    requests: Arc<CounterVec>,
    latency: Arc<HistogramVec>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// Register the families.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = registry.counter_vec(
            "coffer_s3_requests_total",
            "S3 requests by operation and HTTP status.",
            &["operation", "status"],
        );
        let latency = registry.histogram_vec(
            "coffer_s3_request_duration_seconds",
            "Time from request to response headers, by S3 operation.",
            &["operation"],
            LATENCY_BUCKETS,
        );
        Self {
            registry,
            requests,
            latency,
        }
    }

    /// Count one answered request and its latency.
    pub fn observe(&self, operation: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.requests.inc(&[operation, &status]);
        self.latency.observe(&[operation], seconds);
    }

    /// Requests counted for one operation and status.
    pub fn requests(&self, operation: &str, status: u16) -> u64 {
        self.requests.get(&[operation, &status.to_string()])
    }

    /// Everything, including the key cache and KMS counters, in the Prometheus text format.
    pub fn render(&self, keys: &BucketKeys) -> String {
        let s = &keys.stats;
        let mut out = self.registry.render();
        let counters = [
            (
                "coffer_key_cache_hits_total",
                "Bucket-key lookups served from the cache.",
                s.hits.load(Relaxed),
            ),
            (
                "coffer_key_cache_misses_total",
                "Bucket-key lookups that needed the KMS.",
                s.misses.load(Relaxed),
            ),
            (
                "coffer_key_cache_evictions_total",
                "Bucket keys dropped (TTL, capacity or KMS loss) and zeroized.",
                s.evictions.load(Relaxed),
            ),
            (
                "coffer_kms_calls_total",
                "Calls made to the KMS (generate and unwrap).",
                s.kms_calls.load(Relaxed),
            ),
            (
                "coffer_kms_failures_total",
                "KMS calls that failed (unreachable, timed out or refused).",
                s.kms_failures.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        }
        out.push_str(&format!(
            "# HELP coffer_key_cache_entries Bucket keys cached now.\n# TYPE coffer_key_cache_entries gauge\ncoffer_key_cache_entries {}\n",
            keys.len()
        ));
        out
    }
}

/// AWS's name of the S3 operation a request asks for. `bucket_in_host` is true for
/// virtual-hosted-style requests, where the path holds only the key.
pub fn operation(
    method: &Method,
    path: &str,
    query: Option<&str>,
    copy_source: bool,
    bucket_in_host: bool,
) -> &'static str {
    let has = |name: &str| {
        query.is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.split('=').next().is_some_and(|k| k == name))
        })
    };
    let trimmed = path.trim_start_matches('/');
    let (bucket, key) = if bucket_in_host {
        (true, !trimmed.is_empty())
    } else {
        match trimmed.split_once('/') {
            Some((_, k)) => (true, !k.is_empty()),
            None => (!trimmed.is_empty(), false),
        }
    };
    match (bucket, key) {
        (false, _) if *method == Method::GET => "ListBuckets",
        (false, _) => "Other",
        (true, false) => bucket_operation(method, &has),
        (true, true) => object_operation(method, &has, copy_source),
    }
}

fn bucket_operation(method: &Method, has: &dyn Fn(&str) -> bool) -> &'static str {
    match *method {
        Method::GET if has("encryption") => "GetBucketEncryption",
        Method::GET if has("uploads") => "ListMultipartUploads",
        Method::GET if has("location") => "GetBucketLocation",
        Method::GET if has("versioning") => "GetBucketVersioning",
        Method::GET if has("list-type") => "ListObjectsV2",
        Method::GET if has("versions") => "ListObjectVersions",
        Method::GET => "ListObjects",
        Method::HEAD => "HeadBucket",
        Method::PUT if has("encryption") => "PutBucketEncryption",
        Method::PUT => "CreateBucket",
        Method::DELETE if has("encryption") => "DeleteBucketEncryption",
        Method::DELETE => "DeleteBucket",
        Method::POST if has("delete") => "DeleteObjects",
        Method::POST => "PostObject",
        _ => "Other",
    }
}

fn object_operation(method: &Method, has: &dyn Fn(&str) -> bool, copy: bool) -> &'static str {
    match *method {
        Method::GET if has("uploadId") => "ListParts",
        Method::GET if has("attributes") => "GetObjectAttributes",
        Method::GET => "GetObject",
        Method::HEAD => "HeadObject",
        Method::PUT if has("uploadId") && copy => "UploadPartCopy",
        Method::PUT if has("uploadId") => "UploadPart",
        Method::PUT if copy => "CopyObject",
        Method::PUT => "PutObject",
        Method::DELETE if has("uploadId") => "AbortMultipartUpload",
        Method::DELETE => "DeleteObject",
        Method::POST if has("uploads") => "CreateMultipartUpload",
        Method::POST if has("uploadId") => "CompleteMultipartUpload",
        _ => "Other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_named_like_aws() {
        let op = |m: Method, p: &str, q: Option<&str>| operation(&m, p, q, false, false);
        assert_eq!(op(Method::GET, "/", None), "ListBuckets");
        assert_eq!(op(Method::PUT, "/b", None), "CreateBucket");
        assert_eq!(op(Method::PUT, "/b/", None), "CreateBucket");
        assert_eq!(
            op(Method::GET, "/b", Some("list-type=2&prefix=a")),
            "ListObjectsV2"
        );
        assert_eq!(
            op(Method::GET, "/b", Some("uploads")),
            "ListMultipartUploads"
        );
        assert_eq!(op(Method::POST, "/b", Some("delete")), "DeleteObjects");
        assert_eq!(op(Method::PUT, "/b/k", None), "PutObject");
        assert_eq!(op(Method::GET, "/b/a/b/c", None), "GetObject");
        assert_eq!(
            op(Method::POST, "/b/k", Some("uploads")),
            "CreateMultipartUpload"
        );
        assert_eq!(
            op(Method::PUT, "/b/k", Some("partNumber=1&uploadId=x")),
            "UploadPart"
        );
        assert_eq!(
            operation(
                &Method::PUT,
                "/b/k",
                Some("partNumber=1&uploadId=x"),
                true,
                false
            ),
            "UploadPartCopy"
        );
        assert_eq!(
            operation(&Method::PUT, "/b/k", None, true, false),
            "CopyObject"
        );
        assert_eq!(
            op(Method::DELETE, "/b/k", Some("uploadId=x")),
            "AbortMultipartUpload"
        );
        assert_eq!(
            operation(&Method::GET, "/k", None, false, true),
            "GetObject"
        );
        assert_eq!(
            operation(&Method::GET, "/", None, false, true),
            "ListObjects"
        );
        // A key that merely contains a parameter name is not that parameter.
        assert_eq!(
            op(Method::GET, "/b/uploads", Some("x-id=GetObject")),
            "GetObject"
        );
    }

    #[test]
    fn observations_render_with_operation_and_status() {
        let m = NodeMetrics::new();
        m.observe("PutObject", 200, 0.003);
        m.observe("PutObject", 200, 0.004);
        m.observe("GetObject", 404, 0.001);
        let keys = BucketKeys::new(None, std::time::Duration::from_secs(1), 1);
        let text = m.render(&keys);
        assert!(
            text.contains("coffer_s3_requests_total{operation=\"PutObject\",status=\"200\"} 2\n")
        );
        assert!(
            text.contains("coffer_s3_requests_total{operation=\"GetObject\",status=\"404\"} 1\n")
        );
        assert!(text.contains(
            "coffer_s3_request_duration_seconds_bucket{operation=\"PutObject\",le=\"0.005\"} 2\n"
        ));
        assert!(text.contains("coffer_kms_calls_total 0\n"));
        assert!(text.contains("coffer_key_cache_entries 0\n"));
        assert_eq!(m.requests("PutObject", 200), 2);
    }
}
