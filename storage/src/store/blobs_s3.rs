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
//! The orphan sweep also lists the prefix's incomplete backend multipart uploads (a signed
//! ListMultipartUploads, which `object_store` has no call for) so that it can abort abandoned
//! ones.
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
    #[error("blob store client: {0}")]
    Raw(String),
}

/// The S3 backend.
pub struct S3Blobs {
    store: AmazonS3,
    /// Key prefix with a trailing `/`, or empty.
    prefix: String,
    /// Signed requests `object_store` has no call for (listing incomplete multipart uploads).
    raw: RawS3,
}

/// A backend multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// SigV4-signed requests to the bucket, path style (`ENDPOINT/BUCKET`).
struct RawS3 {
    http: reqwest::Client,
    bucket_url: String,
    credential: object_store::aws::AwsCredential,
    region: String,
}

/// Most pages of ListMultipartUploads read by one sweep.
const MAX_UPLOAD_PAGES: usize = 100;

impl RawS3 {
    fn new(cfg: &S3BlobConfig, bucket: &str) -> Result<Self, S3ConfigError> {
        let mut b = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .use_rustls_tls();
        if let Some(pem) = &cfg.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| S3ConfigError::Raw(e.to_string()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        let endpoint = match &cfg.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", cfg.region),
        };
        if endpoint.starts_with("http://") && !cfg.allow_http {
            return Err(S3ConfigError::Raw(format!("{endpoint} is plain http")));
        }
        Ok(Self {
            http: b.build().map_err(|e| S3ConfigError::Raw(e.to_string()))?,
            bucket_url: format!("{endpoint}/{bucket}"),
            credential: object_store::aws::AwsCredential {
                key_id: cfg.access_key.clone(),
                secret_key: cfg.secret_key.to_string(),
                token: None,
            },
            region: cfg.region.clone(),
        })
    }

    /// Send `method url` (empty body) signed; the status and body.
    async fn send(&self, method: http::Method, url: &str) -> Result<(u16, Bytes), BlobError> {
        let mut req: object_store::client::HttpRequest = http::Request::builder()
            .method(method.clone())
            .uri(url)
            .body(object_store::client::HttpRequestBody::empty())
            .map_err(|e| BlobError::Backend(e.to_string()))?;
        object_store::aws::AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .authorize(&mut req, None);
        let mut rb = self.http.request(method, url);
        for (k, v) in req.headers() {
            if k != http::header::HOST {
                rb = rb.header(k, v);
            }
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| BlobError::Backend(format!("blob store request failed: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| BlobError::Backend(format!("blob store answer: {e}")))?;
        Ok((status, body))
    }

    /// Incomplete multipart uploads of keys under `prefix`.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, BlobError> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        for _ in 0..MAX_UPLOAD_PAGES {
            let mut url = format!("{}?uploads&prefix={}", self.bucket_url, enc(prefix));
            if let Some((k, u)) = &markers {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    enc(k),
                    enc(u)
                ));
            }
            let (status, body) = self.send(http::Method::GET, &url).await?;
            if status != 200 {
                return Err(BlobError::Backend(format!(
                    "ListMultipartUploads answered {status}"
                )));
            }
            let text = String::from_utf8_lossy(&body);
            for block in xml_blocks(&text, "Upload") {
                let (Some(key), Some(id)) = (xml_text(block, "Key"), xml_text(block, "UploadId"))
                else {
                    continue;
                };
                let initiated = xml_text(block, "Initiated")
                    .and_then(|t| {
                        time::OffsetDateTime::parse(
                            &t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .map(SystemTime::from);
                // An upload of unknown age is left alone.
                if let Some(initiated) = initiated {
                    out.push(PendingUpload {
                        key,
                        upload_id: id,
                        initiated,
                    });
                }
            }
            let truncated = xml_text(&text, "IsTruncated").is_some_and(|t| t == "true");
            match (
                truncated,
                xml_text(&text, "NextKeyMarker"),
                xml_text(&text, "NextUploadIdMarker"),
            ) {
                (true, Some(k), Some(u)) => markers = Some((k, u)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), BlobError> {
        let path: String = key.split('/').map(enc).collect::<Vec<_>>().join("/");
        let url = format!("{}/{path}?uploadId={}", self.bucket_url, enc(upload_id));
        match self.send(http::Method::DELETE, &url).await? {
            (200..=299, _) | (404, _) => Ok(()),
            (status, _) => Err(BlobError::Backend(format!(
                "AbortMultipartUpload answered {status}"
            ))),
        }
    }
}

/// Percent-encoding of a query value or key segment (RFC 3986 unreserved kept).
fn enc(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// The inner texts of every `<tag>…</tag>` in `xml`.
fn xml_blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = rest.get(i + open.len()..).unwrap_or_default();
        let Some(j) = after.find(&close) else { break };
        out.push(after.get(..j).unwrap_or_default());
        rest = after.get(j + close.len()..).unwrap_or_default();
    }
    out
}

/// The first `<tag>` text in `xml`, XML entities decoded.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let raw = xml_blocks(xml, tag).into_iter().next()?;
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
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
            raw: RawS3::new(cfg, bucket)?,
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

    /// Incomplete backend multipart uploads of blobs under the prefix (another node's upload in
    /// flight, or one abandoned by a node killed mid-upload).
    pub async fn pending_uploads(&self) -> Result<Vec<PendingUpload>, BlobError> {
        let mut all = self.raw.list_uploads(&self.prefix).await?;
        // Only blobs directly under the prefix are ours.
        all.retain(|u| {
            u.key
                .strip_prefix(&self.prefix)
                .is_some_and(|n| !n.is_empty() && !n.contains('/'))
        });
        Ok(all)
    }

    /// Abort one incomplete backend multipart upload (its parts are freed).
    pub async fn abort_upload(&self, u: &PendingUpload) -> Result<(), BlobError> {
        self.raw.abort_upload(&u.key, &u.upload_id).await
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
