//! [`NetConfig`]: the `network:` section of the daemon's configuration,
//! apart from the manager so that reading a config touches nothing else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cidr::Ipv4Cidr;
use super::consts::{DEFAULT_EGRESS_BLOCKED, DEFAULT_POOL};

/// Configuration of sandbox networking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetConfig {
    /// Pool of external sandbox addresses, one /24 per owner (default
    /// `10.200.0.0/13`). Must not overlap any network the host uses (checked
    /// before the first sandbox is set up).
    pub pool: Ipv4Cidr,
    /// Owner (user name or uid) of every `tap0`, so an unprivileged VMM can
    /// open it. `None`: root only.
    pub tap_user: Option<String>,
    /// Group owner of every `tap0`.
    pub tap_group: Option<String>,
    /// Networks a sandbox with egress `public` may not open connections to
    /// (its owner's own sandboxes excepted); an allow-list policy is not
    /// affected. Default [`DEFAULT_EGRESS_BLOCKED`]: link-local (cloud
    /// metadata), RFC 1918 and CGNAT. Empty: `public` means everything.
    pub egress_blocked: Vec<Ipv4Cidr>,
    /// The ledger of the sandbox IDs this manager set networks up for (one
    /// empty file each). Orphan clean-up removes only what is recorded
    /// there; without a ledger it removes nothing it does not track.
    pub ledger_dir: Option<PathBuf>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            pool: DEFAULT_POOL,
            tap_user: None,
            tap_group: None,
            egress_blocked: DEFAULT_EGRESS_BLOCKED.to_vec(),
            ledger_dir: None,
        }
    }
}
