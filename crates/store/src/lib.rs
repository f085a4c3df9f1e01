//! The bhatti daemon's persistent state: one SQLite file,
//! `<data_dir>/state.db`.
//!
//! What lives here: users with their API-key hashes and quotas, sandboxes
//! (including the engine's persisted `VmState` JSON and its generation
//! number), encrypted secrets, per-user templates, persistent volumes and
//! their attachments, named snapshots, images, public publish rules and the
//! event log. What does not: anything the engine can rediscover from the
//! host, and secret plaintext (values arrive already encrypted).
//!
//! Why SQLite: one host, one daemon, a few writes per sandbox lifecycle
//! step, and the admin CLI reads the same file directly (docs/operations.md,
//! "Users and keys"). The bundled SQLite (`rusqlite`'s `bundled` feature)
//! means no system library and a known version.
//!
//! How it is used: [`Store`] wraps one connection behind a mutex and exposes
//! a typed, synchronous API; it is `Send + Sync`, so the server keeps it in an
//! `Arc` and calls it from `tokio::task::spawn_blocking` (every call is a
//! short local transaction). Multi-step changes (label merges, volume attach
//! rules, quota-checked inserts, user deletion, sandbox removal) each run in
//! one `BEGIN IMMEDIATE` transaction. The schema is created and upgraded by
//! versioned [`migrations`].
//!
//! Values read back are type-tolerant (see [`coerce`]): whole numbers stored
//! or serialized as floats (`1.0`, `2048.0`) read as integers; anything that
//! would need truncating is an [`StoreError::Invalid`] error.

#![forbid(unsafe_code)]

mod backups;
pub mod coerce;
mod error;
mod events;
pub mod ids;
mod images;
pub mod migrations;
mod publish;
mod sandboxes;
mod secrets;
mod snapshots;
mod tasks;
mod templates;
pub mod time;
mod users;
mod volumes;

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, Params, Row, Transaction, TransactionBehavior};

pub use backups::Backup;
pub use error::{Result, StoreError};
pub use events::{Event, EventQuery, NewEvent};
pub use images::ADMIN as ADMIN_USER;
pub use images::{Image, NewImage};
pub use publish::PublishRule;
pub use sandboxes::{
    ExpiryAction, NewSandbox, RecoveryRow, RuntimeUpdate, Sandbox, SandboxRemoval, SandboxStatus,
    MAX_LABELS,
};
pub use secrets::SecretMeta;
pub use snapshots::{NewSnapshot, Snapshot};
pub use tasks::Task;
pub use templates::Template;
pub use users::{NewUser, Quotas, User, UserRemoval};
pub use volumes::{Attachment, NewVolume, Volume, VolumeStatus};

/// How long a statement waits for another connection's write lock (the admin
/// CLI opens the same file) before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_millis(5000);

/// Handle to the state database. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
    /// A second connection for reads: in WAL mode it reads the last commit
    /// while the writer is inside a transaction (or its fsync), so a point
    /// lookup never waits behind a write.
    reader: Mutex<Connection>,
    path: PathBuf,
    migrations_applied: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed, with mode 0600) the database at `path`,
    /// sets the connection pragmas and applies pending migrations.
    ///
    /// The parent directory must exist. An existing file readable by group or
    /// others is tightened to 0600 (best effort: it holds key hashes and
    /// encrypted secrets). SQLite gives the `-wal` / `-shm` files the same
    /// mode as the database file.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        // Create the file ourselves so it is born 0600 whatever the umask.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        let meta = std::fs::metadata(&path)?;
        if meta.permissions().mode() & 0o077 != 0 {
            // Best effort: failing here (e.g. not the owner) is not worse than
            // not trying, and opening may still legitimately succeed.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }

        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        let migrations_applied = migrations::run(&mut conn, migrations::MIGRATIONS)?;
        let reader = Connection::open(&path)?;
        configure(&reader)?;
        reader.pragma_update(None, "query_only", "ON")?;
        Ok(Store {
            conn: Mutex::new(conn),
            reader: Mutex::new(reader),
            path,
            migrations_applied,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many migration steps this `open` applied (0 when the file was
    /// already current).
    pub fn migrations_applied(&self) -> usize {
        self.migrations_applied
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32> {
        migrations::version(&self.lock())
    }

    /// The journal mode SQLite reports (`"wal"` once opened).
    pub fn journal_mode(&self) -> Result<String> {
        Ok(self
            .lock()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))?)
    }

    /// Locks the connection. A panic in another thread while it held the
    /// lock cannot leave the connection mid-transaction (an unfinished
    /// `Transaction` rolls back on drop), so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        bhatti_sync::lock(&self.conn)
    }

    /// Runs `f` with the connection (for single statements / reads).
    fn read<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = bhatti_sync::lock(&self.reader);
        f(&conn)
    }

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction, committing on `Ok`
    /// and rolling back on `Err`. IMMEDIATE takes the write lock up front, so
    /// a second process waits in the busy handler instead of failing a
    /// read-to-write upgrade with `SQLITE_BUSY`.
    fn write<R>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<R>) -> Result<R> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Connection pragmas.
fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Invalid(format!(
            "could not enable WAL journal mode (got {mode:?})"
        )));
    }
    // FULL rather than NORMAL: in WAL mode NORMAL may lose the last commits
    // on power loss (the database stays consistent, but is older). Losing a
    // `generation` bump is exactly the stale-snapshot hazard of
    // docs/decisions.md ("VMMs", Generations): after a power cut the store
    // could believe an older snapshot is current and recovery would restore
    // memory that predates writes the guest already made to its disk. FULL fsyncs the WAL at every commit;
    // writes here are a handful per lifecycle step (events are batched), so
    // the cost — well under a millisecond per commit on SSDs — is
    // irrelevant.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Runs a query and maps every row with a fallible mapper.
pub(crate) fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// Runs a query expected to return at most one row.
pub(crate) fn query_opt<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => Ok(Some(map(row)?)),
        None => Ok(None),
    }
}

/// Runs a query expected to return exactly one row; none is `NotFound`.
pub(crate) fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    map: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<T> {
    query_opt(conn, sql, params, map)?.ok_or(StoreError::NotFound)
}

/// `SELECT COUNT(*)`-style scalar as u64 (tolerantly).
pub(crate) fn count(conn: &Connection, sql: &str, params: impl Params) -> Result<u64> {
    query_one(conn, sql, params, |r| {
        coerce::narrow(coerce::int_from_sql(r.get_ref(0)?, "count")?, "count")
    })
}

/// Converts an unsigned value for binding; values above `i64::MAX` are
/// `Invalid` (SQLite integers are signed 64-bit).
pub(crate) fn to_sql_int<T: TryInto<i64> + Copy + std::fmt::Display>(
    v: T,
    what: &str,
) -> Result<i64> {
    v.try_into()
        .map_err(|_| StoreError::Invalid(format!("{what}: {v} is too large")))
}
