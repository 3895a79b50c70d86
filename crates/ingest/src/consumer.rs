//! The consume loop: connect (with backoff), declare, consume in batches, reconnect on loss.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery as Message;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{debug, info, warn};
use webhookd_amqp::Link;
use webhookd_core::clock::Clock;
use webhookd_core::delivery::Delivery;
use webhookd_core::event::Event;
use webhookd_core::matching::match_keys;
use webhookd_delivery::Dispatch;
use webhookd_metrics::Metrics;
use webhookd_store::Store;

use crate::acks::Acks;
use crate::settings::AmqpSettings;
use crate::topology;
use crate::IngestError;

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
    /// Where matched deliveries and due retries go.
    dispatch: Dispatch,
}

/// Waits until the catalog has applied everything appended before it was called (an event
/// taken before then is matched with every change answered before it was published).
pub type Barrier =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

impl Ingest {
    /// Builds the ingestion; nothing connects before [`Ingest::run`].
    pub fn new(
        store: Store,
        settings: AmqpSettings,
        clock: Clock,
        metrics: Arc<Metrics>,
        dispatch: Dispatch,
    ) -> Ingest {
        // Every cause's series from the start, so that the first loss shows as an increase.
        for cause in IngestError::CAUSES {
            metrics.amqp_connection_losses.with_label_values(&[cause]);
        }
        metrics.events_dead_lettered.with_label_values(&[BAD_RETRY_MESSAGE]);
        Ingest {
            store,
            settings,
            clock,
            status: Arc::default(),
            metrics,
            gate: None,
            barrier: None,
            dispatch,
        }
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
            link.close("webhookd consumer stopping").await;
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
        let set_up = async {
            let channel = link.channel().await?;
            topology::declare(&channel, s).await?;
            self.dispatch.declare(&channel).await?;
            let publish = link.channel().await?;
            publish.confirm_select(ConfirmSelectOptions::default()).await?;
            let events = topology::consume(&channel, s, "webhookd").await?;
            let due_channel = link.channel().await?;
            due_channel.basic_qos(s.prefetch, BasicQosOptions::default()).await?;
            let due = due_channel
                .basic_consume(
                    self.dispatch.queues().due_queue().into(),
                    "webhookd-due".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let readings = link.channel().await?;
            // Records appended through this connection are read back from now on, before any
            // is appended (the outlet is set below).
            let receipts = self.dispatch.read_receipts(link.channel().await?).await?;
            Ok((channel, publish, events, due_channel, due, readings, receipts))
        };
        let (channel, publish, mut events, due_channel, mut due, readings, receipts) =
            self.within("set-up", Some(link), set_up).await?;
        // Without its reader no record appended through this connection can be recorded: the
        // reader ending gives the connection up, as a consumer ending does.
        let mut receipts = AbortOnDropHandle::new(receipts);
        // Each message is handled by a task of its own (the prefetch bounds how many); a task
        // that cannot finish its message reports here, and the connection is given up, so
        // every message not acknowledged goes back to the queue.
        let (failed, mut failures) = mpsc::channel::<IngestError>(1);
        // Ends with this connection; a reading the broker does not answer gives it up too.
        let reader = read_waiting(self.dispatch.clone(), readings, failed.clone(), s.broker_timeout_ms);
        let event_acks = Acks::start(channel.clone(), s.broker_timeout_ms, failed.clone());
        let due_acks = Acks::start(due_channel.clone(), s.broker_timeout_ms, failed.clone());
        let _reader = AbortOnDropHandle::new(tokio::spawn(reader));
        self.dispatch.outlet().set(Some(publish.clone()));
        self.status.set(&self.metrics, true, true);
        info!(queue = %s.queue, exchange = %s.exchange, due_queue = %self.dispatch.queues().due_queue(), "consuming");

        let tasks = Tasks::default();
        let ended = 'consume: loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = link.broken.cancelled() => {
                    break Err(IngestError::ConnectionBroken { step: "consume", reason: link.reason() })
                }
                Some(e) = failures.recv() => break Err(e),
                _ = &mut receipts => break Err(IngestError::ConsumerEnded),
                next = events.next() => {
                    let first = match next {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => break Err(e.into()),
                        None => break Err(IngestError::ConsumerEnded),
                    };
                    let mut batch = vec![first];
                    while batch.len() < s.batch_max {
                        match events.next().now_or_never() {
                            Some(Some(Ok(message))) => batch.push(message),
                            _ => break,
                        }
                    }
                    if !self.wait_for_gate(shutdown).await {
                        break Ok(());
                    }
                    match self.pass_barrier(link, shutdown).await {
                        Ok(true) => {}
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                    for message in batch {
                        // A store that cannot be read: this and the rest of the batch go back.
                        if let Err(e) = self.take_event(&tasks, &event_acks, &publish, &failed, message) {
                            break 'consume Err(e);
                        }
                    }
                    self.metrics.ingest_batches.inc();
                }
                next = due.next() => {
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => break Err(e.into()),
                        None => break Err(IngestError::ConsumerEnded),
                    };
                    self.take_due(&tasks, &due_acks, &publish, &failed, message);
                }
            }
        };
        // Attempts in flight finish within the grace, append their delivery log entries through
        // the outlet (cleared only after) and acknowledge their messages; whatever is left
        // unacknowledged goes back to the queue when the connection closes.
        tasks.tracker.close();
        if ended.is_ok() && !tasks.tracker.is_empty() {
            info!(in_flight = tasks.tracker.len(), "stopping; waiting for attempts in flight");
            let grace = self.dispatch.shutdown_grace();
            if tokio::time::timeout(grace, tasks.tracker.wait()).await.is_err() {
                warn!(
                    in_flight = tasks.tracker.len(),
                    "shutdown grace ended; unfinished attempts go back to the queue and are repeated"
                );
                // Dropped, not left running: nothing they did could be acknowledged any more,
                // and they hold the store and the dispatch side past the stop.
                tasks.abandon.cancel();
                tasks.tracker.wait().await;
            }
        }
        self.dispatch.outlet().set(None);
        ended
    }

    /// Matches one event and hands its deliveries to the dispatch side; its task acknowledges
    /// it once every delivery is finished or held by the broker. Refused messages are
    /// dead-lettered with their reason, then acknowledged.
    fn take_event(
        &self,
        tasks: &Tasks,
        acks: &Acks,
        publish: &Channel,
        failed: &mpsc::Sender<IngestError>,
        message: Message,
    ) -> Result<(), IngestError> {
        let event = match Event::decode(&message.data, self.settings.max_message_bytes) {
            Ok(event) => event,
            Err(reason) => {
                self.metrics.events_consumed.with_label_values(&["invalid"]).inc();
                let refusal = Refusal { text: reason.to_string(), code: reason.label() };
                self.spawn_dead_letter(tasks, acks, publish, failed, message, refusal);
                return Ok(());
            }
        };
        let now = self.clock.now_ms();
        let schedule = self.dispatch.schedule();
        let mut deliveries = Vec::new();
        for key in match_keys(&event) {
            for target in self.store.targets(&key)? {
                let d = Delivery::new(&event, &key, &target, now, schedule);
                self.metrics.deliveries_created.with_label_values(&[d.api.as_str()]).inc();
                deliveries.push(d);
            }
        }
        debug!(event_id = %event.event_id(), kind = event.kind(), matched = deliveries.len(), "event matched");
        self.metrics.events_consumed.with_label_values(&[event.kind()]).inc();
        let (dispatch, publish) = (self.dispatch.clone(), publish.clone());
        let (redelivered, event_id) = (message.redelivered, event.event_id());
        let in_progress = InProgress::start(&self.metrics.events_in_progress);
        self.spawn_then_ack(tasks, acks, failed, message.delivery_tag, async move {
            let _in_progress = in_progress;
            let handled = if redelivered {
                join_all(deliveries.into_iter().map(|d| dispatch.deliver(d, &publish))).await
            } else {
                join_all(deliveries.into_iter().map(|d| dispatch.deliver_new(d, &publish))).await
            };
            debug!(%event_id, redelivered, ?handled, "event handled");
            handled.into_iter().try_for_each(|h| h.map(drop)).map_err(IngestError::Dispatch)
        });
        Ok(())
    }

    /// Hands a due retry to the dispatch side; its task acknowledges it once the delivery is
    /// finished or held by the broker again. An unreadable one is dead-lettered with the reason.
    fn take_due(
        &self,
        tasks: &Tasks,
        acks: &Acks,
        publish: &Channel,
        failed: &mpsc::Sender<IngestError>,
        message: Message,
    ) {
        let delivery = match Delivery::from_retry_message(&message.data) {
            Ok(d) => d,
            Err(text) => {
                let refusal = Refusal { text, code: BAD_RETRY_MESSAGE };
                self.spawn_dead_letter(tasks, acks, publish, failed, message, refusal);
                return;
            }
        };
        let (dispatch, publish) = (self.dispatch.clone(), publish.clone());
        self.spawn_then_ack(tasks, acks, failed, message.delivery_tag, async move {
            let delivery_id = delivery.id;
            let handled = dispatch.deliver(delivery, &publish).await;
            debug!(%delivery_id, ?handled, "due retry handled");
            handled.map(drop).map_err(IngestError::Dispatch)
        });
    }

    /// Runs `work` for one message in a task of its own, then acknowledges the message (tag
    /// `tag`, through `acks`, which acknowledges runs of finished messages at once). A failure
    /// of either is reported to `failed`: the connection is given up, and the message goes back
    /// to the queue.
    fn spawn_then_ack(
        &self,
        tasks: &Tasks,
        acks: &Acks,
        failed: &mpsc::Sender<IngestError>,
        tag: u64,
        work: impl std::future::Future<Output = Result<(), IngestError>> + Send + 'static,
    ) {
        let (acks, failed) = (acks.clone(), failed.clone());
        let abandon = tasks.abandon.clone();
        tasks.tracker.spawn(async move {
            let finished = tokio::select! {
                _ = abandon.cancelled() => return,
                finished = work => finished,
            };
            match finished {
                // A failed ack is reported by the acknowledger.
                Ok(()) => {
                    acks.ack(tag).await;
                }
                Err(e) => {
                    let _ = failed.try_send(e);
                }
            }
        });
    }

    fn spawn_dead_letter(
        &self,
        tasks: &Tasks,
        acks: &Acks,
        publish: &Channel,
        failed: &mpsc::Sender<IngestError>,
        message: Message,
        refusal: Refusal,
    ) {
        let publish = publish.clone();
        let (exchange, ack_ms, metrics) = (
            self.settings.dead_letter_exchange.clone(),
            self.settings.broker_timeout_ms,
            self.metrics.clone(),
        );
        let tag = message.delivery_tag;
        self.spawn_then_ack(tasks, acks, failed, tag, async move {
            tokio::time::timeout(
                Duration::from_millis(ack_ms),
                dead_letter(&publish, &exchange, &message, &refusal),
            )
            .await
            .unwrap_or(Err(IngestError::BrokerTimeout { step: "dead letter confirmation", ms: ack_ms }))?;
            metrics.events_dead_lettered.with_label_values(&[refusal.code]).inc();
            Ok(())
        });
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
}

/// How often the retries waiting in the broker are read into the metrics.
pub const WAITING_READ_INTERVAL: Duration = Duration::from_secs(5);

/// Reads the retries waiting in the broker every [`WAITING_READ_INTERVAL`], on a channel of its
/// own, until the connection goes. A reading the broker refuses (a tier deleted under it) or
/// does not answer within `ms` gives the connection up, as any other step would: the next one
/// declares the tiers again.
async fn read_waiting(dispatch: Dispatch, channel: Channel, failed: mpsc::Sender<IngestError>, ms: u64) {
    let mut every = tokio::time::interval(WAITING_READ_INTERVAL);
    loop {
        every.tick().await;
        if let Err(e) =
            webhookd_amqp::within(None, "retry queue reading", ms, dispatch.read_waiting(&channel)).await
        {
            let _ = failed.try_send(e.into());
            return;
        }
    }
}

/// The reason code of a due message that is not a readable retry message.
pub const BAD_RETRY_MESSAGE: &str = "bad_retry_message";

/// Why a message is dead-lettered.
struct Refusal {
    text: String,
    code: &'static str,
}

/// Publishes a refused message to the dead-letter exchange with the reason, and waits for
/// the broker's confirmation before the original is acknowledged.
async fn dead_letter(
    channel: &Channel,
    exchange: &str,
    message: &Message,
    refusal: &Refusal,
) -> Result<(), IngestError> {
    warn!(reason = %refusal.text, reason_code = refusal.code, routing_key = %message.routing_key,
          bytes = message.data.len(), "dead-lettering a message");
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    headers.insert("x-webhookd-reason".into(), text(&refusal.text));
    headers.insert("x-webhookd-reason-code".into(), text(refusal.code));
    headers.insert("x-webhookd-original-exchange".into(), text(message.exchange.as_str()));
    headers.insert("x-webhookd-original-routing-key".into(), text(message.routing_key.as_str()));
    let properties: BasicProperties = message.properties.clone().with_headers(headers).with_delivery_mode(2);
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            message.routing_key.clone(),
            BasicPublishOptions::default(),
            &message.data,
            properties,
        )
        .await?
        .await?;
    if !matches!(confirmation, Confirmation::Ack(_)) {
        return Err(IngestError::DeadLetterNotConfirmed);
    }
    Ok(())
}

/// Counts one event in `webhookd_events_in_progress` until dropped (acknowledged, or given back
/// with its connection).
struct InProgress(prometheus::IntGauge);

impl InProgress {
    fn start(gauge: &prometheus::IntGauge) -> InProgress {
        gauge.inc();
        InProgress(gauge.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The tasks handling one connection's messages, and the token that drops those still running
/// when the shutdown grace ends.
#[derive(Default)]
struct Tasks {
    tracker: TaskTracker,
    abandon: CancellationToken,
}
