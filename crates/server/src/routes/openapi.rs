//! `/openapi.json`: the OpenAPI 3.1 document, assembled from [`routes`] (the
//! route table: parameters, bodies, every status code each route answers)
//! and the schemars schemas of the `bhatti-api` types, whose attributes
//! carry the server's input rules ([`bhatti_api::rules`]). `docs/api.md` is
//! rendered from it.
//!
//! The document is meant to be exact: the contract suite
//! (`tests/contract.rs`) runs schemathesis with every check against a live
//! daemon and fails on any difference between what this says and what the
//! server does.

#[cfg(test)]
use std::fmt::Write;

use bhatti_api as api;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::VERSION;

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}
fn list<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<Vec<T>>()
}
fn exec_answer(g: &mut SchemaGenerator) -> Schema {
    let buffered = g.subschema_for::<api::ExecResponse>();
    let detached = g.subschema_for::<api::DetachedResponse>();
    schemars::json_schema!({"anyOf": [buffered, detached]})
}
fn object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object"})
}
fn text(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string"})
}

/// What a successful answer carries.
pub enum Content {
    None,
    Json(SchemaFn),
    /// Another media type with a schema (NDJSON lines, Prometheus text).
    Media(&'static str, SchemaFn),
    /// Raw bytes.
    Bytes,
}

/// One successful answer of a route.
pub struct Answer {
    pub status: u16,
    pub what: &'static str,
    pub content: Vec<Content>,
    /// Response headers: (name, description, always present).
    pub headers: Vec<(&'static str, &'static str, bool)>,
}

/// A query or header parameter.
pub struct Param {
    pub name: &'static str,
    pub location: &'static str,
    pub required: bool,
    pub what: &'static str,
    pub schema: Value,
}

/// What a route reads from its body.
pub enum Body {
    None,
    /// A JSON object; `true` when the body is required.
    Json(SchemaFn, bool),
    /// Raw bytes (may be empty).
    Bytes,
}

/// One documented operation (the contract suite checks the router serves
/// each).
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// `/health` only: no key needed, never rate limited.
    pub public: bool,
    pub params: Vec<Param>,
    pub body: Body,
    pub answers: Vec<Answer>,
    /// Error statuses besides those every authenticated route has (401,
    /// 429, 500) and those a JSON body adds (400, 413, 415).
    pub errors: Vec<u16>,
    /// The guest's own answers pass through (the proxy).
    pub passthrough: bool,
    /// Its successful answers are an object addressed as `path` (e.g.
    /// `/sandboxes/{id}`) by this field of the body: links to every
    /// operation under that path.
    pub creates: Option<(&'static str, &'static str)>,
}

fn op(method: &'static str, path: &'static str, summary: &'static str) -> RouteDoc {
    RouteDoc {
        method,
        path,
        summary,
        public: false,
        params: Vec::new(),
        body: Body::None,
        answers: Vec::new(),
        errors: Vec::new(),
        passthrough: false,
        creates: None,
    }
}

impl RouteDoc {
    fn ok(mut self, status: u16, what: &'static str, content: Content) -> Self {
        self.answers.push(Answer {
            status,
            what,
            content: match content {
                Content::None => Vec::new(),
                c => vec![c],
            },
            headers: Vec::new(),
        });
        self
    }
    /// Another media type for the last answer.
    fn or(mut self, content: Content) -> Self {
        if let Some(a) = self.answers.last_mut() {
            a.content.push(content);
        }
        self
    }
    /// A response header of the last answer.
    fn header(mut self, name: &'static str, what: &'static str, always: bool) -> Self {
        if let Some(a) = self.answers.last_mut() {
            a.headers.push((name, what, always));
        }
        self
    }
    fn query(
        mut self,
        name: &'static str,
        required: bool,
        what: &'static str,
        schema: Value,
    ) -> Self {
        self.params.push(Param {
            name,
            location: "query",
            required,
            what,
            schema,
        });
        self
    }
    fn req_header(mut self, name: &'static str, what: &'static str, schema: Value) -> Self {
        self.params.push(Param {
            name,
            location: "header",
            required: true,
            what,
            schema,
        });
        self
    }
    fn json(mut self, f: SchemaFn) -> Self {
        self.body = Body::Json(f, true);
        self
    }
    fn optional_json(mut self, f: SchemaFn) -> Self {
        self.body = Body::Json(f, false);
        self
    }
    fn bytes(mut self) -> Self {
        self.body = Body::Bytes;
        self
    }
    fn errors(mut self, codes: &[u16]) -> Self {
        self.errors.extend_from_slice(codes);
        self
    }
    fn public(mut self) -> Self {
        self.public = true;
        self
    }
    fn creates(mut self, path: &'static str, field: &'static str) -> Self {
        self.creates = Some((path, field));
        self
    }
    fn passthrough(mut self) -> Self {
        self.passthrough = true;
        self
    }
    /// A WebSocket upgrade: the handshake headers are required parameters.
    fn websocket(self) -> Self {
        self.req_header(
            "Connection",
            "`Upgrade`",
            json!({"type": "string", "enum": ["Upgrade", "upgrade"]}),
        )
        .req_header(
            "Upgrade",
            "`websocket`",
            json!({"type": "string", "enum": ["websocket"]}),
        )
        .req_header(
            "Sec-WebSocket-Version",
            "`13`",
            json!({"type": "string", "enum": ["13"]}),
        )
        .req_header(
            "Sec-WebSocket-Key",
            "16 random bytes, base64",
            json!({"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}),
        )
    }

    /// Every error status of the route, sorted.
    pub fn error_codes(&self) -> Vec<u16> {
        let mut codes = self.errors.clone();
        if !self.public {
            codes.extend([401, 429, 500]);
        }
        if matches!(self.body, Body::Json(..)) {
            codes.extend([400, 413, 415]);
        }
        codes.sort_unstable();
        codes.dedup();
        codes
    }
}

fn error_text(code: u16) -> &'static str {
    match code {
        400 => "Invalid request: a parameter, the body, or an input rule (the message says which).",
        401 => "No API key, or an unknown one.",
        403 => "Over a quota or a per-sandbox limit.",
        404 => "No such object (or route).",
        409 => "Conflicts with the current state of the object.",
        413 => "Too large.",
        415 => "The body is not `application/json`.",
        429 => "Rate limited (per user, or failed authentications per address), or at the sandbox count quota.",
        500 => "Internal error; `request_id` names the daemon's log line.",
        501 => "This daemon's engine cannot do that.",
        502 => "Nothing answered on that guest port.",
        503 => "The sandbox's agent is at its connection limit; retry shortly.",
        504 => "Timed out (the command was killed).",
        _ => "Error.",
    }
}

const SANDBOX_ID: &str = "Sandbox ID or name.";

fn guest_path_param() -> Value {
    json!({"type": "string", "pattern": api::rules::GUEST_PATH, "examples": ["/workspace/hello.txt"]})
}
fn nonneg_int() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": i64::MAX})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}

/// Every route the API serves, documented.
pub fn routes() -> Vec<RouteDoc> {
    vec![
        op("get", "/health", "Liveness and uptime (no auth).")
            .public()
            .ok(200, "The daemon is up.", Content::Json(s::<api::Health>)),
        op("get", "/openapi.json", "This document.")
            .ok(200, "The OpenAPI document.", Content::Json(object)),
        op("get", "/metrics", "Prometheus metrics: the whole daemon for users named in `admin_users`, your own sandboxes otherwise.")
            .ok(200, "Prometheus text exposition.", Content::Media("text/plain", text)),
        op("get", "/admin/pools", "The warm pools (operators named in `admin_users` only).")
            .ok(200, "Each pool: its shape, size, ready sandboxes and counters.", Content::Json(s::<api::Pools>))
            .errors(&[403]),
        op("put", "/admin/pools", "Replace the warm pools until the daemon restarts (operators only); a pool left out is emptied.")
            .json(s::<api::SetPools>)
            .ok(200, "The pools as they now stand (they fill in the background).", Content::Json(s::<api::Pools>))
            .errors(&[400, 403, 404, 501]),
        op("get", "/sandboxes", "List your sandboxes, newest first; `label=k=v` filters (AND).")
            .query("label", false, "`key=value`; repeat for AND.", json!({"type": "array", "items": api::rules::label_filter()}))
            .ok(200, "Your sandboxes.", Content::Json(list::<api::Sandbox>))
            .errors(&[400]),
        op("post", "/sandboxes", "Create a sandbox (201), or return the existing one of that name (200, X-Bhatti-Existing). `from` forks a running sandbox.")
            .json(s::<api::CreateSandbox>)
            .creates("/sandboxes/{id}", "id")
            .ok(201, "Created and running.", Content::Json(s::<api::Sandbox>))
            .ok(200, "A sandbox of that name exists: it is the answer.", Content::Json(s::<api::Sandbox>))
            .header(api::EXISTING_HEADER, "`true`.", true)
            .errors(&[403, 404, 409, 501, 503]),
        op("get", "/sandboxes/{id}", "One sandbox by ID or name (does not wake it).")
            .ok(200, "The sandbox.", Content::Json(s::<api::Sandbox>))
            .errors(&[404]),
        op("patch", "/sandboxes/{id}", "Rename, relabel, change egress, or set keep_hot (true wakes it).")
            .json(s::<api::PatchSandbox>)
            .ok(200, "The updated sandbox.", Content::Json(s::<api::Sandbox>))
            .errors(&[404, 409, 501, 503]),
        op("delete", "/sandboxes/{id}", "Destroy a sandbox (volumes survive).")
            .ok(200, "`destroyed`.", Content::Json(s::<api::StatusBody>))
            .errors(&[404]),
        op("post", "/sandboxes/{id}/stop", "Snapshot to disk and stop (cold).")
            .ok(200, "The stopped sandbox.", Content::Json(s::<api::Sandbox>))
            .errors(&[404, 409, 501, 503]),
        op("post", "/sandboxes/{id}/start", "Restore a stopped sandbox; force clears the restore-failed breaker.")
            .optional_json(s::<api::StartSandbox>)
            .ok(200, "The running sandbox.", Content::Json(s::<api::Sandbox>))
            .errors(&[404, 409, 501, 503]),
        op("post", "/sandboxes/{id}/timeout", "Set the lifetime from now (0: no limit) and what its end does (kill or pause).")
            .json(s::<api::SetTimeout>)
            .ok(200, "The sandbox with its new lifetime.", Content::Json(s::<api::Sandbox>))
            .errors(&[404]),
        op("post", "/sandboxes/{id}/exec", "Run a command: buffered JSON, NDJSON stream (Accept: application/x-ndjson, lines are ExecEvent), or detached.")
            .json(s::<api::ExecRequest>)
            .ok(200, "Buffered: the exit code and output; detached: the process.", Content::Json(exec_answer))
            .or(Content::Media(api::NDJSON, s::<api::ExecEvent>))
            .errors(&[403, 404, 409, 503, 504]),
        op("get", "/sandboxes/{id}/sessions", "Sessions in the sandbox.")
            .ok(200, "Its sessions.", Content::Json(list::<api::Session>))
            .errors(&[404, 409, 503]),
        op("delete", "/sandboxes/{id}/sessions/{session}", "Kill a session.")
            .ok(200, "`killed`.", Content::Json(s::<api::StatusBody>))
            .errors(&[404, 409, 503]),
        op("get", "/sandboxes/{id}/ws", "WebSocket shell: binary I/O, text messages WsClientMsg in, WsServerMsg out.")
            .websocket()
            .query("new", false, "`true`: a new shell rather than the newest detached one.", boolean())
            .query("session", false, "Attach to this session.", json!({"type": "string"}))
            .ok(101, "Switching to the WebSocket protocol.", Content::None)
            .errors(&[400, 404]),
        op("get", "/sandboxes/{id}/exec/ws", "WebSocket piped session: the first text message is PipedStart (unless reattaching); then WsServerMsg.")
            .websocket()
            .query("session", false, "Reattach to this session.", json!({"type": "string"}))
            .ok(101, "Switching to the WebSocket protocol.", Content::None)
            .errors(&[400, 404]),
        op("get", "/sandboxes/{id}/files", "Read a file (X-File-Size is its whole size) or list a directory (`ls=true`).")
            .query("path", true, "Absolute path in the guest.", guest_path_param())
            .query("ls", false, "List the directory instead.", boolean())
            .query("offset", false, "First line (text) to return.", nonneg_int())
            .query("limit", false, "Lines to return at most.", nonneg_int())
            .query("max_bytes", false, "Bytes to return at most.", nonneg_int())
            .ok(200, "The file's bytes, or the listing.", Content::Bytes)
            .or(Content::Json(list::<api::FileInfo>))
            .header(api::FILE_SIZE_HEADER, "The file's whole size (reads).", false)
            .errors(&[400, 403, 404, 409, 503]),
        op("put", "/sandboxes/{id}/files", "Write a file atomically (Content-Length required; 100 MiB max); an empty body makes an empty file.")
            .query("path", true, "Absolute path in the guest.", guest_path_param())
            .query("mode", false, "Octal, default 0644.", json!({"type": "string", "pattern": api::rules::FILE_MODE}))
            .bytes()
            .ok(200, "`ok`.", Content::Json(s::<api::StatusBody>))
            .errors(&[400, 403, 404, 409, 413, 503]),
        op("head", "/sandboxes/{id}/files", "Stat a file (X-File-Size, X-File-Mode, X-File-IsDir).")
            .query("path", true, "Absolute path in the guest.", guest_path_param())
            .ok(200, "It exists.", Content::None)
            .header(api::FILE_SIZE_HEADER, "Size in bytes.", true)
            .header(api::FILE_MODE_HEADER, "Mode, octal.", true)
            .header(api::FILE_ISDIR_HEADER, "`true` or `false`.", true)
            .errors(&[400, 403, 404, 409, 503]),
        op("get", "/sandboxes/{id}/stats", "CPU, memory and disk use, read in the guest now (wakes the sandbox).")
            .ok(200, "One reading.", Content::Json(s::<api::SandboxStats>))
            .errors(&[404, 409, 503]),
        op("get", "/sandboxes/{id}/console", "The tail of the guest's console: boot log, kernel messages, the agent's log (the container's output on Docker). Never wakes the sandbox.")
            .query("bytes", false, "How many of the newest bytes (default 65536, at most 1048576).", json!({"type": "integer", "minimum": 1, "maximum": 1_048_576}))
            .ok(200, "The console's tail.", Content::Media("text/plain", text))
            .errors(&[400, 404]),
        op("get", "/sandboxes/{id}/ports", "Listening TCP ports and their proxy URLs.")
            .ok(200, "Its ports.", Content::Json(list::<api::Port>))
            .errors(&[404, 409, 503]),
        op("post", "/sandboxes/{id}/publish", "Publish a guest port at a public URL (201), or return the port's existing rule (200, X-Bhatti-Existing). Nothing needs to listen yet.")
            .json(s::<api::Publish>)
            .ok(201, "Published.", Content::Json(s::<api::PublishRule>))
            .ok(200, "The port was published already: its rule is the answer.", Content::Json(s::<api::PublishRule>))
            .header(api::EXISTING_HEADER, "`true`.", true)
            .errors(&[404, 409]),
        op("get", "/sandboxes/{id}/publish", "The sandbox's published ports.")
            .ok(200, "Its rules, by port.", Content::Json(list::<api::PublishRule>))
            .errors(&[404]),
        op("delete", "/sandboxes/{id}/publish/{port}", "Unpublish a port.")
            .ok(204, "Unpublished.", Content::None)
            .errors(&[400, 404]),
        op("post", "/sandboxes/{id}/shell-token", "Mint the sandbox's web-shell token (24 h; replaces the previous one and ends its sessions).")
            .ok(200, "The token and the page's URL.", Content::Json(s::<api::ShareToken>))
            .errors(&[404]),
        op("delete", "/sandboxes/{id}/shell-token", "Revoke the web-shell token and end its live sessions.")
            .ok(204, "Revoked.", Content::None)
            .errors(&[404]),
        op("get", "/_shell/{id}", "The web shell page (no key: the page authenticates its WebSocket with the token in its URL fragment).")
            .public()
            .ok(200, "The page.", Content::Media("text/html", text))
            .errors(&[501]),
        op("get", "/_shell/assets/{file}", "The web shell's terminal (xterm.js, its fit addon, its CSS), embedded at build time.")
            .public()
            .ok(200, "The file.", Content::Media("text/javascript", text))
            .or(Content::Media("text/css", text))
            .errors(&[404, 501]),
        op("get", "/_shell/{id}/ws", "The web shell's WebSocket: first message {\"type\":\"auth\",\"token\",\"session\"?}; a refusal is an error message and a close.")
            .public()
            .websocket()
            .ok(101, "Switching to the WebSocket protocol.", Content::None)
            .errors(&[400]),
        op("get", "/ports", "Ports of all your hot sandboxes (wakes nothing).")
            .ok(200, "Ports by sandbox.", Content::Json(list::<api::Port>)),
        op("post", "/sandboxes/{id}/checkpoint", "Take a named snapshot; the sandbox keeps running.")
            .json(s::<api::NameBody>)
            .creates("/snapshots/{name}", "name")
            .ok(201, "The snapshot.", Content::Json(s::<api::Snapshot>))
            .errors(&[403, 404, 409, 501, 503]),
        op("get", "/snapshots", "Your snapshots.")
            .ok(200, "Your snapshots.", Content::Json(list::<api::Snapshot>)),
        op("get", "/snapshots/{name}", "One snapshot.")
            .ok(200, "The snapshot.", Content::Json(s::<api::Snapshot>))
            .errors(&[404]),
        op("delete", "/snapshots/{name}", "Delete a snapshot.")
            .ok(200, "`deleted`.", Content::Json(s::<api::StatusBody>))
            .errors(&[404]),
        op("post", "/snapshots/{name}/resume", "Resume a snapshot into a new sandbox.")
            .optional_json(s::<api::ResumeSnapshot>)
            .creates("/sandboxes/{id}", "id")
            .ok(201, "The new sandbox.", Content::Json(s::<api::Sandbox>))
            .errors(&[404, 409, 501, 503]),
        op("get", "/secrets", "Secret names (never values).")
            .ok(200, "Your secrets.", Content::Json(list::<api::Secret>)),
        op("post", "/secrets", "Set a secret (upsert); injected as an env var at create.")
            .json(s::<api::SetSecret>)
            .creates("/secrets/{name}", "name")
            .ok(201, "Stored.", Content::Json(s::<api::Secret>)),
        op("delete", "/secrets/{name}", "Delete a secret.")
            .ok(200, "`deleted`.", Content::Json(s::<api::StatusBody>))
            .errors(&[404]),
        op("get", "/templates", "Your templates.")
            .ok(200, "Your templates.", Content::Json(list::<api::Template>)),
        op("post", "/templates", "Create a template.")
            .json(s::<api::Template>)
            .creates("/templates/{id}", "id")
            .ok(201, "The template.", Content::Json(s::<api::Template>))
            .errors(&[409]),
        op("get", "/templates/{id}", "One template by ID or name.")
            .ok(200, "The template.", Content::Json(s::<api::Template>))
            .errors(&[404]),
        op("delete", "/templates/{id}", "Delete a template.")
            .ok(200, "`deleted`.", Content::Json(s::<api::StatusBody>))
            .errors(&[404]),
        op("get", "/images", "Images you can use: your own and the admin ones.")
            .ok(200, "The images.", Content::Json(list::<api::Image>)),
        op("post", "/images/pull", "Pull an OCI image from a registry as a background task.")
            .json(s::<api::PullImage>)
            .ok(202, "The pull started; follow `GET /tasks/{task_id}`.", Content::Json(s::<api::PullStarted>))
            .ok(200, "The image of that name already has the digest the reference points at.", Content::Json(s::<api::PullStarted>))
            .errors(&[403, 404, 409, 502]),
        op("post", "/images/import", "Import a `docker save` or OCI-layout tarball (the raw body, at most 10 GiB).")
            .query("name", true, "The new image's name.", json!({"type": "string", "pattern": api::rules::NAME}))
            .bytes()
            .ok(201, "The image.", Content::Json(s::<api::Imported>))
            .errors(&[400, 403, 409, 413]),
        op("get", "/images/{name}", "One image (yours, else the admin one of that name).")
            .ok(200, "The image.", Content::Json(s::<api::Image>))
            .errors(&[404]),
        op("delete", "/images/{name}", "Delete one of your images (sandboxes made from it keep their disks).")
            .ok(200, "`deleted`.", Content::Json(s::<api::StatusBody>))
            .errors(&[403, 404]),
        op("post", "/sandboxes/{id}/save-image", "Save the sandbox's disk as a new image of yours (the sandbox keeps running).")
            .json(s::<api::NameBody>)
            .creates("/images/{name}", "name")
            .ok(201, "The image.", Content::Json(s::<api::Image>))
            .errors(&[403, 404, 409, 501]),
        op("get", "/tasks/{id}", "A background task (an image pull) with its progress.")
            .ok(200, "The task.", Content::Json(s::<api::Task>))
            .errors(&[404]),
        op("get", "/volumes", "Your persistent volumes.")
            .ok(200, "Your volumes.", Content::Json(list::<api::Volume>)),
        op("post", "/volumes", "Create a volume.")
            .json(s::<api::CreateVolume>)
            .creates("/volumes/{name}", "name")
            .ok(201, "The volume.", Content::Json(s::<api::Volume>))
            .errors(&[403, 409]),
        op("get", "/volumes/{name}", "One volume with its attachments.")
            .ok(200, "The volume.", Content::Json(s::<api::Volume>))
            .errors(&[404]),
        op("delete", "/volumes/{name}", "Delete a detached volume.")
            .ok(200, "`deleted`.", Content::Json(s::<api::StatusBody>))
            .errors(&[404, 409]),
        op("post", "/volumes/{name}/resize", "Grow a detached volume.")
            .json(s::<api::ResizeVolume>)
            .ok(200, "The new size.", Content::Json(s::<api::Resized>))
            .errors(&[403, 404, 409]),
        op("post", "/volumes/{name}/snapshot", "Clone a volume (detached, or attached read-only).")
            .json(s::<api::NameBody>)
            .creates("/volumes/{name}", "name")
            .ok(201, "The copy.", Content::Json(s::<api::Volume>))
            .errors(&[403, 404, 409]),
        op("get", "/volumes/{name}/backups", "The volume's backups, newest first (501 when backups are not configured).")
            .ok(200, "Its backups.", Content::Json(list::<api::VolumeBackup>))
            .errors(&[404, 501]),
        op("post", "/volumes/{name}/backups", "Back the volume up to the backup bucket: a point-in-time copy (a running writer is synced and paused for it), zstd-compressed, uploaded in parts.")
            .ok(201, "The backup.", Content::Json(s::<api::VolumeBackup>))
            .errors(&[404, 409, 501, 502]),
        op("post", "/volumes/{name}/backups/restore", "Replace a detached volume with one of its backups, checked against its SHA-256 first; a deleted volume is created again at the backup's size.")
            .json(s::<api::RestoreBackup>)
            .ok(200, "`restored`.", Content::Json(s::<api::Restored>))
            .errors(&[403, 404, 409, 501, 502]),
        op("delete", "/volumes/{name}/backups/{backup_id}", "Delete a backup (its row, then its object).")
            .ok(200, "`deleted`.", Content::Json(s::<api::StatusBody>))
            .errors(&[404, 501]),
    ]
    .into_iter()
    .chain(proxy_routes())
    .collect()
}

/// The reverse proxy serves every method; its own refusals are JSON, and
/// whatever the guest answers passes through.
fn proxy_routes() -> Vec<RouteDoc> {
    ["get", "put", "post", "delete", "options", "head", "patch", "trace"]
        .into_iter()
        .map(|m| {
            op(m, "/sandboxes/{id}/proxy/{port}/{rest}", "Authenticated HTTP/WebSocket reverse proxy to a guest port; the answer is the guest's.")
                .passthrough()
                .errors(&[400, 404, 409, 502, 503])
        })
        .collect()
}

/// Schemas of messages that travel outside HTTP bodies (WebSocket, NDJSON
/// lines), listed in the components for clients.
fn message_schemas(g: &mut SchemaGenerator) {
    g.subschema_for::<api::WsClientMsg>();
    g.subschema_for::<api::WsServerMsg>();
    g.subschema_for::<api::PipedStart>();
    g.subschema_for::<api::ExecEvent>();
}

fn path_param(name: &str) -> Value {
    let (schema, what) = match name {
        "id" => (json!({"type": "string", "minLength": 1}), SANDBOX_ID),
        "port" => (
            json!({"type": "integer", "minimum": 1, "maximum": 65535}),
            "TCP port in the guest.",
        ),
        "rest" => (
            json!({"type": "string"}),
            "The rest of the path, forwarded with the query.",
        ),
        "session" => (json!({"type": "string", "minLength": 1}), "Session ID."),
        _ => (json!({"type": "string", "minLength": 1}), "Name."),
    };
    json!({"name": name, "in": "path", "required": true, "description": what, "schema": schema})
}

/// Integer bounds implied by schemars' formats, made explicit: a validator
/// or generator reading the document must not take `uint16` for any
/// integer.
fn explicit_integer_bounds(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let is_int = match m.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            if is_int {
                let bounds: Option<(Value, Value)> = match m.get("format").and_then(Value::as_str) {
                    Some("uint8") => Some((json!(0), json!(u8::MAX))),
                    Some("uint16") => Some((json!(0), json!(u16::MAX))),
                    Some("uint32") => Some((json!(0), json!(u32::MAX))),
                    Some("uint64" | "uint") => Some((json!(0), json!(u64::MAX))),
                    Some("int32") => Some((json!(i32::MIN), json!(i32::MAX))),
                    Some("int64" | "int") => Some((json!(i64::MIN), json!(i64::MAX))),
                    _ => None,
                };
                if let Some((lo, hi)) = bounds {
                    m.entry("minimum").or_insert(lo);
                    m.entry("maximum").or_insert(hi);
                }
            }
            for x in m.values_mut() {
                explicit_integer_bounds(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(explicit_integer_bounds),
        _ => {}
    }
}

fn error_response(g: &mut SchemaGenerator, code: u16) -> Value {
    json!({
        "description": error_text(code),
        "content": {"application/json": {"schema": g.subschema_for::<api::ErrorBody>()}},
    })
}

fn operation_id(r: &RouteDoc) -> String {
    format!(
        "{}{}",
        r.method,
        r.path.replace(['{', '}'], "").replace(['/', '.'], "_")
    )
}

/// OpenAPI links from an answer that is a new object to the operations on
/// it (its path parameter filled from the body), so a client, or a
/// stateful test, can follow them.
fn links(r: &RouteDoc, all: &[RouteDoc]) -> Option<Value> {
    let (base, field) = r.creates?;
    let param = base.rsplit_once('{')?.1.strip_suffix('}')?;
    let mut out = Map::new();
    for o in all {
        let under = o.path == base
            || o.path
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/'));
        if under {
            out.insert(
                operation_id(o),
                json!({"operationId": operation_id(o),
                       "parameters": {param: format!("$response.body#/{field}")}}),
            );
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// The OpenAPI 3.1 document.
pub fn openapi() -> Value {
    let mut g = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut paths = Map::new();
    let all = routes();
    for r in &all {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        op.insert("operationId".into(), json!(operation_id(r)));
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(path_param)
            .collect();
        params.extend(r.params.iter().map(|p| {
            let mut v = json!({"name": p.name, "in": p.location, "required": p.required,
                "description": p.what, "schema": p.schema});
            if p.schema["type"] == "array" {
                v["style"] = json!("form");
                v["explode"] = json!(true);
            }
            v
        }));
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        match &r.body {
            Body::None => {}
            Body::Json(f, required) => {
                op.insert(
                    "requestBody".into(),
                    json!({"required": required, "content": {"application/json": {"schema": f(&mut g)}}}),
                );
            }
            Body::Bytes => {
                op.insert(
                    "requestBody".into(),
                    json!({"required": false, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}),
                );
            }
        }
        let mut responses = Map::new();
        for a in &r.answers {
            let mut resp = json!({"description": a.what});
            if !a.content.is_empty() {
                let mut content = Map::new();
                for c in &a.content {
                    let (media, schema) = match c {
                        Content::None => continue,
                        Content::Json(f) => ("application/json", f(&mut g).to_value()),
                        Content::Media(m, f) => (*m, f(&mut g).to_value()),
                        Content::Bytes => (
                            "application/octet-stream",
                            json!({"type": "string", "format": "binary"}),
                        ),
                    };
                    content.insert(media.into(), json!({"schema": schema}));
                }
                resp["content"] = Value::Object(content);
            }
            if !a.headers.is_empty() {
                let mut hs = Map::new();
                for (name, what, always) in &a.headers {
                    hs.insert(
                        (*name).into(),
                        json!({"description": what, "required": always, "schema": {"type": "string"}}),
                    );
                }
                resp["headers"] = Value::Object(hs);
            }
            if let Some(links) = links(r, &all) {
                resp["links"] = links;
            }
            responses.insert(a.status.to_string(), resp);
        }
        for code in r.error_codes() {
            responses.insert(code.to_string(), error_response(&mut g, code));
        }
        if r.passthrough {
            responses.insert(
                "default".into(),
                json!({"description": "The guest service's own answer, passed through unchanged."}),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        if !r.public {
            op.insert("security".into(), json!([{"bearer": []}]));
        }
        paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .map(|m| m.insert(r.method.to_string(), Value::Object(op)));
    }
    message_schemas(&mut g);
    let defs = g.take_definitions(true);
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "bhatti API", "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "bht_<64 hex> API key"}}
        }
    });
    explicit_integer_bounds(&mut doc);
    doc
}

/// `docs/api.md`: the API reference rendered from [`openapi`] (by the
/// `api_reference` test, which keeps the file current).
#[cfg(test)]
fn api_markdown() -> String {
    let doc = openapi();
    let mut out = String::from(
        "# API reference\n\nGenerated from the server's OpenAPI document (`GET /openapi.json`) by \
         `BHATTI_UPDATE_DOCS=1 cargo test -p bhatti-server --lib api_reference`; do not edit by hand.\n\n\
         Every route but `/health` needs `Authorization: Bearer bht_<64 hex>`. Errors are \
         `{\"error\": \"…\", \"code\": \"not_found\"}`: the words are for people, the `code` \
         (one per status, see `ErrorCode`) for programs; 500s add `request_id`. Every \
         authenticated route can answer 401, 429 and 500, and every route with a JSON body 400, 413 and 415. Request bodies \
         are JSON objects; unknown fields are refused. Sandbox arguments take an ID or a name.\n\n\
         | method | path | success | errors | request | response | what |\n|---|---|---|---|---|---|---|\n",
    );
    let name = |v: &Value| -> String {
        let r = v
            .get("$ref")
            .or_else(|| v.get("items").and_then(|i| i.get("$ref")));
        match r.and_then(Value::as_str) {
            Some(r) => {
                let n = r.rsplit('/').next().unwrap_or(r);
                if v.get("items").is_some() {
                    format!("[{n}]")
                } else {
                    n.to_string()
                }
            }
            None => String::new(),
        }
    };
    let mut seen_proxy = false;
    for r in routes() {
        if r.passthrough {
            if seen_proxy {
                continue;
            }
            seen_proxy = true;
        }
        let op = &doc["paths"][r.path][r.method];
        let req = match &r.body {
            Body::None => String::new(),
            Body::Bytes => "bytes".into(),
            Body::Json(..) => {
                let n = name(&op["requestBody"]["content"]["application/json"]["schema"]);
                if op["requestBody"]["required"] == true {
                    n
                } else {
                    format!("{n} (optional)")
                }
            }
        };
        let mut success = Vec::new();
        let mut resp = Vec::new();
        for a in &r.answers {
            success.push(a.status.to_string());
            for c in &a.content {
                let n = match c {
                    Content::None => continue,
                    Content::Bytes => "bytes".to_string(),
                    Content::Json(_) => {
                        let sch = &op["responses"][a.status.to_string()]["content"]
                            ["application/json"]["schema"];
                        match sch.get("anyOf").and_then(Value::as_array) {
                            Some(alts) => alts.iter().map(&name).collect::<Vec<_>>().join(" or "),
                            None => name(sch),
                        }
                    }
                    Content::Media(m, _) => (*m).to_string(),
                };
                if !resp.contains(&n) {
                    resp.push(n);
                }
            }
        }
        let method = if r.passthrough {
            "any".to_string()
        } else {
            r.method.to_uppercase()
        };
        let mut query: Vec<String> = r
            .params
            .iter()
            .filter(|p| p.location == "query")
            .map(|p| {
                if p.required {
                    format!("{}=", p.name)
                } else {
                    format!("[{}=]", p.name)
                }
            })
            .collect();
        let path = if query.is_empty() {
            r.path.to_string()
        } else {
            query.sort_by_key(|q| q.starts_with('['));
            format!("{}?{}", r.path, query.join("&"))
        };
        let errors = r
            .error_codes()
            .iter()
            .filter(|c| ![401, 429, 500].contains(*c))
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| {method} | `{path}` | {} | {errors} | {req} | {} | {} |",
            success.join(", "),
            resp.join(", "),
            r.summary.replace('|', "\\|")
        );
    }
    out.push_str("\n## Schemas\n");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (n, sch) in schemas {
            let _ = writeln!(out, "\n### {n}\n");
            if let Some(d) = sch.get("description").and_then(Value::as_str) {
                let _ = writeln!(out, "{}\n", d.replace('\n', " "));
            }
            if let Some(e) = sch.get("examples").and_then(|e| e.get(0)) {
                let _ = writeln!(out, "Example: `{e}`\n");
            }
            let required: Vec<&str> = sch["required"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = sch["properties"].as_object() {
                out.push_str("| field | type | required | notes |\n|---|---|---|---|\n");
                for (f, p) in props {
                    let ty = type_name(p, &name);
                    let mut notes = p
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .replace('\n', " ");
                    let rules = constraints(p);
                    if !rules.is_empty() {
                        if !notes.is_empty() {
                            notes.push(' ');
                        }
                        notes.push_str(&rules);
                    }
                    let _ = writeln!(
                        out,
                        "| `{f}` | {ty} | {} | {} |",
                        if required.contains(&f.as_str()) {
                            "yes"
                        } else {
                            ""
                        },
                        notes.replace('|', "\\|")
                    );
                }
            } else if let Some(one) = sch.get("oneOf").or_else(|| sch.get("anyOf")) {
                let _ = writeln!(
                    out,
                    "One of:\n\n```json\n{}\n```",
                    serde_json::to_string_pretty(one).unwrap_or_default()
                );
            }
        }
    }
    out
}

/// A field's type for the reference table.
#[cfg(test)]
fn type_name(p: &Value, name: &dyn Fn(&Value) -> String) -> String {
    if let Some(t) = p.get("type") {
        let t = match t {
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect::<Vec<_>>()
                .join(", "),
            t => t.as_str().unwrap_or("").to_string(),
        };
        if t == "array" {
            let inner = name(p);
            if !inner.is_empty() {
                return inner;
            }
        }
        return t;
    }
    for key in ["anyOf", "allOf"] {
        if let Some(alts) = p.get(key).and_then(Value::as_array) {
            let names: Vec<String> = alts
                .iter()
                .filter(|a| a.get("type") != Some(&json!("null")))
                .map(|a| type_name(a, name))
                .filter(|n| !n.is_empty())
                .collect();
            if !names.is_empty() {
                let mut names = names;
                names.dedup();
                return names.join(" or ");
            }
        }
    }
    if let Some(c) = p.get("const") {
        return format!("`{c}`");
    }
    let n = name(p);
    if n.is_empty() {
        "object".into()
    } else {
        n
    }
}

/// The input rules of a field, briefly (patterns in full).
#[cfg(test)]
fn constraints(p: &Value) -> String {
    let mut out = Vec::new();
    let mut walk = |v: &Value| {
        if let Some(x) = v.get("pattern").and_then(Value::as_str) {
            out.push(format!("pattern `{x}`"));
        }
        if let Some(e) = v.get("enum") {
            out.push(format!("one of {e}"));
        }
        if let (Some(lo), Some(hi)) = (v.get("minimum"), v.get("maximum")) {
            out.push(format!("{lo}–{hi}"));
        }
        if let Some(x) = v.get("maxLength") {
            out.push(format!("at most {x} characters"));
        }
        if let Some(x) = v.get("minItems") {
            out.push(format!("at least {x} item(s)"));
        }
        if let Some(x) = v.get("maxProperties") {
            out.push(format!("at most {x} entries"));
        }
        if v.get("readOnly") == Some(&json!(true)) {
            out.push("read-only".into());
        }
    };
    walk(p);
    for key in ["anyOf", "allOf"] {
        if let Some(alts) = p.get(key).and_then(Value::as_array) {
            alts.iter().for_each(&mut walk);
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_every_route_and_resolvable_refs() {
        let doc = openapi();
        let paths = doc["paths"].as_object().unwrap();
        for r in routes() {
            let op = &paths[r.path][r.method];
            assert!(op.is_object(), "{} {}", r.method, r.path);
            // Every authenticated route documents its errors too.
            assert!(
                r.public || op["responses"]["401"].is_object(),
                "{} {}",
                r.method,
                r.path
            );
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"").skip(1) {
            let target = part.split('"').next().unwrap();
            assert!(
                target.starts_with("#/components/schemas/"),
                "odd $ref {target}"
            );
            let name = target.rsplit('/').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref {target}");
        }
        assert!(schemas.contains_key("CreateSandbox"));
        // Request bodies refuse unknown fields, as the server does.
        assert_eq!(
            schemas["CreateSandbox"]["additionalProperties"],
            json!(false)
        );
        // Unsigned integers carry their bounds.
        assert_eq!(
            schemas["CreateVolume"]["properties"]["size_mb"]["maximum"],
            json!(u64::MAX)
        );
    }

    /// The router and this table name the same routes: one served but not
    /// documented, or documented but not served, fails here. The router's
    /// `.route(…)` calls are read from its source (axum cannot list a
    /// router's routes); the proxy's catch-all stands for its three paths.
    #[test]
    fn router_serves_exactly_the_documented_routes() {
        use std::collections::BTreeSet;
        let src = include_str!("mod.rs");
        let mut served = BTreeSet::new();
        for call in src.split(".route(").skip(1) {
            let call = call.split(".route(").next().unwrap_or(call);
            let call = call.split(".nest(").next().unwrap_or(call);
            let path = call.split('"').nth(1).unwrap_or_default();
            if path.starts_with("/sandboxes/{id}/proxy/") {
                served.insert((
                    "*".to_string(),
                    "/sandboxes/{id}/proxy/{port}/{rest}".to_string(),
                ));
                continue;
            }
            let mut methods = 0;
            for m in ["get", "post", "put", "patch", "delete", "head"] {
                // `get(x)`, `.post(y)` or `axum::routing::delete(z)`; not
                // a name that merely ends in one (`xget(`).
                let calls = call
                    .match_indices(&format!("{m}("))
                    .filter(|(i, _)| {
                        call[..*i]
                            .chars()
                            .last()
                            .is_none_or(|c| !c.is_alphanumeric() && c != '_')
                    })
                    .count();
                if calls > 0 {
                    served.insert((m.to_string(), path.to_string()));
                    methods += 1;
                }
            }
            assert!(methods > 0, "no method read for {path}");
        }
        let mut documented = BTreeSet::new();
        for r in routes() {
            if r.path.starts_with("/sandboxes/{id}/proxy/") {
                documented.insert(("*".to_string(), r.path.to_string()));
            } else {
                documented.insert((r.method.to_string(), r.path.to_string()));
            }
        }
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "served, not documented: {undocumented:?}"
        );
        assert!(unserved.is_empty(), "documented, not served: {unserved:?}");
    }

    /// docs/api.md is the rendering of the current document.
    #[test]
    fn api_reference_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md");
        let want = api_markdown();
        if std::env::var_os("BHATTI_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "docs/api.md is stale: run BHATTI_UPDATE_DOCS=1 cargo test -p bhatti-server --lib api_reference");
    }
}
