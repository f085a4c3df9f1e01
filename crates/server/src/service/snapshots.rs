//! Named snapshots (checkpoints): take one from a running sandbox (it keeps
//! running), list, look up, delete, and resume one into a new sandbox. The
//! native `/snapshots` routes and E2B's snapshots (`create_snapshot`,
//! `list_snapshots`, `delete_snapshot`, a create from a snapshot) are both
//! these functions.

use std::collections::BTreeMap;
use std::path::Path;

use bhatti_engine::contract::{CheckpointManifest, ResumeSpec};
use bhatti_store::{ExpiryAction, NewSandbox, NewSnapshot, Sandbox, SandboxStatus, Snapshot, User};

use crate::service::error::{ErrorReason, ServiceError, ServiceResult};
use crate::service::sandboxes::expiry_from_now;
use crate::state::Shared;
use crate::validate;

/// Bytes a snapshot directory takes on disk (its files are flat).
fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| !m.is_dir())
                .fold(0u64, |total, m| {
                    total.saturating_add(m.blocks().saturating_mul(512))
                })
        })
        .unwrap_or(0)
}

/// Checkpoints sandbox `id` as snapshot `name`; the sandbox keeps running.
pub async fn take(st: &Shared, user: &User, id: &str, name: &str) -> ServiceResult<Snapshot> {
    validate::name("snapshot", name)?;
    let sb = st.sandbox(user, id).await?;
    let uid = user.id.clone();
    let n = st.db(move |s| s.count_snapshots(&uid)).await?;
    if n >= u64::from(user.quotas.max_snapshots) {
        return Err(ServiceError::forbidden(format!(
            "snapshot limit reached ({n}/{})",
            user.quotas.max_snapshots
        )));
    }
    let (uid, n) = (user.id.clone(), name.to_string());
    if st.db(move |s| s.snapshot(&uid, &n)).await.is_ok() {
        return Err(
            ServiceError::conflict(format!("snapshot {name:?} already exists"))
                .because(ErrorReason::AlreadyExists),
        );
    }
    if !st.engine.capabilities().checkpoints {
        return Err(ServiceError::unsupported(format!(
            "the {} engine does not support snapshots",
            st.engine_name
        )));
    }
    st.ensure_hot(&sb).await?;
    let dir = st.cfg.data_dir.join("snapshots").join(&user.id).join(name);
    if let Some(p) = dir.parent() {
        tokio::fs::create_dir_all(p)
            .await
            .map_err(ServiceError::internal)?;
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
        name: name.to_string(),
        source_sandbox: sb.id.clone(),
        dir: dir.to_string_lossy().into_owned(),
        manifest: serde_json::to_value(&manifest).map_err(ServiceError::internal)?,
        size_mb,
        image: sb.image.clone(),
    };
    let saved = match st.db(move |s| s.create_snapshot(&ns)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e.quota_as_forbidden());
        }
    };
    st.events.emit(
        &user.id,
        &sb.id,
        "snapshot.created",
        serde_json::json!({"name": name}),
    );
    Ok(saved)
}

/// The caller's snapshots, oldest first.
pub async fn list(st: &Shared, user: &User) -> ServiceResult<Vec<Snapshot>> {
    let uid = user.id.clone();
    st.db(move |s| s.list_snapshots(&uid)).await
}

/// The caller's snapshot `name`.
pub async fn get(st: &Shared, user: &User, name: &str) -> ServiceResult<Snapshot> {
    let (u, n) = (user.id.clone(), name.to_string());
    st.db(move |s| s.snapshot(&u, &n))
        .await
        .map_err(|e| e.or_not_found(|| format!("snapshot {name:?} not found")))
}

/// Deletes the caller's snapshot `name` and its files.
pub async fn delete(st: &Shared, user: &User, name: &str) -> ServiceResult<Snapshot> {
    let (u, n) = (user.id.clone(), name.to_string());
    let s = st
        .db(move |s| s.delete_snapshot(&u, &n))
        .await
        .map_err(|e| e.or_not_found(|| format!("snapshot {name:?} not found")))?;
    if let Err(e) = tokio::fs::remove_dir_all(&s.dir).await {
        tracing::warn!(dir = s.dir, error = %e, "could not remove snapshot directory");
    }
    st.events.emit(
        &user.id,
        "",
        "snapshot.deleted",
        serde_json::json!({"name": name}),
    );
    Ok(s)
}

/// What a sandbox resumed from a snapshot is given besides its memory.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Empty: the snapshot's name and a random suffix.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    /// A lifetime from now, and what happens at its end.
    pub timeout_secs: Option<u64>,
    pub on_expiry: ExpiryAction,
}

/// A new sandbox from snapshot `name`, running with the memory and disks
/// the snapshot has. All or nothing: a failed restore leaves no row.
pub async fn resume(st: &Shared, user: &User, name: &str, r: Resume) -> ServiceResult<Sandbox> {
    let snap = get(st, user, name).await?;
    let manifest: CheckpointManifest = snap.manifest_as().map_err(ServiceError::internal)?;
    let r = Resume {
        name: if r.name.is_empty() {
            // Cut so that `-<6 hex>` still fits a name.
            let stem = &snap.name[..snap.name.len().min(56)];
            format!("{stem}-{}", bhatti_store::ids::random_hex(3))
        } else {
            r.name
        },
        ..r
    };
    let sb = restore(st, user, Path::new(&snap.dir), &manifest, &snap.image, r).await?;
    st.events.emit(
        &user.id,
        &sb.id,
        "snapshot.resumed",
        serde_json::json!({"snapshot": name}),
    );
    Ok(sb)
}

/// `count` new sandboxes from one checkpoint of sandbox `id`, taken once
/// so that every fork starts from the same instant; the source keeps
/// running. The outer error is the source's (not found, cannot be
/// checkpointed); each fork then succeeds or fails on its own, and
/// `each(i)` names fork `i` and gives it its lifetime and labels.
pub async fn fork(
    st: &Shared,
    user: &User,
    id: &str,
    count: u32,
    each: impl Fn(u32) -> Resume,
) -> ServiceResult<Vec<ServiceResult<Sandbox>>> {
    let src = st.sandbox(user, id).await?;
    if !st.engine.capabilities().checkpoints {
        return Err(ServiceError::unsupported(format!(
            "the {} engine does not support forks",
            st.engine_name
        )));
    }
    st.ensure_hot(&src).await?;
    let dir = st
        .cfg
        .data_dir
        .join("forks")
        .join(bhatti_store::ids::random_hex(8));
    if let Some(p) = dir.parent() {
        tokio::fs::create_dir_all(p)
            .await
            .map_err(ServiceError::internal)?;
    }
    let taken = st.engine.checkpoint(&src.id, &dir).await;
    let out = match taken {
        Ok(manifest) => {
            let mut out = Vec::new();
            for i in 0..count {
                let r = restore(st, user, &dir, &manifest, &src.image, each(i)).await;
                if let Ok(sb) = &r {
                    st.events.emit(
                        &user.id,
                        &sb.id,
                        "snapshot.forked",
                        serde_json::json!({"from": src.id}),
                    );
                }
                out.push(r);
            }
            Ok(out)
        }
        Err(e) => Err(e.into()),
    };
    // Every fork has its memory loaded and its own disk copies by now.
    let _ = tokio::fs::remove_dir_all(&dir).await;
    out
}

/// One sandbox restored from the checkpoint in `dir`; `r.name` must be set.
async fn restore(
    st: &Shared,
    user: &User,
    dir: &Path,
    manifest: &CheckpointManifest,
    image: &str,
    r: Resume,
) -> ServiceResult<Sandbox> {
    validate::name("sandbox", &r.name)?;
    validate::labels(&r.labels)?;
    validate::metadata(&r.metadata)?;
    let expires_at = r.timeout_secs.map(expiry_from_now).transpose()?;
    let id = bhatti_store::ids::sandbox_id();
    let new = NewSandbox {
        id: id.clone(),
        user_id: user.id.clone(),
        name: r.name.clone(),
        status: SandboxStatus::Unknown,
        engine: st.engine_name.to_string(),
        // The sandbox's real shape, from the checkpoint (docs/engine.md,
        // "Lifecycle").
        cpus: manifest.cpus,
        memory_mb: manifest.memory_mb,
        image: image.to_string(),
        labels: r.labels,
        metadata: r.metadata,
        expires_at,
        on_expiry: r.on_expiry,
        ..NewSandbox::default()
    };
    let _creating = st.creating(&id);
    st.db(move |s| s.insert_sandbox(&new)).await?;
    let restored = st
        .engine
        .resume_checkpoint(
            dir,
            ResumeSpec {
                id: Some(id.clone()),
                name: r.name,
                owner_index: user.subnet_index,
                // The policy recorded with the checkpoint (PATCH changes it).
                egress: None,
            },
        )
        .await;
    if let Err(e) = restored {
        let _ = st.engine.destroy(&id).await;
        let rid = id.clone();
        let _ = st.db(move |s| s.delete_sandbox(&rid)).await;
        return Err(e.into());
    }
    st.touch(&id);
    let sb = st.persist(&id).await?;
    crate::dns::open_for(st, &id);
    // The lifetime starts now that the sandbox runs, not when its row went
    // in (a restore under TCG takes seconds, forks queue behind each
    // other). The row had one all along, so a daemon that dies in between
    // leaves nothing that lives forever.
    match r.timeout_secs {
        Some(t) => {
            let at = expiry_from_now(t)?;
            let sid = sb.id.clone();
            st.db(move |s| s.set_expiry(&sid, Some(&at), r.on_expiry))
                .await
        }
        None => Ok(sb),
    }
}
