//! Access without an API key: a sandbox port at a public URL
//! (`/sandboxes/{id}/publish`) and a shared web shell
//! (`/sandboxes/{id}/shell-token`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules;

/// `POST /sandboxes/{id}/publish`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(example = serde_json::json!({"port": 8000, "alias": "my-app"}))]
pub struct Publish {
    /// The guest port to publish, 1–65535. Nothing needs to listen on it
    /// yet.
    #[serde(deserialize_with = "rules::int::whole")]
    #[schemars(schema_with = "rules::port")]
    pub port: u16,
    /// The public name (a DNS label, lower case). Absent: the sandbox's
    /// name with a random suffix.
    #[serde(default)]
    #[schemars(schema_with = "rules::optional_alias")]
    pub alias: Option<String>,
}

/// A published port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PublishRule {
    /// `pub_<16 hex>`.
    pub id: String,
    /// The sandbox whose port is published.
    pub sandbox_id: String,
    /// The guest port.
    pub port: u16,
    /// The public name, unique on this server.
    pub alias: String,
    /// Where the public listener serves it, or a note saying that none is
    /// configured.
    pub url: String,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /sandboxes/{id}/shell-token`: a browser shell anyone holding the
/// URL can open until the token expires or is revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ShareToken {
    /// 64 hex digits; only its hash is stored.
    pub token: String,
    /// The page, with the token in the URL fragment (which browsers never
    /// send to a server).
    pub url: String,
    /// When the token stops working (RFC 3339).
    pub expires_at: String,
}
