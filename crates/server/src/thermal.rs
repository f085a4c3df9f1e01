//! The thermal manager: hot → warm after `warm_timeout` idle with no client
//! attached, warm → cold after `cold_timeout` warm, timeouts from the
//! config (docs/engine.md, "Thermal states").
//!
//! Idleness combines the daemon's own activity cache (every API touch) and
//! the agent's `last_activity_unix`. The agent's clock is the guest's, which
//! may be offset from the host's, so its value is only used to notice *that*
//! the guest was active since the last look (it moved), and the host clock
//! measures the idle time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bhatti_engine::contract::Thermal;
use bhatti_engine::EngineExt;
use bhatti_store::{Sandbox, SandboxStatus};

use crate::state::Shared;

const ACTIVITY_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Consecutive agent failures before a hot sandbox is paused without it.
const FORCE_PAUSE_AFTER: u32 = 10;
/// Consecutive cold-snapshot failures before the sandbox is marked unknown.
const UNKNOWN_AFTER: u32 = 3;

#[derive(Default)]
struct Track {
    guest_last: i64,
    agent_failures: u32,
    stop_failures: u32,
    warm_since: Option<Instant>,
}

pub struct Thermostat {
    st: Shared,
    tracks: HashMap<String, Track>,
}

impl Thermostat {
    pub fn new(st: Shared) -> Thermostat {
        Thermostat {
            st,
            tracks: HashMap::new(),
        }
    }

    pub async fn run(mut self, stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticker = crate::ticker::Ticker::new(self.st.cfg.thermal.tick(), stop);
        while ticker.tick().await {
            self.tick().await;
        }
    }

    pub async fn tick(&mut self) {
        let rows = match self.st.db(|s| s.list_all_sandboxes()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e.message, "thermal: cannot list sandboxes");
                return;
            }
        };
        self.tracks.retain(|id, _| rows.iter().any(|r| &r.id == id));
        for sb in rows {
            if sb.status != SandboxStatus::Running || sb.keep_hot {
                continue;
            }
            match self.st.engine.thermal(&sb.id) {
                Ok(Thermal::Hot) => self.maybe_pause(&sb).await,
                Ok(Thermal::Warm) => self.maybe_freeze(&sb).await,
                _ => {}
            }
        }
    }

    async fn maybe_pause(&mut self, sb: &Sandbox) {
        let st = self.st.clone();
        let warm = st.cfg.thermal.warm();
        let now = Instant::now();
        if st.pinned(&sb.id) {
            st.touch(&sb.id);
            return;
        }
        let touched = st.last_touch(&sb.id).unwrap_or_else(|| {
            st.touch(&sb.id);
            now
        });
        if now.duration_since(touched) < warm {
            return;
        }
        let track = self.tracks.entry(sb.id.clone()).or_default();
        match tokio::time::timeout(ACTIVITY_TIMEOUT, st.engine.activity(&sb.id)).await {
            Ok(Ok(a)) => {
                track.agent_failures = 0;
                if a.last_activity_unix > track.guest_last {
                    let first = track.guest_last == 0;
                    track.guest_last = a.last_activity_unix;
                    if !first {
                        // The guest did something since the last look.
                        st.touch(&sb.id);
                        return;
                    }
                }
                if a.attached_sessions > 0 {
                    st.touch(&sb.id);
                    return;
                }
                self.pause(sb, "thermal.pause").await;
            }
            _ => {
                track.agent_failures = track.agent_failures.saturating_add(1);
                if track.agent_failures >= FORCE_PAUSE_AFTER {
                    track.agent_failures = 0;
                    self.pause(sb, "thermal.force_pause").await;
                }
            }
        }
    }

    async fn pause(&mut self, sb: &Sandbox, event: &str) {
        let st = &self.st;
        match st.engine.pause(&sb.id).await {
            Ok(()) => {
                // The cold timer starts at the pause.
                st.touch(&sb.id);
                self.tracks.entry(sb.id.clone()).or_default().warm_since = Some(Instant::now());
                st.events
                    .emit(&sb.user_id, &sb.id, event, serde_json::json!({}));
                tracing::info!(sandbox = sb.id, event, "paused");
            }
            Err(e) => tracing::warn!(sandbox = sb.id, error = %e, "thermal: pause failed"),
        }
    }

    async fn maybe_freeze(&mut self, sb: &Sandbox) {
        let st = self.st.clone();
        let track = self.tracks.entry(sb.id.clone()).or_default();
        let since = match (track.warm_since, st.last_touch(&sb.id)) {
            (Some(w), Some(t)) => w.max(t),
            (Some(w), None) => w,
            (None, Some(t)) => t,
            (None, None) => {
                track.warm_since = Some(Instant::now());
                return;
            }
        };
        if since.elapsed() < st.cfg.thermal.cold() {
            return;
        }
        let r = tokio::time::timeout(STOP_TIMEOUT, st.engine.stop(&sb.id)).await;
        match r {
            Ok(Ok(())) => {
                track.stop_failures = 0;
                track.warm_since = None;
                let _ = st.persist(&sb.id).await;
                st.events.emit(
                    &sb.user_id,
                    &sb.id,
                    "sandbox.stopped",
                    serde_json::json!({"reason": "thermal"}),
                );
                st.events.emit(
                    &sb.user_id,
                    &sb.id,
                    "thermal.snapshot",
                    serde_json::json!({}),
                );
                tracing::info!(sandbox = sb.id, "snapshotted to disk (cold)");
            }
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                track.stop_failures = track.stop_failures.saturating_add(1);
                st.events.emit(
                    &sb.user_id,
                    &sb.id,
                    "thermal.snapshot_failed",
                    serde_json::json!({"error": why}),
                );
                tracing::warn!(sandbox = sb.id, error = why, "thermal: snapshot failed");
                if track.stop_failures >= UNKNOWN_AFTER {
                    let (id, reason) = (
                        sb.id.clone(),
                        format!("cold snapshot failed {UNKNOWN_AFTER} times: {why}"),
                    );
                    let _ = st
                        .db(move |s| s.set_status(&id, SandboxStatus::Unknown, &reason))
                        .await;
                }
            }
        }
    }
}
