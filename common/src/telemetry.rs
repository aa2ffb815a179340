//! Logging setup shared by both daemons: `RUST_LOG` filters, plain or JSON lines
//! (`COFFER_LOG_FORMAT=json` or the `json` argument), written to stderr. Nothing secret is logged
//! by design; this module only configures the sink.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Safe to call more than once (later calls are no-ops).
pub fn init_logging(json: bool) {
    let json =
        json || std::env::var("COFFER_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: a log redirected to a file or a pipe stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
