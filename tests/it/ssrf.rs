//! Destinations that point inside are refused at subscription time and again at connect time.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::RaboEventType;
use webhookd_harness::receiver::Receiver;

use crate::support::*;

#[tokio::test]
async fn urls_are_refused_by_scheme_and_by_address() {
    let names = Names::new("ssrf");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.destinations.allow_http = false;
    c.destinations.allow = vec![];
    let node = Node::start(c).await;
    let m1 = node.token("u1", Some("m-1"), &[]).await;
    for url in [
        "http://example.com/hook",
        "https://127.0.0.1/x",
        "https://2130706433/x",
        "https://0177.0.0.1/x",
        "https://0x7f.1/x",
        "https://10.0.0.1/x",
        "https://172.16.5.4/x",
        "https://192.168.0.1/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://100.64.0.1/x",
        "https://[::1]/x",
        "https://[fe80::1]/x",
        "https://[fd00::1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[::ffff:10.0.0.1]/x",
        "https://[64:ff9b::a00:1]/x",
        "https://localhost/x",
        "https://user:secret@example.com/x",
        "ftp://example.com/x",
        "/relative",
    ] {
        let body = json!({"status": "enabled", "url": url, "eventTypes": ["test/v1"]});
        let a = node.call("POST", "/v3/webhooks/subscriptions", Some(&m1), Some(body)).await;
        assert_eq!(a.status, 400, "{url} must be refused: {}", a.text);
        assert!(a.body["detail"].as_str().unwrap().contains("url"), "{}", a.text);
    }
    assert_eq!(node.store.subscriptions().count(), 0, "nothing refused was stored");
    node.stop().await;
}

#[tokio::test]
async fn the_engine_refuses_a_stored_destination_that_resolves_inside() {
    // A subscription that got into the store pointing at a name that resolves to loopback (as
    // after a DNS change): the delivery engine refuses to connect, the receiver gets nothing.
    // `localhost` is refused by name before any lookup; a name of this machine's hosts file that
    // stands for 127.0.0.1 (where there is one) takes the resolver's path at connect time.
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("ssrfdns");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.destinations.allow = vec![];
    c.retry.retries = 1;
    c.retry.initial_delay_ms = 100;
    let node = Node::start(c).await;
    let port = receiver.addr().port();
    let sub = rabo("m-1", &format!("http://localhost:{port}/inside"), &[RaboEventType::OrderFinalized]);
    node.put(sub.clone()).await;
    let literal = rabo("m-1", &receiver.url("/literal"), &[RaboEventType::OrderFinalized]);
    node.put(literal.clone()).await;
    let mut subscriptions = vec![sub.id(), literal.id()];
    let hosts_name =
        crate::ssrf_forms::inside_names_from_hosts_file().into_iter().find(|(_, ip)| ip == "127.0.0.1");
    if let Some((name, _)) = hosts_name {
        let named = rabo("m-1", &format!("http://{name}:{port}/named"), &[RaboEventType::OrderFinalized]);
        node.put(named.clone()).await;
        subscriptions.push(named.id());
    }
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    for id in subscriptions {
        let failed = node.wait_state(event, &id, DeliveryState::Failed).await;
        assert_eq!(failed.attempts, 2);
        let error = failed.last_error.unwrap();
        assert!(error.contains("refused destination") && error.contains("loopback"), "{error}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(receiver.received().is_empty(), "no request reached the inside address");
    node.stop().await;
}
