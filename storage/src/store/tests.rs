//! Unit tests of the store: blob write/read (plain and encrypted, ranges), version states and
//! the start-up sweep.

use bytes::Bytes;
use coffer_common::secret::SecretKey32;
use futures::TryStreamExt;

use super::blobs::BlobStore;
use super::meta::{BlobRow, Meta, Object, Upload, now_ms};
use super::recovery::sweep;
use super::versions::{VersionState, WritingVersion};
use crate::crypto::envelope::StoredSse;
use crate::crypto::format::PartCipher;

fn body(
    data: &[u8],
    chunk: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

async fn read_all(
    blobs: &BlobStore,
    file: &str,
    len: u64,
    range: Option<(u64, u64)>,
    cipher: Option<PartCipher>,
) -> Vec<u8> {
    let s = blobs.open_read(file, len, range, cipher).await.unwrap();
    let parts: Vec<Bytes> = s.try_collect().await.unwrap();
    parts.concat()
}

fn object(bucket: &str, key: &str, version_id: &str, blob_size: u64) -> Object {
    Object {
        bucket: bucket.into(),
        key: key.into(),
        version_id: version_id.into(),
        size: blob_size,
        etag: "e".into(),
        content_type: None,
        headers: "{}".into(),
        metadata: "{}".into(),
        last_modified_ms: now_ms(),
        sse: StoredSse::None,
        part_count: 1,
        multipart: false,
    }
}

/// Begin a version of `key` in the existing bucket `bucket`.
async fn begin(meta: &Meta, bucket: &str, key: &str) -> WritingVersion {
    let b = meta.bucket(bucket).await.unwrap().unwrap();
    meta.begin_version(&b, key, &Meta::new_version_id())
        .await
        .unwrap()
        .unwrap()
}

fn row(file: &str, size: u64) -> BlobRow {
    BlobRow {
        part_number: 1,
        size,
        etag: "e".into(),
        file: file.into(),
        created_ms: now_ms(),
        checksums: None,
    }
}

#[tokio::test]
async fn plain_blob_round_trips_with_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let data = pattern(300_001);
    let w = blobs
        .write(
            body(&data, 7777),
            None,
            Some(data.len() as u64),
            true,
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(w.size, data.len() as u64);
    let md5: [u8; 16] = {
        use md5::Digest;
        md5::Md5::digest(&data).into()
    };
    assert_eq!(w.md5, Some(md5));
    assert_eq!(std::fs::read_dir(blobs.tmp_dir()).unwrap().count(), 0);
    let n = data.len() as u64;
    assert_eq!(read_all(&blobs, &w.file, n, None, None).await, data);
    for (s, e) in [(0, 0), (5, 70_000), (n - 1, n - 1), (131_072, 262_143)] {
        let got = read_all(&blobs, &w.file, n, Some((s, e)), None).await;
        assert_eq!(got, data[s as usize..=e as usize], "range {s}-{e}");
    }
}

#[tokio::test]
async fn encrypted_blob_round_trips_and_holds_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let key = SecretKey32::generate();
    let data = pattern(65_536 * 3 + 17);
    let n = data.len() as u64;
    let w = blobs
        .write(
            body(&data, 10_000),
            Some(PartCipher::for_write(&key, 2)),
            Some(n),
            false,
            &mut |_| {},
        )
        .await
        .unwrap();
    let on_disk = std::fs::read(blobs.blobs_dir().join(&w.file)).unwrap();
    assert!(!on_disk.windows(64).any(|win| win == &data[1000..1064]));
    for range in [
        None,
        Some((0, 0)),
        Some((65_535, 65_537)),
        Some((n - 10, n - 1)),
    ] {
        let header = blobs.read_header(&w.file).await.unwrap();
        let c = PartCipher::for_read(&key, 2, &header).unwrap();
        let got = read_all(&blobs, &w.file, n, range, Some(c)).await;
        let want = match range {
            None => data.clone(),
            Some((s, e)) => data[s as usize..=e as usize].to_vec(),
        };
        assert_eq!(got, want, "range {range:?}");
    }
}

#[tokio::test]
async fn length_mismatch_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let r = blobs
        .write(body(b"abc", 1), None, Some(4), true, &mut |_| {})
        .await;
    assert!(r.is_err());
    assert_eq!(std::fs::read_dir(blobs.tmp_dir()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(blobs.blobs_dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn open_read_survives_unlink() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let data = pattern(1_000_000);
    let w = blobs
        .write(body(&data, 65_536), None, None, true, &mut |_| {})
        .await
        .unwrap();
    let s = blobs
        .open_read(&w.file, data.len() as u64, None, None)
        .await
        .unwrap();
    blobs.remove(&w.file).await;
    let got: Vec<Bytes> = s.try_collect().await.unwrap();
    assert_eq!(got.concat(), data);
}

#[tokio::test]
async fn versions_publish_abort_and_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Meta::open(dir.path()).await.unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    meta.create_bucket("b", None).await.unwrap();

    // Published: complete and visible.
    let v1 = begin(&meta, "b", "k").await;
    let id1 = v1.version_id().to_string();
    assert_eq!(
        meta.version_state(&id1).await.unwrap(),
        Some(VersionState::Writing)
    );
    assert!(meta.object("b", "k").await.unwrap().is_none());
    let w = blobs
        .write(body(b"hello", 2), None, Some(5), true, &mut |_| {})
        .await
        .unwrap();
    meta.put_object(&object("b", "k", &id1, 5), &row(&w.file, 5))
        .await
        .unwrap();
    v1.published();
    assert_eq!(
        meta.version_state(&id1).await.unwrap(),
        Some(VersionState::Complete)
    );
    assert_eq!(
        meta.object("b", "k").await.unwrap().unwrap().version_id,
        id1
    );

    // Aborted (guard dropped): can never be published.
    let v2 = begin(&meta, "b", "k").await;
    let id2 = v2.version_id().to_string();
    meta.abort_version(&id2).await.unwrap();
    drop(v2);
    let w2 = blobs
        .write(body(b"other", 2), None, Some(5), true, &mut |_| {})
        .await
        .unwrap();
    assert!(
        meta.put_object(&object("b", "k", &id2, 5), &row(&w2.file, 5))
            .await
            .is_err()
    );
    assert_eq!(
        meta.object("b", "k").await.unwrap().unwrap().version_id,
        id1
    );

    // Interrupted write (as after kill -9): a writing row, a tmp file and an unreferenced blob.
    let v3 = begin(&meta, "b", "k2").await;
    let id3 = v3.version_id().to_string();
    std::mem::forget(v3);
    std::fs::write(blobs.tmp_dir().join("partial"), b"xx").unwrap();
    // A live multipart upload keeps its writing version and its part blob.
    let up = Upload {
        upload_id: "u1".into(),
        bucket: "b".into(),
        key: "mp".into(),
        version_id: "v-upload".into(),
        created_ms: now_ms(),
        content_type: None,
        headers: "{}".into(),
        metadata: "{}".into(),
        sse: StoredSse::None,
        completed_etag: None,
    };
    let b = meta.bucket("b").await.unwrap().unwrap();
    assert!(meta.create_upload(&b, &up).await.unwrap());
    let wp = blobs
        .write(body(b"part", 2), None, Some(4), true, &mut |_| {})
        .await
        .unwrap();
    meta.put_part("u1", &row(&wp.file, 4)).await.unwrap();

    let report = sweep(&meta, &blobs).await.unwrap();
    assert_eq!(report.tmp_removed, 1);
    assert_eq!(report.orphans_removed, 1, "w2's blob was never published");
    assert_eq!(report.versions_aborted, 1);
    assert_eq!(report.versions_forgotten, 2);
    assert_eq!(meta.version_state(&id3).await.unwrap(), None);
    assert_eq!(
        meta.version_state("v-upload").await.unwrap(),
        Some(VersionState::Writing)
    );
    assert!(blobs.blobs_dir().join(&w.file).exists());
    assert!(blobs.blobs_dir().join(&wp.file).exists());
    assert!(!blobs.blobs_dir().join(&w2.file).exists());

    // Abort of the upload: version aborted, parts returned for deletion.
    let files = meta.abort_upload("u1").await.unwrap().unwrap();
    assert_eq!(files, vec![wp.file.clone()]);
    assert_eq!(
        meta.version_state("v-upload").await.unwrap(),
        Some(VersionState::Aborted)
    );

    // Delete: the version row goes with the object.
    let files = meta.delete_object("b", "k").await.unwrap();
    assert_eq!(files, vec![w.file.clone()]);
    assert_eq!(meta.version_state(&id1).await.unwrap(), None);
}

/// Issue 11 E17: preconditions are decided by the publishing transaction, so a write whose
/// early check passed still fails when another write committed first, and changes nothing.
#[tokio::test]
async fn preconditions_are_checked_when_the_write_commits() {
    use super::conditions::{ConditionFailed, IfMatch, WriteCondition};
    let dir = tempfile::tempdir().unwrap();
    let meta = Meta::open(dir.path()).await.unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    meta.create_bucket("b", None).await.unwrap();
    let absent = WriteCondition {
        if_none_match_any: true,
        if_match: None,
    };
    // Two writers both begin while the key is absent (both early checks pass) ...
    let v1 = begin(&meta, "b", "k").await;
    let v2 = begin(&meta, "b", "k").await;
    let (id1, id2) = (v1.version_id().to_string(), v2.version_id().to_string());
    let w1 = blobs
        .write(body(b"one", 2), None, Some(3), true, &mut |_| {})
        .await
        .unwrap();
    let w2 = blobs
        .write(body(b"two", 2), None, Some(3), true, &mut |_| {})
        .await
        .unwrap();
    // ... the first commit wins, the second is refused at its commit.
    let first = meta
        .put_object_if(&object("b", "k", &id1, 3), &row(&w1.file, 3), &absent)
        .await
        .unwrap();
    assert!(first.is_ok());
    v1.published();
    let second = meta
        .put_object_if(&object("b", "k", &id2, 3), &row(&w2.file, 3), &absent)
        .await
        .unwrap();
    assert_eq!(second.err(), Some(ConditionFailed::Exists));
    drop(v2);
    assert_eq!(
        meta.object("b", "k").await.unwrap().unwrap().version_id,
        id1
    );
    let wrong = WriteCondition {
        if_none_match_any: false,
        if_match: Some(IfMatch::ETag("other".into())),
    };
    let v3 = begin(&meta, "b", "k").await;
    let id3 = v3.version_id().to_string();
    let w3 = blobs
        .write(body(b"three", 2), None, Some(5), true, &mut |_| {})
        .await
        .unwrap();
    let third = meta
        .put_object_if(&object("b", "k", &id3, 5), &row(&w3.file, 5), &wrong)
        .await
        .unwrap();
    assert_eq!(third.err(), Some(ConditionFailed::ETagDiffers));
    assert_eq!(
        meta.object("b", "k").await.unwrap().unwrap().version_id,
        id1
    );
    // The writer connection is still usable after the refused transactions.
    let right = WriteCondition {
        if_none_match_any: false,
        if_match: Some(IfMatch::ETag("e".into())),
    };
    assert!(
        meta.put_object_if(&object("b", "k", &id3, 5), &row(&w3.file, 5), &right)
            .await
            .unwrap()
            .is_ok()
    );
    v3.published();
    assert_eq!(
        meta.object("b", "k").await.unwrap().unwrap().version_id,
        id3
    );
}

/// Issue 11 E18: DeleteBucket aborts the writes in flight into the bucket and its multipart
/// uploads; none of them can publish afterwards, into the deleted bucket or a re-created one.
#[tokio::test]
async fn delete_bucket_aborts_writes_in_flight_and_uploads() {
    use super::conditions::{ConditionFailed, WriteCondition};
    let dir = tempfile::tempdir().unwrap();
    let meta = Meta::open(dir.path()).await.unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    meta.create_bucket("b", None).await.unwrap();
    let old = meta.bucket("b").await.unwrap().unwrap();
    let v = begin(&meta, "b", "k").await;
    let id = v.version_id().to_string();
    let w = blobs
        .write(body(b"ghost", 2), None, Some(5), true, &mut |_| {})
        .await
        .unwrap();
    let up = Upload {
        upload_id: "u1".into(),
        bucket: "b".into(),
        key: "mp".into(),
        version_id: "v-upload".into(),
        created_ms: now_ms(),
        content_type: None,
        headers: "{}".into(),
        metadata: "{}".into(),
        sse: StoredSse::None,
        completed_etag: None,
    };
    assert!(meta.create_upload(&old, &up).await.unwrap());
    let wp = blobs
        .write(body(b"part", 2), None, Some(4), true, &mut |_| {})
        .await
        .unwrap();
    meta.put_part("u1", &row(&wp.file, 4)).await.unwrap();

    let files = meta.delete_bucket("b").await.unwrap().expect("no objects");
    assert_eq!(files, vec![wp.file.clone()]);
    assert_eq!(
        meta.version_state(&id).await.unwrap(),
        Some(VersionState::Aborted)
    );
    assert!(meta.upload("u1").await.unwrap().is_none());
    meta.create_bucket("b", None).await.unwrap();
    let published = meta
        .put_object_if(
            &object("b", "k", &id, 5),
            &row(&w.file, 5),
            &WriteCondition::default(),
        )
        .await
        .unwrap();
    assert_eq!(published.err(), Some(ConditionFailed::BucketGone));
    drop(v);
    assert!(meta.object("b", "k").await.unwrap().is_none());
    assert!(meta.list_objects("b", "", "", 10).await.unwrap().is_empty());
    // A write that looked the old bucket up cannot even begin in the re-created one.
    assert!(
        meta.begin_version(&old, "k", &Meta::new_version_id())
            .await
            .unwrap()
            .is_none()
    );
    let mut up2 = up.clone();
    up2.upload_id = "u2".into();
    up2.version_id = "v-upload-2".into();
    assert!(!meta.create_upload(&old, &up2).await.unwrap());
    // The re-created bucket is empty, so it can be deleted.
    assert_eq!(meta.delete_bucket("b").await.unwrap(), Some(vec![]));
}

/// Issue 12 §6: aborted versions and completed uploads (after their retention) are pruned.
#[tokio::test]
async fn prune_forgets_aborted_versions_and_old_completed_uploads() {
    use super::conditions::WriteCondition;
    use super::meta::{COMPLETED_UPLOAD_RETENTION_MS, Completion, Pruned};
    let dir = tempfile::tempdir().unwrap();
    let meta = Meta::open(dir.path()).await.unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    meta.create_bucket("b", None).await.unwrap();
    let b = meta.bucket("b").await.unwrap().unwrap();
    let aborted = begin(&meta, "b", "gone").await;
    let aborted_id = aborted.version_id().to_string();
    meta.abort_version(&aborted_id).await.unwrap();
    std::mem::forget(aborted);
    let up = Upload {
        upload_id: "u1".into(),
        bucket: "b".into(),
        key: "mp".into(),
        version_id: "v-upload".into(),
        created_ms: now_ms(),
        content_type: None,
        headers: "{}".into(),
        metadata: "{}".into(),
        sse: StoredSse::None,
        completed_etag: None,
    };
    assert!(meta.create_upload(&b, &up).await.unwrap());
    let wp = blobs
        .write(body(b"part", 2), None, Some(4), true, &mut |_| {})
        .await
        .unwrap();
    meta.put_part("u1", &row(&wp.file, 4)).await.unwrap();
    let mut obj = object("b", "mp", "v-upload", 4);
    obj.multipart = true;
    let done = meta
        .complete_upload(&up, &obj, &[1], &WriteCondition::default())
        .await
        .unwrap();
    assert!(matches!(done, Completion::Published(_)));

    // Within the retention the completed upload stays (a repeated Complete answers it).
    let now = now_ms();
    assert_eq!(
        meta.prune(now).await.unwrap(),
        Pruned {
            aborted_versions: 1,
            completed_uploads: 0
        }
    );
    assert_eq!(meta.version_state(&aborted_id).await.unwrap(), None);
    assert!(meta.upload("u1").await.unwrap().is_some());
    // After it, the record goes; the object and its part do not.
    let later = now + COMPLETED_UPLOAD_RETENTION_MS + 1000;
    assert_eq!(
        meta.prune(later).await.unwrap(),
        Pruned {
            aborted_versions: 0,
            completed_uploads: 1
        }
    );
    assert!(meta.upload("u1").await.unwrap().is_none());
    assert_eq!(meta.blobs("v-upload").await.unwrap().len(), 1);
    assert_eq!(
        meta.version_state("v-upload").await.unwrap(),
        Some(VersionState::Complete)
    );
    assert!(meta.object("b", "mp").await.unwrap().is_some());
}

/// Digests are checked after the last byte is hashed and before the blob is made durable and
/// renamed: at the check nothing is in `blobs/`, and a refused digest leaves nothing at all.
#[tokio::test]
async fn digest_checked_before_the_blob_is_renamed_into_place() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let data = pattern(3 * 1024 * 1024 + 17);
    let want: [u8; 16] = {
        use md5::Digest;
        md5::Md5::digest(&data).into()
    };
    let blobs_dir = blobs.blobs_dir().to_path_buf();
    let count = |p: &std::path::Path| std::fs::read_dir(p).unwrap().count();
    for accept in [false, true] {
        let before = count(&blobs_dir);
        let mut seen_at_check = None;
        let mut checked = None;
        let r = blobs
            .write_verified(
                body(&data, 65_536),
                None,
                Some(data.len() as u64),
                true,
                &mut |_| {},
                &mut |md5| {
                    seen_at_check = Some(count(&blobs_dir));
                    checked = md5.copied();
                    accept
                },
            )
            .await;
        assert_eq!(
            seen_at_check,
            Some(before),
            "nothing renamed before the check"
        );
        assert_eq!(checked, Some(want), "the check sees the whole body's MD5");
        assert_eq!(count(blobs.tmp_dir()), 0);
        if accept {
            let w = r.unwrap();
            assert_eq!(w.md5, Some(want));
            assert_eq!(count(&blobs_dir), before + 1);
        } else {
            assert!(matches!(r, Err(super::blobs::BlobError::DigestMismatch)));
            assert_eq!(count(&blobs_dir), before, "a refused digest leaves no blob");
        }
    }
}
