//! Connection reuse (`conn.reuse`, negotiated in HELLO): a client made
//! with [`AgentClient::reusing`] keeps the authenticated connections of
//! operations that ended cleanly and sends its next requests on them,
//! so an operation pays connect and AUTH only when no idle connection is
//! left. Operations stay one at a time per connection; concurrent
//! operations take one connection each, as before.
//!
//! A connection goes back only after its operation's last frame was read
//! (EXIT or the one reply): an operation dropped halfway drops its
//! connection, and the agent still reads that as cancellation. Streams
//! that live as long as their caller wants (streaming exec, sessions,
//! watches, tunnels) and uploads keep their own connections.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bhatti_protocol::messages::{HelloResponse, FEATURE_CONN_REUSE, FEATURE_ERROR_CODES};
use bhatti_protocol::{Frame, MsgType};

use crate::transport::Conn;
use crate::{agent_error, hello_asking, AgentClient, ClientError, Result};

/// Idle connections one client keeps. Each holds one of the agent's 50
/// control slots, so a handful: enough for the daemon's usual concurrency
/// on one sandbox.
const MAX_IDLE: usize = 4;
/// How long a connection may sit idle before the client drops it instead
/// of using it: well under the agent's own 60 s, so the client rarely
/// sends on a connection the agent is closing.
const IDLE_FOR: Duration = Duration::from_secs(20);

// `Reuse::agent`: 0 until a HELLO told (the default), then one of these.
const YES: u8 = 1;
const NO: u8 = 2;

/// The idle connections of a reusing client, shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct Reuse {
    idle: Mutex<Vec<(Idle, Instant)>>,
    /// Whether the agent reuses connections (0 until a HELLO told).
    agent: AtomicU8,
}

/// An idle connection (a newtype so `Reuse` can be `Debug`).
struct Idle(Conn);

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Idle")
    }
}

impl Reuse {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Idle, Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently returned connection still fresh enough; older
    /// ones are dropped on the way.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle();
        idle.retain(|(_, at)| at.elapsed() < IDLE_FOR);
        idle.pop().map(|(c, _)| c.0)
    }

    fn give(&self, conn: Conn) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push((Idle(conn), Instant::now()));
        }
    }
}

/// A connection leased for one operation.
pub(crate) struct Lease {
    pub(crate) conn: Conn,
    /// It may carry another operation once this one ended cleanly.
    reusable: bool,
}

impl AgentClient {
    /// This client, keeping connections between operations when the agent
    /// announces `conn.reuse` (older agents: one connection per operation,
    /// as without it). Clones share the idle connections. Meant for a
    /// long-lived client of one sandbox; a client whose token is about to be
    /// replaced (a template or pool warm-up) should not reuse.
    pub fn reusing(mut self) -> AgentClient {
        self.reuse = Some(std::sync::Arc::new(Reuse::default()));
        self
    }

    /// Idle connections kept for reuse right now.
    pub fn idle_connections(&self) -> usize {
        self.reuse.as_ref().map_or(0, |r| r.idle().len())
    }

    /// Closes the idle connections (before the guest is paused or
    /// snapshotted, so that its agent does not keep them open).
    pub fn close_idle(&self) {
        if let Some(r) = &self.reuse {
            r.idle().clear();
        }
    }

    /// Sends a request and reads its first reply: on an idle connection
    /// when there is one, else on a new one. A kept connection found closed
    /// before any reply (the agent restarted, or closed it idle) never had
    /// the request read, so it is sent once more on a new connection.
    pub(crate) async fn start(&self, kind: MsgType, payload: &[u8]) -> Result<(Lease, Frame)> {
        if let Some(conn) = self.reuse.as_ref().and_then(|r| r.take()) {
            let mut lease = Lease {
                conn,
                reusable: true,
            };
            let sent = match lease.conn.send(kind, payload).await {
                Ok(()) => lease.conn.recv().await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(Some(f)) => return Ok((lease, f)),
                Ok(None) | Err(ClientError::Io(_) | ClientError::Protocol(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.start_new(kind, payload).await
    }

    /// [`AgentClient::start`] on a new connection. A reusing client puts a
    /// HELLO asking for reuse (and coded errors, as [`AgentClient::hello`]
    /// does) in front of the request, in the same flight: an agent that
    /// does not reuse took the HELLO for the connection's one request and
    /// never read ours, which then goes again on a connection of its own.
    async fn start_new(&self, kind: MsgType, payload: &[u8]) -> Result<(Lease, Frame)> {
        let reuse = self
            .reuse
            .as_ref()
            .filter(|r| r.agent.load(Ordering::Relaxed) != NO);
        let mut conn = self.connect().await?;
        if let Some(reuse) = reuse {
            let hello = hello_asking(&[FEATURE_ERROR_CODES, FEATURE_CONN_REUSE]);
            conn.send(MsgType::Hello, &serde_json::to_vec(&hello)?)
                .await?;
            conn.send(kind, payload).await?;
            match reused_by(&mut conn).await {
                Ok(true) => {
                    reuse.agent.store(YES, Ordering::Relaxed);
                    let f = conn.recv().await?.ok_or(ClientError::Closed)?;
                    return Ok((
                        Lease {
                            conn,
                            reusable: true,
                        },
                        f,
                    ));
                }
                Ok(false) => reuse.agent.store(NO, Ordering::Relaxed),
                // Refused (auth, limit): retrying would not change that.
                Err(e @ (ClientError::Auth | ClientError::Busy)) => return Err(e),
                // An agent that closes after its one request may reset
                // the connection before its answer is read: try once more
                // without reuse, and leave reuse to be asked again.
                Err(_) => {}
            }
            conn = self.connect().await?;
        }
        conn.send(kind, payload).await?;
        let f = conn.recv().await?.ok_or(ClientError::Closed)?;
        Ok((
            Lease {
                conn,
                reusable: false,
            },
            f,
        ))
    }

    /// The operation on `lease` ended cleanly: keep its connection.
    pub(crate) fn give_back(&self, lease: Lease) {
        if let (true, Some(r)) = (lease.reusable, &self.reuse) {
            r.give(lease.conn);
        }
    }
}

/// Reads the answer to a HELLO asking for reuse: whether the agent keeps
/// the connection.
async fn reused_by(conn: &mut Conn) -> Result<bool> {
    match conn.recv().await? {
        Some(f) if f.is(MsgType::HelloResp) => Ok(f
            .parse_json::<HelloResponse>()?
            .features
            .iter()
            .any(|x| x == FEATURE_CONN_REUSE)),
        // A v1 agent does not know HELLO; the connection-level refusals
        // (auth, limit) are errors of their own.
        Some(f) if f.is(MsgType::Error) => match agent_error(&f) {
            e @ (ClientError::Auth | ClientError::Busy) => Err(e),
            _ => Ok(false),
        },
        Some(f) => Err(ClientError::UnexpectedFrame(f.kind)),
        None => Err(ClientError::Closed),
    }
}
