//! The `webhookd` command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use webhookd::{keys, telemetry, Config};

/// jemalloc instead of the system allocator: with glibc malloc, allocation took about 30 % of
/// webhookd's CPU and freed memory came back to the system slowly (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: freed pages go back to the system after a quarter of a second, by
/// jemalloc's own background thread (its default keeps them 10 s, which after a burst showed as
/// 50-90 MiB more RSS; 1 s still held 15 MiB more than 250 ms at 100,000 deliveries, for no
/// measurable difference in rate; docs/performance.md). `_RJEM_MALLOC_CONF` overrides them.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Option<&'static std::ffi::c_char> =
    Some(unsafe { &*c"background_thread:true,dirty_decay_ms:250,muzzy_decay_ms:0".as_ptr() });

/// webhookd: consumes banking events from RabbitMQ and delivers them as signed webhooks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); WEBHOOKD_* environment variables override it.
    #[arg(long, global = true, env = "WEBHOOKD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the service until SIGTERM or SIGINT.
    Serve,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// What webhookd declares on RabbitMQ.
    Broker {
        #[command(subcommand)]
        command: BrokerCommand,
    },
    /// Signing key commands.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The delivery log and redelivery, through the running service's admin API.
    Deliveries {
        /// Base URL of the API (default: http:// + http.listen from the configuration).
        #[arg(long, global = true)]
        api: Option<String>,
        /// A token with the role CanManageDeliveries.
        #[arg(long, global = true, env = "WEBHOOKD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Publishes one event (JSON, from --file or standard input) to the events exchange, as
    /// the core banking system does: persistent, its type as routing key, broker-confirmed.
    #[command(after_help = "Example:\n  \
        echo '{\"type\":\"test\",\"event_id\":\"9a1f0c52-7f0b-4d5e-9a53-2f1e6f3b8c11\",\
        \"occurred_at\":\"2026-11-24T10:00:00Z\",\"merchant_id\":\"shop-1\"}' | webhookd publish")]
    Publish {
        /// The event file (default: standard input).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Records messages of an AMQP exchange into a capture file (one JSON line each).
    Record {
        /// The exchange to tap.
        #[arg(long, default_value = "webhookd.events")]
        exchange: String,
        /// Routing key pattern of the temporary queue's binding.
        #[arg(long, default_value = "#")]
        binding: String,
        /// The capture file to write.
        #[arg(long)]
        out: PathBuf,
        /// Stop after this many messages (default: until Ctrl-C).
        #[arg(long)]
        count: Option<usize>,
        /// The broker (default: amqp.url from the configuration).
        #[arg(long)]
        amqp_url: Option<String>,
    },
    /// Replays a capture through a real webhookd and checks every delivery against a scenario.
    Replay {
        /// The scenario (TOML or JSON): subscriptions, receivers, expected outcomes.
        #[arg(long)]
        scenario: PathBuf,
        /// The capture to publish.
        #[arg(long)]
        events: PathBuf,
        /// Publishing pace: original, max or Nx.
        #[arg(long, default_value = "max")]
        speed: webhookd_harness::replay::Speed,
        /// Divides webhookd's retry delays (e.g. 100000 replays days of retries in seconds).
        #[arg(long, default_value_t = 1000.0)]
        time_scale: f64,
        /// A broker to use (default: start a private one, as the tests do).
        #[arg(long)]
        amqp_url: Option<String>,
        /// Give up waiting for the expected outcomes after this many seconds.
        #[arg(long, default_value_t = 300)]
        deadline_seconds: u64,
        /// Also write the report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Measures throughput, latency, memory and scale on loopback (docs/performance.md).
    Bench(Box<webhookd_bench::cli::BenchArgs>),
    /// API token commands, through the catalog log: they need the broker, not the store, and
    /// work while replicas serve.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Lists deliveries as a table (or JSON): of one subscription (--subscription), of one
    /// event (--event), or of every subscription (neither), narrowed by --state, --since and
    /// --until.
    #[command(after_help = "Examples:\n  \
        webhookd deliveries list --subscription wsb_4d2kq8x1m0z7p3v9c6b5n\n  \
        webhookd deliveries list --event ev_2Ct1UQqNpIJbD4rGMYmuE   (or the event's UUID)\n  \
        webhookd deliveries list --state failed --since 2026-11-20T09:00:00Z")]
    List {
        /// Only this subscription's deliveries, oldest first (OBP account_webhook_id or Rabo wsb_ id).
        #[arg(long, conflicts_with = "event")]
        subscription: Option<String>,
        /// Only this event's deliveries: its UUID, or the ev_ id a Rabo receiver got in
        /// x-smartpay-event-id.
        #[arg(long)]
        event: Option<String>,
        /// Only deliveries in this state: pending, delivered, failed, misconfigured.
        #[arg(long)]
        state: Option<String>,
        /// Only deliveries of events that occurred at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only deliveries of events that occurred before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Deliveries to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Print the API's JSON (with every attempt) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one delivery with every attempt (JSON).
    Show {
        /// The delivery id.
        id: String,
    },
    /// Sends a failed or misconfigured delivery again now, with a new schedule.
    Redeliver {
        /// The delivery id.
        id: String,
    },
    /// Sends every failed delivery of a subscription created since a time again.
    Recover {
        /// The subscription id.
        #[arg(long)]
        subscription: String,
        /// RFC 3339 time, e.g. 2026-11-20T00:00:00Z.
        #[arg(long)]
        since: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mints a token and prints it once; only its hash enters the catalog.
    Create {
        /// The caller's user id (OBP `created_by_user_id`).
        #[arg(long)]
        user_id: String,
        /// The merchant the token acts for on the Rabo API.
        #[arg(long)]
        merchant_id: Option<String>,
        /// A role grant, `Role@BANK_ID` or `Role@*` (all banks); repeat for several.
        #[arg(long = "role")]
        roles: Vec<webhookd_core::auth::RoleGrant>,
        /// A note for the operator (who the token is for).
        #[arg(long)]
        note: Option<String>,
    },
    /// Lists tokens (never their secrets).
    List,
    /// Revokes a token by id (`tok_...`); it stops working on each replica once applied there.
    Revoke {
        /// The token id.
        id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Prints the configuration this command resolves (defaults, --config, WEBHOOKD_*
    /// variables of this shell), secrets masked; with --running, the one the running service
    /// uses, asked of its admin API.
    Show {
        /// Ask the running service (GET /admin/v1/config) instead of resolving here.
        #[arg(long)]
        running: bool,
        /// Base URL of its API (default: http:// + http.listen from the configuration).
        #[arg(long, requires = "running")]
        api: Option<String>,
        /// A token with the role CanManageDeliveries.
        #[arg(long, env = "WEBHOOKD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Prints the commented default configuration.
    Defaults,
}

#[derive(Subcommand)]
enum BrokerCommand {
    /// Prints a RabbitMQ definitions file (for `rabbitmqctl import_definitions`) of every
    /// exchange, queue, retry tier, stream and binding webhookd declares with this
    /// configuration, and a policy spreading their leaders over a cluster's nodes. Needs no
    /// broker.
    Definitions,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Prints the public keys: the JWKS and the Standard Webhooks whpk_ key.
    Show,
    /// Makes new keys active in the data dir; old ones stay published for
    /// signing.retired_key_publish_hours. Takes effect at the next start of `webhookd serve`.
    /// With keys in the configuration, explains how to rotate them there.
    Rotate,
    /// Prints a new key set as configuration (signing.ed25519_secret and signing.es256_secret)
    /// for a Secret shared by every replica. Writes nothing; needs no store or broker.
    Generate {
        /// `toml`: a [signing] section; `env`: WEBHOOKD_SIGNING_* lines (an env file).
        #[arg(long, value_enum, default_value_t = KeysFormat::Toml)]
        format: KeysFormat,
    },
}

/// How `webhookd keys generate` prints the keys.
#[derive(Clone, Copy, clap::ValueEnum)]
enum KeysFormat {
    /// A [signing] section for a configuration file.
    Toml,
    /// WEBHOOKD_SIGNING_...=... lines.
    Env,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webhookd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Config { command: ConfigCommand::Defaults } = cli.command {
        print!("{}", webhookd::config::DEFAULT_TOML);
        return Ok(());
    }
    if let Command::Keys { command: KeysCommand::Generate { format } } = cli.command {
        // Before the configuration is read: it works anywhere, even next to a running serve.
        return keys_generate(format);
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(config),
        Command::Config { command: ConfigCommand::Show { running: true, api, token } } => {
            running_config(config, api, token)
        }
        Command::Config { .. } => {
            println!("# The configuration this command resolves: {}.", config.source.describe());
            println!("# The running service's own: webhookd config show --running (token with CanManageDeliveries).");
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Command::Broker { command: BrokerCommand::Definitions } => {
            println!("{}", serde_json::to_string_pretty(&webhookd::broker::definitions_for(&config))?);
            Ok(())
        }
        Command::Keys { command } => keys_command(config, command),
        Command::Token { command } => token_command(config, command),
        Command::Deliveries { api, token, command } => deliveries_command(config, api, token, command),
        Command::Publish { file } => publish_command(config, file),
        Command::Record { exchange, binding, out, count, amqp_url } => {
            record_command(amqp_url.unwrap_or(config.amqp.url), exchange, binding, out, count)
        }
        Command::Replay { scenario, events, speed, time_scale, amqp_url, deadline_seconds, report } => {
            replay_command(scenario, events, speed, time_scale, amqp_url, deadline_seconds, report)
        }
        Command::Bench(args) => {
            let context = webhookd_bench::cli::Context {
                exe: std::env::current_exe()?,
                config_file: cli.config,
                max_in_flight: config.delivery.max_in_flight,
                max_in_flight_per_destination: config.delivery.max_in_flight_per_destination,
                log_level: config.log.level,
                amqp: config.amqp,
            };
            webhookd_bench::cli::main(*args, context)
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    telemetry::init(&config.log);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Listen before opening anything: a SIGTERM during start-up then stops webhookd cleanly
        // once it has started, instead of killing it half-way.
        let signal = shutdown_signal()?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            signal.await;
            tracing::info!("shutdown requested");
            stop.cancel();
        });
        webhookd::app::run(config, shutdown).await
    })
}

/// Resolves at the first SIGTERM or SIGINT; signals are caught from the moment it is called.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

fn record_command(
    url: String,
    exchange: String,
    binding: String,
    out: PathBuf,
    count: Option<usize>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        eprintln!("recording {exchange} ({binding}) into {}; Ctrl-C to stop", out.display());
        let progress = |n: usize| match n {
            0 => eprintln!("bound to {exchange}; recording"),
            n if n % 100 == 0 => eprintln!("{n} messages recorded"),
            _ => {}
        };
        let n = webhookd_harness::record::record(&url, &exchange, &binding, &out, count, shutdown, progress)
            .await?;
        eprintln!("{n} messages recorded into {}", out.display());
        anyhow::Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
fn replay_command(
    scenario: PathBuf,
    events: PathBuf,
    speed: webhookd_harness::replay::Speed,
    time_scale: f64,
    amqp_url: Option<String>,
    deadline_seconds: u64,
    report_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    use webhookd_harness::replay::{replay, ReplayOptions};
    let scenario = webhookd_harness::scenario::Scenario::load(&scenario)?;
    let events = webhookd_harness::capture::read_capture(&events)?;
    let options = ReplayOptions {
        webhookd_exe: std::env::current_exe()?,
        amqp_url,
        speed,
        time_scale,
        deadline: std::time::Duration::from_secs(deadline_seconds),
        progress: true,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(replay(&scenario, &events, &options))?;
    print!("{}", report.table());
    if let Some(path) = report_path {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    }
    anyhow::ensure!(report.passed, "the replay did not match its scenario");
    Ok(())
}

fn publish_command(config: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::Read as _;
    let body = match &file {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).context("cannot read the event from standard input")?;
            body
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let event = runtime.block_on(webhookd::publish_cli::publish(&config.amqp, &body))?;
    eprintln!("published {} event {} to {}", event.kind(), event.event_id(), config.amqp.exchange);
    // The id a Rabo receiver sees (x-smartpay-event-id), to look deliveries up by.
    println!("{}", webhookd_core::ids::rabo_event_id(event.event_id()));
    Ok(())
}

fn running_config(config: Config, api: Option<String>, token: Option<String>) -> anyhow::Result<()> {
    let token = token.context("a token is required: --token or WEBHOOKD_TOKEN (role CanManageDeliveries)")?;
    let api = api.unwrap_or_else(|| format!("http://{}", config.http.listen));
    let client = webhookd::deliveries_cli::Client::new(&api, &token)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let running = runtime.block_on(client.running_config())?;
    let text = |k: &str| running[k].as_str().unwrap_or_default().to_string();
    println!("# The configuration the service at {api} runs with (started {}).", text("started_at"));
    println!("# Its values: {}.", text("source"));
    print!("{}", text("toml"));
    Ok(())
}

fn deliveries_command(
    config: Config,
    api: Option<String>,
    token: Option<String>,
    command: DeliveriesCommand,
) -> anyhow::Result<()> {
    use webhookd::deliveries_cli::{table, Client};
    let token = token.context("a token is required: --token or WEBHOOKD_TOKEN (role CanManageDeliveries)")?;
    let api = api.unwrap_or_else(|| format!("http://{}", config.http.listen));
    let client = Client::new(&api, &token)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
        match command {
            DeliveriesCommand::List { subscription, event, state, since, until, limit, offset, json } => {
                let mut query = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
                if let Some(s) = subscription {
                    query.push(("subscription_id", s));
                }
                if let Some(e) = event {
                    query.push(("event_id", e));
                }
                if let Some(s) = state {
                    query.push(("state", s));
                }
                if let Some(t) = since {
                    query.push(("since", t));
                }
                if let Some(t) = until {
                    query.push(("until", t));
                }
                let list = client.list(&query).await?;
                print!("{}", if json { pretty(&list) + "\n" } else { table(&list) });
            }
            DeliveriesCommand::Show { id } => println!("{}", pretty(&client.show(&id).await?)),
            DeliveriesCommand::Redeliver { id } => {
                let d = client.redeliver(&id).await?;
                println!(
                    "delivery {id} queued again (event {}), first attempt now",
                    d["event_id"].as_str().unwrap_or("?")
                );
            }
            DeliveriesCommand::Recover { subscription, since } => {
                let r = client.recover(&subscription, &since).await?;
                println!("{} failed deliveries of {subscription} queued again", r["recovered"]);
            }
        }
        anyhow::Ok(())
    })
}

fn token_command(config: Config, command: TokenCommand) -> anyhow::Result<()> {
    use webhookd::token_cli::{LogClient, NewToken};
    // Warnings only (RUST_LOG can ask for more): why the catalog log cannot be read shows.
    telemetry::init(&webhookd::config::LogSettings { level: "warn".into(), ..config.log.clone() });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    runtime.block_on(async move {
        let log = LogClient::open(&config).await?;
        let done = match command {
            TokenCommand::Create { user_id, merchant_id, roles, note } => {
                log.create(NewToken { user_id, merchant_id, roles, note }, now_ms).await.map(|minted| {
                    eprintln!(
                        "token {} created on every replica; it is shown once, store it now:",
                        minted.id
                    );
                    println!("{}", minted.secret);
                })
            }
            TokenCommand::List => log.tokens().map(|tokens| {
                for t in tokens {
                    let roles: Vec<String> = t.roles.iter().map(ToString::to_string).collect();
                    let state = if t.is_revoked() { "revoked" } else { "active" };
                    println!(
                        "{}\t{state}\tuser={}\tmerchant={}\troles={}\t{}",
                        t.id,
                        t.user_id,
                        t.merchant_id.as_deref().unwrap_or("-"),
                        roles.join(","),
                        t.note.as_deref().unwrap_or("")
                    );
                }
            }),
            TokenCommand::Revoke { id } => {
                log.revoke(&id).await.map(|()| println!("token {id} revoked on every replica"))
            }
        };
        log.close().await;
        done
    })
}

fn keys_command(config: Config, command: KeysCommand) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let keep = (config.signing.retired_key_publish_hours * 3600) as i64;
    match command {
        KeysCommand::Show => {
            let ring = keys::load_or_create(&config.data_dir, &config.signing, now)?;
            println!("{}", serde_json::to_string_pretty(&ring.jwks(now, keep))?);
            println!("standard-webhooks public key: {}", ring.standard_webhooks_public_key());
        }
        KeysCommand::Rotate => {
            if keys::is_configured(&keys::with_secrets_file(&config.signing)?) {
                anyhow::bail!(
                    "the signing keys come from the configuration (signing.ed25519_secret, \
                     signing.es256_secret, or signing.secrets_file), so they are rotated there, the \
                     same on every replica; nothing was changed. To rotate:\n\
                     1. `webhookd keys generate` prints a new key set (it writes nothing);\n\
                     2. in the configuration (the Secret) of every replica, move the current \
                     signing.ed25519_secret and signing.es256_secret to signing.retired_ed25519_secrets \
                     and signing.retired_es256_secrets, put the new keys in their place and roll it \
                     out: the new keys sign, the retired ones stay in the JWKS;\n\
                     3. {} hours later (signing.retired_key_publish_hours), remove the retired keys from \
                     the configuration and roll it out again.\n\
                     See docs/operations.md, \"Signing keys for several replicas\".",
                    config.signing.retired_key_publish_hours
                );
            }
            let path = keys::key_file(&config.data_dir);
            let mut ring = keys::load_or_create(&config.data_dir, &config.signing, now)?;
            ring.rotate(now);
            let pruned = ring.prune(now, keep);
            keys::save(&path, &ring)?;
            println!(
                "rotated; {pruned} expired key(s) removed; a running webhookd signs with the new keys within \
                 signing.reload_check_ms ({} ms), or at once on SIGHUP",
                config.signing.reload_check_ms
            );
        }
        KeysCommand::Generate { format } => keys_generate(format)?,
    }
    Ok(())
}

/// `webhookd keys generate`: a new key set as configuration on stdout, what it is on stderr.
fn keys_generate(format: KeysFormat) -> anyhow::Result<()> {
    let new = keys::NewKeys::generate();
    let format = match format {
        KeysFormat::Toml => keys::ConfigFormat::Toml,
        KeysFormat::Env => keys::ConfigFormat::Env,
    };
    print!("{}", new.to_config(format));
    eprintln!(
        "webhookd: new signing keys (kids {} and {}); keep them secret, give every replica the same",
        new.ed25519_kid(),
        new.es256_kid()
    );
    Ok(())
}
