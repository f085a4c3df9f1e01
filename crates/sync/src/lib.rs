//! The one way bhatti takes a `std::sync::Mutex`, instead of a helper per
//! module.
//!
//! Poison is ignored on purpose. Every critical section in bhatti is a
//! single-step update of plain data (a counter, a map insert, a status
//! change), so a panic elsewhere while the lock was held never leaves the
//! data half-written; refusing every later caller would turn one bug into
//! a wedged daemon or agent.

#![forbid(unsafe_code)]

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the data even if another thread panicked holding it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
