//! The single audit writer: every state change of the KMS is applied together with its audit
//! record in one SQLite transaction, so a change is never durable without its record and a
//! request is never answered before both are. Requests queue on a channel; the writer takes all
//! queued jobs as one batch (group commit: one transaction and one set of fsyncs per batch, not
//! per request), each job's state change under its own savepoint so a refused change (a name
//! conflict) still gets its record. A batch without state changes (unwraps, refusals) is one round
//! trip to the SQLite thread: begin, every record in one statement, commit. If the batch cannot be
//! committed, every job in it fails with [`WriteError::Unavailable`] and the caller answers 503.
//!
//! On PostgreSQL (several replicas) each batch's transaction first locks the chain head row
//! (`audit_head`, `SELECT … FOR UPDATE`) and takes the next sequence number and previous hash
//! from it, never from memory: the batches of all replicas serialize on that row and form one
//! gapless chain without forks. Jobs carrying a lease epoch (background work, `crate::lease`)
//! are refused (`fenced`, audited) unless the epoch is still the lease row's; only the lease
//! holder signs checkpoints.
//!
//! Atomic: one batch = one transaction (records, state changes, checkpoint). Secret: the audit
//! signing key (used here for checkpoints only); state changes carry only sealed/wrapped keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{AuditEvent, AuditRecord, Checkpoint, GENESIS_HASH, now_rfc3339};
use crate::lease::Lease;
use crate::store::{self, DbConn, StateChange};

/// Most jobs in one group commit.
const MAX_BATCH: usize = 512;

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The audit record (and with it the change) could not be made durable.
    #[error("audit log unavailable")]
    Unavailable,
    /// The state change was refused (the refusal itself is audited).
    #[error("state change refused: {0}")]
    Rejected(store::ChangeError),
}

/// The committed head of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub last_checkpoint_seq: u64,
}

struct Job {
    event: AuditEvent,
    change: StateChange,
    /// The lease epoch a background write was made under (checked in its transaction).
    fence: Option<u64>,
    reply: oneshot::Sender<Result<u64, WriteError>>,
}

/// Handle to the writer task.
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    head: Arc<Mutex<Head>>,
    key: Arc<SigningKey>,
    healthy: Arc<AtomicBool>,
    observer: Option<crate::metrics::AuditObserver>,
    lease: Arc<Lease>,
    /// PostgreSQL: the head is read from the database (other replicas move it).
    pg: Option<PgPool>,
}

/// Writer settings.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Sign a checkpoint after this many records...
    pub checkpoint_every: u64,
    /// ...or after this long when records were added.
    pub checkpoint_interval: Duration,
}

impl AuditLog {
    /// Start the writer on its own connection. `head` is the committed head read at start-up.
    pub fn start(
        conn: DbConn,
        head: Head,
        key: SigningKey,
        cfg: WriterConfig,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start_with(conn, head, key, cfg, Arc::new(Lease::single()), None)
    }

    /// [`AuditLog::start`] for a replica: `lease` decides who signs checkpoints, `pg` is the
    /// read pool of the shared database.
    pub fn start_with(
        conn: DbConn,
        head: Head,
        key: SigningKey,
        cfg: WriterConfig,
        lease: Arc<Lease>,
        pg: Option<PgPool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(8192);
        let head = Arc::new(Mutex::new(head));
        let key = Arc::new(key);
        let healthy = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(run(
            conn,
            rx,
            head.clone(),
            key.clone(),
            healthy.clone(),
            cfg,
            Shared {
                lease: lease.clone(),
                reconnect: pg.as_ref().map(|p| p.connect_options().as_ref().clone()),
            },
        ));
        (
            Self {
                tx,
                head,
                key,
                healthy,
                observer: None,
                lease,
                pg,
            },
            task,
        )
    }

    /// Report each write's latency and failure to `observer` (metrics).
    pub fn with_observer(mut self, observer: crate::metrics::AuditObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Append one record (with its state change) durably; returns its sequence number.
    pub async fn write(&self, event: AuditEvent, change: StateChange) -> Result<u64, WriteError> {
        self.write_with(event, change, None).await
    }

    /// A write of background work: on PostgreSQL it is made under the lease epoch this replica
    /// holds and refused (`fenced`) when it holds none or the epoch is stale by commit time.
    pub async fn write_background(
        &self,
        event: AuditEvent,
        change: StateChange,
    ) -> Result<u64, WriteError> {
        if !self.lease.is_replicated() {
            return self.write(event, change).await;
        }
        match self.lease.held() {
            Some(epoch) => self.write_fenced(event, change, epoch).await,
            None => Err(WriteError::Rejected(store::ChangeError::Fenced(
                self.lease.last_epoch(),
            ))),
        }
    }

    /// A write fenced by lease `epoch` (refused and audited as `fenced` unless it is the lease
    /// row's epoch in the write's transaction; PostgreSQL only, ignored on SQLite).
    pub async fn write_fenced(
        &self,
        event: AuditEvent,
        change: StateChange,
        epoch: u64,
    ) -> Result<u64, WriteError> {
        self.write_with(event, change, Some(epoch)).await
    }

    async fn write_with(
        &self,
        event: AuditEvent,
        change: StateChange,
        fence: Option<u64>,
    ) -> Result<u64, WriteError> {
        let started = std::time::Instant::now();
        let result = self.write_inner(event, change, fence).await;
        if let Some(o) = &self.observer {
            o.observe(
                started.elapsed(),
                !matches!(result, Err(WriteError::Unavailable)),
            );
        }
        result
    }

    async fn write_inner(
        &self,
        event: AuditEvent,
        change: StateChange,
        fence: Option<u64>,
    ) -> Result<u64, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                event,
                change,
                fence,
                reply,
            })
            .await
            .map_err(|_| WriteError::Unavailable)?;
        rx.await.unwrap_or(Err(WriteError::Unavailable))
    }

    /// The committed head (on PostgreSQL: of the shared chain, whichever replica wrote it).
    pub async fn head(&self) -> Head {
        if let Some(pool) = &self.pg {
            match store::pg_head(pool).await {
                Ok((seq, hash, cp, _)) => {
                    return Head {
                        seq,
                        hash,
                        last_checkpoint_seq: cp,
                    };
                }
                Err(e) => tracing::warn!(error = %e, "reading the audit chain head failed"),
            }
        }
        self.head.lock().await.clone()
    }

    /// This replica's view of the lease.
    pub fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// Sign a checkpoint over the committed head (used to close an export).
    pub async fn final_checkpoint(&self) -> (Head, Checkpoint) {
        let head = self.head().await;
        let cp = Checkpoint::sign(&self.key, head.seq, &head.hash, true);
        (head, cp)
    }

    /// The audit public key.
    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    /// False after the last batch failed to commit (until one succeeds).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// What the writer of a replica on PostgreSQL needs besides its connection.
struct Shared {
    lease: Arc<Lease>,
    /// Options to reconnect with after the connection died (PostgreSQL).
    reconnect: Option<sqlx::postgres::PgConnectOptions>,
}

async fn run(
    mut conn: DbConn,
    mut rx: mpsc::Receiver<Job>,
    head: Arc<Mutex<Head>>,
    key: Arc<SigningKey>,
    healthy: Arc<AtomicBool>,
    cfg: WriterConfig,
    shared: Shared,
) {
    let Shared { lease, reconnect } = shared;
    let mut tick = tokio::time::interval(cfg.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            j = rx.recv() => j,
            _ = tick.tick() => {
                checkpoint_if_behind(&mut conn, &head, &key, &lease).await;
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut h = head.lock().await;
        let started = std::time::Instant::now();
        let committed = match conn {
            DbConn::Sqlite(_) => commit_batch(&mut conn, &batch, &h, &key, cfg).await,
            DbConn::Pg(_) => commit_batch_pg(&mut conn, &batch, &key, cfg, &lease).await,
        };
        match committed {
            Ok((new_head, outcomes)) => {
                *h = new_head;
                drop(h);
                tracing::debug!(
                    jobs = batch.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "audit group committed"
                );
                healthy.store(true, Ordering::Relaxed);
                let erased = batch
                    .iter()
                    .zip(&outcomes)
                    .any(|(j, o)| o.is_ok() && j.change.erases_material());
                if erased {
                    match store::truncate_wal(&mut conn).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(
                            "WAL not truncated after erasing key material (a reader was busy); old frames stay until the WAL is reused"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "WAL not truncated after erasing key material")
                        }
                    }
                }
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
            }
            Err(e) => {
                drop(h);
                tracing::error!(error = %e, jobs = batch.len(), "audit batch could not be committed; refusing the operations");
                healthy.store(false, Ordering::Relaxed);
                store::rollback(&mut conn).await;
                if let Some(opts) = &reconnect {
                    revive(&mut conn, opts).await;
                }
                for job in batch {
                    let _ = job.reply.send(Err(WriteError::Unavailable));
                }
            }
        }
    }
    checkpoint_if_behind(&mut conn, &head, &key, &lease).await;
    conn.close().await;
}

async fn checkpoint_if_behind(
    conn: &mut DbConn,
    head: &Mutex<Head>,
    key: &SigningKey,
    lease: &Lease,
) {
    if matches!(conn, DbConn::Pg(_)) {
        // Only the lease holder signs periodic checkpoints, over the shared head.
        let Some(epoch) = lease.held() else { return };
        match checkpoint_pg(conn, key, epoch).await {
            Ok(Some(seq)) => head.lock().await.last_checkpoint_seq = seq,
            Ok(None) => {}
            Err(e) => {
                store::rollback(conn).await;
                tracing::warn!(error = %e, "audit checkpoint could not be written");
            }
        }
        return;
    }
    let mut h = head.lock().await;
    if h.seq == h.last_checkpoint_seq {
        return;
    }
    let cp = Checkpoint::sign(key, h.seq, &h.hash, false);
    match store::insert_checkpoint(&mut *conn, &cp).await {
        Ok(()) => h.last_checkpoint_seq = h.seq,
        Err(e) => tracing::warn!(error = %e, "audit checkpoint could not be written"),
    }
}

/// After a failed group on PostgreSQL: if the connection is dead (the server restarted, a
/// network cut), replace it, so the next group can commit.
async fn revive(conn: &mut DbConn, opts: &sqlx::postgres::PgConnectOptions) {
    let alive = match conn {
        DbConn::Pg(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
        DbConn::Sqlite(_) => true,
    };
    if alive {
        return;
    }
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(opts)).await {
        Ok(Ok(c)) => {
            tracing::warn!("audit writer reconnected to PostgreSQL");
            *conn = DbConn::Pg(c);
        }
        Ok(Err(e)) => tracing::error!(error = %e, "audit writer cannot reconnect to PostgreSQL"),
        Err(_) => tracing::error!("audit writer cannot reconnect to PostgreSQL (timeout)"),
    }
}

/// The periodic checkpoint on PostgreSQL: under the head lock and the lease epoch's share lock,
/// sign the head if records were added since the last checkpoint. Returns its seq.
async fn checkpoint_pg(
    conn: &mut DbConn,
    key: &SigningKey,
    epoch: u64,
) -> Result<Option<u64>, sqlx::Error> {
    store::begin(conn).await?;
    let c = pg(conn)?;
    let (seq, hash, cp) = store::pg_lock_head(c).await?;
    if seq == cp || store::pg_lease_epoch(c).await? != epoch {
        store::rollback(conn).await;
        return Ok(None);
    }
    let checkpoint = Checkpoint::sign(key, seq, &hash, false);
    store::pg_append(c, &[], Some(&checkpoint), (seq, &hash, seq), false).await?;
    store::commit(conn).await?;
    Ok(Some(seq))
}

fn pg(conn: &mut DbConn) -> Result<&mut PgConnection, sqlx::Error> {
    match conn {
        DbConn::Pg(c) => Ok(c),
        DbConn::Sqlite(_) => Err(sqlx::Error::Protocol("not a PostgreSQL connection".into())),
    }
}

/// Commit one group on PostgreSQL: lock the chain head row, apply the changes (fenced ones only
/// under the current lease epoch), chain the records after the head read, sign a checkpoint when
/// due and this replica holds the lease, move the head and commit.
async fn commit_batch_pg(
    conn: &mut DbConn,
    batch: &[Job],
    key: &SigningKey,
    cfg: WriterConfig,
    lease: &Lease,
) -> Result<(Head, Outcomes), sqlx::Error> {
    store::begin(conn).await?;
    let (seq, hash, cp) = store::pg_lock_head(pg(conn)?).await?;
    let mut epoch: Option<u64> = None;
    let mut refusals: Vec<Option<store::ChangeError>> = Vec::with_capacity(batch.len());
    let mut bump = false;
    for job in batch {
        if let Some(f) = job.fence {
            let cur = match epoch {
                Some(e) => e,
                None => *epoch.insert(store::pg_lease_epoch(pg(conn)?).await?),
            };
            if cur != f {
                refusals.push(Some(store::ChangeError::Fenced(f)));
                continue;
            }
        }
        refusals.push(match job.change {
            StateChange::None => None,
            ref change => match store::apply_change_isolated(conn, change).await {
                Ok(()) => {
                    bump |= change.invalidates_caches();
                    None
                }
                Err(store::ApplyError::Refused(e)) => Some(e),
                Err(store::ApplyError::Db(e)) => return Err(e),
            },
        });
    }
    let mut cur = Head {
        seq,
        hash,
        last_checkpoint_seq: cp,
    };
    let (recs, outcomes) = chain_batch(&mut cur, batch, refusals);
    let mut checkpoint = None;
    if cur.seq - cur.last_checkpoint_seq >= cfg.checkpoint_every
        && let Some(held) = lease.held()
    {
        let e = match epoch {
            Some(e) => e,
            None => store::pg_lease_epoch(pg(conn)?).await?,
        };
        if e == held {
            checkpoint = Some(Checkpoint::sign(key, cur.seq, &cur.hash, false));
            cur.last_checkpoint_seq = cur.seq;
        }
    }
    store::pg_append(
        pg(conn)?,
        &recs,
        checkpoint.as_ref(),
        (cur.seq, &cur.hash, cur.last_checkpoint_seq),
        bump,
    )
    .await?;
    store::commit(conn).await?;
    Ok((cur, outcomes))
}

type Outcomes = Vec<Result<u64, WriteError>>;

/// Commit one group. A group without state changes (unwraps, refusals) costs one round trip to
/// the SQLite thread: begin, all its records in one statement, commit. Otherwise the changes
/// are applied first, each under a savepoint, in an open transaction.
async fn commit_batch(
    conn: &mut DbConn,
    batch: &[Job],
    start: &Head,
    key: &SigningKey,
    cfg: WriterConfig,
) -> Result<(Head, Outcomes), sqlx::Error> {
    let mut refusals: Vec<Option<store::ChangeError>> = Vec::with_capacity(batch.len());
    let txn = if batch.iter().all(|j| matches!(j.change, StateChange::None)) {
        refusals.resize(batch.len(), None);
        store::Txn::Begin
    } else {
        store::begin(conn).await?;
        for job in batch {
            refusals.push(match job.change {
                StateChange::None => None,
                ref change => match store::apply_change_isolated(conn, change).await {
                    Ok(()) => None,
                    Err(store::ApplyError::Refused(e)) => Some(e),
                    Err(store::ApplyError::Db(e)) => return Err(e),
                },
            });
        }
        store::Txn::Open
    };
    let mut cur = start.clone();
    let (recs, outcomes) = chain_batch(&mut cur, batch, refusals);
    let checkpoint = (cur.seq - cur.last_checkpoint_seq >= cfg.checkpoint_every)
        .then(|| Checkpoint::sign(key, cur.seq, &cur.hash, false));
    let DbConn::Sqlite(c) = conn else {
        return Err(sqlx::Error::Protocol("not a SQLite connection".into()));
    };
    store::append_and_commit(c, txn, &recs, checkpoint.as_ref()).await?;
    if checkpoint.is_some() {
        cur.last_checkpoint_seq = cur.seq;
    }
    Ok((cur, outcomes))
}

/// The records of a commit group, chained after `cur` (which ends at the last of them), and each
/// job's outcome: its sequence number, or its refusal.
fn chain_batch(
    cur: &mut Head,
    batch: &[Job],
    refusals: Vec<Option<store::ChangeError>>,
) -> (Vec<AuditRecord>, Outcomes) {
    let mut recs = Vec::with_capacity(batch.len());
    let mut outcomes = Vec::with_capacity(batch.len());
    for (job, refused) in batch.iter().zip(refusals) {
        let rec = chain_record(cur, &job.event, refused.as_ref().map(|e| e.code()));
        cur.seq = rec.seq;
        cur.hash.clone_from(&rec.hash);
        recs.push(rec);
        outcomes.push(match refused {
            Some(e) => Err(WriteError::Rejected(e)),
            None => Ok(cur.seq),
        });
    }
    (recs, outcomes)
}

/// The record of `event`, next in the chain after `prev`; `refused` replaces its result.
fn chain_record(prev: &Head, event: &AuditEvent, refused: Option<&str>) -> AuditRecord {
    let mut rec = AuditRecord {
        seq: prev.seq + 1,
        time: now_rfc3339(),
        request_id: event.request_id.clone(),
        identity: event.identity.clone(),
        client: event.client.clone(),
        operation: event.operation.clone(),
        bucket: event.bucket.clone(),
        key_version: event.key_version,
        key_id: event.key_id.clone(),
        result: refused.map_or_else(|| event.result.clone(), str::to_string),
        detail: event.detail.clone(),
        prev_hash: if prev.seq == 0 {
            GENESIS_HASH.to_string()
        } else {
            prev.hash.clone()
        },
        hash: String::new(),
    };
    rec.hash = rec.compute_hash();
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ExportLine;
    use crate::store::{ChangeError, IdentityRow};
    use sqlx::Connection;

    fn identity(name: &str) -> StateChange {
        StateChange::InsertIdentity(IdentityRow {
            name: name.into(),
            kind: "service".into(),
            public_key: vec![0u8; 32],
            buckets: "*".into(),
            ops: "unwrap".into(),
            keys: String::new(),
            created_ms: 0,
            revoked_ms: None,
        })
    }

    fn event(op: &str, i: usize) -> AuditEvent {
        AuditEvent {
            request_id: format!("r{i}"),
            identity: "node \"é\"\n".into(),
            client: "127.0.0.1:1".into(),
            operation: op.into(),
            bucket: i.is_multiple_of(2).then(|| format!("b{i}")),
            key_version: Some(1),
            result: "ok".into(),
            ..AuditEvent::default()
        }
    }

    /// Concurrent writes are group-committed into one intact chain: stored records are exactly
    /// the hashed JSON, a refused change is audited with its code and leaves no row, checkpoints
    /// verify, and the export verifies.
    #[tokio::test]
    async fn group_commit_keeps_the_chain_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = DbConn::Sqlite(
            sqlx::SqliteConnection::connect_with(
                &store::options(&dir.path().join(store::DB_FILE), true).unwrap(),
            )
            .await
            .unwrap(),
        );
        store::migrate(&mut conn).await.unwrap();
        conn.close().await;
        let (writer, pool) = store::open(dir.path()).await.unwrap();
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let head = Head {
            seq: 0,
            hash: String::new(),
            last_checkpoint_seq: 0,
        };
        let cfg = WriterConfig {
            checkpoint_every: 3,
            checkpoint_interval: Duration::from_secs(3600),
        };
        let (log, task) = AuditLog::start(writer, head, key.clone(), cfg);
        let log = Arc::new(log);
        assert!(
            log.write(event("client.create", 0), identity("a"))
                .await
                .is_ok()
        );
        let mut tasks = Vec::new();
        for i in 1..=40 {
            let log = log.clone();
            let change = if i == 7 {
                identity("a")
            } else {
                StateChange::None
            };
            tasks.push(tokio::spawn(async move {
                log.write(event("unwrap", i), change).await
            }));
        }
        let mut refused = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => {}
                Err(WriteError::Rejected(ChangeError::Conflict(_))) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 1);
        let (head, final_cp) = log.final_checkpoint().await;
        assert_eq!(head.seq, 41);
        let (recs, cps) = store::export_page(&pool, 1, 41).await.unwrap();
        assert_eq!(recs.len(), 41);
        assert!(!cps.is_empty());
        let mut lines = Vec::new();
        let mut cps = cps.into_iter().peekable();
        for (seq, json) in recs {
            let rec: AuditRecord = serde_json::from_str(&json).unwrap();
            assert_eq!(
                serde_json::to_string(&rec).unwrap(),
                json,
                "stored as hashed"
            );
            if rec.request_id == "r7" {
                assert_eq!(rec.result, "conflict");
            }
            lines.push(serde_json::to_string(&ExportLine::Record(rec)).unwrap());
            while let Some((_, cp)) = cps.next_if(|(s, _)| *s == seq) {
                let cp: Checkpoint = serde_json::from_str(&cp).unwrap();
                lines.push(serde_json::to_string(&ExportLine::Checkpoint(cp)).unwrap());
            }
        }
        lines.push(serde_json::to_string(&ExportLine::Checkpoint(final_cp)).unwrap());
        let verified =
            super::super::verify::verify(lines.join("\n").as_bytes(), &key.verifying_key());
        assert_eq!(verified.map(|v| v.records), Ok(41));
        let store::Db::Sqlite(pool) = pool else {
            panic!("sqlite")
        };
        let ids: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM identities")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(ids, 1);
        drop(log);
        task.await.unwrap();
    }
}
