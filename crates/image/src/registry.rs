//! Pulling images from OCI distribution registries.
//!
//! The protocol work (manifests and indexes, token auth the way Docker Hub
//! and GHCR challenge for it, blob downloads checked against their digests)
//! is the `oci-client` crate's. This module decides what the daemon allows
//! and records what it needs:
//! - HTTPS always, except for a loopback registry or one the operator
//!   listed as insecure (a registry on the host or in the lab);
//! - linux/amd64 from an index, and a typed error when the index has none;
//! - every layer into the [`BlobCache`] (a cached digest is not downloaded
//!   again), with per-layer byte counts in a [`Progress`] the daemon polls;
//! - timeouts on connect and on every read, so a registry that hangs fails
//!   the pull instead of holding it forever.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Serialize;
use tokio::io::AsyncWrite;

use crate::blobs::{digest_hex, BlobCache};
use crate::defaults::ImageDefaults;
use crate::error::{io_err, ImageError, Result};
use crate::Layer;

/// Connect and per-read timeout unless the daemon sets one. Per read, not
/// per blob: a slow but moving download is fine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// `user:token` for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The registry user name.
    pub user: String,
    /// Its password or access token (never printed: see `Debug`).
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.user)
    }
}

impl Credentials {
    /// From `user:token` (the token may contain `:`).
    pub fn parse(s: &str) -> Result<Credentials> {
        match s.split_once(':') {
            Some((u, t)) if !u.is_empty() && !t.is_empty() => Ok(Credentials {
                user: u.to_string(),
                token: t.to_string(),
            }),
            _ => Err(ImageError::Reference {
                reference: "auth".into(),
                detail: "auth must be user:token".into(),
            }),
        }
    }
}

/// One layer's download.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LayerProgress {
    /// The layer blob's digest.
    pub digest: String,
    /// Its size in bytes, as the manifest says.
    pub size: u64,
    /// Bytes downloaded so far.
    pub done: u64,
}

/// What a pull is doing, as the daemon reports it on the task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    /// The step under way (`resolving`, `downloading`, `unpacking`, `building`).
    pub phase: String,
    /// Each layer's download, once the manifest is known.
    pub layers: Vec<LayerProgress>,
}

/// Shared between a pull and whoever reports on it.
#[derive(Debug, Default)]
pub struct Progress(Mutex<ProgressSnapshot>);

impl Progress {
    fn with(&self, f: impl FnOnce(&mut ProgressSnapshot)) {
        // A poisoned lock only means a reporter panicked; the numbers are
        // still the best there are.
        let mut g = bhatti_sync::lock(&self.0);
        f(&mut g);
    }

    /// Sets the phase (`resolving`, `downloading`, `unpacking`, `building`).
    pub fn phase(&self, phase: &str) {
        self.with(|p| p.phase = phase.to_string());
    }

    fn add(&self, index: usize, n: u64) {
        self.with(|p| {
            if let Some(l) = p.layers.get_mut(index) {
                l.done = l.done.saturating_add(n);
            }
        });
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let mut out = ProgressSnapshot::default();
        self.with(|p| out = p.clone());
        out
    }
}

/// A pulled image: its layers in the cache and its runtime defaults.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference, fully qualified (`docker.io/library/python:3.12`).
    pub reference: String,
    /// The digest the reference resolved to (the index's, for a
    /// multi-platform image): what "the same image again" compares.
    pub digest: String,
    /// What the image's config gives exec and shell (user, env, workdir …).
    pub defaults: ImageDefaults,
    /// The layers as downloaded, bottom first.
    pub layers: Vec<Layer>,
}

/// Registry access with the daemon's policy.
#[derive(Debug, Clone)]
pub struct Registry {
    /// `host[:port]` of registries reached over plain HTTP.
    insecure: Vec<String>,
    timeout: Duration,
}

fn parse(reference: &str) -> Result<Reference> {
    reference
        .parse::<Reference>()
        .map_err(|e| ImageError::Reference {
            reference: reference.to_string(),
            detail: e.to_string(),
        })
}

/// Whether `registry` (`host[:port]`) is this machine.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn auth(creds: Option<&Credentials>) -> RegistryAuth {
    match creds {
        Some(c) => RegistryAuth::Basic(c.user.clone(), c.token.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// The registry's answer as our error; `platform_missing` is set by the
/// resolver when an index had no linux/amd64 entry.
fn map_err(r: &Reference, e: OciDistributionError, platform_missing: bool) -> ImageError {
    let whole = r.whole();
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) if platform_missing => {
            ImageError::Platform(whole)
        }
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => ImageError::Unauthorized(whole),
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::NotFound(whole),
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => ImageError::Unauthorized(whole),
        OciDistributionError::ServerError { code: 404, .. } => ImageError::NotFound(whole),
        OciDistributionError::RegistryError { ref envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|x| &x.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Unauthorized(whole)
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ImageError::NotFound(whole)
            } else {
                ImageError::Registry(e.to_string())
            }
        }
        OciDistributionError::DigestError(d) => ImageError::Digest {
            expected: whole,
            detail: d.to_string(),
        },
        other => ImageError::Registry(other.to_string()),
    }
}

/// Counts bytes written through it into a layer's progress.
struct Counting<'a, W> {
    inner: W,
    progress: &'a Progress,
    index: usize,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.progress.add(self.index, n as u64);
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

/// Whether a layer descriptor is a filesystem layer we can apply (OCI or
/// Docker, any compression); artifacts (wasm, helm, signatures) are not.
fn is_fs_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

impl Registry {
    /// Plain HTTP is used for loopback registries and for `insecure` ones
    /// (`host[:port]`), HTTPS for everything else. `timeout` bounds the
    /// connect and every read (a registry that stops answering).
    pub fn new(insecure: Vec<String>, timeout: Duration) -> Registry {
        // reqwest is built without a default TLS provider; this process uses
        // ring. Installing twice is harmless (the first one stays).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registry { insecure, timeout }
    }

    fn client(&self, r: &Reference, platform_missing: &Arc<AtomicBool>) -> Client {
        let mut plain = self.insecure.clone();
        let reg = r.resolve_registry().to_string();
        if is_loopback(&reg) {
            plain.push(reg);
        }
        let flag = platform_missing.clone();
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            platform_resolver: Some(Box::new(move |m| {
                let d = linux_amd64_resolver(m);
                flag.store(d.is_none(), Ordering::Relaxed);
                d
            })),
            connect_timeout: Some(self.timeout),
            read_timeout: Some(self.timeout),
            ..Default::default()
        })
    }

    /// The fully qualified form of a reference, or why it does not parse.
    pub fn normalize(reference: &str) -> Result<String> {
        Ok(parse(reference)?.whole())
    }

    /// The registry a reference names (`docker.io`, `ghcr.io`,
    /// `127.0.0.1:5000`), for the daemon's allow-list.
    pub fn registry_of(reference: &str) -> Result<String> {
        Ok(parse(reference)?.registry().to_string())
    }

    /// The digest `reference` points at now (one manifest request), to tell
    /// whether an image already pulled is still current.
    pub async fn digest(&self, reference: &str, creds: Option<&Credentials>) -> Result<String> {
        let r = parse(reference)?;
        let flag = Arc::new(AtomicBool::new(false));
        self.client(&r, &flag)
            .fetch_manifest_digest(&r, &auth(creds))
            .await
            .map_err(|e| map_err(&r, e, false))
    }

    /// Downloads the image's manifest, config and every layer not cached.
    pub async fn pull(
        &self,
        reference: &str,
        creds: Option<&Credentials>,
        cache: &BlobCache,
        progress: &Progress,
    ) -> Result<Pulled> {
        let r = parse(reference)?;
        let flag = Arc::new(AtomicBool::new(false));
        let client = self.client(&r, &flag);
        progress.phase("resolving");
        let (manifest, digest, config, list_digest) = client
            .pull_manifest_and_config_and_list_digest(&r, &auth(creds))
            .await
            .map_err(|e| map_err(&r, e, flag.load(Ordering::Relaxed)))?;
        for l in &manifest.layers {
            digest_hex(&l.digest)?;
            if !is_fs_layer(&l.media_type) {
                return Err(ImageError::Archive(format!(
                    "{}: layer {} has media type {:?}, not a filesystem layer",
                    r.whole(),
                    l.digest,
                    l.media_type
                )));
            }
        }
        progress.with(|p| {
            p.phase = "downloading".into();
            p.layers = manifest
                .layers
                .iter()
                .map(|l| {
                    let size = u64::try_from(l.size).unwrap_or(0);
                    LayerProgress {
                        digest: l.digest.clone(),
                        size,
                        done: if cache.contains(&l.digest) { size } else { 0 },
                    }
                })
                .collect();
        });
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (i, l) in manifest.layers.iter().enumerate() {
            if !cache.contains(&l.digest) {
                let tmp = cache.temp_path();
                let res = async {
                    let f = tokio::fs::File::create(&tmp)
                        .await
                        .map_err(io_err(format!("create {}", tmp.display())))?;
                    let w = Counting {
                        inner: f,
                        progress,
                        index: i,
                    };
                    client.pull_blob(&r, l, w).await.map_err(|e| match e {
                        OciDistributionError::DigestError(d) => ImageError::Digest {
                            expected: l.digest.clone(),
                            detail: d.to_string(),
                        },
                        e => map_err(&r, e, false),
                    })?;
                    cache.commit(&tmp, &l.digest)
                }
                .await;
                if let Err(e) = res {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            layers.push(Layer {
                digest: l.digest.clone(),
                path: cache.path(&l.digest)?,
            });
        }
        Ok(Pulled {
            reference: r.whole(),
            digest: list_digest.unwrap_or(digest),
            defaults: ImageDefaults::from_config_json(config.as_bytes()),
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback() {
        for yes in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.8.9.1",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "ghcr.io",
            "index.docker.io",
            "10.0.0.1:5000",
            "localhost.evil.com:5000",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }

    #[test]
    fn references_normalize_and_bad_ones_are_typed() {
        assert_eq!(
            Registry::normalize("python:3.12").unwrap(),
            "docker.io/library/python:3.12"
        );
        assert!(matches!(
            Registry::normalize("UPPER/Case"),
            Err(ImageError::Reference { .. })
        ));
        assert!(Credentials::parse("u:t:x").is_ok_and(|c| c.token == "t:x"));
        assert!(Credentials::parse("nouser").is_err());
        assert!(!format!("{:?}", Credentials::parse("u:secret").unwrap()).contains("secret"));
    }
}
