//! Per-user secrets. Values arrive and leave encrypted (the server owns the
//! age identity); the store never sees plaintext, and listing returns names
//! and times only.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::error::{insert_err, Result, StoreError};
use crate::{query_all, query_one, time, Store};

/// A secret without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    /// Unique per user.
    pub name: String,
    /// First set, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub created_at: String,
    /// Last set (equals `created_at` until replaced), RFC 3339 UTC with milliseconds (`time::now()` format).
    pub updated_at: String,
}

impl Store {
    /// Creates or replaces a secret (upsert); `created_at` survives a
    /// replace, `updated_at` moves.
    pub fn set_secret(
        &self,
        user_id: &str,
        name: &str,
        value_encrypted: &[u8],
    ) -> Result<SecretMeta> {
        if name.is_empty() {
            return Err(StoreError::Invalid("secret name is empty".into()));
        }
        self.write(|tx| {
            let now = time::now();
            tx.execute(
                "INSERT INTO secrets (user_id, name, value_encrypted, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?4) \
                 ON CONFLICT (user_id, name) DO UPDATE SET \
                 value_encrypted = excluded.value_encrypted, updated_at = excluded.updated_at",
                params![user_id, name, value_encrypted, now],
            )
            .map_err(|e| insert_err(e, |d| d.to_string()))?;
            query_one(
                tx,
                "SELECT name, created_at, updated_at FROM secrets WHERE user_id = ?1 AND name = ?2",
                [user_id, name],
                map_meta,
            )
        })
    }

    /// The user's secrets (names and times), by name.
    pub fn list_secrets(&self, user_id: &str) -> Result<Vec<SecretMeta>> {
        self.read(|c| {
            query_all(
                c,
                "SELECT name, created_at, updated_at FROM secrets WHERE user_id = ?1 ORDER BY name",
                [user_id],
                map_meta,
            )
        })
    }

    /// The encrypted value of one secret.
    pub fn secret_value(&self, user_id: &str, name: &str) -> Result<Vec<u8>> {
        self.read(|c| {
            query_one(
                c,
                "SELECT value_encrypted FROM secrets WHERE user_id = ?1 AND name = ?2",
                [user_id, name],
                |r| Ok(r.get(0)?),
            )
        })
    }

    /// Deletes a secret; `NotFound` if there was none.
    pub fn delete_secret(&self, user_id: &str, name: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "DELETE FROM secrets WHERE user_id = ?1 AND name = ?2",
                [user_id, name],
            )?;
            if n == 0 {
                Err(StoreError::NotFound)
            } else {
                Ok(())
            }
        })
    }
}

fn map_meta(r: &rusqlite::Row<'_>) -> Result<SecretMeta> {
    Ok(SecretMeta {
        name: r.get("name")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
    })
}
