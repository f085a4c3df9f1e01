//! Directory watches (WATCH_REQ, an addition that agents announce as
//! `files.watch` in HELLO): the guest's inotify, streamed over one
//! connection for as long as the [`Watch`] lives.

use bhatti_protocol::messages::{StatusResponse, WatchEvent, WatchRequest, FEATURE_FILES_WATCH};
use bhatti_protocol::MsgType;

use crate::transport::Conn;
use crate::{agent_error, AgentClient, ClientError, Result};

/// A watch in the guest. Dropping it closes its connection, which ends the
/// watch there.
pub struct Watch {
    conn: Conn,
}

impl Watch {
    /// The next change; `None` when the watched directory is gone (deleted
    /// or moved away) or the agent closed the connection.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>> {
        match self.conn.recv().await? {
            Some(f) if f.is(MsgType::WatchEvent) => Ok(Some(f.parse_json()?)),
            Some(f) if f.is(MsgType::Exit) => Ok(None),
            Some(f) if f.is(MsgType::Error) => Err(agent_error(&f)),
            Some(f) => Err(ClientError::UnexpectedFrame(f.kind)),
            None => Ok(None),
        }
    }
}

impl AgentClient {
    /// Whether the agent serves directory watches (it says so in HELLO; a
    /// v1 agent, or one from before watches, does not).
    pub async fn can_watch(&self) -> Result<bool> {
        Ok(self
            .hello()
            .await?
            .is_some_and(|h| h.features.iter().any(|f| f == FEATURE_FILES_WATCH)))
    }

    /// Watches directory `path` (and every directory under it when
    /// `recursive`). Returns once the watch is in place: every change
    /// after that is reported.
    pub async fn watch(&self, path: &str, recursive: bool) -> Result<Watch> {
        let p = serde_json::to_vec(&WatchRequest {
            path: path.into(),
            recursive,
        })?;
        let mut conn = self.request(MsgType::WatchReq, &p).await?;
        let st: StatusResponse = conn.expect(MsgType::WatchResp).await?.parse_json()?;
        if !st.is_ok() {
            return Err(ClientError::status(st));
        }
        Ok(Watch { conn })
    }
}
