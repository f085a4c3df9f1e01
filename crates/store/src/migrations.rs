//! Versioned schema migrations.
//!
//! [`MIGRATIONS`] is an append-only, ordered list. The database's
//! `PRAGMA user_version` is the number of steps already applied. Opening a
//! store applies the missing steps in order, each inside its own
//! `BEGIN IMMEDIATE` transaction together with the `user_version` bump, so a
//! crash or a failing step leaves the file at the previous version — never
//! half-migrated — and a step never runs twice. (The reference ran
//! `CREATE … IF NOT EXISTS` plus `ALTER TABLE` with errors ignored on every
//! start; this replaces that.)
//!
//! Rules for future changes: never edit or reorder a released step; add a
//! new one. A database whose version is newer than this binary knows is
//! refused rather than guessed at.
//!
//! Schema notes (differences from the reference's tables, same data):
//! - Table names are tidied: `volumes` is the reference's `volumes_v2`
//!   (the legacy ephemeral `volumes` / `sandbox_volumes` are not carried
//!   over), `sandboxes.user_id` is `created_by`.
//! - `sandboxes` keeps the engine's whole persisted state as one JSON column
//!   `vm_state` (the engine's `VmState`) plus a `generation` column, instead
//!   of the reference's fourteen Firecracker-specific columns.
//! - `cpus` columns are INTEGER: fractional vCPUs are rejected
//!   (docs/server.md, "Input rules") rather than stored as REAL.
//! - Templates are per user (`user_id`, UNIQUE `(user_id, name)`,
//!   docs/decisions.md, "Store"); their persistent-volume list lives in
//!   `volumes` (JSON).
//! - Foreign keys guard ownership (`users` ← everything user-owned,
//!   `volumes` ← `volume_attachments`, `sandboxes` ← `publish_rules`). There
//!   is deliberately no foreign key from `volume_attachments.sandbox_id`:
//!   attachments are made before the sandbox row exists during create (and
//!   rolled back if the engine fails), and orphan cleanup handles leftovers.
//! - JSON columns carry `CHECK (json_valid(…))`; status columns carry
//!   `CHECK (… IN …)`.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{Result, StoreError};

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Short description, for errors.
    pub name: &'static str,
    /// SQL run as one batch inside the step's transaction.
    pub sql: &'static str,
    /// Runs with foreign-key enforcement off (SQLite's documented way to
    /// rebuild a table that other tables reference: a CHECK constraint
    /// cannot be altered in place). The step's transaction still fails
    /// unless `PRAGMA foreign_key_check` finds nothing afterwards.
    pub rebuilds: bool,
}

/// The schema history. Index `i` brings `user_version` from `i` to `i + 1`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "users, sandboxes, secrets",
        rebuilds: false,
        sql: r#"
CREATE TABLE users (
    id                        TEXT PRIMARY KEY,
    name                      TEXT NOT NULL UNIQUE,
    api_key_hash              TEXT NOT NULL UNIQUE,
    max_sandboxes             INTEGER NOT NULL DEFAULT 5,
    max_cpus_per_sandbox      INTEGER NOT NULL DEFAULT 4,
    max_memory_mb_per_sandbox INTEGER NOT NULL DEFAULT 4096,
    max_volume_storage_mb     INTEGER NOT NULL DEFAULT 20480,
    max_images                INTEGER NOT NULL DEFAULT 10,
    max_snapshots             INTEGER NOT NULL DEFAULT 5,
    subnet_index              INTEGER NOT NULL UNIQUE CHECK (subnet_index >= 1),
    created_at                TEXT NOT NULL
);

CREATE TABLE sandboxes (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users(id),
    name             TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'unknown'
                     CHECK (status IN ('running', 'stopped', 'unknown')),
    status_reason    TEXT NOT NULL DEFAULT '',
    ip               TEXT NOT NULL DEFAULT '',
    engine           TEXT NOT NULL DEFAULT '',
    template_id      TEXT NOT NULL DEFAULT '',
    cpus             INTEGER NOT NULL DEFAULT 1,
    memory_mb        INTEGER NOT NULL DEFAULT 1024,
    disk_size_mb     INTEGER NOT NULL DEFAULT 0,
    image            TEXT NOT NULL DEFAULT 'minimal',
    labels           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    keep_hot         INTEGER NOT NULL DEFAULT 0,
    shell_token_hash TEXT,
    vm_state         TEXT CHECK (vm_state IS NULL OR json_valid(vm_state)),
    generation       INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    stopped_at       TEXT
);
-- Rows are deleted on destroy, so no row is ever 'destroyed'; the WHERE
-- clause keeps the reference's index shape should tombstones come back.
CREATE UNIQUE INDEX sandboxes_user_name ON sandboxes(user_id, name)
    WHERE status != 'destroyed';

CREATE TABLE secrets (
    user_id         TEXT NOT NULL REFERENCES users(id),
    name            TEXT NOT NULL,
    value_encrypted BLOB NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (user_id, name)
);
"#,
    },
    Migration {
        name: "templates",
        rebuilds: false,
        sql: r#"
CREATE TABLE templates (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id),
    name         TEXT NOT NULL,
    image        TEXT NOT NULL DEFAULT '',
    cpus         INTEGER NOT NULL DEFAULT 1,
    memory_mb    INTEGER NOT NULL DEFAULT 2048,
    disk_size_mb INTEGER NOT NULL DEFAULT 0,
    env          TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(env)),
    secrets      TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(secrets)),
    files        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(files)),
    volumes      TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(volumes)),
    init         TEXT NOT NULL DEFAULT '',
    labels       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    created_at   TEXT NOT NULL,
    UNIQUE (user_id, name)
);
"#,
    },
    Migration {
        name: "persistent volumes and attachments",
        rebuilds: false,
        sql: r#"
CREATE TABLE volumes (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    name       TEXT NOT NULL,
    size_mb    INTEGER NOT NULL CHECK (size_mb > 0),
    file_path  TEXT NOT NULL,
    status     TEXT NOT NULL DEFAULT 'ready' CHECK (status IN ('creating', 'ready')),
    created_at TEXT NOT NULL,
    UNIQUE (user_id, name)
);

CREATE TABLE volume_attachments (
    volume_id   TEXT NOT NULL REFERENCES volumes(id),
    sandbox_id  TEXT NOT NULL,
    mount       TEXT NOT NULL,
    read_only   INTEGER NOT NULL DEFAULT 0,
    attached_at TEXT NOT NULL,
    PRIMARY KEY (volume_id, sandbox_id)
);
CREATE INDEX volume_attachments_sandbox ON volume_attachments(sandbox_id);
"#,
    },
    Migration {
        name: "snapshots, images, publish rules",
        rebuilds: false,
        sql: r#"
CREATE TABLE snapshots (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users(id),
    name           TEXT NOT NULL,
    source_sandbox TEXT NOT NULL DEFAULT '',
    dir            TEXT NOT NULL,
    manifest       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(manifest)),
    size_mb        INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    UNIQUE (user_id, name)
);

-- user_id '' = an admin (global) image, hence no foreign key.
CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL DEFAULT '',
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    file_path   TEXT NOT NULL,
    size_mb     INTEGER NOT NULL DEFAULT 0,
    oci_digest  TEXT NOT NULL DEFAULT '',
    oci_config  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(oci_config)),
    created_at  TEXT NOT NULL,
    UNIQUE (user_id, name)
);

CREATE TABLE publish_rules (
    id         TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),
    user_id    TEXT NOT NULL REFERENCES users(id),
    port       INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    alias      TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    UNIQUE (sandbox_id, port)
);
"#,
    },
    Migration {
        name: "events",
        rebuilds: false,
        sql: r#"
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         TEXT NOT NULL,
    type       TEXT NOT NULL,
    user_id    TEXT NOT NULL DEFAULT '',
    sandbox_id TEXT NOT NULL DEFAULT '',
    meta       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(meta))
);
CREATE INDEX events_ts ON events(ts);
CREATE INDEX events_type_ts ON events(type, ts);
CREATE INDEX events_user_ts ON events(user_id, ts);
"#,
    },
    Migration {
        name: "background tasks",
        rebuilds: false,
        sql: r#"
CREATE TABLE tasks (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    type         TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    progress     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(progress)),
    result       TEXT,
    error        TEXT,
    created_at   TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX tasks_status ON tasks(status);
"#,
    },
    Migration {
        name: "the image a snapshot was taken from",
        rebuilds: false,
        sql: r#"
ALTER TABLE snapshots ADD COLUMN image TEXT NOT NULL DEFAULT 'minimal';
"#,
    },
    Migration {
        name: "image shares",
        rebuilds: false,
        sql: r#"
-- user_id '*' = every user.
CREATE TABLE image_shares (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL,
    PRIMARY KEY (image_id, user_id)
);
CREATE INDEX image_shares_user ON image_shares(user_id);
"#,
    },
    Migration {
        name: "sandbox lifetimes and metadata",
        rebuilds: false,
        sql: r#"
ALTER TABLE sandboxes ADD COLUMN expires_at TEXT;
ALTER TABLE sandboxes ADD COLUMN on_expiry TEXT NOT NULL DEFAULT 'kill';
ALTER TABLE sandboxes ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';
CREATE INDEX sandboxes_expiry ON sandboxes(expires_at) WHERE expires_at IS NOT NULL;
"#,
    },
    Migration {
        name: "a crashed sandbox status",
        rebuilds: true,
        sql: r#"
CREATE TABLE sandboxes_new (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users(id),
    name             TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'unknown'
                     CHECK (status IN ('running', 'stopped', 'crashed', 'unknown')),
    status_reason    TEXT NOT NULL DEFAULT '',
    ip               TEXT NOT NULL DEFAULT '',
    engine           TEXT NOT NULL DEFAULT '',
    template_id      TEXT NOT NULL DEFAULT '',
    cpus             INTEGER NOT NULL DEFAULT 1,
    memory_mb        INTEGER NOT NULL DEFAULT 1024,
    disk_size_mb     INTEGER NOT NULL DEFAULT 0,
    image            TEXT NOT NULL DEFAULT 'minimal',
    labels           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    keep_hot         INTEGER NOT NULL DEFAULT 0,
    shell_token_hash TEXT,
    vm_state         TEXT CHECK (vm_state IS NULL OR json_valid(vm_state)),
    generation       INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    stopped_at       TEXT,
    expires_at       TEXT,
    on_expiry        TEXT NOT NULL DEFAULT 'kill',
    metadata         TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO sandboxes_new
    SELECT id, user_id, name, status, status_reason, ip, engine, template_id,
           cpus, memory_mb, disk_size_mb, image, labels, keep_hot,
           shell_token_hash, vm_state, generation, created_at, stopped_at,
           expires_at, on_expiry, metadata
    FROM sandboxes;
DROP TABLE sandboxes;
ALTER TABLE sandboxes_new RENAME TO sandboxes;
CREATE UNIQUE INDEX sandboxes_user_name ON sandboxes(user_id, name)
    WHERE status != 'destroyed';
CREATE INDEX sandboxes_expiry ON sandboxes(expires_at) WHERE expires_at IS NOT NULL;
"#,
    },
    Migration {
        name: "web-shell tokens expire",
        rebuilds: false,
        sql: r#"
ALTER TABLE sandboxes ADD COLUMN shell_token_expires_at TEXT;
"#,
    },
    Migration {
        name: "images carry warnings",
        rebuilds: false,
        sql: r#"
ALTER TABLE images ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';
"#,
    },
    Migration {
        name: "volume backups",
        rebuilds: false,
        sql: r#"
CREATE TABLE volume_backups (
    id TEXT PRIMARY KEY,
    volume_name TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    s3_key TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX volume_backups_by_volume ON volume_backups(user_id, volume_name, created_at DESC);
"#,
    },
];

/// Runs one step in its own transaction; false when another process
/// applied it first.
fn apply(conn: &mut Connection, step: &Migration, next: u32) -> Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Another process may have migrated between our read and the lock.
    if version(&tx)? >= next {
        return Ok(false);
    }
    let failed = |e: &dyn std::fmt::Display| {
        StoreError::Invalid(format!("migration {next} ({}) failed: {e}", step.name))
    };
    tx.execute_batch(step.sql).map_err(|e| failed(&e))?;
    if step.rebuilds {
        let broken: i64 =
            tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })?;
        if broken != 0 {
            return Err(failed(&format!("{broken} rows break a foreign key")));
        }
    }
    tx.pragma_update(None, "user_version", next)?;
    tx.commit()?;
    Ok(true)
}

/// The schema version this binary writes.
pub fn latest() -> u32 {
    count(MIGRATIONS)
}

/// How many steps there are, as a schema version (a few dozen at most).
fn count(steps: &[Migration]) -> u32 {
    u32::try_from(steps.len()).unwrap_or(u32::MAX)
}

/// The database's current schema version (`PRAGMA user_version`).
pub fn version(conn: &Connection) -> Result<u32> {
    let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    u32::try_from(v).map_err(|_| StoreError::Invalid(format!("user_version {v} is invalid")))
}

/// Applies the steps of `steps` that the database has not seen yet, each in
/// its own immediate transaction. Returns how many were applied (0 when the
/// database is already current). A database newer than `steps` is refused.
pub fn run(conn: &mut Connection, steps: &[Migration]) -> Result<usize> {
    run_to(conn, steps, count(steps))
}

/// Like [`run`] but stops at version `target` (used to build a database of
/// an older version, e.g. in upgrade tests).
pub fn run_to(conn: &mut Connection, steps: &[Migration], target: u32) -> Result<usize> {
    let have = version(conn)?;
    if have as usize > steps.len() {
        return Err(StoreError::Invalid(format!(
            "database schema version {have} is newer than this binary supports ({})",
            steps.len()
        )));
    }
    let target = target.min(count(steps));
    let mut applied: usize = 0;
    for (next, step) in (1u32..)
        .zip(steps)
        .take(target as usize)
        .skip(have as usize)
    {
        // Only outside a transaction does this pragma take effect.
        if step.rebuilds {
            conn.pragma_update(None, "foreign_keys", "OFF")?;
        }
        let res = apply(conn, step, next);
        if step.rebuilds {
            conn.pragma_update(None, "foreign_keys", "ON")?;
        }
        if res? {
            applied = applied.saturating_add(1);
        }
    }
    Ok(applied)
}
