//! Unauthenticated operational routes: `GET /health` (liveness: the process serves requests)
//! and `GET /ready` (readiness: unsealed and the audit log writable, else 503 with the stable
//! error code `sealed` or `audit_unavailable`, since every key operation would fail).
//!
//! Nothing secret: the answers carry only states.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::{ApiError, Ctx};
use crate::KmsState;

/// `GET /health`: 200 while the process is alive and serving.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Why the KMS is not ready, if it is not.
pub fn not_ready(st: &KmsState) -> Option<ApiError> {
    let sealed = st.keyring.read().map(|r| r.is_none()).unwrap_or(true);
    if sealed {
        Some(ApiError::Sealed)
    } else if !st.audit.healthy() {
        Some(ApiError::AuditUnavailable)
    } else {
        None
    }
}

/// `GET /ready`: 200 `{"status":"ready"}`, or 503 with the JSON error body of the reason.
pub async fn ready(State(st): State<Arc<KmsState>>, ctx: Ctx) -> Response {
    match not_ready(&st) {
        None => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Some(e) => ctx.fail(e).into_response(),
    }
}
