//! What one attempt's answer means for its delivery: the next state, the metrics, the log line.

use tracing::{debug, info, warn};
use webhookd_core::clock::{rfc3339_ms, Clock};
use webhookd_core::delivery::{Delivery, DeliveryState};
use webhookd_core::outcome::{classify, Answer, Verdict};
use webhookd_core::retry::RetryPolicy;
use webhookd_metrics::{AttemptOutcome, Metrics};

use crate::http::Response;

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
            match retry.next_delay(
                // A record from before deliveries kept their schedule follows the configured one.
                &next.schedule.unwrap_or_else(|| retry.schedule()),
                next.scheduled_attempts(),
                response.retry_after,
                jitter_sample,
            ) {
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
        // One line per success would be most of the log at full speed; the delivery log holds
        // every attempt, and failures stay at info and warn.
        DeliveryState::Delivered => debug!(
            event_id = %d.event_id, subscription_id = %d.subscription_id, delivery_id = %d.id,
            attempt = d.attempts, status, elapsed_ms, "delivered"),
        DeliveryState::Pending => info!(
            event_id = %d.event_id, subscription_id = %d.subscription_id, delivery_id = %d.id,
            attempt = d.attempts, status, elapsed_ms, next_attempt_at = %d.next_attempt_at_ms.map(rfc3339_ms).unwrap_or_default(),
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
