//! The sled store of webhookd: the catalog (subscriptions with their match indexes, tokens,
//! idempotency keys) as applied from the catalog log, and the delivery log view.
//!
//! # Layout
//! - [`keys`]: byte layouts of every tree's keys (length-prefixed, so prefix scans are exact).
//! - [`catalog`]: [`Store::apply_record`], the one function that changes the catalog
//!   (subscriptions and their indexes, tokens, idempotency keys) atomically with the log position.
//! - [`subscriptions`]: the subscription part of a change, and index-only matching.
//! - [`tokens`]: API tokens (hashes only) and authentication.
//! - [`delivery_log`]: the delivery log as a view of what the delivery side reports.
//! - [`deliveries`]: reading the delivery log view; retention of finished deliveries.
//! - [`flusher`]: group commit on one thread (all durability promises go through it).
//! - [`health`]: which subscriptions are failing, since when (auto-disable).
//! - [`idempotency`]: idempotency keys of creates and their first outcomes.
//!
//! Trees: `subscriptions` (id -> subscription), `match_index` (match key + id -> target),
//! `owner_index` (bank or merchant + creation time + id; per-owner counters),
//! `idempotency` (caller + key -> first outcome), `idempotency_expiry` (expiry + caller + key),
//! `tokens` (token id -> token record),
//! `deliveries` (id -> the delivery as last logged with its attempts, a compact
//! [`deliveries::ViewRecord`]), `delivery_index` (event -> its deliveries' shared id prefix and
//! count, one entry per event; subscription + creation time + id -> ()), `pending_index` (creation time + id of every pending
//! delivery: the oldest is its first key), `failing` (subscription -> failing since), `meta`
//! (the write probe; the number of pending deliveries; the catalog position), `catalog_changes`
//! (change ids of the catalog records applied).
//!
//! Durability: writes land in sled's log at once and reach disk at [`Store::flush`] or sled's
//! background flush (every 500 ms). No promise waits for a flush here: the catalog and the
//! delivery log view are both rebuilt from their streams, which the broker holds, and each
//! resumes after the position stored with what it applied. The delivery log follower flushes
//! once a second so that a disk that fails is noticed.

pub mod catalog;
pub mod deliveries;
pub mod delivery_log;
pub mod flusher;
pub mod health;
pub mod idempotency;
pub mod keys;
pub mod subscriptions;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

pub use catalog::{Applied, CatalogPosition, LastSnapshot};
pub use deliveries::{DeliveriesOf, DeliveryFilter};
pub use delivery_log::LogPosition;
pub use subscriptions::Change;

/// `[store]`: how the store uses memory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// sled's page cache, MiB: more keeps more of the store in memory, less lowers RSS.
    pub cache_mib: u64,
}

impl Default for StoreSettings {
    /// The defaults of `default.toml`.
    fn default() -> StoreSettings {
        StoreSettings { cache_mib: 16 }
    }
}

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
    /// A create's idempotency key was used before with the same request: this is what that
    /// request did.
    #[error("the idempotency key was used before with the same request")]
    KeyUsed(Box<webhookd_core::catalog::FirstOutcome>),
    /// A create's idempotency key was used before with another request.
    #[error("the idempotency key was used before with another request")]
    KeyMismatch,
    /// A catalog record stamped with another life of the log than the one it is in.
    #[error("the record belongs to catalog log {record}, not to this one ({log}): the stream was deleted and created again")]
    StaleEpoch {
        /// The life its proposer knew.
        record: uuid::Uuid,
        /// The life of the log it is in.
        log: uuid::Uuid,
    },
    /// A create would exceed the owner's limit.
    #[error("the limit of {limit} subscriptions is reached")]
    LimitReached {
        /// The limit.
        limit: u32,
    },
}

impl StoreError {
    /// Whether the error comes from the disk (full, read-only, failing) rather than the data.
    pub fn is_io(&self) -> bool {
        matches!(self, StoreError::Flush(_) | StoreError::Sled(sled::Error::Io(_)))
    }
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
    idempotency_expiry: sled::Tree,
    tokens: sled::Tree,
    deliveries: sled::Tree,
    delivery_index: sled::Tree,
    pending_index: sled::Tree,
    failing: sled::Tree,
    /// Small records of the store itself (the write probe, the catalog position).
    meta: sled::Tree,
    /// Change ids of the catalog records applied (a second copy of one is not applied again).
    catalog_changes: sled::Tree,
    /// Where retention's sweep of the delivery tree goes on (see [`Store::prune_finished`]).
    prune_cursor: Arc<std::sync::Mutex<Option<sled::IVec>>>,
    /// Pending deliveries: read from `meta` at open, then kept up to date by every transition.
    pending: Arc<std::sync::atomic::AtomicI64>,
    flusher: flusher::Flusher,
    /// Why the store cannot be written any more, once that happened (see [`Store::failed`]).
    fault: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default settings.
    pub fn open(dir: &Path) -> Result<Store> {
        Store::open_with(dir, &StoreSettings::default())
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open_with(dir: &Path, settings: &StoreSettings) -> Result<Store> {
        let db = Arc::new(
            sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(settings.cache_mib.saturating_mul(1024 * 1024))
                // Background flush bounds what a crash can take from outcome records (they are
                // re-sent, never lost); promises of durability flush explicitly.
                .flush_every_ms(Some(500))
                .open()?,
        );
        let pending_index = db.open_tree("pending_index")?;
        let meta = db.open_tree("meta")?;
        let pending = pending_count_at_open(&meta, &pending_index)?;
        Ok(Store {
            subscriptions: db.open_tree("subscriptions")?,
            match_index: db.open_tree("match_index")?,
            owner_index: db.open_tree("owner_index")?,
            idempotency: db.open_tree("idempotency")?,
            idempotency_expiry: db.open_tree("idempotency_expiry")?,
            tokens: db.open_tree("tokens")?,
            deliveries: db.open_tree("deliveries")?,
            delivery_index: db.open_tree("delivery_index")?,
            failing: db.open_tree("failing")?,
            meta,
            catalog_changes: db.open_tree("catalog_changes")?,
            prune_cursor: Arc::default(),
            pending: Arc::new(std::sync::atomic::AtomicI64::new(pending)),
            pending_index,
            flusher: flusher::Flusher::start(Arc::downgrade(&db)).map_err(sled::Error::Io)?,
            fault: Arc::new(tokio::sync::watch::Sender::new(None)),
            db,
        })
    }

    /// Notes an error this store returned: an I/O error marks the store failed for good, because
    /// sled keeps failing after one (disk full, read-only file system); only reopening it, once
    /// the disk is back, clears that.
    pub fn note_error(&self, e: &StoreError) {
        if e.is_io() {
            self.fault.send_if_modified(|fault| {
                let first = fault.is_none();
                if first {
                    tracing::error!(error = %e, "the store cannot be written");
                    *fault = Some(e.to_string());
                }
                first
            });
        }
    }

    /// Why the store cannot be written, if it cannot.
    pub fn fault(&self) -> Option<String> {
        self.fault.borrow().clone()
    }

    /// Resolves once the store cannot be written (an I/O error was seen), with the reason.
    pub async fn failed(&self) -> String {
        let mut watch = self.fault.subscribe();
        let reason = watch.wait_for(Option::is_some).await.map(|fault| fault.clone());
        match reason {
            Ok(fault) => fault.unwrap_or_default(),
            // The sender lives as long as this store handle, so this cannot happen.
            Err(_) => std::future::pending().await,
        }
    }

    /// Writes a probe record and flushes it: fails when the store cannot be written.
    pub async fn probe(&self) -> Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let written = self.meta.insert(b"probe", &now.as_millis().to_be_bytes()[..]);
        if let Err(e) = written {
            let e = StoreError::from(e);
            self.note_error(&e);
            return Err(e);
        }
        self.flush().await
    }

    /// Makes every write so far durable. Concurrent callers share one disk flush (group commit).
    pub async fn flush(&self) -> Result<()> {
        let result = self.flusher.flush().await.map_err(StoreError::Flush);
        if let Err(e) = &result {
            self.note_error(e);
        }
        result
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

/// Meta key of the number of pending deliveries (i64, big-endian). Every transaction that adds
/// to or takes from the pending index updates it too, so opening a store reads one key instead
/// of counting the index (a scan of every pending delivery: seconds with a million of them).
const PENDING_COUNT: &[u8] = b"pending_count";

/// The pending count kept in `meta`; a store written before it was kept is counted once.
fn pending_count_at_open(meta: &sled::Tree, pending_index: &sled::Tree) -> Result<i64> {
    if let Some(count) = meta.get(PENDING_COUNT)?.as_deref().and_then(count_of) {
        return Ok(count);
    }
    let count = pending_index.len() as i64;
    meta.insert(PENDING_COUNT, &count.to_be_bytes())?;
    Ok(count)
}

/// Adds `delta` to the pending count, inside a transaction that changes the pending index.
fn add_pending(
    meta: &sled::transaction::TransactionalTree,
    delta: i64,
) -> std::result::Result<(), sled::transaction::UnabortableTransactionError> {
    if delta != 0 {
        let count = meta.get(PENDING_COUNT)?.as_deref().and_then(count_of).unwrap_or(0);
        meta.insert(PENDING_COUNT, &(count + delta).to_be_bytes())?;
    }
    Ok(())
}

fn count_of(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
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
