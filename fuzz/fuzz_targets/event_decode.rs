//! Fuzz target: `Event::decode` on arbitrary message bodies, and what the ingestion does next
//! with an accepted event (match keys, rendered payloads, deliveries, signatures' inputs).
//!
//! Decoding must never panic; a refused body must carry a poison reason with a known label; an
//! accepted one must survive every step the pipeline takes with it.

#![no_main]

use axum::http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use webhookd_core::delivery::{Delivery, DeliveryState};
use webhookd_core::event::{Event, Poison};
use webhookd_core::ids::rabo_event_id;
use webhookd_core::matching::{match_keys, MatchKey};
use webhookd_core::payload::render;
use webhookd_core::subscription::Target;

/// The ingestion's default `amqp.max_message_bytes`.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let decoded = Event::decode(data, LIMIT);
    // The size check comes first and is exact.
    if !data.is_empty() {
        let smaller = data.len() - 1;
        assert!(matches!(
            Event::decode(data, smaller),
            Err(Poison::TooLarge { size, limit }) if size == data.len() && limit == smaller
        ));
    }
    match decoded {
        Err(poison) => {
            assert!(Poison::LABELS.contains(&poison.label()));
            // The reason becomes a dead-letter header and a log field.
            let _ = poison.to_string();
        }
        Ok(event) => accepted(data, &event),
    }
});

fn accepted(data: &[u8], event: &Event) {
    // Decoding is a function of the bytes.
    assert_eq!(Event::decode(data, LIMIT).as_ref(), Ok(event));
    assert!(matches!(event.kind(), "balance.changed" | "order.finalized" | "test"));
    assert_eq!(rabo_event_id(event.event_id()).len(), 24);

    let keys = match_keys(event);
    match event {
        // Zero fires nothing; otherwise OnBalanceChange and one of credit or debit.
        Event::BalanceChanged(_) => assert!(keys.is_empty() || keys.len() == 2),
        Event::OrderFinalized(_) | Event::Test(_) => assert_eq!(keys.len(), 1),
    }
    for key in &keys {
        for method in ["POST", "get"] {
            let target = Target {
                subscription_id: "wsb_abcdefghijklmnopqrstu".into(),
                url: "https://example.com/hook".into(),
                http_method: method.into(),
                http2: false,
                description: Some("fuzz \"target\" \u{1F600}".into()),
            };
            check_rendering(event, key, &target);
        }
    }
}

fn check_rendering(event: &Event, key: &MatchKey, target: &Target) {
    let rendered = render(event, key, target);
    // The fixed headers go on the wire as they are.
    for (name, value) in &rendered.headers {
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'), "{name}");
        assert!(HeaderValue::from_str(value).is_ok(), "{name}: {value:?}");
    }
    let obp_get = matches!(key, MatchKey::Obp { .. }) && target.http_method.eq_ignore_ascii_case("GET");
    if obp_get {
        assert!(rendered.body.is_empty());
    } else {
        // The body is JSON and carries the event's own fields unchanged.
        let body: Value = serde_json::from_str(&rendered.body).expect("rendered body is JSON");
        match (event, key) {
            (Event::BalanceChanged(e), MatchKey::Obp { .. }) => {
                assert_eq!(body["event_id"], e.event_id.to_string());
                assert_eq!(body["bank_id"], e.bank_id.as_str());
                assert_eq!(body["account_id"], e.account_id.as_str());
                assert_eq!(body["amount"], format!("{} {}", e.amount, e.currency));
                assert_eq!(body["event_name"], key.trigger_name());
            }
            (_, MatchKey::Rabo { .. }) => {
                assert_eq!(body["id"], rabo_event_id(event.event_id()));
                assert_eq!(body["type"], key.trigger_name());
                assert_eq!(body["timestamp"], event.occurred_at().unix_timestamp());
                if let Event::OrderFinalized(o) = event {
                    assert_eq!(body["data"]["orderId"], o.order_id.as_str());
                    assert_eq!(body["data"]["amount"]["total"], o.amount.total);
                    assert_eq!(body["data"]["metadata"].as_str(), o.metadata.as_deref());
                }
            }
            _ => panic!("a match key of the wrong API for {}", event.kind()),
        }
    }
    let delivery = Delivery::new(event, key, target, 1_795_514_400_000);
    assert_eq!(delivery.state, DeliveryState::Pending);
    assert_eq!(delivery.body, rendered.body);
    assert_eq!(delivery.id, Delivery::new(event, key, target, 0).id, "delivery ids are deterministic");
    // The outbox stores deliveries as JSON; they must come back unchanged.
    let stored = serde_json::to_vec(&delivery).expect("a delivery serializes");
    let back: Delivery = serde_json::from_slice(&stored).expect("a stored delivery decodes");
    assert_eq!(back, delivery);
}
