//! kill -9 of the real binary in the middle of a stream loses nothing.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use uuid::Uuid;
use webhookd_core::delivery::DeliveryState;
use webhookd_core::ids::rabo_event_id;
use webhookd_core::subscription::RaboEventType;
use webhookd_harness::receiver::{Receiver, Reply, Script};
use webhookd_store::{Change, Store};

use crate::support::*;

fn spawn(env: &[(String, String)], log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_webhookd"))
        .arg("serve")
        .envs(env.iter().cloned())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn kill_9_mid_stream_loses_no_event() {
    const EVENTS: usize = 400;
    let receiver = Receiver::start().await.unwrap();
    // A little latency so that the kill lands while deliveries are in flight.
    receiver.script(
        "/orders",
        Script::always(Reply::Delay { after: Duration::from_millis(5), status: 200, body: "ack".into() }),
    );
    let names = Names::new("kill");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.delivery.timeout_ms = 2_000;
    c.delivery.connect_timeout_ms = 500;
    {
        // Subscriptions go in before the process starts (the store is single-process).
        std::fs::create_dir_all(dir.path()).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        store
            .apply(Change::Put {
                subscription: rabo("m-1", &receiver.url("/orders"), &[RaboEventType::OrderFinalized]),
            })
            .await
            .unwrap();
    }
    c.http.listen = format!("127.0.0.1:{}", free_port());
    let env = config_env(&c);
    let mut child = spawn(&env, &dir.path().join("first.log"));
    // The process declares the topology; publish once it is ready.
    wait_ready(&c.http.listen).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let mut expected = HashSet::new();
    for _ in 0..EVENTS {
        let id = Uuid::new_v4();
        publisher.publish("order.finalized", order_event(id, "m-1").to_string().as_bytes()).await;
        expected.insert(rabo_event_id(id));
    }
    receiver.wait_for(Some("/orders"), EVENTS / 4, HANG).await.unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = receiver.received_on("/orders").len();

    let mut child = spawn(&env, &dir.path().join("second.log"));
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let seen: HashSet<String> = receiver
            .received_on("/orders")
            .iter()
            .filter_map(|r| r.header("x-smartpay-event-id").map(String::from))
            .collect();
        if expected.is_subset(&seen) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let missing = expected.difference(&seen).count();
            let _ = child.kill();
            panic!("{missing} of {EVENTS} events never delivered (delivered before the kill: {at_kill})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    child.wait().unwrap();
    let all = receiver.received_on("/orders");
    let duplicates = all.len() - EVENTS;
    // Duplicates are bounded by what was in flight or not yet recorded at the kill.
    assert!(duplicates <= 256 + 512, "{duplicates} duplicates");
    for r in &all {
        let body = r.json().unwrap();
        assert_eq!(
            body["id"].as_str(),
            r.header("x-smartpay-event-id"),
            "a duplicate carries the same event id"
        );
    }
    println!(
        "kill -9: {EVENTS} events, {at_kill} delivered before the kill, {duplicates} duplicates, 0 lost"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_0() {
    let receiver = Receiver::start().await.unwrap();
    // Slow enough that SIGTERM arrives while the request is in flight.
    receiver.script(
        "/slow",
        Script::always(Reply::Delay { after: Duration::from_millis(1500), status: 200, body: "ack".into() }),
    );
    let names = Names::new("sigterm");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), dir.path());
    c.http.listen = format!("127.0.0.1:{}", free_port());
    let sub = rabo("m-1", &receiver.url("/slow"), &[RaboEventType::OrderFinalized]);
    {
        std::fs::create_dir_all(dir.path()).unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        store.apply(Change::Put { subscription: sub.clone() }).await.unwrap();
    }
    let mut child = spawn(&config_env(&c), &dir.path().join("serve.log"));
    wait_ready(&c.http.listen).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let event = Uuid::new_v4();
    publisher.event(&order_event(event, "m-1")).await;
    receiver.wait_for(Some("/slow"), 1, HANG).await.unwrap();

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exit.success(), "webhookd exits 0 on SIGTERM, got {exit:?}");
    // Log-based alerting fires on errors: a clean stop logs none (lapin logged a connection
    // error when a dropped channel's close met the connection's).
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "a clean stop logged errors:\n{}", errors.join("\n"));

    // The in-flight attempt finished, its outcome is in the delivery log stream and its event
    // was acknowledged: a replica started afterwards shows it delivered, and nothing is sent again.
    let next = Node::start(config(&names, &amqp_url(), dir.path())).await;
    let d = next.wait_state(event, &sub.id(), webhookd_core::delivery::DeliveryState::Delivered).await;
    assert_eq!(d.attempts, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received_on("/slow").len(), 1, "the event was acknowledged before the exit");
    next.stop().await;
}

#[tokio::test]
async fn a_replica_killed_with_its_data_dir_deleted_leaves_its_pending_retries_to_another() {
    const EVENTS: usize = 50;
    let receiver = Receiver::start().await.unwrap();
    receiver.script("/orders", Script::always(Reply::status(503)));
    let names = Names::new("lost-replica");
    let lost_dir = tempfile::tempdir().unwrap();
    let mut c = config(&names, &amqp_url(), lost_dir.path());
    c.retry.initial_delay_ms = 5_000;
    let subscription = rabo("m-1", &receiver.url("/orders"), &[RaboEventType::OrderFinalized]);
    let subscription_id = subscription.id();
    {
        let store = Store::open(&lost_dir.path().join("store")).unwrap();
        store.apply(Change::Put { subscription }).await.unwrap();
    }
    c.http.listen = format!("127.0.0.1:{}", free_port());
    let mut child = spawn(&config_env(&c), &std::env::temp_dir().join(format!("{}.log", names.queue)));
    wait_ready(&c.http.listen).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let mut expected = HashSet::new();
    for _ in 0..EVENTS {
        let id = Uuid::new_v4();
        publisher.event(&order_event(id, "m-1")).await;
        expected.insert(rabo_event_id(id));
    }
    // Every first attempt failed and its retry waits in the broker's 5 s tier.
    let tier = format!("{}.5000ms", names.retry);
    let waited = std::time::Instant::now();
    while publisher.queue_depth(&tier).await < EVENTS as u32 {
        assert!(waited.elapsed() < HANG, "the retries never reached their tier");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The replica is lost with its disk.
    child.kill().unwrap();
    let _ = child.wait();
    let lost = lost_dir.path().to_path_buf();
    drop(lost_dir);
    assert!(!lost.exists());
    receiver.script("/orders", Script::always(Reply::ack()));

    // Another replica, with an empty store that never had the subscription, sends them all.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Node::start(config(&names, &amqp_url(), other_dir.path())).await;
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let acked: HashSet<String> = receiver
            .received_on("/orders")
            .iter()
            .filter(|r| r.status_sent == 200)
            .filter_map(|r| r.header("x-smartpay-event-id").map(str::to_string))
            .collect();
        if acked == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {EVENTS} pending retries never delivered",
            expected.difference(&acked).count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(other.store.subscriptions().count(), 0, "the other replica never saw the subscription");
    // Its delivery log shows each one delivered at the second attempt (the first was the lost
    // replica's, which the retry message carried over).
    eventually("the other replica's log to show every delivery delivered", HANG, || {
        let log = other.store.deliveries_of_subscription(&subscription_id).unwrap();
        log.len() == EVENTS && log.iter().all(|d| d.state == DeliveryState::Delivered && d.attempts == 2)
    })
    .await;
    other.stop().await;
}
