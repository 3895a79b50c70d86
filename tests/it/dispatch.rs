//! The dispatch side on a real broker and real receivers: a failed attempt waits in a tier and
//! comes due; any replica sends it, to the url it was queued for, even one that never saw the
//! subscription; a destination at its limit defers without counting an attempt and holds up no
//! other destination.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;
use webhookd_core::clock::Clock;
use webhookd_core::delivery::{Delivery, DeliveryState};
use webhookd_core::destination::DestinationPolicy;
use webhookd_core::event::Event;
use webhookd_core::matching::match_keys;
use webhookd_core::retry::RetryPolicy;
use webhookd_core::signing::KeyRing;
use webhookd_core::subscription::Target;
use webhookd_delivery::{DeliverySettings, Dispatch, Follower, Handled};
use webhookd_harness::receiver::{Receiver, Reply, Script};
use webhookd_metrics::Metrics;
use webhookd_store::Store;

use crate::support::{amqp_url, eventually, HANG};

/// One replica's dispatch side over its own store; all share the test's queues.
struct Replica {
    dispatch: Dispatch,
    store: Store,
    metrics: Arc<Metrics>,
    _follower: AbortOnDropHandle<()>,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Declares what the dispatch side publishes to on `channel`, starts reading back the
    /// delivery log records appended from now on (on a channel of `connection`; it ends with
    /// the connection), and makes `channel` the one delivery log entries are appended through
    /// (what the ingestion does at each connect).
    async fn attach(&self, connection: &Connection, channel: &Channel) {
        self.dispatch.declare(channel).await.unwrap();
        let receipts = connection.create_channel().await.unwrap();
        drop(self.dispatch.read_receipts(receipts).await.unwrap());
        self.dispatch.outlet().set(Some(channel.clone()));
    }
}

fn settings(test: &str, per_destination: usize) -> DeliverySettings {
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    DeliverySettings {
        retry_queue_prefix: format!("it.{test}.{tag}.retry"),
        due_queue: format!("it.{test}.{tag}.due"),
        log_stream: format!("it.{test}.{tag}.log"),
        max_in_flight_per_destination: per_destination,
        timeout_ms: 60_000,
        connect_timeout_ms: 1_000,
        defer_ms: 300,
        slot_wait_ms: 300,
        ..DeliverySettings::default()
    }
}

fn retry() -> RetryPolicy {
    RetryPolicy { initial_delay_ms: 300, factor: 2.0, retries: 2, ..RetryPolicy::default() }
}

fn replica(settings: &DeliverySettings, keys: &KeyRing) -> Replica {
    replica_with(settings, keys, retry())
}

fn replica_with(settings: &DeliverySettings, keys: &KeyRing, retry: RetryPolicy) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(dir.path()).unwrap();
    let policy = DestinationPolicy { allow_http: true, allow: vec!["127.0.0.1/32".into()] };
    let (dispatch, _recorder) = Dispatch::new(
        store.clone(),
        settings,
        retry,
        webhookd_core::signing::SharedKeys::new(keys.clone()),
        Clock::real(),
        metrics.clone(),
        Arc::new(policy),
    )
    .unwrap();
    // Its view of the delivery log, folded from the stream every replica appends to.
    let follower = Follower::new(store.clone(), settings, amqp_url(), Clock::real(), metrics.clone());
    let follower = AbortOnDropHandle::new(tokio::spawn(async move {
        let _ = follower.run(CancellationToken::new()).await;
    }));
    Replica { dispatch, store, metrics, _follower: follower, _dir: dir }
}

async fn confirm_channel() -> (Connection, Channel) {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

/// A fresh delivery of a new balance event to `url` for subscription `subscription`, on the
/// schedule of [`retry`] (a delivery keeps the schedule it was created with).
fn delivery(subscription: &str, url: &str) -> Delivery {
    let body = format!(
        r#"{{"type":"balance.changed","event_id":"{}","occurred_at":"2026-12-07T10:00:00Z","bank_id":"gh.29.uk","account_id":"acc-1","amount":"1.00","currency":"EUR","balance":"1.00"}}"#,
        Uuid::new_v4()
    );
    let event = Event::decode(body.as_bytes(), 4096).unwrap();
    let key = match_keys(&event).remove(0);
    let target = Target {
        subscription_id: subscription.into(),
        url: url.into(),
        http_method: "POST".into(),
        http2: false,
        description: None,
    };
    Delivery::new(&event, &key, &target, Clock::real().now_ms(), retry().schedule())
}

/// The next retry that comes due, acknowledged.
async fn next_due(channel: &Channel, queue: &str) -> Delivery {
    channel.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let tag = Uuid::new_v4().to_string();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let message =
        tokio::time::timeout(HANG, consumer.next()).await.expect("a retry came due").unwrap().unwrap();
    message.ack(BasicAckOptions::default()).await.unwrap();
    channel.basic_cancel(tag.as_str().into(), Default::default()).await.unwrap();
    Delivery::from_retry_message(&message.data).unwrap()
}

#[tokio::test]
async fn a_failed_attempt_waits_in_a_tier_and_a_replica_that_never_saw_the_subscription_sends_it() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/hook", Script::fail_then(1, Reply::status(503), Reply::ack()));
    let settings = settings("dispatch", 4);
    let keys = KeyRing::generate(0);
    let first = replica(&settings, &keys);
    let (connection, channel) = confirm_channel().await;
    first.attach(&connection, &channel).await;

    let d = delivery("sub-1", &receiver.url("/hook"));
    let handled = first.dispatch.deliver(d.clone(), &channel).await.unwrap();
    assert_eq!(handled, Handled::Retrying { queue: first.dispatch.queues().queue_for(300) });

    // The first replica is gone with its store; another, with an empty store, takes the retry.
    drop(first);
    let second = replica(&settings, &keys);
    second.attach(&connection, &channel).await;
    let due = next_due(&channel, settings.due_queue.as_str()).await;
    assert_eq!((due.id, due.attempts, due.url.as_str()), (d.id, 1, d.url.as_str()));
    assert_eq!(second.dispatch.deliver(due, &channel).await.unwrap(), Handled::Delivered);

    let got = receiver.wait_for(Some("/hook"), 2, HANG).await.unwrap();
    let ids: Vec<_> = got.iter().map(|r| r.header("webhook-id").unwrap_or_default().to_string()).collect();
    assert_eq!(ids, [d.id.to_string(), d.id.to_string()], "both attempts carry the delivery's id");
    // The second replica's delivery log knows the delivery it never created, and the attempt
    // the first (gone) replica made: both read the same delivery log stream.
    eventually("the log view has the delivery", HANG, || {
        second.store.delivery(&d.id).unwrap().is_some_and(|v| v.state == DeliveryState::Delivered)
    })
    .await;
    let attempts = second.store.attempts_of(&d.id).unwrap();
    assert_eq!(
        attempts.iter().map(|a| (a.attempt, a.status)).collect::<Vec<_>>(),
        [(1, Some(503)), (2, Some(200))]
    );
}

#[tokio::test]
async fn the_last_failed_attempt_ends_the_delivery_without_a_retry() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/down", Script::always(Reply::status(500)));
    let settings = settings("dispatch-end", 4);
    let keys = KeyRing::generate(0);
    let replica = replica(&settings, &keys);
    let (connection, channel) = confirm_channel().await;
    replica.attach(&connection, &channel).await;
    let mut d = delivery("sub-1", &receiver.url("/down"));
    for attempt in 1..=3 {
        let handled = replica.dispatch.deliver(d.clone(), &channel).await.unwrap();
        if attempt < 3 {
            assert!(matches!(handled, Handled::Retrying { .. }), "attempt {attempt}: {handled:?}");
            d = next_due(&channel, &settings.due_queue).await;
            assert_eq!(d.attempts, attempt);
        } else {
            assert_eq!(handled, Handled::Ended(DeliveryState::Failed));
        }
    }
    eventually("the log view shows it failed", HANG, || {
        replica.store.delivery(&d.id).unwrap().is_some_and(|v| v.state == DeliveryState::Failed)
    })
    .await;
}

#[tokio::test]
async fn a_destination_at_its_limit_defers_without_an_attempt_and_holds_up_no_other() {
    let slow = Receiver::start().await.unwrap();
    slow.script("/slow", Script::always(Reply::Hang));
    let fast = Receiver::start().await.unwrap();
    let settings = settings("dispatch-defer", 1);
    let keys = KeyRing::generate(0);
    let replica = replica(&settings, &keys);
    let (connection, channel) = confirm_channel().await;
    replica.attach(&connection, &channel).await;

    // The slow destination's only slot is taken by an attempt that gets no answer.
    let stuck = delivery("sub-slow", &slow.url("/slow"));
    let hanging = tokio::spawn({
        let (dispatch, channel) = (replica.dispatch.clone(), channel.clone());
        async move { dispatch.deliver(stuck, &channel).await }
    });
    slow.wait_for(Some("/slow"), 1, HANG).await.unwrap();
    let slow_destination = webhookd_core::delivery::destination_of(&slow.url("/"));
    assert_eq!(replica.dispatch.slots().state(&slow_destination), Some((1, 1)));

    // The next delivery there is deferred through the broker, its attempts untouched.
    let waiting = delivery("sub-slow", &slow.url("/slow"));
    let handled = replica.dispatch.deliver(waiting.clone(), &channel).await.unwrap();
    assert_eq!(handled, Handled::Deferred { queue: replica.dispatch.queues().defer_queue() });
    let deferred = next_due(&channel, &settings.due_queue).await;
    assert_eq!((deferred.id, deferred.attempts), (waiting.id, 0), "deferral counts no attempt");

    // Another destination's deliveries complete while the slow one is still at its limit.
    for _ in 0..5 {
        let d = delivery("sub-fast", &fast.url("/fast"));
        assert_eq!(replica.dispatch.deliver(d, &channel).await.unwrap(), Handled::Delivered);
    }
    assert_eq!(replica.dispatch.slots().state(&slow_destination), Some((1, 1)), "still at its limit");
    assert_eq!(slow.received_on("/slow").len(), 1, "the deferred one was never sent");
    hanging.abort();
}

#[tokio::test]
async fn the_retries_waiting_in_each_tier_and_how_late_they_came_are_read_into_the_metrics() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/busy", Script::always(Reply::status(503)));
    let settings = settings("dispatch-waiting", 4);
    let keys = KeyRing::generate(0);
    // A first retry a minute away: it sits in its tier while the metrics are read.
    let slow = RetryPolicy { initial_delay_ms: 60_000, factor: 2.0, retries: 2, ..RetryPolicy::default() };
    let slow_schedule = slow.schedule();
    let replica = replica_with(&settings, &keys, slow);
    let (connection, channel) = confirm_channel().await;
    replica.attach(&connection, &channel).await;

    // A retry taken 5 s after it was due, sent, and handed to the 60 s tier.
    let mut late = delivery("sub-1", &receiver.url("/busy"));
    late.schedule = Some(slow_schedule);
    late.attempts = 1;
    late.next_attempt_at_ms = Some(Clock::real().now_ms() - 5_000);
    let handled = replica.dispatch.deliver(late, &channel).await.unwrap();
    assert_eq!(handled, Handled::Retrying { queue: replica.dispatch.queues().queue_for(120_000) });
    let first = Delivery { schedule: Some(slow_schedule), ..delivery("sub-1", &receiver.url("/busy")) };
    replica.dispatch.deliver(first, &channel).await.unwrap();

    let readings = connection.create_channel().await.unwrap();
    replica.dispatch.read_waiting(&readings).await.unwrap();
    let waiting = |queue: &str| replica.metrics.retries_waiting.with_label_values(&[queue]).get();
    assert_eq!((waiting("60000"), waiting("120000"), waiting("due")), (1, 1, 0));
    assert!(replica.metrics.due_lateness.get() >= 5.0, "{}", replica.metrics.due_lateness.get());
    // Each reading starts the lateness again.
    replica.dispatch.read_waiting(&readings).await.unwrap();
    assert_eq!(replica.metrics.due_lateness.get(), 0.0);
}
