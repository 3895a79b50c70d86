//! `webhookd bench`: what webhookd delivers, how fast and on how little, measured on loopback
//! against the raw bounds of its two neighbours in the same run.
//!
//! The items (numbered as in docs/performance.md and the report):
//! 1. the broker bound: publish with confirms and consume with batched acks, nothing else;
//! 2. the HTTP bound: the delivered bodies POSTed straight to the receiver at webhookd's
//!    concurrency;
//! 3. webhookd end to end (the real binary, `webhookd serve`), k = 1 and k = 10 subscriptions
//!    per event: deliveries/s, publish-to-receipt latency, and the ratio to the bounds;
//! 4. the same at half the measured maximum rate: latency;
//! 5. item 3 on a store holding many unrelated subscriptions;
//! 6. a start on a store holding a large backlog of pending retries;
//! 7. webhookd's memory (VmRSS sampled, VmHWM) during items 3, 5 and 6;
//! 8. the delivery log view: what folding one delivery costs every replica, CPU and disk;
//! 9. item 3 with [`REPLICAS`] webhookd processes on one broker, with each one's share.
//!
//! Or, with `--soak-minutes`, a soak: a fixed rate for a long time, slopes of RSS, open files,
//! store size and pending work ([`soak`]).
//!
//! # Layout
//! - [`cli`]: the command's flags, and the hidden helper commands run as child processes.
//! - [`receiver`]: the minimal receiver, a process of its own (its CPU is reported).
//! - [`events`]: bench events and the mark (kind, number, time stamp) they carry to the receiver.
//! - [`amqp`]: publishing, the broker bound, topology clean-up.
//! - [`http_bound`]: the HTTP bound; [`signing`]: what one delivery's signature costs.
//! - [`webhookd`]: running the real binary, its API, its memory.
//! - [`e2e`]: one end-to-end run; [`backlog`]: one backlog run; [`fill`]: preparing a store.
//! - [`report`]: the figures, the table, the targets; [`stats`], [`procfs`]: helpers.

pub mod amqp;
pub mod backlog;
pub mod cli;
pub mod e2e;
pub mod events;
pub mod fill;
pub mod http_bound;
pub mod procfs;
pub mod receiver;
pub mod report;
pub mod signing;
pub mod soak;
pub mod stats;
pub mod view;
pub mod webhookd;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use webhookd_harness::broker::{free_broker_port, Broker};
use webhookd_ingest::AmqpSettings;

use crate::e2e::{RunResult, RunSpec};
use crate::fill::{Filled, Group};
use crate::receiver::ReceiverProcess;
use crate::report::{Backlog, EndToEnd, Figure, HttpBound, Report, Scale};
use crate::stats::{median, Latency};
use crate::webhookd::{Memory, WebhookdSetup};

/// webhookd processes of item 9.
pub const REPLICAS: usize = 3;

/// Everything a bench run needs to know.
#[derive(Clone, Debug)]
pub struct Options {
    /// The webhookd binary (and the configuration file it runs with).
    pub webhookd: WebhookdSetup,
    /// webhookd's effective `[amqp]` settings (prefetch, batch size, queue type...).
    pub amqp: AmqpSettings,
    /// webhookd's `delivery.max_in_flight`.
    pub max_in_flight: usize,
    /// webhookd's `delivery.max_in_flight_per_destination`.
    pub max_in_flight_per_destination: usize,
    /// webhookd's `log.level` (reported: logging is part of the cost).
    pub log_level: String,
    /// A broker to use; none: a private one is started and stopped.
    pub amqp_url: Option<String>,
    /// Events per measurement (N).
    pub events: u32,
    /// Runs per figure (medians are reported).
    pub runs: usize,
    /// Smoke mode: tiny sizes, only to show the bench works.
    pub smoke: bool,
    /// Items to measure (1 to 9).
    pub items: BTreeSet<u8>,
    /// Subscriptions per event (k).
    pub ks: Vec<usize>,
    /// Unrelated subscriptions of item 5.
    pub scale_subscriptions: u64,
    /// Pending retries of item 6 (due long after the bench).
    pub backlog: u64,
    /// Retries per second due during item 6's measurement.
    pub backlog_due_rate: f64,
    /// Length of item 6's measurement, seconds.
    pub backlog_seconds: f64,
    /// Fresh events per second during item 6.
    pub backlog_fresh_rate: f64,
    /// Time from fixing item 6's due times to the first of them (covers the fill and the start).
    pub backlog_lead: Duration,
    /// Longest half-load measurement, seconds (fewer events than N when the rate is low).
    pub half_load_seconds: f64,
    /// A soak instead of the items.
    pub soak: Option<SoakOptions>,
    /// Where data dirs, logs and a private broker go (removed afterwards unless `keep`).
    pub work_dir: PathBuf,
    /// Keep the work dir.
    pub keep: bool,
    /// Print progress on stderr.
    pub progress: bool,
    /// The 1-minute load average before anything started.
    pub load_average_at_start: f64,
}

/// How long and how fast to soak.
#[derive(Clone, Copy, Debug)]
pub struct SoakOptions {
    /// Minutes of publishing.
    pub minutes: f64,
    /// Events/s; none: half of item 3's deliveries/s at k = 1, measured first.
    pub rate: Option<f64>,
}

/// A bench in progress: the options and what it started.
pub struct Bench {
    /// The options.
    pub options: Options,
    /// The broker in use.
    pub amqp_url: String,
    /// The receiver.
    pub receiver: ReceiverProcess,
    /// Data dirs and logs.
    pub work_dir: PathBuf,
}

/// A short random tag for names of one run.
pub fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

impl Bench {
    fn say(&self, text: impl AsRef<str>) {
        if self.options.progress {
            eprintln!("bench: {}", text.as_ref());
        }
    }
}

/// Runs the bench and returns its report.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    std::fs::create_dir_all(&options.work_dir)
        .with_context(|| format!("cannot create {}", options.work_dir.display()))?;
    let work_dir = options.work_dir.clone();
    let broker = match &options.amqp_url {
        Some(_) => None,
        None => {
            if options.progress {
                eprintln!("bench: starting a private RabbitMQ");
            }
            let dir = work_dir.join("broker");
            Some(tokio::task::spawn_blocking(move || Broker::start(free_broker_port()?, &dir)).await??)
        }
    };
    let amqp_url = options.amqp_url.clone().or_else(|| broker.as_ref().map(|b| b.url().to_string()));
    let receiver = ReceiverProcess::start(&options.webhookd.exe).await?;
    let keep = options.keep;
    let bench =
        Bench { options, amqp_url: amqp_url.unwrap_or_default(), receiver, work_dir: work_dir.clone() };
    let result = measure(&bench).await;
    drop(bench);
    if let Some(b) = broker {
        tokio::task::spawn_blocking(move || drop(b)).await?;
    }
    let mut report = result?;
    if !keep {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn measure(bench: &Bench) -> anyhow::Result<Report> {
    let o = &bench.options;
    let (cores, cpu) = procfs::machine();
    let mut report = Report {
        machine: report::Machine { cores, cpu, load_average_at_start: o.load_average_at_start },
        versions: report::Versions {
            webhookd: env!("CARGO_PKG_VERSION").into(),
            rabbitmq: rabbitmq_version().await,
        },
        settings: report::Settings {
            events: o.events,
            runs: o.runs,
            smoke: o.smoke,
            items: o.items.iter().copied().collect(),
            k: o.ks.clone(),
            prefetch: o.amqp.prefetch,
            batch_max: o.amqp.batch_max,
            max_in_flight: o.max_in_flight,
            max_in_flight_per_destination: o.max_in_flight_per_destination,
            http_concurrency: o.max_in_flight.min(o.max_in_flight_per_destination),
            log_level: o.log_level.clone(),
            scale_subscriptions: o.scale_subscriptions,
            backlog_pending: o.backlog,
            backlog_due_rate: o.backlog_due_rate,
            backlog_seconds: o.backlog_seconds,
            backlog_fresh_rate: o.backlog_fresh_rate,
            private_broker: o.amqp_url.is_none(),
        },
        ..Report::default()
    };
    if let Some(soak) = o.soak {
        let (rate, burst) = match soak.rate {
            Some(rate) => (rate, None),
            None => {
                let spec = RunSpec::new(1, o.events);
                let e = end_to_end(bench, "soak: item 3 k=1 for the burst rate", spec).await?;
                let burst = e.deliveries_per_s.median;
                report.end_to_end.push(e);
                (burst * soak::SUSTAINED_SHARE, Some(burst))
            }
        };
        bench.say(format!("soak: {:.0} minutes at {rate:.0} events/s", soak.minutes));
        report.soak = Some(soak::run(bench, soak.minutes, rate, burst).await.context("the soak")?);
        report.check_targets();
        return Ok(report);
    }
    let wants = |item: u8| o.items.contains(&item);
    let k_max = o.ks.iter().copied().max().unwrap_or(1);

    if wants(1) {
        let (mut runs, mut cpu) = (Vec::new(), Vec::new());
        for r in 0..o.runs {
            let settings = amqp::settings_for(&o.amqp, &bench.amqp_url, &tag());
            let run = amqp::broker_bound(&settings, o.events).await.context("item 1, the broker bound")?;
            bench.say(format!(
                "item 1 run {}/{}: {:.0} events/s, machine CPU {:.0} us/event",
                r + 1,
                o.runs,
                run.events_per_s,
                run.machine_cpu_us_per_event
            ));
            runs.push(run.events_per_s);
            cpu.push(run.machine_cpu_us_per_event);
        }
        report.broker_bound = Some(Figure::of(runs));
        report.broker_machine_cpu_us_per_event = Some(median(cpu));
    }
    if wants(2) {
        let (mut runs, mut cpu, mut machine) = (Vec::new(), Vec::new(), Vec::new());
        let concurrency = report.settings.http_concurrency;
        for r in 0..o.runs {
            let run = http_bound::http_bound(&bench.receiver, o.events, k_max, concurrency)
                .await
                .context("item 2, the HTTP bound")?;
            bench.say(format!(
                "item 2 run {}/{}: {:.0} requests/s, receiver CPU {:.0}%, machine CPU {:.0} us/request",
                r + 1,
                o.runs,
                run.requests_per_s,
                run.receiver_cpu_percent,
                run.machine_cpu_us_per_request
            ));
            runs.push(run.requests_per_s);
            cpu.push(run.receiver_cpu_percent);
            machine.push(run.machine_cpu_us_per_request);
        }
        report.http_bound = Some(HttpBound {
            requests_per_s: Figure::of(runs),
            receiver_cpu_percent: median(cpu),
            machine_cpu_us_per_request: median(machine),
        });
        let count = if o.smoke { 200 } else { 5_000 };
        let costs = tokio::task::spawn_blocking(move || signing::signature_costs(count)).await??;
        bench.say(format!(
            "item 2 signatures: ES256 {:.1} us, Ed25519 {:.1} us (one core)",
            costs.es256_us, costs.ed25519_us
        ));
        report.signature_costs = Some(costs);
    }
    let bound = |k: usize| match (&report.broker_bound, &report.http_bound) {
        (Some(b), Some(h)) => Some((b.median * k as f64).min(h.requests_per_s.median)),
        _ => None,
    };
    if wants(3) || wants(4) || wants(5) {
        for &k in &o.ks {
            let spec = RunSpec::new(k, o.events);
            let mut e = end_to_end(bench, &format!("item 3 k={k}"), spec).await?;
            e.bound = bound(k);
            e.ratio = e.bound.map(|b| e.deliveries_per_s.median / b);
            e.machine_bound = report.machine_bound(k);
            e.machine_ratio = e.machine_bound.map(|b| e.deliveries_per_s.median / b);
            e.webhookd_budget_us_at_target = e.bound.and_then(|b| report.budget_at_target(k, b));
            report.end_to_end.push(e);
        }
    }
    if wants(4) {
        for e3 in report.end_to_end.clone() {
            let k = e3.k;
            let rate = e3.deliveries_per_s.median / k as f64 / 2.0;
            let events = ((rate * o.half_load_seconds) as u32).clamp(1, o.events);
            let spec = RunSpec { rate: Some(rate), ..RunSpec::new(k, events) };
            report.half_load.push(end_to_end(bench, &format!("item 4 k={k}"), spec).await?);
        }
    }
    if wants(5) {
        report.scale = Some(scale(bench).await?);
    }
    if wants(6) {
        report.backlog = Some(backlog(bench).await?);
    }
    if wants(9) {
        for &k in &o.ks {
            let spec = RunSpec { replicas: REPLICAS, ..RunSpec::new(k, o.events) };
            report
                .replicated
                .push(end_to_end(bench, &format!("item 9 k={k}, {REPLICAS} replicas"), spec).await?);
        }
    }
    if wants(8) {
        let held = if o.smoke { 2_000 } else { u64::from(o.events) * 10 };
        let dir = bench.work_dir.join(format!("view-{}", tag()));
        let cost = view::measure(&dir, held).await.context("item 8, the delivery log view")?;
        let _ = std::fs::remove_dir_all(&dir);
        bench.say(format!(
            "item 8: {} deliveries folded at {:.0}/s, {:.0} us CPU per delivery, {:.0} bytes on disk per delivery held ({})",
            cost.deliveries, cost.deliveries_per_s, cost.cpu_us_per_delivery, cost.bytes_per_delivery, cost.held
        ));
        report.view = Some(cost);
    }
    report.check_targets();
    Ok(report)
}

/// R runs of one end-to-end measurement, reduced to medians.
async fn end_to_end(bench: &Bench, label: &str, spec: RunSpec<'_>) -> anyhow::Result<EndToEnd> {
    let mut runs: Vec<RunResult> = Vec::new();
    for r in 0..bench.options.runs {
        runs.push(run_once(bench, label, r, spec).await?);
    }
    Ok(reduce(spec, &runs))
}

/// Run `r` (from 0) of one end-to-end measurement, with its progress line.
async fn run_once(bench: &Bench, label: &str, r: usize, spec: RunSpec<'_>) -> anyhow::Result<RunResult> {
    let run = e2e::run(bench, spec).await.with_context(|| format!("{label}, run {}", r + 1))?;
    bench.say(format!(
        "{label} run {}/{}: {:.0} deliveries/s, latency p50 {:.1} ms p99 {:.1} ms, RSS {:.0}/{:.0} MiB, CPU webhookd {:.0}% receiver {:.0}%, \
         {:.2} deferrals per delivery, {:.0} log entries per record",
        r + 1,
        bench.options.runs,
        run.deliveries_per_s,
        run.latency.p50_ms,
        run.latency.p99_ms,
        run.memory.steady_mib,
        run.memory.peak_mib,
        run.webhookd_cpu_percent,
        run.receiver_cpu_percent,
        run.deferred_per_delivery,
        run.log_entries_per_record
    ));
    Ok(run)
}

/// The medians of the runs of one measurement.
fn reduce(spec: RunSpec<'_>, runs: &[RunResult]) -> EndToEnd {
    let latencies: Vec<Latency> = runs.iter().map(|r| r.latency).collect();
    EndToEnd {
        k: spec.k,
        events: spec.events,
        publish_rate: spec.rate,
        deliveries: runs.first().map_or(0, |r| r.deliveries),
        deliveries_per_s: Figure::of(runs.iter().map(|r| r.deliveries_per_s).collect()),
        latency: Latency::median_of(&latencies),
        bound: None,
        ratio: None,
        machine_bound: None,
        machine_ratio: None,
        webhookd_budget_us_at_target: None,
        replicas: spec.replicas,
        shares: (0..spec.replicas)
            .map(|i| median(runs.iter().filter_map(|r| r.shares.get(i).copied())))
            .collect(),
        memory: Memory {
            steady_mib: median(runs.iter().map(|r| r.memory.steady_mib)),
            peak_mib: median(runs.iter().map(|r| r.memory.peak_mib)),
        },
        webhookd_cpu_percent: median(runs.iter().map(|r| r.webhookd_cpu_percent)),
        receiver_cpu_percent: median(runs.iter().map(|r| r.receiver_cpu_percent)),
        webhookd_cpu_us_per_delivery: median(runs.iter().map(|r| r.webhookd_cpu_us_per_delivery)),
        machine_cpu_us_per_delivery: median(runs.iter().map(|r| r.machine_cpu_us_per_delivery)),
    }
}

/// Item 5: load the unrelated subscriptions once, then item 3 again on that store, each run
/// paired with a run of item 3 on an empty store.
async fn scale(bench: &Bench) -> anyhow::Result<Scale> {
    let o = &bench.options;
    let dir = bench.work_dir.join("scale");
    bench.say(format!("item 5: loading {} subscriptions", o.scale_subscriptions));
    let count = o.scale_subscriptions.to_string();
    let filled = fill(bench, &["fill-subscriptions", "--data-dir", path(&dir)?, "--count", &count]).await?;
    bench.say(format!(
        "item 5: loaded in {:.1} s, peak RSS {:.0} MiB, {:.0} MiB on disk",
        filled.seconds, filled.peak_rss_mib, filled.disk_mib
    ));
    let mut scale = Scale {
        subscriptions: filled.items,
        load_seconds: filled.seconds,
        load_peak_rss_mib: filled.peak_rss_mib,
        disk_mib: filled.disk_mib,
        ..Scale::default()
    };
    // Each run on the large store comes right after a run of item 3 on an empty one, and the
    // change is taken against those: runs minutes apart differed by more than the 10 % the
    // target allows on this machine (the same build gave +12 % and -13 % against item 3's own
    // runs, done before the load).
    for &k in &o.ks {
        let empty = RunSpec::new(k, o.events);
        let large = RunSpec { data_dir: Some(&dir), ..empty };
        let (mut beside, mut runs) = (Vec::new(), Vec::new());
        for r in 0..o.runs {
            beside.push(run_once(bench, &format!("item 5 k={k}: item 3 beside it"), r, empty).await?);
            runs.push(run_once(bench, &format!("item 5 k={k}"), r, large).await?);
        }
        let (beside, e) = (reduce(empty, &beside), reduce(large, &runs));
        let change = (e.deliveries_per_s.median / beside.deliveries_per_s.median - 1.0) * 100.0;
        scale.change_percent.push((k, change));
        scale.item3_beside.push(beside);
        scale.end_to_end.push(e);
    }
    if !o.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(scale)
}

/// Item 6: fill the far-future backlog once, then R runs.
async fn backlog(bench: &Bench) -> anyhow::Result<Backlog> {
    let o = &bench.options;
    let dir = bench.work_dir.join("backlog");
    bench.say(format!("item 6: handing {} pending retries to the broker", o.backlog));
    // Due from one to 25 hours from now: pending through the whole bench.
    let now_ms = events::now_ns() / 1_000_000;
    let later = Group {
        kind: events::Kind::Later,
        count: o.backlog,
        from_ms: now_ms + 3_600_000,
        to_ms: now_ms + 25 * 3_600_000,
    };
    // One set of broker names for the fill and every run: the retries wait in its tiers.
    let amqp = amqp::settings_for(&o.amqp, &bench.amqp_url, &tag());
    let filled = fill_backlog(bench, &amqp, &[later]).await?;
    bench.say(format!(
        "item 6: handed to the broker's tiers in {:.1} s, peak RSS {:.0} MiB",
        filled.seconds, filled.peak_rss_mib
    ));
    let mut runs = Vec::new();
    for r in 0..o.runs {
        let run = backlog::run(bench, &dir, &amqp, filled.items)
            .await
            .with_context(|| format!("item 6, run {}", r + 1))?;
        bench.say(format!(
            "item 6 run {}/{}: ready after {:.0} ms, first retry after {:.0} ms, lateness p50 {:.1} ms p99 {:.1} ms ({} due during start-up), fresh p99 {:.1} ms, RSS {:.0}/{:.0} MiB",
            r + 1,
            o.runs,
            run.start_to_ready_ms,
            run.first_retry_ms,
            run.lateness.p50_ms,
            run.lateness.p99_ms,
            run.due_during_startup,
            run.fresh_latency.p99_ms,
            run.memory.steady_mib,
            run.memory.peak_mib
        ));
        runs.push(run);
    }
    if !o.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Backlog {
        pending: runs.first().map_or(0, |r| r.pending),
        fill_seconds: filled.seconds,
        fill_peak_rss_mib: filled.peak_rss_mib,
        disk_mib: filled.disk_mib,
        start_to_ready_ms: Figure::of(runs.iter().map(|r| r.start_to_ready_ms).collect()),
        first_retry_ms: Figure::of(runs.iter().map(|r| r.first_retry_ms).collect()),
        lateness: Latency::median_of(&runs.iter().map(|r| r.lateness).collect::<Vec<_>>()),
        due_during_startup: median(runs.iter().map(|r| r.due_during_startup as f64)),
        fresh_latency: Latency::median_of(&runs.iter().map(|r| r.fresh_latency).collect::<Vec<_>>()),
        memory: Memory {
            steady_mib: median(runs.iter().map(|r| r.memory.steady_mib)),
            peak_mib: median(runs.iter().map(|r| r.memory.peak_mib)),
        },
        webhookd_cpu_percent: median(runs.iter().map(|r| r.webhookd_cpu_percent)),
    })
}

/// Hands retry groups to the broker's tiers of the webhookd on `amqp`'s names (a
/// `fill-backlog` child process).
pub async fn fill_backlog(bench: &Bench, amqp: &AmqpSettings, groups: &[Group]) -> anyhow::Result<Filled> {
    let url = bench.receiver.url(backlog::BACKLOG_SUB);
    let (prefix, due) = amqp::retry_queues(amqp);
    let mut args = vec![
        "fill-backlog".to_string(),
        "--amqp-url".into(),
        amqp.url.clone(),
        "--retry-queue-prefix".into(),
        prefix,
        "--due-queue".into(),
        due,
        "--url".into(),
        url,
    ];
    for g in groups {
        args.push("--group".into());
        args.push(g.to_string());
    }
    fill(bench, &args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

/// Runs `webhookd bench <args>` (a fill command) and reads its JSON summary.
async fn fill(bench: &Bench, args: &[&str]) -> anyhow::Result<Filled> {
    // A full-size fill takes minutes; an hour means it stopped making progress.
    const FILL_PATIENCE: Duration = Duration::from_secs(3600);
    let out = tokio::process::Command::new(&bench.options.webhookd.exe)
        .arg("bench")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(FILL_PATIENCE, out)
        .await
        .with_context(|| format!("webhookd bench {} did not finish within {FILL_PATIENCE:?}", args[0]))?
        .context("cannot run the fill command")?;
    if !out.status.success() {
        bail!("webhookd bench {} failed: {}", args[0], String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("the fill command's summary")
}

fn path(dir: &Path) -> anyhow::Result<&str> {
    dir.to_str().context("the work dir must be valid UTF-8")
}

/// RabbitMQ's version from the installed Debian package, if there is one.
async fn rabbitmq_version() -> String {
    let out = tokio::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "rabbitmq-server"])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() && !o.stdout.is_empty() => {
            String::from_utf8_lossy(&o.stdout).into_owned()
        }
        _ => "unknown".into(),
    }
}
