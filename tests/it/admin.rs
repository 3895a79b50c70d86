//! The delivery log, redelivery and bulk recovery through the admin API.

use serde_json::json;
use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::RaboEventType;
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::contract::Contract;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_shows_every_attempt_and_failed_deliveries_can_be_sent_again() {
    let contract = Contract::load();
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/flaky", Script::fail_then(2, Reply::status(503), Reply::ack()));
    receiver.script("/down", Script::always(Reply::status(500)));
    receiver.script("/down2", Script::always(Reply::status(502)));
    let names = Names::new("admin");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.retry.retries = 2;
    c.retry.initial_delay_ms = 100;
    let node = Node::start(c).await;
    let admin = node.token("ops", None, &["CanManageDeliveries"]).await;
    let merchant = node.token("u", Some("m-1"), &[]).await;
    let flaky = rabo("m-1", &receiver.url("/flaky"), &[RaboEventType::OrderFinalized]);
    let down = rabo("m-1", &receiver.url("/down"), &[RaboEventType::OrderFinalized]);
    let down2 = rabo("m-1", &receiver.url("/down2"), &[RaboEventType::OrderFinalized]);
    for s in [&flaky, &down, &down2] {
        node.put(s.clone()).await;
    }
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    node.wait_state(event, &flaky.id(), DeliveryState::Delivered).await;
    let failed = node.wait_state(event, &down.id(), DeliveryState::Failed).await;
    node.wait_state(event, &down2.id(), DeliveryState::Failed).await;

    // Auth: a token, and the role.
    let list = format!("/admin/v1/deliveries?subscription_id={}", flaky.id());
    let a = node.call("GET", &list, None, None).await;
    assert_eq!(a.status, 401);
    contract.check("GET", "/admin/v1/deliveries", &a);
    let a = node.call("GET", &list, Some(&merchant), None).await;
    assert_eq!(a.status, 403);
    contract.check("GET", "/admin/v1/deliveries", &a);

    // The log of the retried delivery: every attempt, in order.
    let a = node.call("GET", &list, Some(&admin), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    contract.check("GET", "/admin/v1/deliveries", &a);
    let d = &a.body["deliveries"][0];
    assert_eq!(d["state"], "delivered");
    let log = d["attempt_log"].as_array().unwrap();
    assert_eq!(log.iter().map(|x| x["status"].as_u64().unwrap()).collect::<Vec<_>>(), [503, 503, 200]);
    assert_eq!(
        log.iter().map(|x| x["outcome"].as_str().unwrap()).collect::<Vec<_>>(),
        ["pending", "pending", "delivered"]
    );
    assert_eq!(log[2]["response_excerpt"], "ack");
    // By event, filtered by state.
    let by_event = node
        .call("GET", &format!("/admin/v1/deliveries?event_id={event}&state=failed"), Some(&admin), None)
        .await;
    assert_eq!(by_event.body["deliveries"].as_array().unwrap().len(), 2);
    // By the event id a Rabo receiver knows (x-smartpay-event-id), as by the UUID.
    let ev = receiver.received_on("/flaky")[0].header("x-smartpay-event-id").unwrap().to_string();
    assert!(ev.starts_with("ev_"), "{ev}");
    let by_ev = node.call("GET", &format!("/admin/v1/deliveries?event_id={ev}"), Some(&admin), None).await;
    assert_eq!(by_ev.status, 200, "{}", by_ev.text);
    contract.check("GET", "/admin/v1/deliveries", &by_ev);
    let mut subscriptions: Vec<&str> = by_ev.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["subscription_id"].as_str().unwrap())
        .collect();
    subscriptions.sort_unstable();
    let mut expected = [flaky.id(), down.id(), down2.id()];
    expected.sort_unstable();
    assert_eq!(subscriptions, expected);
    // Failed deliveries across every subscription, within a time window of their events.
    let failed_since =
        |since: &str, until: &str| format!("/admin/v1/deliveries?state=failed&since={since}&until={until}");
    let all_failed = node
        .call("GET", &failed_since("2020-01-01T00:00:00Z", "2100-01-01T00:00:00Z"), Some(&admin), None)
        .await;
    assert_eq!(all_failed.status, 200, "{}", all_failed.text);
    contract.check("GET", "/admin/v1/deliveries", &all_failed);
    let listed = all_failed.body["deliveries"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{}", all_failed.text);
    assert!(listed.iter().all(|d| d["state"] == "failed" && d["event_id"] == event.to_string()));
    let later = node
        .call("GET", &failed_since("2100-01-01T00:00:00Z", "2101-01-01T00:00:00Z"), Some(&admin), None)
        .await;
    assert_eq!(later.body["deliveries"].as_array().map(Vec::len), Some(0), "{}", later.text);
    let everything = node.call("GET", "/admin/v1/deliveries", Some(&admin), None).await;
    assert_eq!(everything.body["deliveries"].as_array().map(Vec::len), Some(3), "{}", everything.text);
    for bad in [
        "/admin/v1/deliveries?event_id=x",
        "/admin/v1/deliveries?event_id=ev_123",
        "/admin/v1/deliveries?subscription_id=a&state=lost",
        "/admin/v1/deliveries?subscription_id=a&event_id=ev_2Ct1UQqNpIJbD4rGMYmuE",
        "/admin/v1/deliveries?state=failed&since=yesterday",
    ] {
        let a = node.call("GET", bad, Some(&admin), None).await;
        assert_eq!(a.status, 400, "{bad}");
        contract.check("GET", "/admin/v1/deliveries", &a);
    }

    // Redeliver one failed delivery: same id, same event id, a new schedule.
    receiver.script("/down", Script::always(Reply::ack()));
    let path = format!("/admin/v1/deliveries/{}/redeliver", failed.id);
    let a = node.call("POST", &path, Some(&admin), None).await;
    assert_eq!(a.status, 202, "{}", a.text);
    contract.check("POST", "/admin/v1/deliveries/{delivery_id}/redeliver", &a);
    let got = receiver.wait_for(Some("/down"), 4, HANG).await.unwrap();
    let ids: Vec<_> = got.iter().map(|r| r.header("x-smartpay-event-id").unwrap().to_string()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "the redelivery carries the same event id");
    let done = node.wait_state(event, &down.id(), DeliveryState::Delivered).await;
    assert_eq!(done.attempts, 4);
    let one = node.call("GET", &format!("/admin/v1/deliveries/{}", failed.id), Some(&admin), None).await;
    contract.check("GET", "/admin/v1/deliveries/{delivery_id}", &one);
    assert_eq!(one.body["attempt_log"].as_array().unwrap().len(), 4);
    let again = node.call("POST", &path, Some(&admin), None).await;
    assert_eq!(again.status, 409, "a delivered one is not redelivered");
    contract.check("POST", "/admin/v1/deliveries/{delivery_id}/redeliver", &again);
    let missing = node
        .call("POST", &format!("/admin/v1/deliveries/{}/redeliver", Uuid::new_v4()), Some(&admin), None)
        .await;
    assert_eq!(missing.status, 404);

    // Bulk recovery of a subscription since a time.
    receiver.script("/down2", Script::always(Reply::ack()));
    let recover = format!("/admin/v1/subscriptions/{}/recover", down2.id());
    let bad = node.call("POST", &recover, Some(&admin), Some(json!({"since": "yesterday"}))).await;
    assert_eq!(bad.status, 400);
    contract.check("POST", "/admin/v1/subscriptions/{subscription_id}/recover", &bad);
    let a = node.call("POST", &recover, Some(&admin), Some(json!({"since": "2020-01-01T00:00:00Z"}))).await;
    assert_eq!((a.status, a.body["recovered"].as_u64()), (202, Some(1)), "{}", a.text);
    contract.check("POST", "/admin/v1/subscriptions/{subscription_id}/recover", &a);
    node.wait_state(event, &down2.id(), DeliveryState::Delivered).await;

    // The same through `webhookd deliveries ...` at a shell.
    let api = format!("http://{}", node.running.http_addr);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_webhookd"))
            .args(["deliveries", "--api", &api])
            .args(args)
            .env("WEBHOOKD_TOKEN", &admin)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let event_text = event.to_string();
    let (ok, table, _) = tokio::task::block_in_place(|| cli(&["list", "--event", &event_text]));
    assert!(ok);
    assert_eq!(table.lines().count(), 4, "a header and three deliveries:\n{table}");
    assert_eq!(table.matches("\tdelivered\t").count(), 3, "{table}");
    let (ok, table, err) = tokio::task::block_in_place(|| cli(&["list", "--event", &ev]));
    assert!(ok, "{err}");
    assert_eq!(table.lines().count(), 4, "by the ev_ id too:\n{table}");
    let (ok, table, err) = tokio::task::block_in_place(|| {
        cli(&["list", "--state", "delivered", "--since", "2020-01-01T00:00:00Z"])
    });
    assert!(ok, "{err}");
    assert_eq!(table.matches("\tdelivered\t").count(), 3, "across subscriptions:\n{table}");
    let shown = tokio::task::block_in_place(|| cli(&["show", &failed.id.to_string()]));
    let shown: serde_json::Value = serde_json::from_str(&shown.1).unwrap();
    assert_eq!(shown["attempt_log"].as_array().unwrap().len(), 4);
    let (ok, _, err) = tokio::task::block_in_place(|| cli(&["redeliver", &failed.id.to_string()]));
    assert!(!ok && err.contains("409"), "{err}");
    node.stop().await;
}
