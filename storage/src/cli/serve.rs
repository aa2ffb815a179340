//! `coffer-storage serve`: every setting of the production node. Each one is a flag, an
//! environment variable (`COFFER_…`) and a key of the TOML `--config` file, in that order of
//! precedence. Secrets (the S3 secret key, KMS credential, TLS keys) are only ever paths to
//! files that others cannot read, or for the S3 secret the `COFFER_S3_SECRET_KEY` variable;
//! never flag values.
//!
//! Start-up refuses rather than degrades: an https KMS URL without a CA bundle, an http KMS URL
//! without `--kms-insecure-http`, or a KMS whose certificate does not verify stops the node
//! before it listens. A KMS that is merely down is reported and answered with 503 per request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::crypto::kms_client::{KmsClient, KmsClientConfig, ProbeError};
use crate::state::{DefaultEncryption, NodeConfig};
use crate::store::blobs_s3::S3BlobConfig;
use crate::store::db::{DatabaseUrl, DbConfig};
use anyhow::{Context, Result, bail};
use clap::ValueEnum;

/// Default encryption of new buckets.
#[derive(Clone, Copy, ValueEnum)]
pub enum DefaultEnc {
    SseS3,
    None,
}

/// Settings of `coffer-storage serve` (see `deploy/storage.example.toml`).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys are the flag names with `_`).
    #[arg(long, env = "COFFER_STORAGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check the settings (files, certificates, KMS trust) and exit without serving.
    #[arg(long)]
    pub check: bool,
    #[arg(
        long,
        env = "COFFER_STORAGE_DATA_DIR",
        default_value = "./coffer-storage-data"
    )]
    pub data_dir: PathBuf,
    /// Metadata database: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` (several nodes
    /// may share one PostgreSQL database). Default: `sqlite://DATA_DIR/meta.db`.
    #[arg(long, env = "COFFER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL password (mode 0600); overrides a password in the URL.
    #[arg(long, env = "COFFER_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<PathBuf>,
    #[arg(long, env = "COFFER_S3_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: String,
    #[arg(long, env = "COFFER_S3_REGION", default_value = "us-east-1")]
    pub region: String,
    /// Base domain(s) for virtual-hosted-style requests (`bucket.DOMAIN`), comma-separated.
    #[arg(long, env = "COFFER_S3_DOMAIN", value_delimiter = ',')]
    pub domain: Vec<String>,
    /// The S3 access key id clients sign with.
    #[arg(long, env = "COFFER_S3_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// File holding the S3 secret key (mode 0600); else $COFFER_S3_SECRET_KEY.
    #[arg(long, env = "COFFER_S3_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Largest request body (object or part) in bytes; AWS's limit is 5 GiB.
    #[arg(long, env = "COFFER_MAX_BODY_BYTES", default_value_t = 5 * 1024 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// KMS base URL (https://...), or several replicas' URLs separated by commas (health
    /// checked; a failed call is retried once on the next replica). Without it, SSE-S3 answers
    /// 501.
    #[arg(long, env = "COFFER_KMS_URL")]
    pub kms_url: Option<String>,
    /// Service credential file from `coffer-kms admin client create` (mode 0600).
    #[arg(long, env = "COFFER_KMS_CREDENTIAL")]
    pub kms_credential: Option<PathBuf>,
    /// CA bundle that issued the KMS certificate (required for https KMS URLs).
    #[arg(long, env = "COFFER_KMS_CA")]
    pub kms_ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to a KMS that requires mutual TLS
    /// (`coffer-kms admin client create … --client-cert-out PREFIX` writes PREFIX.crt).
    #[arg(long, env = "COFFER_KMS_CLIENT_CERT", requires = "kms_client_key")]
    pub kms_client_cert: Option<PathBuf>,
    /// Its private key (PEM, mode 0600).
    #[arg(long, env = "COFFER_KMS_CLIENT_KEY", requires = "kms_client_cert")]
    pub kms_client_key: Option<PathBuf>,
    /// Allow an http:// KMS URL (loopback benchmarks only: bucket keys cross the wire in clear).
    #[arg(long, env = "COFFER_KMS_INSECURE_HTTP")]
    pub kms_insecure_http: bool,
    /// Timeout of one KMS call in milliseconds.
    #[arg(long, env = "COFFER_KMS_TIMEOUT_MS", default_value_t = 2000)]
    pub kms_timeout_ms: u64,
    /// Seconds a plaintext bucket key stays cached.
    #[arg(long, env = "COFFER_KEY_CACHE_TTL", default_value_t = 300)]
    pub key_cache_ttl: u64,
    /// Most bucket keys cached at once.
    #[arg(long, env = "COFFER_KEY_CACHE_CAPACITY", default_value_t = 10_000)]
    pub key_cache_capacity: usize,
    /// Serve HTTPS with this certificate chain (PEM) ...
    #[arg(long, env = "COFFER_S3_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// ... and this private key (PEM, mode 0600).
    #[arg(long, env = "COFFER_S3_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Accept SSE-C over plain HTTP (development / loopback only).
    #[arg(long, env = "COFFER_ALLOW_SSEC_OVER_HTTP")]
    pub allow_ssec_over_http: bool,
    /// Accept SSE-KMS (`aws:kms`) over plain HTTP (development / loopback only; AWS requires
    /// TLS).
    #[arg(long, env = "COFFER_ALLOW_SSE_KMS_OVER_HTTP")]
    pub allow_sse_kms_over_http: bool,
    /// Default encryption of new buckets.
    #[arg(
        long,
        env = "COFFER_DEFAULT_ENCRYPTION",
        value_enum,
        default_value = "sse-s3"
    )]
    pub default_encryption: DefaultEnc,
    /// Seconds between two re-wrap sweeps of the bucket keys (after a KMS root key rotation;
    /// `coffer-storage rewrap` runs one on a stopped node); 0 turns the background job off.
    #[arg(long, env = "COFFER_REWRAP_INTERVAL_SECS", default_value_t = 3600)]
    pub rewrap_interval_secs: u64,
    /// Connections served at once; more wait in the listen backlog until one closes.
    #[arg(long, env = "COFFER_S3_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Milliseconds from accept for the TLS handshake and the first complete request head.
    #[arg(long, env = "COFFER_S3_HEADER_TIMEOUT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// Milliseconds a connection may stay without a request in flight (keep-alive, HTTP/2).
    #[arg(long, env = "COFFER_S3_IDLE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Longest pause in milliseconds of a request body, or of a client not reading its answer.
    #[arg(long, env = "COFFER_S3_BODY_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_ms: u64,
    /// Keep blobs (ciphertext only) in an S3-compatible store, `s3://BUCKET[/PREFIX]`, instead
    /// of `blobs/` under the data dir.
    #[arg(long, env = "COFFER_BLOB_STORE")]
    pub blob_store: Option<String>,
    /// Endpoint URL of a non-AWS blob store (`https://host:port`).
    #[arg(long, env = "COFFER_BLOB_STORE_ENDPOINT", requires = "blob_store")]
    pub blob_store_endpoint: Option<String>,
    /// Region the blob store signs requests for.
    #[arg(long, env = "COFFER_BLOB_STORE_REGION", default_value = "us-east-1")]
    pub blob_store_region: String,
    /// File holding the blob store's access key id (mode 0600).
    #[arg(
        long,
        env = "COFFER_BLOB_STORE_ACCESS_KEY_FILE",
        requires = "blob_store"
    )]
    pub blob_store_access_key_file: Option<PathBuf>,
    /// File holding the blob store's secret access key (mode 0600).
    #[arg(
        long,
        env = "COFFER_BLOB_STORE_SECRET_KEY_FILE",
        requires = "blob_store"
    )]
    pub blob_store_secret_key_file: Option<PathBuf>,
    /// CA bundle (PEM) of an https blob store endpoint (else the system roots).
    #[arg(long, env = "COFFER_BLOB_STORE_CA", requires = "blob_store")]
    pub blob_store_ca: Option<PathBuf>,
    /// Allow an http:// blob store endpoint (tests and loopback only).
    #[arg(long, env = "COFFER_BLOB_STORE_ALLOW_HTTP")]
    pub blob_store_allow_http: bool,
    /// Seconds an unreferenced blob on the S3 blob store must be old before an orphan sweep
    /// removes it (it may be another node's write in flight); also the age of stale `tmp/`
    /// files for the periodic sweep.
    #[arg(long, env = "COFFER_ORPHAN_GRACE_SECS", default_value_t = 3600)]
    pub orphan_grace_secs: u64,
    /// Seconds between two orphan sweeps while serving (blobs no row references, older than
    /// `orphan_grace_secs`); 0: only the start-up sweep.
    #[arg(
        long,
        env = "COFFER_ORPHAN_SWEEP_INTERVAL_SECS",
        default_value_t = 3600
    )]
    pub orphan_sweep_interval_secs: u64,
    /// Bound in milliseconds of one blob store request (with its retries).
    #[arg(long, env = "COFFER_BLOB_STORE_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub blob_store_timeout_ms: u64,
}

/// A one-line secret from a 0600 file.
fn secret_line(f: &Path) -> Result<zeroize::Zeroizing<String>> {
    let raw = zeroize::Zeroizing::new(coffer_common::secret_file::read_secret_file(f)?);
    let text =
        std::str::from_utf8(&raw).with_context(|| format!("{} is not UTF-8", f.display()))?;
    let line = zeroize::Zeroizing::new(text.trim().to_string());
    if line.is_empty() {
        bail!("{} is empty", f.display());
    }
    Ok(line)
}

/// The metadata database settings (`database_url`, `database_password_file`).
pub(super) fn db_config(a: &ServeArgs) -> Result<DbConfig> {
    let url = match &a.database_url {
        Some(u) => DatabaseUrl::parse(u)?,
        None => DatabaseUrl::default_for(&a.data_dir),
    };
    let password = match &a.database_password_file {
        Some(f) if url.is_postgres() => Some(secret_line(f)?),
        Some(_) => bail!("database_password_file is for a postgres:// database_url"),
        None => None,
    };
    Ok(DbConfig { url, password })
}

/// The S3 blob backend's settings, when `blob_store` is set.
fn blob_store(a: &ServeArgs) -> Result<Option<S3BlobConfig>> {
    let Some(url) = &a.blob_store else {
        return Ok(None);
    };
    let (Some(ak), Some(sk)) = (&a.blob_store_access_key_file, &a.blob_store_secret_key_file)
    else {
        bail!("blob_store needs blob_store_access_key_file and blob_store_secret_key_file");
    };
    if let Some(e) = &a.blob_store_endpoint
        && e.starts_with("http://")
        && !a.blob_store_allow_http
    {
        bail!("blob store endpoint {e} is plain http: set blob_store_allow_http (tests only)");
    }
    let ca_pem = match &a.blob_store_ca {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading blob store CA {}", p.display()))?,
        ),
        None => None,
    };
    Ok(Some(S3BlobConfig {
        url: url.clone(),
        endpoint: a.blob_store_endpoint.clone(),
        region: a.blob_store_region.clone(),
        access_key: secret_line(ak)?.to_string(),
        secret_key: secret_line(sk)?,
        ca_pem,
        allow_http: a.blob_store_allow_http,
        timeout: Duration::from_millis(a.blob_store_timeout_ms),
    }))
}

/// The S3 key pair: access key from settings, secret from a 0600 file or the environment.
fn s3_keys(a: &ServeArgs) -> Result<(String, String)> {
    let access = a
        .access_key
        .clone()
        .context("no S3 access key: set access_key (--access-key, COFFER_S3_ACCESS_KEY)")?;
    let secret = match &a.secret_key_file {
        Some(f) => {
            let raw = coffer_common::secret_file::read_secret_file(f)?;
            String::from_utf8(raw)
                .with_context(|| format!("{} is not UTF-8", f.display()))?
                .trim()
                .to_string()
        }
        None => std::env::var("COFFER_S3_SECRET_KEY").context(
            "no S3 secret key: set secret_key_file (--secret-key-file, COFFER_S3_SECRET_KEY_FILE) or COFFER_S3_SECRET_KEY",
        )?,
    };
    if secret.is_empty() {
        bail!("the S3 secret key is empty");
    }
    Ok((access, secret))
}

/// A KMS client from its settings; used by `serve` and `dev`.
pub fn kms_client(
    url: &str,
    credential: &Path,
    ca: Option<&Path>,
    timeout_ms: u64,
) -> Result<KmsClient> {
    kms_client_with_identity(url, credential, ca, timeout_ms, None)
}

/// The client certificate and key (0600) for mutual TLS with the KMS, as one PEM buffer.
fn kms_client_identity(a: &ServeArgs) -> Result<Option<Vec<u8>>> {
    let (Some(cert), Some(key)) = (&a.kms_client_cert, &a.kms_client_key) else {
        return Ok(None);
    };
    let mut pem = std::fs::read(cert)
        .with_context(|| format!("reading KMS client certificate {}", cert.display()))?;
    pem.push(b'\n');
    pem.extend_from_slice(&zeroize::Zeroizing::new(
        coffer_common::secret_file::read_secret_file(key)?,
    ));
    Ok(Some(pem))
}

/// A KMS client that presents `identity` (PEM certificate + key) when given.
pub fn kms_client_with_identity(
    url: &str,
    credential: &Path,
    ca: Option<&Path>,
    timeout_ms: u64,
    identity: Option<Vec<u8>>,
) -> Result<KmsClient> {
    let credential = coffer_common::credential::Credential::load(credential)?;
    let ca_pem = match ca {
        Some(p) => {
            Some(std::fs::read(p).with_context(|| format!("reading KMS CA {}", p.display()))?)
        }
        None => None,
    };
    Ok(KmsClient::new(KmsClientConfig {
        url: url.to_string(),
        credential,
        ca_pem,
        client_identity_pem: identity,
        timeout: Duration::from_millis(timeout_ms),
    })?)
}

/// Check that every KMS replica presents a certificate we trust. A replica that cannot be
/// reached is only a warning (calls go to the others; with none, the node answers 503 until one
/// is back); one we cannot trust stops the start.
pub async fn probe_kms(kms: &KmsClient) -> Result<()> {
    let mut reachable = 0usize;
    for (url, r) in kms.probe_each().await {
        match r {
            Ok(()) => {
                reachable += 1;
                tracing::info!(url, "KMS reachable and trusted");
            }
            Err(ProbeError::Untrusted(why)) => {
                bail!("the KMS at {url} failed TLS verification ({why}); refusing to start")
            }
            Err(ProbeError::Unreachable(why)) => {
                tracing::warn!(url, why, "KMS replica not reachable at start-up");
            }
        }
    }
    if reachable == 0 {
        tracing::warn!("no KMS reachable at start-up: SSE-S3 requests answer 503 until one is");
    }
    Ok(())
}

pub(super) fn build_kms(a: &ServeArgs) -> Result<Option<KmsClient>> {
    match (&a.kms_url, &a.kms_credential) {
        (Some(list), Some(cred)) => {
            let urls = crate::crypto::kms_client::split_urls(list);
            if urls.is_empty() {
                bail!("kms_url is empty");
            }
            for url in &urls {
                if url.starts_with("http://") && !a.kms_insecure_http {
                    bail!(
                        "KMS URL {url} is plain http: bucket keys would cross the network in clear. Use https with kms_ca, or set kms_insecure_http for a loopback benchmark"
                    );
                }
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    bail!("KMS URL {url} must start with https://");
                }
            }
            let url = list;
            Ok(Some(kms_client_with_identity(
                url,
                cred,
                a.kms_ca.as_deref(),
                a.kms_timeout_ms,
                kms_client_identity(a)?,
            )?))
        }
        (None, None) => {
            tracing::warn!("no KMS configured: SSE-S3 requests will answer 501 NotImplemented");
            Ok(None)
        }
        _ => bail!("kms_url and kms_credential go together"),
    }
}

/// Run `serve`.
pub async fn run(a: ServeArgs) -> Result<()> {
    let (access_key, secret_key) = s3_keys(&a)?;
    let kms = build_kms(&a)?;
    let blob_cfg = blob_store(&a)?;
    let db = db_config(&a)?;
    if let Some(k) = &kms {
        probe_kms(k).await?;
    }
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(coffer_common::tls::load_server_config(c, k, None)?),
        (None, None) => None,
        _ => bail!("tls_cert and tls_key go together"),
    };
    if a.check {
        println!("configuration OK");
        return Ok(());
    }
    let default_encryption = match (a.default_encryption, kms.is_some()) {
        (DefaultEnc::SseS3, true) => DefaultEncryption::SseS3,
        (DefaultEnc::SseS3, false) | (DefaultEnc::None, _) => DefaultEncryption::None,
    };
    let cfg = NodeConfig {
        data_dir: a.data_dir.clone(),
        region: a.region.clone(),
        access_key,
        secret_key,
        tls: tls.is_some(),
        allow_ssec_over_http: a.allow_ssec_over_http,
        allow_sse_kms_over_http: a.allow_sse_kms_over_http,
        default_encryption,
        key_cache_ttl: Duration::from_secs(a.key_cache_ttl),
        key_cache_capacity: a.key_cache_capacity,
        max_body_bytes: a.max_body_bytes,
        virtual_host_domains: a.domain.clone(),
    };
    let sweep = crate::server::SweepSettings {
        orphan_grace: Duration::from_secs(a.orphan_grace_secs),
        orphan_sweep_every: (a.orphan_sweep_interval_secs > 0)
            .then(|| Duration::from_secs(a.orphan_sweep_interval_secs)),
    };
    tracing::info!(database = ?db.url, "metadata database");
    let state = crate::server::open_state_on(cfg, kms, blob_cfg.as_ref(), sweep, &db).await?;
    if a.rewrap_interval_secs > 0 && state.keys.has_kms() {
        tokio::spawn(crate::rewrap::background(
            std::sync::Arc::downgrade(&state),
            Duration::from_secs(a.rewrap_interval_secs),
        ));
    }
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let shutdown = coffer_common::server::shutdown_signal();
    println!("listening on {scheme}://{addr}");
    let limits = coffer_common::server::Limits::from_settings(
        usize::try_from(a.max_connections).unwrap_or(usize::MAX),
        a.header_timeout_ms,
        a.idle_timeout_ms,
        a.body_timeout_ms,
    );
    crate::server::serve_with_limits(listener, state, tls, limits, shutdown).await?;
    Ok(())
}
