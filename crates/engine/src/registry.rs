//! The table of live sandboxes both engines keep: one lookup (with the
//! engine's `NotFound`), insert, removal and snapshot of the set, instead
//! of a map and its lock helpers written out in each engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bhatti_agent_client::AgentClient;

use crate::contract::{EngineError, LifeState, SandboxInfo, Status, Thermal};
use crate::lock;

/// Sandboxes by ID. `S` is the engine's own sandbox record.
pub(crate) struct Registry<S> {
    map: Mutex<HashMap<String, Arc<S>>>,
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<S> Registry<S> {
    pub(crate) fn get(&self, id: &str) -> Result<Arc<S>, EngineError> {
        lock(&self.map)
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(id.to_string()))
    }

    pub(crate) fn insert(&self, id: String, sb: Arc<S>) {
        lock(&self.map).insert(id, sb);
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Arc<S>> {
        lock(&self.map).remove(id)
    }

    /// Every sandbox, as of now (the lock is not held while the caller
    /// works through them).
    pub(crate) fn all(&self) -> Vec<Arc<S>> {
        lock(&self.map).values().cloned().collect()
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        lock(&self.map).keys().cloned().collect()
    }
}

/// An engine's sandbox record as the server sees it.
pub(crate) trait Entry {
    /// Its state and shape right now.
    fn info(&self) -> SandboxInfo;
}

impl<S: Entry> Registry<S> {
    /// What [`Engine::status`](crate::Engine::status) answers.
    pub(crate) fn info(&self, id: &str) -> Result<SandboxInfo, EngineError> {
        Ok(self.get(id)?.info())
    }

    /// What [`Engine::list`](crate::Engine::list) answers.
    pub(crate) fn infos(&self) -> Vec<SandboxInfo> {
        self.all().iter().map(|s| s.info()).collect()
    }
}

/// The refusal of an operation that needs a running sandbox, for one that
/// is stopped (`what`: what cannot be done, and what to do instead).
pub(crate) fn stopped(id: &str, what: &str) -> EngineError {
    EngineError::BadState {
        id: id.into(),
        state: Status::Stopped,
        what: what.into(),
    }
}

/// The agent of a hot sandbox; a sandbox that is not hot (or has no agent
/// yet) answers `NotHot` with its thermal state, so the caller can wake it.
pub(crate) fn hot_agent(
    id: &str,
    state: &LifeState,
    agent: Option<&AgentClient>,
) -> Result<AgentClient, EngineError> {
    match (agent, state.thermal()) {
        (Some(a), Thermal::Hot) => Ok(a.clone()),
        (_, thermal) => Err(EngineError::NotHot {
            id: id.into(),
            thermal,
        }),
    }
}

/// A crashed sandbox is not woken by a request: that would hide that its
/// processes are gone. Only an explicit start runs it again.
pub(crate) fn refuse_crashed(id: &str, crashed: Option<&str>) -> Result<(), EngineError> {
    match crashed {
        Some(why) => Err(EngineError::BadState {
            id: id.into(),
            state: Status::Crashed,
            what: why.to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_insert_remove_and_not_found() {
        let r: Registry<u8> = Registry::default();
        assert!(matches!(r.get("a"), Err(EngineError::NotFound(id)) if id == "a"));
        r.insert("a".into(), Arc::new(1));
        r.insert("b".into(), Arc::new(2));
        assert_eq!(*r.get("a").unwrap(), 1);
        let mut ids = r.ids();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(r.remove("a").map(|v| *v), Some(1));
        assert_eq!(r.all().len(), 1);
    }
}
