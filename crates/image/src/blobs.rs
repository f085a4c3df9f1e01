//! The blob cache: every layer and config blob once, under its digest, shared
//! between images.
//!
//! A blob is written to `tmp/` and renamed to `sha256/<hex>` only after its
//! bytes hashed to the digest and were fsynced, so a file under `sha256/` is
//! always whole and right; a crash leaves at most a temp file, which
//! [`BlobCache::remove_stale_temp`] clears at start-up.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{io_err, ImageError, Result};

const SHA256: &str = "sha256:";

/// A content-addressed directory of blobs.
#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

/// The hex part of a `sha256:<64 hex>` digest; anything else is refused
/// before it becomes part of a path.
pub(crate) fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix(SHA256)
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        .ok_or_else(|| {
            ImageError::Archive(format!(
                "unsupported digest {digest:?} (want sha256:<64 hex>)"
            ))
        })?;
    Ok(hex)
}

/// Streams `r` to `w`, returning the `sha256:` digest of what passed.
pub(crate) fn copy_hashing(r: &mut impl Read, w: &mut impl Write) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n = n.saturating_add(k as u64);
    }
    Ok((format!("{SHA256}{}", hex::encode(h.finalize())), n))
}

impl BlobCache {
    /// Opens (creating) the cache at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobCache> {
        let dir = dir.into();
        for sub in ["sha256", "tmp"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
        }
        Ok(BlobCache { dir })
    }

    /// Where the blob with this digest lives (whether or not it is there).
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("sha256").join(digest_hex(digest)?))
    }

    /// Whether the blob is cached.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// A fresh temp file name in the cache's own `tmp/` (same filesystem, so
    /// the final rename is atomic).
    pub(crate) fn temp_path(&self) -> PathBuf {
        self.dir
            .join("tmp")
            .join(format!("blob-{:016x}", rand::random::<u64>()))
    }

    /// Moves a fully written, verified temp file into place.
    pub(crate) fn commit(&self, tmp: &Path, digest: &str) -> Result<PathBuf> {
        let dst = self.path(digest)?;
        bhatti_durable::commit(tmp, &dst).map_err(io_err(format!(
            "move {} into {}",
            tmp.display(),
            dst.display()
        )))?;
        Ok(dst)
    }

    /// Stores what `r` yields under `expected`, verifying the digest; a
    /// mismatch stores nothing.
    pub fn put_reader(&self, r: &mut impl Read, expected: &str) -> Result<PathBuf> {
        digest_hex(expected)?;
        if self.contains(expected) {
            // Drain nothing: the caller's reader is positioned by it; the
            // cached copy was verified when it was written.
            return self.path(expected);
        }
        let tmp = self.temp_path();
        let res = (|| {
            let mut f = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
            let (actual, _) =
                copy_hashing(r, &mut f).map_err(io_err(format!("write {}", tmp.display())))?;
            if actual != expected {
                return Err(ImageError::Digest {
                    expected: expected.to_string(),
                    detail: format!("content hashes to {actual}"),
                });
            }
            self.commit(&tmp, expected)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Re-hashes a cached blob; a blob that no longer matches (disk damage,
    /// someone's edit) is removed so the next pull fetches it again.
    pub fn verify(&self, digest: &str) -> Result<()> {
        let p = self.path(digest)?;
        let mut f = File::open(&p).map_err(io_err(format!("open {}", p.display())))?;
        let (actual, _) = copy_hashing(&mut f, &mut io::sink())
            .map_err(io_err(format!("read {}", p.display())))?;
        if actual != digest {
            let _ = fs::remove_file(&p);
            return Err(ImageError::Digest {
                expected: digest.to_string(),
                detail: format!("content hashes to {actual}"),
            });
        }
        Ok(())
    }

    /// Removes temp files a killed daemon left behind.
    pub fn remove_stale_temp(&self) {
        if let Ok(rd) = fs::read_dir(self.dir.join("tmp")) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    #[test]
    fn blobs_are_stored_only_when_the_digest_matches() {
        let d = tempfile::tempdir().unwrap();
        let c = BlobCache::open(d.path()).unwrap();
        let good = digest_of(b"hello");
        let p = c.put_reader(&mut &b"hello"[..], &good).unwrap();
        assert_eq!(fs::read(p).unwrap(), b"hello");
        assert!(c.contains(&good));
        c.verify(&good).unwrap();

        let other = digest_of(b"other");
        let e = c.put_reader(&mut &b"not other"[..], &other).unwrap_err();
        assert!(matches!(e, ImageError::Digest { .. }), "{e}");
        assert!(!c.contains(&other));
        assert_eq!(
            fs::read_dir(d.path().join("tmp")).unwrap().count(),
            0,
            "no temp left"
        );
    }

    #[test]
    fn digests_that_are_not_sha256_hex_never_become_paths() {
        let d = tempfile::tempdir().unwrap();
        let c = BlobCache::open(d.path()).unwrap();
        for bad in [
            "sha256:../../etc/passwd",
            "md5:abc",
            "sha256:ABCDEF",
            "",
            "sha256:",
        ] {
            assert!(c.path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_damaged_cached_blob_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let c = BlobCache::open(d.path()).unwrap();
        let g = digest_of(b"abc");
        let p = c.put_reader(&mut &b"abc"[..], &g).unwrap();
        fs::write(&p, b"abd").unwrap();
        assert!(matches!(c.verify(&g), Err(ImageError::Digest { .. })));
        assert!(!c.contains(&g));
    }
}
