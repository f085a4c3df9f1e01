//! The JSON shapes of bhatti's HTTP API (docs/api.md), in one
//! place so the server and the client library cannot drift apart.
//!
//! Every type derives [`schemars::JsonSchema`]; the server's
//! `GET /openapi.json` is assembled from these schemas and its route table,
//! so the document is generated from the code that serves it.
//!
//! Field names and optionality follow the reference API: requests accept
//! missing fields (defaults apply server-side), responses omit absent
//! optionals. Request bodies are JSON objects; a field the type does not
//! have is refused (`deny_unknown_fields`, `additionalProperties: false`),
//! so a misspelt option is an error instead of a silent default. The
//! values each field accepts are the server's rules, in [`rules`].

#![forbid(unsafe_code)]

mod enums;
mod publish;
pub mod rules;

pub use enums::{EngineKind, ErrorCode, ErrorReason, SandboxStatus, ThermalState};
pub use publish::{Publish, PublishRule, ShareToken};

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Header carrying the server version on every API response.
pub const VERSION_HEADER: &str = "x-bhatti-version";
/// Header set to `true` when an idempotent create returned an existing record.
pub const EXISTING_HEADER: &str = "x-bhatti-existing";
/// Header carrying the total size of a file on reads and stats.
pub const FILE_SIZE_HEADER: &str = "x-file-size";
/// Header carrying a file's permission bits, four octal digits, on reads and stats.
pub const FILE_MODE_HEADER: &str = "x-file-mode";
/// Header set to `true` or `false` on a stat: whether the path is a directory.
pub const FILE_ISDIR_HEADER: &str = "x-file-isdir";
/// Media type of streamed exec output.
pub const NDJSON: &str = "application/x-ndjson";

/// `{"error": …, "code": …}`; 500s also carry the request ID that the log
/// line has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What went wrong, in words for people; programs use `code`.
    pub error: String,
    /// Absent only from servers older than error codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Why, where a client can act on it (see [`ErrorReason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorReason>,
    /// With 500s: the ID under which the server logged the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `{"status": …}` answers (`ok`, `destroyed`, `deleted` …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatusBody {
    /// The outcome, one word.
    pub status: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// `ok` while the daemon serves requests.
    pub status: String,
    /// Time since the daemon started, as `<h>h<m>m<s>s`.
    pub uptime: String,
    /// The daemon's version; empty from servers too old to say.
    #[serde(default)]
    pub version: String,
    /// Which engine the daemon runs.
    #[serde(default)]
    pub engine: EngineKind,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sandbox {
    /// Unique ID; routes take it or the name.
    pub id: String,
    /// Unique among the owner's sandboxes.
    pub name: String,
    /// Where it is in its lifecycle.
    pub status: SandboxStatus,
    /// Why the status is `crashed` or `unknown` (how the VM ended, a failed
    /// restore, a missing disk …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_reason: String,
    /// The guest's IPv4 address on the daemon's sandbox network; empty
    /// while it has none.
    pub ip: String,
    /// The engine that runs it.
    pub engine: EngineKind,
    /// The template it was created from; empty for none.
    #[serde(default)]
    pub template_id: String,
    /// Whole vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Root disk size in MiB; 0 when it is the image's own size.
    #[serde(default)]
    pub disk_size_mb: u64,
    /// Name of the image its root disk was made from.
    pub image: String,
    /// Selector labels, as set at create and by `PATCH`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Exempt from idle pausing and snapshotting: it stays hot.
    #[serde(default)]
    pub keep_hot: bool,
    /// Egress policy in force: `public`, `deny`, or the allowed CIDRs.
    /// Absent while the engine holds no state for the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    /// ID of the user who owns it.
    #[serde(default)]
    pub created_by: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// When it last stopped or crashed (RFC 3339 UTC); absent while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    /// Only while running (list only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thermal: Option<ThermalState>,
    /// When the lifetime ends; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `kill` or `pause`: what the end of the lifetime does.
    #[serde(default)]
    pub on_expiry: String,
    /// Free-form caller metadata, as given at create.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Public URLs of its published ports (`POST /sandboxes/{id}/publish`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// A persistent volume to attach at create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// The caller's volume of that name.
    #[schemars(schema_with = "rules::name")]
    pub name: String,
    /// Where in the guest; not a system directory.
    #[schemars(schema_with = "rules::mount_path")]
    pub mount: String,
    /// With `auto_create`: the size of a volume that does not exist yet.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(schema_with = "rules::optional_volume_size_mb")]
    pub size_mb: Option<u64>,
    /// Create the volume if the caller has none of that name.
    #[serde(default)]
    pub auto_create: bool,
    /// Mount it read-only in the guest.
    #[serde(default)]
    pub read_only: bool,
}

/// A file to place into the guest at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFile {
    /// Absolute path in the guest; missing parent directories are created.
    #[schemars(schema_with = "rules::guest_path")]
    pub guest_path: String,
    /// Base64.
    #[schemars(schema_with = "rules::base64")]
    pub content: String,
    /// Octal, default `"0644"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_file_mode")]
    pub mode: Option<String>,
}

/// `POST /sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "web", "env": {"GREETING": "hi"}, "labels": {"app": "web"}, "files": [{"guest_path": "/workspace/hello.txt", "content": "aGVsbG8=", "mode": "0644"}]}))]
pub struct CreateSandbox {
    /// Absent or empty: `sandbox-<6 hex>` (or the template's name and 6
    /// hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_name_or_empty")]
    pub name: Option<String>,
    /// One of the caller's templates (ID or name): its values are the
    /// defaults for every field this request leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// Image name (the caller's, else an admin one); absent: the daemon's
    /// default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whole vCPUs; fractions are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_cpus")]
    pub cpus: Option<f64>,
    /// 0 or absent: the daemon's default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(schema_with = "rules::optional_memory_mb_or_zero")]
    pub memory_mb: Option<u64>,
    /// 0 or absent: the image's size.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(schema_with = "rules::optional_disk_size_mb")]
    pub disk_size_mb: Option<u64>,
    /// Environment variables for every command run in the sandbox.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rules::env")]
    pub env: BTreeMap<String, String>,
    /// Shell script run at boot, as the attachable session `init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Never pause or snapshot it when idle.
    #[serde(default)]
    pub keep_hot: bool,
    /// Accepted for compatibility; no effect on this engine.
    #[serde(default)]
    pub hugepages: bool,
    /// Volumes to attach, in mount order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persistent_volumes: Vec<VolumeMount>,
    /// Names of your secrets, each injected as the environment variable of
    /// that name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "rules::secret_names")]
    pub secrets: Vec<String>,
    /// Files written into the guest at boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<CreateFile>,
    /// Selector labels (`GET /sandboxes?label=k=v`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rules::labels")]
    pub labels: BTreeMap<String, String>,
    /// Fork: copy this running sandbox (name or ID) — memory, processes and
    /// disks — into the new one while it keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Egress policy: `public` (default; no link-local or private
    /// destinations unless the daemon allows them), `deny` (only the
    /// owner's own sandboxes), or CIDRs to allow (plus the owner's own
    /// sandboxes). A fork without one keeps its source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_egress")]
    pub egress: Option<Egress>,
    /// Lifetime in seconds from now; when it ends the sandbox is killed
    /// (or stopped, with `on_expiry: "pause"`). None: no limit.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(range(max = 2592000))]
    pub timeout_secs: Option<u64>,
    /// `kill` (default) or `pause`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(kill|pause)?$"))]
    pub on_expiry: Option<String>,
    /// Free-form caller metadata, returned as given (at most 64 keys of 1
    /// to 256 characters, values of at most 1024).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rules::metadata")]
    pub metadata: BTreeMap<String, String>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SetTimeout {
    /// Seconds from now; 0 or absent removes the limit.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(range(max = 2592000))]
    pub timeout_secs: Option<u64>,
    /// `kill` or `pause`: what the end of the lifetime does; absent keeps
    /// the current choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(kill|pause)?$"))]
    pub on_expiry: Option<String>,
}

/// Per-sandbox egress policy in requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Egress {
    /// `"public"` or `"deny"`.
    Mode(String),
    /// Allowed destination CIDRs.
    Allow(Vec<String>),
}

/// `PATCH /sandboxes/:id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"labels_add": {"tier": "dev"}, "keep_hot": false}))]
pub struct PatchSandbox {
    /// Set or clear `keep_hot`; `true` also wakes the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hot: Option<bool>,
    /// Rename it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_name")]
    pub name: Option<String>,
    /// Labels to set (added or overwritten).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rules::labels")]
    pub labels_add: BTreeMap<String, String>,
    /// Label keys to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "rules::label_keys")]
    pub labels_remove: Vec<String>,
    /// New egress policy, as at create; applied at once, also to
    /// connections the sandbox opened before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_egress")]
    pub egress: Option<Egress>,
}

/// `POST /sandboxes/:id/start` (body optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"force": false}))]
pub struct StartSandbox {
    /// Start even after a failed restore (clears the restore-failed breaker).
    #[serde(default)]
    pub force: bool,
}

/// `POST /sandboxes/:id/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"cmd": ["sh", "-c", "echo hi"], "timeout_sec": 30}))]
#[schemars(transform = rules::no_stdin_when_detached)]
pub struct ExecRequest {
    /// The program and its arguments (no shell; `["sh", "-c", …]` for one).
    #[schemars(schema_with = "rules::argv")]
    pub cmd: Vec<String>,
    /// Default 300; values ≤ 0 or > 86400 mean 300.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(schema_with = "rules::optional_i64")]
    pub timeout_sec: Option<i64>,
    /// Run in the background and answer at once with a `DetachedResponse`.
    #[serde(default)]
    pub detach: bool,
    /// Detached: where the output goes (default chosen by the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_guest_path_or_empty")]
    pub output_file: Option<String>,
    /// Variables for this command, over the sandbox's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rules::env")]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute; default the sandbox's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_guest_path_or_empty")]
    pub cwd: Option<String>,
    /// Guest user to run as: a name, a uid, or `uid:gid` (default the
    /// sandbox's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_exec_user")]
    pub user: Option<String>,
    /// Text fed to the command's stdin, which is then closed (not with
    /// `detach`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
}

/// Buffered exec result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecResponse {
    /// The process's exit status; 128 + the signal number if a signal ended it.
    pub exit_code: i32,
    /// Everything written to stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything written to stderr (lossy UTF-8), plus a marker line if the
    /// output was cut at 10 MiB.
    pub stderr: String,
}

/// Detached exec result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DetachedResponse {
    /// The process's pid in the guest.
    pub pid: i64,
    /// Guest path that receives its stdout and stderr.
    pub output_file: String,
    /// Always `true`: tells this answer from an `ExecResponse`.
    pub detached: bool,
}

/// One line of a streamed (NDJSON) exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecEvent {
    /// Output on stdout.
    Stdout {
        /// The bytes, as (lossy) UTF-8.
        data: String,
    },
    /// Output on stderr.
    Stderr {
        /// The bytes, as (lossy) UTF-8.
        data: String,
    },
    /// The process ended.
    Exit {
        /// Its exit status; 128 + the signal number if a signal ended it.
        exit_code: i32,
    },
    /// The command could not run, or the stream broke.
    Error {
        /// What went wrong, for people.
        data: String,
        /// Why, for programs (e.g. `not_found`: no such program);
        /// absent when there is no more to say than the words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<ErrorCode>,
        /// More precisely than the code (e.g. `no_such_user`), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<ErrorReason>,
    },
}

/// A session inside a sandbox (`GET /sandboxes/:id/sessions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    /// The ID to attach to (`/ws?session=`) or kill it by.
    pub session_id: String,
    /// Its command line, the arguments joined with spaces.
    #[serde(default)]
    pub argv: String,
    /// Whether it runs on a terminal (a shell) rather than pipes.
    #[serde(default)]
    pub tty: bool,
    /// False once its process has exited.
    #[serde(default)]
    pub running: bool,
    /// Set once the process has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether a client is connected to it now.
    #[serde(default)]
    pub attached: bool,
    /// When it started, in Unix seconds.
    #[serde(default)]
    pub created_at: i64,
}

/// An entry of `GET …/files?ls=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileInfo {
    /// The entry's name within the directory.
    pub name: String,
    /// Size in bytes.
    pub size: i64,
    /// Permission bits, four octal digits (e.g. `0644`).
    pub mode: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Last modification, in Unix seconds.
    #[serde(default)]
    pub mtime: i64,
}

/// `GET /sandboxes/:id/stats`: one reading taken in the guest now (what the
/// sandbox's own code sees: CPU over a short window, memory, root disk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxStats {
    /// RFC 3339.
    pub at: String,
    /// vCPUs the guest sees.
    pub cpu_count: u32,
    /// Busy share of all CPUs over the window, 0 to 100.
    pub cpu_used_pct: f32,
    /// Memory in use by processes, in bytes.
    pub mem_used_bytes: u64,
    /// Memory the guest has, in bytes.
    pub mem_total_bytes: u64,
    /// Page cache and buffers (counted apart from used).
    pub mem_cache_bytes: u64,
    /// Used space on the root filesystem, in bytes.
    pub disk_used_bytes: u64,
    /// Size of the root filesystem, in bytes.
    pub disk_total_bytes: u64,
}

/// A listening port and where the authenticated proxy serves it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Port {
    /// The sandbox listening; only in the all-sandboxes list (`GET /ports`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// The TCP port listening in the guest.
    pub container_port: u16,
    /// Path on this server that proxies to it (`/sandboxes/{id}/proxy/{port}/`).
    pub proxy_url: String,
}

/// `POST /secrets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "API_TOKEN", "value": "s3cret"}))]
pub struct SetSecret {
    /// It becomes an environment variable's name.
    #[schemars(schema_with = "rules::secret_name")]
    pub name: String,
    /// At most 64 KiB (UTF-8 bytes).
    #[schemars(schema_with = "rules::secret_value")]
    pub value: String,
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Secret {
    /// Its name, also the environment variable it becomes.
    pub name: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// When the value was last set (RFC 3339 UTC).
    pub updated_at: String,
}

/// A per-user template (`POST /templates` and answers): defaults for
/// `POST /sandboxes` with `template_id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "py", "cpus": 1, "memory_mb": 512, "env": {"LANG": "C.UTF-8"}}))]
pub struct Template {
    /// Assigned by the server.
    #[serde(default)]
    #[schemars(schema_with = "rules::read_only_string")]
    pub id: String,
    /// Unique among the caller's templates; also the stem of the names of
    /// sandboxes created from it without one.
    #[schemars(schema_with = "rules::name")]
    pub name: String,
    /// Image name; empty for the daemon's default.
    #[serde(default)]
    pub image: String,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_cpus")]
    pub cpus: Option<f64>,
    /// Default 2048.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(schema_with = "rules::optional_memory_mb")]
    pub memory_mb: Option<u64>,
    /// Root disk size in MiB; 0 for the image's own size.
    #[serde(default, deserialize_with = "rules::int::whole")]
    #[schemars(schema_with = "rules::disk_size_mb")]
    pub disk_size_mb: u64,
    /// Environment variables; a create's own win over these.
    #[serde(default)]
    #[schemars(schema_with = "rules::env")]
    pub env: BTreeMap<String, String>,
    /// Secret names, added to a create's.
    #[serde(default)]
    #[schemars(schema_with = "rules::secret_names")]
    pub secrets: Vec<String>,
    /// Boot files, for paths a create does not name itself.
    #[serde(default)]
    pub files: Vec<CreateFile>,
    /// Volumes, for names a create does not attach itself.
    #[serde(default)]
    pub persistent_volumes: Vec<VolumeMount>,
    /// Boot script; empty for none.
    #[serde(default)]
    pub init: String,
    /// Labels; a create's own win over these.
    #[serde(default)]
    #[schemars(schema_with = "rules::labels")]
    pub labels: BTreeMap<String, String>,
    /// Set by the server (RFC 3339 UTC).
    #[serde(default)]
    #[schemars(schema_with = "rules::read_only_string")]
    pub created_at: String,
}

/// `POST /volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "data", "size_mb": 64}))]
pub struct CreateVolume {
    /// Unique among the caller's volumes.
    #[schemars(schema_with = "rules::name")]
    pub name: String,
    /// Size in MiB.
    #[serde(deserialize_with = "rules::int::whole")]
    #[schemars(schema_with = "rules::volume_size_mb")]
    pub size_mb: u64,
}

/// `POST /volumes/:name/resize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"size_mb": 128}))]
pub struct ResizeVolume {
    /// The new size; larger than the current one (409 otherwise).
    #[serde(deserialize_with = "rules::int::whole")]
    #[schemars(schema_with = "rules::volume_size_mb")]
    pub size_mb: u64,
}

/// A backup of a volume in the backup bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeBackup {
    /// Unique ID.
    pub id: String,
    /// The volume's name.
    pub volume_name: String,
    /// Its owner.
    pub user_id: String,
    /// The object's key: `volumes/<user>/<volume>/<RFC 3339>.ext4.zst`.
    pub s3_key: String,
    /// Size of the uncompressed volume image, in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the uncompressed image (hex); a restore checks it.
    pub sha256: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// `POST /volumes/:name/backups/restore`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"backup_id": "0123456789abcdef"}))]
pub struct RestoreBackup {
    /// One of the volume's backups.
    pub backup_id: String,
}

/// `POST /volumes/:name/backups/restore` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Restored {
    /// `restored`.
    pub status: String,
    /// The backup the volume now holds.
    pub backup_id: String,
}

/// `POST /volumes/:name/snapshot` (clone) and
/// `POST /sandboxes/:id/checkpoint`: the new object's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "copy-1"}))]
pub struct NameBody {
    /// Must not be taken among the caller's objects of that kind.
    #[schemars(schema_with = "rules::name")]
    pub name: String,
}

/// `POST /snapshots/:name/resume` (body optional): the new sandbox's name;
/// empty or absent for `<snapshot>-<6 hex>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "restored"}))]
pub struct ResumeSnapshot {
    /// The new sandbox's name; empty for `<snapshot>-<6 hex>`.
    #[serde(default)]
    #[schemars(schema_with = "rules::name_or_empty")]
    pub name: String,
}

/// A volume attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeAttachment {
    /// The sandbox it is attached to.
    pub sandbox_id: String,
    /// Its mount point in that guest.
    pub mount: String,
    /// Whether it is mounted read-only there.
    pub read_only: bool,
}

/// A persistent volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Volume {
    /// Unique ID.
    pub id: String,
    /// ID of the owner.
    pub user_id: String,
    /// Unique among the owner's volumes; routes take it.
    pub name: String,
    /// Size in MiB.
    pub size_mb: u64,
    /// `creating` or `ready`.
    pub status: String,
    /// Only on `GET /volumes/:name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<VolumeAttachment>>,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// `POST /volumes/:name/resize` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resized {
    /// `resized`.
    pub status: String,
    /// The new size in MiB.
    pub size_mb: u64,
}

/// A named snapshot (checkpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    /// Unique ID.
    pub id: String,
    /// ID of the owner.
    pub user_id: String,
    /// Unique among the owner's snapshots; routes take it.
    pub name: String,
    /// ID of the sandbox it was taken from (which may be gone since).
    pub source_sandbox: String,
    /// Space it takes on the host, in MiB (rounded down).
    pub size_mb: u64,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// An image record (`GET /images`, `GET /images/:name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Image {
    /// Unique ID.
    pub id: String,
    /// Owner; `""` = an admin (global) image.
    pub user_id: String,
    /// What creates and templates call it (`image`).
    pub name: String,
    /// `built-in` | `oci:<ref>` | `import:<name>` | `saved:<sandbox id>`.
    pub source: String,
    /// Size of its disk image file, in MiB.
    pub size_mb: u64,
    /// The registry digest the image was pulled at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_digest: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// What in the image changes how it runs in a sandbox (it ships
    /// systemd or dockerd, has no shell or no sudo …), one sentence each;
    /// absent when nothing does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `POST /images/pull`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"ref": "127.0.0.1:5000/python:3.12", "name": "python"}))]
pub struct PullImage {
    /// An OCI reference: `[registry/]repository[:tag|@digest]`.
    #[serde(rename = "ref")]
    #[schemars(schema_with = "rules::image_ref")]
    pub reference: String,
    /// The image's name here; the repository's last path segment when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_name")]
    pub name: Option<String>,
    /// `user:token` for the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// `POST /images/pull` answer: 202 with a task, or 200 when the same name
/// already holds the same digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PullStarted {
    /// `running` (202) or `exists` (200).
    pub status: String,
    /// With `running`: the task to follow (`GET /tasks/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// With `exists`: the image's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// With `exists`: the registry digest it already holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `POST /images/import` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Imported {
    /// The new image's name.
    pub name: String,
    /// Size of its disk image file, in MiB.
    pub size_mb: u64,
    /// As [`Image::warnings`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One layer's download progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LayerProgress {
    /// The layer blob's digest (`sha256:<hex>`).
    pub digest: String,
    /// Compressed size from the manifest.
    pub size: u64,
    /// Bytes downloaded (equal to `size` when the blob was cached).
    pub done: u64,
}

/// A background task's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskProgress {
    /// `resolving` | `downloading` | `unpacking` | `building` | `done`.
    pub phase: String,
    /// Per-layer download progress, once the manifest is known.
    #[serde(default)]
    pub layers: Vec<LayerProgress>,
}

/// A background task (`GET /tasks/:id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    /// Unique ID, as `PullStarted.task_id` gave it.
    pub id: String,
    /// ID of the owner.
    pub user_id: String,
    /// `image_pull`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `running` | `completed` | `failed`.
    pub status: String,
    /// Where the work is.
    pub progress: TaskProgress,
    /// On completion: the result as a JSON string (the image record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// With `failed`: why, in words for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// When it completed or failed (RFC 3339 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// WebSocket shell: the first text message from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsServerMsg {
    /// Connected: the session this socket drives.
    Session {
        /// Its ID, to reattach with `?session=`.
        session_id: String,
    },
    /// The process ended; the socket closes next.
    Exit {
        /// Its exit status; 128 + the signal number if a signal ended it.
        exit_code: i32,
    },
    /// The session could not be opened or the agent failed; the socket
    /// closes next.
    Error {
        /// What went wrong, for people.
        message: String,
    },
}

/// WebSocket shell: a text message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsClientMsg {
    /// The terminal's new size.
    Resize {
        /// Height in character rows.
        rows: u16,
        /// Width in character columns.
        cols: u16,
    },
}

/// `/exec/ws`: the first client message of a new piped session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PipedStart {
    /// The program and its arguments; must not be empty.
    pub cmd: Vec<String>,
    /// Variables for this command, over the sandbox's.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds the session may stay detached before it is killed; absent:
    /// 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_sec: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_events_are_tagged_like_the_reference() {
        let e = ExecEvent::Stdout { data: "hi".into() };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"stdout","data":"hi"}"#
        );
        let x: ExecEvent = serde_json::from_str(r#"{"type":"exit","exit_code":-1}"#).unwrap();
        assert_eq!(x, ExecEvent::Exit { exit_code: -1 });
    }

    #[test]
    fn ws_messages_and_egress() {
        let m: WsClientMsg =
            serde_json::from_str(r#"{"type":"resize","rows":40,"cols":120}"#).unwrap();
        assert_eq!(
            m,
            WsClientMsg::Resize {
                rows: 40,
                cols: 120
            }
        );
        let s = serde_json::to_string(&WsServerMsg::Session {
            session_id: "s1".into(),
        })
        .unwrap();
        assert_eq!(s, r#"{"type":"session","session_id":"s1"}"#);
        let c: CreateSandbox = serde_json::from_str(r#"{"egress":["10.0.0.0/8"]}"#).unwrap();
        assert_eq!(c.egress, Some(Egress::Allow(vec!["10.0.0.0/8".into()])));
        let c: CreateSandbox = serde_json::from_str(r#"{"egress":"deny","cpus":2}"#).unwrap();
        assert_eq!(c.egress, Some(Egress::Mode("deny".into())));
        assert_eq!(c.cpus, Some(2.0));
    }
}

/// One warm pool as `PUT /admin/pools` sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Image name (an admin image, or `minimal`); unset: the default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// vCPUs of each pooled sandbox (default 1).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(schema_with = "rules::optional_cpus")]
    pub cpus: Option<u32>,
    /// Memory of each pooled sandbox, MiB (default: the daemon's
    /// `default_memory_mb`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "rules::int::optional"
    )]
    #[schemars(schema_with = "rules::optional_memory_mb")]
    pub memory_mb: Option<u32>,
    /// Sandboxes to keep booted and paused (0–32).
    #[serde(deserialize_with = "rules::int::whole")]
    #[schemars(schema_with = "rules::pool_size")]
    pub size: u32,
}

/// `PUT /admin/pools`: the warm pools from now on (until the daemon
/// restarts, when its config's `pools` apply again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPools {
    /// Every pool; one left out is emptied.
    pub pools: Vec<PoolConfig>,
}

/// One warm pool as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolInfo {
    /// The image's name.
    pub image: String,
    /// vCPUs of each pooled sandbox.
    pub cpus: u32,
    /// Memory of each pooled sandbox, MiB.
    pub memory_mb: u32,
    /// Target size.
    pub size: u32,
    /// Sandboxes booted, paused and waiting.
    pub ready: u32,
    /// Whether the image's template snapshot exists (the pool fills from it).
    pub template: bool,
    /// Creates that took a pooled sandbox.
    pub hits: u64,
    /// Creates of this image and shape that found the pool empty.
    pub misses: u64,
    /// Pooled sandboxes made since the daemon started.
    pub refills: u64,
    /// Pooled sandboxes discarded unused (memory pressure, a smaller pool,
    /// a changed image, a failed claim).
    pub discarded: u64,
    /// Resident memory of the ready sandboxes' VMM processes, bytes.
    pub rss_bytes: u64,
}

/// `GET /admin/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Pools {
    /// Whether this daemon can pool at all (a microVM engine with template
    /// snapshots on).
    pub enabled: bool,
    /// Each pool.
    pub pools: Vec<PoolInfo>,
}
