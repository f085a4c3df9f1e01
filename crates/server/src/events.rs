//! The event recorder: handlers emit events without waiting for SQLite; a
//! background task batch-inserts them every 500 ms or every 100 events
//! (docs/server.md, "Events"). When the channel is full, events are dropped
//! and counted rather than slowing the API down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bhatti_store::{NewEvent, Store};
use tokio::sync::mpsc;

const CAPACITY: usize = 1000;
const BATCH: usize = 100;
const FLUSH_EVERY: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<NewEvent>,
    dropped: Arc<AtomicU64>,
}

impl Events {
    /// Starts the writer task; it ends (after a last flush) once every
    /// `Events` handle is dropped.
    pub fn start(store: Arc<Store>) -> (Events, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<NewEvent>(CAPACITY);
        let task = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            loop {
                let closed = tokio::select! {
                    n = rx.recv_many(&mut buf, BATCH) => n == 0,
                    _ = tokio::time::sleep(FLUSH_EVERY) => false,
                };
                if !buf.is_empty() {
                    let batch = std::mem::take(&mut buf);
                    let store = store.clone();
                    let r = tokio::task::spawn_blocking(move || store.record_events(&batch)).await;
                    if let Ok(Err(e)) = r {
                        tracing::warn!(error = %e, "could not record events");
                    }
                }
                if closed {
                    break;
                }
            }
        });
        (
            Events {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            task,
        )
    }

    pub fn emit(&self, user: &str, sandbox: &str, kind: &str, meta: serde_json::Value) {
        let mut e = NewEvent::new(kind);
        e.user_id = user.to_string();
        e.sandbox_id = sandbox.to_string();
        e.meta = meta;
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
