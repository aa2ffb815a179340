//! Tests of the accept loop against hostile and broken peers (raw sockets, small limits).

use super::*;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn app() -> Router {
    use axum::routing::{get, post, put};
    Router::new()
        .route("/", get(|| async { "ok" }))
        // Reads its whole body.
        .route(
            "/echo",
            post(|b: axum::body::Bytes| async move { b.len().to_string() }),
        )
        // Answers before reading its body (as an authentication failure does).
        .route(
            "/early",
            put(|| async { (http::StatusCode::FORBIDDEN, "denied") }),
        )
        // A large response, for a peer that never reads it.
        .route("/big", get(|| async { vec![0u8; 64 * 1024 * 1024] }))
}

fn small(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
    }
}

async fn start(limits: Limits) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve_with_limits(
        l,
        None,
        app(),
        limits,
        std::future::pending(),
    ));
    addr
}

/// Read until the server closes (EOF or reset), bounded; returns what arrived.
async fn until_closed(s: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let r = tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the server did not close the connection within {bound:?}"
    );
    out
}

/// Read one HTTP/1.1 response with a Content-Length body; returns (head, body).
async fn response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut body = data[end + 4..].to_vec();
            while body.len() < len {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed mid-body");
                body.extend_from_slice(&buf[..n]);
            }
            return (head, body);
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    }
}

/// With the clock paused, Tokio jumps to the next timer whenever the runtime is idle, so the
/// default 20 s header deadline elapses at once here.
#[tokio::test(start_paused = true)]
async fn silent_and_slow_clients_are_closed_after_the_header_deadline() {
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(serve(plain, None, app(), std::future::pending()));

    // Complete headers are answered.
    let mut ok = TcpStream::connect(plain_addr).await.unwrap();
    ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = response(&mut ok).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"ok");

    // Headers that never finish: the server closes the connection.
    let mut slow = TcpStream::connect(plain_addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    until_closed(&mut slow, Duration::from_secs(120)).await;

    // A client that connects and sends nothing at all.
    let mut silent = TcpStream::connect(plain_addr).await.unwrap();
    assert!(
        until_closed(&mut silent, Duration::from_secs(120))
            .await
            .is_empty()
    );

    // Over TLS: one that never sends its ClientHello, and one that completes the handshake and
    // then sends nothing.
    crate::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::tls::generate_ca().unwrap();
    let srv = crate::tls::issue_server_cert(&ca.key_pem, &["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.path().join("s.pem"), dir.path().join("s.key"));
    std::fs::write(&cert, &srv.cert_pem).unwrap();
    crate::secret_file::write_new_secret_file(&key, srv.key_pem.as_bytes()).unwrap();
    let tls_cfg = crate::tls::load_server_config(&cert, &key, None).unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls.local_addr().unwrap();
    tokio::spawn(serve(tls, Some(tls_cfg), app(), std::future::pending()));
    let mut silent = TcpStream::connect(tls_addr).await.unwrap();
    assert!(
        until_closed(&mut silent, Duration::from_secs(120))
            .await
            .is_empty()
    );

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let client_cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut handshaken = connector.connect(name, tcp).await.unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(120), handshaken.read_to_end(&mut rest)).await;
    assert!(
        r.is_ok(),
        "the server must close a TLS connection that sends no request"
    );
    assert!(rest.is_empty());
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let addr = start(small(8)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let t = Instant::now();
    assert!(
        until_closed(&mut s, Duration::from_secs(5))
            .await
            .is_empty()
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn at_the_cap_new_connections_wait_for_a_free_slot() {
    let addr = start(small(2)).await;
    let _idle1 = TcpStream::connect(addr).await.unwrap();
    let _idle2 = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = tokio::time::timeout(Duration::from_secs(5), response(&mut s))
        .await
        .expect("served once the idle connections are reaped");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "served before a slot was free: the cap is not applied ({:?})",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_fails() {
    let addr = start(small(8)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let (head, _) = tokio::time::timeout(Duration::from_secs(5), response(&mut s))
        .await
        .expect("a stalled body must not hold the handler");
    assert!(head.starts_with("http/1.1 4"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    until_closed(&mut s, Duration::from_secs(5)).await;

    // A complete body is served.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
        .await
        .unwrap();
    let (head, body) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"3");
}

#[tokio::test]
async fn an_early_answer_drains_a_small_body_and_closes_after_a_large_one() {
    let addr = start(Limits::default()).await;
    // Small body: drained, and the connection serves the next request.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let small_body = vec![b'x'; 200 * 1024];
    for _ in 0..3 {
        let head = format!(
            "PUT /early HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            small_body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&small_body).await.unwrap();
        let (head, _) = response(&mut s).await;
        assert!(head.starts_with("http/1.1 403"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // Large body: the client can still send all of it (lingering drain, no reset), then reads
    // a response that tells it to close.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let large = vec![b'y'; 8 * 1024 * 1024];
    let head = format!(
        "PUT /early HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        large.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&large)
        .await
        .expect("the whole body is accepted: no reset");
    let (head, _) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    until_closed(&mut s, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_peer_that_stops_reading_its_response_is_dropped() {
    let addr = start(small(8)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        got.len() < 64 * 1024 * 1024,
        "the server kept a connection whose peer did not read ({} bytes)",
        got.len()
    );
}
