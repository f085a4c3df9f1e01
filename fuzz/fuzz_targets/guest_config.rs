//! The config drive's `config.json` (`GuestConfig`), parsed by lohar at boot
//! with `serde_json::from_slice` (crates/lohar/src/guest/config.rs) and
//! written by the engine with `serde_json::to_vec_pretty`.
//!
//! Checked: parsing never panics; a config that parses serializes (compact
//! and pretty) to JSON that parses back to the same config.
#![no_main]

use bhatti_protocol::config::GuestConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = serde_json::from_slice::<GuestConfig>(data) else {
        return;
    };
    let pretty = serde_json::to_vec_pretty(&cfg).expect("a parsed config serializes");
    let back: GuestConfig = serde_json::from_slice(&pretty).expect("written config parses");
    assert_eq!(back, cfg, "pretty round trip");
    let compact = serde_json::to_vec(&cfg).expect("a parsed config serializes");
    let back: GuestConfig = serde_json::from_slice(&compact).expect("written config parses");
    assert_eq!(back, cfg, "compact round trip");
});
