//! One end-to-end run (items 3, 4, 5): the real webhookd between the broker and the receiver.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::amqp::{delete_topology, publish, settings_for};
use crate::events::Kind;
use crate::procfs;
use crate::stats::Latency;
use crate::webhookd::{Memory, MemorySampler};
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
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunResult {
    /// Deliveries received (distinct (event, subscription) pairs).
    pub deliveries: u64,
    /// Deliveries per second, first publish to last receipt.
    pub deliveries_per_s: f64,
    /// Publish to receipt.
    pub latency: Latency,
    /// webhookd's memory.
    pub memory: Memory,
    /// webhookd's CPU, percent of one core.
    pub webhookd_cpu_percent: f64,
    /// The receiver's CPU, percent of one core.
    pub receiver_cpu_percent: f64,
    /// webhookd's CPU per delivery, microseconds.
    pub webhookd_cpu_us_per_delivery: f64,
    /// The whole machine's CPU per delivery, microseconds (broker, publisher, webhookd,
    /// receiver and anything else running).
    pub machine_cpu_us_per_delivery: f64,
    /// Deliveries deferred (destination at its limit), per delivery received.
    pub deferred_per_delivery: f64,
    /// Delivery log entries per record appended (how well the recorder batches).
    pub log_entries_per_record: f64,
}

/// Runs webhookd on a data dir, creates `k` subscriptions through its API, warms it up, then
/// publishes the events and waits until the receiver has every delivery.
pub async fn run(bench: &Bench, spec: RunSpec<'_>) -> anyhow::Result<RunResult> {
    let tag = crate::tag();
    let amqp = settings_for(&bench.options.amqp, &bench.amqp_url, &tag);
    let fresh_dir = bench.work_dir.join(format!("data-{tag}"));
    if let Some(prepared) = spec.data_dir {
        let (from, to) = (prepared.to_path_buf(), fresh_dir.clone());
        tokio::task::spawn_blocking(move || copy_dir(&from, &to))
            .await?
            .with_context(|| format!("cannot copy the prepared store {}", prepared.display()))?;
    }
    let data_dir = fresh_dir.as_path();
    let merchant = format!("bench-{tag}");
    let token = bench.options.webhookd.mint_token(data_dir, &amqp, &merchant).await?;
    let log = bench.work_dir.join(format!("webhookd-{tag}.log"));
    let mut webhookd = bench.options.webhookd.start(data_dir, &amqp, &log).await?;
    let result = async {
        webhookd.wait_ready(Duration::from_secs(300)).await?;
        for j in 0..spec.k {
            webhookd.subscribe(&token, &bench.receiver.url(j)).await?;
        }
        let k = spec.k as u64;
        let receiver = &bench.receiver;

        // Warm-up: connections, caches and the first allocations are not what is measured.
        let warm = (spec.events / 10).clamp(1, 200);
        publish(&amqp.url, &amqp.exchange, &merchant, Kind::WarmUp, 0, warm, None).await?;
        receiver.wait_for(u64::from(warm) * k, STALL).await.context("warm-up")?;
        receiver.take().await?;

        let pid = webhookd.pid();
        let sampler = MemorySampler::start(pid);
        let (cpu_w, cpu_r, busy) = (procfs::cpu_time(pid), receiver.cpu(), procfs::machine_busy());
        let started = Instant::now();
        let (url, exchange, m) = (amqp.url.clone(), amqp.exchange.clone(), merchant.clone());
        let (events, rate) = (spec.events, spec.rate);
        let publisher =
            tokio::spawn(async move { publish(&url, &exchange, &m, Kind::Published, 0, events, rate).await });
        let waited = receiver.wait_for(u64::from(spec.events) * k, STALL).await;
        let wall = started.elapsed();
        let (cpu_w2, cpu_r2, busy2) = (procfs::cpu_time(pid), receiver.cpu(), procfs::machine_busy());
        let memory = sampler.finish();
        let published = publisher.await??;
        waited?;
        let receipts = receiver.take().await?;
        let deferred = webhookd.metric("webhookd_deliveries_deferred_total").await?;
        let appends = webhookd.metric("webhookd_delivery_log_appends_total").await?;
        let attempts = webhookd.metric("webhookd_delivery_attempts_total").await?;

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
        let latency =
            Latency::of(receipts.iter().map(|r| r.received_ns as i64 - r.stamp_ns as i64).collect());
        anyhow::Ok(RunResult {
            deliveries: expected,
            deliveries_per_s: expected as f64 / seconds,
            latency,
            memory,
            webhookd_cpu_percent: procfs::cpu_percent(cpu_w, cpu_w2, wall),
            receiver_cpu_percent: procfs::cpu_percent(cpu_r, cpu_r2, wall),
            webhookd_cpu_us_per_delivery: procfs::micros_per(cpu_w, cpu_w2, expected),
            machine_cpu_us_per_delivery: procfs::micros_per(busy, busy2, expected),
            deferred_per_delivery: deferred / expected as f64,
            // One entry per attempt and per deferral, warm-up included.
            log_entries_per_record: (attempts + deferred) / appends.max(1.0),
        })
    }
    .await;
    let stopped = webhookd.stop().await;
    delete_topology(&amqp).await;
    let result = result.with_context(|| format!("webhookd's log: {}", log.display()))?;
    stopped?;
    let _ = std::fs::remove_dir_all(&fresh_dir);
    let _ = std::fs::remove_file(&log);
    Ok(result)
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
