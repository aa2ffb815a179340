//! Issue 14: the storage node's KMS client over a list of replicas, against real `coffer-kms`
//! processes: one KMS reached directly and through TCP relays (same root keys), next to a dead
//! address (bound, then closed) and a hung one (accepts, never answers); and two `coffer-kms
//! serve` replicas on one PostgreSQL (`scripts/pg-test-server`), one killed with SIGKILL.
//! Covers: listed first, the dead and hung replicas cost the first request at most one health
//! round and later requests nothing (the health checker skips them); a replica killed under a
//! load of cold-key SSE-S3 PUT/GET costs at most the calls in flight to it (they are retried on
//! the next replica), with the failover time printed; `/metrics` counts failovers and shows each
//! replica's health.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coffer_tests::kms::Kms;
use coffer_tests::pg::PgServer;
use coffer_tests::s3client::S3Client;

mod common;
use common::{Node, kms_with_storage_identity};

/// An in-process node whose KMS setting is `urls` (comma-separated); its bucket keys expire
/// after a millisecond, so every SSE-S3 request calls the KMS.
async fn node(urls: &str, kms: &Kms, credential: &Path, timeout: Duration) -> Node {
    common::node(
        urls,
        kms,
        credential,
        timeout,
        Duration::from_millis(1),
        "fo-test",
    )
    .await
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

/// One request pair (PUT then GET of the same key) of the load: when it started and ended,
/// and whether both answered 200 with the right bytes.
struct Op {
    start: Instant,
    end: Instant,
    ok: Option<String>,
}

/// What a load run with a kill in the middle measured.
struct LoadReport {
    ops: Vec<Op>,
    kill: Instant,
}

impl LoadReport {
    fn failures(&self) -> Vec<&str> {
        self.ops.iter().filter_map(|o| o.ok.as_deref()).collect()
    }
    fn in_flight_at_kill(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| o.start <= self.kill && o.end > self.kill)
            .count()
    }
    /// Longest a request in flight at the kill took after it.
    fn held_up(&self) -> Duration {
        self.ops
            .iter()
            .filter(|o| o.start <= self.kill && o.end > self.kill)
            .map(|o| o.end - self.kill)
            .max()
            .unwrap_or_default()
    }
    /// From the kill to the first success of a request started after it.
    fn first_success_after(&self) -> Option<Duration> {
        self.ops
            .iter()
            .filter(|o| o.start > self.kill && o.ok.is_none())
            .map(|o| o.end - self.kill)
            .min()
    }
    fn print(&self, what: &str, failovers: f64) {
        println!(
            "{what}: {} request pairs, {} failed (in flight at the kill: {}), {failovers} \
             failovers; requests in flight at the kill held up {:?} at most; first success of a \
             request started after the kill {:?} after it",
            self.ops.len(),
            self.failures().len(),
            self.in_flight_at_kill(),
            self.held_up(),
            self.first_success_after(),
        );
    }
}

/// Four workers PUT then GET cold SSE-S3 keys through the node (every request calls the KMS);
/// once 20 pairs succeeded, `kill` runs; the load stops 20 successes later.
async fn load_with_kill(
    n: &Node,
    kill: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
) -> LoadReport {
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
    let ops = Arc::new(std::sync::Mutex::new(Vec::<Op>::new()));
    let mut workers = Vec::new();
    for w in 0..4usize {
        let client = S3Client::plain(&n.host, "fo-test", "fo-test-secret");
        let (stop, ok, ops) = (stop.clone(), ok.clone(), ops.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/load{}/w{w}-{i}", (w + i) % BUCKETS);
                let body = format!("body {w} {i}").into_bytes();
                let start = Instant::now();
                let put = client.call("PUT", &key, &[], &[], body.clone()).await;
                let failed = if put.status != 200 {
                    Some(format!("PUT {}: {}", put.status, put.text()))
                } else {
                    let get = client.call("GET", &key, &[], &[], vec![]).await;
                    (get.status != 200 || get.body != body)
                        .then(|| format!("GET {}: {}", get.status, get.text()))
                };
                if failed.is_none() {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                ops.lock().unwrap().push(Op {
                    start,
                    end: Instant::now(),
                    ok: failed,
                });
                i += 1;
            }
        }));
    }
    let t0 = Instant::now();
    while ok.load(Ordering::Relaxed) < 20 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no load");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = ok.load(Ordering::Relaxed);
    let kill_at = Instant::now();
    kill.await;
    while ok.load(Ordering::Relaxed) < before + 20 {
        assert!(
            kill_at.elapsed() < Duration::from_secs(60),
            "no progress after the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let ops = std::mem::take(&mut *ops.lock().unwrap());
    LoadReport { ops, kill: kill_at }
}

/// The client retries a call that failed on a killed replica on the next one: under a load of
/// cold-key SSE-S3 PUT/GET, killing the replica the node prefers (a relay to the one KMS, with
/// every connection through it) costs no request (the calls in flight to it are retried), and
/// failovers are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_at_most_the_calls_in_flight() {
    let (mut kms, cred) = kms_with_storage_identity().await;
    let port = port_of(&kms.url);
    let a = Relay::start(port).await;
    let b = Relay::start(port).await;
    let urls = format!("{},{}", a.url, b.url);
    let n = node(&urls, &kms, &cred, Duration::from_millis(1500)).await;
    let report = load_with_kill(&n, Box::pin(async { a.kill() })).await;
    let failovers = metric(&n.host, "coffer_kms_failovers_total")
        .await
        .unwrap_or(0.0);
    report.print("relay replica killed under load", failovers);
    let failures = report.failures();
    assert!(failures.len() <= report.in_flight_at_kill(), "{failures:?}");
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
    assert!(
        report.held_up() < Duration::from_secs(3),
        "{:?}",
        report.held_up()
    );
    drop(b);
    kms.stop().await;
}

/// Two real `coffer-kms serve` replicas on one PostgreSQL: the one the node prefers is killed
/// with SIGKILL under a load of cold-key SSE-S3 PUT/GET; at most the requests in flight to it
/// may fail (the client retries them on the other replica, so none should), and the failover
/// time is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_kms_replica_killed_with_sigkill_under_load() {
    let pg = PgServer::start();
    let mut a = Kms::init_pg(&pg.url).await;
    a.start().await;
    a.create_client("storage", "*", "generate,unwrap").await;
    // Started after the identity exists: it loads it at start. (Created through `a` while `b`
    // already ran, `b` sometimes kept answering 401 to it for seconds: see the failover-blobs
    // report.)
    let mut b = a.replica();
    b.start().await;
    let cred = a.tmp.path().join("storage.credential");
    let (a_url, b_url) = (
        a.url.trim_end_matches('/').to_string(),
        b.url.trim_end_matches('/').to_string(),
    );
    let n = node(
        &format!("{a_url},{b_url}"),
        &a,
        &cred,
        Duration::from_millis(2000),
    )
    .await;
    let report = load_with_kill(&n, Box::pin(async { a.kill9().await })).await;
    let failovers = metric(&n.host, "coffer_kms_failovers_total")
        .await
        .unwrap_or(0.0);
    report.print("PostgreSQL KMS replica killed -9 under load", failovers);
    let failures = report.failures();
    if !failures.is_empty() {
        let logs = b.logs();
        let tail: Vec<&str> = logs.lines().rev().take(40).collect();
        println!(
            "replica b's last log lines (newest first):\n{}",
            tail.join("\n")
        );
        let before = report
            .ops
            .iter()
            .filter(|o| o.ok.is_some() && o.end < report.kill)
            .count();
        println!("failures that ended before the kill: {before}");
    }
    assert!(failures.len() <= report.in_flight_at_kill(), "{failures:?}");
    assert!(
        failures.is_empty(),
        "retried calls should not fail: {failures:?}"
    );
    assert_eq!(
        metric(
            &n.host,
            &format!("coffer_kms_replica_up{{url=\"{a_url}\"}}")
        )
        .await,
        Some(0.0)
    );
    assert!(
        report.held_up() < Duration::from_secs(5),
        "{:?}",
        report.held_up()
    );
    // The surviving replica still serves.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(b.ca_cert()).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let health = http.get(format!("{b_url}/health")).send().await;
    assert!(
        health.is_ok_and(|r| r.status().is_success()),
        "replica b stopped serving:\n{}",
        b.logs()
    );
}
