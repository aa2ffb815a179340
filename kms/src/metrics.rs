//! Prometheus metrics of the KMS (`GET /metrics`), registered with `prometheus-client`:
//! requests by route, method and status with latency histograms, key operations by type and
//! result, audit write latency and failures, and the sealed / audit-healthy state.
//!
//! Nothing secret: labels are route templates (`/v1/admin/clients/{name}/revoke`, never the
//! name), methods, status codes, operation names and stable error codes; never bucket ids,
//! identities, keys or tokens. The route is unauthenticated (see README: serve it on a private
//! port with `--metrics-listen`, or scrape it through TLS).

use std::time::Duration;

use coffer_common::metrics::{encode, latency_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyOperationLabels {
    operation: &'static str,
    result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The KMS's metric families.
pub struct KmsMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: HistogramFamily<RouteLabels>,
    key_operations: Family<KeyOperationLabels, Counter>,
    audit: AuditObserver,
    sealed: Gauge,
    audit_healthy: Gauge,
}

/// What the audit log reports about each write: its latency (queueing and the group commit)
/// and whether it failed (the operation was refused with 503).
#[derive(Clone)]
pub struct AuditObserver {
    seconds: Histogram,
    failures: Counter,
}

impl AuditObserver {
    /// Record one audit write.
    pub fn observe(&self, elapsed: Duration, ok: bool) {
        self.seconds.observe(elapsed.as_secs_f64());
        if !ok {
            self.failures.inc();
        }
    }
}

impl Default for KmsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl KmsMetrics {
    /// Register every family.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "coffer_kms_requests",
            "HTTP requests by route template, method and status.",
            requests.clone(),
        );
        let request_seconds =
            HistogramFamily::<RouteLabels>::new_with_constructor(latency_histogram as fn() -> _);
        r.register(
            "coffer_kms_request_duration_seconds",
            "HTTP request latency by route template (audit write included).",
            request_seconds.clone(),
        );
        let key_operations = Family::<KeyOperationLabels, Counter>::default();
        r.register(
            "coffer_kms_key_operations",
            "Key operations (generate, unwrap, rotate, seal, client_certificate) by result: ok or the error code.",
            key_operations.clone(),
        );
        let audit = AuditObserver {
            seconds: latency_histogram(),
            failures: Counter::default(),
        };
        r.register(
            "coffer_kms_audit_write_duration_seconds",
            "Time from submitting an audit record to its durable commit.",
            audit.seconds.clone(),
        );
        r.register(
            "coffer_kms_audit_write_failures",
            "Audit records that could not be made durable (their operations were refused with 503).",
            audit.failures.clone(),
        );
        let sealed = Gauge::default();
        r.register(
            "coffer_kms_sealed",
            "1 when the root keys are not in memory (key operations answer 503).",
            sealed.clone(),
        );
        let audit_healthy = Gauge::default();
        r.register(
            "coffer_kms_audit_healthy",
            "1 when the last audit commit succeeded.",
            audit_healthy.clone(),
        );
        Self {
            registry: r,
            requests,
            request_seconds,
            key_operations,
            audit,
            sealed,
            audit_healthy,
        }
    }

    /// The handle the audit log reports to.
    pub fn audit_observer(&self) -> AuditObserver {
        self.audit.clone()
    }

    /// Record one answered request. `error_code` is the stable code of a failure.
    pub fn observe_request(
        &self,
        route: &str,
        method: &str,
        status: u16,
        error_code: Option<&str>,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        if let Some(operation) = key_operation(route, method) {
            let result = error_code.unwrap_or(if status < 400 { "ok" } else { "error" });
            self.key_operations
                .get_or_create(&KeyOperationLabels {
                    operation,
                    result: result.to_string(),
                })
                .inc();
        }
    }

    /// Every family, with the state gauges read now, in the OpenMetrics text format.
    pub fn render(&self, sealed: bool, audit_healthy: bool) -> String {
        self.sealed.set(i64::from(sealed));
        self.audit_healthy.set(i64::from(audit_healthy));
        encode(&[&self.registry])
    }
}

/// The key operation a route performs, if any.
fn key_operation(route: &str, method: &str) -> Option<&'static str> {
    use coffer_common::kms_api as api;
    if method != "POST" {
        return None;
    }
    match route {
        api::PATH_GENERATE => Some("generate"),
        api::PATH_UNWRAP => Some("unwrap"),
        api::PATH_KMS_GENERATE => Some("kms_generate_data_key"),
        api::PATH_KMS_DECRYPT => Some("kms_decrypt"),
        api::PATH_KMS_DESCRIBE => Some("kms_describe_key"),
        api::PATH_ADMIN_ROTATE => Some("rotate"),
        api::PATH_ADMIN_SEAL => Some("seal"),
        "/v1/admin/clients/{name}/certificate" => Some("client_certificate"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_key_operations_and_state_render() {
        let m = KmsMetrics::new();
        let d = Duration::from_millis(3);
        m.observe_request("/v1/keys/unwrap", "POST", 200, None, d);
        m.observe_request("/v1/keys/unwrap", "POST", 400, Some("unwrap_failed"), d);
        m.observe_request("/health", "GET", 200, None, d);
        m.observe_request("/v1/kms/decrypt", "POST", 400, Some("context_mismatch"), d);
        m.audit_observer().observe(d, true);
        m.audit_observer().observe(d, false);
        let text = m.render(true, false);
        for want in [
            "coffer_kms_requests_total{route=\"/v1/keys/unwrap\",method=\"POST\",status=\"400\"} 1\n",
            "coffer_kms_key_operations_total{operation=\"unwrap\",result=\"ok\"} 1\n",
            "coffer_kms_key_operations_total{operation=\"unwrap\",result=\"unwrap_failed\"} 1\n",
            "coffer_kms_request_duration_seconds_count{route=\"/health\"} 1\n",
            "coffer_kms_key_operations_total{operation=\"kms_decrypt\",result=\"context_mismatch\"} 1\n",
            "coffer_kms_audit_write_duration_seconds_count 2\n",
            "coffer_kms_audit_write_failures_total 1\n",
            "coffer_kms_sealed 1\n",
            "coffer_kms_audit_healthy 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
