//! `webhookd publish`: one event to the events exchange, as the core banking system publishes
//! it (persistent, the event's `type` as routing key, confirmed by the broker). For trying
//! webhookd from a shell and for the documentation's examples; `serve` never runs it.
//!
//! The event is read first: one webhookd would refuse (dead-letter) is refused here with the
//! same reason, and nothing is published. The ingestion's topology is declared first, so an
//! event published before webhookd ever ran waits in its queue.

use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use webhookd_core::event::Event;
use webhookd_ingest::AmqpSettings;

/// How long the broker gets to connect, take and confirm the event.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Publishes `body` (one event, JSON) through the broker and exchange of `amqp`; answers the
/// event as read.
pub async fn publish(amqp: &AmqpSettings, body: &[u8]) -> anyhow::Result<Event> {
    let event = Event::decode(body, amqp.max_message_bytes)
        .map_err(|poison| anyhow::anyhow!("not an event webhookd accepts ({}): {poison}", poison.label()))?;
    let work = async {
        let properties = ConnectionProperties::default().with_connection_name("webhookd publish".into());
        let connection = Connection::connect(&amqp.url, properties).await?;
        let channel = connection.create_channel().await?;
        webhookd_ingest::topology::declare(&channel, amqp).await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let confirm = channel
            .basic_publish(
                amqp.exchange.as_str().into(),
                event.kind().into(),
                BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() },
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(event.event_id().to_string().into()),
            )
            .await?
            .await?;
        let _ = channel.close(200, "published".into()).await;
        let _ = connection.close(200, "published".into()).await;
        Ok::<_, lapin::Error>(confirm)
    };
    let confirm = tokio::time::timeout(PATIENCE, work)
        .await
        .with_context(|| {
            format!("the broker at amqp.url did not take the event within {} s", PATIENCE.as_secs())
        })?
        .context("cannot publish the event (amqp.url)")?;
    match confirm {
        Confirmation::Ack(None) => Ok(event),
        Confirmation::Ack(Some(_)) => bail!("the exchange {} routed the event to no queue", amqp.exchange),
        _ => bail!("the broker refused the event (nack)"),
    }
}
