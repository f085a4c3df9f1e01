//! Feeding the kernel's entropy pool from the host.
//!
//! Guests restored from one memory image (a template snapshot, a pooled VM)
//! wake with the same RNG state. Writing to `/dev/urandom` mixes bytes in
//! but credits nothing; `RNDADDENTROPY` mixes them in *and* credits them,
//! which makes the kernel reseed its CRNG from the pool at once, so the
//! next read of `/dev/urandom` differs between two such guests.

use std::os::fd::AsRawFd;

use bhatti_protocol::messages::MAX_APPLY_ENTROPY;

use super::GuestError;

/// `_IOW('R', 0x03, int[2])` from `<linux/random.h>` (not in the libc crate).
const RNDADDENTROPY: u64 = 0x4008_5203;

/// `struct rand_pool_info` with room for [`MAX_APPLY_ENTROPY`] bytes.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_APPLY_ENTROPY],
}

/// Mixes `bytes` into the kernel's pool and credits them as entropy (root
/// only). Returns how many bytes went in.
pub fn add(bytes: &[u8]) -> Result<usize, GuestError> {
    if bytes.is_empty() {
        return Ok(0);
    }
    if bytes.len() > MAX_APPLY_ENTROPY {
        return Err(GuestError::Invalid {
            what: "entropy (too many bytes)",
            value: bytes.len().to_string(),
        });
    }
    let mut info = RandPoolInfo {
        // In bits; at most 512 × 8, well inside a c_int.
        entropy_count: libc::c_int::try_from(bytes.len().saturating_mul(8)).unwrap_or(0),
        buf_size: libc::c_int::try_from(bytes.len()).unwrap_or(0),
        buf: [0u8; MAX_APPLY_ENTROPY],
    };
    if let Some(dst) = info.buf.get_mut(..bytes.len()) {
        dst.copy_from_slice(bytes);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(super::io_err("open /dev/random"))?;
    // SAFETY: `info` is a live, properly laid out `rand_pool_info` whose
    // `buf_size` bytes of `buf` are initialised; the kernel only reads it
    // for the duration of the call, and `f` is an open descriptor.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, std::ptr::addr_of!(info)) };
    if r != 0 {
        return Err(GuestError::Sys {
            what: "RNDADDENTROPY".into(),
            source: nix::errno::Errno::last(),
        });
    }
    Ok(bytes.len())
}
