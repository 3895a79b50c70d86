//! One attempt of one delivery, from claim to recorded outcome.

use std::sync::Arc;

use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use webhookd_core::clock::Clock;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};
use webhookd_core::outcome::{classify, Answer, Verdict};
use webhookd_core::retry::RetryPolicy;
use webhookd_core::signing::Signer;
use webhookd_metrics::{AttemptOutcome, Metrics};
use webhookd_store::{Claimed, Store, StoreError};

use crate::http::{Clients, Response};

/// What every attempt needs; shared by all attempt tasks.
pub struct Context {
    /// The outbox.
    pub store: Store,
    /// The HTTP clients.
    pub clients: Clients,
    /// Signs each attempt.
    pub signer: Signer,
    /// The retry schedule.
    pub retry: RetryPolicy,
    /// The clock (with the replay time scale).
    pub clock: Clock,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Where attempts hand their outcomes to be recorded (see [`record_outcomes`]).
    pub recorder: mpsc::Sender<Outcome>,
}

/// Outcomes recorded in one transaction at most, and waiting to be recorded at most (attempts
/// wait to hand theirs over beyond that: back-pressure).
pub const RECORD_BATCH: usize = 256;

/// One attempt's outcome waiting to be recorded.
pub struct Outcome {
    claimed: Claimed,
    updated: Delivery,
    log: AttemptRecord,
}

/// Records outcomes as they arrive, all those waiting at that moment in one transaction.
///
/// Attempts hand their outcome over and free their slot at once: recording is off the path of
/// the next attempt, and the outcomes that arrive while a transaction runs share the next one.
/// sled rolls its log buffer twice per transaction, so one transaction per attempt used to
/// cost more than the attempt. Each outcome is still checked on its own (a stale claim is
/// refused, the others recorded). A retry's new due time is posted to the scheduler once it
/// is committed, so the scheduler never looks for it before it is in the store. Ends when
/// every sender is gone or `finish` is cancelled, after recording what it was handed.
pub async fn record_outcomes(store: Store, mut outcomes: mpsc::Receiver<Outcome>, finish: CancellationToken) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    let mut closed = false;
    loop {
        let received = tokio::select! {
            received = outcomes.recv_many(&mut batch, RECORD_BATCH) => received,
            // Attempts that outlived the shutdown grace still hold senders: take no more, record
            // what was handed over (recv_many then drains the channel and returns 0).
            _ = finish.cancelled(), if !closed => {
                outcomes.close();
                closed = true;
                continue;
            }
        };
        if received == 0 {
            return;
        }
        let items: Vec<_> = batch.iter().map(|o| (&o.claimed, &o.updated, &o.log)).collect();
        let results = store.record_attempts(&items);
        drop(items);
        let mut due = Vec::new();
        for (outcome, result) in batch.drain(..).zip(results) {
            let d = &outcome.updated;
            match result {
                Ok(()) => {
                    if let (DeliveryState::Pending, Some(at)) = (d.state, d.next_attempt_at_ms) {
                        due.push((d.destination.clone(), at));
                    }
                }
                // This attempt outlived its lease and another one took over: its outcome is dropped.
                Err(StoreError::Conflict(why)) => info!(
                    event_id = %d.event_id, subscription_id = %d.subscription_id, delivery_id = %d.id,
                    why, "outcome of a stale attempt dropped"),
                // The lease keeps the delivery: it is attempted again when the lease ends.
                Err(e) => {
                    store.note_error(&e);
                    warn!(event_id = %d.event_id, subscription_id = %d.subscription_id,
                          delivery_id = %d.id, error = %e,
                          "cannot record the outcome of an attempt; it will be repeated")
                }
            }
        }
        if !due.is_empty() {
            store.due_signal().post_many(due.iter().map(|(name, at)| (name.as_str(), *at)));
        }
    }
}

/// Sends one attempt of a claimed delivery and records the outcome; returns whether the
/// receiver answered at all (a timeout or refused connection did not).
pub async fn run(ctx: Arc<Context>, claimed: Claimed) -> bool {
    let d = &claimed.delivery;
    // The claim wrote this attempt into the delivery log as started: durable before anything
    // is sent, so a crash cannot hide an attempt (concurrent attempts share the flush).
    if let Err(e) = ctx.store.flush().await {
        warn!(delivery_id = %d.id, error = %e, "cannot make the attempt's start durable; not sending it");
        return false;
    }
    let started_ms = ctx.clock.now_ms();
    let response = ctx.clients.send(d, &ctx.signer, &ctx.clock).await;
    let updated = next_state(d, &response, &ctx.retry, &ctx.clock, rand::thread_rng().gen());
    log_outcome(&updated, &response);
    record_metrics(&ctx.metrics, &ctx.clock, &updated, &response);
    let log = AttemptRecord {
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
    let succeeded = updated.state == DeliveryState::Delivered;
    if let Err(e) = ctx.store.note_attempt(&d.subscription_id, succeeded, started_ms) {
        ctx.store.note_error(&e);
        warn!(subscription_id = %d.subscription_id, error = %e, "cannot record the subscription's health");
    }
    let delivery_id = d.id;
    // Waits only when the recorder is a full batch behind (back-pressure, bounded memory).
    if ctx.recorder.send(Outcome { claimed, updated, log }).await.is_err() {
        // The lease keeps the delivery: it is attempted again when the lease ends.
        warn!(%delivery_id, "the outcome recorder has stopped; the attempt will be repeated");
    }
    response.status.is_some()
}

/// The delivery after `response`: delivered, misconfigured, failed, or pending with its next
/// due time from the retry schedule.
pub fn next_state(
    d: &Delivery,
    response: &Response,
    retry: &RetryPolicy,
    clock: &Clock,
    jitter_sample: f64,
) -> Delivery {
    let mut next = d.clone();
    next.attempts += 1;
    next.last_status = response.status;
    let answer = match response.status {
        Some(code) => Answer::Status { code, body: &response.body },
        None => Answer::NoAnswer,
    };
    let verdict = classify(d.api, answer);
    next.last_error = match (verdict, &response.error) {
        (_, Some(error)) => Some(error.clone()),
        (Verdict::Delivered, None) => None,
        (_, None) => Some(format!(
            "receiver answered {} with body {:?}",
            response.status.unwrap_or_default(),
            String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
        )),
    };
    let now = clock.now_ms();
    let state = match verdict {
        Verdict::Delivered => DeliveryState::Delivered,
        Verdict::Misconfigured => DeliveryState::Misconfigured,
        Verdict::Retry => {
            match retry.next_delay(next.scheduled_attempts(), response.retry_after, jitter_sample) {
                Some(delay) => {
                    next.next_attempt_at_ms = Some(clock.due_in(delay));
                    return next;
                }
                None => DeliveryState::Failed,
            }
        }
    };
    next.state = state;
    next.next_attempt_at_ms = None;
    next.finished_at_ms = Some(now);
    next
}

/// Counts an attempt and its duration, and the end-to-end latency of a delivered one.
pub(crate) fn record_metrics(metrics: &Metrics, clock: &Clock, d: &Delivery, response: &Response) {
    let api = d.api.as_str();
    let outcome = match d.state {
        DeliveryState::Delivered => AttemptOutcome::Success,
        DeliveryState::Pending => AttemptOutcome::RetryableFailure,
        DeliveryState::Misconfigured => AttemptOutcome::Misconfigured,
        DeliveryState::Failed => AttemptOutcome::Exhausted,
    };
    metrics.delivery_attempts.with_label_values(&[api, outcome.as_str()]).inc();
    metrics.attempt_duration.with_label_values(&[api]).observe(response.elapsed.as_secs_f64());
    if d.state == DeliveryState::Delivered {
        let age_ms = (clock.now_ms() as i64).saturating_sub(d.occurred_at_ms).max(0);
        metrics.end_to_end_latency.observe(age_ms as f64 / 1000.0);
    }
}

/// Logs an attempt's outcome at the level it deserves.
pub(crate) fn log_outcome(d: &Delivery, response: &Response) {
    let elapsed_ms = response.elapsed.as_millis() as u64;
    let status = response.status.unwrap_or_default();
    match d.state {
        DeliveryState::Delivered => info!(
            event_id = %d.event_id, subscription_id = %d.subscription_id, delivery_id = %d.id,
            attempt = d.attempts, status, elapsed_ms, "delivered"),
        DeliveryState::Pending => info!(
            event_id = %d.event_id, subscription_id = %d.subscription_id, delivery_id = %d.id,
            attempt = d.attempts, status, elapsed_ms, next_attempt_at_ms = d.next_attempt_at_ms,
            error = d.last_error.as_deref().unwrap_or(""), "attempt failed; retry scheduled"),
        DeliveryState::Failed => warn!(
            event_id = %d.event_id, subscription_id = %d.subscription_id, delivery_id = %d.id,
            attempt = d.attempts, status, error = d.last_error.as_deref().unwrap_or(""),
            "retry schedule exhausted; delivery failed"),
        DeliveryState::Misconfigured => warn!(
            event_id = %d.event_id, subscription_id = %d.subscription_id, delivery_id = %d.id,
            attempt = d.attempts, status, error = d.last_error.as_deref().unwrap_or(""),
            "receiver misconfigured; delivery stopped"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use webhookd_core::event::Event;
    use webhookd_core::matching::match_keys;
    use webhookd_core::subscription::Target;

    use super::*;

    #[tokio::test]
    async fn at_shutdown_the_recorder_records_what_it_was_handed_while_an_attempt_still_holds_a_sender() {
        let dir = std::env::temp_dir().join(format!("webhookd-recorder-{}", uuid::Uuid::new_v4()));
        let store = Store::open(&dir).unwrap();
        let body = format!(
            r#"{{"type":"balance.changed","event_id":"{}","occurred_at":"2026-11-24T10:00:00Z","bank_id":"bank","account_id":"a","amount":"1.00","currency":"EUR","balance":"1.00"}}"#,
            uuid::Uuid::new_v4()
        );
        let event = Event::decode(body.as_bytes(), 4096).unwrap();
        let key = match_keys(&event).remove(0);
        let target = Target {
            subscription_id: "s".into(),
            url: "http://127.0.0.1:9/x".into(),
            http_method: "POST".into(),
            http2: false,
            description: None,
        };
        let delivery = Delivery::new(&event, &key, &target, 100);
        store.insert_deliveries(std::slice::from_ref(&delivery)).unwrap();
        let claimed = store.claim_due(&delivery.destination, 100, 1, 10_000).unwrap().remove(0);
        let mut updated = claimed.delivery.clone();
        (updated.attempts, updated.state) = (1, DeliveryState::Delivered);
        (updated.next_attempt_at_ms, updated.finished_at_ms) = (None, Some(200));
        let log = AttemptRecord {
            attempt: 1,
            at_ms: 150,
            duration_ms: 1,
            status: Some(200),
            response_excerpt: "ack".into(),
            error: None,
            outcome: DeliveryState::Delivered,
        };

        let (sender, outcomes) = mpsc::channel(RECORD_BATCH);
        let finish = CancellationToken::new();
        let recorder = tokio::spawn(record_outcomes(store.clone(), outcomes, finish.clone()));
        // An attempt that outlived the shutdown grace keeps its sender.
        let stuck = sender.clone();
        sender.send(Outcome { claimed, updated, log }).await.unwrap();
        drop(sender);
        finish.cancel();
        tokio::time::timeout(Duration::from_secs(5), recorder)
            .await
            .expect("the recorder ends although a sender is left")
            .unwrap();
        assert_eq!(store.delivery(&delivery.id).unwrap().unwrap().state, DeliveryState::Delivered);
        assert!(stuck.is_closed(), "later outcomes are refused (their leases repeat the attempts)");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
