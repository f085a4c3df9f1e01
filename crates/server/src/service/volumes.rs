//! Persistent volumes: create, list, get, delete, resize (grow only),
//! clone. They outlive sandboxes; attach rules (RW-exclusive, RO-shared)
//! are the store's.
//!
//! Backing: an ext4 image `volumes/<user>/<name>.ext4` for the microVM
//! engines, a directory `volumes/<user>/<name>/` for the Docker engine
//! (which bind-mounts). Files are made before the row turns `ready`, so a
//! crash leaves a `creating` row, never a ready row without its file.

use std::path::{Path, PathBuf};

use bhatti_api as api;
use bhatti_store::{Attachment, NewVolume, User, Volume, VolumeStatus};

use crate::service::error::{ErrorCode, ErrorReason, ServiceError, ServiceResult};
use crate::state::Shared;
use crate::validate;

fn backing_path(st: &Shared, user: &str, name: &str) -> PathBuf {
    let dir = st.cfg.data_dir.join("volumes").join(user);
    if st.engine_name == "docker" {
        dir.join(name)
    } else {
        dir.join(format!("{name}.ext4"))
    }
}

/// Runs a host command; a failure is a 500 with its stderr (for the log).
pub(crate) async fn run(cmd: &str, args: &[&str]) -> ServiceResult<()> {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| ServiceError::internal(format!("{cmd}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ServiceError::internal(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Gives the (sparse) file at `path` its size, creating it when `create`,
/// and syncs it before a file system is made or grown on it.
async fn set_size(path: &Path, size_mb: u64, create: bool) -> ServiceResult<()> {
    let f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(create)
        .truncate(create)
        .open(path)
        .await
        .map_err(ServiceError::internal)?;
    f.set_len(size_mb << 20)
        .await
        .map_err(ServiceError::internal)?;
    f.sync_all().await.map_err(ServiceError::internal)
}

async fn make_backing(path: &Path, size_mb: u64, docker: bool) -> ServiceResult<()> {
    if let Some(p) = path.parent() {
        tokio::fs::create_dir_all(p)
            .await
            .map_err(ServiceError::internal)?;
    }
    if docker {
        return tokio::fs::create_dir_all(path)
            .await
            .map_err(ServiceError::internal);
    }
    set_size(path, size_mb, true).await?;
    let p = path.to_string_lossy();
    run("mkfs.ext4", &["-q", "-F", "-E", "root_owner=1000:1000", &p]).await
}

async fn remove_backing(path: &Path) {
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
) -> ServiceResult<Volume>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = ServiceResult<()>>,
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
        .map_err(ServiceError::quota_as_forbidden)?;
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
pub async fn create(st: &Shared, user: &User, name: &str, size_mb: u64) -> ServiceResult<Volume> {
    validate::name("volume", name)?;
    if size_mb == 0 {
        return Err(ServiceError::bad_request("size_mb must be greater than 0"));
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
) -> ServiceResult<Volume> {
    let (u, n) = (user.id.clone(), m.name.clone());
    match st.db(move |s| s.volume(&u, &n)).await {
        Ok(v) => Ok(v),
        Err(e) if e.code == ErrorCode::NotFound => match (m.auto_create, m.size_mb) {
            (true, Some(size)) if size > 0 => match create(st, user, &m.name, size).await {
                Err(e) if e.reason == Some(ErrorReason::AlreadyExists) => {
                    // Someone else is creating it: give them a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let (u, n) = (user.id.clone(), m.name.clone());
                    st.db(move |s| s.volume(&u, &n)).await
                }
                r => r,
            },
            _ => Err(ServiceError::not_found(format!(
                "volume {:?} not found",
                m.name
            ))),
        },
        Err(e) => Err(e),
    }
}

/// The caller's volumes.
pub async fn list(st: &Shared, user: &User) -> ServiceResult<Vec<Volume>> {
    let uid = user.id.clone();
    st.db(move |s| s.list_volumes(&uid)).await
}

/// The caller's volume `name`.
pub async fn get(st: &Shared, user: &User, name: &str) -> ServiceResult<Volume> {
    let (u, n) = (user.id.clone(), name.to_string());
    st.db(move |s| s.volume(&u, &n))
        .await
        .map_err(|e| e.or_not_found(|| format!("volume {name:?} not found")))
}

/// Where volume `v` is attached.
pub async fn attachments(st: &Shared, v: &Volume) -> ServiceResult<Vec<Attachment>> {
    let vid = v.id.clone();
    st.db(move |s| s.volume_attachments(&vid)).await
}

/// Deletes the caller's volume `name` (the store refuses an attached one)
/// and its file.
pub async fn delete(st: &Shared, user: &User, name: &str) -> ServiceResult<Volume> {
    let (u, n) = (user.id.clone(), name.to_string());
    // The store refuses a delete (a conflict) only while the volume is
    // attached.
    let v = st
        .db(move |s| s.delete_volume(&u, &n))
        .await
        .map_err(|e| match e.code {
            ErrorCode::Conflict => e.because(ErrorReason::InUse),
            _ => e,
        })?;
    remove_backing(Path::new(&v.file_path)).await;
    st.events.emit(
        &user.id,
        "",
        "volume.deleted",
        serde_json::json!({"name": name}),
    );
    Ok(v)
}

/// Grows a detached volume to `size_mb`, file system and all.
pub async fn resize(st: &Shared, user: &User, name: &str, size_mb: u64) -> ServiceResult<Volume> {
    let v = get(st, user, name).await?;
    // Valid input that the volume's current size refuses: a conflict.
    if size_mb <= v.size_mb {
        return Err(ServiceError::conflict(format!(
            "new size {} MB must be larger than {} MB",
            size_mb, v.size_mb
        )));
    }
    if !attachments(st, &v).await?.is_empty() {
        return Err(
            ServiceError::conflict(format!("volume {name:?} is attached"))
                .because(ErrorReason::InUse),
        );
    }
    let vid = v.id.clone();
    let nv = st
        .db(move |s| s.resize_volume(&vid, size_mb))
        .await
        .map_err(ServiceError::quota_as_forbidden)?;
    if st.engine_name != "docker" {
        grow_image(Path::new(&v.file_path), size_mb).await?;
    }
    st.events.emit(
        &user.id,
        "",
        "volume.resized",
        serde_json::json!({"name": name, "size_mb": nv.size_mb}),
    );
    Ok(nv)
}

/// Grows a detached ext4 image file and its file system to `size_mb`.
pub(crate) async fn grow_image(path: &Path, size_mb: u64) -> ServiceResult<()> {
    let p = path.to_string_lossy();
    // Exit codes 1/2 mean "fixed"; resize2fs refuses a dirty fs anyway.
    let _ = run("e2fsck", &["-f", "-y", &p]).await;
    set_size(path, size_mb, false).await?;
    run("resize2fs", &[&p]).await
}

/// A copy of volume `name` as `new_name` (CoW where the file system can);
/// refused while a writer has it attached.
pub async fn clone(st: &Shared, user: &User, name: &str, new_name: &str) -> ServiceResult<Volume> {
    validate::name("volume", new_name)?;
    let src = get(st, user, name).await?;
    if attachments(st, &src).await?.iter().any(|a| !a.read_only) {
        return Err(ServiceError::conflict(format!(
            "volume {name:?} is attached read-write; detach it before cloning"
        ))
        .because(ErrorReason::InUse));
    }
    let docker = st.engine_name == "docker";
    let from = src.file_path.clone();
    let v = new_volume(st, user, new_name, src.size_mb, |path| async move {
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
        serde_json::json!({"from": name, "name": new_name}),
    );
    Ok(v)
}
