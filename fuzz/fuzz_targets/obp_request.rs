//! Fuzz target: the OBP API's request parsing and validation, through the functions its
//! handlers call (`webhookd_api::obp`): the create body, the update body, and the list query.
//!
//! Nothing may panic; every refusal must be OBP's 400 `{"code","message":"OBP-..."}`; every
//! accepted create must satisfy the documented rules and turn into a deliverable webhook.

#![no_main]

use axum::extract::Query;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use libfuzzer_sys::fuzz_target;
use webhookd_api::error::ApiError;
use webhookd_api::obp::{self, AccountWebhookJson, ListQuery};
use webhookd_core::delivery::destination_of;
use webhookd_core::subscription::{ObpWebhook, Subscription};
use webhookd_fuzz::{policy, request_target};

fuzz_target!(|data: &[u8]| {
    let policy = policy();
    match obp::parse_create_body(data, &policy) {
        Ok(new) => {
            assert!(!new.account_id.trim().is_empty() && new.account_id.len() <= 255);
            assert!(["POST", "PUT", "DELETE", "GET"].contains(&new.http_method.as_str()));
            assert!(["HTTP/1.1", "HTTP/2.0"].contains(&new.http_protocol.as_str()));
            assert!(new.url.chars().count() <= 1024);
            assert!(matches!(new.destination.scheme(), "https" | "http"));
            assert!(new.destination.host().is_some());
            // What the handler stores next, and what the delivery engine makes of it.
            let webhook = ObpWebhook {
                account_webhook_id: uuid::Uuid::from_u128(7),
                bank_id: "gh.29.uk".into(),
                account_id: new.account_id,
                trigger: new.trigger,
                url: new.url,
                http_method: new.http_method,
                http_protocol: new.http_protocol,
                created_by_user_id: "fuzz".into(),
                is_active: new.is_active,
                created_at_ms: 1,
            };
            serde_json::to_vec(&AccountWebhookJson::from(&webhook)).expect("the answer serializes");
            let target = Subscription::Obp(webhook).target();
            assert!(!destination_of(&target.url).is_empty());
        }
        Err(error) => refused(error),
    }
    match obp::parse_update_body(data) {
        Ok(update) => assert!(!update.account_webhook_id.to_string().is_empty()),
        Err(error) => refused(error),
    }
    // The list query, through axum's own Query extractor, then the handler's bounds.
    let uri: Uri = request_target("/obp/v4.0.0/management/banks/b/account-web-hooks", data)
        .parse()
        .expect("an escaped request target parses");
    if let Ok(Query(query)) = Query::<ListQuery>::try_from_uri(&uri) {
        match obp::page(&query) {
            Ok((limit, _offset)) => assert!(limit >= 1),
            Err(error) => refused(error),
        }
    }
});

/// A body or query that fails its checks is OBP's 400 with an OBP code, never anything else.
fn refused(error: ApiError) {
    match &error {
        ApiError::Obp { status, message } => {
            assert_eq!(*status, StatusCode::BAD_REQUEST, "{message}");
            assert!(message.starts_with("OBP-10") || message.starts_with("OBP-30050"), "{message}");
        }
        other => panic!("an OBP route answered {other:?}"),
    }
    assert_eq!(error.into_response().status(), StatusCode::BAD_REQUEST);
}
