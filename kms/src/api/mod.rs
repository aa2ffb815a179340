//! HTTP surface of the KMS: the router, request ids, the request context extractor and the one
//! error enum of this boundary with its exhaustive mapping to status and stable code.
//!
//! Secret: request bodies and responses of the service routes carry key material; they are never
//! logged. Error messages never contain key material or tokens.

pub mod admin;
pub mod client_cert;
pub mod kmskeys;
pub mod kmskeys_admin;
pub mod probes;
pub mod retire;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use coffer_common::kms_api::{self, ErrorBody, REQUEST_ID_HEADER};

use crate::KmsState;
use crate::audit::AuditEvent;
use crate::audit::writer::WriteError;
use crate::auth::AuthError;
use crate::store::ChangeError;

/// Every error the KMS answers. The status and code of each are fixed in [`ApiError::wire`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 401 `invalid_token` / `token_replayed`, 403 `identity_revoked` / `not_admin` / `not_service`.
    #[error("{0}")]
    Auth(AuthError),
    /// 403 `forbidden_scope`: the identity's scope does not cover this bucket (or named key) or
    /// operation.
    #[error("the identity's scope does not allow this operation on this bucket or key")]
    ForbiddenScope,
    /// 404 `kms_key_not_found`: no such named key or alias (or it was destroyed).
    #[error("KMS key {0} not found")]
    KmsKeyNotFound(String),
    /// 409 `kms_key_disabled`.
    #[error("KMS key {0} is disabled")]
    KmsKeyDisabled(String),
    /// 409 `kms_key_invalid_state`: pending deletion, or a change the state does not allow.
    #[error("{0}")]
    KmsKeyInvalidState(String),
    /// 400 `context_mismatch`: the blob does not open under its key with this context.
    #[error("the ciphertext does not decrypt with this encryption context")]
    ContextMismatch,
    /// 400 `invalid_ciphertext`: not a ciphertext blob this KMS issued.
    #[error("invalid ciphertext blob: {0}")]
    InvalidCiphertext(String),
    /// 400 `invalid_request`.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// 400 `unwrap_failed`: integrity check failed (other bucket, other version, corrupted).
    #[error("the wrapped key failed its integrity check for this bucket and version")]
    UnwrapFailed,
    /// 404 `unknown_key_version`.
    #[error("unknown root key version")]
    UnknownKeyVersion,
    /// 404 `not_found`.
    #[error("{0} not found")]
    NotFound(String),
    /// 409 `conflict`.
    #[error("{0} already exists")]
    Conflict(String),
    /// 409 `root_version_in_use`: data keys still depend on the root key version (the message
    /// gives the counts).
    #[error("{0}")]
    RootVersionInUse(String),
    /// 409 `root_version_active`: the active root key version cannot be retired.
    #[error("{0}")]
    RootVersionActive(String),
    /// 409 `no_local_ca`: this KMS has no local CA key to sign client certificates with.
    #[error(
        "this KMS has no local CA key (DATA_DIR/tls/ca.key); issue client certificates with your own PKI"
    )]
    NoLocalCa,
    /// 503 `sealed`: the root keys are not in memory.
    #[error("the KMS is sealed")]
    Sealed,
    /// 503 `audit_unavailable`: the audit record could not be written, so nothing was done.
    #[error("the audit log cannot be written; the operation was refused")]
    AuditUnavailable,
    /// 500 `internal`: logged with its cause, answered generically.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// HTTP status and stable code.
    pub fn wire(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Auth(a) => match a {
                AuthError::Missing
                | AuthError::Token(_)
                | AuthError::UnknownIdentity
                | AuthError::IssuedBeforeStart => (StatusCode::UNAUTHORIZED, "invalid_token"),
                AuthError::Replayed => (StatusCode::UNAUTHORIZED, "token_replayed"),
                AuthError::Revoked => (StatusCode::FORBIDDEN, "identity_revoked"),
                AuthError::NotAdmin => (StatusCode::FORBIDDEN, "not_admin"),
                AuthError::NotService => (StatusCode::FORBIDDEN, "not_service"),
            },
            ApiError::ForbiddenScope => (StatusCode::FORBIDDEN, "forbidden_scope"),
            ApiError::KmsKeyNotFound(_) => (StatusCode::NOT_FOUND, "kms_key_not_found"),
            ApiError::KmsKeyDisabled(_) => (StatusCode::CONFLICT, "kms_key_disabled"),
            ApiError::KmsKeyInvalidState(_) => (StatusCode::CONFLICT, "kms_key_invalid_state"),
            ApiError::ContextMismatch => (StatusCode::BAD_REQUEST, "context_mismatch"),
            ApiError::InvalidCiphertext(_) => (StatusCode::BAD_REQUEST, "invalid_ciphertext"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::UnwrapFailed => (StatusCode::BAD_REQUEST, "unwrap_failed"),
            ApiError::UnknownKeyVersion => (StatusCode::NOT_FOUND, "unknown_key_version"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::NoLocalCa => (StatusCode::CONFLICT, "no_local_ca"),
            ApiError::RootVersionInUse(_) => (StatusCode::CONFLICT, "root_version_in_use"),
            ApiError::RootVersionActive(_) => (StatusCode::CONFLICT, "root_version_active"),
            ApiError::Sealed => (StatusCode::SERVICE_UNAVAILABLE, "sealed"),
            ApiError::AuditUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.wire().1
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Conflict(what) => ApiError::Conflict(what),
            ChangeError::NotFound(what) => ApiError::NotFound(what),
            e @ ChangeError::RootVersionInUse { .. } => ApiError::RootVersionInUse(e.to_string()),
            e @ ChangeError::RootVersionActive(_) => ApiError::RootVersionActive(e.to_string()),
            ChangeError::KeyNotFound(what) => ApiError::KmsKeyNotFound(what),
            ChangeError::InvalidState(what) => ApiError::KmsKeyInvalidState(what),
            // Background writes only: never answered to a caller.
            e @ ChangeError::Fenced(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Unavailable => ApiError::AuditUnavailable,
            WriteError::Rejected(c) => c.into(),
        }
    }
}

/// An error answered for one request (carries its request id).
#[derive(Debug)]
pub struct Failure {
    pub error: ApiError,
    pub request_id: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, code) = self.error.wire();
        if let ApiError::Internal(cause) = &self.error {
            tracing::error!(request_id = %self.request_id, %cause, "internal error");
        }
        let body = ErrorBody {
            code: code.to_string(),
            message: self.error.to_string(),
            request_id: Some(self.request_id),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(ErrorCode(code));
        resp
    }
}

/// The stable code of a failed request, left in the response's extensions for metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// The request id of the current request (from `x-request-id` or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Per-request context: request id, client address and bearer token.
pub struct Ctx {
    pub request_id: String,
    pub client: String,
    pub token: Option<String>,
    pub method: String,
    pub path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_else(|| "-".into());
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string());
        Ok(Ctx {
            request_id,
            client,
            token,
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
        })
    }
}

impl Ctx {
    /// A fresh audit event for this request (unauthenticated until filled in).
    pub fn event(&self, operation: &str) -> AuditEvent {
        AuditEvent {
            request_id: self.request_id.clone(),
            identity: "-".into(),
            client: self.client.clone(),
            operation: operation.into(),
            result: "ok".into(),
            ..AuditEvent::default()
        }
    }

    /// Wrap an error with this request's id.
    pub fn fail(&self, error: ApiError) -> Failure {
        Failure {
            error,
            request_id: self.request_id.clone(),
        }
    }
}

/// Audit a refused request, then answer the refusal (or 503 if even that cannot be audited).
/// A caller that proved no identity (identity `-`, and no token signed by a known identity) is
/// counted in the aggregate of its source and minute instead (`audit::refusals`).
pub async fn refuse(state: &KmsState, ctx: &Ctx, ev: AuditEvent, error: ApiError) -> Failure {
    let known = matches!(&error, ApiError::Auth(a) if a.from_known_identity());
    refuse_with(state, ctx, ev, error, known).await
}

/// [`refuse`], told whether the caller's token was signed by a known identity (then the record
/// is one-to-one even though the identity was refused).
pub async fn refuse_with(
    state: &KmsState,
    ctx: &Ctx,
    mut ev: AuditEvent,
    error: ApiError,
    known_identity: bool,
) -> Failure {
    ev.result = error.code().to_string();
    if ev.identity == "-" && !known_identity {
        state
            .refusals
            .add(&ctx.client, &ev.operation, &ev.result, &ctx.request_id);
        return ctx.fail(error);
    }
    if (known_identity || matches!(error, ApiError::Auth(_))) && ev.identity == "-" {
        ev.detail = crate::auth::claimed_subject(ctx.token.as_deref())
            .map(|s| format!("claimed identity {s}"));
    }
    match state.audit.write(ev, crate::store::StateChange::None).await {
        Ok(_) => ctx.fail(error),
        Err(_) => ctx.fail(ApiError::AuditUnavailable),
    }
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

async fn request_id_layer(
    axum::extract::State(st): axum::extract::State<Arc<KmsState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let started = Instant::now();
    let mut resp = next.run(req).await;
    st.metrics.observe_request(
        &route,
        method.as_str(),
        resp.status().as_u16(),
        resp.extensions().get::<ErrorCode>().map(|c| c.0),
        started.elapsed(),
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    tracing::info!(
        request_id = %id,
        %method,
        %path,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

/// The KMS router (service, admin, health and readiness routes).
pub fn router(state: Arc<KmsState>) -> Router {
    Router::new()
        .route(kms_api::PATH_HEALTH, get(probes::health))
        .route(kms_api::PATH_READY, get(probes::ready))
        .route(kms_api::PATH_METRICS, get(probes::metrics))
        .route(kms_api::PATH_GENERATE, post(service::generate_data_key))
        .route(kms_api::PATH_UNWRAP, post(service::unwrap_data_key))
        .merge(kmskeys::routes())
        .merge(admin::routes())
        .merge(retire::routes())
        .merge(client_cert::routes())
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_id_layer,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_common::jwt::JwtError;

    /// Pins the status and code of every error (the wire contract).
    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (ApiError::Auth(AuthError::Missing), 401, "invalid_token"),
            (
                ApiError::Auth(AuthError::Token(JwtError::Expired)),
                401,
                "invalid_token",
            ),
            (
                ApiError::Auth(AuthError::UnknownIdentity),
                401,
                "invalid_token",
            ),
            (
                ApiError::Auth(AuthError::IssuedBeforeStart),
                401,
                "invalid_token",
            ),
            (ApiError::Auth(AuthError::Replayed), 401, "token_replayed"),
            (ApiError::Auth(AuthError::Revoked), 403, "identity_revoked"),
            (ApiError::Auth(AuthError::NotAdmin), 403, "not_admin"),
            (ApiError::Auth(AuthError::NotService), 403, "not_service"),
            (ApiError::ForbiddenScope, 403, "forbidden_scope"),
            (
                ApiError::KmsKeyNotFound("x".into()),
                404,
                "kms_key_not_found",
            ),
            (
                ApiError::KmsKeyDisabled("x".into()),
                409,
                "kms_key_disabled",
            ),
            (
                ApiError::KmsKeyInvalidState("x".into()),
                409,
                "kms_key_invalid_state",
            ),
            (ApiError::ContextMismatch, 400, "context_mismatch"),
            (
                ApiError::InvalidCiphertext("x".into()),
                400,
                "invalid_ciphertext",
            ),
            (ApiError::BadRequest("x".into()), 400, "invalid_request"),
            (ApiError::UnwrapFailed, 400, "unwrap_failed"),
            (ApiError::UnknownKeyVersion, 404, "unknown_key_version"),
            (ApiError::NotFound("x".into()), 404, "not_found"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (ApiError::NoLocalCa, 409, "no_local_ca"),
            (
                ApiError::RootVersionInUse("x".into()),
                409,
                "root_version_in_use",
            ),
            (
                ApiError::RootVersionActive("x".into()),
                409,
                "root_version_active",
            ),
            (ApiError::Sealed, 503, "sealed"),
            (ApiError::AuditUnavailable, 503, "audit_unavailable"),
            (ApiError::Internal("x".into()), 500, "internal"),
        ];
        for (e, status, code) in cases {
            assert_eq!(
                e.wire(),
                (StatusCode::from_u16(status).unwrap(), code),
                "{e:?}"
            );
        }
        assert!(valid_request_id("abc-123"));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(""));
    }
}
