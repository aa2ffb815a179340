//! Root key rotation followed to its end against a real `coffer-kms` process (issue 13,
//! "Finish the lifecycle that exists"): the storage node stores the newer wrapping the KMS offers
//! on unwrap; `coffer-storage rewrap` (a real process) brings every bucket row to the active root
//! version with a coverage report, resumes after `kill -9`; `coffer-kms admin keys retire N` is
//! refused while anything depends on N (and for the active version), succeeds after the sweep, and
//! every object still reads byte-exact afterwards (KMS restarted without the retired versions).
//! SSE-S3 bucket key rotation (`rotate-bucket-key`) and its metadata-only re-seal sweep (also
//! resumed after `kill -9`; a hidden `--test-row-delay-ms` hook keeps the kill mid-way), and the
//! serving node's background job doing both.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_storage::crypto::kms_client::{KmsClient, KmsClientConfig};
use coffer_storage::state::{DefaultEncryption, NodeConfig};
use coffer_tests::kms::Kms;
use coffer_tests::s3client::S3Client;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ACCESS: &str = "sweep-test";
const SECRET: &str = "sweep-test-secret";

async fn kms_with_storage_identity() -> (Kms, PathBuf) {
    let mut kms = Kms::init().await;
    kms.start().await;
    kms.create_client("storage", "*", "generate,unwrap").await;
    let cred = kms.tmp.path().join("storage.credential");
    (kms, cred)
}

/// `admin rotate` `n` times, then wait until the KMS's own re-wrap reports 100 % (polling the
/// status is the observable signal, bounded).
async fn rotate(kms: &Kms, n: u32) {
    for _ in 0..n {
        let o = kms.admin(&["rotate"]).await;
        assert!(o.status.success(), "{}", kms.logs());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = kms.admin(&["rotate", "status"]).await;
        assert!(o.status.success());
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if s["coverage_percent"].as_f64() == Some(100.0) {
            return;
        }
        assert!(Instant::now() < deadline, "KMS re-wrap stalled: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `admin keys retire v`: Ok(()) or Err(stderr).
async fn retire(kms: &Kms, v: u32) -> Result<(), String> {
    let o = kms.admin(&["keys", "retire", &v.to_string()]).await;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// `admin keys list`.
async fn keys_list(kms: &Kms) -> serde_json::Value {
    let o = kms.admin(&["keys", "list"]).await;
    assert!(o.status.success(), "{}", kms.logs());
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Bucket rows per wrapped-key version, read from the node's meta.db.
async fn versions(data_dir: &Path) -> Vec<(i64, i64)> {
    let url = format!("sqlite://{}?mode=ro", data_dir.join("meta.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT wrapped_key_version, COUNT(*) FROM buckets WHERE wrapped_key IS NOT NULL GROUP BY wrapped_key_version ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

fn body_of(i: usize) -> Vec<u8> {
    format!("object {i} ").repeat(100 + i).into_bytes()
}

/// Regression: after rotations, an unwrap answered with a newer wrapping is stored (main kept
/// every bucket row at version 1 while the KMS reported 100 % coverage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_wrapping_offered_on_unwrap_is_stored() {
    let (kms, cred) = kms_with_storage_identity().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        region: "us-east-1".into(),
        access_key: ACCESS.into(),
        secret_key: SECRET.into(),
        tls: false,
        allow_ssec_over_http: false,
        allow_sse_kms_over_http: false,
        default_encryption: DefaultEncryption::SseS3,
        // Every request unwraps through the KMS (no cached key).
        key_cache_ttl: Duration::ZERO,
        key_cache_capacity: 100,
        max_body_bytes: 1024 * 1024,
        virtual_host_domains: Vec::new(),
    };
    let client = KmsClient::new(KmsClientConfig {
        url: kms.url.clone(),
        credential: coffer_common::credential::Credential::load(&cred).unwrap(),
        ca_pem: Some(std::fs::read(kms.ca_cert()).unwrap()),
        client_identity_pem: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let state = coffer_storage::server::open_state(cfg, Some(client))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(coffer_storage::server::serve(
        listener,
        Arc::clone(&state),
        None,
        async {
            let _ = rx.await;
        },
    ));
    let c = S3Client::plain(&host, ACCESS, SECRET);
    assert_eq!(c.call("PUT", "/bk1", &[], &[], vec![]).await.status, 200);
    let put = c.call("PUT", "/bk1/o", &[], &[], body_of(1)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(versions(dir.path()).await, vec![(1, 1)]);

    rotate(&kms, 3).await;
    assert!(
        retire(&kms, 1)
            .await
            .unwrap_err()
            .contains("root_version_in_use"),
        "the node still holds version 1"
    );
    let get = c.call("GET", "/bk1/o", &[], &[], vec![]).await;
    assert_eq!(get.status, 200);
    assert!(get.body == body_of(1));
    assert_eq!(
        versions(dir.path()).await,
        vec![(4, 1)],
        "the newer wrapping was not stored"
    );
    // Stored and presented: nothing depends on 1..3 any more.
    for v in 1..=3 {
        retire(&kms, v).await.unwrap();
    }
    let get = c.call("GET", "/bk1/o", &[], &[], vec![]).await;
    assert_eq!(get.status, 200, "{}", get.text());
    assert!(get.body == body_of(1));

    // A deleted bucket's data key is never presented again: retire names the bucket, and
    // --force (audited) ignores what was last presented, never what is still wrapped.
    assert_eq!(
        c.call("PUT", "/gone-bucket", &[], &[], vec![]).await.status,
        200
    );
    let put = c.call("PUT", "/gone-bucket/x", &[], &[], body_of(2)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let del = c.call("DELETE", "/gone-bucket/x", &[], &[], vec![]).await;
    assert_eq!(del.status, 204);
    let del = c.call("DELETE", "/gone-bucket", &[], &[], vec![]).await;
    assert_eq!(del.status, 204, "{}", del.text());
    rotate(&kms, 1).await;
    let get = c.call("GET", "/bk1/o", &[], &[], vec![]).await;
    assert_eq!(get.status, 200);
    assert_eq!(versions(dir.path()).await, vec![(5, 1)]);
    let e = retire(&kms, 4).await.unwrap_err();
    assert!(
        e.contains("root_version_in_use") && e.contains("gone-bucket:"),
        "{e}"
    );
    let o = kms.admin(&["keys", "retire", "4", "--force"]).await;
    assert!(o.status.success(), "{}", kms.logs());
    let q = kms
        .admin(&["audit", "query", "--op", "keys.retire", "--result", "ok"])
        .await;
    let forced = String::from_utf8_lossy(&q.stdout)
        .lines()
        .filter(|l| l.contains("force"))
        .count();
    assert_eq!(forced, 1, "{}", String::from_utf8_lossy(&q.stdout));
    let get = c.call("GET", "/bk1/o", &[], &[], vec![]).await;
    assert_eq!(get.status, 200, "{}", get.text());
    assert!(get.body == body_of(1));
}

/// A `coffer-storage` process with the KMS settings of `kms`.
fn storage_cmd(kms: &Kms, cred: &Path, data_dir: &Path, sub: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coffer-storage"));
    cmd.arg(sub)
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .args(["--kms-url", &kms.url])
        .args(["--kms-credential", cred.to_str().unwrap()])
        .args(["--kms-ca", kms.ca_cert().to_str().unwrap()])
        .args(["--access-key", ACCESS])
        .env("COFFER_S3_SECRET_KEY", SECRET)
        .env_remove("COFFER_STORAGE_CONFIG")
        .kill_on_drop(true);
    cmd
}

/// Start `coffer-storage serve` (no background sweep) and wait for its `listening on` line.
async fn serve(kms: &Kms, cred: &Path, data_dir: &Path) -> (Child, S3Client) {
    serve_sweeping(kms, cred, data_dir, "0").await
}

/// Start `coffer-storage serve` with a background sweep every `interval` seconds.
async fn serve_sweeping(
    kms: &Kms,
    cred: &Path,
    data_dir: &Path,
    interval: &str,
) -> (Child, S3Client) {
    let mut cmd = storage_cmd(kms, cred, data_dir, "serve");
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--rewrap-interval-secs",
        interval,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let host = loop {
        let line = lines.next_line().await.unwrap().expect("node exited");
        if let Some(url) = line.strip_prefix("listening on http://") {
            break url.trim().to_string();
        }
    };
    (child, S3Client::plain(&host, ACCESS, SECRET))
}

const BUCKETS: usize = 240;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_sweep_resume_after_kill9_retire_and_every_object_reads() {
    let (mut kms, cred) = kms_with_storage_identity().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");

    // 240 buckets, one SSE-S3 object each: 240 bucket keys wrapped under root version 1.
    let (mut node, c) = serve(&kms, &cred, &data).await;
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..BUCKETS).step_by(8) {
                let b = format!("/bucket-{i:03}");
                assert_eq!(c.call("PUT", &b, &[], &[], vec![]).await.status, 200);
                let put = c
                    .call("PUT", &format!("{b}/obj"), &[], &[], body_of(i))
                    .await;
                assert_eq!(put.status, 200, "{}", put.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    node.kill().await.unwrap();
    assert_eq!(versions(&data).await, vec![(1, BUCKETS as i64)]);

    // The active version is never retired.
    let e = retire(&kms, 1).await.unwrap_err();
    assert!(
        e.contains("409") && e.contains("root_version_active"),
        "{e}"
    );

    rotate(&kms, 3).await;
    // Before the sweep: the KMS's registry is at version 4, but the node last presented 1.
    let e = retire(&kms, 1).await.unwrap_err();
    assert!(
        e.contains("409") && e.contains("root_version_in_use"),
        "{e}"
    );
    assert!(e.contains(&format!("{BUCKETS} were last presented")), "{e}");
    let e = retire(&kms, 4).await.unwrap_err();
    assert!(e.contains("root_version_active"), "{e}");
    let list = keys_list(&kms).await;
    assert_eq!(list[0]["presented_data_keys"], BUCKETS, "{list}");
    assert_eq!(list[3]["data_keys"], BUCKETS, "{list}");

    // The sweep, killed -9 once it reported progress.
    let mut cmd = storage_cmd(&kms, &cred, &data, "rewrap");
    cmd.args(["--progress-every", "20", "--test-row-delay-ms", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut sweep = cmd.spawn().unwrap();
    let mut err = BufReader::new(sweep.stderr.take().unwrap()).lines();
    loop {
        let line = err.next_line().await.unwrap().expect("sweep ended early");
        if line.contains("rewrap: 40 rows done") {
            break;
        }
    }
    sweep.kill().await.unwrap();
    let mid = versions(&data).await;
    let at4 = mid.iter().find(|(v, _)| *v == 4).map_or(0, |x| x.1);
    assert!(
        at4 >= 40 && at4 < BUCKETS as i64,
        "not killed mid-sweep: {mid:?}"
    );
    let e = retire(&kms, 1).await.unwrap_err();
    assert!(e.contains("root_version_in_use"), "{e}");

    // Rerun: completes, 100 % at version 4.
    let out = storage_cmd(&kms, &cred, &data, "rewrap")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("sweep report after resume: {report}");
    assert_eq!(report["rows"], BUCKETS);
    assert_eq!(report["active_version"], 4);
    assert_eq!(report["coverage_percent"], 100.0);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["rewrapped"], BUCKETS as i64 - at4);
    assert_eq!(report["per_version"], serde_json::json!({ "4": BUCKETS }));
    assert_eq!(versions(&data).await, vec![(4, BUCKETS as i64)]);

    let list = keys_list(&kms).await;
    assert_eq!(list[3]["presented_data_keys"], BUCKETS, "{list}");
    assert_eq!(list[0]["presented_data_keys"], 0, "{list}");
    for v in 1..=3 {
        retire(&kms, v).await.unwrap();
    }
    let e = retire(&kms, 2).await.unwrap_err();
    assert!(e.contains("404"), "{e}");
    let o = kms.admin(&["keys", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["version"], 4);

    // A restarted KMS (only version 4 left) and a fresh node: every object reads byte-exact.
    kms.stop().await;
    kms.start().await;
    let (_node, c) = serve(&kms, &cred, &data).await;
    for i in 0..BUCKETS {
        let get = c
            .call("GET", &format!("/bucket-{i:03}/obj"), &[], &[], vec![])
            .await;
        assert_eq!(get.status, 200, "bucket {i}: {}", get.text());
        assert!(get.body == body_of(i), "bucket {i}: other bytes");
    }
}

/// Every file under `dir` with its contents (blobs: proof that a sweep rewrote none).
fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// SSE-S3 objects per bucket key generation, read from the node's meta.db.
async fn generations(data_dir: &Path) -> Vec<(i64, i64)> {
    let url = format!("sqlite://{}?mode=ro", data_dir.join("meta.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT COALESCE(bk_generation, 1), COUNT(*) FROM objects WHERE sse_mode = 'sse-s3' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

/// SSE-S3 bucket key rotation: new writes use the new generation, old objects keep reading, the
/// sweep re-seals every object key (and an upload in progress) without rewriting a blob, the
/// root sweep also re-wraps the older generation, and everything reads byte-exact afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_key_rotation_reseals_object_keys_without_rewriting_blobs() {
    let (kms, cred) = kms_with_storage_identity().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let (mut node, c) = serve(&kms, &cred, &data).await;
    assert_eq!(c.call("PUT", "/rot", &[], &[], vec![]).await.status, 200);
    for i in 0..30 {
        let put = c
            .call("PUT", &format!("/rot/o{i:02}"), &[], &[], body_of(i))
            .await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    // A multipart upload in progress across the rotation (its object key is sealed too).
    let init = c
        .call("POST", "/rot/mp", &[("uploads", "")], &[], vec![])
        .await;
    assert_eq!(init.status, 200, "{}", init.text());
    let upload_id = init.one("UploadId");
    let part = c
        .call(
            "PUT",
            "/rot/mp",
            &[("partNumber", "1"), ("uploadId", &upload_id)],
            &[],
            body_of(77),
        )
        .await;
    assert_eq!(part.status, 200, "{}", part.text());
    let part_etag = part.header("etag");
    node.kill().await.unwrap();

    // An unknown bucket is refused.
    let o = storage_cmd(&kms, &cred, &data, "rotate-bucket-key")
        .arg("nope")
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    let o = storage_cmd(&kms, &cred, &data, "rotate-bucket-key")
        .arg("rot")
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["generation"], 2);

    // New writes use generation 2; generation-1 objects still read.
    let (mut node, c) = serve(&kms, &cred, &data).await;
    let put = c.call("PUT", "/rot/new", &[], &[], body_of(99)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let get = c.call("GET", "/rot/o05", &[], &[], vec![]).await;
    assert_eq!(get.status, 200, "{}", get.text());
    assert!(get.body == body_of(5));
    node.kill().await.unwrap();
    assert_eq!(generations(&data).await, vec![(1, 30), (2, 1)]);

    // A root rotation too: the sweep re-wraps both generations' wrapped keys.
    rotate(&kms, 1).await;
    let blobs_before = tree(&data.join("blobs"));
    let out = storage_cmd(&kms, &cred, &data, "rewrap")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("rewrap + re-seal report: {report}");
    assert_eq!(
        report["per_version"],
        serde_json::json!({ "2": 2 }),
        "{report}"
    );
    let g = &report["bucket_key_generations"];
    assert_eq!(g["rows"], 32, "{report}");
    assert_eq!(g["resealed"], 31, "{report}");
    assert_eq!(g["coverage_percent"], 100.0, "{report}");
    assert_eq!(g["failed"], 0);
    assert_eq!(generations(&data).await, vec![(2, 31)]);
    assert!(
        tree(&data.join("blobs")) == blobs_before,
        "a blob was rewritten"
    );
    retire(&kms, 1).await.unwrap();

    // Everything reads byte-exact; the upload completes.
    let (_node, c) = serve(&kms, &cred, &data).await;
    for i in 0..30 {
        let get = c
            .call("GET", &format!("/rot/o{i:02}"), &[], &[], vec![])
            .await;
        assert_eq!(get.status, 200, "o{i}: {}", get.text());
        assert!(get.body == body_of(i), "o{i}: other bytes");
    }
    let get = c.call("GET", "/rot/new", &[], &[], vec![]).await;
    assert!(get.body == body_of(99));
    let xml = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{part_etag}</ETag></Part></CompleteMultipartUpload>"
    );
    let done = c
        .call(
            "POST",
            "/rot/mp",
            &[("uploadId", &upload_id)],
            &[],
            xml.into_bytes(),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    let get = c.call("GET", "/rot/mp", &[], &[], vec![]).await;
    assert_eq!(get.status, 200, "{}", get.text());
    assert!(get.body == body_of(77));
}

/// The running node's background job does what `rewrap` does: after a root rotation and a bucket
/// key rotation, `keys retire 1` becomes possible and every object key moves to the newest
/// generation without the node being stopped (bounded polling of the observable state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serving_node_sweeps_in_the_background() {
    let (kms, cred) = kms_with_storage_identity().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let (mut node, c) = serve(&kms, &cred, &data).await;
    for b in ["bg-a", "bg-b", "bg-c"] {
        assert_eq!(
            c.call("PUT", &format!("/{b}"), &[], &[], vec![])
                .await
                .status,
            200
        );
        for i in 0..5 {
            let put = c
                .call("PUT", &format!("/{b}/o{i}"), &[], &[], body_of(i))
                .await;
            assert_eq!(put.status, 200, "{}", put.text());
        }
    }
    node.kill().await.unwrap();
    let o = storage_cmd(&kms, &cred, &data, "rotate-bucket-key")
        .arg("bg-b")
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    rotate(&kms, 1).await;

    let (_node, c) = serve_sweeping(&kms, &cred, &data, "1").await;
    // The command refuses to run beside a serving node (which sweeps by itself).
    let o = storage_cmd(&kms, &cred, &data, "rewrap")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("a running node sweeps by itself") && err.contains("in use by"),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let root_done = versions(&data).await == vec![(2, 3)]
            && sqlx_count(
                &data,
                "SELECT COUNT(*) FROM bucket_key_generations WHERE wrapped_key_version = 2",
            )
            .await
                == 1;
        let bk_done = generations(&data).await == vec![(1, 10), (2, 5)]
            && sqlx_count(
                &data,
                "SELECT COUNT(*) FROM objects WHERE bucket = 'bg-b' AND bk_generation = 2",
            )
            .await
                == 5;
        let metrics = reqwest::get(format!("http://{}/metrics", c.host))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let exported = metrics.contains("coffer_rewrap_root_coverage_ratio 1.0")
            && metrics.contains("coffer_rewrap_generation_coverage_ratio 1.0")
            && metrics.contains("coffer_rewrap_bucket_keys{root_version=\"2\"} 4");
        if root_done && bk_done && exported && retire(&kms, 1).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background sweep did not finish: {:?} {:?}\n{}",
            versions(&data).await,
            generations(&data).await,
            metrics
                .lines()
                .filter(|l| l.contains("rewrap"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for b in ["bg-a", "bg-b", "bg-c"] {
        for i in 0..5 {
            let get = c.call("GET", &format!("/{b}/o{i}"), &[], &[], vec![]).await;
            assert_eq!(get.status, 200, "{b}/o{i}: {}", get.text());
            assert!(get.body == body_of(i));
        }
    }
}

async fn sqlx_count(data_dir: &Path, sql: &str) -> i64 {
    let url = format!("sqlite://{}?mode=ro", data_dir.join("meta.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    n
}

/// The bucket key re-seal sweep killed -9 mid-way resumes: the rerun re-seals only what is
/// left, coverage reaches 100 % and every object reads byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bucket_key_reseal_resumes_after_kill9() {
    const N: usize = 240;
    let (kms, cred) = kms_with_storage_identity().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let (mut node, c) = serve(&kms, &cred, &data).await;
    assert_eq!(c.call("PUT", "/many", &[], &[], vec![]).await.status, 200);
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..N).step_by(8) {
                let put = c
                    .call("PUT", &format!("/many/o{i:03}"), &[], &[], body_of(i))
                    .await;
                assert_eq!(put.status, 200, "{}", put.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    node.kill().await.unwrap();
    let o = storage_cmd(&kms, &cred, &data, "rotate-bucket-key")
        .arg("many")
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut cmd = storage_cmd(&kms, &cred, &data, "rewrap");
    cmd.args(["--progress-every", "20", "--test-row-delay-ms", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut sweep = cmd.spawn().unwrap();
    let mut err = BufReader::new(sweep.stderr.take().unwrap()).lines();
    loop {
        let line = err.next_line().await.unwrap().expect("sweep ended early");
        if line.contains("reseal: 40 objects done") {
            break;
        }
    }
    sweep.kill().await.unwrap();
    let mid = generations(&data).await;
    let at2 = mid.iter().find(|(g, _)| *g == 2).map_or(0, |x| x.1);
    assert!(at2 >= 40 && at2 < N as i64, "not killed mid-sweep: {mid:?}");

    let out = storage_cmd(&kms, &cred, &data, "rewrap")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("re-seal report after resume: {report}");
    let g = &report["bucket_key_generations"];
    assert_eq!(g["rows"], N);
    assert_eq!(g["resealed"], N as i64 - at2);
    assert_eq!(g["coverage_percent"], 100.0);
    assert_eq!(generations(&data).await, vec![(2, N as i64)]);

    let (_node, c) = serve(&kms, &cred, &data).await;
    for i in 0..N {
        let get = c
            .call("GET", &format!("/many/o{i:03}"), &[], &[], vec![])
            .await;
        assert_eq!(get.status, 200, "o{i}: {}", get.text());
        assert!(get.body == body_of(i), "o{i}: other bytes");
    }
}
