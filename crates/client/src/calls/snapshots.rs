//! Named snapshots: take, list, resume, fork, delete.

use super::*;

impl Client {
    /// `POST /sandboxes/:id/checkpoint`: a named snapshot of a sandbox.
    pub async fn checkpoint(&self, sandbox: &str, name: &str) -> Result<api::Snapshot> {
        self.call(
            Method::POST,
            &format!("{}/checkpoint", Self::sb(sandbox)),
            Some(&api::NameBody { name: name.into() }),
            "snapshot",
        )
        .await
    }

    /// `GET /snapshots`.
    pub async fn list_snapshots(&self) -> Result<Vec<api::Snapshot>> {
        self.get("/snapshots", "snapshot list").await
    }

    /// `GET /snapshots/:name`.
    pub async fn get_snapshot(&self, name: &str) -> Result<api::Snapshot> {
        self.get(
            &format!("/snapshots/{}", encode_component(name)),
            "snapshot",
        )
        .await
    }

    /// `DELETE /snapshots/:name`.
    pub async fn delete_snapshot(&self, name: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/snapshots/{}", encode_component(name)))
            .await
    }

    /// `POST /snapshots/:name/resume`: a new sandbox from a snapshot
    /// (`new_name` defaults server-side to `<snap>-<6 hex>`).
    pub async fn resume_snapshot(
        &self,
        name: &str,
        new_name: Option<&str>,
    ) -> Result<api::Sandbox> {
        let body = api::ResumeSnapshot {
            name: new_name.unwrap_or_default().to_string(),
        };
        self.call(
            Method::POST,
            &format!("/snapshots/{}/resume", encode_component(name)),
            Some(&body),
            "sandbox",
        )
        .await
    }
}
