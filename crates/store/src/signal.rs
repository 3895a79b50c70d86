//! The in-memory wake-up from the outbox writers to the scheduler.
//!
//! Coalescing: writers record the earliest new due time per destination, and one `Notify`
//! permit wakes the scheduler, so memory is bounded by the number of destinations and no
//! wake-up is lost even when the scheduler is busy.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

/// New due work, by destination.
#[derive(Default)]
pub struct DueSignal {
    pending: Mutex<HashMap<String, u64>>,
    notify: Notify,
}

impl DueSignal {
    /// Records that `destination` has work due at `due_ms`, and wakes the scheduler.
    pub fn post(&self, destination: &str, due_ms: u64) {
        self.post_many(std::iter::once((destination, due_ms)));
    }

    /// Records several, with one wake-up.
    pub fn post_many<'a>(&self, items: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (destination, due) in items {
            pending.entry(destination.to_string()).and_modify(|d| *d = (*d).min(due)).or_insert(due);
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// Takes everything posted since the last call.
    pub fn take(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until something is posted (returns at once if something was posted meanwhile).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}
