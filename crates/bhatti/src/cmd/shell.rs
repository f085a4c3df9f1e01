//! `bhatti shell <sandbox>`: an interactive terminal over the shell
//! WebSocket.
//!
//! The local terminal goes into raw mode (nix termios) so every keystroke,
//! Ctrl+C included, reaches the remote shell; the size is sent at start and
//! on every SIGWINCH. Ctrl+\ (0x1c) detaches: the session keeps running in
//! the sandbox and `--session <id>` reattaches. If the connection drops,
//! the session ID and the reconnect command are printed, since the remote
//! shell survives that too. A close frame 1000 means the shell exited.

use std::io::{IsTerminal, Read};

use bhatti_client::ShellEvent;
use clap::Args;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use tokio::signal::unix::{signal, SignalKind};

use super::Ctx;
use crate::output::{print_bytes, print_json};

/// The detach key, Ctrl+\.
pub const DETACH: u8 = 0x1c;

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// Sandbox name or ID.
    pub sandbox: String,
    /// Start a new shell instead of reattaching to a detached one.
    #[arg(long, conflicts_with = "session")]
    pub new: bool,
    /// Attach to this session (taking it over from another client).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
}

/// Puts the terminal on stdin into raw mode; restores it when dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> nix::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Rows and columns of the controlling terminal, if there is one.
fn term_size() -> Option<(u16, u16)> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO, libc::STDERR_FILENO] {
        // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we own.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Splits input at the detach key: the bytes to send first, and whether
/// the key was pressed.
pub fn split_detach(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|&b| b == DETACH) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

enum Outcome {
    Exited,
    Detached,
    Failed(String),
    Lost(String),
}

pub async fn run(ctx: &Ctx, a: ShellArgs) -> anyhow::Result<i32> {
    let client = ctx.client()?;
    let shell = client
        .shell(&a.sandbox, a.new, a.session.as_deref())
        .await?;
    let sid = shell.session_id().to_string();
    if ctx.json {
        // Machine-readable mode has no terminal to relay; report the
        // session and detach at once.
        print_json(&serde_json::json!({"session_id": sid, "sandbox": a.sandbox}))?;
        let _ = shell.close().await;
        return Ok(0);
    }

    let interactive = std::io::stdin().is_terminal();
    let (mut tx, mut rx) = shell.split();
    if let Some((rows, cols)) = term_size() {
        tx.resize(rows, cols).await?;
    }
    if interactive {
        eprintln!(
            "Connected to {} (session {sid}). Ctrl+\\ detaches.",
            a.sandbox
        );
    }
    let raw = if interactive {
        Some(RawMode::enter()?)
    } else {
        None
    };

    // A plain thread reads stdin: tokio's stdin cannot be cancelled, and
    // the process exits without waiting for it.
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut winch = signal(SignalKind::window_change())?;
    let mut stdin_open = true;
    let outcome = loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Ok(ShellEvent::Output(b))) => print_bytes(&b),
                Some(Ok(ShellEvent::Message(t))) => {
                    eprint!("{}\r\n", t.trim_end());
                }
                Some(Ok(ShellEvent::Closed { code, reason })) => match code {
                    Some(1000) | None => break Outcome::Exited,
                    Some(c) => break Outcome::Failed(format!("session closed ({c}): {reason}")),
                },
                Some(Err(e)) => break Outcome::Lost(e.to_string()),
                None => break Outcome::Lost("connection closed".into()),
            },
            input = in_rx.recv(), if stdin_open => match input {
                Some(bytes) => {
                    let (send, detach) = if interactive { split_detach(&bytes) } else { (&bytes[..], false) };
                    if !send.is_empty() {
                        if let Err(e) = tx.send_input(send).await {
                            break Outcome::Lost(e.to_string());
                        }
                    }
                    if detach {
                        let _ = tx.close().await;
                        break Outcome::Detached;
                    }
                }
                None => stdin_open = false,
            },
            _ = winch.recv() => {
                if let Some((rows, cols)) = term_size() {
                    if let Err(e) = tx.resize(rows, cols).await {
                        break Outcome::Lost(e.to_string());
                    }
                }
            }
        }
    };
    drop(raw);

    let reattach = format!("bhatti shell {} --session {sid}", a.sandbox);
    match outcome {
        Outcome::Exited => Ok(0),
        Outcome::Detached => {
            eprintln!("\nDetached from session {sid}. Reattach: {reattach}");
            Ok(0)
        }
        Outcome::Failed(msg) => {
            eprintln!("\n{msg}");
            Ok(1)
        }
        Outcome::Lost(why) => {
            eprintln!("\nConnection lost ({why}). Session {sid} is still running.");
            eprintln!("Reconnect: {reattach}");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_key_splits_input() {
        assert_eq!(split_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_detach(b"ab\x1ccd"), (&b"ab"[..], true));
        assert_eq!(split_detach(b"\x1c"), (&b""[..], true));
    }
}
