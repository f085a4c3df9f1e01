//! Jailer mode: the `jailer` command line and the chroot it runs
//! Firecracker in.
//!
//! The jailer chroots into `<chroot_base>/<exec file name>/<id>/root/`,
//! drops to `--uid`/`--gid`, puts Firecracker into a cgroup (v2) with
//! `cpu.max` and `memory.max`, and execs it. Everything Firecracker opens
//! must therefore be inside that root: the driver hard-links (or, across
//! file systems, copies) the kernel, the disks and the snapshot files there
//! under the same short names it uses in bare mode (`fc.kernel`,
//! `fc.root`, …), and chowns them to the jail user. No `--new-pid-ns`: it
//! would make the jailer fork, and the driver could no longer signal
//! Firecracker through the pid it spawned.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vmm::spec::path_str;
use crate::vmm::VmmError;

/// Default jailer binary (looked up in `PATH`).
pub const JAILER_BINARY: &str = "jailer";
/// Memory the cgroup allows above the guest's RAM (Firecracker itself,
/// device buffers).
pub const JAIL_MEM_OVERHEAD_MIB: u64 = 128;
/// The cgroup v2 `cpu.max` period.
const CPU_PERIOD_US: u64 = 100_000;

/// Configuration of jailer mode (YAML `firecracker.jailer:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JailerConfig {
    /// The jailer binary (looked up in `PATH` without a `/`).
    pub binary: String,
    /// The unprivileged user Firecracker runs as.
    pub uid: u32,
    /// The unprivileged group Firecracker runs as.
    pub gid: u32,
    /// Where the jails go: `<chroot_base>/firecracker/<id>/root/`.
    pub chroot_base: PathBuf,
    /// `--parent-cgroup` (relative to the cgroup root), if any.
    pub parent_cgroup: Option<String>,
    /// Limit CPU (`cpu.max` = vCPUs) and memory (`memory.max` = RAM +
    /// [`JAIL_MEM_OVERHEAD_MIB`]) in a cgroup v2. Turn off on hosts whose
    /// cgroup v2 hierarchy lacks the `cpu` or `memory` controller (hybrid
    /// v1/v2 set-ups).
    pub cgroups: bool,
}

impl Default for JailerConfig {
    fn default() -> Self {
        JailerConfig {
            binary: JAILER_BINARY.to_string(),
            uid: 10000,
            gid: 10000,
            chroot_base: PathBuf::from("/srv/jailer"),
            parent_cgroup: None,
            cgroups: true,
        }
    }
}

/// Firecracker and the jailer accept `[A-Za-z0-9-]{1,64}` as instance id;
/// sandbox ids may also have `_`.
pub fn instance_id(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect()
}

/// Where the jailer will chroot: `<chroot_base>/<exec name>/<id>/root`.
/// The exec name is the file name of the (canonical) Firecracker binary.
pub fn chroot_root(j: &JailerConfig, exec_file: &Path, id: &str) -> PathBuf {
    let name = exec_file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("firecracker");
    j.chroot_base.join(name).join(instance_id(id)).join("root")
}

/// The jailer's arguments (without the binary). `exec_file` must be an
/// absolute path (the jailer canonicalizes it anyway); `api_sock` is the
/// socket path as Firecracker sees it inside the chroot.
pub fn jailer_args(
    j: &JailerConfig,
    exec_file: &Path,
    id: &str,
    vcpus: u32,
    mem_mib: u32,
    api_sock: &str,
) -> Result<Vec<String>, VmmError> {
    let exec = path_str("Firecracker binary", exec_file)?;
    let base = path_str("jailer chroot base", &j.chroot_base)?;
    let cpu_quota = u64::from(vcpus) * CPU_PERIOD_US;
    let mem_max = (u64::from(mem_mib) + JAIL_MEM_OVERHEAD_MIB) << 20;
    let mut a: Vec<String> = [
        "--id",
        &instance_id(id),
        "--exec-file",
        exec,
        "--uid",
        &j.uid.to_string(),
        "--gid",
        &j.gid.to_string(),
        "--chroot-base-dir",
        base,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if j.cgroups {
        a.extend([
            "--cgroup-version".to_string(),
            "2".to_string(),
            "--cgroup".to_string(),
            format!("cpu.max={cpu_quota} {CPU_PERIOD_US}"),
            "--cgroup".to_string(),
            format!("memory.max={mem_max}"),
        ]);
        if let Some(p) = &j.parent_cgroup {
            a.extend(["--parent-cgroup".to_string(), p.clone()]);
        }
    }
    a.extend([
        "--".to_string(),
        "--api-sock".to_string(),
        api_sock.to_string(),
    ]);
    Ok(a)
}

/// Hard-links `src` to `dst` (replacing `dst`), copying when they are on
/// different file systems.
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<(), VmmError> {
    remove_file_if_exists(dst)?;
    match std::fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            std::fs::copy(src, dst).map(drop).map_err(|e| {
                VmmError::io(format!("copy {} to {}", src.display(), dst.display()), e)
            })
        }
        Err(e) => Err(VmmError::io(
            format!("link {} to {}", src.display(), dst.display()),
            e,
        )),
    }
}

/// Removes a file; a missing one is fine.
pub fn remove_file_if_exists(p: &Path) -> Result<(), VmmError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmmError::io(format!("remove {}", p.display()), e)),
    }
}

/// `chown` without following symlinks.
pub fn chown(p: &Path, uid: u32, gid: u32) -> Result<(), VmmError> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .map_err(|e| VmmError::io(format!("chown {}", p.display()), e))
}

/// Creates an empty jail root for `id` (removing a stale one) owned by the
/// jail user, and returns it.
pub fn fresh_chroot(j: &JailerConfig, exec_file: &Path, id: &str) -> Result<PathBuf, VmmError> {
    let root = chroot_root(j, exec_file, id);
    if let Some(jail) = root.parent() {
        match std::fs::remove_dir_all(jail) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(VmmError::io(format!("remove {}", jail.display()), e)),
        }
    }
    std::fs::create_dir_all(&root)
        .map_err(|e| VmmError::io(format!("create {}", root.display()), e))?;
    chown(&root, j.uid, j.gid)?;
    Ok(root)
}

/// Removes the jail of `id` (best effort: the jailer's own files may be
/// left if the process is still running).
pub fn remove_chroot(j: &JailerConfig, exec_file: &Path, id: &str) {
    let root = chroot_root(j, exec_file, id);
    if let Some(jail) = root.parent() {
        let _ = std::fs::remove_dir_all(jail);
    }
}

/// Removes the (empty, once Firecracker has exited) cgroup the jailer made:
/// `<cgroup2 mount>/<parent or exec name>/<id>`. Best effort.
pub fn remove_cgroup(j: &JailerConfig, exec_file: &Path, id: &str) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let parent = j.parent_cgroup.clone().unwrap_or_else(|| {
        exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("firecracker")
            .to_string()
    });
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(dir), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if fstype == "cgroup2" {
            let _ = std::fs::remove_dir(Path::new(dir).join(&parent).join(instance_id(id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JailerConfig {
        JailerConfig {
            binary: "/usr/local/bin/jailer".into(),
            uid: 10000,
            gid: 10001,
            chroot_base: "/srv/jail".into(),
            parent_cgroup: None,
            cgroups: true,
        }
    }

    #[test]
    fn args() {
        let a = jailer_args(
            &cfg(),
            Path::new("/usr/local/bin/firecracker"),
            "abc_123",
            2,
            512,
            "/fc.sock",
        )
        .unwrap();
        assert_eq!(
            a,
            [
                "--id",
                "abc-123",
                "--exec-file",
                "/usr/local/bin/firecracker",
                "--uid",
                "10000",
                "--gid",
                "10001",
                "--chroot-base-dir",
                "/srv/jail",
                "--cgroup-version",
                "2",
                "--cgroup",
                "cpu.max=200000 100000",
                "--cgroup",
                "memory.max=671088640",
                "--",
                "--api-sock",
                "/fc.sock",
            ]
        );
        let mut c = cfg();
        c.parent_cgroup = Some("bhatti".into());
        let a = jailer_args(&c, Path::new("/fc/firecracker"), "x", 1, 128, "/fc.sock").unwrap();
        let i = a.iter().position(|x| x == "--parent-cgroup").unwrap();
        assert_eq!(a[i + 1], "bhatti");
        assert!(i < a.iter().position(|x| x == "--").unwrap());
        assert!(!a.iter().any(|x| x == "--new-pid-ns" || x == "--daemonize"));
        assert!(jailer_args(&c, Path::new("/a\nb"), "x", 1, 128, "/s").is_err());
        // Without cgroups: no cgroup arguments at all.
        c.cgroups = false;
        let a = jailer_args(&c, Path::new("/fc/firecracker"), "x", 1, 128, "/fc.sock").unwrap();
        assert!(!a.iter().any(|x| x.contains("cgroup")), "{a:?}");
        assert_eq!(a[a.len() - 3..], ["--", "--api-sock", "/fc.sock"]);
    }

    #[test]
    fn chroot_layout() {
        assert_eq!(
            chroot_root(&cfg(), Path::new("/opt/fc/firecracker"), "ab_c"),
            PathBuf::from("/srv/jail/firecracker/ab-c/root")
        );
        assert_eq!(instance_id(&"x".repeat(70)).len(), 64);
    }

    #[test]
    fn staging() {
        let tmp = tempfile::tempdir().unwrap();
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let j = JailerConfig {
            chroot_base: tmp.path().join("jails"),
            uid,
            gid,
            ..cfg()
        };
        let exec = Path::new("/x/firecracker");
        let root = fresh_chroot(&j, exec, "vm1").unwrap();
        assert!(root.ends_with("jails/firecracker/vm1/root"));
        let src = tmp.path().join("disk");
        std::fs::write(&src, b"data").unwrap();
        link_or_copy(&src, &root.join("fc.root")).unwrap();
        // Replaces an existing link.
        link_or_copy(&src, &root.join("fc.root")).unwrap();
        assert_eq!(std::fs::read(root.join("fc.root")).unwrap(), b"data");
        chown(&root.join("fc.root"), uid, gid).unwrap();
        // A fresh chroot removes the stale one.
        let root2 = fresh_chroot(&j, exec, "vm1").unwrap();
        assert_eq!(root, root2);
        assert!(!root.join("fc.root").exists());
        remove_chroot(&j, exec, "vm1");
        assert!(!root.exists());
        assert!(src.exists());
    }
}
