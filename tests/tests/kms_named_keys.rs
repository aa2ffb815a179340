//! Named KMS keys (issue 13, KMS side), against the in-process KMS app served on a loopback
//! port (plain HTTP) so that the lifecycle clock can be moved: state transitions with the
//! injected clock (disable, schedule, 8 days, cancel, enable, destroy, names not reusable),
//! context binding (1,000 decrypts each with a changed, a reordered-but-equal and a missing
//! context), rotation (on demand and automatic), key scopes, ARNs, the deployment default key
//! `alias/aws/s3`, and the audit records of all of it. `cli_smoke` drives the real binary.
//!
//! With `COFFER_TEST_KMS_DATABASE_URL=postgres://…` (a server the test may create databases on)
//! every app runs on a fresh PostgreSQL database instead of `kms.db` (issue 14); the test of
//! erasure from SQLite's files is then skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::credential::Credential;
use coffer_common::jwt::AUD_SERVICE;
use coffer_common::kms_api::{
    PATH_ADMIN_ALIASES, PATH_ADMIN_AUDIT, PATH_ADMIN_CLIENTS, PATH_ADMIN_KMS_KEYS,
    PATH_KMS_DECRYPT, PATH_KMS_DESCRIBE, PATH_KMS_GENERATE,
};
use coffer_common::secret::Passphrase;
use coffer_kms::KmsState;
use coffer_kms::audit::writer::WriterConfig;
use coffer_kms::kmskeys::DAY_MS;
use coffer_kms::kmskeys::lifecycle::run_due;
use serde_json::{Value, json};

struct App {
    st: Arc<KmsState>,
    base: String,
    admin: Credential,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
}

async fn app() -> App {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pass = Passphrase::new("named-keys-test".into());
    let loc = match pg_database().await {
        Some(url) => coffer_kms::store::Location::from_settings(&data, Some(&url), None).unwrap(),
        None => coffer_kms::store::Location::Sqlite(data.clone()),
    };
    coffer_kms::init::init_at(&data, &loc, &pass, coffer_kms::seal::KdfParams::DEV, None)
        .await
        .unwrap();
    let cfg = WriterConfig {
        checkpoint_every: 1000,
        checkpoint_interval: std::time::Duration::from_secs(10),
    };
    let (st, tasks) = coffer_kms::open_at(
        &data,
        &loc,
        &pass,
        cfg,
        coffer_kms::kmskeys::material::ArnSettings::default(),
        coffer_kms::lease::DEFAULT_TTL,
    )
    .await
    .unwrap();
    // On PostgreSQL the background jobs (`run_due`) need the lease: wait for the keeper.
    let start = std::time::Instant::now();
    while st.lease.held().is_none() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "no lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = coffer_common::server::Limits::from_settings(256, 20_000, 60_000, 60_000);
    tokio::spawn(coffer_kms::serve(
        listener,
        None,
        st.clone(),
        tasks,
        limits,
        std::future::pending(),
    ));
    App {
        st,
        base,
        admin: Credential::load(&data.join("admin.credential")).unwrap(),
        http: reqwest::Client::new(),
        _tmp: tmp,
    }
}

/// A fresh database on the server of `COFFER_TEST_KMS_DATABASE_URL`, if set.
async fn pg_database() -> Option<String> {
    use sqlx::Connection;
    let url = std::env::var("COFFER_TEST_KMS_DATABASE_URL").ok()?;
    let name = format!("named_keys_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut c)
        .await
        .unwrap();
    let base = url.rsplit_once('/').unwrap().0;
    Some(format!("{base}/{name}"))
}

impl App {
    async fn call(
        &self,
        cred: &Credential,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let p = path.split('?').next().unwrap();
        let mut rb = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(cred.token(method, p));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        let t = r.text().await.unwrap();
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(&self.admin, method, path, body).await
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.admin(method, path, body).await;
        assert!(s == 200 || s == 201, "{method} {path}: {s} {v}");
        v
    }

    async fn client(&self, name: &str, ops: &[&str], keys: Option<&str>) -> Credential {
        let cred = Credential::generate(name, AUD_SERVICE);
        let mut body =
            json!({"name": name, "buckets": "*", "ops": ops, "public_key": cred.public_key_b64()});
        if let Some(k) = keys {
            body["keys"] = json!(k);
        }
        let (s, v) = self.admin("POST", PATH_ADMIN_CLIENTS, Some(body)).await;
        assert_eq!(s, 201, "{v}");
        assert_eq!(v["keys"], json!(keys.unwrap_or("")));
        cred
    }

    async fn create_key(&self, alias: Option<&str>) -> String {
        let mut body = json!({"description": "test key"});
        if let Some(a) = alias {
            body["alias"] = json!(a);
        }
        let v = self.ok("POST", PATH_ADMIN_KMS_KEYS, Some(body)).await;
        v["key_id"].as_str().unwrap().to_string()
    }

    async fn action(&self, key: &str, action: &str, body: Option<Value>) -> (u16, Value) {
        self.admin(
            "POST",
            &format!("{PATH_ADMIN_KMS_KEYS}/{key}/{action}"),
            body,
        )
        .await
    }

    async fn describe(&self, key: &str) -> Value {
        self.ok("GET", &format!("{PATH_ADMIN_KMS_KEYS}/{key}"), None)
            .await
    }

    async fn generate(&self, cred: &Credential, key: &str, ctx: &Value) -> (u16, Value) {
        self.call(
            cred,
            "POST",
            PATH_KMS_GENERATE,
            Some(json!({"key_id": key, "encryption_context": ctx})),
        )
        .await
    }

    async fn decrypt(&self, cred: &Credential, blob: &str, ctx: &Value) -> (u16, Value) {
        self.call(
            cred,
            "POST",
            PATH_KMS_DECRYPT,
            Some(json!({"ciphertext_blob": blob, "encryption_context": ctx})),
        )
        .await
    }

    async fn audit(&self, query: &str) -> Vec<Value> {
        let v = self
            .ok("GET", &format!("{PATH_ADMIN_AUDIT}?{query}"), None)
            .await;
        v.as_array().unwrap().clone()
    }

    fn advance_days(&self, days: i64) {
        self.st.clock.advance(days * DAY_MS);
    }
}

fn code(v: &(u16, Value)) -> (u16, &str) {
    (v.0, v.1["code"].as_str().unwrap_or(""))
}

fn ctx1() -> Value {
    json!({"aws:s3:arn": "arn:aws:s3:::bucket-1/obj", "tenant": "a"})
}

#[tokio::test]
async fn lifecycle_with_injected_clock() {
    let a = app().await;
    let node = a.client("node", &["generate", "unwrap"], Some("*")).await;
    let key = a.create_key(Some("alias/life")).await;
    let (s, g) = a.generate(&node, "alias/life", &ctx1()).await;
    assert_eq!(s, 200, "{g}");
    let blob = g["ciphertext_blob"].as_str().unwrap().to_string();
    assert_eq!(a.decrypt(&node, &blob, &ctx1()).await.0, 200);

    // Disabled: both refused with kms_key_disabled.
    assert_eq!(a.action(&key, "disable", None).await.0, 200);
    assert_eq!(
        code(&a.generate(&node, &key, &ctx1()).await),
        (409, "kms_key_disabled")
    );
    assert_eq!(
        code(&a.decrypt(&node, &blob, &ctx1()).await),
        (409, "kms_key_disabled")
    );
    assert_eq!(a.action(&key, "enable", None).await.0, 200);
    assert_eq!(a.decrypt(&node, &blob, &ctx1()).await.0, 200);

    // Windows outside 7..=30 are refused.
    for d in [6, 31] {
        let r = a
            .action(
                &key,
                "schedule-deletion",
                Some(json!({"pending_window_days": d})),
            )
            .await;
        assert_eq!(code(&r), (400, "invalid_request"));
    }
    // Scheduled (default 30 days): refused as invalid state, still pending 8 days later.
    let (s, r) = a.action(&key, "schedule-deletion", None).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["key"]["state"], "PendingDeletion");
    assert!(r["key"]["deletion_date"].is_string());
    assert_eq!(
        code(&a.generate(&node, &key, &ctx1()).await),
        (409, "kms_key_invalid_state")
    );
    assert_eq!(
        code(&a.decrypt(&node, &blob, &ctx1()).await),
        (409, "kms_key_invalid_state")
    );
    assert_eq!(
        code(&a.action(&key, "enable", None).await),
        (409, "kms_key_invalid_state")
    );
    a.advance_days(8);
    assert_eq!(run_due(&a.st).await.unwrap(), (0, 0));
    assert_eq!(a.describe(&key).await["state"], "PendingDeletion");
    assert_eq!(
        code(&a.decrypt(&node, &blob, &ctx1()).await),
        (409, "kms_key_invalid_state")
    );

    // Cancel: Disabled; enable: works again, old blobs too.
    let (s, r) = a.action(&key, "cancel-deletion", None).await;
    assert_eq!((s, r["state"].as_str()), (200, Some("Disabled")));
    assert!(r.get("deletion_date").is_none());
    assert_eq!(
        code(&a.generate(&node, &key, &ctx1()).await),
        (409, "kms_key_disabled")
    );
    assert_eq!(a.action(&key, "enable", None).await.0, 200);
    assert_eq!(a.decrypt(&node, &blob, &ctx1()).await.0, 200);
    assert_eq!(a.generate(&node, &key, &json!({})).await.0, 200);

    // Dry run: dependents per bucket and version, nothing changes.
    let (s, r) = a
        .action(
            "alias/life",
            "schedule-deletion",
            Some(json!({"pending_window_days": 7, "dry_run": true})),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["key"]["state"], "Enabled");
    let deps = r["dependents"].as_array().unwrap();
    assert_eq!(
        deps,
        &vec![
            json!({"bucket": "", "key_version": 1, "data_keys": 1}),
            json!({"bucket": "bucket-1", "key_version": 1, "data_keys": 1}),
        ]
    );

    // Destroy after a 7-day window: on access (decrypt) and by the job.
    a.ok(
        "POST",
        PATH_ADMIN_ALIASES,
        Some(json!({"alias": "alias/life-2", "target_key_id": key})),
    )
    .await;
    let (s, _) = a
        .action(
            &key,
            "schedule-deletion",
            Some(json!({"pending_window_days": 7})),
        )
        .await;
    assert_eq!(s, 200);
    a.advance_days(7);
    a.st.clock.advance(1000);
    assert_eq!(
        code(&a.decrypt(&node, &blob, &ctx1()).await),
        (404, "kms_key_not_found")
    );
    assert_eq!(
        code(&a.generate(&node, "alias/life", &ctx1()).await),
        (404, "kms_key_not_found")
    );
    assert_eq!(run_due(&a.st).await.unwrap(), (0, 0));
    let d = a.describe(&key).await;
    assert_eq!(d["state"], "Destroyed");
    assert_eq!(d["aliases"], json!([]));
    let material = coffer_kms::kmskeys::store::version(&a.st.pool, &key, 1)
        .await
        .unwrap();
    assert!(material.is_none(), "material erased");
    // Names are not reusable: neither alias the key ever had, nor its id.
    let other = a.create_key(None).await;
    for alias in ["alias/life", "alias/life-2"] {
        let r = a
            .admin(
                "POST",
                PATH_ADMIN_ALIASES,
                Some(json!({"alias": alias, "target_key_id": other})),
            )
            .await;
        assert_eq!(code(&r), (409, "conflict"), "{alias}");
        let r = a
            .admin("POST", PATH_ADMIN_KMS_KEYS, Some(json!({"alias": alias})))
            .await;
        assert_eq!(code(&r), (409, "conflict"), "{alias}");
    }
    for name in [key.as_str(), "alias/life", "alias/life-2"] {
        assert!(
            coffer_kms::kmskeys::store::tombstoned(&a.st.pool, name)
                .await
                .unwrap(),
            "{name}"
        );
    }
    let r = a
        .admin(
            "POST",
            PATH_ADMIN_ALIASES,
            Some(json!({"alias": "alias/x", "target_key_id": key})),
        )
        .await;
    assert_eq!(code(&r), (404, "kms_key_not_found"));
    assert_eq!(
        code(&a.action(&key, "enable", None).await),
        (404, "kms_key_not_found")
    );

    // Every transition is audited with the key id.
    for op in [
        "kmskey.create",
        "kmskey.disable",
        "kmskey.enable",
        "kmskey.schedule_deletion",
        "kmskey.cancel_deletion",
        "kmskey.destroy",
        "alias.create",
    ] {
        let recs = a.audit(&format!("op={op}")).await;
        assert!(
            recs.iter().any(|r| r["key_id"] == json!(key)),
            "{op}: {recs:?}"
        );
    }
    let gens = a.audit("op=kms.generate-data-key&result=ok").await;
    let first: Value = serde_json::from_str(gens[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(first["encryption_context"], ctx1());
    assert_eq!(gens[0]["bucket"], "bucket-1");
    assert_eq!(gens[0]["key_version"], 1);
}

#[tokio::test]
async fn context_binding_1000_each() {
    let a = app().await;
    let node = Arc::new(a.client("node", &["generate", "unwrap"], Some("*")).await);
    let key = a.create_key(None).await;
    let ctx = json!({"aws:s3:arn": "arn:aws:s3:::b/k", "a": "1", "z": "26"});
    let (s, g) = a.generate(&node, &key, &ctx).await;
    assert_eq!(s, 200);
    let blob = g["ciphertext_blob"].as_str().unwrap().to_string();
    let plain = g["plaintext_key"].as_str().unwrap().to_string();
    // The same map written in another order (raw JSON, so the order is on the wire).
    let reordered = r#"{"z":"26","a":"1","aws:s3:arn":"arn:aws:s3:::b/k"}"#;
    let changed = json!({"aws:s3:arn": "arn:aws:s3:::b/k", "a": "1", "z": "27"});
    let missing = json!({"aws:s3:arn": "arn:aws:s3:::b/k", "a": "1"});
    let http = a.http.clone();
    let base = a.base.clone();
    let mut ok = 0;
    let mut mismatch = 0;
    for chunk in 0..(3000 / 50) {
        let mut tasks = Vec::new();
        for j in 0..50 {
            let i = chunk * 50 + j;
            let body = match i % 3 {
                0 => format!(r#"{{"ciphertext_blob":"{blob}","encryption_context":{reordered}}}"#),
                1 => json!({"ciphertext_blob": blob, "encryption_context": changed}).to_string(),
                _ => json!({"ciphertext_blob": blob, "encryption_context": missing}).to_string(),
            };
            let (http, base, node) = (http.clone(), base.clone(), node.clone());
            tasks.push(tokio::spawn(async move {
                let r = http
                    .post(format!("{base}{PATH_KMS_DECRYPT}"))
                    .bearer_auth(node.token("POST", PATH_KMS_DECRYPT))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let s = r.status().as_u16();
                (i % 3, s, r.json::<Value>().await.unwrap())
            }));
        }
        for t in tasks {
            let (kind, s, v) = t.await.unwrap();
            if kind == 0 {
                assert_eq!(s, 200, "{v}");
                assert_eq!(v["plaintext_key"].as_str(), Some(plain.as_str()));
                ok += 1;
            } else {
                assert_eq!((s, v["code"].as_str()), (400, Some("context_mismatch")));
                mismatch += 1;
            }
        }
    }
    assert_eq!((ok, mismatch), (1000, 2000));
    // No context at all also fails; refusals are audited with the context.
    assert_eq!(
        code(&a.decrypt(&node, &blob, &json!({})).await),
        (400, "context_mismatch")
    );
    let recs = a
        .audit("op=kms.decrypt&result=context_mismatch&limit=5000")
        .await;
    assert_eq!(recs.len(), 2001);
    let d: Value = serde_json::from_str(recs[0]["detail"].as_str().unwrap()).unwrap();
    assert!(d["encryption_context"].is_object());
    assert_eq!(recs[0]["key_id"], json!(key));
    // Malformed blobs.
    assert_eq!(
        code(&a.decrypt(&node, "not base64!", &ctx).await),
        (400, "invalid_ciphertext")
    );
    let mut raw = STANDARD.decode(&blob).unwrap();
    raw.truncate(raw.len() - 1);
    assert_eq!(
        code(&a.decrypt(&node, &STANDARD.encode(&raw), &ctx).await),
        (400, "invalid_ciphertext")
    );
    let mut raw = STANDARD.decode(&blob).unwrap();
    raw[44] = 9; // key version 9
    assert_eq!(
        code(&a.decrypt(&node, &STANDARD.encode(&raw), &ctx).await),
        (400, "invalid_ciphertext")
    );
}

#[tokio::test]
async fn rotation_on_demand_and_automatic() {
    let a = app().await;
    let node = a.client("node", &["generate", "unwrap"], Some("*")).await;
    let key = a.create_key(Some("alias/rot")).await;
    let (_, g1) = a.generate(&node, "alias/rot", &ctx1()).await;
    assert_eq!(g1["key_version"], 1);
    let (s, m) = a.action("alias/rot", "rotate", None).await;
    assert_eq!((s, m["current_version"].as_u64()), (200, Some(2)));
    let (_, g2) = a.generate(&node, "alias/rot", &ctx1()).await;
    assert_eq!(g2["key_version"], 2);
    let raw = STANDARD
        .decode(g2["ciphertext_blob"].as_str().unwrap())
        .unwrap();
    assert_eq!(&raw[41..45], &[0, 0, 0, 2], "the blob carries version 2");
    for g in [&g1, &g2] {
        let (s, d) = a
            .decrypt(&node, g["ciphertext_blob"].as_str().unwrap(), &ctx1())
            .await;
        assert_eq!(s, 200);
        assert_eq!(d["plaintext_key"], g["plaintext_key"]);
        assert_eq!(d["key_version"], g["key_version"]);
    }
    // Automatic rotation: bounds, then it fires after the period on the injected clock.
    for d in [89, 2561] {
        assert_eq!(
            code(
                &a.action(&key, "rotation-period", Some(json!({"days": d})))
                    .await
            ),
            (400, "invalid_request")
        );
    }
    let (s, m) = a
        .action(&key, "rotation-period", Some(json!({"days": 90})))
        .await;
    assert_eq!((s, m["rotation_period_days"].as_u64()), (200, Some(90)));
    a.advance_days(89);
    assert_eq!(run_due(&a.st).await.unwrap(), (0, 0));
    a.advance_days(2);
    assert_eq!(run_due(&a.st).await.unwrap(), (0, 1));
    assert_eq!(a.describe(&key).await["current_version"], 3);
    assert_eq!(
        run_due(&a.st).await.unwrap(),
        (0, 0),
        "next one is 90 days later"
    );
    let (_, g3) = a.generate(&node, &key, &ctx1()).await;
    assert_eq!(g3["key_version"], 3);
    assert_eq!(
        a.decrypt(&node, g1["ciphertext_blob"].as_str().unwrap(), &ctx1())
            .await
            .0,
        200
    );
    let recs = a.audit("op=kmskey.rotate").await;
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1]["identity"], "kms");
    assert!(
        recs[1]["detail"]
            .as_str()
            .unwrap()
            .contains("\"automatic\":true")
    );
    // Off: no more automatic rotations; a disabled key is not rotated.
    let (s, m) = a
        .action(&key, "rotation-period", Some(json!({"days": null})))
        .await;
    assert_eq!(s, 200);
    assert!(m.get("rotation_period_days").is_none());
    a.advance_days(400);
    assert_eq!(run_due(&a.st).await.unwrap(), (0, 0));
    a.action(&key, "disable", None).await;
    assert_eq!(
        code(&a.action(&key, "rotate", None).await),
        (409, "kms_key_invalid_state")
    );
}

#[tokio::test]
async fn scopes_arns_and_default_key() {
    let a = app().await;
    let ka = a.create_key(Some("alias/tenant-a-1")).await;
    let kb = a.create_key(Some("alias/tenant-b-1")).await;
    let scoped = a
        .client("node-a", &["generate", "unwrap"], Some("alias/tenant-a-*"))
        .await;
    let none = a.client("legacy", &["generate", "unwrap"], None).await;
    let reader = a.client("reader", &["unwrap"], Some("*")).await;
    let all = a.client("all", &["generate", "unwrap"], Some("*")).await;

    let (s, g) = a.generate(&scoped, "alias/tenant-a-1", &ctx1()).await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(
        a.generate(&scoped, &ka, &ctx1()).await.0,
        200,
        "key id of an in-scope alias"
    );
    let blob = g["ciphertext_blob"].as_str().unwrap();
    assert_eq!(a.decrypt(&scoped, blob, &ctx1()).await.0, 200);
    assert_eq!(
        code(&a.generate(&scoped, "alias/tenant-b-1", &ctx1()).await),
        (403, "forbidden_scope")
    );
    assert_eq!(
        code(&a.generate(&scoped, &kb, &ctx1()).await),
        (403, "forbidden_scope")
    );
    let r = a
        .call(
            &scoped,
            "POST",
            PATH_KMS_DESCRIBE,
            Some(json!({"key_id": kb})),
        )
        .await;
    assert_eq!(code(&r), (403, "forbidden_scope"));
    assert_eq!(
        code(&a.generate(&none, &ka, &ctx1()).await),
        (403, "forbidden_scope")
    );
    assert_eq!(
        code(&a.decrypt(&none, blob, &ctx1()).await),
        (403, "forbidden_scope")
    );
    assert_eq!(
        code(&a.generate(&reader, &ka, &ctx1()).await),
        (403, "forbidden_scope")
    );
    assert_eq!(a.decrypt(&reader, blob, &ctx1()).await.0, 200);
    let recs = a.audit("result=forbidden_scope&identity=node-a").await;
    assert_eq!(recs.len(), 3, "{recs:?}");
    assert!(recs.iter().all(|r| r["key_id"] == json!(kb)));

    // ARNs: canonical in answers; key ARN and alias ARN accepted; another region/account not.
    let arn = format!("arn:aws:kms:us-east-1:000000000000:key/{ka}");
    assert_eq!(g["key_arn"], json!(arn));
    let r = a
        .call(
            &all,
            "POST",
            PATH_KMS_DESCRIBE,
            Some(json!({"key_id": "arn:aws:kms:us-east-1:000000000000:alias/tenant-a-1"})),
        )
        .await;
    assert_eq!(r.0, 200);
    assert_eq!(r.1["arn"], json!(arn));
    assert_eq!(r.1["state"], "Enabled");
    assert_eq!(r.1["aliases"], json!(["alias/tenant-a-1"]));
    assert_eq!(a.generate(&all, &arn, &ctx1()).await.0, 200);
    for bad in [
        format!("arn:aws:kms:eu-west-1:000000000000:key/{ka}"),
        format!("arn:aws:kms:us-east-1:111111111111:key/{ka}"),
        "alias/none".to_string(),
        "00000000-0000-4000-8000-000000000000".to_string(),
        "garbage".to_string(),
    ] {
        assert_eq!(
            code(&a.generate(&all, &bad, &ctx1()).await),
            (404, "kms_key_not_found"),
            "{bad}"
        );
    }

    // alias/aws/s3: created on first use, audited as created by the caller, then reused.
    let (s, g1) = a.generate(&all, "alias/aws/s3", &ctx1()).await;
    assert_eq!(s, 200, "{g1}");
    let (_, g2) = a.generate(&all, "alias/aws/s3", &ctx1()).await;
    assert_eq!(g1["key_arn"], g2["key_arn"]);
    assert_eq!(
        code(&a.generate(&scoped, "alias/aws/s3", &ctx1()).await),
        (403, "forbidden_scope")
    );
    let created = a.audit("op=kmskey.create&identity=all").await;
    assert_eq!(created.len(), 1);
    assert!(
        created[0]["detail"]
            .as_str()
            .unwrap()
            .contains("alias/aws/s3")
    );
    // Reserved aliases cannot be managed by admins.
    for (m, p, b) in [
        (
            "POST",
            PATH_ADMIN_ALIASES.to_string(),
            Some(json!({"alias": "alias/aws/x", "target_key_id": ka})),
        ),
        (
            "PUT",
            format!("{PATH_ADMIN_ALIASES}/alias/aws/s3"),
            Some(json!({"alias": "alias/aws/s3", "target_key_id": ka})),
        ),
        ("DELETE", format!("{PATH_ADMIN_ALIASES}/alias/aws/s3"), None),
        (
            "POST",
            PATH_ADMIN_KMS_KEYS.to_string(),
            Some(json!({"alias": "alias/aws/y"})),
        ),
    ] {
        assert_eq!(
            code(&a.admin(m, &p, b).await),
            (400, "invalid_request"),
            "{m} {p}"
        );
    }
    // Alias update and delete.
    let r = a
        .admin(
            "PUT",
            &format!("{PATH_ADMIN_ALIASES}/alias/tenant-a-1"),
            Some(json!({"alias": "alias/tenant-a-1", "target_key_id": kb})),
        )
        .await;
    assert_eq!(r.0, 200, "{:?}", r.1);
    assert_eq!(a.describe("alias/tenant-a-1").await["key_id"], json!(kb));
    assert_eq!(
        a.admin(
            "DELETE",
            &format!("{PATH_ADMIN_ALIASES}/alias/tenant-a-1"),
            None
        )
        .await
        .0,
        200
    );
    assert_eq!(
        code(
            &a.admin(
                "DELETE",
                &format!("{PATH_ADMIN_ALIASES}/alias/tenant-a-1"),
                None
            )
            .await
        ),
        (404, "not_found")
    );
    let list = a.ok("GET", PATH_ADMIN_ALIASES, None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["alias"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["alias/aws/s3", "alias/tenant-b-1"]);
}

#[tokio::test]
async fn cli_smoke() {
    let mut kms = coffer_tests::kms::Kms::init().await;
    kms.start().await;
    let json_of = |o: &std::process::Output| -> Value {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let k = json_of(
        &kms.admin(&[
            "key",
            "create",
            "--description",
            "d",
            "--alias",
            "alias/cli-1",
        ])
        .await,
    );
    let id = k["key_id"].as_str().unwrap().to_string();
    assert_eq!(k["aliases"], json!(["alias/cli-1"]));
    assert!(k["arn"].as_str().unwrap().ends_with(&format!(":key/{id}")));
    json_of(&kms.admin(&["alias", "create", "alias/cli-2", &id]).await);
    let l = json_of(&kms.admin(&["key", "list"]).await);
    assert_eq!(l.as_array().unwrap().len(), 1);
    let l = json_of(&kms.admin(&["alias", "list"]).await);
    assert_eq!(l.as_array().unwrap().len(), 2);
    let node = kms.create_client("node", "*", "generate,unwrap").await;
    let c = kms.client();
    let r = c
        .http
        .post(format!("{}{PATH_KMS_GENERATE}", c.base))
        .bearer_auth(node.token("POST", PATH_KMS_GENERATE))
        .json(&json!({"key_id": "alias/cli-2", "encryption_context": ctx1()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d = json_of(
        &kms.admin(&["key", "delete", "alias/cli-1", "--dry-run"])
            .await,
    );
    assert_eq!(d["dry_run"], true);
    assert_eq!(d["key"]["state"], "Enabled");
    assert_eq!(
        d["dependents"],
        json!([{"bucket": "bucket-1", "key_version": 1, "data_keys": 1}])
    );
    json_of(
        &kms.admin(&["key", "rotation-period", &id, "--days", "365"])
            .await,
    );
    let r = json_of(&kms.admin(&["key", "rotate", &id]).await);
    assert_eq!(r["current_version"], 2);
    let r = json_of(&kms.admin(&["key", "disable", &id]).await);
    assert_eq!(r["state"], "Disabled");
    let d = json_of(
        &kms.admin(&["key", "delete", &id, "--window-days", "7"])
            .await,
    );
    assert_eq!(d["key"]["state"], "PendingDeletion");
    let r = json_of(&kms.admin(&["key", "cancel-deletion", &id]).await);
    assert_eq!(r["state"], "Disabled");
    let r = json_of(&kms.admin(&["key", "enable", &id]).await);
    assert_eq!(r["state"], "Enabled");
    let r = json_of(&kms.admin(&["key", "describe", "alias/cli-2"]).await);
    assert_eq!(r["rotation_period_days"], 365);
    json_of(&kms.admin(&["alias", "update", "alias/cli-2", &id]).await);
    json_of(&kms.admin(&["alias", "delete", "alias/cli-2"]).await);
    let o = kms.admin(&["alias", "create", "alias/aws/mine", &id]).await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid_request"));
    let clients = json_of(&kms.admin(&["client", "list"]).await);
    let n = clients
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "node")
        .unwrap();
    assert_eq!(n["keys"], "*");
}

/// After a root key rotation the re-wrap worker re-seals named-key material under the new root
/// version, so the old version can be retired and every blob still decrypts.
#[tokio::test]
async fn root_rotation_reseals_material_and_allows_retire() {
    use coffer_common::kms_api::{PATH_ADMIN_RETIRE, PATH_ADMIN_ROTATE};
    let a = app().await;
    let node = a.client("node", &["generate", "unwrap"], Some("*")).await;
    let key = a.create_key(Some("alias/rs")).await;
    let (_, g1) = a.generate(&node, &key, &ctx1()).await;
    a.ok("POST", PATH_ADMIN_ROTATE, None).await;
    while coffer_kms::kmskeys::lifecycle::reseal_once(&a.st)
        .await
        .unwrap()
        > 0
    {}
    let r = a
        .admin("POST", PATH_ADMIN_RETIRE, Some(json!({"version": 1})))
        .await;
    assert_eq!(r.0, 200, "{:?}", r.1);
    let (s, d) = a
        .decrypt(&node, g1["ciphertext_blob"].as_str().unwrap(), &ctx1())
        .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["plaintext_key"], g1["plaintext_key"]);
    assert_eq!(a.generate(&node, "alias/rs", &ctx1()).await.0, 200);
    assert_eq!(a.action(&key, "rotate", None).await.0, 200);
    let recs = a.audit("op=kmskey.reseal").await;
    assert!(!recs.is_empty());
}

/// Count of `needle` in the KMS database files (main file and WAL) of `a`.
fn db_occurrences(a: &App, needle: &[u8]) -> usize {
    let data = a._tmp.path().join("data");
    ["kms.db", "kms.db-wal"]
        .iter()
        .filter_map(|f| std::fs::read(data.join(f)).ok())
        .map(|b| b.windows(needle.len()).filter(|w| *w == needle).count())
        .sum()
}

/// Review of issue 13: a destroyed key's sealed material must be gone from the database files
/// (not only from the table): SQLite keeps deleted cells in free space and old WAL frames.
#[tokio::test]
async fn destroyed_material_is_erased_from_the_database_files() {
    if std::env::var("COFFER_TEST_KMS_DATABASE_URL").is_ok() {
        return; // SQLite's files only (docs/kms-replicas.md: erasure on PostgreSQL)
    }
    let a = app().await;
    let key = a.create_key(Some("alias/erase")).await;
    let (_, sealed) = coffer_kms::kmskeys::store::version(&a.st.pool, &key, 1)
        .await
        .unwrap()
        .unwrap();
    assert!(
        db_occurrences(&a, &sealed) > 0,
        "material is on disk before"
    );
    let (s, _) = a
        .action(
            &key,
            "schedule-deletion",
            Some(json!({"pending_window_days": 7})),
        )
        .await;
    assert_eq!(s, 200);
    a.advance_days(7);
    a.st.clock.advance(1000);
    assert_eq!(run_due(&a.st).await.unwrap(), (1, 0));
    assert_eq!(a.describe(&key).await["state"], "Destroyed");
    assert_eq!(
        db_occurrences(&a, &sealed),
        0,
        "destroyed material left on disk"
    );
}
