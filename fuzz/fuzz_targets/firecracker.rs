//! The Firecracker API client's handling of responses
//! (crates/engine/src/vmm/firecracker/api.rs).
//!
//! Input: one selector byte, then either
//! - even selector: a big-endian `u16` status and a body, through
//!   `parse_response` (status, fault message, JSON) and `decode_response`
//!   (into `InstanceInfo`), or
//! - odd selector: the raw bytes of an HTTP response on the API socket, through
//!   the client's whole exchange (`exchange_on`, hyper over an in-memory
//!   stream), so the HTTP framing, the body limit and the decoding run as in
//!   production.
//!
//! Checked: nothing panics or hangs; a 2xx JSON body comes back as that JSON,
//! an empty one as `None`; an error status becomes `VmmError::Command` with
//! a non-empty, bounded message.
#![no_main]

use std::sync::LazyLock;

use bhatti_engine::vmm::firecracker::rest::{
    decode_response, exchange_on, parse_response, ActionType, ApiRequest, InstanceInfo,
};
use bhatti_engine::vmm::VmmError;
use hyper::StatusCode;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
});

fn check_parsed(status: StatusCode, body: &[u8]) {
    let r = parse_response("GET /", status, body);
    match (&r, status.is_success()) {
        (Ok(None), true) => assert!(body.iter().all(u8::is_ascii_whitespace)),
        (Ok(Some(v)), true) => {
            assert_eq!(
                Some(v),
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .as_ref()
            );
        }
        (Err(VmmError::Protocol(m)), true) => {
            assert!(
                serde_json::from_slice::<serde_json::Value>(body).is_err(),
                "{m}"
            )
        }
        (Err(VmmError::Command { class, desc, .. }), false) => {
            assert_eq!(class, &format!("HTTP {status}"));
            assert!(!desc.trim().is_empty(), "empty error description");
            assert!(desc.chars().count() <= 2000, "unbounded error description");
        }
        (other, ok) => panic!("status {status} (success: {ok}) gave {other:?}"),
    }
    if let Ok(v) = r {
        if let Ok(info) = decode_response::<InstanceInfo>("GET /", v) {
            drop(info.state);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        let [a, b, body @ ..] = rest else { return };
        if let Ok(status) = StatusCode::from_u16(u16::from_be_bytes([*a, *b])) {
            check_parsed(status, body);
        }
        return;
    }
    let req = if sel & 2 == 0 {
        ApiRequest::instance_info()
    } else {
        ApiRequest::action(ActionType::InstanceStart)
    };
    RT.block_on(async {
        // Room for the whole response and the request: nothing blocks.
        let (client, mut server) = tokio::io::duplex(rest.len() + 64 * 1024);
        server.write_all(rest).await.unwrap();
        server.shutdown().await.unwrap();
        let r = exchange_on(client, &req).await;
        drop(server);
        match r {
            Ok(Some(v)) => {
                let _ = decode_response::<InstanceInfo>("GET /", Some(v));
            }
            Ok(None) => {}
            Err(e) => drop(e.to_string()),
        }
    });
});
