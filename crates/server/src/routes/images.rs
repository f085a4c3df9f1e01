//! `/images` and `/tasks`: list, get and delete images; pull from a
//! registry as a background task; import a tarball; save a sandbox's disk.
//! Thin over [`crate::service::images`], which holds the rules.

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_api as api;
use bhatti_store::Task;
use futures_util::TryStreamExt;
use serde::Deserialize;

use super::body::JsonBody;
use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::service::images::{self as service, Pulled};
use crate::state::Shared;

pub use crate::images::api_image as to_api;

fn task_to_api(t: Task) -> api::Task {
    api::Task {
        id: t.id,
        user_id: t.user_id,
        kind: t.kind,
        status: t.status,
        progress: serde_json::from_value(t.progress).unwrap_or_default(),
        result: t.result,
        error: t.error,
        created_at: t.created_at,
        completed_at: t.completed_at,
    }
}

pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<Vec<api::Image>>> {
    let rows = service::list(&st, &user).await?;
    Ok(Json(rows.iter().map(to_api).collect()))
}

pub async fn get_one(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<api::Image>> {
    Ok(Json(to_api(&service::get(&st, &user, &name).await?)))
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

pub async fn pull(
    State(st): State<Shared>,
    Caller(user): Caller,
    JsonBody(req): JsonBody<api::PullImage>,
) -> ServiceResult<Response> {
    let pulled = service::pull(
        &st,
        &user,
        &req.reference,
        req.name.as_deref(),
        req.auth.as_deref(),
    )
    .await?;
    Ok(match pulled {
        Pulled::Exists { image, digest } => (
            StatusCode::OK,
            Json(api::PullStarted {
                status: "exists".into(),
                task_id: None,
                image: Some(image.name),
                digest: Some(digest),
            }),
        )
            .into_response(),
        Pulled::Started { task_id } => (
            StatusCode::ACCEPTED,
            Json(api::PullStarted {
                status: "running".into(),
                task_id: Some(task_id),
                image: None,
                digest: None,
            }),
        )
            .into_response(),
    })
}

pub async fn task(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::Task>> {
    Ok(Json(task_to_api(service::task(&st, &user, &id).await?)))
}

/// `POST /sandboxes/:id/save-image`: the sandbox's disk as a new image of
/// the caller's.
pub async fn save(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::NameBody>,
) -> ServiceResult<(StatusCode, Json<api::Image>)> {
    let img = service::save(&st, &user, &id, &req.name).await?;
    Ok((StatusCode::CREATED, Json(to_api(&img))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    name: String,
}

/// The body is handed on as a stream (never all in memory); a refused
/// query goes along too, so the service reads the upload before refusing.
pub async fn import(
    State(st): State<Shared>,
    Caller(user): Caller,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> ServiceResult<(StatusCode, Json<api::Imported>)> {
    let name = q.map(|Query(q)| q.name).map_err(ServiceError::from);
    let upload = req
        .into_body()
        .into_data_stream()
        .map_err(std::io::Error::other);
    let img = service::import(&st, &user, name, upload).await?;
    Ok((
        StatusCode::CREATED,
        Json(api::Imported {
            name: img.name,
            size_mb: img.size_mb,
            warnings: img.warnings,
        }),
    ))
}
