//! The single audit writer: every state change of the KMS is applied together with its audit
//! record in one SQLite transaction, so a change is never durable without its record and a
//! request is never answered before both are. Requests queue on a channel; the writer takes all
//! queued jobs as one batch (group commit: one transaction and one set of fsyncs per batch, not
//! per request), each job's state change under its own savepoint so a refused change (a name
//! conflict) still gets its record. If the batch cannot be committed, every job in it fails with
//! [`WriteError::Unavailable`] and the caller answers 503.
//!
//! Atomic: one batch = one transaction (records, state changes, checkpoint). Secret: the audit
//! signing key (used here for checkpoints only); state changes carry only sealed/wrapped keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{AuditEvent, AuditRecord, Checkpoint, GENESIS_HASH, now_rfc3339};
use crate::store::{self, StateChange};

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
    reply: oneshot::Sender<Result<u64, WriteError>>,
}

/// Handle to the writer task.
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    head: Arc<Mutex<Head>>,
    key: Arc<SigningKey>,
    healthy: Arc<AtomicBool>,
    observer: Option<crate::metrics::AuditObserver>,
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
        conn: SqliteConnection,
        head: Head,
        key: SigningKey,
        cfg: WriterConfig,
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
        ));
        (
            Self {
                tx,
                head,
                key,
                healthy,
                observer: None,
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
        let started = std::time::Instant::now();
        let result = self.write_inner(event, change).await;
        if let Some(o) = &self.observer {
            o.observe(
                started.elapsed(),
                !matches!(result, Err(WriteError::Unavailable)),
            );
        }
        result
    }

    async fn write_inner(&self, event: AuditEvent, change: StateChange) -> Result<u64, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                event,
                change,
                reply,
            })
            .await
            .map_err(|_| WriteError::Unavailable)?;
        rx.await.unwrap_or(Err(WriteError::Unavailable))
    }

    /// The committed head.
    pub async fn head(&self) -> Head {
        self.head.lock().await.clone()
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

async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Job>,
    head: Arc<Mutex<Head>>,
    key: Arc<SigningKey>,
    healthy: Arc<AtomicBool>,
    cfg: WriterConfig,
) {
    let mut tick = tokio::time::interval(cfg.checkpoint_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            j = rx.recv() => j,
            _ = tick.tick() => {
                checkpoint_if_behind(&mut conn, &head, &key).await;
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
        match commit_batch(&mut conn, &batch, &h, &key, cfg).await {
            Ok((new_head, outcomes)) => {
                *h = new_head;
                drop(h);
                healthy.store(true, Ordering::Relaxed);
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
            }
            Err(e) => {
                drop(h);
                tracing::error!(error = %e, jobs = batch.len(), "audit batch could not be committed; refusing the operations");
                healthy.store(false, Ordering::Relaxed);
                let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                for job in batch {
                    let _ = job.reply.send(Err(WriteError::Unavailable));
                }
            }
        }
    }
    checkpoint_if_behind(&mut conn, &head, &key).await;
    let _ = conn.close().await;
}

async fn checkpoint_if_behind(conn: &mut SqliteConnection, head: &Mutex<Head>, key: &SigningKey) {
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

type Outcomes = Vec<Result<u64, WriteError>>;

async fn commit_batch(
    conn: &mut SqliteConnection,
    batch: &[Job],
    start: &Head,
    key: &SigningKey,
    cfg: WriterConfig,
) -> Result<(Head, Outcomes), sqlx::Error> {
    let mut tx = conn.begin().await?;
    let mut cur = start.clone();
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let mut result = job.event.result.clone();
        let mut outcome_err = None;
        if !matches!(job.change, StateChange::None) {
            let mut sp = tx.begin().await?;
            match store::apply_change(&mut sp, &job.change).await {
                Ok(()) => sp.commit().await?,
                Err(store::ApplyError::Refused(e)) => {
                    sp.rollback().await?;
                    result = e.code().to_string();
                    outcome_err = Some(WriteError::Rejected(e));
                }
                Err(store::ApplyError::Db(e)) => return Err(e),
            }
        }
        let mut rec = AuditRecord {
            seq: cur.seq + 1,
            time: now_rfc3339(),
            request_id: job.event.request_id.clone(),
            identity: job.event.identity.clone(),
            client: job.event.client.clone(),
            operation: job.event.operation.clone(),
            bucket: job.event.bucket.clone(),
            key_version: job.event.key_version,
            key_id: job.event.key_id.clone(),
            result,
            detail: job.event.detail.clone(),
            prev_hash: if cur.seq == 0 {
                GENESIS_HASH.to_string()
            } else {
                cur.hash.clone()
            },
            hash: String::new(),
        };
        rec.hash = rec.compute_hash();
        store::insert_record(&mut tx, &rec).await?;
        cur.seq = rec.seq;
        cur.hash = rec.hash;
        outcomes.push(match outcome_err {
            Some(e) => Err(e),
            None => Ok(cur.seq),
        });
    }
    if cur.seq - cur.last_checkpoint_seq >= cfg.checkpoint_every {
        let cp = Checkpoint::sign(key, cur.seq, &cur.hash, false);
        store::insert_checkpoint(&mut tx, &cp).await?;
        cur.last_checkpoint_seq = cur.seq;
    }
    tx.commit().await?;
    Ok((cur, outcomes))
}
