//! Admin routes of named KMS keys and aliases (`PATH_ADMIN_KMS_KEYS`, `PATH_ADMIN_ALIASES` of
//! `coffer_common::kms_api`): create, list, describe, enable, disable, rotate, schedule and
//! cancel deletion (with a dry run that reports dependents), the automatic rotation period, and
//! alias create / update / delete / list. `{id}` may be a key id, key ARN, alias or alias ARN,
//! so the routes take the rest of the path (`alias/NAME` contains slashes).
//!
//! Every action, refused or not, is audited (operations `kmskey.*`, `alias.*`) with `key_id` =
//! the key UUID; state changes are committed with their record. Aliases under `alias/aws/` are
//! reserved for the deployment default key (400). Secret: newly generated key material only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use coffer_common::kms_api::{
    KmsAliasInfo, KmsAliasRequest, KmsCreateKeyRequest, KmsDeletionReport, KmsDependents,
    KmsKeyMetadata, KmsKeyState, KmsRotationPeriodRequest, KmsScheduleDeletionRequest,
    PATH_ADMIN_ALIASES, PATH_ADMIN_KMS_KEYS,
};

use super::admin::admin;
use super::{ApiError, Ctx, Failure, refuse};
use crate::KmsState;
use crate::audit::AuditEvent;
use crate::kmskeys::material::{reserved_alias, valid_alias};
use crate::kmskeys::store::{self, Change, KeyRow};
use crate::kmskeys::{self as keys, DAY_MS};
use crate::store::StateChange;

/// Automatic rotation periods allowed, in days (as AWS).
pub const ROTATION_DAYS: std::ops::RangeInclusive<u32> = 90..=2560;
/// Deletion windows allowed, in days (as AWS), and the default.
pub const WINDOW_DAYS: std::ops::RangeInclusive<u32> = 7..=30;
pub const DEFAULT_WINDOW_DAYS: u32 = 30;

/// The admin routes.
pub fn routes() -> Router<Arc<KmsState>> {
    Router::new()
        .route(PATH_ADMIN_KMS_KEYS, get(list_keys).post(create_key))
        .route(
            &format!("{PATH_ADMIN_KMS_KEYS}/{{*rest}}"),
            get(describe_key).post(key_action),
        )
        .route(PATH_ADMIN_ALIASES, get(list_aliases).post(create_alias))
        .route(
            &format!("{PATH_ADMIN_ALIASES}/{{*alias}}"),
            put(update_alias).delete(delete_alias),
        )
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn body<T: serde::de::DeserializeOwned + Default>(b: &[u8]) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))
}

/// Commit `ev` (with `change`) or audit the refusal `e`.
async fn finish<T>(
    st: &KmsState,
    ctx: &Ctx,
    ev: AuditEvent,
    r: Result<(T, StateChange), ApiError>,
) -> Result<T, Failure> {
    match r {
        Ok((v, change)) => match st.audit.write(ev, change).await {
            Ok(_) => Ok(v),
            Err(e) => Err(ctx.fail(e.into())),
        },
        Err(e) => Err(refuse(st, ctx, ev, e).await),
    }
}

/// A key by reference, in any state (a due key is destroyed first).
async fn lookup(st: &KmsState, r: &str) -> Result<KeyRow, ApiError> {
    let nf = || ApiError::KmsKeyNotFound(r.chars().take(300).collect());
    let id = keys::key_id_of(st, r).await?.ok_or_else(nf)?;
    let row = store::key(&st.pool, &id)
        .await
        .map_err(internal)?
        .ok_or_else(nf)?;
    if row.state == KmsKeyState::PendingDeletion
        && row.deletion_ms.is_some_and(|d| d <= st.clock.now_ms())
    {
        crate::kmskeys::lifecycle::destroy(st, &id).await?;
        return store::key(&st.pool, &id)
            .await
            .map_err(internal)?
            .ok_or_else(nf);
    }
    Ok(row)
}

async fn meta(st: &KmsState, key_id: &str) -> Result<KmsKeyMetadata, ApiError> {
    let row = store::key(&st.pool, key_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::KmsKeyNotFound(key_id.to_string()))?;
    let aliases = store::aliases_of(&st.pool, key_id)
        .await
        .map_err(internal)?;
    Ok(keys::metadata(st, &row, aliases))
}

fn check_rotation_days(d: Option<u32>) -> Result<(), ApiError> {
    match d {
        Some(d) if !ROTATION_DAYS.contains(&d) => Err(ApiError::BadRequest(format!(
            "rotation period must be {} to {} days",
            ROTATION_DAYS.start(),
            ROTATION_DAYS.end()
        ))),
        _ => Ok(()),
    }
}

fn check_new_alias(a: &str) -> Result<(), ApiError> {
    if !valid_alias(a) {
        return Err(ApiError::BadRequest(
            "alias must be alias/NAME, NAME 1 to 250 of A-Z a-z 0-9 / _ -".into(),
        ));
    }
    if reserved_alias(a) {
        return Err(ApiError::BadRequest(
            "aliases under alias/aws/ are reserved".into(),
        ));
    }
    Ok(())
}

/// `POST /v1/admin/kms-keys`.
async fn create_key(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    b: Bytes,
) -> Result<(StatusCode, Json<KmsKeyMetadata>), Failure> {
    let mut ev = admin(&st, &ctx, "kmskey.create").await?;
    let r = async {
        let req: KmsCreateKeyRequest = body(&b)?;
        if req.description.len() > 8192 {
            return Err(ApiError::BadRequest("description is too long".into()));
        }
        if let Some(a) = &req.alias {
            check_new_alias(a)?;
        }
        check_rotation_days(req.rotation_period_days)?;
        let key_id = uuid::Uuid::new_v4().to_string();
        ev.key_id = Some(key_id.clone());
        ev.key_version = Some(1);
        ev.detail = Some(
            serde_json::json!({
                "description": req.description,
                "alias": req.alias,
                "rotation_period_days": req.rotation_period_days,
            })
            .to_string(),
        );
        let material = keys::new_material(&st, &key_id, 1)?;
        Ok((
            key_id.clone(),
            StateChange::KmsKey(Change::CreateKey {
                key_id,
                description: req.description,
                rotation_period_days: req.rotation_period_days,
                alias: req.alias,
                material,
                now_ms: st.clock.now_ms(),
            }),
        ))
    }
    .await;
    let key_id = finish(&st, &ctx, ev, r).await?;
    let m = meta(&st, &key_id).await.map_err(|e| ctx.fail(e))?;
    Ok((StatusCode::CREATED, Json(m)))
}

/// `GET /v1/admin/kms-keys`.
async fn list_keys(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<Vec<KmsKeyMetadata>>, Failure> {
    let ev = admin(&st, &ctx, "kmskey.list").await?;
    let r = async {
        let rows = store::keys(&st.pool).await.map_err(internal)?;
        let all = store::aliases(&st.pool).await.map_err(internal)?;
        let out: Vec<KmsKeyMetadata> = rows
            .iter()
            .map(|row| {
                let aliases = all
                    .iter()
                    .filter(|(_, k)| *k == row.key_id)
                    .map(|(a, _)| a.clone())
                    .collect();
                keys::metadata(&st, row, aliases)
            })
            .collect();
        Ok((out, StateChange::None))
    }
    .await;
    Ok(Json(finish(&st, &ctx, ev, r).await?))
}

/// `GET /v1/admin/kms-keys/{id}`.
async fn describe_key(
    State(st): State<Arc<KmsState>>,
    Path(rest): Path<String>,
    ctx: Ctx,
) -> Result<Json<KmsKeyMetadata>, Failure> {
    let mut ev = admin(&st, &ctx, "kmskey.describe").await?;
    let r = async {
        let row = lookup(&st, &rest).await?;
        ev.key_id = Some(row.key_id.clone());
        Ok((meta(&st, &row.key_id).await?, StateChange::None))
    }
    .await;
    Ok(Json(finish(&st, &ctx, ev, r).await?))
}

/// The JSON answered by a key action: metadata, or the deletion report.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum ActionResult {
    Meta(KmsKeyMetadata),
    Report(KmsDeletionReport),
}

/// `POST /v1/admin/kms-keys/{id}/{enable|disable|rotate|cancel-deletion|schedule-deletion|rotation-period}`.
async fn key_action(
    State(st): State<Arc<KmsState>>,
    Path(rest): Path<String>,
    ctx: Ctx,
    b: Bytes,
) -> Result<Json<ActionResult>, Failure> {
    let (key_ref, action) = rest.rsplit_once('/').unwrap_or((rest.as_str(), ""));
    let op = match action {
        "enable" | "disable" | "rotate" => format!("kmskey.{action}"),
        "cancel-deletion" => "kmskey.cancel_deletion".into(),
        "schedule-deletion" => "kmskey.schedule_deletion".into(),
        "rotation-period" => "kmskey.rotation_period".into(),
        _ => "kmskey.unknown_action".into(),
    };
    let mut ev = admin(&st, &ctx, &op).await?;
    let r = async {
        if op == "kmskey.unknown_action" {
            return Err(ApiError::NotFound(format!("action {action:?}")));
        }
        let row = lookup(&st, key_ref).await?;
        let key_id = row.key_id.clone();
        ev.key_id = Some(key_id.clone());
        ev.key_version = Some(row.current_version);
        let set = |from: &'static [KmsKeyState], to, deletion_ms| {
            StateChange::KmsKey(Change::SetState {
                key_id: key_id.clone(),
                from,
                to,
                deletion_ms,
            })
        };
        const LIVE: &[KmsKeyState] = &[KmsKeyState::Enabled, KmsKeyState::Disabled];
        let change = match action {
            "enable" => set(LIVE, KmsKeyState::Enabled, None),
            "disable" => set(LIVE, KmsKeyState::Disabled, None),
            "cancel-deletion" => set(&[KmsKeyState::PendingDeletion], KmsKeyState::Disabled, None),
            "rotate" => {
                if row.state == KmsKeyState::Destroyed {
                    return Err(ApiError::KmsKeyNotFound(key_id));
                }
                let version = row.current_version + 1;
                ev.key_version = Some(version);
                StateChange::KmsKey(Change::AddVersion {
                    key_id: key_id.clone(),
                    material: keys::new_material(&st, &key_id, version)?,
                    now_ms: st.clock.now_ms(),
                })
            }
            "rotation-period" => {
                let req: KmsRotationPeriodRequest = serde_json::from_slice(&b)
                    .map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))?;
                check_rotation_days(req.days)?;
                ev.detail =
                    Some(serde_json::json!({ "rotation_period_days": req.days }).to_string());
                StateChange::KmsKey(Change::SetRotationPeriod {
                    key_id: key_id.clone(),
                    days: req.days,
                    now_ms: st.clock.now_ms(),
                })
            }
            _ => return schedule(&st, &row, &b, &mut ev).await,
        };
        Ok((None, change))
    }
    .await;
    let key_id = ev.key_id.clone().unwrap_or_default();
    let report = finish(&st, &ctx, ev, r).await?;
    let m = meta(&st, &key_id).await.map_err(|e| ctx.fail(e))?;
    Ok(Json(match report {
        Some((dry_run, dependents)) => ActionResult::Report(KmsDeletionReport {
            key: m,
            dry_run,
            dependents,
        }),
        None => ActionResult::Meta(m),
    }))
}

type Report = Option<(bool, Vec<KmsDependents>)>;

/// `schedule-deletion`: the dependents, and (unless a dry run) the change to PendingDeletion.
async fn schedule(
    st: &KmsState,
    row: &KeyRow,
    b: &[u8],
    ev: &mut AuditEvent,
) -> Result<(Report, StateChange), ApiError> {
    let req: KmsScheduleDeletionRequest = if b.iter().all(u8::is_ascii_whitespace) {
        KmsScheduleDeletionRequest {
            pending_window_days: None,
            dry_run: false,
        }
    } else {
        serde_json::from_slice(b).map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))?
    };
    let days = req.pending_window_days.unwrap_or(DEFAULT_WINDOW_DAYS);
    if !WINDOW_DAYS.contains(&days) {
        return Err(ApiError::BadRequest(format!(
            "pending window must be {} to {} days",
            WINDOW_DAYS.start(),
            WINDOW_DAYS.end()
        )));
    }
    let dependents: Vec<KmsDependents> = store::dependents(&st.pool, &row.key_id)
        .await
        .map_err(internal)?
        .into_iter()
        .map(|(bucket, key_version, data_keys)| KmsDependents {
            bucket,
            key_version,
            data_keys,
        })
        .collect();
    let total: i64 = dependents.iter().map(|d| d.data_keys).sum();
    let deletion_ms = st.clock.now_ms() + i64::from(days) * DAY_MS;
    ev.detail = Some(
        serde_json::json!({
            "dry_run": req.dry_run,
            "pending_window_days": days,
            "deletion_date": keys::rfc3339_ms(deletion_ms),
            "dependent_data_keys": total,
        })
        .to_string(),
    );
    if req.dry_run {
        if row.state == KmsKeyState::Destroyed {
            return Err(ApiError::KmsKeyNotFound(row.key_id.clone()));
        }
        return Ok((Some((true, dependents)), StateChange::None));
    }
    Ok((
        Some((false, dependents)),
        StateChange::KmsKey(Change::SetState {
            key_id: row.key_id.clone(),
            from: &[KmsKeyState::Enabled, KmsKeyState::Disabled],
            to: KmsKeyState::PendingDeletion,
            deletion_ms: Some(deletion_ms),
        }),
    ))
}

fn alias_info(st: &KmsState, alias: &str, key_id: &str) -> KmsAliasInfo {
    KmsAliasInfo {
        alias: alias.to_string(),
        alias_arn: st.arn.alias_arn(alias),
        target_key_id: key_id.to_string(),
    }
}

/// `GET /v1/admin/aliases`.
async fn list_aliases(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
) -> Result<Json<Vec<KmsAliasInfo>>, Failure> {
    let ev = admin(&st, &ctx, "alias.list").await?;
    let r = async {
        let all = store::aliases(&st.pool).await.map_err(internal)?;
        let out = all.iter().map(|(a, k)| alias_info(&st, a, k)).collect();
        Ok((out, StateChange::None))
    }
    .await;
    Ok(Json(finish(&st, &ctx, ev, r).await?))
}

/// Validate an alias change and find its target: (alias, target key id).
async fn alias_target(
    st: &KmsState,
    alias: &str,
    target: &str,
    ev: &mut AuditEvent,
) -> Result<String, ApiError> {
    ev.detail = Some(serde_json::json!({ "alias": alias, "target": target }).to_string());
    check_new_alias(alias)?;
    let row = lookup(st, target).await?;
    ev.key_id = Some(row.key_id.clone());
    if row.state == KmsKeyState::Destroyed {
        return Err(ApiError::KmsKeyNotFound(target.chars().take(300).collect()));
    }
    Ok(row.key_id)
}

/// `POST /v1/admin/aliases`.
async fn create_alias(
    State(st): State<Arc<KmsState>>,
    ctx: Ctx,
    b: Bytes,
) -> Result<(StatusCode, Json<KmsAliasInfo>), Failure> {
    let mut ev = admin(&st, &ctx, "alias.create").await?;
    let r = async {
        let req: KmsAliasRequest = serde_json::from_slice(&b)
            .map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))?;
        let key_id = alias_target(&st, &req.alias, &req.target_key_id, &mut ev).await?;
        let info = alias_info(&st, &req.alias, &key_id);
        Ok((
            info,
            StateChange::KmsKey(Change::CreateAlias {
                alias: req.alias,
                key_id,
                now_ms: st.clock.now_ms(),
            }),
        ))
    }
    .await;
    Ok((StatusCode::CREATED, Json(finish(&st, &ctx, ev, r).await?)))
}

/// `PUT /v1/admin/aliases/{alias/NAME}`.
async fn update_alias(
    State(st): State<Arc<KmsState>>,
    Path(alias): Path<String>,
    ctx: Ctx,
    b: Bytes,
) -> Result<Json<KmsAliasInfo>, Failure> {
    let mut ev = admin(&st, &ctx, "alias.update").await?;
    let r = async {
        let req: KmsAliasRequest = serde_json::from_slice(&b)
            .map_err(|e| ApiError::BadRequest(format!("JSON body: {e}")))?;
        if req.alias != alias {
            return Err(ApiError::BadRequest(
                "the body's alias differs from the path's".into(),
            ));
        }
        let key_id = alias_target(&st, &alias, &req.target_key_id, &mut ev).await?;
        let info = alias_info(&st, &alias, &key_id);
        Ok((
            info,
            StateChange::KmsKey(Change::UpdateAlias { alias, key_id }),
        ))
    }
    .await;
    Ok(Json(finish(&st, &ctx, ev, r).await?))
}

/// `DELETE /v1/admin/aliases/{alias/NAME}`.
async fn delete_alias(
    State(st): State<Arc<KmsState>>,
    Path(alias): Path<String>,
    ctx: Ctx,
) -> Result<Json<serde_json::Value>, Failure> {
    let mut ev = admin(&st, &ctx, "alias.delete").await?;
    let r = async {
        ev.detail = Some(serde_json::json!({ "alias": alias }).to_string());
        check_new_alias(&alias)?;
        if let Some(k) = store::alias_target(&st.pool, &alias)
            .await
            .map_err(internal)?
        {
            ev.key_id = Some(k);
        }
        Ok((
            serde_json::json!({ "deleted": alias }),
            StateChange::KmsKey(Change::DeleteAlias {
                alias: alias.clone(),
            }),
        ))
    }
    .await;
    Ok(Json(finish(&st, &ctx, ev, r).await?))
}
