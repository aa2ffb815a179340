//! Start-up sweep: remove temporary files (interrupted writes) and blob files that no committed
//! row references (written but never published, or retired before a crash). Runs before the
//! node accepts requests, so nothing is in flight.

use std::collections::HashSet;

use super::blobs::BlobStore;
use super::meta::{DbError, Meta};

/// What the sweep removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub tmp_removed: usize,
    pub orphans_removed: usize,
}

pub async fn sweep(meta: &Meta, blobs: &BlobStore) -> Result<SweepReport, DbError> {
    let mut report = SweepReport::default();
    if let Ok(entries) = std::fs::read_dir(blobs.tmp_dir()) {
        for e in entries.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                report.tmp_removed += 1;
            }
        }
    }
    let live: HashSet<String> = meta.all_blob_files().await?.into_iter().collect();
    if let Ok(entries) = std::fs::read_dir(blobs.blobs_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !live.contains(&name) && std::fs::remove_file(e.path()).is_ok() {
                report.orphans_removed += 1;
            }
        }
    }
    Ok(report)
}
