//! The KMS database (SQLite, or PostgreSQL shared by replicas; sqlx runtime queries written once
//! with `$N` placeholders and run on either backend through [`on_db!`]/[`on_conn!`]; migrations
//! in `migrations/kms/` and `migrations/kms_pg/`):
//! sealed root keys, the sealed audit key, identities (public keys and scopes), the registry of
//! issued data keys (wrapped only) and the audit log with its checkpoints.
//!
//! Secret: nothing in the clear; keys are stored sealed (root, audit) or wrapped (data keys).
//! Atomic: writes happen only through [`apply_change`] and [`append_and_commit`] (the audit
//! writer, one transaction per commit group) and [`insert_record`] (init). `synchronous = FULL`
//! throughout, so a commit is durable when it returns. `init` builds the file with a rollback
//! journal (one self-contained file to rename into place); a serving KMS switches it to WAL, where
//! a commit costs one append and one fsync of `kms.db-wal` instead of creating, syncing and
//! deleting a journal (four fsyncs). On PostgreSQL the writer's groups use [`pg_lock_head`],
//! [`apply_change`] and [`pg_append`] in one transaction (`audit/writer.rs`), and durability is
//! the server's (`synchronous_commit`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
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
    /// A background write of a replica that no longer holds the lease (its epoch is stale).
    #[error("lease epoch {0} is no longer current (another replica holds the lease)")]
    Fenced(u64),
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
            ChangeError::Fenced(_) => "fenced",
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

/// Runs `$body` once per backend with `$p` bound to the pool (`&SqlitePool` or `&PgPool`): a
/// query is written once (with `$N` placeholders, which SQLite reads as parameter N) and
/// compiled for both.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($p) => $body,
            $crate::store::Db::Pg($p) => $body,
        }
    };
}

/// [`on_db!`] for a connection: `$c` is `&mut SqliteConnection` or `&mut PgConnection`.
#[macro_export]
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::DbConn::Sqlite($c) => $body,
            $crate::store::DbConn::Pg($c) => $body,
        }
    };
}

/// The read pool of either backend.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

impl Db {
    /// True on PostgreSQL (several replicas may share it).
    pub fn is_pg(&self) -> bool {
        matches!(self, Db::Pg(_))
    }
}

/// One connection of either backend (the audit writer's, init's).
#[derive(Debug)]
pub enum DbConn {
    Sqlite(SqliteConnection),
    Pg(PgConnection),
}

impl DbConn {
    /// Close the connection (errors are irrelevant then).
    pub async fn close(self) {
        let _ = match self {
            DbConn::Sqlite(c) => c.close().await,
            DbConn::Pg(c) => c.close().await,
        };
    }
}

/// Where the KMS state lives: `kms.db` in the data dir, or a PostgreSQL database shared by
/// replicas (setting `database_url`).
#[derive(Debug, Clone)]
pub enum Location {
    /// The data dir holding `kms.db`.
    Sqlite(PathBuf),
    Pg(Box<PgConnectOptions>),
}

/// Why a `database_url` setting is unusable.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("database_url must be postgres://… or postgresql://… (unset: DATA_DIR/kms.db)")]
    Scheme,
    #[error("database_url: {0}")]
    Url(String),
    #[error("database_password_file: {0}")]
    Password(String),
}

impl Location {
    /// The location of a `database_url` setting (`None`: the data dir's `kms.db`), with the
    /// password read from `password_file` when given.
    pub fn from_settings(
        data_dir: &Path,
        url: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<Self, LocationError> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Ok(Location::Sqlite(data_dir.to_path_buf()));
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(LocationError::Scheme);
        }
        let mut opts =
            PgConnectOptions::from_str(url).map_err(|e| LocationError::Url(e.to_string()))?;
        if let Some(f) = password_file {
            let raw = coffer_common::secret_file::read_secret_file(f)
                .map_err(|e| LocationError::Password(e.to_string()))?;
            let pw =
                String::from_utf8(raw).map_err(|_| LocationError::Password("not UTF-8".into()))?;
            opts = opts.password(pw.trim_end_matches(['\r', '\n']));
        }
        Ok(Location::Pg(Box::new(opts.application_name("coffer-kms"))))
    }

    /// True on PostgreSQL.
    pub fn is_pg(&self) -> bool {
        matches!(self, Location::Pg(_))
    }
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

    /// Whether other replicas must reload what they hold in memory (identities, root keys)
    /// once it is committed: the writer bumps the `changes` counter of the chain head row.
    pub fn invalidates_caches(&self) -> bool {
        matches!(
            self,
            StateChange::InsertIdentity(_)
                | StateChange::RevokeIdentity { .. }
                | StateChange::InsertRootKey { .. }
                | StateChange::RetireRootKey { .. }
        )
    }
}

/// Checkpoint the WAL into the database file and truncate it, so that the old frames holding
/// deleted key material are gone too. Ok(false) when a reader kept it from completing (always
/// true on PostgreSQL, which has no such file).
pub async fn truncate_wal(conn: &mut DbConn) -> Result<bool, sqlx::Error> {
    let DbConn::Sqlite(conn) = conn else {
        return Ok(true);
    };
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(conn)
        .await?;
    Ok(busy == 0)
}

/// Run the migrations of the connection's backend (`migrations/kms/` or `migrations/kms_pg/`;
/// PostgreSQL serializes concurrent replicas with an advisory lock).
pub async fn migrate(conn: &mut DbConn) -> Result<(), sqlx::migrate::MigrateError> {
    match conn {
        DbConn::Sqlite(c) => sqlx::migrate!("../migrations/kms").run(c).await,
        DbConn::Pg(c) => sqlx::migrate!("../migrations/kms_pg").run(c).await,
    }
}

/// How long a commit group waits for the database lock (held only by another process writing
/// `kms.db`) before its operations fail closed with 503; callers give up after about 2 s.
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Read connections of a replica on PostgreSQL.
const PG_POOL: u32 = 8;

/// Open the writer connection (migrated, WAL) and a small read pool of `DATA_DIR/kms.db`.
pub async fn open(data_dir: &Path) -> Result<(DbConn, Db), sqlx::Error> {
    open_at(&Location::Sqlite(data_dir.to_path_buf())).await
}

/// Open the writer connection (migrated) and the read pool at `loc`.
pub async fn open_at(loc: &Location) -> Result<(DbConn, Db), sqlx::Error> {
    match loc {
        Location::Sqlite(data_dir) => {
            let opts =
                options(&data_dir.join(DB_FILE), false)?.journal_mode(SqliteJournalMode::Wal);
            let writer_opts = opts.clone().busy_timeout(WRITER_BUSY_TIMEOUT);
            let mut writer = DbConn::Sqlite(SqliteConnection::connect_with(&writer_opts).await?);
            migrate(&mut writer).await.map_err(sqlx::Error::from)?;
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await?;
            Ok((writer, Db::Sqlite(pool)))
        }
        Location::Pg(opts) => {
            let mut writer = DbConn::Pg(PgConnection::connect_with(opts).await?);
            migrate(&mut writer).await.map_err(sqlx::Error::from)?;
            let pool = PgPoolOptions::new()
                .max_connections(PG_POOL)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(opts.as_ref().clone())
                .await?;
            Ok((writer, Db::Pg(pool)))
        }
    }
}

/// A new connection at `loc` (PostgreSQL only: the lease keeper's; `None` on SQLite).
pub async fn connect_pg(loc: &Location) -> Result<Option<PgConnection>, sqlx::Error> {
    match loc {
        Location::Sqlite(_) => Ok(None),
        Location::Pg(opts) => Ok(Some(PgConnection::connect_with(opts).await?)),
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

macro_rules! sealed_row {
    ($r:expr, $col:expr) => {{
        let r = $r;
        let salt: Vec<u8> = r.try_get("kdf_salt")?;
        Ok::<SealedRow, sqlx::Error>(SealedRow {
            params: KdfParams {
                m_kib: r.try_get::<i64, _>("kdf_m_kib")? as u32,
                t: r.try_get::<i64, _>("kdf_t")? as u32,
                p: r.try_get::<i64, _>("kdf_p")? as u32,
            },
            salt: salt
                .as_slice()
                .try_into()
                .map_err(|_| sqlx::Error::Decode("salt length".into()))?,
            sealed: r.try_get($col)?,
        })
    }};
}

/// Whether the database has been initialized (a root key exists).
pub async fn is_initialized(conn: &mut DbConn) -> Result<bool, sqlx::Error> {
    let n: i64 = on_conn!(conn, c => sqlx::query_scalar("SELECT COUNT(*) FROM root_keys")
        .fetch_one(&mut *c)
        .await?);
    Ok(n > 0)
}

/// All sealed root keys, ascending by version.
pub async fn root_keys(conn: &mut DbConn) -> Result<Vec<(u32, SealedRow)>, sqlx::Error> {
    on_conn!(conn, c => {
        let rows = sqlx::query("SELECT * FROM root_keys ORDER BY version")
            .fetch_all(&mut *c)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>("version")? as u32, sealed_row!(r, "sealed_key")?)))
            .collect()
    })
}

/// All sealed root keys through the pool (a replica reloading its keyring).
pub async fn root_keys_pool(db: &Db) -> Result<Vec<(u32, SealedRow)>, sqlx::Error> {
    on_db!(db, p => {
        let rows = sqlx::query("SELECT * FROM root_keys ORDER BY version")
            .fetch_all(p)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>("version")? as u32, sealed_row!(r, "sealed_key")?)))
            .collect()
    })
}

/// The sealed audit key and its public key.
pub async fn audit_key(conn: &mut DbConn) -> Result<(SealedRow, Vec<u8>), sqlx::Error> {
    on_conn!(conn, c => {
        let r = sqlx::query("SELECT * FROM audit_key WHERE id = 1")
            .fetch_one(&mut *c)
            .await?;
        Ok((sealed_row!(&r, "sealed_seed")?, r.try_get("public_key")?))
    })
}

/// Store the sealed audit key (init only).
pub async fn insert_audit_key(
    conn: &mut DbConn,
    row: &SealedRow,
    public_key: &[u8],
) -> Result<(), sqlx::Error> {
    on_conn!(conn, c => sqlx::query("INSERT INTO audit_key (id, kdf_m_kib, kdf_t, kdf_p, kdf_salt, sealed_seed, public_key) VALUES (1, $1, $2, $3, $4, $5, $6)")
        .bind(i64::from(row.params.m_kib))
        .bind(i64::from(row.params.t))
        .bind(i64::from(row.params.p))
        .bind(row.salt.as_slice())
        .bind(row.sealed.as_slice())
        .bind(public_key)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

macro_rules! identity_row {
    ($r:expr) => {{
        let r = $r;
        Ok::<IdentityRow, sqlx::Error>(IdentityRow {
            name: r.try_get("name")?,
            kind: r.try_get("kind")?,
            public_key: r.try_get("public_key")?,
            buckets: r.try_get("buckets")?,
            ops: r.try_get("ops")?,
            keys: r.try_get("keys")?,
            created_ms: r.try_get("created_ms")?,
            revoked_ms: r.try_get("revoked_ms")?,
        })
    }};
}

/// All identities (start-up, through the writer's connection).
pub async fn identities(conn: &mut DbConn) -> Result<Vec<IdentityRow>, sqlx::Error> {
    on_conn!(conn, c => {
        let rows = sqlx::query("SELECT * FROM identities ORDER BY name")
            .fetch_all(&mut *c)
            .await?;
        rows.iter().map(|r| identity_row!(r)).collect()
    })
}

/// All identities, through the read pool.
pub async fn identities_pool(db: &Db) -> Result<Vec<IdentityRow>, sqlx::Error> {
    on_db!(db, p => {
        let rows = sqlx::query("SELECT * FROM identities ORDER BY name")
            .fetch_all(p)
            .await?;
        rows.iter().map(|r| identity_row!(r)).collect()
    })
}

/// Apply one state change (inside the caller's transaction/savepoint).
pub async fn apply_change(conn: &mut DbConn, change: &StateChange) -> Result<(), ApplyError> {
    match change {
        StateChange::None => {}
        StateChange::InsertDataKey {
            bucket_id,
            version,
            wrapped,
            lookup,
        } => on_conn!(conn, c => {
            let id: i64 = sqlx::query_scalar("INSERT INTO data_keys (bucket_id, cur_version, cur_wrapped, created_ms, presented_version) VALUES ($1, $2, $3, $4, $5) RETURNING id")
                .bind(bucket_id)
                .bind(i64::from(*version))
                .bind(wrapped.as_slice())
                .bind(now_ms())
                .bind(i64::from(*version))
                .fetch_one(&mut *c)
                .await?;
            sqlx::query("INSERT INTO key_wrappings (lookup, data_key_id, version) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(lookup.as_slice())
                .bind(id)
                .bind(i64::from(*version))
                .execute(&mut *c).await.map(|r| r.rows_affected())?;
        }),
        StateChange::InsertIdentity(row) => on_conn!(conn, c => {
            let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM identities WHERE name = $1")
                .bind(&row.name)
                .fetch_one(&mut *c)
                .await?;
            if exists > 0 {
                return Err(ApplyError::Refused(ChangeError::Conflict(format!(
                    "identity {}",
                    row.name
                ))));
            }
            sqlx::query("INSERT INTO identities (name, kind, public_key, buckets, ops, keys, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&row.name)
                .bind(&row.kind)
                .bind(row.public_key.as_slice())
                .bind(&row.buckets)
                .bind(&row.ops)
                .bind(&row.keys)
                .bind(row.created_ms)
                .execute(&mut *c).await.map(|r| r.rows_affected())?;
        }),
        StateChange::RevokeIdentity { name } => {
            let n = on_conn!(conn, c => sqlx::query("UPDATE identities SET revoked_ms = $1 WHERE name = $2 AND kind = 'service' AND revoked_ms IS NULL")
                .bind(now_ms())
                .bind(name)
                .execute(&mut *c).await.map(|r| r.rows_affected())?);
            if n == 0 {
                return Err(ApplyError::Refused(ChangeError::NotFound(format!(
                    "active service identity {name}"
                ))));
            }
        }
        StateChange::InsertRootKey { version, row } => on_conn!(conn, c => {
            // Two replicas rotating at once: the second is refused, not a failed batch.
            let exists: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM root_keys WHERE version = $1")
                .bind(i64::from(*version))
                .fetch_one(&mut *c)
                .await?;
            if exists > 0 {
                return Err(ApplyError::Refused(ChangeError::Conflict(format!(
                    "root key version {version}"
                ))));
            }
            sqlx::query("INSERT INTO root_keys (version, kdf_m_kib, kdf_t, kdf_p, kdf_salt, sealed_key, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(i64::from(*version))
                .bind(i64::from(row.params.m_kib))
                .bind(i64::from(row.params.t))
                .bind(i64::from(row.params.p))
                .bind(row.salt.as_slice())
                .bind(row.sealed.as_slice())
                .bind(now_ms())
                .execute(&mut *c).await.map(|r| r.rows_affected())?;
        }),
        StateChange::Presented {
            data_key_id,
            version,
        } => crate::retire::record_presented(conn, *data_key_id, *version).await?,
        StateChange::RetireRootKey { version, force } => {
            crate::retire::delete_root_key(conn, *version, *force).await?
        }
        StateChange::KmsKey(c) => crate::kmskeys::store::apply(conn, c).await?,
        StateChange::Rewrap(items) => on_conn!(conn, c => {
            for it in items {
                sqlx::query("UPDATE data_keys SET cur_version = $1, cur_wrapped = $2 WHERE id = $3")
                    .bind(i64::from(it.version))
                    .bind(it.wrapped.as_slice())
                    .bind(it.data_key_id)
                    .execute(&mut *c).await.map(|r| r.rows_affected())?;
                sqlx::query("INSERT INTO key_wrappings (lookup, data_key_id, version) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(it.lookup.as_slice())
                    .bind(it.data_key_id)
                    .bind(i64::from(it.version))
                    .execute(&mut *c).await.map(|r| r.rows_affected())?;
            }
        }),
    }
    Ok(())
}

fn record_ts(rec: &AuditRecord) -> i64 {
    time::OffsetDateTime::parse(&rec.time, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or_else(|_| now_ms())
}

/// Append an audit record (init).
pub async fn insert_record(conn: &mut DbConn, rec: &AuditRecord) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(rec).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let ts = record_ts(rec);
    let pg = matches!(conn, DbConn::Pg(_));
    on_conn!(conn, c => sqlx::query("INSERT INTO audit_log (seq, ts_ms, identity, operation, bucket_id, result, hash, record) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(rec.seq as i64)
        .bind(ts)
        .bind(pg_text(pg, &rec.identity))
        .bind(pg_text(pg, &rec.operation))
        .bind(rec.bucket.as_deref().map(|b| pg_text(pg, b)))
        .bind(pg_text(pg, &rec.result))
        .bind(&rec.hash)
        .bind(json)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// PostgreSQL text cannot hold NUL: the filter columns (copies; the hashed JSON escapes it) get
/// U+FFFD instead, so a caller cannot fail a commit group with one.
fn pg_text(pg: bool, s: &str) -> String {
    if pg && s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
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
        "INSERT INTO audit_checkpoints (seq, checkpoint) VALUES ($1, $2) ON CONFLICT (seq) DO UPDATE SET checkpoint = excluded.checkpoint"
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
pub async fn begin(conn: &mut DbConn) -> Result<(), sqlx::Error> {
    match conn {
        DbConn::Sqlite(c) => {
            sqlx::query("BEGIN IMMEDIATE").execute(c).await?;
        }
        DbConn::Pg(c) => {
            sqlx::query("BEGIN").execute(c).await?;
        }
    }
    Ok(())
}

/// Commit the open transaction.
pub async fn commit(conn: &mut DbConn) -> Result<(), sqlx::Error> {
    on_conn!(conn, c => sqlx::query("COMMIT").execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Roll back whatever transaction is open (after a failed group; errors are irrelevant then).
pub async fn rollback(conn: &mut DbConn) {
    let _ = on_conn!(conn, c => sqlx::query("ROLLBACK").execute(&mut *c).await.map(|r| r.rows_affected()));
}

/// Apply one job's state change under a savepoint, so that a refused change leaves nothing
/// behind while the rest of the group stays in the transaction.
pub async fn apply_change_isolated(
    conn: &mut DbConn,
    change: &StateChange,
) -> Result<(), ApplyError> {
    on_conn!(conn, c => sqlx::query("SAVEPOINT change").execute(&mut *c).await.map(|r| r.rows_affected()))?;
    match apply_change(conn, change).await {
        Ok(()) => {
            on_conn!(conn, c => sqlx::query("RELEASE SAVEPOINT change").execute(&mut *c).await.map(|r| r.rows_affected()))?;
            Ok(())
        }
        Err(e) => {
            on_conn!(conn, c => {
                sqlx::query("ROLLBACK TO SAVEPOINT change").execute(&mut *c).await.map(|r| r.rows_affected())?;
                sqlx::query("RELEASE SAVEPOINT change").execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
            Err(e)
        }
    }
}

/// Append a commit group's records (and a checkpoint), then commit: one round trip to SQLite.
/// Durable when it returns (`synchronous = FULL`). On error the transaction may still be open:
/// the caller rolls back. SQLite only (PostgreSQL: [`pg_append`]).
pub async fn append_and_commit(
    conn: &mut SqliteConnection,
    txn: Txn,
    recs: &[AuditRecord],
    checkpoint: Option<&Checkpoint>,
) -> Result<(), sqlx::Error> {
    let mut rows = Vec::with_capacity(recs.len());
    for rec in recs {
        let json = serde_json::to_string(rec).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        rows.push((
            rec.seq,
            record_ts(rec),
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
            "INSERT OR REPLACE INTO audit_checkpoints (seq, checkpoint) VALUES (?, ?)",
            "; COMMIT"
        ),
        (Txn::Open, true) => concat!(
            append_records_sql!(),
            "; ",
            "INSERT OR REPLACE INTO audit_checkpoints (seq, checkpoint) VALUES (?, ?)",
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

/// The chain head row of PostgreSQL, locked (`FOR UPDATE`) until the transaction ends: every
/// replica's commit group takes it first, so sequence numbers and previous hashes come from the
/// database, never from a replica's memory, and groups of all replicas form one chain.
/// Returns (seq, hash, last checkpoint seq).
pub async fn pg_lock_head(conn: &mut PgConnection) -> Result<(u64, String, u64), sqlx::Error> {
    let (seq, hash, cp): (i64, String, i64) =
        sqlx::query_as("SELECT seq, hash, checkpoint_seq FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *conn)
            .await?;
    Ok((seq as u64, hash, cp as u64))
}

/// The lease epoch, read under a share lock (a takeover's update waits for this transaction),
/// so a write checked against it commits before any new holder's epoch exists.
pub async fn pg_lease_epoch(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let e: i64 = sqlx::query_scalar("SELECT epoch FROM kms_lease WHERE id = 1 FOR SHARE")
        .fetch_one(&mut *conn)
        .await?;
    Ok(e as u64)
}

/// Append a commit group's records (one statement), an optional checkpoint, move the head row
/// and (when `bump` ) the `changes` counter, inside the transaction holding the head lock.
pub async fn pg_append(
    conn: &mut PgConnection,
    recs: &[AuditRecord],
    checkpoint: Option<&Checkpoint>,
    head: (u64, &str, u64),
    bump: bool,
) -> Result<(), sqlx::Error> {
    let n = recs.len();
    let (mut seq, mut ts, mut ident, mut op, mut bucket, mut res, mut hash, mut json) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for rec in recs {
        seq.push(rec.seq as i64);
        ts.push(record_ts(rec));
        ident.push(pg_text(true, &rec.identity));
        op.push(pg_text(true, &rec.operation));
        bucket.push(rec.bucket.as_deref().map(|b| pg_text(true, b)));
        res.push(pg_text(true, &rec.result));
        hash.push(rec.hash.clone());
        json.push(serde_json::to_string(rec).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
    }
    let cp = checkpoint
        .map(|cp| serde_json::to_string(cp).map(|j| (cp.seq as i64, j)))
        .transpose()
        .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    // One statement (one round trip while the head lock is held): records, checkpoint, head.
    sqlx::query(
        "WITH recs AS (INSERT INTO audit_log (seq, ts_ms, identity, operation, bucket_id, result, hash, record) \
           SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])), \
         cp AS (INSERT INTO audit_checkpoints (seq, checkpoint) SELECT $9::bigint, $10::text WHERE $10::text IS NOT NULL \
           ON CONFLICT (seq) DO UPDATE SET checkpoint = excluded.checkpoint) \
         UPDATE audit_head SET seq = $11, hash = $12, checkpoint_seq = $13, changes = changes + $14 WHERE id = 1",
    )
    .bind(seq)
    .bind(ts)
    .bind(ident)
    .bind(op)
    .bind(bucket)
    .bind(res)
    .bind(hash)
    .bind(json)
    .bind(cp.as_ref().map_or(0, |c| c.0))
    .bind(cp.map(|c| c.1))
    .bind(head.0 as i64)
    .bind(head.1)
    .bind(head.2 as i64)
    .bind(i64::from(bump))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Store a signed checkpoint.
pub async fn insert_checkpoint(conn: &mut DbConn, cp: &Checkpoint) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(cp).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    on_conn!(conn, c => sqlx::query(insert_checkpoint_sql!())
        .bind(cp.seq as i64)
        .bind(&json)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// The committed chain head: (seq, hash, last checkpoint seq).
pub async fn audit_head(conn: &mut DbConn) -> Result<(u64, String, u64), sqlx::Error> {
    on_conn!(conn, c => {
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *c)
            .await?;
        let (seq, hash) = match row {
            Some(r) => (
                r.try_get::<i64, _>("seq")? as u64,
                r.try_get::<String, _>("hash")?,
            ),
            None => (0, String::new()),
        };
        let cp: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_checkpoints")
            .fetch_one(&mut *c)
            .await?;
        Ok((seq, hash, cp.unwrap_or(0) as u64))
    })
}

/// The committed head row of PostgreSQL through the pool: (seq, hash, last checkpoint seq,
/// changes counter).
pub async fn pg_head(pool: &PgPool) -> Result<(u64, String, u64, i64), sqlx::Error> {
    let (seq, hash, cp, changes): (i64, String, i64, i64) =
        sqlx::query_as("SELECT seq, hash, checkpoint_seq, changes FROM audit_head WHERE id = 1")
            .fetch_one(pool)
            .await?;
    Ok((seq as u64, hash, cp as u64, changes))
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
pub async fn query_records(pool: &Db, f: &AuditFilter) -> Result<Vec<String>, sqlx::Error> {
    let mut sql = String::from("SELECT record FROM audit_log WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if f.since_ms.is_some() {
        sql.push_str(&format!(" AND ts_ms >= {}", next()));
    }
    if f.until_ms.is_some() {
        sql.push_str(&format!(" AND ts_ms <= {}", next()));
    }
    if f.identity.is_some() {
        sql.push_str(&format!(" AND identity = {}", next()));
    }
    if f.bucket.is_some() {
        // A storage node names a bucket `<S3 bucket name>:<uuid>`: an S3 bucket name matches
        // every incarnation of that bucket, a full id only itself.
        let p = next();
        sql.push_str(&format!(
            " AND (bucket_id = {p} OR substr(bucket_id, 1, length({p}) + 1) = {p} || ':')"
        ));
    }
    for (v, col) in [(&f.op, "operation"), (&f.result, "result")] {
        if v.is_some() {
            sql.push_str(&format!(" AND {col} = {}", next()));
        }
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT {}", next()));
    on_db!(pool, p => {
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for v in [f.since_ms, f.until_ms].into_iter().flatten() {
            q = q.bind(v);
        }
        if let Some(v) = &f.identity {
            q = q.bind(v.clone());
        }
        if let Some(v) = &f.bucket {
            q = q.bind(v.clone());
        }
        for v in [&f.op, &f.result].into_iter().flatten() {
            q = q.bind(v.clone());
        }
        q.bind(f.limit.unwrap_or(1000).clamp(1, 100_000))
            .fetch_all(p)
            .await
    })
}

/// Records with `from <= seq <= to`, ascending, as stored JSON, with checkpoints in that range.
pub async fn export_page(
    pool: &Db,
    from: u64,
    to: u64,
) -> Result<(Vec<(u64, String)>, Vec<(u64, String)>), sqlx::Error> {
    let recs: Vec<(i64, String)> = on_db!(pool, p => sqlx::query_as(
        "SELECT seq, record FROM audit_log WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
    )
    .bind(from as i64)
    .bind(to as i64)
    .fetch_all(p)
    .await)?;
    let cps: Vec<(i64, String)> = on_db!(pool, p => sqlx::query_as(
        "SELECT seq, checkpoint FROM audit_checkpoints WHERE seq >= $1 AND seq <= $2 ORDER BY seq",
    )
    .bind(from as i64)
    .bind(to as i64)
    .fetch_all(p)
    .await)?;
    Ok((
        recs.into_iter().map(|(s, r)| (s as u64, r)).collect(),
        cps.into_iter().map(|(s, r)| (s as u64, r)).collect(),
    ))
}

/// Data keys not yet wrapped under `active`, at most `limit`: (id, bucket, version, wrapped).
pub async fn keys_to_rewrap(
    pool: &Db,
    active: u32,
    limit: i64,
) -> Result<Vec<(i64, String, u32, Vec<u8>)>, sqlx::Error> {
    let rows: Vec<(i64, String, i64, Vec<u8>)> = on_db!(pool, p => sqlx::query_as("SELECT id, bucket_id, cur_version, cur_wrapped FROM data_keys WHERE cur_version < $1 ORDER BY id LIMIT $2")
        .bind(i64::from(active))
        .bind(limit)
        .fetch_all(p)
        .await)?;
    Ok(rows
        .into_iter()
        .map(|(id, b, v, w)| (id, b, v as u32, w))
        .collect())
}

/// Count of data keys per current root version.
pub async fn keys_per_version(pool: &Db) -> Result<Vec<(u32, i64)>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = on_db!(pool, p => sqlx::query_as("SELECT cur_version, COUNT(*) AS n FROM data_keys GROUP BY cur_version ORDER BY cur_version")
        .fetch_all(p)
        .await)?;
    Ok(rows.into_iter().map(|(v, n)| (v as u32, n)).collect())
}

/// Root key versions with their creation time.
pub async fn root_versions(pool: &Db) -> Result<Vec<(u32, i64)>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = on_db!(pool, p => sqlx::query_as("SELECT version, created_ms FROM root_keys ORDER BY version")
        .fetch_all(p)
        .await)?;
    Ok(rows.into_iter().map(|(v, c)| (v as u32, c)).collect())
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
pub async fn current_wrapping(pool: &Db, lookup: &[u8]) -> Result<Option<Registered>, sqlx::Error> {
    let row: Option<(i64, i64, Vec<u8>, Option<i64>)> = on_db!(pool, p => sqlx::query_as("SELECT d.id, d.cur_version, d.cur_wrapped, d.presented_version FROM key_wrappings w JOIN data_keys d ON d.id = w.data_key_id WHERE w.lookup = $1")
        .bind(lookup)
        .fetch_optional(p)
        .await)?;
    Ok(row.map(|(id, v, w, pv)| Registered {
        id,
        cur_version: v as u32,
        cur_wrapped: w,
        presented_version: pv.map(|v| v as u32),
    }))
}
