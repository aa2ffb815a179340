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
    match st.audit.write(ev, StateChange::KmsKey(change)).await {
        Ok(_) => {
            tracing::warn!(key_id, "KMS key destroyed: its material is erased");
            Ok(())
        }
        Err(WriteError::Rejected(ChangeError::InvalidState(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Add the next version to an Enabled key; `identity`/`request_id` name who asked.
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
    st.audit.write(ev, StateChange::KmsKey(change)).await?;
    Ok(version)
}

/// Destroy every due key and rotate every key whose period elapsed: (destroyed, rotated).
pub async fn run_due(st: &KmsState) -> Result<(usize, usize), ApiError> {
    let now = st.clock.now_ms();
    let due = store::due_deletions(&st.pool, now)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    for id in &due {
        destroy(st, id).await?;
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

/// Run [`run_due`] every minute until the state is dropped.
pub async fn worker(state: Weak<KmsState>) {
    loop {
        tokio::time::sleep(INTERVAL).await;
        let Some(st) = state.upgrade() else { return };
        if let Err(e) = run_due(&st).await {
            tracing::warn!(error = %e, "named-key lifecycle run failed; retrying later");
        }
    }
}
