//! The exchanges and queues webhookd declares, idempotently, at every (re)connect.
//!
//! - `exchange` (topic, durable): where the core banking system publishes, routing key = type.
//! - `queue` (durable, classic or quorum) bound with `binding_keys`, with the dead-letter
//!   exchange as its `x-dead-letter-exchange` so that anything the broker itself drops from it
//!   lands there too.
//! - `dead_letter_exchange` (topic, durable) and `dead_letter_queue` (durable, bound `#`):
//!   refused messages, with the reason in the `x-webhookd-reason` header.

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use webhookd_amqp::topology::{Binding, Exchange, Queue, Topology};

use crate::settings::AmqpSettings;

/// What ingestion declares for `s` (in the virtual host of `amqp.url`).
pub fn topology(s: &AmqpSettings) -> Topology {
    let dead = Binding {
        exchange: s.dead_letter_exchange.clone(),
        queue: s.dead_letter_queue.clone(),
        routing_key: "#".into(),
    };
    let events = s.binding_keys.iter().map(|key| Binding {
        exchange: s.exchange.clone(),
        queue: s.queue.clone(),
        routing_key: key.clone(),
    });
    Topology {
        exchanges: vec![
            Exchange { name: s.exchange.clone() },
            Exchange { name: s.dead_letter_exchange.clone() },
        ],
        queues: vec![
            Queue::new(&s.dead_letter_queue, &s.queue_type),
            Queue::new(&s.queue, &s.queue_type).text("x-dead-letter-exchange", &s.dead_letter_exchange),
        ],
        bindings: std::iter::once(dead).chain(events).collect(),
    }
}

/// Declares the whole topology on `channel`.
pub async fn declare(channel: &Channel, s: &AmqpSettings) -> lapin::Result<()> {
    topology(s).declare(channel).await
}

/// Sets the prefetch and starts consuming `queue` on `channel` as `tag` (manual acks): the
/// consumer webhookd runs, and the one the bench's broker bound measures.
pub async fn consume(channel: &Channel, s: &AmqpSettings, tag: &str) -> lapin::Result<Consumer> {
    channel.basic_qos(s.prefetch, BasicQosOptions::default()).await?;
    channel
        .basic_consume(
            s.queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}
