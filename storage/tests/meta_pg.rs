//! The metadata on PostgreSQL (issue 14): every query of `Meta` against a real PostgreSQL 15
//! (one throwaway server per test binary, `scripts/pg-test-server`; a fresh database per test),
//! and two `Meta` handles on one database (two storage nodes) racing: create-only PUTs of one
//! key, concurrent Completes, DeleteBucket against PUTs, and a start-up sweep beside a live
//! node's in-flight write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use coffer_storage::crypto::envelope::StoredSse;
use coffer_storage::store::conditions::{ConditionFailed, WriteCondition};
use coffer_storage::store::db::{DatabaseUrl, DbConfig};
use coffer_storage::store::meta::{BlobRow, Completion, Meta, Object, Upload, now_ms};
use coffer_storage::store::versions::VersionState;
use coffer_tests::pg::PgServer;

/// A fresh, empty database on the test server.
async fn fresh_db() -> DbConfig {
    let url = PgServer::shared().fresh_database().await;
    DbConfig {
        url: DatabaseUrl::parse(&url).unwrap(),
        password: None,
    }
}

fn object(bucket: &str, key: &str, version_id: &str, etag: &str) -> Object {
    Object {
        bucket: bucket.into(),
        key: key.into(),
        version_id: version_id.into(),
        size: 5,
        etag: etag.into(),
        content_type: Some("text/plain".into()),
        headers: "{}".into(),
        metadata: "{\"m\":\"1\"}".into(),
        last_modified_ms: now_ms(),
        sse: StoredSse::None,
        part_count: 1,
        multipart: false,
    }
}

fn row(file: &str, part: u32) -> BlobRow {
    BlobRow {
        part_number: part,
        size: 5,
        etag: format!("p{part}"),
        file: file.into(),
        created_ms: now_ms(),
        checksums: Some("{\"crc32\":\"AAAAAA==\"}".into()),
    }
}

fn upload(bucket: &str, key: &str, id: &str) -> Upload {
    Upload {
        upload_id: id.into(),
        bucket: bucket.into(),
        key: key.into(),
        version_id: Meta::new_version_id(),
        created_ms: now_ms(),
        content_type: None,
        headers: "{}".into(),
        metadata: "{}".into(),
        sse: StoredSse::None,
        completed_etag: None,
    }
}

/// Put `key` unconditionally through `meta`.
async fn put(meta: &Meta, bucket: &str, key: &str) -> String {
    let b = meta.bucket(bucket).await.unwrap().unwrap();
    let vid = Meta::new_version_id();
    let v = meta.begin_version(&b, key, &vid).await.unwrap().unwrap();
    meta.put_object(
        &object(bucket, key, &vid, "e"),
        &row(&format!("f-{vid}"), 1),
    )
    .await
    .unwrap();
    v.published();
    vid
}

/// Every query the node runs, on PostgreSQL: types decode (BIGINT, BYTEA, NULLs), listings are
/// in UTF-8 byte order (as S3, whatever the database's collation), prefixes are case-sensitive.
#[tokio::test]
async fn queries_round_trip_and_list_in_byte_order() {
    let db = fresh_db().await;
    let meta = Meta::connect(&db).await.unwrap();
    assert!(meta.is_shared());
    meta.ping().await.unwrap();
    assert!(meta.create_bucket("b", Some("{\"x\":1}")).await.unwrap());
    assert!(!meta.create_bucket("b", None).await.unwrap());
    assert!(meta.create_bucket("a-z", None).await.unwrap());
    let names: Vec<String> = meta
        .list_buckets()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.0)
        .collect();
    assert_eq!(names, ["a-z", "b"]);
    let b = meta.bucket("b").await.unwrap().unwrap();
    assert_eq!(b.encryption_config.as_deref(), Some("{\"x\":1}"));
    assert_eq!(b.bk_generation, 1);
    assert_eq!(b.wrapped_key, None);

    // Byte order: 'B' < 'a' < 'z' < '~' < 'é' (0xC3 0xA9) < '😀' (0xF0 ...).
    let keys = ["é", "a", "~", "B", "z", "😀", "aB", "ab", "a/b"];
    for k in keys {
        put(&meta, "b", k).await;
    }
    let listed: Vec<String> = meta
        .list_objects("b", "", "", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, ["B", "a", "a/b", "aB", "ab", "z", "~", "é", "😀"]);
    let page: Vec<String> = meta
        .list_objects("b", "a", "a/b", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(page, ["aB", "ab"]);
    // Prefixes are case-sensitive and count characters, not bytes.
    let upper: Vec<String> = meta
        .list_objects("b", "A", "", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(upper.is_empty(), "{upper:?}");
    let accented = meta.list_objects("b", "é", "", 100).await.unwrap();
    assert_eq!(accented.len(), 1);

    let o = meta.object("b", "a").await.unwrap().unwrap();
    assert_eq!(o.size, 5);
    assert_eq!(o.content_type.as_deref(), Some("text/plain"));
    assert_eq!(o.metadata, "{\"m\":\"1\"}");
    assert!(!o.multipart);
    let parts = meta.blobs(&o.version_id).await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].size, 5);
    assert!(meta.blob_file_referenced(&parts[0].file).await.unwrap());
    assert_eq!(meta.all_blob_files().await.unwrap().len(), keys.len());

    // In-place update, delete.
    let mut o2 = o.clone();
    o2.etag = "e2".into();
    assert!(
        meta.update_object_in_place(&o2, &[(1, "p1b".into())])
            .await
            .unwrap()
    );
    assert_eq!(meta.object("b", "a").await.unwrap().unwrap().etag, "e2");
    assert_eq!(meta.blobs(&o.version_id).await.unwrap()[0].etag, "p1b");
    let gone = meta.delete_object("b", "a").await.unwrap();
    assert_eq!(
        gone,
        parts.iter().map(|p| p.file.clone()).collect::<Vec<_>>()
    );
    assert!(meta.object("b", "a").await.unwrap().is_none());
    assert_eq!(meta.delete_bucket("b").await.unwrap(), None);

    // Multipart: create, parts (replace one), list, complete, repeat, prune.
    let u = upload("b", "mp", "u-1");
    assert!(meta.create_upload(&b, &u).await.unwrap());
    assert_eq!(
        meta.put_part("u-1", &row("p1", 1)).await.unwrap(),
        Some(vec![])
    );
    assert_eq!(
        meta.put_part("u-1", &row("p1b", 1)).await.unwrap(),
        Some(vec!["p1".to_string()])
    );
    meta.put_part("u-1", &row("p2", 2)).await.unwrap();
    meta.put_part("u-1", &row("p3", 3)).await.unwrap();
    let listed = meta.list_uploads("b").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].upload_id, "u-1");
    let got = meta.upload("u-1").await.unwrap().unwrap();
    assert_eq!(got.version_id, u.version_id);
    let mut mo = object("b", "mp", &u.version_id, "mp-2");
    mo.multipart = true;
    mo.part_count = 2;
    match meta
        .complete_upload(&u, &mo, &[1, 2], &WriteCondition::default())
        .await
        .unwrap()
    {
        Completion::Published(dead) => assert_eq!(dead, vec!["p3".to_string()]),
        other => panic!("{other:?}"),
    }
    assert_eq!(meta.blobs(&u.version_id).await.unwrap().len(), 2);
    assert!(matches!(
        meta.complete_upload(&u, &mo, &[1, 2], &WriteCondition::default())
            .await
            .unwrap(),
        Completion::AlreadyCompleted(e) if e == "mp-2"
    ));
    assert!(meta.list_uploads("b").await.unwrap().is_empty());
    let pruned = meta.prune(now_ms() + 2 * 3600 * 1000).await.unwrap();
    assert_eq!(pruned.completed_uploads, 1);
    let u2 = upload("b", "mp2", "u-2");
    assert!(meta.create_upload(&b, &u2).await.unwrap());
    meta.put_part("u-2", &row("q1", 1)).await.unwrap();
    assert_eq!(
        meta.abort_upload("u-2").await.unwrap(),
        Some(vec!["q1".to_string()])
    );
    assert_eq!(
        meta.version_state(&u2.version_id).await.unwrap(),
        Some(VersionState::Aborted)
    );
    assert_eq!(meta.abort_upload("u-2").await.unwrap(), None);
    meta.close().await;
}

/// The bucket-key queries of the re-wrap and re-seal sweeps (BYTEA comparisons, SUMs, joins).
#[tokio::test]
async fn bucket_key_queries_on_postgres() {
    let db = fresh_db().await;
    let meta = Meta::connect(&db).await.unwrap();
    meta.create_bucket("k", None).await.unwrap();
    assert_eq!(
        meta.set_bucket_key_if_absent("k", b"wrapped-1", 3)
            .await
            .unwrap(),
        Some((b"wrapped-1".to_vec(), 3))
    );
    assert_eq!(
        meta.set_bucket_key_if_absent("k", b"other", 4)
            .await
            .unwrap(),
        Some((b"wrapped-1".to_vec(), 3))
    );
    let sealed =
        StoredSse::from_columns("sse-s3", Some(&[7; 32]), Some(&[9; 40]), None, Some(1)).unwrap();
    let b = meta.bucket("k").await.unwrap().unwrap();
    let vid = Meta::new_version_id();
    let v = meta.begin_version(&b, "obj", &vid).await.unwrap().unwrap();
    let mut o = object("k", "obj", &vid, "e");
    o.sse = sealed.clone();
    meta.put_object(&o, &row("kf", 1)).await.unwrap();
    v.published();
    assert_eq!(meta.bucket_keys_per_version().await.unwrap(), vec![(3, 1)]);
    assert_eq!(meta.wrapped_bucket_keys("", 10).await.unwrap().len(), 1);
    assert!(
        meta.rotate_bucket_key("k", 1, (b"wrapped-2", 3))
            .await
            .unwrap()
    );
    assert!(
        !meta
            .rotate_bucket_key("k", 1, (b"wrapped-x", 3))
            .await
            .unwrap()
    );
    assert_eq!(meta.bucket_keys_per_version().await.unwrap(), vec![(3, 2)]);
    assert_eq!(
        meta.archived_bucket_key(&b.id, 1).await.unwrap(),
        Some((b"wrapped-1".to_vec(), 3))
    );
    assert_eq!(
        meta.archived_bucket_keys(("", 0), 10).await.unwrap().len(),
        1
    );
    assert!(
        meta.replace_bucket_key("k", 1, (b"wrapped-1", 3), (b"wrapped-1b", 4))
            .await
            .unwrap()
    );
    assert!(
        !meta
            .replace_bucket_key("k", 1, (b"wrapped-1", 3), (b"wrapped-1c", 4))
            .await
            .unwrap()
    );
    assert_eq!(
        meta.bucket_keys_per_version().await.unwrap(),
        vec![(3, 1), (4, 1)]
    );
    assert_eq!(meta.sse_s3_generation_coverage().await.unwrap(), (1, 0));
    let stale = meta.stale_object_seals(("", ""), 10).await.unwrap();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].generation, 1);
    assert!(stale[0].upload_id.is_none());
    assert!(meta.stale_upload_seals("", 10).await.unwrap().is_empty());
    assert!(
        meta.reseal_stale(&stale[0], &[1; 32], &[2; 40], 2)
            .await
            .unwrap()
    );
    assert!(
        !meta
            .reseal_stale(&stale[0], &[1; 32], &[2; 40], 2)
            .await
            .unwrap()
    );
    assert_eq!(meta.sse_s3_generation_coverage().await.unwrap(), (1, 1));
    meta.close().await;
}

/// Two nodes, eight concurrent `If-None-Match: *` PUTs of one key: exactly one wins, and both
/// nodes read the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_create_only_puts_exactly_one_wins() {
    let db = fresh_db().await;
    let a = Meta::connect(&db).await.unwrap();
    let b = Meta::connect(&db).await.unwrap();
    a.create_bucket("race", None).await.unwrap();
    let cond = WriteCondition {
        if_none_match_any: true,
        if_match: None,
    };
    // Every writer begins (its version row is written) before any publishes.
    let mut begun = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let bucket = node.bucket("race").await.unwrap().unwrap();
        let vid = Meta::new_version_id();
        let v = node
            .begin_version(&bucket, "k", &vid)
            .await
            .unwrap()
            .unwrap();
        begun.push((node, vid, v, i));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = begun
        .into_iter()
        .map(|(node, vid, v, i)| {
            let cond = cond.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let o = object("race", "k", &vid, &format!("etag-{i}"));
                let r = node
                    .put_object_if(&o, &row(&format!("f-{i}"), 1), &cond)
                    .await
                    .unwrap();
                if r.is_ok() {
                    v.published();
                }
                (i, r)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        match r {
            Ok(replaced) => {
                assert!(replaced.is_empty());
                winners.push(i);
            }
            Err(f) => assert_eq!(f, ConditionFailed::Exists),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let etag = format!("etag-{}", winners[0]);
    assert_eq!(a.object("race", "k").await.unwrap().unwrap().etag, etag);
    assert_eq!(b.object("race", "k").await.unwrap().unwrap().etag, etag);
    assert_eq!(
        a.all_blob_files().await.unwrap(),
        vec![format!("f-{}", winners[0])]
    );
    a.close().await;
    b.close().await;
}

/// Two nodes complete one multipart upload at once (four Completes each): one publishes, the
/// others answer its ETag; the parts belong to the object once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_concurrent_completes_publish_once() {
    let db = fresh_db().await;
    let a = Meta::connect(&db).await.unwrap();
    let b = Meta::connect(&db).await.unwrap();
    a.create_bucket("mp", None).await.unwrap();
    let bucket = a.bucket("mp").await.unwrap().unwrap();
    let u = upload("mp", "big", "up-1");
    assert!(a.create_upload(&bucket, &u).await.unwrap());
    a.put_part("up-1", &row("part-1", 1)).await.unwrap();
    b.put_part("up-1", &row("part-2", 2)).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let u = u.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut o = object("mp", "big", &u.version_id, &format!("mp-{i}"));
                o.multipart = true;
                o.part_count = 2;
                barrier.wait().await;
                node.complete_upload(&u, &o, &[1, 2], &WriteCondition::default())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut published = Vec::new();
    let mut answered = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Completion::Published(dead) => {
                assert!(dead.is_empty(), "{dead:?}");
                published.push(());
            }
            Completion::AlreadyCompleted(e) => answered.push(e),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(published.len(), 1);
    assert_eq!(answered.len(), 7);
    let obj = b.object("mp", "big").await.unwrap().unwrap();
    assert!(answered.iter().all(|e| *e == obj.etag), "{answered:?}");
    let parts = a.blobs(&u.version_id).await.unwrap();
    assert_eq!(
        parts.iter().map(|p| p.file.as_str()).collect::<Vec<_>>(),
        ["part-1", "part-2"]
    );
    a.close().await;
    b.close().await;
}

/// DeleteBucket on one node racing PUTs on the other: either the delete finds an object and
/// refuses, or every PUT fails with BucketGone and nothing is left in the bucket (no ghost
/// object, no version left writing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_bucket_races_puts_on_another_node() {
    for round in 0..6 {
        let db = fresh_db().await;
        let a = Meta::connect(&db).await.unwrap();
        let b = Meta::connect(&db).await.unwrap();
        a.create_bucket("d", None).await.unwrap();
        let bucket = a.bucket("d").await.unwrap().unwrap();
        let mut begun = Vec::new();
        for i in 0..6 {
            let vid = Meta::new_version_id();
            let v = a
                .begin_version(&bucket, &format!("k{i}"), &vid)
                .await
                .unwrap()
                .unwrap();
            begun.push((vid, v, i));
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(7));
        let puts: Vec<_> = begun
            .into_iter()
            .map(|(vid, v, i)| {
                let a = a.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    if i % 2 == round % 2 {
                        tokio::task::yield_now().await;
                    }
                    let o = object("d", &format!("k{i}"), &vid, "e");
                    let r = a
                        .put_object_if(&o, &row(&format!("f{i}"), 1), &WriteCondition::default())
                        .await
                        .unwrap();
                    if r.is_ok() {
                        v.published();
                    }
                    r
                })
            })
            .collect();
        let del = {
            let b = b.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                b.delete_bucket("d").await.unwrap()
            })
        };
        let mut ok = 0;
        for p in puts {
            match p.await.unwrap() {
                Ok(_) => ok += 1,
                Err(f) => assert_eq!(f, ConditionFailed::BucketGone),
            }
        }
        match del.await.unwrap() {
            Some(_) => {
                assert_eq!(ok, 0, "a PUT published into a deleted bucket");
                assert!(a.bucket("d").await.unwrap().is_none());
                assert!(b.list_objects("d", "", "", 100).await.unwrap().is_empty());
                assert!(a.all_blob_files().await.unwrap().is_empty());
            }
            None => {
                assert!(ok > 0);
                assert_eq!(b.list_objects("d", "", "", 100).await.unwrap().len(), ok);
            }
        }
        a.close().await;
        b.close().await;
    }
}

/// A node's start-up sweep beside a live node: the live node's in-flight write stays writing
/// and publishes; once that node has stopped, the next sweep aborts what it left unfinished.
#[tokio::test]
async fn start_up_sweep_spares_a_live_nodes_writes() {
    let db = fresh_db().await;
    let a = Meta::connect(&db).await.unwrap();
    a.create_bucket("s", None).await.unwrap();
    let bucket = a.bucket("s").await.unwrap().unwrap();
    let vid = Meta::new_version_id();
    let v = a.begin_version(&bucket, "k", &vid).await.unwrap().unwrap();
    let left = Meta::new_version_id();
    let stays = a
        .begin_version(&bucket, "k2", &left)
        .await
        .unwrap()
        .unwrap();

    let b = Meta::connect(&db).await.unwrap();
    let swept = b.sweep_versions().await.unwrap();
    assert_eq!(swept.interrupted, 0);
    assert_eq!(
        b.version_state(&vid).await.unwrap(),
        Some(VersionState::Writing)
    );
    a.put_object(&object("s", "k", &vid, "e"), &row("fk", 1))
        .await
        .unwrap();
    v.published();
    assert!(b.object("s", "k").await.unwrap().is_some());

    // Node a stops with `left` unfinished (its drop would abort it: forget the guard).
    std::mem::forget(stays);
    a.close().await;
    let c = Meta::connect(&db).await.unwrap();
    let swept = c.sweep_versions().await.unwrap();
    assert_eq!(swept.interrupted, 1);
    assert_eq!(c.version_state(&left).await.unwrap(), None);
    b.close().await;
    c.close().await;
}

/// Nodes starting together on an empty database: the schema is created once, every node opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_together_migrate_once() {
    let db = fresh_db().await;
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { Meta::connect(&db).await })
        })
        .collect();
    let mut nodes = Vec::new();
    for o in opens {
        nodes.push(o.await.unwrap().unwrap());
    }
    nodes[0].create_bucket("m", None).await.unwrap();
    assert!(nodes[3].bucket("m").await.unwrap().is_some());
    for n in nodes {
        n.close().await;
    }
}

/// The periodic prune of a running node (PostgreSQL) forgets the writes a stopped node left
/// unfinished, and never touches a live node's, its own included.
#[tokio::test]
async fn prune_forgets_a_stopped_nodes_writes_only() {
    let db = fresh_db().await;
    let a = Meta::connect(&db).await.unwrap();
    let b = Meta::connect(&db).await.unwrap();
    a.create_bucket("p", None).await.unwrap();
    let bucket = a.bucket("p").await.unwrap().unwrap();
    let (va, vb) = (Meta::new_version_id(), Meta::new_version_id());
    let ga = a.begin_version(&bucket, "ka", &va).await.unwrap().unwrap();
    let gb = b.begin_version(&bucket, "kb", &vb).await.unwrap().unwrap();
    b.prune(now_ms()).await.unwrap();
    assert_eq!(
        a.version_state(&va).await.unwrap(),
        Some(VersionState::Writing)
    );
    assert_eq!(
        b.version_state(&vb).await.unwrap(),
        Some(VersionState::Writing)
    );
    std::mem::forget(ga);
    a.close().await;
    let pruned = b.prune(now_ms()).await.unwrap();
    assert_eq!(pruned.aborted_versions, 1);
    assert_eq!(b.version_state(&va).await.unwrap(), None);
    assert_eq!(
        b.version_state(&vb).await.unwrap(),
        Some(VersionState::Writing)
    );
    b.put_object(&object("p", "kb", &vb, "e"), &row("fb", 1))
        .await
        .unwrap();
    gb.published();
    b.close().await;
}

/// PostgreSQL cannot store U+0000 in TEXT: the error is recognised (the S3 edge answers 400
/// InvalidArgument, not 500), and nothing was written.
#[tokio::test]
async fn nul_in_a_key_is_recognised_as_unstorable() {
    let db = fresh_db().await;
    let meta = Meta::connect(&db).await.unwrap();
    meta.create_bucket("n", None).await.unwrap();
    let b = meta.bucket("n").await.unwrap().unwrap();
    let e = match meta
        .begin_version(&b, "a\u{0}b", &Meta::new_version_id())
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("PostgreSQL stored a NUL"),
    };
    assert!(coffer_storage::store::db::is_unstorable_text(&e), "{e}");
    assert!(!coffer_storage::store::db::is_unreachable(&e));
    // The writer connection is still usable.
    put(&meta, "n", "ok").await;
    assert_eq!(meta.list_objects("n", "", "", 10).await.unwrap().len(), 1);
    meta.close().await;
}

/// A database that cannot be reached is "unreachable" (503 with Retry-After at the S3 edge).
#[tokio::test]
async fn an_unreachable_database_is_recognised() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = DbConfig {
        url: DatabaseUrl::parse(&format!("postgres://postgres@127.0.0.1:{port}/x")).unwrap(),
        password: None,
    };
    let e = match Meta::connect(&cfg).await {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(coffer_storage::store::db::is_unreachable(&e), "{e}");
}

/// Metadata publishes per second (begin a version + publish it: two write transactions), 16
/// writers, on SQLite, on PostgreSQL with one node and with two nodes. A measurement, not a
/// check: `cargo test -p coffer-storage --test meta_pg -- --ignored --nocapture`. (The test
/// server runs with fsync off; SQLite runs with synchronous=FULL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn bench_metadata_publishes() {
    const TOTAL: usize = 2000;
    const WRITERS: usize = 16;
    async fn run(nodes: Vec<Meta>) -> f64 {
        nodes[0].create_bucket("bench", None).await.unwrap();
        let t0 = std::time::Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let meta = nodes[w % nodes.len()].clone();
                tokio::spawn(async move {
                    for i in 0..TOTAL / WRITERS {
                        put(&meta, "bench", &format!("k{w}/{i}")).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let rate = TOTAL as f64 / t0.elapsed().as_secs_f64();
        assert_eq!(
            nodes[0]
                .list_objects("bench", "", "", 10_000)
                .await
                .unwrap()
                .len(),
            TOTAL
        );
        for n in nodes {
            n.close().await;
        }
        rate
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = run(vec![Meta::open(dir.path()).await.unwrap()]).await;
    let db = fresh_db().await;
    let pg1 = run(vec![Meta::connect(&db).await.unwrap()]).await;
    let db = fresh_db().await;
    let pg2 = run(vec![
        Meta::connect(&db).await.unwrap(),
        Meta::connect(&db).await.unwrap(),
    ])
    .await;
    println!(
        "metadata publishes/s ({WRITERS} writers, {TOTAL} objects): sqlite {sqlite:.0}, postgres 1 node {pg1:.0}, postgres 2 nodes {pg2:.0}"
    );
}
