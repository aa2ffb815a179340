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

use super::db::{Tx, q};
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
    tx: &mut Tx<'_>,
    node: Option<i64>,
    version_id: &str,
    bucket: &Bucket,
    key: &str,
) -> Result<bool, DbError> {
    let now = now_ms();
    let r = q("INSERT INTO versions (version_id, bucket, key, state, created_ms, updated_ms, node) SELECT $1, $2, $3, $4, $5, $6, $9 WHERE EXISTS (SELECT 1 FROM buckets WHERE name = $7 AND id = $8)")
        .bind(version_id)
        .bind(&bucket.name)
        .bind(key)
        .bind(VersionState::Writing.as_str())
        .bind(now)
        .bind(now)
        .bind(&bucket.name)
        .bind(&bucket.id)
        .bind(node)
        .execute(tx.ex())
        .await?;
    Ok(r == 1)
}

/// `writing` → `complete` inside the publishing transaction; `false` (the caller rolls back)
/// when the version is no longer writing: while the node runs only DeleteBucket aborts a
/// version whose write is still in flight.
pub(crate) async fn complete_tx(tx: &mut Tx<'_>, version_id: &str) -> Result<bool, DbError> {
    let r =
        q("UPDATE versions SET state = $1, updated_ms = $2 WHERE version_id = $3 AND state = $4")
            .bind(VersionState::Complete.as_str())
            .bind(now_ms())
            .bind(version_id)
            .bind(VersionState::Writing.as_str())
            .execute(tx.ex())
            .await?;
    Ok(r == 1)
}

/// Forget every aborted version (nothing reads them: only `writing` rows can be published).
pub(crate) async fn forget_aborted_tx(tx: &mut Tx<'_>) -> Result<u64, DbError> {
    let r = q("DELETE FROM versions WHERE state = $1")
        .bind(VersionState::Aborted.as_str())
        .execute(tx.ex())
        .await?;
    Ok(r)
}

/// Abort every `writing` version of a bucket (inside DeleteBucket's transaction).
pub(crate) async fn abort_bucket_tx(tx: &mut Tx<'_>, bucket: &str) -> Result<u64, DbError> {
    let r = q("UPDATE versions SET state = $1, updated_ms = $2 WHERE bucket = $3 AND state = $4")
        .bind(VersionState::Aborted.as_str())
        .bind(now_ms())
        .bind(bucket)
        .bind(VersionState::Writing.as_str())
        .execute(tx.ex())
        .await?;
    Ok(r)
}

/// `writing` → `aborted` (no-op in any other state).
pub(crate) async fn abort_tx(tx: &mut Tx<'_>, version_id: &str) -> Result<(), DbError> {
    q("UPDATE versions SET state = $1, updated_ms = $2 WHERE version_id = $3 AND state = $4")
        .bind(VersionState::Aborted.as_str())
        .bind(now_ms())
        .bind(version_id)
        .bind(VersionState::Writing.as_str())
        .execute(tx.ex())
        .await?;
    Ok(())
}

/// Abort the `writing` versions whose writer is gone, except live multipart uploads. `shared`
/// (PostgreSQL, several nodes): only those of nodes that hold no lease (`db::NodeLease`), so a
/// live node's writes in flight, this node's included, are never touched; else (SQLite, one
/// node, before it serves) every one.
pub(crate) async fn abort_interrupted_tx(tx: &mut Tx<'_>, shared: bool) -> Result<u64, DbError> {
    let stmt = if shared {
        q("UPDATE versions SET state = $1, updated_ms = $2 WHERE state = $3 AND version_id NOT IN (SELECT version_id FROM uploads WHERE completed_etag IS NULL) AND (node IS NULL OR node NOT IN (SELECT CAST(objid AS BIGINT) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND CAST(classid AS BIGINT) = $4 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())))")
    } else {
        q("UPDATE versions SET state = $1, updated_ms = $2 WHERE state = $3 AND version_id NOT IN (SELECT version_id FROM uploads WHERE completed_etag IS NULL)")
    }
    .bind(VersionState::Aborted.as_str())
    .bind(now_ms())
    .bind(VersionState::Writing.as_str());
    if shared {
        stmt.bind(i64::from(super::db::NODE_LOCK_CLASS))
    } else {
        stmt
    }
    .execute(tx.ex())
    .await
}

/// A retired (overwritten or deleted) complete version leaves no row.
pub(crate) async fn forget_tx(tx: &mut Tx<'_>, version_id: &str) -> Result<(), DbError> {
    q("DELETE FROM versions WHERE version_id = $1")
        .bind(version_id)
        .execute(tx.ex())
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
        let mut tx = w.single().await?;
        let inserted = insert_writing(&mut tx, self.node(), version_id, bucket, key).await?;
        tx.commit().await?;
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
        let mut tx = w.single().await?;
        abort_tx(&mut tx, version_id).await?;
        tx.commit().await?;
        w.done();
        Ok(())
    }

    pub async fn version_state(&self, version_id: &str) -> Result<Option<VersionState>, DbError> {
        let s: Option<String> = q("SELECT state FROM versions WHERE version_id = $1")
            .bind(version_id)
            .scalar_optional(self.reader())
            .await?;
        Ok(s.as_deref().and_then(VersionState::parse))
    }

    /// Start-up: every `writing` version without a live upload was interrupted; abort it, then
    /// forget all aborted rows. Runs before requests are accepted. On PostgreSQL, other nodes
    /// may be serving: only the versions of nodes that no longer hold their lease (see
    /// `db::NodeLease`) were interrupted; a live node's in-flight writes are left alone.
    pub async fn sweep_versions(&self) -> Result<VersionSweep, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let interrupted = abort_interrupted_tx(&mut tx, self.is_shared()).await?;
        let forgotten = forget_aborted_tx(&mut tx).await?;
        tx.commit().await?;
        w.done();
        Ok(VersionSweep {
            interrupted,
            forgotten,
        })
    }
}
