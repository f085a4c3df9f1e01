//! One-shot piped exec and detached exec.
//!
//! One-shot: the child runs in its own process group with piped stdio; stdout and
//! stderr stream as STDOUT/STDERR frames in 8 KiB chunks; STDIN frames feed its
//! stdin (an empty STDIN frame closes it); KILL, a dropped host connection or a
//! host-side timeout (which drops the connection) SIGKILL the whole group. After
//! both output pipes drain and the child is reaped, the guest is synced (guest
//! mode) and EXIT carries the code.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use bhatti_protocol::messages::{DetachedInfo, ExecRequest};
use bhatti_protocol::MsgType;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::conn::After;
use crate::fail::Fail;
use crate::spawn::{command, exit_code, run_as_for, signal_group, spawn, wait, Leader};
use crate::wire::{exec_reader, reader_task, FrameTx, Reader};

const PIPE_CHUNK: usize = 8 * 1024;

async fn pump<R: AsyncRead + Unpin>(mut r: R, kind: MsgType, tx: FrameTx) {
    let mut buf = vec![0u8; PIPE_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !tx.send(kind, &buf[..n]).await {
                    // Host gone: keep draining so the child never blocks on a full pipe
                    // before the kill lands.
                    continue;
                }
            }
        }
    }
}

/// `reuse`: the connection carries more requests after this one (see
/// `conn::serve`): its reader then stops at the next request instead of
/// reading to the end of the stream.
pub async fn oneshot(
    agent: &Arc<Agent>,
    er: ExecRequest,
    rd: Reader,
    tx: &FrameTx,
    reuse: bool,
) -> After {
    let run_as = match run_as_for(agent, &er.user) {
        Ok(r) => r,
        Err(e) => {
            tx.error(e).await;
            return After::Open(rd);
        }
    };
    let mut std_cmd = command(
        agent,
        &er.argv,
        &er.env,
        &er.cwd,
        run_as.as_ref(),
        Leader::Group,
    );
    std_cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match spawn(std_cmd) {
        Ok(c) => c,
        Err(e) => {
            tx.error(Fail::io("start", &e)).await;
            return After::Open(rd);
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);

    let out = child.stdout.take().map(|o| {
        let tx = tx.clone();
        tokio::spawn(pump(o, MsgType::Stdout, tx))
    });
    let err = child.stderr.take().map(|e| {
        let tx = tx.clone();
        tokio::spawn(pump(e, MsgType::Stderr, tx))
    });

    // stdin writes run in their own task so a child that never reads cannot stall
    // the handling of KILL or of a disconnect.
    let (stdin_tx, mut stdin_rx) = mpsc::channel::<Vec<u8>>(16);
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            while let Some(buf) = stdin_rx.recv().await {
                if buf.is_empty() || stdin.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
    }
    let mut stdin_tx = Some(stdin_tx);

    let (mut incoming, next) = if reuse {
        let (incoming, next) = exec_reader(rd);
        (incoming, Some(next))
    } else {
        (reader_task(rd), None)
    };
    let outputs = async {
        if let Some(o) = out {
            let _ = o.await;
        }
        if let Some(e) = err {
            let _ = e.await;
        }
    };
    tokio::pin!(outputs);
    let waiting = wait(&mut child);
    tokio::pin!(waiting);
    let mut outputs_done = false;
    let status = loop {
        tokio::select! {
            _ = &mut outputs, if !outputs_done => outputs_done = true,
            st = &mut waiting, if outputs_done => break st,
            f = incoming.recv() => match f {
                Some(f) if f.is(MsgType::Stdin) => {
                    if let Some(s) = &stdin_tx {
                        // An empty STDIN frame closes stdin; so does a dead pipe.
                        if f.payload.is_empty() || s.send(f.payload).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                Some(f) if f.is(MsgType::Kill) => signal_group(pgid, Signal::SIGKILL),
                Some(_) => {}
                None => {
                    // A host that went away (or timed out) takes the whole group
                    // with it (docs/protocol.md, "Behaviour worth knowing").
                    // Dropping the child hands reaping to tokio.
                    signal_group(pgid, Signal::SIGKILL);
                    return After::Closed;
                }
            },
        }
    };
    drop(stdin_tx);
    let code = match status {
        Ok(st) => exit_code(st),
        Err(e) => {
            tracing::warn!(error = %e, "wait failed");
            1
        }
    };
    if agent.config().sync_after_exec {
        let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
    }
    tx.exit(code).await;
    match next {
        Some(next) => After::Reading(next),
        None => After::Closed,
    }
}

pub async fn detached(agent: &Arc<Agent>, er: ExecRequest, tx: &FrameTx) {
    let (output_file, fresh) = if er.output_file.is_empty() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        (format!("/tmp/bhatti-detach-{nanos}.log"), true)
    } else {
        (er.output_file.clone(), false)
    };
    let path = match check_output_path(&output_file) {
        Ok(p) => p,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    // Opened as the user: the path runs through directories the sandbox's code
    // controls (see crate::fsuser).
    let opened = agent
        .fs_user()
        .run(move || open_output(&path, fresh))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            tx.error(format!("start: open {output_file}: {e}")).await;
            return;
        }
    };
    let run_as = match run_as_for(agent, &er.user) {
        Ok(r) => r,
        Err(e) => {
            tx.error(e).await;
            return;
        }
    };
    let mut std_cmd = command(
        agent,
        &er.argv,
        &er.env,
        &er.cwd,
        run_as.as_ref(),
        Leader::Session,
    );
    let err_file = match file.try_clone() {
        Ok(f) => f,
        Err(e) => {
            tx.error(Fail::io("start", &e)).await;
            return;
        }
    };
    std_cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err_file));
    match spawn(std_cmd) {
        Ok(mut child) => {
            let pid = child.id().map(i64::from).unwrap_or(0);
            // Reap in the background; the process outlives this connection.
            tokio::spawn(async move {
                let _ = wait(&mut child).await;
            });
            let info = DetachedInfo { pid, output_file };
            tx.send_json(MsgType::Stdout, &info).await;
            tx.exit(0).await;
        }
        Err(e) => {
            // With the errno's code, as a foreground exec's: a missing
            // program is `not_found`, not the caller's bad input.
            tx.error(Fail::io("start", &e)).await;
        }
    }
}

/// A detached exec's output file must be absolute and free of `..`: it is
/// resolved as given, not against the agent's working directory, and a path
/// that climbs out of where it seems to point is refused rather than guessed at.
fn check_output_path(p: &str) -> Result<PathBuf, Fail> {
    if p.contains('\0') {
        return Err(Fail::invalid("output file contains a NUL byte"));
    }
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(Fail::invalid(format!(
            "output file must be an absolute path: {p}"
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(Fail::invalid(format!(
            "output file must not contain '..': {p}"
        )));
    }
    Ok(path.to_path_buf())
}

/// Opens (creating or truncating) the output file; run with the user's
/// credentials. A symlink in the last component is refused (O_NOFOLLOW), and
/// `fresh` (lohar's own default name in the shared /tmp) must not exist yet.
fn open_output(path: &Path, fresh: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o644);
    if fresh {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    // Non-blocking, so a FIFO without a reader fails instead of hanging.
    let f = match opts
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && path.is_symlink() => {
            return Err(std::io::Error::other("it is a symbolic link (refused)"));
        }
        Err(e) => return Err(e),
    };
    // The command's writes should block as usual.
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let flags = fcntl(f.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_are_absolute_without_parent_components() {
        assert!(check_output_path("/tmp/x.log").is_ok());
        assert!(check_output_path("/tmp/./x.log").is_ok());
        for bad in ["x.log", "../x", "/tmp/../etc/x", "/tmp/..", "/a\0b"] {
            assert!(check_output_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
