//! Housekeeping: retention removes only finished deliveries; a subscription that only fails is
//! disabled while its pending retries go on.

use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::{RaboEventType, Subscription};
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::support::*;

#[tokio::test]
async fn retention_prunes_finished_deliveries_and_failing_subscriptions_are_disabled() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/bad", Script::always(Reply::status(500)));
    let names = Names::new("maint");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.maintenance.interval_seconds = 1;
    c.retention.keep_finished_seconds = 0;
    c.auto_disable.failing_for_seconds = 1;
    c.retry.retries = 6;
    c.retry.initial_delay_ms = 300;
    let node = Node::start(c).await;
    let ok = rabo("m-1", &receiver.url("/ok"), &[RaboEventType::OrderFinalized]);
    let bad = rabo("m-1", &receiver.url("/bad"), &[RaboEventType::OrderFinalized]);
    node.put(ok.clone()).await;
    node.put(bad.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    receiver.wait_for(Some("/ok"), 1, HANG).await.unwrap();

    // The failing subscription is disabled after a second of failures...
    let store = node.store.clone();
    let bad_id = bad.id();
    eventually("the failing subscription to be disabled", HANG, || {
        store.subscription(&bad_id).unwrap().is_some_and(|s| !s.is_active())
    })
    .await;
    let at_disable = receiver.received_on("/bad").len();
    assert!(
        matches!(node.store.subscription(&ok.id()).unwrap(), Some(Subscription::Rabo(s)) if s.status == webhookd_core::subscription::RaboStatus::Enabled)
    );
    // ...and its pending retries continue.
    receiver.wait_for(Some("/bad"), at_disable + 1, HANG).await.unwrap();
    let pending = node.deliveries(event).into_iter().find(|d| d.subscription_id == bad.id()).unwrap();
    assert_eq!(pending.state, DeliveryState::Pending, "never pruned while pending");

    // The delivered one is removed by retention, with its log.
    let store = node.store.clone();
    let ok_id = ok.id();
    eventually("the delivered delivery to be pruned", HANG, || {
        store.deliveries_of_event(&event).unwrap().iter().all(|d| d.subscription_id != ok_id)
    })
    .await;
    wait_metrics(
        &node,
        &[
            r#"webhookd_subscriptions_auto_disabled_total{api="rabo"} 1"#,
            "webhookd_deliveries_pruned_total 1",
            r#"webhookd_subscriptions{api="rabo",state="inactive"} 1"#,
        ],
    )
    .await;
    node.stop().await;
}
