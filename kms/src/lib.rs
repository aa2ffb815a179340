//! coffer-kms: a key management daemon. It holds the root keys (sealed at rest under an operator
//! passphrase), issues and unwraps per-bucket data keys over an authenticated HTTP API, manages
//! service identities, rotates the root key with background re-wrapping, and writes a
//! hash-chained, signed audit record for every service call and admin action.
//!
//! This file owns the shared state ([`KmsState`]), start-up ([`open`]: unseal and load) and
//! [`serve`] on an already-bound listener. Secret: the root keys and the passphrase key held in
//! [`KmsState`] (zeroized on drop, wiped on seal).

pub mod api;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod hardening;
pub mod init;
pub mod keyring;
pub mod kmskeys;
pub mod lease;
pub mod metrics;
pub mod replicas;
pub mod retire;
pub mod rotation;
pub mod seal;
pub mod store;

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coffer_common::secret::Passphrase;
use ed25519_dalek::{SigningKey, VerifyingKey};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify};

use crate::audit::writer::{AuditLog, Head, WriterConfig};
use crate::auth::{AuthContext, Identities, Identity, Kind, Op, ReplayCache};
use crate::keyring::Keyring;
use crate::seal::{PassphraseKey, SealError};

/// The running KMS.
pub struct KmsState {
    /// Root keys; `None` when sealed.
    pub keyring: RwLock<Option<Keyring>>,
    /// The passphrase key, kept to seal new root versions; `None` when sealed.
    pub passphrase_key: Mutex<Option<PassphraseKey>>,
    pub identities: Identities,
    pub replay: ReplayCache,
    pub audit: AuditLog,
    /// Read pool (the audit writer owns the only writing connection).
    pub pool: store::Db,
    /// The lease of background work among replicas (`crate::lease`; SQLite: always held).
    pub lease: Arc<lease::Lease>,
    /// Unix time this process started (tokens issued earlier are refused).
    pub started_unix: i64,
    /// Wakes the re-wrap worker.
    pub rewrap_notify: Notify,
    /// The local CA (`DATA_DIR/tls/`) that signs client certificates; `None` without one.
    pub local_ca: Option<certs::LocalCa>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<metrics::KmsMetrics>,
    /// Refused calls of unauthenticated callers, audited in aggregate.
    pub refusals: audit::refusals::Refusals,
    /// Clock of the named-key lifecycle (deletion windows, automatic rotation); tests move it.
    pub clock: kmskeys::Clock,
    /// Region and account id of named-key ARNs.
    pub arn: kmskeys::material::ArnSettings,
    /// When a request last made this replica reload from the database (`replicas::on_demand`).
    pub on_demand_reload: Mutex<Option<std::time::Instant>>,
}

impl KmsState {
    /// The authentication context.
    pub fn auth(&self) -> AuthContext<'_> {
        AuthContext {
            identities: &self.identities,
            replay: &self.replay,
            started_unix: self.started_unix,
        }
    }

    /// [`AuthContext::authenticate`]; on PostgreSQL an identity this replica does not know yet
    /// (created through another replica since its last poll) makes it reload once (throttled)
    /// before refusing.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        kind: Kind,
        method: &str,
        path: &str,
    ) -> Result<Identity, auth::AuthError> {
        match self.auth().authenticate(token, kind, method, path) {
            Err(auth::AuthError::UnknownIdentity)
                if self.pool.is_pg() && replicas::on_demand(self).await =>
            {
                self.auth().authenticate(token, kind, method, path)
            }
            r => r,
        }
    }
}

/// Why the KMS could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0} is not an initialized coffer-kms data dir (run coffer-kms init)")]
    NotInitialized(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database contents are invalid: {0}")]
    Corrupt(String),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("local CA: {0}")]
    Tls(#[from] coffer_common::tls::TlsError),
}

/// Background tasks to await at shutdown.
pub struct Tasks {
    writer: tokio::task::JoinHandle<()>,
    rewrap: tokio::task::JoinHandle<()>,
    lifecycle: tokio::task::JoinHandle<()>,
    /// PostgreSQL: the lease keeper and the poller of other replicas' changes.
    replicas: Vec<tokio::task::JoinHandle<()>>,
}

pub(crate) fn identity_from_row(r: &store::IdentityRow) -> Result<Identity, StartError> {
    let pk: [u8; 32] = r
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| StartError::Corrupt(format!("public key of {}", r.name)))?;
    Ok(Identity {
        name: r.name.clone(),
        kind: if r.kind == "admin" {
            Kind::Admin
        } else {
            Kind::Service
        },
        public_key: VerifyingKey::from_bytes(&pk)
            .map_err(|_| StartError::Corrupt(format!("public key of {}", r.name)))?,
        bucket_glob: r.buckets.clone(),
        ops: r
            .ops
            .split(',')
            .filter_map(Op::parse)
            .collect::<HashSet<_>>(),
        key_glob: r.keys.clone(),
        revoked: r.revoked_ms.is_some(),
    })
}

/// Open an initialized data dir: unseal every root key and the audit key with the passphrase,
/// load identities, start the audit writer, the re-wrap worker and the flusher of aggregated
/// refusals.
pub async fn open(
    data_dir: &Path,
    passphrase: &Passphrase,
    cfg: WriterConfig,
) -> Result<(Arc<KmsState>, Tasks), StartError> {
    open_with(
        data_dir,
        passphrase,
        cfg,
        kmskeys::material::ArnSettings::default(),
    )
    .await
}

/// [`open`] with the region and account id of named-key ARNs.
pub async fn open_with(
    data_dir: &Path,
    passphrase: &Passphrase,
    cfg: WriterConfig,
    arn: kmskeys::material::ArnSettings,
) -> Result<(Arc<KmsState>, Tasks), StartError> {
    let loc = store::Location::Sqlite(data_dir.to_path_buf());
    open_at(data_dir, &loc, passphrase, cfg, arn, lease::DEFAULT_TTL).await
}

/// [`open_with`] with the database at `loc`: the data dir's `kms.db`, or PostgreSQL shared with
/// other replicas (each unsealing with the same passphrase; `lease_ttl` is the lease of
/// background work, `crate::lease`).
pub async fn open_at(
    data_dir: &Path,
    loc: &store::Location,
    passphrase: &Passphrase,
    cfg: WriterConfig,
    arn: kmskeys::material::ArnSettings,
    lease_ttl: Duration,
) -> Result<(Arc<KmsState>, Tasks), StartError> {
    arn.validate().map_err(StartError::Config)?;
    let where_ = match loc {
        store::Location::Sqlite(_) => data_dir.display().to_string(),
        store::Location::Pg(_) => "the PostgreSQL database of database_url".to_string(),
    };
    if !loc.is_pg() && !data_dir.join(store::DB_FILE).exists() {
        return Err(StartError::NotInitialized(where_));
    }
    let (mut writer, pool) = store::open_at(loc).await?;
    if !store::is_initialized(&mut writer).await? {
        return Err(StartError::NotInitialized(where_));
    }
    let sealed = store::root_keys(&mut writer).await?;
    let mut ring = Keyring::default();
    let mut pk: Option<PassphraseKey> = None;
    for (version, row) in sealed {
        let key = match pk.as_ref() {
            Some(k) if k.params == row.params && k.salt == row.salt => k,
            _ => pk.insert(PassphraseKey::derive(passphrase, row.params, row.salt)?),
        };
        ring.insert(version, key.unseal(&row.sealed)?);
    }
    let pk = pk.ok_or_else(|| StartError::NotInitialized(where_.clone()))?;
    let (audit_row, audit_pub) = store::audit_key(&mut writer).await?;
    let audit_pk = if audit_row.params == pk.params && audit_row.salt == pk.salt {
        None
    } else {
        Some(PassphraseKey::derive(
            passphrase,
            audit_row.params,
            audit_row.salt,
        )?)
    };
    let seed = audit_pk.as_ref().unwrap_or(&pk).unseal(&audit_row.sealed)?;
    let signing = SigningKey::from_bytes(seed.expose_secret());
    if signing.verifying_key().to_bytes().as_slice() != audit_pub.as_slice() {
        return Err(StartError::Corrupt(
            "audit key does not match its public key".into(),
        ));
    }
    let identities = Identities::default();
    for r in store::identities(&mut writer).await? {
        identities.put(identity_from_row(&r)?);
    }
    let (seq, hash, cp) = store::audit_head(&mut writer).await?;
    let head = Head {
        seq,
        hash,
        last_checkpoint_seq: cp,
    };
    let local_ca = certs::LocalCa::load(data_dir)?;
    let metrics = Arc::new(metrics::KmsMetrics::new());
    let (lease, pg_pool) = match &pool {
        store::Db::Pg(p) => (
            Arc::new(lease::Lease::replicated(lease_ttl)),
            Some(p.clone()),
        ),
        store::Db::Sqlite(_) => (Arc::new(lease::Lease::single()), None),
    };
    // The lease keeper's own connection, so that renewals never wait for the read pool.
    let lease_conn = store::connect_pg(loc).await?;
    let (audit, writer_task) =
        AuditLog::start_with(writer, head, signing, cfg, lease.clone(), pg_pool.clone());
    let audit = audit.with_observer(metrics.audit_observer());
    let state = Arc::new(KmsState {
        keyring: RwLock::new(Some(ring)),
        passphrase_key: Mutex::new(Some(pk)),
        identities,
        replay: ReplayCache::default(),
        audit,
        pool,
        lease,
        started_unix: coffer_common::jwt::now_unix(),
        rewrap_notify: Notify::new(),
        local_ca,
        metrics,
        refusals: audit::refusals::Refusals::default(),
        clock: kmskeys::Clock::default(),
        arn,
        on_demand_reload: Mutex::new(None),
    });
    tokio::spawn(audit::refusals::flusher(Arc::downgrade(&state)));
    let rewrap = tokio::spawn(rotation::rewrap_worker(Arc::downgrade(&state)));
    state.rewrap_notify.notify_one();
    let lifecycle = tokio::spawn(kmskeys::lifecycle::worker(Arc::downgrade(&state)));
    let mut replicas = Vec::new();
    if let (Some(conn), Some(pool)) = (lease_conn, pg_pool) {
        replicas.push(tokio::spawn(replicas::lease_keeper(
            Arc::downgrade(&state),
            conn,
        )));
        replicas.push(tokio::spawn(replicas::change_poller(
            Arc::downgrade(&state),
            pool,
        )));
    }
    Ok((
        state,
        Tasks {
            writer: writer_task,
            rewrap,
            lifecycle,
            replicas,
        },
    ))
}

/// Serve the KMS on `listener` (plain HTTP, or TLS when `tls` is given) until `shutdown`
/// resolves, with `limits` on its connections; then let in-flight requests finish, flush the audit writer (with a last
/// checkpoint) and return.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<KmsState>,
    tasks: Tasks,
    limits: coffer_common::server::Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let app = api::router(state.clone());
    let result =
        coffer_common::server::serve_with_limits(listener, tls, app, limits, shutdown).await;
    tasks.rewrap.abort();
    let _ = tasks.rewrap.await;
    tasks.lifecycle.abort();
    let _ = tasks.lifecycle.await;
    for t in tasks.replicas {
        t.abort();
        let _ = t.await;
    }
    if let store::Db::Pg(pool) = &state.pool {
        // Background tasks are stopped; a write of theirs still queued is refused (fenced) once
        // another replica has taken the lease.
        lease::release(pool, &state.lease).await;
    }
    audit::refusals::flush(&state, true).await;
    // Dropping the last handle closes the writer's channel: it drains, checkpoints and exits.
    drop(state);
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.writer).await;
    result
}
