//! The catalog stream in RabbitMQ: declared idempotently by every replica, appended to with
//! publisher confirms, read in order from a given offset.
//!
//! Stream facts this relies on (RabbitMQ 3.9+): a consumer must set a prefetch and acknowledge
//! (an ack is credit, not removal); `x-stream-offset` picks where reading starts; every message
//! read carries its offset in the `x-stream-offset` header; offsets grow but are not contiguous.

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};

use crate::settings::CatalogSettings;

/// Records read ahead of the one being applied.
const PREFETCH: u16 = 256;

/// Declares the stream (durable, with its retention); the same arguments on every replica.
pub async fn declare(channel: &Channel, s: &CatalogSettings) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(LongString::from("stream")));
    if !s.max_age.is_empty() {
        args.insert("x-max-age".into(), AMQPValue::LongString(LongString::from(s.max_age.as_str())));
    }
    if s.max_length_bytes > 0 {
        args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(s.max_length_bytes as i64));
    }
    if s.max_segment_size_bytes > 0 {
        let size = AMQPValue::LongLongInt(s.max_segment_size_bytes as i64);
        args.insert("x-stream-max-segment-size-bytes".into(), size);
    }
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(s.stream.as_str().into(), durable, args).await?;
    Ok(())
}

/// Starts reading the stream at `from` (an offset), or at its first retained record.
pub async fn read_from(
    channel: &Channel,
    s: &CatalogSettings,
    from: Option<u64>,
    tag: &str,
) -> lapin::Result<Consumer> {
    channel.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    let offset = match from {
        Some(offset) => AMQPValue::LongLongInt(offset as i64),
        None => AMQPValue::LongString(LongString::from("first")),
    };
    args.insert("x-stream-offset".into(), offset);
    channel.basic_consume(s.stream.as_str().into(), tag.into(), BasicConsumeOptions::default(), args).await
}

/// Appends one record and waits for the broker's answer (the channel is in confirm mode).
pub async fn append(channel: &Channel, s: &CatalogSettings, body: &[u8]) -> lapin::Result<Confirmation> {
    let properties =
        BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    channel
        .basic_publish("".into(), s.stream.as_str().into(), BasicPublishOptions::default(), body, properties)
        .await?
        .await
}

/// The offset a stream message carries in its `x-stream-offset` header.
pub fn offset_of(properties: &BasicProperties) -> Option<u64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}
