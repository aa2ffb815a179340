//! Shared by the storage integration tests that talk to a real KMS: a `coffer-kms` process with
//! the service identity `storage`, and an in-process storage node using it over TLS, serving S3
//! on an ephemeral loopback port until dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coffer_storage::crypto::kms_client::{KmsClient, KmsClientConfig};
use coffer_storage::state::{DefaultEncryption, NodeConfig};
use coffer_tests::kms::Kms;
use coffer_tests::s3client::S3Client;

/// An in-process node (stops serving when dropped).
pub struct Node {
    pub client: S3Client,
    pub host: String,
    pub dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A node whose `kms_url` is `kms_url` (one URL or a comma-separated list), SSE-S3 by default,
/// S3 key pair `access` / `access-secret`, bucket keys cached for `key_cache_ttl`.
pub async fn node(
    kms_url: &str,
    kms: &Kms,
    credential: &Path,
    timeout: Duration,
    key_cache_ttl: Duration,
    access: &str,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("{access}-secret");
    let cfg = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        region: "us-east-1".into(),
        access_key: access.into(),
        secret_key: secret.clone(),
        tls: false,
        allow_ssec_over_http: false,
        allow_sse_kms_over_http: false,
        default_encryption: DefaultEncryption::SseS3,
        key_cache_ttl,
        key_cache_capacity: 100,
        max_body_bytes: 64 * 1024 * 1024,
        virtual_host_domains: Vec::new(),
    };
    let client = KmsClient::new(KmsClientConfig {
        url: kms_url.to_string(),
        credential: coffer_common::credential::Credential::load(credential).unwrap(),
        ca_pem: Some(std::fs::read(kms.ca_cert()).unwrap()),
        client_identity_pem: None,
        timeout,
    })
    .unwrap();
    let state = coffer_storage::server::open_state(cfg, Some(client))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(coffer_storage::server::serve(
        listener,
        Arc::clone(&state),
        None,
        async {
            let _ = rx.await;
        },
    ));
    Node {
        client: S3Client::plain(&host, access, &secret),
        host,
        dir,
        _stop: tx,
    }
}

/// A serving KMS with the service identity `storage` (generate, unwrap on every bucket) and the
/// path of that identity's credential file.
pub async fn kms_with_storage_identity() -> (Kms, PathBuf) {
    let mut kms = Kms::init().await;
    kms.start().await;
    kms.create_client("storage", "*", "generate,unwrap").await;
    let cred = kms.tmp.path().join("storage.credential");
    (kms, cred)
}
