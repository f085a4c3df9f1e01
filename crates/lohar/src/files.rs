//! File operations: read (full or line-truncated), atomic write, stat, ls.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bhatti_protocol::messages::{
    FileInfo, FileReadRequest, FileReadResponse, FileWriteRequest, PathRequest, StatusResponse,
};
use bhatti_protocol::r#async::read_frame;
use bhatti_protocol::{Frame, MsgType, FILE_CHUNK, MAX_FILE_WRITE, MAX_LINE_LEN, MAX_LS_ENTRIES};

use crate::agent::Agent;
use crate::conn::{FrameTx, Reader};

/// Suffix of the temporary file a write goes to before the atomic rename.
const TMP_SUFFIX: &str = ".bhatti-tmp";

fn perm_string(mode: u32) -> String {
    format!("{:04o}", mode & 0o777)
}

fn file_info(name: String, md: &fs::Metadata) -> FileInfo {
    FileInfo {
        name,
        size: md.len() as i64,
        mode: perm_string(md.mode()),
        is_dir: md.is_dir(),
        mtime: md.mtime(),
    }
}

fn base_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string_lossy().into_owned())
}

fn parse<T: serde::de::DeserializeOwned>(req: &Frame, what: &str) -> Result<T, String> {
    req.parse_json()
        .map_err(|e| format!("invalid {what} request: {e}"))
}

fn check_path(p: &str) -> Result<PathBuf, String> {
    if p.is_empty() {
        return Err("path required".into());
    }
    if p.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if !p.starts_with('/') {
        return Err(format!("path must be absolute: {p}"));
    }
    Ok(PathBuf::from(p))
}

pub async fn read(_agent: &Arc<Agent>, req: &Frame, tx: &FrameTx) {
    let rr: FileReadRequest = match parse(req, "file read") {
        Ok(r) => r,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    let tx2 = tx.clone();
    let res = tokio::task::spawn_blocking(move || read_blocking(&rr, &tx2)).await;
    match res {
        Ok(Ok(())) => {
            tx.exit(0).await;
        }
        Ok(Err(ReadError::Fail(msg))) => {
            tx.error(msg).await;
        }
        Ok(Err(ReadError::HostGone)) | Err(_) => {}
    }
}

enum ReadError {
    Fail(String),
    /// The host closed the connection (its way of cancelling).
    HostGone,
}

fn read_blocking(rr: &FileReadRequest, tx: &FrameTx) -> Result<(), ReadError> {
    let path = check_path(&rr.path).map_err(ReadError::Fail)?;
    let f = fs::File::open(&path).map_err(|e| ReadError::Fail(format!("open {}: {e}", rr.path)))?;
    let md = f
        .metadata()
        .map_err(|e| ReadError::Fail(format!("stat {}: {e}", rr.path)))?;
    if md.is_dir() {
        return Err(ReadError::Fail(format!("{} is a directory", rr.path)));
    }
    if !md.is_file() {
        return Err(ReadError::Fail(format!(
            "{} is not a regular file",
            rr.path
        )));
    }
    let head = FileReadResponse {
        size: md.len() as i64,
        mode: perm_string(md.mode()),
    };
    let head = serde_json::to_vec(&head).map_err(|e| ReadError::Fail(e.to_string()))?;
    send(tx, MsgType::FileReadResp, &head)?;
    let fail = |e: io::Error| ReadError::Fail(format!("read {}: {e}", rr.path));
    if !rr.is_truncated() {
        let mut f = f;
        let mut buf = vec![0u8; FILE_CHUNK];
        loop {
            let n = f.read(&mut buf).map_err(fail)?;
            if n == 0 {
                return Ok(());
            }
            send(tx, MsgType::Stdout, &buf[..n])?;
        }
    }
    // Line mode: `offset` is the 1-based first line, `limit` a line count,
    // `max_bytes` a byte budget that may cut the last line. A line longer than
    // MAX_LINE_LEN is still one line; it just travels in several frames.
    let first = rr.offset.max(1);
    let mut budget = if rr.max_bytes > 0 {
        Some(rr.max_bytes as usize)
    } else {
        None
    };
    let mut lines_left = if rr.limit > 0 { Some(rr.limit) } else { None };
    let mut r = BufReader::with_capacity(64 * 1024, f);
    let mut line_no: i64 = 0;
    let mut line = Vec::with_capacity(4096);
    loop {
        if lines_left == Some(0) || budget == Some(0) {
            return Ok(());
        }
        line.clear();
        let n = read_line(&mut r, &mut line).map_err(fail)?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if line_no < first {
            continue;
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let mut out: &[u8] = &line;
        if let Some(b) = budget.as_mut() {
            let take = out.len().min(*b);
            out = &out[..take];
            *b -= take;
        }
        for piece in out.chunks(MAX_LINE_LEN) {
            send(tx, MsgType::Stdout, piece)?;
        }
        if let Some(l) = lines_left.as_mut() {
            *l -= 1;
        }
    }
}

/// Reads one line including its `\n` (if any); returns bytes read.
fn read_line<R: BufRead>(r: &mut R, out: &mut Vec<u8>) -> io::Result<usize> {
    r.read_until(b'\n', out)
}

fn send(tx: &FrameTx, kind: MsgType, payload: &[u8]) -> Result<(), ReadError> {
    if tx.blocking_send(kind, payload) {
        Ok(())
    } else {
        Err(ReadError::HostGone)
    }
}

pub async fn write(agent: &Arc<Agent>, req: &Frame, mut rd: Reader, tx: &FrameTx) {
    let wr: FileWriteRequest = match parse(req, "file write") {
        Ok(r) => r,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    match write_inner(agent, &wr, &mut rd).await {
        Ok(()) => {
            tx.send_json(MsgType::FileWriteResp, &StatusResponse::ok())
                .await;
        }
        Err(e) => {
            tx.error(e).await;
        }
    }
}

fn parse_mode(m: &str) -> u32 {
    match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
        Ok(v) if v != 0 && v <= 0o7777 => v,
        _ => 0o644,
    }
}

async fn write_inner(agent: &Agent, wr: &FileWriteRequest, rd: &mut Reader) -> Result<(), String> {
    if wr.size < 0 {
        return Err("file size must be >= 0".into());
    }
    if wr.size > MAX_FILE_WRITE {
        return Err(format!(
            "file too large: {} bytes (max {MAX_FILE_WRITE})",
            wr.size
        ));
    }
    let path = check_path(&wr.path)?;
    if path.file_name().is_none() {
        return Err(format!("{} is not a file path", wr.path));
    }
    let mode = parse_mode(&wr.mode);
    if let Some(parent) = path.parent() {
        mkdir_p(parent).map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
    }
    if path.is_dir() {
        return Err(format!("{} is a directory", wr.path));
    }
    let tmp = PathBuf::from(format!("{}{TMP_SUFFIX}", wr.path));
    let res = write_tmp(&tmp, wr.size as u64, mode, rd).await;
    let res = match res {
        Ok(()) => finish_write(&tmp, &path, mode, agent.config().file_owner),
        Err(e) => Err(e),
    };
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

async fn write_tmp(tmp: &Path, size: u64, mode: u32, rd: &mut Reader) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| format!("create {}: {e}", tmp.display()))?;
    // Disk writes run on a blocking thread fed through a small queue, so reading
    // the next frame off the socket overlaps with writing the previous one.
    let (chunks, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let shown = tmp.display().to_string();
    let disk = tokio::task::spawn_blocking(move || write_chunks(file, rx, &shown));
    let received = receive_content(size, rd, &chunks).await;
    drop(chunks);
    let written = disk
        .await
        .map_err(|e| format!("write {}: {e}", tmp.display()))?;
    // A receive error explains more than the writer noticing the queue closed early.
    received?;
    written
}

/// Reads STDIN frames until `size` bytes arrived, handing each to the disk writer.
async fn receive_content(
    size: u64,
    rd: &mut Reader,
    chunks: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(), String> {
    let mut got: u64 = 0;
    while got < size {
        let frame = match read_frame(rd).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(format!("connection closed after {got} of {size} bytes")),
            Err(e) => return Err(format!("read content: {e}")),
        };
        match frame.msg_type() {
            Some(MsgType::Stdin) => {}
            Some(MsgType::Kill) => return Err("write cancelled".into()),
            _ => {
                return Err(format!(
                    "unexpected frame type 0x{:02x} during file write",
                    frame.kind
                ))
            }
        }
        got += frame.payload.len() as u64;
        if got > size {
            return Err(format!("received more than the declared {size} bytes"));
        }
        if chunks.send(frame.payload).await.is_err() {
            // The writer failed; its error is reported by the caller.
            return Ok(());
        }
    }
    Ok(())
}

fn write_chunks(
    mut f: fs::File,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    shown: &str,
) -> Result<(), String> {
    use std::io::Write;
    while let Some(chunk) = rx.blocking_recv() {
        f.write_all(&chunk)
            .map_err(|e| format!("write {shown}: {e}"))?;
    }
    f.sync_all().map_err(|e| format!("fsync {shown}: {e}"))
}

fn finish_write(
    tmp: &Path,
    path: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), String> {
    // The umask may have narrowed the mode at create.
    fs::set_permissions(tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(tmp, Some(u), Some(g))
            .map_err(|e| format!("chown {}: {e}", tmp.display()))?;
    }
    fs::rename(tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
    // Make the rename itself durable before acknowledging.
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn mkdir_p(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

pub async fn stat(req: &Frame, tx: &FrameTx) {
    let res = parse::<PathRequest>(req, "stat").and_then(|pr| {
        let p = check_path(&pr.path)?;
        let md = fs::metadata(&p).map_err(|e| format!("stat {}: {e}", pr.path))?;
        Ok(file_info(base_name(&p), &md))
    });
    match res {
        Ok(info) => {
            tx.send_json(MsgType::FileStatResp, &info).await;
        }
        Err(e) => {
            tx.error(e).await;
        }
    }
}

pub async fn ls(req: &Frame, tx: &FrameTx) {
    let res = match parse::<PathRequest>(req, "ls") {
        Ok(pr) => tokio::task::spawn_blocking(move || list_dir(&pr.path))
            .await
            .unwrap_or_else(|e| Err(e.to_string())),
        Err(e) => Err(e),
    };
    match res {
        Ok(list) => {
            tx.send_json(MsgType::FileLsResp, &list).await;
        }
        Err(e) => {
            tx.error(e).await;
        }
    }
}

fn list_dir(path: &str) -> Result<Vec<FileInfo>, String> {
    let p = check_path(path)?;
    let md = fs::metadata(&p).map_err(|e| format!("stat {path}: {e}"))?;
    if !md.is_dir() {
        return Err(format!("{path} is not a directory"));
    }
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(&p)
        .map_err(|e| format!("read {path}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let total = names.len();
    let mut out = Vec::with_capacity(total.min(MAX_LS_ENTRIES) + 1);
    for name in names.into_iter().take(MAX_LS_ENTRIES) {
        // Entries that vanish between readdir and lstat are skipped.
        if let Ok(md) = fs::symlink_metadata(p.join(&name)) {
            out.push(file_info(name.to_string_lossy().into_owned(), &md));
        }
    }
    if total > MAX_LS_ENTRIES {
        // DECISIONS §7.7: the sentinel reports the real total.
        out.push(FileInfo {
            name: format!("... truncated at {MAX_LS_ENTRIES} entries ({total} total)"),
            mode: "0000".into(),
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_octal_with_a_safe_default() {
        assert_eq!(parse_mode("0755"), 0o755);
        assert_eq!(parse_mode("600"), 0o600);
        assert_eq!(parse_mode(""), 0o644);
        assert_eq!(parse_mode("0"), 0o644);
        assert_eq!(parse_mode("99"), 0o644);
        assert_eq!(perm_string(0o100755), "0755");
    }

    #[test]
    fn paths_must_be_absolute_and_clean_of_nul() {
        assert!(check_path("").is_err());
        assert!(check_path("rel/x").is_err());
        assert!(check_path("/a\0b").is_err());
        assert!(check_path("/tmp/x").is_ok());
    }
}
