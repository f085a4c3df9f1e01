//! Background tasks (image pulls): a row the API answers `GET /tasks/:id`
//! from while the work runs, ended exactly once as `completed` or `failed`.
//! A task still `running` when a daemon starts was cut off by a crash or a
//! kill, and [`Store::fail_running_tasks`] says so.

use rusqlite::{params, Row};
use serde::{Deserialize, Serialize};

use crate::coerce::{get_json, to_json};
use crate::error::{Result, StoreError};
use crate::{ids, query_opt, time, Store};

/// A task row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// 16 hex.
    pub id: String,
    /// User who started it.
    pub user_id: String,
    /// `image_pull`.
    pub kind: String,
    /// `running` | `completed` | `failed`.
    pub status: String,
    /// Latest progress as a JSON value the task type defines (`{}` at start).
    pub progress: serde_json::Value,
    /// On completion, a JSON string the task type defines.
    pub result: Option<String>,
    /// On failure, what went wrong.
    pub error: Option<String>,
    /// When it started, RFC 3339 UTC with milliseconds (`time::now()` format).
    pub created_at: String,
    /// When it ended (completed or failed), RFC 3339 UTC with milliseconds (`time::now()` format). `None` while running.
    pub completed_at: Option<String>,
}

const COLS: &str = "id, user_id, type, status, progress, result, error, created_at, completed_at";

fn map_task(r: &Row<'_>) -> Result<Task> {
    Ok(Task {
        id: r.get("id")?,
        user_id: r.get("user_id")?,
        kind: r.get("type")?,
        status: r.get("status")?,
        progress: get_json(r, "progress")?,
        result: r.get("result")?,
        error: r.get("error")?,
        created_at: r.get("created_at")?,
        completed_at: r.get("completed_at")?,
    })
}

impl Store {
    /// A new `running` task.
    pub fn create_task(&self, user_id: &str, kind: &str) -> Result<Task> {
        let id = ids::random_hex(8);
        self.write(|tx| {
            tx.execute(
                "INSERT INTO tasks (id, user_id, type, status, created_at) \
                 VALUES (?1, ?2, ?3, 'running', ?4)",
                params![id, user_id, kind, time::now()],
            )?;
            query_opt(
                tx,
                &format!("SELECT {COLS} FROM tasks WHERE id = ?1"),
                [&id],
                map_task,
            )?
            .ok_or(StoreError::NotFound)
        })
    }

    /// Replaces a running task's progress (a finished task keeps its last).
    pub fn set_task_progress(&self, id: &str, progress: &serde_json::Value) -> Result<()> {
        let p = to_json(progress, "progress")?;
        self.write(|tx| {
            tx.execute(
                "UPDATE tasks SET progress = ?2 WHERE id = ?1 AND status = 'running'",
                params![id, p],
            )?;
            Ok(())
        })
    }

    /// Ends a running task as `completed`. A task that already ended (for
    /// one failed by a restart while its job still ran) is left as it is:
    /// `Conflict`.
    pub fn complete_task(&self, id: &str, result: Option<String>) -> Result<()> {
        self.end_task(id, "completed", result, None)
    }

    /// Ends a running task as `failed` with the reason (`Conflict` if it
    /// already ended).
    pub fn fail_task(&self, id: &str, error: &str) -> Result<()> {
        self.end_task(id, "failed", None, Some(error))
    }

    fn end_task(
        &self,
        id: &str,
        status: &str,
        result: Option<String>,
        error: Option<&str>,
    ) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE tasks SET status = ?2, result = ?3, error = ?4, completed_at = ?5 \
                 WHERE id = ?1 AND status = 'running'",
                params![id, status, result, error, time::now()],
            )?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("task {id} is not running")));
            }
            Ok(())
        })
    }

    /// The user's task; another user's is `NotFound`.
    pub fn task(&self, user_id: &str, id: &str) -> Result<Task> {
        self.read(|c| {
            query_opt(
                c,
                &format!("SELECT {COLS} FROM tasks WHERE id = ?1 AND user_id = ?2"),
                [id, user_id],
                map_task,
            )?
            .ok_or(StoreError::NotFound)
        })
    }

    /// At start-up: every task still `running` was cut off; fail it with
    /// `reason`. Returns how many.
    pub fn fail_running_tasks(&self, reason: &str) -> Result<u64> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE tasks SET status = 'failed', error = ?1, completed_at = ?2 \
                 WHERE status = 'running'",
                params![reason, time::now()],
            )?;
            Ok(n as u64)
        })
    }
}
