//! The `[amqp]` configuration section.

use serde::{Deserialize, Serialize};

/// Where events come from and how they are consumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// Broker URL, `amqp://user:password@host:port/vhost` (the password is masked in `config show`).
    pub url: String,
    /// Topic exchange the core banking system publishes to.
    pub exchange: String,
    /// Durable queue webhookd consumes.
    pub queue: String,
    /// Routing keys bound from the exchange to the queue (`#`: everything, so that unknown
    /// types reach us and are dead-lettered rather than silently dropped by the broker).
    pub binding_keys: Vec<String>,
    /// Exchange that refused messages are published to.
    pub dead_letter_exchange: String,
    /// Queue bound to the dead-letter exchange.
    pub dead_letter_queue: String,
    /// `classic` or `quorum`.
    pub queue_type: String,
    /// Most unacknowledged messages the broker sends us, per queue (events, due retries).
    pub prefetch: u16,
    /// Most events taken together behind one catalog barrier.
    pub batch_max: usize,
    /// Largest accepted message body, bytes; larger ones are dead-lettered.
    pub max_message_bytes: usize,
    /// First delay before reconnecting, milliseconds.
    pub reconnect_min_delay_ms: u64,
    /// Longest delay between reconnection attempts, milliseconds.
    pub reconnect_max_delay_ms: u64,
    /// Longest wait for the broker in one step (connecting and setting up, an acknowledgement,
    /// a dead letter's confirmation, closing), milliseconds; past it the connection is dropped
    /// and made again.
    pub broker_timeout_ms: u64,
}

impl Default for AmqpSettings {
    fn default() -> AmqpSettings {
        AmqpSettings {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "webhookd.events".into(),
            queue: "webhookd.events".into(),
            binding_keys: vec!["#".into()],
            dead_letter_exchange: "webhookd.events.dead".into(),
            dead_letter_queue: "webhookd.events.dead".into(),
            queue_type: "classic".into(),
            prefetch: 512,
            batch_max: 256,
            max_message_bytes: 65_536,
            reconnect_min_delay_ms: 200,
            reconnect_max_delay_ms: 10_000,
            broker_timeout_ms: 30_000,
        }
    }
}

impl AmqpSettings {
    /// Checks the values; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err("amqp.url must start with amqp:// or amqps://".into());
        }
        for (key, value) in [
            ("amqp.exchange", &self.exchange),
            ("amqp.queue", &self.queue),
            ("amqp.dead_letter_exchange", &self.dead_letter_exchange),
            ("amqp.dead_letter_queue", &self.dead_letter_queue),
        ] {
            if value.is_empty() || value.len() > 255 {
                return Err(format!("{key} must be 1 to 255 characters"));
            }
        }
        if self.binding_keys.is_empty() {
            return Err("amqp.binding_keys must not be empty".into());
        }
        if !matches!(self.queue_type.as_str(), "classic" | "quorum") {
            return Err("amqp.queue_type must be \"classic\" or \"quorum\"".into());
        }
        if self.prefetch == 0 {
            return Err("amqp.prefetch must be at least 1".into());
        }
        if self.batch_max == 0 {
            return Err("amqp.batch_max must be at least 1".into());
        }
        if self.max_message_bytes == 0 {
            return Err("amqp.max_message_bytes must be at least 1".into());
        }
        if self.reconnect_min_delay_ms == 0 || self.reconnect_max_delay_ms < self.reconnect_min_delay_ms {
            return Err("amqp.reconnect_max_delay_ms must be >= amqp.reconnect_min_delay_ms >= 1".into());
        }
        if self.broker_timeout_ms == 0 {
            return Err("amqp.broker_timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}
