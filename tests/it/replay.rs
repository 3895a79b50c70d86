//! The replay harness end to end: a capture through the real binary, scripted receivers, the
//! report. Also keeps tests/scenarios/outage.jsonl in step with the code that describes it.

use std::time::Duration;

use webhookd_harness::capture::{read_capture, CapturedMessage, CapturedProperties};
use webhookd_harness::replay::{replay, ReplayOptions, Speed};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outage_scenario_replays_and_every_expectation_holds() {
    let scenario = Scenario::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/scenarios/outage.toml"
    )))
    .unwrap();
    let options = ReplayOptions {
        webhookd_exe: env!("CARGO_BIN_EXE_webhookd").into(),
        amqp_url: Some(amqp_url()),
        speed: Speed::Max,
        time_scale: 1000.0,
        deadline: Duration::from_secs(60),
        progress: false,
    };
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
