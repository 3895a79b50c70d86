//! The replay harness end to end: a capture through the real binary, scripted receivers, the
//! report. Each reliability property of the pipeline is a scenario in tests/scenarios/ (receiver
//! outage, receiver down, disabled and deleted subscriptions with pending retries, restart and
//! kill -9 mid-replay). Also keeps tests/scenarios/outage.jsonl in step with the code that
//! describes it.

use webhookd_harness::capture::{read_capture, CapturedMessage, CapturedProperties};
use webhookd_harness::replay::{replay, ReplayOptions, Speed};
use webhookd_harness::report::Report;
use webhookd_harness::scenario::Scenario;

use crate::support::*;

/// The capture of tests/scenarios/outage.toml: merchant-01 has three orders, merchant-02 and
/// merchant-03 one each, account acc-0001 two balance changes (one credit, one debit) and
/// acc-0002 one; and one poison message.
fn outage_capture() -> Vec<CapturedMessage> {
    let start = time::OffsetDateTime::from_unix_timestamp(1_795_514_400).unwrap();
    let at = |n: i64| start + time::Duration::milliseconds(n * 10);
    let id = |n: u128| uuid::Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_0000 | n);
    let mut out = Vec::new();
    let mut add = |n: i64, key: &str, body: String| {
        out.push(CapturedMessage::from_parts(
            "webhookd.events",
            key,
            CapturedProperties::default(),
            body.as_bytes(),
            at(n),
        ));
    };
    for (n, merchant) in [
        (1u128, "merchant-01"),
        (2, "merchant-01"),
        (3, "merchant-02"),
        (4, "merchant-03"),
        (5, "merchant-01"),
    ] {
        add(n as i64, "order.finalized", order_event(id(n), merchant).to_string());
    }
    for (n, account, amount) in
        [(6u128, "acc-0001", "25.00"), (7, "acc-0002", "1.00"), (8, "acc-0001", "-3.10")]
    {
        add(n as i64, "balance.changed", balance_event(id(n), account, amount).to_string());
    }
    add(9, "order.finalized", "{not json".to_string());
    out
}

#[test]
fn the_committed_outage_capture_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/scenarios/outage.jsonl");
    let expected = outage_capture();
    if std::env::var_os("WEBHOOKD_REGENERATE_SCENARIOS").is_some() {
        let mut w = webhookd_harness::capture::CaptureWriter::create(std::path::Path::new(path)).unwrap();
        for m in &expected {
            w.write(m).unwrap();
        }
    }
    let committed = read_capture(std::path::Path::new(path))
        .expect("run with WEBHOOKD_REGENERATE_SCENARIOS=1 to write it");
    assert_eq!(committed, expected, "regenerate with WEBHOOKD_REGENERATE_SCENARIOS=1");
}

/// A file of the repository.
fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn options() -> ReplayOptions {
    ReplayOptions {
        webhookd_exe: env!("CARGO_BIN_EXE_webhookd").into(),
        amqp_url: Some(amqp_url()),
        speed: Speed::Max,
        time_scale: 1000.0,
        deadline: HANG,
        progress: false,
    }
}

/// Replays a committed scenario with a committed capture; the report must pass.
async fn replay_committed(scenario: &str, capture: &str) -> Report {
    let scenario = Scenario::load(&repo_file(scenario)).unwrap();
    let events = read_capture(&repo_file(capture)).unwrap();
    let report = replay(&scenario, &events, &options()).await.unwrap();
    assert!(report.passed, "{}", report.table());
    assert!(report.signature_failures.is_empty());
    assert!(report.duplicate_id_mismatches.is_empty());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outage_scenario_replays_and_every_expectation_holds() {
    let scenario = Scenario::load(&repo_file("tests/scenarios/outage.toml")).unwrap();
    let options = options();
    let report = replay(&scenario, &outage_capture(), &options).await.unwrap();
    assert!(report.passed, "{}", report.table());
    assert_eq!(report.published, 9);
    // shop-orders: 3 orders; flaky, down: 1 each; misconfigured: 3; ledger: 2; quiet: 1.
    assert_eq!(report.rows.len(), 3 + 1 + 1 + 3 + 2 + 1);
    let flaky = report.rows.iter().find(|r| r.subscription == "flaky-orders").unwrap();
    assert_eq!(
        flaky.attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        [Some(503), Some(503), Some(503), Some(200)]
    );
    assert!(report.signature_failures.is_empty());
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["passed"], true);

    // A wrong expectation is reported as a mismatch, and the report fails.
    let mut wrong = scenario.clone();
    wrong.expect[0].attempts = Some(2);
    let report = replay(&wrong, &outage_capture(), &options).await.unwrap();
    assert!(!report.passed);
    assert_eq!(report.rows.iter().filter(|r| !r.matched).count(), 3, "{}", report.table());
    assert!(report.table().contains("MISMATCH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_for_a_while_gets_everything_afterwards() {
    let report =
        replay_committed("tests/scenarios/receiver-down.toml", "tests/fixtures/order-burst.jsonl").await;
    let dark: Vec<_> = report.rows.iter().filter(|r| r.subscription == "dark-orders").collect();
    assert!(!dark.is_empty());
    // The refused connections are attempts without a status, before the first success.
    for row in &dark {
        assert!(row.attempts[0].status.is_none(), "{}", report.table());
        assert_eq!(row.attempts.last().unwrap().status, Some(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_pending_at_disable_or_delete_still_arrive_and_later_events_do_not() {
    let report =
        replay_committed("tests/scenarios/disabled-pending.toml", "tests/scenarios/outage.jsonl").await;
    assert_eq!(report.actions.len(), 3, "{}", report.table());
    for sub in ["disabled-shop", "deleted-shop", "disabled-ledger"] {
        let rows: Vec<_> = report.rows.iter().filter(|r| r.subscription == sub).collect();
        let delivered = rows.iter().filter(|r| r.actual == "delivered").count();
        let none = rows.iter().filter(|r| r.actual == "none").count();
        assert!(delivered >= 1 && none == 1, "{sub}: {}", report.table());
    }
    // The retries came after the change: each delivered row's second attempt is after the
    // action that disabled or deleted its subscription.
    for row in report.rows.iter().filter(|r| r.actual == "delivered") {
        assert_eq!(row.attempts.iter().map(|a| a.status).collect::<Vec<_>>()[1], Some(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restarts_mid_replay_lose_nothing() {
    let report =
        replay_committed("tests/scenarios/restart.toml", "tests/fixtures/mixed-with-poison.jsonl").await;
    assert_eq!(report.actions.len(), 2);
    assert!(report.rows.len() > 100, "{}", report.rows.len());
    assert!(report.rows.iter().any(|r| r.attempts.len() > 1), "the random 503s caused retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_replay_loses_nothing_and_repeats_carry_the_same_event_id() {
    let report =
        replay_committed("tests/scenarios/kill.toml", "tests/fixtures/mixed-with-poison.jsonl").await;
    assert_eq!(report.actions.len(), 3);
    assert!(report.rows.len() > 100, "{}", report.rows.len());
    assert!(report.rows.iter().all(|r| r.actual == "delivered" && r.received >= 1));
    // The delivery log has every attempt the receivers got, but for what a kill -9 cut short:
    // an attempt in flight, or done and not yet recorded, left its message unacknowledged and
    // is repeated under the same number, so each kill leaves at most one attempt of a delivery
    // out of its log.
    let (kills, worst) = (report.kills(), report.most_attempts_missing());
    assert!(
        worst <= kills,
        "a delivery lacks {worst} attempts in its log after {kills} kills\n{}",
        report.table()
    );
    eprintln!(
        "kill -9 scenario: {} deliveries, {} duplicates, {} attempts not in the log",
        report.rows.len(),
        report.duplicates,
        report.attempts_not_logged
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_send_retries_after_changes_made_through_others_and_a_replica_lost_with_its_disk() {
    let report = replay_committed("tests/scenarios/replicas.toml", "tests/scenarios/outage.jsonl").await;
    assert_eq!(report.replicas, 3);
    assert_eq!(report.actions.len(), 4, "{}", report.table());
    assert!(
        report.actions.iter().any(|a| a.starts_with("kill_replica") && a.contains("data dir deleted")),
        "{:?}",
        report.actions
    );
    // Every replica's log shows every final state, and the catalogs are the same.
    assert!(report.logs_disagree.is_empty(), "{:?}", report.logs_disagree);
    assert_eq!(report.catalog_digests.len(), 3);
    assert!(report.catalog_digests.windows(2).all(|w| w[0] == w[1]), "{:?}", report.catalog_digests);
    for sub in ["disabled-shop", "deleted-shop", "disabled-ledger"] {
        let rows: Vec<_> = report.rows.iter().filter(|r| r.subscription == sub).collect();
        let delivered = rows.iter().filter(|r| r.actual == "delivered").count();
        let none = rows.iter().filter(|r| r.actual == "none").count();
        assert!(delivered >= 1 && none == 1, "{sub}: {}", report.table());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_cluster_ride_out_broker_node_faults_and_a_rolling_restart() {
    let scenario = Scenario::load(&repo_file("tests/scenarios/cluster.toml")).unwrap();
    let events = read_capture(&repo_file("tests/fixtures/mixed-with-poison.jsonl")).unwrap();
    // Its own cluster: the scenario kills and freezes nodes.
    let options = ReplayOptions { amqp_url: None, ..options() };
    let report = replay(&scenario, &events, &options).await.unwrap();
    assert!(report.passed, "{}", report.table());
    assert_eq!(report.actions.len(), 6, "{}", report.table());
    assert!(report.rows.len() > 100, "{}", report.rows.len());
    assert!(report.rows.iter().all(|r| r.actual == "delivered" && r.received >= 1));
    assert!(report.duplicate_id_mismatches.is_empty());
    assert_eq!(report.catalog_digests.len(), 3);
}
