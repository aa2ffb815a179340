//! The lease of background work among KMS replicas sharing PostgreSQL: one replica at a time
//! signs the periodic audit checkpoints and runs the background jobs (re-wrap after a root
//! rotation, re-seal of named-key material, due deletions and automatic rotations of named keys).
//!
//! One row `kms_lease (holder, epoch, expires_ms)`. A keeper task per replica renews it every
//! third of the TTL; a replica takes it when it is expired (the database's clock decides, so
//! replicas' clocks do not matter), and every change of holder increments `epoch`. The epoch is a
//! fencing token: a background write carries the epoch its replica believed it held, and the
//! audit writer checks it against the row, read `FOR SHARE` in the write's own transaction (a
//! takeover's update waits for that transaction), so a paused or partitioned former holder can
//! never commit background work after another replica took over. Locally a holder stops
//! considering itself holder a quarter TTL before the lease can expire.
//!
//! On SQLite (one process) there is no lease: the process is always the holder and nothing is
//! fenced.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;

/// How long a lease lasts unless renewed (default; `serve --lease-ttl-ms`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// This replica's view of the lease.
#[derive(Debug)]
pub struct Lease {
    replicated: bool,
    /// Who we are in the lease row (random per process).
    pub holder_id: String,
    pub ttl: Duration,
    epoch: AtomicU64,
    valid_until: Mutex<Option<Instant>>,
}

impl Lease {
    /// No lease (SQLite): always the holder, nothing fenced.
    pub fn single() -> Self {
        Self::new(false, DEFAULT_TTL)
    }

    /// A replica on PostgreSQL, not yet holder.
    pub fn replicated(ttl: Duration) -> Self {
        Self::new(true, ttl)
    }

    fn new(replicated: bool, ttl: Duration) -> Self {
        Self {
            replicated,
            holder_id: format!("{}/{}", std::process::id(), uuid::Uuid::new_v4().simple()),
            ttl,
            epoch: AtomicU64::new(0),
            valid_until: Mutex::new(None),
        }
    }

    /// True on PostgreSQL (writes of background work are fenced).
    pub fn is_replicated(&self) -> bool {
        self.replicated
    }

    /// The epoch held, if this replica may run background work now (SQLite: `Some(0)`).
    pub fn held(&self) -> Option<u64> {
        if !self.replicated {
            return Some(0);
        }
        let until = self.valid_until.lock().ok().and_then(|g| *g)?;
        let e = self.epoch.load(Ordering::SeqCst);
        (e > 0 && Instant::now() < until).then_some(e)
    }

    /// The last epoch this replica held (0: never), whether or not it is still valid.
    pub fn last_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Renew or take the lease once. `Ok(Some(epoch))` when held, `Ok(None)` when another
    /// replica holds it. Returns whether the holder changed to us (newly acquired).
    pub async fn renew(&self, conn: &mut PgConnection) -> Result<(Option<u64>, bool), sqlx::Error> {
        let sent = Instant::now();
        let prev = self.epoch.load(Ordering::SeqCst);
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let got: Option<i64> = sqlx::query_scalar(
            "WITH t AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now) \
             UPDATE kms_lease SET \
               epoch = CASE WHEN holder = $1 AND epoch = $2 THEN epoch ELSE epoch + 1 END, \
               holder = $1, expires_ms = t.now + $3 \
             FROM t WHERE id = 1 AND ((holder = $1 AND epoch = $2) OR expires_ms < t.now) \
             RETURNING epoch",
        )
        .bind(&self.holder_id)
        .bind(prev as i64)
        .bind(ttl_ms)
        .fetch_optional(&mut *conn)
        .await?;
        match got {
            Some(e) => {
                let e = e as u64;
                self.epoch.store(e, Ordering::SeqCst);
                if let Ok(mut g) = self.valid_until.lock() {
                    *g = Some(sent + self.ttl.mul_f32(0.75));
                }
                Ok((Some(e), e != prev))
            }
            None => {
                self.step_down();
                Ok((None, false))
            }
        }
    }

    /// Stop considering ourselves holder (the lease went to another replica).
    pub fn step_down(&self) {
        if let Ok(mut g) = self.valid_until.lock() {
            *g = None;
        }
    }
}

/// Give the lease up at shutdown (if still ours), so another replica takes it at its next renewal
/// instead of after the TTL. The epoch still increments at that takeover.
pub async fn release(pool: &sqlx::PgPool, lease: &Lease) {
    lease.step_down();
    let e = lease.last_epoch();
    if e == 0 {
        return;
    }
    let done = sqlx::query(
        "UPDATE kms_lease SET expires_ms = 0 WHERE id = 1 AND holder = $1 AND epoch = $2",
    )
    .bind(&lease.holder_id)
    .bind(e as i64)
    .execute(pool)
    .await;
    if let Err(e) = done {
        tracing::warn!(error = %e, "the lease could not be released (it expires by itself)");
    }
}

/// The current lease row: (holder, epoch).
pub async fn current(pool: &sqlx::PgPool) -> Result<(String, u64), sqlx::Error> {
    let (h, e): (String, i64) = sqlx::query_as("SELECT holder, epoch FROM kms_lease WHERE id = 1")
        .fetch_one(pool)
        .await?;
    Ok((h, e as u64))
}
