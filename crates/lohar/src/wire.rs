//! A connection's frame plumbing: the boxed stream every listener hands
//! over, the single writer task (frames are encoded once and written whole,
//! so they never interleave; a file read may borrow its socket between two
//! frames, see [`Lent`]) and the reader task. Nothing here knows what a
//! request means; `conn` does.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bhatti_protocol::messages::ErrorBody;
use bhatti_protocol::r#async::read_frame;
use bhatti_protocol::{encode_exit, encode_frame, Frame, MsgType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fail::Fail;

/// A stream the agent can serve: a TCP, Unix or vsock socket.
pub trait AgentStream: AsyncRead + AsyncWrite + SocketFd + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + SocketFd + Unpin + Send + 'static> AgentStream for T {}

/// The socket under a stream. File content moves between it and the disk
/// with sendfile(2) and splice(2) ([`crate::zerocopy`]), skipping the
/// agent's buffers; every stream the agent serves is a socket.
pub trait SocketFd {
    fn socket_fd(&self) -> RawFd;
}

impl SocketFd for tokio::net::UnixStream {
    fn socket_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

impl SocketFd for tokio::net::TcpStream {
    fn socket_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

pub type Stream = Box<dyn AgentStreamObj>;
pub trait AgentStreamObj: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: AgentStream> AgentStreamObj for T {}

pub type Reader = BufReader<ReadHalf<Stream>>;

/// Frames queued towards one client before senders wait.
const WRITE_QUEUE: usize = 64;
/// Buffers a [`Buffers`] keeps.
const SPARE_BUFFERS: usize = 4;

/// Chunk-sized frame buffers the writer hands back once their bytes are
/// in the socket, so a long copied transfer (a read of a pseudo file, a
/// session's output) reuses a few buffers instead of allocating (and
/// faulting in) a fresh 128 KiB per chunk. Cheap to clone; clones share
/// the buffers.
#[derive(Clone, Default)]
struct Buffers(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Buffers {
    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An empty buffer of at least `cap` bytes: a kept one when it is big
    /// enough, else a new one.
    fn take(&self, cap: usize) -> Vec<u8> {
        let kept = self.kept().pop();
        match kept {
            Some(mut b) if b.capacity() >= cap => {
                b.clear();
                b
            }
            _ => Vec::with_capacity(cap),
        }
    }

    /// Keeps `buf` for a later [`Buffers::take`] if it is chunk-sized and
    /// there is room.
    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() >= bhatti_protocol::FILE_CHUNK {
            let mut kept = self.kept();
            if kept.len() < SPARE_BUFFERS {
                kept.push(buf);
            }
        }
    }
}

/// Sending side of a connection. Cloneable; frames are encoded here and written
/// whole by the single writer task, so frames never interleave.
#[derive(Clone)]
pub struct FrameTx {
    tx: mpsc::Sender<Out>,
    /// The socket the writer writes to, if the stream has one to lend.
    socket: Option<RawFd>,
    /// Frame buffers the writer has sent and hands back.
    spare: Buffers,
    /// The host announced `error_codes` before this connection began, or
    /// in this connection's own HELLO: ERROR payloads are coded JSON.
    coded: Arc<AtomicBool>,
}

impl FrameTx {
    /// Queues a frame; false when the connection is gone or the frame is invalid.
    pub async fn send(&self, kind: MsgType, payload: &[u8]) -> bool {
        match encode_frame(kind as u8, payload) {
            Ok(buf) => self.tx.send(Out::Frame(buf)).await.is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "dropping unencodable frame");
                false
            }
        }
    }

    /// Queues a frame without waiting; false when the queue is full or closed.
    pub fn try_send(&self, kind: MsgType, payload: &[u8]) -> bool {
        match encode_frame(kind as u8, payload) {
            Ok(buf) => self.tx.try_send(Out::Frame(buf)).is_ok(),
            Err(_) => false,
        }
    }

    /// For blocking threads (file I/O): waits for queue room without a runtime.
    pub fn blocking_send(&self, kind: MsgType, payload: &[u8]) -> bool {
        match encode_frame(kind as u8, payload) {
            Ok(buf) => self.tx.blocking_send(Out::Frame(buf)).is_ok(),
            Err(_) => false,
        }
    }

    /// An empty buffer for a frame of up to `cap` bytes (one the writer
    /// handed back, if it has one).
    pub fn buffer(&self, cap: usize) -> Vec<u8> {
        self.spare.take(cap)
    }

    /// For blocking threads: queues a frame already sealed in place
    /// ([`seal_frame`](bhatti_protocol::seal_frame)), with no copy.
    pub fn blocking_send_sealed(&self, frame: Vec<u8>) -> bool {
        self.tx.blocking_send(Out::Frame(frame)).is_ok()
    }

    /// The connection's socket (a control connection always has one).
    pub fn socket(&self) -> Option<RawFd> {
        self.socket
    }

    /// For blocking threads: the connection's socket, once every frame
    /// queued before this call is written, for writing to directly until
    /// the [`Lent`] is handed back. `None` when the connection has no
    /// socket to lend (a tunnel's) or is gone.
    pub fn blocking_lend(&self) -> Option<Lent> {
        let socket = self.socket?;
        let (reply, lent) = oneshot::channel();
        self.tx.blocking_send(Out::Lend(reply)).ok()?;
        let back = lent.blocking_recv().ok()?;
        Some(Lent {
            socket,
            back: Some(back),
        })
    }

    pub async fn send_json<T: serde::Serialize + ?Sized>(&self, kind: MsgType, v: &T) -> bool {
        match serde_json::to_vec(v) {
            Ok(p) => self.send(kind, &p).await,
            Err(_) => false,
        }
    }

    /// The request failed: an ERROR frame, coded for hosts that read codes.
    pub async fn error(&self, fail: impl Into<Fail>) -> bool {
        let fail = fail.into();
        if self.coded.load(Ordering::Relaxed) {
            let body = ErrorBody {
                code: fail.code,
                message: fail.message,
            };
            self.send_json(MsgType::Error, &body).await
        } else {
            self.send(MsgType::Error, fail.message.as_bytes()).await
        }
    }

    /// A connection-level refusal ("auth required", the connection limit):
    /// fixed v1 strings, always sent as text.
    pub async fn refuse(&self, msg: impl AsRef<str>) -> bool {
        self.send(MsgType::Error, msg.as_ref().as_bytes()).await
    }

    /// This connection's own HELLO announced `error_codes`: the errors of
    /// the requests it carries next are coded too.
    pub fn set_coded(&self) {
        self.coded.store(true, Ordering::Relaxed);
    }

    pub async fn exit(&self, code: i32) -> bool {
        self.send(MsgType::Exit, &encode_exit(code)).await
    }
}

/// What the writer task is handed.
enum Out {
    /// A whole frame, to write.
    Frame(Vec<u8>),
    /// Lend the socket: say so once everything before is written, then
    /// wait for it back (`true`: it was left at a frame boundary).
    Lend(oneshot::Sender<oneshot::Sender<bool>>),
}

/// The connection's socket, lent by the writer task to a blocking thread
/// ([`FrameTx::blocking_lend`]). The writer writes nothing until it is
/// handed back ([`Lent::give_back`]); dropped without that, the writer
/// takes the stream for broken (a frame may be cut) and closes it.
pub struct Lent {
    socket: RawFd,
    back: Option<oneshot::Sender<bool>>,
}

impl Lent {
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the writer task owns the stream and holds it open, waiting
        // for this `Lent` to come back, so the descriptor stays valid (and
        // is not reused) for as long as `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.socket) }
    }

    /// Hands the socket back at a frame boundary.
    pub fn give_back(mut self) {
        if let Some(back) = self.back.take() {
            let _ = back.send(true);
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(back) = self.back.take() {
            let _ = back.send(false);
        }
    }
}

/// The writer task: ends when every `FrameTx` clone is dropped (handing the write
/// half back, still open) or at the first write error (`None`).
pub type Writer = JoinHandle<Option<WriteHalf<Stream>>>;

/// `coded`: whether this connection's ERROR payloads are coded JSON.
/// `socket`: the stream's socket, if it has one to lend.
pub fn writer(mut w: WriteHalf<Stream>, coded: bool, socket: Option<RawFd>) -> (FrameTx, Writer) {
    let (tx, mut rx) = mpsc::channel::<Out>(WRITE_QUEUE);
    let kept = Buffers::default();
    let back = kept.clone();
    let task = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Out::Frame(buf) => {
                    if w.write_all(&buf).await.is_err() {
                        return None;
                    }
                    back.give(buf);
                }
                Out::Lend(lend) => {
                    // Every earlier frame goes into the socket first.
                    if w.flush().await.is_err() {
                        return None;
                    }
                    let (give_back, returned) = oneshot::channel();
                    if lend.send(give_back).is_err() {
                        continue;
                    }
                    if !matches!(returned.await, Ok(true)) {
                        return None;
                    }
                }
            }
        }
        Some(w)
    });
    (
        FrameTx {
            tx,
            socket,
            spare: kept,
            coded: Arc::new(AtomicBool::new(coded)),
        },
        task,
    )
}

/// Drops the last sender, waits for queued frames to go out, then closes.
pub async fn finish(tx: FrameTx, task: Writer) {
    drop(tx);
    if let Ok(Some(mut w)) = task.await {
        let _ = w.shutdown().await;
    }
}

/// What the reader task delivers: frames, then `None` once at end of stream
/// (clean or not; the op handlers treat both as "the host went away").
pub type Incoming = mpsc::Receiver<Frame>;

/// Moves frame reading into its own task so handlers can `select!` on a
/// cancel-safe channel.
pub fn reader_task(mut r: Reader) -> Incoming {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(Some(f)) = read_frame(&mut r).await {
            if tx.send(f).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// What [`exec_reader`] hands back when it met the next request: the
/// reader, that request, and the sender of the exec's frames (kept alive
/// until the exec is over, so a request that came early is not taken for
/// the host going away).
pub type NextRequest = Option<(Reader, Frame, mpsc::Sender<Frame>)>;

/// [`reader_task`] for a one-shot exec on a reused connection: STDIN, KILL
/// and RESIZE frames go to the exec (and are dropped once it is over:
/// they were sent before the host saw EXIT); the first frame of any other
/// type is the connection's next request, and ends the task with the
/// reader. `None`: the stream ended.
pub fn exec_reader(mut r: Reader) -> (Incoming, JoinHandle<NextRequest>) {
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        loop {
            match read_frame(&mut r).await {
                Ok(Some(f))
                    if f.is(MsgType::Stdin) || f.is(MsgType::Kill) || f.is(MsgType::Resize) =>
                {
                    // A closed receiver: the exec is over and the frame is stale.
                    let _ = tx.send(f).await;
                }
                Ok(Some(next)) => return Some((r, next, tx)),
                Ok(None) | Err(_) => return None,
            }
        }
    });
    (rx, task)
}
