//! Secrets (age-encrypted at rest, names only in lists) and per-user
//! templates.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bhatti_api as api;

use super::body::JsonBody;
use super::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::Shared;
use crate::validate;

pub async fn list_secrets(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ApiResult<Json<Vec<api::Secret>>> {
    let uid = user.id.clone();
    let list = st.db(move |s| s.list_secrets(&uid)).await?;
    Ok(Json(
        list.into_iter()
            .map(|m| api::Secret {
                name: m.name,
                created_at: m.created_at,
                updated_at: m.updated_at,
            })
            .collect(),
    ))
}

pub async fn set_secret(
    State(st): State<Shared>,
    Caller(user): Caller,
    body: JsonBody<api::SetSecret>,
) -> ApiResult<(StatusCode, Json<api::Secret>)> {
    let JsonBody(req) = body;
    if req.name.is_empty() || req.value.is_empty() {
        return Err(ApiError::bad_request("name and value are required"));
    }
    validate::secret_name(&req.name)?;
    // An input rule like any other field's (the document says maxLength):
    // 400; 413 is for a body over the cap.
    if req.value.len() > validate::MAX_SECRET {
        return Err(ApiError::bad_request(format!(
            "secret value of {} bytes is over the {}-byte limit",
            req.value.len(),
            validate::MAX_SECRET
        )));
    }
    // It becomes an environment value.
    validate::no_nul("secret value", &req.value)?;
    let ct = st
        .secrets
        .encrypt(req.value.as_bytes())
        .map_err(ApiError::internal)?;
    let (uid, n) = (user.id.clone(), req.name.clone());
    let m = st.db(move |s| s.set_secret(&uid, &n, &ct)).await?;
    Ok((
        StatusCode::CREATED,
        Json(api::Secret {
            name: m.name,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }),
    ))
}

pub async fn delete_secret(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<api::StatusBody>> {
    let uid = user.id.clone();
    st.db(move |s| s.delete_secret(&uid, &name)).await?;
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
) -> ApiResult<Json<Vec<api::Template>>> {
    let uid = user.id.clone();
    let list = st.db(move |s| s.list_templates(&uid)).await?;
    Ok(Json(list.into_iter().map(template_to_api).collect()))
}

pub async fn create_template(
    State(st): State<Shared>,
    Caller(user): Caller,
    body: JsonBody<api::Template>,
) -> ApiResult<(StatusCode, Json<api::Template>)> {
    let JsonBody(t) = body;
    validate::name("template", &t.name)?;
    validate::labels(&t.labels)?;
    let cpus = validate::cpus(t.cpus, 1)?;
    validate::disk_size_mb(t.disk_size_mb)?;
    validate::env(&t.env)?;
    let memory_mb = match t.memory_mb {
        None => 2048,
        Some(m) if m < 128 => return Err(ApiError::bad_request("memory_mb must be at least 128")),
        Some(m) => u32::try_from(m).map_err(|_| ApiError::bad_request("memory_mb is too large"))?,
    };
    for v in &t.persistent_volumes {
        validate::name("volume", &v.name)?;
        validate::mount_path(&v.mount)?;
    }
    validate::distinct_mounts(t.persistent_volumes.iter().map(|v| v.mount.as_str()))?;
    // As a create would check them, so a template cannot hold files no
    // sandbox could be made with.
    crate::service::sandboxes::decode_files(&t.files)?;
    for s in &t.secrets {
        validate::secret_name(s)?;
    }
    let row = bhatti_store::Template {
        id: String::new(),
        user_id: user.id.clone(),
        name: t.name,
        image: t.image,
        cpus,
        memory_mb,
        disk_size_mb: t.disk_size_mb,
        env: t.env,
        secrets: t.secrets,
        files: serde_json::to_value(&t.files).map_err(ApiError::internal)?,
        volumes: serde_json::to_value(&t.persistent_volumes).map_err(ApiError::internal)?,
        init: t.init,
        labels: t.labels,
        created_at: String::new(),
    };
    let saved = st.db(move |s| s.create_template(&row)).await?;
    Ok((StatusCode::CREATED, Json(template_to_api(saved))))
}

pub async fn get_template(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Template>> {
    let uid = user.id.clone();
    Ok(Json(template_to_api(
        st.db(move |s| s.template(&uid, &id)).await?,
    )))
}

pub async fn delete_template(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<api::StatusBody>> {
    let uid = user.id.clone();
    st.db(move |s| s.delete_template(&uid, &id)).await?;
    Ok(Json(api::StatusBody {
        status: "deleted".into(),
    }))
}
