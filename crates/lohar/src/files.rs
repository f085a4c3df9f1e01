//! File operations: read (full or line-truncated), atomic write, stat, ls.
//!
//! Every path is resolved with the sandbox user's filesystem credentials
//! ([`crate::fsuser`]): the host names the path, but the sandbox's code owns the
//! directories it runs through and can plant symlinks in them at any moment.
//! Acting as the user, following such a link gets nobody anything the user
//! could not do already, and the kernel's refusal arrives as a plain
//! "Permission denied".
//!
//! A write goes to a fresh temp file beside the target (`<name>.bhatti-tmp-<random>`,
//! created `O_CREAT|O_EXCL|O_NOFOLLOW`, so a planted name can neither be followed
//! nor predicted), gets its mode by `fchmod` on the descriptor and is renamed
//! over the target. Nothing is chowned: the user creates the file, so the user
//! owns it.
//!
//! Files on pseudo filesystems (`/proc`, `/sys`, …) and files reporting size 0
//! are read into memory first (up to [`MAX_BUFFERED_READ`]), so the size in
//! FILE_READ_RESP is the length of what follows rather than 0 (or, for
//! `/proc/kcore`, 128 TiB).

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bhatti_protocol::messages::{
    ErrorCode, FileInfo, FileReadRequest, FileReadResponse, FileWriteRequest, PathRequest,
    StatusResponse,
};
use bhatti_protocol::{
    seal_frame, Frame, MsgType, FILE_CHUNK, FRAME_OVERHEAD, MAX_FILE_WRITE, MAX_LINE_LEN,
    MAX_LS_ENTRIES,
};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::statfs;
use tokio::io::AsyncBufRead;

use crate::agent::Agent;
use crate::fail::Fail;
use crate::wire::{FrameTx, Reader};
use crate::zerocopy::{Cut, Incoming};

/// Marks the temporary file a write goes to before the atomic rename.
const TMP_MARK: &str = ".bhatti-tmp-";

/// Whether a file name is one of this agent's write temp files (which
/// watchers are not told about: a write lands as its target's change).
pub(crate) fn is_temp_name(name: &std::ffi::OsStr) -> bool {
    name.as_bytes()
        .windows(TMP_MARK.len())
        .any(|w| w == TMP_MARK.as_bytes())
}
/// Attempts at a free temp name (only a planted or colliding name needs a second).
const TMP_ATTEMPTS: usize = 8;
/// Longest file name the kernel accepts.
const NAME_MAX: usize = 255;
/// Smallest whole-file read sent with sendfile(2): borrowing the socket
/// from the writer task costs two thread hand-offs, more than copying a
/// small file.
const SENDFILE_MIN: u64 = 64 * 1024;
/// Largest pseudo (or size-0) file read into memory to learn its real length.
const MAX_BUFFERED_READ: usize = 16 * 1024 * 1024;
/// Filesystems whose `st_size` says nothing about what a read returns.
const PSEUDO_FS: &[statfs::FsType] = &[
    statfs::PROC_SUPER_MAGIC,
    statfs::SYSFS_MAGIC,
    statfs::CGROUP_SUPER_MAGIC,
    statfs::CGROUP2_SUPER_MAGIC,
    statfs::DEBUGFS_MAGIC,
    statfs::TRACEFS_MAGIC,
    statfs::SECURITYFS_MAGIC,
    statfs::BPF_FS_MAGIC,
    statfs::SELINUX_MAGIC,
    statfs::SMACK_MAGIC,
];

fn perm_string(mode: u32) -> String {
    format!("{:04o}", mode & 0o777)
}

fn file_info(name: String, md: &fs::Metadata) -> FileInfo {
    FileInfo {
        name,
        size: i64::try_from(md.len()).unwrap_or(i64::MAX),
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

pub(crate) fn parse<T: serde::de::DeserializeOwned>(req: &Frame, what: &str) -> Result<T, Fail> {
    req.parse_json()
        .map_err(|e| Fail::invalid(format!("invalid {what} request: {e}")))
}

pub(crate) fn check_path(p: &str) -> Result<PathBuf, Fail> {
    if p.is_empty() {
        return Err(Fail::invalid("path required"));
    }
    if p.contains('\0') {
        return Err(Fail::invalid("path contains a NUL byte"));
    }
    if !p.starts_with('/') {
        return Err(Fail::invalid(format!("path must be absolute: {p}")));
    }
    Ok(PathBuf::from(p))
}

pub async fn read(agent: &Arc<Agent>, req: &Frame, tx: &FrameTx) {
    let rr: FileReadRequest = match parse(req, "file read") {
        Ok(r) => r,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    let tx2 = tx.clone();
    let res = agent.fs_user().run(move || read_blocking(&rr, &tx2)).await;
    match res {
        Ok(Ok(())) => {
            tx.exit(0).await;
        }
        Ok(Err(ReadError::Fail(msg))) => {
            tx.error(msg).await;
        }
        Ok(Err(ReadError::HostGone)) => {}
        Err(e) => {
            tx.error(e.to_string()).await;
        }
    }
}

enum ReadError {
    Fail(Fail),
    /// The host closed the connection (its way of cancelling).
    HostGone,
}

/// Whether `st_size` is the length a read will return: not on a pseudo
/// filesystem (proc says 0, sysfs 4096, `/proc/kcore` 128 TiB), and not 0, which
/// synthetic files elsewhere (FUSE, say) report for content made on read.
fn size_is_real(f: &fs::File, md: &fs::Metadata) -> bool {
    if md.len() == 0 {
        return false;
    }
    match statfs::fstatfs(f) {
        Ok(st) => !PSEUDO_FS.contains(&st.filesystem_type()),
        Err(_) => true,
    }
}

/// Reads a whole file whose size cannot be trusted, up to the cap.
fn read_buffered(f: &fs::File, shown: &str) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    // One byte past the cap tells "too large" from "exactly the cap".
    f.take((MAX_BUFFERED_READ as u64).saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::Fail(Fail::io(format!("read {shown}"), &e)))?;
    if buf.len() > MAX_BUFFERED_READ {
        return Err(ReadError::Fail(Fail::new(
            ErrorCode::TooLarge,
            format!(
                "{shown} is too large to read: it does not report its size and has more than {} MiB",
                MAX_BUFFERED_READ >> 20
            ),
        )));
    }
    Ok(buf)
}

fn read_blocking(rr: &FileReadRequest, tx: &FrameTx) -> Result<(), ReadError> {
    let path = check_path(&rr.path).map_err(ReadError::Fail)?;
    // Non-blocking open: a FIFO planted where a file was expected must not hang
    // the request (it is refused below as not a regular file).
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| ReadError::Fail(Fail::io(format!("open {}", rr.path), &e)))?;
    let md = f
        .metadata()
        .map_err(|e| ReadError::Fail(Fail::io(format!("stat {}", rr.path), &e)))?;
    if md.is_dir() {
        return Err(ReadError::Fail(Fail::new(
            ErrorCode::IsADirectory,
            format!("{} is a directory", rr.path),
        )));
    }
    if !md.is_file() {
        return Err(ReadError::Fail(Fail::invalid(format!(
            "{} is not a regular file",
            rr.path
        ))));
    }
    let real = size_is_real(&f, &md);
    let (size, body): (u64, Box<dyn Read + '_>) = if real {
        (md.len(), Box::new(&f))
    } else {
        let buf = read_buffered(&f, &rr.path)?;
        (buf.len() as u64, Box::new(io::Cursor::new(buf)))
    };
    let head = FileReadResponse {
        size: i64::try_from(size).unwrap_or(i64::MAX),
        mode: perm_string(md.mode()),
    };
    let head = serde_json::to_vec(&head).map_err(|e| ReadError::Fail(Fail::from(e.to_string())))?;
    send(tx, MsgType::FileReadResp, &head)?;
    let fail = |e: io::Error| ReadError::Fail(Fail::io(format!("read {}", rr.path), &e));
    if !rr.is_truncated() {
        if real && size >= SENDFILE_MIN {
            send_by_sendfile(tx, &f, size, &rr.path)?;
        }
        // Each chunk is read straight into the frame that carries it (the
        // room for its header left in front), so the bytes are copied
        // once, by read(2), before the socket write. After a sendfile this
        // reads what the file grew by since its size was taken (usually
        // nothing).
        let mut body = body;
        loop {
            let mut frame = tx.buffer(FRAME_OVERHEAD + FILE_CHUNK);
            frame.resize(FRAME_OVERHEAD, 0);
            // Fills the frame (never zeroed first) up to a whole chunk, or
            // to the end of the file.
            let n = (&mut body)
                .take(FILE_CHUNK as u64)
                .read_to_end(&mut frame)
                .map_err(fail)?;
            if n == 0 {
                return Ok(());
            }
            seal_frame(MsgType::Stdout as u8, &mut frame)
                .map_err(|e| ReadError::Fail(Fail::from(e.to_string())))?;
            if !tx.blocking_send_sealed(frame) {
                return Err(ReadError::HostGone);
            }
        }
    }
    // Line mode: `offset` is the 1-based first line, `limit` a line count,
    // `max_bytes` a byte budget that may cut the last line. A line longer than
    // MAX_LINE_LEN is still one line; it just travels in several frames.
    let first = rr.offset.max(1);
    let mut budget = if rr.max_bytes > 0 {
        Some(usize::try_from(rr.max_bytes).unwrap_or(usize::MAX))
    } else {
        None
    };
    let mut lines_left = if rr.limit > 0 { Some(rr.limit) } else { None };
    let mut r = BufReader::with_capacity(64 * 1024, body);
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
        line_no = line_no.saturating_add(1);
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
            *b = b.saturating_sub(take); // exact: take <= *b
        }
        for piece in out.chunks(MAX_LINE_LEN) {
            send(tx, MsgType::Stdout, piece)?;
        }
        if let Some(l) = lines_left.as_mut() {
            // Above 0: checked at the top of the loop.
            *l = l.saturating_sub(1);
        }
    }
}

/// Reads one line including its `\n` (if any); returns bytes read.
fn read_line<R: BufRead>(r: &mut R, out: &mut Vec<u8>) -> io::Result<usize> {
    r.read_until(b'\n', out)
}

/// Sends `size` bytes of `f` with sendfile(2) on the connection's socket,
/// when the stream has one to lend (else the caller's copying loop sends
/// them). A file that failed or shrank leaves the stream at a frame
/// boundary and is reported; a socket that failed closes the connection.
fn send_by_sendfile(tx: &FrameTx, f: &fs::File, size: u64, shown: &str) -> Result<(), ReadError> {
    // The file was opened non-blocking (against planted FIFOs); it is a
    // regular file, and a sendfile must wait for its pages, not answer
    // EAGAIN, which would read as a full socket.
    let flags = OFlag::from_bits_retain(
        fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)
            .map_err(|e| ReadError::Fail(Fail::io(format!("read {shown}"), &e.into())))?,
    );
    fcntl(
        f.as_raw_fd(),
        FcntlArg::F_SETFL(flags.difference(OFlag::O_NONBLOCK)),
    )
    .map_err(|e| ReadError::Fail(Fail::io(format!("read {shown}"), &e.into())))?;
    let Some(lent) = tx.blocking_lend() else {
        return Ok(());
    };
    match crate::zerocopy::frames(lent.fd(), f, size) {
        Ok(()) => {
            lent.give_back();
            Ok(())
        }
        Err(Cut::File(e)) => {
            lent.give_back();
            Err(ReadError::Fail(Fail::io(format!("read {shown}"), &e)))
        }
        // Dropping `lent` unreturned closes the connection.
        Err(Cut::Socket(e)) => {
            tracing::debug!(error = %e, "the host went away during a read");
            Err(ReadError::HostGone)
        }
    }
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
    match write_inner(agent, &wr, &mut rd, tx).await {
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

async fn write_inner(
    agent: &Agent,
    wr: &FileWriteRequest,
    rd: &mut Reader,
    tx: &FrameTx,
) -> Result<(), Fail> {
    let Ok(size) = u64::try_from(wr.size) else {
        return Err(Fail::invalid("file size must be >= 0"));
    };
    if wr.size > MAX_FILE_WRITE {
        return Err(Fail::new(
            ErrorCode::TooLarge,
            format!("file too large: {} bytes (max {MAX_FILE_WRITE})", wr.size),
        ));
    }
    let path = check_path(&wr.path)?;
    if path.file_name().is_none() {
        // `/`, or a path ending in `..`: it names a directory.
        return Err(Fail::new(
            ErrorCode::IsADirectory,
            format!("{} is not a file path", wr.path),
        ));
    }
    let mode = parse_mode(&wr.mode);
    let sock = tx
        .socket()
        .ok_or_else(|| Fail::from("this connection cannot carry a file write"))?;
    // The content is received on the disk thread, as the user, straight
    // from the socket ([`crate::zerocopy`]). The connection's reader may
    // already hold its first bytes; they go first.
    let held = rd.buffer().to_vec();
    std::pin::Pin::new(&mut *rd).consume(held.len());
    let incoming = Incoming::new(sock, held).map_err(|e| Fail::io("receive content", &e))?;
    let shown = wr.path.clone();
    agent
        .fs_user()
        .run(move || write_file(&path, &shown, mode, size, incoming))
        .await
        .map_err(|e| e.to_string())?
}

/// The disk side of a write (on the user's thread): create the temp file,
/// receive the content into it, and rename it over `path`.
fn write_file(
    path: &Path,
    shown: &str,
    mode: u32,
    size: u64,
    incoming: Incoming,
) -> Result<(), Fail> {
    if let Some(parent) = path.parent() {
        mkdir_p(parent).map_err(|e| Fail::io(format!("mkdir {}", parent.display()), &e))?;
    }
    if fs::metadata(path).is_ok_and(|md| md.is_dir()) {
        return Err(Fail::new(
            ErrorCode::IsADirectory,
            format!("{shown} is a directory"),
        ));
    }
    let tmp = TempFile::create(path).map_err(|e| Fail::io(format!("create {shown}"), &e))?;
    crate::zerocopy::receive(incoming, &tmp.file, size, shown)?;
    tmp.commit(path, shown, mode)
}

/// A write's temp file; removed on drop unless committed.
struct TempFile {
    file: fs::File,
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    /// Creates a fresh temp file beside `target`, never following or reusing
    /// whatever is already there.
    fn create(target: &Path) -> io::Result<TempFile> {
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..TMP_ATTEMPTS {
            let path = tmp_path(target, random_suffix());
            let opened = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            match opened {
                Ok(file) => {
                    return Ok(TempFile {
                        file,
                        path,
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Sets the mode, makes the content durable and renames the file into place.
    fn commit(mut self, target: &Path, shown: &str, mode: u32) -> Result<(), Fail> {
        // On the descriptor, never by path; and after the content, because a
        // write by a process without CAP_FSETID clears setuid/setgid bits.
        self.file
            .set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Fail::io(format!("chmod {shown}"), &e))?;
        self.file
            .sync_all()
            .map_err(|e| Fail::io(format!("fsync {shown}"), &e))?;
        fs::rename(&self.path, target).map_err(|e| Fail::io(format!("rename to {shown}"), &e))?;
        self.committed = true;
        // Make the rename itself durable before acknowledging.
        if let Some(parent) = target.parent() {
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Remove the name only while it is still our file: the directory's owner
        // may have replaced it meanwhile, and that is theirs to keep.
        let ours = match (self.file.metadata(), fs::symlink_metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// `<dir>/<name>.bhatti-tmp-<suffix>`, the name shortened if the whole would be
/// longer than the kernel allows.
fn tmp_path(target: &Path, suffix: u64) -> PathBuf {
    let name = target.file_name().map(|n| n.as_bytes()).unwrap_or_default();
    let tail = format!("{TMP_MARK}{suffix:016x}");
    // `tail` is 28 bytes, far below NAME_MAX.
    let keep = name.len().min(NAME_MAX.saturating_sub(tail.len()));
    let mut tmp = name[..keep].to_vec();
    tmp.extend_from_slice(tail.as_bytes());
    target.with_file_name(std::ffi::OsString::from_vec(tmp))
}

/// A temp-name suffix nobody can predict (std's per-process random hash keys
/// over the time and a counter); unpredictability is a courtesy, O_EXCL is the
/// guarantee.
fn random_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}

fn mkdir_p(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

pub async fn stat(agent: &Arc<Agent>, req: &Frame, tx: &FrameTx) {
    let res = match parse::<PathRequest>(req, "stat") {
        Ok(pr) => agent
            .fs_user()
            .run(move || {
                let p = check_path(&pr.path)?;
                let md = fs::metadata(&p).map_err(|e| Fail::io(format!("stat {}", pr.path), &e))?;
                Ok(file_info(base_name(&p), &md))
            })
            .await
            .unwrap_or_else(|e| Err(Fail::from(e.to_string()))),
        Err(e) => Err(e),
    };
    match res {
        Ok(info) => {
            tx.send_json(MsgType::FileStatResp, &info).await;
        }
        Err(e) => {
            tx.error(e).await;
        }
    }
}

pub async fn ls(agent: &Arc<Agent>, req: &Frame, tx: &FrameTx) {
    let res = match parse::<PathRequest>(req, "ls") {
        Ok(pr) => agent
            .fs_user()
            .run(move || list_dir(&pr.path))
            .await
            .unwrap_or_else(|e| Err(Fail::from(e.to_string()))),
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

fn list_dir(path: &str) -> Result<Vec<FileInfo>, Fail> {
    let p = check_path(path)?;
    let md = fs::metadata(&p).map_err(|e| Fail::io(format!("stat {path}"), &e))?;
    if !md.is_dir() {
        return Err(Fail::new(
            ErrorCode::NotADirectory,
            format!("{path} is not a directory"),
        ));
    }
    let mut names: Vec<std::ffi::OsString> = fs::read_dir(&p)
        .map_err(|e| Fail::io(format!("read {path}"), &e))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    let total = names.len();
    let mut out = Vec::with_capacity(total.min(MAX_LS_ENTRIES).saturating_add(1));
    for name in names.into_iter().take(MAX_LS_ENTRIES) {
        // Entries that vanish between readdir and lstat are skipped.
        if let Ok(md) = fs::symlink_metadata(p.join(&name)) {
            out.push(file_info(name.to_string_lossy().into_owned(), &md));
        }
    }
    if total > MAX_LS_ENTRIES {
        // The sentinel reports the real total (docs/protocol.md, "Behaviour
        // worth knowing").
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
    fn temp_names_sit_beside_the_target_and_fit_the_name_limit() {
        let t = tmp_path(Path::new("/w/n.txt"), 0xab);
        assert_eq!(t, Path::new("/w/n.txt.bhatti-tmp-00000000000000ab"));
        let long = "x".repeat(255);
        let t = tmp_path(&Path::new("/w").join(&long), 1);
        let name = t.file_name().expect("name").as_bytes();
        assert_eq!(name.len(), NAME_MAX);
        assert!(name.ends_with(b".bhatti-tmp-0000000000000001"));
        assert_eq!(t.parent(), Some(Path::new("/w")));
        assert_ne!(random_suffix(), random_suffix());
    }

    #[test]
    fn pseudo_files_do_not_report_their_size() {
        let f = fs::File::open("/proc/self/status").expect("open");
        let md = f.metadata().expect("stat");
        assert!(!size_is_real(&f, &md));
        let body = read_buffered(&f, "/proc/self/status").ok().expect("read");
        assert!(!body.is_empty());
        let me = fs::File::open("/proc/self/exe").expect("exe");
        let md = me.metadata().expect("stat");
        assert!(size_is_real(&me, &md));
    }

    #[test]
    fn paths_must_be_absolute_and_clean_of_nul() {
        assert!(check_path("").is_err());
        assert!(check_path("rel/x").is_err());
        assert!(check_path("/a\0b").is_err());
        assert!(check_path("/tmp/x").is_ok());
    }
}
