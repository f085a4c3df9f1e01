//! Lifetimes: a sandbox's expiry (set at create, extended or cleared
//! later) and the reaper that kills or stops what has run out.

use std::time::{Duration, SystemTime};

use bhatti_store::{ExpiryAction, Sandbox, SandboxStatus, User};

use crate::service::error::{ServiceError, ServiceResult};
use crate::state::Shared;

use super::destroy_row;

/// The longest lifetime a create or an extension may ask for (30 days).
pub const MAX_TIMEOUT_SECS: u64 = 30 * 24 * 3600;

/// `timeout_secs` from now, in storage format.
pub fn expiry_from_now(timeout_secs: u64) -> ServiceResult<String> {
    if timeout_secs > MAX_TIMEOUT_SECS {
        return Err(ServiceError::bad_request(format!(
            "timeout {timeout_secs}s is longer than the {MAX_TIMEOUT_SECS}s limit"
        )));
    }
    let at = SystemTime::now()
        .checked_add(Duration::from_secs(timeout_secs))
        .ok_or_else(|| ServiceError::bad_request("timeout is out of range"))?;
    Ok(bhatti_store::time::format_ts(at))
}

pub(super) fn expiry_action(a: Option<&str>) -> ServiceResult<ExpiryAction> {
    match a {
        None | Some("") => Ok(ExpiryAction::Kill),
        Some(a) => a.parse().map_err(ServiceError::from),
    }
}

/// The native API's lifetime change, in its terms: a timeout of 0 clears
/// the lifetime as none does, and an empty action keeps the current one.
pub async fn set_timeout_as_asked(
    st: &Shared,
    user: &User,
    id: &str,
    timeout_secs: Option<u64>,
    on_expiry: Option<&str>,
) -> ServiceResult<Sandbox> {
    let action = match on_expiry {
        None | Some("") => None,
        Some(a) => Some(a.parse().map_err(ServiceError::from)?),
    };
    set_timeout(st, user, id, timeout_secs.filter(|s| *s > 0), action).await
}

/// Sets a sandbox's lifetime to `timeout_secs` from now (`None` clears it:
/// the sandbox lives until destroyed); `action` defaults to the current one.
pub async fn set_timeout(
    st: &Shared,
    user: &User,
    id: &str,
    timeout_secs: Option<u64>,
    action: Option<ExpiryAction>,
) -> ServiceResult<Sandbox> {
    let sb = st.sandbox(user, id).await?;
    let at = timeout_secs.map(expiry_from_now).transpose()?;
    let action = action.unwrap_or(sb.on_expiry);
    let sid = sb.id.clone();
    st.db(move |s| s.set_expiry(&sid, at.as_deref(), action))
        .await
}

/// How often the reaper looks for lifetimes that are over.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Runs [`reap_expired`] every [`REAP_EVERY`] until `stop` turns true.
pub async fn reap_loop(st: Shared, stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = crate::ticker::Ticker::new(REAP_EVERY, stop);
    while ticker.tick().await {
        reap_expired(&st).await;
    }
}

/// Ends the lifetimes that are over: kills or stops each expired sandbox
/// (a stop clears the lifetime; the next start or connect sets a new one).
pub async fn reap_expired(st: &Shared) {
    let now = bhatti_store::time::now();
    let rows = match st.db(move |s| s.expired_sandboxes(&now)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e.message, "expiry: cannot list sandboxes");
            return;
        }
    };
    // A lifetime that ran out during its create ends once it is made.
    for sb in rows.into_iter().filter(|r| !st.is_creating(&r.id)) {
        let (id, action) = (sb.id.clone(), sb.on_expiry);
        tracing::info!(sandbox = id, action = action.as_str(), "lifetime over");
        let r = match action {
            ExpiryAction::Kill => destroy_row(st, sb).await.map(|_| ()),
            ExpiryAction::Pause => {
                let r = if sb.status == SandboxStatus::Running
                    && st.engine.vm_state(&sb.id).is_some()
                {
                    st.engine.stop(&sb.id).await.map_err(ServiceError::from)
                } else {
                    Ok(())
                };
                if r.is_ok() {
                    let _ = st.persist(&sb.id).await;
                    st.events.emit(
                        &sb.user_id,
                        &sb.id,
                        "sandbox.stopped",
                        serde_json::json!({"reason": "expired"}),
                    );
                }
                let sid = sb.id.clone();
                let cleared = st
                    .db(move |s| s.set_expiry(&sid, None, ExpiryAction::Pause))
                    .await;
                r.and(cleared.map(|_| ()))
            }
        };
        if let Err(e) = r {
            tracing::warn!(sandbox = id, error = %e.message, "expiry failed");
        }
    }
}
