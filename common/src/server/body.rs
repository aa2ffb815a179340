//! Request bodies as the applications see them: a pause longer than the body timeout between two
//! pieces fails the body (a client that announces a body and never sends it cannot hold a
//! handler), and a body the application drops unread is handed back to the connection so that it
//! can be drained before the response (keeping an HTTP/1.1 connection usable) or the connection
//! closed cleanly.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// Error of a request body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived for longer than the body timeout.
    #[error("the request body stalled for more than {0:?}")]
    Stalled(Duration),
    /// The connection failed while the body was read.
    #[error("reading the request body failed: {0}")]
    Transport(#[from] hyper::Error),
}

/// What is left of a body its application dropped before its end.
pub(crate) struct Leftover {
    /// The rest of the body; `None` when it failed (stalled or broken).
    pub(crate) body: Option<Incoming>,
    /// Whether the application ever asked for data (for `Expect: 100-continue`, only then was
    /// the client told to send the body).
    pub(crate) polled: bool,
}

/// The body handed to the application.
pub(crate) struct RequestBody {
    inner: Option<Incoming>,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    polled: bool,
    failed: bool,
    ret: Option<oneshot::Sender<Leftover>>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, timeout: Duration, ret: oneshot::Sender<Leftover>) -> Self {
        Self {
            inner: Some(inner),
            timeout,
            sleep: None,
            polled: false,
            failed: false,
            ret: Some(ret),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        this.polled = true;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                this.inner = None;
                Poll::Ready(Some(Err(BodyError::Transport(e))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.failed = true;
                    this.inner = None;
                    this.sleep = None;
                    return Poll::Ready(Some(Err(BodyError::Stalled(timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let body = self.inner.take().filter(|b| !b.is_end_stream());
        if body.is_none() && !self.failed {
            return;
        }
        if let Some(ret) = self.ret.take() {
            let _ = ret.send(Leftover {
                body,
                polled: self.polled,
            });
        }
    }
}

/// Read and discard the rest of `body`, at most `max_bytes` within `max_time`. True when it
/// ended within those bounds (the connection can then serve its next request).
pub(crate) async fn drain(mut body: Incoming, max_bytes: u64, max_time: Duration) -> bool {
    use http_body_util::BodyExt;
    let read = async {
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(d) = frame.data_ref() {
                total += d.len() as u64;
                if total > max_bytes {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(max_time, read).await.unwrap_or(false)
}
