//! Logging setup shared by both daemons: `RUST_LOG` filters, plain or JSON lines
//! (`COFFER_LOG_FORMAT=json` or the `json` argument), written to stderr. Nothing secret is logged
//! by design; this module only configures the sink.
//!
//! Secret: the `s3s` crate logs whole requests and responses (every header: `Authorization`,
//! SSE-C keys) and POST form fields at DEBUG and TRACE, so events and spans of `s3s` above INFO
//! are dropped whatever `RUST_LOG` asks for (issue 11 B7).

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Crates whose verbose logs carry request secrets: never more verbose than INFO.
const CAPPED_AT_INFO: &[&str] = &["s3s"];

/// Whether an event or span may be logged at all, whatever the filter says.
pub fn may_log(meta: &Metadata<'_>) -> bool {
    let capped = CAPPED_AT_INFO.iter().any(|c| {
        meta.target()
            .strip_prefix(c)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !(capped && *meta.level() > Level::INFO)
}

/// Install the global subscriber. Safe to call more than once (later calls are no-ops).
pub fn init_logging(json: bool) {
    let json =
        json || std::env::var("COFFER_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = subscriber(json, env, ansi, std::io::stderr).try_init();
}

/// The subscriber: `env` and [`may_log`] filter every event, then one fmt layer writes it.
///
/// Global filters, not per-layer ones: a per-layer filter keeps each callsite's verdict in a
/// thread-local between `enabled` and the event, and a library that asks `enabled!` without
/// emitting (sqlx's query logger does) left it stale, so the next INFO event on that thread was
/// dropped (the start-up sweep's report was missing on PostgreSQL).
fn subscriber<W>(json: bool, env: EnvFilter, ansi: bool, writer: W) -> impl tracing::Subscriber
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // Colour codes only on a terminal: a log redirected to a file or a pipe stays plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    tracing_subscriber::registry()
        .with(layer)
        .with(env)
        .with(filter_fn(may_log))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library asking whether a level the filter refuses is enabled, without emitting (sqlx's
    /// `log::log_enabled!(target: "sqlx::query", Debug)`, which the `log` bridge answers through
    /// `Dispatch::enabled`), must not make the next event on the same thread vanish (it did
    /// with per-layer filters: the start-up sweep's report was missing on PostgreSQL).
    #[test]
    fn an_enabled_probe_does_not_drop_the_next_event() {
        struct Cs;
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static CS: Cs = Cs;
        let probe = Metadata::new(
            "log record",
            "sqlx::query",
            Level::DEBUG,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
            tracing::metadata::Kind::EVENT,
        );
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::ErrorKind::Other)?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber(false, EnvFilter::new("info"), false, move || buf.clone());
        tracing::subscriber::with_default(sub, || {
            for i in 0..3 {
                assert!(!tracing::dispatcher::get_default(|d| d.enabled(&probe)));
                tracing::info!(target: "coffer_test", n = i, "visible event");
                tracing::debug!(target: "coffer_test", "filtered event");
            }
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("visible event").count(), 3, "{text}");
        assert!(!text.contains("filtered event"), "{text}");
    }

    #[test]
    fn s3s_is_capped_at_info_others_are_not() {
        struct Cs;
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static CS: Cs = Cs;
        let meta = |target: &'static str, level: Level| {
            Metadata::new(
                "e",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
                tracing::metadata::Kind::EVENT,
            )
        };
        assert!(!may_log(&meta("s3s::service", Level::DEBUG)));
        assert!(!may_log(&meta("s3s", Level::TRACE)));
        assert!(may_log(&meta("s3s::ops", Level::ERROR)));
        assert!(may_log(&meta("s3s::ops", Level::INFO)));
        assert!(may_log(&meta("s3s_other", Level::DEBUG)));
        assert!(may_log(&meta("coffer_storage::s3", Level::DEBUG)));
    }
}
