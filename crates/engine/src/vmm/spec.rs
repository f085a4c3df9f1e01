//! The description of a VM ([`VmSpec`]) and of a snapshot ([`SnapshotFiles`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::consts::{MAX_EXTRA_DISKS, MAX_VCPUS, MIN_MEM_MIB, UNIX_PATH_MAX};
use super::{SnapshotKind, VmmError};

/// Everything a driver needs to start one VM. Built by the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The sandbox id (used in logs and the VMM's process name).
    pub id: String,
    /// Per-VM working directory for the VMM's sockets, pid file and log;
    /// created if missing. Keep it short: socket paths must stay under
    /// [`UNIX_PATH_MAX`](super::UNIX_PATH_MAX) bytes.
    pub dir: PathBuf,
    /// Uncompressed ELF guest kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// The full kernel command line. The driver only appends
    /// `tsc_early_khz=<host TSC kHz>` when it is missing.
    pub cmdline: String,
    /// The root disk: `/dev/vda`.
    pub root_disk: PathBuf,
    /// Further disks: `/dev/vdb`, `/dev/vdc`, … in this order.
    pub extra_disks: Vec<Disk>,
    /// vCPUs, 1 to 32.
    pub vcpus: u32,
    /// Guest RAM in MiB; at least 64.
    pub mem_mib: u32,
    /// The guest NIC, if any.
    pub net: Option<NetAttach>,
    /// Where the guest's serial console goes (truncated by `boot`,
    /// appended to by `restore`).
    pub console_log: PathBuf,
}

/// An extra virtio-blk disk (raw image).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The raw image file on the host.
    pub path: PathBuf,
    /// The guest sees a read-only device.
    pub read_only: bool,
}

/// The guest NIC: a TAP that already exists inside a network namespace
/// (created by [`NetManager::setup_sandbox`](crate::net::NetManager::setup_sandbox)).
/// The VMM is started inside that namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAttach {
    /// e.g. `/var/run/netns/bhatti-<id>`.
    pub netns_path: PathBuf,
    /// The TAP's name inside the namespace ([`TAP_NAME`](crate::net::TAP_NAME)).
    pub tap: String,
    /// The guest MAC, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
}

/// What a snapshot consists of. Serializable so the engine can put it in
/// its manifest; the engine (not the driver) writes that manifest.
///
/// `state_file` and `mem_file` are file names relative to `dir` (an
/// absolute path also works), so a snapshot directory can be renamed or
/// copied and restored from its new place after updating `dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFiles {
    /// The snapshot directory the file names are relative to.
    pub dir: PathBuf,
    /// Device state (for QEMU: the whole migration stream).
    pub state_file: PathBuf,
    /// Guest memory; equal to `state_file` when the VMM keeps both in one
    /// file (QEMU).
    pub mem_file: PathBuf,
    /// [`SNAPSHOT_FORMAT_VERSION`](super::SNAPSHOT_FORMAT_VERSION) at write time.
    pub format_version: u32,
    /// [`VmmDriver::name`](super::VmmDriver::name) of the writer.
    pub driver: String,
    /// [`VmmDriver::version`](super::VmmDriver::version) of the writer.
    pub vmm_version: String,
    /// Full, or a Diff to apply onto its base.
    pub kind: SnapshotKind,
    /// Apparent size of all snapshot files.
    pub size_bytes: u64,
    /// Disk space the snapshot files actually use (they are sparse).
    pub allocated_bytes: u64,
    /// The machine the snapshot was taken of; restore requires the same.
    pub vcpus: u32,
    /// Guest RAM in MiB at snapshot time; restore requires the same.
    pub mem_mib: u32,
    /// Number of extra disks at snapshot time.
    pub extra_disks: usize,
    /// Whether the VM had a NIC.
    pub has_net: bool,
    /// QEMU: the stream was written with the `mapped-ram` migration
    /// capability (the restoring QEMU must set the same).
    #[serde(default)]
    pub mapped_ram: bool,
}

impl SnapshotFiles {
    /// The state file's full path.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(&self.state_file)
    }

    /// The memory file's full path.
    pub fn mem_path(&self) -> PathBuf {
        self.dir.join(&self.mem_file)
    }
}

fn require_file(what: &str, path: &Path) -> Result<(), VmmError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(VmmError::InvalidSpec(format!(
            "{what} {} is not a regular file",
            path.display()
        ))),
        Err(e) => Err(VmmError::InvalidSpec(format!(
            "{what} {}: {e}",
            path.display()
        ))),
    }
}

/// A Unix socket path checked against `sun_path`'s length (the kernel
/// refuses a longer one with a bare EINVAL at bind or connect).
pub(crate) fn checked_socket(path: PathBuf) -> Result<PathBuf, VmmError> {
    let len = path.as_os_str().len();
    if len >= UNIX_PATH_MAX {
        return Err(VmmError::SocketPathTooLong {
            path,
            len,
            max: UNIX_PATH_MAX.saturating_sub(1),
        });
    }
    Ok(path)
}

/// Bytes a file really occupies on disk (snapshots are sparse).
pub(crate) fn allocated_bytes(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.blocks().saturating_mul(512)
}

/// Paths end up on the VMM's command line: they must be UTF-8 and free of
/// control characters.
pub(crate) fn path_str<'a>(what: &str, path: &'a Path) -> Result<&'a str, VmmError> {
    let s = path
        .to_str()
        .ok_or_else(|| VmmError::InvalidSpec(format!("{what} {} is not UTF-8", path.display())))?;
    if s.is_empty() || s.chars().any(char::is_control) {
        return Err(VmmError::InvalidSpec(format!(
            "{what} path {s:?} is empty or has control characters"
        )));
    }
    Ok(s)
}

impl VmSpec {
    /// Checks sizes, names and that every file exists. Cheap; every driver
    /// calls it before starting anything.
    pub fn validate(&self) -> Result<(), VmmError> {
        let bad = |m: String| Err(VmmError::InvalidSpec(m));
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!("id {:?}: expected 1-64 of [A-Za-z0-9_-]", self.id));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("vcpus {} outside 1..={MAX_VCPUS}", self.vcpus));
        }
        if self.mem_mib < MIN_MEM_MIB {
            return bad(format!("mem_mib {} below {MIN_MEM_MIB}", self.mem_mib));
        }
        if self.cmdline.chars().any(char::is_control) {
            return bad("kernel command line has control characters".into());
        }
        if self.extra_disks.len() > MAX_EXTRA_DISKS {
            return bad(format!(
                "{} extra disks, at most {MAX_EXTRA_DISKS} (vdb..vdz)",
                self.extra_disks.len()
            ));
        }
        path_str("VM dir", &self.dir)?;
        path_str("console log", &self.console_log)?;
        require_file("kernel", &self.kernel)?;
        require_file("root disk", &self.root_disk)?;
        path_str("kernel", &self.kernel)?;
        path_str("root disk", &self.root_disk)?;
        for (i, d) in self.extra_disks.iter().enumerate() {
            let what = format!("extra disk {i}");
            require_file(&what, &d.path)?;
            path_str(&what, &d.path)?;
        }
        if let Some(n) = &self.net {
            let tap_ok = !n.tap.is_empty()
                && n.tap.len() < 16
                && n.tap
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !tap_ok {
                return bad(format!("TAP name {:?}", n.tap));
            }
            let mac_ok = n.mac.len() == 17
                && n.mac.split(':').count() == 6
                && n.mac
                    .split(':')
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
            if !mac_ok {
                return bad(format!("guest MAC {:?}", n.mac));
            }
            if !n.netns_path.exists() {
                return bad(format!(
                    "network namespace {} does not exist",
                    n.netns_path.display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> VmSpec {
        let f = dir.join("f");
        std::fs::write(&f, b"x").unwrap();
        VmSpec {
            id: "0123456789abcdef".into(),
            dir: dir.to_path_buf(),
            kernel: f.clone(),
            cmdline: "console=ttyS0".into(),
            root_disk: f.clone(),
            extra_disks: vec![Disk {
                path: f,
                read_only: true,
            }],
            vcpus: 1,
            mem_mib: 256,
            net: None,
            console_log: dir.join("console.log"),
        }
    }

    #[test]
    fn validate() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(tmp.path());
        s.validate().unwrap();
        let mut bad = s.clone();
        bad.vcpus = 0;
        assert!(matches!(bad.validate(), Err(VmmError::InvalidSpec(_))));
        let mut bad = s.clone();
        bad.kernel = tmp.path().join("missing");
        assert!(bad.validate().unwrap_err().to_string().contains("kernel"));
        let mut bad = s.clone();
        bad.id = "../x".into();
        assert!(bad.validate().is_err());
        let mut bad = s.clone();
        bad.cmdline = "a\nb".into();
        assert!(bad.validate().is_err());
        let mut bad = s.clone();
        bad.net = Some(NetAttach {
            netns_path: tmp.path().into(),
            tap: "tap0".into(),
            mac: "02:00:00:00:00:zz".into(),
        });
        assert!(bad.validate().unwrap_err().to_string().contains("MAC"));
    }

    #[test]
    fn snapshot_paths_are_relative() {
        let s = SnapshotFiles {
            dir: "/a/b".into(),
            state_file: "vm.state".into(),
            mem_file: "vm.state".into(),
            format_version: 1,
            driver: "qemu".into(),
            vmm_version: "QEMU 10.0.2".into(),
            kind: SnapshotKind::Full,
            size_bytes: 1,
            allocated_bytes: 1,
            vcpus: 1,
            mem_mib: 256,
            extra_disks: 0,
            has_net: false,
            mapped_ram: true,
        };
        assert_eq!(s.state_path(), PathBuf::from("/a/b/vm.state"));
        let json = serde_json::to_string(&s).unwrap();
        let back: SnapshotFiles = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}

/// The machine a VM is (and a snapshot was taken of); a restore needs the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub vcpus: u32,
    pub mem_mib: u32,
    pub extra_disks: usize,
    pub has_net: bool,
}

impl Shape {
    pub(crate) fn of(spec: &VmSpec) -> Shape {
        Shape {
            vcpus: spec.vcpus,
            mem_mib: spec.mem_mib,
            extra_disks: spec.extra_disks.len(),
            has_net: spec.net.is_some(),
        }
    }
}

impl SnapshotFiles {
    /// The checks every driver makes before a restore: written by `driver` in
    /// a format this build reads, of the machine `spec` describes, with a
    /// non-empty state file. Which snapshot kinds restore is the driver's call.
    pub(crate) fn check_common(&self, driver: &str, spec: &VmSpec) -> Result<(), VmmError> {
        let bad = |m: String| Err(VmmError::InvalidSnapshot(m));
        if self.driver != driver {
            return bad(format!(
                "written by the {:?} driver, not {driver:?}",
                self.driver
            ));
        }
        if self.format_version == 0 || self.format_version > super::SNAPSHOT_FORMAT_VERSION {
            return bad(format!(
                "format version {} (this build reads 1..={})",
                self.format_version,
                super::SNAPSHOT_FORMAT_VERSION
            ));
        }
        if self.vcpus != spec.vcpus || self.mem_mib != spec.mem_mib {
            return bad(format!(
                "taken of a {}-vCPU {} MiB VM, the spec asks for {} vCPUs and {} MiB",
                self.vcpus, self.mem_mib, spec.vcpus, spec.mem_mib
            ));
        }
        if self.extra_disks != spec.extra_disks.len() || self.has_net != spec.net.is_some() {
            return bad(format!(
                "taken with {} extra disks and {} NIC, the spec has {} and {}",
                self.extra_disks,
                if self.has_net { "a" } else { "no" },
                spec.extra_disks.len(),
                if spec.net.is_some() { "a NIC" } else { "none" },
            ));
        }
        let state = self.state_path();
        match std::fs::metadata(&state) {
            Ok(m) if m.is_file() && m.len() > 0 => Ok(()),
            Ok(_) => bad(format!("{} is empty or not a file", state.display())),
            Err(e) => bad(format!("{}: {e}", state.display())),
        }
    }
}
