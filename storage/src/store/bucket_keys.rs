//! The buckets' wrapped data keys as the re-wrap sweep (`crate::rewrap`) sees them: page through
//! the rows that hold one, count them per KMS root version, and replace one wrapping by a newer
//! wrapping of the same key, only if the row still holds exactly the old one (so a concurrent
//! writer, or a second sweep, never loses or reverts a wrapping).
//!
//! Secret: none (wrapped keys only).

use super::db::{Row, q};
use super::meta::{DbError, Meta};

/// One stored wrapped bucket key: a bucket row's newest generation, or an older generation.
#[derive(Debug, Clone)]
pub struct WrappedRow {
    pub name: String,
    pub id: String,
    pub generation: u32,
    pub wrapped: Vec<u8>,
    pub version: u32,
}

/// A [`WrappedRow`] from a row with columns `name, id, bk_generation, wrapped_key,
/// wrapped_key_version` (both page queries select these names).
fn wrapped_row(r: &Row) -> Result<WrappedRow, DbError> {
    Ok(WrappedRow {
        name: r.try_get("name")?,
        id: r.try_get("id")?,
        generation: r.try_get::<i64, _>("bk_generation")? as u32,
        wrapped: r.try_get("wrapped_key")?,
        version: r.try_get::<i64, _>("wrapped_key_version")? as u32,
    })
}

impl Meta {
    /// Up to `limit` bucket rows with a wrapped key, by name, after `after` (exclusive).
    pub async fn wrapped_bucket_keys(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<WrappedRow>, DbError> {
        q("SELECT name, id, bk_generation, wrapped_key, wrapped_key_version FROM buckets WHERE wrapped_key IS NOT NULL AND wrapped_key_version IS NOT NULL AND name > $1 ORDER BY name LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(wrapped_row)
            .collect()
    }

    /// Up to `limit` older bucket key generations, by (bucket id, generation), after `after`.
    pub async fn archived_bucket_keys(
        &self,
        after: (&str, u32),
        limit: i64,
    ) -> Result<Vec<WrappedRow>, DbError> {
        q("SELECT g.bucket_id AS id, g.generation AS bk_generation, g.wrapped_key, g.wrapped_key_version, b.name FROM bucket_key_generations g JOIN buckets b ON b.id = g.bucket_id WHERE g.bucket_id > $1 OR (g.bucket_id = $2 AND g.generation > $3) ORDER BY g.bucket_id, g.generation LIMIT $4")
            .bind(after.0)
            .bind(after.0)
            .bind(i64::from(after.1))
            .bind(limit)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(wrapped_row)
            .collect()
    }

    /// The wrapped key and root version of an older generation of a bucket's key.
    pub async fn archived_bucket_key(
        &self,
        bucket_id: &str,
        generation: u32,
    ) -> Result<Option<(Vec<u8>, u32)>, DbError> {
        let row = q("SELECT wrapped_key, wrapped_key_version FROM bucket_key_generations WHERE bucket_id = $1 AND generation = $2")
            .bind(bucket_id)
            .bind(i64::from(generation))
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| {
            Ok((
                r.try_get("wrapped_key")?,
                r.try_get::<i64, _>("wrapped_key_version")? as u32,
            ))
        })
        .transpose()
    }

    /// Stored wrapped bucket keys (every generation), per KMS root version (ascending).
    pub async fn bucket_keys_per_version(&self) -> Result<Vec<(u32, i64)>, DbError> {
        q("SELECT v, CAST(SUM(n) AS BIGINT) AS n FROM (SELECT wrapped_key_version AS v, COUNT(*) AS n FROM buckets WHERE wrapped_key IS NOT NULL AND wrapped_key_version IS NOT NULL GROUP BY wrapped_key_version UNION ALL SELECT wrapped_key_version AS v, COUNT(*) AS n FROM bucket_key_generations GROUP BY wrapped_key_version) t GROUP BY v ORDER BY v")
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>("v")? as u32, r.try_get("n")?)))
            .collect()
    }

    /// Store `new` as the wrapping of generation `generation` of bucket `name`'s key (the
    /// bucket row's, or an older generation's) if it still is exactly `old`. `false`: something
    /// else is stored now (or nothing); nothing changed.
    pub async fn replace_bucket_key(
        &self,
        name: &str,
        generation: u32,
        old: (&[u8], u32),
        new: (&[u8], u32),
    ) -> Result<bool, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.single().await?;
        let mut n = q("UPDATE buckets SET wrapped_key = $1, wrapped_key_version = $2 WHERE name = $3 AND bk_generation = $4 AND wrapped_key = $5 AND wrapped_key_version = $6")
            .bind(new.0)
            .bind(i64::from(new.1))
            .bind(name)
            .bind(i64::from(generation))
            .bind(old.0)
            .bind(i64::from(old.1))
            .execute(tx.ex())
            .await?;
        if n == 0 {
            n = q("UPDATE bucket_key_generations SET wrapped_key = $1, wrapped_key_version = $2 WHERE bucket_id = (SELECT id FROM buckets WHERE name = $3) AND generation = $4 AND wrapped_key = $5 AND wrapped_key_version = $6")
                .bind(new.0)
                .bind(i64::from(new.1))
                .bind(name)
                .bind(i64::from(generation))
                .bind(old.0)
                .bind(i64::from(old.1))
                .execute(tx.ex())
                .await?;
        }
        tx.commit().await?;
        w.done();
        Ok(n == 1)
    }

    /// Make `new` (wrapped, root version) generation `from + 1` of bucket `name`'s key, moving
    /// generation `from` to `bucket_key_generations`, in one transaction, if the bucket still
    /// is at generation `from`. `false`: it is not (rotated concurrently, or gone).
    pub async fn rotate_bucket_key(
        &self,
        name: &str,
        from: u32,
        new: (&[u8], u32),
    ) -> Result<bool, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let moved = q("INSERT INTO bucket_key_generations (bucket_id, generation, wrapped_key, wrapped_key_version, created_ms) SELECT id, bk_generation, wrapped_key, wrapped_key_version, $1 FROM buckets WHERE name = $2 AND bk_generation = $3 AND wrapped_key IS NOT NULL")
            .bind(super::meta::now_ms())
            .bind(name)
            .bind(i64::from(from))
            .execute(tx.ex())
            .await?;
        let n = q("UPDATE buckets SET wrapped_key = $1, wrapped_key_version = $2, bk_generation = $3 WHERE name = $4 AND bk_generation = $5 AND wrapped_key IS NOT NULL")
            .bind(new.0)
            .bind(i64::from(new.1))
            .bind(i64::from(from) + 1)
            .bind(name)
            .bind(i64::from(from))
            .execute(tx.ex())
            .await?;
        if moved != 1 || n != 1 {
            tx.rollback().await?;
            w.done();
            return Ok(false);
        }
        tx.commit().await?;
        w.done();
        Ok(true)
    }
}

/// An SSE-S3 object version or upload whose object key is sealed under an older bucket key
/// generation than its bucket's newest.
#[derive(Debug, Clone)]
pub struct StaleSeal {
    /// `objects` or `uploads` row: the upload id for an upload, else `None`.
    pub upload_id: Option<String>,
    pub bucket: String,
    pub key: String,
    pub version_id: String,
    pub generation: u32,
    pub salt: Vec<u8>,
    pub sealed: Vec<u8>,
}

fn stale_from_row(r: &Row, upload: bool) -> Result<StaleSeal, DbError> {
    Ok(StaleSeal {
        upload_id: if upload {
            Some(r.try_get("upload_id")?)
        } else {
            None
        },
        bucket: r.try_get("bucket")?,
        key: r.try_get("key")?,
        version_id: r.try_get("version_id")?,
        generation: r.try_get::<i64, _>("g")? as u32,
        salt: r
            .try_get::<Option<Vec<u8>>, _>("seal_salt")?
            .unwrap_or_default(),
        sealed: r
            .try_get::<Option<Vec<u8>>, _>("sealed_key")?
            .unwrap_or_default(),
    })
}

impl Meta {
    /// Up to `limit` SSE-S3 object versions sealed under an older bucket key generation, by
    /// (bucket, key) after `after`.
    pub async fn stale_object_seals(
        &self,
        after: (&str, &str),
        limit: i64,
    ) -> Result<Vec<StaleSeal>, DbError> {
        q("SELECT o.bucket, o.key, o.version_id, o.seal_salt, o.sealed_key, COALESCE(o.bk_generation, 1) AS g FROM objects o JOIN buckets b ON b.name = o.bucket WHERE o.sse_mode = 'sse-s3' AND COALESCE(o.bk_generation, 1) < b.bk_generation AND (o.bucket > $1 OR (o.bucket = $2 AND o.key > $3)) ORDER BY o.bucket, o.key LIMIT $4")
            .bind(after.0)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| stale_from_row(r, false))
            .collect()
    }

    /// Up to `limit` SSE-S3 uploads sealed under an older bucket key generation, by upload id
    /// after `after`.
    pub async fn stale_upload_seals(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<StaleSeal>, DbError> {
        q("SELECT u.upload_id, u.bucket, u.key, u.version_id, u.seal_salt, u.sealed_key, COALESCE(u.bk_generation, 1) AS g FROM uploads u JOIN buckets b ON b.name = u.bucket WHERE u.sse_mode = 'sse-s3' AND COALESCE(u.bk_generation, 1) < b.bk_generation AND u.upload_id > $1 ORDER BY u.upload_id LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(self.reader())
            .await?
            .iter()
            .map(|r| stale_from_row(r, true))
            .collect()
    }

    /// Replace the sealed object key of `row` by (`salt`, `sealed`) under `generation`, if it is
    /// still exactly the stale one (a concurrent overwrite or re-seal wins). `false`: unchanged.
    pub async fn reseal_stale(
        &self,
        row: &StaleSeal,
        salt: &[u8],
        sealed: &[u8],
        generation: u32,
    ) -> Result<bool, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.single().await?;
        let stmt = match &row.upload_id {
            None => q("UPDATE objects SET seal_salt = $1, sealed_key = $2, bk_generation = $3 WHERE version_id = $4 AND sse_mode = 'sse-s3' AND seal_salt = $5 AND sealed_key = $6")
                .bind(salt)
                .bind(sealed)
                .bind(i64::from(generation))
                .bind(&row.version_id),
            Some(id) => q("UPDATE uploads SET seal_salt = $1, sealed_key = $2, bk_generation = $3 WHERE upload_id = $4 AND sse_mode = 'sse-s3' AND seal_salt = $5 AND sealed_key = $6")
                .bind(salt)
                .bind(sealed)
                .bind(i64::from(generation))
                .bind(id),
        };
        let n = stmt
            .bind(&row.salt)
            .bind(&row.sealed)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(n == 1)
    }

    /// SSE-S3 object versions and uploads: (total, sealed under their bucket's newest
    /// generation).
    pub async fn sse_s3_generation_coverage(&self) -> Result<(i64, i64), DbError> {
        let mut total = 0;
        let mut current = 0;
        for sql in [
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN COALESCE(t.bk_generation, 1) = b.bk_generation THEN 1 ELSE 0 END), 0) AS c FROM objects t JOIN buckets b ON b.name = t.bucket WHERE t.sse_mode = 'sse-s3'",
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN COALESCE(t.bk_generation, 1) = b.bk_generation THEN 1 ELSE 0 END), 0) AS c FROM uploads t JOIN buckets b ON b.name = t.bucket WHERE t.sse_mode = 'sse-s3'",
        ] {
            let r = q(sql).fetch_one(self.reader()).await?;
            total += r.try_get::<i64, _>("n")?;
            current += r.try_get::<i64, _>("c")?;
        }
        Ok((total, current))
    }
}
