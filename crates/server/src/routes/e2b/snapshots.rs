//! E2B's forks and snapshots over [`crate::service::snapshots`]:
//! `sbx.fork(count, timeout)`, `create_snapshot(name)`, `list_snapshots`,
//! `delete_snapshot` (E2B deletes a snapshot as a template), and a create
//! whose `templateID` is a snapshot (in `control`).
//!
//! A snapshot's E2B `snapshotID` is its bhatti name: the native API and
//! `bhatti snapshot ls` show the same object. Both need the microVM engine;
//! Docker answers 501.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_store::{Sandbox, Snapshot};
use serde::{Deserialize, Serialize};

use super::control::{
    e2b_sandbox, expiry_action, label_value, list_query, optional, page, template_of, E2bSandbox,
    DEFAULT_TIMEOUT_SECS, TEMPLATE_LABEL,
};
use super::E2bResult;
use crate::error::ServiceError;
use crate::routes::body::parse;
use crate::routes::Caller;
use crate::service::snapshots as service;
use crate::state::Shared;

/// Most forks one request may ask for (E2B's own limit).
const MAX_FORKS: u32 = 100;

/// E2B's `SnapshotInfo`.
#[derive(Debug, Serialize)]
struct Info {
    #[serde(rename = "snapshotID")]
    snapshot_id: String,
    names: Vec<String>,
}

fn info(s: &Snapshot) -> Info {
    Info {
        snapshot_id: s.name.clone(),
        names: vec![s.name.clone()],
    }
}

#[derive(Debug, Default, Deserialize)]
struct NewSnapshot {
    #[serde(default)]
    name: Option<String>,
    // E2B's filesystem-only snapshots are a team feature it can refuse; a
    // bhatti checkpoint always has the memory, as `memory: true` asks.
    #[serde(default)]
    memory: Option<bool>,
}

/// `POST /sandboxes/{id}/snapshots`: the sandbox checkpointed, and kept
/// running. Without a name, one is made up (`snap-<hex>`).
pub async fn create(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<Response> {
    let req: NewSnapshot = optional(&body)?;
    if req.memory == Some(false) {
        return Err(ServiceError::bad_request(
            "filesystem-only snapshots are not supported: a bhatti snapshot keeps the memory",
        )
        .into());
    }
    let name = req
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("snap-{}", bhatti_store::ids::random_hex(6)));
    let s = service::take(&st, &user, &id, &name).await?;
    Ok((StatusCode::CREATED, Json(info(&s))).into_response())
}

/// The name part of E2B's `namespace/name:tag` (a filter may qualify it).
fn bare(name: &str) -> &str {
    let n = name.rsplit_once('/').map_or(name, |(_, n)| n);
    n.split_once(':').map_or(n, |(n, _)| n)
}

/// `GET /snapshots`: the caller's, filtered by `sandboxID` and `name`,
/// paged like the sandbox list.
pub async fn list(
    State(st): State<Shared>,
    Caller(user): Caller,
    RawQuery(q): RawQuery,
) -> E2bResult<Response> {
    let q = list_query(q.as_deref())?;
    let rows: Vec<Snapshot> = service::list(&st, &user)
        .await?
        .into_iter()
        .filter(|s| {
            q.sandbox_id
                .as_ref()
                .is_none_or(|id| &s.source_sandbox == id)
        })
        .filter(|s| q.name.as_deref().is_none_or(|n| bare(n) == s.name))
        .collect();
    Ok(page(&q, &rows, info))
}

/// `DELETE /templates/{id}`: E2B deletes snapshots as templates; only
/// snapshots are served here (404, which the SDK reads as "not there").
pub async fn delete(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    service::delete(&st, &user, bare(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct Fork {
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    count: Option<u32>,
}

/// E2B's `SandboxForkResult`: one of the two.
#[derive(Debug, Serialize)]
struct ForkResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<E2bSandbox>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
}

/// `POST /sandboxes/{id}/fork`: `count` sandboxes from one checkpoint of
/// this one, which keeps running. A fork carries the source's template and
/// metadata; each succeeds or fails on its own.
pub async fn fork(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> E2bResult<Response> {
    let req: Fork = if body.is_empty() {
        Fork::default()
    } else {
        parse(&body)?
    };
    let count = req.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(ServiceError::bad_request(format!("count must be 1 to {MAX_FORKS}")).into());
    }
    let src = st.sandbox(&user, &id).await?;
    let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let results = service::fork(&st, &user, &src.id, count, |_| fork_spec(&src, timeout)).await?;
    let out: Vec<ForkResult> = results
        .into_iter()
        .map(|r| match r.and_then(|sb| e2b_sandbox(&st, &sb)) {
            Ok(sb) => ForkResult {
                sandbox: Some(sb),
                error: None,
            },
            Err(e) => {
                let status = e.status();
                let message = if status.is_server_error() {
                    tracing::error!(error = %e.message, "fork failed");
                    "internal error".to_string()
                } else {
                    e.message
                };
                ForkResult {
                    sandbox: None,
                    error: Some(serde_json::json!({"code": status.as_u16(), "message": message})),
                }
            }
        })
        .collect();
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// What each fork of `src` is given: a name of its own, the source's
/// template label and metadata, and its lifetime.
fn fork_spec(src: &Sandbox, timeout: u64) -> service::Resume {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(TEMPLATE_LABEL.to_string(), label_value(&template_of(src)));
    service::Resume {
        name: format!("e2b-{}", bhatti_store::ids::random_hex(4)),
        labels,
        metadata: src.metadata.clone(),
        timeout_secs: Some(timeout),
        on_expiry: expiry_action(false),
    }
}

#[cfg(test)]
mod tests {
    use super::bare;

    #[test]
    fn qualified_names_filter_by_their_name() {
        assert_eq!(bare("team/snap-1:default"), "snap-1");
        assert_eq!(bare("snap-1:v2"), "snap-1");
        assert_eq!(bare("snap-1"), "snap-1");
    }
}
