//! Authorization, route by route: every route of `webhookd_api::routes()` (the table the server
//! is built from, so a new route cannot be left out) is called without a token, with malformed
//! and unknown tokens, with a revoked token, with another bank's roles (OBP), as another
//! merchant (Rabo), without `CanManageDeliveries` (admin). Each answer has the right status, the
//! route's error format and a documented shape, and changes nothing: subscriptions, deliveries
//! and tokens are compared before and after, and the receiver gets no request. The public routes
//! are named here and checked to stay public. Last, each route is called as it should be, to
//! show that the refusals above were about authorization and nothing else.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::{RaboEventType, Trigger};
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::contract::Contract;
use crate::support::*;

/// The routes that need no token. Anything else must be in an authorized class below.
const PUBLIC: [&str; 5] = ["/.well-known/jwks.json", "/healthz", "/readyz", "/metrics", "/openapi.json"];

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Class {
    /// OBP: a user with the endpoint's role at the bank; OBP error JSON.
    Obp,
    /// Rabo: a merchant, who sees only its own subscriptions; problem+json.
    Rabo,
    /// Admin: the role `CanManageDeliveries`; problem+json.
    Admin,
    /// No token.
    Public,
}

fn class(path: &str) -> Class {
    if path.starts_with("/obp/") {
        Class::Obp
    } else if path.starts_with("/v3/webhooks/") {
        Class::Rabo
    } else if path.starts_with("/admin/") {
        Class::Admin
    } else if PUBLIC.contains(&path) {
        Class::Public
    } else {
        panic!("route {path} is in no authorization class: add it to tests/it/auth_matrix.rs")
    }
}

/// What the world looks like to the matrix.
struct World {
    node: Node,
    receiver: Receiver,
    contract: Contract,
    event: Uuid,
    obp_webhook: String,
    target: String,
    doomed: String,
    failing: String,
    delivery: Uuid,
}

impl World {
    /// The concrete request for a route: path with its parameters and query, and a valid body.
    fn request(&self, method: &str, route: &str, bank: &str) -> (String, Option<Value>) {
        let rabo_id = if method == "DELETE" { &self.doomed } else { &self.target };
        let path = route
            .replace("{bank_id}", bank)
            .replace("{delivery_id}", &self.delivery.to_string())
            .replace("{subscription_id}", if route.starts_with("/admin/") { &self.failing } else { rabo_id });
        let receiver = self.receiver.url("/ack");
        let body = match (method, route) {
            ("POST", r) if r.starts_with("/obp/") => Some(json!({
                "account_id": "acc-9", "trigger_name": "OnCreditTransaction", "url": receiver,
                "http_method": "POST", "http_protocol": "HTTP/1.1", "is_active": "true"
            })),
            ("PUT", _) => Some(json!({"account_webhook_id": self.obp_webhook, "is_active": "false"})),
            ("POST", "/v3/webhooks/subscriptions") => {
                Some(json!({"status": "enabled", "url": receiver, "eventTypes": ["test/v1"]}))
            }
            ("PATCH", _) => Some(json!({"status": "disabled"})),
            ("POST", r) if r.ends_with("/recover") => Some(json!({"since": "2020-01-01T00:00:00Z"})),
            _ => None,
        };
        let path = if route == "/admin/v1/deliveries" {
            format!("{path}?subscription_id={}", self.failing)
        } else {
            path
        };
        (path, body)
    }

    /// Everything a request could change.
    fn state(&self) -> String {
        let subscriptions: Vec<_> = self.node.store.subscriptions().map(|s| s.unwrap()).collect();
        let deliveries = self.node.store.deliveries_of_event(&self.event).unwrap();
        let tokens = self.node.store.tokens().unwrap();
        format!("{subscriptions:?}\n{deliveries:?}\n{tokens:?}")
    }

    /// The documented path of a route (`{bank_id}` is `{BANK_ID}` there, and so on).
    fn doc_path(&self, route: &str) -> String {
        let doc: Value = serde_json::from_str(webhookd_api::OPENAPI_JSON).unwrap();
        fn shape(p: &str) -> Vec<&str> {
            p.split('/').map(|s| if s.starts_with('{') { "{}" } else { s }).collect()
        }
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .find(|p| shape(p) == shape(route))
            .unwrap_or_else(|| panic!("{route} is not documented"))
            .clone()
    }

    /// Calls a route with an `authorization` header of its own (or none).
    async fn call(&self, method: &str, route: &str, bank: &str, authorization: Option<&str>) -> Answer {
        let (path, body) = self.request(method, route, bank);
        let headers: Vec<(&str, &str)> = authorization.map(|a| ("authorization", a)).into_iter().collect();
        let body = body.map(|b| b.to_string());
        self.node.call_raw(method, &path, None, body.as_deref(), &headers).await
    }

    /// A refused call: the status, the route's format, a documented answer, and nothing changed.
    fn assert_refused(&self, method: &str, route: &str, a: &Answer, status: u16, text: &str, before: &str) {
        let what = format!("{method} {route}");
        assert_eq!(a.status, status, "{what}: {}", a.text);
        match class(route) {
            Class::Obp => {
                assert_eq!(a.header("content-type"), Some("application/json"), "{what}");
                assert_eq!(a.body["code"], json!(status), "{what}: {}", a.text);
                let message = a.body["message"].as_str().unwrap_or_default();
                assert!(message.contains(text), "{what}: {message:?} should contain {text:?}");
            }
            _ => {
                assert_eq!(a.header("content-type"), Some("application/problem+json"), "{what}");
                assert_eq!(a.body["status"], json!(status), "{what}: {}", a.text);
                let detail = a.body["detail"].as_str().unwrap_or_default();
                assert!(detail.contains(text), "{what}: {detail:?} should contain {text:?}");
            }
        }
        if status == 401 {
            assert_eq!(a.header("www-authenticate"), Some("Bearer realm=\"webhookd\""), "{what}");
        }
        self.contract.check(method, &self.doc_path(route), a);
        assert_eq!(self.state(), before, "{what} answered {status} but changed the store");
        assert!(self.receiver.received_on("/ack").is_empty(), "{what} answered {status} but sent a request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_whom_it_must_and_changes_nothing() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/ack", Script::always(Reply::ack()));
    receiver.script("/fail", Script::always(Reply::status(500)));
    let names = Names::new("authmatrix");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.retry.retries = 1;
    c.retry.initial_delay_ms = 50;
    let node = Node::start(c).await;

    // The world: an OBP webhook at gh.29.uk, three subscriptions of merchant m-1, one failed delivery.
    let obp_webhook = obp("acc-1", Trigger::OnBalanceChange, &receiver.url("/ack"));
    let target = rabo("m-1", &receiver.url("/ack"), &[RaboEventType::Test]);
    let doomed = rabo("m-1", &receiver.url("/ack"), &[RaboEventType::Test]);
    let failing = rabo("m-1", &receiver.url("/fail"), &[RaboEventType::OrderFinalized]);
    for s in [&obp_webhook, &target, &doomed, &failing] {
        node.put(s.clone()).await;
    }
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    let delivery = node.wait_state(event, &failing.id(), DeliveryState::Failed).await.id;

    let all_obp = ["CanCreateWebhook@gh.29.uk", "CanUpdateWebhook@gh.29.uk", "CanGetWebhooks@gh.29.uk"];
    let obp_user = node.token("u-obp", None, &all_obp).await;
    let other_bank = node
        .token(
            "u-bank2",
            None,
            &["CanCreateWebhook@bank-2", "CanUpdateWebhook@bank-2", "CanGetWebhooks@bank-2"],
        )
        .await;
    let m1 = node.token("u-m1", Some("m-1"), &[]).await;
    let m2 = node.token("u-m2", Some("m-2"), &[]).await;
    let everything_but_admin = node
        .token("u-all", Some("m-1"), &["CanCreateWebhook@*", "CanUpdateWebhook@*", "CanGetWebhooks@*"])
        .await;
    let no_merchant =
        node.token("u-nom", None, &["CanCreateWebhook@*", "CanGetWebhooks@*", "CanManageDeliveries"]).await;
    let admin = node.token("ops", None, &["CanManageDeliveries"]).await;
    let revoked = node
        .token(
            "u-rev",
            Some("m-1"),
            &["CanCreateWebhook@*", "CanUpdateWebhook@*", "CanGetWebhooks@*", "CanManageDeliveries"],
        )
        .await;
    let revoked_id = webhookd_core::auth::token_id_of(&revoked).unwrap();
    node.revoke_token(&revoked).await;
    let mut wrong_secret = admin.clone();
    let last = if wrong_secret.ends_with('a') { "b" } else { "a" };
    wrong_secret.replace_range(wrong_secret.len() - 1.., last);

    let world = World {
        node,
        receiver,
        contract: Contract::load(),
        event,
        obp_webhook: obp_webhook.id(),
        target: target.id(),
        doomed: doomed.id(),
        failing: failing.id(),
        delivery,
    };
    let before = world.state();

    let routes: Vec<(String, &str)> =
        webhookd_api::routes().into_iter().map(|(m, p, _)| (m.as_str().to_string(), p)).collect();
    let public: BTreeSet<&str> =
        routes.iter().map(|(_, p)| *p).filter(|p| class(p) == Class::Public).collect();
    assert_eq!(public, PUBLIC.into_iter().collect(), "the public routes are exactly these");

    let bearer = |t: &str| format!("Bearer {t}");
    let malformed = [
        "Bearer".to_string(),
        "Bearer ".to_string(),
        "Bearer nonsense".to_string(),
        "Basic dXNlcjpwYXNz".to_string(),
        format!("Token {admin}"),
        bearer("whd_0000000000000000_00000000000000000000000000000000"),
        bearer(&wrong_secret),
        bearer(&format!("{admin}x")),
        bearer(&revoked_id),
    ];
    for (method, route) in &routes {
        let (method, route) = (method.as_str(), *route);
        let class = class(route);
        if class == Class::Public {
            // Public with no token, and a token (even a bad one) changes nothing about that.
            for authorization in [None, Some("Bearer nonsense".to_string()), Some(bearer(&m1))] {
                let a = world.call(method, route, "gh.29.uk", authorization.as_deref()).await;
                assert_eq!(a.status, 200, "{method} {route} must stay public: {}", a.text);
                if route != "/metrics" {
                    // (The metrics are text, which the JSON contract check does not read.)
                    world.contract.check(method, &world.doc_path(route), &a);
                }
            }
            continue;
        }
        let unauthenticated = match class {
            Class::Obp => "OBP-20001: User not logged in. Authentication is required!",
            _ => "a valid bearer token is required",
        };
        // No token; malformed, unknown and forged tokens; a revoked token: 401.
        let a = world.call(method, route, "gh.29.uk", None).await;
        world.assert_refused(method, route, &a, 401, unauthenticated, &before);
        for authorization in &malformed {
            let a = world.call(method, route, "gh.29.uk", Some(authorization)).await;
            world.assert_refused(method, route, &a, 401, unauthenticated, &before);
        }
        let a = world.call(method, route, "gh.29.uk", Some(&bearer(&revoked))).await;
        world.assert_refused(method, route, &a, 401, unauthenticated, &before);

        match class {
            Class::Obp => {
                let role = match method {
                    "POST" => "CanCreateWebhook",
                    "PUT" => "CanUpdateWebhook",
                    _ => "CanGetWebhooks",
                };
                let missing =
                    format!("OBP-20006: User is missing one or more roles: {role} at Bank(gh.29.uk)");
                // Roles at another bank, a merchant without roles, the admin: 403 naming the role.
                for token in [&other_bank, &m1, &admin] {
                    let a = world.call(method, route, "gh.29.uk", Some(&bearer(token))).await;
                    world.assert_refused(method, route, &a, 403, &missing, &before);
                }
            }
            Class::Rabo => {
                // A token bound to no merchant, even with every other role: 403.
                let a = world.call(method, route, "gh.29.uk", Some(&bearer(&no_merchant))).await;
                world.assert_refused(method, route, &a, 403, "not bound to a merchant", &before);
                // Another merchant's subscription: 404, exactly as for one that does not exist.
                if route.contains("{subscription_id}") {
                    let a = world.call(method, route, "gh.29.uk", Some(&bearer(&m2))).await;
                    let id = if method == "DELETE" { &world.doomed } else { &world.target };
                    world.assert_refused(method, route, &a, 404, &format!("no subscription {id}"), &before);
                }
            }
            Class::Admin => {
                for token in [&everything_but_admin, &m1, &obp_user] {
                    let a = world.call(method, route, "gh.29.uk", Some(&bearer(token))).await;
                    world.assert_refused(method, route, &a, 403, "CanManageDeliveries", &before);
                }
            }
            Class::Public => unreachable!(),
        }
    }

    // Another bank's webhook is not found under that bank, and its list does not show it.
    let put = "/obp/v4.0.0/banks/{bank_id}/account-web-hooks";
    let a = world.call("PUT", put, "bank-2", Some(&bearer(&other_bank))).await;
    world.assert_refused(
        "PUT",
        put,
        &a,
        400,
        "OBP-30050: Webhook not found. Please specify a valid value for account_webhook_id.",
        &before,
    );
    let list = "/obp/v4.0.0/management/banks/{bank_id}/account-web-hooks";
    let a = world.call("GET", list, "bank-2", Some(&bearer(&other_bank))).await;
    assert_eq!((a.status, &a.body), (200, &json!({"web_hooks": []})), "{}", a.text);
    // Another merchant's list is its own (empty).
    let a = world.call("GET", "/v3/webhooks/subscriptions", "", Some(&bearer(&m2))).await;
    assert_eq!((a.status, &a.body), (200, &json!({"subscriptions": []})), "{}", a.text);
    assert_eq!(world.state(), before);

    // The same requests with the right token succeed: the refusals were about authorization only.
    for (method, route) in &routes {
        let (method, route) = (method.as_str(), *route);
        let token = match class(route) {
            Class::Obp => &obp_user,
            Class::Rabo => &m1,
            Class::Admin => &admin,
            Class::Public => continue,
        };
        let a = world.call(method, route, "gh.29.uk", Some(&bearer(token))).await;
        assert!((200..300).contains(&a.status), "{method} {route} as its owner: {}", a.text);
        world.contract.check(method, &world.doc_path(route), &a);
    }
    assert_eq!(world.receiver.received_on("/ack").len(), 1, "the owner's verify sent one test event");
    tokio::time::sleep(Duration::from_millis(50)).await;
    world.node.stop().await;
}
