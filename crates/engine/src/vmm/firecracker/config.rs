//! The Firecracker driver's configuration: the binary, the jailer, the
//! devices a VM gets, rate limiters and timeouts, with their defaults.

use super::*;

/// Optional VMM rate limiters (docs/engine.md, "Firecracker rate
/// limiters"); `None` = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    /// NIC bandwidth per direction, bytes/s.
    pub net_bandwidth_bytes: Option<u64>,
    /// One-time NIC burst on top of the bandwidth, bytes.
    pub net_burst_bytes: Option<u64>,
    /// Disk bandwidth per drive, bytes/s.
    pub disk_bandwidth_bytes: Option<u64>,
    /// Disk operations per drive, per second.
    pub disk_iops: Option<u64>,
}

impl RateLimits {
    fn bucket(size: Option<u64>, burst: Option<u64>) -> Option<TokenBucket> {
        size.map(|size| TokenBucket {
            size,
            one_time_burst: burst,
            refill_time: REFILL_MS,
        })
    }

    /// The NIC's limiter (same both ways), if any.
    pub fn net(&self) -> Option<RateLimiter> {
        RateLimiter {
            bandwidth: Self::bucket(self.net_bandwidth_bytes, self.net_burst_bytes),
            ops: None,
        }
        .non_empty()
    }

    /// A drive's limiter, if any.
    pub fn disk(&self) -> Option<RateLimiter> {
        RateLimiter {
            bandwidth: Self::bucket(self.disk_bandwidth_bytes, None),
            ops: Self::bucket(self.disk_iops, None),
        }
        .non_empty()
    }
}

/// Configuration of the Firecracker driver (YAML `firecracker:` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FirecrackerConfig {
    /// The Firecracker binary (looked up in `PATH` without a `/`).
    pub binary: String,
    /// Run Firecracker under the jailer.
    pub jailer: Option<JailerConfig>,
    /// Limits on every drive's and the NIC's I/O (all off by default).
    pub rate_limits: RateLimits,
    /// Firecracker's log level (its log goes to stderr, captured).
    pub log_level: LogLevel,
    /// A virtio-balloon device (deflated, deflate-on-OOM), needed for
    /// [`Vm::set_balloon`].
    pub balloon: bool,
    /// Balloon statistics refresh interval; 0 = off.
    pub balloon_stats_interval_s: u32,
    /// A vsock device (host side `<dir>/v.sock`).
    pub vsock: bool,
    /// The guest's vsock CID. Each VM has its own Firecracker and socket,
    /// so every VM may use the same CID.
    pub vsock_cid: u32,
    /// A virtio-rng device, so guests never block in `getrandom()`.
    pub entropy: bool,
    /// Timeout of each API call.
    pub api_timeout_ms: u64,
    /// How long a starting Firecracker may take to open its API socket.
    pub start_timeout_ms: u64,
    /// SIGTERM → SIGKILL grace on kill.
    pub kill_grace_ms: u64,
    /// Timeout of `PUT /snapshot/create` (writing all of guest memory).
    pub snapshot_timeout_ms: u64,
    /// Timeout of `PUT /snapshot/load`.
    pub restore_timeout_ms: u64,
}

impl Default for FirecrackerConfig {
    fn default() -> Self {
        FirecrackerConfig {
            binary: FIRECRACKER_BINARY.to_string(),
            jailer: None,
            rate_limits: RateLimits::default(),
            log_level: LogLevel::Warning,
            balloon: true,
            balloon_stats_interval_s: 0,
            vsock: true,
            vsock_cid: 3,
            entropy: true,
            api_timeout_ms: DEFAULT_API_TIMEOUT_MS,
            start_timeout_ms: DEFAULT_START_TIMEOUT_MS,
            kill_grace_ms: DEFAULT_KILL_GRACE_MS,
            snapshot_timeout_ms: DEFAULT_SNAPSHOT_TIMEOUT_MS,
            restore_timeout_ms: DEFAULT_RESTORE_TIMEOUT_MS,
        }
    }
}
