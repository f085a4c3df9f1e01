//! `/health`, `/metrics` and the server's version.

use super::*;

impl Client {
    /// `GET /health` (no auth needed).
    pub async fn health(&self) -> Result<api::Health> {
        self.get("/health", "health").await
    }
}

impl Client {
    /// `GET /admin/pools`: the warm pools (operators only).
    pub async fn pools(&self) -> Result<api::Pools> {
        self.get("/admin/pools", "pools").await
    }

    /// `PUT /admin/pools`: replaces every warm pool until the daemon
    /// restarts (operators only).
    pub async fn set_pools(&self, pools: Vec<api::PoolConfig>) -> Result<api::Pools> {
        self.call(
            Method::PUT,
            "/admin/pools",
            Some(&api::SetPools { pools }),
            "pools",
        )
        .await
    }
}
