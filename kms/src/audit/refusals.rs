//! Refused calls from callers that did not prove an identity (no token, a token that does not
//! parse or whose signature fails, an unknown identity) are audited in aggregate: one record per
//! source address, operation and answer per wall-clock minute, carrying the count. Without this a
//! flood of garbage requests costs one durable record each (it grew `kms.db` by megabytes a
//! minute and slowed real unwraps). Calls by a known identity (its signature verified), refused or
//! not, are never aggregated: they keep one record each.
//!
//! Rate limit: a minute holds at most [`MAX_SOURCES`] distinct (source, operation, answer)
//! entries; further sources are counted under the source `other`. Windows are written when the
//! minute is over (by [`flusher`]), before an audit query or export, and at shutdown.
//!
//! Record: identity `-`, client = the source IP (no port), operation and result as answered,
//! `request_id` = the first refused request of the window, detail
//! `aggregated count=N window=<minute start, RFC 3339>/60s`. Nothing secret is held.

use std::collections::BTreeMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use super::AuditEvent;

/// Most distinct entries per minute before sources are merged into `other`.
pub const MAX_SOURCES: usize = 256;

/// Source name of the overflow entry.
pub const OTHER_SOURCES: &str = "other";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    source: String,
    operation: String,
    result: String,
}

#[derive(Debug)]
struct Entry {
    count: u64,
    first_request_id: String,
}

#[derive(Default)]
struct Inner {
    /// Unix minute of `current`.
    minute: i64,
    current: BTreeMap<Key, Entry>,
    /// Finished windows not yet written.
    closed: Vec<AuditEvent>,
}

/// Counts of refused unauthenticated calls, by window.
#[derive(Default)]
pub struct Refusals {
    inner: Mutex<Inner>,
}

/// The IP of a `ip:port` client address (the address as given when it does not parse).
pub fn source_of(client: &str) -> String {
    client
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| client.chars().take(64).collect())
}

fn minute_start(minute: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(minute.saturating_mul(60))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn events(minute: i64, entries: BTreeMap<Key, Entry>) -> Vec<AuditEvent> {
    let window = minute_start(minute);
    entries
        .into_iter()
        .map(|(k, e)| AuditEvent {
            request_id: e.first_request_id,
            identity: "-".into(),
            client: k.source,
            operation: k.operation,
            result: k.result,
            detail: Some(format!("aggregated count={} window={window}/60s", e.count)),
            ..AuditEvent::default()
        })
        .collect()
}

impl Refusals {
    /// Count one refused call at Unix time `now` (seconds).
    pub fn add_at(&self, now: i64, client: &str, operation: &str, result: &str, request_id: &str) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let minute = now.div_euclid(60);
        if minute != g.minute {
            let old = std::mem::take(&mut g.current);
            let old_minute = g.minute;
            g.closed.extend(events(old_minute, old));
            g.minute = minute;
        }
        let mut key = Key {
            source: source_of(client),
            operation: operation.chars().take(64).collect(),
            result: result.to_string(),
        };
        if !g.current.contains_key(&key) && g.current.len() >= MAX_SOURCES {
            key.source = OTHER_SOURCES.into();
        }
        g.current
            .entry(key)
            .or_insert_with(|| Entry {
                count: 0,
                first_request_id: request_id.to_string(),
            })
            .count += 1;
    }

    /// Count one refused call now.
    pub fn add(&self, client: &str, operation: &str, result: &str, request_id: &str) {
        self.add_at(
            coffer_common::jwt::now_unix(),
            client,
            operation,
            result,
            request_id,
        );
    }

    /// The records of every window that ended before Unix time `now`; with `all`, the current
    /// one too.
    pub fn take_at(&self, now: i64, all: bool) -> Vec<AuditEvent> {
        let Ok(mut g) = self.inner.lock() else {
            return Vec::new();
        };
        let mut out = std::mem::take(&mut g.closed);
        if all || now.div_euclid(60) != g.minute {
            let cur = std::mem::take(&mut g.current);
            let minute = g.minute;
            out.extend(events(minute, cur));
        }
        out
    }

    /// Put back records that could not be written (they are retried on the next flush).
    pub fn restore(&self, events: Vec<AuditEvent>) {
        if let Ok(mut g) = self.inner.lock() {
            // Bounded: a log that stays unwritable does not make this grow without end.
            let room = (MAX_SOURCES * 4).saturating_sub(g.closed.len());
            g.closed.extend(events.into_iter().take(room));
        }
    }
}

/// Write the pending aggregate records (`all`: the current minute's too).
pub async fn flush(state: &crate::KmsState, all: bool) {
    let pending = state.refusals.take_at(coffer_common::jwt::now_unix(), all);
    let mut failed = Vec::new();
    for ev in pending {
        if failed.is_empty() {
            match state
                .audit
                .write(ev.clone(), crate::store::StateChange::None)
                .await
            {
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "aggregate audit record not written; retried later")
                }
            }
        }
        failed.push(ev);
    }
    if !failed.is_empty() {
        state.refusals.restore(failed);
    }
}

/// Writes finished windows every second while the KMS runs.
pub async fn flusher(state: Weak<crate::KmsState>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(st) = state.upgrade() else { break };
        flush(&st, false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_source_operation_answer_and_minute() {
        let r = Refusals::default();
        for i in 0..500 {
            r.add_at(
                600,
                "10.0.0.1:4000",
                "unwrap",
                "invalid_token",
                &format!("r{i}"),
            );
        }
        r.add_at(601, "10.0.0.2:1", "unwrap", "invalid_token", "x");
        r.add_at(605, "10.0.0.1:4001", "generate", "invalid_token", "y");
        assert!(r.take_at(630, false).is_empty(), "the minute is not over");
        let evs = r.take_at(660, false);
        assert_eq!(evs.len(), 3);
        let first = evs
            .iter()
            .find(|e| e.client == "10.0.0.1" && e.operation == "unwrap")
            .unwrap();
        assert_eq!(first.request_id, "r0");
        assert_eq!(first.identity, "-");
        assert_eq!(
            first.detail.as_deref(),
            Some("aggregated count=500 window=1970-01-01T00:10:00Z/60s")
        );
        assert!(r.take_at(660, true).is_empty());
        // A new minute starts a new window.
        r.add_at(700, "10.0.0.1:4000", "unwrap", "invalid_token", "z");
        assert_eq!(r.take_at(700, true).len(), 1);
    }

    #[test]
    fn sources_beyond_the_limit_share_one_entry() {
        let r = Refusals::default();
        for i in 0..(MAX_SOURCES + 100) {
            r.add_at(
                0,
                &format!("10.1.{}.{}:1", i / 256, i % 256),
                "generate",
                "invalid_token",
                "q",
            );
        }
        let evs = r.take_at(0, true);
        assert_eq!(evs.len(), MAX_SOURCES + 1);
        let other = evs.iter().find(|e| e.client == OTHER_SOURCES).unwrap();
        assert_eq!(
            other.detail.as_deref(),
            Some("aggregated count=100 window=1970-01-01T00:00:00Z/60s")
        );
    }
}
