//! TLS for the public listener, served by rustls, HTTP/1.1 only (WebSocket
//! upgrades need it, and so do proxies in front that speak h1 upstream):
//! a configured certificate (normally a wildcard for the proxy zone), or
//! one per name from ACME ([`super::acme`]), chosen by the client's SNI
//! once its hello has arrived.
//!
//! Handshakes run on their own tasks, with a deadline, so one slow client
//! never holds up the accept loop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::acme::Acme;
use crate::state::Shared;

use crate::listener::Accept;

/// A handshake must finish within this …
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// … or this, when it may wait for an ACME certificate to be issued.
const ACME_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a connection's certificate comes from.
#[derive(Clone)]
pub enum Certs {
    /// One configured certificate for every name.
    Fixed(Arc<rustls::ServerConfig>),
    /// ACME, per name (SNI).
    Acme(Arc<Acme>, Shared),
}

impl Certs {
    async fn handshake(&self, s: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), s).await?;
        let cfg = match self {
            Certs::Fixed(cfg) => cfg.clone(),
            Certs::Acme(acme, st) => {
                let host = start
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| std::io::Error::other("no SNI: no certificate to choose"))?;
                acme.config_for(st, &host).await.map_err(|e| {
                    tracing::info!(host, error = %e, "no certificate");
                    std::io::Error::other(e)
                })?
            }
        };
        start.into_stream(cfg).await
    }

    fn timeout(&self) -> Duration {
        match self {
            Certs::Fixed(_) => HANDSHAKE_TIMEOUT,
            Certs::Acme(..) => ACME_HANDSHAKE_TIMEOUT,
        }
    }
}
/// Completed handshakes waiting for the accept loop.
const BACKLOG: usize = 128;

/// Why TLS could not be set up; the daemon refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file could not be read or holds no PEM item
    /// of that kind.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls server config for `cert` (a PEM chain) and `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, &e))?;
    if certs.is_empty() {
        return Err(pem(cert, &"no CERTIFICATE in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, &e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A TCP listener whose connections arrive with TLS done.
pub struct TlsListener {
    rx: tokio::sync::Mutex<
        tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    >,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp`, with certificates from `certs`.
    pub fn new(tcp: TcpListener, certs: Certs) -> TlsListener {
        let (tx, rx) = tokio::sync::mpsc::channel(BACKLOG);
        let task = tokio::spawn(async move {
            loop {
                let (s, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "public accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = s.set_nodelay(true);
                let (certs, tx) = (certs.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(certs.timeout(), certs.handshake(s)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener {
            rx: tokio::sync::Mutex::new(rx),
            task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Accept for TlsListener {
    type Io = TlsStream<TcpStream>;
    async fn accept(&self) -> std::io::Result<(Self::Io, Option<std::net::SocketAddr>)> {
        match self.rx.lock().await.recv().await {
            Some((s, peer)) => Ok((s, Some(peer))),
            None => Err(std::io::Error::other("the TLS accept loop ended")),
        }
    }
}
