//! Pending retries outlive subscription changes and restarts; the broker may come and go.

use std::time::Duration;

use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::{RaboEventType, RaboStatus, Subscription, Trigger};
use webhookd_harness::broker::{free_broker_port, Broker};
use webhookd_harness::receiver::{Receiver, Reply, Script};
use webhookd_store::Change;

use crate::support::*;

#[tokio::test]
async fn pending_retries_continue_after_disable_delete_and_url_change() {
    let receiver = Receiver::start().await.unwrap();
    for path in ["/disabled", "/deleted", "/moved-old"] {
        receiver.script(path, Script::fail_then(1, Reply::status(503), Reply::ack()));
    }
    let names = Names::new("pending");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.retry.initial_delay_ms = 1_500;
    let node = Node::start(c).await;
    let disabled =
        rabo("m-1", &receiver.url("/disabled"), &[RaboEventType::OrderFinalized, RaboEventType::Test]);
    let deleted = rabo("m-1", &receiver.url("/deleted"), &[RaboEventType::OrderFinalized]);
    let moved = obp("acc-1", Trigger::OnBalanceChange, &receiver.url("/moved-old"));
    let marker = rabo("m-1", &receiver.url("/marker"), &[RaboEventType::Test]);
    for s in [&disabled, &deleted, &moved, &marker] {
        node.put(s.clone()).await;
    }
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let order = Uuid::new_v4();
    publisher.event(&order_event(order, "m-1")).await;
    let balance = Uuid::new_v4();
    publisher.event(&balance_event(balance, "acc-1", "3.00")).await;
    for path in ["/disabled", "/deleted", "/moved-old"] {
        receiver.wait_for(Some(path), 1, HANG).await.unwrap();
    }

    // While the retries are pending: disable, delete, change the url.
    let Subscription::Rabo(mut off) = disabled.clone() else { unreachable!() };
    off.status = RaboStatus::Disabled;
    node.put(Subscription::Rabo(off)).await;
    node.store.apply(Change::Delete { id: deleted.id(), owner: None }).await.unwrap();
    let Subscription::Obp(mut changed) = moved.clone() else { unreachable!() };
    changed.url = receiver.url("/moved-new");
    node.put(Subscription::Obp(changed)).await;

    // The pending retries still arrive, at the urls they were queued for.
    node.wait_state(order, &disabled.id(), DeliveryState::Delivered).await;
    node.wait_state(order, &deleted.id(), DeliveryState::Delivered).await;
    node.wait_state(balance, &moved.id(), DeliveryState::Delivered).await;
    for path in ["/disabled", "/deleted", "/moved-old"] {
        assert_eq!(
            receiver.received_on(path).iter().map(|r| r.status_sent).collect::<Vec<_>>(),
            [503, 200],
            "{path}"
        );
    }
    assert!(receiver.received_on("/moved-new").is_empty());

    // New events: nothing for the disabled or deleted subscriptions; the moved one uses its new url.
    let order2 = Uuid::new_v4();
    publisher.event(&order_event(order2, "m-1")).await;
    publisher.event(&balance_event(Uuid::new_v4(), "acc-1", "4.00")).await;
    publisher.event(&test_event(Uuid::new_v4(), "m-1")).await;
    receiver.wait_for(Some("/marker"), 1, HANG).await.unwrap();
    receiver.wait_for(Some("/moved-new"), 1, HANG).await.unwrap();
    assert!(node.deliveries(order2).is_empty());
    assert_eq!(receiver.received_on("/disabled").len(), 2);
    assert_eq!(receiver.received_on("/deleted").len(), 2);
    node.stop().await;
}

#[tokio::test]
async fn pending_retries_survive_a_restart() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/hook", Script::fail_then(1, Reply::status(503), Reply::ack()));
    let names = Names::new("restart");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    // Long enough for a reading of the broker's queues (every 5 s) to find it in its tier.
    c.retry.initial_delay_ms = 8_000;
    let node = Node::start(c.clone()).await;
    let sub = rabo("m-1", &receiver.url("/hook"), &[RaboEventType::OrderFinalized]);
    node.put(sub.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    receiver.wait_for(Some("/hook"), 1, HANG).await.unwrap();
    node.wait_state(event, &sub.id(), DeliveryState::Pending).await;
    let metrics =
        wait_metrics(&node, &["webhookd_deliveries_pending 1", "webhookd_retries_waiting{queue=\"8000\"} 1"])
            .await;
    assert!(!metrics.contains("webhookd_oldest_pending_delivery_age_seconds 0\n"), "{metrics}");
    node.stop().await;

    let pending = webhookd_store::Store::open(&dir.path().join("store")).unwrap();
    let d = pending.deliveries_of_event(&event).unwrap().remove(0);
    assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 1));
    drop(pending);

    let node = Node::start(c).await;
    let got = receiver.wait_for(Some("/hook"), 2, HANG).await.unwrap();
    assert_eq!(got[1].status_sent, 200);
    let due = d.next_attempt_at_ms.unwrap();
    let sent = got[1].at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(sent + 50 >= due, "the retry fired at its due time, not before ({sent} < {due})");
    node.wait_state(event, &sub.id(), DeliveryState::Delivered).await;
    node.stop().await;
}

/// issue 18: restarting with fewer retries ended deliveries already past the new count at
/// their next attempt. A delivery keeps the schedule it was created with; new ones get the new.
#[tokio::test]
async fn a_pending_delivery_keeps_its_retry_schedule_when_a_restart_shortens_it() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/kept", Script::fail_then(3, Reply::status(503), Reply::ack()));
    receiver.script("/new", Script::always(Reply::status(503)));
    let names = Names::new("schedule-kept");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.retry.initial_delay_ms = 2_000;
    c.retry.factor = 1.0;
    c.retry.retries = 5;
    let node = Node::start(c.clone()).await;
    let kept = rabo("m-1", &receiver.url("/kept"), &[RaboEventType::OrderFinalized]);
    node.put(kept.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let old = Uuid::new_v4();
    publisher.event(&order_event(old, "m-1")).await;
    receiver.wait_for(Some("/kept"), 1, HANG).await.unwrap();
    node.wait_state(old, &kept.id(), DeliveryState::Pending).await;
    node.stop().await;

    // One retry now: the pending delivery still has its five.
    c.retry.retries = 1;
    let node = Node::start(c).await;
    let d = node.wait_state(old, &kept.id(), DeliveryState::Delivered).await;
    assert_eq!(d.attempts, 4, "three failures, then the receiver's ack");
    assert_eq!(d.schedule.map(|s| s.retries), Some(5));

    // A delivery created now gets the new schedule: two attempts, then failed.
    let Subscription::Rabo(mut moved) = kept.clone() else { unreachable!() };
    moved.url = receiver.url("/new");
    node.put(Subscription::Rabo(moved)).await;
    let new = Uuid::new_v4();
    publisher.event(&order_event(new, "m-1")).await;
    let d = node.wait_state(new, &kept.id(), DeliveryState::Failed).await;
    assert_eq!((d.attempts, d.schedule.map(|s| s.retries)), (2, Some(1)));
    assert_eq!(receiver.received_on("/new").len(), 2);
    node.stop().await;
}

#[tokio::test]
async fn a_broker_restart_loses_nothing_and_the_pending_retry_survives_it() {
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
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/retry", Script::fail_then(1, Reply::status(503), Reply::ack()));
    let names = Names::new("broker");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &url, dir.path());
    c.retry.initial_delay_ms = 3_000;
    let node = Node::start(c).await;
    node.put(rabo("m-1", &receiver.url("/orders"), &[RaboEventType::OrderFinalized])).await;
    let retry_sub = obp("acc-1", Trigger::OnBalanceChange, &receiver.url("/retry"));
    let retry_sub_id = retry_sub.id();
    node.put(retry_sub).await;

    let publisher = Publisher::connect(&url, &names.exchange).await;
    let retried = Uuid::new_v4();
    publisher.event(&balance_event(retried, "acc-1", "1.00")).await;
    let mut events = Vec::new();
    for _ in 0..50 {
        let id = Uuid::new_v4();
        publisher.event(&order_event(id, "m-1")).await;
        events.push(id);
    }
    receiver.wait_for(Some("/retry"), 1, HANG).await.unwrap();
    drop(publisher);

    // The broker goes away with the retry waiting in its tier (3 s).
    let broker = tokio::task::spawn_blocking(move || broker.stop().map(|_| broker)).await.unwrap().unwrap();
    wait_metrics(&node, &["webhookd_amqp_connected 0"]).await;
    assert!(!node.running.ingest.connected.load(std::sync::atomic::Ordering::Relaxed));
    // Readiness follows the broker: not ready while it is away, alive all along.
    let ready = node.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(ready.body["reason"].as_str().unwrap().contains("broker"));
    assert_eq!(node.call("GET", "/healthz", None, None).await.status, 200);
    let metrics = wait_metrics(&node, &["webhookd_amqp_connected 0"]).await;
    // The stopped broker closed the connection under webhookd (or cancelled its consumer first).
    let lost = ["broken", "consumer_cancelled"].iter().map(|cause| {
        let series = format!("webhookd_amqp_connection_losses_total{{cause=\"{cause}\"}}");
        webhookd_harness::replay::metric_value(&metrics, &series).unwrap()
    });
    assert!(lost.sum::<f64>() >= 1.0, "{metrics}");
    let broker =
        tokio::task::spawn_blocking(move || broker.start_again().map(|_| broker)).await.unwrap().unwrap();

    node.wait_consuming().await;
    // Ready again once the catalog has caught up too (its applier reconnects on its own).
    wait_ready(&node.running.http_addr.to_string()).await;
    wait_metrics(&node, &["webhookd_amqp_consumers 1"]).await;
    // The retry was held by the broker across its restart, and is sent now.
    receiver.wait_for(Some("/retry"), 2, HANG).await.unwrap();
    node.wait_state(retried, &retry_sub_id, DeliveryState::Delivered).await;
    let publisher = Publisher::connect(&url, &names.exchange).await;
    for _ in 0..50 {
        let id = Uuid::new_v4();
        publisher.event(&order_event(id, "m-1")).await;
        events.push(id);
    }
    let got = receiver.wait_for(Some("/orders"), events.len(), HANG).await.unwrap();
    let mut seen: Vec<String> =
        got.iter().map(|r| r.json().unwrap()["id"].as_str().unwrap().to_string()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), events.len(), "every event delivered");
    node.stop().await;
    drop(broker);
}

#[tokio::test]
async fn a_receiver_that_hangs_holds_no_events_its_deliveries_wait_in_the_broker() {
    let receiver = Receiver::start().await.unwrap();
    // Every attempt hangs until the 3 s timeout; the destination has one slot.
    receiver.script("/slow", Script::always(Reply::Hang));
    let names = Names::new("intake-bound");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.delivery.max_in_flight_per_destination = 1;
    c.delivery.defer_ms = 200;
    // Deliveries that arrive before anything is known of the receiver wait at most twice this;
    // after that its hanging attempt is known and each one is deferred at once.
    c.delivery.slot_wait_ms = 500;
    let node = Node::start(c.clone()).await;
    node.put(obp("acc-bound", Trigger::OnBalanceChange, &receiver.url("/slow"))).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        publisher.event(&balance_event(*id, "acc-bound", "1.00")).await;
    }
    // Every event is taken and acknowledged while the receiver still hangs: what waits for the
    // destination's one slot waits in the deferral tier, not in webhookd.
    let deferred = || async {
        let text = scrape(&node).await;
        webhookd_harness::replay::metric_value(&text, "webhookd_deliveries_deferred_total").unwrap_or(0.0)
    };
    let waited = std::time::Instant::now();
    while deferred().await < 19.0 {
        assert!(waited.elapsed() < HANG, "deliveries to the hanging receiver were not deferred");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stopped now, what it had not acknowledged goes back to the queue: only the event whose
    // attempt still hangs.
    node.stop().await;
    let returned = publisher.queue_depth(&names.queue).await;
    assert!(returned <= 1, "{returned} events were held for the slow receiver");

    // Once the receiver answers, the deferred deliveries are sent: nothing is lost.
    receiver.script("/slow", Script::always(Reply::ack()));
    let node = Node::start(c).await;
    let sub = node.store.subscriptions().next().unwrap().unwrap().id();
    for id in &ids {
        node.wait_state(*id, &sub, DeliveryState::Delivered).await;
    }
    node.stop().await;
}
