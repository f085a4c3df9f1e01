//! Every fixed name, limit and timeout of the VMM drivers.

use std::time::Duration;

/// `sun_path` of `struct sockaddr_un` is 108 bytes including the NUL, so a
/// Unix socket path must be shorter than this.
pub const UNIX_PATH_MAX: usize = 108;

/// Version of the snapshot layout this code writes ([`SnapshotFiles`]
/// fields and file names). Restore refuses newer ones.
///
/// [`SnapshotFiles`]: super::SnapshotFiles
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

/// At most this many extra disks: `vdb` … `vdz`.
pub(crate) const MAX_EXTRA_DISKS: usize = 25;
/// Largest accepted vCPU count (QEMU microvm and Firecracker both cap near
/// here).
pub(crate) const MAX_VCPUS: u32 = 32;
/// Smallest guest memory a driver accepts (the API enforces its own,
/// higher, minimum).
pub(crate) const MIN_MEM_MIB: u32 = 64;

/// Bytes of VMM stderr / console log attached to boot and restore errors.
pub(crate) const ERROR_TAIL_BYTES: usize = 4096;

/// How long a guest-visible log may be read for a tail (bounded read).
pub(crate) const MAX_TAIL_BYTES: usize = 1 << 20;

/// Poll interval while waiting for the QMP socket of a starting QEMU.
pub(crate) const SOCKET_POLL: Duration = Duration::from_millis(10);
/// Poll interval of `query-migrate` during snapshot and restore.
pub(crate) const MIGRATE_POLL: Duration = Duration::from_millis(5);
/// How long `kill` waits for the process to be reaped after SIGKILL.
pub(crate) const REAP_TIMEOUT: Duration = Duration::from_secs(10);

// ---- QEMU ---------------------------------------------------------------

/// Default QEMU binary (looked up in `PATH`).
pub(crate) const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Files inside [`VmSpec::dir`](super::VmSpec::dir).
pub(crate) const QMP_SOCKET: &str = "qmp.sock";
pub(crate) const QEMU_PIDFILE: &str = "qemu.pid";
/// QEMU's stdout + stderr, appended by every launch.
pub(crate) const QEMU_LOG: &str = "qemu.log";
/// The migration stream inside a snapshot directory.
pub(crate) const QEMU_STATE_FILE: &str = "vm.state";
/// Longest accepted QMP line (responses are small; a runaway peer is not).
pub(crate) const QMP_MAX_LINE: usize = 4 << 20;
/// QMP events kept per VM (oldest dropped first).
pub(crate) const QMP_EVENT_HISTORY: usize = 64;
/// Migration bandwidth cap for snapshots: effectively unlimited (QEMU's
/// default of 128 MiB/s would make a 512 MiB snapshot take 4 s).
pub(crate) const MIGRATE_MAX_BANDWIDTH: u64 = 1 << 40;

/// Defaults of [`QemuConfig`](super::qemu::QemuConfig), in milliseconds.
pub(crate) const DEFAULT_QMP_TIMEOUT_MS: u64 = 10_000;
pub(crate) const DEFAULT_START_TIMEOUT_MS: u64 = 15_000;
pub(crate) const DEFAULT_KILL_GRACE_MS: u64 = 3_000;
pub(crate) const DEFAULT_SNAPSHOT_TIMEOUT_MS: u64 = 120_000;
pub(crate) const DEFAULT_RESTORE_TIMEOUT_MS: u64 = 120_000;

/// How long a failed launch waits for the VMM to exit by itself before it
/// is stopped, so the error can say that the VMM died, and why.
pub const EXIT_SETTLE: Duration = Duration::from_millis(150);

/// SIGTERM → SIGKILL grace for a VMM whose launch failed.
pub const FAILED_LAUNCH_GRACE: Duration = Duration::from_millis(500);
