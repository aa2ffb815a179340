//! Unauthenticated operational routes: `GET /health` (liveness: the process serves requests),
//! `GET /ready` (readiness: unsealed and the audit log writable, else 503 with the stable error
//! code `sealed` or `audit_unavailable`, since every key operation would fail) and
//! `GET /metrics` (Prometheus text), also served alone by [`metrics_router`] on
//! `--metrics-listen`.
//!
//! Nothing secret: the answers carry only states and counters (see `crate::metrics`).

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

/// `GET /metrics`: OpenMetrics text (content type negotiated, see `coffer_common::metrics`).
pub async fn metrics(State(st): State<Arc<KmsState>>, headers: axum::http::HeaderMap) -> Response {
    let sealed = st.keyring.read().map(|r| r.is_none()).unwrap_or(true);
    let body = st.metrics.render(sealed, st.audit.healthy());
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            coffer_common::metrics::content_type(accept),
        )],
        body,
    )
        .into_response()
}

/// Only `GET /metrics` (and `/health`), for a separate plain-HTTP listener on a private port.
pub fn metrics_router(state: Arc<KmsState>) -> axum::Router {
    axum::Router::new()
        .route(
            coffer_common::kms_api::PATH_METRICS,
            axum::routing::get(metrics),
        )
        .route(
            coffer_common::kms_api::PATH_HEALTH,
            axum::routing::get(health),
        )
        .with_state(state)
}

/// `GET /ready`: 200 `{"status":"ready"}`, or 503 with the JSON error body of the reason.
pub async fn ready(State(st): State<Arc<KmsState>>, ctx: Ctx) -> Response {
    match not_ready(&st) {
        None => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Some(e) => ctx.fail(e).into_response(),
    }
}
