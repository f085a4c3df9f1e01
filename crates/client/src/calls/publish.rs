//! Access without a key: public URLs for a sandbox's ports, and its shared web shell.

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

impl Client {
    /// `POST /sandboxes/:id/shell-token`: a web-shell URL anyone holding it
    /// can open (replaces the previous one).
    pub async fn share_shell(&self, id: &str) -> Result<api::ShareToken> {
        self.call::<_, ()>(
            Method::POST,
            &format!("{}/shell-token", Self::sb(id)),
            None,
            "shell token",
        )
        .await
    }

    /// `DELETE /sandboxes/:id/shell-token`: revoke it and end its sessions.
    pub async fn revoke_shell(&self, id: &str) -> Result<()> {
        self.delete_status(&format!("{}/shell-token", Self::sb(id)))
            .await
            .map(|_| ())
    }
}
