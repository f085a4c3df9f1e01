//! Images on this daemon: where their files live, the pull and import jobs,
//! and what a sandbox created from one inherits.
//!
//! Layout under `<data_dir>/images/`:
//! - `rootfs-<tier>.ext4`: built-in images (the setup script's);
//! - `<user id>/<name>.ext4`: a user's pulled, imported or saved image;
//! - `blobs/`: the digest-keyed layer cache, shared by every user's pulls
//!   (content-addressed, so sharing reveals nothing a digest does not);
//! - `staging/<job>/`: trees being converted; cleared at start-up;
//! - `lohar`: the guest agent injected into every image, taken from the
//!   default root filesystem when not configured.
//!
//! The conversion itself is `bhatti-image`'s; this module adds the daemon's
//! rules (names, quotas, one owner), the background task with progress, the
//! events, and clean-up so that a failed or interrupted job leaves no image
//! row, no file and no temp behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bhatti_image::{BlobCache, Credentials, ImageDefaults, ImageError, Progress, Registry};
use bhatti_store::{Image, NewImage};
use tokio::sync::Semaphore;

use crate::error::{ErrorCode, ServiceError, ServiceResult};
use crate::state::Shared;

/// A pull that has not finished in this long is failed (docs/server.md,
/// "Images").
const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How often a running task's progress is written to the store.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Conversions at once: each is disk- and CPU-bound (decompression,
/// mke2fs), and the sandboxes come first.
const CONVERSIONS: usize = 2;

/// The daemon's image machinery.
pub struct Images {
    dir: PathBuf,
    pub registry: Registry,
    pub cache: BlobCache,
    lohar: Option<PathBuf>,
    default_rootfs: PathBuf,
    /// The Docker engine runs images from dockerd, not ext4 files: images
    /// are imported there (`docker import`) and their row names the tag.
    docker: bool,
    conversions: Semaphore,
}

/// An image problem as the API answers it: what the caller supplied is 400,
/// the registry's refusals keep their meaning, the rest is the host's.
pub fn api_error(e: ImageError) -> ServiceError {
    match e {
        ImageError::NotFound(_) => ServiceError::not_found(e.to_string()),
        ImageError::Unauthorized(_) => ServiceError::forbidden(e.to_string()),
        ImageError::Registry(_) => ServiceError::new(ErrorCode::BadGateway, e.to_string()),
        e if e.is_bad_input() => ServiceError::bad_request(e.to_string()),
        e => ServiceError::internal(e),
    }
}

impl Images {
    /// Opens the image directory; clears what an interrupted job left.
    pub fn open(cfg: &crate::config::Config, docker: bool) -> std::io::Result<Images> {
        let data_dir = &cfg.data_dir;
        let dir = data_dir.join("images");
        std::fs::create_dir_all(&dir)?;
        let cache = BlobCache::open(dir.join("blobs")).map_err(std::io::Error::other)?;
        cache.remove_stale_temp();
        let staging = dir.join("staging");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        // Half-written image files (`.<name>.ext4.tmp-*`) of killed jobs.
        if let Ok(users) = std::fs::read_dir(&dir) {
            for u in users.flatten().filter(|u| u.path().is_dir()) {
                if let Ok(files) = std::fs::read_dir(u.path()) {
                    for f in files.flatten() {
                        let n = f.file_name();
                        let n = n.to_string_lossy();
                        if n.starts_with('.') && n.contains(".tmp-") {
                            let _ = std::fs::remove_file(f.path());
                        }
                    }
                }
            }
        }
        Ok(Images {
            dir,
            registry: Registry::new(
                cfg.insecure_registries.clone(),
                Duration::from_secs(cfg.registry_timeout_secs.max(1)),
            ),
            cache,
            lohar: cfg.lohar.clone(),
            default_rootfs: cfg.rootfs_path(),
            docker,
            conversions: Semaphore::new(CONVERSIONS),
        })
    }

    /// `<images>/<user>/<name>.ext4`.
    pub fn file_for(&self, user_id: &str, name: &str) -> PathBuf {
        self.dir.join(user_id).join(format!("{name}.ext4"))
    }

    fn staging_for(&self, job: &str) -> PathBuf {
        self.dir.join("staging").join(job)
    }

    /// The lohar binary to inject: configured, `$BHATTI_LOHAR_STATIC`, or
    /// the one inside the default root filesystem (so images always carry
    /// the agent this daemon's guests speak to), extracted with debugfs.
    async fn lohar(&self) -> ServiceResult<PathBuf> {
        if let Some(p) = self
            .lohar
            .clone()
            .or_else(|| std::env::var_os("BHATTI_LOHAR_STATIC").map(PathBuf::from))
        {
            return Ok(p);
        }
        let out = self.dir.join("lohar");
        let tmp = self
            .dir
            .join(format!(".lohar.tmp-{:08x}", rand::random::<u32>()));
        let o = tokio::process::Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump /usr/local/bin/lohar {}", tmp.display()))
            .arg(&self.default_rootfs)
            .output()
            .await
            .map_err(|e| ServiceError::internal(format!("debugfs (e2fsprogs): {e}")))?;
        let ok = o.status.success() && tmp.metadata().map(|m| m.len() > 0).unwrap_or(false);
        if !ok {
            let _ = std::fs::remove_file(&tmp);
            return Err(ServiceError::internal(format!(
                "no lohar to put in the image: set `lohar:` in the config (a static lohar), \
                 or make {} hold /usr/local/bin/lohar",
                self.default_rootfs.display()
            )));
        }
        std::fs::rename(&tmp, &out).map_err(ServiceError::internal)?;
        Ok(out)
    }

    /// Layers → what the engine boots: `<user>/<name>.ext4` (staged,
    /// converted, renamed in place), or on the Docker engine an image in
    /// dockerd with lohar as its entrypoint. Returns where it is (the row's
    /// `file_path`), its size in MiB and its warnings.
    pub async fn convert(
        &self,
        job: &str,
        layers: Vec<bhatti_image::Layer>,
        user_id: &str,
        name: &str,
        progress: Option<Arc<Progress>>,
    ) -> ServiceResult<(String, u64, Vec<String>)> {
        let _slot = self
            .conversions
            .acquire()
            .await
            .map_err(ServiceError::internal)?;
        let lohar = self.lohar().await?;
        let staging = self.staging_for(job);
        let cache = self.cache.clone();
        if self.docker {
            let tag = format!(
                "bhatti-image/{}/{}:{}",
                user_id.to_ascii_lowercase(),
                name.to_ascii_lowercase(),
                bhatti_store::ids::random_hex(4)
            );
            let tree = staging.clone();
            let size_mb = tokio::task::spawn_blocking(move || {
                bhatti_image::rootfs::build_tree(
                    &layers,
                    &cache,
                    &tree,
                    &lohar,
                    progress.as_deref(),
                )?;
                let warnings = messages(&bhatti_image::inspect::check_tree(&tree));
                bhatti_image::rootfs::tree_size_mb(&tree).map(|mb| (mb, warnings))
            })
            .await?
            .map_err(api_error)?;
            let (size_mb, warnings) = size_mb;
            let res = docker_import(&staging, &tag).await;
            bhatti_image::rootfs::remove_staging(&staging);
            res?;
            return Ok((tag, size_mb, warnings));
        }
        let out = self.file_for(user_id, name);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(ServiceError::internal)?;
        }
        let file = out.clone();
        let size_mb = tokio::task::spawn_blocking(move || {
            bhatti_image::rootfs::build(
                &layers,
                &cache,
                &staging,
                &lohar,
                &file,
                progress.as_deref(),
            )
        })
        .await?
        .map_err(api_error)?;
        let warnings = file_warnings(&out).await;
        Ok((out.to_string_lossy().into_owned(), size_mb, warnings))
    }

    /// Removes what a deleted image's row named (a file, or a dockerd image).
    pub async fn remove(&self, file_path: &str) {
        if self.docker && file_path.starts_with("bhatti-image/") {
            let _ = tokio::process::Command::new("docker")
                .args(["image", "rm", "-f", file_path])
                .output()
                .await;
            return;
        }
        if let Err(e) = tokio::fs::remove_file(file_path).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = file_path, error = %e, "could not remove an image file");
            }
        }
    }
}

/// `tar | docker import` of a prepared tree, lohar its entrypoint (as the
/// Docker engine's own image has it).
async fn docker_import(tree: &std::path::Path, tag: &str) -> ServiceResult<()> {
    let cmd = format!(
        "tar --numeric-owner -C '{}' -c . | docker import \
         --change 'ENTRYPOINT [\"/usr/local/bin/lohar\",\"container\"]' \
         --change 'LABEL bhatti.image=imported' - '{tag}'",
        tree.display()
    );
    crate::service::volumes::run("bash", &["-o", "pipefail", "-c", &cmd]).await
}

/// The defaults an image record carries for exec and shell.
pub fn defaults_of(img: &Image) -> Option<ImageDefaults> {
    if img.oci_config.is_null() || img.oci_config.as_object().is_some_and(|o| o.is_empty()) {
        return None;
    }
    serde_json::from_value(img.oci_config.clone()).ok()
}

/// What `POST /images/pull` starts.
pub struct PullJob {
    pub user_id: String,
    pub name: String,
    pub reference: String,
    pub creds: Option<Credentials>,
    /// An image of this name from the same reference, replaced on success.
    pub replaces: bool,
}

/// Runs a pull as the task `task_id`: progress into the task, the image row
/// and file on success, nothing on failure; the task ends either way.
pub async fn run_pull(st: Shared, task_id: String, job: PullJob) {
    let progress = Arc::new(Progress::default());
    let reporter = {
        let (st, id, p) = (st.clone(), task_id.clone(), progress.clone());
        tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let snap = p.snapshot();
                if last.as_ref() != Some(&snap) {
                    let v = serde_json::to_value(&snap).unwrap_or_default();
                    let id = id.clone();
                    let _ = st.db(move |s| s.set_task_progress(&id, &v)).await;
                    last = Some(snap);
                }
            }
        })
    };
    let res = tokio::time::timeout(PULL_TIMEOUT, pull(&st, &task_id, &job, progress.clone())).await;
    reporter.abort();
    let res = match res {
        Ok(r) => r,
        Err(_) => Err(ServiceError::internal(format!(
            "pull did not finish within {} minutes",
            PULL_TIMEOUT.as_secs() / 60
        ))),
    };
    let (uid, id) = (job.user_id.clone(), task_id.clone());
    let mut snap = progress.snapshot();
    match res {
        Ok(img) => {
            snap.phase = "done".into();
            let v = serde_json::to_value(&snap).unwrap_or_default();
            let result = serde_json::to_string(&api_image(&img)).ok();
            let _ = st
                .db(move |s| {
                    s.set_task_progress(&id, &v)?;
                    s.complete_task(&id, result)
                })
                .await;
            st.events.emit(
                &uid,
                "",
                "image.pulled",
                serde_json::json!({"name": img.name, "ref": job.reference, "digest": img.oci_digest, "size_mb": img.size_mb}),
            );
        }
        Err(e) => {
            tracing::warn!(task = task_id, image = job.name, error = %e.message, "image pull failed");
            let msg = e.message.clone();
            let v = serde_json::to_value(&snap).unwrap_or_default();
            let _ = st
                .db(move |s| {
                    s.set_task_progress(&id, &v)?;
                    s.fail_task(&id, &msg)
                })
                .await;
            st.events.emit(
                &uid,
                "",
                "image.pull_failed",
                serde_json::json!({"name": job.name, "ref": job.reference, "error": e.message}),
            );
        }
    }
}

async fn pull(
    st: &Shared,
    task_id: &str,
    job: &PullJob,
    progress: Arc<Progress>,
) -> ServiceResult<Image> {
    let im = &st.images;
    let pulled = im
        .registry
        .pull(&job.reference, job.creds.as_ref(), &im.cache, &progress)
        .await
        .map_err(api_error)?;
    let (file_path, size_mb, warnings) = im
        .convert(
            task_id,
            pulled.layers,
            &job.user_id,
            &job.name,
            Some(progress),
        )
        .await?;
    let new = NewImage {
        user_id: job.user_id.clone(),
        name: job.name.clone(),
        source: format!("oci:{}", pulled.reference),
        file_path: file_path.clone(),
        size_mb,
        oci_digest: pulled.digest,
        oci_config: serde_json::to_value(&pulled.defaults).map_err(ServiceError::internal)?,
        warnings,
    };
    let replaces = job.replaces;
    let res = st
        .db(move |s| {
            if replaces {
                let _ = s.delete_image(&new.user_id, &new.name);
            }
            s.create_image(&new)
        })
        .await;
    if res.is_err() && !replaces {
        im.remove(&file_path).await;
    }
    res
}

/// The users' sentences for `warnings`.
fn messages(w: &[bhatti_image::inspect::Warning]) -> Vec<String> {
    w.iter().map(|w| w.message().to_string()).collect()
}

/// The warnings of a finished ext4 image (none when it cannot be read:
/// the image is judged when it is made, and an unreadable file fails its
/// boot with a clearer error than a warning could give).
pub async fn file_warnings(path: &std::path::Path) -> Vec<String> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || bhatti_image::inspect::check_ext4(&p))
        .await
        .ok()
        .flatten()
        .map(|w| messages(&w))
        .unwrap_or_default()
}

/// An image as the API shows it: what a finished pull task records as its
/// result, and what the image routes answer.
pub fn api_image(i: &bhatti_store::Image) -> bhatti_api::Image {
    bhatti_api::Image {
        id: i.id.clone(),
        user_id: i.user_id.clone(),
        name: i.name.clone(),
        source: i.source.clone(),
        size_mb: i.size_mb,
        oci_digest: Some(i.oci_digest.clone()).filter(|d| !d.is_empty()),
        created_at: i.created_at.clone(),
        warnings: i.warnings.clone(),
    }
}
