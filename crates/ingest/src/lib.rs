//! AMQP ingestion for webhookd: consume events and due retries, match events, hand every
//! delivery to the dispatch side, and acknowledge a message only once each of its deliveries
//! is finished or held by the broker.
//!
//! # Layout
//! - [`settings`]: the `[amqp]` configuration section.
//! - [`topology`]: the exchanges and queues webhookd declares for itself.
//! - [`consumer`]: the connect / consume / reconnect loop and batch processing.
//!
//! # One task per message
//! The consumer takes every event already waiting (up to `batch_max`), passes one catalog
//! barrier for them all, matches each, and hands each message to a task of its own: the task
//! acknowledges it once [`webhookd_delivery::Dispatch::deliver`] has finished or handed over
//! every delivery. The prefetch bounds the tasks. Due retries from the tier queues are taken
//! the same way, one delivery each.

pub mod acks;
pub mod consumer;
pub mod settings;
pub mod topology;

pub use consumer::{Ingest, IngestStatus};
pub use settings::AmqpSettings;

/// Errors of the ingestion.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The broker connection or channel failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The store failed; nothing of the batch was acknowledged.
    #[error(transparent)]
    Store(#[from] webhookd_store::StoreError),
    /// The broker cancelled our consumer (queue deleted, node restarted).
    #[error("the broker ended the consumer")]
    ConsumerEnded,
    /// The broker did not answer one step in time (`amqp.broker_timeout_ms`).
    #[error("the broker did not answer ({step}) within {ms} ms")]
    BrokerTimeout {
        /// What was waited for.
        step: &'static str,
        /// How long, milliseconds.
        ms: u64,
    },
    /// lapin reported the connection broken while a step waited on it.
    #[error("the broker connection broke ({step}): {reason}")]
    ConnectionBroken {
        /// What was waited for.
        step: &'static str,
        /// lapin's error, as reported.
        reason: String,
    },
    /// A dead-lettered message was not confirmed by the broker.
    #[error("the broker did not confirm a dead-lettered message")]
    DeadLetterNotConfirmed,
    /// The broker did not take a retry or deferral of a delivery.
    #[error(transparent)]
    Dispatch(#[from] webhookd_delivery::DispatchError),
}

impl From<webhookd_amqp::StepError> for IngestError {
    fn from(e: webhookd_amqp::StepError) -> IngestError {
        match e {
            webhookd_amqp::StepError::Amqp(e) => IngestError::Amqp(e),
            webhookd_amqp::StepError::Timeout { step, ms } => IngestError::BrokerTimeout { step, ms },
            webhookd_amqp::StepError::Broken { step, reason } => {
                IngestError::ConnectionBroken { step, reason }
            }
        }
    }
}

impl IngestError {
    /// Every [`IngestError::cause`].
    pub const CAUSES: [&'static str; 7] = [
        "broken",
        "refused",
        "timeout",
        "consumer_cancelled",
        "dead_letter_nacked",
        "retry_refused",
        "store_refused",
    ];

    /// The `cause` label of `webhookd_amqp_connection_losses_total` for a connection given up
    /// on this error.
    pub fn cause(&self) -> &'static str {
        match self {
            // The broker closed a channel on a request it refused (406 on a declare whose
            // arguments differ from the existing queue's, 403, 404 for a missing exchange):
            // the connection is sound, the set-up or the configuration is not.
            IngestError::Amqp(e) if e.is_amqp_soft_error() => "refused",
            IngestError::Amqp(_) | IngestError::ConnectionBroken { .. } => "broken",
            IngestError::BrokerTimeout { .. } => "timeout",
            IngestError::ConsumerEnded => "consumer_cancelled",
            IngestError::DeadLetterNotConfirmed => "dead_letter_nacked",
            IngestError::Dispatch(webhookd_delivery::DispatchError::NotRecorded(_)) => "store_refused",
            IngestError::Dispatch(_) => "retry_refused",
            IngestError::Store(_) => "store_refused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_listed_cause_and_every_cause_an_error() {
        let errors = [
            IngestError::Amqp(lapin::ErrorKind::ChannelsLimitReached.into()),
            IngestError::Amqp(
                lapin::ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
                    lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED),
                    "PRECONDITION_FAILED - inequivalent arg".into(),
                ))
                .into(),
            ),
            IngestError::ConnectionBroken { step: "consume", reason: "reset".into() },
            IngestError::BrokerTimeout { step: "close", ms: 1 },
            IngestError::ConsumerEnded,
            IngestError::DeadLetterNotConfirmed,
            IngestError::Dispatch(webhookd_delivery::DispatchError::HandOver {
                delivery_id: uuid::Uuid::nil(),
                source: webhookd_delivery::tier_queues::HandOverError::Refused { queue: "q".into() },
            }),
            IngestError::Store(webhookd_store::StoreError::Conflict("x".into())),
        ];
        let causes: Vec<&str> = errors.iter().map(IngestError::cause).collect();
        assert!(causes.iter().all(|c| IngestError::CAUSES.contains(c)), "{causes:?}");
        assert!(IngestError::CAUSES.iter().all(|c| causes.contains(c)), "{causes:?}");
    }
}
