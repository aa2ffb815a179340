//! Issue 14, "two storage nodes and three KMS replicas", end to end with real processes: one
//! PostgreSQL 15 (`scripts/pg-test-server`) holding two databases (`storage`, `kms`), three
//! `coffer-kms serve` replicas on the kms database, two `coffer-storage serve` nodes on the
//! storage database whose `--kms-url` lists all three replicas (node A prefers replica 1, node B
//! replica 2, so both write the one audit chain), and a shared S3 blob store: a third, plaintext
//! `coffer-storage serve` (SQLite and local disk, no KMS) that sees only ciphertext.
//!
//! One test in phases (the processes are shared; each phase prints its numbers):
//! 1. read-after-write across nodes with a round-robin client: PUT on one node, then GET, HEAD
//!    and LIST on the other at once, for SSE-S3, SSE-KMS (named key) and SSE-C; multipart
//!    uploads whose parts alternate between the nodes; DeleteObject on one node, 404 on the other;
//! 2. a named key disabled through replica 1's admin API is refused (400
//!    KMS.DisabledException) for writes through both nodes within 2 s, for bucket-key writes
//!    (data key cached by the node) within the key cache TTL (1 s) + 2 s, and for reads;
//! 3. under a concurrent load of writers and readers round-robin over both nodes: replica 2
//!    (node B's) killed with SIGKILL: failed requests counted (at most those in flight to it;
//!    the node retries on the next replica) and the failover time measured (kill to the next
//!    successful cold SSE-S3 write on a new bucket through node B); then node A killed with
//!    SIGKILL: clients switch to node B; every acknowledged write reads back byte-exact from
//!    node B, unacknowledged ones are absent or whole (never partial), LIST shows nothing else;
//! 4. the storage identity revoked through replica 1: a cold write through node B (replica 3
//!    now) refused within 2 s;
//! 5. the audit export (through replica 3) verifies, sequence numbers 1..N, no gap, no fork;
//! 6. the blob store's data dir (blobs and its SQLite metadata) holds no plaintext marker, no
//!    object name and no bucket name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_tests::kms::Kms;
use coffer_tests::pg::PgServer;
use coffer_tests::s3client::{Answer, S3Client};
use coffer_tests::storage::Storage;
use md5::{Digest, Md5};
use serde_json::Value;

const ACCESS_KEY: &str = "cluster-test";
const MIB: usize = 1024 * 1024;

/// A 0600 file holding `text`.
fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    coffer_common::secret_file::write_new_secret_file(&p, text.as_bytes()).unwrap();
    p
}

/// An S3 client of `host` with a bounded request time.
fn s3(host: &str, secret: &str) -> S3Client {
    let mut c = S3Client::plain(host, ACCESS_KEY, secret);
    c.http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    c
}

/// How an object is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    SseS3,
    SseKms,
    SseC,
}

/// The encryption settings the client uses: a named KMS key and an SSE-C key.
struct Keys {
    kms_key: String,
    ssec_key_b64: String,
    ssec_md5_b64: String,
}

impl Keys {
    fn new(kms_key: &str) -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            kms_key: kms_key.to_string(),
            ssec_key_b64: STANDARD.encode(key),
            ssec_md5_b64: STANDARD.encode(Md5::digest(key)),
        }
    }

    /// Headers of a PUT, or of CreateMultipartUpload.
    fn put(&self, mode: Mode) -> Vec<(String, String)> {
        match mode {
            Mode::SseS3 => Vec::new(),
            Mode::SseKms => vec![
                ("x-amz-server-side-encryption".into(), "aws:kms".into()),
                (
                    "x-amz-server-side-encryption-aws-kms-key-id".into(),
                    self.kms_key.clone(),
                ),
            ],
            Mode::SseC => self.read(mode),
        }
    }

    /// Headers of a GET, HEAD or UploadPart.
    fn read(&self, mode: Mode) -> Vec<(String, String)> {
        if mode != Mode::SseC {
            return Vec::new();
        }
        vec![
            (
                "x-amz-server-side-encryption-customer-algorithm".into(),
                "AES256".into(),
            ),
            (
                "x-amz-server-side-encryption-customer-key".into(),
                self.ssec_key_b64.clone(),
            ),
            (
                "x-amz-server-side-encryption-customer-key-md5".into(),
                self.ssec_md5_b64.clone(),
            ),
        ]
    }
}

fn refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The encryption a PUT answer announces matches `mode`.
fn assert_sse(a: &Answer, mode: Mode, what: &str) {
    match mode {
        Mode::SseS3 => assert_eq!(a.header("x-amz-server-side-encryption"), "AES256", "{what}"),
        Mode::SseKms => {
            assert_eq!(
                a.header("x-amz-server-side-encryption"),
                "aws:kms",
                "{what}"
            )
        }
        Mode::SseC => assert_eq!(
            a.header("x-amz-server-side-encryption-customer-algorithm"),
            "AES256",
            "{what}"
        ),
    }
}

/// `len` bytes made of `marker:tag:` repeated: regenerated to check what is read back.
fn payload(marker: &str, tag: &str, len: usize) -> Vec<u8> {
    let unit = format!("{marker}:{tag}:");
    unit.as_bytes().iter().copied().cycle().take(len).collect()
}

/// The cluster: PostgreSQL, three KMS replicas, the blob store, two storage nodes.
struct Cluster {
    _pg: PgServer,
    kms: Vec<Kms>,
    backend: Storage,
    nodes: Vec<Storage>,
    secret: String,
    _files: tempfile::TempDir,
}

const BLOB_BUCKET: &str = "coffer-blobs";

async fn cluster(kms_key_aliases: &[&str]) -> (Cluster, Vec<Value>) {
    let pg = PgServer::start();
    let storage_db = pg.database("storage").await;
    let kms_db = pg.database("kms").await;
    let secret = format!("cluster-secret-{}", uuid::Uuid::new_v4().simple());

    // KMS replica 1, the storage nodes' identity and the named keys; then replicas 2 and 3.
    let mut r1 = Kms::init_pg(&kms_db).await;
    r1.serve_args = vec!["--checkpoint-secs".into(), "1".into()];
    r1.start().await;
    r1.create_client("storage", "*", "generate,unwrap").await;
    let mut keys = Vec::new();
    for alias in kms_key_aliases {
        let out = r1.admin(&["key", "create", "--alias", alias]).await;
        assert!(out.status.success(), "key create:\n{}", r1.logs());
        keys.push(serde_json::from_slice::<Value>(&out.stdout).unwrap());
    }
    let mut r2 = r1.replica();
    let mut r3 = r1.replica();
    r2.start().await;
    r3.start().await;
    let kms = vec![r1, r2, r3];
    let credential = kms[0].tmp.path().join("storage.credential");

    // The blob store: plaintext coffer-storage, its own SQLite and disk, no KMS.
    let env = [
        ("COFFER_S3_ACCESS_KEY", ACCESS_KEY),
        ("COFFER_S3_SECRET_KEY", secret.as_str()),
    ];
    let mut backend = Storage::new(
        "blob-store",
        &["--default-encryption".into(), "none".into()],
        &env,
    );
    backend.start().await;
    let made = s3(backend.host(), &secret)
        .call("PUT", &format!("/{BLOB_BUCKET}"), &[], &[], vec![])
        .await;
    assert_eq!(made.status, 200, "{}", made.text());

    let files = tempfile::tempdir().unwrap();
    let ak = secret_file(files.path(), "blob-ak", ACCESS_KEY);
    let sk = secret_file(files.path(), "blob-sk", &secret);
    let urls: Vec<String> = kms.iter().map(|k| k.url.clone()).collect();
    let mut nodes = Vec::new();
    for (name, order) in [("node-a", [0usize, 1, 2]), ("node-b", [1, 2, 0])] {
        let list: Vec<&str> = order.iter().map(|i| urls[*i].as_str()).collect();
        let args: Vec<String> = [
            "--database-url",
            &storage_db,
            "--kms-url",
            &list.join(","),
            "--kms-credential",
            credential.to_str().unwrap(),
            "--kms-ca",
            kms[0].ca_cert().to_str().unwrap(),
            "--key-cache-ttl",
            "1",
            "--allow-ssec-over-http",
            "--allow-sse-kms-over-http",
            "--blob-store",
            &format!("s3://{BLOB_BUCKET}/cluster"),
            "--blob-store-endpoint",
            &backend.url,
            "--blob-store-allow-http",
            "--blob-store-access-key-file",
            ak.to_str().unwrap(),
            "--blob-store-secret-key-file",
            sk.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut n = Storage::new(name, &args, &env);
        // One at a time: the first applies the migrations.
        n.start().await;
        nodes.push(n);
    }
    (
        Cluster {
            _pg: pg,
            kms,
            backend,
            nodes,
            secret,
            _files: files,
        },
        keys,
    )
}

/// Phase 1: read-after-write across the nodes. Returns the number of objects checked.
async fn read_after_write(
    clients: Arc<Vec<S3Client>>,
    keys: Arc<Keys>,
    bucket: &str,
    names: &str,
    marker: &str,
) -> usize {
    const OBJECTS: usize = 216;
    const TASKS: usize = 6;
    let made = clients[0]
        .call("PUT", &format!("/{bucket}"), &[], &[], vec![])
        .await;
    assert_eq!(made.status, 200, "{}", made.text());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (clients, keys) = (clients.clone(), keys.clone());
        let (bucket, names, marker) = (bucket.to_string(), names.to_string(), marker.to_string());
        tasks.push(tokio::spawn(async move {
            for i in (t..OBJECTS).step_by(TASKS) {
                let mode = [Mode::SseS3, Mode::SseKms, Mode::SseC][i % 3];
                let (w, r) = (&clients[i % 2], &clients[(i + 1) % 2]);
                let key = format!("{names}/raw/{i:04}");
                let path = format!("/{bucket}/{key}");
                let body = payload(&marker, &key, 1 + (i * 7919) % 150_000);
                let put = w
                    .call("PUT", &path, &[], &refs(&keys.put(mode)), body.clone())
                    .await;
                assert_eq!(put.status, 200, "PUT {key} ({mode:?}): {}", put.text());
                assert_sse(&put, mode, &key);
                let rh = keys.read(mode);
                let get = r.call("GET", &path, &[], &refs(&rh), vec![]).await;
                assert_eq!(
                    get.status,
                    200,
                    "GET {key} on the other node: {}",
                    get.text()
                );
                assert!(get.body == body, "GET {key}: other bytes");
                assert_eq!(get.header("etag"), put.header("etag"), "{key}");
                let head = r.call("HEAD", &path, &[], &refs(&rh), vec![]).await;
                assert_eq!(head.status, 200, "HEAD {key}");
                assert_eq!(head.header("content-length"), body.len().to_string());
                assert_sse(&head, mode, &key);
                let list = r
                    .call(
                        "GET",
                        &format!("/{bucket}"),
                        &[("list-type", "2"), ("prefix", &key)],
                        &[],
                        vec![],
                    )
                    .await;
                assert_eq!(list.status, 200);
                assert_eq!(list.all("Key"), vec![key.clone()], "LIST on the other node");
                if i.is_multiple_of(4) {
                    // Deleted through the reader; gone on the writer at once.
                    let del = r.call("DELETE", &path, &[], &[], vec![]).await;
                    assert_eq!(del.status, 204, "{}", del.text());
                    let get = w.call("GET", &path, &[], &refs(&rh), vec![]).await;
                    assert_eq!((get.status, get.one("Code").as_str()), (404, "NoSuchKey"));
                    let head = w.call("HEAD", &path, &[], &refs(&rh), vec![]).await;
                    assert_eq!(head.status, 404);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The whole listing, on each node: exactly the objects not deleted.
    let want: BTreeSet<String> = (0..OBJECTS)
        .filter(|i| !i.is_multiple_of(4))
        .map(|i| format!("{names}/raw/{i:04}"))
        .collect();
    for c in clients.iter() {
        let list = c
            .call(
                "GET",
                &format!("/{bucket}"),
                &[("list-type", "2"), ("prefix", &format!("{names}/raw/"))],
                &[],
                vec![],
            )
            .await;
        let got: BTreeSet<String> = list.all("Key").into_iter().collect();
        assert_eq!(got, want);
    }

    // Multipart: initiated on A, parts alternating B, A, B, completed on B, read on A and B.
    for (u, mode) in [Mode::SseS3, Mode::SseKms, Mode::SseC]
        .into_iter()
        .enumerate()
    {
        let key = format!("{names}/multipart/{u}");
        let path = format!("/{bucket}/{key}");
        let init = clients[0]
            .call(
                "POST",
                &path,
                &[("uploads", "")],
                &refs(&keys.put(mode)),
                vec![],
            )
            .await;
        assert_eq!(init.status, 200, "{}", init.text());
        let id = init.one("UploadId");
        let mut whole = Vec::new();
        let mut xml = String::from("<CompleteMultipartUpload>");
        for p in 1..=3usize {
            let len = if p < 3 { 5 * MIB } else { 100_000 };
            let part = payload(marker, &format!("{key}#{p}"), len);
            let pn = p.to_string();
            let up = clients[p % 2]
                .call(
                    "PUT",
                    &path,
                    &[("partNumber", &pn), ("uploadId", &id)],
                    &refs(&keys.read(mode)),
                    part.clone(),
                )
                .await;
            assert_eq!(up.status, 200, "part {p} of {key}: {}", up.text());
            xml.push_str(&format!(
                "<Part><PartNumber>{p}</PartNumber><ETag>{}</ETag></Part>",
                up.header("etag")
            ));
            whole.extend_from_slice(&part);
        }
        xml.push_str("</CompleteMultipartUpload>");
        let done = clients[1]
            .call("POST", &path, &[("uploadId", &id)], &[], xml.into_bytes())
            .await;
        assert_eq!(done.status, 200, "complete {key}: {}", done.text());
        for c in clients.iter() {
            let get = c
                .call("GET", &path, &[], &refs(&keys.read(mode)), vec![])
                .await;
            assert_eq!(get.status, 200, "{}", get.text());
            assert!(get.body == whole, "{key} ({mode:?}): other bytes");
            assert!(
                get.header("etag").ends_with("-3\""),
                "{}",
                get.header("etag")
            );
        }
    }
    OBJECTS + 3
}

/// Poll every client until `refused` holds for each: the time each took (limit `limit`).
async fn until_refused<F, Fut>(n: usize, limit: Duration, mut refused: F) -> Vec<Duration>
where
    F: FnMut(usize, usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut took: Vec<Option<Duration>> = vec![None; n];
    let mut attempt = 0usize;
    while took.iter().any(|t| t.is_none()) {
        for (i, t) in took.iter_mut().enumerate() {
            if t.is_none() && refused(i, attempt).await {
                *t = Some(start.elapsed());
            }
        }
        assert!(
            start.elapsed() < limit,
            "not refused within {limit:?}: {took:?}"
        );
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.into_iter().map(|t| t.unwrap()).collect()
}

/// The state of the load of phase 3.
#[derive(Default)]
struct Load {
    /// Writes answered 200: (path, mode, length).
    acked: Mutex<Vec<(String, Mode, usize)>>,
    /// Writes with no answer or an error answer: absent or whole afterwards.
    unacked: Mutex<Vec<(String, Mode, usize)>>,
    /// Error answers and transport failures: (phase, node, what).
    failures: Mutex<Vec<(u8, usize, String)>>,
    /// Reads that returned other bytes than written (must stay 0).
    corrupt: AtomicUsize,
    reads: AtomicUsize,
    /// 0 before the KMS replica is killed, 1 after, 2 after the storage node is killed.
    phase: AtomicU8,
    /// The client's view: a node that failed at the transport level is not used again.
    down: [AtomicBool; 2],
    stop: AtomicBool,
}

impl Load {
    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The node for attempt `i`: round-robin over the nodes the client still uses.
    fn pick(&self, i: usize) -> usize {
        let n = i % 2;
        if self.down[n].load(Ordering::SeqCst) {
            1 - n
        } else {
            n
        }
    }

    fn fail(&self, node: usize, what: String) {
        let phase = self.phase.load(Ordering::SeqCst);
        self.failures.lock().unwrap().push((phase, node, what));
    }
}

async fn writer(
    load: Arc<Load>,
    clients: Arc<Vec<S3Client>>,
    keys: Arc<Keys>,
    bucket: String,
    prefix: String,
    marker: String,
    w: usize,
) {
    let mut seq = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        let mode = if w.is_multiple_of(2) {
            Mode::SseS3
        } else {
            Mode::SseKms
        };
        let key = format!("{prefix}/{w}/{seq:05}");
        let len = 1 + (seq * 4099 + w * 131) % 70_000;
        let body = payload(&marker, &key, len);
        let n = load.pick(w + seq);
        let path = format!("/{bucket}/{key}");
        let entry = (path.clone(), mode, len);
        match clients[n]
            .try_call("PUT", &path, &[], &refs(&keys.put(mode)), body)
            .await
        {
            Ok(a) if a.status == 200 => load.acked.lock().unwrap().push(entry),
            Ok(a) => {
                load.fail(n, format!("PUT {} {}", a.status, a.one("Code")));
                load.unacked.lock().unwrap().push(entry);
            }
            Err(e) => {
                load.down[n].store(true, Ordering::SeqCst);
                load.fail(n, format!("PUT transport: {e}"));
                load.unacked.lock().unwrap().push(entry);
            }
        }
        seq += 1;
    }
}

async fn reader(
    load: Arc<Load>,
    clients: Arc<Vec<S3Client>>,
    keys: Arc<Keys>,
    marker: String,
    r: usize,
) {
    let mut i = r;
    while !load.stop.load(Ordering::SeqCst) {
        let pick = {
            let acked = load.acked.lock().unwrap();
            (!acked.is_empty()).then(|| acked[(i * 7919) % acked.len()].clone())
        };
        let Some((path, mode, len)) = pick else {
            tokio::task::yield_now().await;
            continue;
        };
        let n = load.pick(i);
        match clients[n]
            .try_call("GET", &path, &[], &refs(&keys.read(mode)), vec![])
            .await
        {
            Ok(a) if a.status == 200 => {
                let key = path.splitn(3, '/').nth(2).unwrap();
                if a.body != payload(&marker, key, len) {
                    load.corrupt.fetch_add(1, Ordering::SeqCst);
                }
                load.reads.fetch_add(1, Ordering::SeqCst);
            }
            Ok(a) => load.fail(n, format!("GET {} {}", a.status, a.one("Code"))),
            Err(e) => {
                load.down[n].store(true, Ordering::SeqCst);
                load.fail(n, format!("GET transport: {e}"));
            }
        }
        i += 1;
    }
}

/// Wait (bounded) until the load acknowledged `n` writes in all.
async fn until_acked(load: &Load, n: usize, limit: Duration) {
    let start = Instant::now();
    while load.acked() < n {
        assert!(
            start.elapsed() < limit,
            "the load acknowledged {} writes of {n} in {limit:?}: {:?}",
            load.acked(),
            load.failures.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A cold SSE-S3 write: a new bucket and one object in it (the node has no key for it).
async fn cold_write(c: &S3Client, bucket: &str) -> Result<(), String> {
    let made = c
        .try_call("PUT", &format!("/{bucket}"), &[], &[], vec![])
        .await
        .map_err(|e| e.to_string())?;
    if made.status != 200 {
        return Err(format!("CreateBucket {} {}", made.status, made.one("Code")));
    }
    let put = c
        .try_call(
            "PUT",
            &format!("/{bucket}/cold"),
            &[],
            &[],
            b"cold".to_vec(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if put.status != 200 {
        return Err(format!("PUT {} {}", put.status, put.one("Code")));
    }
    assert_sse(&put, Mode::SseS3, bucket);
    Ok(())
}

/// A metric without labels from the node's `/metrics`.
async fn metric(host: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{host}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_storage_nodes_three_kms_replicas() {
    let started = Instant::now();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let marker = format!("PLAINTEXT-MARKER-{tag}");
    let names = format!("objname-{tag}");
    let disabled_alias = format!("alias/cluster-disabled-{tag}");
    let load_alias = format!("alias/cluster-load-{tag}");
    let (mut c, named) = cluster(&[&disabled_alias, &load_alias]).await;
    let disabled_key = named[0]["key_id"].as_str().unwrap().to_string();
    let clients = Arc::new(vec![
        s3(c.nodes[0].host(), &c.secret),
        s3(c.nodes[1].host(), &c.secret),
    ]);
    println!("cluster up in {:?}", started.elapsed());

    // 1. Read-after-write across the nodes.
    let t = Instant::now();
    let raw_bucket = format!("raw-{tag}");
    let keys = Arc::new(Keys::new(&disabled_alias));
    let checked =
        read_after_write(clients.clone(), keys.clone(), &raw_bucket, &names, &marker).await;
    println!(
        "read-after-write across nodes: {checked} objects checked (SSE-S3, SSE-KMS, SSE-C, 3 multipart) in {:?}",
        t.elapsed()
    );

    // 2. A named key disabled through replica 1 is refused through both nodes within 2 s.
    let bk_path = format!("/{raw_bucket}/{names}/bucket-key");
    let mut bk_headers = keys.put(Mode::SseKms);
    bk_headers.push((
        "x-amz-server-side-encryption-bucket-key-enabled".into(),
        "true".into(),
    ));
    for cl in clients.iter() {
        // Each node caches the bucket-level data key (TTL 1 s).
        let put = cl
            .call("PUT", &bk_path, &[], &refs(&bk_headers), b"bk".to_vec())
            .await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    let out = c.kms[0].admin(&["key", "disable", &disabled_key]).await;
    assert!(out.status.success(), "{}", c.kms[0].logs());
    let refused = |a: &Answer| a.status == 400 && a.one("Code") == "KMS.DisabledException";
    let writes = until_refused(2, Duration::from_secs(2), |n, i| {
        let (clients, keys, path) = (
            clients.clone(),
            keys.clone(),
            format!("/{raw_bucket}/{names}/after-disable-{n}-{i}"),
        );
        async move {
            let a = clients[n]
                .call(
                    "PUT",
                    &path,
                    &[],
                    &refs(&keys.put(Mode::SseKms)),
                    b"x".to_vec(),
                )
                .await;
            assert!(a.status == 200 || refused(&a), "{} {}", a.status, a.text());
            refused(&a)
        }
    })
    .await;
    let bucket_key_writes = until_refused(2, Duration::from_secs(3), |n, _| {
        let (clients, path, h) = (clients.clone(), bk_path.clone(), bk_headers.clone());
        async move {
            let a = clients[n]
                .call("PUT", &path, &[], &refs(&h), b"bk2".to_vec())
                .await;
            assert!(a.status == 200 || refused(&a), "{} {}", a.status, a.text());
            refused(&a)
        }
    })
    .await;
    // Refused from now on on both nodes, for writes and for reads of its objects.
    let sse_kms_object = format!("/{raw_bucket}/{names}/raw/0001");
    for cl in clients.iter() {
        let a = cl
            .call(
                "PUT",
                &format!("/{raw_bucket}/{names}/late"),
                &[],
                &refs(&keys.put(Mode::SseKms)),
                b"x".to_vec(),
            )
            .await;
        assert!(refused(&a), "{} {}", a.status, a.text());
        let a = cl.call("GET", &sse_kms_object, &[], &[], vec![]).await;
        assert!(refused(&a), "GET: {} {}", a.status, a.text());
        let a = cl
            .call(
                "HEAD",
                &format!("/{raw_bucket}/{names}/late"),
                &[],
                &[],
                vec![],
            )
            .await;
        assert_eq!(a.status, 404, "a refused PUT left an object");
    }
    println!(
        "key disabled through replica 1: SSE-KMS writes refused by node A after {:?}, node B after {:?}; bucket-key writes (key cache TTL 1 s) after {:?} / {:?}; reads of its objects refused on both",
        writes[0], writes[1], bucket_key_writes[0], bucket_key_writes[1]
    );
    assert!(writes.iter().all(|d| *d < Duration::from_secs(2)));

    // 3. Load on both nodes; kill -9 KMS replica 2, then storage node A.
    let load = Arc::new(Load::default());
    let load_bucket = format!("load-{tag}");
    let made = clients[1]
        .call("PUT", &format!("/{load_bucket}"), &[], &[], vec![])
        .await;
    assert_eq!(made.status, 200);
    let load_keys = Arc::new(Keys::new(&load_alias));
    const WRITERS: usize = 6;
    const READERS: usize = 2;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        tasks.push(tokio::spawn(writer(
            load.clone(),
            clients.clone(),
            load_keys.clone(),
            load_bucket.clone(),
            format!("{names}/load"),
            marker.clone(),
            w,
        )));
    }
    for r in 0..READERS {
        tasks.push(tokio::spawn(reader(
            load.clone(),
            clients.clone(),
            load_keys.clone(),
            marker.clone(),
            r,
        )));
    }
    until_acked(&load, 40, Duration::from_secs(20)).await;
    load.phase.store(1, Ordering::SeqCst);
    c.kms[1].kill9().await;
    let killed = Instant::now();
    let mut attempts = 0usize;
    let failover = loop {
        attempts += 1;
        match cold_write(&clients[1], &format!("cold-{tag}-{attempts}")).await {
            Ok(()) => break killed.elapsed(),
            Err(e) => eprintln!("cold write {attempts} after the kill: {e}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no cold SSE-S3 write through node B within 10 s of the KMS replica's kill"
        );
    };
    // Node B was calling replica 2: its calls moved to the next replica.
    let failovers = metric(c.nodes[1].host(), "coffer_kms_failovers_total").await;
    let at_kill = load.acked();
    until_acked(&load, at_kill + 40, Duration::from_secs(20)).await;
    let kms_failed = load
        .failures
        .lock()
        .unwrap()
        .iter()
        .filter(|f| f.0 == 1)
        .count();
    println!(
        "KMS replica 2 killed under load: failover time {} ms (kill to the first cold SSE-S3 write on a new bucket through node B, attempt {attempts}); failed requests {kms_failed}; node B's failovers {failovers}",
        failover.as_millis()
    );
    assert!(failovers >= 1.0, "node B did not fail over");
    // At most the requests in flight to the killed replica (the node retries them on the next).
    assert!(
        kms_failed <= WRITERS + READERS,
        "{:?}",
        load.failures.lock().unwrap()
    );

    load.phase.store(2, Ordering::SeqCst);
    let at_node_kill = load.acked();
    c.nodes[0].kill9().await;
    until_acked(&load, at_node_kill + 40, Duration::from_secs(20)).await;
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let failures = load.failures.lock().unwrap().clone();
    let after_node_kill: Vec<_> = failures.iter().filter(|f| f.0 == 2).collect();
    // Only requests to the killed node failed, at most one per client (it switched at once).
    assert!(
        after_node_kill.iter().all(|f| f.1 == 0) && after_node_kill.len() <= WRITERS + READERS,
        "{after_node_kill:?}"
    );
    assert!(
        failures.iter().all(|f| f.0 != 0),
        "failures before any kill: {failures:?}"
    );
    assert_eq!(
        load.corrupt.load(Ordering::SeqCst),
        0,
        "reads of other bytes"
    );

    // Every acknowledged write reads back byte-exact from node B; unacknowledged ones are absent
    // or whole; the listing holds nothing else.
    let acked = load.acked.lock().unwrap().clone();
    let unacked = load.unacked.lock().unwrap().clone();
    let survivor = &clients[1];
    let mut present_unacked = 0usize;
    for (path, mode, len, must) in acked
        .iter()
        .map(|(p, m, l)| (p, m, l, true))
        .chain(unacked.iter().map(|(p, m, l)| (p, m, l, false)))
    {
        let a = survivor
            .call("GET", path, &[], &refs(&load_keys.read(*mode)), vec![])
            .await;
        let key = path.splitn(3, '/').nth(2).unwrap();
        if must || a.status != 404 {
            assert_eq!(a.status, 200, "{path} (acknowledged: {must}): {}", a.text());
            assert!(a.body == payload(&marker, key, *len), "{path}: other bytes");
            present_unacked += usize::from(!must);
        }
    }
    let mut listed = BTreeSet::new();
    let mut token = String::new();
    loop {
        let prefix = format!("{names}/load/");
        let mut q = vec![("list-type", "2"), ("prefix", prefix.as_str())];
        if !token.is_empty() {
            q.push(("continuation-token", token.as_str()));
        }
        let a = survivor
            .call("GET", &format!("/{load_bucket}"), &q, &[], vec![])
            .await;
        assert_eq!(a.status, 200);
        listed.extend(a.all("Key"));
        token = a.one("NextContinuationToken");
        if token.is_empty() {
            break;
        }
    }
    let known: HashMap<String, bool> = acked
        .iter()
        .map(|e| (e.0.splitn(3, '/').nth(2).unwrap().to_string(), true))
        .chain(
            unacked
                .iter()
                .map(|e| (e.0.splitn(3, '/').nth(2).unwrap().to_string(), false)),
        )
        .collect();
    assert!(
        listed.iter().all(|k| known.contains_key(k)),
        "a listed key nobody wrote"
    );
    assert!(
        known
            .iter()
            .filter(|(_, a)| **a)
            .all(|(k, _)| listed.contains(k))
    );
    println!(
        "storage node A killed under load: {} failed requests (all to node A, in flight); {} writes acknowledged, all read back byte-exact from node B; {} unacknowledged ({present_unacked} present and whole); {} reads during the load; failures: {failures:?}",
        after_node_kill.len(),
        acked.len(),
        unacked.len(),
        load.reads.load(Ordering::SeqCst)
    );

    // 4. The storage identity revoked through replica 1: refused through node B within 2 s.
    let out = c.kms[0].admin(&["client", "revoke", "storage"]).await;
    assert!(out.status.success(), "{}", c.kms[0].logs());
    let revoked = until_refused(1, Duration::from_secs(2), |_, i| {
        let (clients, bucket) = (clients.clone(), format!("revoked-{tag}-{i}"));
        async move { cold_write(&clients[1], &bucket).await.is_err() }
    })
    .await;
    println!(
        "identity revoked through replica 1: cold writes through node B refused after {:?}",
        revoked[0]
    );

    // 5. The audit chain, after load on all replicas: verifies, 1..N, no gap, no fork.
    let export = c.kms[2].export_audit("cluster.jsonl").await;
    let (ok, out) = c.kms[2].verify_audit(&export).await;
    assert!(ok, "audit export does not verify: {out}");
    let text = std::fs::read_to_string(&export).unwrap();
    let seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["record"]["seq"].as_u64())
        .collect();
    assert!(
        seqs.iter().enumerate().all(|(i, s)| *s == i as u64 + 1),
        "sequence numbers are not 1..N"
    );
    assert!(seqs.len() > acked.len() / 2, "{} records", seqs.len());
    println!("audit export: {} records, seq 1..N, verified", seqs.len());

    // 6. The blob store holds ciphertext only: no marker, no object or bucket name.
    let mut files = Vec::new();
    files_under(&c.backend.data_dir, &mut files);
    // Every needle (marker, object names, bucket names) contains the tag: one search finds any.
    let needles = [&marker, &names, &raw_bucket, &load_bucket];
    let mut bytes = 0usize;
    let mut hits = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_default();
        bytes += data.len();
        if data.windows(tag.len()).any(|w| w == tag.as_bytes()) {
            let which: Vec<&String> = needles
                .iter()
                .copied()
                .filter(|n| data.windows(n.len()).any(|w| w == n.as_bytes()))
                .collect();
            hits.push((f.clone(), which));
        }
    }
    println!(
        "blob store scan: {} files, {bytes} bytes, {} hits of the plaintext marker / names",
        files.len(),
        hits.len()
    );
    assert!(bytes > 15 * MIB, "the blob store holds only {bytes} bytes");
    assert!(hits.is_empty(), "{hits:?}");
    println!("cluster test wall time {:?}", started.elapsed());
}
