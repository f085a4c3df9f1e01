//! Named snapshots (checkpoints): a directory on disk plus its manifest.

use rusqlite::{params, Connection, Row};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::coerce::{from_json_value, get_int, get_json, to_json};
use crate::error::{insert_err, Result, StoreError};
use crate::users::quotas_in;
use crate::{count, ids, query_all, query_one, time, to_sql_int, Store};

/// A snapshot row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// 16 hex.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Unique per owner.
    pub name: String,
    /// ID of the sandbox it was taken from (which may since be destroyed).
    pub source_sandbox: String,
    /// `snapshots/<user>/<name>/`.
    pub dir: String,
    /// The checkpoint manifest (the engine's `CheckpointManifest`), with
    /// whole-number floats normalized to integers.
    pub manifest: serde_json::Value,
    /// Size on disk in MiB; counts toward the owner's storage quota.
    pub size_mb: u64,
    /// When it was taken, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub created_at: String,
    /// The image of the sandbox it was taken from; what a sandbox resumed
    /// from it records.
    pub image: String,
}

impl Snapshot {
    /// The manifest as `T` (tolerant of float-typed integers).
    pub fn manifest_as<T: DeserializeOwned>(&self) -> Result<T> {
        from_json_value(self.manifest.clone(), "manifest")
    }
}

/// What [`Store::create_snapshot`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewSnapshot {
    /// Owner.
    pub user_id: String,
    /// Unique per owner; a taken name is `Exists`.
    pub name: String,
    /// ID of the sandbox it is taken from.
    pub source_sandbox: String,
    /// `snapshots/<user>/<name>/`.
    pub dir: String,
    /// The checkpoint manifest (the engine's `CheckpointManifest`).
    pub manifest: serde_json::Value,
    /// Size on disk in MiB.
    pub size_mb: u64,
    /// The source sandbox's image (empty: `minimal`).
    pub image: String,
}

const COLS: &str = "id, user_id, name, source_sandbox, dir, manifest, size_mb, created_at, image";

fn map_snapshot(r: &Row<'_>) -> Result<Snapshot> {
    Ok(Snapshot {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        name: r.get("name")?,
        source_sandbox: r.get("source_sandbox")?,
        dir: r.get("dir")?,
        manifest: get_json(r, "manifest")?,
        size_mb: get_int(r, "size_mb")?,
        created_at: r.get("created_at")?,
        image: r.get("image")?,
    })
}

fn by_name(c: &Connection, user_id: &str, name: &str) -> Result<Snapshot> {
    query_one(
        c,
        &format!("SELECT {COLS} FROM snapshots WHERE user_id = ?1 AND name = ?2"),
        [user_id, name],
        map_snapshot,
    )
}

fn count_of(c: &Connection, user_id: &str) -> Result<u64> {
    count(
        c,
        "SELECT COUNT(*) FROM snapshots WHERE user_id = ?1",
        [user_id],
    )
}

impl Store {
    /// Inserts a snapshot after checking `max_snapshots` in the same
    /// transaction (`Quota`, text `snapshot limit reached (n/max)`). A name
    /// the user already uses is `Conflict`.
    pub fn create_snapshot(&self, s: &NewSnapshot) -> Result<Snapshot> {
        if s.name.is_empty() {
            return Err(StoreError::Invalid("snapshot name is empty".into()));
        }
        let manifest = if s.manifest.is_null() {
            "{}".to_string()
        } else {
            to_json(&s.manifest, "manifest")?
        };
        self.write(|tx| {
            let max = quotas_in(tx, &s.user_id)?.max_snapshots;
            let n = count_of(tx, &s.user_id)?;
            if n >= u64::from(max) {
                return Err(StoreError::Quota(format!(
                    "snapshot limit reached ({n}/{max})"
                )));
            }
            tx.execute(
                &format!("INSERT INTO snapshots ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
                params![
                    ids::row_id(),
                    s.user_id,
                    s.name,
                    s.source_sandbox,
                    s.dir,
                    manifest,
                    to_sql_int(s.size_mb, "size_mb")?,
                    time::now(),
                    if s.image.is_empty() {
                        "minimal"
                    } else {
                        s.image.as_str()
                    }
                ],
            )
            .map_err(|e| insert_err(e, |_| format!("snapshot {:?} already exists", s.name)))?;
            by_name(tx, &s.user_id, &s.name)
        })
    }

    /// One of the user's snapshots by name.
    pub fn snapshot(&self, user_id: &str, name: &str) -> Result<Snapshot> {
        self.read(|c| by_name(c, user_id, name))
    }

    /// The user's snapshots, newest first.
    pub fn list_snapshots(&self, user_id: &str) -> Result<Vec<Snapshot>> {
        self.read(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {COLS} FROM snapshots WHERE user_id = ?1 \
                     ORDER BY created_at DESC, rowid DESC"
                ),
                [user_id],
                map_snapshot,
            )
        })
    }

    /// How many snapshots the user has.
    pub fn count_snapshots(&self, user_id: &str) -> Result<u64> {
        self.read(|c| count_of(c, user_id))
    }

    /// Deletes one of the user's snapshots; returns the row (the caller
    /// removes the directory).
    pub fn delete_snapshot(&self, user_id: &str, name: &str) -> Result<Snapshot> {
        self.write(|tx| {
            let s = by_name(tx, user_id, name)?;
            tx.execute("DELETE FROM snapshots WHERE id = ?1", [&s.id])?;
            Ok(s)
        })
    }
}
