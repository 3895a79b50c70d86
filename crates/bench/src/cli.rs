//! The `webhookd bench` command: its flags, and the hidden helper commands the bench runs as
//! child processes of the same binary (the receiver, the store fills).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use webhookd_ingest::AmqpSettings;

use crate::fill::Group;
use crate::webhookd::WebhookdSetup;
use crate::Options;

/// Measures webhookd end to end against the broker's and the receiver's bounds (docs/performance.md).
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Events per measurement, N (default 10000; 200 with --smoke).
    #[arg(long)]
    pub events: Option<u32>,
    /// Runs per figure; the report shows medians (default 3; 1 with --smoke).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Items to measure, e.g. 1,2,3 (default all: 1-9; 7 is memory during 3, 5 and 6; 8 the
    /// delivery log view's cost per delivery; 9 item 3 with 3 replicas on one broker).
    #[arg(long, value_delimiter = ',')]
    pub items: Option<Vec<u8>>,
    /// Leave out item 5 (the store with 1,000,000 subscriptions).
    #[arg(long)]
    pub skip_scale: bool,
    /// Leave out item 6 (the backlog of 1,000,000 pending retries).
    #[arg(long)]
    pub skip_backlog: bool,
    /// Subscriptions per event to measure (default 1,10).
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    pub k: Vec<usize>,
    /// Tiny sizes and one run: shows that the bench works, in well under a minute.
    #[arg(long)]
    pub smoke: bool,
    /// Unrelated subscriptions for item 5 (default 1000000; 10000 with --smoke).
    #[arg(long)]
    pub scale_subscriptions: Option<u64>,
    /// Pending retries for item 6 (default 1000000; 10000 with --smoke).
    #[arg(long)]
    pub backlog: Option<u64>,
    /// Retries per second due during item 6's measurement (default 500; 200 with --smoke).
    #[arg(long)]
    pub backlog_due_rate: Option<f64>,
    /// Length of item 6's measurement, seconds (default 20; 3 with --smoke).
    #[arg(long)]
    pub backlog_seconds: Option<f64>,
    /// Fresh events per second during item 6 (default 200; 50 with --smoke).
    #[arg(long)]
    pub backlog_fresh_rate: Option<f64>,
    /// Soak instead of the items: webhookd at a fixed rate for this many minutes, sampling RSS,
    /// open files, store size and pending work (docs/reliability.md; 30 for the documented run).
    #[arg(long)]
    pub soak_minutes: Option<f64>,
    /// The soak's rate, events/s (default: 80 % of item 3's deliveries/s at k = 1, measured first).
    #[arg(long)]
    pub soak_rate: Option<f64>,
    /// Use this broker instead of starting a private one.
    #[arg(long)]
    pub amqp_url: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where data dirs and logs go (default: a new dir under the system temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work dir afterwards.
    #[arg(long)]
    pub keep: bool,
    /// The bench's helper processes (internal).
    #[command(subcommand)]
    pub internal: Option<Internal>,
}

/// Helper processes the bench starts from the same binary.
#[derive(Subcommand, Debug)]
pub enum Internal {
    /// The minimal receiver: prints `listening <port>`, serves until stdin closes.
    #[command(hide = true)]
    Receiver,
    /// Writes unrelated subscriptions into a data dir; prints a JSON summary.
    #[command(hide = true)]
    FillSubscriptions {
        /// The data dir.
        #[arg(long)]
        data_dir: PathBuf,
        /// How many.
        #[arg(long)]
        count: u64,
    },
    /// Hands pending retries to the broker's retry tiers; prints a JSON summary.
    #[command(hide = true)]
    FillBacklog {
        /// The broker.
        #[arg(long)]
        amqp_url: String,
        /// The retry tier prefix of the webhookd that will send them.
        #[arg(long)]
        retry_queue_prefix: String,
        /// The due queue of that webhookd.
        #[arg(long)]
        due_queue: String,
        /// Where the retries go.
        #[arg(long)]
        url: String,
        /// KIND:COUNT:FROM_MS:TO_MS, repeatable.
        #[arg(long = "group")]
        groups: Vec<Group>,
    },
}

/// What the bench takes from the running webhookd binary.
#[derive(Clone, Debug)]
pub struct Context {
    /// The binary itself (spawned for `serve`, the receiver, the fills).
    pub exe: PathBuf,
    /// The configuration file given to it, if any.
    pub config_file: Option<PathBuf>,
    /// The effective `[amqp]` settings.
    pub amqp: AmqpSettings,
    /// `delivery.max_in_flight`.
    pub max_in_flight: usize,
    /// `delivery.max_in_flight_per_destination`.
    pub max_in_flight_per_destination: usize,
    /// `log.level`.
    pub log_level: String,
}

/// Runs `webhookd bench ...`.
pub fn main(args: BenchArgs, context: Context) -> anyhow::Result<()> {
    match args.internal {
        Some(Internal::Receiver) => return crate::receiver::serve(),
        Some(Internal::FillSubscriptions { data_dir, count }) => {
            let filled = crate::fill::subscriptions(&data_dir, count)?;
            println!("{}", serde_json::to_string(&filled)?);
            return Ok(());
        }
        Some(Internal::FillBacklog { amqp_url, retry_queue_prefix, due_queue, url, groups }) => {
            let queues = crate::fill::RetryQueues { amqp_url, prefix: retry_queue_prefix, due_queue };
            let filled = crate::fill::backlog(&queues, &url, &groups)?;
            println!("{}", serde_json::to_string(&filled)?);
            return Ok(());
        }
        None => {}
    }
    let json = args.json.clone();
    let options = options(args, context)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(crate::run(options))?;
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The options of a run from the flags (smoke or full defaults) and webhookd's configuration.
pub fn options(args: BenchArgs, context: Context) -> anyhow::Result<Options> {
    let smoke = args.smoke;
    let mut items: BTreeSet<u8> = match args.items {
        Some(list) => list.into_iter().collect(),
        None => (1..=9).collect(),
    };
    if args.skip_scale {
        items.remove(&5);
    }
    if args.skip_backlog {
        items.remove(&6);
    }
    if let Some(bad) = items.iter().find(|i| !(1..=9).contains(*i)) {
        bail!("--items: there is no item {bad} (1 to 9)");
    }
    if args.k.is_empty() || args.k.iter().any(|k| !(1..=32).contains(k)) {
        bail!("--k: each k must be 1 to 32 (Rabo's per-merchant limit is 32 by default)");
    }
    let events = args.events.unwrap_or(pick(smoke, 10_000, 200));
    let runs = args.runs.unwrap_or(pick(smoke, 3, 1));
    if events == 0 || runs == 0 {
        bail!("--events and --runs must be at least 1");
    }
    let soak = match (args.soak_minutes, args.soak_rate) {
        (Some(m), _) if m.is_nan() || m <= 0.0 => bail!("--soak-minutes must be above 0"),
        (_, Some(r)) if r.is_nan() || r <= 0.0 => bail!("--soak-rate must be above 0"),
        (Some(minutes), rate) => Some(crate::SoakOptions { minutes, rate }),
        (None, Some(_)) => bail!("--soak-rate goes with --soak-minutes"),
        (None, None) => None,
    };
    let work_dir = args
        .work_dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("webhookd-bench-{}", crate::tag())));
    Ok(Options {
        webhookd: WebhookdSetup { exe: context.exe, config_file: context.config_file },
        amqp: context.amqp,
        max_in_flight: context.max_in_flight,
        max_in_flight_per_destination: context.max_in_flight_per_destination,
        log_level: context.log_level,
        amqp_url: args.amqp_url,
        events,
        runs,
        smoke,
        items,
        ks: args.k,
        scale_subscriptions: args.scale_subscriptions.unwrap_or(pick(smoke, 1_000_000, 10_000)),
        backlog: args.backlog.unwrap_or(pick(smoke, 1_000_000, 10_000)),
        backlog_due_rate: args.backlog_due_rate.unwrap_or(pick(smoke, 500.0, 200.0)),
        backlog_seconds: args.backlog_seconds.unwrap_or(pick(smoke, 20.0, 3.0)),
        backlog_fresh_rate: args.backlog_fresh_rate.unwrap_or(pick(smoke, 200.0, 50.0)),
        backlog_lead: Duration::from_secs(pick(smoke, 15, 3)),
        half_load_seconds: pick(smoke, 15.0, 3.0),
        soak,
        work_dir,
        keep: args.keep,
        progress: true,
        load_average_at_start: crate::procfs::load_average(),
    })
}

/// The full-mode value, or the smoke-mode one.
fn pick<T>(smoke: bool, full: T, small: T) -> T {
    if smoke {
        small
    } else {
        full
    }
}
