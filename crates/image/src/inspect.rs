//! What an image holds that changes how it behaves in a sandbox, said as
//! warnings when the image is made (pulled, imported, saved, or installed
//! as a built-in tier).
//!
//! lohar is PID 1 and the service manager in every guest, so an image that
//! ships systemd gets lohar's substitute instead; dockerd or CUDA inside
//! need a tier or hardware the sandbox may not have; without a shell,
//! `exec sh -c`, sessions and `init` scripts cannot run; without sudo the
//! sandbox user cannot become root. None of these stop an image from
//! booting, so they are warnings, not errors.
//!
//! The same checks read a staged tree (paths under a directory) or a
//! finished ext4 file (`debugfs`, read-only, no mount), so every image is
//! judged alike whatever made it.

use std::path::Path;
use std::process::Command;

/// One thing worth knowing about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Warning {
    /// It ships systemd (lohar stays PID 1).
    Systemd,
    /// It ships dockerd.
    Dockerd,
    /// It ships CUDA.
    Cuda,
    /// No `/bin/sh`.
    NoShell,
    /// No `sudo`.
    NoSudo,
}

impl Warning {
    /// The sentence users see.
    pub fn message(self) -> &'static str {
        match self {
            Warning::Systemd => {
                "the image contains systemd: lohar stays PID 1 and runs its units with its own systemd substitute (systemctl and journalctl work; systemd itself does not run)"
            }
            Warning::Dockerd => {
                "the image contains dockerd: Docker runs in microVM sandboxes (use the `docker` tier for a ready setup), not in Docker-engine sandboxes"
            }
            Warning::Cuda => "the image contains CUDA: sandboxes have no GPU",
            Warning::NoShell => {
                "the image has no /bin/sh: `exec` of shell commands, sessions and init scripts will fail (exec programs by path)"
            }
            Warning::NoSudo => "the image has no sudo: the sandbox user cannot become root",
        }
    }
}

/// Any of these paths present means the warning applies ("absent" for
/// the negative ones).
const CHECKS: &[(Warning, bool, &[&str])] = &[
    (
        Warning::Systemd,
        true,
        &["/lib/systemd/systemd", "/usr/lib/systemd/systemd"],
    ),
    (
        Warning::Dockerd,
        true,
        &["/usr/bin/dockerd", "/usr/sbin/dockerd"],
    ),
    (Warning::Cuda, true, &["/usr/local/cuda"]),
    (Warning::NoShell, false, &["/bin/sh", "/usr/bin/sh"]),
    (Warning::NoSudo, false, &["/usr/bin/sudo", "/bin/sudo"]),
];

/// The warnings for an image whose paths `exists` answers for.
pub fn check(exists: impl Fn(&str) -> bool) -> Vec<Warning> {
    CHECKS
        .iter()
        .filter(|(_, present, paths)| paths.iter().any(|p| exists(p)) == *present)
        .map(|(w, _, _)| *w)
        .collect()
}

/// The warnings for a staged tree. Paths resolve inside the tree, through
/// its own relative symlinks (`/bin` → `usr/bin` on merged-/usr images).
pub fn check_tree(root: &Path) -> Vec<Warning> {
    check(|p| {
        let rel = root.join(p.trim_start_matches('/'));
        rel.symlink_metadata().is_ok() || rel.exists()
    })
}

/// The warnings for an ext4 image, read with `debugfs` (e2fsprogs) without
/// mounting it; `None` when debugfs cannot read the file at all.
pub fn check_ext4(image: &Path) -> Option<Vec<Warning>> {
    let found = |p: &str| -> bool {
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat \"{p}\""))
            .arg(image)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Inode:"))
    };
    // A file debugfs cannot open has no root directory either.
    if !found("/") {
        return None;
    }
    Some(check(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_judged_by_its_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(check_tree(root), [Warning::NoShell, Warning::NoSudo]);
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("lib/systemd")).unwrap();
        std::fs::write(root.join("usr/bin/sh"), "").unwrap();
        std::fs::write(root.join("usr/bin/sudo"), "").unwrap();
        std::fs::write(root.join("lib/systemd/systemd"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        assert_eq!(check_tree(root), [Warning::Systemd]);
        assert!(Warning::Systemd.message().contains("systemd substitute"));
    }

    #[test]
    fn an_ext4_file_is_read_without_mounting() {
        let on_path = |b: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
        };
        if !(on_path("mke2fs") && on_path("debugfs")) {
            eprintln!("skipped: needs e2fsprogs (mke2fs, debugfs)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::write(tree.join("usr/bin/sh"), "#!").unwrap();
        std::fs::write(tree.join("usr/bin/dockerd"), "").unwrap();
        // Merged /usr: the shell is found through the /bin link.
        std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
        std::fs::remove_file(tree.join("usr/bin/sh")).unwrap();
        std::fs::write(tree.join("usr/bin/bash"), "#!").unwrap();
        std::os::unix::fs::symlink("bash", tree.join("usr/bin/sh")).unwrap();
        let img = dir.path().join("i.ext4");
        let ok = Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-d"])
            .arg(&tree)
            .arg(&img)
            .arg("8M")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        assert_eq!(
            check_ext4(&img),
            Some(vec![Warning::Dockerd, Warning::NoSudo])
        );
        assert_eq!(check_ext4(&dir.path().join("missing.ext4")), None);
    }
}
