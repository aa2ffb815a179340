//! The buckets' wrapped data keys as the re-wrap sweep (`crate::rewrap`) sees them: page through
//! the rows that hold one, count them per KMS root version, and replace one wrapping by a newer
//! wrapping of the same key, only if the row still holds exactly the old one (so a concurrent
//! writer, or a second sweep, never loses or reverts a wrapping).
//!
//! Secret: none (wrapped keys only).

use sqlx::Row;

use super::meta::{DbError, Meta};

/// One bucket row that holds a wrapped data key.
#[derive(Debug, Clone)]
pub struct WrappedRow {
    pub name: String,
    pub id: String,
    pub wrapped: Vec<u8>,
    pub version: u32,
}

impl Meta {
    /// Up to `limit` bucket rows with a wrapped key, by name, after `after` (exclusive).
    pub async fn wrapped_bucket_keys(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<WrappedRow>, DbError> {
        sqlx::query("SELECT name, id, wrapped_key, wrapped_key_version FROM buckets WHERE wrapped_key IS NOT NULL AND wrapped_key_version IS NOT NULL AND name > ? ORDER BY name LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| {
                Ok(WrappedRow {
                    name: r.try_get("name")?,
                    id: r.try_get("id")?,
                    wrapped: r.try_get("wrapped_key")?,
                    version: r.try_get::<i64, _>("wrapped_key_version")? as u32,
                })
            })
            .collect()
    }

    /// Bucket rows with a wrapped key, per KMS root version (ascending).
    pub async fn bucket_keys_per_version(&self) -> Result<Vec<(u32, i64)>, DbError> {
        sqlx::query("SELECT wrapped_key_version AS v, COUNT(*) AS n FROM buckets WHERE wrapped_key IS NOT NULL AND wrapped_key_version IS NOT NULL GROUP BY wrapped_key_version ORDER BY wrapped_key_version")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>("v")? as u32, r.try_get("n")?)))
            .collect()
    }

    /// Store `new` as the wrapping of bucket `name`'s key if the row still holds exactly `old`.
    /// `false`: the row holds something else now (or is gone); nothing changed.
    pub async fn replace_bucket_key(
        &self,
        name: &str,
        old: (&[u8], u32),
        new: (&[u8], u32),
    ) -> Result<bool, DbError> {
        let mut w = self.write_conn().await?;
        let n = sqlx::query("UPDATE buckets SET wrapped_key = ?, wrapped_key_version = ? WHERE name = ? AND wrapped_key = ? AND wrapped_key_version = ?")
            .bind(new.0)
            .bind(i64::from(new.1))
            .bind(name)
            .bind(old.0)
            .bind(i64::from(old.1))
            .execute(&mut *w)
            .await?
            .rows_affected();
        w.done();
        Ok(n == 1)
    }
}
