//! Commands: buffered, streamed (NDJSON) and detached exec, and sessions.

use super::*;

impl Client {
    /// `POST /sandboxes/:id/exec`, buffered.
    pub async fn exec(&self, id: &str, req: &api::ExecRequest) -> Result<api::ExecResponse> {
        let mut req = req.clone();
        req.detach = false;
        self.call(
            Method::POST,
            &format!("{}/exec", Self::sb(id)),
            Some(&req),
            "exec result",
        )
        .await
    }

    /// `POST /sandboxes/:id/exec` with `Accept: application/x-ndjson`:
    /// output events as they happen.
    pub async fn exec_stream(&self, id: &str, req: &api::ExecRequest) -> Result<ExecStream> {
        let mut req = req.clone();
        req.detach = false;
        let body = serde_json::to_vec(&req).map_err(|source| ClientError::Decode {
            what: "request body",
            source,
        })?;
        let resp = self
            .send(
                Method::POST,
                &format!("{}/exec", Self::sb(id)),
                &[(header::ACCEPT, HeaderValue::from_static(api::NDJSON))],
                Some((Bytes::from(body), "application/json")),
            )
            .await?;
        Ok(ExecStream {
            body: resp.into_body(),
            buf: Vec::new(),
            done: false,
        })
    }

    /// `POST /sandboxes/:id/exec` with `detach: true`: starts the command
    /// in the background and returns its PID and output file.
    pub async fn exec_detached(
        &self,
        id: &str,
        req: &api::ExecRequest,
    ) -> Result<api::DetachedResponse> {
        let mut req = req.clone();
        req.detach = true;
        self.call(
            Method::POST,
            &format!("{}/exec", Self::sb(id)),
            Some(&req),
            "detached exec",
        )
        .await
    }

    /// `GET /sandboxes/:id/sessions`.
    pub async fn sessions(&self, id: &str) -> Result<Vec<api::Session>> {
        self.get(&format!("{}/sessions", Self::sb(id)), "session list")
            .await
    }
}
