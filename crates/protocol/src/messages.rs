//! JSON payloads. Field names match the reference byte for byte; optional fields
//! are omitted when empty, and `null` from a Go peer (a nil map or slice) is read
//! as the empty value.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Reads `null` as `T::default()`: Go encodes nil maps and slices as `null`.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// EXEC_REQ. Dispatch order on the agent: `session_id` → attach; empty argv →
/// error; `detach` → detached; `tty` → TTY session; `session` → piped session;
/// otherwise one-shot piped exec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and its arguments; must not be empty (except to attach).
    #[serde(default, deserialize_with = "nullable")]
    pub argv: Vec<String>,
    /// Variables added to the guest's environment for this process.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    /// Run on a pseudo-terminal, as a persistent TTY session.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    /// Initial terminal height in rows (TTY only; 0 means 24).
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub rows: u16,
    /// Initial terminal width in columns (TTY only; 0 means 80).
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub cols: u16,
    /// Working directory; empty for the sandbox's default.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub cwd: String,
    /// Attach to this existing session instead of starting a process.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub session_id: String,
    /// Seconds a session may stay detached before it is killed; 0 or less
    /// for the agent's default.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub max_idle_sec: i64,
    /// With `session_id`: fail with `Busy` instead of taking the session over
    /// from a client that is attached.
    #[serde(default, skip_serializing_if = "is_false")]
    pub if_detached: bool,
    /// Start in the background, output to `output_file`; the answer is a
    /// [`DetachedInfo`] and the connection ends.
    #[serde(default, skip_serializing_if = "is_false")]
    pub detach: bool,
    /// With `detach`: absolute guest path for stdout and stderr; empty for a
    /// fresh file under `/tmp`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub output_file: String,
    /// Run as a persistent piped session (stderr merged into stdout) that
    /// outlives the connection.
    #[serde(default, skip_serializing_if = "is_false")]
    pub session: bool,
    /// Addition: run as this guest user (a name, a uid, or `user:group`)
    /// instead of the sandbox's; empty is the sandbox's.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
}

impl ExecRequest {
    /// A one-shot piped exec of `argv`.
    pub fn new<I, S>(argv: I) -> ExecRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
}

/// One entry of the agent's session registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The id to attach or kill it by.
    pub session_id: String,
    /// The argv joined with spaces.
    #[serde(default, deserialize_with = "nullable")]
    pub argv: String,
    /// Whether it runs on a pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
    /// False once its process has exited.
    #[serde(default)]
    pub running: bool,
    /// Absent while the process runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether a client is attached to it now.
    #[serde(default)]
    pub attached: bool,
    /// When it was started, in Unix seconds.
    #[serde(default)]
    pub created_at: i64,
}

/// ACTIVITY_RESP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityInfo {
    /// When the agent last saw work (an exec, a file read or write, session
    /// input), in Unix seconds.
    pub last_activity_unix: i64,
    /// Sessions whose process has not exited.
    pub active_sessions: i64,
    /// Sessions with a connected client.
    pub attached_sessions: i64,
}

/// FILE_STAT_RESP and the entries of FILE_LS_RESP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The entry's base name (not its full path).
    pub name: String,
    /// Size in bytes as `stat` reports it.
    pub size: i64,
    /// Four-digit octal permission string, e.g. `"0755"`.
    pub mode: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Last modification, in Unix seconds.
    pub mtime: i64,
}

/// FILE_READ_REQ. Any of `offset`/`limit`/`max_bytes` above zero selects a
/// line-based truncated read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReadRequest {
    /// Absolute guest path of the file.
    pub path: String,
    /// 1-based first line.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub offset: i64,
    /// Maximum number of lines.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub limit: i64,
    /// Byte budget; the last line may be cut.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub max_bytes: i64,
}

impl FileReadRequest {
    /// True when the request asks for a line-based truncated read rather
    /// than the whole file.
    pub fn is_truncated(&self) -> bool {
        self.offset > 0 || self.limit > 0 || self.max_bytes > 0
    }
}

/// FILE_READ_RESP: the total size of the file (not of what is sent) and its mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReadResponse {
    /// Total file size in bytes.
    pub size: i64,
    /// Four-digit octal permission string, e.g. `"0644"`.
    pub mode: String,
}

/// FILE_WRITE_REQ, followed by `size` bytes in STDIN frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWriteRequest {
    /// Absolute guest path to write; the file is replaced whole.
    pub path: String,
    /// Octal permission string such as `"0644"`; empty or invalid means `0644`.
    #[serde(default)]
    pub mode: String,
    /// Exact number of content bytes that follow; 0 to
    /// [`MAX_FILE_WRITE`](crate::MAX_FILE_WRITE).
    pub size: i64,
}

/// FILE_STAT_REQ / FILE_LS_REQ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    /// Absolute guest path to stat or list.
    pub path: String,
}

/// WATCH_REQ (addition): watch a directory, and with `recursive` every
/// directory under it, for as long as the connection stays open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// Absolute guest path of the directory to watch.
    pub path: String,
    /// Also watch the directories under it, including ones created later
    /// (the agent caps depth and count).
    #[serde(default)]
    pub recursive: bool,
}

/// What happened to a watched name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchOp {
    /// Created, or moved in.
    Create,
    /// Its content changed.
    Write,
    /// Deleted.
    Remove,
    /// Moved away (its new name, if still watched, comes as a create).
    Rename,
    /// Its mode, owner or times changed.
    Chmod,
    /// The kernel's queue overflowed: events were lost since the last one.
    Overflow,
    /// An op this host does not know yet.
    #[serde(other)]
    Unknown,
}

/// WATCH_EVENT (addition): one change; `name` is relative to the watched
/// directory (`sub/file` under a recursive watch; empty for an overflow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Path relative to the watched directory.
    pub name: String,
    /// What happened to it.
    pub op: WatchOp,
}

/// An agent's HELLO feature: it serves WATCH_REQ.
pub const FEATURE_FILES_WATCH: &str = "files.watch";

/// FILE_WRITE_RESP and FWD_RESP: `{"status":"ok"}` or `{"status":"error","message":…}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `"ok"` or `"error"`.
    pub status: String,
    /// What went wrong, with `"error"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// This implementation's addition (v1 hosts ignore unknown fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

impl StatusResponse {
    /// `{"status":"ok"}`.
    pub fn ok() -> StatusResponse {
        StatusResponse {
            status: "ok".into(),
            message: None,
            code: None,
        }
    }

    /// `{"status":"error","message":msg}`, without a code.
    pub fn error(msg: impl Into<String>) -> StatusResponse {
        StatusResponse {
            status: "error".into(),
            message: Some(msg.into()),
            code: None,
        }
    }

    /// True for `"ok"`; anything else is a failure.
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// FWD_REQ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwdRequest {
    /// TCP port on the guest's loopback to connect the tunnel to.
    pub port: u16,
}

/// EXEC_KILL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecKillRequest {
    /// The session whose process group gets SIGKILL.
    pub session_id: String,
}

/// The STDOUT payload answering a detached exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachedInfo {
    /// Guest pid of the started process (0 if it was not known).
    pub pid: i64,
    /// Guest path that receives its stdout and stderr.
    pub output_file: String,
}

/// HELLO (this implementation's addition; a v1 agent answers it with
/// `ERROR "unexpected frame type 0x70"`, which tells the host it is v1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The host's protocol version, [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub version: u32,
    /// Free-form name and version of the host client, for the agent's logs.
    #[serde(default)]
    pub client: String,
    /// What the host understands beyond v1 (e.g. [`FEATURE_ERROR_CODES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// A feature both sides announce: a connection whose first request is a
/// HELLO naming it, and whose HELLO_RESP names it too, stays open after
/// each operation that ends cleanly and carries the next request, so a
/// host pays connect and AUTH once instead of per operation. Which
/// operations leave the connection open, and how a one-shot exec's late
/// STDIN/KILL frames are told from the next request: docs/protocol.md,
/// "Connection reuse". A connection without it carries one request, as in
/// v1.
pub const FEATURE_CONN_REUSE: &str = "conn.reuse";

/// An agent's HELLO feature: it serves APPLY_CONFIG_REQ ([`ApplyConfig`]).
pub const FEATURE_CONFIG_APPLY: &str = "config.apply";

/// The most entropy one [`ApplyConfig`] carries (bytes, before base64).
pub const MAX_APPLY_ENTROPY: usize = 512;

/// APPLY_CONFIG_REQ: what makes a booted guest one sandbox, delivered to a
/// guest that booted (or was restored from a memory image) without it: a
/// pooled VM being claimed, a sandbox made from a template snapshot. Every
/// field is optional; what is absent stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyConfig {
    /// The guest's hostname (`/etc/hostname`, `/etc/hosts` too).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Environment added to every later exec and session, over the boot
    /// configuration's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files to write, keyed by absolute guest path (as at boot).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, crate::config::ConfigFile>,
    /// The token every later connection must present; the one the request
    /// came with stops working. Empty: unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// Fresh random bytes (base64, at most [`MAX_APPLY_ENTROPY`]) mixed into
    /// the guest kernel's pool and credited, so guests restored from one
    /// memory image do not share their RNG's state.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub entropy: String,
    /// A script started as the attachable TTY session `init` (as at boot).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub init: String,
    /// The host's wall clock (ms since the Unix epoch): a guest restored
    /// from a memory image wakes with the image's time. 0: unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unix_time_ms: u64,
    /// A new MAC address for the guest's `eth0` (`02:…`, unicast): guests
    /// restored from one memory image would otherwise share the image's.
    /// Empty: unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// APPLY_CONFIG_RESP: what was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyConfigResult {
    /// The hostname was set (guest mode only).
    #[serde(default)]
    pub hostname: bool,
    /// Files written.
    #[serde(default)]
    pub files: u32,
    /// Environment variables added.
    #[serde(default)]
    pub env: u32,
    /// Bytes mixed into and credited to the kernel's pool (guest mode only).
    #[serde(default)]
    pub entropy_bytes: u32,
    /// The token was replaced.
    #[serde(default)]
    pub token: bool,
    /// The init session was started.
    #[serde(default)]
    pub init: bool,
    /// The wall clock was set (guest mode only).
    #[serde(default)]
    pub clock: bool,
    /// `eth0` took the new MAC address (guest mode only). False from an
    /// agent that predates the field, or whose NIC cannot change its
    /// address while up: the host then keeps the old one.
    #[serde(default)]
    pub mac: bool,
}

/// A host's HELLO feature: from then on the agent's ERROR payloads are
/// JSON [`ErrorBody`]s instead of bare text. Without it (a v1 host, which
/// never sends HELLO) errors stay text, as v1 defines them.
pub const FEATURE_ERROR_CODES: &str = "error_codes";

/// What kind of failure an agent error is: the host picks its answer (404,
/// 403, 409 …) from this, never from the message's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No such file, directory, session or command.
    NotFound,
    /// The guest user may not do this (file permissions, a root-only path).
    PermissionDenied,
    /// A path runs through something that is not a directory.
    NotADirectory,
    /// A file operation named a directory.
    IsADirectory,
    /// The name to create is taken.
    AlreadyExists,
    /// A path component or the whole path is longer than the guest allows.
    NameTooLong,
    /// The request itself is malformed (bad path, bad JSON, empty argv).
    InvalidInput,
    /// More data than the request declared or the guest accepts.
    TooLarge,
    /// The guest's disk or quota is full.
    NoSpace,
    /// The target is in use (an attached session).
    Busy,
    /// A request named a guest user that does not exist (an older host
    /// reads it as [`ErrorCode::Other`]).
    NoSuchUser,
    /// Anything else, and any code of a newer agent this host does not know.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The code of an I/O failure in the guest.
    pub fn of_io(e: &std::io::Error) -> ErrorCode {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => ErrorCode::NotFound,
            K::PermissionDenied => ErrorCode::PermissionDenied,
            K::NotADirectory => ErrorCode::NotADirectory,
            K::IsADirectory => ErrorCode::IsADirectory,
            K::AlreadyExists => ErrorCode::AlreadyExists,
            K::InvalidFilename => ErrorCode::NameTooLong,
            K::InvalidInput => ErrorCode::InvalidInput,
            K::FileTooLarge => ErrorCode::TooLarge,
            K::StorageFull | K::QuotaExceeded => ErrorCode::NoSpace,
            K::ResourceBusy => ErrorCode::Busy,
            _ => ErrorCode::Other,
        }
    }
}

/// A coded ERROR payload (once the host announced [`FEATURE_ERROR_CODES`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What kind of failure it is.
    pub code: ErrorCode,
    /// Human-readable detail, for logs and people only.
    pub message: String,
}

impl ErrorBody {
    /// Reads a coded payload; `None` for v1's bare text.
    pub fn parse(payload: &[u8]) -> Option<ErrorBody> {
        if payload.first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(payload).ok()
    }
}

/// HELLO_RESP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResponse {
    /// The agent's protocol version.
    pub version: u32,
    /// Free-form name and version of the agent, e.g. `lohar 0.3.0`.
    #[serde(default)]
    pub agent: String,
    /// What the agent serves beyond v1 (e.g. [`FEATURE_FILES_WATCH`]).
    #[serde(default, deserialize_with = "nullable")]
    pub features: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies() {
        let b = ErrorBody {
            code: ErrorCode::NotFound,
            message: "open /x: No such file or directory".into(),
        };
        let wire = serde_json::to_vec(&b).unwrap();
        assert_eq!(ErrorBody::parse(&wire), Some(b));
        // v1 text is not a coded body, and a newer agent's code is Other.
        assert_eq!(ErrorBody::parse(b"session not found"), None);
        let newer = br#"{"code":"quantum_flux","message":"m"}"#;
        assert_eq!(ErrorBody::parse(newer).unwrap().code, ErrorCode::Other);
        let e = std::io::Error::from(std::io::ErrorKind::NotADirectory);
        assert_eq!(ErrorCode::of_io(&e), ErrorCode::NotADirectory);
        // HELLO without features is v1-shaped on the wire.
        let h = Hello {
            version: 2,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"version":2,"client":""}"#
        );
    }

    #[test]
    fn exec_request_omits_empty_fields() {
        let r = ExecRequest::new(["true"]);
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"argv":["true"]}"#);
        let mut r = ExecRequest::new(["sh"]);
        r.tty = true;
        r.rows = 24;
        r.cols = 80;
        r.env.insert("A".into(), "b".into());
        r.session_id = "s1".into();
        r.max_idle_sec = 3600;
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["env"]["A"], "b");
        assert_eq!(v["session_id"], "s1");
        assert_eq!(v["max_idle_sec"], 3600);
        assert!(v.get("detach").is_none());
    }

    #[test]
    fn go_nulls_read_as_empty() {
        let r: ExecRequest = serde_json::from_str(
            r#"{"argv":["ls"],"env":null,"cwd":"","session_id":null,"tty":false}"#,
        )
        .unwrap();
        assert_eq!(r.argv, vec!["ls"]);
        assert!(r.env.is_empty() && r.session_id.is_empty());
        let r: ExecRequest = serde_json::from_str(r#"{"argv":null}"#).unwrap();
        assert!(r.argv.is_empty());
        let h: HelloResponse =
            serde_json::from_str(r#"{"version":2,"agent":"x","features":null}"#).unwrap();
        assert!(h.features.is_empty());
    }

    #[test]
    fn session_info_exit_code_only_when_exited() {
        let mut s = SessionInfo {
            session_id: "s1".into(),
            argv: "bash -li".into(),
            tty: true,
            running: true,
            attached: true,
            created_at: 1,
            exit_code: None,
        };
        assert!(!serde_json::to_string(&s).unwrap().contains("exit_code"));
        s.exit_code = Some(-1);
        s.running = false;
        let back: SessionInfo = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn status_and_read_request_shapes() {
        assert_eq!(
            serde_json::to_string(&StatusResponse::ok()).unwrap(),
            r#"{"status":"ok"}"#
        );
        let e: StatusResponse =
            serde_json::from_str(r#"{"status":"error","message":"dial: refused"}"#).unwrap();
        assert!(!e.is_ok());
        let r = FileReadRequest {
            path: "/x".into(),
            ..Default::default()
        };
        assert!(!r.is_truncated());
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"path":"/x"}"#);
        let r: FileReadRequest = serde_json::from_str(r#"{"path":"/x","limit":5}"#).unwrap();
        assert!(r.is_truncated());
    }
}
