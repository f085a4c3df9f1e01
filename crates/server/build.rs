//! The same build-time test gates as the engine (root, guest artifacts,
//! dockerd): one definition, so both crates skip or run their real-engine
//! suites alike. Plus the server's own: `bhatti_schemathesis` when
//! `BHATTI_SCHEMATHESIS` names the `st` binary of a schemathesis install
//! (scripts/test.sh makes one in a venv), for the API contract suite.

#[path = "../engine/build.rs"]
mod gates;

fn main() {
    gates::main();
    println!("cargo:rustc-check-cfg=cfg(bhatti_schemathesis)");
    println!("cargo:rerun-if-env-changed=BHATTI_SCHEMATHESIS");
    if std::env::var_os("BHATTI_SCHEMATHESIS").is_some_and(|p| std::path::Path::new(&p).is_file()) {
        println!("cargo:rustc-cfg=bhatti_schemathesis");
    }
}
