//! Service routes of named KMS keys, called by storage nodes: generate-data-key, decrypt and
//! describe-key (`coffer_common::kms_api`, "Named KMS keys"). The admin routes are in
//! [`super::kmskeys_admin`].
//!
//! Scope: the identity's key glob must match the key id or one of its aliases, and its ops must
//! include `generate` (generate-data-key), `unwrap` (decrypt) or either (describe-key).
//! Generate on `alias/aws/s3` when that alias does not exist creates the deployment default key.
//!
//! Audit: every call by a known identity gets one record (operation `kms.generate-data-key`,
//! `kms.decrypt`, `kms.describe-key`) with `key_id` = the key UUID, `key_version`, `bucket` =
//! the bucket of the context's `aws:s3:arn`, and `detail` = JSON of the requested key reference
//! and the encryption context (not secret, as in CloudTrail). A generate also increments the
//! per-(key, version, bucket) count of issued data keys in the same transaction.
//!
//! Secret: the plaintext data keys and key material; only in the response body and zeroizing
//! buffers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::kms_api::{
    EncryptionContext, KmsDecryptRequest, KmsDecryptResponse, KmsDescribeRequest,
    KmsGenerateRequest, KmsGenerateResponse, KmsKeyMetadata, PATH_KMS_DECRYPT, PATH_KMS_DESCRIBE,
    PATH_KMS_GENERATE,
};
use coffer_common::secret::SecretKey32;

use super::service::{parse, refuse_body};
use super::{ApiError, Ctx, Failure, refuse};
use crate::KmsState;
use crate::audit::AuditEvent;
use crate::auth::{Identity, Kind, Op};
use crate::kmskeys::material::{self, Blob, KeyRef};
use crate::kmskeys::store::{Change, NewVersion};
use crate::kmskeys::{self as keys, DEFAULT_S3_ALIAS, Resolved};
use crate::store::StateChange;

/// Largest canonical encryption context accepted, in bytes. Above anything a storage node can
/// send: its 8,192-character context header decodes to at most 6,144 bytes of JSON, whose
/// canonical form is at most 9/7 of that (`"a":"",` → 9 bytes), plus the `aws:s3:arn` pair of a
/// 1,024-byte object name (about 1.1 KiB), so about 9 KiB in the worst case.
pub const MAX_CONTEXT: usize = 16 * 1024;

/// The service and admin routes of named keys.
pub fn routes() -> Router<Arc<KmsState>> {
    Router::new()
        .route(PATH_KMS_GENERATE, post(generate))
        .route(PATH_KMS_DECRYPT, post(decrypt))
        .route(PATH_KMS_DESCRIBE, post(describe))
        .merge(super::kmskeys_admin::routes())
}

fn check_context(ctx: &EncryptionContext) -> Result<(), ApiError> {
    if ctx.keys().any(String::is_empty) {
        return Err(ApiError::BadRequest(
            "encryption context keys must not be empty".into(),
        ));
    }
    if material::canonical_context(ctx).len() > MAX_CONTEXT {
        return Err(ApiError::BadRequest(format!(
            "encryption context is larger than {MAX_CONTEXT} bytes"
        )));
    }
    Ok(())
}

/// `detail` of a data-key record: the key reference and the context, as JSON.
fn detail(key_ref: Option<&str>, ctx: &EncryptionContext) -> String {
    let mut v = serde_json::json!({ "encryption_context": ctx });
    if let Some(r) = key_ref {
        v["key"] = serde_json::Value::String(r.chars().take(300).collect());
    }
    v.to_string()
}

/// Authenticate a service call (refusals audited); the event names the identity after it.
async fn authenticate(
    st: &KmsState,
    ctx: &Ctx,
    ev: &mut AuditEvent,
    path: &str,
) -> Result<Identity, Failure> {
    match st
        .authenticate(ctx.token.as_deref(), Kind::Service, "POST", path)
        .await
    {
        Ok(id) => {
            ev.identity = id.name.clone();
            Ok(id)
        }
        Err(e) => Err(refuse(st, ctx, ev.clone(), ApiError::Auth(e)).await),
    }
}

fn set_bucket(ev: &mut AuditEvent, ctx: &EncryptionContext) {
    let b = material::context_bucket(ctx);
    if !b.is_empty() {
        ev.bucket = Some(b);
    }
}

/// Create the deployment default key `alias/aws/s3` on behalf of `id` (audited as its creation).
async fn create_default_key(st: &KmsState, id: &Identity, ev: &AuditEvent) -> Result<(), ApiError> {
    let key_id = uuid::Uuid::new_v4().to_string();
    let material: NewVersion = keys::new_material(st, &key_id, 1)?;
    let mut create = ev.clone();
    create.operation = "kmskey.create".into();
    create.identity = id.name.clone();
    create.key_id = Some(key_id.clone());
    create.key_version = Some(1);
    create.bucket = None;
    create.detail = Some(
        serde_json::json!({ "alias": DEFAULT_S3_ALIAS, "reason": "deployment default key, created on first use" })
            .to_string(),
    );
    let change = Change::CreateKey {
        key_id,
        description: "Default key for SSE-KMS (created on first use)".into(),
        rotation_period_days: None,
        alias: Some(DEFAULT_S3_ALIAS.into()),
        material,
        now_ms: st.clock.now_ms(),
    };
    match st.audit.write(create, StateChange::KmsKey(change)).await {
        // Another request created it first: use that one.
        Ok(_) | Err(crate::audit::writer::WriteError::Rejected(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The key to generate under; creates the deployment default key on first use.
async fn generate_key(
    st: &KmsState,
    id: &Identity,
    key_ref: &str,
    ev: &AuditEvent,
) -> Result<Resolved, ApiError> {
    match keys::resolve(st, key_ref).await {
        Err(ApiError::KmsKeyNotFound(r))
            if st.arn.parse_ref(key_ref) == KeyRef::Alias(DEFAULT_S3_ALIAS.into()) =>
        {
            if !id.allows_key(&[Op::Generate], [DEFAULT_S3_ALIAS]) {
                return Err(ApiError::ForbiddenScope);
            }
            if crate::kmskeys::store::tombstoned(&st.pool, DEFAULT_S3_ALIAS)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
            {
                return Err(ApiError::KmsKeyNotFound(r));
            }
            create_default_key(st, id, ev).await?;
            keys::resolve(st, key_ref).await
        }
        other => other,
    }
}

async fn generate_inner(
    st: &KmsState,
    id: &Identity,
    req: &KmsGenerateRequest,
    ev: &mut AuditEvent,
) -> Result<(KmsGenerateResponse, Change), ApiError> {
    check_context(&req.encryption_context)?;
    let key = generate_key(st, id, &req.key_id, ev).await?;
    ev.key_id = Some(key.row.key_id.clone());
    if !id.allows_key(&[Op::Generate], key.names()) {
        return Err(ApiError::ForbiddenScope);
    }
    keys::check_usable(&key.row)?;
    let version = key.row.current_version;
    ev.key_version = Some(version);
    let m = keys::unseal(st, &key.row.key_id, version)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("no material for {}", key.row.key_id)))?;
    let dk = SecretKey32::generate();
    let wrapped =
        material::wrap_data_key(&m, &key.row.key_id, version, &req.encryption_context, &dk);
    let blob = Blob {
        key_id: key.row.key_id.clone(),
        version,
        wrapped,
    };
    let change = Change::CountDataKey {
        key_id: key.row.key_id.clone(),
        key_version: version,
        bucket: material::context_bucket(&req.encryption_context),
    };
    Ok((
        KmsGenerateResponse {
            plaintext_key: dk.to_base64().to_string(),
            ciphertext_blob: STANDARD.encode(blob.encode()),
            key_arn: st.arn.key_arn(&key.row.key_id),
            key_version: version,
        },
        change,
    ))
}

/// `POST /v1/kms/generate-data-key`.
pub async fn generate(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Json<KmsGenerateResponse>, Failure> {
    let mut ev = ctx.event("kms.generate-data-key");
    let req: KmsGenerateRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return Err(refuse_body(&st, &ctx, ev, PATH_KMS_GENERATE, e).await),
    };
    let id = authenticate(&st, &ctx, &mut ev, PATH_KMS_GENERATE).await?;
    ev.detail = Some(detail(Some(&req.key_id), &req.encryption_context));
    set_bucket(&mut ev, &req.encryption_context);
    match generate_inner(&st, &id, &req, &mut ev).await {
        Ok((resp, change)) => {
            st.audit
                .write(ev, StateChange::KmsKey(change))
                .await
                .map_err(|e| ctx.fail(e.into()))?;
            Ok(Json(resp))
        }
        Err(e) => Err(refuse(&st, &ctx, ev, e).await),
    }
}

async fn decrypt_inner(
    st: &KmsState,
    id: &Identity,
    req: &KmsDecryptRequest,
    ev: &mut AuditEvent,
) -> Result<KmsDecryptResponse, ApiError> {
    check_context(&req.encryption_context)?;
    let raw = STANDARD
        .decode(req.ciphertext_blob.trim())
        .map_err(|_| ApiError::InvalidCiphertext("not base64".into()))?;
    let blob = Blob::decode(&raw).ok_or_else(|| ApiError::InvalidCiphertext("malformed".into()))?;
    ev.key_id = Some(blob.key_id.chars().take(64).collect());
    ev.key_version = Some(blob.version);
    if !material::valid_key_id(&blob.key_id) {
        return Err(ApiError::InvalidCiphertext("malformed key id".into()));
    }
    let key = keys::resolve(st, &blob.key_id).await?;
    if !id.allows_key(&[Op::Unwrap], key.names()) {
        return Err(ApiError::ForbiddenScope);
    }
    keys::check_usable(&key.row)?;
    let m = keys::unseal(st, &blob.key_id, blob.version)
        .await?
        .ok_or_else(|| ApiError::InvalidCiphertext("unknown key version".into()))?;
    let dk = material::unwrap_data_key(
        &m,
        &blob.key_id,
        blob.version,
        &req.encryption_context,
        &blob.wrapped,
    )
    .ok_or(ApiError::ContextMismatch)?;
    Ok(KmsDecryptResponse {
        plaintext_key: dk.to_base64().to_string(),
        key_arn: st.arn.key_arn(&blob.key_id),
        key_version: blob.version,
    })
}

/// `POST /v1/kms/decrypt`.
pub async fn decrypt(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Json<KmsDecryptResponse>, Failure> {
    let mut ev = ctx.event("kms.decrypt");
    let req: KmsDecryptRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return Err(refuse_body(&st, &ctx, ev, PATH_KMS_DECRYPT, e).await),
    };
    let id = authenticate(&st, &ctx, &mut ev, PATH_KMS_DECRYPT).await?;
    ev.detail = Some(detail(None, &req.encryption_context));
    set_bucket(&mut ev, &req.encryption_context);
    match decrypt_inner(&st, &id, &req, &mut ev).await {
        Ok(resp) => {
            st.audit
                .write(ev, StateChange::None)
                .await
                .map_err(|e| ctx.fail(e.into()))?;
            Ok(Json(resp))
        }
        Err(e) => Err(refuse(&st, &ctx, ev, e).await),
    }
}

/// `POST /v1/kms/describe-key`.
pub async fn describe(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<Json<KmsKeyMetadata>, Failure> {
    let mut ev = ctx.event("kms.describe-key");
    let req: KmsDescribeRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return Err(refuse_body(&st, &ctx, ev, PATH_KMS_DESCRIBE, e).await),
    };
    let id = authenticate(&st, &ctx, &mut ev, PATH_KMS_DESCRIBE).await?;
    ev.detail = Some(
        serde_json::json!({ "key": req.key_id.chars().take(300).collect::<String>() }).to_string(),
    );
    let key = match keys::resolve(&st, &req.key_id).await {
        Ok(k) => k,
        Err(e) => return Err(refuse(&st, &ctx, ev, e).await),
    };
    ev.key_id = Some(key.row.key_id.clone());
    ev.key_version = Some(key.row.current_version);
    if !id.allows_key(&[Op::Generate, Op::Unwrap], key.names()) {
        return Err(refuse(&st, &ctx, ev, ApiError::ForbiddenScope).await);
    }
    st.audit
        .write(ev, StateChange::None)
        .await
        .map_err(|e| ctx.fail(e.into()))?;
    let Resolved { row, aliases } = key;
    Ok(Json(keys::metadata(&st, &row, aliases)))
}
