//! Admin route `POST /v1/admin/keys/retire` (`coffer-kms admin keys retire N`): delete the sealed
//! root key of an old version once nothing depends on it (`crate::retire` does the check, in the
//! audit record's transaction), then drop it from the keyring. Refusals are audited with their
//! stable code: 409 `root_version_in_use` (with the counts), 409 `root_version_active`,
//! 404 `not_found`.
//!
//! Secret: none handled here; the keyring zeroizes the dropped root key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use coffer_common::kms_api::{self as api, RetireRequest, RetireResponse};

use super::admin::admin;
use super::{ApiError, Ctx, Failure, refuse};
use crate::KmsState;
use crate::store::StateChange;

/// The retire route.
pub fn routes() -> Router<Arc<KmsState>> {
    Router::new().route(api::PATH_ADMIN_RETIRE, post(retire_root_key))
}

async fn retire_root_key(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Json<RetireResponse>, Failure> {
    let mut ev = admin(&st, &ctx, "keys.retire").await?;
    let req: RetireRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let e = ApiError::BadRequest(format!("JSON body: {e}"));
            return Err(refuse(&st, &ctx, ev, e).await);
        }
    };
    let (version, force) = (req.version, req.force);
    ev.key_version = Some(version);
    if force {
        ev.detail = Some("force: data keys last presented under this version are ignored".into());
    }
    // Rotation and retirement are serialized by the passphrase-key lock.
    let guard = st.passphrase_key.lock().await;
    st.audit
        .write(ev, StateChange::RetireRootKey { version, force })
        .await
        .map_err(|e| ctx.fail(e.into()))?;
    if let Ok(mut ring) = st.keyring.write()
        && let Some(r) = ring.as_mut()
    {
        r.remove(version);
    }
    drop(guard);
    tracing::info!(version, "root key version retired");
    Ok(Json(RetireResponse { retired: version }))
}
