//! Issue 14: the storage node's KMS client over a list of replicas, against a real `coffer-kms`
//! process. Today's KMS is one process per data dir, so the "replicas" are that KMS reached
//! directly and through TCP relays (same root keys, as real replicas on one PostgreSQL would
//! share), next to a dead address (bound, then closed) and a hung one (accepts, never answers).
//! Covers: listed first, the dead and hung replicas cost the first request at most one health
//! round and later requests nothing (the health checker skips them); a replica killed under a
//! load of cold-key SSE-S3 PUT/GET costs at most the calls in flight to it (they are retried on
//! the next replica), with the failover time printed; `/metrics` counts failovers and shows each
//! replica's health.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coffer_storage::crypto::kms_client::{KmsClient, KmsClientConfig};
use coffer_storage::state::{DefaultEncryption, NodeConfig};
use coffer_tests::kms::Kms;
use coffer_tests::s3client::S3Client;

struct Node {
    client: S3Client,
    host: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// An in-process node whose KMS setting is `urls` (comma-separated); its bucket keys expire
/// after a millisecond, so every SSE-S3 request calls the KMS.
async fn node(urls: &str, kms: &Kms, credential: &Path, timeout: Duration) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let cfg = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        region: "us-east-1".into(),
        access_key: "fo-test".into(),
        secret_key: "fo-test-secret".into(),
        tls: false,
        allow_ssec_over_http: false,
        allow_sse_kms_over_http: false,
        default_encryption: DefaultEncryption::SseS3,
        key_cache_ttl: Duration::from_millis(1),
        key_cache_capacity: 100,
        max_body_bytes: 64 * 1024 * 1024,
        virtual_host_domains: Vec::new(),
    };
    let client = KmsClient::new(KmsClientConfig {
        url: urls.to_string(),
        credential: coffer_common::credential::Credential::load(credential).unwrap(),
        ca_pem: Some(std::fs::read(kms.ca_cert()).unwrap()),
        client_identity_pem: None,
        timeout,
    })
    .unwrap();
    let state = coffer_storage::server::open_state(cfg, Some(client))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(coffer_storage::server::serve(
        listener,
        Arc::clone(&state),
        None,
        async {
            let _ = rx.await;
        },
    ));
    Node {
        client: S3Client::plain(&host, "fo-test", "fo-test-secret"),
        host,
        _dir: dir,
        _stop: tx,
    }
}

async fn kms_with_storage_identity() -> (Kms, PathBuf) {
    let mut kms = Kms::init().await;
    kms.start().await;
    kms.create_client("storage", "*", "generate,unwrap").await;
    let cred = kms.tmp.path().join("storage.credential");
    (kms, cred)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// An https URL (host `localhost`, which the KMS certificate names) on a port that was bound and
/// closed: connections are refused.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("https://localhost:{port}")
}

/// An https URL whose listener accepts connections and never sends a byte.
async fn hung_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    format!("https://localhost:{port}")
}

/// A TCP relay to the KMS: another address of the same KMS, as a replica would be. Dropping
/// the handle's `kill` aborts the listener and every relayed connection at once (a replica
/// killed with its connections in flight).
struct Relay {
    url: String,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(target_port: u16) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let t2 = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                t2.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Self {
            url: format!("https://localhost:{port}"),
            tasks,
        }
    }

    /// Close the listener and every relayed connection (the peer sees them reset/closed).
    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// Metric `name` (with its labels) from the node's `/metrics`.
async fn metric(host: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{host}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_hung_replicas_listed_first_are_skipped() {
    let (mut kms, cred) = kms_with_storage_identity().await;
    let real = kms.url.trim_end_matches('/').to_string();
    let (hung, dead) = (hung_url().await, dead_url().await);
    let timeout = Duration::from_millis(1500);
    let urls = format!("{hung},{dead},{real}");
    let started = Instant::now();
    let n = node(&urls, &kms, &cred, timeout).await;
    let c = &n.client;
    assert_eq!(c.call("PUT", "/first", &[], &[], vec![]).await.status, 200);
    let put = c.call("PUT", "/first/k", &[], &[], b"one".to_vec()).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.header("x-amz-server-side-encryption"), "AES256");
    let first = started.elapsed();
    println!("time to first SSE-S3 success with hung and dead replicas first: {first:?}");
    // The first call waits for the first ready answer of a health check, then goes to that
    // replica: never the hung replica's timeout (1.5 s) plus a retry.
    assert!(first < Duration::from_millis(1000), "took {first:?}");
    let get = c.call("GET", "/first/k", &[], &[], vec![]).await;
    assert_eq!((get.status, get.body.as_slice()), (200, &b"one"[..]));

    // A cold key for another bucket: the checker already knows the dead and hung replicas.
    assert_eq!(c.call("PUT", "/second", &[], &[], vec![]).await.status, 200);
    for i in 0..5 {
        let t = Instant::now();
        let key = format!("/second/k{i}");
        let put = c.call("PUT", &key, &[], &[], b"two".to_vec()).await;
        assert_eq!(put.status, 200, "{}", put.text());
        let get = c.call("GET", "/first/k", &[], &[], vec![]).await;
        assert_eq!(get.status, 200);
        let took = t.elapsed();
        assert!(
            took < Duration::from_millis(1200),
            "request {i} waited on a replica known to be down: {took:?}"
        );
    }
    assert_eq!(
        metric(&n.host, &format!("coffer_kms_replica_up{{url=\"{real}\"}}")).await,
        Some(1.0)
    );
    for down in [&hung, &dead] {
        assert_eq!(
            metric(&n.host, &format!("coffer_kms_replica_up{{url=\"{down}\"}}")).await,
            Some(0.0),
            "{down}"
        );
    }
    // Ready: one replica is enough, and the answer does not wait on the hung one.
    let t = Instant::now();
    let ready = reqwest::get(format!("http://{}/ready", n.host))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    kms.stop().await;
}

/// The client retries a call that failed on a killed replica on the next one: under a load of
/// cold-key SSE-S3 PUT/GET, killing the replica the node prefers costs no request (the calls
/// in flight to it are retried), and failovers are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_at_most_the_calls_in_flight() {
    let (mut kms, cred) = kms_with_storage_identity().await;
    let port = port_of(&kms.url);
    let a = Relay::start(port).await;
    let b = Relay::start(port).await;
    let urls = format!("{},{}", a.url, b.url);
    let n = node(&urls, &kms, &cred, Duration::from_millis(1500)).await;
    const BUCKETS: usize = 4;
    for i in 0..BUCKETS {
        let r = n
            .client
            .call("PUT", &format!("/load{i}"), &[], &[], vec![])
            .await;
        assert_eq!(r.status, 200);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<(u16, String)>::new()));
    let killed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let slowest_after_kill = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let mut workers = Vec::new();
    for w in 0..4usize {
        let client = S3Client::plain(&n.host, "fo-test", "fo-test-secret");
        let (stop, ok, failures, in_flight) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            in_flight.clone(),
        );
        let (killed_at, slowest) = (killed_at.clone(), slowest_after_kill.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let bucket = (w + i) % BUCKETS;
                let key = format!("/load{bucket}/w{w}-{i}");
                let body = format!("body {w} {i}").into_bytes();
                let t = Instant::now();
                in_flight.fetch_add(1, Ordering::SeqCst);
                let put = client.call("PUT", &key, &[], &[], body.clone()).await;
                let get = if put.status == 200 {
                    Some(client.call("GET", &key, &[], &[], vec![]).await)
                } else {
                    None
                };
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if let Some(k) = *killed_at.lock().unwrap()
                    && t <= k
                {
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(t.elapsed());
                }
                match get {
                    Some(g) if g.status == 200 && g.body == body => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(g) => failures.lock().unwrap().push((g.status, g.text())),
                    None => failures.lock().unwrap().push((put.status, put.text())),
                }
                i += 1;
            }
        }));
    }
    // Kill the preferred replica once load is flowing.
    let t0 = Instant::now();
    while ok.load(Ordering::Relaxed) < 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no load: {:?}",
            failures.lock().unwrap()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = ok.load(Ordering::Relaxed);
    let flying = in_flight.load(Ordering::SeqCst);
    *killed_at.lock().unwrap() = Some(Instant::now());
    let kill = Instant::now();
    a.kill();
    // Load continues on the other replica.
    while ok.load(Ordering::Relaxed) < before + 20 {
        assert!(
            kill.elapsed() < Duration::from_secs(60),
            "no progress: {:?}",
            failures.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let recovered = kill.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let slowest = *slowest_after_kill.lock().unwrap();
    let failovers = metric(&n.host, "coffer_kms_failovers_total")
        .await
        .unwrap_or(0.0);
    println!(
        "replica killed under load: {} requests ok, {} failed (in flight at the kill: {flying}), \
         {failovers} failovers, 20 more successes {recovered:?} after the kill, slowest request \
         in flight at the kill {slowest:?}",
        ok.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.len() <= flying, "{failures:?}");
    assert!(
        failures.is_empty(),
        "retried calls should not fail: {failures:?}"
    );
    assert!(failovers >= 1.0, "the killed replica was never failed over");
    assert_eq!(
        metric(
            &n.host,
            &format!("coffer_kms_replica_up{{url=\"{}\"}}", a.url)
        )
        .await,
        Some(0.0)
    );
    // Each request in flight at the kill was bounded by one retry, not by timeouts.
    assert!(slowest < Duration::from_secs(3), "{slowest:?}");
    drop(b);
    kms.stop().await;
}
