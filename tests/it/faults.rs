//! Faults of the machine: the disk under the store fills up. webhookd stops acknowledging (the messages stay in RabbitMQ), answers not ready with the reason, says why in
//! its log, and resumes on its own once the disk is back; nothing is lost.
//!
//! The store lives on a small tmpfs mounted by the test, which needs root (CI runs as root). Set
//! WEBHOOKD_TEST_NO_MOUNT=1 to skip it where mounting is impossible.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use uuid::Uuid;
use webhookd_core::ids::rabo_event_id;
use webhookd_core::subscription::RaboEventType;
use webhookd_harness::receiver::Receiver;
use webhookd_store::{Change, Store};

use crate::support::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `megabytes` at `dir`; `None` when skipping is allowed and mounting fails.
    fn mount(dir: &Path, megabytes: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        assert!(
            std::env::var_os("WEBHOOKD_TEST_NO_MOUNT").is_some(),
            "this test mounts a tmpfs and needs root; set WEBHOOKD_TEST_NO_MOUNT=1 to skip it"
        );
        eprintln!("skipped: cannot mount a tmpfs here");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with one file, to the last byte it takes.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let block = vec![0u8; chunk];
        while file.write_all(&block).is_ok() {}
    }
    let _ = file.sync_all();
}

/// `GET /readyz`: status and body (status 0 when nothing answers).
async fn readyz(listen: &str) -> (u16, String) {
    match reqwest::get(format!("http://{listen}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

async fn wait_not_ready(listen: &str, because: &str, log: &std::path::Path) -> String {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let (status, body) = readyz(listen).await;
        if status == 503 && body.contains(because) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never not ready because {because:?}: {status} {body}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Messages waiting (ready) in `queue`.
async fn waiting(queue: &str) -> u32 {
    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
    q.message_count()
}

/// Publishes `n` orders; returns their Rabo event ids.
async fn publish_orders(publisher: &Publisher, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = Uuid::new_v4();
        publisher.event(&order_event(id, "m-1")).await;
        ids.push(rabo_event_id(id));
    }
    ids
}

async fn wait_delivered(receiver: &Receiver, expected: &HashSet<String>) {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let seen: HashSet<String> = receiver
            .received_on("/orders")
            .iter()
            .filter(|r| r.status_sent == 200)
            .filter_map(|r| r.header("x-smartpay-event-id").map(String::from))
            .collect();
        if expected.is_subset(&seen) {
            return;
        }
        let missing = expected.difference(&seen).count();
        assert!(tokio::time::Instant::now() < deadline, "{missing} events never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledging_and_webhookd_resumes_when_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_disk) = Tmpfs::mount(&data, 32) else { return };
    let receiver = Receiver::start().await.unwrap();
    let names = Names::new("faults");
    let mut c = config(&names, &amqp_url(), &data);
    c.http.listen = format!("127.0.0.1:{}", free_port());
    {
        let store = Store::open(&data.join("store")).unwrap();
        let orders = rabo("m-1", &receiver.url("/orders"), &[RaboEventType::OrderFinalized]);
        store.apply(Change::Put { subscription: orders }).await.unwrap();
    }
    let log_path = dir.path().join("webhookd.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhookd"))
        .arg("serve")
        .envs(config_env(&c))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    wait_ready(&c.http.listen).await;
    let publisher = Publisher::connect(&amqp_url(), &names.exchange).await;
    let mut expected: HashSet<String> = publish_orders(&publisher, 10).await.into_iter().collect();
    wait_delivered(&receiver, &expected).await;

    // The disk fills up. sled writes into space it already has for a while; once it needs more,
    // the batch cannot be made durable, so it is not acknowledged.
    let filler = data.join("filler");
    fill(&filler);
    let mut published_full = 0;
    while readyz(&c.http.listen).await.0 == 200 {
        assert!(published_full < 20_000, "the store never ran out of space");
        expected.extend(publish_orders(&publisher, 20).await);
        published_full += 20;
    }
    let body = wait_not_ready(&c.http.listen, "No space left on device", &log_path).await;
    assert!(body.contains("store"), "{body}");
    // Nothing is taken from RabbitMQ meanwhile: what is published now waits there (with any
    // batch that could not be made durable).
    expected.extend(publish_orders(&publisher, 10).await);
    // The broker counts them as waiting once routed (not at once under load).
    let deadline = tokio::time::Instant::now() + HANG;
    let mut held = waiting(&names.queue).await;
    while held < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        held = waiting(&names.queue).await;
    }
    assert!(held >= 10, "only {held} messages wait in RabbitMQ");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("the store cannot be written"), "{log}");
    // The API refuses changes meanwhile, in its own format.
    let problem = reqwest::get(format!("http://{}/v3/webhooks/subscriptions", c.http.listen)).await.unwrap();
    assert_eq!(problem.status(), 503);
    assert_eq!(problem.headers()["content-type"], "application/problem+json");

    // Space is back: webhookd reopens the store on its own and takes the held messages.
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + HANG;
    while readyz(&c.http.listen).await.0 != 200 {
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(tokio::time::Instant::now() < deadline, "never ready again; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_delivered(&receiver, &expected).await;

    assert_eq!(waiting(&names.queue).await, 0);
    eprintln!(
        "disk full after {published_full} more events; {held} messages waited in RabbitMQ; all {} delivered",
        expected.len()
    );

    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
