//! E2B's sandbox routes over [`crate::service::sandboxes`]: create, list
//! (v1 and v2, with state and metadata filters and pagination), get, kill,
//! timeout and refreshes, pause, resume and connect.
//!
//! E2B's `paused` is bhatti's `stopped`: the sandbox is snapshotted to disk
//! with its memory, so a resume or connect wakes it with its processes.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_api as api;
use bhatti_store::{ExpiryAction, Sandbox, SandboxStatus, User};
use serde::{Deserialize, Serialize};

use super::{E2bError, E2bResult, ENVD_VERSION};
use crate::error::ServiceError;
use crate::routes::body::parse;
use crate::routes::sandboxes::percent_decode;
use crate::routes::Caller;
use crate::service::sandboxes as service;
use crate::service::snapshots;
use crate::state::Shared;

/// The SDKs' default lifetime when a request gives none (E2B's API says 15 s;
/// its SDKs always send one).
pub(super) const DEFAULT_TIMEOUT_SECS: u64 = 15;
/// `endAt` for a sandbox without a lifetime (bhatti-native ones).
const NO_END: &str = "9999-12-31T23:59:59.000Z";
/// Largest page of a v2 list.
const MAX_PAGE: usize = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    auto_pause: bool,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    // Accepted and ignored: bhatti always authenticates envd traffic, and
    // the rest have no bhatti counterpart yet.
    #[serde(default)]
    #[allow(dead_code)]
    secure: Option<bool>,
}

/// E2B's `Sandbox` (create, resume, connect).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct E2bSandbox {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    alias: String,
    #[serde(rename = "clientID")]
    client_id: String,
    envd_version: String,
    envd_access_token: String,
    domain: Option<String>,
}

/// E2B's `SandboxDetail` and `ListedSandbox`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    #[serde(rename = "templateID")]
    template_id: String,
    alias: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: String,
    started_at: String,
    end_at: String,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    metadata: BTreeMap<String, String>,
    state: &'static str,
    envd_version: String,
    domain: Option<String>,
}

/// The template an E2B sandbox reports: what it was asked for by, else its
/// image.
pub(super) fn template_of(sb: &Sandbox) -> String {
    sb.labels
        .get(TEMPLATE_LABEL)
        .cloned()
        .unwrap_or_else(|| sb.image.clone())
}

/// Label recording the `templateID` a sandbox was created with (as E2B's
/// responses echo it).
pub(super) const TEMPLATE_LABEL: &str = "e2b.dev/template";

fn state_of(sb: &Sandbox) -> &'static str {
    match sb.status {
        SandboxStatus::Running => "running",
        // Stopped is snapshotted with memory: E2B's paused. Unknown cannot
        // run, and shows as paused so that a connect reports why.
        SandboxStatus::Stopped | SandboxStatus::Crashed | SandboxStatus::Unknown => "paused",
    }
}

/// The sandbox's envd access token (see `super::token`).
fn access_token(st: &Shared, sb: &Sandbox) -> Result<String, ServiceError> {
    st.envd_key
        .token(&sb.id)
        .map_err(|e| ServiceError::internal(format!("envd key: {e}")))
}

pub(super) fn e2b_sandbox(st: &Shared, sb: &Sandbox) -> Result<E2bSandbox, ServiceError> {
    Ok(E2bSandbox {
        template_id: template_of(sb),
        sandbox_id: sb.id.clone(),
        alias: template_of(sb),
        client_id: "bhatti".into(),
        envd_version: ENVD_VERSION.into(),
        envd_access_token: access_token(st, sb)?,
        domain: None,
    })
}

fn detail(sb: &Sandbox) -> Detail {
    Detail {
        template_id: template_of(sb),
        alias: template_of(sb),
        sandbox_id: sb.id.clone(),
        client_id: "bhatti".into(),
        started_at: sb.created_at.clone(),
        end_at: sb.expires_at.clone().unwrap_or_else(|| NO_END.into()),
        cpu_count: sb.cpus,
        memory_mb: sb.memory_mb,
        disk_size_mb: sb.disk_size_mb,
        metadata: sb.metadata.clone(),
        state: state_of(sb),
        envd_version: ENVD_VERSION.into(),
        domain: None,
    }
}

/// What an E2B `templateID` names.
enum Source {
    /// A bhatti template (by ID or name), or an image by name; `base`
    /// (E2B's default) is the default image.
    Boot,
    /// One of the caller's snapshots (what `create_snapshot` answered):
    /// the sandbox is restored from it, memory and all.
    Snapshot,
}

/// `templateID` → the native create: a bhatti template by ID or name, then
/// a snapshot by name, else an image by name.
async fn resolve_template(
    st: &Shared,
    user: &User,
    t: &str,
    req: &mut api::CreateSandbox,
) -> Source {
    if t.is_empty() || t == "base" {
        return Source::Boot;
    }
    if crate::service::templates::get(st, user, t).await.is_ok() {
        req.template_id = Some(t.to_string());
        return Source::Boot;
    }
    if crate::service::snapshots::get(st, user, t).await.is_ok() {
        return Source::Snapshot;
    }
    req.image = Some(t.to_string());
    Source::Boot
}

pub async fn create(
    State(st): State<Shared>,
    Caller(user): Caller,
    body: Bytes,
) -> E2bResult<Response> {
    let req: NewSandbox = parse(&body)?;
    if req.template_id.is_empty() {
        return Err(ServiceError::bad_request("templateID is required").into());
    }
    let mut native = api::CreateSandbox {
        name: Some(format!("e2b-{}", bhatti_store::ids::random_hex(4))),
        env: req.env_vars.unwrap_or_default(),
        metadata: req.metadata.unwrap_or_default(),
        timeout_secs: Some(req.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS)),
        on_expiry: Some(expiry_action(req.auto_pause).as_str().into()),
        egress: match req.allow_internet_access {
            Some(false) => Some(api::Egress::Mode("deny".into())),
            _ => None,
        },
        ..Default::default()
    };
    native
        .labels
        .insert(TEMPLATE_LABEL.into(), label_value(&req.template_id));
    let sb = match resolve_template(&st, &user, &req.template_id, &mut native).await {
        Source::Boot => {
            service::create_for_caller(&st, &user, native)
                .await
                // An unknown template is E2B's 404 with the name it was given.
                .map_err(|e| {
                    e.or_not_found(|| format!("template {:?} not found", req.template_id))
                })?
                .sandbox
        }
        // Its processes and environment are the snapshot's: `envVars`
        // cannot reach into a restored memory, as in E2B.
        Source::Snapshot => {
            let r = snapshots::Resume {
                name: native.name.unwrap_or_default(),
                labels: native.labels,
                metadata: native.metadata,
                timeout_secs: native.timeout_secs,
                on_expiry: expiry_action(req.auto_pause),
            };
            snapshots::resume(&st, &user, &req.template_id, r).await?
        }
    };
    Ok((StatusCode::CREATED, Json(e2b_sandbox(&st, &sb)?)).into_response())
}

/// E2B's `autoPause` as what happens at the end of a lifetime.
pub(super) fn expiry_action(auto_pause: bool) -> ExpiryAction {
    if auto_pause {
        ExpiryAction::Pause
    } else {
        ExpiryAction::Kill
    }
}

/// A template name as a label value (label values are `[A-Za-z0-9._-]`).
pub(super) fn label_value(t: &str) -> String {
    t.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

/// `metadata=k1%3Dv1%26k2%3Dv2` (the query is itself URL-encoded).
fn metadata_filter(raw: &str) -> BTreeMap<String, String> {
    percent_decode(raw)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// A list's query: sandbox filters (`metadata`, `state`), snapshot
/// filters (`sandboxID`, `name`), and paging.
#[derive(Default)]
pub(super) struct ListQuery {
    metadata: BTreeMap<String, String>,
    states: Vec<String>,
    pub(super) sandbox_id: Option<String>,
    pub(super) name: Option<String>,
    limit: Option<usize>,
    next_token: Option<usize>,
}

pub(super) fn list_query(q: Option<&str>) -> Result<ListQuery, ServiceError> {
    let mut out = ListQuery::default();
    for kv in q.unwrap_or_default().split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "metadata" => out.metadata.extend(metadata_filter(v)),
            "state" => out.states.extend(
                percent_decode(v)
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            "limit" => {
                out.limit = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            ServiceError::bad_request(format!("limit must be 1 to {MAX_PAGE}"))
                        })?,
                )
            }
            "nextToken" => {
                out.next_token = Some(
                    percent_decode(v)
                        .parse()
                        .map_err(|_| ServiceError::bad_request("invalid nextToken"))?,
                )
            }
            "sandboxID" => out.sandbox_id = Some(percent_decode(v)),
            "name" => out.name = Some(percent_decode(v)),
            // Sorting and the remaining filters are accepted and ignored.
            _ => {}
        }
    }
    for s in &out.states {
        if s != "running" && s != "paused" {
            return Err(ServiceError::bad_request(format!(
                "state {s:?}: expected running or paused"
            )));
        }
    }
    Ok(out)
}

async fn listed(st: &Shared, user: &User, q: &ListQuery) -> Result<Vec<Sandbox>, ServiceError> {
    let uid = user.id.clone();
    let rows = st
        .db(move |s| s.list_sandboxes(&uid, &BTreeMap::new()))
        .await?;
    Ok(rows
        .into_iter()
        .filter(|sb| {
            q.metadata
                .iter()
                .all(|(k, v)| sb.metadata.get(k) == Some(v))
        })
        .filter(|sb| q.states.is_empty() || q.states.iter().any(|s| s == state_of(sb)))
        .collect())
}

/// `GET /sandboxes` (v1): the running ones.
pub async fn list_v1(
    State(st): State<Shared>,
    Caller(user): Caller,
    RawQuery(q): RawQuery,
) -> E2bResult<Json<Vec<Detail>>> {
    let mut q = list_query(q.as_deref())?;
    q.states = vec!["running".into()];
    let rows = listed(&st, &user, &q).await?;
    Ok(Json(rows.iter().map(detail).collect()))
}

/// `GET /v2/sandboxes`: running and paused, paged by `limit` and
/// `nextToken` (an offset; `X-Next-Token` names the next page).
pub async fn list_v2(
    State(st): State<Shared>,
    Caller(user): Caller,
    RawQuery(q): RawQuery,
) -> E2bResult<Response> {
    let q = list_query(q.as_deref())?;
    let rows = listed(&st, &user, &q).await?;
    Ok(page(&q, &rows, detail))
}

/// One page of `rows` as `limit` and `nextToken` (an offset) ask, with
/// `X-Next-Token` naming the next page when there is one.
pub(super) fn page<T, U: Serialize>(q: &ListQuery, rows: &[T], f: impl Fn(&T) -> U) -> Response {
    let from = q.next_token.unwrap_or(0).min(rows.len());
    let limit = q.limit.unwrap_or(MAX_PAGE);
    let end = from.saturating_add(limit).min(rows.len());
    let page: Vec<U> = rows[from..end].iter().map(f).collect();
    let mut resp = Json(page).into_response();
    if end < rows.len() {
        if let Ok(v) = HeaderValue::from_str(&end.to_string()) {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    resp
}

pub async fn get_one(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> E2bResult<Json<Detail>> {
    let sb = st.sandbox(&user, &id).await?;
    Ok(Json(detail(&sb)))
}

/// E2B's `SandboxMetric`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    timestamp: String,
    timestamp_unix: i64,
    cpu_count: u32,
    cpu_used_pct: f32,
    mem_used: u64,
    mem_total: u64,
    mem_cache: u64,
    disk_used: u64,
    disk_total: u64,
}

/// One reading taken now: bhatti keeps no metrics history, so whatever the
/// interval asked for, the answer is the current state.
pub async fn metrics(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> E2bResult<Json<Vec<Metric>>> {
    let sb = st.sandbox(&user, &id).await?;
    let m = crate::service::metrics::sample(&st, &sb).await?;
    let unix =
        m.at.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Ok(Json(vec![Metric {
        timestamp: bhatti_store::time::format_ts(m.at),
        timestamp_unix: unix,
        cpu_count: m.cpu_count,
        cpu_used_pct: m.cpu_used_pct,
        mem_used: m.mem_used,
        mem_total: m.mem_total,
        mem_cache: m.mem_cache,
        disk_used: m.disk_used,
        disk_total: m.disk_total,
    }]))
}

pub async fn kill(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    service::destroy(&st, &user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A JSON body the SDK may leave out (then the type's default).
pub(super) fn optional<T: Default + serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, ServiceError> {
    if body.is_empty() {
        Ok(T::default())
    } else {
        parse(body)
    }
}

#[derive(Deserialize)]
struct Timeout {
    timeout: u64,
}

/// `POST /sandboxes/{id}/timeout`: the lifetime, from now.
pub async fn timeout(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<StatusCode> {
    let t: Timeout = parse(&body)?;
    service::set_timeout(&st, &user, &id, Some(t.timeout), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct Refresh {
    #[serde(default)]
    duration: Option<u64>,
}

/// `POST /sandboxes/{id}/refreshes`: keeps it alive `duration` (at most an
/// hour) from now, never shortening the lifetime it has.
pub async fn refresh(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<StatusCode> {
    let r: Refresh = optional(&body)?;
    let secs = r.duration.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if secs > 3600 {
        return Err(ServiceError::bad_request("duration is at most 3600 seconds").into());
    }
    let sb = st.sandbox(&user, &id).await?;
    let new_end = service::expiry_from_now(secs)?;
    if sb
        .expires_at
        .as_deref()
        .is_some_and(|cur| cur >= new_end.as_str())
    {
        return Ok(StatusCode::NO_CONTENT);
    }
    service::set_timeout(&st, &user, &id, Some(secs), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/pause`: snapshotted to disk with its memory; 409
/// when it is paused already.
pub async fn pause(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    let sb = st.sandbox(&user, &id).await?;
    if sb.status != SandboxStatus::Running {
        return Err(ServiceError::conflict(format!("sandbox {id:?} is already paused")).into());
    }
    service::stop(&st, &user, &id, "e2b pause").await?;
    // A paused sandbox has no lifetime running; resume sets a new one.
    let sid = sb.id.clone();
    let action = sb.on_expiry;
    st.db(move |s| s.set_expiry(&sid, None, action)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Resume {
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    auto_pause: Option<bool>,
}

/// Wakes a sandbox and starts its lifetime again; `true` when it was
/// paused.
async fn wake(
    st: &Shared,
    user: &User,
    id: &str,
    r: &Resume,
) -> Result<(Sandbox, bool), ServiceError> {
    let sb = st.sandbox(user, id).await?;
    let was_paused = sb.status != SandboxStatus::Running;
    st.ensure_hot(&sb).await?;
    let action = r.auto_pause.map(expiry_action);
    let timeout = r.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    // Connect only extends: a longer lifetime already set is kept.
    let new_end = service::expiry_from_now(timeout)?;
    let keep = !was_paused
        && sb
            .expires_at
            .as_deref()
            .is_some_and(|cur| cur >= new_end.as_str());
    let sb = if keep {
        st.sandbox(user, id).await?
    } else {
        service::set_timeout(st, user, id, Some(timeout), action).await?
    };
    Ok((sb, was_paused))
}

/// `POST /sandboxes/{id}/resume` (deprecated in E2B): 409 when running.
pub async fn resume(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<Response> {
    let r: Resume = optional(&body)?;
    let sb = st.sandbox(&user, &id).await?;
    if sb.status == SandboxStatus::Running {
        return Err(E2bError(ServiceError::conflict(format!(
            "sandbox {id:?} is already running"
        ))));
    }
    let (sb, _) = wake(&st, &user, &id, &r).await?;
    Ok((StatusCode::CREATED, Json(e2b_sandbox(&st, &sb)?)).into_response())
}

/// `POST /sandboxes/{id}/connect`: 200 when it was running, 201 when it
/// was woken; the lifetime is only ever extended.
pub async fn connect(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<Response> {
    let r: Resume = optional(&body)?;
    let (sb, woken) = wake(&st, &user, &id, &r).await?;
    let status = if woken {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(e2b_sandbox(&st, &sb)?)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_are_decoded_twice() {
        let m = metadata_filter("user%3Dabc%26app%3Dprod%2520x");
        assert_eq!(m.get("user").map(String::as_str), Some("abc"));
        assert_eq!(m.get("app").map(String::as_str), Some("prod x"));
    }

    #[test]
    fn list_queries() {
        let q = list_query(Some("state=running,paused&limit=2&nextToken=4")).unwrap();
        assert_eq!(q.states, ["running", "paused"]);
        assert_eq!((q.limit, q.next_token), (Some(2), Some(4)));
        assert!(list_query(Some("limit=0")).is_err());
        assert!(list_query(Some("state=dead")).is_err());
    }
}
