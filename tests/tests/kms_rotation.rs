//! Root key rotation and crash safety against a real `coffer-kms serve` process: after a
//! rotation every previously wrapped key still unwraps (1000 of 1000) and the background re-wrap
//! reaches 100 % coverage; after `kill -9` during load, every key acknowledged before the kill
//! unwraps after restart and the audit chain still verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coffer_tests::kms::Kms;
use tokio::sync::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_keeps_old_keys_working_and_rewraps_everything() {
    let mut kms = Kms::init().await;
    kms.start().await;
    let node = Arc::new(kms.create_client("node", "*", "generate,unwrap").await);
    let c = kms.client();
    // 1000 data keys over 10 buckets, 16 concurrent workers.
    let mut tasks = Vec::new();
    for w in 0..16u32 {
        let (c, node) = (c.clone(), node.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = w;
            while i < 1000 {
                let b = format!("bucket-{}", i % 10);
                let g = c.generate(&node, &b).await.unwrap();
                out.push((b, g));
                i += 16;
            }
            out
        }));
    }
    let mut keys = Vec::new();
    for t in tasks {
        keys.extend(t.await.unwrap());
    }
    assert_eq!(keys.len(), 1000);
    assert!(keys.iter().all(|(_, g)| g.key_version == 1));

    let o = kms.admin(&["rotate"]).await;
    assert!(o.status.success(), "{}", kms.logs());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["new_version"], 2);
    // New keys use version 2 at once.
    assert_eq!(c.generate(&node, "bucket-0").await.unwrap().key_version, 2);

    // Coverage reaches 100 % (bounded wait; polling the status is the observable signal).
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let o = kms.admin(&["rotate", "status"]).await;
        assert!(o.status.success());
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if s["coverage_percent"].as_f64() == Some(100.0) {
            break s;
        }
        assert!(Instant::now() < deadline, "re-wrap stalled: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["total_data_keys"], 1001);
    assert_eq!(status["rewrapped"], 1001);
    assert_eq!(status["active_version"], 2);

    // Every old wrapping still unwraps to the same key, and points to its re-wrapped form.
    let mut ok = 0;
    for (b, g) in &keys {
        let u = c.unwrap(&node, b, &g.wrapped_key, 1).await.unwrap();
        assert_eq!(u.plaintext_key, g.plaintext_key);
        assert_eq!(u.current_key_version, Some(2));
        let cur = u.current_wrapped_key.unwrap();
        let u2 = c.unwrap(&node, b, &cur, 2).await.unwrap();
        assert_eq!(u2.plaintext_key, g.plaintext_key);
        ok += 1;
    }
    assert_eq!(ok, 1000);
    let o = kms.admin(&["keys", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[1]["active"], true);
    assert_eq!(list[1]["data_keys"], 1001);
    let file = kms.export_audit("audit.jsonl").await;
    let (ok, out) = kms.verify_audit(&file).await;
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_during_load_then_every_acknowledged_key_unwraps() {
    let mut kms = Kms::init().await;
    kms.start().await;
    let node = Arc::new(kms.create_client("node", "*", "generate,unwrap").await);
    let c = kms.client();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (c, node, acked, stop) = (c.clone(), node.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let b = format!("b-{w}-{}", i % 3);
                match c.generate(&node, &b).await {
                    Ok(g) => acked.lock().await.push((b, g)),
                    Err(_) => break,
                }
                i += 1;
            }
        }));
    }
    // Let load build up, then kill -9 while requests are in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().await.len() < 400 {
        assert!(Instant::now() < deadline, "load did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kms.kill9().await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().await);
    assert!(acked.len() >= 400);

    kms.start().await;
    let c = kms.client();
    for (b, g) in &acked {
        let u = c
            .unwrap(&node, b, &g.wrapped_key, g.key_version)
            .await
            .unwrap_or_else(|e| panic!("acknowledged key for {b} lost: {e:?}"));
        assert_eq!(u.plaintext_key, g.plaintext_key);
    }
    // Every acknowledged generate has its audit record; the chain survived the crash.
    let o = kms
        .admin(&[
            "audit", "query", "--op", "generate", "--result", "ok", "--limit", "100000",
        ])
        .await;
    let n = String::from_utf8_lossy(&o.stdout).lines().count();
    assert!(
        n >= acked.len(),
        "{n} records for {} acknowledged keys",
        acked.len()
    );
    let file = kms.export_audit("audit.jsonl").await;
    let (ok, out) = kms.verify_audit(&file).await;
    assert!(ok, "{out}");
}
