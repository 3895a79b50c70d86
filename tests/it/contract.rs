//! Both APIs driven the way a client of the original would: the seeds' sample requests, and
//! every response checked against the schema the OpenAPI document gives for its status.

use serde_json::{json, Value};
use webhookd_harness::receiver::Receiver;

use crate::support::*;

/// The OpenAPI document and a way to check a response against it.
pub struct Contract {
    doc: Value,
}

impl Contract {
    pub fn load() -> Contract {
        Contract { doc: serde_json::from_str(webhookd_api::OPENAPI_JSON).unwrap() }
    }

    /// Follows a local `$ref` (`#/components/...`).
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(pointer) => self.doc.pointer(pointer.trim_start_matches('#')).expect("dangling $ref"),
            None => value,
        }
    }

    /// Checks that `answer` is a documented response of `method path` and matches its schema.
    pub fn check(&self, method: &str, path: &str, answer: &Answer) {
        let operation = &self.doc["paths"][path][method.to_ascii_lowercase()];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let status = answer.status.to_string();
        let response = operation["responses"].get(&status).map(|r| self.resolve(r)).unwrap_or_else(|| {
            panic!("{method} {path}: status {status} is not documented ({})", answer.text)
        });
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(answer.text.is_empty(), "{method} {path} {status}: undocumented body {}", answer.text);
            return;
        };
        let content_type =
            answer.header("content-type").unwrap_or("").split(';').next().unwrap_or("").to_string();
        let media = content.get(&content_type).unwrap_or_else(|| {
            panic!("{method} {path} {status}: content type {content_type:?} is not documented")
        });
        let mut schema = media["schema"].clone();
        schema["components"] = self.doc["components"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema of {method} {path} {status}: {e}"));
        let errors: Vec<String> =
            validator.iter_errors(&answer.body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status} does not match its schema: {errors:?}\n{}",
            answer.text
        );
    }
}

#[tokio::test]
async fn an_obp_client_and_a_rabo_client_get_the_documented_shapes() {
    let contract = Contract::load();
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("contract");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.obp.banks = vec!["GENODEM1GLS".into()];
    let node = Node::start(c).await;
    let obp_token = node
        .token(
            "9ca9a7e4-6d02-40e3-a129-0b2bf89de9b1",
            None,
            &["CanCreateWebhook@GENODEM1GLS", "CanUpdateWebhook@GENODEM1GLS", "CanGetWebhooks@*"],
        )
        .await;

    // OBP, as the seed shows it (the url is a receiver we run, as the seed's host is not reachable here).
    let create = "/obp/v4.0.0/banks/{BANK_ID}/account-web-hooks";
    let path = "/obp/v4.0.0/banks/GENODEM1GLS/account-web-hooks";
    let seed = json!({
        "account_id": "8ca8a7e4-6d02-40e3-a129-0b2bf89de9f0", "trigger_name": "OnBalanceChange",
        "url": receiver.url("/obp"), "http_method": "POST", "http_protocol": "HTTP/1.1", "is_active": "true"
    });
    let a = node.call("POST", path, Some(&obp_token), Some(seed.clone())).await;
    assert_eq!(a.status, 201);
    contract.check("POST", create, &a);
    assert_eq!(a.body["created_by_user_id"], "9ca9a7e4-6d02-40e3-a129-0b2bf89de9b1");
    let id = a.body["account_webhook_id"].as_str().unwrap().to_string();
    // The check can fail: the same answer with `is_active` as a string is refused.
    let mut wrong =
        Answer { status: a.status, headers: a.headers.clone(), body: a.body.clone(), text: a.text.clone() };
    wrong.body["is_active"] = json!("true");
    let refused =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| contract.check("POST", create, &wrong)));
    assert!(refused.is_err(), "a response off its schema must be refused");
    for (token, body) in [
        (None, Some(seed.clone())),
        (Some(obp_token.as_str()), Some(json!({"account_id": 1}))),
        (Some(obp_token.as_str()), Some(json!({"trigger_name": "x"}))),
    ] {
        contract.check("POST", create, &node.call("POST", path, token, body).await);
    }
    contract.check(
        "POST",
        create,
        &node
            .call("POST", "/obp/v4.0.0/banks/UNKNOWN/account-web-hooks", Some(&obp_token), Some(seed.clone()))
            .await,
    );
    let a = node
        .call("PUT", path, Some(&obp_token), Some(json!({"account_webhook_id": id, "is_active": "false"})))
        .await;
    assert_eq!(a.status, 200);
    contract.check("PUT", create, &a);
    contract.check(
        "PUT",
        create,
        &node
            .call(
                "PUT",
                path,
                Some(&obp_token),
                Some(json!({"account_webhook_id": "x", "is_active": "false"})),
            )
            .await,
    );
    let list = "/obp/v4.0.0/management/banks/{BANK_ID}/account-web-hooks";
    let a = node
        .call(
            "GET",
            "/obp/v4.0.0/management/banks/GENODEM1GLS/account-web-hooks?limit=10&offset=0",
            Some(&obp_token),
            None,
        )
        .await;
    assert_eq!(a.body["web_hooks"].as_array().unwrap().len(), 1);
    contract.check("GET", list, &a);
    contract.check(
        "GET",
        list,
        &node
            .call(
                "GET",
                "/obp/v4.0.0/management/banks/GENODEM1GLS/account-web-hooks?limit=0",
                Some(&obp_token),
                None,
            )
            .await,
    );

    // Rabo, with the seed's sample request (plus the url it requires) and its idempotency key.
    let rabo_token = node.token("shop-admin", Some("merchant-42"), &[]).await;
    let subs = "/v3/webhooks/subscriptions";
    let one = "/v3/webhooks/subscriptions/{subscriptionId}";
    contract.check(
        "GET",
        "/v3/webhooks/events",
        &node.call("GET", "/v3/webhooks/events", Some(&rabo_token), None).await,
    );
    contract.check("GET", subs, &node.call("GET", subs, None, None).await);
    let sample = json!({"status": "enabled", "url": receiver.url("/rabo"), "description": "string", "eventTypes": ["test/v1"]}).to_string();
    let a = node
        .call_raw(
            "POST",
            subs,
            Some(&rabo_token),
            Some(&sample),
            &[("idempotency-key", "ce55fab6b56d45279f90b3d2152e7766")],
        )
        .await;
    assert_eq!(a.status, 201);
    contract.check("POST", subs, &a);
    let sid = a.body["id"].as_str().unwrap().to_string();
    contract.check(
        "POST",
        subs,
        &node.call("POST", subs, Some(&rabo_token), Some(json!({"status": "enabled"}))).await,
    );
    contract.check("GET", subs, &node.call("GET", subs, Some(&rabo_token), None).await);
    let here = format!("{subs}/{sid}");
    contract.check("GET", one, &node.call("GET", &here, Some(&rabo_token), None).await);
    contract.check(
        "GET",
        one,
        &node.call("GET", &format!("{subs}/wsb_000000000000000000000"), Some(&rabo_token), None).await,
    );
    contract.check(
        "PATCH",
        one,
        &node.call("PATCH", &here, Some(&rabo_token), Some(json!({"description": "renamed"}))).await,
    );
    contract.check(
        "PATCH",
        one,
        &node.call("PATCH", &here, Some(&rabo_token), Some(json!({"status": "paused"}))).await,
    );
    let verify = "/v3/webhooks/subscriptions/{subscriptionId}/verify";
    let a = node.call("POST", &format!("{here}/verify"), Some(&rabo_token), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    contract.check("POST", verify, &a);
    contract.check("DELETE", one, &node.call("DELETE", &here, Some(&rabo_token), None).await);
    contract.check("DELETE", one, &node.call("DELETE", &here, Some(&rabo_token), None).await);

    // Operational endpoints.
    for path in ["/.well-known/jwks.json", "/healthz", "/readyz"] {
        contract.check("GET", path, &node.call("GET", path, None, None).await);
    }
    node.stop().await;
}
