//! Root-filesystem images: per-user ones and admin (global) ones, the latter
//! stored with `user_id = ''`.

use rusqlite::{params, Connection, Row};
use serde::{Deserialize, Serialize};

use crate::coerce::{get_int, get_json, to_json};
use crate::error::{insert_err, Result, StoreError};
use crate::users::quotas_in;
use crate::{count, ids, query_all, query_opt, time, to_sql_int, Store};

/// The `user_id` of admin (global) images.
pub const ADMIN: &str = "";

/// An image row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// 16 hex.
    pub id: String,
    /// Owner; `""` = admin / global.
    pub user_id: String,
    /// Unique per owner.
    pub name: String,
    /// `built-in` | `oci:<ref>` | `import:<name>` | `saved:<sandbox id>`.
    pub source: String,
    /// The image file on the host.
    pub file_path: String,
    /// Size in MiB; counts toward the owner's storage quota.
    pub size_mb: u64,
    /// Registry digest for pulled images, else empty.
    pub oci_digest: String,
    /// The OCI image config (entrypoint, env …) for pulled images, else `{}`.
    pub oci_config: serde_json::Value,
    /// When the row was inserted, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub created_at: String,
    /// What in the image changes how it runs (systemd, no shell …), as
    /// sentences for users; empty when nothing does.
    pub warnings: Vec<String>,
}

/// What [`Store::create_image`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewImage {
    /// `""` for an admin image (no quota applies).
    pub user_id: String,
    /// Unique per owner; a taken name is `Exists`.
    pub name: String,
    /// Where it came from; same forms as [`Image::source`].
    pub source: String,
    /// The image file on the host.
    pub file_path: String,
    /// Size in MiB; checked against the storage quota for user images.
    pub size_mb: u64,
    /// Registry digest for pulled images, else empty.
    pub oci_digest: String,
    /// The OCI image config for pulled images; `Null` is stored as `{}`.
    pub oci_config: serde_json::Value,
    /// See [`Image::warnings`].
    pub warnings: Vec<String>,
}

const COLS: &str =
    "id, user_id, name, source, file_path, size_mb, oci_digest, oci_config, created_at, warnings";

fn map_image(r: &Row<'_>) -> Result<Image> {
    Ok(Image {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        name: r.get("name")?,
        source: r.get("source")?,
        file_path: r.get("file_path")?,
        size_mb: get_int(r, "size_mb")?,
        oci_digest: r.get("oci_digest")?,
        oci_config: get_json(r, "oci_config")?,
        created_at: r.get("created_at")?,
        warnings: get_json(r, "warnings")?,
    })
}

fn exact(c: &Connection, user_id: &str, name: &str) -> Result<Option<Image>> {
    query_opt(
        c,
        &format!("SELECT {COLS} FROM images WHERE user_id = ?1 AND name = ?2"),
        [user_id, name],
        map_image,
    )
}

fn count_of(c: &Connection, user_id: &str) -> Result<u64> {
    count(
        c,
        "SELECT COUNT(*) FROM images WHERE user_id = ?1",
        [user_id],
    )
}

impl Store {
    /// Inserts an image. For a user's image, `max_images` and the storage
    /// quota (shared with volumes and grown disks) are checked in the
    /// same transaction (`Quota`, text `image limit reached (n/max)`;
    /// docs/decisions.md, "Images (OCI pull, import, conversion)", Quotas).
    /// A name the owner already uses is `Conflict`.
    pub fn create_image(&self, i: &NewImage) -> Result<Image> {
        if i.name.is_empty() {
            return Err(StoreError::Invalid("image name is empty".into()));
        }
        let config = if i.oci_config.is_null() {
            "{}".to_string()
        } else {
            to_json(&i.oci_config, "oci_config")?
        };
        self.write(|tx| {
            if i.user_id != ADMIN {
                let max = quotas_in(tx, &i.user_id)?.max_images;
                let n = count_of(tx, &i.user_id)?;
                if n >= u64::from(max) {
                    return Err(StoreError::Quota(format!(
                        "image limit reached ({n}/{max})"
                    )));
                }
                // Images share the storage quota with volumes and disks.
                crate::volumes::check_quota(tx, &i.user_id, i.size_mb)?;
            }
            tx.execute(
                &format!("INSERT INTO images ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"),
                params![
                    ids::row_id(),
                    i.user_id,
                    i.name,
                    i.source,
                    i.file_path,
                    to_sql_int(i.size_mb, "size_mb")?,
                    i.oci_digest,
                    config,
                    time::now(),
                    to_json(&i.warnings, "warnings")?
                ],
            )
            .map_err(|e| insert_err(e, |_| format!("image {:?} already exists", i.name)))?;
            exact(tx, &i.user_id, &i.name)?.ok_or(StoreError::NotFound)
        })
    }

    /// Resolves an image name for a user: the user's own image first, then
    /// one shared with them (the oldest, if several), then an admin image
    /// of that name.
    pub fn image(&self, user_id: &str, name: &str) -> Result<Image> {
        self.read(|c| {
            if let Some(i) = exact(c, user_id, name)? {
                return Ok(i);
            }
            let shared = query_opt(
                c,
                &format!(
                    "SELECT {COLS} FROM images WHERE name = ?2 AND user_id NOT IN (?1, '') AND id IN \
                     (SELECT image_id FROM image_shares WHERE user_id IN (?1, '*')) \
                     ORDER BY created_at LIMIT 1"
                ),
                [user_id, name],
                map_image,
            )?;
            if let Some(i) = shared {
                return Ok(i);
            }
            exact(c, ADMIN, name)?.ok_or(StoreError::NotFound)
        })
    }

    /// Shares the owner's image with these users (their IDs), or with every
    /// user when `with` is empty. Sharing twice is a no-op.
    pub fn share_image(&self, owner_id: &str, name: &str, with: &[String]) -> Result<Image> {
        self.write(|tx| {
            let i = exact(tx, owner_id, name)?.ok_or(StoreError::NotFound)?;
            if i.user_id == ADMIN {
                return Err(StoreError::Invalid(
                    "admin images are every user's already".into(),
                ));
            }
            let everyone = [String::from("*")];
            for u in if with.is_empty() { &everyone[..] } else { with } {
                tx.execute(
                    "INSERT OR IGNORE INTO image_shares (image_id, user_id) VALUES (?1, ?2)",
                    params![i.id, u],
                )?;
            }
            Ok(i)
        })
    }

    /// Takes shares back: from these users, or every share when `with` is
    /// empty.
    pub fn unshare_image(&self, owner_id: &str, name: &str, with: &[String]) -> Result<Image> {
        self.write(|tx| {
            let i = exact(tx, owner_id, name)?.ok_or(StoreError::NotFound)?;
            if with.is_empty() {
                tx.execute("DELETE FROM image_shares WHERE image_id = ?1", [&i.id])?;
            }
            for u in with {
                tx.execute(
                    "DELETE FROM image_shares WHERE image_id = ?1 AND user_id = ?2",
                    params![i.id, u],
                )?;
            }
            Ok(i)
        })
    }

    /// Whom the owner's image is shared with (user IDs; `*` = everyone).
    pub fn image_shares(&self, owner_id: &str, name: &str) -> Result<Vec<String>> {
        self.read(|c| {
            let i = exact(c, owner_id, name)?.ok_or(StoreError::NotFound)?;
            let mut st =
                c.prepare("SELECT user_id FROM image_shares WHERE image_id = ?1 ORDER BY user_id")?;
            let rows = st.query_map([&i.id], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
    }

    /// Exactly `(user_id, name)` — no admin fallback (e.g. to tell "not
    /// yours" from "missing" on delete).
    pub fn image_exact(&self, user_id: &str, name: &str) -> Result<Image> {
        self.read(|c| exact(c, user_id, name)?.ok_or(StoreError::NotFound))
    }

    /// The images a user can use: own ones, then those shared with them,
    /// then admin ones, each by name.
    pub fn list_images(&self, user_id: &str) -> Result<Vec<Image>> {
        self.read(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {COLS} FROM images WHERE user_id = ?1 OR user_id = '' OR id IN \
                     (SELECT image_id FROM image_shares WHERE user_id IN (?1, '*')) \
                     ORDER BY CASE WHEN user_id = ?1 THEN 0 WHEN user_id = '' THEN 2 ELSE 1 END, name"
                ),
                [user_id],
                map_image,
            )
        })
    }

    /// How many own images the user has (admin images not counted).
    pub fn count_images(&self, user_id: &str) -> Result<u64> {
        self.read(|c| count_of(c, user_id))
    }

    /// Deletes exactly `(user_id, name)` — never an admin image on a user's
    /// behalf. Returns the row (the caller removes the file).
    pub fn delete_image(&self, user_id: &str, name: &str) -> Result<Image> {
        self.write(|tx| {
            let i = exact(tx, user_id, name)?.ok_or(StoreError::NotFound)?;
            tx.execute("DELETE FROM image_shares WHERE image_id = ?1", [&i.id])?;
            tx.execute("DELETE FROM images WHERE id = ?1", [&i.id])?;
            Ok(i)
        })
    }
}
