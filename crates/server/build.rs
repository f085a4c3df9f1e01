//! The same build-time test gates as the engine (root, guest artifacts,
//! dockerd): one definition, so both crates skip or run their real-engine
//! suites alike. Plus the server's own: `bhatti_schemathesis` when
//! `BHATTI_SCHEMATHESIS` names the `st` binary of a schemathesis install
//! (scripts/test.sh makes one in a venv), for the API contract suite; and
//! `bhatti_registry` for the image suite (a real registry and skopeo);
//! `bhatti_base_image` when the `base` image is built.

#[path = "../engine/build.rs"]
mod gates;

/// `docker-registry` (the CNCF distribution registry, Debian's package) and
/// `skopeo` on PATH, and root (image conversion keeps file ownership): the
/// image suite runs against a real registry on loopback.
fn registry_tools() -> bool {
    let on_path = |b: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
    };
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    root && on_path("docker-registry") && on_path("skopeo")
}

fn main() {
    gates::main();
    println!("cargo:rustc-check-cfg=cfg(bhatti_registry)");
    // The `base` image (scripts/guest/build-debian-rootfs.sh): its suite
    // boots it.
    println!("cargo:rustc-check-cfg=cfg(bhatti_base_image)");
    println!("cargo:rerun-if-env-changed=BHATTI_GUEST_BASE_ROOTFS");
    let base = std::env::var("BHATTI_GUEST_BASE_ROOTFS")
        .unwrap_or_else(|_| "/var/cache/bhatti/guest/rootfs-base.ext4".into());
    println!("cargo:rerun-if-changed={base}");
    if std::path::Path::new(&base).is_file() {
        println!("cargo:rustc-cfg=bhatti_base_image");
        println!("cargo:rustc-env=BHATTI_BASE_ROOTFS_AT_BUILD={base}");
    }
    // Image tiers (scripts/guest/build-tier.sh): `services` (nginx and
    // redis as enabled units, for the systemd substitute's VM suite),
    // `docker` and `browser`. Each suite boots its tier.
    let cache =
        std::env::var("BHATTI_GUEST_CACHE").unwrap_or_else(|_| "/var/cache/bhatti/guest".into());
    println!("cargo:rerun-if-env-changed=BHATTI_GUEST_CACHE");
    for tier in ["services", "docker", "browser"] {
        println!("cargo:rustc-check-cfg=cfg(bhatti_tier_{tier})");
        let img = format!("{cache}/rootfs-{tier}.ext4");
        println!("cargo:rerun-if-changed={img}");
        if std::path::Path::new(&img).is_file() {
            println!("cargo:rustc-cfg=bhatti_tier_{tier}");
        }
    }
    println!("cargo:rustc-env=BHATTI_GUEST_CACHE_AT_BUILD={cache}");
    println!("cargo:rerun-if-changed=/usr/bin/docker-registry");
    println!("cargo:rerun-if-changed=/usr/bin/skopeo");
    if registry_tools() {
        println!("cargo:rustc-cfg=bhatti_registry");
    }
    println!("cargo:rustc-check-cfg=cfg(bhatti_schemathesis)");
    println!("cargo:rerun-if-env-changed=BHATTI_SCHEMATHESIS");
    if std::env::var_os("BHATTI_SCHEMATHESIS").is_some_and(|p| std::path::Path::new(&p).is_file()) {
        println!("cargo:rustc-cfg=bhatti_schemathesis");
    }
    // moto's S3 server (scripts/test.sh makes a venv with it):
    // `BHATTI_MOTO_SERVER` is its `moto_server`, for the backup suite.
    println!("cargo:rustc-check-cfg=cfg(bhatti_s3)");
    println!("cargo:rerun-if-env-changed=BHATTI_MOTO_SERVER");
    if std::env::var_os("BHATTI_MOTO_SERVER").is_some_and(|p| std::path::Path::new(&p).is_file()) {
        println!("cargo:rustc-cfg=bhatti_s3");
    }
    // E2B's Python SDK (scripts/test.sh makes a venv with it):
    // `BHATTI_E2B_PYTHON` is that venv's python.
    println!("cargo:rustc-check-cfg=cfg(bhatti_e2b_sdk)");
    println!("cargo:rerun-if-env-changed=BHATTI_E2B_PYTHON");
    if std::env::var_os("BHATTI_E2B_PYTHON").is_some_and(|p| std::path::Path::new(&p).is_file()) {
        println!("cargo:rustc-cfg=bhatti_e2b_sdk");
    }
    // E2B's JavaScript SDK (scripts/test.sh installs it with npm ci):
    // `BHATTI_E2B_JS` is the directory whose node_modules holds it.
    println!("cargo:rustc-check-cfg=cfg(bhatti_e2b_js)");
    println!("cargo:rerun-if-env-changed=BHATTI_E2B_JS");
    if std::env::var_os("BHATTI_E2B_JS")
        .is_some_and(|d| std::path::Path::new(&d).join("node_modules/e2b").is_dir())
    {
        println!("cargo:rustc-cfg=bhatti_e2b_js");
    }
    web_shell_terminal();
    // Pebble, Let's Encrypt's test ACME server, and its DNS/challenge
    // companion (Debian's package): the ACME suite issues real certificates.
    println!("cargo:rustc-check-cfg=cfg(bhatti_pebble)");
    println!("cargo:rerun-if-changed=/usr/bin/pebble");
    if std::path::Path::new("/usr/bin/pebble").is_file()
        && std::path::Path::new("/usr/bin/pebble-challtestsrv").is_file()
    {
        println!("cargo:rustc-cfg=bhatti_pebble");
    }
    // Chromium and its driver (Debian's packages): the web shell's browser
    // test opens the page in a real headless browser.
    println!("cargo:rustc-check-cfg=cfg(bhatti_chromium)");
    println!("cargo:rerun-if-changed=/usr/bin/chromium");
    if std::path::Path::new("/usr/bin/chromium").is_file() {
        println!("cargo:rustc-cfg=bhatti_chromium");
    }
}

/// The web shell's terminal (scripts/web-shell.sh puts xterm.js and its fit
/// addon, from npm, under `target/web-shell`; `BHATTI_WEB_SHELL_DIR` names
/// another place): copied into OUT_DIR for `include_bytes!`, with cfg
/// `bhatti_xterm`. Without it the files are empty and the page answers 501.
fn web_shell_terminal() {
    use std::path::{Path, PathBuf};
    println!("cargo:rustc-check-cfg=cfg(bhatti_xterm)");
    println!("cargo:rerun-if-env-changed=BHATTI_WEB_SHELL_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dir = std::env::var_os("BHATTI_WEB_SHELL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../target/web-shell"));
    let modules = dir.join("node_modules/@xterm");
    let files = [
        ("xterm.js", modules.join("xterm/lib/xterm.js")),
        ("xterm.css", modules.join("xterm/css/xterm.css")),
        ("addon-fit.js", modules.join("addon-fit/lib/addon-fit.js")),
    ];
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let all = files.iter().all(|(_, p)| p.is_file());
    for (name, src) in &files {
        println!("cargo:rerun-if-changed={}", src.display());
        let dest = out.join(name);
        if all {
            std::fs::copy(src, &dest).expect("copy the web shell terminal into OUT_DIR");
        } else {
            std::fs::write(&dest, b"").expect("write OUT_DIR");
        }
    }
    println!("cargo:rerun-if-changed={}", Path::new(&dir).display());
    if all {
        println!("cargo:rustc-cfg=bhatti_xterm");
    }
}
