//! The webhookd delivery engine: takes due deliveries from the outbox, sends them, records the
//! outcome and the next due time.
//!
//! # Layout
//! - [`settings`]: the `[delivery]` configuration section.
//! - [`http`]: one HTTP attempt: request building, signing, bounded response reading.
//! - [`scheduler`]: the loop that sleeps until the next due item and keeps the concurrency
//!   limits (global and per destination).
//! - [`attempt`]: runs one attempt and turns its answer into the delivery's next state.
//! - [`dispatch`]: one delivery from due to finished or held by the broker (the new hot path).
//! - [`slots`]: per-destination in-flight slots with an adaptive limit.
//! - [`log`]: the delivery side's handle on the delivery log (one recorder task).
//! - [`probe`]: one attempt sent now (Rabo `verify`).
//! - [`tier_queues`]: the broker's retry tiers and due queue; handing a retry over.
//! - [`resolver`]: DNS resolution that refuses non-global addresses at connect time.

pub mod attempt;
pub mod dispatch;
pub mod http;
pub mod log;
pub mod probe;
pub mod resolver;
pub mod scheduler;
pub mod settings;
pub mod slots;
pub mod tier_queues;

pub use dispatch::{Dispatch, DispatchError, Handled};
pub use log::DeliveryLog;
pub use probe::Prober;
pub use scheduler::Engine;
pub use settings::DeliverySettings;
pub use tier_queues::TierQueues;

/// Errors of the delivery engine.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] webhookd_store::StoreError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}
