//! Sandbox lifecycle: list, create, get, edit, destroy, stop, start, timeouts, stats and the console.

use super::*;

impl Client {
    /// `GET /sandboxes`, filtered by exact label matches (ANDed).
    pub async fn list_sandboxes(&self, labels: &[(String, String)]) -> Result<Vec<api::Sandbox>> {
        let mut path = String::from("/sandboxes");
        for (i, (k, v)) in labels.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str("label=");
            path.push_str(&encode_query_path(k));
            path.push('=');
            path.push_str(&encode_query_path(v));
        }
        self.get(&path, "sandbox list").await
    }

    /// `POST /sandboxes`. Idempotent by name: an existing active sandbox of
    /// that name comes back with `existing: true`.
    pub async fn create_sandbox(&self, req: &api::CreateSandbox) -> Result<Created> {
        let resp = self
            .send_json(Method::POST, "/sandboxes", Some(req))
            .await?;
        let existing = resp
            .headers()
            .get(api::EXISTING_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || resp.status() == hyper::StatusCode::OK;
        let sandbox = Self::decode(resp, "sandbox").await?;
        Ok(Created { sandbox, existing })
    }

    /// Fork: a new sandbox copied from a running one (`create` with
    /// `from`), which keeps running.
    pub async fn fork_sandbox(&self, source: &str, req: &api::CreateSandbox) -> Result<Created> {
        let mut req = req.clone();
        req.from = Some(source.to_string());
        self.create_sandbox(&req).await
    }

    /// `GET /sandboxes/:id` (name or ID).
    pub async fn get_sandbox(&self, id: &str) -> Result<api::Sandbox> {
        self.get(&Self::sb(id), "sandbox").await
    }

    /// `PATCH /sandboxes/:id`: rename, keep-hot, labels.
    pub async fn patch_sandbox(&self, id: &str, patch: &api::PatchSandbox) -> Result<api::Sandbox> {
        self.call(Method::PATCH, &Self::sb(id), Some(patch), "sandbox")
            .await
    }

    /// `DELETE /sandboxes/:id`.
    pub async fn destroy_sandbox(&self, id: &str) -> Result<api::StatusBody> {
        self.delete_status(&Self::sb(id)).await
    }

    /// `POST /sandboxes/:id/stop`.
    pub async fn stop_sandbox(&self, id: &str) -> Result<api::Sandbox> {
        self.call::<_, ()>(
            Method::POST,
            &format!("{}/stop", Self::sb(id)),
            None,
            "sandbox",
        )
        .await
    }

    /// `POST /sandboxes/:id/start`; `force` retries a restore that failed
    /// before (clears the circuit breaker).
    pub async fn start_sandbox(&self, id: &str, force: bool) -> Result<api::Sandbox> {
        let path = format!("{}/start", Self::sb(id));
        if force {
            self.call(
                Method::POST,
                &path,
                Some(&api::StartSandbox { force }),
                "sandbox",
            )
            .await
        } else {
            self.call::<_, ()>(Method::POST, &path, None, "sandbox")
                .await
        }
    }

    /// `GET /sandboxes/:id/stats`: CPU, memory and disk, read in the guest.
    pub async fn stats(&self, id: &str) -> Result<api::SandboxStats> {
        self.get(&format!("{}/stats", Self::sb(id)), "stats").await
    }

    /// `GET /sandboxes/{id}/console`: the newest `bytes` (server default
    /// when none) of the guest's console, as text. Never wakes it.
    pub async fn console(&self, id: &str, bytes: Option<u64>) -> Result<String> {
        let mut path = format!("{}/console", Self::sb(id));
        if let Some(b) = bytes {
            path.push_str(&format!("?bytes={b}"));
        }
        let resp = self.send_json::<()>(Method::GET, &path, None).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}
