//! The catalog stream in RabbitMQ, through the shared stream helpers ([`webhookd_amqp::stream`]).

use lapin::{Channel, Confirmation, Consumer};
use webhookd_amqp::stream::{self, StreamSpec};
use webhookd_amqp::topology::Topology;

pub use webhookd_amqp::stream::offset_of;

use crate::settings::CatalogSettings;

/// Records read ahead of the one being applied.
const PREFETCH: u16 = 256;

fn spec(s: &CatalogSettings) -> StreamSpec<'_> {
    StreamSpec {
        name: &s.stream,
        max_age: &s.max_age,
        max_length_bytes: s.max_length_bytes,
        max_segment_size_bytes: s.max_segment_size_bytes,
    }
}

/// What the catalog declares on the broker of `catalog.url`: its stream, with its retention.
pub fn topology(s: &CatalogSettings) -> Topology {
    Topology::default().queue(spec(s).queue())
}

/// Declares the stream (durable, with its retention); the same arguments on every replica.
pub async fn declare(channel: &Channel, s: &CatalogSettings) -> lapin::Result<()> {
    stream::declare(channel, &spec(s)).await
}

/// Starts reading the stream at `from` (an offset), or at its first retained record.
pub async fn read_from(
    channel: &Channel,
    s: &CatalogSettings,
    from: Option<u64>,
    tag: &str,
) -> lapin::Result<Consumer> {
    stream::read_from(channel, &s.stream, from, tag, PREFETCH).await
}

/// Appends one record and waits for the broker's answer (the channel is in confirm mode).
pub async fn append(channel: &Channel, s: &CatalogSettings, body: &[u8]) -> lapin::Result<Confirmation> {
    stream::append(channel, &s.stream, body).await
}
