//! The byte stream of one accepted connection (plain TCP or TLS over TCP): reports blocked
//! writes to the connection's [`Activity`], holds the connection's slot under the listener's
//! cap, and closes with a bounded *lingering drain* when asked to.
//!
//! Lingering close: when a response went out before its request body was read, closing the
//! socket while the client is still sending makes the kernel answer with a reset, which can
//! destroy the response before the client reads it. So after the server's side is shut down,
//! what the peer still sends is read and discarded (raw TCP, bounded in bytes and time), and only
//! then is the socket closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::activity::Activity;

/// Most bytes discarded by a lingering close.
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Longest a lingering close lasts.
const LINGER_MAX_TIME: Duration = Duration::from_secs(10);
/// A lingering close ends when the peer sends nothing for this long.
const LINGER_GAP: Duration = Duration::from_secs(2);

/// Plain or TLS.
pub(crate) enum Inner {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Inner {
    fn into_tcp(self) -> TcpStream {
        match self {
            Inner::Plain(t) => t,
            Inner::Tls(t) => (*t).into_inner().0,
        }
    }
}

/// One connection's stream.
pub(crate) struct Stream {
    inner: Option<Inner>,
    activity: Arc<Activity>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Stream {
    pub(crate) fn new(
        inner: Inner,
        activity: Arc<Activity>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Self {
            inner: Some(inner),
            activity,
            permit,
        }
    }

    fn inner(&mut self) -> io::Result<&mut Inner> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn track<T>(&self, p: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &p {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(_) => self.activity.write_progressed(),
        }
        p
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().inner() {
            Ok(Inner::Plain(t)) => Pin::new(t).poll_read(cx, buf),
            Ok(Inner::Tls(t)) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = match this.inner() {
            Ok(Inner::Plain(t)) => Pin::new(t).poll_write(cx, buf),
            Ok(Inner::Tls(t)) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        this.track(p)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = match this.inner() {
            Ok(Inner::Plain(t)) => Pin::new(t).poll_write_vectored(cx, bufs),
            Ok(Inner::Tls(t)) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        };
        this.track(p)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Some(Inner::Plain(t)) => t.is_write_vectored(),
            Some(Inner::Tls(t)) => t.is_write_vectored(),
            None => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = match this.inner() {
            Ok(Inner::Plain(t)) => Pin::new(t).poll_flush(cx),
            Ok(Inner::Tls(t)) => Pin::new(t.as_mut()).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        };
        this.track(p)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = match this.inner() {
            Ok(Inner::Plain(t)) => Pin::new(t).poll_shutdown(cx),
            Ok(Inner::Tls(t)) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        };
        this.track(p)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.activity.linger() {
            return;
        }
        let (Some(inner), Ok(rt)) = (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        // The slot stays taken until the socket is really closed.
        let permit = self.permit.take();
        rt.spawn(async move {
            linger(inner.into_tcp()).await;
            drop(permit);
        });
    }
}

/// Shut down our side, then read and discard what the peer still sends (bounded), then close.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_MAX_TIME;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    while total < LINGER_MAX_BYTES {
        let until = deadline.min(tokio::time::Instant::now() + LINGER_GAP);
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}
