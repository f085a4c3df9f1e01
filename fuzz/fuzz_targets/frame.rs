//! The frame codec (`bhatti_protocol::frame` and `bhatti_protocol::r#async`)
//! on arbitrary bytes, as a guest (or a host) could send them.
//!
//! Input: one byte choosing how the readers are fed (bytes per read call, and
//! whether the async reader sees `Pending` between reads), then the stream.
//!
//! Checked:
//! - nothing panics;
//! - no single allocation exceeds the 1 MiB frame cap (plus header), whatever
//!   the length prefix says (a capping global allocator aborts otherwise);
//! - `try_parse` reports every strict prefix of a frame as "need more", and a
//!   parsed frame re-encodes to exactly the bytes it was parsed from;
//! - the blocking and the async readers, fed in small chunks, return the
//!   same frames as `try_parse` and end the same way (clean end, partial
//!   frame, empty or oversize length);
//! - the fixed-size payload helpers (RESIZE, EXIT) round-trip, and the JSON
//!   payload types decode without panicking.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use bhatti_protocol::messages::*;
use bhatti_protocol::{
    decode_exit, decode_resize, encode_exit, encode_frame, encode_resize, read_frame, try_parse,
    Frame, MsgType, ProtocolError, HEADER_LEN, MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// The largest single allocation the codec may ever make: one whole frame.
const ALLOC_CAP: usize = HEADER_LEN + MAX_FRAME_LEN;

/// The system allocator, aborting (a crash libFuzzer records) on any single
/// allocation above [`ALLOC_CAP`].
struct Capped;

fn over_cap() -> ! {
    // No allocation here: we are inside the allocator.
    let _ = io::stderr().write_all(b"fuzz: allocation above the 1 MiB frame cap\n");
    std::process::abort()
}

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_CAP {
            over_cap()
        }
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_CAP {
            over_cap()
        }
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > ALLOC_CAP {
            over_cap()
        }
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

/// How a stream of frames ends, as `try_parse` sees it.
#[derive(Debug, PartialEq)]
enum End {
    /// Every byte belongs to a complete frame.
    Clean,
    /// A partial header or body is left.
    Partial,
    Empty,
    TooLarge(usize),
}

fn end_of(e: &ProtocolError) -> End {
    match e {
        ProtocolError::UnexpectedEof => End::Partial,
        ProtocolError::EmptyFrame => End::Empty,
        ProtocolError::FrameTooLarge(n) => End::TooLarge(*n),
        other => panic!("unexpected reader error {other:?}"),
    }
}

/// A blocking reader that hands out at most `chunk` bytes per call.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
    /// Async only: answer `Pending` before every read.
    pending: bool,
    flip: bool,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending {
            self.flip = !self.flip;
            if self.flip {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

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

/// Decodes a payload the way a peer would for its type; only panics count.
fn decode_payload(f: &Frame) {
    let Some(t) = f.msg_type() else { return };
    assert_eq!(u8::from(t), f.kind);
    let p = &f.payload;
    match t {
        MsgType::Resize => {
            if let Ok((r, c)) = decode_resize(p) {
                assert_eq!(encode_resize(r, c), p[..4]);
            }
        }
        MsgType::Exit => {
            if let Ok(code) = decode_exit(p) {
                assert_eq!(encode_exit(code), p[..4]);
            }
        }
        MsgType::Error => drop(f.text()),
        MsgType::ExecReq => drop(f.parse_json::<ExecRequest>()),
        MsgType::ExecListResp => drop(f.parse_json::<Vec<SessionInfo>>()),
        MsgType::SessionInfo => drop(f.parse_json::<SessionInfo>()),
        MsgType::ExecKill => drop(f.parse_json::<ExecKillRequest>()),
        MsgType::ActivityResp => drop(f.parse_json::<ActivityInfo>()),
        MsgType::FileReadReq => drop(f.parse_json::<FileReadRequest>()),
        MsgType::FileReadResp => drop(f.parse_json::<FileReadResponse>()),
        MsgType::FileWriteReq => drop(f.parse_json::<FileWriteRequest>()),
        MsgType::FileStatReq | MsgType::FileLsReq => drop(f.parse_json::<PathRequest>()),
        MsgType::FileStatResp => drop(f.parse_json::<FileInfo>()),
        MsgType::FileLsResp => drop(f.parse_json::<Vec<FileInfo>>()),
        MsgType::FwdReq => drop(f.parse_json::<FwdRequest>()),
        MsgType::FwdResp | MsgType::FileWriteResp => drop(f.parse_json::<StatusResponse>()),
        MsgType::Hello => drop(f.parse_json::<Hello>()),
        MsgType::HelloResp => drop(f.parse_json::<HelloResponse>()),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(mode & 0x7f) + 1;
    let pending = mode & 0x80 != 0;

    // The reference: try_parse over the buffer, frame by frame.
    let mut frames = Vec::new();
    let mut rest = stream;
    let end = loop {
        match try_parse(rest) {
            Ok(Some(p)) => {
                assert_eq!(p.payload_start, HEADER_LEN + 1);
                assert_eq!(p.payload_end, p.consumed);
                assert!(p.consumed <= rest.len());
                assert!(p.consumed - HEADER_LEN <= MAX_FRAME_LEN);
                for cut in 0..p.consumed {
                    assert!(
                        matches!(try_parse(&rest[..cut]), Ok(None)),
                        "a strict prefix ({cut} of {} bytes) of a valid frame must need more",
                        p.consumed
                    );
                }
                let f = Frame {
                    kind: p.kind,
                    payload: p.payload(rest).to_vec(),
                };
                let bytes = &rest[..p.consumed];
                assert_eq!(encode_frame(p.kind, &f.payload).unwrap(), bytes);
                assert_eq!(f.encode().unwrap(), bytes);
                decode_payload(&f);
                frames.push(f);
                rest = &rest[p.consumed..];
            }
            Ok(None) if rest.is_empty() => break End::Clean,
            Ok(None) => break End::Partial,
            Err(e) => break end_of(&e),
        }
    };

    // The blocking reader, fed `chunk` bytes at a time.
    let mut r = Chunked {
        data: stream,
        chunk,
        pending: false,
        flip: false,
    };
    let mut got = 0;
    let sync_end = loop {
        match read_frame(&mut r) {
            Ok(Some(f)) => {
                assert_eq!(Some(&f), frames.get(got), "sync reader, frame {got}");
                got += 1;
            }
            Ok(None) => break End::Clean,
            Err(e) => break end_of(&e),
        }
    };
    assert_eq!(got, frames.len(), "sync reader frame count");
    assert_eq!(sync_end, end, "sync reader end");

    // The async reader, same chunks, optionally with Pending in between.
    let mut r = Chunked {
        data: stream,
        chunk,
        pending,
        flip: false,
    };
    let mut got = 0;
    let async_end = loop {
        match block_on(bhatti_protocol::r#async::read_frame(&mut r)) {
            Ok(Some(f)) => {
                assert_eq!(Some(&f), frames.get(got), "async reader, frame {got}");
                got += 1;
            }
            Ok(None) => break End::Clean,
            Err(e) => break end_of(&e),
        }
    };
    assert_eq!(got, frames.len(), "async reader frame count");
    assert_eq!(async_end, end, "async reader end");
});
