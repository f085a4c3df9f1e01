//! Users: identity, API-key hash, quotas and the per-user subnet index.

use rusqlite::types::ValueRef;
use rusqlite::{params, Row, Transaction};
use serde::{Deserialize, Serialize};

use crate::coerce::{get_int, int_from_sql};
use crate::error::{conflict_as, Result, StoreError};
use crate::{count, ids, query_all, query_one, time, to_sql_int, Store};

/// Per-user limits. [`Default`] gives the reference's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    /// Non-destroyed sandboxes at once (default 5).
    pub max_sandboxes: u32,
    /// vCPUs per sandbox (default 4).
    pub max_cpus_per_sandbox: u32,
    /// Memory per sandbox in MiB (default 4096).
    pub max_memory_mb_per_sandbox: u32,
    /// Storage in MiB (default 20480): persistent volumes plus the root disks
    /// of sandboxes created with `disk_size_mb` (the column keeps its v1
    /// name; it bounds every byte a user can make the host store).
    pub max_volume_storage_mb: u64,
    /// Own images (default 10; enforced, docs/decisions.md, "Images (OCI
    /// pull, import, conversion)", Quotas).
    pub max_images: u32,
    /// Named snapshots (default 5).
    pub max_snapshots: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_sandboxes: 5,
            max_cpus_per_sandbox: 4,
            max_memory_mb_per_sandbox: 4096,
            max_volume_storage_mb: 20480,
            max_images: 10,
            max_snapshots: 5,
        }
    }
}

/// A user row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// `usr_<8 hex>`.
    pub id: String,
    /// Unique across users.
    pub name: String,
    /// SHA-256 hex of the API key. Not serialized, so a `User` can never leak
    /// it into a response by accident.
    #[serde(skip_serializing, default)]
    pub api_key_hash: String,
    #[serde(flatten)]
    /// The user's limits (flattened into the JSON object).
    pub quotas: Quotas,
    /// 1-based, unique, allocated as max + 1; decides the owner's network.
    pub subnet_index: u16,
    /// When the user was created, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub created_at: String,
}

/// What [`Store::create_user`] needs.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// Unique, non-empty user name.
    pub name: String,
    /// Limits to create the user with.
    pub quotas: Quotas,
}

/// Files that belonged to a deleted user's volumes, snapshots and images;
/// the rows are gone, the caller removes the files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRemoval {
    /// Host paths of the deleted volumes' files.
    pub volume_files: Vec<String>,
    /// Host directories of the deleted snapshots.
    pub snapshot_dirs: Vec<String>,
    /// Host paths of the deleted images' files.
    pub image_files: Vec<String>,
}

const COLS: &str = "id, name, api_key_hash, max_sandboxes, max_cpus_per_sandbox, \
    max_memory_mb_per_sandbox, max_volume_storage_mb, max_images, max_snapshots, \
    subnet_index, created_at";

fn map_user(r: &Row<'_>) -> Result<User> {
    Ok(User {
        id: r.get("id")?,
        name: r.get("name")?,
        api_key_hash: r.get("api_key_hash")?,
        quotas: Quotas {
            max_sandboxes: get_int(r, "max_sandboxes")?,
            max_cpus_per_sandbox: get_int(r, "max_cpus_per_sandbox")?,
            max_memory_mb_per_sandbox: get_int(r, "max_memory_mb_per_sandbox")?,
            max_volume_storage_mb: get_int(r, "max_volume_storage_mb")?,
            max_images: get_int(r, "max_images")?,
            max_snapshots: get_int(r, "max_snapshots")?,
        },
        subnet_index: get_int(r, "subnet_index")?,
        created_at: r.get("created_at")?,
    })
}

/// The user row inside a transaction (used by quota checks elsewhere).
pub(crate) fn user_in(tx: &Transaction<'_>, id: &str) -> Result<User> {
    query_one(
        tx,
        &format!("SELECT {COLS} FROM users WHERE id = ?1"),
        [id],
        map_user,
    )
}

impl Store {
    /// Creates a user with a fresh ID, the next subnet index and a new API
    /// key. Returns the row and the **plaintext key**, which is not stored
    /// and cannot be shown again. A taken name is `Conflict`.
    pub fn create_user(&self, new: &NewUser) -> Result<(User, String)> {
        if new.name.is_empty() {
            return Err(StoreError::Invalid("user name is empty".into()));
        }
        let key = ids::api_key();
        let hash = ids::hash_token(&key);
        let q = new.quotas;
        let user = self.write(|tx| {
            let max = query_one(tx, "SELECT MAX(subnet_index) FROM users", [], |r| {
                match r.get_ref(0)? {
                    ValueRef::Null => Ok(0),
                    v => int_from_sql(v, "subnet_index"),
                }
            })?;
            let subnet_index = max
                .checked_add(1)
                .and_then(|next| u16::try_from(next).ok())
                .ok_or_else(|| StoreError::Invalid("subnet indexes are exhausted".into()))?;
            let created_at = time::now();
            // A random ID can collide; retry a few times on the primary key.
            for _ in 0..8 {
                let id = ids::user_id();
                let res = tx.execute(
                    &format!(
                        "INSERT INTO users ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"
                    ),
                    params![
                        id,
                        new.name,
                        hash,
                        q.max_sandboxes,
                        q.max_cpus_per_sandbox,
                        q.max_memory_mb_per_sandbox,
                        to_sql_int(q.max_volume_storage_mb, "max_volume_storage_mb")?,
                        q.max_images,
                        q.max_snapshots,
                        subnet_index,
                        created_at,
                    ],
                );
                match res {
                    Ok(_) => return user_in(tx, &id),
                    Err(e) => {
                        let err = conflict_as(e, |d| d.to_string());
                        match &err {
                            StoreError::Exists(d) if d.contains("users.id") => continue,
                            StoreError::Exists(d) if d.contains("users.name") => {
                                return Err(StoreError::Exists(format!(
                                    "user {:?} already exists",
                                    new.name
                                )))
                            }
                            _ => return Err(err),
                        }
                    }
                }
            }
            Err(StoreError::Conflict(
                "could not allocate a unique user id".into(),
            ))
        })?;
        Ok((user, key))
    }

    /// The user with this ID.
    pub fn user(&self, id: &str) -> Result<User> {
        self.read(|c| {
            query_one(
                c,
                &format!("SELECT {COLS} FROM users WHERE id = ?1"),
                [id],
                map_user,
            )
        })
    }

    /// The user with this name.
    pub fn user_by_name(&self, name: &str) -> Result<User> {
        self.read(|c| {
            query_one(
                c,
                &format!("SELECT {COLS} FROM users WHERE name = ?1"),
                [name],
                map_user,
            )
        })
    }

    /// The user owning this plaintext API key (looked up by its SHA-256).
    pub fn user_by_api_key(&self, key: &str) -> Result<User> {
        let hash = ids::hash_token(key);
        self.read(|c| {
            query_one(
                c,
                &format!("SELECT {COLS} FROM users WHERE api_key_hash = ?1"),
                [hash],
                map_user,
            )
        })
    }

    /// All users, oldest first.
    pub fn list_users(&self) -> Result<Vec<User>> {
        self.read(|c| {
            query_all(
                c,
                &format!("SELECT {COLS} FROM users ORDER BY subnet_index"),
                [],
                map_user,
            )
        })
    }

    /// Replaces a user's API key; returns the new plaintext key (the old one
    /// stops working at once).
    pub fn rotate_api_key(&self, user_id: &str) -> Result<String> {
        let key = ids::api_key();
        let hash = ids::hash_token(&key);
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE users SET api_key_hash = ?2 WHERE id = ?1",
                params![user_id, hash],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })?;
        Ok(key)
    }

    /// Replaces a user's quotas.
    pub fn set_quotas(&self, user_id: &str, q: &Quotas) -> Result<User> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE users SET max_sandboxes = ?2, max_cpus_per_sandbox = ?3, \
                 max_memory_mb_per_sandbox = ?4, max_volume_storage_mb = ?5, \
                 max_images = ?6, max_snapshots = ?7 WHERE id = ?1",
                params![
                    user_id,
                    q.max_sandboxes,
                    q.max_cpus_per_sandbox,
                    q.max_memory_mb_per_sandbox,
                    to_sql_int(q.max_volume_storage_mb, "max_volume_storage_mb")?,
                    q.max_images,
                    q.max_snapshots,
                ],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            user_in(tx, user_id)
        })
    }

    /// Deletes a user. Refused (`Conflict`) while the user still has
    /// sandboxes or secrets, as in the reference. Everything else the user
    /// owns — templates, volumes (and their attachment rows), snapshots,
    /// images — is deleted in the same transaction, and the files those rows
    /// pointed at are returned for the caller to remove. Events are kept.
    pub fn delete_user(&self, user_id: &str) -> Result<UserRemoval> {
        self.write(|tx| {
            let user = user_in(tx, user_id)?;
            let sandboxes = count(tx, "SELECT COUNT(*) FROM sandboxes WHERE user_id = ?1", [user_id])?;
            let secrets = count(tx, "SELECT COUNT(*) FROM secrets WHERE user_id = ?1", [user_id])?;
            if sandboxes > 0 || secrets > 0 {
                return Err(StoreError::Conflict(format!(
                    "user {:?} still has {sandboxes} sandbox(es) and {secrets} secret(s)",
                    user.name
                )));
            }
            let strings = |sql: &str| -> Result<Vec<String>> {
                query_all(tx, sql, [user_id], |r| Ok(r.get::<_, String>(0)?))
            };
            let removal = UserRemoval {
                volume_files: strings("SELECT file_path FROM volumes WHERE user_id = ?1 ORDER BY name")?,
                snapshot_dirs: strings("SELECT dir FROM snapshots WHERE user_id = ?1 ORDER BY name")?,
                image_files: strings("SELECT file_path FROM images WHERE user_id = ?1 ORDER BY name")?,
            };
            for sql in [
                "DELETE FROM volume_attachments WHERE volume_id IN (SELECT id FROM volumes WHERE user_id = ?1)",
                "DELETE FROM volumes WHERE user_id = ?1",
                "DELETE FROM snapshots WHERE user_id = ?1",
                "DELETE FROM images WHERE user_id = ?1",
                "DELETE FROM templates WHERE user_id = ?1",
                "DELETE FROM publish_rules WHERE user_id = ?1",
                "DELETE FROM users WHERE id = ?1",
            ] {
                tx.execute(sql, [user_id])?;
            }
            Ok(removal)
        })
    }
}

/// Reads a user's quota row inside a transaction, `NotFound` if missing.
pub(crate) fn quotas_in(tx: &Transaction<'_>, user_id: &str) -> Result<Quotas> {
    Ok(user_in(tx, user_id)?.quotas)
}
