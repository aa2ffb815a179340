//! Retiring a root key version (`coffer-kms admin keys retire N`) and the record it relies on:
//! the version of the wrapping a storage node last presented for each data key.
//!
//! A version may be retired only when nothing the KMS knows of depends on it: no registered data
//! key is currently wrapped under it (the background re-wrap has moved every key), and no data
//! key's last presented wrapping is under it (every storage node has swept, storing the newer
//! wrapping and presenting it once). The active version is never retired. The check and the
//! deletion of the sealed root key row happen in the transaction of the audit record, so an
//! unwrap that presents the old version cannot slip in between. Data bytes are never touched.
//!
//! Secret: nothing here; the root key row is deleted sealed, and the keyring drops its copy.

use crate::store::{ApplyError, ChangeError, Db, DbConn};
use crate::{on_conn, on_db};

/// Remember that a storage node presented a wrapping of `data_key_id` under `version`
/// (same transaction as the unwrap's audit record).
pub async fn record_presented(
    conn: &mut DbConn,
    data_key_id: i64,
    version: u32,
) -> Result<(), sqlx::Error> {
    on_conn!(conn, c => sqlx::query("UPDATE data_keys SET presented_version = $1 WHERE id = $2")
        .bind(i64::from(version))
        .bind(data_key_id)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Data keys per version of the wrapping last presented for them.
pub async fn keys_per_presented_version(pool: &Db) -> Result<Vec<(u32, i64)>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = on_db!(pool, p => sqlx::query_as("SELECT presented_version, COUNT(*) FROM data_keys WHERE presented_version IS NOT NULL GROUP BY presented_version")
        .fetch_all(p)
        .await)?;
    Ok(rows.into_iter().map(|(v, n)| (v as u32, n)).collect())
}

/// What depends on a root key version: data keys wrapped under it, and data keys whose last
/// presented wrapping is under it.
pub async fn dependents(conn: &mut DbConn, version: u32) -> Result<(i64, i64), sqlx::Error> {
    on_conn!(conn, c => {
        let wrapped: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_keys WHERE cur_version = $1")
            .bind(i64::from(version))
            .fetch_one(&mut *c)
            .await?;
        let presented: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM data_keys WHERE presented_version = $1")
                .bind(i64::from(version))
                .fetch_one(&mut *c)
                .await?;
        Ok((wrapped, presented))
    })
}

/// Buckets whose data keys were last presented under `version` (at most `limit`).
async fn presenting_buckets(
    conn: &mut DbConn,
    version: u32,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    on_conn!(conn, c => sqlx::query_scalar("SELECT DISTINCT bucket_id FROM data_keys WHERE presented_version = $1 ORDER BY bucket_id LIMIT $2")
        .bind(i64::from(version))
        .bind(limit)
        .fetch_all(&mut *c)
        .await)
}

/// Delete the sealed root key of `version`, refusing the active version, an unknown one, and one
/// that data keys still depend on. `force` ignores data keys last presented under it (for
/// buckets that were deleted: no node will ever present them again); never keys still wrapped
/// under it.
pub async fn delete_root_key(
    conn: &mut DbConn,
    version: u32,
    force: bool,
) -> Result<(), ApplyError> {
    let (active, exists): (Option<i64>, i64) = on_conn!(conn, c => {
        let active: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM root_keys")
            .fetch_one(&mut *c)
            .await?;
        let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM root_keys WHERE version = $1")
            .bind(i64::from(version))
            .fetch_one(&mut *c)
            .await?;
        (active, exists)
    });
    if exists == 0 {
        return Err(ApplyError::Refused(ChangeError::NotFound(format!(
            "root key version {version}"
        ))));
    }
    if active == Some(i64::from(version)) {
        return Err(ApplyError::Refused(ChangeError::RootVersionActive(version)));
    }
    let (mut wrapped, mut presented) = dependents(conn, version).await?;
    if force {
        presented = 0;
    }
    // Named KMS key material sealed under it (re-sealed by the re-wrap worker after a rotation).
    wrapped += crate::kmskeys::store::sealed_under(conn, version).await?;
    if wrapped > 0 || presented > 0 {
        let buckets = presenting_buckets(conn, version, 10).await?;
        return Err(ApplyError::Refused(ChangeError::RootVersionInUse {
            version,
            wrapped,
            presented,
            buckets,
        }));
    }
    on_conn!(conn, c => sqlx::query("DELETE FROM root_keys WHERE version = $1")
        .bind(i64::from(version))
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}
