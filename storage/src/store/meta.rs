//! The metadata: buckets, visible object versions, blob rows and multipart uploads, on SQLite
//! (WAL, synchronous=FULL; the default) or PostgreSQL ([`super::db`]: every query is written
//! once, in portable SQL). Atomic: every state change that publishes or retires blobs happens
//! in one transaction; blob files are removed only after the rows that referenced them are
//! gone. Writes are serialized: SQLite's one writer connection, or PostgreSQL's write lock taken
//! first by every write transaction of every node.
//!
//! Secret: none. Buckets hold wrapped data keys; objects and uploads hold sealed object keys.

use std::path::Path;

use super::conditions::{self, ConditionFailed, WriteCondition};
pub use super::db::DbError;
use super::db::{Db, DbConfig, Ex, Row, Tx, WriteConn, q};
use super::versions;
use crate::crypto::envelope::StoredSse;

/// A bucket row.
#[derive(Debug, Clone)]
pub struct Bucket {
    pub name: String,
    pub id: String,
    pub created_ms: i64,
    pub wrapped_key: Option<(Vec<u8>, u32)>,
    /// Generation of the bucket key in `wrapped_key` (new SSE-S3 writes use it).
    pub bk_generation: u32,
    pub encryption_config: Option<String>,
}

/// A visible object version.
#[derive(Debug, Clone)]
pub struct Object {
    pub bucket: String,
    pub key: String,
    pub version_id: String,
    pub size: u64,
    pub etag: String,
    pub content_type: Option<String>,
    /// JSON map of standard content headers (cache-control, content-disposition, ...).
    pub headers: String,
    /// JSON map of user metadata.
    pub metadata: String,
    pub last_modified_ms: i64,
    pub sse: StoredSse,
    pub part_count: u32,
    pub multipart: bool,
}

/// A blob row.
#[derive(Debug, Clone)]
pub struct BlobRow {
    pub part_number: u32,
    pub size: u64,
    pub etag: String,
    pub file: String,
    pub created_ms: i64,
    /// JSON of the part's verified `x-amz-checksum-*` values (issue 11 E21); `None`: none sent.
    pub checksums: Option<String>,
}

/// A multipart upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub version_id: String,
    pub created_ms: i64,
    pub content_type: Option<String>,
    pub headers: String,
    pub metadata: String,
    pub sse: StoredSse,
    pub completed_etag: Option<String>,
}

/// What [`Meta::complete_upload`] did.
#[derive(Debug)]
pub enum Completion {
    /// Published; the blob files to delete.
    Published(Vec<String>),
    /// Another Complete published the upload first, with this ETag; nothing changed.
    AlreadyCompleted(String),
    /// No such upload (aborted); nothing changed.
    Gone,
    /// The upload's bucket was deleted (which aborted the upload); nothing changed.
    BucketGone,
    /// A precondition does not hold; nothing changed, the upload stays live.
    ConditionFailed(ConditionFailed),
}

/// How long a completed multipart upload's row is kept, so that a repeated
/// CompleteMultipartUpload answers the same ETag; then [`Meta::prune`] forgets it and a repeat
/// answers NoSuchUpload.
pub const COMPLETED_UPLOAD_RETENTION_MS: i64 = 60 * 60 * 1000;

/// What [`Meta::prune`] forgot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub aborted_versions: u64,
    pub completed_uploads: u64,
}

/// Metadata database handle (SQLite or PostgreSQL: [`super::db`]).
#[derive(Clone)]
pub struct Meta {
    db: Db,
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn sse_from_row(row: &Row) -> Result<StoredSse, DbError> {
    let mode: String = row.try_get("sse_mode")?;
    let salt: Option<Vec<u8>> = row.try_get("seal_salt")?;
    let sealed: Option<Vec<u8>> = row.try_get("sealed_key")?;
    let kms: Option<String> = row.try_get("sse_kms")?;
    let generation: Option<i64> = row.try_get("bk_generation")?;
    StoredSse::from_columns(
        &mode,
        salt.as_deref(),
        sealed.as_deref(),
        kms.as_deref(),
        generation,
    )
    .ok_or_else(|| DbError::Decode("inconsistent sse columns".into()))
}

fn object_from_row(row: &Row) -> Result<Object, DbError> {
    Ok(Object {
        bucket: row.try_get("bucket")?,
        key: row.try_get("key")?,
        version_id: row.try_get("version_id")?,
        size: row.try_get::<i64, _>("size")? as u64,
        etag: row.try_get("etag")?,
        content_type: row.try_get("content_type")?,
        headers: row.try_get("headers")?,
        metadata: row.try_get("metadata")?,
        last_modified_ms: row.try_get("last_modified_ms")?,
        sse: sse_from_row(row)?,
        part_count: row.try_get::<i64, _>("part_count")? as u32,
        multipart: row.try_get::<i64, _>("multipart")? != 0,
    })
}

fn upload_from_row(row: &Row) -> Result<Upload, DbError> {
    Ok(Upload {
        upload_id: row.try_get("upload_id")?,
        bucket: row.try_get("bucket")?,
        key: row.try_get("key")?,
        version_id: row.try_get("version_id")?,
        created_ms: row.try_get("created_ms")?,
        content_type: row.try_get("content_type")?,
        headers: row.try_get("headers")?,
        metadata: row.try_get("metadata")?,
        sse: sse_from_row(row)?,
        completed_etag: row.try_get("completed_etag")?,
    })
}

fn blob_from_row(row: &Row) -> Result<BlobRow, DbError> {
    Ok(BlobRow {
        part_number: row.try_get::<i64, _>("part_number")? as u32,
        size: row.try_get::<i64, _>("size")? as u64,
        etag: row.try_get("etag")?,
        file: row.try_get("file")?,
        created_ms: row.try_get("created_ms")?,
        checksums: row.try_get("checksums")?,
    })
}

impl Meta {
    /// Check out a writer connection (see [`WriteConn`]).
    pub(crate) async fn write_conn(&self) -> Result<WriteConn, DbError> {
        self.db.write_conn().await
    }

    /// Where reads run (the reader pool).
    pub(crate) fn reader(&self) -> Ex<'_> {
        self.db.reader()
    }

    /// This node's number in a shared database (`None` on SQLite).
    pub(crate) fn node(&self) -> Option<i64> {
        self.db.node()
    }

    /// Close the database handles (PostgreSQL: and release this node's lease, so that the next
    /// start-up sweep of any node aborts the writes this one left unfinished).
    pub async fn close(&self) {
        self.db.close().await;
    }

    /// True on PostgreSQL (several nodes may share the database).
    pub fn is_shared(&self) -> bool {
        self.db.is_postgres()
    }

    /// Open (creating) `meta.db` in `data_dir` and apply migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, DbError> {
        Self::connect(&DbConfig::sqlite_in(data_dir)).await
    }

    /// Open the database `cfg` names (SQLite or PostgreSQL) and apply its migrations.
    pub async fn connect(cfg: &DbConfig) -> Result<Self, DbError> {
        Ok(Self {
            db: Db::open(cfg).await?,
        })
    }

    /// One trivial query through the reader pool (readiness).
    pub async fn ping(&self) -> Result<(), DbError> {
        q("SELECT 1").execute(self.reader()).await?;
        Ok(())
    }

    // ---------------------------------------------------------------- buckets

    pub async fn create_bucket(
        &self,
        name: &str,
        encryption_config: Option<&str>,
    ) -> Result<bool, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.single().await?;
        let r = q("INSERT INTO buckets (name, id, created_ms, encryption_config) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(format!("{name}:{}", uuid::Uuid::new_v4()))
            .bind(now_ms())
            .bind(encryption_config)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(r == 1)
    }

    pub async fn bucket(&self, name: &str) -> Result<Option<Bucket>, DbError> {
        let row = q("SELECT name, id, created_ms, wrapped_key, wrapped_key_version, bk_generation, encryption_config FROM buckets WHERE name = $1")
            .bind(name)
            .fetch_optional(self.reader())
            .await?;
        row.map(|r| {
            let wk: Option<Vec<u8>> = r.try_get("wrapped_key")?;
            let wv: Option<i64> = r.try_get("wrapped_key_version")?;
            Ok(Bucket {
                name: r.try_get("name")?,
                id: r.try_get("id")?,
                created_ms: r.try_get("created_ms")?,
                wrapped_key: wk.zip(wv.map(|v| v as u32)),
                bk_generation: r.try_get::<i64, _>("bk_generation")? as u32,
                encryption_config: r.try_get("encryption_config")?,
            })
        })
        .transpose()
    }

    pub async fn list_buckets(&self) -> Result<Vec<(String, i64)>, DbError> {
        let rows = q("SELECT name, created_ms FROM buckets ORDER BY name")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("created_ms")?)))
            .collect()
    }

    /// Delete a bucket that has no objects, aborting its multipart uploads in progress (as AWS)
    /// and every write still in flight into it (their versions are aborted, so they can never
    /// publish). Returns the uploads' part files to delete, or `None` when it has objects.
    pub async fn delete_bucket(&self, name: &str) -> Result<Option<Vec<String>>, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let n: i64 = q("SELECT COUNT(*) FROM objects WHERE bucket = $1")
            .bind(name)
            .scalar(tx.ex())
            .await?;
        if n > 0 {
            tx.rollback().await?;
            w.done();
            return Ok(None);
        }
        let files: Vec<String> = q(
            "SELECT file FROM blobs WHERE owner IN (SELECT upload_id FROM uploads WHERE bucket = $1)",
        )
        .bind(name)
        .scalars(tx.ex())
        .await?;
        q("DELETE FROM blobs WHERE owner IN (SELECT upload_id FROM uploads WHERE bucket = $1)")
            .bind(name)
            .execute(tx.ex())
            .await?;
        versions::abort_bucket_tx(&mut tx, name).await?;
        q("DELETE FROM uploads WHERE bucket = $1")
            .bind(name)
            .execute(tx.ex())
            .await?;
        // Older bucket key generations go with the bucket (`store::bucket_keys`).
        q("DELETE FROM bucket_key_generations WHERE bucket_id = (SELECT id FROM buckets WHERE name = $1)")
            .bind(name)
            .execute(tx.ex())
            .await?;
        q("DELETE FROM buckets WHERE name = $1")
            .bind(name)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(Some(files))
    }

    /// Store a bucket's wrapped key unless one is stored; returns the stored one.
    pub async fn set_bucket_key_if_absent(
        &self,
        name: &str,
        wrapped: &[u8],
        version: u32,
    ) -> Result<Option<(Vec<u8>, u32)>, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.single().await?;
        q("UPDATE buckets SET wrapped_key = $1, wrapped_key_version = $2 WHERE name = $3 AND wrapped_key IS NULL")
            .bind(wrapped)
            .bind(version as i64)
            .bind(name)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(self.bucket(name).await?.and_then(|b| b.wrapped_key))
    }

    pub async fn set_encryption_config(
        &self,
        name: &str,
        config: Option<&str>,
    ) -> Result<(), DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.single().await?;
        q("UPDATE buckets SET encryption_config = $1 WHERE name = $2")
            .bind(config)
            .bind(name)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(())
    }

    // ---------------------------------------------------------------- objects

    pub async fn object(&self, bucket: &str, key: &str) -> Result<Option<Object>, DbError> {
        let row = q("SELECT * FROM objects WHERE bucket = $1 AND key = $2")
            .bind(bucket)
            .bind(key)
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(object_from_row).transpose()
    }

    pub async fn blobs(&self, owner: &str) -> Result<Vec<BlobRow>, DbError> {
        let rows = q("SELECT * FROM blobs WHERE owner = $1 ORDER BY part_number")
            .bind(owner)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(blob_from_row).collect()
    }

    /// Objects in key order after `after` (exclusive), with `prefix`, at most `limit`.
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Object>, DbError> {
        let rows = q("SELECT * FROM objects WHERE bucket = $1 AND key > $2 AND substr(key, 1, CAST($3 AS INTEGER)) = $4 ORDER BY key LIMIT $5")
            .bind(bucket)
            .bind(after)
            .bind(prefix.chars().count() as i64)
            .bind(prefix)
            .bind(limit)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(object_from_row).collect()
    }

    /// Publish a single-part object whose blob is durable; returns the replaced version's blob files.
    pub async fn put_object(&self, o: &Object, blob: &BlobRow) -> Result<Vec<String>, DbError> {
        let published = self
            .put_object_if(o, blob, &WriteCondition::default())
            .await?;
        published.map_err(|f| DbError::Protocol(format!("unconditional write failed {f:?}")))
    }

    /// [`Meta::put_object`] if `cond` holds when the transaction publishes it; otherwise nothing
    /// changes and the answer says why.
    pub async fn put_object_if(
        &self,
        o: &Object,
        blob: &BlobRow,
        cond: &WriteCondition,
    ) -> Result<Result<Vec<String>, ConditionFailed>, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        if let Err(f) = conditions::check_tx(&mut tx, &o.bucket, &o.key, cond).await? {
            tx.rollback().await?;
            w.done();
            return Ok(Err(f));
        }
        if !versions::complete_tx(&mut tx, &o.version_id).await? {
            tx.rollback().await?;
            w.done();
            return Ok(Err(ConditionFailed::BucketGone));
        }
        let old = Self::retire_object_tx(&mut tx, &o.bucket, &o.key).await?;
        Self::insert_object_tx(&mut tx, o).await?;
        q("INSERT INTO blobs (owner, part_number, size, etag, file, created_ms) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&o.version_id)
            .bind(blob.part_number as i64)
            .bind(blob.size as i64)
            .bind(&blob.etag)
            .bind(&blob.file)
            .bind(blob.created_ms)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(Ok(old))
    }

    async fn insert_object_tx(tx: &mut Tx<'_>, o: &Object) -> Result<(), DbError> {
        let (salt, sealed) = o.sse.columns();
        q("INSERT INTO objects (bucket, key, version_id, size, etag, content_type, headers, metadata, last_modified_ms, sse_mode, seal_salt, sealed_key, part_count, multipart, sse_kms, bk_generation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)")
            .bind(&o.bucket)
            .bind(&o.key)
            .bind(&o.version_id)
            .bind(o.size as i64)
            .bind(&o.etag)
            .bind(&o.content_type)
            .bind(&o.headers)
            .bind(&o.metadata)
            .bind(o.last_modified_ms)
            .bind(o.sse.mode_str())
            .bind(salt)
            .bind(sealed)
            .bind(o.part_count as i64)
            .bind(i64::from(o.multipart))
            .bind(o.sse.kms_column())
            .bind(o.sse.bk_generation_column())
            .execute(tx.ex())
            .await?;
        Ok(())
    }

    /// Remove the visible version of a key and its blob rows; returns the blob files to delete.
    async fn retire_object_tx(
        tx: &mut Tx<'_>,
        bucket: &str,
        key: &str,
    ) -> Result<Vec<String>, DbError> {
        let vid: Option<String> =
            q("SELECT version_id FROM objects WHERE bucket = $1 AND key = $2")
                .bind(bucket)
                .bind(key)
                .scalar_optional(tx.ex())
                .await?;
        let Some(vid) = vid else {
            return Ok(Vec::new());
        };
        let files: Vec<String> = q("SELECT file FROM blobs WHERE owner = $1")
            .bind(&vid)
            .scalars(tx.ex())
            .await?;
        q("DELETE FROM blobs WHERE owner = $1")
            .bind(&vid)
            .execute(tx.ex())
            .await?;
        q("DELETE FROM objects WHERE bucket = $1 AND key = $2")
            .bind(bucket)
            .bind(key)
            .execute(tx.ex())
            .await?;
        versions::forget_tx(tx, &vid).await?;
        Ok(files)
    }

    /// Delete an object; returns its blob files (empty when it did not exist).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<Vec<String>, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let files = Self::retire_object_tx(&mut tx, bucket, key).await?;
        tx.commit().await?;
        w.done();
        Ok(files)
    }

    /// Replace an object's sealing, ETag and metadata in place (self-copy re-seal; blob files
    /// unchanged), and the ETags of the parts listed in `part_etags` (number, ETag), in one
    /// transaction. `Ok(false)`: the version is no longer the key's object; nothing changed.
    pub async fn update_object_in_place(
        &self,
        o: &Object,
        part_etags: &[(u32, String)],
    ) -> Result<bool, DbError> {
        let (salt, sealed) = o.sse.columns();
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let r = q("UPDATE objects SET sse_mode = $1, seal_salt = $2, sealed_key = $3, sse_kms = $4, bk_generation = $5, etag = $6, content_type = $7, headers = $8, metadata = $9, last_modified_ms = $10 WHERE bucket = $11 AND key = $12 AND version_id = $13")
            .bind(o.sse.mode_str())
            .bind(salt)
            .bind(sealed)
            .bind(o.sse.kms_column())
            .bind(o.sse.bk_generation_column())
            .bind(&o.etag)
            .bind(&o.content_type)
            .bind(&o.headers)
            .bind(&o.metadata)
            .bind(o.last_modified_ms)
            .bind(&o.bucket)
            .bind(&o.key)
            .bind(&o.version_id)
            .execute(tx.ex())
            .await?;
        if r != 1 {
            tx.rollback().await?;
            w.done();
            return Ok(false);
        }
        for (n, etag) in part_etags {
            q("UPDATE blobs SET etag = $1 WHERE owner = $2 AND part_number = $3")
                .bind(etag)
                .bind(&o.version_id)
                .bind(i64::from(*n))
                .execute(tx.ex())
                .await?;
        }
        tx.commit().await?;
        w.done();
        Ok(true)
    }

    // ---------------------------------------------------------------- multipart

    /// Record a new upload in `bucket`; its version starts `writing` in the same transaction.
    /// `false`: the bucket is gone (see [`versions::insert_writing`]); nothing was written.
    pub async fn create_upload(&self, bucket: &Bucket, u: &Upload) -> Result<bool, DbError> {
        let (salt, sealed) = u.sse.columns();
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        if !versions::insert_writing(&mut tx, self.node(), &u.version_id, bucket, &u.key).await? {
            tx.rollback().await?;
            w.done();
            return Ok(false);
        }
        q("INSERT INTO uploads (upload_id, bucket, key, version_id, created_ms, content_type, headers, metadata, sse_mode, seal_salt, sealed_key, sse_kms, bk_generation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
            .bind(&u.upload_id)
            .bind(&u.bucket)
            .bind(&u.key)
            .bind(&u.version_id)
            .bind(u.created_ms)
            .bind(&u.content_type)
            .bind(&u.headers)
            .bind(&u.metadata)
            .bind(u.sse.mode_str())
            .bind(salt)
            .bind(sealed)
            .bind(u.sse.kms_column())
            .bind(u.sse.bk_generation_column())
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(true)
    }

    pub async fn upload(&self, upload_id: &str) -> Result<Option<Upload>, DbError> {
        let row = q("SELECT * FROM uploads WHERE upload_id = $1")
            .bind(upload_id)
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(upload_from_row).transpose()
    }

    pub async fn list_uploads(&self, bucket: &str) -> Result<Vec<Upload>, DbError> {
        let rows = q("SELECT * FROM uploads WHERE bucket = $1 AND completed_etag IS NULL ORDER BY key, created_ms, upload_id").bind(bucket).fetch_all(self.reader()).await?;
        rows.iter().map(upload_from_row).collect()
    }

    /// Record an uploaded part (replacing an earlier upload of the same number); returns the
    /// replaced blob file. Fails with `Ok(None)`-style `false` if the upload is gone.
    pub async fn put_part(
        &self,
        upload_id: &str,
        blob: &BlobRow,
    ) -> Result<Option<Vec<String>>, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let live: Option<String> =
            q("SELECT upload_id FROM uploads WHERE upload_id = $1 AND completed_etag IS NULL")
                .bind(upload_id)
                .scalar_optional(tx.ex())
                .await?;
        if live.is_none() {
            tx.rollback().await?;
            w.done();
            return Ok(None);
        }
        let old: Vec<String> = q("SELECT file FROM blobs WHERE owner = $1 AND part_number = $2")
            .bind(upload_id)
            .bind(blob.part_number as i64)
            .scalars(tx.ex())
            .await?;
        q("DELETE FROM blobs WHERE owner = $1 AND part_number = $2")
            .bind(upload_id)
            .bind(blob.part_number as i64)
            .execute(tx.ex())
            .await?;
        q("INSERT INTO blobs (owner, part_number, size, etag, file, created_ms, checksums) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(upload_id)
            .bind(blob.part_number as i64)
            .bind(blob.size as i64)
            .bind(&blob.etag)
            .bind(&blob.file)
            .bind(blob.created_ms)
            .bind(&blob.checksums)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(Some(old))
    }

    /// Publish a completed upload as the object if it is still live and `cond` holds: chosen
    /// parts move to the version, the other parts and the replaced version's blobs are returned
    /// for deletion. An upload another Complete published first answers that one's ETag.
    pub async fn complete_upload(
        &self,
        u: &Upload,
        o: &Object,
        parts: &[u32],
        cond: &WriteCondition,
    ) -> Result<Completion, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let state: Option<Option<String>> =
            q("SELECT completed_etag FROM uploads WHERE upload_id = $1")
                .bind(&u.upload_id)
                .scalar_optional(tx.ex())
                .await?;
        let early = match state {
            None if !Self::bucket_exists_tx(&mut tx, &o.bucket).await? => {
                Some(Completion::BucketGone)
            }
            None => Some(Completion::Gone),
            Some(Some(etag)) => Some(Completion::AlreadyCompleted(etag)),
            Some(None) => conditions::check_tx(&mut tx, &o.bucket, &o.key, cond)
                .await?
                .err()
                .map(Completion::ConditionFailed),
        };
        if let Some(c) = early {
            tx.rollback().await?;
            w.done();
            return Ok(c);
        }
        if !versions::complete_tx(&mut tx, &u.version_id).await? {
            tx.rollback().await?;
            w.done();
            return Ok(Completion::Gone);
        }
        let mut dead = Self::retire_object_tx(&mut tx, &o.bucket, &o.key).await?;
        Self::insert_object_tx(&mut tx, o).await?;
        for p in parts {
            q("UPDATE blobs SET owner = $1 WHERE owner = $2 AND part_number = $3")
                .bind(&o.version_id)
                .bind(&u.upload_id)
                .bind(*p as i64)
                .execute(tx.ex())
                .await?;
        }
        let rest: Vec<String> = q("SELECT file FROM blobs WHERE owner = $1")
            .bind(&u.upload_id)
            .scalars(tx.ex())
            .await?;
        q("DELETE FROM blobs WHERE owner = $1")
            .bind(&u.upload_id)
            .execute(tx.ex())
            .await?;
        q("UPDATE uploads SET completed_etag = $1, completed_ms = $2 WHERE upload_id = $3")
            .bind(&o.etag)
            .bind(now_ms())
            .bind(&u.upload_id)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        dead.extend(rest);
        Ok(Completion::Published(dead))
    }

    /// Abort an upload; returns its blob files, or `None` if there is no such live upload.
    pub async fn abort_upload(&self, upload_id: &str) -> Result<Option<Vec<String>>, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        let live: Option<String> =
            q("SELECT version_id FROM uploads WHERE upload_id = $1 AND completed_etag IS NULL")
                .bind(upload_id)
                .scalar_optional(tx.ex())
                .await?;
        let Some(version_id) = live else {
            tx.rollback().await?;
            w.done();
            return Ok(None);
        };
        versions::abort_tx(&mut tx, &version_id).await?;
        let files: Vec<String> = q("SELECT file FROM blobs WHERE owner = $1")
            .bind(upload_id)
            .scalars(tx.ex())
            .await?;
        q("DELETE FROM blobs WHERE owner = $1")
            .bind(upload_id)
            .execute(tx.ex())
            .await?;
        q("DELETE FROM uploads WHERE upload_id = $1")
            .bind(upload_id)
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(Some(files))
    }

    /// Forget rows nothing needs any more: aborted versions (on PostgreSQL also the versions
    /// that stopped nodes left `writing`), and multipart uploads completed
    /// more than [`COMPLETED_UPLOAD_RETENTION_MS`] before `now_ms` (their parts already belong
    /// to the object, so no blob row goes with them). Runs periodically while serving.
    pub async fn prune(&self, now_ms: i64) -> Result<Pruned, DbError> {
        let mut w = self.write_conn().await?;
        let mut tx = w.begin().await?;
        if self.is_shared() {
            // Writes left unfinished by nodes that stopped or died (no node may restart to
            // sweep them).
            versions::abort_interrupted_tx(&mut tx, true).await?;
        }
        let aborted_versions = versions::forget_aborted_tx(&mut tx).await?;
        let completed_uploads = q("DELETE FROM uploads WHERE completed_etag IS NOT NULL AND (completed_ms IS NULL OR completed_ms < $1)")
            .bind(now_ms.saturating_sub(COMPLETED_UPLOAD_RETENTION_MS))
            .execute(tx.ex())
            .await?;
        tx.commit().await?;
        w.done();
        Ok(Pruned {
            aborted_versions,
            completed_uploads,
        })
    }

    /// True when a blob row references `file` (read through a fresh reader connection).
    pub async fn blob_file_referenced(&self, file: &str) -> Result<bool, DbError> {
        let n: i64 = q("SELECT COUNT(*) FROM blobs WHERE file = $1")
            .bind(file)
            .scalar(self.reader())
            .await?;
        Ok(n > 0)
    }

    async fn bucket_exists_tx(tx: &mut Tx<'_>, name: &str) -> Result<bool, DbError> {
        let n: i64 = q("SELECT COUNT(*) FROM buckets WHERE name = $1")
            .bind(name)
            .scalar(tx.ex())
            .await?;
        Ok(n > 0)
    }

    /// Every blob file name that a row references (for the start-up sweep).
    pub async fn all_blob_files(&self) -> Result<Vec<String>, DbError> {
        q("SELECT file FROM blobs").scalars(self.reader()).await
    }
}
