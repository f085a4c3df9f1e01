//! The frame codec: `[u32 BE length][u8 type][payload]`.
//!
//! Writers assemble a whole frame in one buffer and hand it to the transport in
//! one write call, so concurrent writers sharing a socket never interleave partial
//! frames. Readers distinguish a clean end of stream (no byte of a new frame read)
//! from an unexpected one (a partial header or body), and reject oversize or empty
//! frames instead of truncating them.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{MsgType, ProtocolError, Result, HEADER_LEN, MAX_FRAME_LEN};

/// One decoded frame. `kind` stays a raw byte so unknown types can be skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte (see [`MsgType`]), possibly one this build does not know.
    pub kind: u8,
    /// The bytes after the type byte; at most [`crate::MAX_PAYLOAD_LEN`] long.
    pub payload: Vec<u8>,
}

impl Frame {
    pub(crate) fn new(kind: MsgType, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            kind: kind.into(),
            payload: payload.into(),
        }
    }

    /// A frame whose payload is `v` encoded as JSON.
    pub fn json<T: Serialize + ?Sized>(kind: MsgType, v: &T) -> Result<Frame> {
        Ok(Frame::new(kind, serde_json::to_vec(v)?))
    }

    /// The known message type, if any.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u8(self.kind)
    }

    /// True when the frame is of type `t`.
    pub fn is(&self, t: MsgType) -> bool {
        self.kind == t as u8
    }

    /// Decodes the payload as JSON.
    pub fn parse_json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    /// The payload as (lossy) UTF-8, for ERROR frames.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The whole frame, header included, ready for one write call.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode_frame(self.kind, &self.payload)
    }
}

/// Checks a length prefix read off the wire; returns the payload length it
/// announces (the length minus the type byte).
pub(crate) fn check_len(len: usize) -> Result<usize> {
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    len.checked_sub(1).ok_or(ProtocolError::EmptyFrame)
}

/// Encodes one frame into a fresh buffer. Fails (never truncates) when the payload
/// does not fit under the 1 MiB cap.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Result<Vec<u8>> {
    // A slice holds at most isize::MAX bytes, so neither sum can saturate.
    let len = payload.len().saturating_add(1);
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    let mut buf = Vec::with_capacity(HEADER_LEN.saturating_add(len));
    // len ≤ MAX_FRAME_LEN (checked above), far below u32::MAX.
    #[allow(clippy::cast_possible_truncation)]
    let wire_len = len as u32;
    buf.extend_from_slice(&wire_len.to_be_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
    Ok(buf)
}

/// Bytes a frame puts before its payload: the length prefix and the type byte.
pub const FRAME_OVERHEAD: usize = HEADER_LEN + 1;

/// Completes a frame built in place: `buf` holds [`FRAME_OVERHEAD`] bytes of
/// room, then the payload (read there directly, from a file say), and gets
/// its length prefix and type byte. It spares big transfers the copy
/// [`encode_frame`] makes of a payload that already sits in a buffer.
pub fn seal_frame(kind: u8, buf: &mut [u8]) -> Result<()> {
    if buf.len() < FRAME_OVERHEAD {
        return Err(ProtocolError::EmptyFrame);
    }
    let header = frame_header(kind, buf.len().saturating_sub(FRAME_OVERHEAD))?;
    buf[..FRAME_OVERHEAD].copy_from_slice(&header);
    Ok(())
}

/// The bytes before a frame's payload of `payload_len` bytes, for a payload
/// that goes out on its own (sendfile(2) from a file, say).
pub fn frame_header(kind: u8, payload_len: usize) -> Result<[u8; FRAME_OVERHEAD]> {
    // A payload length near usize::MAX saturates, and is refused as too large.
    let len = payload_len.saturating_add(1);
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    // len ≤ MAX_FRAME_LEN (checked above), far below u32::MAX.
    #[allow(clippy::cast_possible_truncation)]
    let wire_len = len as u32;
    let mut header = [0u8; FRAME_OVERHEAD];
    header[..HEADER_LEN].copy_from_slice(&wire_len.to_be_bytes());
    header[HEADER_LEN] = kind;
    Ok(header)
}

/// The type and payload length a frame's header announces (the twin of
/// [`frame_header`]), for a reader that takes the payload on its own (a
/// splice into a file, say). Lengths over the cap, and frames without a
/// type byte, are refused as [`read_frame`] refuses them.
pub fn parse_frame_header(header: &[u8; FRAME_OVERHEAD]) -> Result<(u8, usize)> {
    let mut len = [0u8; HEADER_LEN];
    len.copy_from_slice(&header[..HEADER_LEN]);
    let payload_len = check_len(u32::from_be_bytes(len) as usize)?;
    Ok((header[HEADER_LEN], payload_len))
}

/// Writes one frame with a single `write_all` of the assembled buffer.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, kind: u8, payload: &[u8]) -> Result<()> {
    let buf = encode_frame(kind, payload)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Reads exactly `buf.len()` bytes; returns how many were read before EOF.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            // k ≤ buf.len() - n for a correct reader, so this cannot saturate;
            // an overcount from a broken one ends the loop as a wrong length.
            Ok(k) => n = n.saturating_add(k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads one frame. `Ok(None)` is a clean end of stream (no byte of a new frame);
/// a partial header or body is [`ProtocolError::UnexpectedEof`].
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<Option<Frame>> {
    let mut hdr = [0u8; HEADER_LEN];
    match read_full(r, &mut hdr)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        _ => return Err(ProtocolError::UnexpectedEof),
    }
    let payload_len = check_len(u32::from_be_bytes(hdr) as usize)?;
    let mut kind = [0u8; 1];
    if read_full(r, &mut kind)? != 1 {
        return Err(ProtocolError::UnexpectedEof);
    }
    let mut payload = vec![0u8; payload_len];
    if read_full(r, &mut payload)? != payload_len {
        return Err(ProtocolError::UnexpectedEof);
    }
    Ok(Some(Frame {
        kind: kind[0],
        payload,
    }))
}

/// Where a complete frame sits inside a buffer, as found by [`try_parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedFrame {
    /// The message type byte.
    pub kind: u8,
    /// Offset of the payload's first byte within the buffer handed to `try_parse`.
    pub payload_start: usize,
    /// Offset just past the payload's last byte (exclusive end).
    pub payload_end: usize,
    /// Bytes the frame occupies (header included): drop this many to get to the next.
    pub consumed: usize,
}

impl ParsedFrame {
    /// The payload, sliced out of the same buffer that was handed to [`try_parse`].
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.payload_start..self.payload_end]
    }
}

/// Looks for one complete frame at the start of `buf` without blocking or copying.
/// `Ok(None)` means more bytes are needed; an invalid length is an error as soon as
/// the header is visible.
pub fn try_parse(buf: &[u8]) -> Result<Option<ParsedFrame>> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    check_len(len)?;
    // len ≤ MAX_FRAME_LEN after check_len, so this cannot saturate.
    let total = HEADER_LEN.saturating_add(len);
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(ParsedFrame {
        kind: buf[HEADER_LEN],
        payload_start: HEADER_LEN + 1,
        payload_end: total,
        consumed: total,
    }))
}

/// RESIZE payload: `u16 rows, u16 cols`, big-endian.
pub fn encode_resize(rows: u16, cols: u16) -> [u8; 4] {
    let r = rows.to_be_bytes();
    let c = cols.to_be_bytes();
    [r[0], r[1], c[0], c[1]]
}

/// Decodes a RESIZE payload. Peers ignore payloads shorter than 4 bytes, so this
/// reports them as an error for the caller to skip; extra bytes are ignored.
pub fn decode_resize(p: &[u8]) -> Result<(u16, u16)> {
    if p.len() < 4 {
        return Err(ProtocolError::BadPayload {
            what: "RESIZE",
            expected: 4,
            got: p.len(),
        });
    }
    Ok((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// EXIT payload: `i32` exit code, big-endian.
pub fn encode_exit(code: i32) -> [u8; 4] {
    code.to_be_bytes()
}

/// Decodes an EXIT payload; shorter than 4 bytes is an error, extra bytes are ignored.
pub fn decode_exit(p: &[u8]) -> Result<i32> {
    if p.len() < 4 {
        return Err(ProtocolError::BadPayload {
            what: "EXIT",
            expected: 4,
            got: p.len(),
        });
    }
    Ok(i32::from_be_bytes([p[0], p[1], p[2], p[3]]))
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::arithmetic_side_effects
)] // test data of known, small sizes
mod tests {
    use super::*;
    use crate::messages::ExecRequest;
    use crate::MAX_PAYLOAD_LEN;
    use std::io::Cursor;

    #[test]
    fn a_frame_sealed_in_place_is_the_encoded_frame() {
        let mut buf = vec![0u8; FRAME_OVERHEAD];
        buf.extend_from_slice(b"content");
        seal_frame(MsgType::Stdout as u8, &mut buf).unwrap();
        assert_eq!(
            buf,
            encode_frame(MsgType::Stdout as u8, b"content").unwrap()
        );
        // An empty payload still carries its type byte.
        let mut empty = vec![0u8; FRAME_OVERHEAD];
        seal_frame(MsgType::Exit as u8, &mut empty).unwrap();
        assert_eq!(empty, encode_frame(MsgType::Exit as u8, b"").unwrap());
        assert!(matches!(
            seal_frame(1, &mut [0u8; HEADER_LEN]),
            Err(ProtocolError::EmptyFrame)
        ));
        let mut big = vec![0u8; FRAME_OVERHEAD + MAX_PAYLOAD_LEN + 1];
        assert!(matches!(
            seal_frame(1, &mut big),
            Err(ProtocolError::FrameTooLarge(_))
        ));
    }

    #[test]
    fn a_header_alone_is_the_encoded_frame_s_head() {
        let payload = vec![9u8; 70_000];
        let whole = encode_frame(MsgType::Stdout as u8, &payload).unwrap();
        let header = frame_header(MsgType::Stdout as u8, payload.len()).unwrap();
        assert_eq!(header[..], whole[..FRAME_OVERHEAD]);
        assert!(frame_header(1, MAX_PAYLOAD_LEN).is_ok());
        assert!(matches!(
            frame_header(1, MAX_PAYLOAD_LEN + 1),
            Err(ProtocolError::FrameTooLarge(_))
        ));
        assert!(matches!(
            frame_header(1, usize::MAX),
            Err(ProtocolError::FrameTooLarge(_))
        ));
        // And read back.
        assert_eq!(
            parse_frame_header(&header).unwrap(),
            (MsgType::Stdout as u8, payload.len())
        );
        let mut big = [0u8; FRAME_OVERHEAD];
        big[..HEADER_LEN].copy_from_slice(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
        assert!(matches!(
            parse_frame_header(&big),
            Err(ProtocolError::FrameTooLarge(_))
        ));
        assert!(matches!(
            parse_frame_header(&[0u8; FRAME_OVERHEAD]),
            Err(ProtocolError::EmptyFrame)
        ));
    }

    #[test]
    fn round_trip_type_and_payload() {
        let mut buf = Vec::new();
        write_frame(&mut buf, MsgType::Stdout as u8, b"hello").unwrap();
        write_frame(&mut buf, MsgType::Kill as u8, b"").unwrap();
        assert_eq!(&buf[..5], &[0, 0, 0, 6, 0x02]);
        let mut r = Cursor::new(buf);
        let f = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(f, Frame::new(MsgType::Stdout, b"hello".to_vec()));
        let f = read_frame(&mut r).unwrap().unwrap();
        assert!(f.is(MsgType::Kill) && f.payload.is_empty());
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn empty_reader_is_clean_eof() {
        assert!(read_frame(&mut Cursor::new(Vec::<u8>::new()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn partial_header_and_partial_body_are_unexpected_eof() {
        let err = read_frame(&mut Cursor::new(vec![0u8, 0])).unwrap_err();
        assert!(matches!(err, ProtocolError::UnexpectedEof));
        let mut full = encode_frame(2, b"abcdef").unwrap();
        full.truncate(7);
        let err = read_frame(&mut Cursor::new(full)).unwrap_err();
        assert!(matches!(err, ProtocolError::UnexpectedEof));
        // Header only, body missing entirely.
        let err = read_frame(&mut Cursor::new(vec![0u8, 0, 0, 3])).unwrap_err();
        assert!(matches!(err, ProtocolError::UnexpectedEof));
    }

    #[test]
    fn max_size_enforced_on_write_and_read() {
        let ok = vec![7u8; MAX_PAYLOAD_LEN];
        let buf = encode_frame(2, &ok).unwrap();
        assert_eq!(buf.len(), HEADER_LEN + MAX_FRAME_LEN);
        let f = read_frame(&mut Cursor::new(buf)).unwrap().unwrap();
        assert_eq!(f.payload.len(), MAX_PAYLOAD_LEN);

        let too_big = vec![7u8; MAX_PAYLOAD_LEN + 1];
        let mut out = Vec::new();
        let err = write_frame(&mut out, 2, &too_big).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge(n) if n == MAX_FRAME_LEN + 1));
        assert!(
            out.is_empty(),
            "nothing may be written for a rejected frame"
        );

        let mut hdr = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        hdr.push(2);
        let err = read_frame(&mut Cursor::new(hdr)).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge(_)));
        let huge = u32::MAX.to_be_bytes().to_vec();
        assert!(matches!(
            read_frame(&mut Cursor::new(huge)).unwrap_err(),
            ProtocolError::FrameTooLarge(_)
        ));
    }

    #[test]
    fn zero_length_is_invalid() {
        let err = read_frame(&mut Cursor::new(vec![0u8, 0, 0, 0, 9])).unwrap_err();
        assert!(matches!(err, ProtocolError::EmptyFrame));
        assert!(matches!(
            try_parse(&[0, 0, 0, 0]).unwrap_err(),
            ProtocolError::EmptyFrame
        ));
    }

    #[test]
    fn try_parse_partial_and_complete() {
        let a = encode_frame(0x02, b"abc").unwrap();
        let b = encode_frame(0x05, &encode_exit(3)).unwrap();
        let mut buf = a.clone();
        buf.extend_from_slice(&b);
        for cut in 0..a.len() {
            assert_eq!(try_parse(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        let p = try_parse(&buf).unwrap().unwrap();
        assert_eq!(p.kind, 0x02);
        assert_eq!(p.payload(&buf), b"abc");
        assert_eq!(p.consumed, a.len());
        let rest = &buf[p.consumed..];
        let q = try_parse(rest).unwrap().unwrap();
        assert_eq!(q.kind, 0x05);
        assert_eq!(decode_exit(q.payload(rest)).unwrap(), 3);
        assert_eq!(q.consumed, rest.len());
        let oversize = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(try_parse(&oversize).is_err());
    }

    #[test]
    fn json_helpers_round_trip() {
        let req = ExecRequest {
            argv: vec!["echo".into(), "hi".into()],
            tty: true,
            rows: 30,
            cols: 100,
            ..Default::default()
        };
        let f = Frame::json(MsgType::ExecReq, &req).unwrap();
        let mut buf = Vec::new();
        write_frame(&mut buf, f.kind, &f.payload).unwrap();
        let g = read_frame(&mut Cursor::new(buf)).unwrap().unwrap();
        assert_eq!(g.msg_type(), Some(MsgType::ExecReq));
        let back: ExecRequest = g.parse_json().unwrap();
        assert_eq!(back.argv, req.argv);
        assert!(back.tty);
        assert_eq!((back.rows, back.cols), (30, 100));
        assert!(Frame::new(MsgType::ExecReq, b"{nope".to_vec())
            .parse_json::<ExecRequest>()
            .is_err());
    }

    #[test]
    fn resize_payload_edges() {
        for (r, c) in [(0, 0), (24, 80), (u16::MAX, u16::MAX), (1, u16::MAX)] {
            assert_eq!(decode_resize(&encode_resize(r, c)).unwrap(), (r, c));
        }
        assert_eq!(encode_resize(0x0102, 0x0304), [1, 2, 3, 4]);
        assert!(decode_resize(&[0, 1, 2]).is_err());
        assert!(decode_resize(&[]).is_err());
    }

    #[test]
    fn exit_payload_edges() {
        for c in [0, 1, 127, 128 + 9, -1, i32::MIN, i32::MAX] {
            assert_eq!(decode_exit(&encode_exit(c)).unwrap(), c);
        }
        assert_eq!(encode_exit(-1), [0xff; 4]);
        assert!(decode_exit(&[0, 0]).is_err());
    }

    #[test]
    fn concurrent_writers_never_interleave() {
        use std::sync::{Arc, Mutex};
        // A writer that accepts every write call whole, like a socket sharing one
        // kernel buffer: the codec must hand each frame over in a single call.
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Shared::default();
        let threads: Vec<_> = (0..2u8)
            .map(|t| {
                let mut w = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u32 {
                        let mut p = vec![t; 1 + (i as usize % 300)];
                        p.extend_from_slice(&i.to_be_bytes());
                        write_frame(&mut w, 0x02 + t, &p).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let buf = sink.0.lock().unwrap().clone();
        let mut r = Cursor::new(buf);
        let mut next = [0u32; 2];
        while let Some(f) = read_frame(&mut r).unwrap() {
            let t = (f.kind - 0x02) as usize;
            let n = f.payload.len();
            let i = u32::from_be_bytes(f.payload[n - 4..].try_into().unwrap());
            assert_eq!(i, next[t], "frames of writer {t} out of order or corrupt");
            assert!(f.payload[..n - 4].iter().all(|&b| b as usize == t));
            assert_eq!(n - 4, 1 + (i as usize % 300));
            next[t] += 1;
        }
        assert_eq!(next, [1000, 1000]);
    }
}
