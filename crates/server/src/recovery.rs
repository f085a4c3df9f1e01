//! Start-up recovery (docs/operations.md, "Recovery after a restart or a
//! crash"; generations: docs/decisions.md, "VMMs"): every store sandbox is
//! handed back to the engine from its persisted state. Those with a valid, current snapshot come back `stopped` (cold; the next
//! request wakes them); the rest become `unknown` with the reason, and
//! their files are kept. Then host leftovers that belong to no sandbox are
//! swept, stale attachments released, orphaned volume files and snapshot
//! temp dirs removed.

use bhatti_engine::contract::{Status, VmState};
use bhatti_store::{RuntimeUpdate, SandboxStatus};

use crate::state::Shared;

/// What recovery did, for the `daemon.started` event and the log.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub recovered: Vec<String>,
    /// Recovered sandboxes whose VM kept running and was taken back.
    pub adopted: Vec<String>,
    /// Recovered sandboxes whose VM was gone with no current snapshot:
    /// `crashed`, to be booted afresh from their disks.
    pub crashed: Vec<String>,
    /// How long recovery took, in milliseconds.
    pub took_ms: u64,
    /// Sandbox ID → why it is `unknown`.
    pub unknown: Vec<(String, String)>,
    pub orphans_removed: Vec<String>,
}

pub async fn recover(st: &Shared) -> Report {
    let t0 = std::time::Instant::now();
    let mut report = recover_rows(st).await;
    report.took_ms = crate::state::millis(t0.elapsed());
    report
}

async fn recover_rows(st: &Shared) -> Report {
    let mut report = Report::default();
    let rows = match st.db(|s| s.recovery_rows()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e.message, "recovery: cannot read sandboxes");
            return report;
        }
    };
    let mut keep = Vec::new();
    for row in rows {
        // Everything of a row stays on disk (kept for inspection) except
        // the half-built leftovers of a create the daemon died in: those
        // cannot be recovered, and the sweep below stops their VMM.
        let half_built = matches!(&row.sandbox, Ok(sb) if sb.vm_state.is_none());
        if !half_built {
            keep.push(row.id.clone());
        }
        let sb = match row.sandbox {
            Ok(sb) => sb,
            Err(e) => {
                mark(
                    st,
                    &row.id,
                    format!("unreadable store row: {e}"),
                    &mut report,
                )
                .await;
                continue;
            }
        };
        if sb.engine != st.engine_name {
            // Another engine's sandbox (e.g. the daemon moved from Docker
            // to QEMU): left as it is, clearly marked.
            mark(
                st,
                &sb.id,
                format!(
                    "created by the {} engine; this daemon runs {}",
                    sb.engine, st.engine_name
                ),
                &mut report,
            )
            .await;
            continue;
        }
        let state: Option<VmState> = match sb.vm_state_as() {
            Ok(s) => s,
            Err(e) => {
                mark(
                    st,
                    &sb.id,
                    format!("unreadable engine state: {e}"),
                    &mut report,
                )
                .await;
                continue;
            }
        };
        let Some(mut state) = state else {
            mark(
                st,
                &sb.id,
                "the daemon stopped while this sandbox was being created; its partial resources were removed (destroy it and create it again)".into(),
                &mut report,
            )
            .await;
            continue;
        };
        // The store's generation is authoritative (it is written after every
        // boot and restore); never accept an older one from the JSON.
        state.generation = state.generation.max(sb.generation);
        match st.engine.recover(state).await {
            Ok(info) => {
                let status = crate::state::store_status(info.status);
                match info.status {
                    Status::Running => report.adopted.push(sb.id.clone()),
                    Status::Crashed => report.crashed.push(sb.id.clone()),
                    Status::Stopped | Status::Unknown => {}
                }
                let upd = RuntimeUpdate {
                    status: Some(status),
                    status_reason: info.reason.clone(),
                    ip: Some(info.ip.clone()),
                    ..Default::default()
                };
                let id = sb.id.clone();
                if let Err(e) = st.db(move |s| s.update_runtime(&id, &upd)).await {
                    tracing::warn!(sandbox = sb.id, error = %e.message, "recovery: store update failed");
                }
                report.recovered.push(sb.id.clone());
            }
            Err(e) => mark(st, &sb.id, e.to_string(), &mut report).await,
        }
    }

    match st.engine.cleanup_orphans(&keep).await {
        Ok(r) => report.orphans_removed = r,
        Err(e) => tracing::warn!(error = %e, "recovery: orphan clean-up failed"),
    }
    if let Ok(released) = st.db(|s| s.detach_orphans()).await {
        for a in released {
            tracing::info!(
                volume = a.volume_name,
                sandbox = a.sandbox_id,
                "released a stale volume attachment"
            );
        }
    }
    sweep_files(st).await;
    report
}

async fn mark(st: &Shared, id: &str, reason: String, report: &mut Report) {
    tracing::warn!(sandbox = id, reason, "recovery: sandbox marked unknown");
    let (i, r) = (id.to_string(), reason.clone());
    let _ = st
        .db(move |s| s.set_status(&i, SandboxStatus::Unknown, &r))
        .await;
    report.unknown.push((id.to_string(), reason));
}

/// Volume files without a row, and `*.tmp` snapshot directories.
async fn sweep_files(st: &Shared) {
    let Ok(vols) = st.db(|s| s.list_all_volumes()).await else {
        return;
    };
    let known: std::collections::HashSet<String> = vols.into_iter().map(|v| v.file_path).collect();
    let data = st.cfg.data_dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for sub in ["volumes", "snapshots"] {
            let Ok(users) = std::fs::read_dir(data.join(sub)) else {
                continue;
            };
            for u in users.flatten() {
                let Ok(entries) = std::fs::read_dir(u.path()) else {
                    continue;
                };
                for e in entries.flatten() {
                    let p = e.path();
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stale = if sub == "volumes" {
                        !known.contains(&p.to_string_lossy().into_owned())
                    } else {
                        name.ends_with(".tmp")
                    };
                    if stale {
                        tracing::info!(path = %p.display(), "removing an orphaned file");
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            }
        }
    })
    .await;
}
