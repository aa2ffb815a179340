//! What both daemons' Prometheus metrics share, on top of the `prometheus-client` crate (each
//! daemon registers its own families): the latency buckets, and the `/metrics` answer's body and
//! content type.
//!
//! The body is OpenMetrics text (`# EOF` last; a counter family `x` is typed `x` and its samples
//! are `x_total`). A scraper that asks for OpenMetrics (`Accept: application/openmetrics-text`,
//! as Prometheus does) gets that content type; anyone else (curl, a browser) gets the same
//! text as `text/plain; version=0.0.4`, which the classic parser reads as well.
//!
//! `prometheus-client` does not escape label values: the daemons label with names of their own
//! (operation names, route templates, status codes, error codes, HTTP method tokens), never
//! with text a client chose, so no value holds a quote, backslash or newline.

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds, from 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Content type of the answer to a scraper that accepts OpenMetrics.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of the answer to anyone else.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A latency histogram with [`LATENCY_BUCKETS`] (the constructor of labelled families).
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// The content type to answer with, from the request's `Accept` header.
pub fn content_type(accept: Option<&str>) -> &'static str {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        OPENMETRICS_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    }
}

/// These registries' families, in order, then `# EOF`.
pub fn encode(registries: &[&Registry]) -> String {
    let mut out = String::new();
    for r in registries {
        // Writing to a String cannot fail; a family that fails to encode is left out.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, r);
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Op {
        op: &'static str,
        status: u16,
    }

    #[test]
    fn families_render_with_total_suffix_cumulative_buckets_and_eof() {
        let mut r = Registry::default();
        let req = Family::<Op, Counter>::default();
        let lat = Family::<Op, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        r.register("t_requests", "Requests", req.clone());
        r.register("t_seconds", "Latency", lat.clone());
        let get = Op {
            op: "GetObject",
            status: 200,
        };
        req.get_or_create(&get).inc();
        req.get_or_create(&get).inc_by(2);
        req.get_or_create(&Op {
            op: "PutObject",
            status: 500,
        })
        .inc();
        for v in [0.004, 0.5, 50.0] {
            lat.get_or_create(&get).observe(v);
        }
        let text = encode(&[&r]);
        assert!(text.contains("# TYPE t_requests counter\n"), "{text}");
        assert!(text.contains("t_requests_total{op=\"GetObject\",status=\"200\"} 3\n"));
        assert!(text.contains("t_requests_total{op=\"PutObject\",status=\"500\"} 1\n"));
        assert!(
            text.contains("t_seconds_bucket{le=\"0.005\",op=\"GetObject\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("t_seconds_bucket{le=\"+Inf\",op=\"GetObject\",status=\"200\"} 3\n"));
        assert!(text.contains("t_seconds_count{op=\"GetObject\",status=\"200\"} 3\n"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(content_type(None), TEXT_CONTENT_TYPE);
        assert_eq!(
            content_type(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            OPENMETRICS_CONTENT_TYPE
        );
    }
}
