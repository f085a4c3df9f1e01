//! The table of live sandboxes both engines keep: one lookup (with the
//! engine's `NotFound`), insert, removal and snapshot of the set, instead
//! of a map and its lock helpers written out in each engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::api::EngineError;
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
