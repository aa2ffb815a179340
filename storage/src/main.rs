//! coffer-storage command line: `serve` (production shape) and `dev` (the whole system locally).
//! Thin: parses flags and environment, then calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use coffer_storage::crypto::kms_client::{KmsClient, KmsClientConfig};
use coffer_storage::state::{DefaultEncryption, NodeConfig};

#[derive(Parser)]
#[command(
    name = "coffer-storage",
    about = "Coffer S3-compatible storage node with envelope encryption"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// JSON log lines.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DefaultEnc {
    SseS3,
    None,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(
        long,
        env = "COFFER_STORAGE_DATA_DIR",
        default_value = "./coffer-storage-data"
    )]
    data_dir: PathBuf,
    #[arg(long, env = "COFFER_S3_LISTEN", default_value = "127.0.0.1:9000")]
    listen: String,
    #[arg(long, env = "COFFER_S3_REGION", default_value = "us-east-1")]
    region: String,
    /// Base domain(s) for virtual-hosted-style requests (`bucket.DOMAIN`), comma-separated.
    #[arg(long, env = "COFFER_S3_DOMAIN", value_delimiter = ',')]
    domain: Vec<String>,
    /// KMS base URL (https://... in production). Without it, SSE-S3 answers 501.
    #[arg(long, env = "COFFER_KMS_URL")]
    kms_url: Option<String>,
    /// Service credential file from `coffer-kms admin client create`.
    #[arg(long, env = "COFFER_KMS_CREDENTIAL")]
    kms_credential: Option<PathBuf>,
    /// CA bundle that issued the KMS certificate (required for https KMS URLs).
    #[arg(long, env = "COFFER_KMS_CA")]
    kms_ca: Option<PathBuf>,
    /// Timeout of one KMS call in milliseconds.
    #[arg(long, env = "COFFER_KMS_TIMEOUT_MS", default_value_t = 2000)]
    kms_timeout_ms: u64,
    /// Seconds a plaintext bucket key stays cached.
    #[arg(long, env = "COFFER_KEY_CACHE_TTL", default_value_t = 300)]
    key_cache_ttl: u64,
    #[arg(long, env = "COFFER_KEY_CACHE_CAPACITY", default_value_t = 10_000)]
    key_cache_capacity: usize,
    /// Serve HTTPS with this certificate chain (PEM) ...
    #[arg(long, env = "COFFER_S3_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// ... and this private key (PEM, mode 0600).
    #[arg(long, env = "COFFER_S3_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Accept SSE-C over plain HTTP (development / loopback only).
    #[arg(long, env = "COFFER_ALLOW_SSEC_OVER_HTTP")]
    allow_ssec_over_http: bool,
    /// Default encryption of new buckets.
    #[arg(
        long,
        env = "COFFER_DEFAULT_ENCRYPTION",
        value_enum,
        default_value = "sse-s3"
    )]
    default_encryption: DefaultEnc,
}

#[derive(clap::Args)]
struct DevArgs {
    #[arg(long, default_value = "./coffer-data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:9000")]
    s3_listen: String,
    #[arg(long, default_value = "127.0.0.1:9001")]
    kms_listen: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve S3 (see --help for every setting; each has an environment variable).
    Serve(Box<ServeArgs>),
    /// Run KMS + storage locally (development only).
    Dev(DevArgs),
}

fn s3_keys() -> Result<(String, String)> {
    let a = std::env::var("COFFER_S3_ACCESS_KEY").context("COFFER_S3_ACCESS_KEY is not set")?;
    let s = match std::env::var("COFFER_S3_SECRET_KEY_FILE") {
        Ok(f) => String::from_utf8(coffer_common::secret_file::read_secret_file(
            std::path::Path::new(&f),
        )?)?
        .trim()
        .to_string(),
        Err(_) => std::env::var("COFFER_S3_SECRET_KEY")
            .context("COFFER_S3_SECRET_KEY (or COFFER_S3_SECRET_KEY_FILE) is not set")?,
    };
    Ok((a, s))
}

fn kms_client(
    url: &str,
    credential: &std::path::Path,
    ca: Option<&std::path::Path>,
    timeout_ms: u64,
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
        client_identity_pem: None,
        timeout: Duration::from_millis(timeout_ms),
    })?)
}

async fn serve(a: ServeArgs) -> Result<()> {
    let (access_key, secret_key) = s3_keys()?;
    let kms = match (&a.kms_url, &a.kms_credential) {
        (Some(url), Some(cred)) => Some(kms_client(
            url,
            cred,
            a.kms_ca.as_deref(),
            a.kms_timeout_ms,
        )?),
        (None, None) => {
            tracing::warn!("no KMS configured: SSE-S3 requests will answer 501 NotImplemented");
            None
        }
        _ => bail!("--kms-url and --kms-credential go together"),
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(coffer_common::tls::load_server_config(c, k, None)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
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
        default_encryption,
        key_cache_ttl: Duration::from_secs(a.key_cache_ttl),
        key_cache_capacity: a.key_cache_capacity,
        max_body_bytes: 5 * 1024 * 1024 * 1024,
        virtual_host_domains: a.domain.clone(),
    };
    let state = coffer_storage::server::open_state(cfg, kms).await?;
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{addr}");
    coffer_storage::server::serve(
        listener,
        state,
        tls,
        coffer_common::server::shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn dev(a: DevArgs) -> Result<()> {
    use coffer_storage::dev;
    let p = dev::DevPaths::new(&a.data_dir);
    let creds = dev::prepare(&p)?;
    let kms_bin = dev::kms_binary()?;
    dev::init_kms_if_needed(&p, &kms_bin).await?;
    let (mut child, kms_url) = dev::start_kms(&p, &kms_bin, &a.kms_listen).await?;
    dev::enroll_if_needed(&p, &kms_bin, &kms_url).await?;
    let kms = kms_client(&kms_url, &p.service_credential, Some(&p.ca_cert), 2000)?;
    let tls = coffer_common::tls::load_server_config(&p.s3_cert, &p.s3_key, None)?;
    let cfg = NodeConfig {
        data_dir: p.storage_dir.clone(),
        region: "us-east-1".into(),
        access_key: creds.access_key.clone(),
        secret_key: creds.secret_key.clone(),
        tls: true,
        allow_ssec_over_http: false,
        default_encryption: DefaultEncryption::SseS3,
        key_cache_ttl: Duration::from_secs(300),
        key_cache_capacity: 10_000,
        max_body_bytes: 5 * 1024 * 1024 * 1024,
        virtual_host_domains: Vec::new(),
    };
    let state = coffer_storage::server::open_state(cfg, Some(kms)).await?;
    let listener = tokio::net::TcpListener::bind(&a.s3_listen)
        .await
        .with_context(|| format!("binding {}", a.s3_listen))?;
    let addr = listener.local_addr()?;
    let endpoint = format!(
        "https://{}",
        if addr.ip().is_loopback() && addr.is_ipv4() {
            format!("localhost:{}", addr.port())
        } else {
            addr.to_string()
        }
    );
    dev::write_env(&p, &endpoint, &creds, &kms_url)?;
    println!("Coffer dev deployment (DEVELOPMENT ONLY)");
    println!("  S3 endpoint : {endpoint}");
    println!("  access key  : {}", creds.access_key);
    println!("  secret key  : {}", creds.secret_key);
    println!(
        "  KMS         : {kms_url} (child pid {})",
        child.id().unwrap_or(0)
    );
    println!("  CA bundle   : {}", p.ca_cert.display());
    println!(
        "  settings    : {} (source it: . {})",
        p.env_file.display(),
        p.env_file.display()
    );
    println!("ready");
    let keys = state.keys.clone();
    let kms_pid = child.id();
    let watcher = tokio::spawn(async move {
        let status = child.wait().await;
        tracing::error!(
            ?status,
            "the KMS child process exited: key-dependent requests now answer 503"
        );
        keys.disable();
        child
    });
    coffer_storage::server::serve(
        listener,
        state,
        Some(tls),
        coffer_common::server::shutdown_signal(),
    )
    .await?;
    // Ask the KMS child to stop cleanly (it signs a last audit checkpoint), then wait for it;
    // kill_on_drop is the fallback if it does not exit in time.
    if let Some(pid) = kms_pid.and_then(|p| i32::try_from(p).ok()) {
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the pid of our own child process; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), watcher).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    coffer_common::telemetry::init_logging(cli.log_json);
    coffer_common::tls::install_crypto_provider();
    match cli.cmd {
        Cmd::Serve(a) => serve(*a).await,
        Cmd::Dev(a) => dev(a).await,
    }
}
