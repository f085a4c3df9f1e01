//! WebSocket sessions: the interactive shell (`/sandboxes/:id/ws`) and
//! piped sessions (`/sandboxes/:id/exec/ws`); docs/api.md, "WsClientMsg"
//! and "WsServerMsg".
//!
//! Both start the same way: the server's first text message is
//! `{"type":"session","session_id":"sN"}`; anything else first is an error
//! the server reports in-band before relaying (`wake sandbox: …`, or
//! `{"error":…}` on the piped route), surfaced as
//! [`ClientError::Protocol`]. After that, a shell carries terminal output
//! as binary messages and takes keystrokes (binary) and
//! `{"type":"resize",…}` (text); a piped session carries output as text
//! messages and ends with `{"type":"exit","exit_code":N}`. A close frame
//! 1000 means the process exited.
//!
//! Each session can be split into a writer and a reader half so that a
//! caller can pump input and output from separate tasks.

use bhatti_api as api;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::header::{self, HeaderMap, HeaderValue};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::error::{ApiError, ClientError, Result};
use crate::transport::Conn;
use crate::USER_AGENT;

pub(crate) type Ws = WebSocketStream<Conn>;

/// Runs the WebSocket upgrade on a dialled stream. A refused upgrade (401,
/// 404 …) becomes the [`ApiError`] the server sent.
pub(crate) async fn handshake(
    conn: Conn,
    url: &str,
    auth: Option<&HeaderValue>,
) -> Result<(Ws, HeaderMap)> {
    let mut req = url.into_client_request()?;
    if let Some(a) = auth {
        req.headers_mut().insert(header::AUTHORIZATION, a.clone());
    }
    req.headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    match tokio_tungstenite::client_async(req, conn).await {
        Ok((ws, resp)) => Ok((ws, resp.headers().clone())),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err(ApiError::from_body(resp.status().as_u16(), &body).into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the first message, which must announce the session.
async fn read_session(ws: &mut Ws) -> Result<String> {
    loop {
        let Some(msg) = ws.next().await else {
            return Err(ClientError::Protocol(
                "the server closed the connection before the session started".into(),
            ));
        };
        match msg? {
            Message::Text(t) => {
                let text = t.as_str();
                if let Ok(api::WsServerMsg::Session { session_id }) = serde_json::from_str(text) {
                    return Ok(session_id);
                }
                if let Ok(api::WsServerMsg::Error { message }) = serde_json::from_str(text) {
                    return Err(ClientError::Protocol(message));
                }
                if let Ok(e) = serde_json::from_str::<api::ErrorBody>(text) {
                    return Err(ClientError::Protocol(e.error));
                }
                return Err(ClientError::Protocol(text.trim().to_string()));
            }
            Message::Close(f) => {
                let reason = f.map(|f| f.reason.to_string()).unwrap_or_default();
                return Err(ClientError::Protocol(if reason.is_empty() {
                    "the server closed the connection before the session started".into()
                } else {
                    reason
                }));
            }
            Message::Binary(_) => {
                return Err(ClientError::Protocol(
                    "the server sent output before announcing the session".into(),
                ))
            }
            // Ping/Pong/raw frames: keep waiting.
            _ => continue,
        }
    }
}

fn closed(f: Option<CloseFrame>) -> (Option<u16>, String) {
    match f {
        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
        None => (None, String::new()),
    }
}

/// Something the shell's server side sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellEvent {
    /// Terminal output.
    Output(Bytes),
    /// A text message (the server reports late errors this way).
    Message(String),
    /// The server closed the session; code 1000 = the shell exited.
    Closed {
        /// The WebSocket close code, if the close frame had one.
        code: Option<u16>,
        /// The close frame's reason text (may be empty).
        reason: String,
    },
}

/// An interactive shell session.
#[derive(Debug)]
pub struct Shell {
    session_id: String,
    ws: Ws,
}

impl Shell {
    pub(crate) async fn start(mut ws: Ws) -> Result<Shell> {
        let session_id = read_session(&mut ws).await?;
        Ok(Shell { session_id, ws })
    }

    /// The session's ID (for reattaching with `session=`).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Sends keystrokes.
    pub async fn send_input(&mut self, data: &[u8]) -> Result<()> {
        send_binary(&mut self.ws, data).await
    }

    /// Tells the server the terminal's size.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        send_resize(&mut self.ws, rows, cols).await
    }

    /// The next event; `None` once the connection is gone without a close
    /// frame having been seen.
    pub async fn recv(&mut self) -> Option<Result<ShellEvent>> {
        next_shell_event(&mut self.ws).await
    }

    /// Closes the connection normally; the session keeps running in the
    /// sandbox (detach).
    pub async fn close(mut self) -> Result<()> {
        self.ws.close(None).await.map_err(Into::into)
    }

    /// Splits into independent writer and reader halves.
    pub fn split(self) -> (ShellWriter, ShellReader) {
        let (sink, stream) = self.ws.split();
        (
            ShellWriter { sink },
            ShellReader {
                session_id: self.session_id,
                stream,
            },
        )
    }
}

/// The sending half of a [`Shell`].
#[derive(Debug)]
pub struct ShellWriter {
    sink: SplitSink<Ws, Message>,
}

impl ShellWriter {
    /// Sends keystrokes.
    pub async fn send_input(&mut self, data: &[u8]) -> Result<()> {
        self.sink
            .send(Message::Binary(Bytes::copy_from_slice(data)))
            .await
            .map_err(Into::into)
    }

    /// Tells the server the terminal's size, in character cells.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<()> {
        self.sink
            .send(Message::Text(resize_text(rows, cols).into()))
            .await
            .map_err(Into::into)
    }

    /// Sends a normal close (detach).
    pub async fn close(&mut self) -> Result<()> {
        self.sink.close().await.map_err(Into::into)
    }
}

/// The receiving half of a [`Shell`].
#[derive(Debug)]
pub struct ShellReader {
    session_id: String,
    stream: SplitStream<Ws>,
}

impl ShellReader {
    /// The session's ID (for reattaching with `session=`).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The next event; `None` once the connection is gone without a close
    /// frame having been seen.
    pub async fn recv(&mut self) -> Option<Result<ShellEvent>> {
        loop {
            let msg = match self.stream.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e.into())),
            };
            if let Some(ev) = shell_event(msg) {
                return Some(Ok(ev));
            }
        }
    }
}

fn shell_event(msg: Message) -> Option<ShellEvent> {
    match msg {
        Message::Binary(b) => Some(ShellEvent::Output(b)),
        Message::Text(t) => Some(ShellEvent::Message(t.to_string())),
        Message::Close(f) => {
            let (code, reason) = closed(f);
            Some(ShellEvent::Closed { code, reason })
        }
        _ => None,
    }
}

async fn next_shell_event(ws: &mut Ws) -> Option<Result<ShellEvent>> {
    loop {
        let msg = match ws.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(e.into())),
        };
        if let Some(ev) = shell_event(msg) {
            return Some(Ok(ev));
        }
    }
}

fn resize_text(rows: u16, cols: u16) -> String {
    serde_json::to_string(&api::WsClientMsg::Resize { rows, cols })
        .unwrap_or_else(|_| format!(r#"{{"type":"resize","rows":{rows},"cols":{cols}}}"#))
}

async fn send_binary(ws: &mut Ws, data: &[u8]) -> Result<()> {
    ws.send(Message::Binary(Bytes::copy_from_slice(data)))
        .await
        .map_err(Into::into)
}

async fn send_resize(ws: &mut Ws, rows: u16, cols: u16) -> Result<()> {
    ws.send(Message::Text(resize_text(rows, cols).into()))
        .await
        .map_err(Into::into)
}

/// Something a piped session's server side sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipedEvent {
    /// Output (stdout and stderr merged).
    Output(String),
    /// The process exited.
    Exit(i32),
    /// The agent reported an error.
    Error(String),
    /// The server closed the connection.
    Closed {
        /// The WebSocket close code, if the close frame had one.
        code: Option<u16>,
        /// The close frame's reason text (may be empty).
        reason: String,
    },
}

fn piped_event(msg: Message) -> Option<PipedEvent> {
    match msg {
        Message::Text(t) => {
            let text = t.as_str();
            if text.starts_with('{') {
                match serde_json::from_str::<api::WsServerMsg>(text) {
                    Ok(api::WsServerMsg::Exit { exit_code }) => {
                        return Some(PipedEvent::Exit(exit_code))
                    }
                    Ok(api::WsServerMsg::Error { message }) => {
                        return Some(PipedEvent::Error(message))
                    }
                    _ => {}
                }
                if let Ok(e) = serde_json::from_str::<api::ErrorBody>(text) {
                    return Some(PipedEvent::Error(e.error));
                }
            }
            Some(PipedEvent::Output(text.to_string()))
        }
        Message::Binary(b) => Some(PipedEvent::Output(String::from_utf8_lossy(&b).into_owned())),
        Message::Close(f) => {
            let (code, reason) = closed(f);
            Some(PipedEvent::Closed { code, reason })
        }
        _ => None,
    }
}

/// Input is sent as text when it is UTF-8 (what the server expects of a
/// piped session), else as binary.
fn stdin_message(data: &[u8]) -> Message {
    match std::str::from_utf8(data) {
        Ok(s) => Message::Text(s.to_string().into()),
        Err(_) => Message::Binary(Bytes::copy_from_slice(data)),
    }
}

/// A piped (non-TTY) session.
#[derive(Debug)]
pub struct PipedSession {
    session_id: String,
    ws: Ws,
}

impl PipedSession {
    pub(crate) async fn start(mut ws: Ws, start: Option<&api::PipedStart>) -> Result<PipedSession> {
        if let Some(s) = start {
            let text = serde_json::to_string(s).map_err(|source| ClientError::Decode {
                what: "piped start",
                source,
            })?;
            ws.send(Message::Text(text.into())).await?;
        }
        let session_id = read_session(&mut ws).await?;
        Ok(PipedSession { session_id, ws })
    }

    /// The session's ID (for reattaching).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Writes to the process's stdin.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.ws.send(stdin_message(data)).await.map_err(Into::into)
    }

    /// The next event; `None` once the connection is gone without a close
    /// frame having been seen.
    pub async fn recv(&mut self) -> Option<Result<PipedEvent>> {
        loop {
            let msg = match self.ws.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e.into())),
            };
            if let Some(ev) = piped_event(msg) {
                return Some(Ok(ev));
            }
        }
    }

    /// Closes the connection (the session keeps running for its idle
    /// timeout and can be reattached).
    pub async fn close(mut self) -> Result<()> {
        self.ws.close(None).await.map_err(Into::into)
    }

    /// Splits into independent writer and reader halves.
    pub fn split(self) -> (PipedWriter, PipedReader) {
        let (sink, stream) = self.ws.split();
        (
            PipedWriter { sink },
            PipedReader {
                session_id: self.session_id,
                stream,
            },
        )
    }
}

/// The sending half of a [`PipedSession`].
#[derive(Debug)]
pub struct PipedWriter {
    sink: SplitSink<Ws, Message>,
}

impl PipedWriter {
    /// Writes to the process's stdin.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        self.sink
            .send(stdin_message(data))
            .await
            .map_err(Into::into)
    }

    /// Closes the connection (the session keeps running for its idle
    /// timeout and can be reattached).
    pub async fn close(&mut self) -> Result<()> {
        self.sink.close().await.map_err(Into::into)
    }
}

/// The receiving half of a [`PipedSession`].
#[derive(Debug)]
pub struct PipedReader {
    session_id: String,
    stream: SplitStream<Ws>,
}

impl PipedReader {
    /// The session's ID (for reattaching).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The next event; `None` once the connection is gone without a close
    /// frame having been seen.
    pub async fn recv(&mut self) -> Option<Result<PipedEvent>> {
        loop {
            let msg = match self.stream.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(e.into())),
            };
            if let Some(ev) = piped_event(msg) {
                return Some(Ok(ev));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piped_messages_classify() {
        let t = |s: &str| piped_event(Message::Text(s.to_string().into())).unwrap();
        assert_eq!(t(r#"{"type":"exit","exit_code":3}"#), PipedEvent::Exit(3));
        assert_eq!(
            t(r#"{"type":"error","message":"boom"}"#),
            PipedEvent::Error("boom".into())
        );
        assert_eq!(
            t(r#"{"error":"cmd required"}"#),
            PipedEvent::Error("cmd required".into())
        );
        assert_eq!(t("hello\n"), PipedEvent::Output("hello\n".into()));
        assert_eq!(
            t(r#"{"json":"output"}"#),
            PipedEvent::Output(r#"{"json":"output"}"#.into())
        );
        assert!(piped_event(Message::Ping(Bytes::new())).is_none());
    }

    #[test]
    fn resize_message_matches_the_protocol() {
        assert_eq!(
            resize_text(40, 120),
            r#"{"type":"resize","rows":40,"cols":120}"#
        );
        assert!(matches!(stdin_message(b"hi"), Message::Text(_)));
        assert!(matches!(stdin_message(&[0xff, 0xfe]), Message::Binary(_)));
    }
}
