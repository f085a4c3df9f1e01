//! Named snapshots (checkpoints): take one from a running sandbox (it keeps
//! running), list, get, delete, and resume one into a new sandbox.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bhatti_api as api;
use bhatti_engine::api::ResumeSpec;
use bhatti_store::{NewSandbox, NewSnapshot, SandboxStatus, Snapshot, User};

use super::body::{JsonBody, OptionalJsonBody};
use super::sandboxes::to_api as sandbox_to_api;
use super::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::Shared;
use crate::validate;

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

fn dir_size(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| if m.is_dir() { 0 } else { m.blocks() * 512 })
                .sum()
        })
        .unwrap_or(0)
}

pub async fn checkpoint(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: JsonBody<api::NameBody>,
) -> ApiResult<(StatusCode, Json<api::Snapshot>)> {
    let JsonBody(req) = body;
    validate::name("snapshot", &req.name)?;
    let sb = st.sandbox(&user, &id).await?;
    let uid = user.id.clone();
    let n = st.db(move |s| s.count_snapshots(&uid)).await?;
    if n >= u64::from(user.quotas.max_snapshots) {
        return Err(ApiError::forbidden(format!(
            "snapshot limit reached ({n}/{})",
            user.quotas.max_snapshots
        )));
    }
    let (uid, name) = (user.id.clone(), req.name.clone());
    if st.db(move |s| s.snapshot(&uid, &name)).await.is_ok() {
        return Err(ApiError::conflict(format!(
            "snapshot {:?} already exists",
            req.name
        )));
    }
    if !st.engine.capabilities().checkpoints {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("the {} engine does not support snapshots", st.engine_name),
        ));
    }
    st.ensure_hot(&sb).await?;
    let dir = st
        .cfg
        .data_dir
        .join("snapshots")
        .join(&user.id)
        .join(&req.name);
    if let Some(p) = dir.parent() {
        tokio::fs::create_dir_all(p)
            .await
            .map_err(ApiError::internal)?;
    }
    let manifest = st.engine.checkpoint(&sb.id, &dir).await?;
    let size_mb = tokio::task::spawn_blocking({
        let d = dir.clone();
        move || dir_size(&d)
    })
    .await?
        >> 20;
    let ns = NewSnapshot {
        user_id: user.id.clone(),
        name: req.name.clone(),
        source_sandbox: sb.id.clone(),
        dir: dir.to_string_lossy().into_owned(),
        manifest: serde_json::to_value(&manifest).map_err(ApiError::internal)?,
        size_mb,
        image: sb.image.clone(),
    };
    let saved = match st.db(move |s| s.create_snapshot(&ns)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(if e.status == StatusCode::TOO_MANY_REQUESTS {
                ApiError::forbidden(e.message)
            } else {
                e
            });
        }
    };
    st.events.emit(
        &user.id,
        &sb.id,
        "snapshot.created",
        serde_json::json!({"name": req.name}),
    );
    Ok((StatusCode::CREATED, Json(to_api(saved))))
}

pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ApiResult<Json<Vec<api::Snapshot>>> {
    let uid = user.id.clone();
    Ok(Json(
        st.db(move |s| s.list_snapshots(&uid))
            .await?
            .into_iter()
            .map(to_api)
            .collect(),
    ))
}

async fn own(st: &Shared, user: &User, name: &str) -> ApiResult<Snapshot> {
    let (u, n) = (user.id.clone(), name.to_string());
    st.db(move |s| s.snapshot(&u, &n)).await.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::not_found(format!("snapshot {name:?} not found"))
        } else {
            e
        }
    })
}

pub async fn get_one(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<api::Snapshot>> {
    Ok(Json(to_api(own(&st, &user, &name).await?)))
}

pub async fn delete(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<api::StatusBody>> {
    let (u, n) = (user.id.clone(), name.clone());
    let s = st.db(move |s| s.delete_snapshot(&u, &n)).await?;
    if let Err(e) = tokio::fs::remove_dir_all(&s.dir).await {
        tracing::warn!(dir = s.dir, error = %e, "could not remove snapshot directory");
    }
    st.events.emit(
        &user.id,
        "",
        "snapshot.deleted",
        serde_json::json!({"name": name}),
    );
    Ok(Json(api::StatusBody {
        status: "deleted".into(),
    }))
}

pub async fn resume(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<api::ResumeSnapshot>,
) -> ApiResult<(StatusCode, Json<api::Sandbox>)> {
    let snap = own(&st, &user, &name).await?;
    let new_name = if req.name.is_empty() {
        // Cut so that `-<6 hex>` still fits a name.
        let stem = &snap.name[..snap.name.len().min(56)];
        format!("{stem}-{}", bhatti_store::ids::random_hex(3))
    } else {
        req.name.clone()
    };
    validate::name("sandbox", &new_name)?;
    let manifest: bhatti_engine::api::CheckpointManifest =
        snap.manifest_as().map_err(ApiError::internal)?;
    let id = bhatti_store::ids::sandbox_id();
    let new = NewSandbox {
        id: id.clone(),
        user_id: user.id.clone(),
        name: new_name.clone(),
        status: SandboxStatus::Unknown,
        engine: st.engine_name.to_string(),
        // The sandbox's real shape, from the checkpoint (DECISIONS §7.10).
        cpus: manifest.cpus,
        memory_mb: manifest.memory_mb,
        image: snap.image.clone(),
        ..NewSandbox::default()
    };
    st.db(move |s| s.insert_sandbox(&new)).await?;
    let r = st
        .engine
        .resume_checkpoint(
            &PathBuf::from(&snap.dir),
            ResumeSpec {
                id: Some(id.clone()),
                name: new_name,
                owner_index: user.subnet_index,
                // The policy recorded with the checkpoint (PATCH changes it).
                egress: None,
            },
        )
        .await;
    if let Err(e) = r {
        let _ = st.engine.destroy(&id).await;
        let rid = id.clone();
        let _ = st.db(move |s| s.delete_sandbox(&rid)).await;
        return Err(e.into());
    }
    st.touch(&id);
    let sb = st.persist(&id).await?;
    st.events.emit(
        &user.id,
        &id,
        "snapshot.resumed",
        serde_json::json!({"snapshot": name}),
    );
    Ok((StatusCode::CREATED, Json(sandbox_to_api(&sb, None))))
}
