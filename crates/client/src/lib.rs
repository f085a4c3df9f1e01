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

mod calls;
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
pub use error::{ApiError, ClientError, ConfigError, Resource, Result};
pub use transport::encode_component;
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
    /// The sandbox as the server recorded it.
    pub sandbox: api::Sandbox,
    /// True when a sandbox of that name already existed and nothing was created.
    pub existing: bool,
}

/// Truncation options for [`Client::read_file`] (0 = not set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// 1-based first line to return.
    pub offset: u64,
    /// Maximum number of lines.
    pub limit: u64,
    /// Maximum number of bytes.
    pub max_bytes: u64,
}

/// `HEAD …/files`: what the stat headers said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileStat {
    /// Size in bytes (0 when the header was absent).
    pub size: u64,
    /// Octal permission text such as `"0644"` (empty when absent).
    pub mode: String,
    /// Whether the path is a directory.
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
