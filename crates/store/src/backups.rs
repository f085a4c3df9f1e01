//! Volume backups: one row per object in the backup bucket.
//!
//! A row is written only after its object is completely uploaded (the
//! upload is the commit point), so a failed or interrupted backup leaves no
//! row; the row is deleted before its object, so a listed backup always
//! had its object when it was listed.

use rusqlite::{params, Row};

use crate::coerce::get_int;
use crate::error::Result;
use crate::{ids, query_all, query_opt, time, to_sql_int, Store};

/// One backup of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// 16 hex.
    pub id: String,
    /// The volume's name when it was backed up.
    pub volume_name: String,
    /// Its owner.
    pub user_id: String,
    /// The object's key in the bucket.
    pub s3_key: String,
    /// Size of the uncompressed volume image, in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the uncompressed image, hex.
    pub sha256: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

const COLS: &str = "id, volume_name, user_id, s3_key, size_bytes, sha256, created_at";

fn map_backup(r: &Row<'_>) -> Result<Backup> {
    Ok(Backup {
        id: r.get("id")?,
        volume_name: r.get("volume_name")?,
        user_id: r.get("user_id")?,
        s3_key: r.get("s3_key")?,
        size_bytes: get_int(r, "size_bytes")?,
        sha256: r.get("sha256")?,
        created_at: r.get("created_at")?,
    })
}

impl Store {
    /// Records a completed backup.
    pub fn create_backup(
        &self,
        user_id: &str,
        volume_name: &str,
        s3_key: &str,
        size_bytes: u64,
        sha256: &str,
    ) -> Result<Backup> {
        let id = ids::row_id();
        self.write(|tx| {
            tx.execute(
                &format!("INSERT INTO volume_backups ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7)"),
                params![
                    id,
                    volume_name,
                    user_id,
                    s3_key,
                    to_sql_int(size_bytes, "size_bytes")?,
                    sha256,
                    time::now()
                ],
            )?;
            Ok(())
        })?;
        self.backup(user_id, volume_name, &id)
    }

    /// A user's backups of a volume, newest first.
    pub fn list_backups(&self, user_id: &str, volume_name: &str) -> Result<Vec<Backup>> {
        self.read(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {COLS} FROM volume_backups WHERE user_id = ?1 AND volume_name = ?2 \
                     ORDER BY created_at DESC, id DESC"
                ),
                [user_id, volume_name],
                map_backup,
            )
        })
    }

    /// One of the user's backups of a volume (`NotFound` for anyone
    /// else's).
    pub fn backup(&self, user_id: &str, volume_name: &str, id: &str) -> Result<Backup> {
        self.read(|c| {
            query_opt(
                c,
                &format!(
                    "SELECT {COLS} FROM volume_backups WHERE user_id = ?1 AND volume_name = ?2 AND id = ?3"
                ),
                [user_id, volume_name, id],
                map_backup,
            )?
            .ok_or(crate::StoreError::NotFound)
        })
    }

    /// Deletes a backup's row; the row it was.
    pub fn delete_backup(&self, user_id: &str, volume_name: &str, id: &str) -> Result<Backup> {
        let b = self.backup(user_id, volume_name, id)?;
        self.write(|tx| {
            tx.execute(
                "DELETE FROM volume_backups WHERE id = ?1 AND user_id = ?2",
                params![b.id, user_id],
            )?;
            Ok(())
        })?;
        Ok(b)
    }
}
