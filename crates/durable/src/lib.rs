//! Files that are whole or absent after a crash: the one atomic write every
//! bhatti crate uses for its records (keys, configs, ledgers, manifests,
//! reports, cached blobs), instead of one helper per crate with its own
//! idea of when to fsync.
//!
//! The recipe: write a temp file beside the target (created exclusively, so
//! a planted symlink or a leftover is never written through), set its mode
//! and owner on the descriptor, fsync it, rename it over the target, then
//! fsync the directory so the rename itself survives a power cut. A reader
//! sees the old file or the new one, never a mix, and the caller hears
//! "done" only once both are on disk.

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How [`write_with`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The file's mode (applied after the umask would have narrowed it).
    pub mode: u32,
    /// `(uid, gid)` to own the file, set before it becomes visible.
    pub owner: Option<(u32, u32)>,
    /// fsync the file and its directory. Off only for files that are
    /// rewritten from scratch whenever they are needed (a guest's
    /// per-boot configuration), where the cost buys nothing.
    pub durable: bool,
}

impl Options {
    /// Durable, owned by the caller, with `mode`.
    pub fn mode(mode: u32) -> Options {
        Options {
            mode,
            owner: None,
            durable: true,
        }
    }
}

/// Writes `data` to `path` atomically and durably with `mode`.
pub fn write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_with(path, data, Options::mode(mode))
}

/// Writes `data` to `path` atomically, as `opts` says. A symlink at `path`
/// is replaced, never followed.
pub fn write_with(path: &Path, data: &[u8], opts: Options) -> io::Result<()> {
    let tmp = temp_beside(path)?;
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(opts.mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.set_permissions(Permissions::from_mode(opts.mode))?;
        if let Some((uid, gid)) = opts.owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        if opts.durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res?;
    if opts.durable {
        sync_parent(path)?;
    }
    Ok(())
}

/// Moves a fully written temp file (made by the caller, e.g. while
/// hashing a download) to `dest`: fsync, rename, fsync the directory.
pub fn commit(tmp: &Path, dest: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    fs::rename(tmp, dest)?;
    sync_parent(dest)
}

/// fsyncs the directory holding `path`, so that a rename or create in it
/// survives a crash.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// A temp name beside `path` that no other writer in this or another
/// process uses at the same time.
fn temp_beside(path: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_with_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write(&p, b"one", 0o600).unwrap();
        write(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temp file was left: {names:?}");
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let p = dir.path().join("resolv.conf");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_with(
            &p,
            b"nameserver 10.0.0.1\n",
            Options {
                durable: false,
                ..Options::mode(0o644)
            },
        )
        .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
    }

    #[test]
    fn commit_moves_a_written_temp_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("blob.partial");
        fs::write(&tmp, b"bytes").unwrap();
        let dest = dir.path().join("blob");
        commit(&tmp, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"bytes");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_path_with_no_file_name_is_refused() {
        assert_eq!(
            write(Path::new("/"), b"x", 0o600).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
