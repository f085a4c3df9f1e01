//! Volume backups to an S3-compatible bucket: the byte pipeline.
//!
//! A backup streams a point-in-time copy of a volume's ext4 image through
//! SHA-256 (of the uncompressed bytes, recorded with the backup) and
//! `zstd -3` into a multipart upload, one part at a time, so memory stays
//! at a few parts whatever the volume's size. A restore streams the object
//! back through zstd and SHA-256 into a new file beside the volume and
//! renames it over the volume only when the checksum matches: a failed or
//! corrupted restore leaves the volume as it was.
//!
//! The S3 client is `object_store` (signing, retries, multipart); the
//! operations with users, volumes, rows and events are
//! [`crate::service::backups`]'s.

pub mod cron;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::config::BackupConfig;

/// Bytes read from the volume per step of the pipeline.
const READ_CHUNK: usize = 4 << 20;
/// Default multipart part size.
const DEFAULT_PART_MB: u64 = 16;
/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// zstd level (what `zstd -3` does).
const ZSTD_LEVEL: i32 = 3;

/// What can go wrong in the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The object store refused or failed (network, credentials, bucket).
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation and its path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The restored bytes do not hash to the backup's SHA-256.
    #[error("checksum mismatch: the backup's SHA-256 is {expected}, the downloaded image's is {actual}; the volume is unchanged")]
    Checksum {
        /// The recorded digest.
        expected: String,
        /// What the download hashed to.
        actual: String,
    },
    /// The object does not decompress (truncated or corrupted): its
    /// content no longer matches what was uploaded.
    #[error("checksum mismatch: the backup object is corrupted and does not decompress ({0}); the volume is unchanged")]
    Corrupt(String),
    /// The backup's object is not in the bucket (deleted behind our back).
    #[error("the backup object {0} is gone from the bucket")]
    Missing(String),
    /// No `backup:` section in the config.
    #[error("backups are not configured")]
    NotConfigured,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// The configured bucket (or none: every backup route answers 501).
pub struct Backups {
    store: Option<Arc<dyn ObjectStore>>,
    part_size: usize,
    /// Volumes (`<user>/<name>`) with a backup or restore under way.
    running: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Held while a backup or restore of one volume runs.
pub struct Running<'a> {
    owner: &'a Backups,
    key: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        bhatti_sync::lock(&self.owner.running).remove(&self.key);
    }
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Uncompressed bytes.
    pub size_bytes: u64,
    /// SHA-256 of the uncompressed bytes, hex.
    pub sha256: String,
    /// Compressed bytes sent.
    pub compressed_bytes: u64,
}

impl Backups {
    /// The client for `cfg`; `None` config, or one the client refuses, is
    /// "not configured" (the config was validated at load).
    pub fn new(cfg: Option<&BackupConfig>) -> Backups {
        let store = cfg.and_then(|c| match client(c) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("backup bucket: {e}");
                None
            }
        });
        let part_mb = cfg
            .map(|c| c.part_size_mb)
            .filter(|m| *m > 0)
            .unwrap_or(DEFAULT_PART_MB);
        Backups {
            store,
            part_size: usize::try_from(part_mb << 20).unwrap_or(16 << 20),
            running: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The bucket, if backups are configured.
    pub fn store(&self) -> Option<&Arc<dyn ObjectStore>> {
        self.store.as_ref()
    }

    /// Claims `key` (`<user>/<volume>`) for one backup or restore; `None`
    /// when one is already running.
    pub fn claim(&self, key: &str) -> Option<Running<'_>> {
        bhatti_sync::lock(&self.running)
            .insert(key.to_string())
            .then(|| Running {
                owner: self,
                key: key.to_string(),
            })
    }

    /// Streams `file` (compressed) to `key`; the object exists only if this
    /// returns `Ok` (a failed upload is aborted).
    pub async fn upload(&self, file: &Path, key: &str) -> Result<Uploaded, BackupError> {
        let Some(store) = &self.store else {
            return Err(BackupError::NotConfigured);
        };
        let upload = store.put_multipart(&ObjectPath::from(key)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        // The blocking side reads, hashes and compresses; the async side
        // uploads. A bounded channel keeps at most a few chunks in memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let path = file.to_path_buf();
        let producer = tokio::task::spawn_blocking(move || compress_file(&path, tx));
        let mut sent: u64 = 0;
        let pumped: Result<(), BackupError> = async {
            while let Some(chunk) = rx.recv().await {
                sent = sent.saturating_add(chunk.len() as u64);
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(&chunk);
            }
            Ok(())
        }
        .await;
        drop(rx);
        let produced = producer
            .await
            .map_err(|e| io("compress")(std::io::Error::other(e)))?;
        match (pumped, produced) {
            (Ok(()), Ok((size_bytes, sha256))) => {
                writer.finish().await?;
                Ok(Uploaded {
                    size_bytes,
                    sha256,
                    compressed_bytes: sent,
                })
            }
            (Err(e), _) | (Ok(()), Err(e)) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Downloads `key` into `dest` (a new file), decompressed, checking it
    /// against `sha256`; `dest` is fsynced, and removed on any failure.
    pub async fn download(&self, key: &str, dest: &Path, sha256: &str) -> Result<u64, BackupError> {
        let Some(store) = &self.store else {
            return Err(BackupError::NotConfigured);
        };
        let res = self.download_inner(store, key, dest, sha256).await;
        if res.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        res
    }

    async fn download_inner(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        dest: &Path,
        sha256: &str,
    ) -> Result<u64, BackupError> {
        let got = match store.get(&ObjectPath::from(key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackupError::Missing(key.into()))
            }
            Err(e) => return Err(e.into()),
        };
        let mut stream = got.into_stream();
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let path = dest.to_path_buf();
        let consumer = tokio::task::spawn_blocking(move || decompress_to(&path, rx));
        let mut failed = None;
        while let Some(part) = stream.next().await {
            match part {
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(BackupError::Store(e));
                    break;
                }
            }
        }
        drop(tx);
        let done = consumer
            .await
            .map_err(|e| io("decompress")(std::io::Error::other(e)))?;
        if let Some(e) = failed {
            return Err(e);
        }
        let (size, actual) = done?;
        if actual != sha256 {
            return Err(BackupError::Checksum {
                expected: sha256.to_string(),
                actual,
            });
        }
        Ok(size)
    }

    /// Deletes `key` (already gone counts as deleted).
    pub async fn delete(&self, key: &str) -> Result<(), BackupError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        match store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn client(c: &BackupConfig) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    // reqwest is built with rustls and no provider of its own (the
    // workspace's rustls uses ring): without a process default, building
    // its client panics. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let region = if c.region.is_empty() {
        "us-east-1"
    } else {
        &c.region
    };
    // A server that is down fails the backup within a minute rather than
    // after object_store's default three minutes of retries.
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    };
    // Client options first: they carry `allow_http`, which a later
    // `with_client_options` would reset.
    let s = AmazonS3Builder::new()
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(10))
                .with_timeout(Duration::from_secs(300)),
        )
        .with_endpoint(&c.endpoint)
        .with_bucket_name(&c.bucket)
        .with_region(region)
        .with_access_key_id(&c.access_key)
        .with_secret_access_key(&c.secret_key)
        .with_allow_http(c.endpoint.starts_with("http://"))
        .with_virtual_hosted_style_request(!c.path_style)
        .with_retry(retry)
        .build()?;
    Ok(Arc::new(s))
}

/// Reads `path`, hashing and compressing it, sending compressed chunks;
/// returns the uncompressed size and SHA-256.
fn compress_file(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<(u64, String), BackupError> {
    /// Collects compressed output and hands it on in READ_CHUNK pieces.
    struct Sink {
        buf: Vec<u8>,
        tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    }
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.buf.extend_from_slice(b);
            if self.buf.len() >= READ_CHUNK {
                let full = std::mem::take(&mut self.buf);
                self.tx
                    .blocking_send(full)
                    .map_err(|_| std::io::Error::other("upload ended"))?;
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut f = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let sink = Sink {
        buf: Vec::with_capacity(READ_CHUNK),
        tx,
    };
    let mut enc = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL).map_err(io("zstd"))?;
    // zstd's own frame checksum, so corruption is caught while decoding
    // too, not only by the SHA-256 at the end.
    enc.include_checksum(true).map_err(io("zstd"))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total = total.saturating_add(n as u64);
        enc.write_all(&buf[..n]).map_err(io("compress"))?;
    }
    let mut sink = enc.finish().map_err(io("compress"))?;
    if !sink.buf.is_empty() {
        let rest = std::mem::take(&mut sink.buf);
        sink.tx
            .blocking_send(rest)
            .map_err(|_| io("upload")(std::io::Error::other("upload ended")))?;
    }
    Ok((total, hex(&hash.finalize())))
}

/// Decompresses what arrives on `rx` into a new file at `path`, hashing the
/// output; fsyncs it. Returns the size and SHA-256.
fn decompress_to(
    path: &Path,
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
) -> Result<(u64, String), BackupError> {
    struct Chunks {
        rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        cur: bytes::Bytes,
    }
    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            while self.cur.is_empty() {
                match self.rx.blocking_recv() {
                    Some(b) => self.cur = b,
                    None => return Ok(0),
                }
            }
            let n = out.len().min(self.cur.len());
            out[..n].copy_from_slice(&self.cur[..n]);
            self.cur = self.cur.slice(n..);
            Ok(n)
        }
    }
    let mut out = std::fs::File::create(path).map_err(io(format!("create {}", path.display())))?;
    let mut dec = zstd::stream::read::Decoder::new(Chunks {
        rx,
        cur: bytes::Bytes::new(),
    })
    .map_err(io("zstd"))?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = match dec.read(&mut buf) {
            Ok(n) => n,
            Err(e) => return Err(BackupError::Corrupt(e.to_string())),
        };
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total = total.saturating_add(n as u64);
        out.write_all(&buf[..n])
            .map_err(io(format!("write {}", path.display())))?;
    }
    out.sync_all()
        .map_err(io(format!("fsync {}", path.display())))?;
    Ok((total, hex(&hash.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The object key of a backup: `volumes/<user>/<vol>/<RFC3339>.ext4.zst`.
pub fn object_key(user_id: &str, volume: &str, at: &str) -> String {
    format!("volumes/{user_id}/{volume}/{at}.ext4.zst")
}

/// A temporary file beside `volume` (same file system, so a reflink copy
/// and the final rename work).
pub fn temp_beside(volume: &Path, what: &str) -> PathBuf {
    let name = volume
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    volume.with_file_name(format!(
        ".{name}.{what}-{}",
        bhatti_store::ids::random_hex(8)
    ))
}
