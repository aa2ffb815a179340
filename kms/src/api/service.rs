//! Service routes, called by storage nodes: `generate_data_key` and `unwrap_data_key`.
//!
//! Secret: the plaintext data keys, which exist only in the response body (base64) and in
//! zeroizing buffers. Every call by a known identity, refused or not, gets exactly one audit
//! record, written durably before the response (refusals of callers that proved no identity are
//! counted in aggregate records, `audit::refusals`); a generated key is registered (wrapped) in
//! the same transaction.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::kms_api::{
    GenerateDataKeyRequest, GenerateDataKeyResponse, PATH_GENERATE, PATH_UNWRAP,
    UnwrapDataKeyRequest, UnwrapDataKeyResponse,
};
use coffer_common::secret::SecretKey32;

use super::{ApiError, Ctx, Failure, refuse, refuse_with};
use crate::KmsState;
use crate::auth::{Identity, Kind, Op};
use crate::keyring::{UnwrapError, wrapped_fingerprint, wrapping_lookup};
use crate::store::{self, StateChange};

/// Longest accepted bucket id, in bytes.
pub const MAX_BUCKET_ID: usize = 255;

fn check_bucket_id(b: &str) -> Result<(), ApiError> {
    if b.is_empty() || b.len() > MAX_BUCKET_ID || b.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "bucket_id must be 1 to {MAX_BUCKET_ID} bytes without control characters"
        )));
    }
    Ok(())
}

/// Authenticate a service call and check its scope; refusals are audited.
async fn authorize(
    st: &KmsState,
    ctx: &Ctx,
    ev: &mut crate::audit::AuditEvent,
    path: &str,
    op: Op,
    bucket: &str,
) -> Result<Identity, Failure> {
    let id = match st
        .authenticate(ctx.token.as_deref(), Kind::Service, "POST", path)
        .await
    {
        Ok(id) => id,
        Err(e) => return Err(refuse(st, ctx, ev.clone(), ApiError::Auth(e)).await),
    };
    ev.identity = id.name.clone();
    if let Err(e) = check_bucket_id(bucket) {
        return Err(refuse(st, ctx, ev.clone(), e).await);
    }
    ev.bucket = Some(bucket.to_string());
    if !id.allows(op, bucket) {
        return Err(refuse(st, ctx, ev.clone(), ApiError::ForbiddenScope).await);
    }
    Ok(id)
}

/// Refuse a body that does not parse. The token is checked first so that the record names the
/// caller when its token proves who it is (then it is recorded one-to-one, not aggregated).
pub(super) async fn refuse_body(
    st: &KmsState,
    ctx: &Ctx,
    mut ev: crate::audit::AuditEvent,
    path: &str,
    e: ApiError,
) -> Failure {
    let known = match st
        .authenticate(ctx.token.as_deref(), Kind::Service, "POST", path)
        .await
    {
        Ok(id) => {
            ev.identity = id.name;
            true
        }
        Err(a) => a.from_known_identity(),
    };
    refuse_with(st, ctx, ev, e, known).await
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))
}

/// `POST /v1/keys/generate`: a new data key for a bucket, plaintext and wrapped.
pub async fn generate_data_key(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Json<GenerateDataKeyResponse>, Failure> {
    let mut ev = ctx.event("generate");
    let req: GenerateDataKeyRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return Err(refuse_body(&st, &ctx, ev, PATH_GENERATE, e).await),
    };
    authorize(
        &st,
        &ctx,
        &mut ev,
        PATH_GENERATE,
        Op::Generate,
        &req.bucket_id,
    )
    .await?;
    let data_key = SecretKey32::generate();
    let wrapped = {
        let ring = st.keyring.read().map_err(|_| ctx.fail(ApiError::Sealed))?;
        match ring
            .as_ref()
            .and_then(|r| r.active_version().map(|v| (r, v)))
        {
            Some((r, v)) => r.wrap(&req.bucket_id, v, &data_key).map(|w| (v, w)),
            None => Err(UnwrapError::UnknownVersion),
        }
    };
    let (version, wrapped) = match wrapped {
        Ok(x) => x,
        Err(_) => return Err(refuse(&st, &ctx, ev, ApiError::Sealed).await),
    };
    ev.key_version = Some(version);
    ev.key_id = Some(wrapped_fingerprint(&wrapped));
    let change = StateChange::InsertDataKey {
        bucket_id: req.bucket_id.clone(),
        version,
        wrapped: wrapped.to_vec(),
        lookup: wrapping_lookup(&req.bucket_id, version, &wrapped),
    };
    st.audit
        .write(ev, change)
        .await
        .map_err(|e| ctx.fail(e.into()))?;
    Ok(Json(GenerateDataKeyResponse {
        plaintext_key: data_key.to_base64().to_string(),
        wrapped_key: STANDARD.encode(wrapped),
        key_version: version,
    }))
}

/// `POST /v1/keys/unwrap`: the plaintext of a wrapped data key, for the bucket it was made for.
pub async fn unwrap_data_key(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Json<UnwrapDataKeyResponse>, Failure> {
    let mut ev = ctx.event("unwrap");
    let req: UnwrapDataKeyRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return Err(refuse_body(&st, &ctx, ev, PATH_UNWRAP, e).await),
    };
    authorize(&st, &ctx, &mut ev, PATH_UNWRAP, Op::Unwrap, &req.bucket_id).await?;
    ev.key_version = Some(req.key_version);
    let wrapped = match STANDARD.decode(req.wrapped_key.trim()) {
        Ok(w) => w,
        Err(_) => {
            let e = ApiError::BadRequest("wrapped_key is not base64".into());
            return Err(refuse(&st, &ctx, ev, e).await);
        }
    };
    ev.key_id = Some(wrapped_fingerprint(&wrapped));
    // A replica learns of root versions made by another replica within a poll; a wrapping under
    // a version it does not know yet makes it look now.
    if st.pool.is_pg()
        && st
            .keyring
            .read()
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.root(req.key_version).is_none()))
            .unwrap_or(false)
    {
        crate::replicas::on_demand(&st).await;
    }
    let (plain, active) = {
        let ring = st.keyring.read().map_err(|_| ctx.fail(ApiError::Sealed))?;
        match ring.as_ref() {
            None => (Err(ApiError::Sealed), None),
            Some(r) => (
                r.unwrap(&req.bucket_id, req.key_version, &wrapped)
                    .map_err(|e| match e {
                        UnwrapError::UnknownVersion => ApiError::UnknownKeyVersion,
                        UnwrapError::Integrity => ApiError::UnwrapFailed,
                    }),
                r.active_version(),
            ),
        }
    };
    let plain = match plain {
        Ok(p) => p,
        Err(e) => return Err(refuse(&st, &ctx, ev, e).await),
    };
    // Which registered data key this wrapping belongs to: its current wrapping is returned when
    // it is newer (the caller may store it), and the version presented is recorded in the same
    // transaction as the audit record (`admin keys retire` relies on it, `crate::retire`).
    let mut current = None;
    let mut change = StateChange::None;
    let lookup = wrapping_lookup(&req.bucket_id, req.key_version, &wrapped);
    match store::current_wrapping(&st.pool, &lookup).await {
        Ok(Some(reg)) => {
            // Written only when it changes: repeated unwraps of one wrapping stay on the audit
            // writer's fast path.
            if reg.presented_version != Some(req.key_version) {
                change = StateChange::Presented {
                    data_key_id: reg.id,
                    version: req.key_version,
                };
            }
            if reg.cur_version != req.key_version {
                current = Some((reg.cur_version, reg.cur_wrapped));
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(request_id = %ctx.request_id, error = %e, "current wrapping lookup failed")
        }
    }
    st.audit
        .write(ev, change)
        .await
        .map_err(|e| ctx.fail(e.into()))?;
    Ok(Json(UnwrapDataKeyResponse {
        plaintext_key: plain.to_base64().to_string(),
        current_wrapped_key: current.as_ref().map(|(_, w)| STANDARD.encode(w)),
        current_key_version: current.map(|(v, _)| v),
        active_key_version: active,
    }))
}
