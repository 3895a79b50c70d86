//! The OBP v4.0.0 Account Webhooks API: every check in OBP's order, exact bodies and codes.

use serde_json::json;
use uuid::Uuid;
use webhookd_core::subscription::Subscription;

use crate::support::*;

const CREATE: &str = "/obp/v4.0.0/banks/gh.29.uk/account-web-hooks";
const LIST: &str = "/obp/v4.0.0/management/banks/gh.29.uk/account-web-hooks";

fn post_body(url: &str) -> serde_json::Value {
    json!({
        "account_id": "8ca8a7e4-6d02-40e3-a129-0b2bf89de9f0",
        "trigger_name": "OnBalanceChange",
        "url": url,
        "http_method": "POST",
        "http_protocol": "HTTP/1.1",
        "is_active": "true"
    })
}

fn assert_obp(a: &Answer, status: u16, message: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.body, json!({"code": status, "message": message}), "{}", a.text);
}

#[tokio::test]
async fn create_runs_obps_checks_in_obps_order() {
    let names = Names::new("obpapi");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let creator = node.token("user-1", None, &["CanCreateWebhook@gh.29.uk"]).await;
    let reader = node.token("user-2", None, &["CanGetWebhooks@gh.29.uk"]).await;
    let url = "http://127.0.0.1:9/hook";

    // 1. malformed JSON, even before credentials
    let a = node.call_raw("POST", CREATE, None, Some("{nope"), &[]).await;
    assert_obp(&a, 400, "OBP-10001: Incorrect json format.");
    // 2. credentials
    let a = node.call("POST", CREATE, None, Some(post_body(url))).await;
    assert_obp(&a, 401, "OBP-20001: User not logged in. Authentication is required!");
    assert!(a.header("www-authenticate").is_some());
    let a = node
        .call(
            "POST",
            CREATE,
            Some("whd_0000000000000000_00000000000000000000000000000000"),
            Some(post_body(url)),
        )
        .await;
    assert_eq!(a.status, 401);
    // 3. unknown bank, before the role
    let a = node
        .call("POST", "/obp/v4.0.0/banks/nobank/account-web-hooks", Some(&reader), Some(post_body(url)))
        .await;
    assert_obp(
        &a,
        404,
        "OBP-30001: Bank not found. Please specify a valid value for BANK_ID. Current BankId is nobank",
    );
    // 4. missing role, naming role and bank
    let a = node.call("POST", CREATE, Some(&reader), Some(post_body(url))).await;
    assert_obp(&a, 403, "OBP-20006: User is missing one or more roles: CanCreateWebhook at Bank(gh.29.uk)");
    let other_bank = node.token("user-3", None, &["CanCreateWebhook@bank-2"]).await;
    let a = node.call("POST", CREATE, Some(&other_bank), Some(post_body(url))).await;
    assert_eq!(a.status, 403);
    // 5. wrong shape (is_active as a JSON boolean is the wrong shape, as in OBP)
    let mut shape = post_body(url);
    shape["is_active"] = json!(true);
    let a = node.call("POST", CREATE, Some(&creator), Some(shape)).await;
    assert_obp(
        &a,
        400,
        "OBP-10001: Incorrect json format. The Json body should be the AccountWebhookPostJson ",
    );
    let a = node.call("POST", CREATE, Some(&creator), Some(json!({"account_id": "a"}))).await;
    assert_eq!(a.status, 400);
    // 6. trigger
    let mut trigger = post_body(url);
    trigger["trigger_name"] = json!("OnSomething");
    let a = node.call("POST", CREATE, Some(&creator), Some(trigger)).await;
    assert_obp(&a, 400, "OBP-10039: Incorrect Trigger name:OnSomething. Possible values are OnBalanceChange, OnCreditTransaction, OnDebitTransaction");
    // 7. boolean
    let mut boolean = post_body(url);
    boolean["is_active"] = json!("yes");
    let a = node.call("POST", CREATE, Some(&creator), Some(boolean)).await;
    assert_obp(&a, 400, "OBP-10019: Invalid Boolean. Could not convert value to a boolean type. Possible values of the json field is_active are true or false.");
    // Ours, after OBP's: method, protocol, url.
    for (field, value, code) in [
        ("http_method", "PATCH", "OBP-10404"),
        ("http_protocol", "HTTP/3", "OBP-10405"),
        ("url", "ftp://127.0.0.1/x", "OBP-10407"),
        ("url", "http://10.1.2.3/x", "OBP-10407"),
        ("url", "http://169.254.169.254/latest/meta-data", "OBP-10407"),
        ("url", "http://user:pw@127.0.0.1/x", "OBP-10407"),
    ] {
        let mut body = post_body(url);
        body[field] = json!(value);
        let a = node.call("POST", CREATE, Some(&creator), Some(body)).await;
        assert_eq!(a.status, 400, "{field}={value}: {}", a.text);
        assert!(a.body["message"].as_str().unwrap().starts_with(code), "{}", a.text);
    }
    let mut long = post_body(url);
    long["url"] = json!(format!("http://127.0.0.1/{}", "x".repeat(1100)));
    assert_eq!(node.call("POST", CREATE, Some(&creator), Some(long)).await.status, 400);

    // Success: 201, the webhook as OBP shows it, is_active a boolean, stored.
    let mut body = post_body(url);
    body["is_active"] = json!("TRUE");
    let a = node.call("POST", CREATE, Some(&creator), Some(body)).await;
    assert_eq!(a.status, 201, "{}", a.text);
    let id = a.body["account_webhook_id"].as_str().unwrap().to_string();
    assert!(Uuid::parse_str(&id).is_ok());
    assert_eq!(
        a.body,
        json!({
            "account_webhook_id": id, "bank_id": "gh.29.uk", "account_id": "8ca8a7e4-6d02-40e3-a129-0b2bf89de9f0",
            "trigger_name": "OnBalanceChange", "url": url, "http_method": "POST", "http_protocol": "HTTP/1.1",
            "created_by_user_id": "user-1", "is_active": true
        })
    );
    assert!(matches!(node.store.subscription(&id).unwrap(), Some(Subscription::Obp(w)) if w.is_active));
    node.stop().await;
}

#[tokio::test]
async fn update_and_list_follow_obp() {
    let names = Names::new("obpupd");
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let admin =
        node.token("admin", None, &["CanCreateWebhook@*", "CanUpdateWebhook@*", "CanGetWebhooks@*"]).await;
    let creator = node.token("user-1", None, &["CanCreateWebhook@gh.29.uk"]).await;
    let mut ids = Vec::new();
    for (i, token) in [(0, &admin), (1, &creator), (2, &creator)] {
        let mut body = post_body("http://127.0.0.1:9/h");
        body["account_id"] = json!(format!("acc-{}", i % 2));
        let a = node.call("POST", CREATE, Some(token), Some(body)).await;
        assert_eq!(a.status, 201);
        ids.push(a.body["account_webhook_id"].as_str().unwrap().to_string());
    }
    // A role for all banks works on any configured bank.
    let a = node
        .call(
            "POST",
            "/obp/v4.0.0/banks/bank-2/account-web-hooks",
            Some(&admin),
            Some(post_body("http://127.0.0.1:9/h")),
        )
        .await;
    assert_eq!(a.status, 201);

    // PUT: role, shape, boolean, unknown id, success.
    let put = |id: &str, active: &str| json!({"account_webhook_id": id, "is_active": active});
    let a = node.call("PUT", CREATE, Some(&creator), Some(put(&ids[0], "false"))).await;
    assert_obp(&a, 403, "OBP-20006: User is missing one or more roles: CanUpdateWebhook at Bank(gh.29.uk)");
    let a = node.call("PUT", CREATE, Some(&admin), Some(json!({"is_active": "false"}))).await;
    assert_obp(
        &a,
        400,
        "OBP-10001: Incorrect json format. The Json body should be the AccountWebhookPutJson ",
    );
    let a = node.call("PUT", CREATE, Some(&admin), Some(put(&ids[0], "maybe"))).await;
    assert_eq!(a.body["message"].as_str().unwrap().split(':').next(), Some("OBP-10019"));
    let missing = "OBP-30050: Webhook not found. Please specify a valid value for account_webhook_id.";
    assert_obp(
        &node.call("PUT", CREATE, Some(&admin), Some(put(&Uuid::new_v4().to_string(), "false"))).await,
        400,
        missing,
    );
    assert_obp(&node.call("PUT", CREATE, Some(&admin), Some(put("not-a-uuid", "false"))).await, 400, missing);
    // A webhook of another bank is not found under this bank.
    let bank2_id = a_id(&node, &admin).await;
    assert_obp(&node.call("PUT", CREATE, Some(&admin), Some(put(&bank2_id, "false"))).await, 400, missing);
    let a = node.call("PUT", CREATE, Some(&admin), Some(put(&ids[0], "false"))).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["is_active"], json!(false));
    assert_eq!(a.body["account_webhook_id"], json!(ids[0]));

    // GET: filters and pagination in creation order.
    let list = |q: &str| format!("{LIST}{q}");
    let a = node.call("GET", &list(""), Some(&creator), None).await;
    assert_obp(&a, 403, "OBP-20006: User is missing one or more roles: CanGetWebhooks at Bank(gh.29.uk)");
    let got = |a: &Answer| -> Vec<String> {
        a.body["web_hooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["account_webhook_id"].as_str().unwrap().to_string())
            .collect()
    };
    let a = node.call("GET", &list(""), Some(&admin), None).await;
    assert_eq!(a.status, 200);
    assert_eq!(got(&a), ids);
    assert_eq!(a.body["web_hooks"][0]["is_active"], json!(false));
    assert_eq!(
        got(&node.call("GET", &list("?limit=1&offset=1"), Some(&admin), None).await),
        [ids[1].clone()]
    );
    assert_eq!(
        got(&node.call("GET", &list("?account_id=acc-0"), Some(&admin), None).await),
        [ids[0].clone(), ids[2].clone()]
    );
    assert_eq!(
        got(&node.call("GET", &list("?user_id=user-1"), Some(&admin), None).await),
        [ids[1].clone(), ids[2].clone()]
    );
    for bad in ["?limit=0", "?limit=x", "?offset=-1"] {
        let a = node.call("GET", &list(bad), Some(&admin), None).await;
        assert_eq!(a.status, 400, "{bad}");
        assert!(a.body["message"]
            .as_str()
            .unwrap()
            .starts_with("OBP-10016: Incorrect filter Parameters in URL."));
    }
    let a = node.call("GET", &list(""), None, None).await;
    assert_obp(&a, 401, "OBP-20001: User not logged in. Authentication is required!");
    assert!(a.header("www-authenticate").is_some());
    // The same order on PUT and GET: JSON, credentials, bank, role.
    assert_obp(
        &node.call_raw("PUT", CREATE, None, Some("nope"), &[]).await,
        400,
        "OBP-10001: Incorrect json format.",
    );
    let a = node.call("PUT", CREATE, None, Some(put(&ids[0], "true"))).await;
    assert_obp(&a, 401, "OBP-20001: User not logged in. Authentication is required!");
    let a = node
        .call("PUT", "/obp/v4.0.0/banks/zz/account-web-hooks", Some(&creator), Some(put(&ids[0], "true")))
        .await;
    assert_obp(
        &a,
        404,
        "OBP-30001: Bank not found. Please specify a valid value for BANK_ID. Current BankId is zz",
    );
    let a = node.call("GET", "/obp/v4.0.0/management/banks/zz/account-web-hooks", Some(&creator), None).await;
    assert_obp(
        &a,
        404,
        "OBP-30001: Bank not found. Please specify a valid value for BANK_ID. Current BankId is zz",
    );
    node.stop().await;
}

async fn a_id(node: &Node, admin: &str) -> String {
    let a =
        node.call("GET", "/obp/v4.0.0/management/banks/bank-2/account-web-hooks", Some(admin), None).await;
    a.body["web_hooks"][0]["account_webhook_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_webhook_made_through_the_api_receives_events_and_survives_a_restart() {
    let receiver = webhookd_harness::receiver::Receiver::start().await.unwrap();
    let names = Names::new("obpe2e");
    let dir = tempfile::tempdir().unwrap();
    let c = config(&names, &amqp_url(), dir.path());
    let node = Node::start(c.clone()).await;
    let token = node.token("user-1", None, &["CanCreateWebhook@gh.29.uk", "CanGetWebhooks@gh.29.uk"]).await;
    let mut body = post_body(&receiver.url("/obp"));
    body["account_id"] = json!("acc-9");
    assert_eq!(node.call("POST", CREATE, Some(&token), Some(body)).await.status, 201);
    node.stop().await;

    let node = Node::start(c).await;
    let a = node.call("GET", LIST, Some(&token), None).await;
    assert_eq!(a.body["web_hooks"].as_array().unwrap().len(), 1, "persisted across the restart");
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    publisher.event(&balance_event(Uuid::new_v4(), "acc-9", "5.00")).await;
    let got = receiver.wait_for(Some("/obp"), 1, HANG).await.unwrap();
    assert_eq!(got[0].json().unwrap()["event_name"], "OnBalanceChange");
    node.stop().await;
}
