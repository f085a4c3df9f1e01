//! Named snapshots (checkpoints) over [`crate::service::snapshots`]: take
//! one from a running sandbox (it keeps running), list, get, delete, and
//! resume one into a new sandbox.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bhatti_api as api;
use bhatti_store::Snapshot;

use super::body::{JsonBody, OptionalJsonBody};
use super::sandboxes::to_api as sandbox_to_api;
use super::Caller;
use crate::error::ServiceResult;
use crate::service::snapshots as service;
use crate::state::Shared;

fn to_api(s: Snapshot) -> api::Snapshot {
    api::Snapshot {
        id: s.id,
        user_id: s.user_id,
        name: s.name,
        source_sandbox: s.source_sandbox,
        size_mb: s.size_mb,
        created_at: s.created_at,
    }
}

pub async fn checkpoint(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::NameBody>,
) -> ServiceResult<(StatusCode, Json<api::Snapshot>)> {
    let saved = service::take(&st, &user, &id, &req.name).await?;
    Ok((StatusCode::CREATED, Json(to_api(saved))))
}

pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<Vec<api::Snapshot>>> {
    let all = service::list(&st, &user).await?;
    Ok(Json(all.into_iter().map(to_api).collect()))
}

pub async fn get_one(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<api::Snapshot>> {
    Ok(Json(to_api(service::get(&st, &user, &name).await?)))
}

pub async fn delete(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<api::StatusBody>> {
    service::delete(&st, &user, &name).await?;
    Ok(Json(api::StatusBody {
        status: "deleted".into(),
    }))
}

pub async fn resume(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<api::ResumeSnapshot>,
) -> ServiceResult<(StatusCode, Json<api::Sandbox>)> {
    let r = service::Resume {
        name: req.name,
        ..Default::default()
    };
    let sb = service::resume(&st, &user, &name, r).await?;
    Ok((StatusCode::CREATED, Json(sandbox_to_api(&sb, None))))
}
