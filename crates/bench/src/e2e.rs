//! One end-to-end run (items 3, 4, 5, 9): the real webhookd, one replica or several on one
//! broker, between the broker and the receiver.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::amqp::{delete_topology, publish, settings_for};
use crate::events::Kind;
use crate::procfs;
use crate::stats::Latency;
use crate::webhookd::{Memory, MemorySampler, Webhookd};
use crate::Bench;

/// How long the receiver may get nothing new before a run is declared stuck.
pub const STALL: Duration = Duration::from_secs(60);

/// What one run is.
#[derive(Clone, Copy, Debug)]
pub struct RunSpec<'a> {
    /// Subscriptions matching each event.
    pub k: usize,
    /// Events to publish.
    pub events: u32,
    /// Fixed publish rate, events per second; none: as fast as the broker confirms.
    pub rate: Option<f64>,
    /// A prepared data dir (item 5's store): each run works on a copy of it, removed
    /// afterwards, so every run starts from the same store; none: a fresh, empty one.
    pub data_dir: Option<&'a Path>,
    /// webhookd processes on the same broker names, each with its own data dir (item 9).
    pub replicas: usize,
}

impl RunSpec<'_> {
    /// One replica, as fast as the broker confirms, on a fresh store.
    pub fn new(k: usize, events: u32) -> RunSpec<'static> {
        RunSpec { k, events, rate: None, data_dir: None, replicas: 1 }
    }
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Deliveries received (distinct (event, subscription) pairs).
    pub deliveries: u64,
    /// Deliveries per second, first publish to last receipt.
    pub deliveries_per_s: f64,
    /// Publish to receipt.
    pub latency: Latency,
    /// webhookd's memory (of the replica with the highest peak).
    pub memory: Memory,
    /// webhookd's CPU, percent of one core (all replicas).
    pub webhookd_cpu_percent: f64,
    /// The receiver's CPU, percent of one core.
    pub receiver_cpu_percent: f64,
    /// webhookd's CPU per delivery, microseconds (all replicas: each folds every delivery).
    pub webhookd_cpu_us_per_delivery: f64,
    /// Each replica's share of the attempts made during the measurement.
    pub shares: Vec<f64>,
    /// The whole machine's CPU per delivery, microseconds (broker, publisher, webhookd,
    /// receiver and anything else running).
    pub machine_cpu_us_per_delivery: f64,
    /// Deliveries deferred (destination at its limit), per delivery received.
    pub deferred_per_delivery: f64,
    /// Delivery log entries per record appended (how well the recorder batches).
    pub log_entries_per_record: f64,
}

/// Runs webhookd (`spec.replicas` processes, each on its own data dir), creates `k`
/// subscriptions through the first one's API, waits until every replica has them, warms up,
/// then publishes the events and waits until the receiver has every delivery.
pub async fn run(bench: &Bench, spec: RunSpec<'_>) -> anyhow::Result<RunResult> {
    let tag = crate::tag();
    let amqp = settings_for(&bench.options.amqp, &bench.amqp_url, &tag);
    let replicas = spec.replicas.max(1);
    let dirs: Vec<PathBuf> = (0..replicas).map(|r| bench.work_dir.join(format!("data-{tag}-{r}"))).collect();
    let logs: Vec<PathBuf> =
        (0..replicas).map(|r| bench.work_dir.join(format!("webhookd-{tag}-{r}.log"))).collect();
    if let Some(prepared) = spec.data_dir {
        for dir in &dirs {
            let (from, to) = (prepared.to_path_buf(), dir.clone());
            tokio::task::spawn_blocking(move || copy_dir(&from, &to))
                .await?
                .with_context(|| format!("cannot copy the prepared store {}", prepared.display()))?;
        }
    }
    let merchant = format!("bench-{tag}");
    let token = bench.options.webhookd.mint_token(&dirs[0], &amqp, &merchant).await?;
    let mut nodes = Vec::with_capacity(replicas);
    let mut started = Ok(());
    for (dir, log) in dirs.iter().zip(&logs) {
        match bench.options.webhookd.start(dir, &amqp, log).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => measure(bench, spec, &amqp, &merchant, &token, &mut nodes).await,
        Err(e) => Err(e),
    };
    let mut stopped = Ok(());
    for node in nodes {
        stopped = stopped.and(node.stop().await);
    }
    delete_topology(&amqp).await;
    let logs_named = logs.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(", ");
    let result = result.with_context(|| format!("webhookd's log: {logs_named}"))?;
    stopped?;
    for (dir, log) in dirs.iter().zip(&logs) {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(log);
    }
    Ok(result)
}

/// The measurement of [`run`] on started replicas.
async fn measure(
    bench: &Bench,
    spec: RunSpec<'_>,
    amqp: &webhookd_ingest::AmqpSettings,
    merchant: &str,
    token: &str,
    nodes: &mut [Webhookd],
) -> anyhow::Result<RunResult> {
    for node in nodes.iter_mut() {
        node.wait_ready(Duration::from_secs(300)).await?;
    }
    for j in 0..spec.k {
        nodes[0].subscribe(token, &bench.receiver.url(j)).await?;
    }
    // A replica consumes events as soon as it is ready: it must have every subscription first,
    // or it would match the warm-up's events against fewer.
    for node in nodes.iter() {
        node.wait_for_metric("webhookd_subscriptions", spec.k as f64, Duration::from_secs(60)).await?;
    }
    let k = spec.k as u64;
    let receiver = &bench.receiver;

    // Warm-up: connections, caches and the first allocations are not what is measured.
    let warm = (spec.events / 10).clamp(1, 200);
    publish(&amqp.url, &amqp.exchange, merchant, Kind::WarmUp, 0, warm, None).await?;
    receiver.wait_for(u64::from(warm) * k, STALL).await.context("warm-up")?;
    receiver.take().await?;

    let pids: Vec<u32> = nodes.iter().map(Webhookd::pid).collect();
    let samplers: Vec<MemorySampler> = pids.iter().map(|&pid| MemorySampler::start(pid)).collect();
    let mut attempts_before = Vec::with_capacity(nodes.len());
    for node in nodes.iter() {
        attempts_before.push(node.metric("webhookd_delivery_attempts_total").await?);
    }
    let cpu_of = |pids: &[u32]| -> Option<Duration> { pids.iter().map(|&pid| procfs::cpu_time(pid)).sum() };
    let (cpu_w, cpu_r, busy) = (cpu_of(&pids), receiver.cpu(), procfs::machine_busy());
    let started = Instant::now();
    let (url, exchange, m) = (amqp.url.clone(), amqp.exchange.clone(), merchant.to_string());
    let (events, rate) = (spec.events, spec.rate);
    let publisher =
        tokio::spawn(async move { publish(&url, &exchange, &m, Kind::Published, 0, events, rate).await });
    let waited = receiver.wait_for(u64::from(spec.events) * k, STALL).await;
    let wall = started.elapsed();
    let (cpu_w2, cpu_r2, busy2) = (cpu_of(&pids), receiver.cpu(), procfs::machine_busy());
    let memory = samplers
        .into_iter()
        .map(MemorySampler::finish)
        .max_by(|a, b| a.peak_mib.total_cmp(&b.peak_mib))
        .unwrap_or_default();
    let published = publisher.await??;
    waited?;
    let receipts = receiver.take().await?;
    let (mut deferred, mut appends, mut attempts, mut made) =
        (0.0, 0.0, 0.0, Vec::with_capacity(nodes.len()));
    for (node, before) in nodes.iter().zip(&attempts_before) {
        deferred += node.metric("webhookd_deliveries_deferred_total").await?;
        appends += node.metric("webhookd_delivery_log_appends_total").await?;
        let now = node.metric("webhookd_delivery_attempts_total").await?;
        attempts += now;
        made.push(now - before);
    }

    let distinct: HashSet<(u32, u16)> = receipts.iter().map(|r| (r.seq, r.sub)).collect();
    let expected = u64::from(spec.events) * k;
    if distinct.len() as u64 != expected || receipts.iter().any(|r| r.kind != Kind::Published) {
        bail!(
            "expected {expected} distinct deliveries, got {} distinct of {} received",
            distinct.len(),
            receipts.len()
        );
    }
    let last = receipts.iter().map(|r| r.received_ns).max().unwrap_or(published.first_ns);
    let seconds = last.saturating_sub(published.first_ns) as f64 / 1e9;
    let latency = Latency::of(receipts.iter().map(|r| r.received_ns as i64 - r.stamp_ns as i64).collect());
    let all_made: f64 = made.iter().sum();
    Ok(RunResult {
        deliveries: expected,
        deliveries_per_s: expected as f64 / seconds,
        latency,
        memory,
        webhookd_cpu_percent: procfs::cpu_percent(cpu_w, cpu_w2, wall),
        receiver_cpu_percent: procfs::cpu_percent(cpu_r, cpu_r2, wall),
        webhookd_cpu_us_per_delivery: procfs::micros_per(cpu_w, cpu_w2, expected),
        shares: made.iter().map(|m| m / all_made.max(1.0)).collect(),
        machine_cpu_us_per_delivery: procfs::micros_per(busy, busy2, expected),
        deferred_per_delivery: deferred / expected as f64,
        // One entry per attempt and per deferral, warm-up included.
        log_entries_per_record: (attempts + deferred) / appends.max(1.0),
    })
}

/// Copies the directory `from` (files and subdirectories) to `to`.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_dir_copies_files_and_subdirectories() {
        let base = std::env::temp_dir().join(format!("webhookd-bench-copy-{}", crate::tag()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(from.join("blobs")).unwrap();
        std::fs::write(from.join("db"), b"pages").unwrap();
        std::fs::write(from.join("blobs").join("1"), b"blob").unwrap();
        copy_dir(&from, &to).unwrap();
        assert_eq!(std::fs::read(to.join("db")).unwrap(), b"pages");
        assert_eq!(std::fs::read(to.join("blobs").join("1")).unwrap(), b"blob");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
