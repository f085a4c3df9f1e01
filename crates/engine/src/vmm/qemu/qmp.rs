//! A small async QMP client: JSON lines over a Unix socket.
//!
//! QMP sends a greeting, expects `qmp_capabilities`, then answers each
//! `{"execute", "arguments", "id"}` with `{"return"|"error", "id"}`.
//! Asynchronous `{"event"}` messages may arrive at any time, in between.
//! One reader task owns the read half: it routes answers to their callers
//! by id and keeps the latest events in a small ring. Every call has a
//! timeout; when the connection ends (QEMU exited), every pending and later
//! call fails at once instead of hanging.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, trace};

use crate::vmm::consts::{QMP_EVENT_HISTORY, QMP_MAX_LINE};
use crate::vmm::VmmError;

/// One asynchronous QMP event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QmpEvent {
    /// The event's name, e.g. `"STOP"` or `"SHUTDOWN"`.
    pub event: String,
    /// Its event-specific payload (`null` when QEMU sends none).
    #[serde(default)]
    pub data: Value,
    /// QEMU's `{"seconds", "microseconds"}`, as sent.
    #[serde(default)]
    pub timestamp: Value,
}

/// What QEMU says about itself in the greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpGreeting {
    /// QEMU's major version (0 when the greeting lacks it).
    pub major: u32,
    /// Its minor version (0 when missing).
    pub minor: u32,
    /// Its micro (patch) version (0 when missing).
    pub micro: u32,
    /// The distribution's package string, trimmed (often empty).
    pub package: String,
}

type Reply = Result<Value, VmmError>;

#[derive(Default)]
struct Shared {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once the connection is gone; the reason.
    closed: Option<String>,
    events: VecDeque<QmpEvent>,
}

use bhatti_sync::lock;

/// A connected, negotiated QMP session.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Mutex<Shared>>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    greeting: QmpGreeting,
    timeout: Duration,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("greeting", &self.greeting)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Reads one line of at most [`QMP_MAX_LINE`] bytes; `None` at EOF.
///
/// Public (hidden) only for the fuzz target `fuzz/fuzz_targets/qmp.rs`,
/// which drives it over an in-memory stream.
#[doc(hidden)]
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Value>, String> {
    let mut buf = Vec::new();
    loop {
        let n = (&mut *r)
            .take((QMP_MAX_LINE + 1).saturating_sub(buf.len()) as u64)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed mid-message".into())
            };
        }
        if buf.len() > QMP_MAX_LINE {
            return Err(format!("message longer than {QMP_MAX_LINE} bytes"));
        }
        if buf.ends_with(b"\n") {
            match parse_line(&buf)? {
                None => buf.clear(),
                Some(v) => return Ok(Some(v)),
            }
        }
    }
}

/// Decodes one complete line from QEMU (newline included or not).
/// `Ok(None)` for a blank line, which the reader skips.
///
/// Pure, so the fuzz target runs exactly what [`read_line`] runs.
pub fn parse_line(line: &[u8]) -> Result<Option<Value>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(line)
        .map(Some)
        .map_err(|e| format!("bad JSON from QMP: {e}"))
}

/// What one message after the greeting means to the reader task.
#[derive(Debug)]
pub enum QmpMessage {
    /// An asynchronous event.
    Event(QmpEvent),
    /// The answer to the command with this id: its `return` value, or its
    /// `error` as [`VmmError::Command`] (with an empty command name, which
    /// the caller fills in).
    Reply {
        /// The `id` the command was sent with.
        id: u64,
        /// Its `return` value or its error.
        reply: Result<Value, VmmError>,
    },
    /// A message the reader drops (a malformed event, no numeric id); why.
    Ignored(String),
}

/// Classifies one decoded message from QEMU (anything but the greeting).
///
/// Pure (no I/O, no shared state): the reader task routes its result and the
/// fuzz target checks it, so both run the same code.
pub fn classify(v: Value) -> QmpMessage {
    if v.get("event").is_some() {
        return match serde_json::from_value::<QmpEvent>(v) {
            Ok(ev) => QmpMessage::Event(ev),
            Err(e) => QmpMessage::Ignored(format!("malformed QMP event: {e}")),
        };
    }
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        return QmpMessage::Ignored(format!("QMP message without id: {v}"));
    };
    let reply = if let Some(r) = v.get("return") {
        Ok(r.clone())
    } else if let Some(e) = v.get("error") {
        Err(VmmError::Command {
            command: String::new(),
            class: e["class"].as_str().unwrap_or("Unknown").to_string(),
            desc: e["desc"].as_str().unwrap_or("").to_string(),
        })
    } else {
        Err(VmmError::Protocol(format!("unexpected QMP message {v}")))
    };
    QmpMessage::Reply { id, reply }
}

/// Reads QEMU's version out of its greeting (`{"QMP": {"version": …}}`).
pub fn parse_greeting(v: &Value) -> Result<QmpGreeting, VmmError> {
    let q = v
        .get("QMP")
        .ok_or_else(|| VmmError::Protocol(format!("expected QMP greeting, got {v}")))?;
    let ver = &q["version"]["qemu"];
    let num = |k: &str| {
        ver[k]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    Ok(QmpGreeting {
        major: num("major"),
        minor: num("minor"),
        micro: num("micro"),
        package: q["version"]["package"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string(),
    })
}

impl Qmp {
    /// Connects to `path`, reads the greeting and negotiates capabilities.
    /// `timeout` bounds the whole handshake and every later call.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, VmmError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| VmmError::Timeout {
                what: format!("connecting to QMP socket {}", path.display()),
                timeout,
            })?
            .map_err(|e| VmmError::io(format!("connect {}", path.display()), e))?;
        Self::handshake(stream, timeout).await
    }

    /// The handshake on an already connected stream.
    pub async fn handshake(stream: UnixStream, timeout: Duration) -> Result<Self, VmmError> {
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let greeting = tokio::time::timeout(timeout, read_line(&mut rd))
            .await
            .map_err(|_| VmmError::Timeout {
                what: "QMP greeting".into(),
                timeout,
            })?
            .map_err(VmmError::Protocol)?
            .ok_or_else(|| VmmError::Protocol("QMP closed before its greeting".into()))?;
        let greeting = parse_greeting(&greeting)?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let reader = tokio::spawn(reader_task(rd, shared.clone()));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(wr),
            shared,
            next_id: AtomicU64::new(1),
            reader,
            greeting,
            timeout,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// QEMU's version, as its greeting gave it.
    pub fn greeting(&self) -> &QmpGreeting {
        &self.greeting
    }

    /// Runs `command` with the default timeout; returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        self.execute_timeout(command, arguments, self.timeout).await
    }

    /// Runs `command`; QMP errors become [`VmmError::Command`].
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, VmmError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut sh = lock(&self.shared);
            if let Some(reason) = &sh.closed {
                return Err(VmmError::Protocol(format!("{command}: {reason}")));
            }
            sh.pending.insert(id, tx);
        }
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        trace!(%line, "QMP ->");
        let timed_out = || VmmError::Timeout {
            what: format!("QMP {command}"),
            timeout,
        };
        let res = async {
            // Waiting for the lock may be cancelled; the write itself runs
            // to completion or breaks the session (a line cut off by a
            // timeout would corrupt every later command).
            let mut w = tokio::time::timeout(timeout, self.writer.lock())
                .await
                .map_err(|_| timed_out())?;
            let err = match tokio::time::timeout(timeout, w.write_all(line.as_bytes())).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{command}: write: {e}")),
                Err(_) => Some(format!("{command}: write stalled for {timeout:?}")),
            };
            if let Some(err) = err {
                let _ = tokio::time::timeout(Duration::from_millis(100), w.shutdown()).await;
                lock(&self.shared).closed.get_or_insert(err.clone());
                return Err(VmmError::Protocol(err));
            }
            drop(w);
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(_)) => Err(VmmError::Protocol(format!("{command}: QMP reader stopped"))),
                Err(_) => Err(timed_out()),
            }
        }
        .await;
        if res.is_err() {
            lock(&self.shared).pending.remove(&id);
        }
        res.map_err(|e| match e {
            VmmError::Command { class, desc, .. } => VmmError::Command {
                command: command.to_string(),
                class,
                desc,
            },
            other => other,
        })
    }

    /// The events received so far (at most the last 64), oldest first.
    pub fn events(&self) -> Vec<QmpEvent> {
        lock(&self.shared).events.iter().cloned().collect()
    }

    /// Why the connection is closed, if it is.
    pub fn closed(&self) -> Option<String> {
        lock(&self.shared).closed.clone()
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn reader_task<R: AsyncRead + Unpin>(mut rd: BufReader<R>, shared: Arc<Mutex<Shared>>) {
    let reason = loop {
        let v = match read_line(&mut rd).await {
            Ok(Some(v)) => v,
            Ok(None) => break "QMP connection closed (VMM exited?)".to_string(),
            Err(e) => break format!("QMP connection failed: {e}"),
        };
        trace!(%v, "QMP <-");
        match classify(v) {
            QmpMessage::Event(ev) => {
                debug!(event = %ev.event, data = %ev.data, "QMP event");
                let mut sh = lock(&shared);
                if sh.events.len() == QMP_EVENT_HISTORY {
                    sh.events.pop_front();
                }
                sh.events.push_back(ev);
            }
            QmpMessage::Reply { id, reply } => {
                let tx = lock(&shared).pending.remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
            QmpMessage::Ignored(why) => debug!(%why, "QMP message ignored"),
        }
    };
    debug!(%reason, "QMP reader done");
    let pending = {
        let mut sh = lock(&shared);
        sh.closed = Some(reason.clone());
        std::mem::take(&mut sh.pending)
    };
    for (_, tx) in pending {
        let _ = tx.send(Err(VmmError::Protocol(reason.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2"}, "capabilities": ["oob"]}}"#;

    /// A fake QEMU: greets, then answers each command via `answer`
    /// (`None`: never answer), sending an event before every answer.
    async fn fake_server(
        sock: UnixStream,
        answer: impl Fn(&Value) -> Option<Vec<String>> + Send + 'static,
    ) {
        let (rd, mut wr) = sock.into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(format!("{GREETING}\r\n").as_bytes())
            .await
            .unwrap();
        while let Ok(Some(v)) = read_line(&mut rd).await {
            if let Some(lines) = answer(&v) {
                for l in lines {
                    wr.write_all(l.as_bytes()).await.unwrap();
                    wr.write_all(b"\n").await.unwrap();
                }
            }
        }
    }

    fn reply_ok(v: &Value, ret: Value) -> String {
        json!({"return": ret, "id": v["id"]}).to_string()
    }

    #[tokio::test]
    async fn handshake_execute_events_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(fake_server(b, |v| {
            let cmd = v["execute"].as_str().unwrap_or_default();
            let ev =
                r#"{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}"#;
            match cmd {
                "qmp_capabilities" => Some(vec![reply_ok(v, json!({}))]),
                "query-status" => Some(vec![
                    ev.to_string(),
                    // An unrelated id first: must not be taken as ours.
                    json!({"return": {"status": "bogus"}, "id": 999}).to_string(),
                    reply_ok(v, json!({"status": "paused", "running": false})),
                ]),
                "echo" => Some(vec![reply_ok(v, v["arguments"].clone())]),
                "fail" => Some(vec![
                    json!({"error": {"class": "GenericError", "desc": "nope"}, "id": v["id"]})
                        .to_string(),
                ]),
                _ => None,
            }
        }));
        let q = Qmp::handshake(a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (q.greeting().major, q.greeting().minor, q.greeting().micro),
            (10, 0, 2)
        );
        let st = q.execute("query-status", None).await.unwrap();
        assert_eq!(st["status"], "paused");
        assert_eq!(q.events().len(), 1);
        assert_eq!(q.events()[0].event, "STOP");
        let r = q.execute("echo", Some(json!({"x": 1}))).await.unwrap();
        assert_eq!(r, json!({"x": 1}));
        match q.execute("fail", None).await {
            Err(VmmError::Command {
                command,
                class,
                desc,
            }) => {
                assert_eq!(
                    (command.as_str(), class.as_str(), desc.as_str()),
                    ("fail", "GenericError", "nope")
                );
            }
            other => panic!("{other:?}"),
        }
        let t0 = std::time::Instant::now();
        let e = q
            .execute_timeout("silent", None, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, VmmError::Timeout { .. }), "{e}");
        // Generous: this only proves the call gave up instead of hanging.
        assert!(t0.elapsed() < Duration::from_secs(10));
        // The session still works after a timeout.
        q.execute("echo", Some(json!(2))).await.unwrap();
        assert!(lock(&q.shared).pending.is_empty());
    }

    #[tokio::test]
    async fn closed_connection_fails_pending_and_later_calls() {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let (rd, mut wr) = b.into_split();
            let mut rd = BufReader::new(rd);
            wr.write_all(format!("{GREETING}\n").as_bytes())
                .await
                .unwrap();
            let v = read_line(&mut rd).await.unwrap().unwrap();
            wr.write_all(format!("{}\n", reply_ok(&v, json!({}))).as_bytes())
                .await
                .unwrap();
            // Read the next command, then hang up without answering.
            let _ = read_line(&mut rd).await;
            drop(wr);
            let mut rest = Vec::new();
            let _ = rd.read_to_end(&mut rest).await;
        });
        let q = Qmp::handshake(a, Duration::from_secs(5)).await.unwrap();
        let e = q.execute("query-status", None).await.unwrap_err();
        assert!(matches!(e, VmmError::Protocol(_)), "{e}");
        let e = q.execute("query-status", None).await.unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
        assert!(q.closed().is_some());
    }

    #[test]
    fn lines_and_messages_classify() {
        assert!(parse_line(b" \r\n").unwrap().is_none());
        assert!(parse_line(b"{\"return\"").unwrap_err().contains("bad JSON"));
        let g = parse_greeting(&parse_line(GREETING.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!((g.major, g.minor, g.micro), (10, 0, 2));
        assert_eq!(g.package, "Debian 1:10.0.2");

        let msg = |l: &str| classify(parse_line(l.as_bytes()).unwrap().unwrap());
        match msg(r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#) {
            QmpMessage::Event(ev) => {
                assert_eq!((ev.event.as_str(), ev.data), ("STOP", Value::Null))
            }
            other => panic!("{other:?}"),
        }
        match msg(r#"{"return": {"status": "running"}, "id": 7}"#) {
            QmpMessage::Reply {
                id: 7,
                reply: Ok(v),
            } => assert_eq!(v["status"], "running"),
            other => panic!("{other:?}"),
        }
        match msg(r#"{"error": {"class": "GenericError", "desc": "no"}, "id": 8}"#) {
            QmpMessage::Reply {
                id: 8,
                reply: Err(VmmError::Command { class, desc, .. }),
            } => assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "no")),
            other => panic!("{other:?}"),
        }
        // An error that is not an object still classifies (class "Unknown").
        assert!(matches!(
            msg(r#"{"error": 3, "id": 9}"#),
            QmpMessage::Reply {
                id: 9,
                reply: Err(VmmError::Command { .. })
            }
        ));
        assert!(matches!(
            msg(r#"{"id": 1}"#),
            QmpMessage::Reply {
                id: 1,
                reply: Err(VmmError::Protocol(_))
            }
        ));
        for ignored in [
            r#"{"event": 1}"#,
            r#"{"return": {}}"#,
            r#"{"return": {}, "id": -1}"#,
            "[1]",
            "3",
        ] {
            assert!(matches!(msg(ignored), QmpMessage::Ignored(_)), "{ignored}");
        }
    }

    #[tokio::test]
    async fn bad_greeting() {
        let (a, mut b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            b.write_all(b"{\"hello\": 1}\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let e = Qmp::handshake(a, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("greeting"), "{e}");

        let (a, _b) = UnixStream::pair().unwrap();
        let e = Qmp::handshake(a, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, VmmError::Timeout { .. }), "{e}");
    }
}
