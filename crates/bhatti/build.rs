//! The same build-time test gates as the engine (root, guest artifacts,
//! dockerd), so the CLI's daemon suites skip or run alike, plus the
//! package test's (`bhatti_package`).

#[path = "../engine/build.rs"]
mod gates;

fn main() {
    gates::main();
    // The package test: root, the .deb and a clean root's tarball.
    println!("cargo:rustc-check-cfg=cfg(bhatti_package)");
    println!("cargo:rerun-if-env-changed=BHATTI_DEB");
    println!("cargo:rerun-if-env-changed=BHATTI_DIST_ROOT");
    let file = |v: &str| std::env::var_os(v).is_some_and(|p| std::path::Path::new(&p).is_file());
    if gates::is_root() && file("BHATTI_DEB") && file("BHATTI_DIST_ROOT") {
        println!("cargo:rustc-cfg=bhatti_package");
    }
}
