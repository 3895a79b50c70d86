//! The Rabo Smart Pay Webhook Subscriptions API: validation, isolation, limit, idempotency,
//! verify, problem+json.

use serde_json::json;
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::support::*;

const SUBS: &str = "/v3/webhooks/subscriptions";

fn assert_problem(a: &Answer, status: u16, detail_contains: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.header("content-type"), Some("application/problem+json"), "{}", a.text);
    assert_eq!(a.body["status"], json!(status));
    assert!(a.body["title"].is_string() && a.body["type"].is_string());
    let detail = a.body["detail"].as_str().unwrap();
    assert!(detail.contains(detail_contains), "{detail:?} should contain {detail_contains:?}");
}

#[tokio::test]
async fn subscriptions_crud_validation_and_merchant_isolation() {
    let names = Names::new("raboapi");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.rabo.max_subscriptions_per_merchant = 2;
    let node = Node::start(c).await;
    let m1 = node.token("u1", Some("m-1"), &[]).await;
    let m2 = node.token("u2", Some("m-2"), &[]).await;
    let no_merchant = node.token("u3", None, &["CanGetWebhooks@*"]).await;

    for (method, path) in [
        ("GET", "/v3/webhooks/events"),
        ("GET", SUBS),
        ("POST", SUBS),
        ("GET", "/v3/webhooks/subscriptions/wsb_aaaaaaaaaaaaaaaaaaaaa"),
        ("PATCH", "/v3/webhooks/subscriptions/wsb_aaaaaaaaaaaaaaaaaaaaa"),
        ("DELETE", "/v3/webhooks/subscriptions/wsb_aaaaaaaaaaaaaaaaaaaaa"),
        ("POST", "/v3/webhooks/subscriptions/wsb_aaaaaaaaaaaaaaaaaaaaa/verify"),
        ("GET", "/admin/v1/deliveries?event_id=6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d11"),
        ("POST", "/admin/v1/subscriptions/wsb_aaaaaaaaaaaaaaaaaaaaa/recover"),
    ] {
        let a = node.call(method, path, None, Some(json!({}))).await;
        assert_problem(&a, 401, "bearer token");
        assert!(a.header("www-authenticate").is_some(), "{method} {path}");
    }
    assert_problem(&node.call("GET", SUBS, Some("nonsense"), None).await, 401, "bearer token");
    assert_problem(&node.call("GET", SUBS, Some(&no_merchant), None).await, 403, "merchant");
    let a = node.call("GET", "/v3/webhooks/events", Some(&m1), None).await;
    let types: Vec<_> =
        a.body["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["test/v1", "order.finalized/v1"]);
    assert_eq!(a.body["events"][0]["deprecated"], json!(false));

    let url = "http://127.0.0.1:9/hook";
    let valid = json!({"status": "enabled", "url": url, "description": "shop", "eventTypes": ["test/v1"]});
    for (body, detail) in [
        (json!({"url": url, "eventTypes": ["test/v1"]}), "status"),
        (json!({"status": "on", "url": url, "eventTypes": ["test/v1"]}), "status"),
        (json!({"status": "enabled", "eventTypes": ["test/v1"]}), "url"),
        (json!({"status": "enabled", "url": "not a url", "eventTypes": ["test/v1"]}), "url"),
        (json!({"status": "enabled", "url": "http://192.168.1.10/x", "eventTypes": ["test/v1"]}), "url"),
        (json!({"status": "enabled", "url": "http://[::1]/x", "eventTypes": ["test/v1"]}), "url"),
        (
            json!({"status": "enabled", "url": url, "description": "", "eventTypes": ["test/v1"]}),
            "description",
        ),
        (
            json!({"status": "enabled", "url": url, "description": "d".repeat(2049), "eventTypes": ["test/v1"]}),
            "description",
        ),
        (json!({"status": "enabled", "url": url, "eventTypes": []}), "eventTypes"),
        (json!({"status": "enabled", "url": url, "eventTypes": ["order.created/v1"]}), "eventTypes"),
        (json!({"status": "enabled", "url": url}), "eventTypes"),
        (json!(["status"]), "object"),
    ] {
        assert_problem(&node.call("POST", SUBS, Some(&m1), Some(body)).await, 400, detail);
    }
    assert_problem(&node.call_raw("POST", SUBS, Some(&m1), Some("{oops"), &[]).await, 400, "JSON");

    let a = node.call("POST", SUBS, Some(&m1), Some(valid.clone())).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.body["id"].as_str().unwrap().to_string();
    assert!(webhookd_core::ids::is_subscription_id(&id), "{id}");
    assert_eq!(a.header("location"), Some(format!("{SUBS}/{id}").as_str()));
    assert_eq!(
        a.body,
        json!({"id": id, "status": "enabled", "url": url, "description": "shop", "eventTypes": ["test/v1"]})
    );

    let one = format!("{SUBS}/{id}");
    assert_eq!(node.call("GET", &one, Some(&m1), None).await.body["id"], json!(id));
    // Another merchant: 404 everywhere, never 403.
    assert_problem(&node.call("GET", &one, Some(&m2), None).await, 404, &id);
    assert_problem(&node.call("PATCH", &one, Some(&m2), Some(json!({"status": "disabled"}))).await, 404, &id);
    assert_problem(&node.call("DELETE", &one, Some(&m2), None).await, 404, &id);
    assert_problem(&node.call("POST", &format!("{one}/verify"), Some(&m2), None).await, 404, &id);
    assert_eq!(node.call("GET", SUBS, Some(&m2), None).await.body, json!({"subscriptions": []}));
    assert_problem(&node.call("GET", &format!("{SUBS}/wsb_nope"), Some(&m1), None).await, 404, "wsb_nope");

    // PATCH changes only what is given, answers 201 with location.
    let a = node
        .call(
            "PATCH",
            &one,
            Some(&m1),
            Some(json!({"status": "disabled", "eventTypes": ["order.finalized/v1", "test/v1"]})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.header("location"), Some(one.as_str()));
    assert_eq!(
        a.body,
        json!({"id": id, "status": "disabled", "url": url, "description": "shop", "eventTypes": ["order.finalized/v1", "test/v1"]})
    );
    assert_problem(
        &node.call("PATCH", &one, Some(&m1), Some(json!({"eventTypes": []}))).await,
        400,
        "eventTypes",
    );
    assert_eq!(
        node.call("GET", &one, Some(&m1), None).await.body["eventTypes"],
        json!(["order.finalized/v1", "test/v1"])
    );

    // The per-merchant limit answers 403; the other merchant is not affected.
    assert_eq!(node.call("POST", SUBS, Some(&m1), Some(valid.clone())).await.status, 201);
    assert_problem(&node.call("POST", SUBS, Some(&m1), Some(valid.clone())).await, 403, "limit of 2");
    assert_eq!(node.call("POST", SUBS, Some(&m2), Some(valid.clone())).await.status, 201);
    let listed = node.call("GET", SUBS, Some(&m1), None).await;
    assert_eq!(listed.body["subscriptions"].as_array().unwrap().len(), 2);
    assert_eq!(listed.body["subscriptions"][0]["id"], json!(id), "creation order");

    // DELETE: 204, then 404; a slot is free again.
    assert_eq!(node.call("DELETE", &one, Some(&m1), None).await.status, 204);
    assert_problem(&node.call("GET", &one, Some(&m1), None).await, 404, &id);
    assert_problem(&node.call("DELETE", &one, Some(&m1), None).await, 404, &id);
    assert_eq!(node.call("POST", SUBS, Some(&m1), Some(valid)).await.status, 201);
    node.stop().await;
}

#[tokio::test]
async fn idempotency_keys_replay_mismatch_and_scope() {
    let names = Names::new("raboidem");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.rabo.max_subscriptions_per_merchant = 2;
    let node = Node::start(c).await;
    let m1 = node.token("u1", Some("m-1"), &[]).await;
    let m2 = node.token("u2", Some("m-2"), &[]).await;
    let body =
        json!({"status": "enabled", "url": "http://127.0.0.1:9/a", "eventTypes": ["order.finalized/v1"]})
            .to_string();
    let key = [("idempotency-key", "ce55fab6b56d45279f90b3d2152e7766")];

    let first = node.call_raw("POST", SUBS, Some(&m1), Some(&body), &key).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotency-key"), Some(key[0].1));
    let again = node.call_raw("POST", SUBS, Some(&m1), Some(&body), &key).await;
    assert_eq!((again.status, &again.body), (201, &first.body), "the first response, replayed");
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("content-type"), first.header("content-type"));
    // The answer replayed is the first one, even once the subscription has changed since.
    let one = format!("{SUBS}/{}", first.body["id"].as_str().unwrap());
    assert_eq!(node.call("PATCH", &one, Some(&m1), Some(json!({"status": "disabled"}))).await.status, 201);
    let later = node.call_raw("POST", SUBS, Some(&m1), Some(&body), &key).await;
    assert_eq!((later.status, &later.body["status"]), (201, &json!("enabled")), "{}", later.text);
    assert_eq!(
        node.call("GET", SUBS, Some(&m1), None).await.body["subscriptions"].as_array().unwrap().len(),
        1
    );

    let other =
        json!({"status": "disabled", "url": "http://127.0.0.1:9/a", "eventTypes": ["order.finalized/v1"]})
            .to_string();
    let a = node.call_raw("POST", SUBS, Some(&m1), Some(&other), &key).await;
    assert_problem(&a, 422, "different request");
    // Keys are per caller: another merchant may use the same key.
    let a = node.call_raw("POST", SUBS, Some(&m2), Some(&other), &key).await;
    assert_eq!(a.status, 201);
    assert_ne!(a.body["id"], first.body["id"]);
    // Bad keys.
    let long = "k".repeat(65);
    assert_problem(
        &node.call_raw("POST", SUBS, Some(&m1), Some(&body), &[("idempotency-key", &long)]).await,
        400,
        "idempotency-key",
    );
    // A request that fails validation does not use its key: nothing was started.
    let bad = json!({"status": "enabled"}).to_string();
    let k2 = [("idempotency-key", "k2")];
    assert_eq!(node.call_raw("POST", SUBS, Some(&m1), Some(&bad), &k2).await.status, 400);
    assert_eq!(node.call_raw("POST", SUBS, Some(&m1), Some(&bad), &k2).await.status, 400);
    let fixed = node
        .call_raw("POST", SUBS, Some(&m1), Some(&body.replace("127.0.0.1:9/a", "127.0.0.1:9/b")), &k2)
        .await;
    assert_eq!(fixed.status, 201, "{}", fixed.text);
    // The limit's refusal is a first answer like a create: replayed, and the key stays used.
    let k3 = [("idempotency-key", "k3")];
    for _ in 0..2 {
        let full = node.call_raw("POST", SUBS, Some(&m1), Some(&body), &k3).await;
        assert_problem(&full, 403, "limit of");
        assert_eq!(full.header("idempotency-key"), Some("k3"));
    }
    node.stop().await;
}

#[tokio::test]
async fn idempotency_keys_expire() {
    let names = Names::new("raboexp");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.rabo.idempotency_ttl_hours = 0;
    let node = Node::start(c).await;
    let m1 = node.token("u1", Some("m-1"), &[]).await;
    let body =
        json!({"status": "enabled", "url": "http://127.0.0.1:9/a", "eventTypes": ["test/v1"]}).to_string();
    let key = [("idempotency-key", "k")];
    let a = node.call_raw("POST", SUBS, Some(&m1), Some(&body), &key).await;
    let b = node.call_raw("POST", SUBS, Some(&m1), Some(&body), &key).await;
    assert_eq!((a.status, b.status), (201, 201));
    assert_ne!(a.body["id"], b.body["id"], "an expired key is new again");
    node.stop().await;
}

#[tokio::test]
async fn verify_sends_a_signed_test_event_and_reports_the_ack() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/bad", Script::always(Reply::status(500)));
    let names = Names::new("rabover");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let m1 = node.token("u1", Some("m-1"), &[]).await;
    let create = |path: &str| json!({"status": "disabled", "url": receiver.url(path), "eventTypes": ["order.finalized/v1"]});
    let good = node.call("POST", SUBS, Some(&m1), Some(create("/good"))).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bad = node.call("POST", SUBS, Some(&m1), Some(create("/bad"))).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();

    let a = node.call("POST", &format!("{SUBS}/{good}/verify"), Some(&m1), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let got = receiver.wait_for(Some("/good"), 1, HANG).await.unwrap();
    let envelope = got[0].json().unwrap();
    assert_eq!(envelope["type"], "test/v1");
    assert_eq!(envelope["subscription"]["id"], json!(good));
    assert_eq!(got[0].header("x-smartpay-event-type"), Some("test/v1"));
    webhookd_core::signing::verify::detached_jws(
        &node.jwks,
        got[0].header("x-smartpay-signature").unwrap(),
        &got[0].body,
    )
    .unwrap();

    let a = node.call("POST", &format!("{SUBS}/{bad}/verify"), Some(&m1), None).await;
    assert_problem(&a, 403, "HTTP 500");
    node.stop().await;
}
