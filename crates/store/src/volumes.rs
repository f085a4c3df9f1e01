//! Persistent volumes and their attachments to sandboxes.
//!
//! Attach rule (docs/server.md, "Volumes at create"), checked and applied
//! in one transaction: a read-write attachment requires that the volume has
//! no other attachment; a read-only attachment requires that it has no
//! read-write one (any number of read-only sandboxes may share). A volume
//! still being created cannot be attached.

use std::fmt;
use std::str::FromStr;

use rusqlite::{params, Connection, Row, Transaction};
use serde::{Deserialize, Serialize};

use crate::coerce::{get_bool, get_int};
use crate::error::{insert_err, Result, StoreError};
use crate::users::quotas_in;
use crate::{count, ids, query_all, query_one, query_opt, time, to_sql_int, Store};

/// Volume lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeStatus {
    /// Row inserted, file not yet made.
    Creating,
    /// File exists; the volume can be attached.
    Ready,
}

impl VolumeStatus {
    /// The stored text form (`creating` | `ready`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            VolumeStatus::Creating => "creating",
            VolumeStatus::Ready => "ready",
        }
    }
}

impl fmt::Display for VolumeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VolumeStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "creating" => Ok(VolumeStatus::Creating),
            "ready" => Ok(VolumeStatus::Ready),
            other => Err(StoreError::Invalid(format!(
                "status: {other:?} is not a volume status"
            ))),
        }
    }
}

/// A persistent volume row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// 16 hex.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Unique per owner.
    pub name: String,
    /// Size in MiB (> 0); counts toward the owner's storage quota.
    pub size_mb: u64,
    /// The ext4 image on the host.
    pub file_path: String,
    /// Whether the file exists yet.
    pub status: VolumeStatus,
    /// When the row was inserted, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub created_at: String,
}

/// What [`Store::create_volume`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVolume {
    /// Owner.
    pub user_id: String,
    /// Unique per owner; a taken name is `Exists`.
    pub name: String,
    /// Size in MiB (> 0); checked against the storage quota.
    pub size_mb: u64,
    /// The ext4 image on the host.
    pub file_path: String,
    /// Usually `Creating`, then [`Store::set_volume_status`] once the file
    /// exists.
    pub status: VolumeStatus,
}

/// A volume attached to a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// ID of the attached volume.
    pub volume_id: String,
    /// Name of the volume (joined in for convenience).
    pub volume_name: String,
    /// ID of the sandbox it is attached to.
    pub sandbox_id: String,
    /// Mount point in the guest.
    pub mount: String,
    /// Mounted read-only (any number may share); else exclusive.
    pub read_only: bool,
    /// When it was attached, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub attached_at: String,
}

const COLS: &str = "id, user_id, name, size_mb, file_path, status, created_at";

const ATT_SELECT: &str = "SELECT a.volume_id, v.name AS volume_name, a.sandbox_id, a.mount, \
    a.read_only, a.attached_at FROM volume_attachments a JOIN volumes v ON v.id = a.volume_id";

fn map_volume(r: &Row<'_>) -> Result<Volume> {
    Ok(Volume {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        name: r.get("name")?,
        size_mb: get_int(r, "size_mb")?,
        file_path: r.get("file_path")?,
        status: r.get::<_, String>("status")?.parse()?,
        created_at: r.get("created_at")?,
    })
}

fn map_attachment(r: &Row<'_>) -> Result<Attachment> {
    Ok(Attachment {
        volume_id: r.get("volume_id")?,
        volume_name: r.get("volume_name")?,
        sandbox_id: r.get("sandbox_id")?,
        mount: r.get("mount")?,
        read_only: get_bool(r, "read_only")?,
        attached_at: r.get("attached_at")?,
    })
}

fn by_id(c: &Connection, id: &str) -> Result<Volume> {
    query_one(
        c,
        &format!("SELECT {COLS} FROM volumes WHERE id = ?1"),
        [id],
        map_volume,
    )
}

/// The user's storage in use: every volume's size, the root disk size of
/// every active sandbox that asked for one (`disk_size_mb`), and the user's
/// own images (pulled, imported, saved). Root disks at the image's own size
/// are not counted: they cannot grow past the image.
pub(crate) fn storage_used_mb(c: &Connection, user_id: &str) -> Result<u64> {
    count(
        c,
        "SELECT (SELECT COALESCE(SUM(size_mb), 0) FROM volumes WHERE user_id = ?1) + \
                (SELECT COALESCE(SUM(disk_size_mb), 0) FROM sandboxes \
                 WHERE user_id = ?1 AND status != 'destroyed') + \
                (SELECT COALESCE(SUM(size_mb), 0) FROM images WHERE user_id = ?1)",
        [user_id],
    )
}

fn attachments_of(c: &Connection, volume_id: &str) -> Result<Vec<Attachment>> {
    query_all(
        c,
        &format!("{ATT_SELECT} WHERE a.volume_id = ?1 ORDER BY a.attached_at, a.sandbox_id"),
        [volume_id],
        map_attachment,
    )
}

/// Checks that `extra_mb` more fits in the user's storage quota (volumes
/// and grown root disks share it, so neither can fill the host alone).
pub(crate) fn check_quota(tx: &Transaction<'_>, user_id: &str, extra_mb: u64) -> Result<()> {
    let max = quotas_in(tx, user_id)?.max_volume_storage_mb;
    let used = storage_used_mb(tx, user_id)?;
    if used.saturating_add(extra_mb) > max {
        return Err(StoreError::Quota(format!(
            "storage quota exceeded ({used} MB used by volumes and root disks + {extra_mb} MB > {max} MB)"
        )));
    }
    Ok(())
}

/// Removes every attachment of `sandbox_id` inside a transaction.
pub(crate) fn detach_all_in(tx: &Transaction<'_>, sandbox_id: &str) -> Result<Vec<Attachment>> {
    let atts = query_all(
        tx,
        &format!("{ATT_SELECT} WHERE a.sandbox_id = ?1 ORDER BY v.name"),
        [sandbox_id],
        map_attachment,
    )?;
    tx.execute(
        "DELETE FROM volume_attachments WHERE sandbox_id = ?1",
        [sandbox_id],
    )?;
    Ok(atts)
}

impl Store {
    /// Inserts a volume after checking, in the same transaction, that the
    /// user's total volume size stays within `max_volume_storage_mb`
    /// (`Quota`). A name the user already uses is `Conflict`.
    pub fn create_volume(&self, v: &NewVolume) -> Result<Volume> {
        if v.size_mb == 0 {
            return Err(StoreError::Invalid("size_mb must be > 0".into()));
        }
        self.write(|tx| {
            check_quota(tx, &v.user_id, v.size_mb)?;
            let id = ids::row_id();
            tx.execute(
                &format!("INSERT INTO volumes ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7)"),
                params![
                    id,
                    v.user_id,
                    v.name,
                    to_sql_int(v.size_mb, "size_mb")?,
                    v.file_path,
                    v.status.as_str(),
                    time::now()
                ],
            )
            .map_err(|e| insert_err(e, |_| format!("volume {:?} already exists", v.name)))?;
            by_id(tx, &id)
        })
    }

    /// One of the user's volumes by name.
    pub fn volume(&self, user_id: &str, name: &str) -> Result<Volume> {
        self.read(|c| {
            query_one(
                c,
                &format!("SELECT {COLS} FROM volumes WHERE user_id = ?1 AND name = ?2"),
                [user_id, name],
                map_volume,
            )
        })
    }

    /// A volume by ID regardless of owner.
    pub fn volume_by_id(&self, id: &str) -> Result<Volume> {
        self.read(|c| by_id(c, id))
    }

    /// The user's volumes, by name.
    pub fn list_volumes(&self, user_id: &str) -> Result<Vec<Volume>> {
        self.read(|c| {
            query_all(
                c,
                &format!("SELECT {COLS} FROM volumes WHERE user_id = ?1 ORDER BY name"),
                [user_id],
                map_volume,
            )
        })
    }

    /// Every volume of every user (start-up reconciliation of files).
    pub fn list_all_volumes(&self) -> Result<Vec<Volume>> {
        self.read(|c| {
            query_all(
                c,
                &format!("SELECT {COLS} FROM volumes ORDER BY user_id, name"),
                [],
                map_volume,
            )
        })
    }

    /// The user's storage in use in MiB: volumes, grown root disks, images.
    pub fn storage_used_mb(&self, user_id: &str) -> Result<u64> {
        self.read(|c| storage_used_mb(c, user_id))
    }

    /// Sets a volume's status (`creating` → `ready`).
    pub fn set_volume_status(&self, id: &str, status: VolumeStatus) -> Result<Volume> {
        self.write(|tx| {
            if tx.execute(
                "UPDATE volumes SET status = ?2 WHERE id = ?1",
                params![id, status.as_str()],
            )? == 0
            {
                return Err(StoreError::NotFound);
            }
            by_id(tx, id)
        })
    }

    /// Records a grown size. Refused while attached (`Conflict`), when not
    /// larger (`Invalid`), or beyond the storage quota (`Quota`).
    pub fn resize_volume(&self, id: &str, new_size_mb: u64) -> Result<Volume> {
        self.write(|tx| {
            let v = by_id(tx, id)?;
            if new_size_mb <= v.size_mb {
                return Err(StoreError::Invalid(format!(
                    "new size {new_size_mb} MB must be larger than {} MB",
                    v.size_mb
                )));
            }
            if !attachments_of(tx, id)?.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "volume {:?} is attached",
                    v.name
                )));
            }
            // Cannot fail: `new_size_mb > v.size_mb` was checked above.
            let growth = new_size_mb.checked_sub(v.size_mb).ok_or_else(|| {
                StoreError::Invalid(format!(
                    "new size {new_size_mb} MB is below {} MB",
                    v.size_mb
                ))
            })?;
            check_quota(tx, &v.user_id, growth)?;
            tx.execute(
                "UPDATE volumes SET size_mb = ?2 WHERE id = ?1",
                params![id, to_sql_int(new_size_mb, "size_mb")?],
            )?;
            by_id(tx, id)
        })
    }

    /// Deletes one of the user's volumes; refused (`Conflict`) while any
    /// attachment exists. Returns the row (the caller removes the file).
    pub fn delete_volume(&self, user_id: &str, name: &str) -> Result<Volume> {
        self.write(|tx| {
            let v = query_one(
                tx,
                &format!("SELECT {COLS} FROM volumes WHERE user_id = ?1 AND name = ?2"),
                [user_id, name],
                map_volume,
            )?;
            if !attachments_of(tx, &v.id)?.is_empty() {
                return Err(StoreError::Conflict(format!("volume {name:?} is attached")));
            }
            tx.execute("DELETE FROM volumes WHERE id = ?1", [&v.id])?;
            Ok(v)
        })
    }

    /// Attaches a volume to a sandbox under the RW-exclusive / RO-shared
    /// rule, atomically. `Conflict` if the volume is still being created, is
    /// already attached to this sandbox, or the rule forbids it. The sandbox
    /// row need not exist yet (create attaches before the VM boots).
    pub fn attach_volume(
        &self,
        volume_id: &str,
        sandbox_id: &str,
        mount: &str,
        read_only: bool,
    ) -> Result<Attachment> {
        self.write(|tx| {
            let v = by_id(tx, volume_id)?;
            if v.status != VolumeStatus::Ready {
                return Err(StoreError::Conflict(format!(
                    "volume {:?} is still being created",
                    v.name
                )));
            }
            let existing = attachments_of(tx, volume_id)?;
            if existing.iter().any(|a| a.sandbox_id == sandbox_id) {
                return Err(StoreError::Conflict(format!(
                    "volume {:?} is already attached to this sandbox",
                    v.name
                )));
            }
            if !read_only && !existing.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "volume {:?} is attached to another sandbox; a read-write attachment must be exclusive",
                    v.name
                )));
            }
            if read_only && existing.iter().any(|a| !a.read_only) {
                return Err(StoreError::Conflict(format!(
                    "volume {:?} is attached read-write to another sandbox",
                    v.name
                )));
            }
            tx.execute(
                "INSERT INTO volume_attachments (volume_id, sandbox_id, mount, read_only, attached_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![volume_id, sandbox_id, mount, read_only, time::now()],
            )?;
            query_one(
                tx,
                &format!("{ATT_SELECT} WHERE a.volume_id = ?1 AND a.sandbox_id = ?2"),
                [volume_id, sandbox_id],
                map_attachment,
            )
        })
    }

    /// Removes one attachment; `NotFound` if there was none.
    pub fn detach_volume(&self, volume_id: &str, sandbox_id: &str) -> Result<Attachment> {
        self.write(|tx| {
            let a = query_opt(
                tx,
                &format!("{ATT_SELECT} WHERE a.volume_id = ?1 AND a.sandbox_id = ?2"),
                [volume_id, sandbox_id],
                map_attachment,
            )?
            .ok_or(StoreError::NotFound)?;
            tx.execute(
                "DELETE FROM volume_attachments WHERE volume_id = ?1 AND sandbox_id = ?2",
                [volume_id, sandbox_id],
            )?;
            Ok(a)
        })
    }

    /// Removes every attachment of a sandbox; returns them.
    pub fn detach_all(&self, sandbox_id: &str) -> Result<Vec<Attachment>> {
        self.write(|tx| detach_all_in(tx, sandbox_id))
    }

    /// Removes attachments whose sandbox row is gone or whose sandbox is
    /// `unknown` (start-up reconciliation; do not run it while creates are in
    /// flight, since those attach before their row exists). Returns them.
    pub fn detach_orphans(&self) -> Result<Vec<Attachment>> {
        self.write(|tx| {
            const WHERE: &str =
                "sandbox_id NOT IN (SELECT id FROM sandboxes WHERE status != 'unknown')";
            let atts = query_all(
                tx,
                &format!("{ATT_SELECT} WHERE a.{WHERE} ORDER BY a.sandbox_id, v.name"),
                [],
                map_attachment,
            )?;
            tx.execute(&format!("DELETE FROM volume_attachments WHERE {WHERE}"), [])?;
            Ok(atts)
        })
    }

    /// A volume's attachments, oldest first.
    pub fn volume_attachments(&self, volume_id: &str) -> Result<Vec<Attachment>> {
        self.read(|c| attachments_of(c, volume_id))
    }

    /// A sandbox's attachments, by volume name.
    pub fn sandbox_attachments(&self, sandbox_id: &str) -> Result<Vec<Attachment>> {
        self.read(|c| {
            query_all(
                c,
                &format!("{ATT_SELECT} WHERE a.sandbox_id = ?1 ORDER BY v.name"),
                [sandbox_id],
                map_attachment,
            )
        })
    }
}
