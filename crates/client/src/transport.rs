//! Dialling the daemon: one byte stream type over TCP, TLS over TCP, or the
//! Unix socket, so the HTTP client (hyper) and the WebSocket client
//! (tungstenite) run on any of them without caring which.
//!
//! TLS is rustls (ring provider), verifying the daemon's certificate
//! against the system's trust store, or against the PEM file the user gave
//! (`--ca-file`, for a daemon behind a proxy with a private CA). The
//! verifier is built once per client, so a bad CA file fails at startup
//! rather than on the first request.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, pki_types};
use tokio_rustls::TlsConnector;

use crate::config::{Endpoint, TcpTarget};
use crate::error::{ClientError, ConfigError, Result};

/// A connected stream to the daemon.
#[derive(Debug)]
pub(crate) enum Conn {
    /// Plain `http://`.
    Tcp(TcpStream),
    /// `https://`.
    Tls(Box<TlsStream<TcpStream>>),
    /// The daemon's Unix socket.
    Unix(UnixStream),
}

/// What the client needs to talk to an endpoint, parsed once.
#[derive(Clone)]
pub(crate) enum Target {
    Tcp(TcpTarget, Option<TlsConnector>),
    Unix(std::path::PathBuf),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(t, tls) => f
                .debug_tuple("Tcp")
                .field(t)
                .field(&tls.as_ref().map(|_| "tls"))
                .finish(),
            Target::Unix(p) => f.debug_tuple("Unix").field(p).finish(),
        }
    }
}

impl Target {
    /// `ca_file` matters only for an `https://` endpoint.
    pub(crate) fn new(e: &Endpoint, ca_file: Option<&Path>) -> Result<Target> {
        Ok(match e {
            Endpoint::Tcp(url) => {
                let t = TcpTarget::from_url(url)?;
                let tls = if t.tls {
                    Some(tls_connector(ca_file)?)
                } else {
                    None
                };
                Target::Tcp(t, tls)
            }
            Endpoint::Unix(p) => Target::Unix(p.clone()),
        })
    }

    /// The `Host` header value.
    pub(crate) fn host_header(&self) -> String {
        match self {
            Target::Tcp(t, _) => t.authority(),
            Target::Unix(_) => "localhost".into(),
        }
    }

    /// The path prefix every request path is appended to.
    pub(crate) fn prefix(&self) -> &str {
        match self {
            Target::Tcp(t, _) => &t.prefix,
            Target::Unix(_) => "",
        }
    }

    pub(crate) async fn dial(&self, endpoint: &Endpoint) -> Result<Conn> {
        let err = |source: io::Error| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        match self {
            Target::Tcp(t, tls) => {
                let s = TcpStream::connect((t.host.as_str(), t.port))
                    .await
                    .map_err(err)?;
                // Small request/response exchanges and keystrokes: no Nagle.
                let _ = s.set_nodelay(true);
                let Some(tls) = tls else {
                    return Ok(Conn::Tcp(s));
                };
                let name = pki_types::ServerName::try_from(t.host.clone()).map_err(|_| {
                    ClientError::Request(format!("{:?} is not a valid TLS server name", t.host))
                })?;
                let s = tls
                    .connect(name, s)
                    .await
                    .map_err(|source| ClientError::Tls {
                        endpoint: endpoint.to_string(),
                        source,
                    })?;
                Ok(Conn::Tls(Box::new(s)))
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
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
            Conn::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// The TLS client setup: the roots from `ca_file` (PEM, one or more
/// certificates) when given, otherwise the system's store; HTTP/1.1 by
/// ALPN, which is all the API speaks.
fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |message: String| {
                ClientError::Config(ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                })
            };
            let pem = std::fs::read(path).map_err(|source| {
                ClientError::Config(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            })?;
            use pki_types::pem::PemObject;
            for cert in pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(bad("no CERTIFICATE block in the file".into()));
            }
        }
        None => {
            // A store that cannot be read in part still leaves the rest
            // usable; an empty store fails every handshake with a clear
            // "unknown issuer", so no extra check here.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Request(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
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
