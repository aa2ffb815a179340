//! Bringing the buckets' wrapped data keys to the KMS's current root key version after a root
//! rotation (`docs/design.md` §3 "Rotation").
//!
//! The KMS re-wraps its registry of issued data keys itself; a storage node holds its own copy of
//! each bucket's wrapped key and learns of the newer wrapping only when it unwraps. Two paths store
//! it: [`adopt`], called when a request's unwrap was answered with a newer wrapping, and
//! [`sweep`], which walks every bucket row (the `coffer-storage rewrap` command on a stopped
//! node, and the periodic background job of `coffer-storage serve`). Each unwrap tells the KMS
//! which wrapping this node holds ("presents" it); after storing a newer wrapping the node
//! presents that one once, so that the KMS's `admin keys retire N` can tell when no node still
//! depends on version N.
//!
//! Crash safety: a wrapping is replaced by one conditional UPDATE per row (only if the row still
//! holds exactly the old wrapping), committed on its own. Killed at any point, the next sweep
//! redoes only what is left: rows already replaced are presented again (one KMS call), the rest
//! are re-wrapped. Object data and sealed object keys are never touched: the bucket key itself
//! does not change, only its 40-byte wrapping.
//!
//! Secret: the plaintext bucket keys the KMS answers, dropped (zeroized) at once; wrapped keys
//! are not secret.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use crate::crypto::envelope::Rewrapping;
use crate::crypto::key_cache::BucketKeys;
use crate::crypto::kms_client::KmsError;
use crate::state::NodeState;
use crate::store::meta::{DbError, Meta};

/// Bucket rows read per page.
const PAGE: i64 = 200;

/// Why a re-wrap step failed.
#[derive(Debug, thiserror::Error)]
pub enum RewrapError {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error("metadata store: {0}")]
    Db(#[from] DbError),
}

/// Store the newer wrapping a request's unwrap was offered, if the row still holds the old one,
/// then present it to the KMS once. `true` when this call stored it.
pub async fn adopt(
    meta: &Meta,
    keys: &BucketKeys,
    bucket_name: &str,
    bucket_id: &str,
    rw: &Rewrapping,
    request_id: &str,
) -> Result<bool, RewrapError> {
    let stored = meta
        .replace_bucket_key(
            bucket_name,
            rw.generation,
            (&rw.old.0, rw.old.1),
            (&rw.new.0, rw.new.1),
        )
        .await?;
    if stored {
        keys.present(bucket_id, &rw.new.0, rw.new.1, request_id)
            .await?;
    }
    Ok(stored)
}

/// What a sweep did and where the node stands afterwards.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Bucket rows with a wrapped key, after the sweep.
    pub rows: i64,
    /// The KMS's active root key version (as its unwraps said; else the newest stored).
    pub active_version: u32,
    /// Rows wrapped under `active_version`.
    pub at_active_version: i64,
    /// `at_active_version / rows` in percent (100 with no rows).
    pub coverage_percent: f64,
    /// Rows per root key version.
    pub per_version: BTreeMap<u32, i64>,
    /// Rows presented to the KMS (unwrapped) in this sweep.
    pub presented: u64,
    /// Rows whose newer wrapping this sweep stored.
    pub rewrapped: u64,
    /// Rows the KMS refused to unwrap (left as they were; see the node's log).
    pub failed: u64,
    pub elapsed_ms: u64,
    /// Rows handled per second.
    pub rows_per_s: f64,
}

impl Report {
    /// Every row at the active version and none failed.
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.at_active_version == self.rows
    }
}

/// Walk every bucket row with a wrapped key: present it to the KMS, store the newer wrapping it
/// answers (conditionally) and present that one. `progress(rows done)` is called after each
/// row. Stops at the first "KMS unavailable" (nothing is lost: rerun later); a row the KMS
/// refuses is counted in `failed` and left as it is.
pub async fn sweep(
    meta: &Meta,
    keys: &BucketKeys,
    mut progress: impl FnMut(u64),
) -> Result<Report, RewrapError> {
    let started = Instant::now();
    let mut report = Report::default();
    let mut active: Option<u32> = None;
    let mut done = 0u64;
    // The newest generation of each bucket's key (the bucket rows) ...
    let mut after = String::new();
    loop {
        let page = meta.wrapped_bucket_keys(&after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after.clone_from(&last.name);
        for row in page {
            sweep_row(meta, keys, row, &mut report, &mut active).await?;
            done += 1;
            progress(done);
        }
    }
    // ... and the older generations still kept for objects not yet re-sealed.
    let mut after = (String::new(), 0u32);
    loop {
        let page = meta.archived_bucket_keys((&after.0, after.1), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.id.clone(), last.generation);
        for row in page {
            sweep_row(meta, keys, row, &mut report, &mut active).await?;
            done += 1;
            progress(done);
        }
    }
    let per_version: BTreeMap<u32, i64> =
        meta.bucket_keys_per_version().await?.into_iter().collect();
    report.rows = per_version.values().sum();
    report.active_version = active
        .or_else(|| per_version.keys().next_back().copied())
        .unwrap_or(0);
    report.at_active_version = per_version
        .get(&report.active_version)
        .copied()
        .unwrap_or(0);
    report.coverage_percent = if report.rows == 0 {
        100.0
    } else {
        report.at_active_version as f64 * 100.0 / report.rows as f64
    };
    report.per_version = per_version;
    let elapsed = started.elapsed();
    report.elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    report.rows_per_s = if elapsed.as_secs_f64() > 0.0 {
        done as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    Ok(report)
}

/// One stored wrapping: present it, and store and present the newer one the KMS answers.
async fn sweep_row(
    meta: &Meta,
    keys: &BucketKeys,
    row: crate::store::bucket_keys::WrappedRow,
    report: &mut Report,
    active: &mut Option<u32>,
) -> Result<(), RewrapError> {
    let rid = format!("rewrap-{}", uuid::Uuid::new_v4());
    match keys.present(&row.id, &row.wrapped, row.version, &rid).await {
        Ok(u) => {
            report.presented += 1;
            *active = (*active).max(u.active_version);
            if let Some(new) = u.newer {
                let rw = Rewrapping {
                    generation: row.generation,
                    old: (row.wrapped, row.version),
                    new,
                };
                if adopt(meta, keys, &row.name, &row.id, &rw, &rid).await? {
                    report.rewrapped += 1;
                }
            }
        }
        Err(e) if e.is_unavailable() => return Err(e.into()),
        Err(e) => {
            report.failed += 1;
            tracing::error!(bucket = %row.name, generation = row.generation, version = row.version, error = %e, request_id = %rid, "re-wrap: the KMS refused this bucket key");
        }
    }
    Ok(())
}

/// The background job of `coffer-storage serve`: a sweep every `interval` (the first one
/// `interval` after start), then the bucket key re-seal sweep (`crate::bk_rotation`), their
/// reports logged; ends when the node's state is dropped.
pub async fn background(state: Weak<NodeState>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(st) = state.upgrade() else { return };
        if !st.keys.has_kms() {
            return;
        }
        let root = match sweep(&st.meta, &st.keys, |_| {}).await {
            Ok(r) => {
                tracing::info!(
                    rows = r.rows,
                    active_version = r.active_version,
                    coverage_percent = r.coverage_percent,
                    rewrapped = r.rewrapped,
                    failed = r.failed,
                    elapsed_ms = r.elapsed_ms,
                    "re-wrap sweep done"
                );
                Some(r)
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-wrap sweep stopped; retried next interval");
                None
            }
        };
        let objects = match crate::bk_rotation::reseal_sweep(&st.meta, &st.keys, |_| {}).await {
            Ok(r) => {
                tracing::info!(
                    rows = r.rows,
                    coverage_percent = r.coverage_percent,
                    resealed = r.resealed,
                    failed = r.failed,
                    elapsed_ms = r.elapsed_ms,
                    "bucket key re-seal sweep done"
                );
                Some(r)
            }
            Err(e) => {
                tracing::warn!(error = %e, "bucket key re-seal sweep stopped; retried next interval");
                None
            }
        };
        if let (Some(r), Some(o)) = (root, objects) {
            st.metrics.record_sweep(crate::metrics::SweepSnapshot {
                finished_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
                per_version: r.per_version.into_iter().collect(),
                root_coverage: r.coverage_percent / 100.0,
                generation_coverage: o.coverage_percent / 100.0,
                failed: r.failed + o.failed,
            });
        }
    }
}
