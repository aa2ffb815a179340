//! A small Prometheus registry shared by both daemons: labelled counters, gauges and
//! histograms, rendered in the text exposition format (version 0.0.4) for `/metrics`.
//!
//! Families are registered once at start-up and updated lock-free for the unlabelled case and
//! under a short mutex for labelled series. Label values must never carry secrets; callers pass
//! operation names, status codes and results, not keys or object names.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Latency buckets in seconds, from 0.5 ms to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Content type of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A counter family keyed by label values.
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    /// Add one to the series with these label values (in the family's label order).
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// Add `n` to the series with these label values.
    pub fn add(&self, values: &[&str], n: u64) {
        let mut s = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<String> = values.iter().map(|v| (*v).to_string()).collect();
        *s.entry(key).or_insert(0) += n;
    }

    /// Current value of one series (0 when never touched).
    pub fn get(&self, values: &[&str]) -> u64 {
        let s = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<String> = values.iter().map(|v| (*v).to_string()).collect();
        s.get(&key).copied().unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let s = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        for (values, n) in s.iter() {
            let _ = writeln!(
                out,
                "{}{} {n}",
                self.name,
                labels(self.labels, values, None)
            );
        }
    }
}

/// An unlabelled counter that can also be read back (for example by tests and benchmarks).
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// An unlabelled gauge.
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicI64,
}

impl Gauge {
    /// Set the value.
    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// Cumulative bucket counts, sum and count of one histogram series.
struct HistogramSeries {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A histogram family keyed by label values.
pub struct HistogramVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    bounds: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, HistogramSeries>>,
}

impl HistogramVec {
    /// Record one observation (seconds, for latency histograms).
    pub fn observe(&self, values: &[&str], v: f64) {
        let mut s = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<String> = values.iter().map(|v| (*v).to_string()).collect();
        let e = s.entry(key).or_insert_with(|| HistogramSeries {
            buckets: vec![0; self.bounds.len()],
            sum: 0.0,
            count: 0,
        });
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            e.buckets[i] += 1;
        }
        e.sum += v;
        e.count += 1;
    }

    /// Number of observations of one series.
    pub fn count(&self, values: &[&str]) -> u64 {
        let s = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<String> = values.iter().map(|v| (*v).to_string()).collect();
        s.get(&key).map_or(0, |h| h.count)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let s = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        for (values, h) in s.iter() {
            let mut cumulative = 0;
            for (bound, n) in self.bounds.iter().zip(&h.buckets) {
                cumulative += n;
                let le = format!("{bound}");
                let _ = writeln!(
                    out,
                    "{}_bucket{} {cumulative}",
                    self.name,
                    labels(self.labels, values, Some(&le))
                );
            }
            let inf = labels(self.labels, values, Some("+Inf"));
            let plain = labels(self.labels, values, None);
            let _ = writeln!(out, "{}_bucket{inf} {}", self.name, h.count);
            let _ = writeln!(out, "{}_sum{plain} {}", self.name, h.sum);
            let _ = writeln!(out, "{}_count{plain} {}", self.name, h.count);
        }
    }
}

enum Family {
    Counter(Arc<Counter>),
    CounterVec(Arc<CounterVec>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<HistogramVec>),
}

/// The metric families of one process, rendered in registration order.
#[derive(Default)]
pub struct Registry {
    families: Mutex<Vec<Family>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, f: Family) {
        self.families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(f);
    }

    /// Register an unlabelled counter.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Arc<Counter> {
        let c = Arc::new(Counter {
            name,
            help,
            value: AtomicU64::new(0),
        });
        self.push(Family::Counter(c.clone()));
        c
    }

    /// Register a labelled counter family.
    pub fn counter_vec(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Arc<CounterVec> {
        let c = Arc::new(CounterVec {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        });
        self.push(Family::CounterVec(c.clone()));
        c
    }

    /// Register a gauge.
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Arc<Gauge> {
        let g = Arc::new(Gauge {
            name,
            help,
            value: AtomicI64::new(0),
        });
        self.push(Family::Gauge(g.clone()));
        g
    }

    /// Register a histogram family with these upper bounds (ascending).
    pub fn histogram_vec(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Arc<HistogramVec> {
        let h = Arc::new(HistogramVec {
            name,
            help,
            labels,
            bounds,
            series: Mutex::new(BTreeMap::new()),
        });
        self.push(Family::Histogram(h.clone()));
        h
    }

    /// Every family in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        for f in families.iter() {
            match f {
                Family::Counter(c) => c.render(&mut out),
                Family::CounterVec(c) => c.render(&mut out),
                Family::Gauge(g) => g.render(&mut out),
                Family::Histogram(h) => h.render(&mut out),
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{a="x",b="y"}` (with `le` last when given), escaping `\`, `"` and newlines.
fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let r = Registry::new();
        let req = r.counter_vec("t_requests_total", "Requests.", &["op", "status"]);
        let lat = r.histogram_vec("t_seconds", "Latency.", &["op"], &[0.1, 1.0]);
        let g = r.gauge("t_sealed", "Sealed.");
        let c = r.counter("t_plain_total", "Plain.");
        req.inc(&["GetObject", "200"]);
        req.add(&["GetObject", "200"], 2);
        req.inc(&["Put\"x", "500"]);
        lat.observe(&["GetObject"], 0.05);
        lat.observe(&["GetObject"], 0.5);
        lat.observe(&["GetObject"], 5.0);
        g.set(1);
        c.inc();
        let text = r.render();
        assert!(text.contains("# TYPE t_requests_total counter\n"));
        assert!(text.contains("t_requests_total{op=\"GetObject\",status=\"200\"} 3\n"));
        assert!(text.contains("t_requests_total{op=\"Put\\\"x\",status=\"500\"} 1\n"));
        assert!(text.contains("t_seconds_bucket{op=\"GetObject\",le=\"0.1\"} 1\n"));
        assert!(text.contains("t_seconds_bucket{op=\"GetObject\",le=\"1\"} 2\n"));
        assert!(text.contains("t_seconds_bucket{op=\"GetObject\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("t_seconds_count{op=\"GetObject\"} 3\n"));
        assert!(text.contains("t_seconds_sum{op=\"GetObject\"} 5.55\n"));
        assert!(text.contains("t_sealed 1\n"));
        assert!(text.contains("t_plain_total 1\n"));
        assert_eq!(req.get(&["GetObject", "200"]), 3);
        assert_eq!(lat.count(&["GetObject"]), 3);
    }
}
