//! Fuzz target: the Rabo Smart Pay API's request parsing and validation, through the functions
//! its handlers call (`webhookd_api::rabo`): create and update bodies, the canonical form an
//! idempotent create is compared by, and subscription ids from the path.
//!
//! Nothing may panic; every refusal must be a 400 problem; every accepted body must satisfy the
//! specification's constraints.

#![no_main]

use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use libfuzzer_sys::fuzz_target;
use webhookd_api::error::ApiError;
use webhookd_api::rabo::{self, Fields, SubscriptionJson};
use webhookd_core::ids::is_subscription_id;
use webhookd_core::subscription::{RaboStatus, RaboSubscription, Subscription};
use webhookd_fuzz::policy;

fuzz_target!(|data: &[u8]| {
    let policy = policy();
    match rabo::parse_fields(data, true, &policy) {
        Ok(fields) => {
            // A create has every required field.
            assert!(fields.status.is_some() && fields.url.is_some());
            assert!(fields.event_types.as_ref().is_some_and(|t| !t.is_empty()));
            check_fields(&fields);
            let subscription = RaboSubscription {
                id: "wsb_abcdefghijklmnopqrstu".into(),
                merchant_id: "m".into(),
                status: fields.status.unwrap_or(RaboStatus::Enabled),
                url: fields.url.unwrap_or_default(),
                description: fields.description,
                event_types: fields.event_types.unwrap_or_default(),
                created_at_ms: 1,
            };
            serde_json::to_vec(&SubscriptionJson::from(&subscription)).expect("the answer serializes");
            let active = Subscription::Rabo(subscription);
            assert_eq!(active.match_keys().len(), active_types(&active));
        }
        Err(error) => refused(error),
    }
    match rabo::parse_fields(data, false, &policy) {
        Ok(fields) => check_fields(&fields),
        Err(error) => refused(error),
    }
    // Idempotent creates compare requests by their canonical form: JSON canonicalizes to a fixed
    // point, anything else is kept exactly, and the two forms never meet.
    let canonical = rabo::canonical_request(data);
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(_) => {
            assert!(!canonical.starts_with("raw:"));
            assert_eq!(rabo::canonical_request(canonical.as_bytes()), canonical);
        }
        Err(_) => {
            let hex = canonical.strip_prefix("raw:").expect("a body that is not JSON is raw");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            assert_eq!(bytes, data, "kept exactly");
        }
    }
    // A path id either has the Rabo shape (and makes a valid `location`) or is refused.
    if let Ok(id) = std::str::from_utf8(data) {
        if is_subscription_id(id) {
            assert!(HeaderValue::from_str(&format!("/v3/webhooks/subscriptions/{id}")).is_ok());
        }
    }
});

fn active_types(subscription: &Subscription) -> usize {
    match subscription {
        Subscription::Rabo(s) if s.status == RaboStatus::Enabled => s.event_types.len(),
        _ => 0,
    }
}

/// Whatever fields are present satisfy the specification's constraints.
fn check_fields(fields: &Fields) {
    assert_eq!(fields.url.is_some(), fields.destination.is_some());
    if let Some(url) = &fields.url {
        assert!(url.chars().count() <= 2048);
    }
    if let Some(description) = &fields.description {
        assert!((1..=2048).contains(&description.chars().count()));
    }
    if let Some(types) = &fields.event_types {
        assert!(!types.is_empty());
        for (i, t) in types.iter().enumerate() {
            assert!(!types[..i].contains(t), "duplicate event types are collapsed");
        }
    }
}

/// A body that fails its checks is a 400 problem, never anything else.
fn refused(error: ApiError) {
    match &error {
        ApiError::Problem { status, .. } => assert_eq!(*status, StatusCode::BAD_REQUEST, "{error:?}"),
        other => panic!("a Rabo route answered {other:?}"),
    }
    assert_eq!(error.into_response().status(), StatusCode::BAD_REQUEST);
}
