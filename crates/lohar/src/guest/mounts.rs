//! The pseudo-filesystems PID 1 must mount before anything else works.
//!
//! The kernel hands init a bare root filesystem (plus `/dev` when
//! `CONFIG_DEVTMPFS_MOUNT` is set). Everything here is idempotent: a target that
//! already is a mount point is left alone, so a kernel or image that mounted
//! something first does no harm.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::{io_err, GuestError};

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Controllers delegated to cgroups below the root (services, sandboxed work).
pub const CGROUP_CONTROLLERS: &[&str] = &["cpu", "memory", "io", "pids"];

/// Directories later stages (and the systemd substitute) expect to exist.
pub const RUN_DIRS: &[&str] = &["/run/systemd/system", "/run/bhatti/services"];

/// Mounts everything, logging each failure and carrying on. Only `/proc` is
/// truly essential (the reaper, `/proc/cmdline` and timing need it); the rest
/// degrades single features.
pub fn mount_all() {
    let steps: [(&str, Result<(), GuestError>); 13] = [
        (
            "proc",
            mount_fs("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
        ),
        (
            "sysfs",
            mount_fs("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
        ),
        (
            "devtmpfs",
            mount_fs(
                "devtmpfs",
                "/dev",
                "devtmpfs",
                MsFlags::MS_NOSUID,
                Some("mode=0755"),
            ),
        ),
        ("/dev/fuse", chmod_if_present("/dev/fuse", 0o666)),
        (
            "devpts",
            mount_fs(
                "devpts",
                "/dev/pts",
                "devpts",
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
            ),
        ),
        ("/dev/ptmx", ptmx_symlink()),
        (
            "/dev/shm",
            mount_fs(
                "tmpfs",
                "/dev/shm",
                "tmpfs",
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777"),
            ),
        ),
        (
            "/tmp",
            mount_fs(
                "tmpfs",
                "/tmp",
                "tmpfs",
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777"),
            ),
        ),
        (
            "/run",
            mount_fs(
                "tmpfs",
                "/run",
                "tmpfs",
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755"),
            ),
        ),
        (
            "cgroup2",
            mount_fs(
                "cgroup2",
                "/sys/fs/cgroup",
                "cgroup2",
                NOSUID_NODEV_NOEXEC,
                None,
            ),
        ),
        ("cgroup controllers", enable_controllers("/sys/fs/cgroup")),
        (
            "binfmt_misc",
            mount_fs(
                "binfmt_misc",
                "/proc/sys/fs/binfmt_misc",
                "binfmt_misc",
                NOSUID_NODEV_NOEXEC,
                None,
            ),
        ),
        ("run dirs", make_run_dirs()),
    ];
    for (what, res) in steps {
        if let Err(e) = res {
            tracing::warn!("mount step {what} failed (continuing): {e}");
        }
    }
}

/// Whether `target` is a mount point, according to `/proc/self/mounts`
/// (false when `/proc` is not mounted yet).
pub fn is_mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| mounts_contain(&m, target))
        .unwrap_or(false)
}

/// Whether a `/proc/mounts` listing has a mount on `target`.
pub fn mounts_contain(mounts: &str, target: &str) -> bool {
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|t| t == target)
}

/// `mount -t fstype source target -o data`, unless `target` already is a mount
/// point; creates `target` first.
pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), GuestError> {
    if is_mounted(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(io_err(format!("mkdir {target}")))?;
    mount(Some(source), target, Some(fstype), flags, data).map_err(|source| GuestError::Mount {
        fstype: fstype.to_string(),
        target: target.to_string(),
        source,
    })
}

fn chmod_if_present(path: &str, mode: u32) -> Result<(), GuestError> {
    if !Path::new(path).exists() {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {path}")))
}

/// `/dev/ptmx` → `pts/ptmx`, so PTYs come from the private devpts instance
/// mounted with `ptmxmode=0666`.
fn ptmx_symlink() -> Result<(), GuestError> {
    let ptmx = Path::new("/dev/ptmx");
    if std::fs::read_link(ptmx).is_ok_and(|t| t == Path::new("pts/ptmx")) {
        return Ok(());
    }
    if ptmx.symlink_metadata().is_ok() {
        std::fs::remove_file(ptmx).map_err(io_err("remove /dev/ptmx"))?;
    }
    std::os::unix::fs::symlink("pts/ptmx", ptmx).map_err(io_err("symlink /dev/ptmx"))
}

/// Writes `+<controller>` for each available controller into the root's
/// `cgroup.subtree_control`, one at a time so one missing controller does not
/// block the others.
fn enable_controllers(root: &str) -> Result<(), GuestError> {
    let available = std::fs::read_to_string(format!("{root}/cgroup.controllers"))
        .map_err(io_err("read cgroup.controllers"))?;
    let control = format!("{root}/cgroup.subtree_control");
    let mut failed = Vec::new();
    for c in CGROUP_CONTROLLERS {
        if !available.split_whitespace().any(|a| a == *c) {
            failed.push(format!("{c} (not available)"));
            continue;
        }
        if let Err(e) = std::fs::write(&control, format!("+{c}")) {
            failed.push(format!("{c} ({e})"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(GuestError::Unavailable {
            what: "cgroup controllers not enabled",
            detail: failed.join(", "),
        })
    }
}

fn make_run_dirs() -> Result<(), GuestError> {
    for d in RUN_DIRS {
        std::fs::create_dir_all(d).map_err(io_err(format!("mkdir {d}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_points() {
        let m = "proc /proc proc rw,nosuid 0 0\n\
                 devtmpfs /dev devtmpfs rw 0 0\n\
                 /dev/vda / ext4 rw 0 0\n";
        assert!(mounts_contain(m, "/proc"));
        assert!(mounts_contain(m, "/dev"));
        assert!(mounts_contain(m, "/"));
        assert!(!mounts_contain(m, "/dev/pts"));
        assert!(!mounts_contain("", "/proc"));
    }
}
