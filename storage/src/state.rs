//! Node configuration and the shared state every S3 handler sees: metadata, blobs, bucket keys
//! and settings. Secret: the S3 secret key (only handed to s3s's authenticator) and the bucket
//! keys inside `BucketKeys`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    pub default_encryption: DefaultEncryption,
    pub key_cache_ttl: Duration,
    pub key_cache_capacity: usize,
    pub max_body_bytes: u64,
    /// Base domains for virtual-hosted-style addressing (`bucket.DOMAIN`); path style always works.
    pub virtual_host_domains: Vec<String>,
}

/// What the handlers share.
pub struct NodeState {
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

    /// True when `host` (a Host header, port allowed) addresses a bucket by name
    /// (`bucket.DOMAIN`, virtual-hosted style).
    pub fn bucket_in_host(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        self.cfg.virtual_host_domains.iter().any(|d| {
            name.len() > d.len() + 1
                && name.ends_with(d.as_str())
                && name[..name.len() - d.len()].ends_with('.')
        })
    }
}
