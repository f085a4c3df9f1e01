//! `/health`, `/metrics` and the server's version.

use super::*;

impl Client {
    /// `GET /health` (no auth needed).
    pub async fn health(&self) -> Result<api::Health> {
        self.get("/health", "health").await
    }
}
