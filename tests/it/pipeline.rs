//! Payloads, headers and signatures of both APIs, fan-out, retries, and the outcome rules.

use std::time::Duration;

use base64::Engine as _;
use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::ids::rabo_event_id;
use webhookd_core::signing::verify;
use webhookd_core::subscription::{RaboEventType, Trigger};
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::support::*;

/// Checks a Standard Webhooks `v1a` signature with ed25519-dalek directly, as a receiver would.
fn check_ed25519(jwks: &serde_json::Value, id: &str, ts: &str, body: &[u8], header: &str) {
    let keys = verify::ed25519_public_keys(jwks);
    assert_eq!(keys.len(), 1, "one active Ed25519 key is published");
    let raw = base64::engine::general_purpose::STANDARD.decode(keys[0].trim_start_matches("whpk_")).unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&raw.try_into().unwrap()).unwrap();
    let sig = header.strip_prefix("v1a,").expect("a v1a signature");
    let sig = base64::engine::general_purpose::STANDARD.decode(sig).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    let signed = [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
    key.verify_strict(&signed, &sig).expect("Ed25519 signature verifies");
    verify::standard_webhooks(&keys[0], id, ts, body, header).unwrap();
}

/// Checks a detached JWS with the jsonwebtoken crate against the JWKS, as a receiver would.
fn check_jws(jwks: &serde_json::Value, jws: &str, body: &[u8]) {
    let (header, rest) = jws.split_once("..").expect("detached JWS has an empty payload part");
    let header_json: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap())
            .unwrap();
    assert_eq!(header_json["alg"], "ES256");
    let kid = header_json["kid"].as_str().unwrap();
    let jwk_value =
        jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).expect("kid in the JWKS");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk_value.clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let token = format!("{header}.{}.{rest}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).expect("JWS verifies");
    verify::detached_jws(jwks, jws, body).unwrap();
}

#[tokio::test]
async fn obp_webhooks_fire_by_amount_sign_with_exact_payload_and_signature() {
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("obp");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let (balance, credit, debit) =
        (receiver.url("/balance"), receiver.url("/credit"), receiver.url("/debit"));
    node.put(obp("acc-1", Trigger::OnBalanceChange, &balance)).await;
    node.put(obp("acc-1", Trigger::OnCreditTransaction, &credit)).await;
    node.put(obp("acc-1", Trigger::OnDebitTransaction, &debit)).await;
    node.put(obp("acc-2", Trigger::OnBalanceChange, &receiver.url("/other"))).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;

    let zero = Uuid::new_v4();
    publisher.event(&balance_event(zero, "acc-1", "0.00")).await;
    let credit_id = Uuid::new_v4();
    publisher.event(&balance_event(credit_id, "acc-1", "50.00")).await;
    let got = receiver.wait_for(None, 2, HANG).await.unwrap();
    let mut paths: Vec<_> = got.iter().map(|r| r.path.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/balance", "/credit"]);
    // Events are processed in order, so the zero amount was handled before: it fired nothing.
    assert!(node.deliveries(zero).is_empty());

    let r = &receiver.received_on("/credit")[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), Some("application/json; charset=utf-8"));
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        format!(
            r#"{{"event_name":"OnCreditTransaction","event_id":"{credit_id}","bank_id":"gh.29.uk","account_id":"acc-1","amount":"50.00 EUR","balance":"739.00 EUR"}}"#
        )
    );
    let (id, ts, sig) = (
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap(),
        r.header("webhook-signature").unwrap(),
    );
    check_ed25519(&node.jwks, id, ts, &r.body, sig);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - ts.parse::<i64>().unwrap()).abs() < 60);
    let b = &receiver.received_on("/balance")[0];
    assert_eq!(b.json().unwrap()["event_name"], "OnBalanceChange");
    assert_ne!(b.header("webhook-id"), Some(id), "each (subscription, trigger) is its own message");

    let debit_id = Uuid::new_v4();
    publisher.event(&balance_event(debit_id, "acc-1", "-12.30")).await;
    let got = receiver.wait_for(Some("/debit"), 1, HANG).await.unwrap();
    let body = got[0].json().unwrap();
    assert_eq!(body["event_name"], "OnDebitTransaction");
    assert_eq!(body["amount"], "-12.30 EUR");
    receiver.wait_for(Some("/balance"), 2, HANG).await.unwrap();
    assert_eq!(receiver.received_on("/credit").len(), 1);
    assert!(receiver.received_on("/other").is_empty());
    node.stop().await;
}

#[tokio::test]
async fn rabo_events_carry_the_envelope_and_a_detached_jws() {
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("rabo");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let orders = rabo("m-1", &receiver.url("/orders"), &[RaboEventType::OrderFinalized]);
    let tests = rabo("m-1", &receiver.url("/tests"), &[RaboEventType::Test]);
    let other = rabo("m-2", &receiver.url("/m2"), &[RaboEventType::OrderFinalized, RaboEventType::Test]);
    let orders_id = orders.id();
    node.put(orders).await;
    node.put(tests.clone()).await;
    node.put(other).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;

    let event_id = Uuid::new_v4();
    publisher.event(&order_event(event_id, "m-1")).await;
    let got = receiver.wait_for(Some("/orders"), 1, HANG).await.unwrap();
    let r = &got[0];
    let ev = rabo_event_id(event_id);
    assert_eq!(r.header("content-type"), Some("application/rabo-smartpay-webhook-v3+json"));
    assert_eq!(r.header("x-smartpay-event-type"), Some("order.finalized/v1"));
    assert_eq!(r.header("x-smartpay-event-id"), Some(ev.as_str()));
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        format!(
            r#"{{"id":"{ev}","type":"order.finalized/v1","subscription":{{"id":"{orders_id}","description":"shop hooks"}},"data":{{"orderId":"order-1","status":"COMPLETED","amount":{{"total":1250,"paid":1250}},"metadata":"cart 7"}},"timestamp":1795514400}}"#
        )
    );
    check_jws(&node.jwks, r.header("x-smartpay-signature").unwrap(), &r.body);
    let d = node.wait_state(event_id, &orders_id, DeliveryState::Delivered).await;
    assert_eq!(d.attempts, 1);

    let test_id = Uuid::new_v4();
    publisher.event(&test_event(test_id, "m-1")).await;
    let got = receiver.wait_for(Some("/tests"), 1, HANG).await.unwrap();
    assert_eq!(got[0].json().unwrap()["type"], "test/v1");
    check_jws(&node.jwks, got[0].header("x-smartpay-signature").unwrap(), &got[0].body);
    assert_eq!(receiver.received_on("/orders").len(), 1);
    assert!(receiver.received_on("/m2").is_empty(), "another merchant's subscriptions never match");

    // The JWKS the node serves is the one the tests verified with.
    let served = reqwest::get(format!("http://{}/.well-known/jwks.json", node.running.http_addr))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let served: serde_json::Value = serde_json::from_slice(&served).unwrap();
    assert_eq!(served, node.jwks);
    node.stop().await;
}

#[tokio::test]
async fn retries_reach_success_and_outcomes_follow_each_apis_rules() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/flaky", Script::fail_then(2, Reply::status(503), Reply::ack()));
    receiver.script("/not-ack", Script::always(Reply::ok("ok")));
    receiver.script("/down", Script::always(Reply::status(500)));
    receiver.script("/obp-redirect", Script::always(Reply::status(302)));
    let names = Names::new("retry");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let flaky = rabo("m-1", &receiver.url("/flaky"), &[RaboEventType::OrderFinalized]);
    let not_ack = rabo("m-1", &receiver.url("/not-ack"), &[RaboEventType::OrderFinalized]);
    let down = rabo("m-1", &receiver.url("/down"), &[RaboEventType::OrderFinalized]);
    let redirect = obp("acc-1", Trigger::OnBalanceChange, &receiver.url("/obp-redirect"));
    let ids = [flaky.id(), not_ack.id(), down.id(), redirect.id()];
    for s in [flaky, not_ack, down, redirect] {
        node.put(s).await;
    }
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let order = Uuid::new_v4();
    publisher.event(&order_event(order, "m-1")).await;
    let balance = Uuid::new_v4();
    publisher.event(&balance_event(balance, "acc-1", "1.00")).await;

    let delivered = node.wait_state(order, &ids[0], DeliveryState::Delivered).await;
    assert_eq!(delivered.attempts, 3);
    let flaky_hits = receiver.received_on("/flaky");
    assert_eq!(flaky_hits.iter().map(|r| r.status_sent).collect::<Vec<_>>(), [503, 503, 200]);
    assert!(flaky_hits.windows(2).all(|w| w[0].body == w[1].body), "every retry sends the same body");
    let event_ids: Vec<_> =
        flaky_hits.iter().map(|r| r.header("x-smartpay-event-id").unwrap().to_string()).collect();
    assert!(event_ids.iter().all(|e| *e == rabo_event_id(order)));
    // Retries wait by the schedule (200 ms, then 400 ms).
    let gap = |a: usize, b: usize| flaky_hits[b].at.duration_since(flaky_hits[a].at).unwrap();
    assert!(
        gap(0, 1) >= Duration::from_millis(180) && gap(1, 2) >= Duration::from_millis(380),
        "{:?} {:?}",
        gap(0, 1),
        gap(1, 2)
    );

    let misconfigured = node.wait_state(order, &ids[1], DeliveryState::Misconfigured).await;
    assert_eq!((misconfigured.attempts, misconfigured.last_status), (1, Some(200)));
    let failed = node.wait_state(order, &ids[2], DeliveryState::Failed).await;
    assert_eq!((failed.attempts, failed.last_status), (4, Some(500)), "first attempt + 3 retries");
    assert!(failed.last_error.is_some());
    let redirected = node.wait_state(balance, &ids[3], DeliveryState::Misconfigured).await;
    assert_eq!(redirected.attempts, 1);
    assert_eq!(receiver.received_on("/not-ack").len(), 1);
    assert_eq!(receiver.received_on("/down").len(), 4);
    assert_eq!(node.store.pending_count(), 0);
    wait_metrics(
        &node,
        &[
            r#"webhookd_delivery_attempts_total{api="rabo",outcome="exhausted"} 1"#,
            r#"webhookd_delivery_attempts_total{api="rabo",outcome="retryable_failure"} 5"#,
            r#"webhookd_delivery_attempts_total{api="rabo",outcome="success"} 1"#,
            r#"webhookd_delivery_attempts_total{api="rabo",outcome="misconfigured"} 1"#,
            r#"webhookd_delivery_attempts_total{api="obp",outcome="misconfigured"} 1"#,
            r#"webhookd_deliveries_created_total{api="rabo"} 3"#,
            r#"webhookd_deliveries_created_total{api="obp"} 1"#,
            "webhookd_deliveries_pending 0",
            "webhookd_oldest_pending_delivery_age_seconds 0",
            r#"webhookd_subscriptions{api="rabo",state="active"} 3"#,
            r#"webhookd_subscriptions{api="obp",state="active"} 1"#,
        ],
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn a_repeated_message_is_delivered_once() {
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("dedup");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    node.put(rabo("m-1", &receiver.url("/orders"), &[RaboEventType::OrderFinalized])).await;
    node.put(rabo("m-1", &receiver.url("/marker"), &[RaboEventType::Test])).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = order_event(Uuid::new_v4(), "m-1");
    publisher.event(&event).await;
    receiver.wait_for(Some("/orders"), 1, HANG).await.unwrap();
    // The same message again (as the broker redelivers an unacknowledged one), then a marker.
    publisher.event(&event).await;
    publisher.event(&event).await;
    publisher.event(&test_event(Uuid::new_v4(), "m-1")).await;
    receiver.wait_for(Some("/marker"), 1, HANG).await.unwrap();
    assert_eq!(receiver.received_on("/orders").len(), 1);
    node.stop().await;
}

#[tokio::test]
async fn an_event_matching_hundreds_of_subscriptions_reaches_each_once() {
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("fanout");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    // More deliveries for one message than the global in-flight limit (256).
    let fan_out = 300;
    let mut subscription_ids = std::collections::BTreeSet::new();
    for i in 0..fan_out {
        let sub = rabo("m-1", &receiver.url(&format!("/s/{i}")), &[RaboEventType::OrderFinalized]);
        subscription_ids.insert(sub.id());
        node.put(sub).await;
    }
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;

    let received = receiver.wait_for(None, fan_out, HANG).await.unwrap();
    let paths: std::collections::BTreeSet<_> = received.iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), fan_out, "every subscription got the event");
    let ids: std::collections::BTreeSet<_> =
        received.iter().filter_map(|r| r.header("x-smartpay-event-id")).collect();
    assert_eq!(ids.len(), 1, "all carry the one event id");
    eventually("every delivery recorded as delivered", HANG, || {
        let d = node.deliveries(event);
        d.len() == fan_out && d.iter().all(|d| d.state == DeliveryState::Delivered)
    })
    .await;
    let stored: std::collections::BTreeSet<_> =
        node.deliveries(event).into_iter().map(|d| d.subscription_id).collect();
    assert_eq!(stored, subscription_ids, "one delivery per subscription, no other");
    // A little later still exactly one request per subscription.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), fan_out);
    node.stop().await;
}

#[tokio::test]
async fn a_retry_after_longer_than_every_tier_is_waited_out_by_hops_without_an_attempt() {
    let receiver = Receiver::start().await.unwrap();
    // Asked to come back in 2 s: longer than the longest tier of the test schedule (200, 400
    // and 800 ms), so the retry goes round the longest tier until its time, attempting nothing.
    let later = Reply::Headers {
        status: 503,
        body: String::new(),
        headers: vec![("retry-after".into(), "2".into())],
    };
    receiver.script("/later", Script::fail_then(1, later, Reply::ack()));
    let names = Names::new("retry-after");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let subscription = rabo("m-1", &receiver.url("/later"), &[RaboEventType::OrderFinalized]);
    node.put(subscription.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let order = Uuid::new_v4();
    publisher.event(&order_event(order, "m-1")).await;

    let delivered = node.wait_state(order, &subscription.id(), DeliveryState::Delivered).await;
    assert_eq!(delivered.attempts, 2, "the hops count no attempt");
    let hits = receiver.received_on("/later");
    assert_eq!(hits.iter().map(|r| r.status_sent).collect::<Vec<_>>(), [503, 200]);
    let gap = hits[1].at.duration_since(hits[0].at).unwrap();
    assert!(gap >= Duration::from_secs(2), "the second attempt came {gap:?} after the first");
    let attempts = node.store.attempts_of(&delivered.id).unwrap();
    assert_eq!(attempts.iter().map(|a| a.status).collect::<Vec<_>>(), [Some(503), Some(200)]);
    node.stop().await;
}
