//! `cargo test` end to end through a real KMS: a `coffer-kms` process (initialized, serving TLS,
//! a service identity enrolled through its admin CLI) and an in-process storage node that talks
//! to it over TLS. Covers the SSE-S3 round trip, no plaintext on disk, the KMS audit record of the
//! data key found by the S3 response's `x-amz-request-id` (one request id end to end) and by the
//! S3 bucket name, the KMS client's behaviour when the KMS dies (warm keys keep serving, cold ones
//! answer 503 with Retry-After and write nothing) and when it hangs (bounded by the timeout).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_tests::kms::Kms;

const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a9c";

mod common;
use common::kms_with_storage_identity;

async fn node(kms_url: &str, kms: &Kms, credential: &Path, timeout: Duration) -> common::Node {
    common::node(
        kms_url,
        kms,
        credential,
        timeout,
        Duration::from_secs(300),
        "kms-test",
    )
    .await
}

fn payload() -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < 300_000 {
        body.extend_from_slice(MARKER);
        body.extend_from_slice(&(body.len() as u64).to_le_bytes());
    }
    body
}

/// Every regular file under `dir`, read whole.
fn files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p.display().to_string(), b));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_s3_through_a_real_kms() {
    let (mut kms, cred) = kms_with_storage_identity().await;
    let n = node(&kms.url, &kms, &cred, Duration::from_secs(2)).await;
    let c = &n.client;

    assert_eq!(c.call("PUT", "/photos", &[], &[], vec![]).await.status, 200);
    let body = payload();
    let put = c.call("PUT", "/photos/cat", &[], &[], body.clone()).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.header("x-amz-server-side-encryption"), "AES256");
    let rid = put.header("x-amz-request-id");
    assert!(rid.len() >= 16, "request id {rid:?}");

    let get = c.call("GET", "/photos/cat", &[], &[], vec![]).await;
    assert_eq!(get.status, 200);
    assert_eq!(get.header("x-amz-server-side-encryption"), "AES256");
    assert!(get.body == body, "GET returned other bytes");
    assert_ne!(
        get.header("x-amz-request-id"),
        rid,
        "each request has its own id"
    );

    // Nothing under the node's data dir holds the plaintext.
    let mut all = Vec::new();
    files(n.dir.path(), &mut all);
    assert!(!all.is_empty());
    for (name, bytes) in &all {
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER),
            "plaintext marker found in {name}"
        );
    }

    // The KMS audit record of the data key is found by the S3 bucket name, and carries the
    // request id the S3 client was given.
    let q = kms
        .admin(&["audit", "query", "--bucket", "photos", "--op", "generate"])
        .await;
    assert!(q.status.success(), "{}", kms.logs());
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["request_id"], serde_json::json!(rid));
    assert_eq!(records[0]["identity"], serde_json::json!("storage"));
    assert_eq!(records[0]["result"], serde_json::json!("ok"));
    let none = kms.admin(&["audit", "query", "--bucket", "photo"]).await;
    assert!(none.status.success());
    assert_eq!(
        String::from_utf8_lossy(&none.stdout).trim(),
        "",
        "prefix of a name matched"
    );
    let export = kms.export_audit("audit.jsonl").await;
    let (ok, out) = kms.verify_audit(&export).await;
    assert!(ok, "audit export does not verify: {out}");

    // The KMS dies: the cached bucket key keeps serving; a bucket whose key is not in hand
    // answers 503 + Retry-After and nothing is written.
    kms.kill9().await;
    let get = c.call("GET", "/photos/cat", &[], &[], vec![]).await;
    assert_eq!(get.status, 200);
    assert!(get.body == body);
    assert_eq!(c.call("PUT", "/cold", &[], &[], vec![]).await.status, 200);
    // (a small body: an answer sent before a large body is read is issue 11 A3's subject)
    let put = c.call("PUT", "/cold/x", &[], &[], MARKER.to_vec()).await;
    assert_eq!(put.status, 503, "{}", put.text());
    assert_eq!(put.one("Code"), "ServiceUnavailable");
    assert!(!put.header("retry-after").is_empty());
    assert_eq!(
        c.call("HEAD", "/cold/x", &[], &[], vec![]).await.status,
        404
    );
    let list = c
        .call("GET", "/cold", &[("list-type", "2")], &[], vec![])
        .await;
    assert_eq!(list.one("KeyCount"), "0", "{}", list.text());
}

/// A KMS that accepts connections and never answers: a cold-key PUT answers 503 within the
/// client's timeout (plus the request's own work), not after the peer gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_kms_is_bounded_by_the_client_timeout() {
    let (mut kms, cred) = kms_with_storage_identity().await;
    // A listener that accepts and holds connections without a byte: a hung KMS.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("https://localhost:{}", hung.local_addr().unwrap().port());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let n = node(&hung_url, &kms, &cred, Duration::from_millis(500)).await;
    let c = &n.client;
    assert_eq!(c.call("PUT", "/hung", &[], &[], vec![]).await.status, 200);
    let t = Instant::now();
    let put = c.call("PUT", "/hung/k", &[], &[], MARKER.to_vec()).await;
    let took = t.elapsed();
    assert_eq!(put.status, 503, "{}", put.text());
    assert_eq!(put.one("Code"), "ServiceUnavailable");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        c.call("HEAD", "/hung/k", &[], &[], vec![]).await.status,
        404
    );
    kms.stop().await;
}

/// The KMS refuses the node (its identity revoked): a cold-key PUT answers 500 InternalError
/// (a refusal is not transient: no Retry-After), writes nothing, and the KMS audit record of
/// the refusal carries the S3 request's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kms_refusal_is_an_internal_error_that_writes_nothing() {
    let (mut kms, cred) = kms_with_storage_identity().await;
    let n = node(&kms.url, &kms, &cred, Duration::from_secs(2)).await;
    let c = &n.client;
    let o = kms.admin(&["client", "revoke", "storage"]).await;
    assert!(o.status.success(), "{}", kms.logs());
    assert_eq!(
        c.call("PUT", "/revoked", &[], &[], vec![]).await.status,
        200
    );
    let put = c.call("PUT", "/revoked/k", &[], &[], MARKER.to_vec()).await;
    assert_eq!(put.status, 500, "{}", put.text());
    assert_eq!(put.one("Code"), "InternalError");
    assert!(put.header("retry-after").is_empty());
    let rid = put.header("x-amz-request-id");
    assert_eq!(
        c.call("HEAD", "/revoked/k", &[], &[], vec![]).await.status,
        404
    );
    let q = kms
        .admin(&[
            "audit",
            "query",
            "--op",
            "generate",
            "--result",
            "identity_revoked",
        ])
        .await;
    let out = String::from_utf8_lossy(&q.stdout).into_owned();
    assert!(out.contains("identity_revoked"), "{out}");
    assert!(
        out.contains(&rid),
        "audit record without request id {rid}: {out}"
    );
    kms.stop().await;
}
