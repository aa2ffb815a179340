//! Node configuration and the shared state every S3 handler sees: metadata, blobs, bucket keys
//! and settings. Secret: the S3 secret key (only handed to s3s's authenticator) and the bucket
//! keys inside `BucketKeys`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coffer_common::data_dir_lock::DataDirLock;

use crate::crypto::key_cache::BucketKeys;
use crate::metrics::NodeMetrics;
use crate::store::blobs::BlobStore;
use crate::store::meta::Meta;

/// Default encryption given to new buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultEncryption {
    SseS3,
    None,
}

/// Storage node settings (from flags, environment and the config file).
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Clients connect over TLS (SSE-C allowed).
    pub tls: bool,
    /// Allow SSE-C over plain HTTP (development/loopback only).
    pub allow_ssec_over_http: bool,
    /// Allow SSE-KMS over plain HTTP (development/loopback only).
    pub allow_sse_kms_over_http: bool,
    pub default_encryption: DefaultEncryption,
    pub key_cache_ttl: Duration,
    pub key_cache_capacity: usize,
    pub max_body_bytes: u64,
    /// Base domains for virtual-hosted-style addressing (`bucket.DOMAIN`); path style always works.
    pub virtual_host_domains: Vec<String>,
}

/// What the handlers share.
pub struct NodeState {
    /// This process's exclusive hold on the data dir (released on exit).
    pub dir_lock: DataDirLock,
    pub meta: Meta,
    pub blobs: BlobStore,
    pub keys: Arc<BucketKeys>,
    pub cfg: NodeConfig,
    pub metrics: NodeMetrics,
}

impl NodeState {
    /// True when SSE-C may be used on this listener.
    pub fn ssec_allowed(&self) -> bool {
        self.cfg.tls || self.cfg.allow_ssec_over_http
    }

    /// True when SSE-KMS may be used on this listener (AWS requires TLS for it).
    pub fn sse_kms_allowed(&self) -> bool {
        self.cfg.tls || self.cfg.allow_sse_kms_over_http
    }

    /// True when `host` (a Host header, port allowed) addresses a bucket by name
    /// (`bucket.DOMAIN`, virtual-hosted style).
    pub fn bucket_in_host(&self, host: Option<&str>) -> bool {
        host.and_then(|h| vhost_bucket(&self.cfg.virtual_host_domains, h))
            .is_some()
    }
}

/// The host name of a Host header (without `:port`).
pub fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The configured domain and bucket of a virtual-hosted-style Host header (`bucket.DOMAIN[:port]`).
pub fn vhost_bucket<'a, 'd>(domains: &'d [String], host: &'a str) -> Option<(&'d str, &'a str)> {
    let name = host_name(host);
    domains.iter().find_map(|d| {
        let bucket = name.strip_suffix(d.as_str())?.strip_suffix('.')?;
        (!bucket.is_empty()).then_some((d.as_str(), bucket))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts_match_configured_domains_only() {
        let d = vec!["s3.example.internal".to_string(), "files.test".to_string()];
        assert_eq!(
            vhost_bucket(&d, "photos.s3.example.internal:9000"),
            Some(("s3.example.internal", "photos"))
        );
        assert_eq!(
            vhost_bucket(&d, "a.b.files.test"),
            Some(("files.test", "a.b"))
        );
        assert_eq!(vhost_bucket(&d, "s3.example.internal"), None);
        assert_eq!(vhost_bucket(&d, "localhost:9000"), None);
        assert_eq!(vhost_bucket(&d, "xfiles.test"), None);
        assert_eq!(host_name("[::1]:9000"), "[::1]");
        assert_eq!(host_name("localhost"), "localhost");
    }
}
