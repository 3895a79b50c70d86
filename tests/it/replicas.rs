//! Several webhookd replicas with the same configuration (own data dirs and listen addresses,
//! the same broker and names) act as one service for subscription changes: every change goes
//! through the catalog log and every replica applies it, in the same order, to its own store.

use serde_json::json;
use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::subscription::RaboEventType;
use webhookd_harness::receiver::{Receiver, Reply, Script};

use crate::support::*;

const SUBS: &str = "/v3/webhooks/subscriptions";

/// `n` replicas on one queue and one catalog stream, each with its own data dir.
async fn replicas(tag: &str, n: usize) -> (Names, Vec<tempfile::TempDir>, Vec<Node>) {
    let names = Names::new(tag);
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir().unwrap();
        nodes.push(Node::start(config(&names, &amqp_url(), dir.path())).await);
        dirs.push(dir);
    }
    (names, dirs, nodes)
}

/// One merchant token, minted through the first replica, valid on every replica once applied.
async fn merchant_token(nodes: &[Node], merchant: &str) -> String {
    let token = nodes[0].token(&format!("u-{merchant}"), Some(merchant), &[]).await;
    caught_up(nodes).await;
    token
}

/// Waits until every replica has applied what any of them has (so every change answered so far).
async fn caught_up(nodes: &[Node]) {
    let target = nodes.iter().filter_map(|n| n.running.catalog.applied_offset()).max();
    let offsets = || nodes.iter().map(|n| n.running.catalog.applied_offset()).collect::<Vec<_>>();
    eventually("every replica to apply the catalog log", HANG, || offsets().iter().all(|o| *o >= target))
        .await;
}

/// The `webhookd` CLI with `node`'s configuration (its broker and names), while it serves.
fn cli(node_config: &webhookd::Config, args: &[&str]) -> std::process::Output {
    let env = config_env(node_config);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let scratch = tempfile::tempdir().unwrap();
    webhookd(scratch.path(), args, &env)
}

/// Creates an enabled Rabo subscription to `url` for `event_type` through `node`; its id.
async fn create(node: &Node, token: &str, url: &str, event_type: &str) -> String {
    let body = json!({"status": "enabled", "url": url, "eventTypes": [event_type]});
    let created = node.call("POST", SUBS, Some(token), Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    created.body["id"].as_str().unwrap().to_string()
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn digests(nodes: &[Node]) -> Vec<String> {
    nodes.iter().map(|n| n.store.catalog_digest().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_created_on_one_replica_is_seen_and_matched_by_every_replica_that_takes_events() {
    let (names, _dirs, nodes) = replicas("repl", 3).await;
    let receiver = Receiver::start().await.unwrap();
    let token = merchant_token(&nodes, "m-1").await;
    let id = create(&nodes[0], &token, &receiver.url("/orders"), "order.finalized/v1").await;
    let one = format!("{SUBS}/{id}");
    // Read-your-writes on the replica that answered.
    assert_eq!(nodes[0].call("GET", &one, Some(&token), None).await.status, 200);
    caught_up(&nodes).await;
    for node in &nodes {
        let got = node.call("GET", &one, Some(&token), None).await;
        assert_eq!((got.status, &got.body["id"]), (200, &json!(id)), "{}", got.text);
    }
    assert!(digests(&nodes).windows(2).all(|w| w[0] == w[1]));

    // Events go to whichever replica takes them; each one matches the subscription.
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let ids: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    for event in &ids {
        publisher.event(&order_event(*event, "m-1")).await;
    }
    receiver.wait_for(Some("/orders"), ids.len(), HANG).await.unwrap();
    // Each event was taken by one replica; every replica's delivery log shows every one
    // delivered (all fold the same delivery log stream).
    for n in &nodes {
        eventually("every replica's log to show every event delivered", HANG, || {
            ids.iter().all(|e| {
                n.deliveries(*e)
                    .iter()
                    .any(|d| d.subscription_id == id && d.state == DeliveryState::Delivered)
            })
        })
        .await;
    }
    // The queue hands events to its consumers in turn: every replica sent some.
    let mut per_replica = Vec::new();
    for n in &nodes {
        let series = r#"webhookd_delivery_attempts_total{api="rabo",outcome="success"}"#;
        per_replica.push(webhookd_harness::replay::metric_value(&scrape(n).await, series).unwrap_or(0.0));
    }
    assert!(per_replica.iter().all(|n| *n > 0.0), "deliveries per replica: {per_replica:?}");
    assert_eq!(per_replica.iter().sum::<f64>(), ids.len() as f64, "{per_replica:?}");
    assert_eq!(receiver.received_on("/orders").len(), ids.len(), "an event was delivered twice");

    // Deleted on another replica: gone everywhere.
    assert_eq!(nodes[2].call("DELETE", &one, Some(&token), None).await.status, 204);
    assert_eq!(nodes[2].call("GET", &one, Some(&token), None).await.status, 404);
    let answered = nodes[2].running.catalog.applied_offset();
    eventually("every replica to apply the delete", HANG, || {
        nodes.iter().all(|n| n.running.catalog.applied_offset() >= answered)
    })
    .await;
    for node in &nodes {
        assert_eq!(node.call("GET", &one, Some(&token), None).await.status, 404);
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_creates_over_three_replicas_give_exactly_thirty_two_everywhere() {
    let (_names, _dirs, nodes) = replicas("repllimit", 3).await;
    let token = merchant_token(&nodes, "m-1").await;
    let receiver = Receiver::start().await.unwrap();
    let body = json!({"status": "enabled", "url": receiver.url("/x"), "eventTypes": ["test/v1"]});
    let answers = futures_util::future::join_all((0..40).map(|n| {
        let (node, body, token) = (&nodes[n % 3], body.clone(), token.clone());
        async move { node.call("POST", SUBS, Some(&token), Some(body)).await }
    }))
    .await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status != 201).collect();
    assert_eq!(created, 32, "{created} created");
    assert!(
        refused.iter().all(|a| a.status == 403 && a.text.contains("limit of 32")),
        "{:?}",
        refused[0].text
    );
    let last = nodes.iter().filter_map(|n| n.running.catalog.applied_offset()).max();
    eventually("every replica to apply every create", HANG, || {
        nodes.iter().all(|n| n.running.catalog.applied_offset() == last)
    })
    .await;
    for node in &nodes {
        let listed = node.call("GET", SUBS, Some(&token), None).await;
        assert_eq!(listed.body["subscriptions"].as_array().unwrap().len(), 32);
    }
    let digests = digests(&nodes);
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_different_fields_on_different_replicas_both_take_effect() {
    let (_names, _dirs, nodes) = replicas("replpatch", 2).await;
    let token = merchant_token(&nodes, "m-1").await;
    let receiver = Receiver::start().await.unwrap();
    for round in 0..10 {
        let one = format!("{SUBS}/{}", create(&nodes[0], &token, &receiver.url("/a"), "test/v1").await);
        caught_up(&nodes).await;
        let new_url = receiver.url(&format!("/b{round}"));
        let (a, b) = tokio::join!(
            nodes[0].call("PATCH", &one, Some(&token), Some(json!({"status": "disabled"}))),
            nodes[1].call("PATCH", &one, Some(&token), Some(json!({"url": new_url}))),
        );
        assert_eq!((a.status, b.status), (201, 201), "{} / {}", a.text, b.text);
        caught_up(&nodes).await;
        for node in &nodes {
            let got = node.call("GET", &one, Some(&token), None).await;
            assert_eq!(got.body["status"], json!("disabled"), "round {round}: {}", got.text);
            assert_eq!(got.body["url"], json!(new_url), "round {round}: {}", got.text);
        }
    }
    assert_eq!(nodes[0].store.catalog_digest().unwrap(), nodes[1].store.catalog_digest().unwrap());
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_change_the_broker_refuses_answers_503_in_the_api_format_and_reads_go_on() {
    let names = Names::new("repl503");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    // Long enough that the repeat below (sent 300 ms after the first request) reaches the
    // replica while the first still waits, even on a CI machine busy with other tests (one run
    // with 1.5 s saw both answered 503).
    c.catalog.write_timeout_ms = 5_000;
    let node = Node::start(c).await;
    let token = merchant_token(std::slice::from_ref(&node), "m-1").await;
    let obp =
        node.token("u-obp", None, &["CanCreateWebhook@*", "CanUpdateWebhook@*", "CanGetWebhooks@*"]).await;
    // The broker refuses the stream's declaration from now on: a queue of that name with
    // other arguments replaces it (as an operator's mistake would).
    let admin =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = admin.create_channel().await.unwrap();
    channel.queue_delete(names.catalog.as_str().into(), Default::default()).await.unwrap();
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(names.catalog.as_str().into(), durable, Default::default()).await.unwrap();
    // The applier cannot read the stream any more, so no change is applied in time.
    let receiver = Receiver::start().await.unwrap();
    let body = json!({"status": "enabled", "url": receiver.url("/x"), "eventTypes": ["test/v1"]});
    let a = node.call("POST", SUBS, Some(&token), Some(body.clone())).await;
    assert_eq!(a.status, 503, "{}", a.text);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert!(a.text.contains("may still be applied"), "{}", a.text);
    // With an idempotency key: a repeat while the first is still waiting here is told so (409);
    // a retry after the 503 runs again, and is safe: the key travels with the create, so however
    // many of them land, only the first creates.
    let key = [("idempotency-key", "k-503")];
    let keyed = {
        let (node, token, body) = (&node, token.clone(), body.to_string());
        async move { node.call_raw("POST", SUBS, Some(&token), Some(&body), &key).await }
    };
    let repeat = async {
        // Well within the 5 s the first request waits.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        node.call_raw("POST", SUBS, Some(&token), Some(&body.to_string()), &key).await
    };
    let (keyed, repeat) = tokio::join!(keyed, repeat);
    // (Whichever reached the replica first waited; under load that may be the repeat.)
    let mut statuses = [keyed.status, repeat.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [409, 503], "{} / {}", keyed.text, repeat.text);
    let retried = node.call_raw("POST", SUBS, Some(&token), Some(&body.to_string()), &key).await;
    assert_eq!(retried.status, 503, "{}", retried.text);
    let obp_create = json!({"account_id": "acc-1", "trigger_name": "OnBalanceChange", "url": receiver.url("/o"),
        "http_method": "POST", "http_protocol": "HTTP/1.1", "is_active": "true"});
    let o =
        node.call("POST", "/obp/v4.0.0/banks/gh.29.uk/account-web-hooks", Some(&obp), Some(obp_create)).await;
    assert_eq!(o.status, 503, "{}", o.text);
    assert_eq!(o.body["code"], json!(503), "{}", o.text);
    // Reads are served from the replica's own store meanwhile.
    assert_eq!(node.call("GET", SUBS, Some(&token), None).await.status, 200);
    node.stop().await;
}

#[tokio::test]
async fn a_catalog_record_that_cannot_be_read_stops_the_applier_there_even_after_a_restart() {
    let names = Names::new("replbad");
    let dir = tempfile::tempdir().unwrap();
    let c = config(&names, &amqp_url(), dir.path());
    let node = Node::start(c.clone()).await;
    let token = merchant_token(std::slice::from_ref(&node), "m-1").await;
    let receiver = Receiver::start().await.unwrap();
    let body = json!({"status": "enabled", "url": receiver.url("/x"), "eventTypes": ["test/v1"]});
    let created = node.call("POST", SUBS, Some(&token), Some(body.clone())).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let one = format!("{SUBS}/{}", created.body["id"].as_str().unwrap());
    wait_metrics(&node, &["webhookd_catalog_applier_up 1", "webhookd_catalog_applier_stopped 0"]).await;
    // A restart resumes at the last record applied (found where it was) and goes on.
    node.stop().await;
    let node = Node::start(c.clone()).await;
    let again = node.call("POST", SUBS, Some(&token), Some(body.clone())).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(node.call("GET", &one, Some(&token), None).await.status, 200);

    // Something that is not a catalog record lands in the stream.
    let admin =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = admin.create_channel().await.unwrap();
    channel.confirm_select(Default::default()).await.unwrap();
    channel
        .basic_publish(
            "".into(),
            names.catalog.as_str().into(),
            Default::default(),
            br#"{"v":1,"kind":"rename everything"}"#,
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    wait_metrics(&node, &["webhookd_catalog_applier_stopped 1", "webhookd_catalog_applier_up 0"]).await;
    let ready = node.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(ready.text.contains("catalog"), "{}", ready.text);
    // Changes are refused (nothing could be applied here), reads go on.
    assert_eq!(node.call("POST", SUBS, Some(&token), Some(body.clone())).await.status, 503);
    assert_eq!(node.call("GET", &one, Some(&token), None).await.status, 200);
    let offset = node.running.catalog.applied_offset();
    node.stop().await;

    // After a restart it stops at the same record: never skipped, nothing after it applied.
    let node = Node::start(c).await;
    wait_metrics(&node, &["webhookd_catalog_applier_stopped 1"]).await;
    assert_eq!(node.store.catalog_position().unwrap().map(|p| p.offset), offset);
    assert_eq!(node.call("GET", &one, Some(&token), None).await.status, 200);
    node.stop().await;
}

#[tokio::test]
async fn a_catalog_stream_created_again_is_noticed_and_never_read_from_the_wrong_place() {
    let names = Names::new("repldiverge");
    let dir = tempfile::tempdir().unwrap();
    let c = config(&names, &amqp_url(), dir.path());
    // Noticed at once, by the stream's first record (another life of the log), although the
    // new stream is shorter than this replica's position.
    let node = Node::start(c.clone()).await;
    let token = merchant_token(std::slice::from_ref(&node), "m-1").await;
    let receiver = Receiver::start().await.unwrap();
    let body = json!({"status": "enabled", "url": receiver.url("/x"), "eventTypes": ["test/v1"]});
    for _ in 0..3 {
        assert_eq!(node.call("POST", SUBS, Some(&token), Some(body.clone())).await.status, 201);
    }
    node.stop().await;
    // The stream is deleted and declared again (empty) while the replica is away.
    let admin =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = admin.create_channel().await.unwrap();
    channel.queue_delete(names.catalog.as_str().into(), Default::default()).await.unwrap();
    let node = Node::start(c).await;
    let metrics = wait_metrics(&node, &["webhookd_catalog_applier_stopped 1"]).await;
    assert!(metrics.lines().any(|l| l == "webhookd_catalog_applier_up 0"), "{metrics}");
    let ready = node.call("GET", "/readyz", None, None).await;
    assert!(ready.text.contains("does not continue"), "{}", ready.text);
    assert!(ready.text.contains("deleted and created again"), "{}", ready.text);
    assert_eq!(node.store.subscriptions_of_merchant("m-1").unwrap().len(), 3, "the catalog was kept");
    node.stop().await;
}

#[tokio::test]
async fn events_wait_until_the_catalog_is_caught_up() {
    let names = Names::new("replgate");
    // The catalog stream's name is taken by a queue of another kind: the applier cannot read.
    let admin =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = admin.create_channel().await.unwrap();
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(names.catalog.as_str().into(), durable, Default::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let receiver = Receiver::start().await.unwrap();
    let sub =
        rabo("m-1", &receiver.url("/orders"), &[webhookd_core::subscription::RaboEventType::OrderFinalized]);
    node.put(sub.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    let ready = node.call("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert!(ready.text.contains("catalog is not caught up"), "{}", ready.text);
    // Nothing is matched meanwhile (a wait cannot make this fail on a slow machine).
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert!(node.deliveries(event).is_empty(), "an event was matched before the catalog caught up");
    assert!(receiver.received_on("/orders").is_empty());

    // The stray queue goes: the applier declares its stream, catches up, and the event flows.
    channel.queue_delete(names.catalog.as_str().into(), Default::default()).await.unwrap();
    node.wait_state(event, &sub.id(), DeliveryState::Delivered).await;
    assert_eq!(node.call("GET", "/readyz", None, None).await.status, 200);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_and_revoked_by_the_cli_while_replicas_serve_work_on_every_replica() {
    let (names, dirs, nodes) = replicas("repltok", 2).await;
    let c = config(&names, &amqp_url(), dirs[0].path());
    let created = cli(
        &c,
        &[
            "token",
            "create",
            "--user-id",
            "u-1",
            "--merchant-id",
            "m-1",
            "--role",
            "CanGetWebhooks@*",
            "--role",
            "CanCreateWebhook@gh.29.uk",
            "--note",
            "ci",
        ],
    );
    let secret = stdout(&created).trim().to_string();
    assert!(secret.starts_with("whd_"), "{secret}");
    let bad_role = cli(&c, &["token", "create", "--user-id", "u", "--role", "CanCreateWebhook"]);
    assert!(!bad_role.status.success(), "a bank-scoped role needs @BANK or @*");

    // Works on every replica within the apply lag; no replica was stopped.
    caught_up(&nodes).await;
    for node in &nodes {
        let caller = node.store.authenticate(&secret).unwrap().expect("the token authenticates");
        assert_eq!((caller.user_id.as_str(), caller.merchant_id.as_deref()), ("u-1", Some("m-1")));
        assert!(
            caller.has_role("CanGetWebhooks", "any-bank") && !caller.has_role("CanCreateWebhook", "other")
        );
        assert_eq!(node.call("GET", SUBS, Some(&secret), None).await.status, 200);
    }

    let listed = stdout(&cli(&c, &["token", "list"]));
    let line = listed.lines().find(|l| l.contains("user=u-1")).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("active") && line.contains("merchant=m-1"), "{listed}");
    assert!(line.contains("CanGetWebhooks@*,CanCreateWebhook@gh.29.uk") && line.ends_with("ci"), "{listed}");
    assert!(!listed.contains(&secret[4..]), "the secret is never shown again");
    let id = line.split('\t').next().unwrap().to_string();
    // Only the hash travels: the secret is in no catalog record up to the token's.
    let read = read_stream_until(&amqp_url(), &names.catalog, |r| r.contains(&id)).await;
    assert!(read.iter().all(|r| !r.contains(&secret[4..])), "{read:?}");

    assert!(stdout(&cli(&c, &["token", "revoke", &id])).contains("revoked"));
    let missing = cli(&c, &["token", "revoke", "tok_0000000000000000"]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no token"));
    caught_up(&nodes).await;
    for node in &nodes {
        assert_eq!(node.call("GET", SUBS, Some(&secret), None).await.status, 401, "revoked on every replica");
    }
    assert!(stdout(&cli(&c, &["token", "list"]))
        .lines()
        .any(|l| l.starts_with(&id) && l.contains("revoked")));
    assert_eq!(digests(&nodes)[0], digests(&nodes)[1]);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_used_on_one_replica_is_answered_alike_by_every_replica() {
    let (_names, _dirs, nodes) = replicas("replidem", 3).await;
    let token = merchant_token(&nodes, "m-1").await;
    let body =
        json!({"status": "enabled", "url": "http://127.0.0.1:9/a", "eventTypes": ["test/v1"]}).to_string();
    let key = [("idempotency-key", "one-key")];
    let first = nodes[0].call_raw("POST", SUBS, Some(&token), Some(&body), &key).await;
    assert_eq!(first.status, 201, "{}", first.text);
    // Retried on another replica at once (before it may have applied the first): the same
    // answer, no second create.
    let retried = nodes[1].call_raw("POST", SUBS, Some(&token), Some(&body), &key).await;
    assert_eq!((retried.status, &retried.body), (201, &first.body), "{}", retried.text);
    assert_eq!(retried.header("location"), first.header("location"));
    let other = body.replace("test/v1", "order.finalized/v1");
    for node in &nodes {
        assert_eq!(node.call_raw("POST", SUBS, Some(&token), Some(&other), &key).await.status, 422);
    }
    // The same key raced on all three replicas at once: one create.
    let raced = [("idempotency-key", "raced")];
    let answers = futures_util::future::join_all(
        nodes.iter().map(|n| n.call_raw("POST", SUBS, Some(&token), Some(&body), &raced)),
    )
    .await;
    assert!(answers.iter().all(|a| a.status == 201), "{answers:?}");
    assert!(answers.iter().all(|a| a.body["id"] == answers[0].body["id"]), "{answers:?}");
    caught_up(&nodes).await;
    for node in &nodes {
        let listed = node.call("GET", SUBS, Some(&token), None).await;
        assert_eq!(listed.body["subscriptions"].as_array().unwrap().len(), 2, "{}", listed.text);
    }
    let d = digests(&nodes);
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    for node in nodes {
        node.stop().await;
    }
}

/// The offset of the stream's first retained record.
async fn first_offset(stream: &str) -> u64 {
    use futures_util::StreamExt;
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let connection = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.basic_qos(1, Default::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), AMQPValue::LongString(LongString::from("first")));
    let mut consumer =
        channel.basic_consume(stream.into(), "first".into(), Default::default(), args).await.unwrap();
    let message = tokio::time::timeout(HANG, consumer.next()).await.unwrap().unwrap().unwrap();
    let offset = match message.properties.headers().as_ref().unwrap().inner().get("x-stream-offset") {
        Some(AMQPValue::LongLongInt(n)) => *n as u64,
        other => panic!("{other:?}"),
    };
    let _ = connection.close(200, "done".into()).await;
    offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_or_wiped_replica_starts_from_a_snapshot_after_retention_dropped_the_first_records() {
    let names = Names::new("replsnap");
    let settings = |dir: &std::path::Path| {
        let mut c = config(&names, &amqp_url(), dir);
        // Small segments, a small size bound and frequent snapshots in many parts, so that
        // retention drops the first records within a few hundred changes.
        c.catalog.max_segment_size_bytes = 20_000;
        c.catalog.max_length_bytes = 60_000;
        c.catalog.snapshot_every_changes = 40;
        c.catalog.snapshot_part_bytes = 3_000;
        c
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for dir in &dirs {
        nodes.push(Node::start(settings(dir.path())).await);
    }
    let token = merchant_token(&nodes, "m-1").await;
    let receiver = Receiver::start().await.unwrap();
    let body = json!({"status": "enabled", "url": receiver.url("/x"), "eventTypes": ["test/v1"]});
    let mut ids = Vec::new();
    for n in 0..8 {
        let a = nodes[n % 2].call("POST", SUBS, Some(&token), Some(body.clone())).await;
        assert_eq!(a.status, 201, "{}", a.text);
        ids.push(a.body["id"].as_str().unwrap().to_string());
    }
    // Changes until retention has dropped the stream's first records.
    let mut n = 0;
    while first_offset(&names.catalog).await == 0 {
        let id = &ids[n % ids.len()];
        let patch = json!({"description": format!("change {n} {}", "x".repeat(300))});
        let a = nodes[n % 2].call("PATCH", &format!("{SUBS}/{id}"), Some(&token), Some(patch)).await;
        assert_eq!(a.status, 201, "{}", a.text);
        n += 1;
        assert!(n < 5_000, "retention never dropped a segment");
    }
    caught_up(&nodes).await;
    // A new replica with an empty data dir, and the second replica wiped and started again.
    let fresh = tempfile::tempdir().unwrap();
    let new = Node::start(settings(fresh.path())).await;
    let wiped = nodes.pop().unwrap();
    wiped.stop().await;
    std::fs::remove_dir_all(dirs[1].path()).unwrap();
    std::fs::create_dir_all(dirs[1].path()).unwrap();
    let wiped = Node::start(settings(dirs[1].path())).await;
    nodes.push(new);
    nodes.push(wiped);
    for node in &nodes {
        wait_ready(&node.running.http_addr.to_string()).await;
    }
    caught_up(&nodes).await;
    let d = digests(&nodes);
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    // They answer and match like the others: the token works, the subscriptions are there and
    // a change made now reaches them.
    for node in &nodes {
        let listed = node.call("GET", SUBS, Some(&token), None).await;
        assert_eq!(listed.body["subscriptions"].as_array().unwrap().len(), 8, "{}", listed.text);
    }
    assert_eq!(nodes[2].call("DELETE", &format!("{SUBS}/{}", ids[0]), Some(&token), None).await.status, 204);
    caught_up(&nodes).await;
    let d = digests(&nodes);
    assert!(d.iter().all(|x| *x == d[0]), "{d:?}");
    for node in nodes {
        node.stop().await;
    }
}

/// An API call to the webhookd at `addr`.
async fn call_at(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, String) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), format!("http://{addr}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_after_any_replica_answered_a_change_is_matched_with_it_on_every_replica() {
    use webhookd_harness::process::{mint_token, WebhookdProcess};
    let iterations: usize =
        std::env::var("WEBHOOKD_RANDOMISED_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let seed: u64 = std::env::var("WEBHOOKD_RANDOMISED_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(13);
    // Lanes of iterations run side by side (their accounts apart), which keeps the test short.
    const LANES: usize = 4;
    // Three real webhookd processes, each with its own data dir and address.
    let names = Names::new("replrand");
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_webhookd"));
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut processes = Vec::new();
    let mut addrs = Vec::new();
    let mut envs = Vec::new();
    for dir in &dirs {
        let mut c = config(&names, &amqp_url(), dir.path());
        c.http.listen = format!("127.0.0.1:{}", free_port());
        let env = config_env(&c);
        processes.push(WebhookdProcess::start(exe, env.clone(), &dir.path().join("webhookd.log")).unwrap());
        addrs.push(c.http.listen.clone());
        envs.push(env);
    }
    for addr in &addrs {
        wait_ready(addr).await;
    }
    let roles =
        ["--role", "CanCreateWebhook@*", "--role", "CanUpdateWebhook@*", "--role", "CanGetWebhooks@*"];
    let mut args = vec!["--user-id", "u-admin"];
    args.extend_from_slice(&roles);
    let admin = mint_token(exe, &envs[0], &args).await.unwrap();
    // Within the apply lag, the token works everywhere.
    for addr in &addrs {
        let deadline = tokio::time::Instant::now() + HANG;
        while call_at(addr, "GET", "/obp/v4.0.0/management/banks/gh.29.uk/account-web-hooks", &admin, None)
            .await
            .0
            != 200
        {
            assert!(tokio::time::Instant::now() < deadline, "the token never worked on {addr}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let receiver = Receiver::start().await.unwrap();
    let lanes = (0..LANES).map(|lane| {
        let count = iterations / LANES + usize::from(lane < iterations % LANES);
        lane_of_iterations(&addrs, &admin, &receiver, &names.exchange, lane, count, seed + lane as u64)
    });
    futures_util::future::join_all(lanes).await;
    for process in &mut processes {
        process.stop().await;
    }
    // Stopped, their stores can be read: the same catalog everywhere.
    let digests: Vec<String> = dirs
        .iter()
        .map(|d| webhookd_store::Store::open(&d.path().join("store")).unwrap().catalog_digest().unwrap())
        .collect();
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
}

/// One lane of the randomised test: `count` iterations on accounts `acc-LANE-I`.
async fn lane_of_iterations(
    addrs: &[String],
    admin: &str,
    receiver: &Receiver,
    exchange: &str,
    lane: usize,
    count: usize,
    seed: u64,
) {
    use rand::{Rng, SeedableRng};
    const HOOKS: &str = "/obp/v4.0.0/banks/gh.29.uk/account-web-hooks";
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let publisher = Publisher::connect(&amqp_url(), exchange).await;
    let create = |account: &str, path: &str| {
        json!({"account_id": account, "trigger_name": "OnBalanceChange", "url": receiver.url(path),
            "http_method": "POST", "http_protocol": "HTTP/1.1", "is_active": "true"})
    };
    let mut main_ids = Vec::new();
    for i in 0..count {
        // Created on one replica (and a witness on another); the event published at once, taken
        // by whichever replica.
        let account = format!("acc-{lane}-{i}");
        for kind in ["m", "v"] {
            let addr = &addrs[rng.gen_range(0..addrs.len())];
            let body = create(&account, &format!("/{kind}/{lane}-{i}"));
            let (status, body, text) = call_at(addr, "POST", HOOKS, admin, Some(body)).await;
            assert_eq!(status, 201, "{text}");
            if kind == "m" {
                main_ids.push(body["account_webhook_id"].as_str().unwrap().to_string());
            }
        }
        publisher.event(&balance_event(Uuid::new_v4(), &account, "1.00")).await;
        // The previous account's webhook disabled on one replica; an event published at once
        // must reach only its witness.
        if i > 0 {
            let disable = json!({"account_webhook_id": main_ids[i - 1], "is_active": "false"});
            let addr = &addrs[rng.gen_range(0..addrs.len())];
            let (status, _, text) = call_at(addr, "PUT", HOOKS, admin, Some(disable)).await;
            assert_eq!(status, 200, "{text}");
            publisher.event(&balance_event(Uuid::new_v4(), &format!("acc-{lane}-{}", i - 1), "2.00")).await;
        }
    }
    for i in 0..count {
        let (main, witness) = (format!("/m/{lane}-{i}"), format!("/v/{lane}-{i}"));
        receiver
            .wait_for(Some(&main), 1, HANG)
            .await
            .unwrap_or_else(|e| panic!("{main} missed its event: {e}"));
        let expected = if i + 1 < count { 2 } else { 1 };
        receiver.wait_for(Some(&witness), expected, HANG).await.unwrap_or_else(|e| panic!("{witness}: {e}"));
    }
    // Every event after a disable was taken (its witness has it) and none reached the disabled
    // webhook: each one has its creation event only.
    for i in 0..count {
        let got = receiver.received_on(&format!("/m/{lane}-{i}"));
        let amounts: Vec<String> =
            got.iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
        assert_eq!(got.len(), 1, "/m/{lane}-{i}: {amounts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_empty_data_dir_shows_and_recovers_what_a_replica_now_gone_attempted() {
    const EVENTS: usize = 8;
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/ok", Script::always(Reply::ack()));
    receiver.script("/down", Script::always(Reply::status(500)));
    let names = Names::new("log-replicas");
    let lost_dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), lost_dir.path());
    c.retry.retries = 1;
    c.retry.initial_delay_ms = 100;
    let lost = Node::start(c.clone()).await;
    // Put into this replica's store only: the other replica never sees the subscriptions.
    let ok = rabo("m-1", &receiver.url("/ok"), &[RaboEventType::OrderFinalized]);
    let down = rabo("m-1", &receiver.url("/down"), &[RaboEventType::OrderFinalized]);
    lost.put(ok.clone()).await;
    lost.put(down.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let events: Vec<Uuid> = (0..EVENTS).map(|_| Uuid::new_v4()).collect();
    for event in &events {
        publisher.event(&order_event(*event, "m-1")).await;
    }
    for event in &events {
        lost.wait_state(*event, &ok.id(), DeliveryState::Delivered).await;
        lost.wait_state(*event, &down.id(), DeliveryState::Failed).await;
    }
    // The replica goes, and its data dir with it.
    lost.stop().await;
    let gone = lost_dir.path().to_path_buf();
    drop(lost_dir);
    assert!(!gone.exists());

    // A replica started afterwards with an empty data dir rebuilds the log from the stream.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Node::start(config(&names, &amqp_url(), other_dir.path())).await;
    assert_eq!(other.store.subscriptions().count(), 0, "it never saw the subscriptions");
    let store = other.store.clone();
    let states = |sub: &str, state: DeliveryState| {
        store.deliveries_of_subscription(sub).unwrap().iter().filter(|d| d.state == state).count()
    };
    eventually("the other replica's log to show what the gone one did", HANG, || {
        states(&ok.id(), DeliveryState::Delivered) == EVENTS
            && states(&down.id(), DeliveryState::Failed) == EVENTS
    })
    .await;

    // Its admin API shows each failed delivery with both attempts, and recovers them all.
    let admin = other.token("ops", None, &["CanManageDeliveries"]).await;
    let list = format!("/admin/v1/deliveries?subscription_id={}&state=failed", down.id());
    let a = other.call("GET", &list, Some(&admin), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let failed = a.body["deliveries"].as_array().unwrap();
    assert_eq!(failed.len(), EVENTS);
    for d in failed {
        let statuses: Vec<_> =
            d["attempt_log"].as_array().unwrap().iter().map(|x| x["status"].clone()).collect();
        assert_eq!(statuses, [json!(500), json!(500)], "{d}");
    }
    receiver.script("/down", Script::always(Reply::ack()));
    let path = format!("/admin/v1/subscriptions/{}/recover", down.id());
    let a = other.call("POST", &path, Some(&admin), Some(json!({"since": "2000-01-01T00:00:00Z"}))).await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["recovered"], json!(EVENTS));
    eventually("every recovered delivery to be delivered at its third attempt", HANG, || {
        let log = store.deliveries_of_subscription(&down.id()).unwrap();
        log.len() == EVENTS && log.iter().all(|d| d.state == DeliveryState::Delivered && d.attempts == 3)
    })
    .await;
    let acked = receiver.received_on("/down").iter().filter(|r| r.status_sent == 200).count();
    assert_eq!(acked, EVENTS);
    other.stop().await;
}

#[tokio::test]
async fn a_delivery_log_stream_created_again_stops_the_follower_instead_of_skipping_records() {
    let names = Names::new("logdiverge");
    let dir = tempfile::tempdir().unwrap();
    let c = config(&names, &amqp_url(), dir.path());
    let receiver = Receiver::start().await.unwrap();
    let sub = rabo("m-1", &receiver.url("/orders"), &[RaboEventType::OrderFinalized]);
    let node = Node::start(c.clone()).await;
    node.put(sub.clone()).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    for _ in 0..3 {
        let event = Uuid::new_v4();
        publisher.event(&order_event(event, "m-1")).await;
        node.wait_state(event, &sub.id(), DeliveryState::Delivered).await;
    }
    let folded = node.store.log_position().unwrap().expect("records were folded").offset;
    node.stop().await;
    // The stream is deleted while the replica is away; it is declared again, empty, and fills
    // with new records at the offsets this replica already folded.
    let admin =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = admin.create_channel().await.unwrap();
    channel.queue_delete(names.log.as_str().into(), Default::default()).await.unwrap();
    let node = Node::start(c).await;
    let metrics = scrape(&node).await;
    assert!(metrics.lines().any(|l| l == "webhookd_delivery_log_follower_stopped 0"), "{metrics}");
    // One event at a time, each delivered before the next, so that each makes a record of its
    // own, until the new stream reaches the offset this replica folded last.
    let stopped = "webhookd_delivery_log_follower_stopped 1";
    let mut sent = 3;
    while !scrape(&node).await.lines().any(|l| l == stopped) {
        assert!(sent < 3 + folded as usize + 30, "the follower never noticed the new stream");
        publisher.event(&order_event(Uuid::new_v4(), "m-1")).await;
        sent += 1;
        // Deliveries go on meanwhile.
        receiver.wait_for(Some("/orders"), sent, HANG).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let metrics = scrape(&node).await;
    assert!(metrics.lines().any(|l| l == "webhookd_delivery_log_follower_up 0"), "{metrics}");
    // The view keeps what it had, and stays there: nothing of the new stream was folded.
    assert_eq!(node.store.log_position().unwrap().map(|p| p.offset), Some(folded));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscription_disabled_by_several_replicas_at_once_is_counted_once() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/bad", Script::always(Reply::status(500)));
    let names = Names::new("disable-once");
    let (mut dirs, mut nodes, mut configs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(&names, &amqp_url(), dir.path());
        // The passes are run by the test below, on both replicas at once.
        c.auto_disable.enabled = false;
        c.auto_disable.failing_for_seconds = 1;
        c.retry.retries = 8;
        c.retry.initial_delay_ms = 300;
        configs.push(c.clone());
        nodes.push(Node::start(c).await);
        dirs.push(dir);
    }
    let token = merchant_token(&nodes, "m-once").await;
    let bad_id = create(&nodes[0], &token, &receiver.url("/bad"), "order.finalized/v1").await;
    caught_up(&nodes).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    publisher.event(&order_event(Uuid::new_v4(), "m-once")).await;

    // Every replica folds every attempt, so each sees the subscription failing for the period.
    let now = || webhookd_core::clock::Clock::real().now_ms();
    for node in &nodes {
        let (store, id) = (node.store.clone(), bad_id.clone());
        eventually("every replica to see the subscription failing for a second", HANG, || {
            store.failing_since_before(now() - 1_000).unwrap().iter().any(|(failing, _)| *failing == id)
        })
        .await;
    }
    // Both replicas propose the disable at once; the catalog applies both, in order, on both.
    let metrics = [webhookd_metrics::Metrics::new(), webhookd_metrics::Metrics::new()];
    let at = now();
    let (first, second) = tokio::join!(
        webhookd::maintenance::auto_disable(&nodes[0].running.catalog, &configs[0], &metrics[0], at),
        webhookd::maintenance::auto_disable(&nodes[1].running.catalog, &configs[1], &metrics[1], at),
    );
    let counted = [first.unwrap(), second.unwrap()];
    assert_eq!(
        counted.iter().sum::<usize>(),
        1,
        "counted by the one whose change found it active: {counted:?}"
    );
    for node in &nodes {
        let subscription = node.store.subscription(&bad_id).unwrap().unwrap();
        assert!(!subscription.is_active());
    }
    for node in nodes {
        node.stop().await;
    }
}
