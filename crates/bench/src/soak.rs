//! The soak (`webhookd bench --soak-minutes M`): webhookd at a fixed rate for a long time, by
//! default [`SUSTAINED_SHARE`] of the burst rate item 3 measures first, with retention removing
//! as much as arrives. It samples what must stay flat (RSS, open files, the store's size on
//! disk, pending work) and reports each series' slope per hour (least squares, after the
//! warm-up while the store fills up to its retention), and the rate delivered after the warm-up:
//! the sustained rate, against the burst rate.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::amqp::{delete_topology, publish, settings_for};
use crate::e2e::STALL;
use crate::events::Kind;
use crate::procfs;
use crate::stats::Latency;
use crate::Bench;

/// The share of item 3's burst rate (k = 1) the soak runs at by default, and the sustained
/// rate it must deliver (issue 14: sustained >= 80 % of burst).
pub const SUSTAINED_SHARE: f64 = 0.8;

/// How long the delivery log stream keeps records during the soak: retention for the stream
/// as for the view, so the broker's disk stays flat too.
pub const LOG_MAX_AGE: &str = "10m";

/// How often the soak samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How long delivered deliveries are kept during the soak.
pub const RETENTION: Duration = Duration::from_secs(300);

/// Samples before this are warm-up (caches filling, the store growing to its retention),
/// left out of the slopes: twice the retention, because the store reaches its steady size only
/// once the retention passes have removed a full retention's worth (minute 10 in the soaks).
pub const WARM_UP: Duration = Duration::from_secs(2 * RETENTION.as_secs());

/// One sample of the soak.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since publishing started.
    pub at_s: f64,
    /// webhookd's VmRSS, MiB.
    pub rss_mib: f64,
    /// webhookd's open file descriptors.
    pub open_files: u64,
    /// The data dir's size on disk, MiB.
    pub store_mib: f64,
    /// webhookd's pending deliveries (its gauge).
    pub pending: u64,
    /// Deliveries received so far.
    pub received: u64,
}

/// What a soak measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Soak {
    /// Minutes of publishing.
    pub minutes: f64,
    /// Fixed publish rate, events per second (one subscription each).
    pub rate: f64,
    /// Item 3's burst rate at k = 1 measured before, deliveries/s (none with `--soak-rate`).
    #[serde(default)]
    pub burst_per_s: Option<f64>,
    /// Deliveries per second received after the warm-up, to the last sample: the sustained rate.
    #[serde(default)]
    pub delivered_per_s: f64,
    /// Events published.
    pub published: u64,
    /// Deliveries received (all of them, or the soak fails).
    pub received: u64,
    /// Publish-to-receipt latency over the whole soak.
    pub latency: Latency,
    /// Every sample.
    pub samples: Vec<Sample>,
    /// RSS slope, MiB per hour.
    pub rss_mib_per_hour: f64,
    /// Open files slope, per hour.
    pub open_files_per_hour: f64,
    /// Store size slope, MiB per hour.
    pub store_mib_per_hour: f64,
    /// Pending deliveries slope, per hour (about 0 when receivers keep up).
    pub pending_per_hour: f64,
    /// Largest pending count seen.
    pub pending_max: u64,
}

/// Runs webhookd at `rate` events/s for `minutes`, one subscription, sampling every 10 s;
/// `burst_per_s` is what the sustained rate is compared with.
pub async fn run(bench: &Bench, minutes: f64, rate: f64, burst_per_s: Option<f64>) -> anyhow::Result<Soak> {
    let tag = crate::tag();
    let amqp = settings_for(&bench.options.amqp, &bench.amqp_url, &tag);
    let data_dir = bench.work_dir.join(format!("soak-{tag}"));
    let merchant = format!("bench-{tag}");
    let token = bench.options.webhookd.mint_token(&data_dir, &amqp, &merchant).await?;
    let log = bench.work_dir.join(format!("webhookd-soak-{tag}.log"));
    // Delivered deliveries are kept for retention.keep_finished_seconds (30 days by default),
    // so the store grows for 30 days before it is flat; the soak keeps them 5 minutes instead,
    // pruned every minute, so a flat store can be seen within the soak.
    let retention = [
        ("WEBHOOKD_RETENTION_KEEP_FINISHED_SECONDS", RETENTION.as_secs().to_string()),
        ("WEBHOOKD_MAINTENANCE_INTERVAL_SECONDS", "60".to_string()),
        ("WEBHOOKD_DELIVERY_LOG_MAX_AGE", LOG_MAX_AGE.to_string()),
    ];
    let mut webhookd = bench.options.webhookd.start_with(&data_dir, &amqp, &log, &retention).await?;
    let result = async {
        webhookd.wait_ready(Duration::from_secs(300)).await?;
        webhookd.subscribe(&token, &bench.receiver.url(0)).await?;
        let receiver = &bench.receiver;
        let events = (rate * minutes * 60.0).round().max(1.0) as u32;
        let (url, exchange, m) = (amqp.url.clone(), amqp.exchange.clone(), merchant.clone());
        let publisher = tokio::spawn(async move {
            publish(&url, &exchange, &m, Kind::Published, 0, events, Some(rate)).await
        });
        let pid = webhookd.pid();
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut latencies = Vec::new();
        let mut received = 0u64;
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        while !publisher.is_finished() {
            tick.tick().await;
            // Taking the receipts as we go keeps the receiver's memory flat too.
            for r in receiver.take().await? {
                received += 1;
                latencies.push(r.received_ns as i64 - r.stamp_ns as i64);
            }
            let sample = Sample {
                at_s: started.elapsed().as_secs_f64(),
                rss_mib: procfs::rss_bytes(pid).unwrap_or(0) as f64 / (1024.0 * 1024.0),
                open_files: open_files(pid),
                store_mib: dir_bytes(&data_dir) as f64 / (1024.0 * 1024.0),
                pending: pending(&webhookd.api).await.unwrap_or(0),
                received,
            };
            if bench.options.progress {
                eprintln!(
                    "bench: soak {:.0}/{:.0} s: RSS {:.0} MiB, {} open files, store {:.0} MiB, {} pending, {} received",
                    sample.at_s,
                    minutes * 60.0,
                    sample.rss_mib,
                    sample.open_files,
                    sample.store_mib,
                    sample.pending,
                    sample.received
                );
            }
            samples.push(sample);
        }
        publisher.await??;
        receiver.wait_for(u64::from(events) - received, STALL).await.context("the soak's last deliveries")?;
        for r in receiver.take().await? {
            received += 1;
            latencies.push(r.received_ns as i64 - r.stamp_ns as i64);
        }
        if received < u64::from(events) {
            bail!("the soak published {events} events and received {received} deliveries");
        }
        let steady: Vec<Sample> =
            samples.iter().copied().filter(|s| s.at_s >= WARM_UP.as_secs_f64()).collect();
        let per_hour = |value: fn(&Sample) -> f64| slope(&steady, value) * 3600.0;
        anyhow::Ok(Soak {
            minutes,
            rate,
            burst_per_s,
            delivered_per_s: sustained_rate(&steady),
            published: u64::from(events),
            received,
            latency: Latency::of(latencies),
            rss_mib_per_hour: per_hour(|s| s.rss_mib),
            open_files_per_hour: per_hour(|s| s.open_files as f64),
            store_mib_per_hour: per_hour(|s| s.store_mib),
            pending_per_hour: per_hour(|s| s.pending as f64),
            pending_max: samples.iter().map(|s| s.pending).max().unwrap_or(0),
            samples,
        })
    }
    .await;
    let stopped = webhookd.stop().await;
    delete_topology(&amqp).await;
    let soak = result.with_context(|| format!("webhookd's log: {}", log.display()))?;
    stopped?;
    if !bench.options.keep {
        let _ = std::fs::remove_dir_all(&data_dir);
        let _ = std::fs::remove_file(&log);
    }
    Ok(soak)
}

/// Least-squares slope of `value` over `at_s` (per second); 0 with fewer than two samples.
pub fn slope(samples: &[Sample], value: fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.at_s).sum::<f64>() / n;
    let mean_v = samples.iter().map(value).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        num += (s.at_s - mean_t) * (value(s) - mean_v);
        den += (s.at_s - mean_t).powi(2);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Deliveries per second received from the first to the last of `samples`; 0 with fewer than
/// two.
pub fn sustained_rate(samples: &[Sample]) -> f64 {
    match (samples.first(), samples.last()) {
        (Some(a), Some(b)) if b.at_s > a.at_s => {
            b.received.saturating_sub(a.received) as f64 / (b.at_s - a.at_s)
        }
        _ => 0.0,
    }
}

/// Open file descriptors of `pid`.
fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Bytes of every file under `dir` (allocated size is what fills a disk, but sled's files are
/// written densely, so the lengths are close).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// webhookd's `webhookd_deliveries_pending` gauge.
async fn pending(api: &str) -> anyhow::Result<u64> {
    let text = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    webhookd_harness::replay::metric_value(&text, "webhookd_deliveries_pending")
        .map(|v| v as u64)
        .context("no webhookd_deliveries_pending in the metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_the_least_squares_rate() {
        let line: Vec<Sample> = (0..10)
            .map(|i| Sample { at_s: f64::from(i) * 10.0, rss_mib: 50.0 + f64::from(i), ..Sample::default() })
            .collect();
        assert!((slope(&line, |s| s.rss_mib) - 0.1).abs() < 1e-9);
        let flat: Vec<Sample> = line.iter().map(|s| Sample { rss_mib: 50.0, ..*s }).collect();
        assert_eq!(slope(&flat, |s| s.rss_mib), 0.0);
        assert_eq!(slope(&line[..1], |s| s.rss_mib), 0.0);
    }

    #[test]
    fn the_sustained_rate_is_what_arrived_between_the_first_and_last_sample() {
        let at = |at_s: f64, received: u64| Sample { at_s, received, ..Sample::default() };
        assert_eq!(sustained_rate(&[at(600.0, 1_000), at(610.0, 31_000), at(1800.0, 3_601_000)]), 3_000.0);
        assert_eq!(sustained_rate(&[at(600.0, 1_000)]), 0.0);
        assert_eq!(sustained_rate(&[]), 0.0);
    }
}
