//! The KMS database (SQLite through sqlx, runtime queries, migrations in `migrations/kms/`):
//! sealed root keys, the sealed audit key, identities (public keys and scopes), the registry of
//! issued data keys (wrapped only) and the audit log with its checkpoints.
//!
//! Secret: nothing in the clear; keys are stored sealed (root, audit) or wrapped (data keys).
//! Atomic: writes happen only through [`apply_change`] and [`append_and_commit`] (the audit
//! writer, one transaction per commit group) and [`insert_record`] (init). `synchronous = FULL`
//! throughout, so a commit is durable when it returns. `init` builds the file with a rollback
//! journal (one self-contained file to rename into place); a serving KMS switches it to WAL, where
//! a commit costs one append and one fsync of `kms.db-wal` instead of creating, syncing and
//! deleting a journal (four fsyncs).

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteConnection};
use time::format_description::well_known::Rfc3339;

use crate::audit::{AuditRecord, Checkpoint};
use crate::seal::KdfParams;

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "kms.db";

/// A refused state change (answered with a 4xx and audited with its code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A root key version that data keys still depend on (`admin keys retire`).
    #[error(
        "root key version {version} is still in use: {wrapped} data keys (or named-key materials) are wrapped under it and {presented} were last presented under it by storage nodes{}; run the re-wrap sweep on every storage node first (`coffer-storage rewrap`), or, if only deleted buckets still hold it, retire with --force",
        sample_buckets(.buckets)
    )]
    RootVersionInUse {
        version: u32,
        wrapped: i64,
        presented: i64,
        /// Some of the buckets whose data keys were last presented under it.
        buckets: Vec<String>,
    },
    /// The active root key version cannot be retired.
    #[error("root key version {0} is the active version; rotate first")]
    RootVersionActive(u32),
    /// A named KMS key that does not exist (or was destroyed): its id.
    #[error("KMS key {0} not found")]
    KeyNotFound(String),
    /// A named KMS key whose state does not allow the change.
    #[error("{0}")]
    InvalidState(String),
}

impl ChangeError {
    /// Stable code recorded in the audit log and answered on the wire.
    pub fn code(&self) -> &'static str {
        match self {
            ChangeError::Conflict(_) => "conflict",
            ChangeError::NotFound(_) => "not_found",
            ChangeError::RootVersionInUse { .. } => "root_version_in_use",
            ChangeError::RootVersionActive(_) => "root_version_active",
            ChangeError::KeyNotFound(_) => "kms_key_not_found",
            ChangeError::InvalidState(_) => "kms_key_invalid_state",
        }
    }
}

fn sample_buckets(buckets: &[String]) -> String {
    if buckets.is_empty() {
        String::new()
    } else {
        format!(" (buckets: {})", buckets.join(", "))
    }
}

/// Result of applying a change: refused (audited) or a database failure (batch fails).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Refused(ChangeError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A sealed key row.
pub struct SealedRow {
    pub params: KdfParams,
    pub salt: [u8; 16],
    pub sealed: Vec<u8>,
}

/// One re-wrapped data key.
pub struct Rewrapped {
    pub data_key_id: i64,
    pub version: u32,
    pub wrapped: Vec<u8>,
    pub lookup: Vec<u8>,
}

/// An identity row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityRow {
    pub name: String,
    pub kind: String,
    #[serde(skip)]
    pub public_key: Vec<u8>,
    pub buckets: String,
    pub ops: String,
    /// Named KMS key glob (`""`: none).
    pub keys: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
}

/// A state change applied in the same transaction as its audit record.
pub enum StateChange {
    None,
    InsertDataKey {
        bucket_id: String,
        version: u32,
        wrapped: Vec<u8>,
        lookup: Vec<u8>,
    },
    InsertIdentity(IdentityRow),
    RevokeIdentity {
        name: String,
    },
    InsertRootKey {
        version: u32,
        row: SealedRow,
    },
    Rewrap(Vec<Rewrapped>),
    /// A storage node presented (unwrapped) a wrapping of this data key under `version`.
    Presented {
        data_key_id: i64,
        version: u32,
    },
    /// Delete the sealed root key of `version` if nothing depends on it (`crate::retire`).
    RetireRootKey {
        version: u32,
        /// Ignore data keys last presented under `version` (their buckets were deleted).
        force: bool,
    },
    /// A change of named KMS keys (`kmskeys::store`).
    KmsKey(crate::kmskeys::store::Change),
}

/// Connection options for a database file.
pub fn options(db_file: &Path, create: bool) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::new()
        .filename(db_file)
        .create_if_missing(create)
        .journal_mode(SqliteJournalMode::Delete)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
        // Deleted key material (destroyed KMS keys, retired root keys) is overwritten, not
        // left in free space; see [`truncate_wal`] for the WAL's old frames.
        .pragma("secure_delete", "ON"))
}

impl StateChange {
    /// Whether applying it deletes key material (the writer then calls [`truncate_wal`]).
    pub fn erases_material(&self) -> bool {
        matches!(
            self,
            StateChange::RetireRootKey { .. }
                | StateChange::KmsKey(crate::kmskeys::store::Change::Destroy { .. })
        )
    }
}

/// Checkpoint the WAL into the database file and truncate it, so that the old frames holding
/// deleted key material are gone too. Ok(false) when a reader kept it from completing.
pub async fn truncate_wal(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(conn)
        .await?;
    Ok(busy == 0)
}

/// Run the migrations on a connection.
pub async fn migrate(conn: &mut SqliteConnection) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations/kms").run(conn).await
}

/// How long a commit group waits for the database lock (held only by another process writing
/// `kms.db`) before its operations fail closed with 503; callers give up after about 2 s.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Open the writer connection (migrated, WAL) and a small read pool.
pub async fn open(data_dir: &Path) -> Result<(SqliteConnection, SqlitePool), sqlx::Error> {
    let opts = options(&data_dir.join(DB_FILE), false)?.journal_mode(SqliteJournalMode::Wal);
    let writer_opts = opts.clone().busy_timeout(WRITER_BUSY_TIMEOUT);
    let mut writer = SqliteConnection::connect_with(&writer_opts).await?;
    migrate(&mut writer).await.map_err(sqlx::Error::from)?;
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    Ok((writer, pool))
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn sealed_row(r: &sqlx::sqlite::SqliteRow, col: &str) -> Result<SealedRow, sqlx::Error> {
    let salt: Vec<u8> = r.try_get("kdf_salt")?;
    Ok(SealedRow {
        params: KdfParams {
            m_kib: r.try_get::<i64, _>("kdf_m_kib")? as u32,
            t: r.try_get::<i64, _>("kdf_t")? as u32,
            p: r.try_get::<i64, _>("kdf_p")? as u32,
        },
        salt: salt
            .as_slice()
            .try_into()
            .map_err(|_| sqlx::Error::Decode("salt length".into()))?,
        sealed: r.try_get(col)?,
    })
}

/// Whether the database has been initialized (a root key exists).
pub async fn is_initialized(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM root_keys")
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// All sealed root keys, ascending by version.
pub async fn root_keys(conn: &mut SqliteConnection) -> Result<Vec<(u32, SealedRow)>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM root_keys ORDER BY version")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("version")? as u32,
                sealed_row(r, "sealed_key")?,
            ))
        })
        .collect()
}

/// The sealed audit key and its public key.
pub async fn audit_key(conn: &mut SqliteConnection) -> Result<(SealedRow, Vec<u8>), sqlx::Error> {
    let r = sqlx::query("SELECT * FROM audit_key WHERE id = 1")
        .fetch_one(conn)
        .await?;
    Ok((sealed_row(&r, "sealed_seed")?, r.try_get("public_key")?))
}

/// Store the sealed audit key (init only).
pub async fn insert_audit_key(
    conn: &mut SqliteConnection,
    row: &SealedRow,
    public_key: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit_key (id, kdf_m_kib, kdf_t, kdf_p, kdf_salt, sealed_seed, public_key) VALUES (1, ?, ?, ?, ?, ?, ?)")
        .bind(i64::from(row.params.m_kib))
        .bind(i64::from(row.params.t))
        .bind(i64::from(row.params.p))
        .bind(row.salt.as_slice())
        .bind(row.sealed.as_slice())
        .bind(public_key)
        .execute(conn)
        .await?;
    Ok(())
}

/// All identities.
pub async fn identities(conn: &mut SqliteConnection) -> Result<Vec<IdentityRow>, sqlx::Error> {
    let rows = sqlx::query("SELECT * FROM identities ORDER BY name")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(IdentityRow {
                name: r.try_get("name")?,
                kind: r.try_get("kind")?,
                public_key: r.try_get("public_key")?,
                buckets: r.try_get("buckets")?,
                ops: r.try_get("ops")?,
                keys: r.try_get("keys")?,
                created_ms: r.try_get("created_ms")?,
                revoked_ms: r.try_get("revoked_ms")?,
            })
        })
        .collect()
}

/// Apply one state change (inside the caller's transaction/savepoint).
pub async fn apply_change(
    conn: &mut SqliteConnection,
    change: &StateChange,
) -> Result<(), ApplyError> {
    match change {
        StateChange::None => {}
        StateChange::InsertDataKey {
            bucket_id,
            version,
            wrapped,
            lookup,
        } => {
            let id: i64 = sqlx::query_scalar("INSERT INTO data_keys (bucket_id, cur_version, cur_wrapped, created_ms, presented_version) VALUES (?, ?, ?, ?, ?) RETURNING id")
                .bind(bucket_id)
                .bind(i64::from(*version))
                .bind(wrapped.as_slice())
                .bind(now_ms())
                .bind(i64::from(*version))
                .fetch_one(&mut *conn)
                .await?;
            sqlx::query("INSERT OR IGNORE INTO key_wrappings (lookup, data_key_id, version) VALUES (?, ?, ?)")
                .bind(lookup.as_slice())
                .bind(id)
                .bind(i64::from(*version))
                .execute(&mut *conn)
                .await?;
        }
        StateChange::InsertIdentity(row) => {
            let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM identities WHERE name = ?")
                .bind(&row.name)
                .fetch_one(&mut *conn)
                .await?;
            if exists > 0 {
                return Err(ApplyError::Refused(ChangeError::Conflict(format!(
                    "identity {}",
                    row.name
                ))));
            }
            sqlx::query("INSERT INTO identities (name, kind, public_key, buckets, ops, keys, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(&row.name)
                .bind(&row.kind)
                .bind(row.public_key.as_slice())
                .bind(&row.buckets)
                .bind(&row.ops)
                .bind(&row.keys)
                .bind(row.created_ms)
                .execute(&mut *conn)
                .await?;
        }
        StateChange::RevokeIdentity { name } => {
            let n = sqlx::query("UPDATE identities SET revoked_ms = ? WHERE name = ? AND kind = 'service' AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(name)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(ApplyError::Refused(ChangeError::NotFound(format!(
                    "active service identity {name}"
                ))));
            }
        }
        StateChange::InsertRootKey { version, row } => {
            sqlx::query("INSERT INTO root_keys (version, kdf_m_kib, kdf_t, kdf_p, kdf_salt, sealed_key, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(i64::from(*version))
                .bind(i64::from(row.params.m_kib))
                .bind(i64::from(row.params.t))
                .bind(i64::from(row.params.p))
                .bind(row.salt.as_slice())
                .bind(row.sealed.as_slice())
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
        }
        StateChange::Presented {
            data_key_id,
            version,
        } => crate::retire::record_presented(conn, *data_key_id, *version).await?,
        StateChange::RetireRootKey { version, force } => {
            crate::retire::delete_root_key(conn, *version, *force).await?
        }
        StateChange::KmsKey(c) => crate::kmskeys::store::apply(conn, c).await?,
        StateChange::Rewrap(items) => {
            for it in items {
                sqlx::query("UPDATE data_keys SET cur_version = ?, cur_wrapped = ? WHERE id = ?")
                    .bind(i64::from(it.version))
                    .bind(it.wrapped.as_slice())
                    .bind(it.data_key_id)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("INSERT OR IGNORE INTO key_wrappings (lookup, data_key_id, version) VALUES (?, ?, ?)")
                    .bind(it.lookup.as_slice())
                    .bind(it.data_key_id)
                    .bind(i64::from(it.version))
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Append an audit record.
pub async fn insert_record(
    conn: &mut SqliteConnection,
    rec: &AuditRecord,
) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(rec).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let ts = time::OffsetDateTime::parse(&rec.time, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or_else(|_| now_ms());
    sqlx::query("INSERT INTO audit_log (seq, ts_ms, identity, operation, bucket_id, result, hash, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(rec.seq as i64)
        .bind(ts)
        .bind(&rec.identity)
        .bind(&rec.operation)
        .bind(&rec.bucket)
        .bind(&rec.result)
        .bind(&rec.hash)
        .bind(json)
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts every row of a JSON array of `[seq, ts_ms, identity, operation, bucket, result, hash,
/// record]` arrays: one fixed statement (prepared once) for a whole commit group.
macro_rules! append_records_sql {
    () => {
        "INSERT INTO audit_log (seq, ts_ms, identity, operation, bucket_id, result, hash, record) \
         SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7 \
         FROM json_each(?)"
    };
}
macro_rules! insert_checkpoint_sql {
    () => {
        "INSERT OR REPLACE INTO audit_checkpoints (seq, checkpoint) VALUES (?, ?)"
    };
}

/// How [`append_and_commit`] finds its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Txn {
    /// Open it in the same round trip (a group with no state changes).
    Begin,
    /// Already opened with [`begin`] (state changes were applied in it).
    Open,
}

/// Open the writer's transaction.
pub async fn begin(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(conn).await?;
    Ok(())
}

/// Roll back whatever transaction is open (after a failed group; errors are irrelevant then).
pub async fn rollback(conn: &mut SqliteConnection) {
    let _ = sqlx::query("ROLLBACK").execute(conn).await;
}

/// Apply one job's state change under a savepoint, so that a refused change leaves nothing
/// behind while the rest of the group stays in the transaction.
pub async fn apply_change_isolated(
    conn: &mut SqliteConnection,
    change: &StateChange,
) -> Result<(), ApplyError> {
    sqlx::query("SAVEPOINT change").execute(&mut *conn).await?;
    match apply_change(conn, change).await {
        Ok(()) => {
            sqlx::query("RELEASE change").execute(&mut *conn).await?;
            Ok(())
        }
        Err(e) => {
            sqlx::query("ROLLBACK TO change; RELEASE change")
                .execute(&mut *conn)
                .await?;
            Err(e)
        }
    }
}

/// Append a commit group's records (and a checkpoint), then commit: one round trip to SQLite.
/// Durable when it returns (`synchronous = FULL`). On error the transaction may still be open:
/// the caller rolls back.
pub async fn append_and_commit(
    conn: &mut SqliteConnection,
    txn: Txn,
    recs: &[AuditRecord],
    checkpoint: Option<&Checkpoint>,
) -> Result<(), sqlx::Error> {
    let mut rows = Vec::with_capacity(recs.len());
    for rec in recs {
        let json = serde_json::to_string(rec).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let ts = time::OffsetDateTime::parse(&rec.time, &Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or_else(|_| now_ms());
        rows.push((
            rec.seq,
            ts,
            &rec.identity,
            &rec.operation,
            &rec.bucket,
            &rec.result,
            &rec.hash,
            json,
        ));
    }
    let rows = serde_json::to_string(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let sql = match (txn, checkpoint.is_some()) {
        (Txn::Begin, false) => concat!("BEGIN IMMEDIATE; ", append_records_sql!(), "; COMMIT"),
        (Txn::Open, false) => concat!(append_records_sql!(), "; COMMIT"),
        (Txn::Begin, true) => concat!(
            "BEGIN IMMEDIATE; ",
            append_records_sql!(),
            "; ",
            insert_checkpoint_sql!(),
            "; COMMIT"
        ),
        (Txn::Open, true) => concat!(
            append_records_sql!(),
            "; ",
            insert_checkpoint_sql!(),
            "; COMMIT"
        ),
    };
    let mut q = sqlx::query(sql).bind(rows);
    if let Some(cp) = checkpoint {
        let json = serde_json::to_string(cp).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        q = q.bind(cp.seq as i64).bind(json);
    }
    q.execute(conn).await?;
    Ok(())
}

/// Store a signed checkpoint.
pub async fn insert_checkpoint(
    conn: &mut SqliteConnection,
    cp: &Checkpoint,
) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(cp).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(insert_checkpoint_sql!())
        .bind(cp.seq as i64)
        .bind(json)
        .execute(conn)
        .await?;
    Ok(())
}

/// The committed chain head: (seq, hash, last checkpoint seq).
pub async fn audit_head(conn: &mut SqliteConnection) -> Result<(u64, String, u64), sqlx::Error> {
    let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, hash) = match row {
        Some(r) => (
            r.try_get::<i64, _>("seq")? as u64,
            r.try_get::<String, _>("hash")?,
        ),
        None => (0, String::new()),
    };
    let cp: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_checkpoints")
        .fetch_one(conn)
        .await?;
    Ok((seq, hash, cp.unwrap_or(0) as u64))
}

/// Filters of an audit query.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct AuditFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub identity: Option<String>,
    pub bucket: Option<String>,
    pub op: Option<String>,
    pub result: Option<String>,
    pub limit: Option<i64>,
}

/// Records matching `f`, oldest first, as stored JSON.
pub async fn query_records(pool: &SqlitePool, f: &AuditFilter) -> Result<Vec<String>, sqlx::Error> {
    let mut sql = String::from("SELECT record FROM audit_log WHERE 1 = 1");
    if f.since_ms.is_some() {
        sql.push_str(" AND ts_ms >= ?");
    }
    if f.until_ms.is_some() {
        sql.push_str(" AND ts_ms <= ?");
    }
    if f.identity.is_some() {
        sql.push_str(" AND identity = ?");
    }
    if f.bucket.is_some() {
        // A storage node names a bucket `<S3 bucket name>:<uuid>`: an S3 bucket name matches
        // every incarnation of that bucket, a full id only itself.
        sql.push_str(" AND (bucket_id = ? OR substr(bucket_id, 1, length(?) + 1) = ? || ':')");
    }
    for (v, col) in [(&f.op, "operation"), (&f.result, "result")] {
        if v.is_some() {
            sql.push_str(&format!(" AND {col} = ?"));
        }
    }
    sql.push_str(" ORDER BY seq LIMIT ?");
    let mut q = sqlx::query_scalar::<_, String>(&sql);
    for v in [f.since_ms, f.until_ms].into_iter().flatten() {
        q = q.bind(v);
    }
    if let Some(v) = &f.identity {
        q = q.bind(v.clone());
    }
    if let Some(v) = &f.bucket {
        q = q.bind(v.clone()).bind(v.clone()).bind(v.clone());
    }
    for v in [&f.op, &f.result].into_iter().flatten() {
        q = q.bind(v.clone());
    }
    q.bind(f.limit.unwrap_or(1000).clamp(1, 100_000))
        .fetch_all(pool)
        .await
}

/// Records with `from <= seq <= to`, ascending, as stored JSON, with checkpoints in that range.
pub async fn export_page(
    pool: &SqlitePool,
    from: u64,
    to: u64,
) -> Result<(Vec<(u64, String)>, Vec<(u64, String)>), sqlx::Error> {
    let recs =
        sqlx::query("SELECT seq, record FROM audit_log WHERE seq >= ? AND seq <= ? ORDER BY seq")
            .bind(from as i64)
            .bind(to as i64)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("seq")? as u64,
                    r.try_get::<String, _>("record")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let cps = sqlx::query(
        "SELECT seq, checkpoint FROM audit_checkpoints WHERE seq >= ? AND seq <= ? ORDER BY seq",
    )
    .bind(from as i64)
    .bind(to as i64)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get::<i64, _>("seq")? as u64,
            r.try_get::<String, _>("checkpoint")?,
        ))
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok((recs, cps))
}

/// Data keys not yet wrapped under `active`, at most `limit`: (id, bucket, version, wrapped).
pub async fn keys_to_rewrap(
    pool: &SqlitePool,
    active: u32,
    limit: i64,
) -> Result<Vec<(i64, String, u32, Vec<u8>)>, sqlx::Error> {
    sqlx::query("SELECT id, bucket_id, cur_version, cur_wrapped FROM data_keys WHERE cur_version < ? ORDER BY id LIMIT ?")
        .bind(i64::from(active))
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                r.try_get("bucket_id")?,
                r.try_get::<i64, _>("cur_version")? as u32,
                r.try_get("cur_wrapped")?,
            ))
        })
        .collect()
}

/// Count of data keys per current root version.
pub async fn keys_per_version(pool: &SqlitePool) -> Result<Vec<(u32, i64)>, sqlx::Error> {
    sqlx::query("SELECT cur_version, COUNT(*) AS n FROM data_keys GROUP BY cur_version ORDER BY cur_version")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>("cur_version")? as u32, r.try_get("n")?)))
        .collect()
}

/// Root key versions with their creation time.
pub async fn root_versions(pool: &SqlitePool) -> Result<Vec<(u32, i64)>, sqlx::Error> {
    sqlx::query("SELECT version, created_ms FROM root_keys ORDER BY version")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<i64, _>("version")? as u32,
                r.try_get("created_ms")?,
            ))
        })
        .collect()
}

/// The data key that `lookup` designates, if registered.
pub struct Registered {
    pub id: i64,
    pub cur_version: u32,
    pub cur_wrapped: Vec<u8>,
    /// Version of the wrapping last presented for it (`crate::retire`).
    pub presented_version: Option<u32>,
}

/// The registered data key that `lookup` designates, if any.
pub async fn current_wrapping(
    pool: &SqlitePool,
    lookup: &[u8],
) -> Result<Option<Registered>, sqlx::Error> {
    let row = sqlx::query("SELECT d.id, d.cur_version, d.cur_wrapped, d.presented_version FROM key_wrappings w JOIN data_keys d ON d.id = w.data_key_id WHERE w.lookup = ?")
        .bind(lookup)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        Ok(Registered {
            id: r.try_get("id")?,
            cur_version: r.try_get::<i64, _>("cur_version")? as u32,
            cur_wrapped: r.try_get("cur_wrapped")?,
            presented_version: r
                .try_get::<Option<i64>, _>("presented_version")?
                .map(|v| v as u32),
        })
    })
    .transpose()
}
