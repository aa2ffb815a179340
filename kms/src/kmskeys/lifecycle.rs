//! Time-driven transitions of named keys, on the [`super::Clock`]: destruction of keys whose
//! deletion date has passed (material erased, the id and every alias the key ever had
//! tombstoned) and automatic rotation of keys whose rotation period has elapsed. A background
//! worker runs [`run_due`] every minute; [`super::resolve`] also destroys a due key on access,
//! so a key is never usable after its deletion date even between two runs.
//!
//! Each transition is one audit record (identity `kms`) committed with its change.

use std::sync::Weak;
use std::time::Duration;

use crate::KmsState;
use crate::api::ApiError;
use crate::audit::AuditEvent;
use crate::audit::writer::WriteError;
use crate::store::{ChangeError, StateChange};

use super::store::{self, Change};

/// How often the worker looks for due keys.
const INTERVAL: Duration = Duration::from_secs(60);

fn event(op: &str, key_id: &str) -> AuditEvent {
    AuditEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        identity: "kms".into(),
        client: "-".into(),
        operation: op.into(),
        key_id: Some(key_id.to_string()),
        result: "ok".into(),
        ..AuditEvent::default()
    }
}

/// Destroy `key_id` if it is pending deletion and due (a no-op when another caller did it).
pub async fn destroy(st: &KmsState, key_id: &str) -> Result<(), ApiError> {
    destroy_as(st, key_id, false).await
}

/// [`destroy`]; `background`: a write of the lease holder, fenced by its epoch.
async fn destroy_as(st: &KmsState, key_id: &str, background: bool) -> Result<(), ApiError> {
    let now_ms = st.clock.now_ms();
    let mut ev = event("kmskey.destroy", key_id);
    ev.detail = Some(
        serde_json::json!({ "reason": "deletion date passed", "clock": super::rfc3339_ms(now_ms) })
            .to_string(),
    );
    let change = Change::Destroy {
        key_id: key_id.to_string(),
        now_ms,
    };
    let written = if background {
        st.audit
            .write_background(ev, StateChange::KmsKey(change))
            .await
    } else {
        st.audit.write(ev, StateChange::KmsKey(change)).await
    };
    match written {
        Ok(_) => {
            tracing::warn!(key_id, "KMS key destroyed: its material is erased");
            Ok(())
        }
        Err(WriteError::Rejected(ChangeError::InvalidState(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Add the next version to an Enabled key (automatic rotation: a background write, fenced by the
/// lease epoch on PostgreSQL); `identity`/`request_id` name who asked.
pub async fn rotate(
    st: &KmsState,
    mut ev: AuditEvent,
    row: &store::KeyRow,
) -> Result<u32, ApiError> {
    let version = row.current_version + 1;
    let material = super::new_material(st, &row.key_id, version)?;
    ev.key_id = Some(row.key_id.clone());
    ev.key_version = Some(version);
    let change = Change::AddVersion {
        key_id: row.key_id.clone(),
        material,
        now_ms: st.clock.now_ms(),
    };
    st.audit
        .write_background(ev, StateChange::KmsKey(change))
        .await?;
    Ok(version)
}

/// Destroy every due key and rotate every key whose period elapsed: (destroyed, rotated).
pub async fn run_due(st: &KmsState) -> Result<(usize, usize), ApiError> {
    let now = st.clock.now_ms();
    let due = store::due_deletions(&st.pool, now)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    for id in &due {
        destroy_as(st, id, true).await?;
    }
    let rot = store::due_rotations(&st.pool, now)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut rotated = 0;
    for row in &rot {
        let mut ev = event("kmskey.rotate", &row.key_id);
        ev.detail = Some(
            serde_json::json!({
                "automatic": true,
                "rotation_period_days": row.rotation_period_days,
            })
            .to_string(),
        );
        match rotate(st, ev, row).await {
            Ok(v) => {
                rotated += 1;
                tracing::info!(key_id = %row.key_id, version = v, "KMS key rotated automatically");
            }
            // Disabled or rotated meanwhile: nothing to do.
            Err(ApiError::KmsKeyInvalidState(_) | ApiError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((due.len(), rotated))
}

/// Named-key versions re-sealed per batch.
const RESEAL_BATCH: i64 = 500;

/// After a root key rotation: re-seal one batch of key material still sealed under an older
/// root version under the active one (one audit record `kmskey.reseal` with the count), so that
/// the old root version can be retired. Returns how many were re-sealed (0: none left, sealed).
pub async fn reseal_once(st: &KmsState) -> Result<usize, ApiError> {
    let active = st
        .keyring
        .read()
        .ok()
        .and_then(|r| r.as_ref().and_then(|r| r.active_version()));
    let Some(active) = active else { return Ok(0) };
    let todo = store::to_reseal(&st.pool, active, RESEAL_BATCH)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if todo.is_empty() {
        return Ok(0);
    }
    let mut items = Vec::with_capacity(todo.len());
    {
        let ring = st.keyring.read().map_err(|_| ApiError::Sealed)?;
        let ring = ring.as_ref().ok_or(ApiError::Sealed)?;
        let new_root = ring.root(active).ok_or(ApiError::Sealed)?;
        for (key_id, version, from_root, sealed) in &todo {
            let m = ring
                .root(*from_root)
                .and_then(|old| super::material::unseal_material(old, key_id, *version, sealed))
                .ok_or_else(|| {
                    ApiError::Internal(format!(
                        "material of KMS key {key_id} v{version} does not unseal under root v{from_root}"
                    ))
                })?;
            items.push(store::Resealed {
                key_id: key_id.clone(),
                version: *version,
                from_root: *from_root,
                new: store::NewVersion {
                    version: *version,
                    root_version: active,
                    sealed: super::material::seal_material(new_root, key_id, *version, &m).to_vec(),
                },
            });
        }
    }
    let n = items.len();
    let mut ev = event("kmskey.reseal", "-");
    ev.key_id = None;
    ev.key_version = Some(active);
    ev.detail = Some(format!("resealed={n}"));
    st.audit
        .write_background(ev, StateChange::KmsKey(Change::Reseal(items)))
        .await?;
    Ok(n)
}

/// Run [`run_due`] and [`reseal_once`] every minute until the state is dropped (on
/// PostgreSQL only while this replica holds the lease, `crate::lease`).
pub async fn worker(state: Weak<KmsState>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        let Some(st) = state.upgrade() else { return };
        if st.lease.held().is_none() {
            continue;
        }
        if let Err(e) = run_due(&st).await {
            tracing::warn!(error = %e, "named-key lifecycle run failed; retrying later");
        }
        while let Ok(n) = reseal_once(&st).await {
            if n == 0 {
                break;
            }
        }
    }
}
