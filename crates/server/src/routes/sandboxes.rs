//! Sandbox lifecycle routes: list, create, get, patch, destroy, stop,
//! start, timeout. Thin: the rules live in [`crate::service::sandboxes`].

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_api as api;
use bhatti_engine::contract::Thermal;
use bhatti_engine::net::EgressPolicy;
use bhatti_store::{Sandbox, SandboxStatus};
use serde::Deserialize;

use super::body::{JsonBody, OptionalJsonBody};
use super::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::service::publish;
use crate::service::sandboxes as service;
use crate::state::Shared;

pub fn to_api(sb: &Sandbox, thermal: Option<Thermal>) -> api::Sandbox {
    api::Sandbox {
        id: sb.id.clone(),
        name: sb.name.clone(),
        status: match sb.status {
            SandboxStatus::Running => api::SandboxStatus::Running,
            SandboxStatus::Stopped => api::SandboxStatus::Stopped,
            SandboxStatus::Crashed => api::SandboxStatus::Crashed,
            SandboxStatus::Unknown => api::SandboxStatus::Unknown,
        },
        status_reason: sb.status_reason.clone(),
        ip: sb.ip.clone(),
        engine: api::EngineKind::from_wire(&sb.engine),
        template_id: sb.template_id.clone(),
        cpus: sb.cpus,
        memory_mb: sb.memory_mb,
        disk_size_mb: sb.disk_size_mb,
        image: sb.image.clone(),
        labels: sb.labels.clone(),
        keep_hot: sb.keep_hot,
        egress: egress_of(sb),
        created_by: sb.user_id.clone(),
        created_at: sb.created_at.clone(),
        stopped_at: sb.stopped_at.clone(),
        thermal: thermal.map(|t| match t {
            Thermal::Hot => api::ThermalState::Hot,
            Thermal::Warm => api::ThermalState::Warm,
            Thermal::Cold => api::ThermalState::Cold,
        }),
        expires_at: sb.expires_at.clone(),
        on_expiry: sb.on_expiry.as_str().to_string(),
        metadata: sb.metadata.clone(),
        urls: Vec::new(),
    }
}

fn thermal_of(st: &Shared, sb: &Sandbox) -> Option<Thermal> {
    if sb.status == SandboxStatus::Running {
        st.engine.thermal(&sb.id).ok()
    } else {
        None
    }
}

/// `label=a=b&label=c=d`: repeated keys, parsed by hand since serde's
/// urlencoded reader takes only the last value of a key. Any other
/// parameter is refused, as the document lists only `label`.
fn label_query(q: Option<&str>) -> ServiceResult<Vec<String>> {
    let mut label = Vec::new();
    for kv in q.unwrap_or_default().split('&') {
        match kv.split_once('=') {
            Some((k, v)) if percent_decode(k) == "label" => label.push(percent_decode(v)),
            _ if kv.is_empty() => {}
            _ => {
                return Err(ServiceError::bad_request(format!(
                    "unknown query parameter {:?} (only label=key=value)",
                    percent_decode(kv.split('=').next().unwrap_or(kv))
                )))
            }
        }
    }
    Ok(label)
}

pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> ServiceResult<Json<Vec<api::Sandbox>>> {
    let labels = label_query(q.as_deref())?;
    let rows = service::list(&st, &user, &labels).await?;
    let mut urls = publish::urls(&st, &user).await?;
    Ok(Json(
        rows.iter()
            .map(|sb| api::Sandbox {
                urls: urls.remove(&sb.id).unwrap_or_default(),
                ..to_api(sb, thermal_of(&st, sb))
            })
            .collect(),
    ))
}

/// Minimal `%XX` and `+` decoding for query values.
pub fn percent_decode(s: &str) -> String {
    let mut rest = s.as_bytes();
    let mut out = Vec::with_capacity(rest.len());
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        match c {
            b'+' => out.push(b' '),
            b'%' => match tail
                .split_first_chunk::<2>()
                .and_then(|(digits, after)| Some((hex_byte(digits)?, after)))
            {
                Some((byte, after)) => {
                    out.push(byte);
                    rest = after;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte two hex digits spell (`None` unless both are hex digits).
fn hex_byte(digits: &[u8; 2]) -> Option<u8> {
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

pub async fn get_one(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::Sandbox>> {
    let sb = st.sandbox(&user, &id).await?;
    Ok(Json(api::Sandbox {
        urls: publish::urls_of(&st, &sb).await?,
        ..to_api(&sb, thermal_of(&st, &sb))
    }))
}

/// An engine policy as the API shows it (the shape requests use).
pub fn egress_to_api(p: &EgressPolicy) -> api::Egress {
    match p {
        EgressPolicy::Public => api::Egress::Mode("public".into()),
        EgressPolicy::Deny => api::Egress::Mode("deny".into()),
        EgressPolicy::Allow(c) => api::Egress::Allow(c.iter().map(ToString::to_string).collect()),
    }
}

/// The policy the engine last persisted for the sandbox.
fn egress_of(sb: &Sandbox) -> Option<api::Egress> {
    service::egress_policy(sb).as_ref().map(egress_to_api)
}

fn existing(sb: &Sandbox, st: &Shared) -> Response {
    let mut r = (StatusCode::OK, Json(to_api(sb, thermal_of(st, sb)))).into_response();
    r.headers_mut()
        .insert(api::EXISTING_HEADER, HeaderValue::from_static("true"));
    r
}

pub async fn create(
    State(st): State<Shared>,
    Caller(user): Caller,
    JsonBody(req): JsonBody<api::CreateSandbox>,
) -> ServiceResult<Response> {
    let c = service::create_for_caller(&st, &user, req).await?;
    if c.existing {
        return Ok(existing(&c.sandbox, &st));
    }
    let sb = c.sandbox;
    Ok((StatusCode::CREATED, Json(to_api(&sb, thermal_of(&st, &sb)))).into_response())
}

pub async fn patch(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::PatchSandbox>,
) -> ServiceResult<Json<api::Sandbox>> {
    let sb = service::patch(&st, &user, &id, &req).await?;
    Ok(Json(to_api(&sb, thermal_of(&st, &sb))))
}

pub async fn destroy(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::StatusBody>> {
    service::destroy(&st, &user, &id).await?;
    Ok(Json(api::StatusBody {
        status: "destroyed".into(),
    }))
}

pub async fn stop(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::Sandbox>> {
    let sb = service::stop(&st, &user, &id, "api").await?;
    Ok(Json(to_api(&sb, None)))
}

pub async fn start(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<api::StartSandbox>,
) -> ServiceResult<Json<api::Sandbox>> {
    let sb = service::start(&st, &user, &id, req.force).await?;
    Ok(Json(to_api(&sb, thermal_of(&st, &sb))))
}

/// `POST /sandboxes/{id}/timeout`: the lifetime from now (0 or none: no
/// limit), and optionally what happens when it ends.
pub async fn set_timeout(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<api::SetTimeout>,
) -> ServiceResult<Json<api::Sandbox>> {
    let sb =
        service::set_timeout_as_asked(&st, &user, &id, req.timeout_secs, req.on_expiry.as_deref())
            .await?;
    Ok(Json(to_api(&sb, thermal_of(&st, &sb))))
}

/// `GET /sandboxes/:id/stats`: one reading from the guest (the same one
/// E2B's `get_metrics` answers with).
pub async fn stats(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> ServiceResult<Json<api::SandboxStats>> {
    let m = crate::service::metrics::for_caller(&st, &user, &id).await?;
    Ok(Json(api::SandboxStats {
        at: bhatti_store::time::format_ts(m.at),
        cpu_count: m.cpu_count,
        cpu_used_pct: m.cpu_used_pct,
        mem_used_bytes: m.mem_used,
        mem_total_bytes: m.mem_total,
        mem_cache_bytes: m.mem_cache,
        disk_used_bytes: m.disk_used,
        disk_total_bytes: m.disk_total,
    }))
}

/// `GET /sandboxes/{id}/console`'s query.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsoleQuery {
    #[serde(default)]
    bytes: Option<i64>,
}

pub async fn console(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<ConsoleQuery>, axum::extract::rejection::QueryRejection>,
) -> ServiceResult<Response> {
    let axum::extract::Query(q) = q?;
    let text = service::console(&st, &user, &id, q.bytes).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(percent_decode("a%3Db+c"), "a=b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%+1x"), "% 1x", "a sign is not a hex digit");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41%ff%2b"), "A\u{fffd}+");
    }
}
