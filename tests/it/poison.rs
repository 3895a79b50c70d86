//! Every kind of poison message is dead-lettered with its reason; the consumer goes on.

use lapin::types::AMQPValue;
use uuid::Uuid;
use webhookd_core::subscription::RaboEventType;
use webhookd_harness::receiver::Receiver;

use crate::support::*;

fn header(message: &lapin::message::Delivery, name: &str) -> String {
    let headers = message.properties.headers().clone().unwrap_or_default();
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name}: {other:?}"),
    }
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason() {
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("poison");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.amqp.max_message_bytes = 1024;
    let node = Node::start(c).await;
    node.put(rabo("m-1", &receiver.url("/orders"), &[RaboEventType::OrderFinalized])).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;

    let mut missing = order_event(Uuid::new_v4(), "m-1");
    missing.as_object_mut().unwrap().remove("order_id");
    let mut bad_id = order_event(Uuid::new_v4(), "m-1");
    bad_id["event_id"] = "not-a-uuid".into();
    let mut huge = order_event(Uuid::new_v4(), "m-1");
    huge["metadata"] = "x".repeat(2000).into();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("order.finalized", b"{not json".to_vec(), "invalid_json"),
        ("order.finalized", vec![0xff, 0xfe, 0x00], "invalid_json"),
        ("order.finalized", b"[1,2,3]".to_vec(), "invalid_json"),
        ("account.closed", br#"{"type":"account.closed","event_id":"x"}"#.to_vec(), "unknown_type"),
        ("order.finalized", missing.to_string().into_bytes(), "missing_field"),
        ("order.finalized", bad_id.to_string().into_bytes(), "invalid_field"),
        ("order.finalized", huge.to_string().into_bytes(), "too_large"),
    ];
    for (key, body, _) in &cases {
        publisher.publish(key, body).await;
    }
    // The consumer keeps going: a valid event after the poison is delivered.
    let good = Uuid::new_v4();
    publisher.event(&order_event(good, "m-1")).await;
    receiver.wait_for(Some("/orders"), 1, HANG).await.unwrap();

    let dead = publisher.drain(&names.dead_queue, cases.len(), HANG).await;
    assert_eq!(dead.len(), cases.len());
    for ((key, body, code), message) in cases.iter().zip(&dead) {
        assert_eq!(&header(message, "x-webhookd-reason-code"), code);
        assert!(!header(message, "x-webhookd-reason").is_empty());
        assert_eq!(&header(message, "x-webhookd-original-routing-key"), key);
        assert_eq!(&message.data, body, "the message is kept unchanged");
    }
    assert!(header(&dead[4], "x-webhookd-reason").contains("order_id"));
    // A dead letter is counted once its publish is confirmed, which may be after the test has
    // already drained it: wait for the counts.
    let metrics = wait_metrics(
        &node,
        &[
            r#"webhookd_events_dead_lettered_total{reason="invalid_json"} 3"#,
            r#"webhookd_events_dead_lettered_total{reason="unknown_type"} 1"#,
            r#"webhookd_events_dead_lettered_total{reason="missing_field"} 1"#,
            r#"webhookd_events_dead_lettered_total{reason="invalid_field"} 1"#,
            r#"webhookd_events_dead_lettered_total{reason="too_large"} 1"#,
        ],
    )
    .await;
    assert!(metrics.contains("webhookd_events_consumed_total{type=\"invalid\"} 7"));
    assert!(metrics.contains("webhookd_events_consumed_total{type=\"order.finalized\"} 1"));
    assert_eq!(receiver.received_on("/orders").len(), 1);
    node.stop().await;
}

#[tokio::test]
async fn an_unreadable_retry_message_is_dead_lettered_with_its_reason() {
    let names = Names::new("poison-due");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    // Straight into the due queue through the default exchange, as a tier would hand it over.
    let direct = Publisher::connect(&amqp_url(), "").await;
    let bodies: [&[u8]; 2] = [b"{not json", br#"{"v":99,"delivery":{}}"#];
    for body in bodies {
        direct.publish(&names.due, body).await;
    }
    let dead = direct.drain(&names.dead_queue, bodies.len(), HANG).await;
    assert_eq!(dead.len(), bodies.len());
    for (body, message) in bodies.iter().zip(&dead) {
        assert_eq!(header(message, "x-webhookd-reason-code"), "bad_retry_message");
        assert!(header(message, "x-webhookd-reason").contains("retry message"));
        assert_eq!(&message.data, body, "the message is kept unchanged");
    }
    wait_metrics(&node, &[r#"webhookd_events_dead_lettered_total{reason="bad_retry_message"} 2"#]).await;
    node.stop().await;
}
