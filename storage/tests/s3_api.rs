//! Rust integration test of the S3 surface: the node runs in-process on 127.0.0.1:0 with a temp
//! data dir and no KMS, and is driven over HTTP with SigV4-signed requests (the workspace's
//! signer in `coffer-tests`, checked against AWS's published example). The Python suite in
//! `tests/s3` covers the surface with real clients; this test pins the core wire behaviour from
//! Rust: object round trip, ranges, error XML, multipart with unaligned parts, copy rules,
//! checksums and listings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use coffer_storage::state::{DefaultEncryption, NodeConfig};
use coffer_tests::s3client::{Answer, S3Client};
use md5::{Digest, Md5};

const MIB: usize = 1024 * 1024;

struct Node {
    client: S3Client,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let cfg = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            region: "us-east-1".into(),
            access_key: "rust-test".into(),
            secret_key: "rust-test-secret".into(),
            tls: false,
            allow_ssec_over_http: false,
            allow_sse_kms_over_http: false,
            default_encryption: DefaultEncryption::None,
            key_cache_ttl: Duration::from_secs(60),
            key_cache_capacity: 16,
            max_body_bytes: 5 * 1024 * 1024 * 1024,
            virtual_host_domains: Vec::new(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(coffer_storage::serve(listener, cfg, async {
            let _ = rx.await;
        }));
        Node {
            client: S3Client::plain(&host, "rust-test", "rust-test-secret"),
            _dir: dir,
            stop: Some(tx),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        self.client.call(method, path, query, headers, body).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

#[tokio::test]
async fn object_round_trip_ranges_and_errors() {
    let n = Node::start().await;
    assert_eq!(n.call("PUT", "/rbkt", &[], &[], vec![]).await.status, 200);
    let body = data(100_000, 1);
    let put = n
        .call(
            "PUT",
            "/rbkt/dir/a b+c",
            &[],
            &[("content-type", "text/x-rust"), ("x-amz-meta-k", "v")],
            body.clone(),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.header("etag"), format!("\"{}\"", md5_hex(&body)));
    let get = n.call("GET", "/rbkt/dir/a b+c", &[], &[], vec![]).await;
    assert_eq!((get.status, get.body.len()), (200, body.len()));
    assert!(get.body == body);
    assert_eq!(get.header("content-type"), "text/x-rust");
    assert_eq!(get.header("x-amz-meta-k"), "v");
    for (range, s, e) in [
        ("bytes=0-0", 0, 0),
        ("bytes=10-99", 10, 99),
        ("bytes=-5", 99_995, 99_999),
        ("bytes=99990-", 99_990, 99_999),
    ] {
        let r = n
            .call("GET", "/rbkt/dir/a b+c", &[], &[("range", range)], vec![])
            .await;
        assert_eq!(r.status, 206, "{range}");
        assert!(r.body == body[s..=e], "{range}");
        assert_eq!(r.header("content-range"), format!("bytes {s}-{e}/100000"));
    }
    let bad = n
        .call(
            "GET",
            "/rbkt/dir/a b+c",
            &[],
            &[("range", "bytes=100000-")],
            vec![],
        )
        .await;
    assert_eq!(
        (bad.status, bad.one("Code").as_str()),
        (416, "InvalidRange")
    );
    let missing = n.call("GET", "/rbkt/nope", &[], &[], vec![]).await;
    assert_eq!(
        (missing.status, missing.one("Code").as_str()),
        (404, "NoSuchKey")
    );
    assert_eq!(missing.one("Resource"), "/rbkt/nope");
    assert_eq!(missing.one("RequestId"), missing.header("x-amz-request-id"));
    assert!(!missing.one("RequestId").is_empty());
    let wrong_md5 = n
        .call(
            "PUT",
            "/rbkt/x",
            &[],
            &[("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==")],
            b"not empty".to_vec(),
        )
        .await;
    assert_eq!(
        (wrong_md5.status, wrong_md5.one("Code").as_str()),
        (400, "BadDigest")
    );
    assert_eq!(
        n.call("HEAD", "/rbkt/x", &[], &[], vec![]).await.status,
        404
    );
    let self_copy = n
        .call(
            "PUT",
            "/rbkt/dir/a b+c",
            &[],
            &[("x-amz-copy-source", "/rbkt/dir/a%20b%2Bc")],
            vec![],
        )
        .await;
    assert_eq!(
        (self_copy.status, self_copy.one("Code").as_str()),
        (400, "InvalidRequest")
    );
    let copy = n
        .call(
            "PUT",
            "/rbkt/copy",
            &[],
            &[("x-amz-copy-source", "/rbkt/dir/a%20b%2Bc")],
            vec![],
        )
        .await;
    assert_eq!(copy.status, 200, "{}", copy.text());
    assert!(n.call("GET", "/rbkt/copy", &[], &[], vec![]).await.body == body);
    let not_empty = n.call("DELETE", "/rbkt", &[], &[], vec![]).await;
    assert_eq!(
        (not_empty.status, not_empty.one("Code").as_str()),
        (409, "BucketNotEmpty")
    );
    assert_eq!(
        n.call("DELETE", "/rbkt/copy", &[], &[], vec![])
            .await
            .status,
        204
    );
    assert_eq!(
        n.call("DELETE", "/rbkt/copy", &[], &[], vec![])
            .await
            .status,
        204
    );
    let unknown = n
        .call("GET", "/rbkt", &[("tagging", "")], &[], vec![])
        .await;
    assert_eq!(
        (unknown.status, unknown.one("Code").as_str()),
        (501, "NotImplemented")
    );
}

#[tokio::test]
async fn multipart_unaligned_parts() {
    let n = Node::start().await;
    n.call("PUT", "/mpbk", &[], &[], vec![]).await;
    let init = n
        .call("POST", "/mpbk/big", &[("uploads", "")], &[], vec![])
        .await;
    let id = init.one("UploadId");
    assert!(!id.is_empty(), "{}", init.text());
    let parts = [data(5 * MIB + 7, 1), data(5 * MIB + 65_537, 2), data(3, 3)];
    let mut xml = String::from("<CompleteMultipartUpload>");
    let mut md5s = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let num = (i + 1).to_string();
        let r = n
            .call(
                "PUT",
                "/mpbk/big",
                &[("partNumber", &num), ("uploadId", &id)],
                &[],
                p.clone(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        xml += &format!(
            "<Part><PartNumber>{num}</PartNumber><ETag>{}</ETag></Part>",
            r.header("etag")
        );
        md5s.extend(Md5::digest(p));
    }
    xml += "</CompleteMultipartUpload>";
    let listed = n
        .call("GET", "/mpbk/big", &[("uploadId", &id)], &[], vec![])
        .await;
    assert_eq!(listed.all("PartNumber"), ["1", "2", "3"]);
    let done = n
        .call(
            "POST",
            "/mpbk/big",
            &[("uploadId", &id)],
            &[],
            xml.clone().into_bytes(),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    let want = format!("\"{}-3\"", md5_hex(&md5s));
    assert_eq!(done.one("ETag").replace("&quot;", "\""), want);
    let again = n
        .call(
            "POST",
            "/mpbk/big",
            &[("uploadId", &id)],
            &[],
            xml.into_bytes(),
        )
        .await;
    assert_eq!(again.one("ETag").replace("&quot;", "\""), want);
    let whole = n.call("GET", "/mpbk/big", &[], &[], vec![]).await;
    assert!(whole.body == parts.concat());
    let p2 = n
        .call("GET", "/mpbk/big", &[("partNumber", "2")], &[], vec![])
        .await;
    assert_eq!(p2.status, 206);
    assert!(p2.body == parts[1]);
    assert_eq!(p2.header("x-amz-mp-parts-count"), "3");
    let gone = n
        .call("DELETE", "/mpbk/big", &[("uploadId", &id)], &[], vec![])
        .await;
    assert_eq!(
        (gone.status, gone.one("Code").as_str()),
        (404, "NoSuchUpload")
    );
}

#[tokio::test]
async fn listing_pages_with_delimiter() {
    let n = Node::start().await;
    n.call("PUT", "/lsbk", &[], &[], vec![]).await;
    for k in ["a/1", "a/2", "b", "c/1", "d"] {
        assert_eq!(
            n.call("PUT", &format!("/lsbk/{k}"), &[], &[], b"x".to_vec())
                .await
                .status,
            200
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let mut q = vec![("list-type", "2"), ("delimiter", "/"), ("max-keys", "2")];
        if !token.is_empty() {
            q.push(("continuation-token", token.as_str()));
        }
        let page = n.call("GET", "/lsbk", &q, &[], vec![]).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let count: usize = page.one("KeyCount").parse().unwrap();
        let mut entries = page.all("Key");
        entries.extend(page.all("Prefix").into_iter().filter(|p| !p.is_empty()));
        assert_eq!(entries.len(), count);
        seen.extend(entries);
        if page.one("IsTruncated") != "true" {
            break;
        }
        token = page.one("NextContinuationToken");
    }
    seen.sort();
    assert_eq!(seen, ["a/", "b", "c/", "d"]);
}

fn content_md5(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(b))
}

/// Issue 11 E16: buckets are unversioned, so only `null` names the current object; any other
/// version id names nothing (DeleteObject deletes nothing, reads answer 404 NoSuchVersion).
#[tokio::test]
async fn version_ids_other_than_null_name_nothing() {
    let n = Node::start().await;
    n.call("PUT", "/verbk", &[], &[], vec![]).await;
    let put = n.call("PUT", "/verbk/k", &[], &[], b"live".to_vec()).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let other = [("versionId", "3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY")];
    let del = n.call("DELETE", "/verbk/k", &other, &[], vec![]).await;
    assert_eq!(del.status, 204, "{}", del.text());
    let get = n.call("GET", "/verbk/k", &[], &[], vec![]).await;
    assert_eq!((get.status, get.body.as_slice()), (200, &b"live"[..]));
    let get_v = n.call("GET", "/verbk/k", &other, &[], vec![]).await;
    assert_eq!(
        (get_v.status, get_v.one("Code").as_str()),
        (404, "NoSuchVersion")
    );
    assert_eq!(
        n.call("HEAD", "/verbk/k", &other, &[], vec![]).await.status,
        404
    );
    let attrs = n
        .call(
            "GET",
            "/verbk/k",
            &[("attributes", ""), other[0]],
            &[("x-amz-object-attributes", "ETag")],
            vec![],
        )
        .await;
    assert_eq!(
        (attrs.status, attrs.one("Code").as_str()),
        (404, "NoSuchVersion")
    );
    let null = [("versionId", "null")];
    let get_null = n.call("GET", "/verbk/k", &null, &[], vec![]).await;
    assert_eq!(
        (get_null.status, get_null.body.as_slice()),
        (200, &b"live"[..])
    );
    let copy_other = n
        .call(
            "PUT",
            "/verbk/c1",
            &[],
            &[(
                "x-amz-copy-source",
                "/verbk/k?versionId=3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY",
            )],
            vec![],
        )
        .await;
    assert_eq!(
        (copy_other.status, copy_other.one("Code").as_str()),
        (404, "NoSuchVersion")
    );
    assert_eq!(
        n.call("HEAD", "/verbk/c1", &[], &[], vec![]).await.status,
        404
    );
    let copy_null = n
        .call(
            "PUT",
            "/verbk/c2",
            &[],
            &[("x-amz-copy-source", "/verbk/k?versionId=null")],
            vec![],
        )
        .await;
    assert_eq!(copy_null.status, 200, "{}", copy_null.text());
    let xml = b"<Delete><Object><Key>k</Key><VersionId>3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY</VersionId></Object></Delete>".to_vec();
    let batch = n
        .call(
            "POST",
            "/verbk",
            &[("delete", "")],
            &[("content-md5", &content_md5(&xml))],
            xml,
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.text());
    assert_eq!(batch.all("Key"), ["k"]);
    assert_eq!(batch.all("Code"), Vec::<String>::new());
    let get = n.call("GET", "/verbk/k", &[], &[], vec![]).await;
    assert_eq!((get.status, get.body.as_slice()), (200, &b"live"[..]));
    assert_eq!(
        n.call("DELETE", "/verbk/k", &null, &[], vec![])
            .await
            .status,
        204
    );
    assert_eq!(
        n.call("HEAD", "/verbk/k", &[], &[], vec![]).await.status,
        404
    );
}

/// Issue 11 E22: a bucket with Object Lock would promise retention Coffer does not enforce.
#[tokio::test]
async fn object_lock_bucket_is_refused() {
    let n = Node::start().await;
    let lock = n
        .call(
            "PUT",
            "/lockbk",
            &[],
            &[("x-amz-bucket-object-lock-enabled", "true")],
            vec![],
        )
        .await;
    assert_eq!(
        (lock.status, lock.one("Code").as_str()),
        (501, "NotImplemented")
    );
    assert_eq!(
        n.call("HEAD", "/lockbk", &[], &[], vec![]).await.status,
        404
    );
    let plain = n
        .call(
            "PUT",
            "/lockbk",
            &[],
            &[("x-amz-bucket-object-lock-enabled", "false")],
            vec![],
        )
        .await;
    assert_eq!(plain.status, 200, "{}", plain.text());
}

/// Issue 11 E17: conditional writes (PutObject, CopyObject destination, Complete) write nothing
/// when their precondition fails; copy-source conditions follow AWS's combination rules; a 304
/// carries the ETag.
#[tokio::test]
async fn conditional_writes_write_nothing_when_they_fail() {
    let n = Node::start().await;
    n.call("PUT", "/cwbk", &[], &[], vec![]).await;
    let one = n.call("PUT", "/cwbk/k", &[], &[], b"one".to_vec()).await;
    let etag1 = one.header("etag");
    let body_of = |a: &Answer| (a.status, String::from_utf8_lossy(&a.body).into_owned());
    let code = |a: &Answer| (a.status, a.one("Code"));
    let exists = n
        .call(
            "PUT",
            "/cwbk/k",
            &[],
            &[("if-none-match", "*")],
            b"two".to_vec(),
        )
        .await;
    assert_eq!(code(&exists), (412, "PreconditionFailed".into()));
    assert_eq!(
        body_of(&n.call("GET", "/cwbk/k", &[], &[], vec![]).await),
        (200, "one".into())
    );
    let fresh = n
        .call(
            "PUT",
            "/cwbk/new",
            &[],
            &[("if-none-match", "*")],
            b"n".to_vec(),
        )
        .await;
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    let wrong = n
        .call(
            "PUT",
            "/cwbk/k",
            &[],
            &[("if-match", "\"0123\"")],
            b"two".to_vec(),
        )
        .await;
    assert_eq!(code(&wrong), (412, "PreconditionFailed".into()));
    let missing = n
        .call(
            "PUT",
            "/cwbk/none",
            &[],
            &[("if-match", &etag1)],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(code(&missing), (404, "NoSuchKey".into()));
    assert_eq!(
        n.call("HEAD", "/cwbk/none", &[], &[], vec![]).await.status,
        404
    );
    let right = n
        .call(
            "PUT",
            "/cwbk/k",
            &[],
            &[("if-match", &etag1)],
            b"three".to_vec(),
        )
        .await;
    assert_eq!(right.status, 200, "{}", right.text());
    let etag3 = right.header("etag");
    assert_eq!(
        body_of(&n.call("GET", "/cwbk/k", &[], &[], vec![]).await),
        (200, "three".into())
    );

    // Racing create-only writes of one key: exactly one wins, and its bytes are stored.
    let racers = (0..6u8).map(|i| {
        let n = &n;
        async move {
            let body = data(256 * 1024, i);
            let r = n
                .call(
                    "PUT",
                    "/cwbk/race",
                    &[],
                    &[("if-none-match", "*")],
                    body.clone(),
                )
                .await;
            (r.status, body)
        }
    });
    let results = futures::future::join_all(racers).await;
    let winners: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(
        winners.len(),
        1,
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|(s, _)| *s == 200 || *s == 412));
    let stored = n.call("GET", "/cwbk/race", &[], &[], vec![]).await;
    assert!(stored.body == winners[0].1);

    // GET: a 304 carries the ETag.
    let not_modified = n
        .call("GET", "/cwbk/k", &[], &[("if-none-match", &etag3)], vec![])
        .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), etag3);
    assert!(!not_modified.header("last-modified").is_empty());

    // CopyObject: destination preconditions, then the copy-source ones.
    let copy = |headers: Vec<(&'static str, String)>, dst: &'static str| {
        let n = &n;
        async move {
            let mut h: Vec<(&str, &str)> = vec![("x-amz-copy-source", "/cwbk/k")];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            n.call("PUT", dst, &[], &h, vec![]).await
        }
    };
    let r = copy(vec![("if-none-match", "*".into())], "/cwbk/new").await;
    assert_eq!(code(&r), (412, "PreconditionFailed".into()));
    assert_eq!(
        body_of(&n.call("GET", "/cwbk/new", &[], &[], vec![]).await),
        (200, "n".into())
    );
    let past = "Sat, 01 Jan 2000 00:00:00 GMT".to_string();
    let future = "Fri, 01 Jan 2100 00:00:00 GMT".to_string();
    for (headers, want) in [
        (
            vec![("x-amz-copy-source-if-match", "\"0123\"".to_string())],
            412,
        ),
        (vec![("x-amz-copy-source-if-match", etag3.clone())], 200),
        (
            vec![("x-amz-copy-source-if-none-match", etag3.clone())],
            412,
        ),
        (
            vec![("x-amz-copy-source-if-none-match", "\"0123\"".into())],
            200,
        ),
        (
            vec![("x-amz-copy-source-if-unmodified-since", past.clone())],
            412,
        ),
        (
            vec![("x-amz-copy-source-if-modified-since", future.clone())],
            412,
        ),
        (
            vec![("x-amz-copy-source-if-modified-since", past.clone())],
            200,
        ),
        // if-match true wins over if-unmodified-since false (AWS)
        (
            vec![
                ("x-amz-copy-source-if-match", etag3.clone()),
                ("x-amz-copy-source-if-unmodified-since", past.clone()),
            ],
            200,
        ),
        // if-none-match false with if-modified-since true: 412 (AWS)
        (
            vec![
                ("x-amz-copy-source-if-none-match", etag3.clone()),
                ("x-amz-copy-source-if-modified-since", past.clone()),
            ],
            412,
        ),
        (
            vec![
                ("x-amz-copy-source-if-none-match", "\"0123\"".into()),
                ("x-amz-copy-source-if-modified-since", future.clone()),
            ],
            200,
        ),
    ] {
        let what = format!("{headers:?}");
        let r = copy(headers, "/cwbk/copied").await;
        assert_eq!(r.status, want, "{what}: {}", r.text());
        if want == 412 {
            assert_eq!(r.one("Code"), "PreconditionFailed", "{what}");
        }
    }

    // CompleteMultipartUpload: refused preconditions publish nothing and keep the upload.
    let init = n
        .call("POST", "/cwbk/k", &[("uploads", "")], &[], vec![])
        .await;
    let id = init.one("UploadId");
    let part = n
        .call(
            "PUT",
            "/cwbk/k",
            &[("partNumber", "1"), ("uploadId", &id)],
            &[],
            b"multi".to_vec(),
        )
        .await;
    let xml = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{}</ETag></Part></CompleteMultipartUpload>",
        part.header("etag")
    );
    for (h, v) in [("if-none-match", "*"), ("if-match", "\"0123\"")] {
        let r = n
            .call(
                "POST",
                "/cwbk/k",
                &[("uploadId", &id)],
                &[(h, v)],
                xml.clone().into_bytes(),
            )
            .await;
        assert_eq!(code(&r), (412, "PreconditionFailed".into()), "{h}");
        assert_eq!(
            body_of(&n.call("GET", "/cwbk/k", &[], &[], vec![]).await),
            (200, "three".into())
        );
        let parts = n
            .call("GET", "/cwbk/k", &[("uploadId", &id)], &[], vec![])
            .await;
        assert_eq!(parts.status, 200, "the upload stays live: {}", parts.text());
    }
    let done = n
        .call(
            "POST",
            "/cwbk/k",
            &[("uploadId", &id)],
            &[("if-match", &etag3)],
            xml.into_bytes(),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(
        body_of(&n.call("GET", "/cwbk/k", &[], &[], vec![]).await),
        (200, "multi".into())
    );
}

/// Issue 11 E20: concurrent Completes of one upload all answer the winner's 200; an upload is
/// addressed only under its own key.
#[tokio::test]
async fn concurrent_completes_answer_alike_and_uploads_belong_to_their_key() {
    let n = Node::start().await;
    n.call("PUT", "/ccbk", &[], &[], vec![]).await;
    let init = n
        .call("POST", "/ccbk/obj", &[("uploads", "")], &[], vec![])
        .await;
    let id = init.one("UploadId");
    let mut xml = String::from("<CompleteMultipartUpload>");
    let parts = [data(5 * MIB, 1), data(1000, 2)];
    for (i, p) in parts.iter().enumerate() {
        let num = (i + 1).to_string();
        let r = n
            .call(
                "PUT",
                "/ccbk/obj",
                &[("partNumber", &num), ("uploadId", &id)],
                &[],
                p.clone(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        xml += &format!(
            "<Part><PartNumber>{num}</PartNumber><ETag>{}</ETag></Part>",
            r.header("etag")
        );
    }
    xml += "</CompleteMultipartUpload>";

    // Another key than the upload's: 404 NoSuchUpload for every upload operation.
    let elsewhere = [
        n.call(
            "PUT",
            "/ccbk/other",
            &[("partNumber", "3"), ("uploadId", &id)],
            &[],
            b"x".to_vec(),
        )
        .await,
        n.call("GET", "/ccbk/other", &[("uploadId", &id)], &[], vec![])
            .await,
        n.call(
            "POST",
            "/ccbk/other",
            &[("uploadId", &id)],
            &[],
            xml.clone().into_bytes(),
        )
        .await,
        n.call("DELETE", "/ccbk/other", &[("uploadId", &id)], &[], vec![])
            .await,
    ];
    for r in &elsewhere {
        assert_eq!((r.status, r.one("Code").as_str()), (404, "NoSuchUpload"));
    }
    assert_eq!(
        n.call("HEAD", "/ccbk/other", &[], &[], vec![]).await.status,
        404
    );
    let listed = n
        .call("GET", "/ccbk/obj", &[("uploadId", &id)], &[], vec![])
        .await;
    assert_eq!(listed.all("PartNumber"), ["1", "2"]);

    let completes = (0..6).map(|_| {
        let (n, xml, id) = (&n, xml.clone(), id.clone());
        async move {
            n.call(
                "POST",
                "/ccbk/obj",
                &[("uploadId", &id)],
                &[],
                xml.into_bytes(),
            )
            .await
        }
    });
    let answers = futures::future::join_all(completes).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200; 6], "{}", answers[0].text());
    let etags: Vec<String> = answers.iter().map(|a| a.one("ETag")).collect();
    assert!(etags.iter().all(|e| e == &etags[0]), "{etags:?}");
    let whole = n.call("GET", "/ccbk/obj", &[], &[], vec![]).await;
    assert!(whole.body == parts.concat());
    assert_eq!(whole.header("etag"), etags[0].replace("&quot;", "\""));
}

/// No byte a well-formed XML 1.0 text cannot hold (C0 controls other than tab and line feed;
/// a raw CR would be read back as LF).
fn xml_clean(body: &[u8]) -> bool {
    !body.iter().any(|b| *b < 0x20 && *b != b'\t' && *b != b'\n')
}

/// Issue 11 D15: AWS's limits (1000 keys per DeleteObjects, 2 KB of user metadata) and keys
/// XML cannot carry refused, so listings and errors are always well-formed XML.
#[tokio::test]
async fn aws_limits_and_listings_stay_well_formed_xml() {
    let n = Node::start().await;
    n.call("PUT", "/limbk", &[], &[], vec![]).await;
    let batch = |count: usize| {
        let mut xml = String::from("<Delete><Quiet>true</Quiet>");
        for i in 0..count {
            xml += &format!("<Object><Key>k{i}</Key></Object>");
        }
        xml += "</Delete>";
        xml.into_bytes()
    };
    for (count, want) in [(1001, 400), (1000, 200)] {
        let xml = batch(count);
        let md5 = content_md5(&xml);
        let r = n
            .call(
                "POST",
                "/limbk",
                &[("delete", "")],
                &[("content-md5", &md5)],
                xml,
            )
            .await;
        assert_eq!(r.status, want, "{count}: {}", r.text());
        if want == 400 {
            assert_eq!(r.one("Code"), "MalformedXML");
        }
    }

    let fits = "v".repeat(2047);
    let over = "v".repeat(2048);
    let ok = n
        .call(
            "PUT",
            "/limbk/m",
            &[],
            &[("x-amz-meta-k", &fits)],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let two = [
        ("x-amz-meta-a", "v".repeat(1000)),
        ("x-amz-meta-b", "v".repeat(1047)),
    ];
    let two: Vec<(&str, &str)> = two.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (path, query, extra) in [
        ("/limbk/big", vec![], vec![]),
        ("/limbk/big", vec![("uploads", "")], vec![]),
        (
            "/limbk/big",
            vec![],
            vec![
                ("x-amz-copy-source", "/limbk/m"),
                ("x-amz-metadata-directive", "REPLACE"),
            ],
        ),
    ] {
        for meta in [vec![("x-amz-meta-k", over.as_str())], two.clone()] {
            let mut h = extra.clone();
            h.extend(meta.iter().copied());
            let method = if query.is_empty() { "PUT" } else { "POST" };
            let r = n.call(method, path, &query, &h, b"x".to_vec()).await;
            assert_eq!(
                (r.status, r.one("Code").as_str()),
                (400, "MetadataTooLarge"),
                "{method} {query:?} {extra:?}"
            );
        }
    }
    assert_eq!(
        n.call("HEAD", "/limbk/big", &[], &[], vec![]).await.status,
        404
    );
    let uploads = n
        .call("GET", "/limbk", &[("uploads", "")], &[], vec![])
        .await;
    assert!(uploads.all("UploadId").is_empty(), "{}", uploads.text());

    for bad in ["a\u{1}b", "cr\rkey", "nul\0", "esc\u{1b}", "x\u{FFFF}"] {
        let path = format!("/limbk/{bad}");
        let r = n.call("PUT", &path, &[], &[], b"x".to_vec()).await;
        assert_eq!(
            (r.status, r.one("Code").as_str()),
            (400, "InvalidArgument"),
            "{bad:?}"
        );
        assert!(xml_clean(&r.body), "{bad:?}: {:?}", r.text());
        let get = n.call("GET", &path, &[], &[], vec![]).await;
        assert_eq!(get.status, 404, "{bad:?}");
        assert!(xml_clean(&get.body), "{bad:?}: {:?}", get.text());
        let up = n.call("POST", &path, &[("uploads", "")], &[], vec![]).await;
        assert_eq!(up.status, 400, "{bad:?}");
        let copy = n
            .call(
                "PUT",
                &path,
                &[],
                &[("x-amz-copy-source", "/limbk/m")],
                vec![],
            )
            .await;
        assert_eq!(copy.status, 400, "{bad:?}");
        let listed = n
            .call("GET", "/limbk", &[("prefix", bad)], &[], vec![])
            .await;
        assert_eq!(
            (listed.status, listed.one("Code").as_str()),
            (400, "InvalidArgument"),
            "{bad:?}"
        );
        let encoded = n
            .call(
                "GET",
                "/limbk",
                &[("prefix", bad), ("encoding-type", "url")],
                &[],
                vec![],
            )
            .await;
        assert_eq!(encoded.status, 200, "{bad:?}");
        assert!(xml_clean(&encoded.body));
    }
    let fine = n
        .call("PUT", "/limbk/tab\tand\nnewline", &[], &[], b"x".to_vec())
        .await;
    assert_eq!(fine.status, 200, "{}", fine.text());
    let listed = n
        .call("GET", "/limbk", &[("list-type", "2")], &[], vec![])
        .await;
    assert!(xml_clean(&listed.body));
    assert!(listed.all("Key").contains(&"tab\tand\nnewline".to_string()));
}

/// Issue 11 E19: paginated listings with a delimiter advance past common prefixes and end;
/// v1 always names its Marker, an empty Delimiter is not echoed, ListObjectVersions answers
/// NextVersionIdMarker, ListBuckets pages with max-buckets and continuation-token.
#[tokio::test]
async fn listings_page_past_common_prefixes() {
    let n = Node::start().await;
    n.call("PUT", "/pgbk", &[], &[], vec![]).await;
    for k in ["a/1", "a/2", "b", "c/1", "c/2", "d", "e/x/1", "p/", "p/x"] {
        let r = n
            .call("PUT", &format!("/pgbk/{k}"), &[], &[], b"x".to_vec())
            .await;
        assert_eq!(r.status, 200, "{k}");
    }
    let entries = |a: &Answer| {
        let mut e = a.all("Key");
        e.extend(a.all("Prefix").into_iter().filter(|p| !p.is_empty()));
        e
    };
    // ListObjects v1, delimiter, one entry a page.
    let mut seen = Vec::new();
    let mut marker = String::new();
    for page in 0.. {
        assert!(page < 12, "v1 pagination does not end: {seen:?}");
        let mut q = vec![("delimiter", "/"), ("max-keys", "1")];
        if !marker.is_empty() {
            q.push(("marker", marker.as_str()));
        }
        let r = n.call("GET", "/pgbk", &q, &[], vec![]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        assert!(
            text.contains("<Marker>") || text.contains("<Marker/>"),
            "{text}"
        );
        seen.extend(entries(&r));
        if r.one("IsTruncated") != "true" {
            assert!(!text.contains("<NextMarker>"), "{text}");
            break;
        }
        marker = r.one("NextMarker");
        assert!(!marker.is_empty(), "{text}");
    }
    assert_eq!(seen, ["a/", "b", "c/", "d", "e/", "p/"]);
    let plain = n
        .call("GET", "/pgbk", &[("max-keys", "1")], &[], vec![])
        .await;
    assert!(!plain.text().contains("<NextMarker>"), "{}", plain.text());
    assert!(plain.text().contains("<Marker>") || plain.text().contains("<Marker/>"));
    for q in [
        vec![("delimiter", "")],
        vec![("delimiter", ""), ("list-type", "2")],
        vec![("delimiter", ""), ("versions", "")],
        vec![("delimiter", ""), ("uploads", "")],
    ] {
        let r = n.call("GET", "/pgbk", &q, &[], vec![]).await;
        assert_eq!(r.status, 200, "{q:?}: {}", r.text());
        assert!(!r.text().contains("<Delimiter"), "{q:?}: {}", r.text());
    }

    // A key equal to the prefix is an object, not a common prefix: nothing under it is skipped.
    let mut under = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        assert!(page < 5);
        let mut q = vec![
            ("list-type", "2"),
            ("prefix", "p/"),
            ("delimiter", "/"),
            ("max-keys", "1"),
        ];
        if !token.is_empty() {
            q.push(("continuation-token", token.as_str()));
        }
        let r = n.call("GET", "/pgbk", &q, &[], vec![]).await;
        under.extend(r.all("Key"));
        if r.one("IsTruncated") != "true" {
            break;
        }
        token = r.one("NextContinuationToken");
    }
    assert_eq!(under, ["p/", "p/x"]);

    // ListObjectVersions, delimiter, one entry a page.
    let mut seen = Vec::new();
    let (mut key_marker, mut vid_marker) = (String::new(), String::new());
    for page in 0.. {
        assert!(page < 12, "version pagination does not end: {seen:?}");
        let mut q = vec![("versions", ""), ("delimiter", "/"), ("max-keys", "1")];
        if !key_marker.is_empty() {
            q.push(("key-marker", key_marker.as_str()));
        }
        if !vid_marker.is_empty() {
            q.push(("version-id-marker", vid_marker.as_str()));
        }
        let r = n.call("GET", "/pgbk", &q, &[], vec![]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let keys = r.all("Key");
        seen.extend(entries(&r));
        if r.one("IsTruncated") != "true" {
            break;
        }
        key_marker = r.one("NextKeyMarker");
        vid_marker = r.one("NextVersionIdMarker");
        if keys.is_empty() {
            assert_eq!(vid_marker, "", "a prefix has no version: {}", r.text());
        } else {
            assert_eq!(vid_marker, "null", "{}", r.text());
        }
    }
    assert_eq!(seen, ["a/", "b", "c/", "d", "e/", "p/"]);
    let bad = n
        .call(
            "GET",
            "/pgbk",
            &[("versions", ""), ("version-id-marker", "null")],
            &[],
            vec![],
        )
        .await;
    assert_eq!(
        (bad.status, bad.one("Code").as_str()),
        (400, "InvalidArgument")
    );

    // ListMultipartUploads, delimiter, one entry a page.
    for k in ["u/1", "u/2", "v"] {
        n.call(
            "POST",
            &format!("/pgbk/{k}"),
            &[("uploads", "")],
            &[],
            vec![],
        )
        .await;
    }
    let mut seen = Vec::new();
    let (mut key_marker, mut id_marker) = (String::new(), String::new());
    for page in 0.. {
        assert!(page < 6, "upload pagination does not end: {seen:?}");
        let mut q = vec![("uploads", ""), ("delimiter", "/"), ("max-uploads", "1")];
        if !key_marker.is_empty() {
            q.push(("key-marker", key_marker.as_str()));
        }
        if !id_marker.is_empty() {
            q.push(("upload-id-marker", id_marker.as_str()));
        }
        let r = n.call("GET", "/pgbk", &q, &[], vec![]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.extend(entries(&r));
        if r.one("IsTruncated") != "true" {
            break;
        }
        key_marker = r.one("NextKeyMarker");
        id_marker = r.one("NextUploadIdMarker");
    }
    assert_eq!(seen, ["u/", "v"]);

    // ListBuckets: max-buckets and continuation-token.
    for b in ["lbk-a", "lbk-b", "lbk-c"] {
        n.call("PUT", &format!("/{b}"), &[], &[], vec![]).await;
    }
    let first = n
        .call(
            "GET",
            "/",
            &[("max-buckets", "2"), ("prefix", "lbk-")],
            &[],
            vec![],
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.all("Name"), ["lbk-a", "lbk-b"]);
    let token = first.one("ContinuationToken");
    assert!(!token.is_empty(), "{}", first.text());
    let second = n
        .call(
            "GET",
            "/",
            &[
                ("max-buckets", "2"),
                ("prefix", "lbk-"),
                ("continuation-token", &token),
            ],
            &[],
            vec![],
        )
        .await;
    assert_eq!(second.all("Name"), ["lbk-c"]);
    assert!(!second.text().contains("<ContinuationToken>"));
    let all = n.call("GET", "/", &[], &[], vec![]).await;
    assert_eq!(all.all("Name").len(), 4);
    let zero = n
        .call("GET", "/", &[("max-buckets", "0")], &[], vec![])
        .await;
    assert_eq!(
        (zero.status, zero.one("Code").as_str()),
        (400, "InvalidArgument")
    );
}

/// The node's `/metrics` text.
async fn scrape(node: &Node) -> String {
    let url = format!("http://{}/metrics", node.client.host);
    let resp = node.client.http.get(url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.unwrap()
}

/// The value of one sample line (`name{labels}`), 0 when absent.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn requests_are_counted_under_the_operation_s3s_routed_them_to() {
    let node = Node::start().await;
    assert_eq!(
        node.call("PUT", "/mtrbkt", &[], &[], vec![]).await.status,
        200
    );
    let put = r#"coffer_s3_requests_total{operation="PutObject",status="200"}"#;
    let get = r#"coffer_s3_requests_total{operation="GetObject",status="200"}"#;
    let denied = r#"coffer_s3_requests_total{operation="GetObject",status="403"}"#;
    let unknown = r#"coffer_s3_requests_total{operation="Unknown",status="403"}"#;
    let before = scrape(&node).await;
    assert_eq!(sample(&before, put), 0, "{before}");
    assert_eq!(
        sample(
            &before,
            r#"coffer_s3_requests_total{operation="CreateBucket",status="200"}"#
        ),
        1,
        "{before}"
    );

    let body = data(1000, 3);
    let a = node
        .call("PUT", "/mtrbkt/a/b", &[], &[], body.clone())
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = node.call("GET", "/mtrbkt/a/b", &[], &[], vec![]).await;
    assert_eq!((a.status, a.body), (200, body));
    let a = node.call("GET", "/mtrbkt/a/b", &[], &[], vec![]).await;
    assert_eq!(a.status, 200);
    // Anonymous: routed by s3s (so named), then refused by the access hook.
    let url = format!("http://{}/mtrbkt/a/b", node.client.host);
    let anon = node.client.http.get(url).send().await.unwrap();
    assert_eq!(anon.status().as_u16(), 403);
    // A wrong secret fails the signature check, before s3s routes the request.
    let forged = S3Client::plain(&node.client.host, "rust-test", "not-the-secret");
    let a = forged.call("GET", "/mtrbkt/a/b", &[], &[], vec![]).await;
    assert_eq!(
        (a.status, a.one("Code").as_str()),
        (403, "SignatureDoesNotMatch")
    );

    let after = scrape(&node).await;
    assert_eq!(sample(&after, put), 1, "{after}");
    assert_eq!(sample(&after, get), 2, "{after}");
    assert_eq!(sample(&after, denied), 1, "{after}");
    assert_eq!(sample(&after, unknown), 1, "{after}");
    assert_eq!(
        sample(
            &after,
            r#"coffer_s3_request_duration_seconds_count{operation="GetObject"}"#
        ),
        3,
        "{after}"
    );
    // No bucket or key names in any sample.
    assert!(
        !after
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("mtrbkt")),
        "{after}"
    );
}
