//! File operations, streamed in both directions.

use bhatti_protocol::messages::{
    FileInfo, FileReadRequest, FileReadResponse, FileWriteRequest, PathRequest, StatusResponse,
};
use bhatti_protocol::{seal_frame, Frame, MsgType, FILE_STREAM_CHUNK, FRAME_OVERHEAD};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::reuse::Lease;
use crate::{agent_error, expected, AgentClient, ClientError, Result};

/// Server-side truncation of a read (all zero = the whole file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// 1-based first line.
    pub offset: i64,
    /// Maximum number of lines.
    pub limit: i64,
    /// Byte budget.
    pub max_bytes: i64,
}

impl AgentClient {
    /// Streams a file into `out`; returns the file's total size and mode (from
    /// FILE_READ_RESP) and how many bytes were written to `out`.
    pub async fn file_read<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        opts: ReadOptions,
        out: &mut W,
    ) -> Result<(FileReadResponse, u64)> {
        let dl = self.file_open(path, opts).await?;
        let head = dl.head.clone();
        let written = dl.copy_to(out).await?;
        Ok((head, written))
    }

    /// Starts a read and returns once the agent has answered with the file's
    /// size and mode (or refused): a caller can then promise a length before
    /// the first byte flows, and a refusal arrives as an error, not as an
    /// empty stream.
    pub async fn file_open(&self, path: &str, opts: ReadOptions) -> Result<FileDownload> {
        let req = FileReadRequest {
            path: path.into(),
            offset: opts.offset,
            limit: opts.limit,
            max_bytes: opts.max_bytes,
        };
        let p = serde_json::to_vec(&req)?;
        let (lease, f) = self.start(MsgType::FileReadReq, &p).await?;
        let head: FileReadResponse = match expected(f, MsgType::FileReadResp) {
            Ok(f) => f.parse_json()?,
            Err(e) => {
                // A refused read (not found, a directory) ended cleanly.
                if matches!(e, ClientError::Agent { .. }) {
                    self.give_back(lease);
                }
                return Err(e);
            }
        };
        Ok(FileDownload {
            head,
            lease,
            client: self.clone(),
        })
    }

    /// Reads a whole (or truncated) file into memory.
    pub async fn file_read_to_vec(&self, path: &str, opts: ReadOptions) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.file_read(path, opts, &mut v).await?;
        Ok(v)
    }

    /// Writes `size` bytes from `src` to `path` atomically (temp file, fsync,
    /// rename). `mode` is octal text such as `"0644"` (empty = 0644).
    pub async fn file_write<R: AsyncRead + Unpin>(
        &self,
        path: &str,
        mode: &str,
        size: u64,
        src: &mut R,
    ) -> Result<()> {
        let req = FileWriteRequest {
            path: path.into(),
            mode: mode.into(),
            size: i64::try_from(size).map_err(|_| {
                ClientError::Source(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("file size {size} does not fit the protocol"),
                ))
            })?,
        };
        let p = serde_json::to_vec(&req)?;
        let mut conn = self.request(MsgType::FileWriteReq, &p).await?;
        // Each chunk is read straight into the frame that carries it,
        // behind room for its header: one buffer, no copy before the write.
        let mut frame = Vec::with_capacity(FRAME_OVERHEAD + FILE_STREAM_CHUNK);
        let mut left = size;
        while left > 0 {
            let want = left.min(FILE_STREAM_CHUNK as u64);
            frame.clear();
            frame.resize(FRAME_OVERHEAD, 0);
            let n = (&mut *src)
                .take(want)
                .read_buf(&mut frame)
                .await
                .map_err(ClientError::Source)?;
            if n == 0 {
                return Err(ClientError::Source(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("source ended {left} bytes short of the declared size"),
                )));
            }
            seal_frame(MsgType::Stdin as u8, &mut frame).map_err(ClientError::from)?;
            if let Err(e) = conn.send_sealed(&frame).await {
                // The agent may have refused the write (size, path) and closed:
                // its ERROR explains better than our broken pipe.
                return Err(match conn.recv().await {
                    Ok(Some(f)) if f.is(MsgType::Error) => agent_error(&f),
                    _ => e,
                });
            }
            // `n <= want <= left`; saturating guards a misbehaving reader.
            left = left.saturating_sub(n as u64);
        }
        let st: StatusResponse = conn.expect(MsgType::FileWriteResp).await?.parse_json()?;
        if !st.is_ok() {
            return Err(ClientError::status(st));
        }
        Ok(())
    }

    /// Writes a byte slice.
    pub async fn file_write_bytes(&self, path: &str, mode: &str, data: &[u8]) -> Result<()> {
        let mut src = data;
        self.file_write(path, mode, data.len() as u64, &mut src)
            .await
    }

    /// Size, mode, directory flag and modification time of `path`.
    pub async fn file_stat(&self, path: &str) -> Result<FileInfo> {
        let p = serde_json::to_vec(&PathRequest { path: path.into() })?;
        self.call(MsgType::FileStatReq, &p, MsgType::FileStatResp)
            .await
    }

    /// The entries of directory `path`.
    pub async fn file_ls(&self, path: &str) -> Result<Vec<FileInfo>> {
        let p = serde_json::to_vec(&PathRequest { path: path.into() })?;
        self.call(MsgType::FileLsReq, &p, MsgType::FileLsResp).await
    }
}

/// A read the agent has accepted: its head, and the content still to come.
pub struct FileDownload {
    /// Size and mode as the agent reported them before sending content.
    pub head: FileReadResponse,
    lease: Lease,
    /// Takes the connection back once the content was read to its end.
    client: AgentClient,
}

impl FileDownload {
    /// Streams the content into `out`; returns the bytes written.
    pub async fn copy_to<W: AsyncWrite + Unpin>(mut self, out: &mut W) -> Result<u64> {
        let mut written = 0u64;
        // One buffer for every chunk: no allocation (and page faults) per
        // frame.
        let mut payload = Vec::new();
        loop {
            let Some(kind) = self.lease.conn.recv_into(&mut payload).await? else {
                return Err(ClientError::Closed);
            };
            match MsgType::from_u8(kind) {
                Some(MsgType::Stdout) => {
                    out.write_all(&payload).await?;
                    written = written.saturating_add(payload.len() as u64);
                }
                Some(MsgType::Exit) => break,
                Some(MsgType::Error) => return Err(agent_error(&Frame { kind, payload })),
                _ => continue,
            }
        }
        self.client.give_back(self.lease);
        out.flush().await?;
        Ok(written)
    }
}
