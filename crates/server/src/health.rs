//! Honest health. The engine notices a VM that dies under a sandbox at
//! once (it watches every VMM it runs); this brings the store and the
//! event log in line with it: within one thermal tick (whether or not the
//! thermal manager runs), or at once when a request touches the sandbox.
//! A crashed sandbox is never reported as running; `start` boots it
//! afresh from its kept disk.

use bhatti_engine::contract::Status;
use bhatti_store::{Sandbox, SandboxStatus};

use crate::state::{AppState, Shared};

pub async fn run(st: Shared, stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = crate::ticker::Ticker::new(st.cfg.thermal.tick(), stop);
    while ticker.tick().await {
        sweep(&st).await;
    }
}

/// Records every crash the store does not know yet.
pub async fn sweep(st: &AppState) {
    let rows = match st.db(|s| s.list_all_sandboxes()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e.message, "health: cannot list sandboxes");
            return;
        }
    };
    for sb in rows.iter().filter(|s| s.status == SandboxStatus::Running) {
        if let Err(e) = st.engine.probe(&sb.id).await {
            tracing::debug!(sandbox = sb.id, error = %e, "health: probe failed");
        }
        note_crash(st, sb).await;
    }
}

/// When the engine says `sb` crashed and the store still has it running:
/// records the status with its reason and emits `sandbox.crashed`. Returns
/// the updated row.
pub async fn note_crash(st: &AppState, sb: &Sandbox) -> Option<Sandbox> {
    if sb.status != SandboxStatus::Running {
        return None;
    }
    if st.engine.status(&sb.id).await.ok()?.status != Status::Crashed {
        return None;
    }
    let row = match st.persist(&sb.id).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(sandbox = sb.id, error = %e.message, "health: recording a crash failed");
            return None;
        }
    };
    st.events.emit(
        &sb.user_id,
        &sb.id,
        "sandbox.crashed",
        serde_json::json!({"reason": row.status_reason}),
    );
    Some(row)
}
