//! `POST /v1/admin/clients/{name}/certificate`: the local CA signs a TLS client certificate for
//! a service identity, so that `serve --require-client-cert` (mutual TLS) can be turned on.
//!
//! Secret: the CA private key, held by [`crate::certs::LocalCa`] and used only here. The
//! client's private key never reaches the KMS: the caller sends a P-256 public key and receives
//! a certificate with common name = the identity name. Every issuance, refused or not, is
//! audited (`client.certificate`). A certificate only admits the TLS connection; every request
//! still needs the identity's token, so revoking the identity stops it even though the
//! certificate stays valid until it expires.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::kms_api::{IssueClientCertRequest, IssueClientCertResponse};

use super::admin::{admin, valid_name};
use super::{ApiError, Ctx, Failure, refuse};
use crate::KmsState;
use crate::auth::Kind;
use crate::store::StateChange;

/// The route.
pub fn routes() -> Router<Arc<KmsState>> {
    Router::new().route(
        "/v1/admin/clients/{name}/certificate",
        post(issue_client_certificate),
    )
}

fn check(st: &KmsState, name: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    if !valid_name(name) {
        return Err(ApiError::NotFound(format!("identity {name:?}")));
    }
    match st.identities.get(name) {
        Some(id) if id.kind == Kind::Service && !id.revoked => {}
        _ => {
            return Err(ApiError::NotFound(format!(
                "active service identity {name}"
            )));
        }
    }
    if st.local_ca.is_none() {
        return Err(ApiError::NoLocalCa);
    }
    let req: IssueClientCertRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    STANDARD
        .decode(&req.public_key)
        .ok()
        .filter(|k| k.len() == 65 && k.first() == Some(&4))
        .ok_or_else(|| {
            ApiError::BadRequest(
                "public_key must be base64 of an uncompressed P-256 point (65 bytes)".into(),
            )
        })
}

/// `POST /v1/admin/clients/{name}/certificate`.
async fn issue_client_certificate(
    State(st): State<Arc<KmsState>>,
    Path(name): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Json<IssueClientCertResponse>, Failure> {
    let mut ev = admin(&st, &ctx, "client.certificate").await?;
    ev.detail = Some(format!(
        "name={}",
        name.chars().take(64).collect::<String>()
    ));
    let public_key = match check(&st, &name, &body) {
        Ok(k) => k,
        Err(e) => return Err(refuse(&st, &ctx, ev, e).await),
    };
    let Some(ca) = st.local_ca.as_ref() else {
        return Err(refuse(&st, &ctx, ev, ApiError::NoLocalCa).await);
    };
    let cert = match ca.issue_client(&name, &public_key) {
        Ok(c) => c,
        Err(e) => return Err(refuse(&st, &ctx, ev, ApiError::Internal(e.to_string())).await),
    };
    st.audit
        .write(ev, StateChange::None)
        .await
        .map_err(|e| ctx.fail(e.into()))?;
    Ok(Json(IssueClientCertResponse {
        certificate_pem: cert,
        ca_pem: ca.cert_pem.clone(),
    }))
}
