//! `/images` and `/tasks`: list, get and delete images; pull from a
//! registry as a background task; import a tarball. Thin over
//! [`crate::images`], which holds the rules and the jobs.

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_api as api;
use bhatti_image::{Credentials, Registry};
use bhatti_store::{Image, NewImage, User};
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::body::JsonBody;
use super::Caller;
use crate::error::{ErrorCode, ServiceError, ServiceResult};
use crate::images::{api_error, run_pull, PullJob};
use crate::state::Shared;
use crate::validate;

/// `docker save` tarballs above this are refused (04-api.md).
const MAX_IMPORT: u64 = 10 << 30;

pub fn to_api(i: &Image) -> api::Image {
    api::Image {
        id: i.id.clone(),
        user_id: i.user_id.clone(),
        name: i.name.clone(),
        source: i.source.clone(),
        size_mb: i.size_mb,
        oci_digest: Some(i.oci_digest.clone()).filter(|d| !d.is_empty()),
        created_at: i.created_at.clone(),
    }
}

/// `max_images` checked before any download or upload starts (the insert
/// checks it again, in its transaction).
async fn room_for_one_more(st: &Shared, user: &User) -> ServiceResult<()> {
    let uid = user.id.clone();
    let n = st.db(move |s| s.count_images(&uid)).await?;
    let max = user.quotas.max_images;
    if n >= u64::from(max) {
        return Err(ServiceError::forbidden(format!(
            "image limit reached ({n}/{max})"
        )));
    }
    Ok(())
}

pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<Vec<api::Image>>> {
    let rows = st.db(move |s| s.list_images(&user.id)).await?;
    Ok(Json(rows.iter().map(to_api).collect()))
}

pub async fn get_one(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<api::Image>> {
    let n = name.clone();
    match st.db(move |s| s.image(&user.id, &n)).await {
        Ok(i) => Ok(Json(to_api(&i))),
        Err(e) if e.code == ErrorCode::NotFound => {
            Err(ServiceError::not_found(format!("image {name:?} not found")))
        }
        Err(e) => Err(e),
    }
}

pub async fn delete(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<api::StatusBody>> {
    let (uid, n) = (user.id.clone(), name.clone());
    let img = match st.db(move |s| s.delete_image(&uid, &n)).await {
        Ok(i) => i,
        Err(e) if e.code == ErrorCode::NotFound => {
            let n = name.clone();
            let admin = st.db(move |s| s.image_exact("", &n)).await.is_ok();
            return Err(if admin {
                ServiceError::forbidden(format!("image {name:?} is an admin image"))
            } else {
                ServiceError::not_found(format!("image {name:?} not found"))
            });
        }
        Err(e) => return Err(e),
    };
    // Sandboxes made from it have their own copy of the disk.
    st.images.remove(&img.file_path).await;
    st.events.emit(
        &user.id,
        "",
        "image.deleted",
        serde_json::json!({"name": img.name}),
    );
    Ok(Json(api::StatusBody {
        status: "deleted".into(),
    }))
}

/// The image name a reference gets when none is given: the repository's
/// last segment (`ghcr.io/org/tool:1` → `tool`).
fn default_name(normalized: &str) -> String {
    let repo = normalized.split('@').next().unwrap_or(normalized);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    last.split(':').next().unwrap_or(last).to_string()
}

pub async fn pull(
    State(st): State<Shared>,
    Caller(user): Caller,
    JsonBody(req): JsonBody<api::PullImage>,
) -> ServiceResult<Response> {
    validate::image_ref(&req.reference)?;
    let reference = Registry::normalize(&req.reference).map_err(api_error)?;
    let allowed = &st.cfg.allowed_registries;
    let registry = Registry::registry_of(&reference).map_err(api_error)?;
    if !allowed.is_empty() && !allowed.contains(&registry) {
        return Err(ServiceError::forbidden(format!(
            "pulls from {registry} are not allowed here (allowed_registries: {})",
            allowed.join(", ")
        )));
    }
    let name = req.name.clone().unwrap_or_else(|| default_name(&reference));
    validate::name("image", &name)?;
    let creds = req
        .auth
        .as_deref()
        .map(Credentials::parse)
        .transpose()
        .map_err(api_error)?;
    let source = format!("oci:{reference}");

    let (uid, n) = (user.id.clone(), name.clone());
    let existing = st.db(move |s| s.image_exact(&uid, &n)).await.ok();
    if let Some(img) = existing.as_ref().filter(|i| i.source != source) {
        return Err(ServiceError::conflict(format!(
            "image {name:?} already exists (from {}); delete it or pull under another name",
            img.source
        )));
    }
    if existing.is_none() {
        room_for_one_more(&st, &user).await?;
    }
    // One manifest request before any task: a wrong reference, refused
    // credentials or a registry that is down answer now, with their own
    // status, and an image already at this digest is not pulled again.
    let digest = st
        .images
        .registry
        .digest(&reference, creds.as_ref())
        .await
        .map_err(api_error)?;
    if let Some(img) = existing.as_ref().filter(|i| i.oci_digest == digest) {
        return Ok((
            StatusCode::OK,
            Json(api::PullStarted {
                status: "exists".into(),
                task_id: None,
                image: Some(img.name.clone()),
                digest: Some(digest),
            }),
        )
            .into_response());
    }
    let replaces = existing.is_some();

    let uid = user.id.clone();
    let task = st.db(move |s| s.create_task(&uid, "image_pull")).await?;
    let job = PullJob {
        user_id: user.id.clone(),
        name,
        reference,
        creds,
        replaces,
    };
    tokio::spawn(run_pull(st.clone(), task.id.clone(), job));
    Ok((
        StatusCode::ACCEPTED,
        Json(api::PullStarted {
            status: "running".into(),
            task_id: Some(task.id),
            image: None,
            digest: None,
        }),
    )
        .into_response())
}

pub async fn task(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::Task>> {
    let i = id.clone();
    let t = match st.db(move |s| s.task(&user.id, &i)).await {
        Ok(t) => t,
        Err(e) if e.code == ErrorCode::NotFound => {
            return Err(ServiceError::not_found(format!("task {id:?} not found")))
        }
        Err(e) => return Err(e),
    };
    Ok(Json(api::Task {
        id: t.id,
        user_id: t.user_id,
        kind: t.kind,
        status: t.status,
        progress: serde_json::from_value(t.progress).unwrap_or_default(),
        result: t.result,
        error: t.error,
        created_at: t.created_at,
        completed_at: t.completed_at,
    }))
}

/// `POST /sandboxes/:id/save-image`: the sandbox's disk as a new image of
/// the caller's, carrying the exec defaults of the image it came from. The
/// sandbox keeps running (paused for the copy).
pub async fn save(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::NameBody>,
) -> ServiceResult<(StatusCode, Json<api::Image>)> {
    validate::name("image", &req.name)?;
    let sb = st.sandbox(&user, &id).await?;
    let name = req.name;
    let (uid, n) = (user.id.clone(), name.clone());
    if st.db(move |s| s.image_exact(&uid, &n)).await.is_ok() {
        return Err(ServiceError::conflict(format!(
            "image {name:?} already exists"
        )));
    }
    room_for_one_more(&st, &user).await?;
    let (uid, from) = (user.id.clone(), sb.image.clone());
    let config = st
        .db(move |s| s.image(&uid, &from))
        .await
        .map(|i| i.oci_config)
        .unwrap_or(serde_json::Value::Null);
    let out = st.images.file_for(&user.id, &name);
    if let Some(p) = out.parent() {
        tokio::fs::create_dir_all(p)
            .await
            .map_err(ServiceError::internal)?;
    }
    st.engine.save_disk(&sb.id, &out).await?;
    let size_mb = tokio::fs::metadata(&out)
        .await
        .map(|m| m.len().div_ceil(1 << 20))
        .map_err(ServiceError::internal)?;
    let new = NewImage {
        user_id: user.id.clone(),
        name: name.clone(),
        source: format!("saved:{}", sb.id),
        file_path: out.to_string_lossy().into_owned(),
        size_mb,
        oci_digest: String::new(),
        oci_config: config,
    };
    let img = match st
        .db(move |s| s.create_image(&new))
        .await
        .map_err(ServiceError::quota_as_forbidden)
    {
        Ok(i) => i,
        Err(e) => {
            let _ = tokio::fs::remove_file(&out).await;
            return Err(e);
        }
    };
    st.events.emit(
        &user.id,
        &sb.id,
        "image.saved",
        serde_json::json!({"name": img.name, "size_mb": img.size_mb}),
    );
    Ok((StatusCode::CREATED, Json(to_api(&img))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    name: String,
}

/// Streams the body to a temp file (never all in memory), then converts.
pub async fn import(
    State(st): State<Shared>,
    Caller(user): Caller,
    q: Result<Query<ImportQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> ServiceResult<(StatusCode, Json<api::Imported>)> {
    let checked = async {
        let Query(q) = q?;
        validate::name("image", &q.name)?;
        let (uid, n) = (user.id.clone(), q.name.clone());
        if st.db(move |s| s.image_exact(&uid, &n)).await.is_ok() {
            return Err(ServiceError::conflict(format!(
                "image {:?} already exists",
                q.name
            )));
        }
        room_for_one_more(&st, &user).await?;
        Ok(q.name)
    }
    .await;
    let name = match checked {
        Ok(n) => n,
        Err(e) => {
            // Read what the client is sending before refusing: closing on
            // unread bytes resets the connection, and the client would see
            // a broken pipe instead of this answer.
            let mut body = req.into_body().into_data_stream();
            let mut seen: u64 = 0;
            while let Ok(Some(chunk)) = body.try_next().await {
                seen = seen.saturating_add(chunk.len() as u64);
                if seen > MAX_IMPORT {
                    break;
                }
            }
            return Err(e);
        }
    };

    let job = format!("import-{}", bhatti_store::ids::random_hex(8));
    let upload = st
        .images
        .file_for(&user.id, &format!(".{job}.tar.tmp-upload"));
    let res = async {
        if let Some(p) = upload.parent() {
            tokio::fs::create_dir_all(p)
                .await
                .map_err(ServiceError::internal)?;
        }
        let mut f = tokio::fs::File::create(&upload)
            .await
            .map_err(ServiceError::internal)?;
        let mut stream = req.into_body().into_data_stream();
        let mut total: u64 = 0;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| ServiceError::bad_request(format!("upload interrupted: {e}")))?
        {
            total = total.saturating_add(chunk.len() as u64);
            if total > MAX_IMPORT {
                return Err(ServiceError::new(
                    ErrorCode::TooLarge,
                    "image tarball is over the 10 GiB limit",
                ));
            }
            f.write_all(&chunk).await.map_err(ServiceError::internal)?;
        }
        if total == 0 {
            return Err(ServiceError::bad_request(
                "image archive: the tarball is empty",
            ));
        }
        f.sync_all().await.map_err(ServiceError::internal)?;
        drop(f);
        let (cache, tar) = (st.images.cache.clone(), upload.clone());
        let unpacked =
            tokio::task::spawn_blocking(move || bhatti_image::archive::read_archive(&tar, &cache))
                .await?
                .map_err(api_error)?;
        let _ = tokio::fs::remove_file(&upload).await;
        let (file_path, size_mb) = st
            .images
            .convert(&job, unpacked.layers, &user.id, &name, None)
            .await?;
        let new = NewImage {
            user_id: user.id.clone(),
            name: name.clone(),
            source: format!("import:{name}"),
            file_path: file_path.clone(),
            size_mb,
            oci_digest: String::new(),
            oci_config: serde_json::to_value(&unpacked.defaults).map_err(ServiceError::internal)?,
        };
        match st
            .db(move |s| s.create_image(&new))
            .await
            .map_err(ServiceError::quota_as_forbidden)
        {
            Ok(img) => Ok(img),
            Err(e) => {
                st.images.remove(&file_path).await;
                Err(e)
            }
        }
    }
    .await;
    let _ = tokio::fs::remove_file(&upload).await;
    let img = res?;
    st.events.emit(
        &user.id,
        "",
        "image.imported",
        serde_json::json!({"name": img.name, "size_mb": img.size_mb}),
    );
    Ok((
        StatusCode::CREATED,
        Json(api::Imported {
            name: img.name,
            size_mb: img.size_mb,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_the_repositorys_last_segment() {
        assert_eq!(default_name("docker.io/library/python:3.12"), "python");
        assert_eq!(default_name("127.0.0.1:5000/team/tool@sha256:abc"), "tool");
        assert_eq!(default_name("ghcr.io/org/img"), "img");
    }
}
