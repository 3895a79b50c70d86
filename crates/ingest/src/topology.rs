//! The exchanges and queues webhookd declares, idempotently, at every (re)connect.
//!
//! - `exchange` (topic, durable): where the core banking system publishes, routing key = type.
//! - `queue` (durable, classic or quorum) bound with `binding_keys`, with the dead-letter
//!   exchange as its `x-dead-letter-exchange` so that anything the broker itself drops from it
//!   lands there too.
//! - `dead_letter_exchange` (topic, durable) and `dead_letter_queue` (durable, bound `#`):
//!   refused messages, with the reason in the `x-webhookd-reason` header.

use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Consumer, ExchangeKind};

use crate::settings::AmqpSettings;

/// Declares the whole topology on `channel`.
pub async fn declare(channel: &Channel, s: &AmqpSettings) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
    for exchange in [&s.exchange, &s.dead_letter_exchange] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .queue_declare(s.dead_letter_queue.as_str().into(), durable_queue, queue_arguments(s, None))
        .await?;
    channel
        .queue_bind(
            s.dead_letter_queue.as_str().into(),
            s.dead_letter_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            s.queue.as_str().into(),
            durable_queue,
            queue_arguments(s, Some(&s.dead_letter_exchange)),
        )
        .await?;
    for key in &s.binding_keys {
        channel
            .queue_bind(
                s.queue.as_str().into(),
                s.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

fn queue_arguments(s: &AmqpSettings, dead_letter_exchange: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    if s.queue_type == "quorum" {
        args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("quorum")));
    }
    if let Some(dlx) = dead_letter_exchange {
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(LongString::from(dlx)));
    }
    args
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
