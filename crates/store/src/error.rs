//! The store's error type.
//!
//! Callers map the variants onto HTTP statuses: [`StoreError::NotFound`] →
//! 404, [`StoreError::Exists`] (a taken name) and [`StoreError::Conflict`]
//! (a state rule) → 409 (or "return the existing record" for idempotent
//! creates), [`StoreError::Quota`] → 429/403 depending on the
//! resource, [`StoreError::Invalid`] → 400 for caller mistakes or 500 for
//! corrupt rows, and [`StoreError::Db`] / [`StoreError::Io`] → 500.

use rusqlite::ffi;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist (or belongs to another user, which the caller
    /// must not be able to tell apart).
    #[error("not found")]
    NotFound,
    /// A UNIQUE rule was violated: the name (or key) is taken. The text says
    /// what, in words fit for an API error body (e.g. `name "web" is
    /// already in use`).
    #[error("{0}")]
    Exists(String),
    /// A state rule was violated (e.g. resizing an attached volume, a stale
    /// engine generation); the text says what, in words fit for an API error
    /// body.
    #[error("{0}")]
    Conflict(String),
    /// A per-user limit would be exceeded; the text says which and by how much
    /// (e.g. `sandbox limit reached (5/5)`).
    #[error("{0}")]
    Quota(String),
    /// A value is not acceptable: a bad argument, or a stored value that
    /// cannot be read as its type (e.g. `1.5` in an integer column).
    #[error("invalid: {0}")]
    Invalid(String),
    /// Any other SQLite failure.
    #[error("database: {0}")]
    Db(rusqlite::Error),
    /// Creating or securing the database file failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match unique_violation(&e) {
            Some(detail) => StoreError::Exists(detail),
            None => StoreError::Db(e),
        }
    }
}

/// If `e` is a UNIQUE / PRIMARY KEY violation, SQLite's message
/// (`UNIQUE constraint failed: users.name`).
pub(crate) fn unique_violation(e: &rusqlite::Error) -> Option<String> {
    match e {
        rusqlite::Error::SqliteFailure(err, msg)
            if err.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
                || err.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            Some(
                msg.clone()
                    .unwrap_or_else(|| "UNIQUE constraint failed".into()),
            )
        }
        _ => None,
    }
}

/// Turns a UNIQUE violation into a [`StoreError::Exists`] whose text is
/// chosen by `what` from SQLite's detail (which names the columns); any other
/// error converts as usual.
pub(crate) fn conflict_as(e: rusqlite::Error, what: impl FnOnce(&str) -> String) -> StoreError {
    match unique_violation(&e) {
        Some(detail) => StoreError::Exists(what(&detail)),
        None => StoreError::from(e),
    }
}

/// Maps a FOREIGN KEY violation on insert (the owning user or sandbox row is
/// missing) to `NotFound`; UNIQUE violations become `Exists` with text
/// from `what`; anything else converts as usual.
pub(crate) fn insert_err(e: rusqlite::Error, what: impl FnOnce(&str) -> String) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StoreError::NotFound
        }
        _ => conflict_as(e, what),
    }
}
