//! Group commit: one thread makes writes durable for every caller waiting at that moment.
//!
//! Callers take a ticket and wait; the thread runs one blocking `fsync` (sled `flush`) for all
//! tickets issued before it started, then wakes them. Besides sharing the disk flush, this keeps
//! flushes off sled's own thread pool: sled's `flush_async` occupies a pool thread that blocks on
//! sled's global lock, and enough of them starve the pool that a transaction holding that lock
//! needs to write its buffers, so concurrent callers deadlock (seen with 32 concurrent writers).

use std::sync::{Arc, Condvar, Mutex, Weak};

use tokio::sync::watch;

/// The state of the flushes: tickets issued, tickets done, and the last error.
#[derive(Clone, Debug, Default, PartialEq)]
struct Done {
    ticket: u64,
    error: Option<String>,
}

/// A handle on the flusher thread; cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    requested: Arc<(Mutex<u64>, Condvar)>,
    done: watch::Receiver<Done>,
}

impl Flusher {
    /// Starts the flusher thread for `db`, which it holds only while flushing (so dropping the
    /// store releases the database at once). The thread ends soon after the database is gone.
    pub fn start(db: Weak<sled::Db>) -> std::io::Result<Flusher> {
        let requested = Arc::new((Mutex::new(0u64), Condvar::new()));
        let (tx, rx) = watch::channel(Done::default());
        let shared = requested.clone();
        std::thread::Builder::new().name("webhookd-flusher".into()).spawn(move || {
            let mut completed = 0u64;
            loop {
                let target = {
                    let (lock, wake) = &*shared;
                    let mut asked = lock.lock().unwrap_or_else(|e| e.into_inner());
                    while *asked <= completed {
                        let (guard, _) = wake
                            .wait_timeout(asked, std::time::Duration::from_secs(1))
                            .unwrap_or_else(|e| e.into_inner());
                        asked = guard;
                        if db.strong_count() == 0 {
                            return;
                        }
                    }
                    *asked
                };
                let Some(db) = db.upgrade() else { return };
                let error = db.flush().err().map(|e| e.to_string());
                drop(db);
                completed = target;
                if tx.send(Done { ticket: target, error }).is_err() {
                    return;
                }
            }
        })?;
        Ok(Flusher { requested, done: rx })
    }

    /// Makes every write made before this call durable. Concurrent callers share one flush.
    pub async fn flush(&self) -> Result<(), String> {
        let ticket = {
            let (lock, wake) = &*self.requested;
            let mut asked = lock.lock().unwrap_or_else(|e| e.into_inner());
            *asked += 1;
            wake.notify_one();
            *asked
        };
        let mut done = self.done.clone();
        let state = done
            .wait_for(|d| d.ticket >= ticket)
            .await
            .map_err(|_| "the flusher thread has stopped".to_string())?
            .clone();
        match state.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
