//! `coffer-kms init`: create the database, root key version 1, the audit signing key, the
//! admin credential and (by default) the local CA and KMS server certificate, all at once or not
//! at all.
//!
//! Secret: the root key and the audit key (sealed under the passphrase key before they touch
//! disk) and the admin private key (written once to a new 0600 file; the KMS keeps the public
//! key). Atomic: the database is built under a temporary name and renamed into place last, so a
//! data dir either has a complete `kms.db` or none; a second init refuses and changes nothing.
//!
//! With a PostgreSQL `database_url` ([`init_at`]) the state goes into that database in one
//! transaction taken under the chain head lock (a database that already has a root key is
//! refused, also when two inits race); the data dir gets the admin credential, `audit.pub` and
//! the TLS files. Further replicas are not initialized: they are started on the same database
//! with the same passphrase and a data dir of their own holding a copy of `tls/`
//! (`docs/kms-replicas.md`).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::credential::Credential;
use coffer_common::jwt::AUD_ADMIN;
use coffer_common::secret::{Passphrase, SecretKey32};
use ed25519_dalek::SigningKey;
use sqlx::{Connection, SqliteConnection};

use crate::store::{DbConn, Location};

use crate::audit::{AuditRecord, GENESIS_HASH, now_rfc3339};
use crate::seal::{KdfParams, PassphraseKey};
use crate::store::{self, IdentityRow, SealedRow, StateChange};

/// Name of the admin identity created by init.
pub const ADMIN_IDENTITY: &str = "admin";
/// Admin credential file in the data dir.
pub const ADMIN_CREDENTIAL_FILE: &str = "admin.credential";
/// Audit public key file in the data dir (base64 of the Ed25519 public key).
pub const AUDIT_PUB_FILE: &str = "audit.pub";

/// Why init failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} is already initialized; refusing to change anything")]
    AlreadyInitialized(String),
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Credential(#[from] coffer_common::credential::CredentialError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What init created.
pub struct Initialized {
    pub admin_credential: PathBuf,
    pub audit_public_key: PathBuf,
    /// The TLS files, unless init was told not to make them.
    pub tls: Option<crate::certs::TlsPaths>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Initialize `data_dir`; with `tls`, also write the local CA and server certificate.
pub async fn init(
    data_dir: &Path,
    passphrase: &Passphrase,
    params: KdfParams,
    tls: Option<&crate::certs::Generated>,
) -> Result<Initialized, InitError> {
    let loc = Location::Sqlite(data_dir.to_path_buf());
    init_at(data_dir, &loc, passphrase, params, tls).await
}

/// [`init`] with the state at `loc` (`kms.db` in the data dir, or PostgreSQL).
pub async fn init_at(
    data_dir: &Path,
    loc: &Location,
    passphrase: &Passphrase,
    params: KdfParams,
    tls: Option<&crate::certs::Generated>,
) -> Result<Initialized, InitError> {
    if let Location::Pg(opts) = loc {
        return init_pg(data_dir, opts, passphrase, params, tls).await;
    }
    if passphrase.is_empty() {
        return Err(InitError::EmptyPassphrase);
    }
    let db = data_dir.join(store::DB_FILE);
    let cred_path = data_dir.join(ADMIN_CREDENTIAL_FILE);
    let pub_path = data_dir.join(AUDIT_PUB_FILE);
    if db.exists() || cred_path.exists() {
        return Err(InitError::AlreadyInitialized(
            data_dir.display().to_string(),
        ));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io(data_dir))?;
    let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));

    let pk = PassphraseKey::derive(passphrase, params, PassphraseKey::new_salt())?;
    let root = SecretKey32::generate();
    let audit_seed = SecretKey32::generate();
    let audit_key = SigningKey::from_bytes(audit_seed.expose_secret());
    let admin = Credential::generate(ADMIN_IDENTITY, AUD_ADMIN);

    let tmp = data_dir.join(format!("{}.init-{}", store::DB_FILE, std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let built = build_db(&tmp, &pk, &root, &audit_seed, &audit_key, &admin, params).await;
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = admin.write_new(&cred_path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    let pub_b64 = STANDARD.encode(audit_key.verifying_key().to_bytes()) + "\n";
    std::fs::write(&pub_path, pub_b64).map_err(io(&pub_path))?;
    let tls = match tls {
        Some(g) => Some(crate::certs::write(data_dir, g).map_err(io(data_dir))?),
        None => None,
    };
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    std::fs::rename(&tmp, &db).map_err(io(&db))?;
    if let Ok(d) = std::fs::File::open(data_dir) {
        let _ = d.sync_all();
    }
    Ok(Initialized {
        admin_credential: cred_path,
        audit_public_key: pub_path,
        tls,
    })
}

async fn init_pg(
    data_dir: &Path,
    opts: &sqlx::postgres::PgConnectOptions,
    passphrase: &Passphrase,
    params: KdfParams,
    tls: Option<&crate::certs::Generated>,
) -> Result<Initialized, InitError> {
    if passphrase.is_empty() {
        return Err(InitError::EmptyPassphrase);
    }
    let cred_path = data_dir.join(ADMIN_CREDENTIAL_FILE);
    let pub_path = data_dir.join(AUDIT_PUB_FILE);
    if cred_path.exists() {
        return Err(InitError::AlreadyInitialized(
            data_dir.display().to_string(),
        ));
    }
    let pk = PassphraseKey::derive(passphrase, params, PassphraseKey::new_salt())?;
    let root = SecretKey32::generate();
    let audit_seed = SecretKey32::generate();
    let audit_key = SigningKey::from_bytes(audit_seed.expose_secret());
    let admin = Credential::generate(ADMIN_IDENTITY, AUD_ADMIN);
    let mut conn = DbConn::Pg(sqlx::PgConnection::connect_with(opts).await?);
    store::migrate(&mut conn).await.map_err(sqlx::Error::from)?;
    store::begin(&mut conn).await?;
    let filled = async {
        let DbConn::Pg(c) = &mut conn else {
            return Err(InitError::Db(sqlx::Error::Protocol(
                "not PostgreSQL".into(),
            )));
        };
        store::pg_lock_head(c).await?;
        if store::is_initialized(&mut conn).await? {
            return Err(InitError::AlreadyInitialized(
                "the PostgreSQL database of database_url".into(),
            ));
        }
        let rec = fill(
            &mut conn,
            &pk,
            &root,
            &audit_seed,
            &audit_key,
            &admin,
            params,
        )
        .await?;
        let DbConn::Pg(c) = &mut conn else {
            return Err(InitError::Db(sqlx::Error::Protocol(
                "not PostgreSQL".into(),
            )));
        };
        store::pg_append(c, &[], None, (1, &rec.hash, 0), true).await?;
        Ok(())
    }
    .await;
    if let Err(e) = filled {
        store::rollback(&mut conn).await;
        return Err(e);
    }
    // The data dir and the credential before the commit (a new 0600 file): a commit failure then
    // removes it, and a committed database always has its admin credential.
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir);
    if let Err(e) = made {
        store::rollback(&mut conn).await;
        return Err(io(data_dir)(e));
    }
    let _ = std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700));
    if let Err(e) = admin.write_new(&cred_path) {
        store::rollback(&mut conn).await;
        return Err(e.into());
    }
    if let Err(e) = store::commit(&mut conn).await {
        let _ = std::fs::remove_file(&cred_path);
        return Err(e.into());
    }
    conn.close().await;
    let pub_b64 = STANDARD.encode(audit_key.verifying_key().to_bytes()) + "\n";
    std::fs::write(&pub_path, pub_b64).map_err(io(&pub_path))?;
    let tls = match tls {
        Some(g) => Some(crate::certs::write(data_dir, g).map_err(io(data_dir))?),
        None => None,
    };
    Ok(Initialized {
        admin_credential: cred_path,
        audit_public_key: pub_path,
        tls,
    })
}

async fn build_db(
    path: &Path,
    pk: &PassphraseKey,
    root: &SecretKey32,
    audit_seed: &SecretKey32,
    audit_key: &SigningKey,
    admin: &Credential,
    params: KdfParams,
) -> Result<(), InitError> {
    let mut conn =
        DbConn::Sqlite(SqliteConnection::connect_with(&store::options(path, true)?).await?);
    store::migrate(&mut conn).await.map_err(sqlx::Error::from)?;
    store::begin(&mut conn).await?;
    if let Err(e) = fill(&mut conn, pk, root, audit_seed, audit_key, admin, params).await {
        store::rollback(&mut conn).await;
        return Err(e);
    }
    store::commit(&mut conn).await?;
    conn.close().await;
    Ok(())
}

/// Root key v1, the audit key, the admin identity and the first audit record, in the caller's
/// transaction. Returns the record.
async fn fill(
    tx: &mut DbConn,
    pk: &PassphraseKey,
    root: &SecretKey32,
    audit_seed: &SecretKey32,
    audit_key: &SigningKey,
    admin: &Credential,
    params: KdfParams,
) -> Result<AuditRecord, InitError> {
    let sealed = |k: &SecretKey32| SealedRow {
        params: pk.params,
        salt: pk.salt,
        sealed: pk.seal(k),
    };
    let change = StateChange::InsertRootKey {
        version: 1,
        row: sealed(root),
    };
    store::apply_change(tx, &change)
        .await
        .map_err(|e| match e {
            store::ApplyError::Db(e) => InitError::Db(e),
            store::ApplyError::Refused(c) => InitError::Db(sqlx::Error::Protocol(c.to_string())),
        })?;
    store::insert_audit_key(
        tx,
        &sealed(audit_seed),
        &audit_key.verifying_key().to_bytes(),
    )
    .await?;
    let admin_row = StateChange::InsertIdentity(IdentityRow {
        name: ADMIN_IDENTITY.into(),
        kind: "admin".into(),
        public_key: admin.public_key().to_bytes().to_vec(),
        buckets: String::new(),
        ops: String::new(),
        keys: String::new(),
        created_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        revoked_ms: None,
    });
    store::apply_change(tx, &admin_row)
        .await
        .map_err(|e| match e {
            store::ApplyError::Db(e) => InitError::Db(e),
            store::ApplyError::Refused(c) => InitError::Db(sqlx::Error::Protocol(c.to_string())),
        })?;
    let mut rec = AuditRecord {
        seq: 1,
        time: now_rfc3339(),
        request_id: uuid::Uuid::new_v4().to_string(),
        identity: "operator".into(),
        client: "local".into(),
        operation: "init".into(),
        bucket: None,
        key_version: Some(1),
        key_id: None,
        result: "ok".into(),
        detail: Some(format!(
            "admin identity {ADMIN_IDENTITY}; argon2id m={}KiB t={} p={}",
            params.m_kib, params.t, params.p
        )),
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
    };
    rec.hash = rec.compute_hash();
    store::insert_record(tx, &rec).await?;
    Ok(rec)
}
