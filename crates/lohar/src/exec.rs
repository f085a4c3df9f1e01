//! One-shot piped exec and detached exec.
//!
//! One-shot: the child runs in its own process group with piped stdio; stdout and
//! stderr stream as STDOUT/STDERR frames in 8 KiB chunks; STDIN frames feed its
//! stdin (an empty STDIN frame closes it); KILL, a dropped host connection or a
//! host-side timeout (which drops the connection) SIGKILL the whole group. After
//! both output pipes drain and the child is reaped, the guest is synced (guest
//! mode) and EXIT carries the code.

use std::process::Stdio;
use std::sync::Arc;

use bhatti_protocol::messages::{DetachedInfo, ExecRequest};
use bhatti_protocol::MsgType;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::conn::{reader_task, FrameTx, Reader};
use crate::spawn::{command, default_run_as, exit_code, signal_group, spawn, wait, Leader};

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

pub async fn oneshot(agent: &Arc<Agent>, er: ExecRequest, rd: Reader, tx: &FrameTx) {
    let run_as = default_run_as(agent);
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
            tx.error(format!("start: {e}")).await;
            return;
        }
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);

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

    let mut incoming = reader_task(rd);
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
                    // DECISIONS §7.1: a host that went away (or timed out) takes the
                    // whole group with it. Dropping the child hands reaping to tokio.
                    signal_group(pgid, Signal::SIGKILL);
                    return;
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
}

pub async fn detached(agent: &Arc<Agent>, er: ExecRequest, tx: &FrameTx) {
    let output_file = if er.output_file.is_empty() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("/tmp/bhatti-detach-{nanos}.log")
    } else {
        er.output_file.clone()
    };
    let file = match open_output(&output_file, agent.config().file_owner) {
        Ok(f) => f,
        Err(e) => {
            tx.error(format!("start: open {output_file}: {e}")).await;
            return;
        }
    };
    let run_as = default_run_as(agent);
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
            tx.error(format!("start: {e}")).await;
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
            tx.error(format!("start: {e}")).await;
        }
    }
}

fn open_output(path: &str, owner: Option<(u32, u32)>) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(&f, Some(u), Some(g))?;
    }
    Ok(f)
}
