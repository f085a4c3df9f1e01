//! A connection's frame plumbing: the boxed stream every listener hands
//! over, the single writer task (frames are encoded once and written whole,
//! so they never interleave) and the reader task. Nothing here knows what a
//! request means; `conn` does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bhatti_protocol::messages::ErrorBody;
use bhatti_protocol::r#async::read_frame;
use bhatti_protocol::{encode_exit, encode_frame, Frame, MsgType};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::fail::Fail;

/// A stream the agent can serve (TCP, Unix, vsock, test pipes).
pub trait AgentStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AgentStream for T {}

pub type Stream = Box<dyn AgentStreamObj>;
pub trait AgentStreamObj: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: AgentStream> AgentStreamObj for T {}

pub type Reader = BufReader<ReadHalf<Stream>>;

/// Frames queued towards one client before senders wait.
const WRITE_QUEUE: usize = 64;
/// Buffers a [`Buffers`] keeps.
const SPARE_BUFFERS: usize = 4;

/// Chunk-sized buffers handed back once their bytes went out (to the
/// socket, or to the disk), so a long transfer reuses a few buffers
/// instead of allocating (and faulting in) a fresh 128 KiB per chunk.
/// Cheap to clone; clones share the buffers.
#[derive(Clone, Default)]
pub struct Buffers(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Buffers {
    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An empty buffer of at least `cap` bytes: a kept one when it is big
    /// enough, else a new one.
    pub fn take(&self, cap: usize) -> Vec<u8> {
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
    pub fn give(&self, buf: Vec<u8>) {
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
    tx: mpsc::Sender<Vec<u8>>,
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
            Ok(buf) => self.tx.send(buf).await.is_ok(),
            Err(e) => {
                tracing::warn!(error = %e, "dropping unencodable frame");
                false
            }
        }
    }

    /// Queues a frame without waiting; false when the queue is full or closed.
    pub fn try_send(&self, kind: MsgType, payload: &[u8]) -> bool {
        match encode_frame(kind as u8, payload) {
            Ok(buf) => self.tx.try_send(buf).is_ok(),
            Err(_) => false,
        }
    }

    /// For blocking threads (file I/O): waits for queue room without a runtime.
    pub fn blocking_send(&self, kind: MsgType, payload: &[u8]) -> bool {
        match encode_frame(kind as u8, payload) {
            Ok(buf) => self.tx.blocking_send(buf).is_ok(),
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
        self.tx.blocking_send(frame).is_ok()
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

/// The writer task: ends when every `FrameTx` clone is dropped (handing the write
/// half back, still open) or at the first write error (`None`).
pub type Writer = JoinHandle<Option<WriteHalf<Stream>>>;

/// `coded`: whether this connection's ERROR payloads are coded JSON.
pub fn writer(mut w: WriteHalf<Stream>, coded: bool) -> (FrameTx, Writer) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let kept = Buffers::default();
    let back = kept.clone();
    let task = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if w.write_all(&buf).await.is_err() {
                return None;
            }
            back.give(buf);
        }
        Some(w)
    });
    (
        FrameTx {
            tx,
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
