//! Generates the message types and service traits from `proto/` (needs
//! `protoc`, which `scripts/setup-host.sh` installs).
fn main() {
    let files = [
        "proto/process/process.proto",
        "proto/filesystem/filesystem.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    if let Err(e) = connectrpc_build::Config::new()
        .files(&files)
        .includes(&["proto/"])
        .include_file("_connectrpc.rs")
        .compile()
    {
        panic!("generating the envd services from proto/ (is protoc installed?): {e:#}");
    }
}
