//! `coffer-storage dev`: the whole system on one machine for local use. Initializes a KMS and
//! certificates in the data dir on first run, runs `coffer-kms serve` as a child process over
//! TLS, enrolls this node, serves HTTPS S3 and writes `dev.env`. Development only: the dev
//! passphrase sits in a 0600 file next to the data it protects.

use std::path::PathBuf;
use std::time::Duration;

use crate::state::{DefaultEncryption, NodeConfig};
use anyhow::{Context, Result};

/// Settings of `dev`.
#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the KMS, the node and their certificates live.
    #[arg(long, default_value = "./coffer-data")]
    data_dir: PathBuf,
    /// S3 listener (HTTPS).
    #[arg(long, default_value = "127.0.0.1:9000")]
    s3_listen: String,
    /// KMS listener (HTTPS, loopback).
    #[arg(long, default_value = "127.0.0.1:9001")]
    kms_listen: String,
}

/// Run `dev`.
pub async fn run(a: DevArgs) -> Result<()> {
    use crate::dev;
    let p = dev::DevPaths::new(&a.data_dir);
    std::fs::create_dir_all(&p.root).with_context(|| format!("creating {}", p.root.display()))?;
    // One dev per data dir, before anything in it is read or started (the storage and KMS
    // dirs inside are locked again by the node and by the KMS child).
    let _dev_lock = coffer_common::data_dir_lock::DataDirLock::acquire(
        &p.root,
        "coffer-dev",
        "coffer-storage dev",
    )?;
    let creds = dev::prepare(&p)?;
    let kms_bin = dev::kms_binary()?;
    dev::init_kms_if_needed(&p, &kms_bin).await?;
    dev::replace_stale_kms(&p).await?;
    let child = dev::start_kms(&p, &kms_bin, &a.kms_listen).await?;
    let kms_url = child.url.clone();
    dev::enroll_if_needed(&p, &kms_bin, &kms_url).await?;
    let kms = super::serve::kms_client(&kms_url, &p.service_credential, Some(&p.ca_cert), 2000)?;
    let tls = coffer_common::tls::load_server_config(&p.s3_cert, &p.s3_key, None)?;
    let cfg = NodeConfig {
        data_dir: p.storage_dir.clone(),
        region: "us-east-1".into(),
        access_key: creds.access_key.clone(),
        secret_key: creds.secret_key.clone(),
        tls: true,
        allow_ssec_over_http: false,
        allow_sse_kms_over_http: false,
        default_encryption: DefaultEncryption::SseS3,
        key_cache_ttl: Duration::from_secs(300),
        key_cache_capacity: 10_000,
        max_body_bytes: 5 * 1024 * 1024 * 1024,
        virtual_host_domains: Vec::new(),
    };
    let state = crate::server::open_state(cfg, Some(kms)).await?;
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
    dev::write_env(&p, &endpoint, &creds, &kms_url, &kms_bin)?;
    let shutdown = coffer_common::server::shutdown_signal();
    println!("Coffer dev deployment (DEVELOPMENT ONLY)");
    println!("  S3 endpoint : {endpoint}");
    println!("  access key  : {}", creds.access_key);
    println!("  secret key  : {}", creds.secret_key);
    let kms_pid = child.child.id().unwrap_or(0);
    println!("  KMS         : {kms_url} (child pid {kms_pid})");
    println!("  CA bundle   : {}", p.ca_cert.display());
    println!(
        "  settings    : {} (source it: . {})",
        p.env_file.display(),
        p.env_file.display()
    );
    println!("ready");
    let supervisor = dev::Supervisor::start(
        dev::DevPaths::new(&a.data_dir),
        kms_bin.clone(),
        child,
        state.keys.clone(),
    );
    crate::server::serve(listener, state, Some(tls), shutdown).await?;
    supervisor.stop().await;
    Ok(())
}
