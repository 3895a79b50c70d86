//! RabbitMQ streams as webhookd's logs use them (the catalog, the delivery log): declared
//! idempotently by every replica, appended to with publisher confirms, read in order from a
//! given offset.
//!
//! Stream facts this relies on (RabbitMQ 3.9+): a consumer must set a prefetch and acknowledge
//! (an ack is credit, not removal); `x-stream-offset` picks where reading starts; every message
//! read carries its offset in the `x-stream-offset` header; offsets grow but are not contiguous.

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer, PublisherConfirm};

use crate::topology::Queue;

/// A stream's name and retention: the same on every replica (the broker refuses a declaration
/// whose arguments differ from the stream's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec<'a> {
    /// The stream's name.
    pub name: &'a str,
    /// `x-max-age` (a number and a unit, `Y M D h m s`); empty: no age bound.
    pub max_age: &'a str,
    /// `x-max-length-bytes`; 0: no size bound.
    pub max_length_bytes: u64,
    /// `x-stream-max-segment-size-bytes`; 0: the broker's default.
    pub max_segment_size_bytes: u64,
}

impl StreamSpec<'_> {
    /// The stream as a queue declaration: durable, with its retention.
    pub fn queue(&self) -> Queue {
        let mut queue = Queue::new(self.name, "stream");
        if !self.max_age.is_empty() {
            queue = queue.text("x-max-age", self.max_age);
        }
        if self.max_length_bytes > 0 {
            queue = queue.number("x-max-length-bytes", self.max_length_bytes);
        }
        if self.max_segment_size_bytes > 0 {
            queue = queue.number("x-stream-max-segment-size-bytes", self.max_segment_size_bytes);
        }
        queue
    }
}

/// Declares the stream (durable, with its retention).
pub async fn declare(channel: &Channel, spec: &StreamSpec<'_>) -> lapin::Result<()> {
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(spec.name.into(), durable, spec.queue().field_table()).await?;
    Ok(())
}

/// Starts reading stream `name` at `from` (an offset), or at its first retained record, with
/// `prefetch` records read ahead.
pub async fn read_from(
    channel: &Channel,
    name: &str,
    from: Option<u64>,
    tag: &str,
    prefetch: u16,
) -> lapin::Result<Consumer> {
    let offset = match from {
        Some(offset) => AMQPValue::LongLongInt(offset as i64),
        None => AMQPValue::LongString(LongString::from("first")),
    };
    consume_at(channel, name, offset, tag, prefetch).await
}

/// Starts reading stream `name` at the records appended from now on, with `prefetch` records
/// read ahead.
pub async fn read_next(channel: &Channel, name: &str, tag: &str, prefetch: u16) -> lapin::Result<Consumer> {
    consume_at(channel, name, AMQPValue::LongString(LongString::from("next")), tag, prefetch).await
}

async fn consume_at(
    channel: &Channel,
    name: &str,
    offset: AMQPValue,
    tag: &str,
    prefetch: u16,
) -> lapin::Result<Consumer> {
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), offset);
    channel.basic_consume(name.into(), tag.into(), BasicConsumeOptions::default(), args).await
}

/// Publishes one record to stream `name`; the returned confirmation resolves with the
/// broker's answer (the channel must be in confirm mode). Mandatory: a record no stream takes
/// (the stream was deleted) comes back with the confirmation (`Ack(Some(returned))`).
pub async fn publish(channel: &Channel, name: &str, body: &[u8]) -> lapin::Result<PublisherConfirm> {
    publish_with_id(channel, name, body, None).await
}

/// [`publish`], the record carrying `id` as its message id (readers see it without reading
/// the body).
pub async fn publish_with_id(
    channel: &Channel,
    name: &str,
    body: &[u8],
    id: Option<&str>,
) -> lapin::Result<PublisherConfirm> {
    let mut properties =
        BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
    if let Some(id) = id {
        properties = properties.with_message_id(id.into());
    }
    let mandatory = BasicPublishOptions { mandatory: true, ..Default::default() };
    channel.basic_publish("".into(), name.into(), mandatory, body, properties).await
}

/// Appends one record to stream `name` and waits for the broker's answer.
pub async fn append(channel: &Channel, name: &str, body: &[u8]) -> lapin::Result<Confirmation> {
    publish(channel, name, body).await?.await
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

/// Whether `text` is a stream age (`x-max-age`) RabbitMQ accepts: empty (no bound), or digits
/// and one unit of `Y M D h m s`.
pub fn max_age_is_valid(text: &str) -> bool {
    let Some(unit) = text.chars().last() else { return true };
    let digits = &text[..text.len() - unit.len_utf8()];
    "YMDhms".contains(unit) && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stream_age_is_a_number_and_a_unit() {
        for ok in ["", "7D", "30s", "1Y", "12h"] {
            assert!(super::max_age_is_valid(ok), "{ok:?}");
        }
        for bad in ["D", "7", "7d ", "-1D", "7W", "1.5h", "7é"] {
            assert!(!super::max_age_is_valid(bad), "{bad:?}");
        }
    }
}
