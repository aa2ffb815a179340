//! Object version states: `writing` → `complete` | `aborted`. A version row is written before
//! the first blob byte of a PutObject/CopyObject (or with the multipart upload it belongs to),
//! flipped to `complete` in the same transaction that publishes the object, and to `aborted`
//! when the write fails, the request future is dropped (client gone), the upload is aborted, or
//! the node restarts with the write unfinished, or its bucket is deleted. Only complete versions
//! are visible: `objects` holds exactly the complete, current ones, and a version that is not
//! `writing` can never be published. A write's row is inserted only once the key that seals it
//! is in hand (a KMS outage writes no rows). Aborted rows are forgotten by the start-up sweep
//! and by the periodic prune ([`Meta::prune`]).
//!
//! Secret: none. Atomic: each transition is one statement or part of the publishing transaction.

use super::meta::{Bucket, DbError, Meta, now_ms};

/// The state of an object version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    Writing,
    Complete,
    Aborted,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Writing => "writing",
            VersionState::Complete => "complete",
            VersionState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "writing" => Some(VersionState::Writing),
            "complete" => Some(VersionState::Complete),
            "aborted" => Some(VersionState::Aborted),
            _ => None,
        }
    }
}

/// What the start-up sweep did to version rows.
#[derive(Debug, Default, Clone, Copy)]
pub struct VersionSweep {
    /// `writing` versions without a live multipart upload, now aborted.
    pub interrupted: u64,
    /// Aborted rows forgotten (their blobs are unreferenced and removed by the file sweep).
    pub forgotten: u64,
}

/// A version being written. Dropping it without [`WritingVersion::published`] marks the version
/// aborted (in a background task, since `Drop` cannot wait).
pub struct WritingVersion {
    meta: Meta,
    version_id: String,
    open: bool,
}

impl WritingVersion {
    pub fn version_id(&self) -> &str {
        &self.version_id
    }

    /// The publishing transaction committed: nothing to undo.
    pub fn published(mut self) {
        self.open = false;
    }
}

impl Drop for WritingVersion {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let meta = self.meta.clone();
        let id = std::mem::take(&mut self.version_id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = meta.abort_version(&id).await {
                    tracing::warn!(version = %id, error = %e, "marking version aborted failed");
                }
            });
        }
    }
}

/// Insert a `writing` version of `key` in `bucket`, only if that very bucket (name and id) still
/// exists; `false` when it is gone (deleted, or deleted and re-created). DeleteBucket aborts
/// the `writing` versions of the bucket it removes, in its transaction, so a version either
/// starts before the delete and is aborted by it, or finds no bucket: a write racing
/// DeleteBucket can never publish into the deleted bucket or a re-created one (issue 11 E18).
pub(crate) async fn insert_writing(
    conn: &mut sqlx::SqliteConnection,
    version_id: &str,
    bucket: &Bucket,
    key: &str,
) -> Result<bool, DbError> {
    let now = now_ms();
    let r = sqlx::query("INSERT INTO versions (version_id, bucket, key, state, created_ms, updated_ms) SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM buckets WHERE name = ? AND id = ?)")
        .bind(version_id)
        .bind(&bucket.name)
        .bind(key)
        .bind(VersionState::Writing.as_str())
        .bind(now)
        .bind(now)
        .bind(&bucket.name)
        .bind(&bucket.id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// `writing` → `complete` inside the publishing transaction; `false` (the caller rolls back)
/// when the version is no longer writing: while the node runs only DeleteBucket aborts a
/// version whose write is still in flight.
pub(crate) async fn complete_tx(
    conn: &mut sqlx::SqliteConnection,
    version_id: &str,
) -> Result<bool, DbError> {
    let r = sqlx::query(
        "UPDATE versions SET state = ?, updated_ms = ? WHERE version_id = ? AND state = ?",
    )
    .bind(VersionState::Complete.as_str())
    .bind(now_ms())
    .bind(version_id)
    .bind(VersionState::Writing.as_str())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Forget every aborted version (nothing reads them: only `writing` rows can be published).
pub(crate) async fn forget_aborted_tx(conn: &mut sqlx::SqliteConnection) -> Result<u64, DbError> {
    let r = sqlx::query("DELETE FROM versions WHERE state = ?")
        .bind(VersionState::Aborted.as_str())
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

/// Abort every `writing` version of a bucket (inside DeleteBucket's transaction).
pub(crate) async fn abort_bucket_tx(
    conn: &mut sqlx::SqliteConnection,
    bucket: &str,
) -> Result<u64, DbError> {
    let r =
        sqlx::query("UPDATE versions SET state = ?, updated_ms = ? WHERE bucket = ? AND state = ?")
            .bind(VersionState::Aborted.as_str())
            .bind(now_ms())
            .bind(bucket)
            .bind(VersionState::Writing.as_str())
            .execute(conn)
            .await?;
    Ok(r.rows_affected())
}

/// `writing` → `aborted` (no-op in any other state).
pub(crate) async fn abort_tx(
    conn: &mut sqlx::SqliteConnection,
    version_id: &str,
) -> Result<(), DbError> {
    sqlx::query("UPDATE versions SET state = ?, updated_ms = ? WHERE version_id = ? AND state = ?")
        .bind(VersionState::Aborted.as_str())
        .bind(now_ms())
        .bind(version_id)
        .bind(VersionState::Writing.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// A retired (overwritten or deleted) complete version leaves no row.
pub(crate) async fn forget_tx(
    conn: &mut sqlx::SqliteConnection,
    version_id: &str,
) -> Result<(), DbError> {
    sqlx::query("DELETE FROM versions WHERE version_id = ?")
        .bind(version_id)
        .execute(conn)
        .await?;
    Ok(())
}

impl Meta {
    /// A fresh version id.
    pub fn new_version_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Record version `version_id` of `key` as `writing` before any of its bytes are written;
    /// `None` when the bucket is gone (see [`insert_writing`]).
    pub async fn begin_version(
        &self,
        bucket: &Bucket,
        key: &str,
        version_id: &str,
    ) -> Result<Option<WritingVersion>, DbError> {
        let mut w = self.write_conn().await?;
        let inserted = insert_writing(&mut w, version_id, bucket, key).await?;
        w.done();
        Ok(inserted.then(|| WritingVersion {
            meta: self.clone(),
            version_id: version_id.to_string(),
            open: true,
        }))
    }

    /// Mark a version aborted if it is still being written.
    pub async fn abort_version(&self, version_id: &str) -> Result<(), DbError> {
        let mut w = self.write_conn().await?;
        abort_tx(&mut w, version_id).await?;
        w.done();
        Ok(())
    }

    pub async fn version_state(&self, version_id: &str) -> Result<Option<VersionState>, DbError> {
        let s: Option<String> =
            sqlx::query_scalar("SELECT state FROM versions WHERE version_id = ?")
                .bind(version_id)
                .fetch_optional(self.reader())
                .await?;
        Ok(s.as_deref().and_then(VersionState::parse))
    }

    /// Start-up: every `writing` version without a live upload was interrupted; abort it, then
    /// forget all aborted rows. Runs before requests are accepted.
    pub async fn sweep_versions(&self) -> Result<VersionSweep, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let interrupted = sqlx::query("UPDATE versions SET state = ?, updated_ms = ? WHERE state = ? AND version_id NOT IN (SELECT version_id FROM uploads WHERE completed_etag IS NULL)")
            .bind(VersionState::Aborted.as_str())
            .bind(now_ms())
            .bind(VersionState::Writing.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let forgotten = forget_aborted_tx(&mut tx).await?;
        tx.commit().await?;
        w.done();
        Ok(VersionSweep {
            interrupted,
            forgotten,
        })
    }
}
