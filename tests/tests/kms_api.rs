//! coffer-kms service and admin API against a real `coffer-kms serve` process: the happy path,
//! every refusal (cross-bucket, scope, revoked, replay, audiences), init refusing twice, a wrong
//! passphrase, the audit sink failing (503, nothing returned), and the secrets check.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use coffer_common::jwt::{self, AUD_ADMIN, AUD_SERVICE, Claims};
use coffer_common::kms_api::{
    PATH_ADMIN_CLIENTS, PATH_GENERATE, PATH_HEALTH, PATH_READY, PATH_UNWRAP,
};
use coffer_tests::kms::Kms;

#[tokio::test]
async fn generate_unwrap_and_every_refusal() {
    let mut kms = Kms::init().await;
    kms.start().await;
    let node = kms
        .create_client("node-a", "tenant-a-*", "generate,unwrap")
        .await;
    let reader = kms.create_client("reader", "tenant-a-*", "unwrap").await;
    let c = kms.client();

    // Happy path, with the request id echoed.
    let g = c.generate(&node, "tenant-a-1").await.unwrap();
    assert_eq!(g.key_version, 1);
    assert_eq!(STANDARD.decode(&g.plaintext_key).unwrap().len(), 32);
    assert_eq!(STANDARD.decode(&g.wrapped_key).unwrap().len(), 40);
    let u = c
        .unwrap(&node, "tenant-a-1", &g.wrapped_key, 1)
        .await
        .unwrap();
    assert_eq!(u.plaintext_key, g.plaintext_key);
    let u2 = c
        .unwrap(&reader, "tenant-a-1", &g.wrapped_key, 1)
        .await
        .unwrap();
    assert_eq!(u2.plaintext_key, g.plaintext_key);
    let resp = c
        .http
        .post(format!("{}{PATH_UNWRAP}", c.base))
        .header("x-request-id", "req-test-42")
        .bearer_auth(node.token("POST", PATH_UNWRAP))
        .json(&serde_json::json!({"bucket_id": "tenant-a-1", "wrapped_key": g.wrapped_key, "key_version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-test-42");

    // Cross-bucket unwrap: integrity failure, 400 unwrap_failed.
    let e = c
        .unwrap(&node, "tenant-a-2", &g.wrapped_key, 1)
        .await
        .unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (400, "unwrap_failed"));
    assert!(e.body.request_id.is_some());
    // Unknown version: 404.
    let e = c
        .unwrap(&node, "tenant-a-1", &g.wrapped_key, 7)
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.body.code.as_str()),
        (404, "unknown_key_version")
    );
    // Out of scope: other bucket, or an operation not granted.
    let e = c.generate(&node, "tenant-b-1").await.unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (403, "forbidden_scope"));
    let e = c
        .unwrap(&node, "tenant-b-1", &g.wrapped_key, 1)
        .await
        .unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (403, "forbidden_scope"));
    let e = c.generate(&reader, "tenant-a-1").await.unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (403, "forbidden_scope"));

    // Replayed token, missing token, token bound to another path.
    let body = serde_json::json!({"bucket_id": "tenant-a-1"});
    let t = node.token("POST", PATH_GENERATE);
    assert_eq!(c.post_raw(PATH_GENERATE, &t, &body).await.0, 200);
    let (s, b) = c.post_raw(PATH_GENERATE, &t, &body).await;
    assert_eq!(s, 401);
    assert!(b.contains("token_replayed"), "{b}");
    let (s, b) = c.post_raw(PATH_GENERATE, "", &body).await;
    assert!(s == 401 && b.contains("invalid_token"), "{s} {b}");
    let (s, b) = c
        .post_raw(PATH_GENERATE, &node.token("POST", PATH_UNWRAP), &body)
        .await;
    assert!(s == 401 && b.contains("invalid_token"), "{s} {b}");
    // Expired token.
    let mut claims = Claims::new("node-a", AUD_SERVICE, "POST", PATH_GENERATE, 60);
    claims.exp = claims.iat - 1;
    let (s, _) = c
        .post_raw(
            PATH_GENERATE,
            &jwt::sign(node.signing_key(), &claims),
            &body,
        )
        .await;
    assert_eq!(s, 401);
    // Unknown identity (a key the KMS never saw).
    let stranger = coffer_common::credential::Credential::generate("stranger", AUD_SERVICE);
    let e = c.generate(&stranger, "tenant-a-1").await.unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (401, "invalid_token"));

    // Admin routes refuse service tokens; service routes refuse admin tokens.
    let get = |token: String| {
        let http = c.http.clone();
        let url = format!("{}{PATH_ADMIN_CLIENTS}", c.base);
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, b) = get(node.token("GET", PATH_ADMIN_CLIENTS)).await;
    assert!(s == 401 && b.contains("invalid_token"), "{s} {b}");
    let forged = jwt::sign(
        node.signing_key(),
        &Claims::new("node-a", AUD_ADMIN, "GET", PATH_ADMIN_CLIENTS, 60),
    );
    let (s, b) = get(forged).await;
    assert!(s == 403 && b.contains("not_admin"), "{s} {b}");
    let impersonation = jwt::sign(
        node.signing_key(),
        &Claims::new("admin", AUD_ADMIN, "GET", PATH_ADMIN_CLIENTS, 60),
    );
    assert_eq!(get(impersonation).await.0, 401);
    let admin = coffer_common::credential::Credential::load(&kms.admin_credential()).unwrap();
    let (s, _) = get(admin.token("GET", PATH_ADMIN_CLIENTS)).await;
    assert_eq!(s, 200);
    let admin_as_service = jwt::sign(
        admin.signing_key(),
        &Claims::new("admin", AUD_SERVICE, "POST", PATH_GENERATE, 60),
    );
    let (s, b) = c.post_raw(PATH_GENERATE, &admin_as_service, &body).await;
    assert!(s == 403 && b.contains("not_service"), "{s} {b}");
    // Algorithm confusion: header rewritten to "none".
    let t = node.token("POST", PATH_GENERATE);
    let rest = t.split_once('.').unwrap().1;
    let none = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
    assert_eq!(c.post_raw(PATH_GENERATE, &none, &body).await.0, 401);

    // Duplicate identity: 409; revoked identity: 403 identity_revoked.
    let dup = kms.tmp.path().join("dup.credential");
    let o = kms
        .admin(&[
            "client",
            "create",
            "node-a",
            "--buckets",
            "*",
            "--ops",
            "unwrap",
            "--out",
            dup.to_str().unwrap(),
        ])
        .await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("conflict"));
    assert!(
        !dup.exists(),
        "no credential written for a refused identity"
    );
    let o = kms.admin(&["client", "revoke", "node-a"]).await;
    assert!(o.status.success(), "{}", kms.logs());
    let e = c.generate(&node, "tenant-a-1").await.unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (403, "identity_revoked"));
    let e = c
        .unwrap(&node, "tenant-a-1", &g.wrapped_key, 1)
        .await
        .unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (403, "identity_revoked"));
    assert!(
        c.unwrap(&reader, "tenant-a-1", &g.wrapped_key, 1)
            .await
            .is_ok()
    );
    let list = kms.admin(&["client", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let revoked = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "node-a")
        .unwrap();
    assert!(revoked["revoked"].is_string());

    // Refusals are audited, and filters work.
    let q = kms
        .admin(&["audit", "query", "--result", "forbidden_scope"])
        .await;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|r| r["result"] == "forbidden_scope"));
    let q = kms
        .admin(&[
            "audit",
            "query",
            "--identity",
            "reader",
            "--op",
            "unwrap",
            "--bucket",
            "tenant-a-1",
        ])
        .await;
    assert_eq!(String::from_utf8_lossy(&q.stdout).lines().count(), 2);
    let q = kms
        .admin(&[
            "audit",
            "query",
            "--op",
            "generate",
            "--result",
            "invalid_token",
        ])
        .await;
    // The wrong-path and expired tokens (signed by node-a: one record each) and one aggregate
    // record for the missing token and the unknown identity (issue 11 D12).
    assert!(String::from_utf8_lossy(&q.stdout).lines().count() >= 3);
    let q = kms
        .admin(&["audit", "query", "--since", "2999-01-01T00:00:00Z"])
        .await;
    assert!(q.status.success());
    assert_eq!(String::from_utf8_lossy(&q.stdout).lines().count(), 0);

    // Health, then a graceful stop.
    let h = c
        .http
        .get(format!("{}{PATH_HEALTH}", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let file = kms.export_audit("audit.jsonl").await;
    let (ok, out) = kms.verify_audit(&file).await;
    assert!(ok, "{out}");
    let status = kms.stop().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn init_twice_refuses_and_wrong_passphrase_exits_nonzero() {
    let kms = Kms::init().await;
    let db = std::fs::read(kms.data_dir.join("kms.db")).unwrap();
    let cred = std::fs::read(kms.admin_credential()).unwrap();
    let o = kms
        .cli(&[
            "init",
            "--data-dir",
            kms.data_dir.to_str().unwrap(),
            "--passphrase-file",
            kms.passphrase_file.to_str().unwrap(),
            "--argon2",
            "dev",
        ])
        .await;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already initialized"));
    assert_eq!(std::fs::read(kms.data_dir.join("kms.db")).unwrap(), db);
    assert_eq!(std::fs::read(kms.admin_credential()).unwrap(), cred);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(kms.admin_credential())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let wrong = kms.tmp.path().join("wrong");
    coffer_common::secret_file::write_new_secret_file(&wrong, b"not the passphrase").unwrap();
    let o = kms
        .cli(&[
            "serve",
            "--data-dir",
            kms.data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--passphrase-file",
            wrong.to_str().unwrap(),
            "--no-mlock",
        ])
        .await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("passphrase is wrong"), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("listening on"));
}

#[tokio::test]
async fn audit_sink_unwritable_refuses_key_operations() {
    let mut kms = Kms::init().await;
    kms.start().await;
    let node = kms.create_client("node", "*", "generate,unwrap").await;
    let c = kms.client();
    let g = c.generate(&node, "b1").await.unwrap();

    // Make the audit sink unwritable: another connection holds the database's write lock, so
    // the writer's commit gives up (after its 1 s busy timeout) and nothing is committed.
    let (mut locker, _pool) = coffer_kms::store::open(&kms.data_dir).await.unwrap();
    coffer_kms::store::begin(&mut locker).await.unwrap();
    let e = c.generate(&node, "b1").await.unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (503, "audit_unavailable"));
    let e = c.unwrap(&node, "b1", &g.wrapped_key, 1).await.unwrap_err();
    assert_eq!((e.status, e.body.code.as_str()), (503, "audit_unavailable"));
    // The refusal body carries no key material.
    let resp = c
        .http
        .post(format!("{}{PATH_UNWRAP}", c.base))
        .bearer_auth(node.token("POST", PATH_UNWRAP))
        .json(
            &serde_json::json!({"bucket_id": "b1", "wrapped_key": g.wrapped_key, "key_version": 1}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains(&g.plaintext_key) && !text.contains("plaintext_key"),
        "{text}"
    );
    // Alive, but not ready: every key operation would fail.
    let get = |path: &'static str| {
        let (http, base) = (c.http.clone(), c.base.clone());
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get(PATH_HEALTH).await.0, 200);
    let (status, body) = get(PATH_READY).await;
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "audit_unavailable", "{body}");

    // Sink back: operations resume, and the chain has no hole.
    coffer_kms::store::rollback(&mut locker).await;
    let u = c.unwrap(&node, "b1", &g.wrapped_key, 1).await.unwrap();
    assert_eq!(u.plaintext_key, g.plaintext_key);
    assert_eq!(get(PATH_READY).await, (200, r#"{"status":"ready"}"#.into()));
    let file = kms.export_audit("audit.jsonl").await;
    let (ok, out) = kms.verify_audit(&file).await;
    assert!(ok, "{out}");
}

/// Planted passphrase and every issued data key must not appear raw, hex or base64 in the
/// processes' output, the audit export, or any file of the data dir.
#[tokio::test]
async fn secrets_never_leak() {
    let mut kms = Kms::init().await;
    kms.env.push(("RUST_LOG".into(), "debug".into()));
    kms.start().await;
    let node = kms.create_client("node", "*", "generate,unwrap").await;
    let c = kms.client();
    let mut keys = Vec::new();
    for i in 0..20 {
        let b = format!("bucket-{i}");
        let g = c.generate(&node, &b).await.unwrap();
        let u = c.unwrap(&node, &b, &g.wrapped_key, 1).await.unwrap();
        assert_eq!(u.plaintext_key, g.plaintext_key);
        let _ = c.unwrap(&node, "other", &g.wrapped_key, 1).await;
        keys.push(STANDARD.decode(&g.plaintext_key).unwrap());
    }
    let o = kms.admin(&["rotate"]).await;
    assert!(o.status.success());
    let export = kms.export_audit("audit.jsonl").await;
    kms.stop().await;

    let mut secrets: Vec<Vec<u8>> = keys.clone();
    secrets.push(kms.passphrase.as_bytes().to_vec());
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        needles.push((format!("secret {i} raw"), s.clone()));
        needles.push((format!("secret {i} hex"), hex::encode(s).into_bytes()));
        needles.push((format!("secret {i} HEX"), hex::encode_upper(s).into_bytes()));
        needles.push((
            format!("secret {i} b64"),
            STANDARD.encode(s).trim_end_matches('=').as_bytes().to_vec(),
        ));
        needles.push((
            format!("secret {i} b64url"),
            URL_SAFE_NO_PAD.encode(s).into_bytes(),
        ));
    }
    let mut haystacks: Vec<(String, Vec<u8>)> = vec![
        ("process output".into(), kms.logs().into_bytes()),
        ("audit export".into(), std::fs::read(&export).unwrap()),
    ];
    for dir in [kms.data_dir.clone(), kms.data_dir.join("tls")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                haystacks.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    for (hname, hay) in &haystacks {
        for (nname, needle) in &needles {
            let found = hay.windows(needle.len()).any(|w| w == needle.as_slice());
            assert!(!found, "{nname} found in {hname}");
        }
    }
    assert!(kms.logs().contains("request"), "debug logs were captured");
}
