//! Exec: buffered, streaming and detached.

use bhatti_protocol::messages::{DetachedInfo, ErrorCode, ExecRequest};
use bhatti_protocol::{decode_exit, Frame, MsgType, MAX_EXEC_OUTPUT, TRUNCATION_MARKER};

use bhatti_protocol::r#async::{read_frame, write_frame};
use tokio::io::{BufReader, ReadHalf, WriteHalf};

use crate::transport::BoxStream;
use crate::{agent_error, AgentClient, ClientError, Result};

/// Outcome of a buffered exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    /// The process's exit status (128 + signal number when killed by a signal).
    pub exit_code: i32,
    /// Everything written to stdout (up to the output cap).
    pub stdout: Vec<u8>,
    /// Everything written to stderr (up to the output cap, plus the truncation marker).
    pub stderr: Vec<u8>,
    /// Output went past the 10 MiB cap and was cut (the marker is in stderr).
    pub truncated: bool,
}

impl ExecResult {
    /// stdout as text, invalid UTF-8 replaced.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text, invalid UTF-8 replaced.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// One event of a streaming exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A chunk of stdout.
    Stdout(Vec<u8>),
    /// A chunk of stderr.
    Stderr(Vec<u8>),
    /// The process ended with this exit code; the last event.
    Exit(i32),
    /// The agent's ERROR: `code` as in [`ClientError::Agent`].
    Error {
        /// The machine-readable kind of failure, if the agent sent one.
        code: Option<ErrorCode>,
        /// The agent's human-readable explanation.
        message: String,
    },
}

/// A running exec whose output arrives as events. Dropping it cancels the exec.
pub struct ExecStream {
    events: ExecEvents,
    input: ExecInput,
}

/// The read half of an [`ExecStream`]: its events.
pub struct ExecEvents {
    rd: BufReader<ReadHalf<BoxStream>>,
    done: bool,
}

/// The write half of an [`ExecStream`]: stdin and kill. Dropping either
/// half closes the connection, which kills the exec.
pub struct ExecInput {
    wr: WriteHalf<BoxStream>,
}

impl ExecEvents {
    /// The next event; `None` after EXIT or ERROR. Unknown frame types are skipped
    /// (forward compatibility). Not cancel-safe: a frame read cut off halfway
    /// loses the stream, so poll it to completion (or in a task of its own).
    pub async fn next(&mut self) -> Result<Option<StreamEvent>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let Some(f) = read_frame(&mut self.rd).await? else {
                self.done = true;
                return Err(ClientError::Closed);
            };
            let Some(ev) = event(f).inspect_err(|_| self.done = true)? else {
                continue;
            };
            self.done = matches!(ev, StreamEvent::Exit(_) | StreamEvent::Error { .. });
            return Ok(Some(ev));
        }
    }
}

/// The event a frame of an exec's stream is; `None` for a frame type this
/// client does not know (skipped, for forward compatibility).
fn event(f: Frame) -> Result<Option<StreamEvent>> {
    Ok(Some(match f.msg_type() {
        Some(MsgType::Stdout) => StreamEvent::Stdout(f.payload),
        Some(MsgType::Stderr) => StreamEvent::Stderr(f.payload),
        Some(MsgType::Exit) => StreamEvent::Exit(decode_exit(&f.payload)?),
        Some(MsgType::Error) => match agent_error(&f) {
            ClientError::Agent { code, message } => StreamEvent::Error { code, message },
            other => return Err(other),
        },
        _ => return Ok(None),
    }))
}

/// A buffered exec's result, built event by event up to the output cap.
#[derive(Default)]
struct Collect {
    r: ExecResult,
    total: usize,
}

impl Collect {
    /// Takes one event; the result once the exec is over.
    fn push(&mut self, ev: StreamEvent) -> Option<Result<ExecResult>> {
        let (buf, data) = match ev {
            StreamEvent::Stdout(d) => (&mut self.r.stdout, d),
            StreamEvent::Stderr(d) => (&mut self.r.stderr, d),
            StreamEvent::Exit(code) => {
                let mut r = std::mem::take(&mut self.r);
                r.exit_code = code;
                if r.truncated {
                    r.stderr.extend_from_slice(TRUNCATION_MARKER.as_bytes());
                }
                return Some(Ok(r));
            }
            StreamEvent::Error { code, message } => {
                return Some(Err(ClientError::Agent { code, message }))
            }
        };
        let room = MAX_EXEC_OUTPUT.saturating_sub(self.total);
        let take = data.len().min(room);
        buf.extend_from_slice(&data[..take]);
        self.total = self.total.saturating_add(take);
        if take < data.len() {
            self.r.truncated = true;
        }
        None
    }
}

/// A request as a one-shot piped exec.
fn oneshot(mut req: ExecRequest) -> ExecRequest {
    req.tty = false;
    req.session = false;
    req.detach = false;
    req.session_id.clear();
    req
}

impl ExecInput {
    /// Feeds the child's stdin.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(bhatti_protocol::FILE_CHUNK) {
            write_frame(&mut self.wr, MsgType::Stdin as u8, chunk).await?;
        }
        Ok(())
    }

    /// Closes the child's stdin (an empty STDIN frame).
    pub async fn close_stdin(&mut self) -> Result<()> {
        write_frame(&mut self.wr, MsgType::Stdin as u8, &[]).await?;
        Ok(())
    }

    /// SIGKILL to the exec's process group.
    pub async fn kill(&mut self) -> Result<()> {
        write_frame(&mut self.wr, MsgType::Kill as u8, &[]).await?;
        Ok(())
    }
}

impl ExecStream {
    /// The next event; `None` after EXIT or ERROR.
    pub async fn next(&mut self) -> Result<Option<StreamEvent>> {
        self.events.next().await
    }

    /// Feeds the child's stdin.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.input.write_stdin(data).await
    }

    /// Closes the child's stdin (an empty STDIN frame).
    pub async fn close_stdin(&mut self) -> Result<()> {
        self.input.close_stdin().await
    }

    /// SIGKILL to the exec's process group.
    pub async fn kill(&mut self) -> Result<()> {
        self.input.kill().await
    }

    /// Sends all of `input` as stdin, then closes it. When the agent
    /// refused the request (a command or user that does not exist) it may
    /// have closed before reading stdin: its reason is then waiting to be
    /// read, and is returned instead of the broken pipe.
    pub async fn feed_stdin(&mut self, input: &[u8]) -> Result<()> {
        let sent = match self.input.write_stdin(input).await {
            Ok(()) => self.input.close_stdin().await,
            Err(e) => Err(e),
        };
        let Err(e) = sent else { return Ok(()) };
        match self.next().await {
            Ok(Some(StreamEvent::Error { code, message })) => {
                Err(ClientError::Agent { code, message })
            }
            _ => Err(e),
        }
    }

    /// The two halves, to read events and write input concurrently.
    pub fn into_split(self) -> (ExecEvents, ExecInput) {
        (self.events, self.input)
    }
}

impl AgentClient {
    /// Buffered one-shot exec of `argv`.
    pub async fn exec<I, S>(&self, argv: I) -> Result<ExecResult>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exec_request(ExecRequest::new(argv), None).await
    }

    /// Buffered exec with full control over the request and optional stdin
    /// (stdin is closed after it is sent). Output past 10 MiB is dropped and the
    /// truncation marker appended to stderr.
    pub async fn exec_request(&self, req: ExecRequest, stdin: Option<&[u8]>) -> Result<ExecResult> {
        let mut out = Collect::default();
        let Some(input) = stdin else {
            return self.exec_reusing(req, out).await;
        };
        let mut s = self.exec_stream(req).await?;
        s.feed_stdin(input).await?;
        loop {
            let ev = match s.next().await? {
                Some(ev) => ev,
                None => return Err(ClientError::Closed),
            };
            if let Some(done) = out.push(ev) {
                return done;
            }
        }
    }

    /// A buffered exec without stdin, on a reused connection when this
    /// client keeps them (the connection goes back after EXIT or the
    /// agent's ERROR; an exec dropped halfway drops it, which kills the
    /// exec as ever).
    async fn exec_reusing(&self, req: ExecRequest, mut out: Collect) -> Result<ExecResult> {
        let p = serde_json::to_vec(&oneshot(req))?;
        let (mut lease, mut f) = self.start(MsgType::ExecReq, &p).await?;
        loop {
            if let Some(ev) = event(f)? {
                if let Some(done) = out.push(ev) {
                    self.give_back(lease);
                    return done;
                }
            }
            f = lease.conn.recv().await?.ok_or(ClientError::Closed)?;
        }
    }

    /// Starts an exec and returns its event stream.
    pub async fn exec_stream(&self, req: ExecRequest) -> Result<ExecStream> {
        // A streaming exec is always one-shot piped.
        let req = oneshot(req);
        let p = serde_json::to_vec(&req)?;
        let (rd, wr) = self.request(MsgType::ExecReq, &p).await?.split();
        Ok(ExecStream {
            events: ExecEvents { rd, done: false },
            input: ExecInput { wr },
        })
    }

    /// Starts `argv` detached (new session, output to a file) and returns at once.
    pub async fn exec_detached(
        &self,
        argv: Vec<String>,
        output_file: Option<String>,
    ) -> Result<DetachedInfo> {
        self.exec_detached_request(ExecRequest {
            argv,
            output_file: output_file.unwrap_or_default(),
            ..Default::default()
        })
        .await
    }

    /// Starts `req` detached (its env, cwd and user as given).
    pub async fn exec_detached_request(&self, req: ExecRequest) -> Result<DetachedInfo> {
        let req = ExecRequest {
            detach: true,
            ..req
        };
        let p = serde_json::to_vec(&req)?;
        let mut conn = self.request(MsgType::ExecReq, &p).await?;
        let info: DetachedInfo = conn.expect(MsgType::Stdout).await?.parse_json()?;
        conn.expect(MsgType::Exit).await?;
        Ok(info)
    }
}
