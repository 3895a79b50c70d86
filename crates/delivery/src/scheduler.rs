//! The scheduler: sleeps until the next due item, and dispatches within the limits.
//!
//! State per destination lives in memory: how many of its requests are in flight, and when
//! its next entry is due. Destinations with a free slot and a due time sit in an ordered set;
//! the scheduler wakes for the first of them, for a completed attempt, for new work from the
//! outbox writer, or for shutdown. It never polls. A destination at its limit leaves the set
//! until one of its attempts completes, so a slow or dead receiver holds only its own slots.
//!
//! The per-destination limit adapts: an attempt that gets no answer (timeout, refused
//! connection) halves the destination's limit, down to 1; an answered one raises it by one, up
//! to the configured maximum. Dead receivers thus hold one slot each, and many of them together
//! cannot take the global slots from the healthy ones.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use webhookd_core::clock::Clock;
use webhookd_core::retry::RetryPolicy;
use webhookd_core::signing::Signer;
use webhookd_metrics::Metrics;
use webhookd_store::Store;

use crate::attempt::{self, Context};
use crate::http::Clients;
use crate::settings::DeliverySettings;
use crate::DeliveryError;

/// How long a destination waits after a store error before it is tried again, milliseconds.
const STORE_RETRY_MS: u64 = 1_000;

/// The delivery engine.
pub struct Engine {
    ctx: Arc<Context>,
    settings: DeliverySettings,
    /// The recorder's end of the outcome channel, until [`Engine::run`] starts it.
    outcomes: mpsc::Receiver<attempt::Outcome>,
}

struct Destination {
    in_flight: usize,
    /// Requests it may have in flight now (adaptive, 1 to the configured maximum).
    limit: usize,
    /// The due time under which it sits in the ready set, if it does.
    queued: Option<u64>,
}

/// A destination's state, created with the full limit.
fn destination<'a>(
    map: &'a mut HashMap<String, Destination>,
    name: &str,
    limit: usize,
) -> &'a mut Destination {
    map.entry(name.to_string()).or_insert(Destination { in_flight: 0, limit, queued: None })
}

/// Scheduler state: destinations and the ready set ordered by due time.
struct Slots {
    destinations: HashMap<String, Destination>,
    ready: BTreeSet<(u64, String)>,
    in_flight: usize,
    per_destination: usize,
}

impl Slots {
    /// Notes that `name` has work due at `due` (keeps the earliest).
    fn offer(&mut self, name: &str, due: u64) {
        let dest = destination(&mut self.destinations, name, self.per_destination);
        if dest.in_flight >= dest.limit {
            return; // re-read from the store when a slot frees
        }
        match dest.queued {
            Some(current) if current <= due => {}
            Some(current) => {
                self.ready.remove(&(current, name.to_string()));
                self.ready.insert((due, name.to_string()));
                dest.queued = Some(due);
            }
            None => {
                self.ready.insert((due, name.to_string()));
                dest.queued = Some(due);
            }
        }
    }

    /// Like [`Slots::refresh`], but a store error only postpones the destination.
    fn refresh_or_retry(&mut self, store: &Store, name: &str, now: u64) {
        if let Err(e) = self.refresh(store, name) {
            if let DeliveryError::Store(e) = &e {
                store.note_error(e);
            }
            error!(destination = %name, error = %e, "cannot read the next due time; retrying in 1 s");
            self.offer(name, now + STORE_RETRY_MS);
        }
    }

    /// Notes a finished attempt: frees its slots and adapts the destination's limit.
    fn completed(&mut self, store: &Store, name: &str, answered: bool, now: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let max = self.per_destination;
        if let Some(dest) = self.destinations.get_mut(name) {
            dest.in_flight = dest.in_flight.saturating_sub(1);
            dest.limit = if answered { (dest.limit + 1).min(max) } else { (dest.limit / 2).max(1) };
        }
        self.refresh_or_retry(store, name, now);
    }

    /// Re-reads a destination's next due time from the store.
    fn refresh(&mut self, store: &Store, name: &str) -> Result<(), DeliveryError> {
        if let Some(dest) = self.destinations.get_mut(name) {
            if let Some(q) = dest.queued.take() {
                self.ready.remove(&(q, name.to_string()));
            }
        }
        match store.first_due(name)? {
            Some(due) => self.offer(name, due),
            None => {
                if self.destinations.get(name).is_some_and(|d| d.in_flight == 0) {
                    self.destinations.remove(name);
                }
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Builds the engine over `store`.
    pub fn new(
        store: Store,
        settings: DeliverySettings,
        retry: RetryPolicy,
        signer: Signer,
        clock: Clock,
        metrics: Arc<Metrics>,
        policy: Arc<webhookd_core::destination::DestinationPolicy>,
    ) -> Result<Engine, DeliveryError> {
        let clients = Clients::new(&settings, policy)?;
        let (recorder, outcomes) = mpsc::channel(attempt::RECORD_BATCH);
        let ctx = Arc::new(Context { store, clients, signer, retry, clock, metrics, recorder });
        Ok(Engine { ctx, settings, outcomes })
    }

    /// A prober sharing this engine's clients, signer and clock.
    pub fn prober(&self) -> Arc<crate::Prober> {
        crate::Prober::new(self.ctx.clients.clone(), self.ctx.signer.clone(), self.ctx.clock)
    }

    /// Runs until `shutdown`, then lets in-flight attempts finish within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DeliveryError> {
        let Engine { ctx, settings, outcomes } = self;
        let store = ctx.store.clone();
        let clock = ctx.clock;
        // Ends once the last attempt and this engine's context have let go of their senders.
        let finish_recording = CancellationToken::new();
        let recorder =
            tokio::spawn(attempt::record_outcomes(store.clone(), outcomes, finish_recording.clone()));
        let signal = store.due_signal().clone();
        let max = settings.max_in_flight;
        let lease_ms = settings.lease_ms();
        let mut slots = Slots {
            destinations: HashMap::new(),
            ready: BTreeSet::new(),
            in_flight: 0,
            per_destination: settings.max_in_flight_per_destination,
        };
        // Anything posted before start is also in the store, which we read now.
        signal.take();
        for (name, due) in store.due_destinations()? {
            slots.offer(&name, due);
        }
        info!(
            destinations = slots.destinations.len(),
            pending = store.pending_count(),
            "delivery engine started"
        );

        let (done_tx, mut done_rx) = mpsc::channel::<(String, bool)>(max);
        let tracker = TaskTracker::new();
        loop {
            let now = clock.now_ms();
            while slots.in_flight < max {
                let Some((due, name)) = slots.ready.first().cloned() else { break };
                if due > now {
                    break;
                }
                slots.ready.remove(&(due, name.clone()));
                let global_free = max - slots.in_flight;
                let dest = destination(&mut slots.destinations, &name, slots.per_destination);
                dest.queued = None;
                let free = dest.limit.saturating_sub(dest.in_flight).min(global_free);
                if free == 0 {
                    continue; // it re-enters the ready set when one of its attempts completes
                }
                let claimed = match store.claim_due(&name, now, free, now + lease_ms) {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        // The store failed: this destination is tried again shortly; the
                        // engine itself keeps running (an I/O error also marks the store
                        // failed, which stops webhookd's parts until it can be reopened).
                        store.note_error(&e);
                        error!(destination = %name, error = %e, "cannot claim due deliveries; retrying in 1 s");
                        slots.offer(&name, now + STORE_RETRY_MS);
                        continue;
                    }
                };
                dest.in_flight += claimed.len();
                slots.in_flight += claimed.len();
                ctx.metrics.in_flight.set(slots.in_flight as i64);
                for c in claimed {
                    let ctx = ctx.clone();
                    let done = done_tx.clone();
                    let destination = name.clone();
                    tracker.spawn(async move {
                        let answered = attempt::run(ctx, c).await;
                        let _ = done.send((destination, answered)).await;
                    });
                }
                slots.refresh_or_retry(&store, &name, clock.now_ms());
            }

            let next_due = if slots.in_flight < max { slots.ready.first().map(|(d, _)| *d) } else { None };
            let sleep = next_due.map(|due| Duration::from_millis(due.saturating_sub(clock.now_ms())));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((name, answered)) = done_rx.recv() => {
                    ctx.metrics.in_flight.dec();
                    slots.completed(&store, &name, answered, clock.now_ms());
                    // Drain what else completed, without waiting.
                    while let Ok((name, answered)) = done_rx.try_recv() {
                        ctx.metrics.in_flight.dec();
                        slots.completed(&store, &name, answered, clock.now_ms());
                    }
                }
                _ = signal.notified() => {
                    for (name, due) in signal.take() {
                        slots.offer(&name, due);
                    }
                }
                _ = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            }
        }

        tracker.close();
        let grace = Duration::from_millis(settings.shutdown_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        info!(in_flight = slots.in_flight, "delivery engine stopping; waiting for in-flight attempts");
        if tokio::time::timeout_at(deadline, tracker.wait()).await.is_err() {
            warn!(
                in_flight = tracker.len(),
                "shutdown grace ended; unfinished attempts will be repeated after restart"
            );
        }
        // The outcomes handed over are recorded before the final flush: the recorder ends once
        // the finished attempts and this context have dropped their senders, or, when attempts
        // outlived the grace, once it has recorded what the others handed over.
        drop(ctx);
        if !tracker.is_empty() {
            finish_recording.cancel();
        }
        // A second beyond the grace at most: recording what is held takes milliseconds.
        let recorded_by = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        if tokio::time::timeout_at(recorded_by, recorder).await.is_err() {
            warn!("shutdown grace ended before every outcome was recorded; those attempts will be repeated");
        }
        if let Err(e) = store.flush().await {
            error!(error = %e, "final flush failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_that_stops_answering_shrinks_to_one_slot_and_recovers() {
        let dir = std::env::temp_dir().join(format!("webhookd-slots-{}", uuid::Uuid::new_v4()));
        let store = Store::open(&dir).unwrap();
        let mut slots =
            Slots { destinations: HashMap::new(), ready: BTreeSet::new(), in_flight: 0, per_destination: 8 };
        let limit = |slots: &Slots| slots.destinations.get("d").map(|d| d.limit);
        destination(&mut slots.destinations, "d", 8).in_flight = 6;
        slots.in_flight = 6;
        let mut seen = Vec::new();
        for _ in 0..5 {
            slots.completed(&store, "d", false, 0);
            seen.push(limit(&slots));
        }
        assert_eq!(seen, [Some(4), Some(2), Some(1), Some(1), Some(1)]);
        assert_eq!(slots.in_flight, 1);
        slots.completed(&store, "d", true, 0);
        // Nothing in flight and nothing due: the destination is forgotten (full limit next time).
        assert_eq!(limit(&slots), None);
        // Answers raise the limit one step at a time, up to the configured maximum.
        let e = destination(&mut slots.destinations, "e", 8);
        (e.limit, e.in_flight) = (7, 3);
        slots.in_flight = 3;
        slots.completed(&store, "e", true, 0);
        assert_eq!(slots.destinations.get("e").map(|d| (d.limit, d.in_flight)), Some((8, 2)));
        slots.completed(&store, "e", true, 0);
        assert_eq!(slots.destinations.get("e").map(|d| d.limit), Some(8), "never above the maximum");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
