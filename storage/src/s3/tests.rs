//! Unit tests of the pure parts of the S3 edge: HTTP range resolution and listing pagination.

use std::sync::Arc;
use std::time::Duration;

use s3s::dto::Range;

use super::common::resolve_range;
use super::errors::ApiError;
use super::list::list_page;
use crate::crypto::envelope::StoredSse;
use crate::crypto::key_cache::BucketKeys;
use crate::state::{DefaultEncryption, NodeConfig, NodeState};
use crate::store::blobs::BlobStore;
use crate::store::meta::{BlobRow, Meta, Object, now_ms};

#[test]
fn ranges_resolve_like_s3() {
    let int = |first, last| Range::Int { first, last };
    let suffix = |length| Range::Suffix { length };
    assert_eq!(resolve_range(&int(0, Some(9)), 100).unwrap(), (0, 9));
    assert_eq!(resolve_range(&int(40, Some(59)), 100).unwrap(), (40, 59));
    assert_eq!(resolve_range(&int(90, None), 100).unwrap(), (90, 99));
    assert_eq!(resolve_range(&int(90, Some(5000)), 100).unwrap(), (90, 99));
    assert_eq!(resolve_range(&suffix(7), 100).unwrap(), (93, 99));
    assert_eq!(resolve_range(&suffix(500), 100).unwrap(), (0, 99));
    assert_eq!(resolve_range(&int(99, Some(99)), 100).unwrap(), (99, 99));
    for (r, size) in [
        (int(100, None), 100),
        (int(100, Some(200)), 100),
        (int(0, None), 0),
        (suffix(0), 100),
        (suffix(5), 0),
    ] {
        assert!(
            matches!(resolve_range(&r, size), Err(ApiError::InvalidRange)),
            "{r:?} of {size}"
        );
    }
}

async fn state_with(keys: &[&str]) -> (tempfile::TempDir, Arc<NodeState>) {
    let dir = tempfile::tempdir().unwrap();
    let meta = Meta::open(dir.path()).await.unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    meta.create_bucket("b", None).await.unwrap();
    for k in keys {
        let bucket = meta.bucket("b").await.unwrap().unwrap();
        let v = meta
            .begin_version(&bucket, k, &Meta::new_version_id())
            .await
            .unwrap()
            .unwrap();
        let o = Object {
            bucket: "b".into(),
            key: (*k).into(),
            version_id: v.version_id().into(),
            size: 0,
            etag: "e".into(),
            content_type: None,
            headers: "{}".into(),
            metadata: "{}".into(),
            last_modified_ms: now_ms(),
            sse: StoredSse::None,
            part_count: 1,
            multipart: false,
        };
        let row = BlobRow {
            part_number: 1,
            size: 0,
            etag: "e".into(),
            file: format!("f-{k}"),
            created_ms: now_ms(),
            checksums: None,
        };
        meta.put_object(&o, &row).await.unwrap();
        v.published();
    }
    let cfg = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        region: "us-east-1".into(),
        access_key: "a".into(),
        secret_key: "s".into(),
        tls: false,
        allow_ssec_over_http: false,
        allow_sse_kms_over_http: false,
        default_encryption: DefaultEncryption::None,
        key_cache_ttl: Duration::from_secs(1),
        key_cache_capacity: 1,
        max_body_bytes: 1 << 30,
        virtual_host_domains: Vec::new(),
    };
    let state = NodeState {
        dir_lock: coffer_common::data_dir_lock::DataDirLock::acquire(
            dir.path(),
            "coffer-storage",
            "coffer-storage test",
        )
        .unwrap(),
        meta,
        blobs,
        keys: Arc::new(BucketKeys::new(None, Duration::from_secs(1), 1)),
        cfg,
        metrics: crate::metrics::NodeMetrics::new(),
    };
    (dir, Arc::new(state))
}

fn keys_of(p: &super::list::Page) -> Vec<String> {
    p.objects.iter().map(|o| o.key.clone()).collect()
}

#[tokio::test]
async fn list_pages_fold_prefixes_and_resume() {
    let all = ["a/1", "a/2", "a/3", "b", "c/x/1", "c/y", "d"];
    let (_dir, st) = state_with(&all).await;
    // No delimiter: plain key order with max-keys and resume-after-last.
    let p = list_page(&st, "b", "", None, "", 3).await.unwrap();
    assert_eq!(keys_of(&p), ["a/1", "a/2", "a/3"]);
    assert!(p.truncated);
    let p = list_page(&st, "b", "", None, p.last.as_deref().unwrap(), 3)
        .await
        .unwrap();
    assert_eq!(keys_of(&p), ["b", "c/x/1", "c/y"]);
    let p = list_page(&st, "b", "", None, "c/y", 3).await.unwrap();
    assert_eq!(keys_of(&p), ["d"]);
    assert!(!p.truncated);
    // Delimiter: common prefixes count once toward max-keys.
    let p = list_page(&st, "b", "", Some("/"), "", 2).await.unwrap();
    assert_eq!(p.prefixes, ["a/"]);
    assert_eq!(keys_of(&p), ["b"]);
    assert!(p.truncated);
    let p = list_page(&st, "b", "", Some("/"), "", 1000).await.unwrap();
    assert_eq!(p.prefixes, ["a/", "c/"]);
    assert_eq!(keys_of(&p), ["b", "d"]);
    assert!(!p.truncated);
    // Prefix + delimiter.
    let p = list_page(&st, "b", "c/", Some("/"), "", 1000)
        .await
        .unwrap();
    assert_eq!(p.prefixes, ["c/x/"]);
    assert_eq!(keys_of(&p), ["c/y"]);
    // Exactly max-keys entries: not truncated.
    let p = list_page(&st, "b", "a/", None, "", 3).await.unwrap();
    assert_eq!(keys_of(&p), ["a/1", "a/2", "a/3"]);
    assert!(!p.truncated);
    // max-keys 0: nothing, not truncated (as S3).
    let p = list_page(&st, "b", "", None, "", 0).await.unwrap();
    assert!(p.objects.is_empty() && p.prefixes.is_empty() && !p.truncated);
}
