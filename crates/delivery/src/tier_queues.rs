//! The broker's side of retries: the tier queues, the due queue, and handing a pending
//! delivery over to a tier.
//!
//! Each tier is a quorum queue with a message TTL. Nothing consumes it: when a message's TTL
//! ends, RabbitMQ dead-letters it (at-least-once, so a broker failure in between repeats the
//! move instead of losing the message) through the default exchange into the due queue, which
//! webhookd consumes like events. A tier refuses publishes when it is full (`reject-publish`,
//! which at-least-once dead-lettering requires), so a hand-over is either confirmed or refused,
//! never silently dropped.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use webhookd_amqp::topology::{Queue, Topology};
use webhookd_core::clock::Clock;
use webhookd_core::delivery::Delivery;
use webhookd_core::retry::RetryPolicy;
use webhookd_core::tiers::Tiers;

use crate::settings::DeliverySettings;

/// Why a pending delivery was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// The broker connection or channel failed.
    #[error("AMQP: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused it (a tier full, or the tier queue missing).
    #[error("the broker refused the retry message for {queue}")]
    Refused {
        /// The tier queue it was meant for.
        queue: String,
    },
}

/// The tier queues and the due queue of one configuration.
#[derive(Clone, Debug)]
pub struct TierQueues {
    prefix: String,
    due_queue: String,
    tiers: Tiers,
}

impl TierQueues {
    /// The queues for `settings`, `retry`'s schedule and `clock`'s time scale.
    pub fn new(settings: &DeliverySettings, retry: &RetryPolicy, clock: &Clock) -> TierQueues {
        let defer = std::time::Duration::from_millis(settings.defer_ms);
        TierQueues {
            prefix: settings.retry_queue_prefix.clone(),
            due_queue: settings.due_queue.clone(),
            tiers: Tiers::new(retry, clock, defer),
        }
    }

    /// The due queue's name.
    pub fn due_queue(&self) -> &str {
        &self.due_queue
    }

    /// Every tier as (TTL in milliseconds, queue name), shortest first.
    pub fn tiers(&self) -> Vec<(u64, String)> {
        self.tiers.ttls_ms().iter().map(|&ttl| (ttl, Tiers::queue_name(&self.prefix, ttl))).collect()
    }

    /// The queue a wait of `wait_ms` (on the clock) takes: see [`Tiers::tier_for`].
    pub fn queue_for(&self, wait_ms: u64) -> String {
        Tiers::queue_name(&self.prefix, self.tiers.tier_for(wait_ms))
    }

    /// The shortest tier's TTL: a retry this close to its due time is due.
    pub fn shortest_ms(&self) -> u64 {
        self.tiers.ttls_ms().first().copied().unwrap_or(1)
    }

    /// The deferral tier's queue.
    pub fn defer_queue(&self) -> String {
        Tiers::queue_name(&self.prefix, self.tiers.defer_ms())
    }

    /// The due queue and every tier, as declared (each tier dead-letters into the due queue
    /// through the default exchange).
    pub fn topology(&self) -> Topology {
        let mut topology = Topology::default().queue(Queue::new(&self.due_queue, "quorum"));
        for (ttl, name) in self.tiers() {
            let tier = Queue::new(&name, "quorum")
                .number("x-message-ttl", ttl)
                .text("x-dead-letter-exchange", "")
                .text("x-dead-letter-routing-key", &self.due_queue)
                .text("x-dead-letter-strategy", "at-least-once")
                .text("x-overflow", "reject-publish");
            topology = topology.queue(tier);
        }
        topology
    }

    /// Declares the due queue and every tier (idempotent; a tier that exists with other
    /// arguments fails the declaration, and the channel with it).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        self.topology().declare(channel).await
    }

    /// How many messages wait in each tier and in the due queue, as (label, count): the label
    /// is a tier's TTL in milliseconds, or `due`. Passive declarations on `channel` (a channel
    /// of its own: one for a queue someone deleted closes it).
    pub async fn waiting(&self, channel: &Channel) -> lapin::Result<Vec<(String, u32)>> {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let mut out = Vec::new();
        for (ttl, name) in self.tiers() {
            let q = channel.queue_declare(name.as_str().into(), passive, FieldTable::default()).await?;
            out.push((ttl.to_string(), q.message_count()));
        }
        let due =
            channel.queue_declare(self.due_queue.as_str().into(), passive, FieldTable::default()).await?;
        out.push(("due".to_string(), due.message_count()));
        Ok(out)
    }

    /// Publishes `delivery` (pending, its next attempt time set) into `queue` on `channel`
    /// (in confirm mode) and waits for the broker's confirm.
    ///
    /// Mandatory: a message no queue takes comes back, and counts as refused.
    pub async fn hand_over(channel: &Channel, queue: &str, delivery: &Delivery) -> Result<(), HandOverError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(delivery.id.to_string().as_str().into());
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &delivery.to_retry_message(),
                properties,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            _ => Err(HandOverError::Refused { queue: queue.to_string() }),
        }
    }
}
