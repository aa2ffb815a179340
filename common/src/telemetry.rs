//! Logging setup shared by both daemons: `RUST_LOG` filters, plain or JSON lines
//! (`COFFER_LOG_FORMAT=json` or the `json` argument), written to stderr. Nothing secret is logged
//! by design; this module only configures the sink.
//!
//! Secret: the `s3s` crate logs whole requests and responses (every header: `Authorization`,
//! SSE-C keys) and POST form fields at DEBUG and TRACE, so events and spans of `s3s` above INFO
//! are dropped whatever `RUST_LOG` asks for (issue 11 B7).

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
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
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log redirected to a file or a pipe stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let layer: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(env.and(filter_fn(may_log))))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

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
