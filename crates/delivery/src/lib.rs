//! The webhookd dispatch side: sends each delivery that is due, and hands every one that must
//! wait (a retry, a deferral) to the broker's retry tiers, so that nothing pending lives in a
//! replica.
//!
//! # Layout
//! - [`settings`]: the `[delivery]` configuration section.
//! - [`http`]: one HTTP attempt: request building, signing, bounded response reading.
//! - [`attempt`]: what an attempt's answer means: the delivery's next state, metrics, log line.
//! - [`dispatch`]: one delivery from due to finished or held by the broker (the hot path).
//! - [`seen`]: copies of a delivery arriving while it is handled, or soon after, handled once.
//! - [`slots`]: per-destination in-flight slots with an adaptive limit.
//! - [`log`]: the delivery side's handle on the delivery log (one recorder task appending to
//!   the delivery log stream).
//! - [`follower`]: folds the delivery log stream into this replica's view.
//! - [`probe`]: one attempt sent now (Rabo `verify`).
//! - [`tier_queues`]: the broker's retry tiers and due queue; handing a retry over.
//! - [`resolver`]: DNS resolution that refuses non-global addresses at connect time.

pub mod attempt;
pub mod dispatch;
pub mod follower;
pub mod http;
pub mod log;
pub mod probe;
pub mod proxy;
pub mod resolver;
pub mod seen;
pub mod settings;
pub mod slots;
pub mod tier_queues;

pub use dispatch::{Dispatch, DispatchError, Handled, Outlet, RedeliverError};
pub use follower::{FollowError, Follower};
pub use log::DeliveryLog;
pub use probe::Prober;
pub use settings::DeliverySettings;
pub use tier_queues::TierQueues;

/// What the delivery side declares on the broker of `amqp.url`: the due queue, the retry
/// tiers of `retry`'s schedule at `clock`'s time scale, and the delivery log stream.
pub fn topology(
    settings: &DeliverySettings,
    retry: &webhookd_core::retry::RetryPolicy,
    clock: &webhookd_core::clock::Clock,
) -> webhookd_amqp::topology::Topology {
    TierQueues::new(settings, retry, clock).topology().queue(settings.log_stream_queue())
}

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
