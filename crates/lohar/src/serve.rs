//! The accept loops: every listener (Unix, TCP, vsock) hands each accepted
//! stream to [`crate::conn`] on a task of its own, as a control or a
//! forward connection.

use std::sync::Arc;

use crate::admission::Source;
use crate::agent::Agent;
use crate::wire::AgentStream;

impl Agent {
    /// Serves one accepted control-port connection from `source` to completion.
    pub async fn serve_control<S: AgentStream>(self: Arc<Self>, stream: S, source: Source) {
        let socket = stream.socket_fd();
        crate::conn::handle_control(self, Box::new(stream), socket, source).await
    }

    /// Serves one accepted forward-port connection from `source` to completion.
    pub async fn serve_forward<S: AgentStream>(self: Arc<Self>, stream: S, source: Source) {
        crate::conn::handle_forward(self, Box::new(stream), source).await
    }

    /// Accept loop for a Unix listener.
    pub async fn run_unix(self: Arc<Self>, listener: tokio::net::UnixListener, forward: bool) {
        loop {
            match listener.accept().await {
                Ok((s, _)) => self.spawn_conn(s, Source::Local, forward),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Accept loop for a TCP listener.
    pub async fn run_tcp(self: Arc<Self>, listener: tokio::net::TcpListener, forward: bool) {
        loop {
            match listener.accept().await {
                Ok((s, peer)) => {
                    let _ = s.set_nodelay(true);
                    self.spawn_conn(s, Source::ip(peer.ip()), forward)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn spawn_conn<S: AgentStream>(self: &Arc<Self>, s: S, source: Source, forward: bool) {
        let agent = self.clone();
        tokio::spawn(async move {
            if forward {
                agent.serve_forward(s, source).await
            } else {
                agent.serve_control(s, source).await
            }
        });
    }
}
