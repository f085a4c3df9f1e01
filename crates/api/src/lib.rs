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
pub mod rules;

pub use enums::{EngineKind, ErrorCode, ErrorReason, SandboxStatus, ThermalState};

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Header carrying the server version on every API response.
pub const VERSION_HEADER: &str = "x-bhatti-version";
/// Header set to `true` when an idempotent create returned an existing record.
pub const EXISTING_HEADER: &str = "x-bhatti-existing";
/// Header carrying the total size of a file on reads and stats.
pub const FILE_SIZE_HEADER: &str = "x-file-size";
pub const FILE_MODE_HEADER: &str = "x-file-mode";
pub const FILE_ISDIR_HEADER: &str = "x-file-isdir";
/// Media type of streamed exec output.
pub const NDJSON: &str = "application/x-ndjson";

/// `{"error": …, "code": …}`; 500s also carry the request ID that the log
/// line has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
    /// Absent only from servers older than error codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Why, where a client can act on it (see [`ErrorReason`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ErrorReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `{"status": …}` answers (`ok`, `destroyed`, `deleted` …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatusBody {
    pub status: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub status: String,
    pub uptime: String,
    #[serde(default)]
    pub version: String,
    /// Which engine the daemon runs.
    #[serde(default)]
    pub engine: EngineKind,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub status: SandboxStatus,
    /// Why the status is `crashed` or `unknown` (how the VM ended, a failed
    /// restore, a missing disk …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_reason: String,
    pub ip: String,
    pub engine: EngineKind,
    #[serde(default)]
    pub template_id: String,
    pub cpus: u32,
    pub memory_mb: u32,
    #[serde(default)]
    pub disk_size_mb: u64,
    pub image: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub keep_hot: bool,
    /// Egress policy in force: `public`, `deny`, or the allowed CIDRs.
    /// Absent while the engine holds no state for the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
    #[serde(default)]
    pub created_by: String,
    pub created_at: String,
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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A persistent volume to attach at create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
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
    #[serde(default)]
    pub auto_create: bool,
    #[serde(default)]
    pub read_only: bool,
}

/// A file to place into the guest at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFile {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
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
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rules::env")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    #[serde(default)]
    pub keep_hot: bool,
    /// Accepted for compatibility; no effect on this engine.
    #[serde(default)]
    pub hugepages: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub persistent_volumes: Vec<VolumeMount>,
    /// Names of your secrets, each injected as the environment variable of
    /// that name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "rules::secret_names")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<CreateFile>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "rules::optional_name")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rules::labels")]
    pub labels_add: BTreeMap<String, String>,
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
    #[serde(default)]
    pub force: bool,
}

/// `POST /sandboxes/:id/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"cmd": ["sh", "-c", "echo hi"], "timeout_sec": 30}))]
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
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Detached exec result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DetachedResponse {
    pub pid: i64,
    pub output_file: String,
    pub detached: bool,
}

/// One line of a streamed (NDJSON) exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ExecEvent {
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        exit_code: i32,
    },
    Error {
        data: String,
        /// Why, for programs (e.g. `not_found`: no such program);
        /// absent when there is no more to say than the words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<ErrorCode>,
    },
}

/// A session inside a sandbox (`GET /sandboxes/:id/sessions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    pub session_id: String,
    #[serde(default)]
    pub argv: String,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub running: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub attached: bool,
    #[serde(default)]
    pub created_at: i64,
}

/// An entry of `GET …/files?ls=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FileInfo {
    pub name: String,
    pub size: i64,
    pub mode: String,
    pub is_dir: bool,
    #[serde(default)]
    pub mtime: i64,
}

/// `GET /sandboxes/:id/stats`: one reading taken in the guest now (what the
/// sandbox's own code sees: CPU over a short window, memory, root disk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SandboxStats {
    /// RFC 3339.
    pub at: String,
    pub cpu_count: u32,
    /// Busy share of all CPUs over the window, 0 to 100.
    pub cpu_used_pct: f32,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    /// Page cache and buffers (counted apart from used).
    pub mem_cache_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
}

/// A listening port and where the authenticated proxy serves it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    pub container_port: u16,
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
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A per-user template (`POST /templates` and answers): defaults for
/// `POST /sandboxes` with `template_id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "py", "cpus": 1, "memory_mb": 512, "env": {"LANG": "C.UTF-8"}}))]
pub struct Template {
    #[serde(default)]
    #[schemars(schema_with = "rules::read_only_string")]
    pub id: String,
    #[schemars(schema_with = "rules::name")]
    pub name: String,
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
    #[serde(default, deserialize_with = "rules::int::whole")]
    #[schemars(schema_with = "rules::disk_size_mb")]
    pub disk_size_mb: u64,
    #[serde(default)]
    #[schemars(schema_with = "rules::env")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    #[schemars(schema_with = "rules::secret_names")]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub files: Vec<CreateFile>,
    #[serde(default)]
    pub persistent_volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub init: String,
    #[serde(default)]
    #[schemars(schema_with = "rules::labels")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    #[schemars(schema_with = "rules::read_only_string")]
    pub created_at: String,
}

/// `POST /volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "data", "size_mb": 64}))]
pub struct CreateVolume {
    #[schemars(schema_with = "rules::name")]
    pub name: String,
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

/// `POST /volumes/:name/snapshot` (clone) and
/// `POST /sandboxes/:id/checkpoint`: the new object's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "copy-1"}))]
pub struct NameBody {
    #[schemars(schema_with = "rules::name")]
    pub name: String,
}

/// `POST /snapshots/:name/resume` (body optional): the new sandbox's name;
/// empty or absent for `<snapshot>-<6 hex>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"name": "restored"}))]
pub struct ResumeSnapshot {
    #[serde(default)]
    #[schemars(schema_with = "rules::name_or_empty")]
    pub name: String,
}

/// A volume attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeAttachment {
    pub sandbox_id: String,
    pub mount: String,
    pub read_only: bool,
}

/// A persistent volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Volume {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub size_mb: u64,
    /// `creating` or `ready`.
    pub status: String,
    /// Only on `GET /volumes/:name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<VolumeAttachment>>,
    pub created_at: String,
}

/// `POST /volumes/:name/resize` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Resized {
    pub status: String,
    pub size_mb: u64,
}

/// A named snapshot (checkpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Snapshot {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub source_sandbox: String,
    pub size_mb: u64,
    pub created_at: String,
}

/// An image record (`GET /images`, `GET /images/:name`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Image {
    pub id: String,
    /// Owner; `""` = an admin (global) image.
    pub user_id: String,
    pub name: String,
    /// `built-in` | `oci:<ref>` | `import:<name>` | `saved:<sandbox id>`.
    pub source: String,
    pub size_mb: u64,
    /// The registry digest the image was pulled at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_digest: Option<String>,
    pub created_at: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `POST /images/import` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Imported {
    pub name: String,
    pub size_mb: u64,
}

/// One layer's download progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LayerProgress {
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
    #[serde(default)]
    pub layers: Vec<LayerProgress>,
}

/// A background task (`GET /tasks/:id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub id: String,
    pub user_id: String,
    /// `image_pull`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `running` | `completed` | `failed`.
    pub status: String,
    pub progress: TaskProgress,
    /// On completion: the result as a JSON string (the image record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// WebSocket shell: the first text message from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsServerMsg {
    Session { session_id: String },
    Exit { exit_code: i32 },
    Error { message: String },
}

/// WebSocket shell: a text message from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsClientMsg {
    Resize { rows: u16, cols: u16 },
}

/// `/exec/ws`: the first client message of a new piped session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PipedStart {
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
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
