//! `webhookd bench` in smoke mode against the test broker, so the bench never rots. It asserts
//! what the bench did (every delivery arrived, every item reported, the JSON reads back), never
//! how fast: figures of a debug build on a busy CI machine mean nothing.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use webhookd_bench::report::Report;

use crate::support::amqp_url;

/// Far more than the smoke bench takes beside the other tests (a few minutes): past it the
/// bench has stopped making progress, and the test fails with what it printed instead of
/// holding up the suite.
const PATIENCE: Duration = Duration::from_secs(20 * 60);

#[test]
fn the_smoke_bench_measures_every_item_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let work = dir.path().join("work");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    // Smaller than --smoke's own sizes: this runs on a debug build beside the other tests.
    // Its own process group, so that a bench stopped at the deadline takes its webhookd
    // processes with it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhookd"))
        .args(["bench", "--smoke", "--events", "40", "--scale-subscriptions", "2000", "--backlog", "2000"])
        .args(["--backlog-seconds", "2", "--amqp-url", &amqp_url(), "--json"])
        .arg(&json)
        .arg("--work-dir")
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
            let _ = child.wait();
            panic!(
                "the bench did not finish within {PATIENCE:?}; it printed:\n{}\nwebhookd's logs:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default(),
                log_tails(&work)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(status.success(), "bench failed: {stderr}\n{stdout}");

    let text = std::fs::read_to_string(&json).unwrap();
    let report: Report = serde_json::from_str(&text).expect("the JSON report reads back");
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in [
        "machine",
        "versions",
        "settings",
        "broker_bound",
        "http_bound",
        "signature_costs",
        "end_to_end",
        "half_load",
        "scale",
        "backlog",
        "view",
        "targets",
    ] {
        assert!(!raw[field].is_null(), "the report has no {field}");
    }
    assert!(report.settings.smoke);
    assert_eq!(report.settings.events, 40);
    assert!(report.machine.cores >= 1);
    assert!(report.broker_bound.as_ref().unwrap().median > 0.0);
    assert!(report.http_bound.as_ref().unwrap().requests_per_s.median > 0.0);
    // The machine's CPU per event is measured with the broker bound (its value may round to 0
    // at 40 events: /proc/stat counts 10 ms ticks).
    assert!(report.broker_machine_cpu_us_per_event.is_some_and(|us| us >= 0.0));
    assert!(stdout.contains("machine CPU per event") && stdout.contains("machine CPU per request"));
    // Item 2 also times the signatures every delivery carries.
    let costs = report.signature_costs.unwrap();
    assert!(costs.es256_us > 0.0 && costs.ed25519_us > 0.0, "{costs:?}");
    assert!(stdout.contains("signature CPU, one core"));

    // Items 3 and 4: every event reached all k subscriptions (the bench fails otherwise; the
    // counts say so too), with latencies and memory figures.
    let ks = |list: &[webhookd_bench::report::EndToEnd]| list.iter().map(|e| e.k).collect::<Vec<_>>();
    assert_eq!(ks(&report.end_to_end), [1, 10]);
    assert_eq!(ks(&report.half_load), [1, 10]);
    for e in report.end_to_end.iter().chain(&report.half_load) {
        assert_eq!(e.deliveries, u64::from(e.events) * e.k as u64);
        assert!(e.deliveries_per_s.median > 0.0);
        assert!(e.latency.samples as u64 >= e.deliveries);
        assert!(e.latency.max_ms >= e.latency.p50_ms);
        assert!(e.memory.peak_mib > 0.0 && e.memory.steady_mib > 0.0);
    }
    for e in &report.end_to_end {
        assert!(e.ratio.is_some() && e.bound.is_some(), "item 3 k={} has no ratio", e.k);
        // Present whenever both bounds are; its value depends on the machine.
        assert!(e.webhookd_budget_us_at_target.is_some(), "item 3 k={} has no budget", e.k);
    }
    for e in &report.half_load {
        assert!(e.publish_rate.is_some());
    }

    // Item 5: the store held the unrelated subscriptions and item 3 ran again on it.
    let scale = report.scale.as_ref().unwrap();
    assert_eq!(scale.subscriptions, 2000);
    assert_eq!(ks(&scale.end_to_end), [1, 10]);
    // Compared with item 3 runs done beside them, each delivering everything too.
    assert_eq!(ks(&scale.item3_beside), [1, 10]);
    assert!(scale.item3_beside.iter().all(|b| b.deliveries == u64::from(b.events) * b.k as u64));
    assert_eq!(scale.change_percent.len(), 2);

    // Item 6: the backlog was pending, the overdue retries arrived, the due ones were measured.
    let backlog = report.backlog.as_ref().unwrap();
    assert!(backlog.pending >= 2000);
    assert!(backlog.first_retry_ms.median > 0.0);
    assert!(backlog.lateness.samples > 0);
    assert!(backlog.fresh_latency.samples > 0);
    assert!(backlog.memory.peak_mib > 0.0);
    // Item 8: the delivery log view folded every entry while retention removed the oldest,
    // and took disk and CPU for what it held.
    let view = report.view.as_ref().unwrap();
    assert_eq!(view.deliveries, 2_000 * (1 + webhookd_bench::view::TURNOVER));
    assert!(view.held >= 2_000 && view.held < view.deliveries, "{view:?}");
    assert!(view.bytes_per_delivery > 0.0 && view.deliveries_per_s > 0.0);
    assert!(view.entry_bytes > 0);

    // Item 9: three replicas on one broker delivered every event once between them, each
    // making a share of the attempts.
    assert_eq!(ks(&report.replicated), [1, 10]);
    for e in &report.replicated {
        assert_eq!(e.replicas, 3);
        assert_eq!(e.deliveries, u64::from(e.events) * e.k as u64);
        assert_eq!(e.shares.len(), 3);
        assert!((e.shares.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{:?}", e.shares);
        assert!(e.webhookd_cpu_us_per_delivery > 0.0);
    }

    assert!(!report.targets.is_empty());
    for k in [1, 10] {
        let cpu = format!("k={k}: webhookd CPU per delivery <=");
        assert!(report.targets.iter().any(|t| t.target.starts_with(&cpu)), "no {cpu:?} target");
    }
    assert!(stdout.contains("webhookd CPU per delivery left at 80% of the bound"));
    for heading in [
        "1 broker bound",
        "2 HTTP bound",
        "3 end to end k=10",
        "4 half load k=1",
        "5 store scale",
        "6 backlog",
        "8 log view",
        "9 3 replicas k=10",
    ] {
        assert!(stdout.contains(heading), "the table has no {heading:?}:\n{stdout}");
    }
}

/// The last lines of every webhookd log the bench left in `work`.
fn log_tails(work: &Path) -> String {
    let mut tails = String::new();
    for entry in std::fs::read_dir(work).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            tails +=
                &format!("--- {}\n{}\n", path.display(), lines[lines.len().saturating_sub(30)..].join("\n"));
        }
    }
    tails
}
