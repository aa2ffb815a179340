//! Background re-wrap after a root key rotation: data keys still wrapped under an older root
//! version are unwrapped and wrapped again under the active version, in batches. Each batch is
//! one transaction with one audit record (`rewrap`, with the count). Data bytes are never
//! touched (`docs/design.md` principle 3): only the 40-byte wrapped keys change.
//!
//! Secret: the data keys, in memory for the duration of one re-wrap only.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::KmsState;
use crate::audit::AuditEvent;
use crate::keyring::wrapping_lookup;
use crate::store::{self, Rewrapped, StateChange};

/// Data keys per re-wrap batch.
const BATCH: i64 = 500;

/// Run until the state is dropped: wait for a rotation (or a periodic tick), re-wrap everything.
pub async fn rewrap_worker(state: Weak<KmsState>) {
    loop {
        let Some(st) = state.upgrade() else { return };
        if st.lease.held().is_none() {
            // Another replica holds the lease and does the work; look again when told (a new
            // root version, the lease acquired) or after a while.
            let _ = tokio::time::timeout(Duration::from_secs(5), st.rewrap_notify.notified()).await;
            continue;
        }
        match rewrap_once(&st).await {
            Ok(0) => {
                // Then the material of named KMS keys (`kmskeys::lifecycle`).
                match crate::kmskeys::lifecycle::reseal_once(&st).await {
                    Ok(0) => {}
                    Ok(_) => continue,
                    Err(e) => tracing::warn!(error = %e, "re-seal of named-key material failed"),
                }
                // Also re-check now and then (a failed batch is retried).
                let _ = tokio::time::timeout(Duration::from_secs(30), st.rewrap_notify.notified())
                    .await;
            }
            Ok(n) => tracing::debug!(keys = n, "re-wrapped a batch of data keys"),
            Err(e) => {
                drop(st);
                tracing::warn!(error = %e, "re-wrap batch failed; retrying later");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Re-wrap one batch; returns how many keys were re-wrapped (0: nothing left or sealed).
pub async fn rewrap_once(st: &Arc<KmsState>) -> Result<usize, String> {
    let Some(active) = st
        .keyring
        .read()
        .ok()
        .and_then(|r| r.as_ref().and_then(|r| r.active_version()))
    else {
        return Ok(0);
    };
    let todo = store::keys_to_rewrap(&st.pool, active, BATCH)
        .await
        .map_err(|e| e.to_string())?;
    if todo.is_empty() {
        return Ok(0);
    }
    let mut items = Vec::with_capacity(todo.len());
    let mut failed = 0usize;
    {
        let ring = st.keyring.read().map_err(|_| "keyring lock".to_string())?;
        let Some(ring) = ring.as_ref() else {
            return Ok(0);
        };
        for (id, bucket, version, wrapped) in &todo {
            let Ok(dk) = ring.unwrap(bucket, *version, wrapped) else {
                failed += 1;
                continue;
            };
            let Ok(new) = ring.wrap(bucket, active, &dk) else {
                failed += 1;
                continue;
            };
            items.push(Rewrapped {
                data_key_id: *id,
                version: active,
                lookup: wrapping_lookup(bucket, active, &new),
                wrapped: new.to_vec(),
            });
        }
    }
    if failed > 0 {
        tracing::error!(
            failed,
            "data keys could not be re-wrapped (integrity check failed)"
        );
        if items.is_empty() {
            return Err(format!("{failed} data keys failed to unwrap"));
        }
    }
    let n = items.len();
    let ev = AuditEvent {
        request_id: uuid::Uuid::new_v4().to_string(),
        identity: "kms".into(),
        client: "-".into(),
        operation: "rewrap".into(),
        key_version: Some(active),
        result: "ok".into(),
        detail: Some(format!("rewrapped={n} failed={failed}")),
        ..AuditEvent::default()
    };
    st.audit
        .write_background(ev, StateChange::Rewrap(items))
        .await
        .map_err(|e| e.to_string())?;
    Ok(n)
}
