//! The same build-time test gates as the engine (root, guest artifacts,
//! dockerd): one definition, so both crates skip or run their real-engine
//! suites alike.

#[path = "../engine/build.rs"]
mod gates;

fn main() {
    gates::main();
}
