//! Host-side client of the lohar guest agent.
//!
//! An operation opens its own connection (the protocol carries one operation
//! per control connection), sends AUTH when a token is set, and speaks the frames
//! of `bhatti-protocol`; a client made [`AgentClient::reusing`] keeps
//! connections between operations instead when the agent negotiates it
//! (`conn.reuse`, see `reuse`). The transport is pluggable: Unix sockets (test and
//! container mode), TCP over the sandbox network, and Firecracker's hybrid vsock.
//!
//! Dropping any in-flight operation closes its connection, which the agent treats
//! as cancellation (a one-shot exec's process group is killed).

#![forbid(unsafe_code)]

mod error;
mod exec;
mod files;
mod reuse;
mod session;
mod transport;
mod watch;

use std::time::Duration;

use bhatti_protocol::messages::{
    ActivityInfo, ErrorBody, ExecKillRequest, FwdRequest, Hello, HelloResponse, SessionInfo,
    StatusResponse, FEATURE_ERROR_CODES,
};
use bhatti_protocol::{Frame, MsgType, PORT_CONTROL, PORT_FORWARD, PROTOCOL_VERSION};

pub use error::ClientError;
pub use exec::{ExecEvents, ExecInput, ExecResult, ExecStream, StreamEvent};
pub use files::{FileDownload, ReadOptions};
pub use session::{ShellOptions, Terminal, TerminalReader, TerminalWriter};
pub use transport::{Conn, Stream, Transport, Tunnel};
pub use watch::Watch;

pub use bhatti_protocol::messages::{
    ApplyConfig, ApplyConfigResult, DetachedInfo, ExecRequest, FileInfo, FileReadResponse,
    WatchEvent, WatchOp, FEATURE_CONFIG_APPLY,
};

/// The result of every agent operation.
pub type Result<T> = std::result::Result<T, ClientError>;

/// Per-attempt timeouts of [`AgentClient::wait_ready`]: 100 ms ×3, 250 ms ×3,
/// 500 ms ×4, then 2 s for every later attempt.
pub const READY_SCHEDULE: &[(Duration, u32)] = &[
    (Duration::from_millis(100), 3),
    (Duration::from_millis(250), 3),
    (Duration::from_millis(500), 4),
];
const READY_LATE_ATTEMPT: Duration = Duration::from_secs(2);
const READY_PAUSE: Duration = Duration::from_millis(10);

/// Forward tunnels one client opens at a time, from connect until the
/// agent's answer (by then it has read the AUTH). The agent admits a
/// trusted source's unauthenticated connections up to 4 on its shared
/// budget plus 50 reserved; a burst of tunnels (a public URL under load)
/// queues here instead of being refused, and leaves room for control
/// operations.
const FORWARD_DIALS: usize = 8;

/// A handle on one sandbox's agent. Cheap to clone; clones share the
/// forward-dial budget.
#[derive(Debug, Clone)]
pub struct AgentClient {
    transport: Transport,
    token: Option<String>,
    dials: std::sync::Arc<tokio::sync::Semaphore>,
    /// Idle connections kept between operations (`None`: none kept).
    reuse: Option<std::sync::Arc<reuse::Reuse>>,
}

impl AgentClient {
    /// A client reaching the agent over `transport`, authenticating with
    /// `token` (`None` or empty: send no AUTH).
    pub fn new(transport: Transport, token: Option<String>) -> AgentClient {
        AgentClient {
            transport,
            token: token.filter(|t| !t.is_empty()),
            dials: std::sync::Arc::new(tokio::sync::Semaphore::new(FORWARD_DIALS)),
            reuse: None,
        }
    }

    /// How this client reaches the agent.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Opens an authenticated connection to the control port.
    pub async fn connect(&self) -> Result<Conn> {
        self.connect_port(PORT_CONTROL).await
    }

    async fn connect_port(&self, port: u32) -> Result<Conn> {
        let mut conn = self.transport.connect(port).await?;
        if let Some(t) = &self.token {
            conn.send(MsgType::Auth, t.as_bytes()).await?;
        }
        Ok(conn)
    }

    /// Sends one request frame on a fresh connection.
    async fn request(&self, kind: MsgType, payload: &[u8]) -> Result<Conn> {
        let mut conn = self.connect().await?;
        conn.send(kind, payload).await?;
        Ok(conn)
    }

    /// One request, one JSON reply of type `want` (on a reused connection
    /// when this client reuses them).
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        kind: MsgType,
        payload: &[u8],
        want: MsgType,
    ) -> Result<T> {
        let (lease, f) = self.start(kind, payload).await?;
        let reply = expected(f, want);
        // An agent's error ends its request as cleanly as a reply does.
        if matches!(reply, Ok(_) | Err(ClientError::Agent { .. })) {
            self.give_back(lease);
        }
        Ok(reply?.parse_json()?)
    }

    /// The agent's protocol version and features (`None` for a v1 agent, which
    /// does not know HELLO).
    pub async fn hello(&self) -> Result<Option<HelloResponse>> {
        let p = serde_json::to_vec(&hello_asking(&[FEATURE_ERROR_CODES]))?;
        match self.call(MsgType::Hello, &p, MsgType::HelloResp).await {
            Ok(h) => Ok(Some(h)),
            // v1's words for a frame type it does not know.
            Err(ClientError::Agent {
                code: None,
                message,
            }) if message.starts_with("unexpected frame type") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes a booted guest this sandbox (hostname, env, files, a fresh
    /// token, entropy, init): for a pooled VM being claimed or a sandbox
    /// restored from a template snapshot. The agent must announce
    /// [`FEATURE_CONFIG_APPLY`] in HELLO. After it, this client's token is
    /// refused if `cfg.token` replaced it: make a new client with the new
    /// token.
    pub async fn apply_config(&self, cfg: &ApplyConfig) -> Result<ApplyConfigResult> {
        let p = serde_json::to_vec(cfg)?;
        // On a connection of its own: the agent closes every reused
        // connection once the token is replaced.
        let mut conn = self.request(MsgType::ApplyConfigReq, &p).await?;
        self.close_idle();
        Ok(conn.expect(MsgType::ApplyConfigResp).await?.parse_json()?)
    }

    /// The agent's sessions (attached and detached), for listing.
    pub async fn session_list(&self) -> Result<Vec<SessionInfo>> {
        self.call(MsgType::ExecListReq, &[], MsgType::ExecListResp)
            .await
    }

    /// SIGKILL to the session's process group.
    pub async fn session_kill(&self, session_id: &str) -> Result<()> {
        let p = serde_json::to_vec(&ExecKillRequest {
            session_id: session_id.into(),
        })?;
        let mut conn = self.request(MsgType::ExecKill, &p).await?;
        conn.expect(MsgType::Exit).await?;
        Ok(())
    }

    /// When the agent last saw work, and how many sessions are live and attached (for idle detection).
    pub async fn activity(&self) -> Result<ActivityInfo> {
        self.call(MsgType::ActivityReq, &[], MsgType::ActivityResp)
            .await
    }

    /// A raw byte stream to `127.0.0.1:<port>` inside the guest.
    pub async fn forward(&self, port: u16) -> Result<Tunnel> {
        // Held until the answer: see FORWARD_DIALS. The semaphore is never
        // closed, so acquiring cannot fail.
        let _dial = self.dials.acquire().await.ok();
        let mut conn = self.connect_port(PORT_FORWARD).await?;
        let p = serde_json::to_vec(&FwdRequest { port })?;
        conn.send(MsgType::FwdReq, &p).await?;
        let f = conn.expect(MsgType::FwdResp).await?;
        let st: StatusResponse = f.parse_json()?;
        if !st.is_ok() {
            return Err(ClientError::status(st));
        }
        Ok(conn.into_tunnel())
    }

    /// Polls the agent with `exec true` under the escalating per-attempt schedule
    /// until it answers or `overall` runs out. A ready agent is then sent
    /// this client's HELLO, so that from then on it codes its errors (a v1
    /// agent ignores it; a failed HELLO leaves errors as text, which every
    /// caller still understands).
    pub async fn wait_ready(&self, overall: Duration) -> Result<u32> {
        let attempts = self.probe_ready(overall).await?;
        if let Err(e) = self.hello().await {
            tracing::debug!(error = %e, "HELLO after ready failed");
        }
        Ok(attempts)
    }

    async fn probe_ready(&self, overall: Duration) -> Result<u32> {
        // `None`: `overall` is too long to add to now, i.e. no deadline.
        let deadline = tokio::time::Instant::now().checked_add(overall);
        let mut attempts = 0u32;
        let mut last = String::from("no attempt made");
        let schedule = READY_SCHEDULE
            .iter()
            .flat_map(|&(d, n)| std::iter::repeat_n(d, n as usize))
            .chain(std::iter::repeat(READY_LATE_ATTEMPT));
        for per_attempt in schedule {
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            attempts = attempts.saturating_add(1);
            let budget = match deadline {
                Some(d) => per_attempt.min(d.saturating_duration_since(now)),
                None => per_attempt,
            };
            match tokio::time::timeout(budget, self.exec(["true"])).await {
                Ok(Ok(r)) if r.exit_code == 0 => return Ok(attempts),
                Ok(Ok(r)) => last = format!("probe exited with {}", r.exit_code),
                // A wrong token will not fix itself by retrying.
                Ok(Err(ClientError::Auth)) => return Err(ClientError::Auth),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("attempt timed out after {budget:?}"),
            }
            tokio::time::sleep(READY_PAUSE).await;
        }
        Err(ClientError::NotReady { attempts, last })
    }
}

/// This client's HELLO, announcing `features`.
pub(crate) fn hello_asking(features: &[&str]) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        client: format!("bhatti-agent-client {}", env!("CARGO_PKG_VERSION")),
        features: features.iter().map(|f| f.to_string()).collect(),
    }
}

/// `f` if it is `want`; an ERROR becomes its error.
pub(crate) fn expected(f: Frame, want: MsgType) -> Result<Frame> {
    if f.kind == want as u8 {
        Ok(f)
    } else if f.is(MsgType::Error) {
        Err(agent_error(&f))
    } else {
        Err(ClientError::UnexpectedFrame(f.kind))
    }
}

/// Maps an ERROR frame to the right error.
pub(crate) fn agent_error(f: &Frame) -> ClientError {
    // A coded body (the agent read our HELLO's `error_codes`).
    if let Some(b) = ErrorBody::parse(&f.payload) {
        return ClientError::Agent {
            code: Some(b.code),
            message: b.message,
        };
    }
    let msg = f.text();
    // The agent's two connection-level refusals are fixed strings of the
    // protocol (the same in v1, and never coded); everything else is a
    // request's own error.
    match msg.as_str() {
        "auth required" => ClientError::Auth,
        CONNECTION_LIMIT => ClientError::Busy,
        _ => ClientError::Agent {
            code: None,
            message: msg,
        },
    }
}

/// The agent's refusal of a connection over its limit.
pub const CONNECTION_LIMIT: &str = "connection limit exceeded";
