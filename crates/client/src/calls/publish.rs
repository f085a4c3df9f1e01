//! Published ports: public URLs for a sandbox's ports.

use super::*;

impl Client {
    /// `POST /sandboxes/:id/publish`: publish `port` (at `alias`, or one
    /// chosen from the sandbox's name). Publishing a port twice returns
    /// its first rule.
    pub async fn publish(
        &self,
        id: &str,
        port: u16,
        alias: Option<&str>,
    ) -> Result<api::PublishRule> {
        let body = api::Publish {
            port,
            alias: alias.map(str::to_string),
        };
        self.call(
            Method::POST,
            &format!("{}/publish", Self::sb(id)),
            Some(&body),
            "publish rule",
        )
        .await
    }

    /// `GET /sandboxes/:id/publish`: the sandbox's published ports.
    pub async fn published(&self, id: &str) -> Result<Vec<api::PublishRule>> {
        self.get(&format!("{}/publish", Self::sb(id)), "publish rules")
            .await
    }

    /// `DELETE /sandboxes/:id/publish/:port`.
    pub async fn unpublish(&self, id: &str, port: u16) -> Result<()> {
        self.delete_status(&format!("{}/publish/{port}", Self::sb(id)))
            .await
            .map(|_| ())
    }
}
