//! The JSON shapes of bhatti's HTTP API (../shared/spec/04-api.md), in one
//! place so the server and the client library cannot drift apart.
//!
//! Every type derives [`schemars::JsonSchema`]; the server's
//! `GET /openapi.json` is assembled from these schemas and its route table,
//! so the document is generated from the code that serves it.
//!
//! Field names and optionality follow the reference API: requests accept
//! missing fields (defaults apply server-side), responses omit absent
//! optionals.

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

/// `{"error": …}`; 500s also carry the request ID that the log line has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
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
    /// Which engine the daemon runs (`firecracker`, `qemu`, `docker`).
    #[serde(default)]
    pub engine: String,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    /// `running`, `stopped` or `unknown`.
    pub status: String,
    /// Why the status is `unknown` (failed restore, stale snapshot …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_reason: String,
    pub ip: String,
    pub engine: String,
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
    #[serde(default)]
    pub created_by: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
    /// `hot`, `warm` or `cold`; only while running (list only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thermal: Option<String>,
}

/// A persistent volume to attach at create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VolumeMount {
    pub name: String,
    pub mount: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<u64>,
    #[serde(default)]
    pub auto_create: bool,
    #[serde(default)]
    pub read_only: bool,
}

/// A file to place into the guest at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreateFile {
    pub guest_path: String,
    /// Base64.
    pub content: String,
    /// Octal, default `"0644"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// `POST /sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreateSandbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whole vCPUs; fractions are rejected (DECISIONS §7.16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<CreateFile>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Fork: copy this running sandbox (name or ID) — memory, processes and
    /// disks — into the new one while it keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Egress policy: `public` (default), `deny`, or CIDRs to allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
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
pub struct PatchSandbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hot: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels_remove: Vec<String>,
}

/// `POST /sandboxes/:id/start` (body optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StartSandbox {
    #[serde(default)]
    pub force: bool,
}

/// `POST /sandboxes/:id/exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// Default 300; values ≤ 0 or > 86400 mean 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<i64>,
    #[serde(default)]
    pub detach: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_file: Option<String>,
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
    Stdout { data: String },
    Stderr { data: String },
    Exit { exit_code: i32 },
    Error { data: String },
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
pub struct SetSecret {
    pub name: String,
    pub value: String,
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Secret {
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A per-user template (`POST /templates` and answers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Template {
    #[serde(default)]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub disk_size_mb: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub files: Vec<CreateFile>,
    #[serde(default)]
    pub persistent_volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub init: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub created_at: String,
}

/// `POST /volumes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CreateVolume {
    pub name: String,
    pub size_mb: u64,
}

/// `POST /volumes/:name/resize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResizeVolume {
    pub size_mb: u64,
}

/// `POST /volumes/:name/snapshot` (clone), `POST /sandboxes/:id/checkpoint`,
/// `POST /snapshots/:name/resume`: a name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NameBody {
    #[serde(default)]
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
