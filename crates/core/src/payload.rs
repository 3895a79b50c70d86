//! The exact bytes each API delivers: OBP's payload and Rabo's envelope.
//!
//! Rendered once, when the delivery is created, and stored; every attempt sends the same body.

use serde::Serialize;

use crate::event::{Event, OrderAmount};
use crate::ids::rabo_event_id;
use crate::matching::MatchKey;
use crate::subscription::Target;

/// OBP's content type for account webhooks.
pub const OBP_CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// Rabo Smart Pay's content type for webhook events.
pub const RABO_CONTENT_TYPE: &str = "application/rabo-smartpay-webhook-v3+json";

/// A rendered request body with its fixed headers (signatures are added per attempt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Headers that never change between attempts (lowercase names).
    pub headers: Vec<(String, String)>,
    /// The body, compact JSON; empty for OBP `GET` webhooks.
    pub body: String,
}

#[derive(Serialize)]
struct ObpPayload<'a> {
    event_name: &'a str,
    event_id: String,
    bank_id: &'a str,
    account_id: &'a str,
    amount: String,
    balance: String,
}

#[derive(Serialize)]
struct RaboEnvelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    subscription: RaboSubscriptionRef<'a>,
    data: RaboData<'a>,
    timestamp: i64,
}

#[derive(Serialize)]
struct RaboSubscriptionRef<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum RaboData<'a> {
    Order {
        #[serde(rename = "orderId")]
        order_id: &'a str,
        status: &'a str,
        amount: &'a OrderAmount,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<&'a str>,
    },
    Test {},
}

/// Renders what `target` receives for `event` under `key`.
pub fn render(event: &Event, key: &MatchKey, target: &Target) -> Rendered {
    match (event, key) {
        (Event::BalanceChanged(e), MatchKey::Obp { trigger, .. }) => {
            if target.http_method.eq_ignore_ascii_case("GET") {
                return Rendered { headers: Vec::new(), body: String::new() };
            }
            let payload = ObpPayload {
                event_name: trigger.as_str(),
                event_id: e.event_id.to_string(),
                bank_id: &e.bank_id,
                account_id: &e.account_id,
                amount: format!("{} {}", e.amount, e.currency),
                balance: format!("{} {}", e.balance, e.currency),
            };
            Rendered {
                headers: vec![("content-type".into(), OBP_CONTENT_TYPE.into())],
                body: to_json(&payload),
            }
        }
        (_, MatchKey::Rabo { event_type, .. }) => {
            let data = match event {
                Event::OrderFinalized(o) => RaboData::Order {
                    order_id: &o.order_id,
                    status: &o.status,
                    amount: &o.amount,
                    metadata: o.metadata.as_deref(),
                },
                _ => RaboData::Test {},
            };
            let id = rabo_event_id(event.event_id());
            let envelope = RaboEnvelope {
                id: &id,
                kind: event_type.as_str(),
                subscription: RaboSubscriptionRef {
                    id: &target.subscription_id,
                    description: target.description.as_deref(),
                },
                data,
                timestamp: event.occurred_at().unix_timestamp(),
            };
            Rendered {
                headers: vec![
                    ("content-type".into(), RABO_CONTENT_TYPE.into()),
                    ("x-smartpay-event-type".into(), event_type.as_str().into()),
                    ("x-smartpay-event-id".into(), id.clone()),
                ],
                body: to_json(&envelope),
            }
        }
        // An OBP key is only ever made from a balance change (see `matching`).
        (_, MatchKey::Obp { .. }) => Rendered { headers: Vec::new(), body: String::new() },
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs of strings and integers cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::{RaboEventType, Trigger};

    fn target(method: &str, description: Option<&str>) -> Target {
        Target {
            subscription_id: "wsb_abcdefghijklmnopqrstu".into(),
            url: "https://example.com/hook".into(),
            http_method: method.into(),
            http2: false,
            description: description.map(String::from),
        }
    }

    #[test]
    fn obp_payload_is_byte_exact() {
        let body = r#"{"type":"balance.changed","event_id":"6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d11","occurred_at":"2026-11-24T10:00:00Z","bank_id":"gh.29.uk","account_id":"acc-1","amount":"50.00","currency":"EUR","balance":"739.00"}"#;
        let event = Event::decode(body.as_bytes(), 4096).unwrap();
        let key = MatchKey::Obp {
            bank_id: "gh.29.uk".into(),
            account_id: "acc-1".into(),
            trigger: Trigger::OnCreditTransaction,
        };
        let r = render(&event, &key, &target("POST", None));
        assert_eq!(
            r.body,
            r#"{"event_name":"OnCreditTransaction","event_id":"6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d11","bank_id":"gh.29.uk","account_id":"acc-1","amount":"50.00 EUR","balance":"739.00 EUR"}"#
        );
        assert_eq!(r.headers, [("content-type".to_string(), OBP_CONTENT_TYPE.to_string())]);
        assert!(render(&event, &key, &target("GET", None)).body.is_empty());
    }

    #[test]
    fn rabo_envelope_is_byte_exact() {
        let body = r#"{"type":"order.finalized","event_id":"6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d11","occurred_at":"2026-11-24T10:00:00Z","merchant_id":"m1","order_id":"o-9","status":"COMPLETED","amount":{"total":1250,"paid":1250},"metadata":"cart 7"}"#;
        let event = Event::decode(body.as_bytes(), 4096).unwrap();
        let key = MatchKey::Rabo { merchant_id: "m1".into(), event_type: RaboEventType::OrderFinalized };
        let r = render(&event, &key, &target("POST", Some("shop")));
        let id = rabo_event_id(event.event_id());
        assert_eq!(
            r.body,
            format!(
                r#"{{"id":"{id}","type":"order.finalized/v1","subscription":{{"id":"wsb_abcdefghijklmnopqrstu","description":"shop"}},"data":{{"orderId":"o-9","status":"COMPLETED","amount":{{"total":1250,"paid":1250}},"metadata":"cart 7"}},"timestamp":1795514400}}"#
            )
        );
        assert!(r.headers.contains(&("x-smartpay-event-id".into(), id)));
        assert!(r.headers.contains(&("x-smartpay-event-type".into(), "order.finalized/v1".into())));
        assert!(r.headers.contains(&("content-type".into(), RABO_CONTENT_TYPE.into())));
    }
}
