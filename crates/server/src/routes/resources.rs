//! Secrets and per-user templates over [`crate::service::secrets`] and
//! [`crate::service::templates`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bhatti_api as api;
use bhatti_store::SecretMeta;

use super::body::JsonBody;
use super::Caller;
use crate::error::ServiceResult;
use crate::service::{secrets, templates};
use crate::state::Shared;

fn secret_to_api(m: SecretMeta) -> api::Secret {
    api::Secret {
        name: m.name,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

pub async fn list_secrets(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<Vec<api::Secret>>> {
    let list = secrets::list(&st, &user).await?;
    Ok(Json(list.into_iter().map(secret_to_api).collect()))
}

pub async fn set_secret(
    State(st): State<Shared>,
    Caller(user): Caller,
    JsonBody(req): JsonBody<api::SetSecret>,
) -> ServiceResult<(StatusCode, Json<api::Secret>)> {
    let m = secrets::set(&st, &user, &req.name, &req.value).await?;
    Ok((StatusCode::CREATED, Json(secret_to_api(m))))
}

pub async fn delete_secret(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ServiceResult<Json<api::StatusBody>> {
    secrets::delete(&st, &user, &name).await?;
    Ok(Json(api::StatusBody {
        status: "deleted".into(),
    }))
}

fn template_to_api(t: bhatti_store::Template) -> api::Template {
    api::Template {
        id: t.id,
        name: t.name,
        image: t.image,
        cpus: Some(f64::from(t.cpus)),
        memory_mb: Some(u64::from(t.memory_mb)),
        disk_size_mb: t.disk_size_mb,
        env: t.env,
        secrets: t.secrets,
        files: serde_json::from_value(t.files).unwrap_or_default(),
        persistent_volumes: serde_json::from_value(t.volumes).unwrap_or_default(),
        init: t.init,
        labels: t.labels,
        created_at: t.created_at,
    }
}

pub async fn list_templates(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<Vec<api::Template>>> {
    let list = templates::list(&st, &user).await?;
    Ok(Json(list.into_iter().map(template_to_api).collect()))
}

pub async fn create_template(
    State(st): State<Shared>,
    Caller(user): Caller,
    JsonBody(t): JsonBody<api::Template>,
) -> ServiceResult<(StatusCode, Json<api::Template>)> {
    let saved = templates::create(&st, &user, t).await?;
    Ok((StatusCode::CREATED, Json(template_to_api(saved))))
}

pub async fn get_template(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::Template>> {
    Ok(Json(template_to_api(
        templates::get(&st, &user, &id).await?,
    )))
}

pub async fn delete_template(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::StatusBody>> {
    templates::delete(&st, &user, &id).await?;
    Ok(Json(api::StatusBody {
        status: "deleted".into(),
    }))
}
