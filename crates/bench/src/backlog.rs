//! Item 6: webhookd starting while the broker holds a large backlog of pending retries.
//!
//! The broker's tiers are filled once with retries due long after the bench (kind `L`: they
//! must not arrive). Each run then adds, in a short second fill, a few retries already due (kind `O`:
//! the first of them to arrive gives the time from process start to the first due retry) and a
//! stream of retries due evenly over the measurement (kind `B`: received minus due time is
//! their lateness), starts webhookd, creates one subscription and publishes fresh events at a
//! steady rate during the measurement, and waits until all of them (O, B, fresh) arrived.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::amqp::publish;
use crate::e2e::STALL;
use crate::events::{now_ns, Kind};
use crate::fill::Group;
use crate::procfs;
use crate::stats::Latency;
use crate::webhookd::{Memory, MemorySampler};
use crate::Bench;
use webhookd_ingest::AmqpSettings;

/// Retries already due when webhookd starts, per run.
const OVERDUE: u64 = 100;

/// Subscription number (receiver path) of the backlog's retries.
pub const BACKLOG_SUB: usize = 999;

/// What one backlog run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct BacklogRun {
    /// Pending retries when webhookd started.
    pub pending: u64,
    /// Spawn to `/readyz` 200, ms.
    pub start_to_ready_ms: f64,
    /// Spawn to the first overdue retry received, ms.
    pub first_retry_ms: f64,
    /// Lateness of the retries due after the first retry arrived.
    pub lateness: Latency,
    /// Retries due before the first retry arrived (left out of the lateness).
    pub due_during_startup: u64,
    /// Fresh events' publish-to-receipt latency.
    pub fresh_latency: Latency,
    /// webhookd's memory.
    pub memory: Memory,
    /// webhookd's CPU, percent of one core.
    pub webhookd_cpu_percent: f64,
}

/// One run on `data_dir`, on `amqp`'s names (whose tiers already hold `far_future` retries).
pub async fn run(
    bench: &Bench,
    data_dir: &Path,
    amqp: &AmqpSettings,
    far_future: u64,
) -> anyhow::Result<BacklogRun> {
    let o = &bench.options;
    let tag = crate::tag();
    let amqp = amqp.clone();
    let merchant = format!("bench-{tag}");
    let token = o.webhookd.mint_token(data_dir, &amqp, &merchant).await?;

    // Due times are fixed before webhookd starts; `lead` covers this fill and webhookd's start.
    let now_ms = now_ns() / 1_000_000;
    let first_due = now_ms + o.backlog_lead.as_millis() as u64;
    let due_count = (o.backlog_due_rate * o.backlog_seconds).round() as u64;
    let window_end = first_due + (o.backlog_seconds * 1000.0) as u64;
    let groups = [
        Group { kind: Kind::Overdue, count: OVERDUE, from_ms: now_ms, to_ms: now_ms },
        Group { kind: Kind::Due, count: due_count, from_ms: first_due, to_ms: window_end },
    ];
    crate::fill_backlog(bench, &amqp, &groups).await?;

    let log = bench.work_dir.join(format!("webhookd-{tag}.log"));
    let mut webhookd = o.webhookd.start(data_dir, &amqp, &log).await?;
    let sampler = MemorySampler::start(webhookd.pid());
    let result = async {
        let pid = webhookd.pid();
        let cpu_before = procfs::cpu_time(pid);
        let started = Instant::now();
        webhookd.wait_ready(Duration::from_secs(300)).await?;
        let ready_ns = now_ns();
        webhookd.subscribe(&token, &bench.receiver.url(0)).await?;
        // Fresh events flow from now until the window of due retries ends.
        let fresh_seconds = (window_end * 1_000_000).saturating_sub(now_ns()) as f64 / 1e9;
        let fresh = (o.backlog_fresh_rate * fresh_seconds).round().max(1.0) as u32;
        let (url, exchange, m, rate) =
            (amqp.url.clone(), amqp.exchange.clone(), merchant.clone(), o.backlog_fresh_rate);
        let publisher =
            tokio::spawn(
                async move { publish(&url, &exchange, &m, Kind::Published, 0, fresh, Some(rate)).await },
            );
        let expected = OVERDUE + due_count + u64::from(fresh);
        let waited = bench.receiver.wait_for(expected, STALL.max(o.backlog_lead * 2)).await;
        let wall = started.elapsed();
        let cpu_after = procfs::cpu_time(pid);
        publisher.await??;
        waited.context("waiting for the due retries and the fresh events")?;
        let receipts = bench.receiver.take().await?;
        if let Some(r) = receipts.iter().find(|r| r.kind == Kind::Later) {
            bail!("a retry due long after the bench was sent: {r:?}");
        }
        let first = receipts
            .iter()
            .filter(|r| r.kind == Kind::Overdue)
            .map(|r| r.received_ns)
            .min()
            .context("no overdue retry arrived")?;
        let (on_time, during_startup): (Vec<&crate::receiver::Receipt>, Vec<_>) =
            receipts.iter().filter(|r| r.kind == Kind::Due).partition(|r| r.stamp_ns >= first);
        let lateness =
            Latency::of(on_time.iter().map(|r| r.received_ns as i64 - r.stamp_ns as i64).collect());
        let fresh_latency = Latency::of(
            receipts
                .iter()
                .filter(|r| r.kind == Kind::Published)
                .map(|r| r.received_ns as i64 - r.stamp_ns as i64)
                .collect(),
        );
        let ms = |ns: u64| ns as f64 / 1e6;
        anyhow::Ok(BacklogRun {
            pending: far_future + OVERDUE + due_count,
            start_to_ready_ms: ms(ready_ns.saturating_sub(webhookd.spawned_ns)),
            first_retry_ms: ms(first.saturating_sub(webhookd.spawned_ns)),
            lateness,
            due_during_startup: during_startup.len() as u64,
            fresh_latency,
            memory: Memory::default(),
            webhookd_cpu_percent: procfs::cpu_percent(cpu_before, cpu_after, wall),
        })
    }
    .await;
    let memory = sampler.finish();
    let stopped = webhookd.stop().await;
    let mut result = result.with_context(|| format!("webhookd's log: {}", log.display()))?;
    stopped?;
    let _ = std::fs::remove_file(&log);
    result.memory = memory;
    Ok(result)
}
