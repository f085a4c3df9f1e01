//! Publish rules: a public alias for one port of one sandbox.

use rusqlite::{params, Connection, Row, Transaction};
use serde::{Deserialize, Serialize};

use crate::coerce::get_int;
use crate::error::{insert_err, Result, StoreError};
use crate::{ids, query_all, query_opt, time, Store};

/// A publish rule row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRule {
    /// `pub_<16 hex>`.
    pub id: String,
    /// The sandbox whose port is published.
    pub sandbox_id: String,
    /// Owner of the sandbox.
    pub user_id: String,
    /// Guest port, 1–65535; unique per sandbox.
    pub port: u16,
    /// Globally unique.
    pub alias: String,
    /// When the rule was made, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub created_at: String,
}

const COLS: &str = "id, sandbox_id, user_id, port, alias, created_at";

fn map_rule(r: &Row<'_>) -> Result<PublishRule> {
    Ok(PublishRule {
        id: r.get("id")?,
        sandbox_id: r.get("sandbox_id")?,
        user_id: r.get("user_id")?,
        port: get_int(r, "port")?,
        alias: r.get("alias")?,
        created_at: r.get("created_at")?,
    })
}

fn by_port(c: &Connection, sandbox_id: &str, port: u16) -> Result<Option<PublishRule>> {
    query_opt(
        c,
        &format!("SELECT {COLS} FROM publish_rules WHERE sandbox_id = ?1 AND port = ?2"),
        params![sandbox_id, port],
        map_rule,
    )
}

fn of_sandbox(c: &Connection, sandbox_id: &str) -> Result<Vec<PublishRule>> {
    query_all(
        c,
        &format!("SELECT {COLS} FROM publish_rules WHERE sandbox_id = ?1 ORDER BY port"),
        [sandbox_id],
        map_rule,
    )
}

/// Deletes every rule of a sandbox inside a transaction; returns them.
pub(crate) fn delete_for_sandbox_in(
    tx: &Transaction<'_>,
    sandbox_id: &str,
) -> Result<Vec<PublishRule>> {
    let rules = of_sandbox(tx, sandbox_id)?;
    tx.execute(
        "DELETE FROM publish_rules WHERE sandbox_id = ?1",
        [sandbox_id],
    )?;
    Ok(rules)
}

impl Store {
    /// Publishes `port` of a sandbox under `alias`. `Conflict` with text
    /// `alias "x" is already taken` or `port N is already published` (the
    /// API returns the existing rule for the latter); `NotFound` if the
    /// sandbox row does not exist.
    pub fn create_publish_rule(
        &self,
        sandbox_id: &str,
        user_id: &str,
        port: u16,
        alias: &str,
    ) -> Result<PublishRule> {
        if port == 0 || alias.is_empty() {
            return Err(StoreError::Invalid(
                "port must be 1-65535 and alias non-empty".into(),
            ));
        }
        self.write(|tx| {
            let id = ids::publish_rule_id();
            tx.execute(
                &format!("INSERT INTO publish_rules ({COLS}) VALUES (?1,?2,?3,?4,?5,?6)"),
                params![id, sandbox_id, user_id, port, alias, time::now()],
            )
            .map_err(|e| {
                insert_err(e, |d| {
                    if d.contains("publish_rules.alias") {
                        format!("alias {alias:?} is already taken")
                    } else if d.contains("publish_rules.port") {
                        format!("port {port} is already published")
                    } else {
                        format!("publish rule already exists ({d})")
                    }
                })
            })?;
            by_port(tx, sandbox_id, port)?.ok_or(StoreError::NotFound)
        })
    }

    /// The rule for `alias` (public proxy routing).
    pub fn publish_rule_by_alias(&self, alias: &str) -> Result<PublishRule> {
        self.read(|c| {
            query_opt(
                c,
                &format!("SELECT {COLS} FROM publish_rules WHERE alias = ?1"),
                [alias],
                map_rule,
            )?
            .ok_or(StoreError::NotFound)
        })
    }

    /// The rule for one port of a sandbox.
    pub fn publish_rule(&self, sandbox_id: &str, port: u16) -> Result<PublishRule> {
        self.read(|c| by_port(c, sandbox_id, port)?.ok_or(StoreError::NotFound))
    }

    /// A sandbox's rules, by port.
    pub fn list_publish_rules(&self, sandbox_id: &str) -> Result<Vec<PublishRule>> {
        self.read(|c| of_sandbox(c, sandbox_id))
    }

    /// A user's rules, by sandbox and port (the URLs of a sandbox list).
    pub fn list_user_publish_rules(&self, user_id: &str) -> Result<Vec<PublishRule>> {
        self.read(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {COLS} FROM publish_rules WHERE user_id = ?1 ORDER BY sandbox_id, port"
                ),
                [user_id],
                map_rule,
            )
        })
    }

    /// Every rule (e.g. to warm a route cache or the ACME host policy).
    pub fn list_all_publish_rules(&self) -> Result<Vec<PublishRule>> {
        self.read(|c| {
            query_all(
                c,
                &format!("SELECT {COLS} FROM publish_rules ORDER BY alias"),
                [],
                map_rule,
            )
        })
    }

    /// Unpublishes one port; `NotFound` if it was not published.
    pub fn delete_publish_rule(&self, sandbox_id: &str, port: u16) -> Result<PublishRule> {
        self.write(|tx| {
            let r = by_port(tx, sandbox_id, port)?.ok_or(StoreError::NotFound)?;
            tx.execute("DELETE FROM publish_rules WHERE id = ?1", [&r.id])?;
            Ok(r)
        })
    }

    /// Unpublishes every port of a sandbox; returns the removed rules.
    pub fn delete_publish_rules(&self, sandbox_id: &str) -> Result<Vec<PublishRule>> {
        self.write(|tx| delete_for_sandbox_in(tx, sandbox_id))
    }
}
