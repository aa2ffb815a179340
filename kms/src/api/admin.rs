//! Admin routes (audience `AUD_ADMIN`, admin identity only): service identities, root key
//! versions and rotation, status, seal, and the audit log (query, export, public key).
//!
//! Secret: the passphrase key, used here only to seal a new root key version on rotation.
//! Every admin action, refused or not, is audited; identity and root-key changes are committed in
//! the same transaction as their record.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use coffer_common::kms_api::{self as api, ClientInfo, CreateClientRequest, KeyVersionInfo};
use coffer_common::secret::SecretKey32;

use super::{ApiError, Ctx, Failure, refuse};
use crate::KmsState;
use crate::audit::{AuditEvent, ExportLine};
use crate::auth::{Identity, Kind, Op};
use crate::store::{self, IdentityRow, SealedRow, StateChange};

/// The admin routes.
pub fn routes() -> Router<Arc<KmsState>> {
    Router::new()
        .route(
            api::PATH_ADMIN_CLIENTS,
            post(create_client).get(list_clients),
        )
        .route("/v1/admin/clients/{name}/revoke", post(revoke_client))
        .route(api::PATH_ADMIN_KEYS, get(list_keys))
        .route(api::PATH_ADMIN_ROTATE, post(rotate_root_key))
        .route(api::PATH_ADMIN_ROTATION, get(rotation_status))
        .route(api::PATH_ADMIN_STATUS, get(status))
        .route(api::PATH_ADMIN_SEAL, post(seal))
        .route(api::PATH_ADMIN_AUDIT, get(query_audit))
        .route(api::PATH_ADMIN_AUDIT_EXPORT, get(export_audit))
        .route(api::PATH_ADMIN_AUDIT_KEY, get(audit_public_key))
}

/// Authenticate an admin call; refusals are audited.
pub(super) async fn admin(st: &KmsState, ctx: &Ctx, op: &str) -> Result<AuditEvent, Failure> {
    let mut ev = ctx.event(op);
    match st
        .authenticate(ctx.token.as_deref(), Kind::Admin, &ctx.method, &ctx.path)
        .await
    {
        Ok(id) => {
            ev.identity = id.name;
            Ok(ev)
        }
        Err(e) => Err(refuse(st, ctx, ev, ApiError::Auth(e)).await),
    }
}

/// Audit a successful read-only admin action.
async fn record(st: &KmsState, ctx: &Ctx, ev: AuditEvent) -> Result<(), Failure> {
    st.audit
        .write(ev, StateChange::None)
        .await
        .map(|_| ())
        .map_err(|e| ctx.fail(e.into()))
}

use crate::kmskeys::rfc3339_ms;

fn internal(ctx: &Ctx, e: impl std::fmt::Display) -> Failure {
    ctx.fail(ApiError::Internal(e.to_string()))
}

pub(super) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn validate_create(
    req: &CreateClientRequest,
) -> Result<(ed25519_dalek::VerifyingKey, Vec<Op>), ApiError> {
    if !valid_name(&req.name) {
        return Err(ApiError::BadRequest(
            "name must be 1 to 64 of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    if req.buckets.is_empty()
        || req.buckets.len() > 255
        || req.buckets.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(
            "buckets must be a non-empty glob".into(),
        ));
    }
    let ops = req
        .ops
        .iter()
        .map(|o| {
            Op::parse(o).ok_or_else(|| ApiError::BadRequest(format!("unknown operation {o:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ops.is_empty() {
        return Err(ApiError::BadRequest(
            "ops must name at least one operation".into(),
        ));
    }
    if let Some(k) = &req.keys
        && (k.len() > 255 || k.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "keys must be a glob of at most 255 characters".into(),
        ));
    }
    let pk = STANDARD
        .decode(&req.public_key)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| {
            ApiError::BadRequest("public_key must be base64 of an Ed25519 key".into())
        })?;
    Ok((pk, ops))
}

/// `POST /v1/admin/clients`.
async fn create_client(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    body: Bytes,
) -> Result<(StatusCode, Json<ClientInfo>), Failure> {
    let mut ev = admin(&st, &ctx, "client.create").await?;
    let req: CreateClientRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &ctx, ev, ApiError::BadRequest(e.to_string())).await),
    };
    let (pk, ops) = match validate_create(&req) {
        Ok(x) => x,
        Err(e) => return Err(refuse(&st, &ctx, ev, e).await),
    };
    let op_names: Vec<String> = ops.iter().map(|o| o.name().to_string()).collect();
    let keys = req.keys.clone().unwrap_or_default();
    ev.detail = Some(format!(
        "name={} buckets={} ops={} keys={}",
        req.name,
        req.buckets,
        op_names.join(","),
        keys
    ));
    let row = IdentityRow {
        name: req.name.clone(),
        kind: "service".into(),
        public_key: pk.to_bytes().to_vec(),
        buckets: req.buckets.clone(),
        ops: op_names.join(","),
        keys: keys.clone(),
        created_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        revoked_ms: None,
    };
    let created = rfc3339_ms(row.created_ms);
    st.audit
        .write(ev, StateChange::InsertIdentity(row))
        .await
        .map_err(|e| ctx.fail(e.into()))?;
    st.identities.put(Identity {
        name: req.name.clone(),
        kind: Kind::Service,
        public_key: pk,
        bucket_glob: req.buckets.clone(),
        ops: ops.into_iter().collect(),
        key_glob: keys.clone(),
        revoked: false,
    });
    Ok((
        StatusCode::CREATED,
        Json(ClientInfo {
            name: req.name,
            kind: "service".into(),
            buckets: req.buckets,
            ops: op_names,
            keys,
            created,
            revoked: None,
        }),
    ))
}

/// `GET /v1/admin/clients`.
async fn list_clients(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<Vec<ClientInfo>>, Failure> {
    let ev = admin(&st, &ctx, "client.list").await?;
    let rows = store::identities_pool(&st.pool)
        .await
        .map_err(|e| internal(&ctx, e))?;
    record(&st, &ctx, ev).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| ClientInfo {
                name: r.name,
                kind: r.kind,
                buckets: r.buckets,
                ops: r
                    .ops
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                keys: r.keys,
                created: rfc3339_ms(r.created_ms),
                revoked: r.revoked_ms.map(rfc3339_ms),
            })
            .collect(),
    ))
}

/// `POST /v1/admin/clients/{name}/revoke`.
async fn revoke_client(
    State(st): State<Arc<KmsState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    ctx: Ctx,
) -> Result<Json<serde_json::Value>, Failure> {
    let mut ev = admin(&st, &ctx, "client.revoke").await?;
    ev.detail = Some(format!(
        "name={}",
        name.chars().take(64).collect::<String>()
    ));
    st.audit
        .write(ev, StateChange::RevokeIdentity { name: name.clone() })
        .await
        .map_err(|e| ctx.fail(e.into()))?;
    st.identities.revoke(&name);
    Ok(Json(serde_json::json!({ "revoked": name })))
}

/// `GET /v1/admin/keys`.
async fn list_keys(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<Vec<KeyVersionInfo>>, Failure> {
    let ev = admin(&st, &ctx, "keys.list").await?;
    let versions = store::root_versions(&st.pool)
        .await
        .map_err(|e| internal(&ctx, e))?;
    let counts: HashMap<u32, i64> = store::keys_per_version(&st.pool)
        .await
        .map_err(|e| internal(&ctx, e))?
        .into_iter()
        .collect();
    let presented: HashMap<u32, i64> = crate::retire::keys_per_presented_version(&st.pool)
        .await
        .map_err(|e| internal(&ctx, e))?
        .into_iter()
        .collect();
    record(&st, &ctx, ev).await?;
    let active = versions.last().map(|v| v.0);
    Ok(Json(
        versions
            .into_iter()
            .map(|(v, created)| KeyVersionInfo {
                version: v,
                created: rfc3339_ms(created),
                active: Some(v) == active,
                data_keys: counts.get(&v).copied().unwrap_or(0),
                presented_data_keys: presented.get(&v).copied().unwrap_or(0),
            })
            .collect(),
    ))
}

/// `POST /v1/admin/keys/rotate`: a new root key version becomes active; re-wrap starts.
async fn rotate_root_key(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<api::RotateResponse>, Failure> {
    let mut ev = admin(&st, &ctx, "rotate").await?;
    let pk_guard = st.passphrase_key.lock().await;
    let active = st
        .keyring
        .read()
        .ok()
        .and_then(|r| r.as_ref().and_then(|r| r.active_version()));
    let (Some(pk), Some(active)) = (pk_guard.as_ref(), active) else {
        return Err(refuse(&st, &ctx, ev, ApiError::Sealed).await);
    };
    let version = active + 1;
    let key = SecretKey32::generate();
    let row = SealedRow {
        params: pk.params,
        salt: pk.salt,
        sealed: pk.seal(&key),
    };
    ev.key_version = Some(version);
    st.audit
        .write(ev, StateChange::InsertRootKey { version, row })
        .await
        .map_err(|e| ctx.fail(e.into()))?;
    if let Ok(mut ring) = st.keyring.write()
        && let Some(r) = ring.as_mut()
    {
        r.insert(version, key);
    }
    drop(pk_guard);
    st.rewrap_notify.notify_one();
    tracing::info!(
        version,
        "root key rotated; re-wrapping data keys in the background"
    );
    Ok(Json(api::RotateResponse {
        new_version: version,
    }))
}

/// Rotation progress (shared by the route and the status).
pub async fn rotation_progress(st: &KmsState) -> Result<api::RotationStatus, sqlx::Error> {
    let active = store::root_versions(&st.pool)
        .await?
        .last()
        .map(|v| v.0)
        .unwrap_or(0);
    let counts = store::keys_per_version(&st.pool).await?;
    let total: i64 = counts.iter().map(|c| c.1).sum();
    let rewrapped: i64 = counts.iter().filter(|c| c.0 == active).map(|c| c.1).sum();
    Ok(api::RotationStatus {
        active_version: active,
        total_data_keys: total,
        rewrapped,
        coverage_percent: if total == 0 {
            100.0
        } else {
            rewrapped as f64 * 100.0 / total as f64
        },
    })
}

/// `GET /v1/admin/keys/rotation`.
async fn rotation_status(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<api::RotationStatus>, Failure> {
    let ev = admin(&st, &ctx, "rotate.status").await?;
    let s = rotation_progress(&st)
        .await
        .map_err(|e| internal(&ctx, e))?;
    record(&st, &ctx, ev).await?;
    Ok(Json(s))
}

/// `GET /v1/admin/status`.
async fn status(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<api::StatusResponse>, Failure> {
    let ev = admin(&st, &ctx, "status").await?;
    record(&st, &ctx, ev).await?;
    let (sealed, versions) = match st.keyring.read().ok().as_deref() {
        Some(Some(r)) => (false, r.versions()),
        _ => (true, Vec::new()),
    };
    let head = st.audit.head().await;
    Ok(Json(api::StatusResponse {
        sealed,
        active_version: versions.last().copied(),
        key_versions: versions,
        audit_healthy: st.audit.healthy(),
        audit_head_seq: head.seq,
        audit_last_checkpoint_seq: head.last_checkpoint_seq,
        issues_client_certificates: st.local_ca.is_some(),
        lease_holder: st.lease.is_replicated().then(|| st.lease.held().is_some()),
        lease_epoch: st.lease.is_replicated().then(|| st.lease.last_epoch()),
    }))
}

/// `POST /v1/admin/seal`: wipe the root keys and the passphrase key from memory.
async fn seal(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<serde_json::Value>, Failure> {
    let ev = admin(&st, &ctx, "seal").await?;
    record(&st, &ctx, ev).await?;
    *st.passphrase_key.lock().await = None;
    if let Ok(mut ring) = st.keyring.write() {
        *ring = None;
    }
    tracing::warn!("KMS sealed by an admin; restart with the passphrase to unseal");
    Ok(Json(serde_json::json!({ "sealed": true })))
}

fn parse_time(v: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| ApiError::BadRequest(format!("{v:?} is not an RFC 3339 time")))
}

fn filter_from(q: &HashMap<String, String>) -> Result<store::AuditFilter, ApiError> {
    Ok(store::AuditFilter {
        since_ms: q.get("since").map(|v| parse_time(v)).transpose()?,
        until_ms: q.get("until").map(|v| parse_time(v)).transpose()?,
        identity: q.get("identity").cloned(),
        bucket: q.get("bucket").cloned(),
        op: q.get("op").cloned(),
        result: q.get("result").cloned(),
        limit: q
            .get("limit")
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest("limit must be a number".into()))
            })
            .transpose()?,
    })
}

/// `GET /v1/admin/audit?since&until&identity&bucket&op&result&limit`: matching records (JSON array).
async fn query_audit(
    State(st): State<Arc<KmsState>>,
    Query(q): Query<HashMap<String, String>>,
    ctx: Ctx,
) -> Result<Response, Failure> {
    let mut ev = admin(&st, &ctx, "audit.query").await?;
    crate::audit::refusals::flush(&st, true).await;
    let filter = match filter_from(&q) {
        Ok(f) => f,
        Err(e) => return Err(refuse(&st, &ctx, ev, e).await),
    };
    ev.detail = Some(format!("{filter:?}").chars().take(512).collect());
    record(&st, &ctx, ev).await?;
    let rows = store::query_records(&st.pool, &filter)
        .await
        .map_err(|e| internal(&ctx, e))?;
    let body = format!("[{}]", rows.join(","));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/admin/audit/export`: every record and checkpoint as JSON lines, closed by a final
/// checkpoint signed now over the last record.
async fn export_audit(State(st): State<Arc<KmsState>>, ctx: Ctx) -> Result<Response, Failure> {
    let ev = admin(&st, &ctx, "audit.export").await?;
    crate::audit::refusals::flush(&st, true).await;
    record(&st, &ctx, ev).await?;
    let (head, final_cp) = st.audit.final_checkpoint().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let pool = st.pool.clone();
    tokio::spawn(async move {
        const PAGE: u64 = 5000;
        let mut from = 1;
        while from <= head.seq {
            let to = (from + PAGE - 1).min(head.seq);
            let page = match store::export_page(&pool, from, to).await {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let (recs, cps) = page;
            let mut cps = cps.into_iter().peekable();
            let mut buf = String::new();
            for (seq, rec) in recs {
                buf.push_str("{\"record\":");
                buf.push_str(&rec);
                buf.push_str("}\n");
                while let Some((_, cp)) = cps.next_if(|c| c.0 == seq) {
                    buf.push_str("{\"checkpoint\":");
                    buf.push_str(&cp);
                    buf.push_str("}\n");
                }
            }
            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                return;
            }
            from = to + 1;
        }
        let line = serde_json::to_string(&ExportLine::Checkpoint(final_cp)).unwrap_or_default();
        let _ = tx.send(Ok(Bytes::from(line + "\n"))).await;
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /v1/admin/audit/public-key`.
async fn audit_public_key(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<api::AuditPublicKey>, Failure> {
    let ev = admin(&st, &ctx, "audit.public_key").await?;
    record(&st, &ctx, ev).await?;
    Ok(Json(api::AuditPublicKey {
        public_key: STANDARD.encode(st.audit.public_key().to_bytes()),
    }))
}
