//! Exclusive, non-blocking `flock`s on files: a daemon's claim on its
//! address pool and on its data directory. The kernel drops the lock with
//! the process (or the file), so a claim is never stale.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Opens (creating) `path` and takes an exclusive lock on it: `None` when
/// someone else holds it. The lock lasts as long as the returned file.
pub fn try_exclusive(path: &Path) -> std::io::Result<Option<File>> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(None);
    }
    Err(e)
}
