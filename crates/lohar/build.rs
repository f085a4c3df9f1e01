//! Decides at build time whether the guest-mode VM tests can run, so that
//! without their prerequisites they show up as *ignored* (with the reason)
//! instead of passing without having tested anything: `bhatti_guest_vm_tests`
//! is set when running as root with `BHATTI_GUEST_KERNEL` and
//! `BHATTI_GUEST_ROOTFS` naming existing files (scripts/test.sh sets both).

use std::path::Path;

fn is_root() -> bool {
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

fn main() {
    println!("cargo:rustc-check-cfg=cfg(bhatti_guest_vm_tests)");
    for v in [
        "BHATTI_GUEST_KERNEL",
        "BHATTI_GUEST_ROOTFS",
        "BHATTI_SKIP_VM",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let present = |v: &str| {
        std::env::var(v)
            .map(|p| Path::new(&p).is_file())
            .unwrap_or(false)
    };
    if is_root()
        && std::env::var_os("BHATTI_SKIP_VM").is_none()
        && present("BHATTI_GUEST_KERNEL")
        && present("BHATTI_GUEST_ROOTFS")
    {
        println!("cargo:rustc-cfg=bhatti_guest_vm_tests");
    }
}
