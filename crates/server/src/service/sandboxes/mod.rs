//! Sandboxes as the service layer sees them: create (direct, from a
//! template, or a fork), destroy, stop, start, and lifetimes. Both the
//! native API and the E2B API call these; the handlers only translate.
//!
//! Create writes the store row *before* the engine boots anything, under a
//! server-chosen ID: the quota and the name's uniqueness are decided in that
//! insert (so two racing creates never both boot), volume attachments can be
//! taken before the VM sees the disk, and a daemon that dies mid-create
//! leaves a row that recovery marks with a reason instead of an unknown VM.

use bhatti_api as api;
use bhatti_store::{Sandbox, User};

use crate::service::error::{ErrorCode, ServiceError, ServiceResult};
use crate::state::Shared;
use crate::validate;

mod create;
mod lifetime;

pub use create::{create_for_caller, decode_files, default_image, egress};
pub use lifetime::{expiry_from_now, reap_loop, set_timeout, set_timeout_as_asked};

/// The caller's sandboxes carrying every label in `labels`
/// (`key=value` each).
/// The egress policy the engine last persisted for the sandbox.
pub fn egress_policy(sb: &Sandbox) -> Option<bhatti_engine::net::EgressPolicy> {
    #[derive(serde::Deserialize)]
    struct Persisted {
        #[serde(default)]
        egress: Option<bhatti_engine::net::EgressPolicy>,
    }
    let p: Persisted = sb.vm_state_as().ok().flatten()?;
    p.egress
}

pub async fn list(st: &Shared, user: &User, labels: &[String]) -> ServiceResult<Vec<Sandbox>> {
    let filter = validate::label_filter(labels)?;
    let uid = user.id.clone();
    st.db(move |s| s.list_sandboxes(&uid, &filter)).await
}

/// Changes what a patch names: egress, name, labels, keep-hot, in that
/// order, and says so in one event.
pub async fn patch(
    st: &Shared,
    user: &User,
    id: &str,
    req: &api::PatchSandbox,
) -> ServiceResult<Sandbox> {
    let mut sb = st.sandbox(user, id).await?;
    if let Some(n) = &req.name {
        validate::name("sandbox", n)?;
    }
    validate::labels(&req.labels_add)?;
    for k in &req.labels_remove {
        validate::label_key(k)?;
    }
    // Egress first: it is the change the engine may refuse, and then
    // nothing else should have happened.
    if let Some(policy) = egress(req.egress.as_ref())? {
        if st.engine.vm_state(&sb.id).is_none() {
            return Err(ServiceError::sandbox_lost(
                &sb,
                "cannot have its egress changed",
            ));
        }
        st.engine.set_egress(&sb.id, policy).await?;
        // The engine state carries the policy: persisted with it, it
        // survives a daemon restart.
        sb = st.persist(&sb.id).await?;
    }
    if let Some(n) = req.name.clone().filter(|n| *n != sb.name) {
        let sid = sb.id.clone();
        sb = st.db(move |s| s.rename_sandbox(&sid, &n)).await?;
    }
    if !req.labels_add.is_empty() || !req.labels_remove.is_empty() {
        let (sid, add, rm) = (
            sb.id.clone(),
            req.labels_add.clone(),
            req.labels_remove.clone(),
        );
        sb = st.db(move |s| s.update_labels(&sid, &add, &rm)).await?;
    }
    if let Some(k) = req.keep_hot {
        let sid = sb.id.clone();
        sb = st.db(move |s| s.set_keep_hot(&sid, k)).await?;
        if k {
            st.ensure_hot(&sb).await?;
            let sid = sb.id.clone();
            sb = st.db(move |s| s.sandbox_by_id(&sid)).await?;
        }
    }
    st.events.emit(
        &user.id,
        &sb.id,
        "sandbox.updated",
        serde_json::to_value(req).unwrap_or_default(),
    );
    Ok(sb)
}

/// Destroys a sandbox: the row first, then the engine's resources.
pub async fn destroy(st: &Shared, user: &User, id: &str) -> ServiceResult<Sandbox> {
    let sb = st.sandbox(user, id).await?;
    destroy_row(st, sb).await
}

/// [`destroy`] for a sandbox already looked up (the expiry reaper's path).
pub async fn destroy_row(st: &Shared, sb: Sandbox) -> ServiceResult<Sandbox> {
    // The row goes first: a request on this sandbox that fails while the
    // engine tears it down then finds it gone (404, not 500), and a daemon
    // that dies in between leaves an orphan that recovery sweeps.
    let sid = sb.id.clone();
    match st.db(move |s| s.delete_sandbox(&sid)).await {
        Ok(removed) => {
            crate::service::publish::forget_all(st, &removed.publish_rules);
            st.dns.detach(&sb.id);
        }
        Err(ServiceError {
            code: ErrorCode::NotFound,
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    let engine_failed = match st.engine.destroy(&sb.id).await {
        Ok(()) => false,
        Err(e) => {
            // The row is gone regardless: a sandbox the engine no longer
            // knows (`unknown` after recovery) must still be removable.
            tracing::warn!(sandbox = sb.id, error = %e, "engine destroy failed");
            true
        }
    };
    if engine_failed && st.is_creating(&sb.id) {
        // Its create is still making it: that create sees the row gone
        // when it finishes and removes what it made.
        tracing::info!(
            sandbox = sb.id,
            "destroyed while being created; the create removes its resources"
        );
    } else if engine_failed {
        // Its host leftovers (a stray VMM, the netns, the directory) go
        // now rather than at the next restart; every other row is kept.
        if let Ok(rows) = st.db(|s| s.list_all_sandboxes()).await {
            let keep: Vec<String> = rows.into_iter().map(|r| r.id).collect();
            match st.engine.cleanup_orphans(&keep).await {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(
                        sandbox = sb.id,
                        ?removed,
                        "removed the leftovers of a destroyed sandbox"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(sandbox = sb.id, error = %e, "leftover clean-up failed"),
            }
        }
    }
    st.forget(&sb.id);
    let lifetime = bhatti_store::time::parse_ts(&sb.created_at)
        .and_then(|t| t.elapsed().ok())
        .map_or(0, |d| d.as_secs());
    st.events.emit(
        &sb.user_id,
        &sb.id,
        "sandbox.destroyed",
        serde_json::json!({"lifetime_s": lifetime}),
    );
    Ok(sb)
}

/// Stops a sandbox to disk (its memory with it, so a start resumes its
/// processes).
pub async fn stop(st: &Shared, user: &User, id: &str, reason: &str) -> ServiceResult<Sandbox> {
    let sb = st.sandbox(user, id).await?;
    if st.engine.vm_state(&sb.id).is_none() {
        return Err(ServiceError::sandbox_lost(&sb, "cannot be stopped"));
    }
    st.engine.stop(&sb.id).await?;
    let sb = st.persist(&sb.id).await?;
    st.events.emit(
        &user.id,
        &sb.id,
        "sandbox.stopped",
        serde_json::json!({"reason": reason}),
    );
    Ok(sb)
}

/// Starts (restores) a stopped sandbox.
pub async fn start(st: &Shared, user: &User, id: &str, force: bool) -> ServiceResult<Sandbox> {
    let sb = st.sandbox(user, id).await?;
    if st.engine.vm_state(&sb.id).is_none() {
        return Err(ServiceError::sandbox_lost(&sb, "cannot be started"));
    }
    let r = st.engine.start(&sb.id, force).await;
    // Persist either way: a failed restore trips the breaker, and the
    // store must say so.
    let saved = st.persist(&sb.id).await;
    r?;
    let sb = saved?;
    st.touch(&sb.id);
    st.events.emit(
        &user.id,
        &sb.id,
        "sandbox.started",
        serde_json::json!({"force": force}),
    );
    Ok(sb)
}

/// Console bytes a request gets when it names no size, and at most.
pub const CONSOLE_DEFAULT_BYTES: u64 = 64 << 10;
pub const CONSOLE_MAX_BYTES: u64 = 1 << 20;

/// The tail of the sandbox's console (boot log, kernel messages, lohar's
/// own log). Read in any state and never wakes the sandbox: it is what
/// one looks at when a sandbox will not come up.
pub async fn console(
    st: &Shared,
    user: &User,
    id: &str,
    bytes: Option<i64>,
) -> ServiceResult<String> {
    let bytes = match bytes {
        None => CONSOLE_DEFAULT_BYTES,
        Some(b) if (1..=i64::try_from(CONSOLE_MAX_BYTES).unwrap_or(i64::MAX)).contains(&b) => {
            b.unsigned_abs()
        }
        Some(b) => {
            return Err(ServiceError::bad_request(format!(
                "bytes must be between 1 and {CONSOLE_MAX_BYTES}, got {b}"
            )))
        }
    };
    let sb = st.sandbox(user, id).await?;
    let n = usize::try_from(bytes).unwrap_or(usize::MAX);
    Ok(st.engine.console(&sb.id, n).await?)
}
