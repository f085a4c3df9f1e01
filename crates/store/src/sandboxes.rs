//! Sandboxes: the API-visible record plus the engine's persisted state.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rusqlite::{params, Connection, Row, Transaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::coerce::{from_json, get_bool, get_int, get_json, to_json};
use crate::error::{conflict_as, insert_err, Result, StoreError};
use crate::publish::{self, PublishRule};
use crate::users::quotas_in;
use crate::volumes::{self, Attachment};
use crate::{count, query_all, query_one, query_opt, time, to_sql_int, Store};

/// Most labels a sandbox may carry (API rule, also enforced on merge).
pub const MAX_LABELS: usize = 16;

/// Lifecycle status as stored. Destroyed sandboxes have no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// The VM is up.
    Running,
    /// No VM is running; the sandbox can be started again.
    Stopped,
    /// The VM died under the sandbox (killed, out of memory, the host went
    /// down with no snapshot); `status_reason` says how. Its disk is kept,
    /// and `start` boots it afresh from that disk.
    Crashed,
    /// State could not be established (failed restore, stale snapshot …); `status_reason` says why.
    Unknown,
}

impl SandboxStatus {
    /// The stored text form (`running`, `stopped`, `crashed`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxStatus::Running => "running",
            SandboxStatus::Stopped => "stopped",
            SandboxStatus::Crashed => "crashed",
            SandboxStatus::Unknown => "unknown",
        }
    }
}

/// What happens to a sandbox when its lifetime runs out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryAction {
    /// Destroyed, as if `DELETE` had been called.
    #[default]
    Kill,
    /// Paused to disk (cold), to be woken by the next request.
    Pause,
}

impl ExpiryAction {
    /// The stored text form (`kill` | `pause`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExpiryAction::Kill => "kill",
            ExpiryAction::Pause => "pause",
        }
    }
}

impl FromStr for ExpiryAction {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kill" => Ok(ExpiryAction::Kill),
            "pause" => Ok(ExpiryAction::Pause),
            other => Err(StoreError::Invalid(format!(
                "on_expiry: {other:?} is not \"kill\" or \"pause\""
            ))),
        }
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "running" => Ok(SandboxStatus::Running),
            "stopped" => Ok(SandboxStatus::Stopped),
            "crashed" => Ok(SandboxStatus::Crashed),
            "unknown" => Ok(SandboxStatus::Unknown),
            other => Err(StoreError::Invalid(format!(
                "status: {other:?} is not a sandbox status"
            ))),
        }
    }
}

/// A sandbox row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// 16 hex.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Unique per owner.
    pub name: String,
    /// Lifecycle status.
    pub status: SandboxStatus,
    /// Why the status is what it is (set for `unknown`: failed restore,
    /// stale snapshot …); empty otherwise.
    pub status_reason: String,
    /// Guest IP address; empty when none is assigned.
    pub ip: String,
    /// Engine that runs it (`firecracker`, `qemu`, `docker`).
    pub engine: String,
    /// Template it was created from; empty if none.
    pub template_id: String,
    /// Whole vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Root-disk size in MiB counted toward the storage quota; 0 = the image's own size.
    pub disk_size_mb: u64,
    /// Root-filesystem image name (default `minimal`).
    pub image: String,
    /// Selector labels, key → value (at most [`MAX_LABELS`]).
    pub labels: BTreeMap<String, String>,
    /// Woken again when the daemon starts, and not paused when idle.
    pub keep_hot: bool,
    /// SHA-256 hex of the active web-shell token. Not serialized.
    #[serde(skip_serializing, default)]
    pub shell_token_hash: Option<String>,
    /// When the web-shell token stops working (RFC 3339 UTC). Not serialized.
    #[serde(skip_serializing, default)]
    pub shell_token_expires_at: Option<String>,
    /// The engine's `VmState`, as JSON text exactly as stored. Read it with
    /// [`Sandbox::vm_state_as`], which tolerates float-typed integers.
    pub vm_state: Option<String>,
    /// Bumped by the engine at every boot or restore (docs/decisions.md,
    /// "VMMs").
    pub generation: u64,
    /// When the row was inserted, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub created_at: String,
    /// When it last stopped, RFC 3339 UTC with milliseconds; cleared when set `running`.
    pub stopped_at: Option<String>,
    /// When the sandbox's lifetime ends (`None`: it lives until destroyed).
    pub expires_at: Option<String>,
    /// What happens when `expires_at` passes.
    pub on_expiry: ExpiryAction,
    /// Free-form caller metadata (E2B's `metadata`), unlike labels not
    /// restricted to selector syntax.
    pub metadata: BTreeMap<String, String>,
}

impl Sandbox {
    /// Parses the stored engine state into `T` (e.g. the engine's
    /// `VmState`). `Ok(None)` if none was saved; `Invalid` if it cannot be
    /// read as `T` (malformed JSON, `1.5` where an integer belongs …).
    pub fn vm_state_as<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.vm_state
            .as_deref()
            .map(|s| from_json(s, "vm_state"))
            .transpose()
    }
}

/// What [`Store::insert_sandbox`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSandbox {
    /// Usually [`crate::ids::sandbox_id`], or the engine's ID.
    pub id: String,
    /// Owner; must exist (`NotFound` otherwise).
    pub user_id: String,
    /// Unique per owner; a taken name is `Exists`.
    pub name: String,
    /// Initial status.
    pub status: SandboxStatus,
    /// Guest IP address; empty if none.
    pub ip: String,
    /// Engine that runs it (`firecracker`, `qemu`, `docker`).
    pub engine: String,
    /// Template it is created from; empty if none.
    pub template_id: String,
    /// Whole vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mb: u32,
    /// Root-disk size in MiB; > 0 is checked against the storage quota.
    pub disk_size_mb: u64,
    /// Root-filesystem image name.
    pub image: String,
    /// Selector labels (at most [`MAX_LABELS`]).
    pub labels: BTreeMap<String, String>,
    /// See [`Sandbox::keep_hot`].
    pub keep_hot: bool,
    /// Initial engine state, stored as JSON text.
    pub vm_state: Option<serde_json::Value>,
    /// Initial engine generation (usually 0).
    pub generation: u64,
    /// When its lifetime ends, RFC 3339 UTC; `None` = never.
    pub expires_at: Option<String>,
    /// What happens when `expires_at` passes.
    pub on_expiry: ExpiryAction,
    /// Free-form caller metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Default for NewSandbox {
    fn default() -> Self {
        NewSandbox {
            id: String::new(),
            user_id: String::new(),
            name: String::new(),
            status: SandboxStatus::Running,
            ip: String::new(),
            engine: String::new(),
            template_id: String::new(),
            cpus: 1,
            memory_mb: 1024,
            disk_size_mb: 0,
            image: "minimal".into(),
            labels: BTreeMap::new(),
            keep_hot: false,
            vm_state: None,
            generation: 0,
            expires_at: None,
            on_expiry: ExpiryAction::Kill,
            metadata: BTreeMap::new(),
        }
    }
}

/// Optional changes to the engine-owned fields of a sandbox, applied
/// together by [`Store::update_runtime`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeUpdate {
    /// New status; `stopped` stamps `stopped_at`, `running` clears it.
    pub status: Option<SandboxStatus>,
    /// Replaces `status_reason`; when `status` is set and this is `None`, the
    /// reason is cleared.
    pub status_reason: Option<String>,
    /// New guest IP address.
    pub ip: Option<String>,
    /// New engine state; stored together with `generation`.
    pub vm_state: Option<serde_json::Value>,
    /// Must not be lower than the stored generation (`Conflict` otherwise):
    /// a stale writer never overwrites newer engine state.
    pub generation: Option<u64>,
}

/// One row of [`Store::recovery_rows`]: the ID and either the sandbox or the
/// reason it could not be read, so one corrupt row cannot block recovery of
/// the others.
#[derive(Debug)]
pub struct RecoveryRow {
    /// The sandbox ID (always readable).
    pub id: String,
    /// The row, or why it could not be read.
    pub sandbox: Result<Sandbox>,
}

/// What [`Store::delete_sandbox`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRemoval {
    /// The deleted row.
    pub sandbox: Sandbox,
    /// Volume attachments that were released.
    pub attachments: Vec<Attachment>,
    /// Publish rules that were deleted (invalidate their aliases).
    pub publish_rules: Vec<PublishRule>,
}

pub(crate) const COLS: &str = "id, user_id, name, status, status_reason, ip, engine, template_id, \
    cpus, memory_mb, disk_size_mb, image, labels, keep_hot, shell_token_hash, shell_token_expires_at, \
    vm_state, generation, created_at, stopped_at, expires_at, on_expiry, metadata";

fn map_sandbox(r: &Row<'_>) -> Result<Sandbox> {
    Ok(Sandbox {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        name: r.get("name")?,
        status: r.get::<_, String>("status")?.parse()?,
        status_reason: r.get("status_reason")?,
        ip: r.get("ip")?,
        engine: r.get("engine")?,
        template_id: r.get("template_id")?,
        cpus: get_int(r, "cpus")?,
        memory_mb: get_int(r, "memory_mb")?,
        disk_size_mb: get_int(r, "disk_size_mb")?,
        image: r.get("image")?,
        labels: get_json(r, "labels")?,
        keep_hot: get_bool(r, "keep_hot")?,
        shell_token_hash: r.get("shell_token_hash")?,
        shell_token_expires_at: r.get("shell_token_expires_at")?,
        vm_state: r.get("vm_state")?,
        generation: get_int(r, "generation")?,
        created_at: r.get("created_at")?,
        stopped_at: r.get("stopped_at")?,
        expires_at: r.get("expires_at")?,
        on_expiry: r.get::<_, String>("on_expiry")?.parse()?,
        metadata: get_json(r, "metadata")?,
    })
}

pub(crate) fn by_id(c: &Connection, id: &str) -> Result<Sandbox> {
    query_one(
        c,
        &format!("SELECT {COLS} FROM sandboxes WHERE id = ?1"),
        [id],
        map_sandbox,
    )
}

fn name_conflict(name: &str) -> impl FnOnce(&str) -> String + '_ {
    move |detail| {
        if detail.contains("sandboxes.name") {
            format!("name {name:?} is already in use")
        } else {
            format!("sandbox already exists ({detail})")
        }
    }
}

impl Store {
    /// Inserts a sandbox. Checks, in one transaction: the owner's
    /// `max_sandboxes` (`Quota`, text `sandbox limit reached (n/max)`), the
    /// storage quota for a root disk of `disk_size_mb` (`Quota`), then
    /// the UNIQUE rules — an active sandbox of that user with that name is
    /// `Conflict("name \"x\" is already in use")` (the API's idempotent
    /// create re-reads the winner on this).
    pub fn insert_sandbox(&self, s: &NewSandbox) -> Result<Sandbox> {
        if s.id.is_empty() || s.name.is_empty() {
            return Err(StoreError::Invalid(
                "sandbox id and name are required".into(),
            ));
        }
        if s.labels.len() > MAX_LABELS {
            return Err(StoreError::Invalid(format!("at most {MAX_LABELS} labels")));
        }
        let labels = to_json(&s.labels, "labels")?;
        let metadata = to_json(&s.metadata, "metadata")?;
        let vm_state = s
            .vm_state
            .as_ref()
            .map(|v| to_json(v, "vm_state"))
            .transpose()?;
        self.write(|tx| {
            let q = quotas_in(tx, &s.user_id)?;
            let n = count(
                tx,
                "SELECT COUNT(*) FROM sandboxes WHERE user_id = ?1 AND status != 'destroyed'",
                [&s.user_id],
            )?;
            if n >= u64::from(q.max_sandboxes) {
                return Err(StoreError::Quota(format!(
                    "sandbox limit reached ({n}/{})",
                    q.max_sandboxes
                )));
            }
            if s.disk_size_mb > 0 {
                crate::volumes::check_quota(tx, &s.user_id, s.disk_size_mb)?;
            }
            let now = time::now();
            tx.execute(
                &format!(
                    "INSERT INTO sandboxes ({COLS}) VALUES \
                    (?1,?2,?3,?4,'',?5,?6,?7,?8,?9,?10,?11,?12,?13,NULL,NULL,?14,?15,?16,?17,?18,?19,?20)"
                ),
                params![
                    s.id,
                    s.user_id,
                    s.name,
                    s.status.as_str(),
                    s.ip,
                    s.engine,
                    s.template_id,
                    s.cpus,
                    s.memory_mb,
                    to_sql_int(s.disk_size_mb, "disk_size_mb")?,
                    s.image,
                    labels,
                    s.keep_hot,
                    vm_state,
                    to_sql_int(s.generation, "generation")?,
                    now,
                    (s.status == SandboxStatus::Stopped).then(|| now.clone()),
                    s.expires_at,
                    s.on_expiry.as_str(),
                    metadata,
                ],
            )
            .map_err(|e| insert_err(e, name_conflict(&s.name)))?;
            by_id(tx, &s.id)
        })
    }

    /// A user's sandbox by ID or name: an ID match wins, then a name match;
    /// both only among `user_id`'s sandboxes (another user's sandbox is
    /// `NotFound`, indistinguishable from a missing one).
    pub fn sandbox(&self, user_id: &str, id_or_name: &str) -> Result<Sandbox> {
        self.read(|c| {
            let by = |col: &str| {
                query_opt(
                    c,
                    &format!("SELECT {COLS} FROM sandboxes WHERE user_id = ?1 AND {col} = ?2"),
                    [user_id, id_or_name],
                    map_sandbox,
                )
            };
            match by("id")? {
                Some(s) => Ok(s),
                None => by("name")?.ok_or(StoreError::NotFound),
            }
        })
    }

    /// A sandbox by ID regardless of owner (web shell, proxy, recovery).
    pub fn sandbox_by_id(&self, id: &str) -> Result<Sandbox> {
        self.read(|c| by_id(c, id))
    }

    /// A user's sandboxes, newest first, keeping those whose labels contain
    /// every `key=value` of `labels` (AND; an empty filter keeps all).
    pub fn list_sandboxes(
        &self,
        user_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<Sandbox>> {
        let all = self.read(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {COLS} FROM sandboxes WHERE user_id = ?1 \
                     ORDER BY created_at DESC, rowid DESC"
                ),
                [user_id],
                map_sandbox,
            )
        })?;
        Ok(all
            .into_iter()
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .collect())
    }

    /// Every sandbox of every user, oldest first (admin listing).
    pub fn list_all_sandboxes(&self) -> Result<Vec<Sandbox>> {
        self.read(|c| {
            query_all(
                c,
                &format!("SELECT {COLS} FROM sandboxes ORDER BY created_at, rowid"),
                [],
                map_sandbox,
            )
        })
    }

    /// Every non-destroyed sandbox for start-up recovery, each parsed on its
    /// own so that one unreadable row is reported rather than fatal.
    pub fn recovery_rows(&self) -> Result<Vec<RecoveryRow>> {
        self.read(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {COLS} FROM sandboxes WHERE status != 'destroyed' \
                     ORDER BY created_at, rowid"
                ),
                [],
                |r| {
                    Ok(RecoveryRow {
                        id: r.get("id")?,
                        sandbox: map_sandbox(r),
                    })
                },
            )
        })
    }

    /// Sets (or with `None` clears) when the sandbox's lifetime ends and
    /// what happens then; returns the new row.
    pub fn set_expiry(
        &self,
        id: &str,
        expires_at: Option<&str>,
        action: ExpiryAction,
    ) -> Result<Sandbox> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE sandboxes SET expires_at = ?2, on_expiry = ?3 WHERE id = ?1",
                params![id, expires_at, action.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            by_id(tx, id)
        })
    }

    /// Sandboxes whose lifetime ended at or before `now` (a timestamp in
    /// [`time::now`]'s format, which sorts as text).
    pub fn expired_sandboxes(&self, now: &str) -> Result<Vec<Sandbox>> {
        self.read(|c| {
            query_all(
                c,
                &format!(
                    "SELECT {COLS} FROM sandboxes WHERE expires_at IS NOT NULL \
                     AND expires_at <= ?1 ORDER BY expires_at"
                ),
                [now],
                map_sandbox,
            )
        })
    }

    /// Number of the user's non-destroyed sandboxes.
    pub fn count_active_sandboxes(&self, user_id: &str) -> Result<u64> {
        self.read(|c| {
            count(
                c,
                "SELECT COUNT(*) FROM sandboxes WHERE user_id = ?1 AND status != 'destroyed'",
                [user_id],
            )
        })
    }

    /// Applies engine-side changes atomically and returns the new row.
    /// Setting `stopped` stamps `stopped_at`; setting `running` clears it.
    pub fn update_runtime(&self, id: &str, u: &RuntimeUpdate) -> Result<Sandbox> {
        let vm_state = u
            .vm_state
            .as_ref()
            .map(|v| to_json(v, "vm_state"))
            .transpose()?;
        self.write(|tx| {
            let cur = by_id(tx, id)?;
            if let Some(g) = u.generation {
                if g < cur.generation {
                    return Err(StoreError::Conflict(format!(
                        "stale engine state: generation {g} is older than the stored {}",
                        cur.generation
                    )));
                }
                tx.execute(
                    "UPDATE sandboxes SET generation = ?2 WHERE id = ?1",
                    params![id, to_sql_int(g, "generation")?],
                )?;
            }
            if let Some(vs) = &vm_state {
                tx.execute("UPDATE sandboxes SET vm_state = ?2 WHERE id = ?1", params![id, vs])?;
            }
            if let Some(ip) = &u.ip {
                tx.execute("UPDATE sandboxes SET ip = ?2 WHERE id = ?1", params![id, ip])?;
            }
            if let Some(st) = u.status {
                let reason = u.status_reason.clone().unwrap_or_default();
                let stopped_at = match st {
                    SandboxStatus::Stopped | SandboxStatus::Crashed => Some(time::now()),
                    SandboxStatus::Running => None,
                    SandboxStatus::Unknown => cur.stopped_at.clone(),
                };
                tx.execute(
                    "UPDATE sandboxes SET status = ?2, status_reason = ?3, stopped_at = ?4 WHERE id = ?1",
                    params![id, st.as_str(), reason, stopped_at],
                )?;
            } else if let Some(reason) = &u.status_reason {
                tx.execute(
                    "UPDATE sandboxes SET status_reason = ?2 WHERE id = ?1",
                    params![id, reason],
                )?;
            }
            by_id(tx, id)
        })
    }

    /// Sets the status (and reason; empty clears it).
    pub fn set_status(&self, id: &str, status: SandboxStatus, reason: &str) -> Result<Sandbox> {
        self.update_runtime(
            id,
            &RuntimeUpdate {
                status: Some(status),
                status_reason: Some(reason.to_string()),
                ..Default::default()
            },
        )
    }

    /// Sets the IP.
    pub fn set_ip(&self, id: &str, ip: &str) -> Result<Sandbox> {
        self.update_runtime(
            id,
            &RuntimeUpdate {
                ip: Some(ip.to_string()),
                ..Default::default()
            },
        )
    }

    /// Saves the engine's state (any serializable type, normally the
    /// engine's `VmState`) with its generation. A generation lower than the
    /// stored one is refused with `Conflict`.
    pub fn save_vm_state<T: Serialize>(
        &self,
        id: &str,
        state: &T,
        generation: u64,
    ) -> Result<Sandbox> {
        let v = serde_json::to_value(state)
            .map_err(|e| StoreError::Invalid(format!("vm_state: {e}")))?;
        self.update_runtime(
            id,
            &RuntimeUpdate {
                vm_state: Some(v),
                generation: Some(generation),
                ..Default::default()
            },
        )
    }

    /// Renames a sandbox; an active sandbox of the same user already called
    /// `new_name` is `Conflict("name \"x\" is already in use")`.
    pub fn rename_sandbox(&self, id: &str, new_name: &str) -> Result<Sandbox> {
        if new_name.is_empty() {
            return Err(StoreError::Invalid("name is empty".into()));
        }
        self.write(|tx| {
            let n = tx
                .execute(
                    "UPDATE sandboxes SET name = ?2 WHERE id = ?1",
                    params![id, new_name],
                )
                .map_err(|e| conflict_as(e, name_conflict(new_name)))?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            by_id(tx, id)
        })
    }

    /// Merges `add` into the labels and removes the keys in `remove`
    /// (removal applies after adding), in one transaction. More than
    /// [`MAX_LABELS`] afterwards is `Invalid` and nothing changes.
    pub fn update_labels(
        &self,
        id: &str,
        add: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Sandbox> {
        self.write(|tx| {
            let mut labels = by_id(tx, id)?.labels;
            labels.extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
            for k in remove {
                labels.remove(k);
            }
            if labels.len() > MAX_LABELS {
                return Err(StoreError::Invalid(format!("at most {MAX_LABELS} labels")));
            }
            tx.execute(
                "UPDATE sandboxes SET labels = ?2 WHERE id = ?1",
                params![id, to_json(&labels, "labels")?],
            )?;
            by_id(tx, id)
        })
    }

    /// Sets `keep_hot`.
    pub fn set_keep_hot(&self, id: &str, keep_hot: bool) -> Result<Sandbox> {
        self.update_one(
            id,
            "UPDATE sandboxes SET keep_hot = ?2 WHERE id = ?1",
            keep_hot,
        )
    }

    /// Sets the web-shell token hash and its expiry (RFC 3339 UTC), or with
    /// `None` clears both.
    pub fn set_shell_token_hash(&self, id: &str, token: Option<(&str, &str)>) -> Result<Sandbox> {
        let (hash, expires) = token.unzip();
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE sandboxes SET shell_token_hash = ?2, shell_token_expires_at = ?3 WHERE id = ?1",
                params![id, hash, expires],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            by_id(tx, id)
        })
    }

    fn update_one(&self, id: &str, sql: &str, v: impl rusqlite::ToSql) -> Result<Sandbox> {
        self.write(|tx| {
            if tx.execute(sql, params![id, v])? == 0 {
                return Err(StoreError::NotFound);
            }
            by_id(tx, id)
        })
    }

    /// Deletes a sandbox row together with its volume attachments and
    /// publish rules, in one transaction; returns what was removed.
    pub fn delete_sandbox(&self, id: &str) -> Result<SandboxRemoval> {
        self.write(|tx| delete_in(tx, id))
    }
}

fn delete_in(tx: &Transaction<'_>, id: &str) -> Result<SandboxRemoval> {
    let sandbox = by_id(tx, id)?;
    let attachments = volumes::detach_all_in(tx, id)?;
    let publish_rules = publish::delete_for_sandbox_in(tx, id)?;
    tx.execute("DELETE FROM sandboxes WHERE id = ?1", [id])?;
    Ok(SandboxRemoval {
        sandbox,
        attachments,
        publish_rules,
    })
}
