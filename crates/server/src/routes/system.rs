//! `/health`, `/metrics` (Prometheus text) and `/openapi.json`, which is
//! assembled in [`super::openapi`].

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use bhatti_api as api;
use bhatti_engine::contract::Thermal;
use serde_json::Value;

use super::body::JsonBody;
use super::{Caller, VERSION};
use crate::error::ServiceResult;
use crate::service::pools;
use crate::state::Shared;

pub async fn health(State(st): State<Shared>) -> Json<api::Health> {
    let s = st.started.elapsed().as_secs();
    Json(api::Health {
        status: "ok".into(),
        uptime: format!("{}h{}m{}s", s / 3600, (s / 60) % 60, s % 60),
        version: VERSION.into(),
        engine: api::EngineKind::from_wire(st.engine_name),
    })
}

pub async fn metrics(State(st): State<Shared>, Caller(user): Caller) -> impl IntoResponse {
    let out = if st.cfg.admin_users.contains(&user.name) {
        daemon_metrics(&st).await
    } else {
        tenant_metrics(&st, &user).await
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn gauge_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP bhatti_{name} {help}\n# TYPE bhatti_{name} gauge"
    );
}

/// The sandboxes gauge: how many of `thermals` are in each state.
fn thermal_gauge(out: &mut String, thermals: &[Thermal]) {
    gauge_header(out, "sandboxes", "Sandboxes by thermal state.");
    for (t, state) in [
        ("hot", Thermal::Hot),
        ("warm", Thermal::Warm),
        ("cold", Thermal::Cold),
    ] {
        let n = thermals.iter().filter(|x| **x == state).count();
        let _ = writeln!(out, "bhatti_sandboxes{{thermal=\"{t}\"}} {n}");
    }
}

/// What a tenant may see: their own sandboxes, nothing about other users or
/// the daemon's traffic (request and failure counters reveal other tenants'
/// activity).
async fn tenant_metrics(st: &Shared, user: &bhatti_store::User) -> String {
    let uid = user.id.clone();
    let rows = st
        .db(move |s| s.list_sandboxes(&uid, &Default::default()))
        .await
        .unwrap_or_default();
    // A sandbox the engine does not know is on disk only: cold.
    let thermals: Vec<Thermal> = rows
        .iter()
        .map(|sb| st.engine.thermal(&sb.id).unwrap_or(Thermal::Cold))
        .collect();
    let mut out = String::new();
    thermal_gauge(&mut out, &thermals);
    out
}

/// The whole daemon, for the operators named in `admin_users`.
async fn daemon_metrics(st: &Shared) -> String {
    let c = &st.counters;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP bhatti_{name} {help}\n# TYPE bhatti_{name} counter\nbhatti_{name} {v}"
        );
    };
    counter(
        "api_requests_total",
        "API requests served.",
        c.requests.load(Ordering::Relaxed),
    );
    counter(
        "api_errors_total",
        "API requests that failed with 500.",
        c.errors.load(Ordering::Relaxed),
    );
    counter(
        "api_auth_failures_total",
        "Requests with a missing or unknown key.",
        c.auth_failures.load(Ordering::Relaxed),
    );
    counter(
        "api_rate_limited_total",
        "Requests refused by the rate limiter.",
        c.rate_limited.load(Ordering::Relaxed),
    );
    counter(
        "wakes_total",
        "Sandboxes woken by a request.",
        c.wakes.load(Ordering::Relaxed),
    );
    counter(
        "proxy_requests_total",
        "Requests through the sandbox proxy.",
        c.proxy_requests.load(Ordering::Relaxed),
    );
    counter(
        "events_dropped_total",
        "Events dropped because the recorder was full.",
        st.events.dropped(),
    );
    let infos = st.engine.list().await;
    let thermals: Vec<Thermal> = infos.iter().map(|i| i.thermal).collect();
    thermal_gauge(&mut out, &thermals);
    let _ = writeln!(
        out,
        "# HELP bhatti_websockets_active Open WebSocket sessions.\n# TYPE bhatti_websockets_active gauge\nbhatti_websockets_active {}",
        c.websockets_active.load(Ordering::Relaxed)
    );
    pool_metrics(&mut out, &pools::status(st));
    let _ = writeln!(
        out,
        "# HELP bhatti_uptime_seconds Seconds since the daemon started.\n# TYPE bhatti_uptime_seconds gauge\nbhatti_uptime_seconds {}",
        st.started.elapsed().as_secs()
    );
    out
}

/// `GET /admin/pools`.
pub async fn get_pools(
    State(st): State<Shared>,
    Caller(user): Caller,
) -> ServiceResult<Json<api::Pools>> {
    Ok(Json(pools::get(&st, &user)?))
}

/// `PUT /admin/pools`.
pub async fn set_pools(
    State(st): State<Shared>,
    Caller(user): Caller,
    JsonBody(req): JsonBody<api::SetPools>,
) -> ServiceResult<Json<api::Pools>> {
    Ok(Json(pools::set(&st, &user, req).await?))
}

/// A pool metric: its name, help text and value.
type PoolSeries = (&'static str, &'static str, fn(&api::PoolInfo) -> u64);

/// The warm pools: their sandboxes are the daemon's, not a user's, so
/// only the operators' metrics show them.
fn pool_metrics(out: &mut String, p: &api::Pools) {
    let gauges: [PoolSeries; 4] = [
        (
            "pool_ready",
            "Warm-pool sandboxes booted, paused and waiting.",
            |i| u64::from(i.ready),
        ),
        ("pool_size", "Warm-pool target sizes.", |i| {
            u64::from(i.size)
        }),
        (
            "pool_rss_bytes",
            "Resident memory of the ready warm-pool VMMs.",
            |i| i.rss_bytes,
        ),
        (
            "pool_template",
            "Whether the pool's template snapshot exists (1) or not (0).",
            |i| u64::from(i.template),
        ),
    ];
    let counters: [PoolSeries; 4] = [
        (
            "pool_hits_total",
            "Creates that took a warm-pool sandbox.",
            |i| i.hits,
        ),
        (
            "pool_misses_total",
            "Creates of a pooled shape that found the pool empty.",
            |i| i.misses,
        ),
        ("pool_refills_total", "Warm-pool sandboxes made.", |i| {
            i.refills
        }),
        (
            "pool_discarded_total",
            "Warm-pool sandboxes discarded unused.",
            |i| i.discarded,
        ),
    ];
    for (kind, list) in [("gauge", &gauges), ("counter", &counters)] {
        for (name, help, get) in list.iter() {
            let _ = writeln!(
                out,
                "# HELP bhatti_{name} {help}\n# TYPE bhatti_{name} {kind}"
            );
            for i in &p.pools {
                let _ = writeln!(
                    out,
                    "bhatti_{name}{{image=\"{}\",cpus=\"{}\",memory_mb=\"{}\"}} {}",
                    i.image.replace(['\\', '"', '\n'], "_"),
                    i.cpus,
                    i.memory_mb,
                    get(i)
                );
            }
        }
    }
}

pub async fn openapi_handler(Caller(_): Caller) -> Json<Value> {
    Json(super::openapi::openapi())
}
