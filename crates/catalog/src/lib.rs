//! The subscription catalog of webhookd, shared by every replica through one ordered log.
//!
//! A change (a subscription created, patched, deleted) is never written to the store directly:
//! it is appended to a RabbitMQ stream with a publisher confirm ([`Catalog::submit`]), and every
//! replica's applier ([`Catalog::run`]) reads the stream in order and applies each record to its
//! own store, with the record's offset in the same transaction. Apply is deterministic (it reads
//! only the store and the record), so every replica reaches the same state and the same answer
//! to every change; the replica that took a request answers once it has applied the change
//! itself, with the outcome its apply computed (read-your-writes on that replica).
//!
//! # Layout
//! - [`settings`]: the `[catalog]` configuration section.
//! - [`stream`]: declaring, appending to and reading the stream.
//! - [`applier`]: the apply loop and the waits of the proposers; snapshots written and loaded.
//! - [`snapshot`]: snapshots split into parts and put together again.

pub mod applier;
pub mod settings;
pub mod snapshot;
pub mod stream;

pub use applier::{Catalog, Outcome};
pub use settings::CatalogSettings;

impl CatalogError {
    /// Whether the applier stops for good on it (an operator must act) instead of connecting
    /// again: a record it cannot read, a stream that does not continue, a store that fails.
    pub fn is_final(&self) -> bool {
        matches!(self, CatalogError::BadRecord { .. } | CatalogError::Diverged(_) | CatalogError::Store(_))
    }
}

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The change was not confirmed and applied here within `catalog.write_timeout_ms`; it may
    /// still be applied later.
    #[error(
        "the catalog change was not confirmed and applied within {ms} ms (it may still be applied later)"
    )]
    Unavailable {
        /// The bound, milliseconds.
        ms: u64,
    },
    /// A step with the broker failed.
    #[error(transparent)]
    Broker(#[from] webhookd_amqp::StepError),
    /// The broker refused a record (negative confirmation).
    #[error("the broker refused the catalog record (nack)")]
    Nacked,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] webhookd_store::StoreError),
    /// A record in the stream cannot be applied: the applier stops there (never skips it).
    #[error("catalog record at offset {offset} cannot be applied: {reason}")]
    BadRecord {
        /// Where in the stream.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// The stream does not continue where this replica stopped reading: it was deleted and
    /// created again, cut short (a broker that lost its last writes), or its first records are
    /// gone for a new replica. The applier stops there; it never reads from the wrong place.
    #[error("the catalog stream does not continue where this replica left it: {0}")]
    Diverged(String),
    /// The broker ended the applier's consumer (stream deleted, node restarted).
    #[error("the broker ended the catalog consumer")]
    ConsumerEnded,
    /// The applier has stopped (a bad record, a failed store): no change can be applied here.
    #[error("the catalog applier stopped: {0}")]
    Stopped(String),
}
