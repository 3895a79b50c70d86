//! Prometheus metrics of webhookd: one registry, created once and shared by every part.
//!
//! Labels are fixed, small sets (event type, poison reason, API, outcome): never a url, an id
//! or an account, so the number of series stays bounded whatever the traffic.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Outcome label of a delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Acknowledged.
    Success,
    /// Failed; a retry is scheduled.
    RetryableFailure,
    /// The receiver is misconfigured; no retry.
    Misconfigured,
    /// Failed and the schedule is exhausted.
    Exhausted,
}

impl AttemptOutcome {
    /// Every outcome.
    pub const ALL: [AttemptOutcome; 4] = [
        AttemptOutcome::Success,
        AttemptOutcome::RetryableFailure,
        AttemptOutcome::Misconfigured,
        AttemptOutcome::Exhausted,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::RetryableFailure => "retryable_failure",
            AttemptOutcome::Misconfigured => "misconfigured",
            AttemptOutcome::Exhausted => "exhausted",
        }
    }
}

/// Every metric webhookd exports.
pub struct Metrics {
    registry: Registry,
    /// Events consumed, by `type` (`invalid` for messages that did not decode).
    pub events_consumed: IntCounterVec,
    /// Messages dead-lettered, by `reason`.
    pub events_dead_lettered: IntCounterVec,
    /// Deliveries created, by `api`.
    pub deliveries_created: IntCounterVec,
    /// Delivery attempts, by `api` and `outcome`.
    pub delivery_attempts: IntCounterVec,
    /// Duration of delivery attempts, by `api`.
    pub attempt_duration: HistogramVec,
    /// From the event's `occurred_at` to its acknowledged delivery.
    pub end_to_end_latency: Histogram,
    /// Requests in flight now.
    pub in_flight: IntGauge,
    /// 1 while connected to the broker.
    pub amqp_connected: IntGauge,
    /// Consumers running on the queue.
    pub amqp_consumers: IntGauge,
    /// Broker connections given up (and made again), by `cause`.
    pub amqp_connection_losses: IntCounterVec,
    /// AMQP batches committed (one flush, one ack each).
    pub ingest_batches: IntCounter,
    /// Events taken from the queue and not acknowledged yet (their deliveries in progress).
    pub events_in_progress: IntGauge,
    /// Deliveries deferred through the broker because their destination was at its limit.
    pub deliveries_deferred: IntCounter,
    /// Pending deliveries handed to the broker's retry tiers (confirmed), by `tier` (its TTL).
    pub retries_handed_over: IntCounterVec,
    /// Messages waiting in each retry tier and in the due queue, read from the broker, by
    /// `queue` (a tier's TTL in ms, or `due`).
    pub retries_waiting: IntGaugeVec,
    /// The longest a retry taken from the due queue had waited past its due time in the last
    /// reading interval, seconds.
    pub due_lateness: Gauge,
    /// Pending deliveries (waiting for an attempt or in flight).
    pub deliveries_pending: IntGauge,
    /// Age of the oldest pending delivery, seconds (0 when none).
    pub oldest_pending_age: Gauge,
    /// Bytes the store occupies on disk.
    pub store_size: IntGauge,
    /// Subscriptions by `api` and `state` (active, inactive).
    pub subscriptions: IntGaugeVec,
    /// Subscriptions disabled for failing too long, by `api`.
    pub subscriptions_auto_disabled: IntCounterVec,
    /// Finished deliveries removed by retention.
    pub deliveries_pruned: IntCounter,
    /// 1 while the catalog applier reads the catalog stream.
    pub catalog_applier_up: IntGauge,
    /// 1 once the catalog applier stopped at a record it cannot apply (an operator must act).
    pub catalog_applier_stopped: IntGauge,
    /// The catalog stream offset of the last record applied here.
    pub catalog_applied_offset: IntGauge,
    /// How long after it was appended the last catalog record was applied here, seconds.
    pub catalog_apply_lag: Gauge,
    /// 1 while the delivery log follower reads the delivery log stream.
    pub delivery_log_follower_up: IntGauge,
    /// 1 once the delivery log follower stopped at a record it cannot read (an operator must act).
    pub delivery_log_follower_stopped: IntGauge,
    /// The delivery log stream offset of the last record folded into this replica's view.
    pub delivery_log_offset: IntGauge,
    /// How long after it was appended the last delivery log record was folded here, seconds.
    pub delivery_log_lag: Gauge,
    /// Delivery log records appended by this replica.
    pub delivery_log_appends: IntCounter,
    /// Delivery log records the broker confirmed that were not read back from the stream in
    /// time (their messages were not acknowledged).
    pub delivery_log_records_unseen: IntCounter,
}

/// Registers a metric built from constant names and help texts: failing here is a programming
/// error (a bad name or a name registered twice), caught by the first test that builds Metrics.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("registered once");
    metric
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help));
        let seconds =
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let attempt_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "webhookd_delivery_attempt_duration_seconds",
                    "Duration of delivery attempts.",
                )
                .buckets(seconds.clone()),
                &["api"],
            ),
        );
        let mut latency_buckets = seconds;
        latency_buckets.extend([60.0, 300.0, 3600.0, 86_400.0]);
        let end_to_end_latency = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "webhookd_end_to_end_latency_seconds",
                    "Time from an event's occurred_at to its acknowledged delivery.",
                )
                .buckets(latency_buckets),
            ),
        );
        let build_info = register(
            &registry,
            IntGaugeVec::new(Opts::new("webhookd_build_info", "Build of webhookd."), &["version"]),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        Metrics {
            events_consumed: counter(
                "webhookd_events_consumed_total",
                "Events consumed, by type.",
                &["type"],
            ),
            events_dead_lettered: counter(
                "webhookd_events_dead_lettered_total",
                "Messages dead-lettered, by reason.",
                &["reason"],
            ),
            deliveries_created: counter("webhookd_deliveries_created_total", "Deliveries created.", &["api"]),
            delivery_attempts: counter(
                "webhookd_delivery_attempts_total",
                "Delivery attempts, by API and outcome.",
                &["api", "outcome"],
            ),
            subscriptions_auto_disabled: counter(
                "webhookd_subscriptions_auto_disabled_total",
                "Subscriptions disabled after failing for the configured period.",
                &["api"],
            ),
            deliveries_pruned: register(
                &registry,
                IntCounter::new(
                    "webhookd_deliveries_pruned_total",
                    "Finished deliveries removed by retention.",
                ),
            ),
            events_in_progress: gauge(
                "webhookd_events_in_progress",
                "Events taken from the queue and not acknowledged yet (their deliveries in progress).",
            ),
            ingest_batches: register(
                &registry,
                IntCounter::new(
                    "webhookd_ingest_batches_total",
                    "Batches of events taken from the queue, each behind one catalog barrier.",
                ),
            ),
            attempt_duration,
            end_to_end_latency,
            in_flight: gauge("webhookd_delivery_requests_in_flight", "Delivery requests in flight."),
            deliveries_pending: gauge(
                "webhookd_deliveries_pending",
                "Pending deliveries, in flight included.",
            ),
            oldest_pending_age: register(
                &registry,
                Gauge::new(
                    "webhookd_oldest_pending_delivery_age_seconds",
                    "Age of the oldest pending delivery (0 when none).",
                ),
            ),
            store_size: gauge("webhookd_store_size_bytes", "Bytes the sled store occupies on disk."),
            subscriptions: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("webhookd_subscriptions", "Subscriptions by API and state."),
                    &["api", "state"],
                ),
            ),
            amqp_connected: gauge("webhookd_amqp_connected", "1 while connected to the broker."),
            amqp_consumers: gauge("webhookd_amqp_consumers", "Consumers running on the queue."),
            amqp_connection_losses: counter(
                "webhookd_amqp_connection_losses_total",
                "Broker connections given up and made again, by cause.",
                &["cause"],
            ),
            deliveries_deferred: register(
                &registry,
                IntCounter::new(
                    "webhookd_deliveries_deferred_total",
                    "Deliveries deferred through the broker because their destination was at its limit.",
                ),
            ),
            retries_handed_over: counter(
                "webhookd_retries_handed_over_total",
                "Pending deliveries handed to the broker's retry tiers, confirmed, by tier.",
                &["tier"],
            ),
            retries_waiting: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "webhookd_retries_waiting",
                        "Messages waiting in each retry tier and in the due queue, read from the broker.",
                    ),
                    &["queue"],
                ),
            ),
            due_lateness: register(
                &registry,
                Gauge::new(
                    "webhookd_due_retry_lateness_seconds",
                    "Longest a due retry had waited past its due time when taken, over the last reading interval.",
                ),
            ),
            catalog_applier_up: gauge(
                "webhookd_catalog_applier_up",
                "1 while the catalog applier reads the catalog stream.",
            ),
            catalog_applier_stopped: gauge(
                "webhookd_catalog_applier_stopped",
                "1 once the catalog applier stopped at a record it cannot apply.",
            ),
            catalog_applied_offset: gauge(
                "webhookd_catalog_applied_offset",
                "Catalog stream offset of the last record applied here.",
            ),
            catalog_apply_lag: register(
                &registry,
                Gauge::new(
                    "webhookd_catalog_apply_lag_seconds",
                    "How long after it was appended the last catalog record was applied here.",
                ),
            ),
            delivery_log_follower_up: gauge(
                "webhookd_delivery_log_follower_up",
                "1 while the delivery log follower reads the delivery log stream.",
            ),
            delivery_log_follower_stopped: gauge(
                "webhookd_delivery_log_follower_stopped",
                "1 once the delivery log follower stopped at a record it cannot read.",
            ),
            delivery_log_offset: gauge(
                "webhookd_delivery_log_offset",
                "Delivery log stream offset of the last record folded into this replica's view.",
            ),
            delivery_log_lag: register(
                &registry,
                Gauge::new(
                    "webhookd_delivery_log_lag_seconds",
                    "How long after it was appended the last delivery log record was folded here.",
                ),
            ),
            delivery_log_appends: register(
                &registry,
                IntCounter::new("webhookd_delivery_log_appends_total", "Delivery log records appended by this replica."),
            ),
            delivery_log_records_unseen: register(
                &registry,
                IntCounter::new(
                    "webhookd_delivery_log_records_unseen_total",
                    "Delivery log records the broker confirmed that were not read back from the stream in time.",
                ),
            ),
            registry,
        }
    }

    /// Creates every labelled series at 0, so a rate or an increase sees the first event (a
    /// series that appears with value 1 looks like no change).
    pub fn prime(&self, apis: &[&str], event_types: &[&str], poison_reasons: &[&str]) {
        for api in apis {
            self.deliveries_created.with_label_values(&[*api]);
            self.subscriptions_auto_disabled.with_label_values(&[*api]);
            for outcome in AttemptOutcome::ALL {
                self.delivery_attempts.with_label_values(&[*api, outcome.as_str()]);
            }
        }
        for kind in event_types {
            self.events_consumed.with_label_values(&[*kind]);
        }
        for reason in poison_reasons {
            self.events_dead_lettered.with_label_values(&[*reason]);
        }
    }

    /// The text exposition format for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own registry into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.delivery_attempts.with_label_values(&["rabo", AttemptOutcome::Exhausted.as_str()]).inc();
        let text = m.render();
        assert!(
            text.contains(r#"webhookd_delivery_attempts_total{api="rabo",outcome="exhausted"} 1"#),
            "{text}"
        );
        assert!(text.contains("webhookd_build_info"));
    }
}
