//! The event log: an append-only table the daemon's recorder batch-inserts
//! into and the admin CLI queries; old rows are removed by retention.

use rusqlite::{params, Row};
use serde::{Deserialize, Serialize};

use crate::coerce::{get_int, get_json, to_json};
use crate::error::{Result, StoreError};
use crate::{query_all, time, Store};

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Row ID, assigned increasing by SQLite (AUTOINCREMENT).
    pub id: i64,
    /// ISO-8601 UTC with milliseconds.
    pub ts: String,
    /// e.g. `sandbox.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Empty when not user-related.
    pub user_id: String,
    /// Empty when not sandbox-related.
    pub sandbox_id: String,
    /// Free-form JSON object with event details (`{}` when none).
    pub meta: serde_json::Value,
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NewEvent {
    #[serde(rename = "type")]
    /// Event type, e.g. `sandbox.created`.
    pub event_type: String,
    #[serde(default)]
    /// User it concerns; empty when not user-related.
    pub user_id: String,
    #[serde(default)]
    /// Sandbox it concerns; empty when not sandbox-related.
    pub sandbox_id: String,
    /// `Null` is stored as `{}`.
    #[serde(default)]
    pub meta: serde_json::Value,
    /// When it happened; `None` = now. Any RFC 3339 UTC (`…Z`) form is
    /// accepted and stored normalized to milliseconds.
    #[serde(default)]
    pub ts: Option<String>,
}

impl NewEvent {
    /// An event of `event_type` happening now, with no user, sandbox or meta.
    pub fn new(event_type: impl Into<String>) -> Self {
        NewEvent {
            event_type: event_type.into(),
            ..Default::default()
        }
    }
}

/// Filters for [`Store::events`]; all optional, combined with AND.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventQuery {
    /// Type starts with this (`"sandbox."`, or a full type).
    pub type_prefix: Option<String>,
    /// Only events of this user ID.
    pub user_id: Option<String>,
    /// Only events of this sandbox ID.
    pub sandbox_id: Option<String>,
    /// `ts >= since` (RFC 3339 UTC).
    pub since: Option<String>,
    /// At most this many, newest first; `None` = all.
    pub limit: Option<u32>,
}

/// Normalizes a caller-supplied timestamp to the stored form so text
/// comparison stays time comparison.
fn norm_ts(ts: &str) -> Result<String> {
    time::parse_ts(ts)
        .map(time::format_ts)
        .ok_or_else(|| StoreError::Invalid(format!("timestamp {ts:?} is not RFC 3339 UTC")))
}

fn map_event(r: &Row<'_>) -> Result<Event> {
    Ok(Event {
        id: get_int(r, "id")?,
        ts: r.get("ts")?,
        event_type: r.get("type")?,
        user_id: r.get("user_id")?,
        sandbox_id: r.get("sandbox_id")?,
        meta: get_json(r, "meta")?,
    })
}

impl Store {
    /// Records one event; returns its ID.
    pub fn record_event(&self, e: &NewEvent) -> Result<i64> {
        self.write(|tx| insert(tx, e))
    }

    /// Records a batch of events in one transaction (all or nothing);
    /// returns how many.
    pub fn record_events(&self, events: &[NewEvent]) -> Result<usize> {
        self.write(|tx| {
            for e in events {
                insert(tx, e)?;
            }
            Ok(events.len())
        })
    }

    /// Events matching `q`, newest first.
    pub fn events(&self, q: &EventQuery) -> Result<Vec<Event>> {
        let since = q.since.as_deref().map(norm_ts).transpose()?;
        let limit = q.limit.map_or(-1, i64::from);
        self.read(|c| {
            query_all(
                c,
                "SELECT id, ts, type, user_id, sandbox_id, meta FROM events \
                 WHERE (?1 IS NULL OR substr(type, 1, length(?1)) = ?1) \
                   AND (?2 IS NULL OR user_id = ?2) \
                   AND (?3 IS NULL OR sandbox_id = ?3) \
                   AND (?4 IS NULL OR ts >= ?4) \
                 ORDER BY ts DESC, id DESC LIMIT ?5",
                params![q.type_prefix, q.user_id, q.sandbox_id, since, limit],
                map_event,
            )
        })
    }

    /// Retention: deletes events with `ts` before `cutoff` (RFC 3339 UTC);
    /// returns how many.
    pub fn delete_events_before(&self, cutoff: &str) -> Result<usize> {
        let cutoff = norm_ts(cutoff)?;
        self.write(|tx| Ok(tx.execute("DELETE FROM events WHERE ts < ?1", [cutoff])?))
    }
}

fn insert(tx: &rusqlite::Transaction<'_>, e: &NewEvent) -> Result<i64> {
    if e.event_type.is_empty() {
        return Err(StoreError::Invalid("event type is empty".into()));
    }
    let ts = match &e.ts {
        Some(t) => norm_ts(t)?,
        None => time::now(),
    };
    let meta = if e.meta.is_null() {
        "{}".to_string()
    } else {
        to_json(&e.meta, "meta")?
    };
    tx.execute(
        "INSERT INTO events (ts, type, user_id, sandbox_id, meta) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![ts, e.event_type, e.user_id, e.sandbox_id, meta],
    )?;
    Ok(tx.last_insert_rowid())
}
