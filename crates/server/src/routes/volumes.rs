//! Persistent volumes: create, list, get, delete, resize (grow only),
//! clone. They outlive sandboxes; attach rules (RW-exclusive, RO-shared)
//! are the store's.
//!
//! Backing: an ext4 image `volumes/<user>/<name>.ext4` for the microVM
//! engines, a directory `volumes/<user>/<name>/` for the Docker engine
//! (which bind-mounts). Files are made before the row turns `ready`, so a
//! crash leaves a `creating` row, never a ready row without its file.

use std::path::{Path as FsPath, PathBuf};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bhatti_api as api;
use bhatti_store::{NewVolume, User, Volume, VolumeStatus};

use super::body::JsonBody;
use super::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::Shared;
use crate::validate;

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

/// Storage quota: 403 (DECISIONS §7.8).
fn quota_403(e: ApiError) -> ApiError {
    if e.status == StatusCode::TOO_MANY_REQUESTS {
        ApiError::forbidden(e.message)
    } else {
        e
    }
}

fn backing_path(st: &Shared, user: &str, name: &str) -> PathBuf {
    let dir = st.cfg.data_dir.join("volumes").join(user);
    if st.engine_name == "docker" {
        dir.join(name)
    } else {
        dir.join(format!("{name}.ext4"))
    }
}

/// Runs a host command; a failure is a 500 with its stderr (for the log).
pub(crate) async fn run(cmd: &str, args: &[&str]) -> ApiResult<()> {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| ApiError::internal(format!("{cmd}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ApiError::internal(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

async fn make_backing(path: &FsPath, size_mb: u64, docker: bool) -> ApiResult<()> {
    if let Some(p) = path.parent() {
        tokio::fs::create_dir_all(p)
            .await
            .map_err(ApiError::internal)?;
    }
    if docker {
        return tokio::fs::create_dir_all(path)
            .await
            .map_err(ApiError::internal);
    }
    let f = tokio::fs::File::create(path)
        .await
        .map_err(ApiError::internal)?;
    f.set_len(size_mb << 20).await.map_err(ApiError::internal)?;
    f.sync_all().await.map_err(ApiError::internal)?;
    let p = path.to_string_lossy();
    run("mkfs.ext4", &["-q", "-F", "-E", "root_owner=1000:1000", &p]).await
}

async fn remove_backing(path: &FsPath) {
    let r = if path.is_dir() {
        tokio::fs::remove_dir_all(path).await
    } else {
        tokio::fs::remove_file(path).await
    };
    if let Err(e) = r {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove volume file");
        }
    }
}

/// A new volume's row and backing file together: the row is inserted as
/// `creating` (quota and name checked there), `fill` makes the file at the
/// volume's path, and the row becomes `ready`; if `fill` fails, the file
/// and the row are removed.
async fn new_volume<F, Fut>(
    st: &Shared,
    user: &User,
    name: &str,
    size_mb: u64,
    fill: F,
) -> ApiResult<Volume>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = ApiResult<()>>,
{
    let path = backing_path(st, &user.id, name);
    let nv = NewVolume {
        user_id: user.id.clone(),
        name: name.to_string(),
        size_mb,
        file_path: path.to_string_lossy().into_owned(),
        status: VolumeStatus::Creating,
    };
    let v = st
        .db(move |s| s.create_volume(&nv))
        .await
        .map_err(quota_403)?;
    if let Err(e) = fill(path.clone()).await {
        remove_backing(&path).await;
        let (u, n) = (user.id.clone(), name.to_string());
        let _ = st.db(move |s| s.delete_volume(&u, &n)).await;
        return Err(e);
    }
    let vid = v.id.clone();
    st.db(move |s| s.set_volume_status(&vid, VolumeStatus::Ready))
        .await
}

/// Inserts the row (`creating`), makes the file, marks it `ready`.
async fn create_volume(st: &Shared, user: &User, name: &str, size_mb: u64) -> ApiResult<Volume> {
    validate::name("volume", name)?;
    if size_mb == 0 {
        return Err(ApiError::bad_request("size_mb must be greater than 0"));
    }
    let docker = st.engine_name == "docker";
    let v = new_volume(st, user, name, size_mb, |path| async move {
        make_backing(&path, size_mb, docker).await
    })
    .await?;
    st.events.emit(
        &user.id,
        "",
        "volume.created",
        serde_json::json!({"name": name, "size_mb": size_mb}),
    );
    Ok(v)
}

/// For create: the named volume, auto-created when asked.
pub(crate) async fn find_or_create(
    st: &Shared,
    user: &User,
    m: &api::VolumeMount,
) -> ApiResult<Volume> {
    let (u, n) = (user.id.clone(), m.name.clone());
    match st.db(move |s| s.volume(&u, &n)).await {
        Ok(v) => Ok(v),
        Err(e) if e.status == StatusCode::NOT_FOUND => match (m.auto_create, m.size_mb) {
            (true, Some(size)) if size > 0 => match create_volume(st, user, &m.name, size).await {
                Err(e) if e.status == StatusCode::CONFLICT => {
                    // Someone else is creating it: give them a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let (u, n) = (user.id.clone(), m.name.clone());
                    st.db(move |s| s.volume(&u, &n)).await
                }
                r => r,
            },
            _ => Err(ApiError::not_found(format!(
                "volume {:?} not found",
                m.name
            ))),
        },
        Err(e) => Err(e),
    }
}

pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ApiResult<Json<Vec<api::Volume>>> {
    let uid = user.id.clone();
    let list = st.db(move |s| s.list_volumes(&uid)).await?;
    Ok(Json(list.into_iter().map(|v| to_api(v, None)).collect()))
}

pub async fn create(
    State(st): State<Shared>,
    Caller(user): Caller,
    body: JsonBody<api::CreateVolume>,
) -> ApiResult<(StatusCode, Json<api::Volume>)> {
    let JsonBody(req) = body;
    let v = create_volume(&st, &user, &req.name, req.size_mb).await?;
    Ok((StatusCode::CREATED, Json(to_api(v, Some(Vec::new())))))
}

async fn own(st: &Shared, user: &User, name: &str) -> ApiResult<Volume> {
    let (u, n) = (user.id.clone(), name.to_string());
    st.db(move |s| s.volume(&u, &n)).await.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::not_found(format!("volume {name:?} not found"))
        } else {
            e
        }
    })
}

pub async fn get_one(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<api::Volume>> {
    let v = own(&st, &user, &name).await?;
    let vid = v.id.clone();
    let atts = st.db(move |s| s.volume_attachments(&vid)).await?;
    Ok(Json(to_api(v, Some(atts))))
}

pub async fn delete(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<api::StatusBody>> {
    let (u, n) = (user.id.clone(), name.clone());
    let v = st.db(move |s| s.delete_volume(&u, &n)).await?;
    remove_backing(FsPath::new(&v.file_path)).await;
    st.events.emit(
        &user.id,
        "",
        "volume.deleted",
        serde_json::json!({"name": name}),
    );
    Ok(Json(api::StatusBody {
        status: "deleted".into(),
    }))
}

pub async fn resize(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
    body: JsonBody<api::ResizeVolume>,
) -> ApiResult<Json<api::Resized>> {
    let JsonBody(req) = body;
    let v = own(&st, &user, &name).await?;
    // Valid input that the volume's current size refuses: a conflict.
    if req.size_mb <= v.size_mb {
        return Err(ApiError::conflict(format!(
            "new size {} MB must be larger than {} MB",
            req.size_mb, v.size_mb
        )));
    }
    let vid = v.id.clone();
    if !st.db(move |s| s.volume_attachments(&vid)).await?.is_empty() {
        return Err(ApiError::conflict(format!("volume {name:?} is attached")));
    }
    let (vid, size) = (v.id.clone(), req.size_mb);
    let nv = st
        .db(move |s| s.resize_volume(&vid, size))
        .await
        .map_err(quota_403)?;
    if st.engine_name != "docker" {
        let p = v.file_path.clone();
        // Exit codes 1/2 mean "fixed"; resize2fs refuses a dirty fs anyway.
        let _ = run("e2fsck", &["-f", "-y", &p]).await;
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .await
            .map_err(ApiError::internal)?;
        f.set_len(req.size_mb << 20)
            .await
            .map_err(ApiError::internal)?;
        f.sync_all().await.map_err(ApiError::internal)?;
        run("resize2fs", &[&p]).await?;
    }
    st.events.emit(
        &user.id,
        "",
        "volume.resized",
        serde_json::json!({"name": name, "size_mb": nv.size_mb}),
    );
    Ok(Json(api::Resized {
        status: "resized".into(),
        size_mb: nv.size_mb,
    }))
}

pub async fn clone(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(name): Path<String>,
    body: JsonBody<api::NameBody>,
) -> ApiResult<(StatusCode, Json<api::Volume>)> {
    let JsonBody(req) = body;
    validate::name("volume", &req.name)?;
    let src = own(&st, &user, &name).await?;
    let vid = src.id.clone();
    if st
        .db(move |s| s.volume_attachments(&vid))
        .await?
        .iter()
        .any(|a| !a.read_only)
    {
        return Err(ApiError::conflict(format!(
            "volume {name:?} is attached read-write; detach it before cloning"
        )));
    }
    let docker = st.engine_name == "docker";
    let from = src.file_path.clone();
    let v = new_volume(&st, &user, &req.name, src.size_mb, |path| async move {
        let p = path.to_string_lossy().into_owned();
        if docker {
            run("cp", &["-a", &from, &p]).await
        } else {
            run("cp", &["--reflink=auto", "--sparse=always", &from, &p]).await
        }
    })
    .await?;
    st.events.emit(
        &user.id,
        "",
        "volume.snapshot",
        serde_json::json!({"from": name, "name": req.name}),
    );
    Ok((StatusCode::CREATED, Json(to_api(v, Some(Vec::new())))))
}
