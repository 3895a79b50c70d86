//! One delivery: one event to one subscription for one trigger, until it ends; its attempts;
//! and the retry message that carries it while it waits in the broker.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::Event;
use crate::ids::delivery_id;
use crate::matching::MatchKey;
use crate::payload::render;
use crate::retry::Schedule;
use crate::signing::Signer;
use crate::subscription::{Api, Target};

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// Acknowledged by the receiver.
    Delivered,
    /// The retry schedule is exhausted.
    Failed,
    /// The receiver answered in a way that retrying cannot fix.
    Misconfigured,
}

impl DeliveryState {
    /// The lowercase name, also a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Misconfigured => "misconfigured",
        }
    }
}

/// One delivery: what to send, where, and how far it got.
///
/// It is self-contained (url, method, body, headers are copied in), so it keeps going to the
/// url it was queued for even when its subscription is disabled, deleted or changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Deterministic id of (event, subscription, trigger).
    pub id: Uuid,
    /// The event it carries.
    pub event_id: Uuid,
    /// The API whose rules (payload, signature, acknowledgement) apply.
    pub api: Api,
    /// The subscription it was created for.
    pub subscription_id: String,
    /// The OBP trigger or Rabo event type.
    pub trigger: String,
    /// HTTP method.
    pub method: String,
    /// Destination url, frozen at creation.
    pub url: String,
    /// Speak HTTP/2 (prior knowledge) instead of HTTP/1.1.
    pub http2: bool,
    /// Fixed headers (lowercase names); signatures are added per attempt.
    pub headers: Vec<(String, String)>,
    /// The exact body.
    pub body: String,
    /// `host:port` of the url: the key of the per-destination concurrency limit.
    pub destination: String,
    /// When the event happened, unix milliseconds (for end-to-end latency).
    pub occurred_at_ms: i64,
    /// When the delivery was created, unix milliseconds.
    pub created_at_ms: u64,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, unix milliseconds (pending only).
    pub next_attempt_at_ms: Option<u64>,
    /// Status of the last answer, if any.
    pub last_status: Option<u16>,
    /// The last error (no answer, or why the answer was refused).
    pub last_error: Option<String>,
    /// When it ended, unix milliseconds.
    pub finished_at_ms: Option<u64>,
    /// Attempts made before the current retry schedule began (a redelivery starts a new
    /// schedule but keeps the attempt count, so the log stays continuous).
    #[serde(default)]
    pub schedule_offset: u32,
    /// Its retry schedule, fixed when it was created or redelivered: a configuration changed
    /// later neither ends it early nor adds retries to it (each wait is still rounded up to a
    /// retry tier of the running configuration). `None` only in records written before
    /// deliveries kept their schedule: those follow the configured one.
    #[serde(default)]
    pub schedule: Option<Schedule>,
}

impl Delivery {
    /// A new pending delivery of `event` to `target` under `key`, due at `now_ms`, retried on
    /// `schedule`.
    pub fn new(event: &Event, key: &MatchKey, target: &Target, now_ms: u64, schedule: Schedule) -> Delivery {
        let rendered = render(event, key, target);
        let trigger = key.trigger_name();
        let api = match key {
            MatchKey::Obp { .. } => Api::Obp,
            MatchKey::Rabo { .. } => Api::Rabo,
        };
        let occurred = event.occurred_at();
        let event_ms = (occurred.unix_timestamp_nanos() / 1_000_000) as i64;
        Delivery {
            id: delivery_id(event.event_id(), event_ms, &target.subscription_id, trigger),
            event_id: event.event_id(),
            api,
            subscription_id: target.subscription_id.clone(),
            trigger: trigger.to_string(),
            method: target.http_method.to_ascii_uppercase(),
            url: target.url.clone(),
            http2: target.http2,
            headers: rendered.headers,
            body: rendered.body,
            destination: destination_of(&target.url),
            occurred_at_ms: event_ms,
            created_at_ms: now_ms,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at_ms: Some(now_ms),
            last_status: None,
            last_error: None,
            finished_at_ms: None,
            schedule_offset: 0,
            schedule: Some(schedule),
        }
    }

    /// Whether this delivery, as known, makes `incoming` (another copy of it arriving: a
    /// repeated message, a retry moved twice by the broker, a late report) redundant: it has
    /// more attempts, or as many and has ended under the same schedule. A redelivery starts a
    /// new schedule, so it is never superseded by the end of the old one.
    pub fn supersedes(&self, incoming: &Delivery) -> bool {
        self.progress().supersedes(&incoming.progress())
    }

    /// How far it got: what [`Delivery::supersedes`] compares.
    pub fn progress(&self) -> Progress {
        Progress { attempts: self.attempts, state: self.state, schedule_offset: self.schedule_offset }
    }

    /// Attempts made under the current retry schedule.
    pub fn scheduled_attempts(&self) -> u32 {
        self.attempts.saturating_sub(self.schedule_offset)
    }

    /// Starts `schedule` now, keeping the id, event and attempt count (redelivery).
    pub fn restart(&mut self, now_ms: u64, schedule: Schedule) {
        self.state = DeliveryState::Pending;
        self.schedule_offset = self.attempts;
        self.schedule = Some(schedule);
        self.next_attempt_at_ms = Some(now_ms);
        self.finished_at_ms = None;
    }

    /// The signature headers of one attempt at `now_secs`: Standard Webhooks (Ed25519 `v1a`)
    /// for OBP, a detached JWS (ES256) for Rabo.
    pub fn signature_headers(&self, signer: &Signer, now_secs: i64) -> Vec<(&'static str, String)> {
        match self.api {
            Api::Obp => {
                let id = self.id.to_string();
                let signature = signer.standard_webhooks_signature(&id, now_secs, self.body.as_bytes());
                vec![
                    ("webhook-id", id),
                    ("webhook-timestamp", now_secs.to_string()),
                    ("webhook-signature", signature),
                ]
            }
            Api::Rabo => vec![("x-smartpay-signature", signer.detached_jws(self.body.as_bytes()))],
        }
    }
}

/// How far a delivery got (attempts, state, schedule), without its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Attempts made.
    pub attempts: u32,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made before its current schedule began.
    pub schedule_offset: u32,
}

impl Progress {
    /// See [`Delivery::supersedes`].
    pub fn supersedes(&self, incoming: &Progress) -> bool {
        self.attempts > incoming.attempts
            || (self.attempts == incoming.attempts
                && self.state != DeliveryState::Pending
                && incoming.state == DeliveryState::Pending
                && self.schedule_offset == incoming.schedule_offset)
    }
}

/// The version of the retry message format ([`Delivery::to_retry_message`]).
pub const RETRY_MESSAGE_VERSION: u32 = 1;

#[derive(Serialize)]
struct RetryMessageOut<'a> {
    v: u32,
    delivery: &'a Delivery,
}

#[derive(Deserialize)]
struct RetryMessageIn {
    v: u32,
    delivery: Delivery,
}

impl Delivery {
    /// The body of the broker message that holds this pending delivery until its next attempt:
    /// everything needed to send it, so any replica can, whatever became of its subscription.
    pub fn to_retry_message(&self) -> Vec<u8> {
        // A `Delivery` is plain strings and numbers: serialising it cannot fail.
        serde_json::to_vec(&RetryMessageOut { v: RETRY_MESSAGE_VERSION, delivery: self }).unwrap_or_default()
    }

    /// Reads a retry message; the error says why it cannot be sent (it is dead-lettered).
    pub fn from_retry_message(bytes: &[u8]) -> Result<Delivery, String> {
        let message: RetryMessageIn =
            serde_json::from_slice(bytes).map_err(|e| format!("not a webhookd retry message: {e}"))?;
        if message.v != RETRY_MESSAGE_VERSION {
            return Err(format!(
                "retry message version {} is not {RETRY_MESSAGE_VERSION}, the one this webhookd reads",
                message.v
            ));
        }
        let d = message.delivery;
        if d.state != DeliveryState::Pending || d.next_attempt_at_ms.is_none() {
            return Err(format!("retry message of delivery {} is not pending", d.id));
        }
        if d.destination != destination_of(&d.url) {
            return Err(format!("retry message of delivery {}: destination does not match its url", d.id));
        }
        Ok(d)
    }
}

/// One attempt in the delivery log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When it started, unix milliseconds.
    pub at_ms: u64,
    /// How long it took, milliseconds.
    pub duration_ms: u64,
    /// The answer's status, if there was one.
    pub status: Option<u16>,
    /// The first bytes of the answer's body (at most [`AttemptRecord::EXCERPT_BYTES`]).
    pub response_excerpt: String,
    /// Why there was no (acceptable) answer.
    pub error: Option<String>,
    /// The delivery's state after this attempt.
    pub outcome: DeliveryState,
}

impl AttemptRecord {
    /// Longest response excerpt kept in the log.
    pub const EXCERPT_BYTES: usize = 512;

    /// A bounded, lossless-where-possible excerpt of a response body.
    pub fn excerpt(body: &[u8]) -> String {
        let cut = &body[..body.len().min(AttemptRecord::EXCERPT_BYTES)];
        String::from_utf8_lossy(cut).into_owned()
    }
}

/// `host:port` of a url (lowercase), or the url itself when it does not parse.
pub fn destination_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{}:{port}", host.to_ascii_lowercase()),
            (Some(host), None) => host.to_ascii_lowercase(),
            _ => url.to_string(),
        },
        Err(_) => url.to_string(),
    }
}

#[cfg(any(test, feature = "fixtures"))]
impl Delivery {
    /// A fresh pending Rabo delivery with fixed ids (1, event 2) and plain values: the one test
    /// fixture every crate's tests start from (`..Delivery::fixture()`), so a new field is
    /// added in one place.
    pub fn fixture() -> Delivery {
        Delivery {
            id: Uuid::from_u128(1),
            event_id: Uuid::from_u128(2),
            api: Api::Rabo,
            subscription_id: "s".into(),
            trigger: "payment_order.finalized".into(),
            method: "POST".into(),
            url: "https://receiver.example/hook".into(),
            http2: false,
            headers: vec![("content-type".into(), "application/json".into())],
            body: "{\"a\":1}".into(),
            destination: "receiver.example:443".into(),
            occurred_at_ms: 5,
            created_at_ms: 6,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at_ms: Some(6),
            last_status: None,
            last_error: None,
            finished_at_ms: None,
            schedule_offset: 0,
            schedule: Some(Schedule::default()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pending() -> Delivery {
        Delivery {
            attempts: 3,
            next_attempt_at_ms: Some(7),
            last_status: Some(503),
            last_error: Some("busy".into()),
            schedule_offset: 1,
            ..Delivery::fixture()
        }
    }

    #[test]
    fn a_copy_is_superseded_by_more_attempts_or_an_end_under_the_same_schedule() {
        let fresh = Delivery { attempts: 0, schedule_offset: 0, ..pending() };
        let retried = Delivery { attempts: 1, schedule_offset: 0, ..pending() };
        assert!(retried.supersedes(&fresh), "a repeated event after its first attempt");
        assert!(!fresh.supersedes(&retried));
        assert!(!retried.supersedes(&retried), "the same retry again is not known to be done");
        let ended = Delivery { state: DeliveryState::Failed, next_attempt_at_ms: None, ..retried.clone() };
        assert!(ended.supersedes(&retried));
        let mut again = ended.clone();
        again.restart(9, Schedule::default());
        assert!(!ended.supersedes(&again), "a redelivery starts a new schedule");
    }

    #[test]
    fn a_retry_message_carries_the_whole_delivery() {
        let d = pending();
        assert_eq!(Delivery::from_retry_message(&d.to_retry_message()), Ok(d));
    }

    #[test]
    fn a_retry_message_written_before_schedules_were_kept_reads_with_none() {
        let d = pending();
        let mut old = serde_json::from_slice::<serde_json::Value>(&d.to_retry_message()).unwrap();
        old["delivery"].as_object_mut().unwrap().remove("schedule");
        let read = Delivery::from_retry_message(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(read, Delivery { schedule: None, ..d });
    }

    #[test]
    fn unreadable_retry_messages_say_why() {
        let d = pending();
        let reject = |bytes: &[u8], why: &str| {
            let e = Delivery::from_retry_message(bytes).unwrap_err();
            assert!(e.contains(why), "{e}");
        };
        reject(b"{", "not a webhookd retry message");
        let mut other = serde_json::from_slice::<serde_json::Value>(&d.to_retry_message()).unwrap();
        other["v"] = 2.into();
        reject(&serde_json::to_vec(&other).unwrap(), "version 2");
        let done = Delivery { state: DeliveryState::Delivered, ..d.clone() };
        reject(&done.to_retry_message(), "not pending");
        let moved = Delivery { destination: "elsewhere:80".into(), ..d };
        reject(&moved.to_retry_message(), "destination");
    }

    #[test]
    fn destinations_are_host_and_port() {
        assert_eq!(destination_of("https://Example.com/x"), "example.com:443");
        assert_eq!(destination_of("http://127.0.0.1:8080/a?b"), "127.0.0.1:8080");
        assert_eq!(destination_of("not a url"), "not a url");
    }
}
