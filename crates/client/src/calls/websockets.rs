//! WebSocket sessions: the interactive shell and the piped exec.

use super::*;

impl Client {
    /// Opens the interactive shell of a sandbox (`GET /sandboxes/:id/ws`):
    /// `session` attaches to that session (taking it over from another
    /// client); otherwise `new` forces a fresh one, and without it the
    /// server reattaches the newest detached shell if there is one.
    pub async fn shell(&self, id: &str, new: bool, session: Option<&str>) -> Result<Shell> {
        let mut path = format!("{}/ws", Self::sb(id));
        if let Some(s) = session {
            path.push_str("?session=");
            path.push_str(&encode_component(s));
        } else if new {
            path.push_str("?new=true");
        }
        let ws = self.ws_connect(&path).await?;
        Shell::start(ws).await
    }

    /// Opens a piped (non-TTY) session (`GET /sandboxes/:id/exec/ws`):
    /// with `session`, reattaches to it; otherwise starts `start.cmd`.
    pub async fn exec_ws(
        &self,
        id: &str,
        start: &api::PipedStart,
        session: Option<&str>,
    ) -> Result<PipedSession> {
        let mut path = format!("{}/exec/ws", Self::sb(id));
        if let Some(s) = session {
            path.push_str("?session=");
            path.push_str(&encode_component(s));
        }
        let ws = self.ws_connect(&path).await?;
        PipedSession::start(ws, if session.is_some() { None } else { Some(start) }).await
    }

    async fn ws_connect(&self, path: &str) -> Result<ws::Ws> {
        let conn = self.inner.target.dial(&self.inner.endpoint).await?;
        let url = format!(
            "ws://{}{}{}",
            self.inner.target.host_header(),
            self.inner.target.prefix(),
            path
        );
        let (ws, headers) = ws::handshake(conn, &url, self.inner.auth.as_ref()).await?;
        self.note_headers(&headers);
        Ok(ws)
    }
}
