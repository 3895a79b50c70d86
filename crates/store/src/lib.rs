//! The sled store of webhookd: subscriptions with their match indexes, and the durable outbox.
//!
//! # Layout
//! - [`keys`]: byte layouts of every tree's keys (length-prefixed, so prefix scans are exact).
//! - [`subscriptions`]: [`Store::apply`], the one function that changes subscriptions and their
//!   indexes atomically, and index-only matching.
//! - [`outbox`]: delivery records, the due-time tree, claims and outcomes.
//! - [`flusher`]: group commit on one thread (all durability promises go through it).
//! - [`health`]: which subscriptions are failing, since when (auto-disable).
//! - [`idempotency`]: stored first responses of requests with an idempotency key.
//! - [`signal`]: the in-memory wake-up from the outbox writer to the scheduler.
//!
//! Trees: `subscriptions` (id -> subscription), `match_index` (match key + id -> target),
//! `owner_index` (bank or merchant + creation time + id; per-owner counters),
//! `idempotency` (caller + key -> first response),
//! `deliveries` (id -> delivery), `due` (destination + due ms + id -> ()),
//! `delivery_index` (event or subscription + id -> ()), `attempts` (delivery id + attempt number
//! -> attempt record: the delivery log), `pending_index` (creation time + id of every pending
//! delivery: the oldest is its first key), `finished_index` (finish time + id of every finished
//! delivery: retention prunes a range of it), `failing` (subscription -> failing since).
//!
//! Durability: writes land in sled's log at once and reach disk at [`Store::flush`] (or sled's
//! background flush). Callers that promise durability (the AMQP ack, a 2xx from the API) flush
//! first; many writers share one flush (group commit).

pub mod flusher;
pub mod health;
pub mod idempotency;
pub mod keys;
pub mod outbox;
pub mod signal;
pub mod subscriptions;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

pub use outbox::{Claimed, Created, DeliveriesOf};
pub use signal::DueSignal;
pub use subscriptions::Change;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption it detected).
    #[error("store I/O failed: {0}")]
    Sled(#[from] sled::Error),
    /// Making writes durable failed.
    #[error("store flush failed: {0}")]
    Flush(String),
    /// A stored value does not decode.
    #[error("stored record {key} does not decode: {reason}")]
    Corrupt {
        /// Which record.
        key: String,
        /// Why.
        reason: String,
    },
    /// The change refers to something that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A create found the id taken.
    #[error("already exists: {0}")]
    Exists(String),
    /// The change does not apply to the record's current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A create would exceed the owner's limit.
    #[error("the limit of {limit} subscriptions is reached")]
    LimitReached {
        /// The limit.
        limit: u32,
    },
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> StoreError {
        match e {
            sled::transaction::TransactionError::Abort(inner) => inner,
            sled::transaction::TransactionError::Storage(inner) => StoreError::Sled(inner),
        }
    }
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<sled::Db>,
    subscriptions: sled::Tree,
    match_index: sled::Tree,
    owner_index: sled::Tree,
    idempotency: sled::Tree,
    deliveries: sled::Tree,
    due: sled::Tree,
    delivery_index: sled::Tree,
    attempts: sled::Tree,
    pending_index: sled::Tree,
    finished_index: sled::Tree,
    failing: sled::Tree,
    /// Pending deliveries: counted once at open, then kept up to date by every transition.
    pending: Arc<std::sync::atomic::AtomicI64>,
    signal: Arc<DueSignal>,
    flusher: flusher::Flusher,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        let db = Arc::new(
            sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(64 * 1024 * 1024)
                // Background flush bounds what a crash can take from outcome records (they are
                // re-sent, never lost); promises of durability flush explicitly.
                .flush_every_ms(Some(500))
                .open()?,
        );
        let pending_index = db.open_tree("pending_index")?;
        Ok(Store {
            subscriptions: db.open_tree("subscriptions")?,
            match_index: db.open_tree("match_index")?,
            owner_index: db.open_tree("owner_index")?,
            idempotency: db.open_tree("idempotency")?,
            deliveries: db.open_tree("deliveries")?,
            due: db.open_tree("due")?,
            delivery_index: db.open_tree("delivery_index")?,
            attempts: db.open_tree("attempts")?,
            finished_index: db.open_tree("finished_index")?,
            failing: db.open_tree("failing")?,
            pending: Arc::new(std::sync::atomic::AtomicI64::new(pending_index.len() as i64)),
            pending_index,
            signal: Arc::new(DueSignal::default()),
            flusher: flusher::Flusher::start(Arc::downgrade(&db)).map_err(sled::Error::Io)?,
            db,
        })
    }

    /// Makes every write so far durable. Concurrent callers share one disk flush (group commit).
    pub async fn flush(&self) -> Result<()> {
        self.flusher.flush().await.map_err(StoreError::Flush)
    }

    /// The wake-up the outbox writer posts to and the scheduler waits on.
    pub fn due_signal(&self) -> &Arc<DueSignal> {
        &self.signal
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our records are plain structs; serializing them to JSON cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
