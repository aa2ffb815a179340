//! `coffer-kms admin keys retire N` against a real KMS process, through the service API alone:
//! the version a caller last presented (unwrapped) is what retire waits for, as well as the
//! KMS's own re-wrap; the active version is never retired; a retired version is gone for good
//! (old wrappings answer 404 `unknown_key_version`, also after a restart) while current ones
//! keep unwrapping to the same key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use coffer_tests::kms::Kms;

async fn retire(kms: &Kms, v: u32) -> Result<(), String> {
    let o = kms.admin(&["keys", "retire", &v.to_string()]).await;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_waits_for_every_presented_wrapping_then_forgets_the_version() {
    let mut kms = Kms::init().await;
    kms.start().await;
    let node = kms.create_client("node", "*", "generate,unwrap").await;
    let c = kms.client();
    let mut keys = Vec::new();
    for i in 0..10 {
        let b = format!("bucket-{i}");
        let g = c.generate(&node, &b).await.unwrap();
        keys.push((b, g));
    }
    let e = retire(&kms, 1).await.unwrap_err();
    assert!(
        e.contains("409") && e.contains("root_version_active"),
        "{e}"
    );

    let o = kms.admin(&["rotate"]).await;
    assert!(o.status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = kms.admin(&["rotate", "status"]).await;
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if s["coverage_percent"].as_f64() == Some(100.0) {
            break;
        }
        assert!(Instant::now() < deadline, "re-wrap stalled: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The registry is at version 2, but every caller still holds (presented) version 1.
    let e = retire(&kms, 1).await.unwrap_err();
    assert!(
        e.contains("root_version_in_use") && e.contains("0 data keys") && e.contains("10 were"),
        "{e}"
    );

    // Each caller unwraps its old wrapping (answered with the current one and the active
    // version), then presents the current one; retire waits for the last of them.
    let mut current = Vec::new();
    for (i, (b, g)) in keys.iter().enumerate() {
        let u = c.unwrap(&node, b, &g.wrapped_key, 1).await.unwrap();
        assert_eq!(u.plaintext_key, g.plaintext_key);
        assert_eq!(u.current_key_version, Some(2));
        assert_eq!(u.active_key_version, Some(2));
        let w = u.current_wrapped_key.unwrap();
        if i < 9 {
            let again = c.unwrap(&node, b, &w, 2).await.unwrap();
            assert_eq!(again.plaintext_key, g.plaintext_key);
            assert_eq!(again.current_key_version, None);
        }
        current.push(w);
    }
    let e = retire(&kms, 1).await.unwrap_err();
    assert!(
        e.contains("1 were last presented") && e.contains("bucket-9"),
        "{e}"
    );
    c.unwrap(&node, "bucket-9", &current[9], 2).await.unwrap();
    retire(&kms, 1).await.unwrap();
    let e = retire(&kms, 1).await.unwrap_err();
    assert!(e.contains("404"), "{e}");

    // Version 1 is gone, also after a restart; version 2 wrappings open to the same keys.
    kms.stop().await;
    kms.start().await;
    let c = kms.client();
    let old = c
        .unwrap(&node, "bucket-0", &keys[0].1.wrapped_key, 1)
        .await
        .unwrap_err();
    assert_eq!(old.status, 404);
    assert_eq!(old.body.code, "unknown_key_version");
    for (i, (b, g)) in keys.iter().enumerate() {
        let u = c.unwrap(&node, b, &current[i], 2).await.unwrap();
        assert_eq!(u.plaintext_key, g.plaintext_key);
    }
    let list = kms.admin(&["keys", "list"]).await;
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["presented_data_keys"], 10, "{list}");
    // The retirement is audited.
    let q = kms
        .admin(&["audit", "query", "--op", "keys.retire", "--result", "ok"])
        .await;
    assert_eq!(String::from_utf8_lossy(&q.stdout).lines().count(), 1);
}
