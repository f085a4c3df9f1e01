//! Transports to the agent and the framed connection over them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bhatti_protocol::r#async::{read_frame, read_frame_into, write_frame};
use bhatti_protocol::{Frame, MsgType, PORT_CONTROL};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf, ReadHalf, WriteHalf,
};

use crate::{ClientError, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Object-safe stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub(crate) type BoxStream = Box<dyn Stream>;

/// How to reach an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Unix sockets for the control and forward ports (test and container mode).
    Unix {
        /// Socket of the control port.
        control: PathBuf,
        /// Socket of the forward port.
        forward: PathBuf,
    },
    /// TCP to the guest's ports (1024/1025) over the sandbox network.
    Tcp {
        /// The guest's address.
        addr: IpAddr,
    },
    /// TCP to arbitrary control/forward ports, e.g. a VMM's port forwards on
    /// loopback (QEMU user networking `hostfwd`).
    TcpPorts {
        /// Where the ports listen (usually loopback).
        addr: IpAddr,
        /// TCP port reaching the agent's control port.
        control: u16,
        /// TCP port reaching the agent's forward port.
        forward: u16,
    },
    /// TCP to the guest's ports from inside the network namespace at
    /// `netns`: a sandbox whose namespace is not joined to the host (a warm
    /// pool's, waiting to be claimed) has no route from the host's.
    TcpInNetns {
        /// The namespace's file, e.g. `/var/run/netns/bhatti-<id>`.
        netns: PathBuf,
        /// The guest's address inside that namespace.
        addr: IpAddr,
    },
    /// Firecracker's hybrid vsock: a host Unix socket plus `CONNECT <port>`.
    VsockUds {
        /// The VMM's host-side vsock socket.
        path: PathBuf,
    },
}

impl Transport {
    pub(crate) async fn connect(&self, port: u32) -> Result<Conn> {
        let stream: BoxStream = match self {
            Transport::Unix { control, forward } => {
                let path = if port == PORT_CONTROL {
                    control
                } else {
                    forward
                };
                let s = timed(tokio::net::UnixStream::connect(path)).await?;
                Box::new(s)
            }
            Transport::Tcp { addr } => tcp(SocketAddr::new(*addr, tcp_port(port)?)).await?,
            Transport::TcpInNetns { netns, addr } => {
                tcp_in_netns(netns.clone(), SocketAddr::new(*addr, tcp_port(port)?)).await?
            }
            Transport::TcpPorts {
                addr,
                control,
                forward,
            } => {
                let p = if port == PORT_CONTROL {
                    *control
                } else {
                    *forward
                };
                tcp(SocketAddr::new(*addr, p)).await?
            }
            Transport::VsockUds { path } => {
                let s = timed(tokio::net::UnixStream::connect(path)).await?;
                return vsock_handshake(s, port).await;
            }
        };
        Ok(Conn::new(stream))
    }
}

/// The agent's ports (1024, 1025) are TCP ports as well as vsock ports; a
/// vsock-only number cannot be dialled.
fn tcp_port(port: u32) -> Result<u16> {
    u16::try_from(port).map_err(|_| {
        ClientError::Connect(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("port {port} is not a TCP port"),
        ))
    })
}

/// Connects from inside the namespace at `netns`. Namespace membership is
/// per thread, so the socket is made on a thread of its own that joins the
/// namespace and then ends (never a pooled runtime thread, which would stay
/// there); the socket keeps the namespace it was made in.
async fn tcp_in_netns(netns: PathBuf, addr: SocketAddr) -> Result<BoxStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let made = (|| {
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })();
        let _ = tx.send(made);
    });
    let s = rx
        .await
        .map_err(|_| ClientError::Connect(std::io::Error::other("the connecting thread ended")))?
        .and_then(tokio::net::TcpStream::from_std)
        .map_err(ClientError::Connect)?;
    let _ = s.set_nodelay(true);
    Ok(Box::new(s))
}

async fn tcp(addr: SocketAddr) -> Result<BoxStream> {
    let s = timed(tokio::net::TcpStream::connect(addr)).await?;
    let _ = s.set_nodelay(true);
    Ok(Box::new(s))
}

async fn timed<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T> {
    match tokio::time::timeout(CONNECT_TIMEOUT, f).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ClientError::Connect(e)),
        Err(_) => Err(ClientError::Connect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))),
    }
}

/// `CONNECT <port>\n` → `OK <host port>\n`, then the stream is the guest's port.
async fn vsock_handshake(s: tokio::net::UnixStream, port: u32) -> Result<Conn> {
    let (rd, mut wr) = tokio::io::split(Box::new(s) as BoxStream);
    wr.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    let n = tokio::time::timeout(CONNECT_TIMEOUT, rd.read_line(&mut line))
        .await
        .map_err(|_| ClientError::Handshake("no answer to CONNECT".into()))??;
    if n == 0 || !line.starts_with("OK ") {
        return Err(ClientError::Handshake(format!(
            "unexpected answer {:?}",
            line.trim_end()
        )));
    }
    Ok(Conn { rd, wr })
}

/// One framed connection to the agent.
pub struct Conn {
    rd: BufReader<ReadHalf<BoxStream>>,
    wr: WriteHalf<BoxStream>,
}

impl Conn {
    fn new(s: BoxStream) -> Conn {
        let (rd, wr) = tokio::io::split(s);
        Conn {
            rd: BufReader::with_capacity(64 * 1024, rd),
            wr,
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, kind: MsgType, payload: &[u8]) -> Result<()> {
        write_frame(&mut self.wr, kind as u8, payload).await?;
        Ok(())
    }

    /// Sends a frame sealed in place
    /// ([`seal_frame`](bhatti_protocol::seal_frame)), with no copy.
    pub async fn send_sealed(&mut self, frame: &[u8]) -> Result<()> {
        self.wr.write_all(frame).await?;
        Ok(())
    }

    /// The next frame; `None` at end of stream.
    pub async fn recv(&mut self) -> Result<Option<Frame>> {
        Ok(read_frame(&mut self.rd).await?)
    }

    /// The next frame's payload into `payload`, reusing its allocation;
    /// returns the frame's type (`None` at end of stream).
    pub(crate) async fn recv_into(&mut self, payload: &mut Vec<u8>) -> Result<Option<u8>> {
        Ok(read_frame_into(&mut self.rd, payload).await?)
    }

    /// The next frame, which must be `want` (ERROR becomes an error).
    pub async fn expect(&mut self, want: MsgType) -> Result<Frame> {
        match self.recv().await? {
            Some(f) => crate::expected(f, want),
            None => Err(ClientError::Closed),
        }
    }

    pub(crate) fn split(self) -> (BufReader<ReadHalf<BoxStream>>, WriteHalf<BoxStream>) {
        (self.rd, self.wr)
    }

    pub(crate) fn into_tunnel(self) -> Tunnel {
        Tunnel {
            rd: self.rd,
            wr: self.wr,
        }
    }
}

/// A raw byte stream into the guest (forward channel after FWD_RESP ok). Bytes the
/// guest sent right behind FWD_RESP are kept in the read buffer, not lost.
pub struct Tunnel {
    rd: BufReader<ReadHalf<BoxStream>>,
    wr: WriteHalf<BoxStream>,
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.wr).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.wr).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.wr).poll_shutdown(cx)
    }
}
