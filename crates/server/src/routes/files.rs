//! Files in a sandbox: read (streamed, with server-side truncation), list,
//! write (streamed, `Content-Length` required, atomic in the guest), stat.
//! Thin over [`crate::service::files`]; the streamed bodies are built here.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bhatti_agent_client::FileDownload;
use bhatti_api as api;
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio_util::io::{ReaderStream, StreamReader};

use super::Caller;
use crate::error::ServiceResult;
use crate::service::files::{self as service, Contents};
use crate::state::Shared;

/// E2B's upload takes its limit from here.
pub use crate::service::guest_fs::MAX_FILE;

/// Each route's query: exactly the parameters the document lists (an
/// unknown one is a 400, as an unknown body field is).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    #[serde(default)]
    path: String,
    #[serde(default)]
    ls: Option<bool>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    max_bytes: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    #[serde(default)]
    path: String,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatQuery {
    #[serde(default)]
    path: String,
}

type Q<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn info_to_api(f: bhatti_protocol::messages::FileInfo) -> api::FileInfo {
    api::FileInfo {
        name: f.name,
        size: f.size,
        mode: f.mode,
        is_dir: f.is_dir,
        mtime: f.mtime,
    }
}

/// A read the agent answered, as a response body, with the size it
/// announced. The agent streams into one end of a pipe and the body reads
/// the other, so a large file never sits in memory. A whole-file read is
/// never more than the announced size: a file that grew while it was read
/// is cut there (a truncated read's length is whatever the agent sends).
pub(crate) fn download_body(dl: FileDownload, truncating: bool) -> (Body, u64) {
    let size = u64::try_from(dl.head.size).unwrap_or(0);
    let (mut w, r) = tokio::io::duplex(256 << 10);
    tokio::spawn(async move {
        if let Err(e) = dl.copy_to(&mut w).await {
            tracing::debug!(error = %e, "file read ended early");
        }
    });
    let body = if truncating {
        Body::from_stream(ReaderStream::new(r))
    } else {
        Body::from_stream(ReaderStream::new(r.take(size)))
    };
    (body, size)
}

pub async fn read(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Q<ReadQuery>,
) -> ServiceResult<Response> {
    let Query(q) = q?;
    let r = service::Read {
        path: q.path,
        ls: q.ls == Some(true),
        offset: q.offset,
        limit: q.limit,
        max_bytes: q.max_bytes,
    };
    let (download, truncating) = match service::read(&st, &user, &id, &r).await? {
        Contents::Listing(list) => {
            return Ok(Json(list.into_iter().map(info_to_api).collect::<Vec<_>>()).into_response())
        }
        Contents::File {
            download,
            truncating,
        } => (download, truncating),
    };
    // `Content-Length` is the size the agent will send — also for /proc
    // files, whose stat says 0.
    let (body, size) = download_body(download, truncating);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(api::FILE_SIZE_HEADER, HeaderValue::from(size));
    if !truncating {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    Ok(resp)
}

pub async fn write(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Q<WriteQuery>,
    headers: HeaderMap,
    req: Request,
) -> ServiceResult<Json<api::StatusBody>> {
    let Query(q) = q?;
    let size: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let stream = req
        .into_body()
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let mut body = StreamReader::new(stream);
    let mode = q.mode.as_deref();
    service::write(&st, &user, &id, &q.path, mode, size, &mut body).await?;
    Ok(Json(api::StatusBody {
        status: "ok".into(),
    }))
}

pub async fn stat(
    State(st): State<Shared>,
    Caller(user): Caller,
    Path(id): Path<String>,
    q: Q<StatQuery>,
) -> ServiceResult<Response> {
    let Query(q) = q?;
    let info = service::stat(&st, &user, &id, &q.path).await?;
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(
        api::FILE_SIZE_HEADER,
        HeaderValue::from(info.size.max(0).unsigned_abs()),
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
