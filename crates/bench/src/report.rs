//! The report: every figure of one bench run, as one table and as JSON.

use serde::{Deserialize, Serialize};

use crate::stats::{median, Latency};
use crate::webhookd::Memory;

/// The whole report (also written as JSON with `--json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// What ran.
    pub versions: Versions,
    /// How it ran.
    pub settings: Settings,
    /// Item 1: the broker bound.
    pub broker_bound: Option<Figure>,
    /// Item 1: CPU the whole machine spent per event of the broker bound, microseconds.
    #[serde(default)]
    pub broker_machine_cpu_us_per_event: Option<f64>,
    /// Item 2: the HTTP bound.
    pub http_bound: Option<HttpBound>,
    /// Item 2: what one delivery's signature costs on one core.
    #[serde(default)]
    pub signature_costs: Option<crate::signing::SignatureCosts>,
    /// Item 3 (and 7): webhookd end to end at full speed, per k.
    pub end_to_end: Vec<EndToEnd>,
    /// Item 4: the same at half the measured maximum, per k.
    pub half_load: Vec<EndToEnd>,
    /// Item 5: item 3 with many unrelated subscriptions in the store.
    pub scale: Option<Scale>,
    /// Item 6 (and 7): a large backlog of pending retries.
    pub backlog: Option<Backlog>,
    /// Item 8: the delivery log view's cost per delivery, on every replica.
    #[serde(default)]
    pub view: Option<crate::view::ViewCost>,
    /// Item 9: item 3 with several replicas on one broker, per k.
    #[serde(default)]
    pub replicated: Vec<EndToEnd>,
    /// The soak, when one ran instead of the items.
    #[serde(default)]
    pub soak: Option<crate::soak::Soak>,
    /// The targets, met or not.
    pub targets: Vec<TargetCheck>,
    /// Wall-clock seconds of the whole bench.
    pub seconds: f64,
}

/// The machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Logical cores.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// 1-minute load average when the bench started (anything well above 0 means other work
    /// shared the cores, and the figures are low).
    pub load_average_at_start: f64,
}

/// Versions of what was measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Versions {
    /// webhookd's.
    pub webhookd: String,
    /// RabbitMQ's (from the installed package), if known.
    pub rabbitmq: String,
}

/// The parameters of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    /// Events per measurement (N).
    pub events: u32,
    /// Runs per figure; figures are medians of them.
    pub runs: usize,
    /// Smoke mode (tiny sizes, not for comparisons).
    pub smoke: bool,
    /// Items measured.
    pub items: Vec<u8>,
    /// Subscriptions per event measured (k).
    pub k: Vec<usize>,
    /// webhookd's `amqp.prefetch`.
    pub prefetch: u16,
    /// webhookd's `amqp.batch_max`.
    pub batch_max: usize,
    /// webhookd's `delivery.max_in_flight`.
    pub max_in_flight: usize,
    /// webhookd's `delivery.max_in_flight_per_destination`.
    pub max_in_flight_per_destination: usize,
    /// Requests in flight of the HTTP bound: what webhookd may have in flight to one receiver.
    pub http_concurrency: usize,
    /// webhookd's `log.level` during the runs.
    pub log_level: String,
    /// Unrelated subscriptions of item 5.
    pub scale_subscriptions: u64,
    /// Pending retries of item 6.
    pub backlog_pending: u64,
    /// Retries per second due during item 6's measurement.
    pub backlog_due_rate: f64,
    /// Length of item 6's measurement, seconds.
    pub backlog_seconds: f64,
    /// Fresh events per second during item 6.
    pub backlog_fresh_rate: f64,
    /// A private broker (true) or the one given with --amqp-url.
    pub private_broker: bool,
}

/// A throughput figure: the median and every run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Median of the runs.
    pub median: f64,
    /// Each run.
    pub runs: Vec<f64>,
}

impl Figure {
    /// The figure of these runs.
    pub fn of(runs: Vec<f64>) -> Figure {
        Figure { median: median(runs.iter().copied()), runs }
    }
}

/// Item 2.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HttpBound {
    /// Requests per second.
    pub requests_per_s: Figure,
    /// Receiver CPU during the runs, percent of one core (median).
    pub receiver_cpu_percent: f64,
    /// CPU the whole machine spent per request, microseconds (median).
    #[serde(default)]
    pub machine_cpu_us_per_request: f64,
}

/// One end-to-end measurement (items 3, 4, 5, 9), medians over its runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndToEnd {
    /// Subscriptions matching each event.
    pub k: usize,
    /// Events published per run.
    pub events: u32,
    /// Fixed publish rate, events per second (item 4), or none (as fast as possible).
    pub publish_rate: Option<f64>,
    /// Deliveries received per run (all of them: events x k, each once).
    pub deliveries: u64,
    /// Deliveries per second, first publish to last receipt.
    pub deliveries_per_s: Figure,
    /// Publish to receipt.
    pub latency: Latency,
    /// min(broker bound x k, HTTP bound), when both were measured.
    pub bound: Option<f64>,
    /// deliveries/s / bound.
    pub ratio: Option<f64>,
    /// What this machine's cores allow when they do only the bounds' work: the broker's share
    /// of an event (item 1's machine CPU per event / k) plus one request (item 2's machine CPU
    /// per request) per delivery, deliveries/s. See [`Report::machine_bound`].
    #[serde(default)]
    pub machine_bound: Option<f64>,
    /// deliveries/s / machine bound.
    #[serde(default)]
    pub machine_ratio: Option<f64>,
    /// webhookd processes (item 9: several on one broker).
    #[serde(default = "one")]
    pub replicas: usize,
    /// Each replica's share of the attempts (median over the runs).
    #[serde(default)]
    pub shares: Vec<f64>,
    /// webhookd's memory (item 7; with several replicas, the one with the highest peak).
    pub memory: Memory,
    /// webhookd's CPU during the measurement, percent of one core.
    pub webhookd_cpu_percent: f64,
    /// The receiver's CPU during the measurement, percent of one core.
    pub receiver_cpu_percent: f64,
    /// webhookd's CPU per delivery, microseconds.
    #[serde(default)]
    pub webhookd_cpu_us_per_delivery: f64,
    /// The whole machine's CPU per delivery, microseconds.
    #[serde(default)]
    pub machine_cpu_us_per_delivery: f64,
    /// The CPU per delivery webhookd could spend at 80 % of `bound`, microseconds: what the
    /// cores give at that rate less the bounds' own work. See [`Report::budget_at_target`].
    #[serde(default)]
    pub webhookd_budget_us_at_target: Option<f64>,
}

fn one() -> usize {
    1
}

/// Issue 14's bound on webhookd's CPU per delivery at `k` subscriptions per event, microseconds:
/// within 1.3x of a bare worker's (consume, match, render, sign, POST, ack) at k = 1 and 10.
pub fn cpu_target_us(k: usize) -> Option<f64> {
    match k {
        1 => Some(90.0),
        10 => Some(65.0),
        _ => None,
    }
}

/// Item 5.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scale {
    /// Unrelated subscriptions in the store.
    pub subscriptions: u64,
    /// Seconds to load them through the store's change function.
    pub load_seconds: f64,
    /// Peak RSS of the loading process, MiB.
    pub load_peak_rss_mib: f64,
    /// Store size on disk after the load, MiB.
    pub disk_mib: f64,
    /// Item 3 again on this store, per k.
    pub end_to_end: Vec<EndToEnd>,
    /// Item 3 on an empty store, each run just before one on this store, per k.
    #[serde(default)]
    pub item3_beside: Vec<EndToEnd>,
    /// Change of deliveries/s against `item3_beside`, percent, per k (negative: slower).
    pub change_percent: Vec<(usize, f64)>,
}

/// Item 6.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Backlog {
    /// Pending retries in the store when webhookd starts (the far-future ones plus those due
    /// during the measurement).
    pub pending: u64,
    /// Seconds to write the far-future retries.
    pub fill_seconds: f64,
    /// Peak RSS of the filling process, MiB.
    pub fill_peak_rss_mib: f64,
    /// Store size on disk after the fill, MiB (0: the backlog is in the broker, not the store).
    pub disk_mib: f64,
    /// Process start to `/readyz` 200, milliseconds.
    pub start_to_ready_ms: Figure,
    /// Process start to the first overdue retry received, milliseconds.
    pub first_retry_ms: Figure,
    /// Received minus due time of the retries due during the measurement.
    pub lateness: Latency,
    /// Retries due before the first retry arrived (start-up, not scheduling): left out of
    /// the lateness, counted here (median per run).
    pub due_during_startup: f64,
    /// Publish to receipt of the fresh events flowing at the same time.
    pub fresh_latency: Latency,
    /// webhookd's memory (item 7).
    pub memory: Memory,
    /// webhookd's CPU during the measurement, percent of one core.
    pub webhookd_cpu_percent: f64,
}

/// One target of the issue.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TargetCheck {
    /// The target.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met or not.
    pub met: bool,
}

impl Report {
    /// The deliveries/s at which the broker's and the HTTP bound's own work, plus the one
    /// signature every delivery must carry, would take every core of this machine, for k
    /// deliveries per event: cores divided by (broker CPU per event / k + CPU per request +
    /// one ES256 signature). webhookd shares the machine with the broker and the receiver, so
    /// even a worker that did nothing else could not go beyond it; the bound,
    /// min(broker x k, HTTP), measures each neighbour with the whole machine to itself.
    pub fn machine_bound(&self, k: usize) -> Option<f64> {
        let signature = self.signature_costs.as_ref().map_or(0.0, |c| c.es256_us);
        let per_delivery = self.bounds_cpu_us_per_delivery(k)? + signature;
        (per_delivery > 0.0).then(|| self.machine.cores as f64 * 1e6 / per_delivery)
    }

    /// The machine CPU the bounds' own work takes per delivery at k deliveries per event,
    /// microseconds: the broker's per event shared by k, plus one HTTP request.
    fn bounds_cpu_us_per_delivery(&self, k: usize) -> Option<f64> {
        let per_event = self.broker_machine_cpu_us_per_event?;
        let per_request = self.http_bound.as_ref()?.machine_cpu_us_per_request;
        Some(per_event / k.max(1) as f64 + per_request)
    }

    /// The CPU per delivery left for webhookd if the whole machine delivered at 80 % of `bound`
    /// (the throughput target): the cores' microseconds per delivery at that rate, less
    /// what the broker (per event, shared by k deliveries) and the HTTP exchange (per request)
    /// cost the machine in items 1 and 2. Negative: out of reach even for a worker that cost
    /// nothing.
    pub fn budget_at_target(&self, k: usize, bound: f64) -> Option<f64> {
        let bounds = self.bounds_cpu_us_per_delivery(k)?;
        (bound > 0.0).then(|| self.machine.cores as f64 * 1e6 / (0.8 * bound) - bounds)
    }

    /// Checks the targets against the figures measured.
    pub fn check_targets(&mut self) {
        let mut checks = Vec::new();
        // Issue 14's targets hold on any machine: webhookd's own CPU per delivery, and the share
        // of what the cores allow the broker's and the receiver's work (the machine bound).
        for e in &self.end_to_end {
            if let Some(limit) = cpu_target_us(e.k) {
                checks.push(TargetCheck {
                    target: format!("k={}: webhookd CPU per delivery <= {limit:.0} us", e.k),
                    measured: format!("{:.0} us", e.webhookd_cpu_us_per_delivery),
                    met: e.webhookd_cpu_us_per_delivery > 0.0 && e.webhookd_cpu_us_per_delivery <= limit,
                });
            }
            if let Some(ratio) = e.machine_ratio {
                checks.push(TargetCheck {
                    target: format!(
                        "k={}: deliveries/s >= 50% of what the cores allow the bounds' work",
                        e.k
                    ),
                    measured: format!("{:.0}%", ratio * 100.0),
                    met: ratio >= 0.5,
                });
            }
        }
        for e in &self.half_load {
            checks.push(TargetCheck {
                target: format!("k={}: p99 latency < 25 ms at half load", e.k),
                measured: format!("{:.1} ms", e.latency.p99_ms),
                met: e.latency.p99_ms < 25.0,
            });
        }
        for e in &self.end_to_end {
            checks.push(TargetCheck {
                target: format!("k={}: steady RSS < 100 MiB during item 3", e.k),
                measured: format!("{:.0} MiB", e.memory.steady_mib),
                met: e.memory.steady_mib < 100.0,
            });
        }
        if let Some(s) = &self.scale {
            for (k, change) in &s.change_percent {
                checks.push(TargetCheck {
                    target: format!("k={k}: with {} subscriptions within 10% of item 3", s.subscriptions),
                    measured: format!("{change:+.1}%"),
                    met: *change >= -10.0,
                });
            }
        }
        if let Some(b) = &self.backlog {
            checks.push(TargetCheck {
                target: format!("steady RSS < 300 MiB with {} pending", b.pending),
                measured: format!("{:.0} MiB", b.memory.steady_mib),
                met: b.memory.steady_mib < 300.0,
            });
            checks.push(TargetCheck {
                target: "first due retry within 2 s of start".into(),
                measured: format!("{:.0} ms", b.first_retry_ms.median),
                met: b.first_retry_ms.median < 2000.0,
            });
            checks.push(TargetCheck {
                target: "p99 lateness of due retries < 100 ms".into(),
                measured: format!("{:.1} ms", b.lateness.p99_ms),
                met: b.lateness.p99_ms < 100.0,
            });
        }
        if let Some(soak) = &self.soak {
            if let Some(burst) = soak.burst_per_s.filter(|b| *b > 0.0) {
                let held = soak.delivered_per_s / burst;
                checks.push(TargetCheck {
                    target: "sustained for 30 minutes >= 80% of the burst rate".into(),
                    measured: format!(
                        "{:.0}% ({} of {} deliveries/s, {:.0} minutes)",
                        held * 100.0,
                        rate(soak.delivered_per_s),
                        rate(burst),
                        soak.minutes
                    ),
                    met: soak.minutes >= 30.0 && held >= 0.8,
                });
            }
        }
        if let Some(v) = &self.view {
            checks.push(TargetCheck {
                target: "delivery log view <= 1 KB on disk per delivery".into(),
                measured: format!("{:.0} bytes", v.bytes_per_delivery),
                met: v.bytes_per_delivery <= 1024.0,
            });
        }
        self.targets = checks;
    }

    /// The report as one readable table.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = format!(
            "webhookd bench: {} cores ({}), webhookd {}, RabbitMQ {}; N = {} events, median of {} run(s){}\n",
            self.machine.cores,
            self.machine.cpu,
            self.versions.webhookd,
            self.versions.rabbitmq,
            s.events,
            s.runs,
            if s.smoke { ", SMOKE (sizes too small to compare)" } else { "" },
        );
        if self.machine.load_average_at_start > 0.5 {
            out.push_str(&format!(
                "WARNING: load average {:.2} at start: other work shared the cores, figures are low\n",
                self.machine.load_average_at_start
            ));
        }
        out.push_str(&format!(
            "webhookd settings: prefetch {}, batch {}, {} in flight ({} per destination), log level {}\n",
            s.prefetch, s.batch_max, s.max_in_flight, s.max_in_flight_per_destination, s.log_level
        ));
        let mut t = Table::default();
        if let Some(b) = &self.broker_bound {
            t.row("1 broker bound", "events/s (publish + consume, confirms, acks)", rate(b.median), "");
            if let Some(cpu) = self.broker_machine_cpu_us_per_event {
                t.row("", "machine CPU per event", format!("{cpu:.0} us"), "");
            }
        }
        if let Some(h) = &self.http_bound {
            t.row(
                "2 HTTP bound",
                &format!("requests/s ({} in flight)", s.http_concurrency),
                rate(h.requests_per_s.median),
                "",
            );
            t.row("", "receiver CPU", percent(h.receiver_cpu_percent), "");
            t.row("", "machine CPU per request", format!("{:.0} us", h.machine_cpu_us_per_request), "");
        }
        if let Some(c) = &self.signature_costs {
            t.row(
                if self.http_bound.is_some() { "" } else { "2 signatures" },
                "signature CPU, one core: ES256 (Rabo) / Ed25519 (OBP)",
                format!("{:.1} / {:.1} us", c.es256_us, c.ed25519_us),
                "",
            );
        }
        for e in &self.end_to_end {
            self.end_to_end_rows(&mut t, &format!("3 end to end k={}", e.k), e, true);
        }
        for e in &self.half_load {
            self.end_to_end_rows(&mut t, &format!("4 half load k={}", e.k), e, false);
        }
        if let Some(sc) = &self.scale {
            t.row(
                "5 store scale",
                &format!("load {} subscriptions: seconds", sc.subscriptions),
                format!("{:.1}", sc.load_seconds),
                "",
            );
            t.row(
                "",
                "load: peak RSS / store on disk",
                format!("{:.0} / {:.0} MiB", sc.load_peak_rss_mib, sc.disk_mib),
                "",
            );
            for e in &sc.end_to_end {
                self.end_to_end_rows(&mut t, &format!("5 scale k={}", e.k), e, false);
                if let Some(beside) = sc.item3_beside.iter().find(|b| b.k == e.k) {
                    t.row(
                        "",
                        "item 3 on an empty store, run beside it: deliveries/s",
                        rate(beside.deliveries_per_s.median),
                        "",
                    );
                }
                if let Some((_, change)) = sc.change_percent.iter().find(|(k, _)| *k == e.k) {
                    let mark = self.target_mark(&format!("k={}: with", e.k));
                    t.row("", "deliveries/s vs item 3 run beside it", format!("{change:+.1}%"), &mark);
                }
            }
        }
        if let Some(b) = &self.backlog {
            t.row("6 backlog", "pending retries in the broker's tiers at start", b.pending.to_string(), "");
            t.row(
                "",
                "handed to the broker: seconds / filler's peak RSS",
                format!("{:.1} s / {:.0} MiB", b.fill_seconds, b.fill_peak_rss_mib),
                "",
            );
            t.row("", "start to ready, ms", format!("{:.0}", b.start_to_ready_ms.median), "");
            t.row(
                "",
                "start to first due retry received, ms",
                format!("{:.0}", b.first_retry_ms.median),
                &self.target_mark("first due retry"),
            );
            t.row(
                "",
                &format!("lateness p50/p90/p99/max ms ({} due/s)", s.backlog_due_rate),
                latency(&b.lateness),
                &self.target_mark("lateness"),
            );
            t.row("", "due during start-up (left out)", format!("{:.0}", b.due_during_startup), "");
            t.row(
                "",
                &format!("fresh events ({}/s) latency ms", s.backlog_fresh_rate),
                latency(&b.fresh_latency),
                "",
            );
            t.row("7 memory (item 6)", "RSS steady / peak", memory(&b.memory), &self.target_mark("300 MiB"));
            t.row("", "webhookd CPU", percent(b.webhookd_cpu_percent), "");
        }
        for e in &self.replicated {
            self.replicated_rows(&mut t, e);
        }
        if let Some(v) = &self.view {
            t.row(
                "8 log view",
                &format!(
                    "deliveries folded per second, one folder ({} entries of {} bytes in the stream)",
                    v.deliveries, v.entry_bytes
                ),
                format!("{:.0}", v.deliveries_per_s),
                "",
            );
            t.row(
                "",
                "CPU per delivery folded, every replica",
                format!("{:.0} us", v.cpu_us_per_delivery),
                "",
            );
            t.row(
                "",
                &format!("on disk per delivery held ({} held, retention removing as many as arrive)", v.held),
                format!("{:.0} bytes", v.bytes_per_delivery),
                &self.target_mark("1 KB on disk"),
            );
        }
        out.push_str(&t.render());
        if !self.targets.is_empty() {
            out.push_str("targets:\n");
            for c in &self.targets {
                out.push_str(&format!(
                    "  {:<6} {:<60} {}\n",
                    if c.met { "met" } else { "MISSED" },
                    c.target,
                    c.measured
                ));
            }
        }
        if let Some(soak) = &self.soak {
            out.push_str(&format!(
                "soak: {:.0} min at {:.0} events/s: {} published, {} received, {:.0} deliveries/s after the warm-up, \
                 latency p50 {:.1} ms p99 {:.1} ms, pending max {}\n\
                 soak slopes per hour (after the first {:.0} minutes): RSS {:+.2} MiB, open files {:+.2}, store {:+.1} MiB, \
                 pending {:+.1}\n",
                soak.minutes,
                soak.rate,
                soak.published,
                soak.received,
                soak.delivered_per_s,
                soak.latency.p50_ms,
                soak.latency.p99_ms,
                soak.pending_max,
                crate::soak::WARM_UP.as_secs_f64() / 60.0,
                soak.rss_mib_per_hour,
                soak.open_files_per_hour,
                soak.store_mib_per_hour,
                soak.pending_per_hour
            ));
            if let (Some(first), Some(last)) = (soak.samples.first(), soak.samples.last()) {
                out.push_str(&format!(
                    "soak first/last sample: RSS {:.0}/{:.0} MiB, open files {}/{}, store {:.0}/{:.0} MiB, pending {}/{}\n",
                    first.rss_mib,
                    last.rss_mib,
                    first.open_files,
                    last.open_files,
                    first.store_mib,
                    last.store_mib,
                    first.pending,
                    last.pending
                ));
            }
        }
        out.push_str(&format!("bench took {:.0} s\n", self.seconds));
        out
    }

    /// Item 9's rows: the rate beside item 3's at the same k, the split, the cost.
    fn replicated_rows(&self, t: &mut Table, e: &EndToEnd) {
        let single = self.end_to_end.iter().find(|one| one.k == e.k);
        let versus = single.map_or(String::new(), |one| {
            format!(" ({:.2}x item 3's)", e.deliveries_per_s.median / one.deliveries_per_s.median.max(1.0))
        });
        t.row(
            &format!("9 {} replicas k={}", e.replicas, e.k),
            "deliveries/s, one broker",
            format!("{}{versus}", rate(e.deliveries_per_s.median)),
            "",
        );
        let split: Vec<String> = e.shares.iter().map(|share| format!("{:.0}%", share * 100.0)).collect();
        t.row("", "attempts made by each replica", split.join(" / "), "");
        t.row("", "latency p50/p90/p99/max ms", latency(&e.latency), "");
        t.row(
            "",
            "webhookd CPU per delivery, all replicas (each folds every delivery)",
            format!("{:.0} us", e.webhookd_cpu_us_per_delivery),
            "",
        );
        t.row("", "RSS steady / peak, largest replica", memory(&e.memory), "");
    }

    fn end_to_end_rows(&self, t: &mut Table, label: &str, e: &EndToEnd, with_ratio: bool) {
        let load = match e.publish_rate {
            Some(r) => format!("{} events at {r:.0}/s", e.events),
            None => format!("{} events", e.events),
        };
        t.row(
            label,
            &format!("deliveries/s ({load}, {} deliveries)", e.deliveries),
            rate(e.deliveries_per_s.median),
            "",
        );
        if with_ratio {
            if let (Some(bound), Some(ratio)) = (e.bound, e.ratio) {
                t.row(
                    "",
                    &format!("ratio to min(broker x {}, HTTP) = {}", e.k, rate(bound)),
                    format!("{:.0}%", ratio * 100.0),
                    "",
                );
            }
            if let (Some(bound), Some(ratio)) = (e.machine_bound, e.machine_ratio) {
                t.row(
                    "",
                    &format!(
                        "ratio to what {} cores allow the bounds' work = {}",
                        self.machine.cores,
                        rate(bound)
                    ),
                    format!("{:.0}%", ratio * 100.0),
                    &self.target_mark(&format!("k={}: deliveries/s", e.k)),
                );
            }
        }
        let mark = if e.publish_rate.is_some() {
            self.target_mark(&format!("k={}: p99", e.k))
        } else {
            String::new()
        };
        t.row("", "latency p50/p90/p99/max ms", latency(&e.latency), &mark);
        let mem_mark =
            if with_ratio { self.target_mark(&format!("k={}: steady RSS", e.k)) } else { String::new() };
        t.row("", "webhookd RSS steady / peak", memory(&e.memory), &mem_mark);
        t.row(
            "",
            "CPU webhookd / receiver",
            format!("{} / {}", percent(e.webhookd_cpu_percent), percent(e.receiver_cpu_percent)),
            "",
        );
        if e.machine_cpu_us_per_delivery > 0.0 {
            t.row(
                "",
                "CPU per delivery: webhookd / machine",
                format!("{:.0} / {:.0} us", e.webhookd_cpu_us_per_delivery, e.machine_cpu_us_per_delivery),
                &if with_ratio {
                    self.target_mark(&format!("k={}: webhookd CPU", e.k))
                } else {
                    String::new()
                },
            );
        }
        if let (true, Some(budget)) = (with_ratio, e.webhookd_budget_us_at_target) {
            let signature = match &self.signature_costs {
                Some(c) => format!(" (one ES256 signature: {:.1} us)", c.es256_us),
                None => String::new(),
            };
            t.row(
                "",
                "webhookd CPU per delivery left at 80% of the bound",
                format!("{budget:.0} us{signature}"),
                "",
            );
        }
    }

    /// "met"/"MISSED" for the target whose text contains `needle`, or nothing.
    fn target_mark(&self, needle: &str) -> String {
        self.targets
            .iter()
            .find(|c| c.target.contains(needle))
            .map(|c| format!("{}: {}", c.target, if c.met { "met" } else { "MISSED" }))
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, item: &str, figure: &str, value: String, target: &str) {
        self.rows.push([item.into(), figure.into(), value, target.into()]);
    }

    fn render(&self) -> String {
        let header = ["item", "figure", "value", "target"].map(String::from);
        let all: Vec<&[String; 4]> = std::iter::once(&header).chain(&self.rows).collect();
        let width = |c: usize| all.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
        let (w0, w1, w2) = (width(0), width(1), width(2));
        let mut out = String::new();
        for r in all {
            let line = format!("{:<w0$}  {:<w1$}  {:>w2$}  {}", r[0], r[1], r[2], r[3]);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn rate(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn latency(l: &Latency) -> String {
    format!("{:.1} / {:.1} / {:.1} / {:.1}", l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms)
}

fn memory(m: &Memory) -> String {
    format!("{:.0} / {:.0} MiB", m.steady_mib, m.peak_mib)
}

fn percent(p: f64) -> String {
    format!("{p:.0}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_have_thousands_separators() {
        assert_eq!(rate(1234567.4), "1,234,567");
        assert_eq!(rate(999.0), "999");
        assert_eq!(rate(1000.0), "1,000");
    }

    #[test]
    fn the_budget_at_target_is_what_the_cores_give_at_80_percent_less_the_bounds_work() {
        let mut report = Report { machine: Machine { cores: 2, ..Machine::default() }, ..Report::default() };
        assert_eq!(report.budget_at_target(1, 10_000.0), None, "needs both bounds");
        report.broker_machine_cpu_us_per_event = Some(100.0);
        report.http_bound = Some(HttpBound { machine_cpu_us_per_request: 40.0, ..HttpBound::default() });
        // 80 % of 10,000/s on 2 cores: 250 us per delivery; the bounds take 140 (k = 1), 50 (k = 10).
        assert!((report.budget_at_target(1, 10_000.0).unwrap() - 110.0).abs() < 1e-6);
        assert!((report.budget_at_target(10, 10_000.0).unwrap() - 200.0).abs() < 1e-6);
        // A bound the cores cannot give even to a worker that costs nothing.
        assert!(report.budget_at_target(1, 20_000.0).unwrap() < 0.0);
        assert_eq!(report.budget_at_target(1, 0.0), None);
    }

    #[test]
    fn machine_bound_shares_the_cores_between_the_bounds_work() {
        let mut report = Report { machine: Machine { cores: 2, ..Machine::default() }, ..Report::default() };
        assert_eq!(report.machine_bound(1), None, "needs both bounds");
        report.broker_machine_cpu_us_per_event = Some(100.0);
        report.http_bound = Some(HttpBound { machine_cpu_us_per_request: 40.0, ..HttpBound::default() });
        // k = 1: 140 us per delivery on 2 cores; k = 10: 10 + 40 us.
        assert!((report.machine_bound(1).unwrap() - 2e6 / 140.0).abs() < 1e-6);
        assert!((report.machine_bound(10).unwrap() - 2e6 / 50.0).abs() < 1e-6);
        // With the signature each delivery carries measured, it counts too.
        report.signature_costs =
            Some(crate::signing::SignatureCosts { es256_us: 30.0, ..Default::default() });
        assert!((report.machine_bound(1).unwrap() - 2e6 / 170.0).abs() < 1e-6);
    }

    #[test]
    fn the_throughput_targets_are_cpu_per_delivery_and_half_the_machine_bound() {
        let mut report = Report { machine: Machine { cores: 2, ..Machine::default() }, ..Report::default() };
        let run = |k, cpu, ratio| EndToEnd {
            k,
            replicas: 1,
            webhookd_cpu_us_per_delivery: cpu,
            machine_ratio: Some(ratio),
            ..EndToEnd::default()
        };
        report.end_to_end = vec![run(1, 85.0, 0.49), run(10, 70.0, 0.6)];
        report.check_targets();
        let verdicts: Vec<(String, bool)> =
            report.targets.iter().map(|c| (c.target.clone(), c.met)).collect();
        assert!(verdicts.contains(&("k=1: webhookd CPU per delivery <= 90 us".into(), true)), "{verdicts:?}");
        assert!(
            verdicts.contains(&("k=10: webhookd CPU per delivery <= 65 us".into(), false)),
            "{verdicts:?}"
        );
        let half = |k| format!("k={k}: deliveries/s >= 50% of what the cores allow the bounds' work");
        assert!(verdicts.contains(&(half(1), false)) && verdicts.contains(&(half(10), true)), "{verdicts:?}");
    }

    #[test]
    fn the_sustained_target_needs_30_minutes_at_80_percent_of_the_burst() {
        let verdict = |minutes: f64, delivered_per_s: f64, burst: Option<f64>| {
            let soak =
                crate::soak::Soak { minutes, delivered_per_s, burst_per_s: burst, ..Default::default() };
            let mut report = Report { soak: Some(soak), ..Report::default() };
            report.check_targets();
            report.targets.iter().find(|c| c.target.starts_with("sustained")).map(|c| c.met)
        };
        assert_eq!(verdict(30.0, 2_400.0, Some(3_000.0)), Some(true));
        assert_eq!(verdict(30.0, 2_388.0, Some(3_053.0)), Some(false), "78 %");
        assert_eq!(verdict(10.0, 2_900.0, Some(3_000.0)), Some(false), "too short");
        assert_eq!(verdict(30.0, 2_400.0, None), None, "no burst measured: no verdict");
    }
}
