//! The native API's files: read (or list), write and stat a path in the
//! caller's sandbox. Unlike E2B's, its paths are absolute and passed on as
//! given (the guest resolves them), and a request is checked whole before
//! the sandbox is looked up or woken, so a malformed one costs no wake. The
//! bytes move through [`crate::service::guest_fs`], as E2B's do.

use bhatti_agent_client::{FileDownload, ReadOptions};
use bhatti_engine::EngineExt;
use bhatti_protocol::messages::FileInfo;
use bhatti_store::User;
use tokio::io::AsyncRead;

use crate::service::error::{ErrorCode, ServiceError, ServiceResult};
use crate::service::guest_fs::{self, MAX_FILE};
use crate::state::Shared;
use crate::validate;

/// A read: the whole file, a window of it, or the directory's entries.
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub path: String,
    /// List the directory instead of reading a file.
    pub ls: bool,
    pub offset: Option<i64>,
    pub limit: Option<i64>,
    pub max_bytes: Option<i64>,
}

/// What a read found.
pub enum Contents {
    Listing(Vec<FileInfo>),
    /// A file on its way. `truncating` says the read asked for less than
    /// the whole file, so its length is whatever the agent sends, not the
    /// size it announced.
    File {
        download: FileDownload,
        truncating: bool,
    },
}

fn nonneg(v: Option<i64>, what: &str) -> ServiceResult<i64> {
    match v {
        Some(n) if n < 0 => Err(ServiceError::bad_request(format!(
            "{what} must not be negative"
        ))),
        Some(n) => Ok(n),
        None => Ok(0),
    }
}

/// Reads (or lists) `r.path` in the caller's sandbox `id`.
pub async fn read(st: &Shared, user: &User, id: &str, r: &Read) -> ServiceResult<Contents> {
    validate::guest_path(&r.path)?;
    let opts = ReadOptions {
        offset: nonneg(r.offset, "offset")?,
        limit: nonneg(r.limit, "limit")?,
        max_bytes: nonneg(r.max_bytes, "max_bytes")?,
    };
    let sb = st.sandbox(user, id).await?;
    st.ensure_hot(&sb).await?;
    if r.ls {
        return Ok(Contents::Listing(st.engine.file_ls(&sb.id, &r.path).await?));
    }
    let truncating = opts.offset > 0 || opts.limit > 0 || opts.max_bytes > 0;
    let download = guest_fs::open(st, &sb, &r.path, opts).await?;
    Ok(Contents::File {
        download,
        truncating,
    })
}

/// Writes the `size` bytes of `src` to `path` in the caller's sandbox `id`
/// with `mode` (default `0644`). The size must be known up front (`None`:
/// the client did not say it), since the guest's write is atomic.
pub async fn write<R: AsyncRead + Unpin + Send>(
    st: &Shared,
    user: &User,
    id: &str,
    path: &str,
    mode: Option<&str>,
    size: Option<u64>,
    src: &mut R,
) -> ServiceResult<()> {
    validate::guest_path(path)?;
    let mode = mode.unwrap_or("0644");
    validate::file_mode(mode)?;
    let size = size.ok_or_else(|| {
        ServiceError::bad_request("Content-Length header required for file upload")
    })?;
    if size > MAX_FILE {
        return Err(ServiceError::new(
            ErrorCode::TooLarge,
            format!("file of {size} bytes is over the 100 MiB limit"),
        ));
    }
    let sb = st.sandbox(user, id).await?;
    st.ensure_hot(&sb).await?;
    guest_fs::write(st, &sb, path, mode, size, src).await
}

/// What the agent says of `path` in the caller's sandbox `id`. Any refusal
/// that is not the host's own failure is "not found": a HEAD answer has no
/// body to say more in.
pub async fn stat(st: &Shared, user: &User, id: &str, path: &str) -> ServiceResult<FileInfo> {
    validate::guest_path(path)?;
    let sb = st.sandbox(user, id).await?;
    st.ensure_hot(&sb).await?;
    st.engine
        .file_stat(&sb.id, path)
        .await
        .map_err(|e| match ServiceError::from(e) {
            e if e.is_server_side() => e,
            e => ServiceError::not_found(e.message),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_windows_are_refused() {
        assert_eq!(nonneg(None, "offset"), Ok(0));
        assert_eq!(nonneg(Some(7), "limit"), Ok(7));
        assert!(nonneg(Some(-1), "max_bytes").is_err());
    }
}
