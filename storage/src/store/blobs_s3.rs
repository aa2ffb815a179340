//! The S3 blob backend (`blob_store = "s3://BUCKET/PREFIX"`): blobs live as objects
//! `PREFIX/<blob name>` in any S3-compatible store, through the `object_store` crate. The blob
//! name is the random id the node gives every blob (no bucket or object name, no metadata), and
//! the bytes are exactly the local blob file's: the segment header and AES-256-GCM-SIV
//! ciphertext for encrypted objects (only the plaintext of a bucket with encryption turned off
//! reaches the backend as written). A blob is uploaded after it is sealed into `tmp/` and
//! before its metadata row commits (multipart above [`PART_BYTES`]); reads fetch only the byte
//! range covering the requested segments. Any backend failure or timeout is
//! [`BlobError::Backend`] (answered 503 + Retry-After).
//!
//! Secret: the backend's secret access key, read from a file and handed to the client; never
//! logged. Atomic: an S3 PUT or CompleteMultipartUpload makes the object appear whole or not at
//! all; an upload that fails is aborted.

use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, GetOptions, GetRange, ObjectStore, PutPayload,
    RetryConfig, WriteMultipart,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::blobs::BlobError;
use crate::crypto::format::HEADER_LEN;

/// Blobs up to this size are one PUT; larger ones a multipart upload of parts this size.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload sent at once.
const PART_CONCURRENCY: usize = 4;

/// Where and how to reach the backend (from `serve`'s `blob_store_*` settings).
#[derive(Clone)]
pub struct S3BlobConfig {
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub url: String,
    /// `http(s)://host:port` of a non-AWS store; AWS's endpoint for `region` when `None`.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key: String,
    pub secret_key: zeroize::Zeroizing<String>,
    /// PEM CA bundle the endpoint's certificate chains to (else the system roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Allow an `http://` endpoint (tests and loopback only).
    pub allow_http: bool,
    /// Bound of one backend request; a request that fails is retried at most twice within it.
    pub timeout: Duration,
}

/// Why the backend settings were refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("blob_store {0:?} must be s3://BUCKET[/PREFIX]")]
    Url(String),
    #[error("blob store client: {0}")]
    Client(#[from] object_store::Error),
    #[error("data dir: {0}")]
    Io(#[from] std::io::Error),
}

/// The S3 backend.
pub struct S3Blobs {
    store: AmazonS3,
    /// Key prefix with a trailing `/`, or empty.
    prefix: String,
}

/// A backend error as the node reports it (the message names no secret).
fn backend(e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { path, .. } => BlobError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("blob {path} missing from the blob store"),
        )),
        e => BlobError::Backend(e.to_string()),
    }
}

impl S3Blobs {
    pub fn new(cfg: &S3BlobConfig) -> Result<Self, S3ConfigError> {
        let rest = cfg
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| S3ConfigError::Url(cfg.url.clone()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(S3ConfigError::Url(cfg.url.clone()));
        }
        let prefix = prefix.trim_matches('/');
        let mut opts = ClientOptions::new()
            .with_allow_http(cfg.allow_http)
            .with_timeout(cfg.timeout)
            .with_connect_timeout(cfg.timeout.min(Duration::from_secs(5)));
        if let Some(pem) = &cfg.ca_pem {
            for cert in Certificate::from_pem_bundle(pem)? {
                opts = opts.with_root_certificate(cert);
            }
        }
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: cfg.timeout,
        };
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key)
            .with_secret_access_key(cfg.secret_key.as_str())
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_client_options(opts)
            .with_retry(retry);
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        Ok(Self {
            store: b.build()?,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    fn path(&self, name: &str) -> ObjPath {
        ObjPath::from(format!("{}{name}", self.prefix))
    }

    /// Upload the `size` bytes of `file` (a sealed blob in `tmp/`) as blob `name`.
    pub async fn upload(
        &self,
        name: &str,
        file: std::fs::File,
        size: u64,
    ) -> Result<(), BlobError> {
        let mut file = tokio::fs::File::from_std(file);
        if size <= PART_BYTES as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).await?;
            self.store
                .put(&self.path(name), PutPayload::from(buf))
                .await
                .map_err(backend)?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&self.path(name))
            .await
            .map_err(backend)?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; PART_BYTES];
        let sent: Result<(), BlobError> = async {
            loop {
                let n = read_full(&mut file, &mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                w.wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(backend)?;
                w.write(buf.get(..n).unwrap_or_default());
            }
        }
        .await;
        match sent {
            Ok(()) => w.finish().await.map(|_| ()).map_err(backend),
            Err(e) => {
                let _ = w.abort().await;
                Err(e)
            }
        }
    }

    /// Bytes `range` of blob `name` (to its end when the range reaches past it).
    pub async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        self.store
            .get_range(&self.path(name), range)
            .await
            .map_err(backend)
    }

    /// Write bytes `range` of blob `name` into `into` (an unlinked file under `tmp/`), all of
    /// them before returning: a backend that fails mid-way fails the request before it answers.
    pub async fn fetch(
        &self,
        name: &str,
        range: Range<u64>,
        into: std::fs::File,
    ) -> Result<std::fs::File, BlobError> {
        let mut out = tokio::fs::File::from_std(into);
        let got = self
            .store
            .get_opts(
                &self.path(name),
                GetOptions {
                    range: Some(GetRange::Bounded(range)),
                    ..Default::default()
                },
            )
            .await
            .map_err(backend)?;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.map_err(backend)?).await?;
        }
        out.flush().await?;
        Ok(out.into_std().await)
    }

    /// The header of blob `name`.
    pub async fn header(&self, name: &str) -> Result<[u8; HEADER_LEN], BlobError> {
        let b = self.get_range(name, 0..HEADER_LEN as u64).await?;
        b.as_ref()
            .try_into()
            .map_err(|_| BlobError::Backend(format!("blob {name}: short header")))
    }

    pub async fn delete(&self, name: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    /// Every blob under the prefix with its last-modified time (for the orphan sweep).
    pub async fn list(&self) -> Result<Vec<(String, SystemTime)>, BlobError> {
        let prefix = self.prefix.trim_end_matches('/');
        let prefix = (!prefix.is_empty()).then(|| ObjPath::from(prefix));
        let mut names = Vec::new();
        let mut it = self.store.list(prefix.as_ref());
        while let Some(m) = it.next().await {
            let m = m.map_err(backend)?;
            if let Some(n) = m.location.filename() {
                names.push((n.to_string(), m.last_modified.into()));
            }
        }
        Ok(names)
    }

    /// Whether the backend answers now: a HEAD of a name no blob has (404 is an answer).
    pub async fn check(&self) -> Result<(), BlobError> {
        match self.store.head(&self.path(".ready-probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }
}

/// Fill `buf` from `file` unless it ends first; the bytes read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        let k = file.read(rest).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// A file under `tmp/` for a fetched range: created and unlinked at once (the descriptor keeps
/// it until the read drops it).
pub fn scratch_file(tmp: &std::path::Path) -> std::io::Result<std::fs::File> {
    let path: PathBuf = tmp.join(format!("fetch-{}", uuid::Uuid::new_v4().simple()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}
