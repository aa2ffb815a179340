//! Several `coffer-kms serve` replicas on one PostgreSQL (issue 14): real processes on a real
//! PostgreSQL 15 (`scripts/pg-test-server`). One audit chain under concurrent load on every
//! replica (export verifies, gapless, no fork); a disabled key and a revoked identity refused by
//! the other replicas within 2 s (measured); the lease of background work moving to another
//! replica when its holder is killed (epoch incremented, re-wrap and checkpoints continue); a
//! stale holder's fenced write refused. The ignored `bench_unwrap_replicas` prints the numbers
//! of `scripts/bench-kms-replicas`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_common::credential::Credential;
use coffer_common::jwt::AUD_SERVICE;
use coffer_common::kms_api::{
    PATH_ADMIN_AUDIT, PATH_ADMIN_CLIENT_PREFIX, PATH_ADMIN_CLIENTS, PATH_ADMIN_KMS_KEYS,
    PATH_ADMIN_ROTATE, PATH_ADMIN_ROTATION, PATH_ADMIN_STATUS, PATH_GENERATE, PATH_KMS_DECRYPT,
    PATH_KMS_GENERATE, PATH_UNWRAP,
};
use coffer_tests::kms::Kms;
use coffer_tests::pg::PgServer;
use serde_json::{Value, json};

/// One HTTP call with a fresh token of `cred`: (status, JSON body).
async fn call(
    http: &reqwest::Client,
    base: &str,
    cred: &Credential,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let p = path.split('?').next().unwrap();
    let mut rb = http
        .request(m, format!("{base}{path}"))
        .bearer_auth(cred.token(method, p));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    match rb.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let t = r.text().await.unwrap_or_default();
            (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

/// Three replicas on one fresh PostgreSQL, started, with `serve_args`.
async fn replicas(pg: &PgServer, serve_args: &[&str]) -> Vec<Kms> {
    let mut a = Kms::init_pg(&pg.url).await;
    a.serve_args = serve_args.iter().map(|s| s.to_string()).collect();
    let mut b = a.replica();
    let mut c = a.replica();
    a.start().await;
    b.start().await;
    c.start().await;
    vec![a, b, c]
}

async fn create_client(
    http: &reqwest::Client,
    k: &Kms,
    admin: &Credential,
    name: &str,
) -> Arc<Credential> {
    let cred = Credential::generate(name, AUD_SERVICE);
    let body = json!({"name": name, "buckets": "*", "ops": ["generate", "unwrap"],
        "public_key": cred.public_key_b64(), "keys": "*"});
    let (s, v) = call(http, &k.url, admin, "POST", PATH_ADMIN_CLIENTS, Some(body)).await;
    assert_eq!(s, 201, "{v}");
    Arc::new(cred)
}

/// Generate then unwrap one data key, on two (possibly different) replicas.
async fn roundtrip(
    http: &reqwest::Client,
    gen_url: &str,
    unwrap_url: &str,
    cred: &Credential,
    bucket: &str,
) {
    let (s, g) = call(
        http,
        gen_url,
        cred,
        "POST",
        PATH_GENERATE,
        Some(json!({"bucket_id": bucket})),
    )
    .await;
    assert_eq!(s, 200, "generate on {gen_url}: {g}");
    let body = json!({"bucket_id": bucket, "wrapped_key": g["wrapped_key"], "key_version": g["key_version"]});
    let (s, u) = call(http, unwrap_url, cred, "POST", PATH_UNWRAP, Some(body)).await;
    assert_eq!(
        s, 200,
        "unwrap on {unwrap_url} of a key made on {gen_url}: {u}"
    );
    assert_eq!(u["plaintext_key"], g["plaintext_key"]);
}

/// Poll `ok` on every replica in `urls` until it holds on all; the time it took.
async fn until_all<F, Fut>(urls: &[String], limit: Duration, mut ok: F) -> Duration
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut pending: Vec<String> = urls.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for u in pending {
            if !ok(u.clone()).await {
                still.push(u);
            }
        }
        pending = still;
        assert!(
            start.elapsed() < limit,
            "not propagated within {limit:?} to {pending:?}"
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_write_one_chain_and_refuse_within_2s() {
    let pg = PgServer::start();
    let ks = replicas(&pg, &["--checkpoint-secs", "1", "--checkpoint-every", "50"]).await;
    let urls: Vec<String> = ks.iter().map(|k| k.url.clone()).collect();
    let http = ks[0].client().http;
    let admin = Arc::new(Credential::load(&ks[0].admin_credential()).unwrap());
    let node = create_client(&http, &ks[0], &admin, "node").await;
    // An identity created through replica 1 is usable on the others at once: a replica that
    // meets an identity it does not know reloads before refusing.
    let others = urls[1..].to_vec();
    let started = Instant::now();
    for u in &others {
        let body = json!({"bucket_id": "warm"});
        let (s, v) = call(&http, u, &node, "POST", PATH_GENERATE, Some(body)).await;
        assert_eq!(s, 200, "new identity on {u}: {v}");
    }
    let seen = started.elapsed();
    eprintln!("new identity usable on replicas 2 and 3 after {seen:?}");

    // Concurrent load on all three: generate on one replica, unwrap on the next, while admins
    // create and revoke identities, create/disable/enable named keys and rotate the root key
    // through every replica.
    let mut tasks = Vec::new();
    let (s, v) = call(
        &http,
        &urls[0],
        &admin,
        "POST",
        PATH_ADMIN_KMS_KEYS,
        Some(json!({"alias": "alias/load"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    for t in 0..9usize {
        let (http, node, urls) = (http.clone(), node.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25usize {
                let g = &urls[(t + i) % 3];
                let u = &urls[(t + i + 1) % 3];
                roundtrip(&http, g, u, &node, &format!("b{t}")).await;
                if i % 5 == 0 {
                    // SSE-KMS style: a named key's data key, decrypted through another replica.
                    let ctx = json!({"aws:s3:arn": format!("arn:aws:s3:::b{t}/o{i}")});
                    let body = json!({"key_id": "alias/load", "encryption_context": ctx});
                    let (s, gk) = call(&http, g, &node, "POST", PATH_KMS_GENERATE, Some(body)).await;
                    assert_eq!(s, 200, "{gk}");
                    let body = json!({"ciphertext_blob": gk["ciphertext_blob"], "encryption_context": ctx});
                    let (s, d) = call(&http, u, &node, "POST", PATH_KMS_DECRYPT, Some(body)).await;
                    assert_eq!(s, 200, "{d}");
                    assert_eq!(d["plaintext_key"], gk["plaintext_key"]);
                }
            }
        }));
    }
    for r in 0..3usize {
        let (http, admin, urls) = (http.clone(), admin.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let base = &urls[r];
            for i in 0..6 {
                let name = format!("extra-{r}-{i}");
                let cred = Credential::generate(&name, AUD_SERVICE);
                let body = json!({"name": name, "buckets": "*", "ops": ["unwrap"],
                    "public_key": cred.public_key_b64()});
                let (s, v) =
                    call(&http, base, &admin, "POST", PATH_ADMIN_CLIENTS, Some(body)).await;
                assert_eq!(s, 201, "{v}");
                if i % 2 == 0 {
                    let p = format!("{PATH_ADMIN_CLIENT_PREFIX}{name}/revoke");
                    let (s, v) = call(&http, &urls[(r + 1) % 3], &admin, "POST", &p, None).await;
                    assert_eq!(s, 200, "{v}");
                }
                let (s, v) = call(
                    &http,
                    base,
                    &admin,
                    "POST",
                    PATH_ADMIN_KMS_KEYS,
                    Some(json!({})),
                )
                .await;
                assert_eq!(s, 201, "{v}");
                let id = v["key_id"].as_str().unwrap().to_string();
                for action in ["disable", "enable"] {
                    let p = format!("{PATH_ADMIN_KMS_KEYS}/{id}/{action}");
                    let (s, v) = call(&http, &urls[(r + 2) % 3], &admin, "POST", &p, None).await;
                    assert_eq!(s, 200, "{action}: {v}");
                }
            }
            if r == 1 {
                let (s, v) = call(&http, base, &admin, "POST", PATH_ADMIN_ROTATE, None).await;
                assert_eq!(s, 200, "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // One chain: the export (through replica 3) verifies, seq 1..N without gap or repeat.
    let export = ks[2].export_audit("replicas.jsonl").await;
    let (ok, out) = ks[2].verify_audit(&export).await;
    assert!(ok, "audit export does not verify: {out}");
    let text = std::fs::read_to_string(&export).unwrap();
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["record"]["seq"].as_u64())
        .collect();
    assert!(seqs.len() > 9 * 25 * 2, "{} records", seqs.len());
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1),
        "sequence numbers are not 1..N"
    );
    let checkpoints = text
        .lines()
        .filter(|l| l.starts_with("{\"checkpoint\""))
        .count();
    assert!(checkpoints >= 2, "{checkpoints} checkpoints");
    eprintln!(
        "audit export: {} records, {checkpoints} checkpoints, verified",
        seqs.len()
    );

    // Audit queries read the shared log: task 1's 25 unwraps of bucket b1, whichever replica
    // served them.
    let q = format!("{PATH_ADMIN_AUDIT}?bucket=b1&limit=1000");
    let (s, v) = call(&http, &urls[2], &admin, "GET", &q, None).await;
    assert_eq!(s, 200, "{v}");
    let recs = v.as_array().unwrap();
    let unwraps = recs.iter().filter(|r| r["operation"] == "unwrap").count();
    assert_eq!(unwraps, 25, "{v}");
    assert!(recs.iter().all(|r| r["bucket"] == "b1"), "{v}");

    // A named key disabled through replica 1 is refused by replicas 2 and 3 within 2 s.
    let (s, v) = call(
        &http,
        &urls[0],
        &admin,
        "POST",
        PATH_ADMIN_KMS_KEYS,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let key = v["key_id"].as_str().unwrap().to_string();
    let gen_body = json!({"key_id": key, "encryption_context": {"aws:s3:arn": "arn:aws:s3:::b/o"}});
    for u in &urls {
        let (s, v) = call(
            &http,
            u,
            &node,
            "POST",
            PATH_KMS_GENERATE,
            Some(gen_body.clone()),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = call(
        &http,
        &urls[0],
        &admin,
        "POST",
        &format!("{PATH_ADMIN_KMS_KEYS}/{key}/disable"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let disabled = until_all(&others, Duration::from_secs(2), |u| {
        let (http, node, body) = (http.clone(), node.clone(), gen_body.clone());
        async move {
            let (s, v) = call(&http, &u, &node, "POST", PATH_KMS_GENERATE, Some(body)).await;
            s == 409 && v["code"] == "kms_key_disabled"
        }
    })
    .await;
    // An identity revoked through replica 1 is refused by replicas 2 and 3 within 2 s.
    let p = format!("{PATH_ADMIN_CLIENT_PREFIX}node/revoke");
    let (s, v) = call(&http, &urls[0], &admin, "POST", &p, None).await;
    assert_eq!(s, 200, "{v}");
    let revoked = until_all(&others, Duration::from_secs(2), |u| {
        let (http, node) = (http.clone(), node.clone());
        async move {
            let (s, v) = call(
                &http,
                &u,
                &node,
                "POST",
                PATH_GENERATE,
                Some(json!({"bucket_id": "x"})),
            )
            .await;
            s == 403 && v["code"] == "identity_revoked"
        }
    })
    .await;
    eprintln!(
        "propagation to replicas 2 and 3: key disabled {disabled:?}, identity revoked {revoked:?}"
    );
    assert!(disabled < Duration::from_secs(2) && revoked < Duration::from_secs(2));
    // The refusals themselves are in the one chain.
    let (s, v) = call(
        &http,
        &urls[1],
        &admin,
        "GET",
        &format!("{PATH_ADMIN_AUDIT}?result=identity_revoked"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(!v.as_array().unwrap().is_empty(), "{v}");
}

async fn status(http: &reqwest::Client, url: &str, admin: &Credential) -> Option<Value> {
    let (s, v) = call(http, url, admin, "GET", PATH_ADMIN_STATUS, None).await;
    (s == 200).then_some(v)
}

/// The replica holding the lease, once exactly one does: (index, epoch).
async fn holder(
    http: &reqwest::Client,
    ks: &[&Kms],
    admin: &Credential,
    limit: Duration,
) -> (usize, u64) {
    let start = Instant::now();
    loop {
        let mut held = Vec::new();
        for (i, k) in ks.iter().enumerate() {
            if let Some(v) = status(http, &k.url, admin).await
                && v["lease_holder"] == json!(true)
            {
                held.push((i, v["lease_epoch"].as_u64().unwrap()));
            }
        }
        assert!(held.len() <= 1, "two holders at once: {held:?}");
        if let Some(h) = held.first() {
            return *h;
        }
        assert!(
            start.elapsed() < limit,
            "no replica took the lease within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_moves_when_its_holder_is_killed() {
    let pg = PgServer::start();
    let mut ks = replicas(&pg, &["--checkpoint-secs", "1", "--lease-ttl-ms", "1000"]).await;
    let http = ks[0].client().http;
    let admin = Arc::new(Credential::load(&ks[0].admin_credential()).unwrap());
    let all: Vec<&Kms> = ks.iter().collect();
    let (h, epoch) = holder(&http, &all, &admin, Duration::from_secs(5)).await;
    assert!(epoch >= 1);
    ks[h].kill9().await;
    let killed = Instant::now();
    let rest: Vec<&Kms> = ks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != h)
        .map(|(_, k)| k)
        .collect();
    let (h2, epoch2) = holder(&http, &rest, &admin, Duration::from_secs(5)).await;
    eprintln!(
        "lease: replica {h} (epoch {epoch}) killed; replica taking over after {:?} with epoch {epoch2}",
        killed.elapsed()
    );
    assert!(epoch2 > epoch, "epoch {epoch2} after {epoch}");

    // Background jobs continue on the new holder: a root rotation through the other survivor is
    // re-wrapped, and checkpoints keep being signed.
    let other = rest[1 - h2];
    let node = create_client(&http, other, &admin, "node").await;
    let rest_urls: Vec<String> = rest.iter().map(|k| k.url.clone()).collect();
    until_all(&rest_urls, Duration::from_secs(2), |u| {
        let (http, node) = (http.clone(), node.clone());
        async move {
            let body = json!({"bucket_id": "warm"});
            call(&http, &u, &node, "POST", PATH_GENERATE, Some(body))
                .await
                .0
                == 200
        }
    })
    .await;
    for i in 0..20 {
        roundtrip(
            &http,
            &rest[i % 2].url,
            &rest[(i + 1) % 2].url,
            &node,
            "bucket",
        )
        .await;
    }
    let (s, v) = call(&http, &other.url, &admin, "POST", PATH_ADMIN_ROTATE, None).await;
    assert_eq!(s, 200, "{v}");
    let start = Instant::now();
    loop {
        let (s, v) = call(&http, &other.url, &admin, "GET", PATH_ADMIN_ROTATION, None).await;
        assert_eq!(s, 200, "{v}");
        if v["rewrapped"] == v["total_data_keys"] && v["active_version"] == json!(2) {
            assert_eq!(v["total_data_keys"], json!(22));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "re-wrap did not run: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let head = status(&http, &other.url, &admin).await.unwrap()["audit_head_seq"]
        .as_u64()
        .unwrap();
    let start = Instant::now();
    loop {
        let st = status(&http, &other.url, &admin).await.unwrap();
        if st["audit_last_checkpoint_seq"].as_u64().unwrap() >= head {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no checkpoint after the takeover: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The killed replica comes back as a plain replica: the lease stays where it is.
    ks[h].start().await;
    let all: Vec<&Kms> = ks.iter().collect();
    let (h3, epoch3) = holder(&http, &all, &admin, Duration::from_secs(5)).await;
    assert_eq!(epoch3, epoch2);
    assert_ne!(h3, h);
    let export = ks[h].export_audit("after-failover.jsonl").await;
    let (ok, out) = ks[h].verify_audit(&export).await;
    assert!(ok, "{out}");
    // A holder stopped cleanly gives the lease up: another replica takes it at its next renewal.
    let stopped = Instant::now();
    assert!(ks[h3].stop().await.success());
    let rest: Vec<&Kms> = ks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != h3)
        .map(|(_, k)| k)
        .collect();
    let (_, epoch4) = holder(&http, &rest, &admin, Duration::from_secs(5)).await;
    assert_eq!(epoch4, epoch3 + 1);
    eprintln!(
        "lease: holder stopped cleanly; taken over after {:?}",
        stopped.elapsed()
    );
}

/// A former holder that still believes it holds the lease (paused, partitioned) cannot commit
/// background work once another replica took over: the epoch is checked in the write's
/// transaction, and the refusal is audited as `fenced`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_holder_write_is_fenced() {
    use coffer_kms::audit::AuditEvent;
    use coffer_kms::audit::writer::{AuditLog, Head, WriteError, WriterConfig};
    use coffer_kms::lease::Lease;
    use coffer_kms::store::{self, ChangeError, Db, Location, StateChange};

    let pg = PgServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let loc = Location::from_settings(tmp.path(), Some(&pg.url), None).unwrap();
    let (conn, db) = store::open_at(&loc).await.unwrap();
    let Db::Pg(pool) = db else {
        panic!("not PostgreSQL")
    };
    let lease_a = Arc::new(Lease::replicated(Duration::from_secs(60)));
    let lease_b = Lease::replicated(Duration::from_secs(60));
    let mut conn_a = store::connect_pg(&loc).await.unwrap().unwrap();
    let mut conn_b = store::connect_pg(&loc).await.unwrap().unwrap();
    let (e1, new) = lease_a.renew(&mut conn_a).await.unwrap();
    assert!(new);
    let e1 = e1.unwrap();
    // B cannot take a live lease.
    assert_eq!(lease_b.renew(&mut conn_b).await.unwrap(), (None, false));
    let cfg = WriterConfig {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_secs(3600),
    };
    let head = Head {
        seq: 0,
        hash: String::new(),
        last_checkpoint_seq: 0,
    };
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let (log, _task) =
        AuditLog::start_with(conn, head, key, cfg, lease_a.clone(), Some(pool.clone()));
    let ev = |op: &str| AuditEvent {
        request_id: op.into(),
        identity: "kms".into(),
        client: "-".into(),
        operation: op.into(),
        result: "ok".into(),
        ..AuditEvent::default()
    };
    assert_eq!(
        log.write_background(ev("job-1"), StateChange::None).await,
        Ok(1)
    );
    // A's lease lapses in the database (A is paused); B takes over with the next epoch.
    sqlx::query("UPDATE kms_lease SET expires_ms = 0")
        .execute(&pool)
        .await
        .unwrap();
    let (e2, new) = lease_b.renew(&mut conn_b).await.unwrap();
    assert!(new);
    assert_eq!(e2, Some(e1 + 1));
    // A still believes it holds e1: its background write is refused in the transaction.
    assert_eq!(lease_a.held(), Some(e1));
    assert_eq!(
        log.write_background(ev("job-2"), StateChange::None).await,
        Err(WriteError::Rejected(ChangeError::Fenced(e1)))
    );
    // A's next renewal learns it lost the lease; it no longer even tries.
    assert_eq!(lease_a.renew(&mut conn_a).await.unwrap(), (None, false));
    assert_eq!(lease_a.held(), None);
    assert!(matches!(
        log.write_background(ev("job-3"), StateChange::None).await,
        Err(WriteError::Rejected(ChangeError::Fenced(_)))
    ));
    // Under the new epoch the write goes through; ordinary (request) writes are never fenced.
    assert_eq!(
        log.write_fenced(ev("job-4"), StateChange::None, e1 + 1)
            .await,
        Ok(3)
    );
    assert_eq!(log.write(ev("request"), StateChange::None).await, Ok(4));
    let results: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, result FROM audit_log ORDER BY seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    let want: Vec<(i64, String)> = vec![
        (1, "ok".into()),
        (2, "fenced".into()),
        (3, "ok".into()),
        (4, "ok".into()),
    ];
    assert_eq!(results, want);
}

/// Unwrap throughput and p99 latency: 1 replica on SQLite, 1 on PostgreSQL, 3 on PostgreSQL
/// (client round-robin), `CLIENTS` concurrent clients for `SECS` seconds each. Run by
/// `scripts/bench-kms-replicas` (release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: scripts/bench-kms-replicas"]
async fn bench_unwrap_replicas() {
    let clients: usize = std::env::var("CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut lines = Vec::new();
    for (label, pg, n) in [
        ("SQLite, 1 replica", false, 1usize),
        ("PostgreSQL, 1 replica", true, 1),
        ("PostgreSQL, 3 replicas", true, 3),
    ] {
        let server = pg.then(PgServer::start);
        let mut ks = Vec::new();
        let mut first = match &server {
            Some(s) => Kms::init_pg(&s.url).await,
            None => Kms::init().await,
        };
        for _ in 1..n {
            ks.push(first.replica());
        }
        first.start().await;
        for k in &mut ks {
            k.start().await;
        }
        ks.insert(0, first);
        let urls: Vec<String> = ks.iter().map(|k| k.url.clone()).collect();
        let http = ks[0].client().http;
        let admin = Arc::new(Credential::load(&ks[0].admin_credential()).unwrap());
        let node = create_client(&http, &ks[0], &admin, "bench").await;
        // Let the other replicas see the identity.
        until_all(&urls, Duration::from_secs(2), |u| {
            let (http, node) = (http.clone(), node.clone());
            async move {
                call(
                    &http,
                    &u,
                    &node,
                    "POST",
                    PATH_GENERATE,
                    Some(json!({"bucket_id": "w"})),
                )
                .await
                .0 == 200
            }
        })
        .await;
        let mut keys = Vec::new();
        for i in 0..64 {
            let b = format!("bucket-{i}");
            let (s, g) = call(
                &http,
                &urls[0],
                &node,
                "POST",
                PATH_GENERATE,
                Some(json!({"bucket_id": b})),
            )
            .await;
            assert_eq!(s, 200);
            keys.push(json!({"bucket_id": b, "wrapped_key": g["wrapped_key"], "key_version": g["key_version"]}));
        }
        // Warm-up: one unwrap of each key (records the presented version once).
        for (i, body) in keys.iter().enumerate() {
            let (s, _) = call(
                &http,
                &urls[i % n],
                &node,
                "POST",
                PATH_UNWRAP,
                Some(body.clone()),
            )
            .await;
            assert_eq!(s, 200);
        }
        let keys = Arc::new(keys);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (http, node, urls, keys) = (http.clone(), node.clone(), urls.clone(), keys.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = c;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (s, _) = call(
                        &http,
                        &urls[i % urls.len()],
                        &node,
                        "POST",
                        PATH_UNWRAP,
                        Some(keys[i % keys.len()].clone()),
                    )
                    .await;
                    assert_eq!(s, 200);
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        let p99 = all[(all.len() * 99 / 100).min(all.len() - 1)];
        let p50 = all[all.len() / 2];
        let line = format!(
            "KMS unwrap, {label}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms ({clients} clients, {secs} s)",
            all.len() as f64 / secs as f64,
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0
        );
        println!("{line}");
        lines.push(line);
        for k in &mut ks {
            k.stop().await;
        }
        drop(server);
    }
    println!("{}", lines.join("\n"));
}

/// `init` on a database that already has a root key is refused and creates nothing: replicas are
/// started, not initialized (`docs/kms-replicas.md`).
#[tokio::test]
async fn second_init_on_one_database_is_refused() {
    let pg = PgServer::start();
    let first = Kms::init_pg(&pg.url).await;
    let other = tempfile::tempdir().unwrap();
    let dir = other.path().join("data");
    let out = first
        .cli(&[
            "init",
            "--data-dir",
            dir.to_str().unwrap(),
            "--passphrase-file",
            first.passphrase_file.to_str().unwrap(),
            "--argon2",
            "dev",
            "--database-url",
            &pg.url,
        ])
        .await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already initialized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.exists(), "a refused init created {}", dir.display());
    // The database is the first init's: a replica unseals it with the passphrase.
    let mut r = first.replica();
    r.start().await;
    let admin = Credential::load(&first.admin_credential()).unwrap();
    let st = status(&r.client().http, &r.url, &admin).await.unwrap();
    assert_eq!(st["audit_head_seq"], json!(2), "{st}");
}

/// A replica whose PostgreSQL connections are cut (server restart, network) fails closed for the
/// group in flight and then serves again: the audit writer reconnects (it used to keep its dead
/// connection and answer 503 forever), and the chain stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_recovers_after_its_connections_are_cut() {
    use sqlx::Connection;
    let pg = PgServer::start();
    let mut k = Kms::init_pg(&pg.url).await;
    k.start().await;
    let http = k.client().http;
    let admin = Credential::load(&k.admin_credential()).unwrap();
    let node = create_client(&http, &k, &admin, "node").await;
    roundtrip(&http, &k.url, &k.url, &node, "b").await;
    let mut c = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'coffer-kms'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert!(cut.len() >= 2, "{cut:?}");
    let start = Instant::now();
    let mut refused = 0;
    loop {
        let (s, v) = call(
            &http,
            &k.url,
            &node,
            "POST",
            PATH_GENERATE,
            Some(json!({"bucket_id": "b"})),
        )
        .await;
        if s == 200 {
            break;
        }
        assert_eq!(
            (s, v["code"].as_str()),
            (503, Some("audit_unavailable")),
            "{v}"
        );
        refused += 1;
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still refusing after the cut"
        );
    }
    eprintln!(
        "after the cut: {refused} calls refused (503), serving again after {:?}",
        start.elapsed()
    );
    roundtrip(&http, &k.url, &k.url, &node, "b").await;
    let export = k.export_audit("after-cut.jsonl").await;
    let (ok, out) = k.verify_audit(&export).await;
    assert!(ok, "{out}");
}
