//! The caller's secrets (values are write-only).

use super::*;

impl Client {
    /// `GET /secrets`: names and timestamps, never values.
    pub async fn list_secrets(&self) -> Result<Vec<api::Secret>> {
        self.get("/secrets", "secret list").await
    }

    /// `POST /secrets` (upsert).
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<api::Secret> {
        let body = api::SetSecret {
            name: name.into(),
            value: value.into(),
        };
        self.call(Method::POST, "/secrets", Some(&body), "secret")
            .await
    }

    /// `DELETE /secrets/:name`.
    pub async fn delete_secret(&self, name: &str) -> Result<api::StatusBody> {
        self.delete_status(&format!("/secrets/{}", encode_component(name)))
            .await
    }
}
