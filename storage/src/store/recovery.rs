//! Start-up sweep: abort versions left `writing` by a crash (except live multipart uploads) and
//! forget aborted ones, then remove temporary files (interrupted writes) and blob files that no
//! committed row references (written but never published, or retired before a crash), listing
//! the blob store (the local `blobs/` dir or the S3 backend's prefix) against the database. Runs
//! before the node accepts requests, so nothing is in flight. Secret: none.

use std::collections::HashSet;

use super::blobs::BlobStore;
use super::meta::{DbError, Meta};

/// What the sweep removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub versions_aborted: u64,
    pub versions_forgotten: u64,
    pub tmp_removed: usize,
    pub orphans_removed: usize,
}

pub async fn sweep(meta: &Meta, blobs: &BlobStore) -> Result<SweepReport, DbError> {
    let mut report = SweepReport::default();
    let v = meta.sweep_versions().await?;
    report.versions_aborted = v.interrupted;
    report.versions_forgotten = v.forgotten;
    if let Ok(entries) = std::fs::read_dir(blobs.tmp_dir()) {
        for e in entries.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                report.tmp_removed += 1;
            }
        }
    }
    let live: HashSet<String> = meta.all_blob_files().await?.into_iter().collect();
    match blobs.list().await {
        Ok(names) => {
            for name in names.into_iter().filter(|n| !live.contains(n)) {
                blobs.remove(&name).await;
                report.orphans_removed += 1;
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing blobs failed: orphan sweep skipped"),
    }
    Ok(report)
}
