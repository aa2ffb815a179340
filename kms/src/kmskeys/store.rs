//! Database side of named KMS keys (tables of `migrations/kms/0003_kms_keys.sql`): reads through
//! the read pool, and the state changes ([`Change`]) that the audit writer applies in the same
//! transaction as their audit record. Every precondition of a change (state, existence, name
//! reuse) is checked inside that transaction, so concurrent requests cannot race past it.
//!
//! Secret: nothing in the clear; key material is stored sealed under a root key.

use coffer_common::kms_api::KmsKeyState;
use sqlx::Row;

use crate::store::{ApplyError, ChangeError, Db, DbConn};
use crate::{on_conn, on_db};

/// Wire name of a state (as stored).
pub fn state_name(s: KmsKeyState) -> &'static str {
    match s {
        KmsKeyState::Enabled => "Enabled",
        KmsKeyState::Disabled => "Disabled",
        KmsKeyState::PendingDeletion => "PendingDeletion",
        KmsKeyState::Destroyed => "Destroyed",
    }
}

fn parse_state(s: &str) -> Result<KmsKeyState, sqlx::Error> {
    Ok(match s {
        "Enabled" => KmsKeyState::Enabled,
        "Disabled" => KmsKeyState::Disabled,
        "PendingDeletion" => KmsKeyState::PendingDeletion,
        "Destroyed" => KmsKeyState::Destroyed,
        other => return Err(sqlx::Error::Decode(format!("key state {other:?}").into())),
    })
}

/// One row of `kms_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub key_id: String,
    pub description: String,
    pub state: KmsKeyState,
    pub created_ms: i64,
    pub current_version: u32,
    pub rotation_period_days: Option<u32>,
    pub rotated_ms: i64,
    pub deletion_ms: Option<i64>,
}

macro_rules! key_row {
    ($r:expr) => {{
        let r = $r;
        Ok::<KeyRow, sqlx::Error>(KeyRow {
            key_id: r.try_get("key_id")?,
            description: r.try_get("description")?,
            state: parse_state(&r.try_get::<String, _>("state")?)?,
            created_ms: r.try_get("created_ms")?,
            current_version: r.try_get::<i64, _>("current_version")? as u32,
            rotation_period_days: r
                .try_get::<Option<i64>, _>("rotation_period_days")?
                .map(|d| d as u32),
            rotated_ms: r.try_get("rotated_ms")?,
            deletion_ms: r.try_get("deletion_ms")?,
        })
    }};
}

/// A key by id.
pub async fn key(pool: &Db, key_id: &str) -> Result<Option<KeyRow>, sqlx::Error> {
    on_db!(pool, p => sqlx::query("SELECT * FROM kms_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_optional(p)
        .await?
        .as_ref()
        .map(|r| key_row!(r))
        .transpose())
}

/// Every key, oldest first.
pub async fn keys(pool: &Db) -> Result<Vec<KeyRow>, sqlx::Error> {
    on_db!(pool, p => sqlx::query("SELECT * FROM kms_keys ORDER BY created_ms, key_id")
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| key_row!(r))
        .collect())
}

/// The key an alias points at.
pub async fn alias_target(pool: &Db, alias: &str) -> Result<Option<String>, sqlx::Error> {
    on_db!(pool, p => sqlx::query_scalar("SELECT key_id FROM kms_aliases WHERE alias = $1")
        .bind(alias)
        .fetch_optional(p)
        .await)
}

/// Current aliases of a key, sorted.
pub async fn aliases_of(pool: &Db, key_id: &str) -> Result<Vec<String>, sqlx::Error> {
    on_db!(pool, p => sqlx::query_scalar("SELECT alias FROM kms_aliases WHERE key_id = $1 ORDER BY alias")
        .bind(key_id)
        .fetch_all(p)
        .await)
}

/// Every alias: (alias, key id), sorted by alias.
pub async fn aliases(pool: &Db) -> Result<Vec<(String, String)>, sqlx::Error> {
    on_db!(pool, p => sqlx::query("SELECT alias, key_id FROM kms_aliases ORDER BY alias")
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("alias")?, r.try_get("key_id")?)))
        .collect())
}

/// Sealed material of one key version: (root version, sealed bytes).
pub async fn version(
    pool: &Db,
    key_id: &str,
    version: u32,
) -> Result<Option<(u32, Vec<u8>)>, sqlx::Error> {
    on_db!(pool, p => sqlx::query(
        "SELECT root_version, sealed FROM kms_key_versions WHERE key_id = $1 AND version = $2",
    )
    .bind(key_id)
    .bind(i64::from(version))
    .fetch_optional(p)
    .await?
    .map(|r| {
        Ok((
            r.try_get::<i64, _>("root_version")? as u32,
            r.try_get("sealed")?,
        ))
    })
    .transpose())
}

/// Data keys issued under a key: (bucket, key version, count), sorted.
pub async fn dependents(pool: &Db, key_id: &str) -> Result<Vec<(String, u32, i64)>, sqlx::Error> {
    on_db!(pool, p => sqlx::query("SELECT bucket, key_version, data_keys FROM kms_data_key_counts WHERE key_id = $1 ORDER BY bucket, key_version")
        .bind(key_id)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("bucket")?,
                r.try_get::<i64, _>("key_version")? as u32,
                r.try_get("data_keys")?,
            ))
        })
        .collect())
}

/// Keys pending deletion whose date has passed.
pub async fn due_deletions(pool: &Db, now_ms: i64) -> Result<Vec<String>, sqlx::Error> {
    on_db!(pool, p => sqlx::query_scalar(
        "SELECT key_id FROM kms_keys WHERE state = 'PendingDeletion' AND deletion_ms <= $1",
    )
    .bind(now_ms)
    .fetch_all(p)
    .await)
}

/// Enabled keys whose automatic rotation is due.
pub async fn due_rotations(pool: &Db, now_ms: i64) -> Result<Vec<KeyRow>, sqlx::Error> {
    on_db!(pool, p => sqlx::query("SELECT * FROM kms_keys WHERE state = 'Enabled' AND rotation_period_days IS NOT NULL AND rotated_ms + rotation_period_days * 86400000 <= $1")
        .bind(now_ms)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| key_row!(r))
        .collect())
}

/// Whether a name (key id or alias) belongs to a destroyed key.
pub async fn tombstoned(pool: &Db, name: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = on_db!(pool, p => sqlx::query_scalar("SELECT COUNT(*) FROM kms_tombstones WHERE name = $1")
        .bind(name)
        .fetch_one(p)
        .await)?;
    Ok(n > 0)
}

/// Key version material to insert.
pub struct NewVersion {
    pub version: u32,
    pub root_version: u32,
    pub sealed: Vec<u8>,
}

/// A state change of named keys, applied with its audit record.
pub enum Change {
    CreateKey {
        key_id: String,
        description: String,
        rotation_period_days: Option<u32>,
        alias: Option<String>,
        material: NewVersion,
        now_ms: i64,
    },
    /// Move to `to` when the current state is one of `from`.
    SetState {
        key_id: String,
        from: &'static [KmsKeyState],
        to: KmsKeyState,
        deletion_ms: Option<i64>,
    },
    /// Add version `material.version` (must be current + 1) to an Enabled key.
    AddVersion {
        key_id: String,
        material: NewVersion,
        now_ms: i64,
    },
    SetRotationPeriod {
        key_id: String,
        days: Option<u32>,
        now_ms: i64,
    },
    /// Destroy a key pending deletion whose date has passed.
    Destroy {
        key_id: String,
        now_ms: i64,
    },
    CreateAlias {
        alias: String,
        key_id: String,
        now_ms: i64,
    },
    UpdateAlias {
        alias: String,
        key_id: String,
    },
    DeleteAlias {
        alias: String,
    },
    CountDataKey {
        key_id: String,
        key_version: u32,
        bucket: String,
    },
    /// Material re-sealed under a newer root version (after a root rotation).
    Reseal(Vec<Resealed>),
}

/// One key version's material, re-sealed.
pub struct Resealed {
    pub key_id: String,
    pub version: u32,
    /// The root version it was sealed under (the update applies only if it still is).
    pub from_root: u32,
    pub new: NewVersion,
}

/// Key versions whose material is sealed under a root version older than `active`, at most
/// `limit`: (key id, version, root version, sealed).
pub async fn to_reseal(
    pool: &Db,
    active: u32,
    limit: i64,
) -> Result<Vec<(String, u32, u32, Vec<u8>)>, sqlx::Error> {
    on_db!(pool, p => sqlx::query("SELECT key_id, version, root_version, sealed FROM kms_key_versions WHERE root_version < $1 ORDER BY key_id, version LIMIT $2")
        .bind(i64::from(active))
        .bind(limit)
        .fetch_all(p)
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get("key_id")?,
                r.try_get::<i64, _>("version")? as u32,
                r.try_get::<i64, _>("root_version")? as u32,
                r.try_get("sealed")?,
            ))
        })
        .collect())
}

/// Named-key versions whose material is sealed under root `version` (a root version they
/// depend on cannot be retired).
pub async fn sealed_under(conn: &mut DbConn, version: u32) -> Result<i64, sqlx::Error> {
    on_conn!(conn, c => sqlx::query_scalar("SELECT COUNT(*) FROM kms_key_versions WHERE root_version = $1")
        .bind(i64::from(version))
        .fetch_one(&mut *c)
        .await)
}

fn not_found(key_id: &str) -> ApplyError {
    ApplyError::Refused(ChangeError::KeyNotFound(key_id.to_string()))
}

/// The state of a live key inside the transaction (destroyed or absent: not found).
async fn live_state(conn: &mut DbConn, key_id: &str) -> Result<KmsKeyState, ApplyError> {
    let s: Option<String> = on_conn!(conn, c => sqlx::query_scalar("SELECT state FROM kms_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_optional(&mut *c)
        .await)?;
    match s.as_deref().map(parse_state).transpose()? {
        None | Some(KmsKeyState::Destroyed) => Err(not_found(key_id)),
        Some(s) => Ok(s),
    }
}

async fn alias_free(conn: &mut DbConn, alias: &str) -> Result<(), ApplyError> {
    let n: i64 = on_conn!(conn, c => sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM kms_aliases WHERE alias = $1) + (SELECT COUNT(*) FROM kms_tombstones WHERE name = $1)",
    )
    .bind(alias)
    .fetch_one(&mut *c)
    .await)?;
    if n > 0 {
        return Err(ApplyError::Refused(ChangeError::Conflict(format!(
            "alias {alias} (or a destroyed key's alias of that name)"
        ))));
    }
    Ok(())
}

async fn point_alias(
    conn: &mut DbConn,
    alias: &str,
    key_id: &str,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    on_conn!(conn, c => sqlx::query("INSERT INTO kms_aliases (alias, key_id, created_ms) VALUES ($1, $2, $3) ON CONFLICT (alias) DO UPDATE SET key_id = excluded.key_id")
        .bind(alias)
        .bind(key_id)
        .bind(now_ms)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    on_conn!(conn, c => sqlx::query("INSERT INTO kms_alias_history (alias, key_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(alias)
        .bind(key_id)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

async fn insert_version(
    conn: &mut DbConn,
    key_id: &str,
    m: &NewVersion,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    on_conn!(conn, c => sqlx::query("INSERT INTO kms_key_versions (key_id, version, root_version, sealed, created_ms) VALUES ($1, $2, $3, $4, $5)")
        .bind(key_id)
        .bind(i64::from(m.version))
        .bind(i64::from(m.root_version))
        .bind(m.sealed.as_slice())
        .bind(now_ms)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Apply one change (inside the writer's transaction and savepoint).
pub async fn apply(conn: &mut DbConn, change: &Change) -> Result<(), ApplyError> {
    match change {
        Change::CreateKey {
            key_id,
            description,
            rotation_period_days,
            alias,
            material,
            now_ms,
        } => {
            let taken: i64 = on_conn!(conn, c => sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM kms_keys WHERE key_id = $1) + (SELECT COUNT(*) FROM kms_tombstones WHERE name = $1)",
            )
            .bind(key_id)
            .fetch_one(&mut *c)
            .await)?;
            if taken > 0 {
                return Err(ApplyError::Refused(ChangeError::Conflict(format!(
                    "KMS key {key_id}"
                ))));
            }
            if let Some(a) = alias {
                alias_free(conn, a).await?;
            }
            on_conn!(conn, c => sqlx::query("INSERT INTO kms_keys (key_id, description, state, created_ms, current_version, rotation_period_days, rotated_ms) VALUES ($1, $2, 'Enabled', $3, $4, $5, $6)")
                .bind(key_id)
                .bind(description)
                .bind(now_ms)
                .bind(i64::from(material.version))
                .bind(rotation_period_days.map(i64::from))
                .bind(now_ms)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_version(conn, key_id, material, *now_ms).await?;
            if let Some(a) = alias {
                point_alias(conn, a, key_id, *now_ms).await?;
            }
        }
        Change::SetState {
            key_id,
            from,
            to,
            deletion_ms,
        } => {
            let cur = live_state(conn, key_id).await?;
            if !from.contains(&cur) {
                return Err(ApplyError::Refused(ChangeError::InvalidState(format!(
                    "KMS key {key_id} is {}",
                    state_name(cur)
                ))));
            }
            on_conn!(conn, c => sqlx::query("UPDATE kms_keys SET state = $1, deletion_ms = $2 WHERE key_id = $3")
                .bind(state_name(*to))
                .bind(deletion_ms)
                .bind(key_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        Change::AddVersion {
            key_id,
            material,
            now_ms,
        } => {
            let cur = live_state(conn, key_id).await?;
            if cur != KmsKeyState::Enabled {
                return Err(ApplyError::Refused(ChangeError::InvalidState(format!(
                    "KMS key {key_id} is {} (rotation needs Enabled)",
                    state_name(cur)
                ))));
            }
            let n = on_conn!(conn, c => sqlx::query("UPDATE kms_keys SET current_version = $1, rotated_ms = $2 WHERE key_id = $3 AND current_version = $4")
                .bind(i64::from(material.version))
                .bind(now_ms)
                .bind(key_id)
                .bind(i64::from(material.version.saturating_sub(1)))
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            if n == 0 {
                return Err(ApplyError::Refused(ChangeError::Conflict(format!(
                    "version {} of KMS key {key_id}",
                    material.version
                ))));
            }
            insert_version(conn, key_id, material, *now_ms).await?;
        }
        Change::SetRotationPeriod {
            key_id,
            days,
            now_ms,
        } => {
            live_state(conn, key_id).await?;
            // Turning rotation on starts the period now; changing it keeps the last rotation.
            on_conn!(conn, c => sqlx::query("UPDATE kms_keys SET rotated_ms = CASE WHEN rotation_period_days IS NULL THEN $1 ELSE rotated_ms END, rotation_period_days = $2 WHERE key_id = $3")
                .bind(now_ms)
                .bind(days.map(i64::from))
                .bind(key_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        Change::Destroy { key_id, now_ms } => {
            let row: Option<(String, Option<i64>)> = on_conn!(conn, c => sqlx::query_as("SELECT state, deletion_ms FROM kms_keys WHERE key_id = $1")
                    .bind(key_id)
                    .fetch_optional(&mut *c)
                    .await)?;
            match row {
                Some((s, Some(d))) if s == "PendingDeletion" && d <= *now_ms => {}
                _ => {
                    return Err(ApplyError::Refused(ChangeError::InvalidState(format!(
                        "KMS key {key_id} is not due for destruction"
                    ))));
                }
            }
            on_conn!(conn, c => sqlx::query("DELETE FROM kms_key_versions WHERE key_id = $1")
                .bind(key_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_conn!(conn, c => sqlx::query("INSERT INTO kms_tombstones (name, key_id, destroyed_ms) SELECT alias, key_id, $1 FROM kms_alias_history WHERE key_id = $2 ON CONFLICT DO NOTHING")
                .bind(now_ms)
                .bind(key_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_conn!(conn, c => sqlx::query("INSERT INTO kms_tombstones (name, key_id, destroyed_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(key_id)
                .bind(key_id)
                .bind(now_ms)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_conn!(conn, c => sqlx::query("DELETE FROM kms_aliases WHERE key_id = $1")
                .bind(key_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_conn!(conn, c => sqlx::query("UPDATE kms_keys SET state = 'Destroyed' WHERE key_id = $1")
                .bind(key_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        Change::CreateAlias {
            alias,
            key_id,
            now_ms,
        } => {
            alias_free(conn, alias).await?;
            live_state(conn, key_id).await?;
            point_alias(conn, alias, key_id, *now_ms).await?;
        }
        Change::UpdateAlias { alias, key_id } => {
            let exists: i64 = on_conn!(conn, c => sqlx::query_scalar("SELECT COUNT(*) FROM kms_aliases WHERE alias = $1")
                    .bind(alias)
                    .fetch_one(&mut *c)
                    .await)?;
            if exists == 0 {
                return Err(ApplyError::Refused(ChangeError::NotFound(format!(
                    "alias {alias}"
                ))));
            }
            live_state(conn, key_id).await?;
            point_alias(conn, alias, key_id, 0).await?;
        }
        Change::DeleteAlias { alias } => {
            let n = on_conn!(conn, c => sqlx::query("DELETE FROM kms_aliases WHERE alias = $1")
                .bind(alias)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            if n == 0 {
                return Err(ApplyError::Refused(ChangeError::NotFound(format!(
                    "alias {alias}"
                ))));
            }
        }
        Change::CountDataKey {
            key_id,
            key_version,
            bucket,
        } => {
            on_conn!(conn, c => sqlx::query("INSERT INTO kms_data_key_counts (key_id, key_version, bucket, data_keys) VALUES ($1, $2, $3, 1) ON CONFLICT (key_id, key_version, bucket) DO UPDATE SET data_keys = kms_data_key_counts.data_keys + 1")
                .bind(key_id)
                .bind(i64::from(*key_version))
                .bind(bucket)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        Change::Reseal(items) => {
            for it in items {
                on_conn!(conn, c => sqlx::query("UPDATE kms_key_versions SET root_version = $1, sealed = $2 WHERE key_id = $3 AND version = $4 AND root_version = $5")
                    .bind(i64::from(it.new.root_version))
                    .bind(it.new.sealed.as_slice())
                    .bind(&it.key_id)
                    .bind(i64::from(it.version))
                    .bind(i64::from(it.from_root))
                    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            }
        }
    }
    Ok(())
}
