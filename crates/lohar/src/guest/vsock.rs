//! A minimal `AF_VSOCK` listener and stream on tokio's `AsyncFd`.
//!
//! Hand-rolled rather than `tokio-vsock` to keep one `nix` in the tree (that
//! crate pulls another major version plus `futures`); the surface lohar needs is
//! small: bind + listen on any CID, non-blocking accept, read, write, shutdown.
//!
//! The accept loop follows the reference (docs/guest.md, "Agent listeners"):
//! each accept waits at most 1 s, and when one wait took more than 3 s of
//! wall-clock time the VM was paused and resumed (snapshot restore), after
//! which the listener is dropped and recreated after 200 ms, because a
//! listener from before the pause may never see another connection.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{Agent, Source};

/// Any CID: accept connections addressed to this guest.
const VMADDR_CID_ANY: u32 = u32::MAX;
const ACCEPT_WAIT: Duration = Duration::from_secs(1);
const CLOCK_JUMP: Duration = Duration::from_secs(3);
const RECREATE_PAUSE: Duration = Duration::from_millis(200);

/// A non-blocking `AF_VSOCK` stream listener.
pub(crate) struct VsockListener {
    fd: AsyncFd<OwnedFd>,
}

impl VsockListener {
    /// Binds `port` on any CID.
    pub(crate) fn bind(port: u32) -> io::Result<VsockListener> {
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        bind(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_ANY, port))?;
        listen(&fd, Backlog::new(128)?)?;
        Ok(VsockListener {
            fd: crate::pty::async_fd(fd)?,
        })
    }

    /// Waits for the next connection (retrying on `EINTR`).
    pub(crate) async fn accept(&self) -> io::Result<VsockStream> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|inner| {
                // SAFETY: accept4 with null address pointers only returns a new fd.
                let fd = unsafe {
                    libc::accept4(
                        inner.get_ref().as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if fd < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    // SAFETY: a fresh descriptor that nobody else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
                }
            });
            match res {
                Ok(Ok(fd)) => {
                    return Ok(VsockStream {
                        fd: crate::pty::async_fd(fd)?,
                    })
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// One accepted vsock connection.
pub struct VsockStream {
    fd: AsyncFd<OwnedFd>,
}

impl VsockStream {
    /// The peer's CID (the host is 2); `None` if the kernel will not say.
    pub fn peer_cid(&self) -> Option<u32> {
        nix::sys::socket::getpeername::<VsockAddr>(self.fd.get_ref().as_raw_fd())
            .ok()
            .map(|a| a.cid())
    }
}

impl crate::wire::SocketFd for VsockStream {
    fn socket_fd(&self) -> std::os::fd::RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

impl AsyncRead for VsockStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let res = guard.try_io(|inner| {
                // SAFETY: `unfilled` is valid for writes of its length.
                let n = unsafe {
                    libc::read(
                        inner.get_ref().as_raw_fd(),
                        unfilled.as_mut_ptr().cast(),
                        unfilled.len(),
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n.unsigned_abs()) // n ≥ 0 here
                }
            });
            match res {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for VsockStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            let res = guard.try_io(|inner| {
                // SAFETY: `data` is valid for reads of its length.
                let n = unsafe {
                    libc::send(
                        inner.get_ref().as_raw_fd(),
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n.unsigned_abs()) // n ≥ 0 here
                }
            });
            match res {
                Ok(Ok(n)) => return Poll::Ready(Ok(n)),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown(2) on a descriptor we own.
        let rc = unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_WR) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOTCONN) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Serves `port` forever, recreating the listener after a pause/resume.
pub async fn serve(agent: Arc<Agent>, port: u32, forward: bool) {
    loop {
        let listener = match VsockListener::bind(port) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(port, error = %e, "vsock bind failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let before = SystemTime::now();
            let res = tokio::time::timeout(ACCEPT_WAIT, listener.accept()).await;
            let took = SystemTime::now()
                .duration_since(before)
                .unwrap_or(Duration::ZERO);
            match res {
                Ok(Ok(s)) => {
                    let agent = agent.clone();
                    // An unknown peer shares one source with the other unknowns.
                    let source = Source::Vsock(s.peer_cid().unwrap_or(u32::MAX));
                    tokio::spawn(async move {
                        if forward {
                            agent.serve_forward(s, source).await
                        } else {
                            agent.serve_control(s, source).await
                        }
                    });
                }
                Ok(Err(e)) => {
                    tracing::warn!(port, error = %e, "vsock accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_timeout) => {}
            }
            if took > CLOCK_JUMP {
                tracing::info!(
                    port,
                    ?took,
                    "clock jump (VM resumed?): recreating vsock listener"
                );
                drop(listener);
                tokio::time::sleep(RECREATE_PAUSE).await;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binding needs the vsock transport; a host without it skips.
    #[tokio::test]
    async fn listener_binds_and_accept_times_out() {
        let l = match VsockListener::bind(52_000 + (std::process::id() % 1000)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("SKIPPED: no AF_VSOCK here: {e}");
                return;
            }
        };
        let r = tokio::time::timeout(Duration::from_millis(50), l.accept()).await;
        assert!(r.is_err(), "no client, so accept must still be pending");
    }
}
