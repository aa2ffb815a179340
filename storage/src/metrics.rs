//! The storage node's Prometheus metrics, registered with `prometheus-client`: S3 requests by
//! operation and status, time to response headers per operation, and the bucket-key cache and
//! KMS counters (read from the cache at scrape time), KMS calls also by encryption mode
//! (`coffer_kms_key_calls_total{mode, op}`).
//!
//! The operation is the name s3s resolved the request to (AWS's operation names): the node's
//! `S3Access` hook (see `server.rs`) writes it into the request's [`OperationSlot`] before the
//! request body is read. A form POST, which the node answers before s3s, is `PostObject`;
//! requests refused before s3s routes them (SigV2, a bad presigned query, an unreadable SSE key
//! header, a failed signature, a path s3s does not route) are `Unknown`. Label values are
//! operation names and status codes only; no bucket or object names (unbounded, and possibly
//! sensitive) reach the metrics.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use coffer_common::metrics::{encode, latency_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::crypto::key_cache::{BucketKeys, KmsCallMode, KmsOp};

/// The label of requests refused before s3s named their operation.
pub const UNKNOWN_OPERATION: &str = "Unknown";

/// Where the S3 operation's name is left for the metrics: put in the request's extensions
/// before s3s runs, filled by the access hook once s3s has routed the request.
#[derive(Clone, Default)]
pub struct OperationSlot(Arc<OnceLock<String>>);

impl OperationSlot {
    /// Record the operation (the first name sticks).
    pub fn set(&self, name: &str) {
        let _ = self.0.set(name.to_string());
    }

    /// The operation, or [`UNKNOWN_OPERATION`] when s3s never routed the request.
    pub fn name(&self) -> &str {
        self.0.get().map_or(UNKNOWN_OPERATION, String::as_str)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationStatus {
    operation: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeOp {
    mode: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Replica {
    url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RootVersion {
    root_version: u32,
}

/// What the last background sweep reported (`crate::rewrap`, `crate::bk_rotation`).
#[derive(Clone, Debug, Default)]
pub struct SweepSnapshot {
    /// Unix seconds when it finished.
    pub finished_unix: i64,
    /// Stored wrapped bucket keys per KMS root version.
    pub per_version: Vec<(u32, i64)>,
    /// Root coverage: rows at the KMS's active version / rows (1 with no rows).
    pub root_coverage: f64,
    /// Bucket key coverage: SSE-S3 objects under their bucket's newest generation / objects.
    pub generation_coverage: f64,
    /// Rows the last sweep could not handle.
    pub failed: u64,
}

/// Handles to the node's metric families.
pub struct NodeMetrics {
    registry: Registry,
    requests: Family<OperationStatus, Counter>,
    latency: Family<Operation, Histogram, fn() -> Histogram>,
    sweep: std::sync::Mutex<Option<SweepSnapshot>>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// Register the families.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<OperationStatus, Counter>::default();
        registry.register(
            "coffer_s3_requests",
            "S3 requests by operation and HTTP status.",
            requests.clone(),
        );
        let latency = Family::<Operation, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "coffer_s3_request_duration_seconds",
            "Time from request to response headers, by S3 operation.",
            latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            sweep: std::sync::Mutex::new(None),
        }
    }

    /// Keep the last background sweep's figures for `/metrics`.
    pub fn record_sweep(&self, snapshot: SweepSnapshot) {
        if let Ok(mut s) = self.sweep.lock() {
            *s = Some(snapshot);
        }
    }

    /// Count one answered request and its latency.
    pub fn observe(&self, operation: &str, status: u16, seconds: f64) {
        let operation = operation.to_string();
        self.latency
            .get_or_create(&Operation {
                operation: operation.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&OperationStatus { operation, status })
            .inc();
    }

    /// Requests counted for one operation and status.
    pub fn requests(&self, operation: &str, status: u16) -> u64 {
        self.requests
            .get(&OperationStatus {
                operation: operation.to_string(),
                status,
            })
            .map_or(0, |c| c.get())
    }

    /// Everything, including the key cache and KMS counters read now, in the OpenMetrics text
    /// format.
    pub fn render(&self, keys: &BucketKeys) -> String {
        let s = &keys.stats;
        let mut cache = Registry::default();
        let counters = [
            (
                "coffer_key_cache_hits",
                "Bucket-key lookups served from the cache.",
                s.hits.load(Relaxed),
            ),
            (
                "coffer_key_cache_misses",
                "Bucket-key lookups that needed the KMS.",
                s.misses.load(Relaxed),
            ),
            (
                "coffer_key_cache_evictions",
                "Bucket keys dropped (TTL, capacity or KMS loss) and zeroized.",
                s.evictions.load(Relaxed),
            ),
            (
                "coffer_kms_calls",
                "Calls made to the KMS (generate and unwrap).",
                s.kms_calls.load(Relaxed),
            ),
            (
                "coffer_kms_failures",
                "KMS calls that failed (unreachable, timed out or refused).",
                s.kms_failures.load(Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            cache.register(name, help, ConstCounter::new(v));
        }
        let by_mode = Family::<ModeOp, Counter>::default();
        for mode in KmsCallMode::ALL {
            for op in KmsOp::ALL {
                by_mode
                    .get_or_create(&ModeOp {
                        mode: mode.label(),
                        op: op.label(),
                    })
                    .inc_by(s.calls(mode, op));
            }
        }
        cache.register(
            "coffer_kms_key_calls",
            "KMS calls by encryption mode (sse-s3, sse-kms, sse-kms-bucket-key) and operation (generate, decrypt).",
            by_mode,
        );
        if let Some(kms) = keys.kms() {
            cache.register(
                "coffer_kms_failovers",
                "KMS calls sent again to another replica after a connect error, timeout, 5xx or 429.",
                ConstCounter::new(kms.failovers()),
            );
            let up = Family::<Replica, prometheus_client::metrics::gauge::Gauge>::default();
            for (url, healthy) in kms.replica_health() {
                up.get_or_create(&Replica { url }).set(i64::from(healthy));
            }
            cache.register(
                "coffer_kms_replica_up",
                "1 when the KMS replica answered its last health check or call, else 0.",
                up,
            );
        }
        cache.register(
            "coffer_key_cache_entries",
            "Bucket keys cached now.",
            ConstGauge::new(i64::try_from(keys.len()).unwrap_or(i64::MAX)),
        );
        if let Some(sw) = self.sweep.lock().ok().and_then(|s| s.clone()) {
            let rows = Family::<RootVersion, prometheus_client::metrics::gauge::Gauge>::default();
            for (v, n) in &sw.per_version {
                rows.get_or_create(&RootVersion { root_version: *v })
                    .set(*n);
            }
            cache.register(
                "coffer_rewrap_bucket_keys",
                "Stored wrapped bucket keys per KMS root version, as of the last background sweep.",
                rows,
            );
            cache.register(
                "coffer_rewrap_root_coverage_ratio",
                "Last background sweep: wrapped bucket keys at the KMS's active root version / all (1 = swept).",
                ConstGauge::new(sw.root_coverage),
            );
            cache.register(
                "coffer_rewrap_generation_coverage_ratio",
                "Last background sweep: SSE-S3 objects sealed under their bucket's newest key generation / all.",
                ConstGauge::new(sw.generation_coverage),
            );
            cache.register(
                "coffer_rewrap_failed_rows",
                "Rows the last background sweep could not re-wrap or re-seal.",
                ConstGauge::new(i64::try_from(sw.failed).unwrap_or(i64::MAX)),
            );
            cache.register(
                "coffer_rewrap_last_run_timestamp_seconds",
                "Unix time the last background sweep finished.",
                ConstGauge::new(sw.finished_unix),
            );
        }
        encode(&[&self.registry, &cache])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_render_with_operation_and_status() {
        let m = NodeMetrics::new();
        m.observe("PutObject", 200, 0.003);
        m.observe("PutObject", 200, 0.004);
        m.observe("GetObject", 404, 0.001);
        let keys = BucketKeys::new(None, std::time::Duration::from_secs(1), 1);
        let text = m.render(&keys);
        for want in [
            "coffer_s3_requests_total{operation=\"PutObject\",status=\"200\"} 2\n",
            "coffer_s3_requests_total{operation=\"GetObject\",status=\"404\"} 1\n",
            "coffer_s3_request_duration_seconds_bucket{le=\"0.005\",operation=\"PutObject\"} 2\n",
            "coffer_s3_request_duration_seconds_count{operation=\"PutObject\"} 2\n",
            "coffer_kms_calls_total 0\n",
            "coffer_key_cache_entries 0\n",
            "coffer_kms_key_calls_total{mode=\"sse-kms\",op=\"decrypt\"} 0\n",
            "coffer_kms_key_calls_total{mode=\"sse-kms-bucket-key\",op=\"generate\"} 0\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(m.requests("PutObject", 200), 2);
    }

    #[test]
    fn an_unfilled_slot_is_unknown_and_the_first_name_sticks() {
        let slot = OperationSlot::default();
        assert_eq!(slot.name(), UNKNOWN_OPERATION);
        slot.clone().set("GetObject");
        slot.set("PutObject");
        assert_eq!(slot.name(), "GetObject");
    }
}
