//! The consume loop: connect (with backoff), declare, consume in batches, reconnect on loss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery as Message;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use webhookd_amqp::Link;
use webhookd_core::clock::Clock;
use webhookd_core::delivery::Delivery;
use webhookd_core::event::{Event, Poison};
use webhookd_core::matching::match_keys;
use webhookd_metrics::Metrics;
use webhookd_store::Store;

use crate::settings::AmqpSettings;
use crate::topology;
use crate::IngestError;

/// Deliveries written per transaction at most: bounds a batch's memory and sled lock time
/// whatever the fan-out (256 events matching 10 subscriptions each are 10 transactions).
pub const INSERT_CHUNK: usize = 256;

/// What the ingestion is doing, for readiness.
#[derive(Debug, Default)]
pub struct IngestStatus {
    /// Connected to the broker.
    pub connected: AtomicBool,
    /// A consumer is running on the queue.
    pub consuming: AtomicBool,
}

impl IngestStatus {
    fn set(&self, metrics: &Metrics, connected: bool, consuming: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        self.consuming.store(consuming, Ordering::Relaxed);
        metrics.amqp_connected.set(connected as i64);
        metrics.amqp_consumers.set(consuming as i64);
    }
}

/// The AMQP ingestion.
pub struct Ingest {
    store: Store,
    settings: AmqpSettings,
    clock: Clock,
    status: Arc<IngestStatus>,
    metrics: Arc<Metrics>,
    /// When given, batches are matched only while it is true (the catalog is caught up).
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    /// When given, awaited after a batch is taken and before it is matched.
    barrier: Option<Barrier>,
}

/// Waits until the catalog has applied everything appended before it was called (an event
/// taken before then is matched with every change answered before it was published).
pub type Barrier =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

impl Ingest {
    /// Builds the ingestion; nothing connects before [`Ingest::run`].
    pub fn new(store: Store, settings: AmqpSettings, clock: Clock, metrics: Arc<Metrics>) -> Ingest {
        // Every cause's series from the start, so that the first loss shows as an increase.
        for cause in IngestError::CAUSES {
            metrics.amqp_connection_losses.with_label_values(&[cause]);
        }
        Ingest { store, settings, clock, status: Arc::default(), metrics, gate: None, barrier: None }
    }

    /// Matches batches only while `gate` is true (messages taken meanwhile wait, unacknowledged).
    pub fn with_gate(mut self, gate: tokio::sync::watch::Receiver<bool>) -> Ingest {
        self.gate = Some(gate);
        self
    }

    /// Awaits `barrier` after taking each batch and before matching it (until it succeeds:
    /// the batch waits, unacknowledged).
    pub fn with_barrier(mut self, barrier: Barrier) -> Ingest {
        self.barrier = Some(barrier);
        self
    }

    /// The live status.
    pub fn status(&self) -> Arc<IngestStatus> {
        self.status.clone()
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker goes away.
    /// The batch being processed at shutdown is finished (committed and acknowledged) first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IngestError> {
        while !shutdown.is_cancelled() {
            let Some(connection) = self.connect(&shutdown).await else { break };
            let link = Link::new(connection);
            self.status.set(&self.metrics, true, false);
            let result = self.consume(&link, &shutdown).await;
            // Counted before the status changes, so that whoever sees the connection gone also
            // sees why. A store that cannot write ends the ingestion instead (below).
            if let Err(e) = &result {
                if !matches!(e, IngestError::Store(s) if s.is_io()) {
                    self.metrics.amqp_connection_losses.with_label_values(&[e.cause()]).inc();
                }
            }
            self.status.set(&self.metrics, false, false);
            // Closing hands every unacknowledged message back to the broker at once. A broken
            // connection has nothing to close; dropping it closes the socket.
            if !link.broken.is_cancelled() {
                let closing = link.connection.close(200, "webhookd consumer stopping".into());
                let _ = self.within("close", Some(&link), closing).await;
            }
            match result {
                Ok(()) => break,
                // Nothing of the batch was acknowledged: it stays in the broker.
                Err(IngestError::Store(e)) => {
                    self.store.note_error(&e);
                    if e.is_io() {
                        return Err(IngestError::Store(e));
                    }
                    warn!(error = %e, "the store refused a batch; reconnecting to take it again");
                }
                Err(e) => warn!(error = %e, "lost the broker; reconnecting"),
            }
        }
        info!("AMQP ingestion stopped");
        Ok(())
    }

    async fn connect(&self, shutdown: &CancellationToken) -> Option<Connection> {
        let url = self.settings.url.clone();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.reconnect_min_delay_ms))
            .with_max_delay(Duration::from_millis(self.settings.reconnect_max_delay_ms))
            .with_jitter()
            .without_max_times();
        let attempt = || async {
            let properties = ConnectionProperties::default().with_connection_name("webhookd".into());
            self.within("connect", None, Connection::connect(&url, properties)).await
        };
        let connecting = attempt.retry(backoff).notify(
            |e, delay| warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the broker"),
        );
        tokio::select! {
            _ = shutdown.cancelled() => None,
            connection = connecting => connection.ok(),
        }
    }

    async fn consume(&self, link: &Link, shutdown: &CancellationToken) -> Result<(), IngestError> {
        let s = &self.settings;
        let connection = &link.connection;
        let set_up = async {
            let channel = connection.create_channel().await?;
            topology::declare(&channel, s).await?;
            let dead_letters = connection.create_channel().await?;
            dead_letters.confirm_select(ConfirmSelectOptions::default()).await?;
            let consumer = topology::consume(&channel, s, "webhookd").await?;
            Ok((channel, dead_letters, consumer))
        };
        let (channel, dead_letters, mut consumer) = self.within("set-up", Some(link), set_up).await?;
        self.status.set(&self.metrics, true, true);
        info!(queue = %s.queue, exchange = %s.exchange, "consuming");

        loop {
            if !self.wait_for_first_attempts(shutdown).await || !self.wait_for_gate(shutdown).await {
                return Ok(());
            }
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = link.broken.cancelled() => {
                    return Err(IngestError::ConnectionBroken { step: "consume", reason: link.reason() })
                }
                next = consumer.next() => match next {
                    Some(message) => message?,
                    None => return Err(IngestError::ConsumerEnded),
                },
            };
            let mut batch = vec![first];
            while batch.len() < s.batch_max {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    _ => break,
                }
            }
            if !self.pass_barrier(link, shutdown).await? {
                return Ok(());
            }
            self.process(link, &channel, &dead_letters, batch).await?;
        }
    }

    /// Awaits the barrier, again and again until it passes; false at shutdown.
    async fn pass_barrier(&self, link: &Link, shutdown: &CancellationToken) -> Result<bool, IngestError> {
        let Some(barrier) = &self.barrier else { return Ok(true) };
        loop {
            let passed = tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = link.broken.cancelled() => {
                    return Err(IngestError::ConnectionBroken { step: "catalog barrier", reason: link.reason() })
                }
                passed = barrier() => passed,
            };
            match passed {
                Ok(()) => return Ok(true),
                Err(e) => {
                    warn!(error = %e, "the catalog barrier did not pass; the batch waits");
                    if !self.wait_for_gate(shutdown).await {
                        return Ok(false);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// Waits at most `amqp.broker_timeout_ms` for one step with the broker, and no longer
    /// than `link` stays unbroken. lapin has no timeouts of its own, and a connection broken
    /// at some moments (a broker restarted while webhookd connected, seen in the chaos test)
    /// or a broker that accepts but never answers left a step waiting forever.
    async fn within<T>(
        &self,
        step: &'static str,
        link: Option<&Link>,
        work: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T, IngestError> {
        Ok(webhookd_amqp::within(link, step, self.settings.broker_timeout_ms, work).await?)
    }

    /// Waits until the gate is open (false at shutdown); without a gate, at once.
    async fn wait_for_gate(&self, shutdown: &CancellationToken) -> bool {
        let Some(gate) = &self.gate else { return true };
        let mut gate = gate.clone();
        if *gate.borrow() {
            return true;
        }
        info!("waiting for the catalog to catch up before matching events");
        tokio::select! {
            _ = shutdown.cancelled() => false,
            open = gate.wait_for(|open| *open) => open.is_ok(),
        }
    }

    /// Waits while more deliveries wait for a first attempt than `amqp.max_unclaimed_deliveries`
    /// (messages meanwhile wait in RabbitMQ); false at shutdown.
    async fn wait_for_first_attempts(&self, shutdown: &CancellationToken) -> bool {
        let limit = self.settings.max_unclaimed_deliveries;
        let unclaimed = self.store.unclaimed();
        if limit == 0 || unclaimed.count() <= limit as i64 {
            return true;
        }
        // Under sustained overload this happens at every batch: counted, logged at debug only.
        debug!(waiting = unclaimed.count(), limit, "pausing intake until first attempts catch up");
        self.metrics.ingest_pauses.inc();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = unclaimed.wait_at_most(limit as i64) => true,
        }
    }

    /// Matches, commits and acknowledges one batch.
    ///
    /// The deliveries are written in transactions of at most [`INSERT_CHUNK`], each as soon as
    /// it is full, so what a batch holds in memory (and how long one transaction holds sled's
    /// lock) does not grow with the fan-out; one flush and one ack still cover the whole batch.
    /// A crash between chunks loses nothing: nothing is acknowledged yet, and the redelivered
    /// messages skip the deliveries already written (their ids are deterministic).
    async fn process(
        &self,
        link: &Link,
        channel: &Channel,
        dead_letters: &Channel,
        batch: Vec<Message>,
    ) -> Result<(), IngestError> {
        let now = self.clock.now_ms();
        let mut first_due = HashMap::new();
        let matched = self.write_deliveries(&batch, now, &mut first_due);
        // Posted before the flush, and also when a later chunk failed: what is written is in
        // the store, and a redelivered message would skip it, so it must not wait for a
        // restart. Safe, because an attempt flushes the store before it sends anything.
        if !first_due.is_empty() {
            self.store.due_signal().post_many(first_due.iter().map(|(name, due)| (name.as_str(), *due)));
        }
        let poison = matched?;
        self.store.flush().await?;

        for (message, reason) in &poison {
            self.dead_letter(link, dead_letters, message, reason).await?;
        }
        let Some(last) = batch.last() else { return Ok(()) };
        let ack = channel.basic_ack(last.delivery_tag, BasicAckOptions { multiple: true });
        self.within("acknowledgement", Some(link), ack).await?;
        self.metrics.ingest_batches.inc();
        Ok(())
    }

    /// Matches the batch and writes its deliveries in chunks; returns the refused messages.
    /// `first_due` collects each destination's earliest new due time, also when it fails.
    fn write_deliveries<'m>(
        &self,
        batch: &'m [Message],
        now: u64,
        first_due: &mut HashMap<String, u64>,
    ) -> Result<Vec<(&'m Message, Poison)>, IngestError> {
        let mut deliveries = Vec::with_capacity(INSERT_CHUNK);
        let mut poison = Vec::new();
        for message in batch {
            match Event::decode(&message.data, self.settings.max_message_bytes) {
                Ok(event) => {
                    let mut matched = 0;
                    for key in match_keys(&event) {
                        for target in self.store.targets(&key)? {
                            deliveries.push(Delivery::new(&event, &key, &target, now));
                            matched += 1;
                            if deliveries.len() >= INSERT_CHUNK {
                                self.insert(&mut deliveries, first_due)?;
                            }
                        }
                    }
                    debug!(event_id = %event.event_id(), kind = event.kind(), matched, "event matched");
                    self.metrics.events_consumed.with_label_values(&[event.kind()]).inc();
                }
                Err(reason) => {
                    self.metrics.events_consumed.with_label_values(&["invalid"]).inc();
                    poison.push((message, reason));
                }
            }
        }
        self.insert(&mut deliveries, first_due)?;
        Ok(poison)
    }

    /// Writes `deliveries` (one transaction, not flushed) and empties it, noting each
    /// destination's earliest new due time.
    fn insert(
        &self,
        deliveries: &mut Vec<Delivery>,
        first_due: &mut HashMap<String, u64>,
    ) -> Result<(), IngestError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        for c in self.store.insert_deliveries(deliveries)? {
            self.metrics.deliveries_created.with_label_values(&[c.api.as_str()]).inc();
            first_due.entry(c.destination).and_modify(|d| *d = (*d).min(c.due_ms)).or_insert(c.due_ms);
        }
        deliveries.clear();
        Ok(())
    }

    /// Publishes a refused message to the dead-letter exchange with the reason, and waits for
    /// the broker's confirmation before the original is acknowledged.
    async fn dead_letter(
        &self,
        link: &Link,
        channel: &Channel,
        message: &Message,
        reason: &Poison,
    ) -> Result<(), IngestError> {
        warn!(reason = %reason, reason_code = reason.label(), routing_key = %message.routing_key,
              bytes = message.data.len(), "dead-lettering a message");
        let mut headers = message.properties.headers().clone().unwrap_or_default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert("x-webhookd-reason".into(), text(&reason.to_string()));
        headers.insert("x-webhookd-reason-code".into(), text(reason.label()));
        headers.insert("x-webhookd-original-exchange".into(), text(message.exchange.as_str()));
        headers.insert("x-webhookd-original-routing-key".into(), text(message.routing_key.as_str()));
        let properties: BasicProperties =
            message.properties.clone().with_headers(headers).with_delivery_mode(2);
        let publish = async {
            channel
                .basic_publish(
                    self.settings.dead_letter_exchange.as_str().into(),
                    message.routing_key.clone(),
                    BasicPublishOptions::default(),
                    &message.data,
                    properties,
                )
                .await?
                .await
        };
        let confirmation = self.within("dead letter confirmation", Some(link), publish).await?;
        if !matches!(confirmation, Confirmation::Ack(_)) {
            return Err(IngestError::DeadLetterNotConfirmed);
        }
        self.metrics.events_dead_lettered.with_label_values(&[reason.label()]).inc();
        Ok(())
    }
}
