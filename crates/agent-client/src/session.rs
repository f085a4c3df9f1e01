//! Interactive and piped sessions: a terminal-like handle over one connection.

use std::collections::BTreeMap;

use bhatti_protocol::messages::{ExecRequest, SessionInfo};
use bhatti_protocol::r#async::{read_frame, write_frame};
use bhatti_protocol::{decode_exit, encode_resize, MsgType, FILE_CHUNK};
use tokio::io::{BufReader, ReadHalf, WriteHalf};

use crate::transport::Stream;
use crate::{agent_error, AgentClient, ClientError, Result};

type BoxStream = Box<dyn Stream>;

/// Options for a new TTY session.
#[derive(Debug, Clone)]
pub struct ShellOptions {
    /// The command to run (default: a login shell, `/bin/sh -l`).
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (empty: the agent's default).
    pub cwd: String,
    /// Initial terminal height, in character cells.
    pub rows: u16,
    /// Initial terminal width, in character cells.
    pub cols: u16,
    /// 0 = never idle-killed after detach.
    pub max_idle_sec: i64,
}

impl Default for ShellOptions {
    fn default() -> ShellOptions {
        ShellOptions {
            argv: vec!["/bin/sh".into(), "-l".into()],
            env: BTreeMap::new(),
            cwd: String::new(),
            rows: 24,
            cols: 80,
            max_idle_sec: 0,
        }
    }
}

/// The read side of a session: output bytes until EXIT.
pub struct TerminalReader {
    rd: BufReader<ReadHalf<BoxStream>>,
    exit_code: Option<i32>,
}

/// The write side of a session: keystrokes, resize, kill.
pub struct TerminalWriter {
    wr: WriteHalf<BoxStream>,
}

/// A session attached over one connection. Dropping it detaches (the session
/// keeps running in the guest).
pub struct Terminal {
    /// The output side.
    pub reader: TerminalReader,
    /// The input side.
    pub writer: TerminalWriter,
}

impl TerminalReader {
    /// Output bytes; `Ok(None)` after EXIT (see [`exit_code`](Self::exit_code)) or
    /// when the agent closed the connection. ERROR becomes an error.
    pub async fn read(&mut self) -> Result<Option<Vec<u8>>> {
        if self.exit_code.is_some() {
            return Ok(None);
        }
        loop {
            let Some(f) = read_frame(&mut self.rd).await? else {
                return Ok(None);
            };
            match f.msg_type() {
                Some(MsgType::Stdout) | Some(MsgType::Stderr) => return Ok(Some(f.payload)),
                Some(MsgType::Exit) => {
                    self.exit_code = Some(decode_exit(&f.payload)?);
                    return Ok(None);
                }
                Some(MsgType::Error) => return Err(agent_error(&f)),
                // A later SESSION_INFO (re-attach bookkeeping) carries no output.
                Some(MsgType::SessionInfo) => continue,
                _ => return Err(ClientError::UnexpectedFrame(f.kind)),
            }
        }
    }

    /// The process's exit code once EXIT arrived (0 also when another client took
    /// the session over).
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }
}

impl TerminalWriter {
    /// Sends input (keystrokes, or a piped session's stdin).
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(FILE_CHUNK) {
            write_frame(&mut self.wr, MsgType::Stdin as u8, chunk).await?;
        }
        Ok(())
    }

    /// Closes a piped session's stdin.
    pub async fn close_stdin(&mut self) -> Result<()> {
        write_frame(&mut self.wr, MsgType::Stdin as u8, &[]).await?;
        Ok(())
    }

    /// Tells the session's terminal its new size, in character cells.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        write_frame(
            &mut self.wr,
            MsgType::Resize as u8,
            &encode_resize(rows, cols),
        )
        .await?;
        Ok(())
    }

    /// SIGTERM to the session's group; this client is detached afterwards.
    pub async fn kill(&mut self) -> Result<()> {
        write_frame(&mut self.wr, MsgType::Kill as u8, &[]).await?;
        Ok(())
    }
}

impl Terminal {
    /// See [`TerminalReader::read`].
    pub async fn read(&mut self) -> Result<Option<Vec<u8>>> {
        self.reader.read().await
    }
    /// See [`TerminalWriter::write`].
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.writer.write(data).await
    }
    /// See [`TerminalWriter::resize`].
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        self.writer.resize(rows, cols).await
    }
    /// See [`TerminalWriter::kill`].
    pub async fn kill(&mut self) -> Result<()> {
        self.writer.kill().await
    }
    /// See [`TerminalReader::exit_code`].
    pub fn exit_code(&self) -> Option<i32> {
        self.reader.exit_code()
    }
    /// The two halves, to read output and write input concurrently.
    pub fn into_split(self) -> (TerminalReader, TerminalWriter) {
        (self.reader, self.writer)
    }
}

impl AgentClient {
    async fn open_session(&self, req: ExecRequest) -> Result<(SessionInfo, Terminal)> {
        let p = serde_json::to_vec(&req)?;
        let mut conn = self.request(MsgType::ExecReq, &p).await?;
        let info: SessionInfo = conn.expect(MsgType::SessionInfo).await?.parse_json()?;
        let (rd, wr) = conn.split();
        Ok((
            info,
            Terminal {
                reader: TerminalReader {
                    rd,
                    exit_code: None,
                },
                writer: TerminalWriter { wr },
            },
        ))
    }

    /// A new TTY session.
    pub async fn shell(&self, opts: ShellOptions) -> Result<(SessionInfo, Terminal)> {
        self.open_session(ExecRequest {
            argv: opts.argv,
            env: opts.env,
            cwd: opts.cwd,
            tty: true,
            rows: opts.rows,
            cols: opts.cols,
            max_idle_sec: opts.max_idle_sec,
            ..Default::default()
        })
        .await
    }

    /// Attaches to a session: SESSION_INFO, then the scrollback, then live output.
    /// With `if_detached`, fails with "session is attached" instead of taking the
    /// session from another client.
    pub async fn attach(
        &self,
        session_id: &str,
        if_detached: bool,
    ) -> Result<(SessionInfo, Terminal)> {
        self.open_session(ExecRequest {
            argv: vec![],
            session_id: session_id.into(),
            if_detached,
            ..Default::default()
        })
        .await
    }

    /// A new piped (non-TTY) persistent session; stderr is merged into stdout.
    pub async fn piped_session(
        &self,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        max_idle_sec: i64,
    ) -> Result<(SessionInfo, Terminal)> {
        self.open_session(ExecRequest {
            argv,
            env,
            session: true,
            max_idle_sec,
            ..Default::default()
        })
        .await
    }
}
