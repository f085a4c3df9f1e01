//! Volume backups: back up, list, restore, delete, and the schedule.
//!
//! The copy is point-in-time without detaching: a volume attached
//! read-write to a running microVM is copied by the engine with the guest
//! synced and paused for the (reflink) copy; otherwise nothing writes it
//! and the file is copied as it is. The copy then streams to the bucket
//! ([`crate::backup`]) and is removed. One backup or restore per volume at
//! a time: a second gets 409. The row is written after the upload
//! completes, so a failed backup leaves no record.

use std::time::{SystemTime, UNIX_EPOCH};

use bhatti_store::{Backup, User, Volume};

use crate::backup::{self, cron, BackupError};
use crate::service::error::{ErrorCode, ErrorReason, ServiceError, ServiceResult};
use crate::service::volumes;
use crate::state::Shared;

impl From<BackupError> for ServiceError {
    fn from(e: BackupError) -> ServiceError {
        match &e {
            BackupError::Checksum { .. } | BackupError::Corrupt(_) => {
                ServiceError::new(ErrorCode::Conflict, e.to_string())
            }
            BackupError::Missing(_) => ServiceError::not_found(e.to_string()),
            BackupError::Store(_) => ServiceError::new(ErrorCode::BadGateway, e.to_string()),
            BackupError::NotConfigured => ServiceError::unsupported(e.to_string()),
            BackupError::Io { .. } => ServiceError::internal(e),
        }
    }
}

fn configured(st: &Shared) -> ServiceResult<()> {
    if st.backups.store().is_none() {
        return Err(ServiceError::unsupported(
            "backups are not configured: add a `backup:` section (endpoint, bucket, credentials) to the daemon's config",
        ));
    }
    if st.engine_name == "docker" {
        return Err(ServiceError::unsupported(
            "backups are of volume images; the Docker engine's volumes are host directories (back those up on the host)",
        ));
    }
    Ok(())
}

/// Backs up the caller's volume `name`.
pub async fn create(st: &Shared, user: &User, name: &str) -> ServiceResult<Backup> {
    configured(st)?;
    let v = volumes::get(st, user, name).await?;
    let Some(_running) = st.backups.claim(&format!("{}/{}", user.id, v.name)) else {
        return Err(ServiceError::conflict(format!(
            "a backup or restore of volume {name:?} is already running; try again when it is done"
        ))
        .because(ErrorReason::InUse));
    };
    let res = backup_now(st, user, &v).await;
    match &res {
        Ok(b) => st.events.emit(
            &user.id,
            "",
            "volume.backup_created",
            serde_json::json!({"volume": v.name, "backup_id": b.id, "size_bytes": b.size_bytes, "key": b.s3_key}),
        ),
        Err(e) => st.events.emit(
            &user.id,
            "",
            "volume.backup_failed",
            serde_json::json!({"volume": v.name, "error": e.message}),
        ),
    }
    res
}

async fn backup_now(st: &Shared, user: &User, v: &bhatti_store::Volume) -> ServiceResult<Backup> {
    let path = std::path::PathBuf::from(&v.file_path);
    let copy = backup::temp_beside(&path, "backup");
    let writer = volumes::attachments(st, v)
        .await?
        .into_iter()
        .find(|a| !a.read_only);
    let copied = match writer {
        Some(a) => st
            .engine
            .copy_attached(&a.sandbox_id, &path, &copy)
            .await
            .map_err(ServiceError::from),
        None => {
            let (src, dst) = (path.display().to_string(), copy.display().to_string());
            volumes::run("cp", &["--reflink=auto", "--sparse=always", &src, &dst]).await
        }
    };
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&copy).await;
        return Err(e);
    }
    let at = bhatti_store::time::now();
    let key = backup::object_key(&user.id, &v.name, &at);
    let up = st.backups.upload(&copy, &key).await;
    let _ = tokio::fs::remove_file(&copy).await;
    let up = up?;
    let (u, n, k, sha) = (
        user.id.clone(),
        v.name.clone(),
        key.clone(),
        up.sha256.clone(),
    );
    let size = up.size_bytes;
    match st
        .db(move |s| s.create_backup(&u, &n, &k, size, &sha))
        .await
    {
        Ok(b) => Ok(b),
        Err(e) => {
            // No row, no object.
            let _ = st.backups.delete(&key).await;
            Err(e)
        }
    }
}

/// The caller's backups of volume `name`, newest first.
pub async fn list(st: &Shared, user: &User, name: &str) -> ServiceResult<Vec<Backup>> {
    configured(st)?;
    let (u, n) = (user.id.clone(), name.to_string());
    let list = st.db(move |s| s.list_backups(&u, &n)).await?;
    // Backups outlive their volume (they are how a deleted one comes
    // back), so only a name with neither is unknown.
    if list.is_empty() {
        volumes::get(st, user, name).await?;
    }
    Ok(list)
}

fn backup_not_found(name: &str, id: &str) -> impl FnOnce() -> String {
    let (name, id) = (name.to_string(), id.to_string());
    move || format!("backup {id:?} of volume {name:?} not found")
}

/// Restores backup `id` over the caller's volume `name`, which must not be
/// attached. The download is checked against the backup's SHA-256 before
/// it replaces the volume (atomically, by rename). A deleted volume comes
/// back: it is created at the backup's size, and removed again if the
/// restore fails (all or nothing).
pub async fn restore(st: &Shared, user: &User, name: &str, id: &str) -> ServiceResult<Backup> {
    configured(st)?;
    let (u, n, i) = (user.id.clone(), name.to_string(), id.to_string());
    let b = st
        .db(move |s| s.backup(&u, &n, &i))
        .await
        .map_err(|e| e.or_not_found(backup_not_found(name, id)))?;
    let (v, created) = match volumes::get(st, user, name).await {
        Ok(v) => (v, false),
        Err(e) if e.is(ErrorCode::NotFound) => {
            let v = volumes::create(st, user, name, size_mb_of(b.size_bytes)).await?;
            (v, true)
        }
        Err(e) => return Err(e),
    };
    let res = restore_into(st, user, &v, &b).await;
    if res.is_err() && created {
        if let Err(e) = volumes::delete(st, user, name).await {
            tracing::warn!(
                volume = name,
                "volume created for a failed restore not removed: {e}"
            );
        }
    }
    res.map(|()| b)
}

/// Whole MiB holding `bytes`.
fn size_mb_of(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20).max(1)
}

async fn restore_into(st: &Shared, user: &User, v: &Volume, b: &Backup) -> ServiceResult<()> {
    let name = &v.name;
    if !volumes::attachments(st, v).await?.is_empty() {
        return Err(ServiceError::conflict(format!(
            "volume {name:?} is attached; detach it (stop or destroy its sandboxes) before restoring"
        ))
        .because(ErrorReason::InUse));
    }
    let Some(_running) = st.backups.claim(&format!("{}/{}", user.id, v.name)) else {
        return Err(ServiceError::conflict(format!(
            "a backup or restore of volume {name:?} is already running"
        ))
        .because(ErrorReason::InUse));
    };
    let path = std::path::PathBuf::from(&v.file_path);
    let tmp = backup::temp_beside(&path, "restore");
    st.backups.download(&b.s3_key, &tmp, &b.sha256).await?;
    // The volume keeps its size: a backup from before a resize is grown to
    // it (its file system too); one larger than the volume (a volume
    // re-created smaller) grows the volume, within the storage quota.
    let want = v.size_mb.saturating_mul(1 << 20);
    let resized = if b.size_bytes < want {
        volumes::grow_image(&tmp, v.size_mb).await.map(|()| None)
    } else if b.size_bytes > want {
        let (vid, mb) = (v.id.clone(), size_mb_of(b.size_bytes));
        st.db(move |s| s.resize_volume(&vid, mb))
            .await
            .map(Some)
            .map_err(ServiceError::quota_as_forbidden)
    } else {
        Ok(None)
    };
    if let Err(e) = resized {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    // A sandbox may have attached it while the download ran.
    if !volumes::attachments(st, v).await?.is_empty() {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ServiceError::conflict(format!(
            "volume {name:?} was attached during the restore; nothing was changed"
        ))
        .because(ErrorReason::InUse));
    }
    if let Err(e) = tokio::fs::rename(&tmp, &path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(ServiceError::internal(format!(
            "replace {}: {e}",
            path.display()
        )));
    }
    if let Some(dir) = path.parent() {
        if let Ok(d) = tokio::fs::File::open(dir).await {
            let _ = d.sync_all().await;
        }
    }
    st.events.emit(
        &user.id,
        "",
        "volume.restored",
        serde_json::json!({"volume": v.name, "backup_id": b.id}),
    );
    Ok(())
}

/// Deletes backup `id` of volume `name`: the row, then the object.
pub async fn delete(st: &Shared, user: &User, name: &str, id: &str) -> ServiceResult<Backup> {
    configured(st)?;
    let (u, n, i) = (user.id.clone(), name.to_string(), id.to_string());
    let b = st
        .db(move |s| s.delete_backup(&u, &n, &i))
        .await
        .map_err(|e| e.or_not_found(backup_not_found(name, id)))?;
    if let Err(e) = st.backups.delete(&b.s3_key).await {
        tracing::warn!(key = b.s3_key, "backup object not deleted: {e}");
    }
    Ok(b)
}

/// Keeps the newest `keep` backups of the volume and deletes the rest.
async fn prune(st: &Shared, user: &User, name: &str, keep: u32) -> ServiceResult<usize> {
    if keep == 0 {
        return Ok(0);
    }
    let all = list(st, user, name).await?;
    let mut removed: usize = 0;
    for b in all
        .into_iter()
        .skip(usize::try_from(keep).unwrap_or(usize::MAX))
    {
        delete(st, user, name, &b.id).await?;
        removed = removed.saturating_add(1);
    }
    Ok(removed)
}

/// One pass of the schedule for minute `now_unix` (the daemon calls it
/// once a minute): each matching schedule backs up its volume for every
/// user who has one (or the one user it names), then prunes to its
/// retention. A volume whose previous run is still going is skipped, with
/// an event.
pub async fn run_schedule(st: &Shared, now_unix: u64) {
    let Some(cfg) = st.cfg.backup.clone() else {
        return;
    };
    let minute = cron::Minute::from_unix(now_unix);
    for sched in cfg.schedule {
        let Ok(c) = cron::Cron::parse(&sched.cron) else {
            continue;
        };
        if !c.matches(minute) {
            continue;
        }
        let keep = sched.retention.unwrap_or(cfg.retention);
        let Ok(volumes) = st.db(|s| s.list_all_volumes()).await else {
            continue;
        };
        for v in volumes.into_iter().filter(|v| v.name == sched.volume) {
            let uid = v.user_id.clone();
            let Ok(user) = st.db(move |s| s.user(&uid)).await else {
                continue;
            };
            if sched.user.as_ref().is_some_and(|u| *u != user.name) {
                continue;
            }
            let st2 = st.clone();
            tokio::spawn(async move {
                match create(&st2, &user, &v.name).await {
                    Ok(_) => {
                        if let Err(e) = prune(&st2, &user, &v.name, keep).await {
                            tracing::warn!(volume = v.name, "backup retention: {}", e.message);
                        }
                    }
                    Err(e) if e.reason == Some(ErrorReason::InUse) => st2.events.emit(
                        &user.id,
                        "",
                        "volume.backup_skipped",
                        serde_json::json!({"volume": v.name, "why": "the previous backup is still running"}),
                    ),
                    Err(e) => tracing::warn!(volume = v.name, "scheduled backup failed: {}", e.message),
                }
            });
        }
    }
}

/// Runs the schedule at the start of every minute until the daemon stops.
pub async fn schedule_loop(st: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    if st.cfg.backup.as_ref().is_none_or(|b| b.schedule.is_empty()) || st.backups.store().is_none()
    {
        return;
    }
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let next = now.saturating_sub(now % 60).saturating_add(60);
        let wait = std::time::Duration::from_secs(next.saturating_sub(now));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        run_schedule(&st, next).await;
    }
}
