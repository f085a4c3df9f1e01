//! Images: any OCI image becomes a sandbox's root filesystem.
//!
//! A sandbox boots from an ext4 file whose PID 1 is lohar. Users bring their
//! toolchains as OCI images (`python:3.12`, their team's image), so this
//! crate turns an image into such a file, on the host, as the daemon's user:
//!
//! 1. [`registry`] resolves a reference at any OCI distribution registry
//!    (token auth as Docker Hub and GHCR do it; plain HTTP only for loopback
//!    or registries the operator lists), picks linux/amd64 from an index and
//!    downloads every blob into the [`BlobCache`], verified by digest. Blobs
//!    are shared between images by digest, so a second image on the same
//!    base downloads only its own layers. [`archive`] does the same from a
//!    `docker save` or OCI-layout tarball.
//! 2. [`layers`] applies the layers in order onto a staging tree: gzip, zstd
//!    or plain tar; whiteouts and opaque directories; hard links, symlinks,
//!    ownership, modes, setuid bits and xattrs kept. An entry that would land
//!    outside the tree (`..`, an absolute path, a path through a symlink) or
//!    create a device node is an error, never a write.
//! 3. [`rootfs`] adds what every bhatti guest needs (lohar as init, the
//!    `lohar` user, `/workspace`) and packs the tree with `mke2fs -d` into
//!    an ext4 file, written to a temporary name and renamed when complete.
//!
//! The image's config (Env, WorkingDir, User) comes back as [`ImageDefaults`]
//! for the daemon to apply to exec and shell.
//!
//! [`inspect`] says what in an image changes how it runs (systemd,
//! dockerd, no shell …), for the tree or the finished file alike.
//!
//! Nothing here knows about users, quotas or HTTP: that is the daemon's job.

pub mod archive;
mod blobs;
mod defaults;
mod error;
pub mod inspect;
pub mod layers;
pub mod registry;
pub mod rootfs;

pub use blobs::BlobCache;
pub use defaults::ImageDefaults;
pub use error::{ImageError, Result};
pub use registry::{Credentials, LayerProgress, Progress, ProgressSnapshot, Pulled, Registry};

/// One layer of a pulled or imported image, in apply order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// `sha256:<hex>` of the blob as stored (compressed).
    pub digest: String,
    /// The blob in the cache.
    pub path: std::path::PathBuf,
}
