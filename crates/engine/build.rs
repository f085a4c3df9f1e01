//! Decides at build time which real-VM test suites can run on this machine, so
//! that the others show up as *ignored* (with the reason) instead of passing
//! without having tested anything.
//!
//! - `bhatti_vm_tests`: running as root and the guest kernel + root filesystem
//!   exist (`BHATTI_GUEST_KERNEL`/`BHATTI_GUEST_ROOTFS`, or the defaults in
//!   `/var/cache/bhatti/guest`), and `BHATTI_SKIP_VM` is unset.
//! - `bhatti_firecracker`: `BHATTI_FIRECRACKER_BIN` names an existing file
//!   (API-level Firecracker tests).
//! - `bhatti_firecracker_guests`: that, plus KVM that runs ordinary guests
//!   (`kvm_intel`/`kvm_amd`), root and the guest artifacts (the engine suite on
//!   Firecracker).
//! - `bhatti_root`: running as root (network namespace tests).
//! - `bhatti_fc_schema`: Firecracker's API schema is beside the repository
//!   (or `BHATTI_FIRECRACKER_API_YAML` names it).
//! - `bhatti_docker`: `/var/run/docker.sock` exists or `DOCKER_HOST` is set
//!   (Docker engine tests; `BHATTI_DOCKER_TESTS=0` turns them off).

use std::path::Path;

const CACHE: &str = "/var/cache/bhatti/guest";

/// Whether the build runs with effective uid 0 (from `/proc/self/status`).
/// Also used by the server's and the CLI's build scripts, which include
/// this file as a module.
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Prints the `cfg`s above; the server's and the CLI's build scripts call
/// it too.
pub(crate) fn main() {
    println!("cargo:rustc-check-cfg=cfg(bhatti_vm_tests)");
    println!("cargo:rustc-check-cfg=cfg(bhatti_firecracker)");
    println!("cargo:rustc-check-cfg=cfg(bhatti_root)");
    println!("cargo:rustc-check-cfg=cfg(bhatti_firecracker_guests)");
    println!("cargo:rustc-check-cfg=cfg(bhatti_docker)");
    // Firecracker's API schema for the request-body tests: Firecracker's
    // own file, kept beside the repository, never copied into it.
    println!("cargo:rustc-check-cfg=cfg(bhatti_fc_schema)");
    println!("cargo:rerun-if-env-changed=BHATTI_FIRECRACKER_API_YAML");
    let schema = std::env::var_os("BHATTI_FIRECRACKER_API_YAML")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/data/firecracker/firecracker-api.yaml")
        });
    if schema.is_file() {
        println!("cargo:rustc-cfg=bhatti_fc_schema");
    }
    println!("cargo:rerun-if-env-changed=BHATTI_DOCKER_TESTS");
    println!("cargo:rerun-if-env-changed=DOCKER_HOST");
    if std::env::var("BHATTI_DOCKER_TESTS").as_deref() != Ok("0")
        && (Path::new("/var/run/docker.sock").exists() || std::env::var_os("DOCKER_HOST").is_some())
    {
        println!("cargo:rustc-cfg=bhatti_docker");
    }
    for v in [
        "BHATTI_GUEST_KERNEL",
        "BHATTI_GUEST_ROOTFS",
        "BHATTI_SKIP_VM",
        "BHATTI_FIRECRACKER_BIN",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    if Path::new(CACHE).is_dir() {
        println!("cargo:rerun-if-changed={CACHE}");
    }
    let kernel =
        std::env::var("BHATTI_GUEST_KERNEL").unwrap_or_else(|_| format!("{CACHE}/vmlinux"));
    let rootfs = std::env::var("BHATTI_GUEST_ROOTFS")
        .unwrap_or_else(|_| format!("{CACHE}/rootfs-minimal.ext4"));
    if is_root() {
        println!("cargo:rustc-cfg=bhatti_root");
    }
    if is_root()
        && std::env::var_os("BHATTI_SKIP_VM").is_none()
        && Path::new(&kernel).is_file()
        && Path::new(&rootfs).is_file()
    {
        println!("cargo:rustc-cfg=bhatti_vm_tests");
    }
    if std::env::var("BHATTI_FIRECRACKER_BIN")
        .map(|p| Path::new(&p).is_file())
        .unwrap_or(false)
    {
        println!("cargo:rustc-cfg=bhatti_firecracker");
        // The engine suite boots real guests: that also needs a KVM that runs
        // ordinary guests (a PVM-only KVM, as on the development machines, does
        // not), plus the guest artifacts.
        let kvm = ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
            .iter()
            .any(|p| Path::new(p).exists());
        if kvm && is_root() && Path::new(&kernel).is_file() && Path::new(&rootfs).is_file() {
            println!("cargo:rustc-cfg=bhatti_firecracker_guests");
        }
    }
}
