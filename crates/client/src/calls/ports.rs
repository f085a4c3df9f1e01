//! Listening ports and the caller's ports across sandboxes.

use super::*;

impl Client {
    /// `GET /sandboxes/:id/ports`: listening ports and their proxy paths.
    pub async fn ports(&self, id: &str) -> Result<Vec<api::Port>> {
        self.get(&format!("{}/ports", Self::sb(id)), "port list")
            .await
    }

    /// `GET /ports`: ports of all the caller's hot sandboxes.
    pub async fn all_ports(&self) -> Result<Vec<api::Port>> {
        self.get("/ports", "port list").await
    }
}
