//! Named KMS keys (SSE-KMS, issue 13): keys with a UUID id, an ARN and aliases, per-version key
//! material sealed under the root key, states (Enabled, Disabled, PendingDeletion, Destroyed),
//! rotation, and data keys bound to an encryption context. The wire contract is the "Named KMS
//! keys" section of `coffer_common::kms_api`; the design is in `docs/design.md` §3 and §4.
//!
//! This file owns the lifecycle [`Clock`], key resolution (id, ARN, alias, alias ARN → key), the
//! state checks of data-key operations and the unsealing of key material. Cryptography is in
//! [`material`], the database in [`store`], the background jobs in [`lifecycle`].
//!
//! Secret: key material and data keys (only in [`SecretKey32`], never logged or audited).

pub mod lifecycle;
pub mod material;
pub mod store;

use std::sync::atomic::{AtomicI64, Ordering};

use coffer_common::kms_api::{KmsKeyMetadata, KmsKeyState};
use coffer_common::secret::SecretKey32;

use crate::KmsState;
use crate::api::ApiError;
use material::KeyRef;
use store::{KeyRow, NewVersion};

/// The alias of the deployment default key, created on first use by generate.
pub const DEFAULT_S3_ALIAS: &str = "alias/aws/s3";

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Wall clock plus an offset: the time the key lifecycle (deletion dates, rotation periods)
/// runs on. Tests move it forward with [`Clock::advance`] instead of waiting for days.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let real = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        real.saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Move the clock forward by `ms` milliseconds.
    pub fn advance(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// RFC 3339 of Unix milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A key found by a reference, with its current aliases.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub row: KeyRow,
    pub aliases: Vec<String>,
}

impl Resolved {
    /// The key id and every alias (what a key scope glob is matched against).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.row.key_id.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

fn db(e: sqlx::Error) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// How a reference that names no live key is answered.
fn not_found(r: &str) -> ApiError {
    ApiError::KmsKeyNotFound(r.chars().take(300).collect())
}

/// The key id a reference names (`None`: no such key or alias).
pub async fn key_id_of(st: &KmsState, r: &str) -> Result<Option<String>, ApiError> {
    match st.arn.parse_ref(r) {
        KeyRef::Foreign => Ok(None),
        KeyRef::Id(id) => Ok(Some(id)),
        KeyRef::Alias(a) => store::alias_target(&st.pool, &a).await.map_err(db),
    }
}

/// Resolve a reference to a live key. A key pending deletion whose date has passed is destroyed
/// here (then answered not found); destroyed and unknown keys are `kms_key_not_found`.
pub async fn resolve(st: &KmsState, r: &str) -> Result<Resolved, ApiError> {
    let id = key_id_of(st, r).await?.ok_or_else(|| not_found(r))?;
    let mut row = store::key(&st.pool, &id)
        .await
        .map_err(db)?
        .ok_or_else(|| not_found(r))?;
    if row.state == KmsKeyState::PendingDeletion
        && row.deletion_ms.is_some_and(|d| d <= st.clock.now_ms())
    {
        lifecycle::destroy(st, &row.key_id).await?;
        row.state = KmsKeyState::Destroyed;
    }
    if row.state == KmsKeyState::Destroyed {
        return Err(not_found(r));
    }
    let aliases = store::aliases_of(&st.pool, &id).await.map_err(db)?;
    Ok(Resolved { row, aliases })
}

/// Refuse data-key operations on a key that is not Enabled.
pub fn check_usable(row: &KeyRow) -> Result<(), ApiError> {
    match row.state {
        KmsKeyState::Enabled => Ok(()),
        KmsKeyState::Disabled => Err(ApiError::KmsKeyDisabled(row.key_id.clone())),
        KmsKeyState::PendingDeletion => Err(ApiError::KmsKeyInvalidState(format!(
            "KMS key {} is pending deletion",
            row.key_id
        ))),
        KmsKeyState::Destroyed => Err(not_found(&row.key_id)),
    }
}

/// Fresh material for version `version` of `key_id`, sealed under the active root key.
pub fn new_material(st: &KmsState, key_id: &str, version: u32) -> Result<NewVersion, ApiError> {
    let ring = st.keyring.read().map_err(|_| ApiError::Sealed)?;
    let ring = ring.as_ref().ok_or(ApiError::Sealed)?;
    let root_version = ring.active_version().ok_or(ApiError::Sealed)?;
    let root = ring.root(root_version).ok_or(ApiError::Sealed)?;
    let m = SecretKey32::generate();
    Ok(NewVersion {
        version,
        root_version,
        sealed: material::seal_material(root, key_id, version, &m).to_vec(),
    })
}

/// The unsealed material of (`key_id`, `version`); `None` when that version does not exist.
pub async fn unseal(
    st: &KmsState,
    key_id: &str,
    version: u32,
) -> Result<Option<SecretKey32>, ApiError> {
    let Some((root_version, sealed)) = store::version(&st.pool, key_id, version)
        .await
        .map_err(db)?
    else {
        return Ok(None);
    };
    let unknown = st
        .keyring
        .read()
        .ok()
        .and_then(|r| r.as_ref().map(|r| r.root(root_version).is_none()))
        .unwrap_or(false);
    if unknown && st.pool.is_pg() {
        // Sealed under a root version another replica made since our last poll.
        crate::replicas::on_demand(st).await;
    }
    let ring = st.keyring.read().map_err(|_| ApiError::Sealed)?;
    let ring = ring.as_ref().ok_or(ApiError::Sealed)?;
    let root = ring.root(root_version).ok_or_else(|| {
        ApiError::Internal(format!(
            "root key version {root_version} of KMS key {key_id} v{version} is not loaded"
        ))
    })?;
    material::unseal_material(root, key_id, version, &sealed)
        .map(Some)
        .ok_or_else(|| {
            ApiError::Internal(format!(
                "material of KMS key {key_id} v{version} failed its integrity check"
            ))
        })
}

/// The metadata answered for a key.
pub fn metadata(st: &KmsState, row: &KeyRow, aliases: Vec<String>) -> KmsKeyMetadata {
    KmsKeyMetadata {
        key_id: row.key_id.clone(),
        arn: st.arn.key_arn(&row.key_id),
        state: row.state,
        description: row.description.clone(),
        aliases,
        created: rfc3339_ms(row.created_ms),
        current_version: row.current_version,
        rotation_period_days: row.rotation_period_days,
        deletion_date: row.deletion_ms.map(rfc3339_ms),
    }
}
