//! The two metadata backends behind one query interface: SQLite (the embedded default: one
//! writer connection, a pool of readers) and PostgreSQL (several storage nodes on one
//! database). Every query of the metadata is written once, as SQL text with `$1..$N`
//! placeholders (sqlx-sqlite binds `$N` to argument N, as PostgreSQL does) and portable SQL, and
//! runs on either backend through [`Q`]; rows come back as [`Row`], whose columns decode to the
//! same Rust types on both (integers are `BIGINT`/`i64`, blobs `BYTEA`/`BLOB`/`Vec<u8>`).
//!
//! Writes: a write checks out a [`WriteConn`] and opens a [`Tx`]. On SQLite that is the one
//! writer connection (SQLite allows one writer at a time); on PostgreSQL every write
//! transaction first takes one transaction-scoped advisory lock ([`WRITE_LOCK`]), so writes are
//! serialized across every node sharing the database exactly as SQLite's single writer
//! serializes them on one node, and each statement after the lock (READ COMMITTED) sees every
//! write committed before it.
//!
//! Secret: the PostgreSQL password (from `database_password_file`) is only handed to the
//! driver's connect options; [`redact_url`] is what may be logged of a URL.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ColumnIndex, Connection, Decode, Postgres, Sqlite, Transaction, Type};

pub type DbError = sqlx::Error;

/// The advisory lock key every PostgreSQL write transaction takes first (`pg_advisory_xact_lock`):
/// one cluster-wide writer at a time. ASCII "cofferSW" (coffer storage writes).
pub const WRITE_LOCK: i64 = 0x636f_6666_6572_5357;

/// Where the metadata lives: the `database_url` setting.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file (`sqlite://PATH`; the default is `meta.db` under the data dir).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://`).
    Postgres(String),
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            DatabaseUrl::Postgres(u) => f.write_str(&redact_url(u)),
        }
    }
}

/// Why a `database_url` was refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("database_url must start with sqlite:// or postgres:// (got {0})")]
    Scheme(String),
    #[error("database_url sqlite:// needs a file path")]
    EmptyPath,
}

impl DatabaseUrl {
    /// Parse a `database_url` setting.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(UrlError::EmptyPath);
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        Err(UrlError::Scheme(redact_url(url)))
    }

    /// The default: `meta.db` in the data dir.
    pub fn default_for(data_dir: &Path) -> Self {
        DatabaseUrl::Sqlite(data_dir.join("meta.db"))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, DatabaseUrl::Postgres(_))
    }
}

/// The metadata database settings.
#[derive(Clone)]
pub struct DbConfig {
    pub url: DatabaseUrl,
    /// PostgreSQL password (read from `database_password_file`); overrides one in the URL.
    pub password: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl DbConfig {
    /// The default SQLite file under `data_dir`.
    pub fn sqlite_in(data_dir: &Path) -> Self {
        DbConfig {
            url: DatabaseUrl::default_for(data_dir),
            password: None,
        }
    }
}

/// `url` with any password replaced by `***` (what may be logged or shown).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut out = format!("{scheme}://");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***@")),
                None => out.push_str(&format!("{userinfo}@")),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    // A password can also be a query parameter.
    let tail: Vec<String> = tail
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.trim_start_matches('?').eq_ignore_ascii_case("password") => {
                format!("{k}=***")
            }
            _ => p.to_string(),
        })
        .collect();
    out.push_str(&tail.join("&"));
    out
}

/// The database could not be reached, or answered too late (PostgreSQL down, network cut, every
/// connection busy): the write did not commit and a retry may succeed (503, not 500).
pub fn is_unreachable(e: &DbError) -> bool {
    matches!(
        e,
        DbError::PoolTimedOut | DbError::PoolClosed | DbError::Io(_) | DbError::Tls(_)
    ) || pg_code(e).is_some_and(|c| {
        // 08: connection exception; 57P01..57P03: admin shutdown, crash shutdown, cannot
        // connect now.
        c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03")
    })
}

/// PostgreSQL refused a text value (U+0000 cannot be stored in `TEXT`; SQLSTATE 22021).
pub fn is_unstorable_text(e: &DbError) -> bool {
    pg_code(e).is_some_and(|c| c == "22021" || c == "22P05")
}

/// PostgreSQL is out of disk space (SQLSTATE 53100).
pub fn pg_is_full(e: &DbError) -> bool {
    pg_code(e).is_some_and(|c| c == "53100")
}

/// The SQLSTATE of a PostgreSQL error.
fn pg_code(e: &DbError) -> Option<&str> {
    match e {
        DbError::Database(d) => d
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .map(|p| p.code()),
        _ => None,
    }
}

/// The connection pools of one backend.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite {
        /// Readers.
        pool: SqlitePool,
        /// The one writer connection: SQLite allows one writer at a time, and a deferred
        /// transaction that reads and then writes can fail with SQLITE_BUSY instead of waiting,
        /// so all writes queue here. Checked out only as a [`WriteConn`].
        writer: SqlitePool,
    },
    Pg {
        /// Readers.
        pool: PgPool,
        /// Writers (each write transaction waits for [`WRITE_LOCK`]; a separate pool so that
        /// writers queued on the lock never starve readers of connections).
        writer: PgPool,
        /// This node's number while it runs (see [`NodeLease`]).
        node: i64,
        lease: std::sync::Arc<NodeLease>,
    },
}

/// How long a request waits for a PostgreSQL connection (connecting included) before it is
/// answered 503: a database that is down fails requests, and a node's start, within this.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock class of node leases (`pg_advisory_lock(NODE_LOCK_CLASS, node)`; the
/// two-int4 key space, distinct from [`WRITE_LOCK`]'s). ASCII "cofn".
pub const NODE_LOCK_CLASS: i32 = 0x636f_666e;

/// A node's lease on PostgreSQL: one session-level advisory lock `(NODE_LOCK_CLASS, node)`,
/// held on a dedicated connection for as long as the node runs. PostgreSQL releases it when
/// that session ends (the process exits or dies, or its connection is lost), so another node's
/// start-up sweep tells live writers from dead ones by the locks it sees granted
/// (`versions::Meta::sweep_versions`): it never aborts a live node's in-flight write.
pub(crate) struct NodeLease {
    node: i32,
    conn: tokio::sync::Mutex<PgConnection>,
}

impl NodeLease {
    /// Take a free node number (random, positive, 31 bits) and hold its lock.
    async fn take(opts: &PgConnectOptions) -> Result<(i64, Self), DbError> {
        let mut conn = PgConnection::connect_with(opts).await?;
        for _ in 0..16 {
            let node = i64::from(rand::random::<u32>() >> 1).max(1);
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(NODE_LOCK_CLASS)
                .bind(i32::try_from(node).unwrap_or(1))
                .fetch_one(&mut conn)
                .await?;
            if got {
                return Ok((
                    node,
                    NodeLease {
                        node: i32::try_from(node).unwrap_or(1),
                        conn: tokio::sync::Mutex::new(conn),
                    },
                ));
            }
        }
        Err(DbError::Protocol(
            "no free node number for the node lease".into(),
        ))
    }

    /// Give the lease up (a node shutting down): its remaining `writing` versions may be
    /// aborted by the next start-up sweep of any node.
    async fn release(&self) {
        let mut conn = self.conn.lock().await;
        if let Err(e) = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(NODE_LOCK_CLASS)
            .bind(self.node)
            .execute(&mut *conn)
            .await
        {
            tracing::warn!(error = %e, "releasing the node lease failed (it ends with the session)");
        }
    }
}

impl Db {
    /// Connect (creating a missing SQLite file) and apply the backend's migrations.
    pub(crate) async fn open(cfg: &DbConfig) -> Result<Self, DbError> {
        match &cfg.url {
            DatabaseUrl::Sqlite(path) => {
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(10));
                let writer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone())
                    .await?;
                sqlx::migrate!("../migrations/storage")
                    .run(&writer)
                    .await
                    .map_err(|e| DbError::Migrate(Box::new(e)))?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(opts)
                    .await?;
                Ok(Db::Sqlite { pool, writer })
            }
            DatabaseUrl::Postgres(url) => {
                let mut opts = PgConnectOptions::from_str(url)?.application_name("coffer-storage");
                if let Some(p) = &cfg.password {
                    opts = opts.password(p);
                }
                let writer = PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    .connect_with(opts.clone())
                    .await?;
                // sqlx's PostgreSQL migrator holds an advisory lock while it runs: nodes
                // starting together apply each migration once.
                sqlx::migrate!("../migrations/storage_pg")
                    .run(&writer)
                    .await
                    .map_err(|e| DbError::Migrate(Box::new(e)))?;
                let (node, lease) = NodeLease::take(&opts).await?;
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                    .connect_with(opts)
                    .await?;
                Ok(Db::Pg {
                    pool,
                    writer,
                    node,
                    lease: std::sync::Arc::new(lease),
                })
            }
        }
    }

    pub(crate) fn reader(&self) -> Ex<'_> {
        match self {
            Db::Sqlite { pool, .. } => Ex::SqlitePool(pool),
            Db::Pg { pool, .. } => Ex::PgPool(pool),
        }
    }

    pub(crate) async fn write_conn(&self) -> Result<WriteConn, DbError> {
        let conn = match self {
            Db::Sqlite { writer, .. } => Wc::Sqlite(writer.acquire().await?),
            Db::Pg { writer, .. } => Wc::Pg(writer.acquire().await?),
        };
        Ok(WriteConn { conn, done: false })
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Db::Pg { .. })
    }

    /// Close the pools (PostgreSQL: and release the node lease).
    pub(crate) async fn close(&self) {
        match self {
            Db::Sqlite { pool, writer } => {
                pool.close().await;
                writer.close().await;
            }
            Db::Pg {
                pool,
                writer,
                lease,
                ..
            } => {
                pool.close().await;
                writer.close().await;
                lease.release().await;
            }
        }
    }

    /// This node's number in a shared database (`None` on SQLite).
    pub(crate) fn node(&self) -> Option<i64> {
        match self {
            Db::Sqlite { .. } => None,
            Db::Pg { node, .. } => Some(*node),
        }
    }
}

/// A writer connection, checked out for one write.
///
/// It goes back to the pool only through [`WriteConn::done`], once the write's outcome is
/// known: its transaction committed or rolled back, or its single statement answered. Dropped
/// any other way (an error from any statement, a failed COMMIT or ROLLBACK, a request cancelled
/// mid-transaction) the connection is closed rather than reused, and the next write opens a
/// fresh one. A failed COMMIT (SQLITE_FULL, SQLITE_IOERR) may leave SQLite's transaction open
/// or rolled back while the driver still counts one open transaction; reusing such a
/// connection turned every later transaction into a nested SAVEPOINT that never committed, so
/// writes were acknowledged and then lost (issue 11 A1). (PostgreSQL connections get the same
/// treatment: closing one also ends its transaction and releases its lock.)
pub(crate) struct WriteConn {
    conn: Wc,
    done: bool,
}

enum Wc {
    Sqlite(PoolConnection<Sqlite>),
    Pg(PoolConnection<Postgres>),
}

impl WriteConn {
    /// Start a write transaction (PostgreSQL: and take [`WRITE_LOCK`]).
    pub(crate) async fn begin(&mut self) -> Result<Tx<'_>, DbError> {
        match &mut self.conn {
            Wc::Sqlite(c) => Ok(Tx::Sqlite(c.begin().await?)),
            Wc::Pg(c) => Ok(Tx::Pg(begin_locked(c).await?)),
        }
    }

    /// A write of one statement: on SQLite that statement runs alone on the writer connection
    /// (its own implicit transaction); on PostgreSQL it is a transaction under [`WRITE_LOCK`]
    /// like any other write. Finish it with [`Tx::commit`].
    pub(crate) async fn single(&mut self) -> Result<Tx<'_>, DbError> {
        match &mut self.conn {
            Wc::Sqlite(c) => Ok(Tx::SqliteAuto(c)),
            Wc::Pg(c) => Ok(Tx::Pg(begin_locked(c).await?)),
        }
    }

    /// The write's outcome is known (committed, rolled back, or one statement answered): the
    /// connection may be reused.
    pub(crate) fn done(mut self) {
        self.done = true;
    }
}

/// A PostgreSQL write transaction holding [`WRITE_LOCK`] (released when it ends).
async fn begin_locked(c: &mut PgConnection) -> Result<Transaction<'_, Postgres>, DbError> {
    let mut tx = c.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(WRITE_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

impl Drop for WriteConn {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(
                "metadata write failed or was cancelled; closing the writer connection (a fresh one serves the next write)"
            );
            match &mut self.conn {
                Wc::Sqlite(c) => c.close_on_drop(),
                Wc::Pg(c) => c.close_on_drop(),
            }
        }
    }
}

/// An open write: a transaction, or (SQLite) one autocommit statement.
pub(crate) enum Tx<'c> {
    Sqlite(Transaction<'c, Sqlite>),
    SqliteAuto(&'c mut SqliteConnection),
    Pg(Transaction<'c, Postgres>),
}

impl Tx<'_> {
    /// Where this write's statements run.
    pub(crate) fn ex(&mut self) -> Ex<'_> {
        match self {
            Tx::Sqlite(t) => Ex::Sqlite(t),
            Tx::SqliteAuto(c) => Ex::Sqlite(c),
            Tx::Pg(t) => Ex::Pg(t),
        }
    }

    pub(crate) async fn commit(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::SqliteAuto(_) => Ok(()),
            Tx::Pg(t) => t.commit().await,
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), DbError> {
        match self {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::SqliteAuto(_) => Ok(()),
            Tx::Pg(t) => t.rollback().await,
        }
    }
}

/// Where a statement runs: a reader pool or a write's connection.
pub(crate) enum Ex<'e> {
    SqlitePool(&'e SqlitePool),
    Sqlite(&'e mut SqliteConnection),
    PgPool(&'e PgPool),
    Pg(&'e mut PgConnection),
}

/// One bound argument.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Text(Option<String>),
    Int(Option<i64>),
    Bytes(Option<Vec<u8>>),
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(Some(v.to_string()))
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(Some(v))
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(Some(v.clone()))
    }
}
impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Self {
        Val::Text(v.map(str::to_string))
    }
}
impl From<Option<String>> for Val {
    fn from(v: Option<String>) -> Self {
        Val::Text(v)
    }
}
impl From<&Option<String>> for Val {
    fn from(v: &Option<String>) -> Self {
        Val::Text(v.clone())
    }
}
impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(Some(v))
    }
}
impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Self {
        Val::Int(v)
    }
}
impl From<&[u8]> for Val {
    fn from(v: &[u8]) -> Self {
        Val::Bytes(Some(v.to_vec()))
    }
}
impl From<&Vec<u8>> for Val {
    fn from(v: &Vec<u8>) -> Self {
        Val::Bytes(Some(v.clone()))
    }
}
impl From<Option<Vec<u8>>> for Val {
    fn from(v: Option<Vec<u8>>) -> Self {
        Val::Bytes(v)
    }
}
impl From<Option<&[u8]>> for Val {
    fn from(v: Option<&[u8]>) -> Self {
        Val::Bytes(v.map(<[u8]>::to_vec))
    }
}

/// A statement and its arguments, runnable on either backend.
#[must_use]
pub(crate) struct Q {
    sql: &'static str,
    args: Vec<Val>,
}

/// A statement with `$1..$N` placeholders.
pub(crate) fn q(sql: &'static str) -> Q {
    Q {
        sql,
        args: Vec::new(),
    }
}

/// Types that decode from a column of either backend.
pub(crate) trait Dec:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}
impl<T> Dec for T where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// A result row of either backend.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Pg(PgRow),
}

impl From<SqliteRow> for Row {
    fn from(r: SqliteRow) -> Self {
        Row::Sqlite(r)
    }
}
impl From<PgRow> for Row {
    fn from(r: PgRow) -> Self {
        Row::Pg(r)
    }
}

impl Row {
    /// Column `i` (a name or a position) decoded as `T`.
    pub(crate) fn try_get<T, I>(&self, i: I) -> Result<T, DbError>
    where
        T: Dec,
        I: ColumnIndex<SqliteRow> + ColumnIndex<PgRow>,
    {
        match self {
            Row::Sqlite(r) => sqlx::Row::try_get(r, i),
            Row::Pg(r) => sqlx::Row::try_get(r, i),
        }
    }
}

macro_rules! on_backend {
    ($self:ident, $ex:expr, |$query:ident, $e:ident| $body:expr) => {
        match $ex {
            Ex::SqlitePool($e) => {
                let $query = $self.sqlite();
                $body
            }
            Ex::Sqlite($e) => {
                let $query = $self.sqlite();
                $body
            }
            Ex::PgPool($e) => {
                let $query = $self.pg();
                $body
            }
            Ex::Pg($e) => {
                let $query = $self.pg();
                $body
            }
        }
    };
}

impl Q {
    pub(crate) fn bind(mut self, v: impl Into<Val>) -> Self {
        self.args.push(v.into());
        self
    }

    fn sqlite(&self) -> sqlx::query::Query<'_, Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
        let mut query = sqlx::query(self.sql);
        for a in &self.args {
            query = match a {
                Val::Text(v) => query.bind(v.as_deref()),
                Val::Int(v) => query.bind(*v),
                Val::Bytes(v) => query.bind(v.as_deref()),
            };
        }
        query
    }

    fn pg(&self) -> sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(self.sql);
        for a in &self.args {
            query = match a {
                Val::Text(v) => query.bind(v.as_deref()),
                Val::Int(v) => query.bind(*v),
                Val::Bytes(v) => query.bind(v.as_deref()),
            };
        }
        query
    }

    /// Run it; the number of rows affected.
    pub(crate) async fn execute(self, ex: Ex<'_>) -> Result<u64, DbError> {
        Ok(on_backend!(self, ex, |query, e| query
            .execute(e)
            .await?
            .rows_affected()))
    }

    pub(crate) async fn fetch_all(self, ex: Ex<'_>) -> Result<Vec<Row>, DbError> {
        Ok(on_backend!(self, ex, |query, e| query
            .fetch_all(e)
            .await?
            .into_iter()
            .map(Row::from)
            .collect()))
    }

    pub(crate) async fn fetch_optional(self, ex: Ex<'_>) -> Result<Option<Row>, DbError> {
        Ok(on_backend!(self, ex, |query, e| query
            .fetch_optional(e)
            .await?
            .map(Row::from)))
    }

    pub(crate) async fn fetch_one(self, ex: Ex<'_>) -> Result<Row, DbError> {
        Ok(on_backend!(self, ex, |query, e| Row::from(
            query.fetch_one(e).await?
        )))
    }

    /// The first column of every row.
    pub(crate) async fn scalars<T: Dec>(self, ex: Ex<'_>) -> Result<Vec<T>, DbError> {
        self.fetch_all(ex)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect()
    }

    /// The first column of the first row, if any.
    pub(crate) async fn scalar_optional<T: Dec>(self, ex: Ex<'_>) -> Result<Option<T>, DbError> {
        self.fetch_optional(ex)
            .await?
            .map(|r| r.try_get(0))
            .transpose()
    }

    /// The first column of the one row.
    pub(crate) async fn scalar<T: Dec>(self, ex: Ex<'_>) -> Result<T, DbError> {
        self.fetch_one(ex).await?.try_get(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queries are written once with `$N` placeholders: on SQLite `$N` must bind argument N
    /// (not the Nth placeholder in the text), and a repeated `$N` the same argument.
    #[tokio::test]
    async fn sqlite_binds_dollar_placeholders_by_number() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        let row = q("SELECT $2 AS a, $1 AS b, $2 || $3 AS c, $3 AS d")
            .bind("one")
            .bind("two")
            .bind(Some(3_i64))
            .fetch_one(Ex::SqlitePool(&pool))
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>("a").unwrap(), "two");
        assert_eq!(row.try_get::<String, _>("b").unwrap(), "one");
        assert_eq!(row.try_get::<String, _>("c").unwrap(), "two3");
        assert_eq!(row.try_get::<i64, _>(3).unwrap(), 3);
        let none: Option<String> = q("SELECT $1")
            .bind(None::<String>)
            .scalar(Ex::SqlitePool(&pool))
            .await
            .unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn urls_parse_and_redact() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/lib/c/meta.db").unwrap(),
            DatabaseUrl::Sqlite(PathBuf::from("/var/lib/c/meta.db"))
        );
        assert!(
            DatabaseUrl::parse("postgres://u:pw@h:5432/db")
                .unwrap()
                .is_postgres()
        );
        assert!(
            DatabaseUrl::parse("postgresql://h/db")
                .unwrap()
                .is_postgres()
        );
        assert!(matches!(
            DatabaseUrl::parse("mysql://u:hunter2@h/db"),
            Err(UrlError::Scheme(s)) if !s.contains("hunter2")
        ));
        assert!(matches!(
            DatabaseUrl::parse("sqlite://"),
            Err(UrlError::EmptyPath)
        ));
        assert_eq!(
            redact_url("postgres://coffer:hunter2@db.internal:5432/coffer?sslmode=require"),
            "postgres://coffer:***@db.internal:5432/coffer?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db.internal/coffer?user=c&password=hunter2"),
            "postgres://db.internal/coffer?user=c&password=***"
        );
        assert_eq!(redact_url("postgres://c@h/d"), "postgres://c@h/d");
        let dbg = format!(
            "{:?}",
            DatabaseUrl::parse("postgres://u:hunter2@h/db").unwrap()
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
