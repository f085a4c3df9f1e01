//! The Debian package, installed the way a user installs it: `apt-get
//! install ./bhatti_*.deb` in a clean Debian 12 root (debootstrap minbase
//! plus the package's Depends, made by scripts/dist-root.sh), in a chroot.
//! The packaged binary runs there, the postinst made the `bhatti` group,
//! the unit is the shipped one and systemd accepts it, the guest kernel and
//! image sit where the daemon looks, and a removal keeps the config.
//!
//! Needs root, the .deb (`BHATTI_DEB`, from scripts/build-deb.sh) and the
//! root's tarball (`BHATTI_DIST_ROOT`); scripts/test.sh provides both.
//! Without them the test is reported as ignored (build.rs).
#![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)] // a test panics to report its failure; its sums are on test data

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{ok, text};

fn in_root(root: &Path, args: &[&str]) -> Output {
    Command::new("chroot")
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap()
}

#[test]
#[cfg_attr(
    not(bhatti_package),
    ignore = "needs root, BHATTI_DEB and BHATTI_DIST_ROOT (scripts/test.sh builds them)"
)]
fn the_deb_installs_and_runs_in_a_clean_debian_12() {
    let deb = PathBuf::from(std::env::var("BHATTI_DEB").unwrap());
    let tarball = std::env::var("BHATTI_DIST_ROOT").unwrap();
    let dir = tempfile::Builder::new()
        .prefix("bhatti-package-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path();
    ok(Command::new("tar")
        .args(["-C", root.to_str().unwrap(), "-xf", &tarball])
        .output()
        .unwrap());
    let release = std::fs::read_to_string(root.join("etc/os-release")).unwrap();
    assert!(release.contains("VERSION_ID=\"12\""), "{release}");
    assert!(!root.join("usr/bin/bhatti").exists(), "the root is clean");

    let name = deb.file_name().unwrap().to_str().unwrap();
    std::fs::copy(&deb, root.join("tmp").join(name)).unwrap();
    // No download: the root already has every Depends, and Recommends
    // (QEMU, Docker) are left out as a minimal host would.
    ok(in_root(
        root,
        &[
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "-o",
            "Acquire::Retries=0",
            &format!("/tmp/{name}"),
        ],
    ));

    let o = ok(in_root(root, &["bhatti", "--version"]));
    let version = text(&o.stdout);
    assert!(
        version.starts_with(&format!("bhatti {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // The CLI works in the installed root: the user commands open the
    // database directly and need no daemon.
    let o = in_root(root, &["bhatti", "--json", "user", "list"]);
    assert_eq!(o.status.code(), Some(1), "no database yet");
    std::fs::create_dir_all(root.join("var/lib/bhatti")).unwrap();
    let o = in_root(
        root,
        &["bhatti", "--json", "user", "create", "--name", "admin"],
    );
    let o = ok(o);
    assert!(text(&o.stdout).contains("bht_"), "{}", text(&o.stdout));

    // postinst: the group whose members use the CLI without root.
    let o = ok(in_root(root, &["getent", "group", "bhatti"]));
    assert!(text(&o.stdout).starts_with("bhatti:"));

    // The unit is the shipped one, and systemd accepts it (pointed at the
    // installed binary, which lives under the chroot here).
    let unit = root.join("lib/systemd/system/bhatti.service");
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd/bhatti.service");
    let installed = std::fs::read_to_string(&unit).unwrap();
    assert_eq!(installed, std::fs::read_to_string(shipped).unwrap());
    let check = dir.path().join("verify").join("bhatti.service");
    std::fs::create_dir_all(check.parent().unwrap()).unwrap();
    std::fs::write(
        &check,
        installed.replace(
            "ExecStart=/usr/bin/bhatti",
            &format!("ExecStart={}/usr/bin/bhatti", root.display()),
        ),
    )
    .unwrap();
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&check)
        .output()
        .unwrap();
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&v.stdout),
        text(&v.stderr)
    );

    // The guest kernel and minimal image, where the daemon falls back to.
    for f in ["vmlinux", "rootfs-minimal.ext4"] {
        let p = root.join("usr/lib/bhatti/guest").join(f);
        assert!(std::fs::metadata(&p).unwrap().len() > 0, "{}", p.display());
    }
    // The default config: root's alone (it may come to hold secrets).
    use std::os::unix::fs::PermissionsExt;
    let cfg = std::fs::metadata(root.join("etc/bhatti/config.yaml")).unwrap();
    assert_eq!(cfg.permissions().mode() & 0o777, 0o600);

    // Removal takes the binary and keeps the config (a conffile).
    ok(in_root(root, &["apt-get", "remove", "-y", "bhatti"]));
    assert!(!root.join("usr/bin/bhatti").exists());
    assert!(root.join("etc/bhatti/config.yaml").exists());
}
