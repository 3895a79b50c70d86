//! The `[delivery]` configuration section.

use serde::{Deserialize, Serialize};

/// How deliveries are sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Total time for one attempt (connect, send, read the answer), milliseconds.
    pub timeout_ms: u64,
    /// Time to establish a connection, milliseconds.
    pub connect_timeout_ms: u64,
    /// Most requests in flight at once, over all destinations.
    pub max_in_flight: usize,
    /// Most requests in flight at once to one destination (host and port).
    pub max_in_flight_per_destination: usize,
    /// Most bytes of a response body that are read (the rest is discarded).
    pub response_body_max_bytes: usize,
    /// Divides every scheduled retry delay (replays compress days into seconds); 1 in production.
    pub time_scale: f64,
    /// On shutdown, how long in-flight requests may take to finish, milliseconds.
    pub shutdown_grace_ms: u64,
    /// Prefix of the retry tier queues (`<prefix>.<ttl>ms`, quorum queues with a message TTL).
    pub retry_queue_prefix: String,
    /// The queue the tiers dead-letter into when a wait ends: retries due now.
    pub due_queue: String,
    /// How long a delivery waits in the broker when its destination is at its limit,
    /// milliseconds (real time; no attempt is counted).
    pub defer_ms: u64,
    /// Longest a delivery is expected to wait in memory for a slot of its destination before
    /// it is deferred instead, milliseconds (from the deliveries waiting there and the
    /// destination's recent attempt time); a wait of twice that ends in a deferral too.
    pub slot_wait_ms: u64,
    /// The RabbitMQ stream every replica appends its delivery log entries to and folds into its
    /// own view of the log.
    pub log_stream: String,
    /// How long the delivery log stream keeps records (`x-max-age`); empty: no age bound. A
    /// replica with an empty data dir rebuilds its view from what is kept.
    pub log_max_age: String,
    /// Most bytes the delivery log stream keeps (`x-max-length-bytes`); 0: no size bound.
    pub log_max_length_bytes: u64,
    /// The broker the delivery log follower reads the stream from: a node of the broker (or
    /// cluster) of `amqp.url`, which entries are appended through; empty: `amqp.url`.
    pub log_url: String,
    /// The HTTP(S) proxy every delivery goes through (`http://host:port`, credentials in the
    /// URL if the proxy asks); empty: none, unless `proxy_from_env`.
    #[serde(default)]
    pub proxy: String,
    /// With no `proxy`: take the proxy from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and
    /// `NO_PROXY` (either case). Off: webhookd ignores those variables.
    #[serde(default)]
    pub proxy_from_env: bool,
    /// Destinations reached directly, not through the proxy: host names (a leading `.` or none
    /// matches subdomains too), addresses, CIDRs, as in `NO_PROXY`.
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

impl DeliverySettings {
    /// The delivery log stream as declared: durable, with its retention.
    pub fn log_stream_queue(&self) -> webhookd_amqp::topology::Queue {
        let spec = webhookd_amqp::stream::StreamSpec {
            name: &self.log_stream,
            max_age: &self.log_max_age,
            max_length_bytes: self.log_max_length_bytes,
            max_segment_size_bytes: 0,
        };
        spec.queue()
    }
}

impl Default for DeliverySettings {
    fn default() -> DeliverySettings {
        DeliverySettings {
            timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            max_in_flight: 256,
            max_in_flight_per_destination: 16,
            response_body_max_bytes: 4_096,
            time_scale: 1.0,
            shutdown_grace_ms: 10_000,
            retry_queue_prefix: "webhookd.retry".into(),
            due_queue: "webhookd.due".into(),
            defer_ms: 1_000,
            slot_wait_ms: 5_000,
            log_stream: "webhookd.delivery-log".into(),
            log_max_age: "30D".into(),
            log_max_length_bytes: 0,
            log_url: String::new(),
            proxy: String::new(),
            proxy_from_env: false,
            no_proxy: Vec::new(),
        }
    }
}

impl DeliverySettings {
    /// Checks the values; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("delivery.timeout_ms", self.timeout_ms as usize),
            ("delivery.connect_timeout_ms", self.connect_timeout_ms as usize),
            ("delivery.max_in_flight", self.max_in_flight),
            ("delivery.max_in_flight_per_destination", self.max_in_flight_per_destination),
            ("delivery.defer_ms", self.defer_ms as usize),
            ("delivery.slot_wait_ms", self.slot_wait_ms as usize),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        // An attempt holds its message unacknowledged: an hour is the longest sensible wait.
        if self.timeout_ms > 3_600_000 || self.connect_timeout_ms > 3_600_000 {
            return Err(
                "delivery.timeout_ms and delivery.connect_timeout_ms must be at most 3600000 (1 hour)".into(),
            );
        }
        for (key, name) in [
            ("delivery.retry_queue_prefix", &self.retry_queue_prefix),
            ("delivery.due_queue", &self.due_queue),
            ("delivery.log_stream", &self.log_stream),
        ] {
            if name.is_empty() || name.len() > 200 {
                return Err(format!("{key} must be 1 to 200 bytes"));
            }
        }
        if !webhookd_amqp::stream::max_age_is_valid(&self.log_max_age) {
            return Err(format!(
                "delivery.log_max_age must be empty or a number and a unit (Y, M, D, h, m, s), got {:?}",
                self.log_max_age
            ));
        }
        if !(self.log_url.is_empty()
            || self.log_url.starts_with("amqp://")
            || self.log_url.starts_with("amqps://"))
        {
            return Err("delivery.log_url must be empty or start with amqp:// or amqps://".into());
        }
        if !self.proxy.is_empty() {
            // The value is never echoed: it may hold a password.
            crate::proxy::parse_proxy_url(&self.proxy).map_err(|why| format!("delivery.proxy {why}"))?;
        }
        if self.no_proxy.iter().any(|e| e.trim().is_empty() || e.contains(',')) {
            return Err(
                "delivery.no_proxy entries must be non-empty and hold one host, address or CIDR each".into(),
            );
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err("delivery.time_scale must be a number > 0".into());
        }
        Ok(())
    }
}
