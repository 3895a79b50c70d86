//! The broker's retry tiers on a real RabbitMQ: a retry waits in the tier its wait rounds up to,
//! reaches the due queue when its TTL ends, in the order of the tiers, and survives a broker
//! restart.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use uuid::Uuid;
use webhookd_core::clock::Clock;
use webhookd_core::delivery::Delivery;
use webhookd_core::retry::RetryPolicy;
use webhookd_delivery::{DeliverySettings, TierQueues};
use webhookd_harness::broker::{free_broker_port, Broker};

use crate::support::{amqp_url, HANG};

fn queues(test: &str, retry: &RetryPolicy, defer_ms: u64) -> TierQueues {
    let tag = &Uuid::new_v4().simple().to_string()[..8];
    let settings = DeliverySettings {
        retry_queue_prefix: format!("it.{test}.{tag}.retry"),
        due_queue: format!("it.{test}.{tag}.due"),
        defer_ms,
        ..DeliverySettings::default()
    };
    TierQueues::new(&settings, retry, &Clock::real())
}

fn pending(n: u128, due_at_ms: u64) -> Delivery {
    Delivery {
        id: Uuid::from_u128(n),
        event_id: Uuid::new_v4(),
        url: "http://127.0.0.1:9/hook".into(),
        headers: Vec::new(),
        body: format!("{{\"n\":{n}}}"),
        destination: "127.0.0.1:9".into(),
        attempts: 1,
        next_attempt_at_ms: Some(due_at_ms),
        last_status: Some(503),
        ..Delivery::fixture()
    }
}

async fn confirm_channel(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    (connection, channel)
}

/// Reads retry messages from the due queue, in arrival order, until `count` distinct deliveries
/// came (at-least-once dead-lettering may move one twice: a repeat is read, not counted).
async fn take_due(channel: &Channel, queues: &TierQueues, count: usize) -> Vec<(Delivery, u64)> {
    channel.basic_qos(1_000, BasicQosOptions::default()).await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queues.due_queue().into(),
            "it".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut distinct = HashSet::new();
    while distinct.len() < count {
        let message = tokio::time::timeout(HANG, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} retries came due", distinct.len()))
            .unwrap()
            .unwrap();
        let arrived = Clock::real().now_ms();
        let d = Delivery::from_retry_message(&message.data).unwrap();
        if distinct.insert(d.id) {
            got.push((d, arrived));
        }
        message.ack(BasicAckOptions::default()).await.unwrap();
    }
    got
}

#[tokio::test]
async fn retries_come_due_in_the_order_of_their_tiers_and_never_before_their_wait() {
    let retry = RetryPolicy { initial_delay_ms: 400, factor: 2.0, retries: 3, ..RetryPolicy::default() };
    let queues = queues("tiers", &retry, 200);
    let ttls: Vec<u64> = queues.tiers().iter().map(|(ttl, _)| *ttl).collect();
    assert_eq!(ttls, [200, 400, 800, 1_600]);
    let (_connection, channel) = confirm_channel(&amqp_url()).await;
    queues.declare(&channel).await.unwrap();
    // Declaring again is a no-op (every replica declares at each connect).
    queues.declare(&channel).await.unwrap();

    // Handed over longest wait first: they still come due shortest first.
    let start = Clock::real().now_ms();
    let waits = [1_500u64, 700, 300, 0];
    for (n, wait) in waits.iter().enumerate() {
        let queue = queues.queue_for(*wait);
        TierQueues::hand_over(&channel, &queue, &pending(n as u128, start + wait)).await.unwrap();
    }
    let due = take_due(&channel, &queues, waits.len()).await;
    let order: Vec<u128> = due.iter().map(|(d, _)| d.id.as_u128()).collect();
    assert_eq!(order, [3, 2, 1, 0], "the shortest tier first");
    for (d, arrived) in &due {
        let asked = d.next_attempt_at_ms.unwrap();
        assert!(*arrived >= asked, "delivery {} came due {} ms early", d.id, asked - arrived);
        assert_eq!(d.body, format!("{{\"n\":{}}}", d.id.as_u128()), "the message carries the delivery");
    }
}

#[tokio::test]
async fn a_message_for_a_queue_that_does_not_exist_is_refused_not_lost() {
    let queues = queues("tiers-missing", &RetryPolicy::default(), 1_000);
    let (_connection, channel) = confirm_channel(&amqp_url()).await;
    // Nothing declared: no queue takes it, and the hand-over says so.
    let refused = TierQueues::hand_over(&channel, &queues.queue_for(2_000), &pending(1, 0)).await;
    assert!(
        matches!(refused, Err(webhookd_delivery::tier_queues::HandOverError::Refused { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_broker_restart_with_thousands_of_retries_in_tiers_loses_none() {
    let broker_dir = tempfile::tempdir().unwrap();
    let port = free_broker_port().unwrap();
    let broker = tokio::task::spawn_blocking({
        let path = broker_dir.path().to_path_buf();
        move || Broker::start(port, &path)
    })
    .await
    .unwrap()
    .unwrap();
    let url = broker.url().to_string();
    let retry = RetryPolicy { initial_delay_ms: 4_000, factor: 2.0, retries: 2, ..RetryPolicy::default() };
    let queues = queues("tiers-restart", &retry, 1_000);
    let (connection, channel) = confirm_channel(&url).await;
    queues.declare(&channel).await.unwrap();
    const COUNT: u128 = 3_000;
    let now = Clock::real().now_ms();
    for n in 0..COUNT {
        let wait = if n % 2 == 0 { 4_000 } else { 8_000 };
        TierQueues::hand_over(&channel, &queues.queue_for(wait), &pending(n, now + wait)).await.unwrap();
    }
    drop(channel);
    let _ = connection.close(0, "restart".into()).await;

    // Restarted while they wait (some may expire while it is down: they move when it is up).
    let _broker = tokio::task::spawn_blocking(move || {
        broker.restart().unwrap();
        broker
    })
    .await
    .unwrap();
    let (_connection, channel) = confirm_channel(&url).await;
    let due = take_due(&channel, &queues, COUNT as usize).await;
    let ids: HashSet<u128> = due.iter().map(|(d, _)| d.id.as_u128()).collect();
    assert_eq!(ids, (0..COUNT).collect::<HashSet<u128>>(), "every retry came due once the broker was back");
    // At-least-once dead-lettering may repeat a move, never drop one: nothing is left behind.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (_, name) in queues.tiers() {
        let q = channel
            .queue_declare(
                name.as_str().into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(q.message_count(), 0, "{name} still holds retries");
    }
}
