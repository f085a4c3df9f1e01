//! The same build-time test gates as the engine (root, guest artifacts,
//! dockerd), so the CLI's daemon suites skip or run alike.

#[path = "../engine/build.rs"]
mod gates;

fn main() {
    gates::main();
}
