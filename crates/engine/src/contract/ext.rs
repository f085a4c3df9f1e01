//! Operations inside a sandbox, shared by every engine: they all go through the
//! agent of a hot sandbox.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bhatti_agent_client::{
    DetachedInfo, ExecRequest, ExecResult, ExecStream, FileInfo, FileReadResponse, ReadOptions,
    ShellOptions, Terminal, Tunnel,
};
use bhatti_protocol::messages::{ActivityInfo, SessionInfo};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::contract::{Engine, Result};

/// `/proc/net/tcp{,6}` as printed by `cat`; listening sockets are state `0A`.
pub fn parse_listening_ports(text: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = text
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() < 4 || cols[3] != "0A" {
                return None;
            }
            let port = cols[1].rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// In-sandbox operations (exec, sessions, files, ports, tunnels), written
/// once over [`Engine::agent`] for every engine. Each needs a hot sandbox
/// (`NotHot` otherwise) and counts as activity; agent failures come back
/// as [`EngineError::Agent`](crate::EngineError::Agent).
#[async_trait]
pub trait EngineExt: Engine {
    /// Runs `argv` in the guest and waits for it; output is buffered.
    async fn exec(&self, id: &str, argv: Vec<String>) -> Result<ExecResult> {
        Ok(self.agent(id)?.exec(argv).await?)
    }

    /// Runs `req` (env, cwd, user, …) in the guest, feeding it `stdin`
    /// if given, and waits for it; output past 10 MiB is dropped.
    async fn exec_request(
        &self,
        id: &str,
        req: ExecRequest,
        stdin: Option<&[u8]>,
    ) -> Result<ExecResult> {
        Ok(self.agent(id)?.exec_request(req, stdin).await?)
    }

    /// Starts `req` in the guest and returns its live output and stdin.
    async fn exec_stream(&self, id: &str, req: ExecRequest) -> Result<ExecStream> {
        Ok(self.agent(id)?.exec_stream(req).await?)
    }

    /// Starts `argv` detached (its own session, output to `output_file`)
    /// and returns at once.
    async fn exec_detached(
        &self,
        id: &str,
        argv: Vec<String>,
        output_file: Option<String>,
    ) -> Result<DetachedInfo> {
        Ok(self.agent(id)?.exec_detached(argv, output_file).await?)
    }

    /// Starts `req` detached and returns at once.
    async fn exec_detached_request(&self, id: &str, req: ExecRequest) -> Result<DetachedInfo> {
        Ok(self.agent(id)?.exec_detached_request(req).await?)
    }

    /// Opens a new TTY session.
    async fn shell(&self, id: &str, opts: ShellOptions) -> Result<(SessionInfo, Terminal)> {
        Ok(self.agent(id)?.shell(opts).await?)
    }

    /// Attaches to the session `session_id` (scrollback, then live
    /// output); with `if_detached`, fails instead of taking it from
    /// another client.
    async fn shell_attach(
        &self,
        id: &str,
        session_id: &str,
        if_detached: bool,
    ) -> Result<(SessionInfo, Terminal)> {
        Ok(self.agent(id)?.attach(session_id, if_detached).await?)
    }

    /// Opens a persistent non-TTY session running `argv` (stderr merged
    /// into stdout), killed once detached for `max_idle_sec` seconds (0:
    /// the agent's default).
    async fn piped_session(
        &self,
        id: &str,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        max_idle_sec: i64,
    ) -> Result<(SessionInfo, Terminal)> {
        Ok(self
            .agent(id)?
            .piped_session(argv, env, max_idle_sec)
            .await?)
    }

    /// The guest's sessions.
    async fn session_list(&self, id: &str) -> Result<Vec<SessionInfo>> {
        Ok(self.agent(id)?.session_list().await?)
    }

    /// SIGKILLs the session's process group.
    async fn session_kill(&self, id: &str, session_id: &str) -> Result<()> {
        Ok(self.agent(id)?.session_kill(session_id).await?)
    }

    /// When the guest last saw activity, and how many sessions run and
    /// are attached (input to the thermal policy).
    async fn activity(&self, id: &str) -> Result<ActivityInfo> {
        Ok(self.agent(id)?.activity().await?)
    }

    /// Streams the guest file `path` into `out`; returns its metadata and
    /// the number of bytes written.
    async fn file_read<W: AsyncWrite + Unpin + Send>(
        &self,
        id: &str,
        path: &str,
        opts: ReadOptions,
        out: &mut W,
    ) -> Result<(FileReadResponse, u64)> {
        Ok(self.agent(id)?.file_read(path, opts, out).await?)
    }

    /// Writes `size` bytes from `src` to the guest file `path` atomically,
    /// with `mode` (octal text, empty = `0644`).
    async fn file_write<R: AsyncRead + Unpin + Send>(
        &self,
        id: &str,
        path: &str,
        mode: &str,
        size: u64,
        src: &mut R,
    ) -> Result<()> {
        Ok(self.agent(id)?.file_write(path, mode, size, src).await?)
    }

    /// Metadata of the guest file `path`.
    async fn file_stat(&self, id: &str, path: &str) -> Result<FileInfo> {
        Ok(self.agent(id)?.file_stat(path).await?)
    }

    /// The entries of the guest directory `path`.
    async fn file_ls(&self, id: &str, path: &str) -> Result<Vec<FileInfo>> {
        Ok(self.agent(id)?.file_ls(path).await?)
    }

    /// TCP ports listening inside the guest, from `/proc/net/tcp{,6}`.
    async fn listening_ports(&self, id: &str) -> Result<Vec<u16>> {
        let r = self
            .agent(id)?
            .exec(["cat", "/proc/net/tcp", "/proc/net/tcp6"])
            .await?;
        Ok(parse_listening_ports(&r.stdout_str()))
    }

    /// A raw byte stream to `127.0.0.1:<port>` in the guest.
    async fn tunnel(&self, id: &str, port: u16) -> Result<Tunnel> {
        Ok(self.agent(id)?.forward(port).await?)
    }
}

impl<E: Engine + ?Sized> EngineExt for E {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0400 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:A2B4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 20 4 30 10 -1
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(parse_listening_ports(text), vec![1024, 8080]);
        assert!(parse_listening_ports("").is_empty());
    }
}
