//! Audit export and offline verification against a real `coffer-kms serve` process: an intact
//! export verifies, and each tampering (deleted record, edited field, swapped records, truncated
//! tail, forged record, forged checkpoint) is detected by `coffer-kms audit verify`, which names
//! the first bad record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use coffer_kms::audit::{AuditRecord, Checkpoint, ExportLine};
use coffer_tests::kms::Kms;

fn seq_of(line: &str) -> Option<u64> {
    match serde_json::from_str::<ExportLine>(line).ok()? {
        ExportLine::Record(r) => Some(r.seq),
        ExportLine::Checkpoint(_) => None,
    }
}

fn index_of(lines: &[String], seq: u64) -> usize {
    lines.iter().position(|l| seq_of(l) == Some(seq)).unwrap()
}

#[tokio::test]
async fn export_verifies_and_each_tampering_is_detected() {
    let mut kms = Kms::init().await;
    kms.env
        .push(("COFFER_KMS_CHECKPOINT_EVERY".into(), "5".into()));
    kms.start().await;
    let node = kms.create_client("node", "t-*", "generate,unwrap").await;
    let c = kms.client();
    for i in 0..12 {
        let b = format!("t-{i}");
        let g = c.generate(&node, &b).await.unwrap();
        c.unwrap(&node, &b, &g.wrapped_key, 1).await.unwrap();
        // Generates one at a time so that periodic checkpoints fall between records.
        let _ = c.generate(&node, "x-out-of-scope").await;
    }
    let file = kms.export_audit("audit.jsonl").await;
    let (ok, out) = kms.verify_audit(&file).await;
    assert!(ok, "intact export must verify: {out}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let records = lines.iter().filter(|l| seq_of(l).is_some()).count() as u64;
    assert!(records >= 38, "{records}");
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("{\"checkpoint\""))
            .count()
            >= 7
    );
    // No key material in the export.
    assert!(!text.contains("plaintext"));

    let check = |name: &'static str, tampered: Vec<String>, expect: String| {
        let kms = &kms;
        async move {
            let p = kms.tmp.path().join(format!("{name}.jsonl"));
            std::fs::write(&p, tampered.join("\n") + "\n").unwrap();
            let (ok, out) = kms.verify_audit(&p).await;
            assert!(!ok, "{name}: tampering not detected: {out}");
            assert!(
                out.contains(&expect),
                "{name}: expected {expect:?} in {out:?}"
            );
        }
    };

    // 1. Deleted record.
    let mut t = lines.clone();
    t.remove(index_of(&t, 7));
    check("delete", t, "first bad record: seq 7 ".into()).await;

    // 2. Edited field (the result of record 9).
    let mut t = lines.clone();
    let i = index_of(&t, 9);
    let edited = t[i].replacen("\"result\":\"", "\"result\":\"x", 1);
    assert_ne!(edited, t[i]);
    t[i] = edited;
    check("edit", t, "first bad record: seq 9 ".into()).await;

    // 3. Two records swapped (12 and 13 are adjacent lines).
    let mut t = lines.clone();
    let (a, b) = (index_of(&t, 12), index_of(&t, 13));
    assert_eq!(a + 1, b, "records 12 and 13 are adjacent");
    t.swap(a, b);
    check("swap", t, "first bad record: seq 12 ".into()).await;

    // 4. Truncated tail: the last two records and the final checkpoint are gone.
    let mut t = lines.clone();
    t.truncate(t.len() - 3);
    let last_cp = t
        .iter()
        .rev()
        .find_map(|l| match serde_json::from_str::<ExportLine>(l).ok()? {
            ExportLine::Checkpoint(cp) => Some(cp.seq),
            ExportLine::Record(_) => None,
        })
        .unwrap();
    check(
        "truncate",
        t,
        format!("first bad record: seq {} ", last_cp + 1),
    )
    .await;

    // 5. Forged record: well-formed, correctly hash-linked to the last record, inserted before
    //    the final checkpoint (the forger has no signing key).
    let mut t = lines.clone();
    let last_idx = t.len() - 2;
    let last = match serde_json::from_str::<ExportLine>(&t[last_idx]).unwrap() {
        ExportLine::Record(r) => r,
        ExportLine::Checkpoint(_) => panic!("expected a record before the final checkpoint"),
    };
    let mut forged = AuditRecord {
        seq: last.seq + 1,
        identity: "admin".into(),
        operation: "client.revoke".into(),
        detail: Some("name=node".into()),
        prev_hash: last.hash.clone(),
        ..last.clone()
    };
    forged.hash = forged.compute_hash();
    t.insert(
        last_idx + 1,
        serde_json::to_string(&ExportLine::Record(forged)).unwrap(),
    );
    check(
        "forge",
        t,
        format!("first bad record: seq {} ", last.seq + 1),
    )
    .await;

    // 5b. Forged record with a forged final checkpoint signed by another key.
    let mut t = lines.clone();
    let mut forged = AuditRecord {
        seq: last.seq + 1,
        prev_hash: last.hash.clone(),
        ..last.clone()
    };
    forged.hash = forged.compute_hash();
    let other = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let fake_cp = Checkpoint::sign(&other, forged.seq, &forged.hash, true);
    let n = t.len();
    t[n - 1] = serde_json::to_string(&ExportLine::Record(forged)).unwrap();
    t.push(serde_json::to_string(&ExportLine::Checkpoint(fake_cp)).unwrap());
    check("forge-checkpoint", t, "invalid signature".into()).await;

    // An intact export under the wrong public key fails too.
    let wrong = kms.tmp.path().join("wrong.pub");
    std::fs::write(
        &wrong,
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            other.verifying_key().to_bytes(),
        ),
    )
    .unwrap();
    let o = kms
        .cli(&[
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--public-key",
            wrong.to_str().unwrap(),
        ])
        .await;
    assert!(!o.status.success());

    // The public key from the admin route equals the one init wrote.
    let o = kms.admin(&["audit", "public-key"]).await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        std::fs::read_to_string(kms.audit_pub()).unwrap().trim()
    );
}

/// Issue 11 D12: refused calls of callers that proved no identity are counted in aggregate
/// records (one per source, operation and answer per minute, with the count), written at the
/// latest at shutdown; every call by a known identity, refused or not, keeps its own record; the
/// chain still verifies.
#[tokio::test]
async fn unauthenticated_refusals_are_aggregated_known_identities_are_not() {
    use coffer_common::kms_api::{PATH_GENERATE, PATH_UNWRAP};
    let mut kms = Kms::init().await;
    kms.start().await;
    let node = kms.create_client("node", "t-*", "generate,unwrap").await;
    let c = kms.client();
    let stranger =
        coffer_common::credential::Credential::generate("node", coffer_common::jwt::AUD_SERVICE);
    let body = serde_json::json!({"bucket_id": "t-1"});
    let unwrap_body =
        serde_json::json!({"bucket_id": "t-1", "wrapped_key": "AAAA", "key_version": 1});
    let mut calls = Vec::new();
    for i in 0..500 {
        let c = c.clone();
        let (body, unwrap_body) = (body.clone(), unwrap_body.clone());
        let forged = stranger.token("POST", PATH_UNWRAP);
        calls.push(tokio::spawn(async move {
            match i % 3 {
                // No token at all.
                0 => c.post_raw(PATH_GENERATE, "", &body).await.0,
                // A token claiming the known identity, signed by another key.
                1 => c.post_raw(PATH_UNWRAP, &forged, &unwrap_body).await.0,
                // Garbage.
                _ => c.post_raw(PATH_UNWRAP, "not-a-jwt", &unwrap_body).await.0,
            }
        }));
        if calls.len() >= 16 {
            for h in calls.drain(..) {
                assert_eq!(h.await.unwrap(), 401);
            }
        }
    }
    for h in calls.drain(..) {
        assert_eq!(h.await.unwrap(), 401);
    }
    // Known identity: a call out of its scope, a replayed token, an expired one: each its own
    // record.
    let e = c.generate(&node, "other-bucket").await.unwrap_err();
    assert_eq!(e.status, 403);
    let t = node.token("POST", PATH_GENERATE);
    assert_eq!(c.post_raw(PATH_GENERATE, &t, &body).await.0, 200);
    assert_eq!(c.post_raw(PATH_GENERATE, &t, &body).await.0, 401);
    // A known identity's malformed body is its own record too.
    let (s, _) = c
        .post_raw(
            PATH_UNWRAP,
            &node.token("POST", PATH_UNWRAP),
            &serde_json::json!({"x": 1}),
        )
        .await;
    assert_eq!(s, 400);

    // The pending aggregates are written at shutdown.
    assert!(kms.stop().await.success());
    kms.start().await;
    let file = kms.export_audit("audit.jsonl").await;
    let (ok, out) = kms.verify_audit(&file).await;
    assert!(ok, "{out}");
    let records: Vec<AuditRecord> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .filter_map(|l| match serde_json::from_str::<ExportLine>(l).ok()? {
            ExportLine::Record(r) => Some(r),
            ExportLine::Checkpoint(_) => None,
        })
        .collect();
    let aggregated: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| {
            r.detail
                .as_deref()
                .is_some_and(|d| d.starts_with("aggregated count="))
        })
        .collect();
    let count = |r: &AuditRecord| -> u64 {
        let d = r.detail.as_deref().unwrap();
        d["aggregated count=".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let total: u64 = aggregated.iter().map(|r| count(r)).sum();
    assert_eq!(total, 500, "{aggregated:#?}");
    // One per operation and answer (per minute: the calls may straddle a minute boundary).
    assert!(
        (2..=4).contains(&aggregated.len()),
        "{} aggregate records: {aggregated:#?}",
        aggregated.len()
    );
    for r in &aggregated {
        assert_eq!(r.identity, "-");
        assert_eq!(r.client, "127.0.0.1");
        assert_eq!(r.result, "invalid_token");
        assert!(r.detail.as_deref().unwrap().contains("/60s"), "{r:?}");
    }
    assert!(
        records.len() < 30,
        "{} records for 500 unauthenticated calls",
        records.len()
    );
    let one = |result: &str| {
        records
            .iter()
            .filter(|r| {
                r.result == result
                    && r.detail
                        .as_deref()
                        .is_none_or(|d| !d.starts_with("aggregated"))
            })
            .count()
    };
    assert_eq!(one("forbidden_scope"), 1);
    assert_eq!(one("token_replayed"), 1);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.identity == "node" && r.result == "invalid_request")
            .count(),
        1
    );
}
