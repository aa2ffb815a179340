//! One accept loop for both daemons: plain HTTP or TLS (rustls) on an already-bound listener,
//! HTTP/1.1 and HTTP/2, the peer address put in each request's extensions as axum
//! `ConnectInfo`, timeouts for idle handshakes and slow request headers, and graceful shutdown (stop accepting, let in-flight requests finish).
//!
//! Nothing secret is held here; the TLS configuration is shared read-only.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// A connection that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1 request whose headers have not all arrived by then is dropped (slow-loris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `app` on `listener` until `shutdown` resolves; TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    app.clone().oneshot(req)
                },
            );
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let result = match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                        Ok(Ok(stream)) => {
                            let conn =
                                builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            watcher.watch(conn.into_owned()).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    }
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: the graceful-shutdown trigger of both daemons.
///
/// The handlers are installed when this is called, not when the future is first polled, so call
/// it before announcing readiness: a SIGTERM sent right after "listening on" is then a clean
/// shutdown, not the default signal death. Must be called inside the Tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutting down: finishing in-flight requests");
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing in-flight requests");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// With the clock paused, Tokio jumps to the next timer whenever the runtime is idle, so the
    /// 30 s header timeout and 10 s handshake timeout elapse at once here.
    #[tokio::test(start_paused = true)]
    async fn slow_headers_and_silent_tls_clients_are_dropped() {
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(plain, None, app.clone(), std::future::pending()));

        // Complete headers are answered.
        let mut ok = tokio::net::TcpStream::connect(plain_addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        ok.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");

        // Headers that never finish: the server closes the connection.
        let mut slow = tokio::net::TcpStream::connect(plain_addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(120), slow.read_to_end(&mut rest))
            .await
            .expect("the server must close a connection whose headers never finish");
        assert!(n.is_ok());

        // A TLS client that never sends its ClientHello is dropped too.
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
        tokio::spawn(serve(tls, Some(tls_cfg), app, std::future::pending()));
        let mut silent = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(120), silent.read_to_end(&mut rest))
            .await
            .expect("the server must drop a client that never starts TLS")
            .unwrap();
        assert!(rest.is_empty());
    }
}
