//! One accept loop for both daemons: plain HTTP or TLS (rustls) on an already-bound listener,
//! HTTP/1.1 and HTTP/2, the peer address put in each request's extensions as axum
//! `ConnectInfo`, and graceful shutdown (stop accepting, let in-flight requests finish).
//!
//! Hostile or broken peers are bounded by [`Limits`] (each daemon makes them settings):
//! - **connection cap** per listener: at the cap the loop stops accepting, so new connections
//!   wait in the kernel's backlog until a slot frees (they are not refused); logged once per
//!   episode;
//! - **header deadline** from accept: the TLS handshake and the first complete request head must
//!   arrive within it (a client that connects, or completes TLS, and sends nothing is closed);
//! - **idle timeout**: a connection with no request in flight for this long is closed (HTTP/1
//!   keep-alive and HTTP/2 alike; HTTP/2 gets a GOAWAY first). A request is in flight from its
//!   complete head until its response body has been sent;
//! - **body timeout**: a request body that pauses longer fails (the application answers an
//!   error), and a response that the peer has not read for that long closes the connection;
//! - accept errors: running out of descriptors (EMFILE, ENFILE) or memory backs off
//!   exponentially from 50 ms to 500 ms instead of spinning, logged once per episode.
//!
//! A response sent before its HTTP/1.1 request body was read (an early 4xx) first drains up to
//! [`DRAIN_MAX_BYTES`] of the body so the connection stays usable; beyond that, or for an
//! `Expect: 100-continue` body never asked for, the response says `Connection: close` and the
//! connection closes with a bounded lingering drain, so the client reads its answer instead of
//! a reset.
//!
//! Nothing secret is held here; the TLS configuration is shared read-only.

mod activity;
mod body;
mod stream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tower::ServiceExt;

pub use body::BodyError;

use activity::{Activity, InFlight, Verdict};
use stream::{Inner, Stream};

/// Default connection cap per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default deadline from accept for the TLS handshake and the first complete request head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time a connection may stay without a request in flight.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest pause in a request body, or of a peer that does not read its response.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of an unread request body drained before an early HTTP/1.1 response.
pub const DRAIN_MAX_BYTES: u64 = 1024 * 1024;
/// Longest such a drain may take.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);
/// How long an idle HTTP/2 connection gets to close after its GOAWAY.
const IDLE_GRACE: Duration = Duration::from_secs(5);

/// Bounds on the connections of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From accept: TLS handshake plus the first complete request head.
    pub header_timeout: Duration,
    /// Longest time without a request in flight.
    pub idle_timeout: Duration,
    /// Longest pause of a request body, or of a peer not reading its response.
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

impl Limits {
    /// From the daemons' settings (milliseconds); zero values are refused by their parsers.
    pub fn from_settings(
        max_connections: usize,
        header_ms: u64,
        idle_ms: u64,
        body_ms: u64,
    ) -> Self {
        Self {
            max_connections: max_connections.max(1),
            header_timeout: Duration::from_millis(header_ms.max(1)),
            idle_timeout: Duration::from_millis(idle_ms.max(1)),
            body_timeout: Duration::from_millis(body_ms.max(1)),
        }
    }

    /// How often each connection's watchdog looks at it.
    fn tick(&self) -> Duration {
        let shortest = self
            .header_timeout
            .min(self.idle_timeout)
            .min(self.body_timeout);
        (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Serve `app` on `listener` with the default [`Limits`] until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with_limits(listener, tls, app, Limits::default(), shutdown).await
}

/// True for accept errors that mean "out of descriptors or memory": retrying at once would spin.
fn exhausted(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Serve `app` on `listener` until `shutdown` resolves; TLS when `tls` is given.
pub async fn serve_with_limits(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let addr = listener.local_addr().ok();
    let mut at_cap = false;
    let mut backoff: Option<Duration> = None;
    tokio::pin!(shutdown);
    loop {
        if slots.available_permits() == 0 && !at_cap {
            at_cap = true;
            tracing::warn!(
                listener = ?addr,
                max_connections = limits.max_connections,
                "connection limit reached: new connections wait until one closes"
            );
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if exhausted(&e) => {
                    let wait = backoff.map_or(Duration::from_millis(50), |b| (b * 2).min(Duration::from_millis(500)));
                    if backoff.is_none() {
                        tracing::error!(listener = ?addr, error = %e, "cannot accept connections (out of file descriptors or memory): backing off");
                    }
                    backoff = Some(wait);
                    drop(permit);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = &mut shutdown => break,
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if backoff.take().is_some() {
            tracing::info!(listener = ?addr, "accepting connections again");
        }
        if at_cap && slots.available_permits() > 0 {
            at_cap = false;
        }
        let accepted = tokio::time::Instant::now();
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let activity = Activity::new(accepted);
            let inner = match acceptor {
                Some(acceptor) => {
                    let deadline = accepted + limits.header_timeout;
                    match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Ok(Ok(s)) => Inner::Tls(Box::new(s)),
                    }
                }
                None => Inner::Plain(tcp),
            };
            let io = Stream::new(inner, activity.clone(), Some(permit));
            serve_connection(io, peer, app, limits, activity, stop).await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(stop_rx);
    stop_tx.closed().await;
    Ok(())
}

/// Serve one connection until it ends, is idle or stalled too long, or the server stops.
async fn serve_connection(
    io: Stream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
) {
    let svc_activity = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        handle(req, peer, app.clone(), limits, svc_activity.clone())
    });
    let mut builder = Builder::new(TokioExecutor::new());
    // The watchdog enforces header and idle deadlines for both protocols.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(limits.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    let mut idle_deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            r = stop.changed(), if !closing => {
                let _ = r;
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => match activity.verdict(&limits) {
                Verdict::Keep => {}
                Verdict::Stalled => {
                    tracing::debug!(%peer, "peer stopped reading its response: closing");
                    return;
                }
                Verdict::Idle => match idle_deadline {
                    None => {
                        tracing::debug!(%peer, "idle connection: closing");
                        idle_deadline = Some(tokio::time::Instant::now() + IDLE_GRACE);
                        if !closing {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    Some(d) if tokio::time::Instant::now() >= d && activity.inflight() == 0 => return,
                    Some(_) => {}
                },
            },
        }
    }
}

/// One request: the peer address and a timed, salvageable body for the application; after
/// its answer, an unread HTTP/1 body is drained (bounded) or the connection marked to close.
async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    activity: Arc<Activity>,
) -> Result<axum::response::Response, Infallible> {
    let guard = InFlight::new(&activity);
    let http1 = req.version() < http::Version::HTTP_2;
    let expects_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (ret_tx, mut ret_rx) = oneshot::channel();
    let (mut parts, incoming) = req.into_parts();
    parts.extensions.insert(ConnectInfo::<SocketAddr>(peer));
    let body = body::RequestBody::new(incoming, limits.body_timeout, ret_tx);
    let req = http::Request::from_parts(parts, axum::body::Body::new(body));
    let Ok(mut resp) = app.oneshot(req).await;
    if http1 && let Ok(left) = ret_rx.try_recv() {
        let clean = match left.body {
            Some(rest) if left.polled || !expects_continue => {
                body::drain(
                    rest,
                    DRAIN_MAX_BYTES,
                    DRAIN_MAX_TIME.min(limits.body_timeout),
                )
                .await
            }
            _ => false,
        };
        if !clean {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            activity.set_linger();
        }
    }
    // The request stays in flight until its response body is done (or dropped).
    Ok(resp.map(|b| {
        axum::body::Body::new(b.map_frame(move |f| {
            let _in_flight = &guard;
            f
        }))
    }))
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
mod tests;
