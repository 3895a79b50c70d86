//! The dispatch side: one delivery from "due now" to "finished or held by the broker".
//!
//! [`Dispatch::deliver`] is the whole hot path of a delivery: take a slot of its destination,
//! sign and send, classify the answer, and, when it must be retried, hand it to the retry tier
//! its next wait rounds up to, waiting for the broker's confirm. It resolves only when the
//! delivery has succeeded, ended (misconfigured, or its schedule exhausted) or is held by the
//! broker, and the delivery log has recorded where it stands; only then may the message that
//! carried it (an event, or a due retry) be acknowledged. Nothing before the send writes to
//! disk: the slot is free again before the delivery log records the step ([`DeliveryLog`]),
//! whose one shared flush the acknowledgement waits for.
//!
//! - A destination at its limit does not hold the delivery for long: unless a slot is expected
//!   to free within `delivery.slot_wait_ms`, it is deferred to the deferral tier without
//!   counting an attempt (see [`crate::slots`]).
//! - A retry that comes due earlier than asked (a wait longer than the longest tier) is handed
//!   to the next tier again without an attempt ("hop").
//! - A retry carries everything it needs (url, method, headers, body), so it is sent where it
//!   was queued for, whatever became of its subscription, by whichever replica takes it.

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use rand::Rng;
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use webhookd_amqp::topology::Topology;
use webhookd_core::clock::Clock;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};
use webhookd_core::delivery_log::LogEntry;
use webhookd_core::destination::DestinationPolicy;
use webhookd_core::retry::RetryPolicy;
use webhookd_core::signing::SharedKeys;
use webhookd_metrics::Metrics;
use webhookd_store::Store;

use crate::attempt::{log_outcome, next_state, record_metrics};
use crate::http::Clients;
use crate::log::DeliveryLog;
use crate::seen::Seen;
use crate::settings::DeliverySettings;
use crate::slots::Slots;
use crate::tier_queues::{HandOverError, TierQueues};
use crate::DeliveryError;

/// What became of one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The receiver acknowledged it.
    Delivered,
    /// It ended without success: misconfigured receiver, or its schedule exhausted.
    Ended(DeliveryState),
    /// An attempt failed; it waits in this tier for the next one.
    Retrying {
        /// The tier queue.
        queue: String,
    },
    /// Its destination was at its limit; it waits in the deferral tier, no attempt counted.
    Deferred {
        /// The tier queue.
        queue: String,
    },
    /// It came due before its time; it waits in this tier again, no attempt counted.
    Hopped {
        /// The tier queue.
        queue: String,
    },
    /// Another copy of it got as far or further already (a repeated message); not sent.
    Duplicate,
}

/// Why a delivery was not handled: the message that carried it must not be acknowledged (it
/// comes back and the delivery is attempted again, with the same id).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The broker did not take the retry.
    #[error("cannot hand delivery {delivery_id} to the broker: {source}")]
    HandOver {
        /// The delivery.
        delivery_id: uuid::Uuid,
        /// Why.
        source: HandOverError,
    },
    /// The delivery log could not record where the delivery stands (the store is failing).
    #[error("cannot record delivery {0} in the delivery log")]
    NotRecorded(uuid::Uuid),
}

/// Why a redelivery was not queued.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    /// No such delivery in this replica's delivery log.
    #[error("no delivery {0}")]
    NotFound(uuid::Uuid),
    /// The delivery is not failed or misconfigured.
    #[error("delivery {id} is {state}; only failed or misconfigured deliveries can be redelivered")]
    NotFinished {
        /// The delivery.
        id: uuid::Uuid,
        /// Its state.
        state: &'static str,
    },
    /// The broker is not reachable now (nothing was queued).
    #[error("the broker is not available: {0}")]
    Unavailable(String),
    /// The delivery log could not be read or written.
    #[error(transparent)]
    Store(#[from] webhookd_store::StoreError),
}

/// The confirm-mode channel of the current broker connection, set by its owner (the ingestion)
/// and read by what publishes outside a consumed message (redelivery).
#[derive(Clone, Default)]
pub struct Outlet(Arc<std::sync::Mutex<Option<Channel>>>);

impl Outlet {
    /// Sets (or clears, at a connection loss) the channel.
    pub fn set(&self, channel: Option<Channel>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = channel;
    }

    /// The channel, while connected.
    pub fn current(&self) -> Option<Channel> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The dispatch side; cheap to clone.
#[derive(Clone)]
pub struct Dispatch {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    outlet: Outlet,
    /// What this side declares: the tiers, the due queue, the delivery log stream.
    topology: Topology,
    shutdown_grace: Duration,
    clients: Clients,
    keys: SharedKeys,
    retry: RetryPolicy,
    clock: Clock,
    metrics: Arc<Metrics>,
    queues: TierQueues,
    slots: Arc<Slots>,
    seen: Seen,
    /// The longest a due retry waited past its due time since the last reading, ms.
    lateness_ms: std::sync::atomic::AtomicU64,
    global: Semaphore,
    log: DeliveryLog,
    defer_ms: u64,
    slot_wait: Duration,
}

impl Dispatch {
    /// The dispatch side, and the delivery log recorder it reports to (it ends once every
    /// clone of the dispatch side is dropped).
    pub fn new(
        store: Store,
        settings: &DeliverySettings,
        retry: RetryPolicy,
        keys: SharedKeys,
        clock: Clock,
        metrics: Arc<Metrics>,
        policy: Arc<DestinationPolicy>,
    ) -> Result<(Dispatch, tokio::task::JoinHandle<()>), DeliveryError> {
        let clients = Clients::new(settings, policy)?;
        let queues = TierQueues::new(settings, &retry, &clock);
        let outlet = Outlet::default();
        let (log, recorder) =
            DeliveryLog::start(outlet.clone(), settings.log_stream.clone(), clock, metrics.clone());
        let topology = crate::topology(settings, &retry, &clock);
        let inner = Inner {
            store,
            outlet,
            topology,
            shutdown_grace: Duration::from_millis(settings.shutdown_grace_ms),
            clients,
            keys,
            retry,
            clock,
            metrics,
            queues,
            slots: Slots::new(settings.max_in_flight_per_destination),
            seen: Seen::default(),
            lateness_ms: std::sync::atomic::AtomicU64::new(0),
            global: Semaphore::new(settings.max_in_flight),
            log,
            defer_ms: settings.defer_ms,
            slot_wait: Duration::from_millis(settings.slot_wait_ms),
        };
        Ok((Dispatch { inner: Arc::new(inner) }, recorder))
    }

    /// Declares what this side publishes to on `channel`: the retry tiers, the due queue and
    /// the delivery log stream (idempotent).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        self.inner.topology.declare(channel).await
    }

    /// The tier queues this dispatch side hands retries to.
    pub fn queues(&self) -> &TierQueues {
        &self.inner.queues
    }

    /// The per-destination slots (what is in flight where).
    pub fn slots(&self) -> &Slots {
        &self.inner.slots
    }

    /// A prober sharing this side's clients, keys and clock.
    pub fn prober(&self) -> Arc<crate::Prober> {
        crate::Prober::new(self.inner.clients.clone(), self.inner.keys.clone(), self.inner.clock)
    }

    /// Starts reading back, on `channel`, the delivery log records appended from now on (see
    /// [`DeliveryLog::read_receipts`]); before the connection's publishing channel is handed
    /// to the [`Outlet`].
    pub async fn read_receipts(&self, channel: Channel) -> lapin::Result<tokio::task::JoinHandle<()>> {
        self.inner.log.read_receipts(channel).await
    }

    /// Where the owner of the broker connection puts its confirm-mode channel.
    pub fn outlet(&self) -> &Outlet {
        &self.inner.outlet
    }

    /// Reads the broker's retry queues into `webhookd_retries_waiting`, and the lateness of the
    /// retries taken since the last reading into `webhookd_due_retry_lateness_seconds`.
    pub async fn read_waiting(&self, channel: &Channel) -> lapin::Result<()> {
        let waiting = self.inner.queues.waiting(channel).await?;
        for (queue, count) in waiting {
            self.inner.metrics.retries_waiting.with_label_values(&[&queue]).set(i64::from(count));
        }
        let late = self.inner.lateness_ms.swap(0, std::sync::atomic::Ordering::Relaxed);
        self.inner.metrics.due_lateness.set(late as f64 / 1000.0);
        Ok(())
    }

    /// The retry schedule a delivery created now gets (it keeps it to its end).
    pub fn schedule(&self) -> webhookd_core::retry::Schedule {
        self.inner.retry.schedule()
    }

    /// How long attempts in flight may take to finish at shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        self.inner.shutdown_grace
    }

    /// Queues a failed or misconfigured delivery again now, with a new retry schedule (it keeps
    /// its id, event id and attempt count). Done once the broker has confirmed it; this
    /// replica's delivery log shows it pending at once, the others once they read the entry.
    pub async fn redeliver(&self, id: &uuid::Uuid) -> Result<Delivery, RedeliverError> {
        let inner = &self.inner;
        let mut d = inner.store.delivery(id)?.ok_or(RedeliverError::NotFound(*id))?;
        if !matches!(d.state, DeliveryState::Failed | DeliveryState::Misconfigured) {
            return Err(RedeliverError::NotFinished { id: *id, state: d.state.as_str() });
        }
        d.restart(inner.clock.now_ms(), inner.retry.schedule());
        let channel = inner
            .outlet
            .current()
            .ok_or_else(|| RedeliverError::Unavailable("not connected to the broker".into()))?;
        TierQueues::hand_over(&channel, inner.queues.due_queue(), &d)
            .await
            .map_err(|e| RedeliverError::Unavailable(e.to_string()))?;
        // The retry is queued whatever becomes of the entry: its attempt is reported anyway.
        if !inner.log.report(d.clone(), None).await {
            warn!(delivery_id = %d.id, "a redelivery is queued but not in the delivery log stream yet");
        }
        // Folded here at once too: the caller reads it back.
        inner.store.record_log(&[LogEntry::new(d.clone(), None)])?;
        Ok(d)
    }

    /// Redelivers every failed delivery of a subscription created at or after `since_ms`
    /// (as [`Dispatch::redeliver`]); returns their ids. Stops at the first that the broker does
    /// not take (those before it stay queued).
    pub async fn recover(
        &self,
        subscription_id: &str,
        since_ms: u64,
    ) -> Result<Vec<uuid::Uuid>, RedeliverError> {
        let failed = self.inner.store.failed_since(subscription_id, since_ms)?;
        let mut recovered = Vec::with_capacity(failed.len());
        for id in failed {
            match self.redeliver(&id).await {
                Ok(d) => recovered.push(d.id),
                // Changed meanwhile (redelivered by someone else): leave it.
                Err(RedeliverError::NotFinished { .. } | RedeliverError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(recovered)
    }

    /// Sends `delivery`'s next attempt, or hands it back to the broker (retry, deferral, hop)
    /// on `channel`, which must be in confirm mode. See the module documentation.
    pub async fn deliver(&self, delivery: Delivery, channel: &Channel) -> Result<Handled, DispatchError> {
        self.deliver_copy(delivery, channel, true).await
    }

    /// [`Dispatch::deliver`] for a delivery of an event the broker hands out for the first
    /// time (not redelivered): no copy of it can have been attempted but one published twice,
    /// so the delivery log view is not read (copies in flight or recent are still caught in
    /// memory). This keeps the view's size, and the disk, off the path of every new delivery.
    pub async fn deliver_new(&self, delivery: Delivery, channel: &Channel) -> Result<Handled, DispatchError> {
        self.deliver_copy(delivery, channel, false).await
    }

    async fn deliver_copy(
        &self,
        delivery: Delivery,
        channel: &Channel,
        read_log: bool,
    ) -> Result<Handled, DispatchError> {
        let inner = &self.inner;
        let Some(turn) = inner.seen.enter(&delivery).await else {
            debug!(delivery_id = %delivery.id, attempts = delivery.attempts, "a copy of a delivery handled already; dropped");
            return Ok(Handled::Duplicate);
        };
        // Older copies: the delivery log knows how far it got (a read error only means one
        // more copy may be sent).
        let known = if read_log { inner.store.delivery(&delivery.id) } else { Ok(None) };
        if let Ok(Some(known)) = known {
            if known.supersedes(&delivery) {
                debug!(delivery_id = %delivery.id, attempts = delivery.attempts, "a copy of a delivery handled already; dropped");
                turn.finish(known.progress());
                return Ok(Handled::Duplicate);
            }
        }
        let (handled, reached) = self.deliver_once(delivery, channel).await?;
        turn.finish(reached);
        Ok(handled)
    }

    async fn deliver_once(
        &self,
        mut delivery: Delivery,
        channel: &Channel,
    ) -> Result<(Handled, webhookd_core::delivery::Progress), DispatchError> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let due = delivery.next_attempt_at_ms.unwrap_or(now);
        // Clocks of replicas differ a little: within the shortest tier, it is due.
        let tolerance = inner.queues.shortest_ms();
        if due > now.saturating_add(tolerance) {
            let queue = inner.queues.queue_for(due - now);
            self.hand_over(channel, &queue, &delivery).await?;
            return Ok((Handled::Hopped { queue }, delivery.progress()));
        }

        // How late it is taken (an event's deliveries are due as they are matched: 0).
        inner.lateness_ms.fetch_max(now.saturating_sub(due), std::sync::atomic::Ordering::Relaxed);

        let Some(slot) = inner.slots.acquire(&delivery.destination, inner.slot_wait).await else {
            delivery.next_attempt_at_ms = Some(now.saturating_add(inner.defer_ms));
            let queue = inner.queues.defer_queue();
            self.hand_over(channel, &queue, &delivery).await?;
            inner.metrics.deliveries_deferred.inc();
            debug!(delivery_id = %delivery.id, destination = %delivery.destination, "destination at its limit; deferred");
            let reached = delivery.progress();
            self.report(delivery, None).await?;
            return Ok((Handled::Deferred { queue }, reached));
        };
        // Never closed, so this always gives a permit.
        let permit = inner.global.acquire().await.ok();
        inner.metrics.in_flight.inc();
        let started_ms = inner.clock.now_ms();
        let response = inner.clients.send(&delivery, &inner.keys.signer(), &inner.clock).await;
        inner.metrics.in_flight.dec();
        drop(permit);
        slot.release(response.status.is_some());

        let updated = next_state(&delivery, &response, &inner.retry, &inner.clock, rand::thread_rng().gen());
        log_outcome(&updated, &response);
        record_metrics(&inner.metrics, &inner.clock, &updated, &response);
        let attempt = AttemptRecord {
            attempt: updated.attempts,
            at_ms: started_ms,
            duration_ms: response.elapsed.as_millis() as u64,
            status: response.status,
            response_excerpt: AttemptRecord::excerpt(&response.body),
            error: response.error.clone().or_else(|| {
                (updated.state != DeliveryState::Delivered).then(|| updated.last_error.clone()).flatten()
            }),
            outcome: updated.state,
        };
        let handled = match (updated.state, updated.next_attempt_at_ms) {
            (DeliveryState::Delivered, _) => Handled::Delivered,
            (DeliveryState::Pending, Some(at)) => {
                let queue = inner.queues.queue_for(at.saturating_sub(inner.clock.now_ms()));
                // Not reported when the broker did not take it: the log's state must be one
                // the broker holds (a copy finding it there is dropped as redundant). The
                // attempt is repeated under the same number, as after a crash.
                self.hand_over(channel, &queue, &updated).await?;
                Handled::Retrying { queue }
            }
            (state, _) => Handled::Ended(state),
        };
        let reached = updated.progress();
        self.report(updated, Some(attempt)).await?;
        Ok((handled, reached))
    }

    /// Reports to the delivery log and waits until it is recorded.
    async fn report(&self, delivery: Delivery, attempt: Option<AttemptRecord>) -> Result<(), DispatchError> {
        let id = delivery.id;
        if self.inner.log.report(delivery, attempt).await {
            Ok(())
        } else {
            Err(DispatchError::NotRecorded(id))
        }
    }

    async fn hand_over(
        &self,
        channel: &Channel,
        queue: &str,
        delivery: &Delivery,
    ) -> Result<(), DispatchError> {
        match TierQueues::hand_over(channel, queue, delivery).await {
            Ok(()) => {
                // The TTL in milliseconds, as `webhookd_retries_waiting` labels it.
                let tier = queue.rsplit('.').next().unwrap_or(queue).trim_end_matches("ms");
                self.inner.metrics.retries_handed_over.with_label_values(&[tier]).inc();
                Ok(())
            }
            Err(source) => {
                warn!(delivery_id = %delivery.id, queue, error = %source, "the broker did not take a retry; its message is not acknowledged");
                Err(DispatchError::HandOver { delivery_id: delivery.id, source })
            }
        }
    }
}
