//! Orphan sweeps. At start-up: abort versions left `writing` by a crash (except live multipart
//! uploads) and forget aborted ones, then remove temporary files (interrupted writes) and blob
//! files that no committed row references (written but never published, or retired before a
//! crash), listing the blob store (the local `blobs/` dir or the S3 backend's prefix) against
//! the database. Periodically while serving ([`periodic`]): the same for blobs and `tmp/`, without
//! touching versions.
//!
//! The grace rule (several nodes): a blob is uploaded to the backend before the row that
//! references it commits, so on a blob store that several nodes share (the S3 backend) an
//! unreferenced blob may be another live node's write in flight. A sweep removes an
//! unreferenced blob only when its last-modified time is older than the grace period
//! (`orphan_grace_secs`, default [`DEFAULT_GRACE`]), and the backend is listed before the
//! database is read, so a blob whose row committed before the read is never taken for an orphan.
//! Incomplete backend multipart uploads under the prefix (a node killed mid-upload) are aborted
//! by the same rule, once both their initiation time and the first sweep of this process that
//! saw them are older than the grace (moto, for one, answers a fixed initiation time in 2010), so
//! at start-up only with no grace.
//! Only the node's own `blobs/` and `tmp/` (its data dir is locked, nothing is in flight before
//! it serves) are cleared without grace at start-up. Secret: none.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use super::blobs::BlobStore;
use super::meta::{DbError, Meta};

/// How old an unreferenced blob on a shared store must be before a sweep removes it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What the sweep removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub versions_aborted: u64,
    pub versions_forgotten: u64,
    pub tmp_removed: usize,
    pub orphans_removed: usize,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub orphans_kept_young: usize,
    /// Incomplete backend multipart uploads older than the grace period, aborted.
    pub uploads_aborted: usize,
}

/// The start-up sweep with the default grace period.
pub async fn sweep(meta: &Meta, blobs: &BlobStore) -> Result<SweepReport, DbError> {
    sweep_at_start(meta, blobs, DEFAULT_GRACE).await
}

/// The start-up sweep: versions, this node's `tmp/`, and orphan blobs (with `grace` on a shared
/// store).
pub async fn sweep_at_start(
    meta: &Meta,
    blobs: &BlobStore,
    grace: Duration,
) -> Result<SweepReport, DbError> {
    let mut report = SweepReport::default();
    let v = meta.sweep_versions().await?;
    report.versions_aborted = v.interrupted;
    report.versions_forgotten = v.forgotten;
    let own_grace = Duration::ZERO;
    report.tmp_removed = sweep_tmp(blobs, own_grace, SystemTime::now());
    let blob_grace = if blobs.is_shared() { grace } else { own_grace };
    sweep_blobs(meta, blobs, blob_grace, SystemTime::now(), &mut report).await?;
    Ok(report)
}

/// A sweep while serving: `tmp/` and orphan blobs older than `grace` as of `now` (versions are
/// left alone: requests are in flight).
pub async fn sweep_orphans(
    meta: &Meta,
    blobs: &BlobStore,
    grace: Duration,
    now: SystemTime,
) -> Result<SweepReport, DbError> {
    let mut report = SweepReport {
        tmp_removed: sweep_tmp(blobs, grace, now),
        ..SweepReport::default()
    };
    sweep_blobs(meta, blobs, grace, now, &mut report).await?;
    Ok(report)
}

/// True when `modified` lies more than `grace` before `now`.
fn older_than(modified: SystemTime, grace: Duration, now: SystemTime) -> bool {
    now.duration_since(modified).is_ok_and(|age| age > grace) || grace.is_zero()
}

/// Remove files under `tmp/` older than `grace`; how many.
fn sweep_tmp(blobs: &BlobStore, grace: Duration, now: SystemTime) -> usize {
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(blobs.tmp_dir()) {
        for e in entries.flatten() {
            let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(now);
            if older_than(modified, grace, now) && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

async fn sweep_blobs(
    meta: &Meta,
    blobs: &BlobStore,
    grace: Duration,
    now: SystemTime,
    report: &mut SweepReport,
) -> Result<(), DbError> {
    // List first: a blob whose row commits before the database is read below is seen live.
    let listed = match blobs.list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "listing blobs failed: orphan sweep skipped");
            return Ok(());
        }
    };
    let live: HashSet<String> = meta.all_blob_files().await?.into_iter().collect();
    for (name, modified) in listed.into_iter().filter(|(n, _)| !live.contains(n)) {
        if older_than(modified, grace, now) {
            blobs.remove(&name).await;
            report.orphans_removed += 1;
        } else {
            report.orphans_kept_young += 1;
        }
    }
    match blobs.abort_stale_uploads(grace, now).await {
        Ok(n) => report.uploads_aborted = n,
        Err(e) => tracing::warn!(error = %e, "aborting stale backend multipart uploads failed"),
    }
    Ok(())
}

/// Run [`sweep_orphans`] every `every` while the state lives.
pub fn periodic(state: std::sync::Weak<crate::state::NodeState>, every: Duration, grace: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(st) = state.upgrade() else { break };
            match sweep_orphans(&st.meta, &st.blobs, grace, SystemTime::now()).await {
                Ok(r) if r.orphans_removed + r.tmp_removed + r.uploads_aborted > 0 => {
                    tracing::info!(
                        orphans = r.orphans_removed,
                        tmp = r.tmp_removed,
                        backend_uploads_aborted = r.uploads_aborted,
                        kept_young = r.orphans_kept_young,
                        "orphan sweep removed unreferenced blobs"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
            }
        }
    });
}
