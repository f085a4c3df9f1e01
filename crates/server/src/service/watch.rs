//! Directory watches. An agent that serves them (`files.watch` in its
//! HELLO: lohar's inotify operation) reports each change as it happens,
//! renames and every write included, over one connection per watch. For an
//! older agent the directory is listed every [`POLL`] instead and each
//! listing compared with the last, giving create, write, chmod and remove
//! events by name; the callers cannot tell the two apart.
//!
//! Neither wakes the sandbox: a watch on a paused sandbox sees nothing
//! happen (nothing can), rather than keeping it awake. A watch through a
//! sandbox that goes cold (its memory snapshotted to disk) ends, as its
//! connection does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bhatti_agent_client::{Watch, WatchOp};
use bhatti_engine::EngineExt;
use bhatti_store::Sandbox;
use tokio::sync::mpsc;

use crate::service::error::{ErrorCode, ServiceError, ServiceResult};
use crate::service::guest_fs::{self, Entry};
use crate::state::{lock, Shared};

/// How often a watched directory is listed.
pub const POLL: Duration = Duration::from_millis(250);
/// How deep a recursive watch looks.
pub const MAX_DEPTH: u32 = 8;
/// Entries a watch keeps track of at most.
pub const MAX_ENTRIES: usize = 10_000;
/// Events a polled watcher holds for its client before dropping the oldest.
pub const MAX_BUFFERED: usize = 10_000;
/// Watchers one sandbox may have at once.
pub const MAX_WATCHERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Create,
    Write,
    Remove,
    /// Moved away (from an agent that watches; polling sees a removal).
    Rename,
    Chmod,
}

/// One change under a watched directory; `name` is relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEvent {
    pub name: String,
    pub change: Change,
    /// What is there now (absent for a removal).
    pub entry: Option<Entry>,
}

type Listing = BTreeMap<String, Entry>;

/// The directory's entries by name relative to it, without waking it.
async fn listing(st: &Shared, sandbox_id: &str, root: &str, depth: u32) -> ServiceResult<Listing> {
    Ok(guest_fs::walk(st, sandbox_id, root, depth, MAX_ENTRIES)
        .await?
        .into_iter()
        .collect())
}

/// What changed from `old` to `new`.
fn diff(old: &Listing, new: &Listing) -> Vec<FsEvent> {
    let mut out = Vec::new();
    for (name, e) in new {
        let change = match old.get(name) {
            None => Some(Change::Create),
            Some(o) if o.info.is_dir != e.info.is_dir => Some(Change::Create),
            Some(o)
                if !e.info.is_dir
                    && (o.info.size != e.info.size || o.info.mtime != e.info.mtime) =>
            {
                Some(Change::Write)
            }
            Some(o) if o.info.mode != e.info.mode => Some(Change::Chmod),
            Some(_) => None,
        };
        if let Some(change) = change {
            out.push(FsEvent {
                name: name.clone(),
                change,
                entry: Some(e.clone()),
            });
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push(FsEvent {
            name: name.clone(),
            change: Change::Remove,
            entry: None,
        });
    }
    out
}

/// Starts watching `path` (a directory): the first listing is taken before
/// this returns, so every change after it is reported. The watch ends when
/// the receiver is dropped or the directory can no longer be listed.
pub async fn watch(
    st: &Shared,
    sb: &Sandbox,
    path: &str,
    recursive: bool,
) -> ServiceResult<mpsc::Receiver<FsEvent>> {
    st.ensure_hot(sb).await?;
    let root = guest_fs::resolve(st, sb, path).await?;
    let info = st.engine.file_stat(&sb.id, &root).await?;
    if !info.is_dir {
        return Err(ServiceError::bad_request(format!(
            "{root} is not a directory"
        )));
    }
    let agent = st.engine.agent(&sb.id)?;
    if agent.can_watch().await.unwrap_or(false) {
        let w = agent.watch(&root, recursive).await?;
        return Ok(relay(w));
    }
    let depth = if recursive { MAX_DEPTH } else { 1 };
    let mut last = listing(st, &sb.id, &root, depth).await?;
    let (tx, rx) = mpsc::channel(256);
    let (st, id) = (st.clone(), sb.id.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
            }
            if !matches!(
                st.engine.thermal(&id),
                Ok(bhatti_engine::contract::Thermal::Hot)
            ) {
                continue;
            }
            let now = match listing(&st, &id, &root, depth).await {
                Ok(l) => l,
                Err(e) if e.code == ErrorCode::NotFound => return,
                // Paused or busy meanwhile: try again next tick.
                Err(_) => continue,
            };
            for ev in diff(&last, &now) {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
            last = now;
        }
    });
    Ok(rx)
}

/// The agent's events, as long as both the watch and the receiver last.
fn relay(mut w: Watch) -> mpsc::Receiver<FsEvent> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                ev = w.next() => ev,
                _ = tx.closed() => return,
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "directory watch ended");
                    return;
                }
            };
            let change = match ev.op {
                WatchOp::Create => Change::Create,
                WatchOp::Write => Change::Write,
                WatchOp::Remove => Change::Remove,
                WatchOp::Rename => Change::Rename,
                WatchOp::Chmod => Change::Chmod,
                // Lost events cannot be told; an op from a newer agent is
                // not one the callers know.
                WatchOp::Overflow | WatchOp::Unknown => {
                    tracing::debug!(op = ?ev.op, "directory watch event skipped");
                    continue;
                }
            };
            let out = FsEvent {
                name: ev.name,
                change,
                entry: None,
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    rx
}

struct Watcher {
    sandbox_id: String,
    events: Arc<Mutex<Vec<FsEvent>>>,
    task: tokio::task::AbortHandle,
}

/// Watches whose events a client collects by polling (E2B's CreateWatcher).
#[derive(Default)]
pub struct Watchers(Mutex<HashMap<String, Watcher>>);

impl Watchers {
    pub async fn create(
        &self,
        st: &Shared,
        sb: &Sandbox,
        path: &str,
        recursive: bool,
    ) -> ServiceResult<String> {
        let n = lock(&self.0)
            .values()
            .filter(|w| w.sandbox_id == sb.id)
            .count();
        if n >= MAX_WATCHERS {
            return Err(ServiceError::too_many(format!(
                "{MAX_WATCHERS} watchers already exist for this sandbox"
            )));
        }
        let mut rx = watch(st, sb, path, recursive).await?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let buf = events.clone();
        let task = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let mut b = lock(&buf);
                if b.len() >= MAX_BUFFERED {
                    b.remove(0);
                }
                b.push(ev);
            }
        })
        .abort_handle();
        let id = format!("w_{}", bhatti_store::ids::random_hex(8));
        lock(&self.0).insert(
            id.clone(),
            Watcher {
                sandbox_id: sb.id.clone(),
                events,
                task,
            },
        );
        Ok(id)
    }

    /// The events since the last call.
    pub fn take(&self, sandbox_id: &str, id: &str) -> ServiceResult<Vec<FsEvent>> {
        let all = lock(&self.0);
        let w = all
            .get(id)
            .filter(|w| w.sandbox_id == sandbox_id)
            .ok_or_else(|| ServiceError::not_found(format!("watcher {id:?} not found")))?;
        let events = std::mem::take(&mut *lock(&w.events));
        Ok(events)
    }

    pub fn remove(&self, sandbox_id: &str, id: &str) -> ServiceResult<()> {
        let mut all = lock(&self.0);
        match all.get(id) {
            Some(w) if w.sandbox_id == sandbox_id => {
                w.task.abort();
                all.remove(id);
                Ok(())
            }
            _ => Err(ServiceError::not_found(format!("watcher {id:?} not found"))),
        }
    }

    /// Drops a destroyed sandbox's watchers.
    pub fn forget(&self, sandbox_id: &str) {
        lock(&self.0).retain(|_, w| {
            let keep = w.sandbox_id != sandbox_id;
            if !keep {
                w.task.abort();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bhatti_protocol::messages::FileInfo;

    fn e(name: &str, size: i64, mode: &str, is_dir: bool) -> (String, Entry) {
        (
            name.to_string(),
            Entry {
                path: format!("/w/{name}"),
                info: FileInfo {
                    name: name.rsplit('/').next().unwrap_or(name).into(),
                    size,
                    mode: mode.into(),
                    is_dir,
                    mtime: 1,
                },
            },
        )
    }

    #[test]
    fn listings_diff_into_events() {
        let old: Listing = [
            e("a", 1, "0644", false),
            e("b", 1, "0644", false),
            e("d", 0, "0755", true),
        ]
        .into();
        let new: Listing = [
            e("a", 2, "0644", false),
            e("c", 1, "0644", false),
            e("d", 0, "0700", true),
            e("d/x", 0, "0644", false),
        ]
        .into();
        let got: Vec<(String, Change)> = diff(&old, &new)
            .into_iter()
            .map(|ev| (ev.name, ev.change))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), Change::Write),
                ("c".into(), Change::Create),
                ("d".into(), Change::Chmod),
                ("d/x".into(), Change::Create),
                ("b".into(), Change::Remove),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
