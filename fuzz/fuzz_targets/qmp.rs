//! The QMP client's decoding of what QEMU sends (crates/engine/src/vmm/qemu/qmp.rs):
//! the input is the byte stream of the QMP socket, read line by line with the
//! client's own `read_line`, the first message read as the greeting, every
//! message classified the way the reader task routes it.
//!
//! Checked: nothing panics; the classification agrees with the message (an
//! event's name, a reply's id and `return` value), an event re-serializes to
//! itself, and errors format.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bhatti_engine::vmm::qemu::qmp::{classify, parse_greeting, read_line, QmpEvent, QmpMessage};
use bhatti_engine::vmm::VmmError;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Drives a future whose I/O is all in memory; it must finish.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("in-memory read never finished");
}

fn check(v: Value) {
    let msg = classify(v.clone());
    match &msg {
        QmpMessage::Event(ev) => {
            assert_eq!(v["event"].as_str(), Some(ev.event.as_str()));
            let back: QmpEvent = serde_json::from_value(serde_json::to_value(ev).unwrap()).unwrap();
            assert_eq!(&back, ev);
        }
        QmpMessage::Reply { id, reply } => {
            assert!(v.get("event").is_none());
            assert_eq!(v["id"].as_u64(), Some(*id));
            match (v.get("return"), reply) {
                (Some(r), Ok(got)) => assert_eq!(r, got),
                (None, Err(VmmError::Command { .. })) => assert!(v.get("error").is_some()),
                (None, Err(VmmError::Protocol(_))) => assert!(v.get("error").is_none()),
                (r, other) => panic!("return {r:?} classified as {other:?}"),
            }
            if let Err(e) = reply {
                drop(e.to_string());
            }
        }
        QmpMessage::Ignored(why) => assert!(!why.is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rd = data;
    let mut first = true;
    // Like the client: stop at the first read error or at the end.
    while let Ok(Some(v)) = block_on(read_line(&mut rd)) {
        if first {
            first = false;
            if let Ok(g) = parse_greeting(&v) {
                let major = v["QMP"]["version"]["qemu"]["major"].as_u64();
                if let Some(m) = major.filter(|&m| m <= u64::from(u32::MAX)) {
                    assert_eq!(u64::from(g.major), m);
                }
                assert_eq!(g.package, g.package.trim());
            } else {
                assert!(v.get("QMP").is_none());
            }
        }
        check(v);
    }
});
