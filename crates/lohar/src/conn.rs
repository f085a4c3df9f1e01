//! One connection's life: the connection budget ([`crate::admission`]),
//! AUTH and HELLO, and dispatch of the request a control connection
//! carries, or of each request in turn on a connection whose first HELLO
//! asked for reuse (the frame plumbing is [`crate::wire`]).

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bhatti_protocol::messages::{
    ActivityInfo, ExecRequest, Hello, HelloResponse, FEATURE_CONFIG_APPLY, FEATURE_CONN_REUSE,
    FEATURE_ERROR_CODES, FEATURE_FILES_WATCH,
};
use bhatti_protocol::r#async::read_frame;
use bhatti_protocol::{Frame, MsgType, PROTOCOL_VERSION};
use tokio::io::BufReader;

use crate::admission::{Port, Refused, Slot, Source};
use crate::agent::Agent;
use crate::fail::Fail;
use crate::wire::{finish, writer, FrameTx, NextRequest, Reader, Stream};

const AUTH_DEADLINE: Duration = Duration::from_secs(5);
/// How long a reused connection may sit between requests before the agent
/// closes it (and frees its slot). The client drops idle connections
/// sooner, so it rarely meets this close.
const REUSE_IDLE: Duration = Duration::from_secs(60);
/// How long a refused connection is drained before it is closed.
const LINGER: Duration = Duration::from_millis(500);
/// Connections refused by the budget that may linger at once; beyond this they
/// are closed at once, so a flood of refused connections costs bounded work.
const MAX_LINGERING: usize = 64;

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret (tokens are fixed-size); the content comparison is
    // constant-time.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the first frame, enforcing AUTH when a token is configured (and moving
/// the connection from the pre-auth budget to a served slot once it passed).
/// Returns the first request frame, or `None` after having answered a refusal.
async fn first_request(
    agent: &Agent,
    slot: &mut Slot<'_>,
    r: &mut Reader,
    tx: &FrameTx,
) -> Option<Frame> {
    let first = match tokio::time::timeout(AUTH_DEADLINE, read_frame(r)).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tx.refuse(format!("read request: {e}")).await;
            return None;
        }
        Err(_) => {
            if agent.token().is_some() {
                tx.refuse("auth required").await;
            }
            return None;
        }
    };
    match &agent.token() {
        Some(token) if !first.is(MsgType::Auth) || !ct_eq(&first.payload, token.as_bytes()) => {
            tx.refuse("auth required").await;
            return None;
        }
        Some(_) => {
            if let Err(refused) = slot.authenticated() {
                tx.refuse(refused.to_string()).await;
                return None;
            }
        }
        None if !first.is(MsgType::Auth) => return Some(first),
        None => {}
    }
    match read_frame(r).await {
        Ok(Some(f)) => Some(f),
        Ok(None) => None,
        Err(e) => {
            tx.error(format!("read request: {e}")).await;
            None
        }
    }
}

/// Admits a connection or answers the refusal.
async fn admit<'a>(
    agent: &'a Agent,
    source: Source,
    port: Port,
    tx: &FrameTx,
) -> Result<Slot<'a>, Refused> {
    let res = agent.admission.admit(source, port, agent.token().is_some());
    if let Err(refused) = &res {
        tracing::debug!(?source, ?port, "connection refused: {refused}");
        tx.refuse(refused.to_string()).await;
    }
    res
}

/// `socket`: the stream's socket ([`crate::wire::SocketFd`]).
pub async fn handle_control(agent: Arc<Agent>, stream: Stream, socket: RawFd, source: Source) {
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let (tx, writer_task) = writer(wr, agent.coded_errors(), Some(socket));
    // The slot is held until the operation is over.
    let mut slot = admit(&agent, source, Port::Control, &tx).await.ok();
    let req = match slot.as_mut() {
        Some(slot) => first_request(&agent, slot, &mut rd, &tx).await,
        None => None,
    };
    match req {
        Some(req) => {
            serve(&agent, req, rd, &tx).await;
            finish(tx, writer_task).await;
        }
        None => {
            finish(tx, writer_task).await;
            linger_refused(&agent, slot.is_some(), rd).await;
        }
    }
}

/// Lingers after a refusal. A connection that holds a budget slot is bounded by
/// the budget; one refused by the budget holds none, so those are counted here.
async fn linger_refused(agent: &Agent, has_slot: bool, rd: Reader) {
    if has_slot {
        return linger(rd).await;
    }
    let n = agent.lingering.fetch_add(1, Ordering::AcqRel);
    if n < MAX_LINGERING {
        linger(rd).await;
    }
    agent.lingering.fetch_sub(1, Ordering::AcqRel);
}

/// After refusing a connection: the host may already have sent its request
/// behind the AUTH frame. Closing with unread bytes makes the kernel reset the
/// connection, and the host could lose our ERROR frame; so read (and drop) what
/// comes until the host closes, briefly.
async fn linger(mut rd: Reader) {
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// What an operation leaves of its connection.
pub(crate) enum After {
    /// Nothing: the operation used the connection up (a write's stream, a
    /// watch, a session) or the host went away.
    Closed,
    /// The operation is over and never read past its request.
    Open(Reader),
    /// A one-shot exec is over; its reader is still dropping late STDIN
    /// frames and will hand back the next request ([`crate::wire::exec_reader`]).
    Reading(tokio::task::JoinHandle<NextRequest>),
}

fn asks_reuse(req: &Frame) -> bool {
    req.is(MsgType::Hello)
        && req
            .parse_json::<Hello>()
            .is_ok_and(|h| h.features.iter().any(|f| f == FEATURE_CONN_REUSE))
}

/// Serves the connection's first request and, when that was a HELLO asking
/// for reuse, every request after it, until an operation uses the
/// connection up, the host closes it or stays idle for [`REUSE_IDLE`], or
/// an APPLY_CONFIG replaces the token this connection authenticated with.
async fn serve(agent: &Arc<Agent>, first: Frame, rd: Reader, tx: &FrameTx) {
    let reuse = asks_reuse(&first);
    let epoch = agent.token_epoch();
    let (mut req, mut rd) = (first, rd);
    loop {
        let after = dispatch(agent, req, rd, tx, reuse).await;
        if !reuse || agent.token_epoch() != epoch {
            return;
        }
        let next = match after {
            After::Closed => None,
            After::Open(mut r) => {
                match tokio::time::timeout(REUSE_IDLE, read_frame(&mut r)).await {
                    Ok(Ok(Some(f))) => Some((r, f)),
                    _ => None,
                }
            }
            After::Reading(mut h) => match tokio::time::timeout(REUSE_IDLE, &mut h).await {
                Ok(Ok(Some((r, f, _exec)))) => Some((r, f)),
                Ok(_) => None,
                Err(_) => {
                    h.abort();
                    None
                }
            },
        };
        let Some((r, f)) = next else { return };
        // The token may have been replaced while this connection waited.
        if agent.token_epoch() != epoch {
            return;
        }
        (req, rd) = (f, r);
    }
}

async fn dispatch(agent: &Arc<Agent>, req: Frame, rd: Reader, tx: &FrameTx, reuse: bool) -> After {
    let Some(kind) = req.msg_type() else {
        tx.error(format!("unexpected frame type 0x{:02x}", req.kind))
            .await;
        return After::Open(rd);
    };
    match kind {
        MsgType::ExecReq => {
            agent.touch();
            let er: ExecRequest = match req.parse_json() {
                Ok(r) => r,
                Err(e) => {
                    tx.error(Fail::invalid(format!("invalid exec request: {e}")))
                        .await;
                    return After::Open(rd);
                }
            };
            return exec_dispatch(agent, er, rd, tx, reuse).await;
        }
        MsgType::ExecListReq => {
            let list = agent.sessions.list();
            tx.send_json(MsgType::ExecListResp, &list).await;
        }
        MsgType::ExecKill => crate::session::kill_request(agent, &req, tx).await,
        MsgType::ActivityReq => {
            let (active, attached) = agent.sessions.counts();
            let info = ActivityInfo {
                last_activity_unix: agent.last_activity(),
                active_sessions: active,
                attached_sessions: attached,
            };
            tx.send_json(MsgType::ActivityResp, &info).await;
        }
        MsgType::FileReadReq => {
            agent.touch();
            crate::files::read(agent, &req, tx).await
        }
        MsgType::FileWriteReq => {
            agent.touch();
            crate::files::write(agent, &req, rd, tx).await;
            return After::Closed;
        }
        MsgType::FileStatReq => crate::files::stat(agent, &req, tx).await,
        MsgType::FileLsReq => crate::files::ls(agent, &req, tx).await,
        MsgType::WatchReq => {
            crate::watch::watch(agent, &req, rd, tx).await;
            return After::Closed;
        }
        MsgType::ApplyConfigReq => crate::apply::apply(agent, &req, tx).await,
        MsgType::Hello => {
            // Accept any well-formed hello; the version is informational today.
            let peer: Option<Hello> = req.parse_json().ok();
            if peer.is_some_and(|h| h.features.iter().any(|f| f == FEATURE_ERROR_CODES)) {
                agent.set_coded_errors();
                // The requests this connection carries next, if reused.
                tx.set_coded();
            }
            let resp = HelloResponse {
                version: PROTOCOL_VERSION,
                agent: format!("lohar {}", env!("CARGO_PKG_VERSION")),
                features: FEATURES.iter().map(|s| s.to_string()).collect(),
            };
            tx.send_json(MsgType::HelloResp, &resp).await;
        }
        _ => {
            tx.error(format!("unexpected frame type 0x{:02x}", req.kind))
                .await;
        }
    }
    After::Open(rd)
}

/// Capabilities announced in HELLO_RESP.
const FEATURES: &[&str] = &[
    "exec",
    "exec.detach",
    "exec.kill_on_disconnect",
    "exec.stdin_eof",
    "tty",
    "session.piped",
    "files",
    "files.ls_total",
    "forward",
    "activity",
    FEATURE_ERROR_CODES,
    FEATURE_FILES_WATCH,
    FEATURE_CONFIG_APPLY,
    FEATURE_CONN_REUSE,
];

async fn exec_dispatch(
    agent: &Arc<Agent>,
    er: ExecRequest,
    rd: Reader,
    tx: &FrameTx,
    reuse: bool,
) -> After {
    if !er.session_id.is_empty() {
        crate::session::attach(agent, er, rd, tx).await;
        return After::Closed;
    }
    if er.argv.is_empty() || er.argv[0].is_empty() {
        tx.error(Fail::invalid("empty argv")).await;
        return After::Open(rd);
    }
    if er.detach {
        crate::exec::detached(agent, er, tx).await;
        After::Open(rd)
    } else if er.tty || er.session {
        crate::session::create(agent, er, rd, tx).await;
        After::Closed
    } else {
        crate::exec::oneshot(agent, er, rd, tx, reuse).await
    }
}

pub async fn handle_forward(agent: Arc<Agent>, stream: Stream, source: Source) {
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    // A tunnel relays bytes; nothing on it borrows the socket.
    let (tx, writer_task) = writer(wr, agent.coded_errors(), None);
    // Held for the tunnel's lifetime (an authenticated tunnel counts nowhere).
    let mut slot = admit(&agent, source, Port::Forward, &tx).await.ok();
    let req = match slot.as_mut() {
        Some(slot) => first_request(&agent, slot, &mut rd, &tx).await,
        None => None,
    };
    if let Some(req) = req {
        if req.is(MsgType::FwdReq) {
            match crate::forward::dial(&req).await {
                Ok(target) => {
                    let ok = bhatti_protocol::messages::StatusResponse::ok();
                    tx.send_json(MsgType::FwdResp, &ok).await;
                    // The relay needs the raw write half: the writer hands it back
                    // once FWD_RESP is out.
                    drop(tx);
                    if let Ok(Some(wr)) = writer_task.await {
                        crate::forward::relay(rd, wr, target).await;
                    }
                    return;
                }
                Err(fail) => {
                    let mut e = bhatti_protocol::messages::StatusResponse::error(fail.message);
                    e.code = Some(fail.code);
                    tx.send_json(MsgType::FwdResp, &e).await;
                }
            }
        } else {
            tx.error(format!("unexpected frame type 0x{:02x}", req.kind))
                .await;
        }
        finish(tx, writer_task).await;
        return;
    }
    finish(tx, writer_task).await;
    linger_refused(&agent, slot.is_some(), rd).await;
}
