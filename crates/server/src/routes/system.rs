//! `/health`, `/metrics` (Prometheus text) and `/openapi.json`, which is
//! assembled from [`ROUTES`] and the schemas of the `bhatti-api` types.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use bhatti_api as api;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::{Caller, RouteDoc, VERSION};
use crate::state::Shared;

pub async fn health(State(st): State<Shared>) -> Json<api::Health> {
    let s = st.started.elapsed().as_secs();
    Json(api::Health {
        status: "ok".into(),
        uptime: format!("{}h{}m{}s", s / 3600, (s / 60) % 60, s % 60),
        version: VERSION.into(),
        engine: st.engine_name.into(),
    })
}

pub async fn metrics(State(st): State<Shared>, Caller(_): Caller) -> impl IntoResponse {
    let c = &st.counters;
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP bhatti_{name} {help}\n# TYPE bhatti_{name} counter\nbhatti_{name} {v}"
        );
    };
    counter(
        "api_requests_total",
        "API requests served.",
        c.requests.load(Ordering::Relaxed),
    );
    counter(
        "api_errors_total",
        "API requests that failed with 500.",
        c.errors.load(Ordering::Relaxed),
    );
    counter(
        "api_auth_failures_total",
        "Requests with a missing or unknown key.",
        c.auth_failures.load(Ordering::Relaxed),
    );
    counter(
        "api_rate_limited_total",
        "Requests refused by the rate limiter.",
        c.rate_limited.load(Ordering::Relaxed),
    );
    counter(
        "wakes_total",
        "Sandboxes woken by a request.",
        c.wakes.load(Ordering::Relaxed),
    );
    counter(
        "proxy_requests_total",
        "Requests through the sandbox proxy.",
        c.proxy_requests.load(Ordering::Relaxed),
    );
    counter(
        "events_dropped_total",
        "Events dropped because the recorder was full.",
        st.events.dropped(),
    );
    let infos = st.engine.list().await;
    let mut hot = 0;
    let mut warm = 0;
    let mut cold = 0;
    for i in &infos {
        match i.thermal {
            bhatti_engine::api::Thermal::Hot => hot += 1,
            bhatti_engine::api::Thermal::Warm => warm += 1,
            bhatti_engine::api::Thermal::Cold => cold += 1,
        }
    }
    let _ = writeln!(
        out,
        "# HELP bhatti_sandboxes Sandboxes by thermal state.\n# TYPE bhatti_sandboxes gauge"
    );
    for (t, n) in [("hot", hot), ("warm", warm), ("cold", cold)] {
        let _ = writeln!(out, "bhatti_sandboxes{{thermal=\"{t}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP bhatti_websockets_active Open WebSocket sessions.\n# TYPE bhatti_websockets_active gauge\nbhatti_websockets_active {}",
        c.websockets_active.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP bhatti_uptime_seconds Seconds since the daemon started.\n# TYPE bhatti_uptime_seconds gauge\nbhatti_uptime_seconds {}",
        st.started.elapsed().as_secs()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

fn s<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}
fn list<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<Vec<T>>()
}

macro_rules! route {
    ($m:literal, $p:literal, $sum:literal, $req:expr, $resp:expr, $st:literal) => {
        RouteDoc {
            method: $m,
            path: $p,
            summary: $sum,
            request: $req,
            response: $resp,
            status: $st,
        }
    };
}

/// Every route the API serves, documented.
pub static ROUTES: &[RouteDoc] = &[
    route!("get", "/health", "Liveness and uptime (no auth).", None, Some(s::<api::Health>), 200),
    route!("get", "/openapi.json", "This document.", None, None, 200),
    route!("get", "/metrics", "Prometheus metrics.", None, None, 200),
    route!("get", "/sandboxes", "List your sandboxes, newest first; `label=k=v` filters (AND).", None, Some(list::<api::Sandbox>), 200),
    route!("post", "/sandboxes", "Create a sandbox (201), or return the existing one of that name (200, X-Bhatti-Existing). `from` forks a running sandbox.", Some(s::<api::CreateSandbox>), Some(s::<api::Sandbox>), 201),
    route!("get", "/sandboxes/{id}", "One sandbox by ID or name (does not wake it).", None, Some(s::<api::Sandbox>), 200),
    route!("patch", "/sandboxes/{id}", "Rename, relabel, or set keep_hot (true wakes it).", Some(s::<api::PatchSandbox>), Some(s::<api::Sandbox>), 200),
    route!("delete", "/sandboxes/{id}", "Destroy a sandbox (volumes survive).", None, Some(s::<api::StatusBody>), 200),
    route!("post", "/sandboxes/{id}/stop", "Snapshot to disk and stop (cold).", None, Some(s::<api::Sandbox>), 200),
    route!("post", "/sandboxes/{id}/start", "Restore a stopped sandbox; force clears the restore-failed breaker.", Some(s::<api::StartSandbox>), Some(s::<api::Sandbox>), 200),
    route!("post", "/sandboxes/{id}/exec", "Run a command: buffered JSON, NDJSON stream (Accept: application/x-ndjson, lines are ExecEvent), or detached.", Some(s::<api::ExecRequest>), Some(s::<api::ExecResponse>), 200),
    route!("get", "/sandboxes/{id}/sessions", "Sessions in the sandbox.", None, Some(list::<api::Session>), 200),
    route!("delete", "/sandboxes/{id}/sessions/{session}", "Kill a session.", None, Some(s::<api::StatusBody>), 200),
    route!("get", "/sandboxes/{id}/ws", "WebSocket shell: ?new=true or ?session=ID; binary I/O, text resize messages.", None, Some(s::<api::WsServerMsg>), 101),
    route!("get", "/sandboxes/{id}/exec/ws", "WebSocket piped session; the first text message is PipedStart.", Some(s::<api::PipedStart>), Some(s::<api::WsServerMsg>), 101),
    route!("get", "/sandboxes/{id}/files", "Read a file (?path=, offset, limit, max_bytes; X-File-Size) or list a directory (&ls=true).", None, Some(list::<api::FileInfo>), 200),
    route!("put", "/sandboxes/{id}/files", "Write a file atomically (?path=&mode=; Content-Length required; 100 MiB max).", None, Some(s::<api::StatusBody>), 200),
    route!("head", "/sandboxes/{id}/files", "Stat a file (X-File-Size, X-File-Mode, X-File-IsDir).", None, None, 200),
    route!("get", "/sandboxes/{id}/ports", "Listening TCP ports and their proxy URLs.", None, Some(list::<api::Port>), 200),
    route!("get", "/ports", "Ports of all your hot sandboxes (wakes nothing).", None, Some(list::<api::Port>), 200),
    route!("get", "/sandboxes/{id}/proxy/{port}/{rest}", "Authenticated HTTP/WebSocket reverse proxy to a guest port (any method).", None, None, 200),
    route!("post", "/sandboxes/{id}/checkpoint", "Take a named snapshot; the sandbox keeps running.", Some(s::<api::NameBody>), Some(s::<api::Snapshot>), 201),
    route!("get", "/snapshots", "Your snapshots.", None, Some(list::<api::Snapshot>), 200),
    route!("get", "/snapshots/{name}", "One snapshot.", None, Some(s::<api::Snapshot>), 200),
    route!("delete", "/snapshots/{name}", "Delete a snapshot.", None, Some(s::<api::StatusBody>), 200),
    route!("post", "/snapshots/{name}/resume", "Resume a snapshot into a new sandbox.", Some(s::<api::NameBody>), Some(s::<api::Sandbox>), 201),
    route!("get", "/secrets", "Secret names (never values).", None, Some(list::<api::Secret>), 200),
    route!("post", "/secrets", "Set a secret (upsert); injected as an env var at create.", Some(s::<api::SetSecret>), Some(s::<api::Secret>), 201),
    route!("delete", "/secrets/{name}", "Delete a secret.", None, Some(s::<api::StatusBody>), 200),
    route!("get", "/templates", "Your templates.", None, Some(list::<api::Template>), 200),
    route!("post", "/templates", "Create a template.", Some(s::<api::Template>), Some(s::<api::Template>), 201),
    route!("get", "/templates/{id}", "One template by ID or name.", None, Some(s::<api::Template>), 200),
    route!("delete", "/templates/{id}", "Delete a template.", None, Some(s::<api::StatusBody>), 200),
    route!("get", "/volumes", "Your persistent volumes.", None, Some(list::<api::Volume>), 200),
    route!("post", "/volumes", "Create a volume.", Some(s::<api::CreateVolume>), Some(s::<api::Volume>), 201),
    route!("get", "/volumes/{name}", "One volume with its attachments.", None, Some(s::<api::Volume>), 200),
    route!("delete", "/volumes/{name}", "Delete a detached volume.", None, Some(s::<api::StatusBody>), 200),
    route!("post", "/volumes/{name}/resize", "Grow a detached volume.", Some(s::<api::ResizeVolume>), Some(s::<api::Resized>), 200),
    route!("post", "/volumes/{name}/snapshot", "Clone a volume.", Some(s::<api::NameBody>), Some(s::<api::Volume>), 201),
];

/// The OpenAPI 3.1 document.
pub fn openapi() -> Value {
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut paths = Map::new();
    for r in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(f) = r.request {
            op.insert(
                "requestBody".into(),
                json!({"content": {"application/json": {"schema": f(&mut g)}}}),
            );
        }
        let mut resp = json!({"description": "success"});
        if let Some(f) = r.response {
            resp["content"] = json!({"application/json": {"schema": f(&mut g)}});
        }
        let mut responses = Map::new();
        responses.insert(r.status.to_string(), resp);
        responses.insert(
            "default".into(),
            json!({"description": "error", "content": {"application/json": {"schema": g.subschema_for::<api::ErrorBody>()}}}),
        );
        op.insert("responses".into(), Value::Object(responses));
        if r.path != "/health" {
            op.insert("security".into(), json!([{"bearer": []}]));
        }
        paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .map(|m| m.insert(r.method.to_string(), Value::Object(op)));
    }
    let defs = g.take_definitions(true);
    json!({
        "openapi": "3.0.3",
        "info": {"title": "bhatti API", "version": VERSION},
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "bht_<64 hex> API key"}}
        }
    })
}

/// `docs/api.md`: the API reference rendered from [`openapi`].
pub fn api_markdown() -> String {
    let doc = openapi();
    let mut out = String::from(
        "# API reference\n\nGenerated from the server's OpenAPI document (`GET /openapi.json`) by \
         `BHATTI_UPDATE_DOCS=1 cargo test -p bhatti-server --lib api_reference`; do not edit by hand.\n\n\
         Every route but `/health` needs `Authorization: Bearer bht_<64 hex>`. Errors are \
         `{\"error\": \"…\"}` (500s add `request_id`). Sandbox arguments take an ID or a name.\n\n\
         | method | path | status | request | response | what |\n|---|---|---|---|---|---|\n",
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
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method];
        let req = name(&op["requestBody"]["content"]["application/json"]["schema"]);
        let resp =
            name(&op["responses"][r.status.to_string()]["content"]["application/json"]["schema"]);
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {} | {} |",
            r.method.to_uppercase(),
            r.path,
            r.status,
            req,
            resp,
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
            let required: Vec<&str> = sch["required"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = sch["properties"].as_object() {
                out.push_str("| field | type | required | notes |\n|---|---|---|---|\n");
                for (f, p) in props {
                    let ty = p
                        .get("type")
                        .map(|t| t.to_string().replace('"', ""))
                        .unwrap_or_else(|| name(p));
                    let ty = if ty.is_empty() { "object".into() } else { ty };
                    let desc = p
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .replace('\n', " ")
                        .replace('|', "\\|");
                    let _ = writeln!(
                        out,
                        "| `{f}` | {ty} | {} | {desc} |",
                        if required.contains(&f.as_str()) {
                            "yes"
                        } else {
                            ""
                        }
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

pub async fn openapi_handler(Caller(_): Caller) -> Json<Value> {
    Json(openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_every_route_and_resolvable_refs() {
        let doc = openapi();
        let paths = doc["paths"].as_object().unwrap();
        for r in ROUTES {
            assert!(
                paths[r.path][r.method].is_object(),
                "{} {}",
                r.method,
                r.path
            );
        }
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"").skip(1) {
            let target = part.split('"').next().unwrap();
            let name = target.rsplit('/').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref {target}");
        }
        assert!(schemas.contains_key("CreateSandbox"));
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
