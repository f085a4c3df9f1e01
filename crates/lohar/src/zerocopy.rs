//! File content between the socket and the disk without passing through the
//! agent's buffers: a whole-file read goes out with sendfile(2), a write's
//! content comes in with splice(2).
//!
//! Copying through the agent costs two copies per byte in each direction
//! (file → buffer → socket, socket → buffer → file) plus the hand-offs
//! between the async task and the disk thread. sendfile moves the page
//! cache's pages to the socket; splice moves the socket's pages into a pipe
//! and from there into the file, so the agent's side makes one copy (into
//! the file's pages) or none.
//!
//! Frames stay frames. A read gives each chunk its header, then exactly the
//! bytes that header announces; the socket is lent by the writer task
//! ([`crate::wire::Lent`]) so nothing else writes between the two. A write's
//! STDIN frames are parsed on the disk thread, which reads each header and
//! splices exactly the payload it announces, never a byte past the write.
//!
//! A file that shrinks under a read ends its frame with zeros, so the
//! stream stays at a frame boundary, and the read then fails with a plain
//! error. A filesystem (or socket) that cannot splice is copied instead.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use bhatti_protocol::messages::ErrorCode;
use bhatti_protocol::{frame_header, parse_frame_header, MsgType, FRAME_OVERHEAD};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, SpliceFFlags};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::MsgFlags;

use crate::fail::Fail;

/// Payload bytes per frame of a read.
pub(crate) const FRAME: usize = bhatti_protocol::FILE_STREAM_CHUNK;

/// More of the frame follows (nix names no MSG_MORE): TCP holds a header
/// back for the payload instead of sending it alone.
const MSG_MORE: MsgFlags = MsgFlags::from_bits_retain(libc::MSG_MORE);

/// How a transfer ended early.
#[derive(Debug)]
pub(crate) enum Cut {
    /// The file failed or shrank; the stream is at a frame boundary and the
    /// host can be told why.
    File(io::Error),
    /// The socket failed (the host went away): the stream may end inside a
    /// frame, and must be closed.
    Socket(io::Error),
}

/// Sends `size` bytes of `file`, from its current offset, as STDOUT frames
/// on `sock` (a non-blocking socket: a full one is waited for).
pub(crate) fn frames(sock: BorrowedFd<'_>, file: &File, size: u64) -> Result<(), Cut> {
    send(sock, file, size, false)
}

/// [`frames`]; `copy`: copy from the start (set once the file's filesystem
/// turns out not to splice).
fn send(sock: BorrowedFd<'_>, file: &File, size: u64, mut copy: bool) -> Result<(), Cut> {
    let mut left = size;
    // The copying fallback's buffer, made on its first use.
    let mut scratch = Vec::new();
    while left > 0 {
        // Bounded by FRAME, so it fits usize.
        let len = usize::try_from(left.min(FRAME as u64)).unwrap_or(FRAME);
        let header = frame_header(MsgType::Stdout as u8, len)
            .map_err(|e| Cut::File(io::Error::other(e.to_string())))?;
        send_all(sock, &header, MSG_MORE).map_err(Cut::Socket)?;
        let mut sent = 0usize;
        while sent < len {
            let want = len.saturating_sub(sent);
            let moved = if copy {
                copy_out(sock, file, want, &mut scratch)
            } else {
                sendfile_some(sock, file, want)
            };
            match moved {
                Ok(0) => {
                    pad(sock, want).map_err(Cut::Socket)?;
                    return Err(Cut::File(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the file shrank during the read, {} bytes short",
                            left.saturating_sub(sent as u64)
                        ),
                    )));
                }
                Ok(n) => sent = sent.saturating_add(n),
                Err(Step::Unsupported) => copy = true,
                Err(Step::Socket(e)) => return Err(Cut::Socket(e)),
                Err(Step::File(e)) => {
                    pad(sock, want).map_err(Cut::Socket)?;
                    return Err(Cut::File(e));
                }
            }
        }
        left = left.saturating_sub(len as u64);
    }
    Ok(())
}

/// Why one step of a transfer, either way, moved nothing.
enum Step {
    /// The file or the socket cannot splice: copy instead.
    Unsupported,
    File(io::Error),
    Socket(io::Error),
}

/// The copying fallback's buffer for a step of up to `want` bytes: at most
/// a frame, allocated once per transfer.
fn scratch(buf: &mut Vec<u8>, want: usize) -> &mut [u8] {
    if buf.is_empty() {
        buf.resize(FRAME, 0);
    }
    let n = want.min(buf.len());
    &mut buf[..n]
}

/// One sendfile(2) of up to `want` bytes from the file's offset; 0 at the
/// end of the file.
fn sendfile_some(sock: BorrowedFd<'_>, file: &File, want: usize) -> Result<usize, Step> {
    loop {
        match nix::sys::sendfile::sendfile(sock, file.as_fd(), None, want) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => writable(sock).map_err(Step::Socket)?,
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                return Err(Step::Unsupported)
            }
            Err(e) if socket_errno(e) => return Err(Step::Socket(e.into())),
            Err(e) => return Err(Step::File(e.into())),
        }
    }
}

/// The copying fallback: one read(2) of up to `want` bytes, sent whole.
fn copy_out(
    sock: BorrowedFd<'_>,
    file: &File,
    want: usize,
    buf: &mut Vec<u8>,
) -> Result<usize, Step> {
    let buf = scratch(buf, want);
    let n = loop {
        match io::Read::read(&mut &*file, buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Step::File(e)),
        }
    };
    send_all(sock, buf.get(..n).unwrap_or_default(), MsgFlags::empty()).map_err(Step::Socket)?;
    Ok(n)
}

/// Errors that come from the socket side of a sendfile(2).
fn socket_errno(e: Errno) -> bool {
    matches!(
        e,
        Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN | Errno::ESHUTDOWN | Errno::EBADF
    )
}

/// Completes a frame the file could not fill.
fn pad(sock: BorrowedFd<'_>, mut n: usize) -> io::Result<()> {
    let zeros = [0u8; 4096];
    while n > 0 {
        let k = n.min(zeros.len());
        send_all(sock, zeros.get(..k).unwrap_or_default(), MSG_MORE)?;
        n = n.saturating_sub(k);
    }
    Ok(())
}

/// send(2)s all of `buf`, waiting while the socket is full. MSG_NOSIGNAL:
/// a host gone away is an error, not a signal.
fn send_all(sock: BorrowedFd<'_>, mut buf: &[u8], flags: MsgFlags) -> io::Result<()> {
    while !buf.is_empty() {
        match nix::sys::socket::send(sock.as_raw_fd(), buf, flags | MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => writable(sock)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Waits until the socket takes more bytes, or fails.
fn writable(sock: BorrowedFd<'_>) -> io::Result<()> {
    wait(sock, PollFlags::POLLOUT)
}

/// Waits until the socket has bytes (or its end) to read.
fn readable(sock: BorrowedFd<'_>) -> io::Result<()> {
    wait(sock, PollFlags::POLLIN)
}

fn wait(sock: BorrowedFd<'_>, want: PollFlags) -> io::Result<()> {
    loop {
        let mut fds = [PollFd::new(sock, want)];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let got = fds[0].revents().unwrap_or(PollFlags::empty());
                if want == PollFlags::POLLOUT
                    && got.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
                    && !got.contains(PollFlags::POLLOUT)
                {
                    return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                }
                return Ok(());
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Pipe capacity asked for a write's splices: a whole frame's payload fits,
/// so each frame takes one splice in and one out. A kernel that refuses
/// keeps the default (64 KiB) and the frame takes more turns.
const PIPE_SIZE: usize = 1 << 20;

/// A write's content still to come: the bytes the connection's reader had
/// already buffered past the request, then the socket itself.
pub(crate) struct Incoming {
    /// A duplicate of the connection's socket (non-blocking, like it): the
    /// disk thread owns it, so it stays open however the connection's task
    /// ends.
    sock: OwnedFd,
    prefix: Vec<u8>,
    /// How much of `prefix` was used.
    at: usize,
}

impl Incoming {
    pub(crate) fn new(sock: RawFd, prefix: Vec<u8>) -> io::Result<Incoming> {
        // SAFETY: the caller's connection holds `sock` open for this call.
        let borrowed = unsafe { BorrowedFd::borrow_raw(sock) };
        Ok(Incoming {
            sock: borrowed.try_clone_to_owned()?,
            prefix,
            at: 0,
        })
    }

    /// Up to `max` of the bytes the connection's reader held, taken.
    fn take_held(&mut self, max: usize) -> &[u8] {
        let rest = self.prefix.get(self.at..).unwrap_or_default();
        let n = rest.len().min(max);
        let start = self.at;
        self.at = start.saturating_add(n);
        self.prefix.get(start..self.at).unwrap_or_default()
    }

    /// Fills `buf` whole; `Ok(false)`: the stream ended first.
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let held = self.take_held(buf.len());
        let mut filled = held.len();
        buf[..filled].copy_from_slice(held);
        while filled < buf.len() {
            match nix::unistd::read(self.sock.as_raw_fd(), &mut buf[filled..]) {
                Ok(0) => return Ok(false),
                Ok(n) => filled = filled.saturating_add(n),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => readable(self.sock.as_fd())?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }
}

/// Receives a write's content, `size` bytes in STDIN frames, into `file`
/// (on the disk thread, with the user's credentials). `shown`: the path as
/// the host named it, for errors.
pub(crate) fn receive(inc: Incoming, file: &File, size: u64, shown: &str) -> Result<(), Fail> {
    receive_with(inc, file, size, shown, false)
}

/// [`receive`]; `copy`: copy from the start (set once the socket or the
/// file turns out not to splice).
fn receive_with(
    mut inc: Incoming,
    file: &File,
    size: u64,
    shown: &str,
    mut copy: bool,
) -> Result<(), Fail> {
    let mut pipe: Option<Pipe> = None;
    // The copying fallback's buffer, made on its first use.
    let mut scratch = Vec::new();
    let mut got: u64 = 0;
    let mut header = [0u8; FRAME_OVERHEAD];
    let closed = |got: u64| Fail::from(format!("connection closed after {got} of {size} bytes"));
    let net = |e: io::Error| Fail::from(format!("read content: {e}"));
    let disk = |e: io::Error| Fail::io(format!("write {shown}"), &e);
    while got < size {
        if !inc.read_exact(&mut header).map_err(net)? {
            return Err(closed(got));
        }
        let (kind, payload) =
            parse_frame_header(&header).map_err(|e| Fail::from(format!("read content: {e}")))?;
        match MsgType::from_u8(kind) {
            Some(MsgType::Stdin) => {}
            Some(MsgType::Kill) => return Err("write cancelled".into()),
            _ => {
                return Err(Fail::invalid(format!(
                    "unexpected frame type 0x{kind:02x} during file write"
                )))
            }
        }
        got = match got.checked_add(payload as u64) {
            Some(g) if g <= size => g,
            _ => {
                return Err(Fail::new(
                    ErrorCode::TooLarge,
                    format!("received more than the declared {size} bytes"),
                ))
            }
        };
        // What the connection's reader already holds goes first.
        let held = inc.take_held(payload);
        write_file(file, held).map_err(disk)?;
        let mut left = payload.saturating_sub(held.len());
        while left > 0 {
            let moved = if copy {
                copy_in(&inc.sock, file, left, &mut scratch)
            } else {
                let p = match pipe.as_ref() {
                    Some(p) => p,
                    None => match Pipe::new() {
                        Ok(p) => pipe.insert(p),
                        Err(_) => {
                            copy = true;
                            continue;
                        }
                    },
                };
                splice_in(&inc.sock, p, file, left, &mut copy, &mut scratch)
            };
            match moved {
                Ok(0) => return Err(closed(got.saturating_sub(left as u64))),
                Ok(n) => left = left.saturating_sub(n),
                Err(Step::Unsupported) => copy = true,
                Err(Step::Socket(e)) => return Err(net(e)),
                Err(Step::File(e)) => return Err(disk(e)),
            }
        }
    }
    Ok(())
}

/// The pipe a write's content passes through between socket and file.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Best effort: the default size works, in more turns.
        let size = libc::c_int::try_from(PIPE_SIZE).unwrap_or(libc::c_int::MAX);
        let _ = nix::fcntl::fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size));
        Ok(Pipe { r, w })
    }
}

/// Moves up to `want` bytes from the socket into the file through the pipe
/// (which is empty before and after); 0 at the end of the stream.
/// `copy` is set when the file turns out not to take splices (what the
/// pipe holds then is copied out through `buf`).
fn splice_in(
    sock: &OwnedFd,
    pipe: &Pipe,
    file: &File,
    want: usize,
    copy: &mut bool,
    buf: &mut Vec<u8>,
) -> Result<usize, Step> {
    let n = loop {
        match nix::fcntl::splice(
            sock,
            None,
            &pipe.w,
            None,
            want.min(PIPE_SIZE),
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        ) {
            Ok(n) => break n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => readable(sock.as_fd()).map_err(Step::Socket)?,
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                return Err(Step::Unsupported)
            }
            Err(e) => return Err(Step::Socket(e.into())),
        }
    };
    let mut left = n;
    while left > 0 {
        match nix::fcntl::splice(&pipe.r, None, file, None, left, SpliceFFlags::SPLICE_F_MOVE) {
            Ok(0) => return Err(Step::File(io::Error::from(io::ErrorKind::WriteZero))),
            Ok(k) => left = left.saturating_sub(k),
            Err(Errno::EINTR) => {}
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                // The file cannot take a splice: copy out what the pipe
                // holds, and copy from now on.
                drain(&pipe.r, file, left, buf)?;
                *copy = true;
                return Ok(n);
            }
            Err(e) => return Err(Step::File(e.into())),
        }
    }
    Ok(n)
}

/// Copies the `n` bytes the pipe holds into the file.
fn drain(pipe: &OwnedFd, file: &File, mut n: usize, buf: &mut Vec<u8>) -> Result<(), Step> {
    while n > 0 {
        let buf = scratch(buf, n);
        let k = match nix::unistd::read(pipe.as_raw_fd(), buf) {
            Ok(0) => return Err(Step::File(io::Error::from(io::ErrorKind::UnexpectedEof))),
            Ok(k) => k,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(Step::File(e.into())),
        };
        write_file(file, &buf[..k]).map_err(Step::File)?;
        n = n.saturating_sub(k);
    }
    Ok(())
}

/// The copying fallback: one read(2) of up to `want` bytes from the
/// socket, written to the file; 0 at the end of the stream.
fn copy_in(sock: &OwnedFd, file: &File, want: usize, buf: &mut Vec<u8>) -> Result<usize, Step> {
    let buf = scratch(buf, want);
    let n = loop {
        match nix::unistd::read(sock.as_raw_fd(), buf) {
            Ok(n) => break n,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => readable(sock.as_fd()).map_err(Step::Socket)?,
            Err(e) => return Err(Step::Socket(e.into())),
        }
    };
    write_file(file, &buf[..n]).map_err(Step::File)?;
    Ok(n)
}

/// Appends at the file's offset (a fresh temp file, written in order).
fn write_file(file: &File, buf: &[u8]) -> io::Result<()> {
    let mut w = file;
    w.write_all(buf)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::arithmetic_side_effects)] // test data of known, small sizes
mod tests {
    use super::*;
    use std::io::Seek;
    use std::os::unix::net::UnixStream;

    fn read_frames(mut r: UnixStream) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(f) = bhatti_protocol::read_frame(&mut r).unwrap() {
            out.push((f.kind, f.payload));
        }
        out
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile_in_tmp();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    }

    fn tempfile_in_tmp() -> File {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "lohar-sendfile-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn a_file_goes_out_as_whole_frames() {
        // Three frames and a partial one, through a socket far smaller than
        // the file, so sends meet a full socket and wait.
        let data: Vec<u8> = (0..(3 * FRAME + 1000)).map(|i| (i % 251) as u8).collect();
        let f = file_of(&data);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let reader = std::thread::spawn(move || read_frames(b));
        frames(a.as_fd(), &f, data.len() as u64).unwrap();
        drop(a);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|(k, _)| *k == MsgType::Stdout as u8));
        assert_eq!(
            got.iter().map(|(_, p)| p.len()).collect::<Vec<_>>(),
            [FRAME, FRAME, FRAME, 1000]
        );
        let joined: Vec<u8> = got.into_iter().flat_map(|(_, p)| p).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn a_shrunk_file_ends_its_frame_and_fails() {
        // The size announced is larger than the file: the last frame is
        // completed with zeros and the error says the file shrank.
        let data = vec![7u8; FRAME + 10];
        let f = file_of(&data);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let reader = std::thread::spawn(move || read_frames(b));
        let err = frames(a.as_fd(), &f, (2 * FRAME) as u64).unwrap_err();
        drop(a);
        match err {
            Cut::File(e) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                assert!(e.to_string().contains("shrank"), "{e}");
            }
            Cut::Socket(e) => panic!("socket error: {e}"),
        }
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, vec![7u8; FRAME]);
        let mut last = vec![7u8; 10];
        last.resize(FRAME, 0);
        assert_eq!(got[1].1, last);
    }

    #[test]
    fn a_closed_socket_is_a_socket_error() {
        let f = file_of(&vec![1u8; 4 * FRAME]);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        drop(b);
        match frames(a.as_fd(), &f, (4 * FRAME) as u64) {
            Err(Cut::Socket(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected a socket error, got {other:?}"),
        }
    }

    #[test]
    fn the_copying_fallback_sends_the_same_frames() {
        let data: Vec<u8> = (0..(FRAME + 77)).map(|i| (i % 13) as u8).collect();
        let f = file_of(&data);
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let reader = std::thread::spawn(move || read_frames(b));
        send(a.as_fd(), &f, data.len() as u64, true).unwrap();
        drop(a);
        let got = reader.join().unwrap();
        assert_eq!(
            got.iter().map(|(_, p)| p.len()).collect::<Vec<_>>(),
            [FRAME, 77]
        );
        let joined: Vec<u8> = got.into_iter().flat_map(|(_, p)| p).collect();
        assert_eq!(joined, data);
    }

    /// A write's content, sent by a thread: `prefix` is what the
    /// connection's reader already held, `rest` what is still in the socket.
    fn receive_bytes(
        prefix: &[u8],
        rest: Vec<u8>,
        size: u64,
        copy: bool,
    ) -> (Result<(), Fail>, Vec<u8>) {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let sender = std::thread::spawn(move || {
            // Slowly, in pieces, so the receiver meets an empty socket.
            for piece in rest.chunks(100_000) {
                if b.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        let file = tempfile_in_tmp();
        let inc = Incoming::new(a.as_raw_fd(), prefix.to_vec()).unwrap();
        drop(a);
        let res = receive_with(inc, &file, size, "/x", copy);
        sender.join().unwrap();
        let mut out = Vec::new();
        let mut f = &file;
        f.rewind().unwrap();
        std::io::Read::read_to_end(&mut f, &mut out).unwrap();
        (res, out)
    }

    fn stdin(payload: &[u8]) -> Vec<u8> {
        bhatti_protocol::encode_frame(MsgType::Stdin as u8, payload).unwrap()
    }

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 241) as u8).collect()
    }

    #[test]
    fn content_the_reader_held_lands_first() {
        for copy in [false, true] {
            let data = content(700_000);
            let mut wire = stdin(&data[..400_000]);
            wire.extend(stdin(&data[400_000..]));
            // The reader held the first header and part of its payload.
            let (prefix, rest) = wire.split_at(1000);
            let (res, out) = receive_bytes(prefix, rest.to_vec(), data.len() as u64, copy);
            res.unwrap();
            assert!(
                out == data,
                "copy={copy}: the file differs from what was sent"
            );
        }
    }

    #[test]
    fn a_prefix_may_hold_whole_frames_and_part_of_a_header() {
        let data = content(3000);
        let mut wire = stdin(&data[..1000]);
        wire.extend(stdin(&data[1000..]));
        let (prefix, rest) = wire.split_at(1000 + FRAME_OVERHEAD + 2);
        let (res, out) = receive_bytes(prefix, rest.to_vec(), 3000, false);
        res.unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn a_kill_cancels_the_write() {
        let mut wire = stdin(&content(10));
        wire.extend(bhatti_protocol::encode_frame(MsgType::Kill as u8, b"").unwrap());
        let (res, _) = receive_bytes(&[], wire, 100, false);
        assert_eq!(res.unwrap_err().message, "write cancelled");
    }

    #[test]
    fn more_than_declared_is_refused_as_too_large() {
        let wire = stdin(&content(200));
        let (res, _) = receive_bytes(&[], wire, 100, false);
        let e = res.unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(e.message.contains("declared 100 bytes"), "{}", e.message);
    }

    #[test]
    fn a_stream_that_ends_early_says_how_far_it_got() {
        for copy in [false, true] {
            let mut wire = stdin(&content(300));
            // A frame announcing 500 bytes that brings 100.
            let cut = stdin(&content(500));
            wire.extend(&cut[..FRAME_OVERHEAD + 100]);
            let (res, _) = receive_bytes(&[], wire, 1000, copy);
            let e = res.unwrap_err();
            assert!(
                e.message.starts_with("connection closed after"),
                "copy={copy}: {}",
                e.message
            );
            assert!(e.message.ends_with("of 1000 bytes"), "{}", e.message);
        }
    }

    #[test]
    fn other_frames_are_refused() {
        let wire = bhatti_protocol::encode_frame(MsgType::Stdout as u8, b"x").unwrap();
        let (res, _) = receive_bytes(&[], wire, 10, false);
        let e = res.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidInput);
        assert!(e.message.contains("unexpected frame type"), "{}", e.message);
    }
}
