//! AMQP ingestion for webhookd: consume events, match them, write their deliveries to the
//! outbox, and acknowledge only once that is durable.
//!
//! # Layout
//! - [`settings`]: the `[amqp]` configuration section.
//! - [`topology`]: the exchanges and queues webhookd declares for itself.
//! - [`consumer`]: the connect / consume / reconnect loop and batch processing.
//!
//! # Group commit
//! The consumer takes every message already waiting (up to `batch_max`), matches them all,
//! writes all their deliveries in one transaction, flushes sled once, dead-letters the poison
//! ones, and acknowledges the whole batch with one `multiple` ack. Under light load a batch is
//! one message; under heavy load the flush and the ack are shared by hundreds.

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
    pub const CAUSES: [&'static str; 6] =
        ["broken", "refused", "timeout", "consumer_cancelled", "dead_letter_nacked", "store_refused"];

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
            IngestError::Store(webhookd_store::StoreError::Conflict("x".into())),
        ];
        let causes: Vec<&str> = errors.iter().map(IngestError::cause).collect();
        assert!(causes.iter().all(|c| IngestError::CAUSES.contains(c)), "{causes:?}");
        assert!(IngestError::CAUSES.iter().all(|c| causes.contains(c)), "{causes:?}");
    }
}
