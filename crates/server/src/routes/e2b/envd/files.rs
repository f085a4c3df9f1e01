//! envd's HTTP `/files`: download (`GET`, streamed) and upload (`POST`, as
//! `multipart/form-data` with one part per file, or a raw
//! `application/octet-stream` body, either optionally gzip-encoded).
//!
//! The agent's write needs the size up front (it is atomic: a temp file
//! renamed over the target once every byte arrived). A plain body with a
//! `Content-Length` streams straight through; a part or a compressed body
//! has no size until it ends, so it is spooled to an unnamed temporary file
//! in the data directory first (never memory: uploads go to 100 MiB).

use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bhatti_agent_client::ReadOptions;
use bhatti_store::Sandbox;
use futures_util::{Stream, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::StreamReader;

use crate::error::{ErrorCode, ServiceError};
use crate::routes::e2b::{E2bError, E2bResult};
use crate::routes::files::{download_body, MAX_FILE};
use crate::service::guest_fs;
use crate::state::Shared;

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    #[serde(default)]
    path: Option<String>,
    /// Accepted for E2B's sake: files are always the sandbox user's.
    #[serde(default)]
    #[allow(dead_code)]
    username: Option<String>,
}

/// One uploaded file, as envd reports it.
#[derive(Debug, Serialize)]
struct WriteInfo {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
}

fn write_info(path: &str) -> WriteInfo {
    WriteInfo {
        name: path.rsplit('/').next().unwrap_or(path).to_string(),
        kind: "file",
        path: path.to_string(),
    }
}

/// envd answers a path that is a directory with 400 where the native API
/// says 409.
fn as_envd(e: ServiceError) -> ServiceError {
    if e.code == ErrorCode::Conflict {
        ServiceError::bad_request(e.message)
    } else {
        e
    }
}

fn too_large() -> ServiceError {
    ServiceError::new(
        ErrorCode::TooLarge,
        format!("file is over the {} MiB limit", MAX_FILE >> 20),
    )
}

pub async fn download(
    State(st): State<Shared>,
    Extension(sb): Extension<Sandbox>,
    Query(q): Query<FileQuery>,
) -> E2bResult<Response> {
    let path = q
        .path
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ServiceError::bad_request("path is required"))?;
    st.ensure_hot(&sb).await?;
    let path = guest_fs::resolve(&st, &sb, &path).await?;
    let dl = guest_fs::open(&st, &sb, &path, ReadOptions::default())
        .await
        .map_err(as_envd)?;
    let (body, size) = download_body(dl, false);
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    st.touch(&sb.id);
    Ok(resp)
}

/// Copies `src` into a fresh unnamed file in the data directory (at most
/// the upload limit) and returns it rewound, with its length.
async fn spool<R: AsyncRead + Unpin>(
    st: &Shared,
    mut src: R,
) -> Result<(tokio::fs::File, u64), ServiceError> {
    let dir = st.cfg.data_dir.clone();
    let f = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
        .await?
        .map_err(ServiceError::internal)?;
    let mut f = tokio::fs::File::from_std(f);
    let mut limited = (&mut src).take(MAX_FILE + 1);
    let n = tokio::io::copy(&mut limited, &mut f)
        .await
        .map_err(|e| ServiceError::bad_request(format!("reading the upload: {e}")))?;
    if n > MAX_FILE {
        return Err(too_large());
    }
    f.flush().await.map_err(ServiceError::internal)?;
    f.rewind().await.map_err(ServiceError::internal)?;
    Ok((f, n))
}

/// A body stream as a reader.
fn reader<S>(body: S) -> impl AsyncRead + Send + Unpin
where
    S: Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Unpin,
{
    StreamReader::new(body)
}

/// A spooled gzip body, decompressed into another unnamed file (on a
/// blocking thread: flate2 is synchronous), at most the upload limit.
async fn gunzip(st: &Shared, f: tokio::fs::File) -> Result<(tokio::fs::File, u64), ServiceError> {
    let dir = st.cfg.data_dir.clone();
    let src = f.into_std().await;
    let out = tokio::task::spawn_blocking(move || -> Result<(std::fs::File, u64), ServiceError> {
        use std::io::{Read, Seek};
        let mut out = tempfile::tempfile_in(dir).map_err(ServiceError::internal)?;
        let mut dec = flate2::read::GzDecoder::new(src).take(MAX_FILE + 1);
        let n = std::io::copy(&mut dec, &mut out).map_err(|e| {
            ServiceError::bad_request(format!("the gzip body does not decompress: {e}"))
        })?;
        if n > MAX_FILE {
            return Err(too_large());
        }
        out.rewind().map_err(ServiceError::internal)?;
        Ok((out, n))
    })
    .await??;
    Ok((tokio::fs::File::from_std(out.0), out.1))
}

async fn write_one<R: AsyncRead + Unpin + Send>(
    st: &Shared,
    sb: &Sandbox,
    path: &str,
    size: u64,
    src: &mut R,
) -> Result<(), ServiceError> {
    guest_fs::write(st, sb, path, "0644", size, src)
        .await
        .map_err(as_envd)
}

fn is_gzip(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
}

pub async fn upload(
    State(st): State<Shared>,
    Extension(sb): Extension<Sandbox>,
    Query(q): Query<FileQuery>,
    req: Request,
) -> E2bResult<Response> {
    st.ensure_hot(&sb).await?;
    let headers = req.headers().clone();
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let query_path = q.path.filter(|p| !p.is_empty());
    let mut written = Vec::new();
    if multipart {
        let mut form = Multipart::from_request(req, &st)
            .await
            .map_err(|e| E2bError(ServiceError::bad_request(e.body_text())))?;
        let mut parts = Vec::new();
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| E2bError(ServiceError::bad_request(e.body_text())))?
        {
            let name = field.file_name().map(str::to_string);
            let body = field.map_err(std::io::Error::other);
            let spooled = spool(&st, reader(Box::pin(body))).await?;
            parts.push((name, spooled));
        }
        if parts.is_empty() {
            return Err(ServiceError::bad_request("no file in the upload").into());
        }
        let single = parts.len() == 1;
        for (name, (mut f, size)) in parts {
            // One part goes to the query's path when there is one; each of
            // several to its own file name.
            let want = match (&query_path, name) {
                (Some(p), _) if single => p.clone(),
                (_, Some(n)) if !n.is_empty() => n,
                _ => {
                    return Err(
                        ServiceError::bad_request("each part needs a file name (its path)").into(),
                    )
                }
            };
            let path = guest_fs::resolve(&st, &sb, &want).await?;
            write_one(&st, &sb, &path, size, &mut f).await?;
            written.push(write_info(&path));
        }
    } else {
        let want = query_path.ok_or_else(|| ServiceError::bad_request("path is required"))?;
        let path = guest_fs::resolve(&st, &sb, &want).await?;
        let gzip = is_gzip(&headers);
        let length: Option<u64> = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = req
            .into_body()
            .into_data_stream()
            .map_err(std::io::Error::other);
        match length.filter(|_| !gzip) {
            Some(size) => {
                if size > MAX_FILE {
                    return Err(too_large().into());
                }
                let mut r = reader(Box::pin(body));
                write_one(&st, &sb, &path, size, &mut r).await?;
            }
            None => {
                let (f, size) = spool(&st, reader(Box::pin(body))).await?;
                let (mut f, size) = if gzip {
                    gunzip(&st, f).await?
                } else {
                    (f, size)
                };
                write_one(&st, &sb, &path, size, &mut f).await?;
            }
        }
        written.push(write_info(&path));
    }
    Ok(Json(written).into_response())
}
