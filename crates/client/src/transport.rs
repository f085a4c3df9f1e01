//! Dialling the daemon: one byte stream type over TCP or the Unix socket,
//! so the HTTP client (hyper) and the WebSocket client (tungstenite) run on
//! either without caring which.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::config::{Endpoint, TcpTarget};
use crate::error::{ClientError, Result};

/// A connected stream to the daemon.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// What the client needs to talk to an endpoint, parsed once.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Tcp(TcpTarget),
    Unix(std::path::PathBuf),
}

impl Target {
    pub(crate) fn new(e: &Endpoint) -> Result<Target> {
        Ok(match e {
            Endpoint::Tcp(url) => Target::Tcp(TcpTarget::from_url(url)?),
            Endpoint::Unix(p) => Target::Unix(p.clone()),
        })
    }

    /// The `Host` header value.
    pub(crate) fn host_header(&self) -> String {
        match self {
            Target::Tcp(t) => t.authority(),
            Target::Unix(_) => "localhost".into(),
        }
    }

    /// The path prefix every request path is appended to.
    pub(crate) fn prefix(&self) -> &str {
        match self {
            Target::Tcp(t) => &t.prefix,
            Target::Unix(_) => "",
        }
    }

    pub(crate) async fn dial(&self, endpoint: &Endpoint) -> Result<Conn> {
        let err = |source: io::Error| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        match self {
            Target::Tcp(t) => {
                let s = TcpStream::connect((t.host.as_str(), t.port))
                    .await
                    .map_err(err)?;
                // Small request/response exchanges and keystrokes: no Nagle.
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }
            Target::Unix(p) => Ok(Conn::Unix(UnixStream::connect(p).await.map_err(err)?)),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// Percent-encodes one path segment or query value (RFC 3986 unreserved
/// characters pass through).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Like [`encode_component`] but keeps `/` (for file paths in a query,
/// which stay readable in logs) — `/` is legal in a query value.
pub fn encode_query_path(s: &str) -> String {
    s.split('/')
        .map(encode_component)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_components() {
        assert_eq!(encode_component("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(encode_component("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(encode_component("k=v&x"), "k%3Dv%26x");
        assert_eq!(encode_component("é"), "%C3%A9");
        assert_eq!(encode_query_path("/work space/a&b"), "/work%20space/a%26b");
    }
}
