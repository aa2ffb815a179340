//! What one connection is doing, for its watchdog: requests in flight, since when it has had
//! none, and since when a write to the peer has been blocked. Updated lock-free by the I/O
//! wrapper and the per-request guards, read by the watchdog on each tick.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::Limits;

/// The state of one connection.
pub(crate) struct Activity {
    origin: Instant,
    inflight: AtomicUsize,
    started: AtomicU64,
    /// Milliseconds since `origin` when the last request ended (0 = accepted, none yet).
    idle_since: AtomicU64,
    /// 1 + milliseconds since `origin` when a write started waiting for the peer; 0 = none.
    write_blocked_since: AtomicU64,
    /// Close with a lingering drain: a response went out before its request body was read.
    linger: AtomicBool,
}

/// What the watchdog should do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// No request in flight for longer than the header (first request) or idle timeout.
    Idle,
    /// A write to the peer has made no progress for longer than the body timeout.
    Stalled,
}

impl Activity {
    /// A connection accepted at `origin`.
    pub(crate) fn new(origin: Instant) -> Arc<Self> {
        Arc::new(Self {
            origin,
            inflight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            linger: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A write returned `Pending` (the peer does not read).
    pub(crate) fn write_blocked(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) == 0 {
            self.write_blocked_since
                .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
        }
    }

    /// A write completed.
    pub(crate) fn write_progressed(&self) {
        if self.write_blocked_since.load(Ordering::Relaxed) != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// Close this connection with a lingering drain of what the peer still sends.
    pub(crate) fn set_linger(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    pub(crate) fn linger(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// The watchdog's decision now.
    pub(crate) fn verdict(&self, limits: &Limits) -> Verdict {
        let now = self.now_ms();
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != 0 && now.saturating_sub(blocked - 1) >= millis(limits.body_timeout) {
            return Verdict::Stalled;
        }
        if self.inflight.load(Ordering::SeqCst) == 0 {
            let limit = if self.started.load(Ordering::SeqCst) == 0 {
                limits.header_timeout
            } else {
                limits.idle_timeout
            };
            let since = self.idle_since.load(Ordering::SeqCst);
            if now.saturating_sub(since) >= millis(limit) {
                return Verdict::Idle;
            }
        }
        Verdict::Keep
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One request in flight: from its complete head until its response body has been sent (or
/// dropped). Connections are idle only when no guard is alive.
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(crate) fn new(a: &Arc<Activity>) -> Self {
        a.started.fetch_add(1, Ordering::SeqCst);
        a.inflight.fetch_add(1, Ordering::SeqCst);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 1,
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(200),
        }
    }

    #[test]
    fn header_then_idle_then_stalled() {
        let l = limits();
        let origin = Instant::now() - Duration::from_millis(250);
        let a = Activity::new(origin);
        assert_eq!(
            a.verdict(&l),
            Verdict::Idle,
            "no request within the header timeout"
        );
        let g = InFlight::new(&a);
        assert_eq!(
            a.verdict(&l),
            Verdict::Keep,
            "a request in flight is never idle"
        );
        drop(g);
        assert_eq!(
            a.verdict(&l),
            Verdict::Keep,
            "idle timeout starts at the request's end"
        );
        a.write_blocked();
        assert_eq!(a.verdict(&l), Verdict::Keep);
        a.write_blocked_since.store(1, Ordering::Relaxed);
        assert_eq!(a.verdict(&l), Verdict::Stalled);
        a.write_progressed();
        assert_eq!(a.verdict(&l), Verdict::Keep);
    }
}
