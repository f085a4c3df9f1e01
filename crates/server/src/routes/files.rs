//! Files in a sandbox: read (streamed, with server-side truncation), list,
//! write (streamed, `Content-Length` required, atomic in the guest), stat.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_agent_client::ReadOptions;
use bhatti_api as api;
use bhatti_engine::EngineExt;
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::{ReaderStream, StreamReader};

use super::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::Shared;
use crate::validate;

/// Largest file a write accepts (the agent enforces the same).
pub const MAX_FILE: u64 = 100 << 20;

#[derive(Deserialize, Default)]
pub struct FileQuery {
    #[serde(default)]
    path: String,
    #[serde(default)]
    ls: Option<String>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    max_bytes: Option<i64>,
    #[serde(default)]
    mode: Option<String>,
}

type Q = Result<Query<FileQuery>, axum::extract::rejection::QueryRejection>;

fn info_to_api(f: bhatti_protocol::messages::FileInfo) -> api::FileInfo {
    api::FileInfo {
        name: f.name,
        size: f.size,
        mode: f.mode,
        is_dir: f.is_dir,
        mtime: f.mtime,
    }
}

fn nonneg(v: Option<i64>, what: &str) -> ApiResult<i64> {
    match v {
        Some(n) if n < 0 => Err(ApiError::bad_request(format!(
            "{what} must not be negative"
        ))),
        Some(n) => Ok(n),
        None => Ok(0),
    }
}

pub async fn read(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Q,
) -> ApiResult<Response> {
    let Query(q) = q?;
    validate::guest_path(&q.path)?;
    let opts = ReadOptions {
        offset: nonneg(q.offset, "offset")?,
        limit: nonneg(q.limit, "limit")?,
        max_bytes: nonneg(q.max_bytes, "max_bytes")?,
    };
    let sb = st.sandbox(&user, &id).await?;
    st.ensure_hot(&sb).await?;
    if matches!(q.ls.as_deref(), Some("true" | "1")) {
        let list = st.engine.file_ls(&sb.id, &q.path).await?;
        return Ok(Json(list.into_iter().map(info_to_api).collect::<Vec<_>>()).into_response());
    }
    let info = st.engine.file_stat(&sb.id, &q.path).await?;
    if info.is_dir {
        return Err(ApiError::bad_request(format!(
            "{} is a directory (use ls=true)",
            q.path
        )));
    }
    let truncating = opts.offset > 0 || opts.limit > 0 || opts.max_bytes > 0;
    // The agent streams into one end of a pipe; the response body reads the
    // other, so a large file never sits in memory.
    let (mut w, r) = tokio::io::duplex(256 << 10);
    let agent = st.engine.agent(&sb.id)?;
    let path = q.path.clone();
    tokio::spawn(async move {
        if let Err(e) = agent.file_read(&path, opts, &mut w).await {
            tracing::debug!(error = %e, "file read ended early");
        }
    });
    let mut resp = Response::new(Body::from_stream(ReaderStream::new(r)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        api::FILE_SIZE_HEADER,
        HeaderValue::from(info.size.max(0) as u64),
    );
    if !truncating {
        h.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(info.size.max(0) as u64),
        );
    }
    Ok(resp)
}

pub async fn write(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Q,
    headers: HeaderMap,
    req: Request,
) -> ApiResult<Json<api::StatusBody>> {
    let Query(q) = q?;
    validate::guest_path(&q.path)?;
    let mode = q.mode.clone().unwrap_or_else(|| "0644".into());
    if u32::from_str_radix(&mode, 8).map_or(true, |m| m > 0o7777) {
        return Err(ApiError::bad_request(format!("mode {mode:?} is not octal")));
    }
    let size: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::bad_request("Content-Length header required for file upload"))?;
    if size > MAX_FILE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("file of {size} bytes is over the 100 MiB limit"),
        ));
    }
    let sb = st.sandbox(&user, &id).await?;
    st.ensure_hot(&sb).await?;
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let mut reader = StreamReader::new(stream);
    st.engine
        .file_write(&sb.id, &q.path, &mode, size, &mut reader)
        .await?;
    st.touch(&sb.id);
    Ok(Json(api::StatusBody {
        status: "ok".into(),
    }))
}

pub async fn stat(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Q,
) -> ApiResult<Response> {
    let Query(q) = q?;
    validate::guest_path(&q.path)?;
    let sb = st.sandbox(&user, &id).await?;
    st.ensure_hot(&sb).await?;
    let info = match st.engine.file_stat(&sb.id, &q.path).await {
        Ok(i) => i,
        Err(e) => {
            let e = ApiError::from(e);
            return Err(if e.status.is_server_error() {
                e
            } else {
                ApiError::not_found(e.message)
            });
        }
    };
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(
        api::FILE_SIZE_HEADER,
        HeaderValue::from(info.size.max(0) as u64),
    );
    if let Ok(v) = HeaderValue::from_str(&info.mode) {
        h.insert(api::FILE_MODE_HEADER, v);
    }
    h.insert(
        api::FILE_ISDIR_HEADER,
        HeaderValue::from_static(if info.is_dir { "true" } else { "false" }),
    );
    Ok(resp)
}
