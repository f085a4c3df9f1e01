//! A user's images as operations: list, look up, delete, pull from a
//! registry (as a background task), save a sandbox's disk, import a
//! tarball. The rules a request meets before any work starts (names,
//! allowed registries, the image quota, one image per name) are decided
//! here, so the HTTP handlers only translate; the long-running jobs and the
//! file layout stay in [`crate::images`], which these functions start.

use bhatti_image::{Credentials, Registry};
use bhatti_store::{Image, NewImage, Task, User};
use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::images::{api_error, run_pull, PullJob};
use crate::service::error::{ErrorCode, ErrorReason, ServiceError, ServiceResult};
use crate::state::Shared;
use crate::validate;

/// `docker save` tarballs above this are refused (docs/server.md, "Images").
pub const MAX_IMPORT: u64 = 10 << 30;

/// What a pull request came to.
#[derive(Debug)]
pub enum Pulled {
    /// The name already holds the image at this digest: nothing to pull.
    Exists { image: Box<Image>, digest: String },
    /// The pull runs in the background as this task.
    Started { task_id: String },
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

/// A new image name must be free and the quota must have room for it.
async fn check_new(st: &Shared, user: &User, name: &str) -> ServiceResult<()> {
    let (uid, n) = (user.id.clone(), name.to_string());
    if st.db(move |s| s.image_exact(&uid, &n)).await.is_ok() {
        return Err(
            ServiceError::conflict(format!("image {name:?} already exists"))
                .because(ErrorReason::AlreadyExists),
        );
    }
    room_for_one_more(st, user).await
}

/// The images the caller can use (theirs and the admin's).
pub async fn list(st: &Shared, user: &User) -> ServiceResult<Vec<Image>> {
    let uid = user.id.clone();
    st.db(move |s| s.list_images(&uid)).await
}

/// The image `name` as the caller sees it.
pub async fn get(st: &Shared, user: &User, name: &str) -> ServiceResult<Image> {
    let (uid, n) = (user.id.clone(), name.to_string());
    st.db(move |s| s.image(&uid, &n))
        .await
        .map_err(|e| e.or_not_found(|| format!("image {name:?} not found")))
}

/// Deletes the caller's image `name` and its file. An admin image of that
/// name is refused as such rather than reported missing, so the caller
/// learns why it is still listed.
pub async fn delete(st: &Shared, user: &User, name: &str) -> ServiceResult<Image> {
    let (uid, n) = (user.id.clone(), name.to_string());
    let img = match st.db(move |s| s.delete_image(&uid, &n)).await {
        Ok(i) => i,
        Err(e) if e.code == ErrorCode::NotFound => {
            let n = name.to_string();
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
    Ok(img)
}

/// The image name a reference gets when none is given: the repository's
/// last segment (`ghcr.io/org/tool:1` → `tool`).
fn default_name(normalized: &str) -> String {
    let repo = normalized.split('@').next().unwrap_or(normalized);
    let last = repo.rsplit('/').next().unwrap_or(repo);
    last.split(':').next().unwrap_or(last).to_string()
}

/// Pulls `reference` as the caller's image `name` (the repository's last
/// segment when `None`), with `auth` (`user:token`) for the registry. What
/// can be known up front is answered now; the download and conversion run
/// as a task.
pub async fn pull(
    st: &Shared,
    user: &User,
    reference: &str,
    name: Option<&str>,
    auth: Option<&str>,
) -> ServiceResult<Pulled> {
    validate::image_ref(reference)?;
    let reference = Registry::normalize(reference).map_err(api_error)?;
    let allowed = &st.cfg.allowed_registries;
    let registry = Registry::registry_of(&reference).map_err(api_error)?;
    if !allowed.is_empty() && !allowed.contains(&registry) {
        return Err(ServiceError::forbidden(format!(
            "pulls from {registry} are not allowed here (allowed_registries: {})",
            allowed.join(", ")
        )));
    }
    let name = name.map_or_else(|| default_name(&reference), str::to_string);
    validate::name("image", &name)?;
    let creds = auth
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
        ))
        .because(ErrorReason::AlreadyExists));
    }
    if existing.is_none() {
        room_for_one_more(st, user).await?;
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
        return Ok(Pulled::Exists {
            image: Box::new(img.clone()),
            digest,
        });
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
    Ok(Pulled::Started { task_id: task.id })
}

/// The caller's background task `id`.
pub async fn task(st: &Shared, user: &User, id: &str) -> ServiceResult<Task> {
    let (uid, i) = (user.id.clone(), id.to_string());
    st.db(move |s| s.task(&uid, &i))
        .await
        .map_err(|e| e.or_not_found(|| format!("task {id:?} not found")))
}

/// Sandbox `id`'s disk as the caller's new image `name`, carrying the exec
/// defaults of the image it came from. The sandbox keeps running (paused
/// for the copy).
pub async fn save(st: &Shared, user: &User, id: &str, name: &str) -> ServiceResult<Image> {
    validate::name("image", name)?;
    let sb = st.sandbox(user, id).await?;
    check_new(st, user, name).await?;
    let (uid, from) = (user.id.clone(), sb.image.clone());
    let config = st
        .db(move |s| s.image(&uid, &from))
        .await
        .map(|i| i.oci_config)
        .unwrap_or(serde_json::Value::Null);
    let out = st.images.file_for(&user.id, name);
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
        name: name.to_string(),
        source: format!("saved:{}", sb.id),
        file_path: out.to_string_lossy().into_owned(),
        size_mb,
        oci_digest: String::new(),
        oci_config: config,
        warnings: crate::images::file_warnings(&out).await,
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
    Ok(img)
}

/// Imports the `docker save` tarball arriving on `upload` as the caller's
/// image `name`. `name` may already be the refusal of the request that
/// named it: any refusal is returned only after the upload was read (up to
/// [`MAX_IMPORT`]), since closing on unread bytes resets the connection and
/// the client would see a broken pipe instead of the answer.
pub async fn import<S>(
    st: &Shared,
    user: &User,
    name: ServiceResult<String>,
    mut upload: S,
) -> ServiceResult<Image>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
{
    let checked = async {
        let name = name?;
        validate::name("image", &name)?;
        check_new(st, user, &name).await?;
        Ok(name)
    }
    .await;
    let name = match checked {
        Ok(n) => n,
        Err(e) => {
            let mut seen: u64 = 0;
            while let Ok(Some(chunk)) = upload.try_next().await {
                seen = seen.saturating_add(chunk.len() as u64);
                if seen > MAX_IMPORT {
                    break;
                }
            }
            return Err(e);
        }
    };

    let job = format!("import-{}", bhatti_store::ids::random_hex(8));
    // Spooled to a file, never held in memory: tarballs go to 10 GiB, and
    // the archive reader takes a file.
    let spool = st
        .images
        .file_for(&user.id, &format!(".{job}.tar.tmp-upload"));
    let res = async {
        if let Some(p) = spool.parent() {
            tokio::fs::create_dir_all(p)
                .await
                .map_err(ServiceError::internal)?;
        }
        let mut f = tokio::fs::File::create(&spool)
            .await
            .map_err(ServiceError::internal)?;
        let mut total: u64 = 0;
        while let Some(chunk) = upload
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
        let (cache, tar) = (st.images.cache.clone(), spool.clone());
        let unpacked =
            tokio::task::spawn_blocking(move || bhatti_image::archive::read_archive(&tar, &cache))
                .await?
                .map_err(api_error)?;
        let _ = tokio::fs::remove_file(&spool).await;
        let (file_path, size_mb, warnings) = st
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
            warnings,
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
    let _ = tokio::fs::remove_file(&spool).await;
    let img = res?;
    st.events.emit(
        &user.id,
        "",
        "image.imported",
        serde_json::json!({"name": img.name, "size_mb": img.size_mb}),
    );
    Ok(img)
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
