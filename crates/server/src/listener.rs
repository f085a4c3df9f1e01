//! The accept loop of the API listeners (TCP and the Unix socket).
//!
//! `axum::serve` offers no connection timeouts, so a client could hold a
//! connection open forever by sending half a request line, or nothing at
//! all — thousands of them before authenticating. Here each connection is
//! served by hyper directly with:
//! - a header read timeout: a request's headers must arrive in time;
//! - an idle timeout: a connection with no bytes either way for that long,
//!   and no answer owed, is closed (a long buffered exec that prints nothing
//!   is not cut off);
//! - WebSocket upgrades (their own keep-alive lives in the WebSocket
//!   handlers), and graceful shutdown of every connection on stop.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::ServiceExt;

/// Connection timeouts of the API listeners.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Time allowed for a request's headers to arrive.
    pub header: Duration,
    /// Time a connection may stay without traffic before it is closed.
    pub idle: Duration,
}

/// An accepted connection, whatever the listener.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection, with the peer's TCP address when there is one.
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Io, Option<std::net::SocketAddr>)>>
           + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<std::net::SocketAddr>)> {
        let (s, a) = tokio::net::TcpListener::accept(self).await?;
        // Small responses go out at once instead of waiting on Nagle.
        let _ = s.set_nodelay(true);
        Ok((s, Some(a)))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<std::net::SocketAddr>)> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((s, None))
    }
}

/// Serves `app` on `listener` until `stop` turns true, then shuts every
/// connection down gracefully and returns once they are closed.
pub async fn serve<L: Accept>(
    listener: L,
    app: Router,
    timeouts: Timeouts,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections so the set holds only live ones.
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|v| *v) => break,
        };
        let (io, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let clock = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: io,
            clock: clock.clone(),
        });
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            if let Some(a) = peer {
                req.extensions_mut().insert(ConnectInfo(a));
            }
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.header)
            // A client may close its sending side and still wait for the
            // answer (e.g. to an upload it cut short: that answer is 400).
            .half_close(true)
            .serve_connection(io, svc)
            .with_upgrades();
        let (idle, mut stop) = (timeouts.idle, stop.clone());
        // Drives the connection: drops (closes) it once it has moved no
        // bytes for `idle` while the server owes no answer, and shuts it
        // down gracefully (the request in flight completes) on stop.
        conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut stopped = std::pin::pin!(async move {
                let _ = stop.wait_for(|v| *v).await;
            });
            let check = idle
                .checked_div(4)
                .unwrap_or_default()
                .max(Duration::from_millis(100));
            let ended = loop {
                tokio::select! {
                    r = &mut conn => break r,
                    _ = &mut stopped => {
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                    _ = tokio::time::sleep(check) => {
                        // A request read and not yet answered is the
                        // server's wait (a long buffered exec prints
                        // nothing until it ends): never cut that short.
                        // Half-sent headers are the header timeout's job.
                        if clock.idle_for() >= idle && !clock.awaiting_answer() {
                            tracing::debug!("closing an idle connection");
                            break Ok(());
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// When a connection last moved bytes, and which way.
struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last read or write.
    last_ms: AtomicU64,
    /// The last bytes moved were read (the client spoke last).
    last_was_read: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            last_was_read: AtomicBool::new(false),
        }
    }
    fn mark(&self, read: bool) {
        let ms = crate::state::millis(self.started.elapsed());
        self.last_ms.store(ms, Ordering::Relaxed);
        self.last_was_read.store(read, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let now = crate::state::millis(self.started.elapsed());
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
    /// The client spoke last: the server owes an answer.
    fn awaiting_answer(&self) -> bool {
        self.last_was_read.load(Ordering::Relaxed)
    }
}

/// An I/O object that records its traffic in an [`Activity`].
struct Tracked<T> {
    inner: T,
    clock: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.mark(true);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.mark(false);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
