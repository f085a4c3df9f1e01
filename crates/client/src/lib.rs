//! `bhatti-client`: an async client for the bhatti daemon's HTTP and
//! WebSocket API (docs/api.md), used by the `bhatti` CLI and
//! usable by any other Rust program.
//!
//! Why a separate crate: the CLI should be a thin shell over typed calls,
//! and programs that drive sandboxes (agents, CI runners) want the same
//! calls without shelling out. Every request and response body is a type
//! from `bhatti-api`, the crate the server uses too, so the two cannot
//! drift apart.
//!
//! How it talks: HTTP/1.1 through hyper's client connection API over a
//! stream this crate dials itself — TCP, or the daemon's Unix socket
//! `<data_dir>/api.sock` (docs/decisions.md, "Control plane (server,
//! daemon)") — one connection per request, which keeps streamed bodies
//! (exec NDJSON, file reads) independent of each other. WebSockets (`shell`, `exec_ws`) run tokio-tungstenite over the
//! same kind of stream. Every request carries `Authorization: Bearer
//! <token>` when a token is configured.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bhatti_client::ClientError> {
//! use bhatti_client::{Client, ClientConfig, Overrides};
//! let client = Client::new(ClientConfig::resolve(&Overrides::default())?)?;
//! let out = client.exec("web", &bhatti_api::ExecRequest {
//!     cmd: vec!["uname".into(), "-a".into()],
//!     ..Default::default()
//! }).await?;
//! println!("{}", out.stdout);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod config;
mod error;
mod transport;
mod ws;

use std::sync::{Arc, Mutex};

use bhatti_api as api;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use config::{
    invoking_home, sudo_user, user_config_path, ClientConfig, Endpoint, Environment, Overrides,
    UrlSource, DEFAULT_DATA_DIR, DEFAULT_URL, GROUP_SOCKET, SOCKET_NAME, SYSTEM_CONFIG,
};
pub use error::{ApiError, ClientError, ConfigError, Result};
pub use transport::{encode_component, Conn};
pub use ws::{
    PipedEvent, PipedReader, PipedSession, PipedWriter, Shell, ShellEvent, ShellReader, ShellWriter,
};

use transport::{encode_query_path, Target};

/// A request body: bytes in memory or a file streamed from disk.
type ReqBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("bhatti-client/", env!("CARGO_PKG_VERSION"));
/// Response header announcing the oldest CLI the server supports.
pub const MIN_CLI_HEADER: &str = "x-bhatti-min-cli";

/// The result of `POST /sandboxes`: the record, and whether it already
/// existed (200 + `X-Bhatti-Existing: true`) instead of being created (201).
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub sandbox: api::Sandbox,
    pub existing: bool,
}

/// Truncation options for [`Client::read_file`] (0 = not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub offset: u64,
    pub limit: u64,
    pub max_bytes: u64,
}

/// `HEAD …/files`: what the stat headers said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileStat {
    pub size: u64,
    pub mode: String,
    pub is_dir: bool,
}

/// A file being downloaded: its total size (`X-File-Size`) and the body,
/// read chunk by chunk as it arrives.
#[derive(Debug)]
pub struct FileDownload {
    /// The file's total size; may exceed what the body carries when the
    /// read was truncated.
    pub size: Option<u64>,
    body: Incoming,
}

impl FileDownload {
    /// The next chunk; `None` at the end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes>> {
        loop {
            match self.body.frame().await? {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        if !data.is_empty() {
                            return Some(Ok(data));
                        }
                    }
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Everything that is left, in memory.
    pub async fn bytes(self) -> Result<Bytes> {
        Ok(self.body.collect().await?.to_bytes())
    }
}

/// A streamed exec (`Accept: application/x-ndjson`): events as their lines
/// arrive. The stream ends after the `exit` (or `error`) event.
#[derive(Debug)]
pub struct ExecStream {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl ExecStream {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<api::ExecEvent>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                match parse_event(&line) {
                    Some(r) => return Some(r),
                    None => continue,
                }
            }
            if self.done {
                let rest = std::mem::take(&mut self.buf);
                return parse_event(&rest);
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.buf.clear();
                    return Some(Err(e.into()));
                }
                None => self.done = true,
            }
        }
    }
}

/// One NDJSON line; blank lines are skipped (`None`).
fn parse_event(line: &[u8]) -> Option<Result<api::ExecEvent>> {
    let s = line.trim_ascii();
    if s.is_empty() {
        return None;
    }
    Some(
        serde_json::from_slice(s).map_err(|source| ClientError::Decode {
            what: "exec event",
            source,
        }),
    )
}

/// A handle to one daemon. Cheap to clone; safe to share between tasks.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    target: Target,
    auth: Option<HeaderValue>,
    server_version: Mutex<Option<String>>,
    min_cli: Mutex<Option<String>>,
}

impl Client {
    /// A client for a resolved configuration. Fails only when the endpoint
    /// or token cannot be used at all (bad URL, a token with control
    /// characters).
    pub fn new(cfg: ClientConfig) -> Result<Client> {
        let target = Target::new(&cfg.endpoint, cfg.ca_file.as_deref())?;
        let auth = match cfg.token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    ClientError::Request(
                        "the API token contains characters not allowed in a header".into(),
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint: cfg.endpoint,
                target,
                auth,
                server_version: Mutex::new(None),
                min_cli: Mutex::new(None),
            }),
        })
    }

    /// Where this client connects.
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The `X-Bhatti-Version` of the latest response, if any.
    pub fn server_version(&self) -> Option<String> {
        self.inner
            .server_version
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// The `X-Bhatti-Min-CLI` of the latest response, if the server sets it.
    pub fn min_cli(&self) -> Option<String> {
        self.inner
            .min_cli
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// The absolute URL of an API path (for showing proxy URLs); for a
    /// Unix-socket endpoint, the path itself.
    pub fn url_of(&self, path: &str) -> String {
        match &self.inner.endpoint {
            Endpoint::Tcp(base) => format!("{base}{path}"),
            Endpoint::Unix(_) => path.to_string(),
        }
    }

    // ----- plumbing -------------------------------------------------------

    fn note_headers(&self, h: &HeaderMap) {
        let text = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(v) = text(api::VERSION_HEADER) {
            if let Ok(mut g) = self.inner.server_version.lock() {
                *g = Some(v);
            }
        }
        if let Some(v) = text(MIN_CLI_HEADER) {
            if let Ok(mut g) = self.inner.min_cli.lock() {
                *g = Some(v);
            }
        }
    }

    /// Sends one request on a fresh connection and returns the response
    /// head with its (unread) body, after turning error statuses into
    /// [`ApiError`]s.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        extra: &[(header::HeaderName, HeaderValue)],
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Response<Incoming>> {
        match body {
            Some((bytes, ctype)) => {
                let len = bytes.len() as u64;
                let b = Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync();
                self.send_body(method, path_and_query, extra, b, Some((ctype, len)))
                    .await
            }
            None => {
                let b = Full::new(Bytes::new())
                    .map_err(|never| match never {})
                    .boxed_unsync();
                self.send_body(method, path_and_query, extra, b, None).await
            }
        }
    }

    /// One request on a new connection; `content` is the body's type and
    /// length (none: an empty body). The body may be a stream.
    async fn send_body(
        &self,
        method: Method,
        path_and_query: &str,
        extra: &[(header::HeaderName, HeaderValue)],
        body: ReqBody,
        content: Option<(&'static str, u64)>,
    ) -> Result<Response<Incoming>> {
        let conn = self.inner.target.dial(&self.inner.endpoint).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, ReqBody>(TokioIo::new(conn)).await?;
        tokio::spawn(async move {
            // Errors surface on the request/response side too.
            let _ = connection.await;
        });

        let uri = format!("{}{}", self.inner.target.prefix(), path_and_query);
        let mut b = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .header(header::HOST, self.inner.target.host_header())
            .header(header::USER_AGENT, USER_AGENT);
        if let Some(a) = &self.inner.auth {
            b = b.header(header::AUTHORIZATION, a.clone());
        }
        for (k, v) in extra {
            b = b.header(k, v.clone());
        }
        match content {
            Some((ctype, len)) => {
                b = b
                    .header(header::CONTENT_TYPE, ctype)
                    .header(header::CONTENT_LENGTH, len);
            }
            None => {
                if method == Method::POST || method == Method::PUT || method == Method::PATCH {
                    b = b.header(header::CONTENT_LENGTH, 0);
                }
            }
        }
        let req = b
            .body(body)
            .map_err(|e| ClientError::Request(format!("{method} {uri}: {e}")))?;
        let resp = sender.send_request(req).await?;
        self.note_headers(resp.headers());
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let body = resp.into_body().collect().await?.to_bytes();
            return Err(ApiError::from_body(status, &body).into());
        }
        Ok(resp)
    }

    async fn send_json<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response<Incoming>> {
        let payload = match body {
            Some(b) => Some((
                Bytes::from(serde_json::to_vec(b).map_err(|source| ClientError::Decode {
                    what: "request body",
                    source,
                })?),
                "application/json",
            )),
            None => None,
        };
        self.send(method, path, &[], payload).await
    }

    async fn decode<T: DeserializeOwned>(
        resp: Response<Incoming>,
        what: &'static str,
    ) -> Result<T> {
        let body = resp.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode { what, source })
    }

    async fn call<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        what: &'static str,
    ) -> Result<T> {
        let resp = self.send_json(method, path, body).await?;
        Self::decode(resp, what).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, what: &'static str) -> Result<T> {
        self.call::<T, ()>(Method::GET, path, None, what).await
    }

    async fn delete_status(&self, path: &str) -> Result<api::StatusBody> {
        let resp = self.send_json::<()>(Method::DELETE, path, None).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        if body.trim_ascii().is_empty() {
            // 204 No Content.
            return Ok(api::StatusBody {
                status: "deleted".into(),
            });
        }
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
            what: "status",
            source,
        })
    }

    fn sb(id: &str) -> String {
        format!("/sandboxes/{}", encode_component(id))
    }

    // ----- system ---------------------------------------------------------

    /// `GET /health` (no auth needed).
    pub async fn health(&self) -> Result<api::Health> {
        self.get("/health", "health").await
    }

    // ----- sandboxes ------------------------------------------------------

    /// `GET /sandboxes`, filtered by exact label matches (ANDed).
    pub async fn list_sandboxes(&self, labels: &[(String, String)]) -> Result<Vec<api::Sandbox>> {
        let mut path = String::from("/sandboxes");
        for (i, (k, v)) in labels.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str("label=");
            path.push_str(&encode_query_path(k));
            path.push('=');
            path.push_str(&encode_query_path(v));
        }
        self.get(&path, "sandbox list").await
    }

    /// `POST /sandboxes`. Idempotent by name: an existing active sandbox of
    /// that name comes back with `existing: true`.
    pub async fn create_sandbox(&self, req: &api::CreateSandbox) -> Result<Created> {
        let resp = self
            .send_json(Method::POST, "/sandboxes", Some(req))
            .await?;
        let existing = resp
            .headers()
            .get(api::EXISTING_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || resp.status() == hyper::StatusCode::OK;
        let sandbox = Self::decode(resp, "sandbox").await?;
        Ok(Created { sandbox, existing })
    }

    /// Fork: a new sandbox copied from a running one (`create` with
    /// `from`), which keeps running.
    pub async fn fork_sandbox(&self, source: &str, req: &api::CreateSandbox) -> Result<Created> {
        let mut req = req.clone();
        req.from = Some(source.to_string());
        self.create_sandbox(&req).await
    }

    /// `GET /sandboxes/:id` (name or ID).
    pub async fn get_sandbox(&self, id: &str) -> Result<api::Sandbox> {
        self.get(&Self::sb(id), "sandbox").await
    }

    /// `PATCH /sandboxes/:id`: rename, keep-hot, labels.
    pub async fn patch_sandbox(&self, id: &str, patch: &api::PatchSandbox) -> Result<api::Sandbox> {
        self.call(Method::PATCH, &Self::sb(id), Some(patch), "sandbox")
            .await
    }

    /// `DELETE /sandboxes/:id`.
    pub async fn destroy_sandbox(&self, id: &str) -> Result<api::StatusBody> {
        self.delete_status(&Self::sb(id)).await
    }

    /// `POST /sandboxes/:id/stop`.
    pub async fn stop_sandbox(&self, id: &str) -> Result<api::Sandbox> {
        self.call::<_, ()>(
            Method::POST,
            &format!("{}/stop", Self::sb(id)),
            None,
            "sandbox",
        )
        .await
    }

    /// `POST /sandboxes/:id/start`; `force` retries a restore that failed
    /// before (clears the circuit breaker).
    pub async fn start_sandbox(&self, id: &str, force: bool) -> Result<api::Sandbox> {
        let path = format!("{}/start", Self::sb(id));
        if force {
            self.call(
                Method::POST,
                &path,
                Some(&api::StartSandbox { force }),
                "sandbox",
            )
            .await
        } else {
            self.call::<_, ()>(Method::POST, &path, None, "sandbox")
                .await
        }
    }

    // ----- exec -----------------------------------------------------------

    /// `POST /sandboxes/:id/exec`, buffered.
    pub async fn exec(&self, id: &str, req: &api::ExecRequest) -> Result<api::ExecResponse> {
        let mut req = req.clone();
        req.detach = false;
        self.call(
            Method::POST,
            &format!("{}/exec", Self::sb(id)),
            Some(&req),
            "exec result",
        )
        .await
    }

    /// `POST /sandboxes/:id/exec` with `Accept: application/x-ndjson`:
    /// output events as they happen.
    pub async fn exec_stream(&self, id: &str, req: &api::ExecRequest) -> Result<ExecStream> {
        let mut req = req.clone();
        req.detach = false;
        let body = serde_json::to_vec(&req).map_err(|source| ClientError::Decode {
            what: "request body",
            source,
        })?;
        let resp = self
            .send(
                Method::POST,
                &format!("{}/exec", Self::sb(id)),
                &[(header::ACCEPT, HeaderValue::from_static(api::NDJSON))],
                Some((Bytes::from(body), "application/json")),
            )
            .await?;
        Ok(ExecStream {
            body: resp.into_body(),
            buf: Vec::new(),
            done: false,
        })
    }

    /// `POST /sandboxes/:id/exec` with `detach: true`: starts the command
    /// in the background and returns its PID and output file.
    pub async fn exec_detached(
        &self,
        id: &str,
        req: &api::ExecRequest,
    ) -> Result<api::DetachedResponse> {
        let mut req = req.clone();
        req.detach = true;
        self.call(
            Method::POST,
            &format!("{}/exec", Self::sb(id)),
            Some(&req),
            "detached exec",
        )
        .await
    }

    /// `GET /sandboxes/:id/sessions`.
    pub async fn sessions(&self, id: &str) -> Result<Vec<api::Session>> {
        self.get(&format!("{}/sessions", Self::sb(id)), "session list")
            .await
    }

    // ----- files ----------------------------------------------------------

    fn files_path(id: &str, path: &str) -> String {
        format!("{}/files?path={}", Self::sb(id), encode_query_path(path))
    }

    /// `GET …/files?path=`: the file's bytes, streamed.
    pub async fn read_file(&self, id: &str, path: &str, opts: ReadOptions) -> Result<FileDownload> {
        let mut p = Self::files_path(id, path);
        for (k, v) in [
            ("offset", opts.offset),
            ("limit", opts.limit),
            ("max_bytes", opts.max_bytes),
        ] {
            if v > 0 {
                p.push_str(&format!("&{k}={v}"));
            }
        }
        let resp = self.send(Method::GET, &p, &[], None).await?;
        let size = header_u64(resp.headers(), api::FILE_SIZE_HEADER);
        Ok(FileDownload {
            size,
            body: resp.into_body(),
        })
    }

    /// `GET …/files?path=&ls=true`: a directory listing.
    pub async fn list_files(&self, id: &str, path: &str) -> Result<Vec<api::FileInfo>> {
        self.get(
            &format!("{}&ls=true", Self::files_path(id, path)),
            "file list",
        )
        .await
    }

    /// `PUT …/files?path=[&mode=]`: writes `data` (sent with its
    /// `Content-Length`); `mode` is octal text such as `"0755"`.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: Bytes,
        mode: Option<&str>,
    ) -> Result<api::StatusBody> {
        let mut p = Self::files_path(id, path);
        if let Some(m) = mode {
            p.push_str("&mode=");
            p.push_str(&encode_component(m));
        }
        let resp = self
            .send(
                Method::PUT,
                &p,
                &[],
                Some((data, "application/octet-stream")),
            )
            .await?;
        Self::decode(resp, "status").await
    }

    /// `HEAD …/files?path=`: size, mode and whether it is a directory.
    pub async fn stat_file(&self, id: &str, path: &str) -> Result<FileStat> {
        let resp = self
            .send(Method::HEAD, &Self::files_path(id, path), &[], None)
            .await?;
        let h = resp.headers();
        Ok(FileStat {
            size: header_u64(h, api::FILE_SIZE_HEADER).unwrap_or(0),
            mode: h
                .get(api::FILE_MODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            is_dir: h
                .get(api::FILE_ISDIR_HEADER)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
        })
    }

    // ----- ports ----------------------------------------------------------

    /// `GET /sandboxes/:id/ports`: listening ports and their proxy paths.
    pub async fn ports(&self, id: &str) -> Result<Vec<api::Port>> {
        self.get(&format!("{}/ports", Self::sb(id)), "port list")
            .await
    }

    /// `GET /sandboxes/:id/stats`: CPU, memory and disk, read in the guest.
    pub async fn stats(&self, id: &str) -> Result<api::SandboxStats> {
        self.get(&format!("{}/stats", Self::sb(id)), "stats").await
    }

    /// `GET /sandboxes/{id}/console`: the newest `bytes` (server default
    /// when none) of the guest's console, as text. Never wakes it.
    pub async fn console(&self, id: &str, bytes: Option<u64>) -> Result<String> {
        let mut path = format!("{}/console", Self::sb(id));
        if let Some(b) = bytes {
            path.push_str(&format!("?bytes={b}"));
        }
        let resp = self.send_json::<()>(Method::GET, &path, None).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /ports`: ports of all the caller's hot sandboxes.
    pub async fn all_ports(&self) -> Result<Vec<api::Port>> {
        self.get("/ports", "port list").await
    }

    // ----- secrets --------------------------------------------------------

    pub async fn list_secrets(&self) -> Result<Vec<api::Secret>> {
        self.get("/secrets", "secret list").await
    }

    /// `POST /secrets` (upsert).
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<api::Secret> {
        let body = api::SetSecret {
            name: name.into(),
            value: value.into(),
        };
        self.call(Method::POST, "/secrets", Some(&body), "secret")
            .await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/secrets/{}", encode_component(name)))
            .await
    }

    // ----- templates ------------------------------------------------------

    pub async fn list_templates(&self) -> Result<Vec<api::Template>> {
        self.get("/templates", "template list").await
    }

    pub async fn create_template(&self, t: &api::Template) -> Result<api::Template> {
        self.call(Method::POST, "/templates", Some(t), "template")
            .await
    }

    pub async fn get_template(&self, id: &str) -> Result<api::Template> {
        self.get(&format!("/templates/{}", encode_component(id)), "template")
            .await
    }

    pub async fn delete_template(&self, id: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/templates/{}", encode_component(id)))
            .await
    }

    // ----- volumes --------------------------------------------------------

    pub async fn list_volumes(&self) -> Result<Vec<api::Volume>> {
        self.get("/volumes", "volume list").await
    }

    pub async fn create_volume(&self, name: &str, size_mb: u64) -> Result<api::Volume> {
        let body = api::CreateVolume {
            name: name.into(),
            size_mb,
        };
        self.call(Method::POST, "/volumes", Some(&body), "volume")
            .await
    }

    /// `GET /volumes/:name`, with attachments.
    pub async fn get_volume(&self, name: &str) -> Result<api::Volume> {
        self.get(&format!("/volumes/{}", encode_component(name)), "volume")
            .await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/volumes/{}", encode_component(name)))
            .await
    }

    /// `POST /volumes/:name/resize` (grow only).
    pub async fn resize_volume(&self, name: &str, size_mb: u64) -> Result<api::Resized> {
        self.call(
            Method::POST,
            &format!("/volumes/{}/resize", encode_component(name)),
            Some(&api::ResizeVolume { size_mb }),
            "resize result",
        )
        .await
    }

    /// `POST /volumes/:name/snapshot`: a copy of a detached volume.
    pub async fn clone_volume(&self, source: &str, new_name: &str) -> Result<api::Volume> {
        self.call(
            Method::POST,
            &format!("/volumes/{}/snapshot", encode_component(source)),
            Some(&api::NameBody {
                name: new_name.into(),
            }),
            "volume",
        )
        .await
    }

    // ----- images and tasks -----------------------------------------------

    pub async fn list_images(&self) -> Result<Vec<api::Image>> {
        self.get("/images", "image list").await
    }

    pub async fn get_image(&self, name: &str) -> Result<api::Image> {
        self.get(&format!("/images/{}", encode_component(name)), "image")
            .await
    }

    pub async fn delete_image(&self, name: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/images/{}", encode_component(name)))
            .await
    }

    /// `POST /images/pull`: `running` with a task to follow, or `exists`
    /// when the image is already at the reference's digest.
    pub async fn pull_image(&self, req: &api::PullImage) -> Result<api::PullStarted> {
        self.call(Method::POST, "/images/pull", Some(req), "pull")
            .await
    }

    /// `GET /tasks/:id`.
    pub async fn task(&self, id: &str) -> Result<api::Task> {
        self.get(&format!("/tasks/{}", encode_component(id)), "task")
            .await
    }

    /// `POST /images/import?name=`: the tarball at `path` (a `docker save`
    /// or an OCI layout), streamed from disk, never read whole.
    pub async fn import_image(&self, name: &str, path: &std::path::Path) -> Result<api::Imported> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ClientError::Request(format!("open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| ClientError::Request(format!("stat {}: {e}", path.display())))?
            .len();
        let frames = futures_util::TryStreamExt::map_ok(
            tokio_util::io::ReaderStream::new(file),
            hyper::body::Frame::data,
        );
        let body = StreamBody::new(frames).boxed_unsync();
        let resp = self
            .send_body(
                Method::POST,
                &format!("/images/import?name={}", encode_component(name)),
                &[],
                body,
                Some(("application/x-tar", len)),
            )
            .await?;
        Self::decode(resp, "import result").await
    }

    /// `POST /sandboxes/:id/save-image`.
    pub async fn save_image(&self, sandbox: &str, name: &str) -> Result<api::Image> {
        self.call(
            Method::POST,
            &format!("{}/save-image", Self::sb(sandbox)),
            Some(&api::NameBody { name: name.into() }),
            "image",
        )
        .await
    }

    // ----- snapshots ------------------------------------------------------

    /// `POST /sandboxes/:id/checkpoint`: a named snapshot of a sandbox.
    pub async fn checkpoint(&self, sandbox: &str, name: &str) -> Result<api::Snapshot> {
        self.call(
            Method::POST,
            &format!("{}/checkpoint", Self::sb(sandbox)),
            Some(&api::NameBody { name: name.into() }),
            "snapshot",
        )
        .await
    }

    pub async fn list_snapshots(&self) -> Result<Vec<api::Snapshot>> {
        self.get("/snapshots", "snapshot list").await
    }

    pub async fn get_snapshot(&self, name: &str) -> Result<api::Snapshot> {
        self.get(
            &format!("/snapshots/{}", encode_component(name)),
            "snapshot",
        )
        .await
    }

    pub async fn delete_snapshot(&self, name: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/snapshots/{}", encode_component(name)))
            .await
    }

    /// `POST /snapshots/:name/resume`: a new sandbox from a snapshot
    /// (`new_name` defaults server-side to `<snap>-<6 hex>`).
    pub async fn resume_snapshot(
        &self,
        name: &str,
        new_name: Option<&str>,
    ) -> Result<api::Sandbox> {
        let body = api::ResumeSnapshot {
            name: new_name.unwrap_or_default().to_string(),
        };
        self.call(
            Method::POST,
            &format!("/snapshots/{}/resume", encode_component(name)),
            Some(&body),
            "sandbox",
        )
        .await
    }

    // ----- websockets -----------------------------------------------------

    /// Opens the interactive shell of a sandbox (`GET /sandboxes/:id/ws`):
    /// `session` attaches to that session (taking it over from another
    /// client); otherwise `new` forces a fresh one, and without it the
    /// server reattaches the newest detached shell if there is one.
    pub async fn shell(&self, id: &str, new: bool, session: Option<&str>) -> Result<Shell> {
        let mut path = format!("{}/ws", Self::sb(id));
        if let Some(s) = session {
            path.push_str("?session=");
            path.push_str(&encode_component(s));
        } else if new {
            path.push_str("?new=true");
        }
        let ws = self.ws_connect(&path).await?;
        Shell::start(ws).await
    }

    /// Opens a piped (non-TTY) session (`GET /sandboxes/:id/exec/ws`):
    /// with `session`, reattaches to it; otherwise starts `start.cmd`.
    pub async fn exec_ws(
        &self,
        id: &str,
        start: &api::PipedStart,
        session: Option<&str>,
    ) -> Result<PipedSession> {
        let mut path = format!("{}/exec/ws", Self::sb(id));
        if let Some(s) = session {
            path.push_str("?session=");
            path.push_str(&encode_component(s));
        }
        let ws = self.ws_connect(&path).await?;
        PipedSession::start(ws, if session.is_some() { None } else { Some(start) }).await
    }

    async fn ws_connect(&self, path: &str) -> Result<ws::Ws> {
        let conn = self.inner.target.dial(&self.inner.endpoint).await?;
        let url = format!(
            "ws://{}{}{}",
            self.inner.target.host_header(),
            self.inner.target.prefix(),
            path
        );
        let (ws, headers) = ws::handshake(conn, &url, self.inner.auth.as_ref()).await?;
        self.note_headers(&headers);
        Ok(ws)
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_parse_and_blank_lines_skip() {
        assert!(parse_event(b"  \n").is_none());
        let e = parse_event(b"{\"type\":\"stdout\",\"data\":\"hi\\n\"}\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            e,
            api::ExecEvent::Stdout {
                data: "hi\n".into()
            }
        );
        assert!(matches!(
            parse_event(b"{nope").unwrap(),
            Err(ClientError::Decode { .. })
        ));
    }

    #[test]
    fn client_rejects_unusable_tokens_and_shows_urls() {
        let bad = ClientConfig::new(Endpoint::Tcp("http://h:1".into()), Some("a\nb".into()));
        assert!(Client::new(bad).is_err());
        let c = Client::new(ClientConfig::new(
            Endpoint::Tcp("http://h:1/base".into()),
            Some("bht_x".into()),
        ))
        .unwrap();
        assert_eq!(
            c.url_of("/sandboxes/a/proxy/80/"),
            "http://h:1/base/sandboxes/a/proxy/80/"
        );
        let u = Client::new(ClientConfig::new(Endpoint::Unix("/x.sock".into()), None)).unwrap();
        assert_eq!(u.url_of("/p"), "/p");
        assert_eq!(u.server_version(), None);
    }
}
