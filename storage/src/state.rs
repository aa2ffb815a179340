//! Node configuration and the shared state every S3 handler sees: metadata, blobs, bucket keys
//! and settings. Secret: the S3 secret key (only handed to s3s's authenticator) and the bucket
//! keys inside `BucketKeys`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::key_cache::BucketKeys;
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
}

impl NodeState {
    /// True when SSE-C may be used on this listener.
    pub fn ssec_allowed(&self) -> bool {
        self.cfg.tls || self.cfg.allow_ssec_over_http
    }
}
