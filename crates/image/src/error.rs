//! One error type for every image step, with the variants the daemon maps
//! to HTTP statuses (bad input vs. the registry's answer vs. the host).

use std::io;

/// What can go wrong turning an image into a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {detail}")]
    Reference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The registry refused the credentials (or wants some).
    #[error("registry refused access to {0} (401/403): check --auth user:token")]
    Unauthorized(String),
    /// The repository, tag or digest is not in the registry.
    #[error("{0} not found in the registry")]
    NotFound(String),
    /// Any other registry failure: 5xx, a hang, a refused connection, TLS.
    #[error("registry: {0}")]
    Registry(String),
    /// An index with no linux/amd64 image.
    #[error("{0}: no linux/amd64 image in the index")]
    Platform(String),
    /// A blob whose bytes do not hash to its digest.
    #[error("blob {expected}: digest mismatch ({detail})")]
    Digest {
        /// The digest the blob should have.
        expected: String,
        /// What was found instead.
        detail: String,
    },
    /// A layer that cannot be applied: corrupt, truncated, or an entry that
    /// is refused (escapes the tree, device node).
    #[error("layer {layer}: {detail}")]
    Layer {
        /// The layer's digest.
        layer: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A malformed image tarball or OCI layout.
    #[error("image archive: {0}")]
    Archive(String),
    /// The image's tree cannot take lohar (e.g. `/usr/local/bin` is a symlink).
    #[error("image tree: {0}")]
    Tree(String),
    /// `mke2fs` failed.
    #[error("mke2fs: {0}")]
    Mkfs(String),
    /// A host I/O error (disk full, permissions).
    #[error("{what}: {source}")]
    Io {
        /// The step that failed, with its path.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// True when the fault is in what the caller supplied (the reference, the
    /// image's content or an uploaded archive) rather than in the host or the
    /// registry's availability: the daemon answers these with 400.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ImageError::Reference { .. }
                | ImageError::Platform(_)
                | ImageError::Digest { .. }
                | ImageError::Layer { .. }
                | ImageError::Archive(_)
                | ImageError::Tree(_)
        )
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}
