//! Issue 14 (encrypting gateway), against a real S3-compatible backend: a second, plaintext
//! Coffer node in process, reached through a TCP relay that counts the bytes the backend serves
//! and can cut or stall its answers. Covers: a 1-byte ranged GET of a 64 MiB SSE-C object
//! fetches at most two segments from the backend; `/ready` answers 503 while the backend is
//! unreachable; a backend that breaks or stalls mid-GET gives 503 + Retry-After, never a 200
//! with part of the object; and the multi-node orphan sweep rule: a blob just uploaded but not
//! yet referenced (another node's write in flight) survives a second node's sweep, an old one is
//! removed, a referenced one is kept; an incomplete backend multipart upload under the node's
//! prefix is aborted by the same rule, one under another prefix never.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_storage::crypto::format::{HEADER_LEN, SEGMENT_SIZE};
use coffer_storage::state::{DefaultEncryption, NodeConfig};
use coffer_storage::store::blobs::BlobStore;
use coffer_storage::store::blobs_s3::S3BlobConfig;
use coffer_storage::store::meta::Meta;
use coffer_storage::store::recovery;
use coffer_tests::s3client::S3Client;
use md5::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

fn config(dir: &Path, encryption: DefaultEncryption) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        region: "us-east-1".into(),
        access_key: "bb-test".into(),
        secret_key: "bb-test-secret".into(),
        tls: false,
        allow_ssec_over_http: true,
        allow_sse_kms_over_http: false,
        default_encryption: encryption,
        key_cache_ttl: Duration::from_secs(300),
        key_cache_capacity: 10,
        max_body_bytes: 128 * MIB as u64,
        virtual_host_domains: Vec::new(),
    }
}

/// A plaintext Coffer node in process: the blob backend. Answers its host:port.
async fn backend(dir: &Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = config(dir, DefaultEncryption::None);
    tokio::spawn(coffer_storage::serve(listener, cfg, async {
        let _ = rx.await;
    }));
    (host, tx)
}

/// What the relay does with the backend's answers.
#[derive(Default)]
struct RelayCtl {
    /// Bytes the backend sent through the relay.
    served: AtomicU64,
    /// When non-zero: each connection forwards at most this many answer bytes, then...
    limit: AtomicU64,
    /// ...holds the connection without a byte more (true) or closes it (false).
    stall: AtomicBool,
    /// Refuse new connections and answer nothing on open ones (the backend is gone).
    down: AtomicBool,
}

/// A TCP relay from a local port to `target`, controlled by the returned [`RelayCtl`].
async fn relay(target: String) -> (String, Arc<RelayCtl>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let ctl = Arc::new(RelayCtl::default());
    let c = ctl.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = l.accept().await {
            if c.down.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            let Ok(out) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let (mut in_r, mut in_w) = inbound.into_split();
                let (mut out_r, mut out_w) = out.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut in_r, &mut out_w).await;
                });
                let mut sent = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = out_r.read(&mut buf).await {
                    if n == 0 || c.down.load(Ordering::SeqCst) {
                        break;
                    }
                    let limit = c.limit.load(Ordering::SeqCst);
                    let mut take = n as u64;
                    if limit > 0 {
                        take = take.min(limit.saturating_sub(sent));
                    }
                    let chunk = &buf[..take as usize];
                    if in_w.write_all(chunk).await.is_err() {
                        break;
                    }
                    sent += take;
                    c.served.fetch_add(take, Ordering::SeqCst);
                    if limit > 0 && sent >= limit {
                        if c.stall.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (addr, ctl)
}

struct Gateway {
    client: S3Client,
    host: String,
    backend_host: String,
    blob_cfg: S3BlobConfig,
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
    _backend_dir: tempfile::TempDir,
    _backend_stop: tokio::sync::oneshot::Sender<()>,
    ctl: Arc<RelayCtl>,
}

/// A backend, a relay to it, a bucket there, and a gateway node keeping its blobs in it.
async fn gateway() -> Gateway {
    let bdir = tempfile::tempdir().unwrap();
    let (bhost, bstop) = backend(bdir.path()).await;
    let admin = S3Client::plain(&bhost, "bb-test", "bb-test-secret");
    assert_eq!(
        admin.call("PUT", "/blobs", &[], &[], vec![]).await.status,
        200
    );
    let (rhost, ctl) = relay(bhost.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let blob_cfg = S3BlobConfig {
        url: "s3://blobs/node".into(),
        endpoint: Some(format!("http://{rhost}")),
        region: "us-east-1".into(),
        access_key: "bb-test".into(),
        secret_key: zeroize::Zeroizing::new("bb-test-secret".into()),
        ca_pem: None,
        allow_http: true,
        timeout: Duration::from_secs(3),
    };
    let state = coffer_storage::server::open_state_with(
        config(dir.path(), DefaultEncryption::None),
        None,
        Some(&blob_cfg),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(coffer_storage::server::serve(
        listener,
        state,
        None,
        async {
            let _ = rx.await;
        },
    ));
    Gateway {
        client: S3Client::plain(&host, "bb-test", "bb-test-secret"),
        host,
        backend_host: bhost,
        blob_cfg,
        dir,
        _stop: tx,
        _backend_dir: bdir,
        _backend_stop: bstop,
        ctl,
    }
}

fn ssec_headers(key: &[u8; 32]) -> Vec<(&'static str, String)> {
    vec![
        (
            "x-amz-server-side-encryption-customer-algorithm",
            "AES256".into(),
        ),
        (
            "x-amz-server-side-encryption-customer-key",
            STANDARD.encode(key),
        ),
        (
            "x-amz-server-side-encryption-customer-key-md5",
            STANDARD.encode(md5::Md5::digest(key)),
        ),
    ]
}

/// The blob names in the backend, sorted.
async fn names(b: &BlobStore) -> Vec<String> {
    let mut n: Vec<String> = b
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    n.sort();
    n
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_byte_range_of_64_mib_fetches_at_most_two_segments() {
    let g = gateway().await;
    let c = &g.client;
    assert_eq!(c.call("PUT", "/bkt", &[], &[], vec![]).await.status, 200);
    let key = [7u8; 32];
    let h = ssec_headers(&key);
    let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = pattern(64 * MIB);
    let put = c.call("PUT", "/bkt/big", &[], &hs, body.clone()).await;
    assert_eq!(put.status, 200, "{}", put.text());
    for at in [0usize, 32 * MIB + 12_345, 64 * MIB - 1] {
        let before = g.ctl.served.load(Ordering::SeqCst);
        let range = format!("bytes={at}-{at}");
        let mut rh = hs.clone();
        rh.push(("range", &range));
        let get = c.call("GET", "/bkt/big", &[], &rh, vec![]).await;
        assert_eq!(get.status, 206, "{}", get.text());
        assert_eq!(get.body, vec![body[at]], "byte {at}");
        let served = g.ctl.served.load(Ordering::SeqCst) - before;
        println!("1-byte range at {at} of a 64 MiB SSE-C object: backend served {served} bytes");
        // The header, at most two sealed segments (64 KiB + 16-byte tag each) and the HTTP heads.
        let bound = (HEADER_LEN + 2 * (SEGMENT_SIZE + 16) + 8 * 1024) as u64;
        assert!(served <= bound, "served {served} bytes > {bound}");
    }
    // A range across a segment boundary: still two segments.
    let before = g.ctl.served.load(Ordering::SeqCst);
    let (lo, hi) = (SEGMENT_SIZE * 100 - 3, SEGMENT_SIZE * 100 + 3);
    let range = format!("bytes={lo}-{hi}");
    let mut rh = hs.clone();
    rh.push(("range", &range));
    let get = c.call("GET", "/bkt/big", &[], &rh, vec![]).await;
    assert_eq!(get.status, 206);
    assert_eq!(get.body, body[lo..=hi]);
    let served = g.ctl.served.load(Ordering::SeqCst) - before;
    assert!(
        served <= (HEADER_LEN + 2 * (SEGMENT_SIZE + 16) + 8 * 1024) as u64,
        "{served}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_while_the_blob_store_is_unreachable() {
    let g = gateway().await;
    let ready = || async {
        let r = reqwest::get(format!("http://{}/ready", g.host))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);
    g.ctl.down.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let (status, text) = ready().await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("blob store"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // A backend that accepts and never answers: bounded as well.
    g.ctl.down.store(false, Ordering::SeqCst);
    g.ctl.stall.store(true, Ordering::SeqCst);
    g.ctl.limit.store(1, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(ready().await.0, 503);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    g.ctl.limit.store(0, Ordering::SeqCst);
    g.ctl.stall.store(false, Ordering::SeqCst);
    assert_eq!(ready().await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_mid_get_never_gives_a_partial_200() {
    let g = gateway().await;
    let c = &g.client;
    assert_eq!(c.call("PUT", "/bkt", &[], &[], vec![]).await.status, 200);
    let key = [9u8; 32];
    let h = ssec_headers(&key);
    let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = pattern(12 * MIB);
    assert_eq!(
        c.call("PUT", "/bkt/o", &[], &hs, body.clone()).await.status,
        200
    );
    assert_eq!(
        c.call("PUT", "/bkt/plain", &[], &[], body.clone())
            .await
            .status,
        200
    );
    for stall in [false, true] {
        g.ctl.stall.store(stall, Ordering::SeqCst);
        // Every backend answer stops after 1 MiB: closed, or held open without a byte more.
        g.ctl.limit.store(MIB as u64, Ordering::SeqCst);
        for (path, headers) in [("/bkt/o", hs.clone()), ("/bkt/plain", Vec::new())] {
            let t = Instant::now();
            let get = c.call("GET", path, &[], &headers, vec![]).await;
            assert_eq!(
                get.status,
                503,
                "stall={stall} {path}: {} bytes",
                get.body.len()
            );
            assert_eq!(get.one("Code"), "ServiceUnavailable");
            assert_eq!(get.header("retry-after"), "1");
            assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
        }
        g.ctl.limit.store(0, Ordering::SeqCst);
        let get = c.call("GET", "/bkt/o", &[], &hs, vec![]).await;
        assert_eq!(get.status, 200);
        assert!(get.body == body);
    }
}

/// Several nodes share the blob store (and the database): node 2's sweep must not take node
/// 1's upload, made before its row commits, for an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_nodes_sweep_keeps_young_unreferenced_blobs_and_removes_old_ones() {
    let g = gateway().await;
    let c = &g.client;
    assert_eq!(c.call("PUT", "/bkt", &[], &[], vec![]).await.status, 200);
    assert_eq!(
        c.call("PUT", "/bkt/kept", &[], &[], b"kept".to_vec())
            .await
            .status,
        200
    );
    // Node 1's write in flight: the blob is in the backend, its row is not committed yet.
    let d1 = tempfile::tempdir().unwrap();
    let writer = BlobStore::open_s3(d1.path(), &g.blob_cfg).unwrap();
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok(bytes::Bytes::from_static(b"in flight"))];
    let inflight = writer
        .write(
            futures::stream::iter(chunks),
            None,
            Some(9),
            false,
            &mut |_| {},
        )
        .await
        .unwrap();
    // Node 2: the shared database, its own data dir.
    let meta = Meta::open(g.dir.path()).await.unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let blobs2 = BlobStore::open_s3(d2.path(), &g.blob_cfg).unwrap();
    // A backend multipart upload in flight under the node's prefix, and one of someone else.
    let admin = S3Client::plain(&g.backend_host, "bb-test", "bb-test-secret");
    for key in ["/blobs/node/0123abcd", "/blobs/other/0123abcd"] {
        let r = admin
            .call("POST", key, &[("uploads", "")], &[], vec![])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let uploads = || async {
        let r = admin
            .call("GET", "/blobs", &[("uploads", "")], &[], vec![])
            .await;
        assert_eq!(r.status, 200);
        let mut k = r.all("Key");
        k.sort();
        k
    };
    assert_eq!(uploads().await, ["node/0123abcd", "other/0123abcd"]);
    let all = names(&blobs2).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.contains(&inflight.file));

    let grace = recovery::DEFAULT_GRACE;
    let r = recovery::sweep_orphans(&meta, &blobs2, grace, SystemTime::now())
        .await
        .unwrap();
    assert_eq!((r.orphans_removed, r.orphans_kept_young), (0, 1));
    assert_eq!(r.uploads_aborted, 0);
    assert_eq!(uploads().await, ["node/0123abcd", "other/0123abcd"]);
    assert_eq!(
        names(&blobs2).await,
        all,
        "a young unreferenced blob was removed"
    );

    // Two hours later it is an orphan (the write never committed): removed; the referenced
    // blob stays and the object reads back.
    let later = SystemTime::now() + Duration::from_secs(2 * 3600);
    let r = recovery::sweep_orphans(&meta, &blobs2, grace, later)
        .await
        .unwrap();
    assert_eq!((r.orphans_removed, r.orphans_kept_young), (1, 0));
    // The abandoned upload under the prefix is aborted; other prefixes are not touched.
    assert_eq!(r.uploads_aborted, 1);
    assert_eq!(uploads().await, ["other/0123abcd"]);
    let left = names(&blobs2).await;
    assert_eq!(left.len(), 1);
    assert!(!left.contains(&inflight.file));
    let get = c.call("GET", "/bkt/kept", &[], &[], vec![]).await;
    assert_eq!((get.status, get.body.as_slice()), (200, &b"kept"[..]));
}
