//! Operating the KMS, with real processes: `/health` (liveness), `/ready` (503 `sealed` after a
//! seal), Prometheus `/metrics` on the TLS listener and on `--metrics-listen` (request, key
//! operation, audit and sealed families; no bucket ids or key material), and the `--config`
//! TOML file with its precedence (flag > env > file > default).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_common::kms_api::{PATH_HEALTH, PATH_METRICS, PATH_READY};
use coffer_tests::kms::Kms;

async fn get(http: &reqwest::Client, url: String) -> (u16, String) {
    let r = http.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The `metrics on http://ADDR/metrics` line printed after `listening on`.
async fn metrics_url(kms: &Kms) -> String {
    for _ in 0..200 {
        if let Some(l) = kms
            .logs()
            .lines()
            .find_map(|l| l.strip_prefix("[stdout] metrics on "))
        {
            return l.trim().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no metrics line:\n{}", kms.logs());
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let mut kms = Kms::init().await;
    kms.serve_args = vec!["--metrics-listen".into(), "127.0.0.1:0".into()];
    kms.start().await;
    let node = kms.create_client("node", "*", "generate,unwrap").await;
    let c = kms.client();
    let g = c.generate(&node, "secret-bucket-name").await.unwrap();
    c.unwrap(&node, "secret-bucket-name", &g.wrapped_key, g.key_version)
        .await
        .unwrap();
    let e = c
        .unwrap(&node, "other-bucket", &g.wrapped_key, g.key_version)
        .await
        .unwrap_err();
    assert_eq!(e.body.code, "unwrap_failed");

    assert_eq!(
        get(&c.http, format!("{}{PATH_HEALTH}", c.base)).await.0,
        200
    );
    let ready = get(&c.http, format!("{}{PATH_READY}", c.base)).await;
    assert_eq!(ready, (200, r#"{"status":"ready"}"#.to_string()));

    let (status, text) = get(&c.http, format!("{}{PATH_METRICS}", c.base)).await;
    assert_eq!(status, 200);
    for want in [
        "coffer_kms_requests_total{route=\"/v1/keys/generate\",method=\"POST\",status=\"200\"} 1\n",
        "coffer_kms_requests_total{route=\"/v1/keys/unwrap\",method=\"POST\",status=\"400\"} 1\n",
        "coffer_kms_key_operations_total{operation=\"generate\",result=\"ok\"} 1\n",
        "coffer_kms_key_operations_total{operation=\"unwrap\",result=\"ok\"} 1\n",
        "coffer_kms_key_operations_total{operation=\"unwrap\",result=\"unwrap_failed\"} 1\n",
        "coffer_kms_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/keys/unwrap\"} 2\n",
        "coffer_kms_audit_write_duration_seconds_count ",
        "coffer_kms_audit_write_failures_total 0\n",
        "coffer_kms_sealed 0\n",
        "coffer_kms_audit_healthy 1\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    for secret in [
        "secret-bucket-name",
        "node",
        g.plaintext_key.as_str(),
        g.wrapped_key.as_str(),
    ] {
        assert!(!text.contains(secret), "{secret:?} in metrics");
    }

    // The private plain-HTTP metrics port serves the same registry.
    let murl = metrics_url(&kms).await;
    assert!(murl.starts_with("http://127.0.0.1:"), "{murl}");
    let (status, plain) = get(&reqwest::Client::new(), murl).await;
    assert_eq!(status, 200);
    assert!(plain.contains("coffer_kms_key_operations_total"), "{plain}");

    // Sealed: alive, not ready, and the gauge says so.
    let out = kms.admin(&["seal"]).await;
    assert!(out.status.success(), "{}", kms.logs());
    assert_eq!(
        get(&c.http, format!("{}{PATH_HEALTH}", c.base)).await.0,
        200
    );
    let (status, body) = get(&c.http, format!("{}{PATH_READY}", c.base)).await;
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "sealed", "{body}");
    let (_, text) = get(&c.http, format!("{}{PATH_METRICS}", c.base)).await;
    assert!(text.contains("coffer_kms_sealed 1\n"), "{text}");
    assert!(text.contains("coffer_kms_key_operations_total{operation=\"seal\",result=\"ok\"} 1\n"));
    let status = kms.stop().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn config_file_layers_under_env_and_flags() {
    let mut kms = Kms::init().await;
    let cfg = kms.tmp.path().join("kms.toml");
    std::fs::write(
        &cfg,
        "listen = \"not-an-address\"\ninsecure_http = true\nmetrics_listen = \"127.0.0.1:0\"\ncheckpoint_every = 7\n",
    )
    .unwrap();
    kms.serve_args = vec!["--config".into(), cfg.to_str().unwrap().into()];
    // env beats file (insecure_http off again), flag beats env and file (--listen 127.0.0.1:0
    // from the harness), file beats default (metrics_listen).
    kms.env
        .push(("COFFER_KMS_INSECURE_HTTP".into(), "false".into()));
    kms.env
        .push(("COFFER_KMS_LISTEN".into(), "also-not-an-address".into()));
    kms.start().await;
    assert!(kms.url.starts_with("https://"), "{}", kms.url);
    metrics_url(&kms).await;
    let _ = kms.stop().await;

    // Without the env override the file's insecure_http applies (and is warned about).
    kms.env.clear();
    kms.start().await;
    assert!(kms.url.starts_with("http://"), "{}", kms.url);
    assert!(kms.logs().contains("WARNING: --insecure-http"));
    let _ = kms.stop().await;

    // Unknown keys (a passphrase above all) are refused with exit code 2, naming the key.
    std::fs::write(&cfg, "passphrase = \"hunter2\"\n").unwrap();
    let out = kms
        .cli(&[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            kms.data_dir.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting `passphrase`"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn example_config_is_accepted() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kms.example.toml");
    let mut kms = Kms::init().await;
    let tls = kms.data_dir.join("tls");
    // The example's paths point at /var/lib and /etc; flags point them at this test's files.
    kms.serve_args = vec![
        "--config".into(),
        example.to_str().unwrap().into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        tls.join("kms.pem").to_str().unwrap().into(),
        "--tls-key".into(),
        tls.join("kms.key").to_str().unwrap().into(),
    ];
    kms.start().await;
    assert!(kms.url.starts_with("https://"), "{}", kms.url);
    let c = kms.client();
    assert_eq!(get(&c.http, format!("{}{PATH_READY}", c.base)).await.0, 200);
    assert!(kms.stop().await.success());
}
