//! Persistent volumes over [`crate::service::volumes`]: create, list, get,
//! delete, resize (grow only), clone, and their backups over
//! [`crate::service::backups`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bhatti_api as api;
use bhatti_store::Volume;

use super::body::JsonBody;
use super::Caller;
use crate::error::ServiceResult;
use crate::service::volumes as service;
use crate::state::Shared;

fn to_api(v: Volume, attachments: Option<Vec<bhatti_store::Attachment>>) -> api::Volume {
    api::Volume {
        id: v.id,
        user_id: v.user_id,
        name: v.name,
        size_mb: v.size_mb,
        status: v.status.to_string(),
        attachments: attachments.map(|a| {
            a.into_iter()
                .map(|a| api::VolumeAttachment {
                    sandbox_id: a.sandbox_id,
                    mount: a.mount,
                    read_only: a.read_only,
                })
                .collect()
        }),
        created_at: v.created_at,
    }
}

pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<Vec<api::Volume>>> {
    let list = service::list(&st, &user).await?;
    Ok(Json(list.into_iter().map(|v| to_api(v, None)).collect()))
}

pub async fn create(
    State(st): State<Shared>,
    Caller(user): Caller,
    JsonBody(req): JsonBody<api::CreateVolume>,
) -> ServiceResult<(StatusCode, Json<api::Volume>)> {
    let v = service::create(&st, &user, &req.name, req.size_mb).await?;
    Ok((StatusCode::CREATED, Json(to_api(v, Some(Vec::new())))))
}

pub async fn get_one(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<api::Volume>> {
    let v = service::get(&st, &user, &name).await?;
    let atts = service::attachments(&st, &v).await?;
    Ok(Json(to_api(v, Some(atts))))
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

pub async fn resize(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<api::ResizeVolume>,
) -> ServiceResult<Json<api::Resized>> {
    let v = service::resize(&st, &user, &name, req.size_mb).await?;
    Ok(Json(api::Resized {
        status: "resized".into(),
        size_mb: v.size_mb,
    }))
}

pub async fn clone(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<api::NameBody>,
) -> ServiceResult<(StatusCode, Json<api::Volume>)> {
    let v = service::clone(&st, &user, &name, &req.name).await?;
    Ok((StatusCode::CREATED, Json(to_api(v, Some(Vec::new())))))
}

fn backup_to_api(b: bhatti_store::Backup) -> api::VolumeBackup {
    api::VolumeBackup {
        id: b.id,
        volume_name: b.volume_name,
        user_id: b.user_id,
        s3_key: b.s3_key,
        size_bytes: b.size_bytes,
        sha256: b.sha256,
        created_at: b.created_at,
    }
}

pub async fn backups(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<Vec<api::VolumeBackup>>> {
    let list = crate::service::backups::list(&st, &user, &name).await?;
    Ok(Json(list.into_iter().map(backup_to_api).collect()))
}

pub async fn backup(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<(StatusCode, Json<api::VolumeBackup>)> {
    let b = crate::service::backups::create(&st, &user, &name).await?;
    Ok((StatusCode::CREATED, Json(backup_to_api(b))))
}

pub async fn restore(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<api::RestoreBackup>,
) -> ServiceResult<Json<api::Restored>> {
    let b = crate::service::backups::restore(&st, &user, &name, &req.backup_id).await?;
    Ok(Json(api::Restored {
        status: "restored".into(),
        backup_id: b.id,
    }))
}

pub async fn delete_backup(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path((name, backup_id)): Path<(String, String)>,
) -> ServiceResult<Json<api::StatusBody>> {
    crate::service::backups::delete(&st, &user, &name, &backup_id).await?;
    Ok(Json(api::StatusBody {
        status: "deleted".into(),
    }))
}
