//! Replaying a capture through a real webhookd: broker, webhookd (the real binary), scripted
//! receivers, subscriptions through the real APIs, then a report of every (event, subscription).
//!
//! The expected deliveries are predicted independently of webhookd's store: each captured event
//! is decoded and matched against the scenario's subscription specs here, and the outcome is then
//! read from webhookd's delivery log (admin API). Receivers check every signature.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::{json, Value};
use webhookd_core::event::Event;
use webhookd_core::ids::rabo_event_id;
use webhookd_core::matching::{match_keys, MatchKey};

use crate::broker::{free_broker_port, Broker};
use crate::capture::CapturedMessage;
use crate::cluster::Cluster;
use crate::process::{mint_token, WebhookdProcess};
use crate::receiver::{Received, Receiver};
use crate::report::{receipts, AttemptRow, Report, Row};
use crate::scenario::{Action, ActionKind, Events, Outcome, Scenario, SubscriptionSpec};
use crate::stations::Station;

/// How fast the capture is published.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// With the gaps between messages as recorded.
    Original,
    /// As fast as the broker confirms.
    Max,
    /// The recorded gaps divided by this factor.
    Times(f64),
}

impl FromStr for Speed {
    type Err = String;
    fn from_str(s: &str) -> Result<Speed, String> {
        match s {
            "original" => Ok(Speed::Original),
            "max" => Ok(Speed::Max),
            other => other
                .strip_suffix('x')
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|f| *f > 0.0)
                .map(Speed::Times)
                .ok_or_else(|| format!("speed must be original, max or Nx (e.g. 100x), got {other:?}")),
        }
    }
}

/// How to run a replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The webhookd binary to run.
    pub webhookd_exe: PathBuf,
    /// A broker to use; without one a private broker is started (and stopped).
    pub amqp_url: Option<String>,
    /// Publishing pace.
    pub speed: Speed,
    /// Divides webhookd's retry delays (a 20-retry schedule of days replays in seconds).
    pub time_scale: f64,
    /// Give up waiting for the expected outcomes after this long.
    pub deadline: Duration,
    /// Print progress to stderr.
    pub progress: bool,
}

/// The merchant of the harness's own sentinel subscription (see [`Run::settle`]).
const SENTINEL_MERCHANT: &str = "webhookd-replay-sentinel";

/// Runs the replay and returns its report.
///
/// Needs a multi-threaded tokio runtime (the receivers and webhookd's API are served and called
/// at once).
pub async fn replay(
    scenario: &Scenario,
    events: &[CapturedMessage],
    options: &ReplayOptions,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!("webhookd-replay-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work)?;
    let result = run(scenario, events, options, &work, started).await;
    if matches!(&result, Ok(report) if report.passed) {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        // What a failed run leaves: each replica's log (webhookd-N.log) and data dir.
        eprintln!("replay: the run failed; its webhookd logs and data dirs are kept in {}", work.display());
    }
    result
}

async fn run(
    scenario: &Scenario,
    events: &[CapturedMessage],
    options: &ReplayOptions,
    work: &Path,
    started: Instant,
) -> anyhow::Result<Report> {
    let restarts_broker = scenario.actions.iter().any(|a| a.kind == ActionKind::RestartBroker);
    if restarts_broker && options.amqp_url.is_some() {
        bail!(
            "the scenario restarts the broker, which needs the replay's own broker: leave out the AMQP URL"
        );
    }
    if scenario.broker_nodes > 1 && options.amqp_url.is_some() {
        bail!("the scenario runs a cluster of broker nodes, which needs the replay's own brokers: leave out the AMQP URL");
    }
    // A broker: the given one, or our own (one node, or a cluster of three).
    let mut own_broker = None;
    let mut cluster = None;
    let urls: Vec<String> = match &options.amqp_url {
        Some(url) => vec![url.clone()],
        None if scenario.broker_nodes > 1 => {
            let dir = work.join("cluster");
            let started = tokio::task::spawn_blocking(move || Cluster::start(&dir)).await??;
            let started = Arc::new(started);
            let urls = started.urls().to_vec();
            cluster = Some(started);
            urls
        }
        None => {
            let dir = work.join("broker");
            let broker = tokio::task::spawn_blocking(move || -> anyhow::Result<Broker> {
                let port = free_broker_port()?;
                Broker::start(port, &dir)
            })
            .await??;
            let url = broker.url().to_string();
            own_broker = Some(Arc::new(broker));
            vec![url]
        }
    };
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let exchange = format!("replay.{tag}.events");

    // One station per scenario receiver; each subscription gets its own path on its receiver.
    let mut stations = BTreeMap::new();
    for r in &scenario.receivers {
        let scripts = scenario
            .subscriptions
            .iter()
            .filter(|s| s.receiver == r.name)
            .map(|s| (format!("/{}", s.name), r.behaviour.script()))
            .collect();
        stations.insert(r.name.clone(), Arc::new(Station::start(&r.name, scripts).await?));
    }
    let sentinel = Receiver::start().await?;

    let exe = &options.webhookd_exe;
    let banks: Vec<String> = scenario.subscriptions.iter().filter_map(|s| s.bank_id.clone()).collect();
    // What every replica shares: names, policies, and one signing key pair (receivers verify
    // against one JWKS whichever replica sent).
    let mut shared: Vec<(String, String)> = [
        ("WEBHOOKD_AMQP_EXCHANGE", exchange.clone()),
        ("WEBHOOKD_AMQP_QUEUE", format!("replay.{tag}.queue")),
        ("WEBHOOKD_AMQP_DEAD_LETTER_EXCHANGE", format!("replay.{tag}.dead")),
        ("WEBHOOKD_AMQP_DEAD_LETTER_QUEUE", format!("replay.{tag}.dead")),
        ("WEBHOOKD_CATALOG_STREAM", format!("replay.{tag}.catalog")),
        // Its own retry tiers, due queue and delivery log: another run's must never reach it.
        ("WEBHOOKD_DELIVERY_RETRY_QUEUE_PREFIX", format!("replay.{tag}.retry")),
        ("WEBHOOKD_DELIVERY_DUE_QUEUE", format!("replay.{tag}.due")),
        ("WEBHOOKD_DELIVERY_LOG_STREAM", format!("replay.{tag}.log")),
        ("WEBHOOKD_DESTINATIONS_ALLOW_HTTP", "true".into()),
        ("WEBHOOKD_DESTINATIONS_ALLOW", "127.0.0.1/32".into()),
        ("WEBHOOKD_DELIVERY_TIME_SCALE", options.time_scale.to_string()),
        ("WEBHOOKD_DELIVERY_TIMEOUT_MS", scenario.webhookd.timeout_ms.to_string()),
        ("WEBHOOKD_RETRY_RETRIES", scenario.webhookd.retries.to_string()),
        ("WEBHOOKD_RETRY_INITIAL_DELAY_MS", scenario.webhookd.initial_delay_ms.to_string()),
        ("WEBHOOKD_RABO_MAX_SUBSCRIPTIONS_PER_MERCHANT", "1000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if !banks.is_empty() {
        shared.push(("WEBHOOKD_OBP_BANKS".into(), banks.join(",")));
    }
    if scenario.broker_nodes > 1 {
        // Events survive the loss of a node.
        shared.push(("WEBHOOKD_AMQP_QUEUE_TYPE".into(), "quorum".into()));
    }
    shared.extend(generate_keys(exe).await?);
    let mut envs = Vec::new();
    for i in 0..scenario.replicas {
        let mut env = shared.clone();
        env.push(("WEBHOOKD_DATA_DIR".into(), work.join(format!("data-{}", i + 1)).display().to_string()));
        env.push(("WEBHOOKD_HTTP_LISTEN".into(), format!("127.0.0.1:{}", free_port()?)));
        env.push(("WEBHOOKD_AMQP_URL".into(), urls[i % urls.len()].clone()));
        envs.push(env);
    }
    // Tokens, through the catalog log the replicas will read.
    let admin = mint_token(
        exe,
        &envs[0],
        &[
            "--user-id",
            "replay",
            "--role",
            "CanCreateWebhook@*",
            "--role",
            "CanUpdateWebhook@*",
            "--role",
            "CanGetWebhooks@*",
            "--role",
            "CanManageDeliveries",
        ],
    )
    .await?;
    let mut merchant_tokens = BTreeMap::new();
    let merchants =
        scenario.subscriptions.iter().filter(|s| s.api == "rabo").filter_map(|s| s.merchant_id.clone());
    for merchant in merchants.chain([SENTINEL_MERCHANT.to_string()]) {
        if let std::collections::btree_map::Entry::Vacant(slot) = merchant_tokens.entry(merchant.clone()) {
            slot.insert(
                mint_token(exe, &envs[0], &["--user-id", "replay", "--merchant-id", &merchant]).await?,
            );
        }
    }

    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut replicas = Vec::new();
    let mut logs = Vec::new();
    for (i, env) in envs.into_iter().enumerate() {
        let value =
            |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default();
        let (listen, data_dir) = (value("WEBHOOKD_HTTP_LISTEN"), PathBuf::from(value("WEBHOOKD_DATA_DIR")));
        let log = work.join(format!("webhookd-{}.log", i + 1));
        let process = WebhookdProcess::start(exe, env, &log)?;
        replicas.push(Replica {
            process,
            api: Api { http: http.clone(), base: format!("http://{listen}") },
            data_dir,
        });
        logs.push(log);
    }
    let mut run = Run {
        scenario,
        options,
        replicas,
        broker: own_broker,
        cluster,
        urls,
        down_nodes: BTreeSet::new(),
        stations,
        sentinel,
        sentinels: 0,
        exchange,
        admin,
        merchant_tokens,
        ids: BTreeMap::new(),
        actions_done: Vec::new(),
        started,
        deadline: Instant::now() + options.deadline,
    };
    let outcome = run.drive(events).await;
    for replica in &mut run.replicas {
        replica.process.stop().await;
    }
    let (broker, cluster) = (run.broker.take(), run.cluster.take());
    drop(run);
    drop(broker);
    if let Some(cluster) = cluster {
        let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    }
    outcome.map_err(|e| {
        let mut text = format!("{e:#}");
        for (i, log) in logs.iter().enumerate() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            text.push_str(&format!("\nlast lines of replica {}'s log:\n{tail}", i + 1));
        }
        anyhow!(text)
    })
}

/// A signing key pair for every replica, as `webhookd keys generate --format env` prints it.
async fn generate_keys(exe: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let out =
        tokio::process::Command::new(exe).args(["keys", "generate", "--format", "env"]).output().await?;
    if !out.status.success() {
        bail!("webhookd keys generate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let keys: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("WEBHOOKD_SIGNING_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if keys.len() < 2 {
        bail!("webhookd keys generate printed no key pair: {text}");
    }
    Ok(keys)
}

/// One webhookd replica of the replay.
struct Replica {
    process: WebhookdProcess,
    api: Api,
    data_dir: PathBuf,
}

/// Everything a running replay holds.
struct Run<'a> {
    scenario: &'a Scenario,
    options: &'a ReplayOptions,
    replicas: Vec<Replica>,
    /// The replay's own broker, if it started one.
    broker: Option<Arc<Broker>>,
    /// The replay's own cluster, if the scenario asked for broker nodes.
    cluster: Option<Arc<Cluster>>,
    /// The AMQP URL of each broker node.
    urls: Vec<String>,
    /// Broker nodes (from 0) killed or frozen now: the publisher keeps off them.
    down_nodes: BTreeSet<usize>,
    stations: BTreeMap<String, Arc<Station>>,
    /// The harness's own receiver of sentinel events.
    sentinel: Receiver,
    /// Sentinel events published so far.
    sentinels: usize,
    exchange: String,
    admin: String,
    merchant_tokens: BTreeMap<String, String>,
    /// Subscription name -> id.
    ids: BTreeMap<String, String>,
    actions_done: Vec<String>,
    started: Instant,
    deadline: Instant,
}

/// What must happen to one (event, subscription).
struct Wanted {
    event_id: String,
    subscription: String,
    outcome: Outcome,
    attempts: Option<u32>,
    min_attempts: Option<u32>,
}

impl Run<'_> {
    async fn drive(&mut self, events: &[CapturedMessage]) -> anyhow::Result<Report> {
        for replica in &self.replicas {
            replica.api.wait_ready(self.deadline).await?;
        }
        self.create_subscriptions().await?;
        let jwks = self.replicas[0].api.call("GET", "/.well-known/jwks.json", &self.admin, None).await?;

        let origin = tokio::time::Instant::now();
        let followers: Vec<_> = self
            .scenario
            .receivers
            .iter()
            .filter(|r| !r.down.is_empty())
            .map(|r| self.stations[&r.name].follow(r.down.clone(), origin))
            .collect();
        let published = self.publish(events).await;
        let result = match published {
            Ok(()) => self.judge(events, &jwks).await,
            Err(e) => Err(e),
        };
        for f in followers {
            f.abort();
        }
        result
    }

    /// Creates the scenario's subscriptions (and the sentinel's) through the management APIs.
    async fn create_subscriptions(&mut self) -> anyhow::Result<()> {
        for s in &self.scenario.subscriptions {
            let url = self.stations[&s.receiver].url(&format!("/{}", s.name));
            let id = match s.api.as_str() {
                "obp" => {
                    let bank = s.bank_id.clone().unwrap_or_default();
                    let body = json!({
                        "account_id": s.account_id, "trigger_name": s.trigger, "url": url,
                        "http_method": s.http_method.clone().unwrap_or_else(|| "POST".into()),
                        "http_protocol": "HTTP/1.1", "is_active": "true"
                    });
                    let path = format!("/obp/v4.0.0/banks/{bank}/account-web-hooks");
                    let created = self.replicas[0].api.call("POST", &path, &self.admin, Some(body)).await?;
                    created["account_webhook_id"].as_str().unwrap_or_default().to_string()
                }
                _ => {
                    let types = s.event_types.clone().unwrap_or_else(|| vec!["order.finalized/v1".into()]);
                    let body =
                        json!({"status": "enabled", "url": url, "description": s.name, "eventTypes": types});
                    let token = self.merchant_token(s)?;
                    let created = self.replicas[0]
                        .api
                        .call("POST", "/v3/webhooks/subscriptions", token, Some(body))
                        .await?;
                    created["id"].as_str().unwrap_or_default().to_string()
                }
            };
            self.ids.insert(s.name.clone(), id);
        }
        let body = json!({"status": "enabled", "url": self.sentinel.url("/sentinel"),
                          "description": "replay sentinel", "eventTypes": ["order.finalized/v1"]});
        let token = &self.merchant_tokens[SENTINEL_MERCHANT];
        self.replicas[0].api.call("POST", "/v3/webhooks/subscriptions", token, Some(body)).await?;
        Ok(())
    }

    fn merchant_token(&self, spec: &SubscriptionSpec) -> anyhow::Result<&String> {
        let merchant = spec.merchant_id.as_deref().unwrap_or_default();
        self.merchant_tokens.get(merchant).ok_or_else(|| anyhow!("no token for merchant {merchant}"))
    }

    /// Publishes the capture at the chosen pace, running each action at its place.
    async fn publish(&mut self, events: &[CapturedMessage]) -> anyhow::Result<()> {
        let mut publisher = Publisher::connect(&self.urls, &self.exchange, &self.down_nodes).await?;
        let origin = events.first().and_then(|m| m.received_at().ok());
        let start = Instant::now();
        let mut actions = self.scenario.actions.iter().peekable();
        for (n, m) in events.iter().enumerate() {
            while let Some(action) = actions.next_if(|a| a.after_events <= n) {
                publisher = self.act(action, publisher).await?;
            }
            if let (Some(origin), Ok(at)) = (origin, m.received_at()) {
                let offset = (at - origin).as_seconds_f64().max(0.0);
                let wait = match self.options.speed {
                    Speed::Max => None,
                    Speed::Original => Some(offset),
                    Speed::Times(f) => Some(offset / f),
                };
                if let Some(wait) = wait {
                    tokio::time::sleep_until((start + Duration::from_secs_f64(wait)).into()).await;
                }
            }
            publisher.send(&m.routing_key, &m.body_bytes()?, m.to_amqp_properties()).await?;
            if self.options.progress && (n + 1) % 1000 == 0 {
                eprintln!("replay: {} of {} published", n + 1, events.len());
            }
        }
        for action in actions {
            publisher = self.act(action, publisher).await?;
        }
        // Every message is in webhookd's store once the last sentinel comes through.
        self.settle(&mut publisher).await?;
        publisher.close().await;
        Ok(())
    }

    /// Runs one action; gives back the publisher (a new one after a broker restart).
    async fn act(&mut self, action: &Action, mut publisher: Publisher) -> anyhow::Result<Publisher> {
        publisher.confirm_all().await?;
        if action.kind.on_subscription() {
            // The change must come after the events before it are in the store, and before
            // the ones after it: otherwise which events it affects would be a race.
            self.settle(&mut publisher).await?;
        }
        tokio::time::sleep(Duration::from_millis(action.wait_ms)).await;
        let at = self.started.elapsed().as_secs_f64();
        let r = action.replica_index();
        match action.kind {
            ActionKind::Kill => self.replicas[r].process.kill_and_restart().await?,
            ActionKind::KillReplica => {
                let replica = &mut self.replicas[r];
                replica.process.kill().await?;
                if action.wipe {
                    std::fs::remove_dir_all(&replica.data_dir)?;
                }
                tokio::time::sleep(Duration::from_millis(action.down_ms)).await;
                replica.process.start_again()?;
            }
            ActionKind::Restart | ActionKind::RestartReplica => {
                // A graceful restart is of a started webhookd: a SIGTERM in the first
                // milliseconds after exec, before its handler is installed (before anything is
                // opened), ends it by the signal, which the clean-exit check would misread. The
                // restart just before this one may have been moments ago.
                self.replicas[r].api.wait_ready(self.deadline).await?;
                self.replicas[r].process.restart().await?;
                // As a rolling update does: the next replica goes once this one is back.
                if self.replicas.len() > 1 {
                    self.replicas[r].api.wait_ready(self.deadline).await?;
                }
            }
            ActionKind::RestartBroker => {
                let broker =
                    self.broker.clone().ok_or_else(|| anyhow!("restart_broker needs our own broker"))?;
                publisher.close().await;
                tokio::task::spawn_blocking(move || broker.restart()).await??;
                publisher = Publisher::connect(&self.urls, &self.exchange, &self.down_nodes).await?;
            }
            ActionKind::KillBrokerNode | ActionKind::FreezeBrokerNode | ActionKind::ThawBrokerNode => {
                let cluster = self
                    .cluster
                    .clone()
                    .ok_or_else(|| anyhow!("{} needs broker_nodes = 3", action.kind.name()))?;
                let node = action.node.unwrap_or(1);
                let index = node - 1;
                match action.kind {
                    ActionKind::KillBrokerNode => {
                        self.down_nodes.insert(index);
                        publisher = publisher.keep_off(&self.down_nodes).await?;
                        let down = Duration::from_millis(action.down_ms);
                        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                            cluster.kill(node)?;
                            std::thread::sleep(down);
                            cluster.restart(node)?;
                            cluster.heal().map(drop)
                        })
                        .await??;
                        self.down_nodes.remove(&index);
                    }
                    ActionKind::FreezeBrokerNode => {
                        self.down_nodes.insert(index);
                        publisher = publisher.keep_off(&self.down_nodes).await?;
                        tokio::task::spawn_blocking(move || cluster.freeze(node)).await??;
                    }
                    _ => {
                        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                            cluster.thaw(node)?;
                            cluster.heal().map(drop)
                        })
                        .await??;
                        self.down_nodes.remove(&index);
                    }
                }
            }
            ActionKind::Disable | ActionKind::Enable | ActionKind::Delete => {
                self.change_subscription(action).await?;
            }
        }
        let mut what = match &action.subscription {
            Some(s) => format!("{} {s}", action.kind.name()),
            None => action.kind.name().to_string(),
        };
        if action.replica.is_some() || (self.replicas.len() > 1 && action.kind.on_replica()) {
            what.push_str(&format!(" (replica {})", r + 1));
        }
        if let Some(node) = action.node {
            what.push_str(&format!(" (node {node})"));
        }
        if action.wipe {
            what.push_str(" (data dir deleted)");
        }
        let took = self.started.elapsed().as_secs_f64() - at;
        let line = format!("{what} after {} events, at {at:.1} s (took {took:.1} s)", action.after_events);
        if self.options.progress {
            eprintln!("replay: {line}");
        }
        self.actions_done.push(line);
        Ok(publisher)
    }

    /// Disables, enables or deletes a subscription through its API.
    async fn change_subscription(&mut self, action: &Action) -> anyhow::Result<()> {
        let name = action.subscription.clone().unwrap_or_default();
        let spec = self
            .scenario
            .subscriptions
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow!("unknown subscription {name}"))?;
        let id = self.ids[&name].clone();
        let active = action.kind == ActionKind::Enable;
        let api = &self.replicas[action.replica_index()].api;
        api.wait_ready(self.deadline).await?;
        if spec.api == "obp" {
            let bank = spec.bank_id.clone().unwrap_or_default();
            let body = json!({"account_webhook_id": id, "is_active": active.to_string()});
            let path = format!("/obp/v4.0.0/banks/{bank}/account-web-hooks");
            api.call("PUT", &path, &self.admin, Some(body)).await?;
        } else {
            let token = self.merchant_token(spec)?.clone();
            let path = format!("/v3/webhooks/subscriptions/{id}");
            if action.kind == ActionKind::Delete {
                api.call("DELETE", &path, &token, None).await?;
            } else {
                let status = if active { "enabled" } else { "disabled" };
                api.call("PATCH", &path, &token, Some(json!({ "status": status }))).await?;
            }
        }
        Ok(())
    }

    /// Waits until webhookd has stored every message published so far.
    ///
    /// Publishes a sentinel event for the harness's own subscription and waits for its
    /// delivery, then until webhookd holds no event unacknowledged. webhookd takes messages
    /// from its queue in order and matches each as it takes it, so once the sentinel is
    /// delivered everything published before it was matched; once nothing is unacknowledged,
    /// no crash can hand one of them out again to be matched anew (after a change the action
    /// makes).
    async fn settle(&mut self, publisher: &mut Publisher) -> anyhow::Result<()> {
        self.sentinels += 1;
        let id = uuid::Uuid::new_v4();
        let body = json!({
            "type": "order.finalized", "event_id": id, "occurred_at": "2026-01-01T00:00:00Z",
            "merchant_id": SENTINEL_MERCHANT, "order_id": format!("sentinel-{}", self.sentinels),
            "status": "COMPLETED", "amount": {"total": 0, "paid": 0}
        });
        let properties = lapin::BasicProperties::default().with_content_type("application/json".into());
        publisher.send("order.finalized", body.to_string().as_bytes(), properties).await?;
        publisher.confirm_all().await?;
        let wanted = rabo_event_id(id);
        loop {
            let arrived = self.sentinel.received_on("/sentinel");
            if arrived.iter().any(|r| r.header("x-smartpay-event-id") == Some(wanted.as_str()))
                && self.none_in_progress().await
            {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= self.deadline {
                bail!("webhookd did not take in every published message before the deadline");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the expected outcomes (or the deadline) and writes the report.
    async fn judge(&mut self, events: &[CapturedMessage], jwks: &Value) -> anyhow::Result<Report> {
        let decoded: Vec<(usize, Event)> = events
            .iter()
            .enumerate()
            .filter_map(|(n, m)| Some((n, Event::decode(&m.body_bytes().ok()?, 65_536).ok()?)))
            .collect();
        let wanted = self.wanted(&decoded)?;

        let mut last_progress = Instant::now();
        let mut last_read = Instant::now() - Duration::from_secs(60);
        let everywhere = loop {
            self.check_running()?;
            // Reading every delivery log is costly for long replays: do it when nothing is
            // pending any more (webhookd's gauge), and every few seconds in any case.
            let pending = self.replicas[0].api.pending().await.ok();
            if self.options.progress && last_progress.elapsed() >= Duration::from_secs(1) {
                if let Some(pending) = pending {
                    eprintln!("replay: {} published, {pending} deliveries pending", events.len());
                }
                last_progress = Instant::now();
            }
            let must_read = pending == Some(0) || last_read.elapsed() >= Duration::from_secs(5);
            if !must_read && Instant::now() < self.deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            last_read = Instant::now();
            // Every replica's log: each folds the whole delivery log stream.
            let mut everywhere = Vec::new();
            let mut unreachable = None;
            for replica in 0..self.replicas.len() {
                match self.delivery_logs(replica).await {
                    Ok(logs) => everywhere.push(logs),
                    Err(e) => {
                        unreachable = Some(e);
                        break;
                    }
                }
            }
            match unreachable {
                // A replica restarting after an action: ask again.
                Some(_) if Instant::now() < self.deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Some(e) => return Err(e),
                None => {}
            }
            let logs = &everywhere[0];
            let settled = wanted.iter().filter(|w| everywhere.iter().all(|l| settled(w, l))).count();
            if self.options.progress {
                let pending = logs.values().flatten().filter(|d| d["state"] == "pending").count();
                let done = logs.values().flatten().count() - pending;
                eprintln!(
                    "replay: {} published, {done} deliveries done, {pending} pending, {settled}/{} expectations reached",
                    events.len(),
                    wanted.len()
                );
            }
            if settled == wanted.len()
                || everywhere.iter().all(|l| final_everywhere(&wanted, l))
                || Instant::now() >= self.deadline
            {
                break everywhere;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };

        let logs = &everywhere[0];
        // Where another replica's log does not show what the first one's does.
        let mut logs_disagree = Vec::new();
        for w in &wanted {
            for (n, other) in everywhere.iter().enumerate().skip(1) {
                let state = |l: &BTreeMap<String, Vec<Value>>| {
                    find(l, &w.subscription, &w.event_id).map(|d| d["state"].to_string()).unwrap_or_default()
                };
                if state(logs) != state(other) {
                    logs_disagree.push(format!(
                        "{} {}: replica 1 shows {}, replica {} shows {}",
                        w.subscription,
                        w.event_id,
                        state(logs),
                        n + 1,
                        state(other)
                    ));
                }
            }
        }
        let catalog_digests = self.catalog_digests().await;

        // What the receivers saw.
        let mut requests = Vec::new();
        for station in self.stations.values() {
            for r in station.received().await {
                let sub = r.path.trim_start_matches('/').to_string();
                requests.push((sub, r));
            }
        }
        let sentinel = self.sentinel.received();
        let event_ids: Vec<uuid::Uuid> = decoded.iter().map(|(_, e)| e.event_id()).collect();
        let receipts = receipts(&requests, &event_ids);
        let signature_failures: Vec<String> = requests
            .iter()
            .map(|(_, r)| r)
            .chain(sentinel.iter())
            .filter_map(|r| check_signature(r, jwks).err())
            .collect();

        let mut rows = Vec::new();
        let mut attempts_not_logged = 0;
        for w in &wanted {
            let delivery = find(logs, &w.subscription, &w.event_id);
            let actual =
                delivery.map_or("none".to_string(), |d| d["state"].as_str().unwrap_or("?").to_string());
            let attempts: Vec<AttemptRow> = delivery
                .and_then(|d| d["attempt_log"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|a| AttemptRow {
                    at: a["at"].as_str().unwrap_or_default().to_string(),
                    status: a["status"].as_u64(),
                    duration_ms: a["duration_ms"].as_u64().unwrap_or(0),
                })
                .collect();
            let received = receipts
                .per_delivery
                .get(&(w.subscription.clone(), w.event_id.clone()))
                .copied()
                .unwrap_or(0);
            attempts_not_logged += received.saturating_sub(attempts.len());
            rows.push(Row {
                event_id: w.event_id.clone(),
                subscription: w.subscription.clone(),
                expected: w.outcome.state().to_string(),
                expected_attempts: w.attempts,
                expected_min_attempts: w.min_attempts,
                actual,
                attempts,
                received,
                matched: everywhere.iter().all(|l| settled(w, l)),
            });
        }
        let digests_agree = catalog_digests.windows(2).all(|w| w[0] == w[1]) && !catalog_digests.is_empty();
        let passed = rows.iter().all(|r| r.matched)
            && signature_failures.is_empty()
            && receipts.id_mismatches.is_empty()
            && logs_disagree.is_empty()
            && digests_agree;
        Ok(Report {
            scenario: self.scenario.name.clone(),
            published: events.len(),
            rows,
            signature_failures,
            requests_received: requests.len() + sentinel.len(),
            duplicates: receipts.duplicates,
            duplicate_id_mismatches: receipts.id_mismatches,
            attempts_not_logged,
            actions: self.actions_done.clone(),
            replicas: self.replicas.len(),
            logs_disagree,
            catalog_digests,
            passed,
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }

    /// What must happen, predicted here from the capture, the subscription specs and the
    /// actions (not read from webhookd, so a matching bug in webhookd shows as a mismatch).
    fn wanted(&self, decoded: &[(usize, Event)]) -> anyhow::Result<Vec<Wanted>> {
        let mut wanted = Vec::new();
        for e in &self.scenario.expect {
            let spec = self
                .scenario
                .subscriptions
                .iter()
                .find(|s| s.name == e.subscription)
                .ok_or_else(|| anyhow!("unknown subscription {}", e.subscription))?;
            let reaching = decoded.iter().filter(|(_, ev)| reaches(ev, spec));
            let events: Vec<String> = match &e.events {
                Events::All => reaching.map(|(_, ev)| ev.event_id().to_string()).collect(),
                Events::Active | Events::Inactive => {
                    let want_active = e.events == Events::Active;
                    reaching
                        .filter(|(n, _)| active_at(&self.scenario.actions, &spec.name, *n) == want_active)
                        .map(|(_, ev)| ev.event_id().to_string())
                        .collect()
                }
                Events::Ids(list) => list.iter().map(ToString::to_string).collect(),
            };
            for event_id in events {
                wanted.push(Wanted {
                    event_id,
                    subscription: e.subscription.clone(),
                    outcome: e.outcome,
                    attempts: e.attempts,
                    min_attempts: e.min_attempts,
                });
            }
        }
        Ok(wanted)
    }

    /// The delivery log of every scenario subscription, by name, as replica `replica` shows it.
    async fn delivery_logs(&self, replica: usize) -> anyhow::Result<BTreeMap<String, Vec<Value>>> {
        let mut logs = BTreeMap::new();
        for (name, id) in &self.ids {
            logs.insert(name.clone(), self.replicas[replica].api.deliveries_of(id, &self.admin).await?);
        }
        Ok(logs)
    }

    /// Each replica's catalog digest (`GET /admin/v1/catalog`), once every replica has applied
    /// as far as the furthest; an unreachable replica's reads as the reason.
    async fn catalog_digests(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut answers = Vec::new();
            for replica in &self.replicas {
                answers.push(replica.api.call("GET", "/admin/v1/catalog", &self.admin, None).await);
            }
            let offsets: Vec<Option<u64>> =
                answers.iter().map(|a| a.as_ref().ok().and_then(|v| v["applied_offset"].as_u64())).collect();
            let level = offsets.iter().all(|o| o.is_some() && *o == offsets[0]);
            if level || Instant::now() >= deadline {
                return answers
                    .into_iter()
                    .map(|a| match a {
                        Ok(v) => v["digest"].as_str().unwrap_or("no digest").to_string(),
                        Err(e) => format!("unreadable: {e:#}"),
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether no replica holds an event unacknowledged (each answers, with 0).
    async fn none_in_progress(&self) -> bool {
        for replica in &self.replicas {
            if replica.api.events_in_progress().await.ok() != Some(0) {
                return false;
            }
        }
        true
    }

    /// Fails when a replica ended on its own.
    fn check_running(&mut self) -> anyhow::Result<()> {
        for (i, replica) in self.replicas.iter_mut().enumerate() {
            replica.process.check_running().map_err(|e| anyhow!("replica {}: {e:#}", i + 1))?;
        }
        Ok(())
    }
}

/// Whether the subscription `name` is enabled when message `index` of the capture is published.
fn active_at(actions: &[Action], name: &str, index: usize) -> bool {
    actions.iter().filter(|a| a.after_events <= index && a.subscription.as_deref() == Some(name)).fold(
        true,
        |active, a| match a.kind {
            ActionKind::Enable => true,
            ActionKind::Disable | ActionKind::Delete => false,
            _ => active,
        },
    )
}

/// Whether `event` reaches the subscription described by `spec`.
fn reaches(event: &Event, spec: &SubscriptionSpec) -> bool {
    match_keys(event).iter().any(|key| match key {
        MatchKey::Obp { bank_id, account_id, trigger } => {
            spec.api == "obp"
                && spec.bank_id.as_deref() == Some(bank_id)
                && spec.account_id.as_deref() == Some(account_id)
                && spec.trigger.as_deref() == Some(trigger.as_str())
        }
        MatchKey::Rabo { merchant_id, event_type } => {
            spec.api == "rabo"
                && spec.merchant_id.as_deref() == Some(merchant_id)
                && spec
                    .event_types
                    .clone()
                    .unwrap_or_else(|| vec!["order.finalized/v1".into()])
                    .iter()
                    .any(|t| t == event_type.as_str())
        }
    })
}

/// Nothing can change any more: no delivery is pending, and every expected delivery exists.
/// (A mismatch is then final, so there is no point waiting for the deadline.)
fn final_everywhere(wanted: &[Wanted], logs: &BTreeMap<String, Vec<Value>>) -> bool {
    let none_pending = logs.values().flatten().all(|d| d["state"] != "pending");
    let all_exist = wanted
        .iter()
        .all(|w| w.outcome == Outcome::NotDelivered || find(logs, &w.subscription, &w.event_id).is_some());
    none_pending && all_exist
}

fn find<'a>(logs: &'a BTreeMap<String, Vec<Value>>, sub: &str, event_id: &str) -> Option<&'a Value> {
    logs.get(sub)?.iter().find(|d| d["event_id"].as_str() == Some(event_id))
}

fn settled(w: &Wanted, logs: &BTreeMap<String, Vec<Value>>) -> bool {
    match (find(logs, &w.subscription, &w.event_id), w.outcome) {
        (None, Outcome::NotDelivered) => true,
        (None, _) | (Some(_), Outcome::NotDelivered) => false,
        (Some(d), outcome) => {
            let attempts = d["attempts"].as_u64().unwrap_or(0);
            d["state"].as_str() == Some(outcome.state())
                && w.attempts.is_none_or(|n| attempts == u64::from(n))
                && w.min_attempts.is_none_or(|n| attempts >= u64::from(n))
        }
    }
}

/// Verifies a received request's signature as its receiver would.
fn check_signature(r: &Received, jwks: &Value) -> Result<(), String> {
    use webhookd_core::signing::verify;
    if let Some(jws) = r.header("x-smartpay-signature") {
        return verify::detached_jws(jwks, jws, &r.body)
            .map_err(|e| format!("{} {}: JWS: {e}", r.method, r.path));
    }
    let (Some(id), Some(ts), Some(sig)) =
        (r.header("webhook-id"), r.header("webhook-timestamp"), r.header("webhook-signature"))
    else {
        return Err(format!("{} {}: no signature headers", r.method, r.path));
    };
    let keys = verify::ed25519_public_keys(jwks);
    if keys.iter().any(|k| verify::standard_webhooks(k, id, ts, &r.body, sig).is_ok()) {
        Ok(())
    } else {
        Err(format!("{} {}: Ed25519 signature does not verify", r.method, r.path))
    }
}

/// Publishes to the replay's exchange with publisher confirms, many in flight, through one
/// broker node; a message the broker refuses (a nack, a channel lost to a node fault) is
/// published again through a fresh connection, so the capture reaches the queue at least once
/// (a repeat carries the same event id, as a publisher's retry would).
struct Publisher {
    urls: Vec<String>,
    /// The node (from 0) it publishes through.
    node: usize,
    connection: lapin::Connection,
    channel: lapin::Channel,
    exchange: String,
    /// Messages sent, with the broker's answer to come (none: the send itself failed).
    unconfirmed: Vec<(Option<lapin::PublisherConfirm>, Outgoing)>,
}

/// A message on its way, kept until the broker confirms it.
#[derive(Clone)]
struct Outgoing {
    routing_key: String,
    body: Vec<u8>,
    properties: lapin::BasicProperties,
}

impl Publisher {
    /// Unconfirmed messages allowed in flight.
    const WINDOW: usize = 500;
    /// Publishing the refused messages again: how often, and the pause before each time.
    const TRIES: u32 = 60;
    const PAUSE: Duration = Duration::from_secs(1);

    /// A publisher through the first node not in `avoid` (or the first node).
    async fn connect(urls: &[String], exchange: &str, avoid: &BTreeSet<usize>) -> anyhow::Result<Publisher> {
        let node = (0..urls.len()).find(|n| !avoid.contains(n)).unwrap_or(0);
        let (connection, channel) = Publisher::open(&urls[node]).await?;
        Ok(Publisher {
            urls: urls.to_vec(),
            node,
            connection,
            channel,
            exchange: exchange.to_string(),
            unconfirmed: Vec::new(),
        })
    }

    async fn open(url: &str) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(lapin::options::ConfirmSelectOptions::default()).await?;
        Ok((connection, channel))
    }

    /// The same publisher through another node when its node is in `avoid` (what it has in
    /// flight confirmed first).
    async fn keep_off(mut self, avoid: &BTreeSet<usize>) -> anyhow::Result<Publisher> {
        if !avoid.contains(&self.node) {
            return Ok(self);
        }
        self.confirm_all().await?;
        let (urls, exchange) = (self.urls.clone(), self.exchange.clone());
        self.close().await;
        Publisher::connect(&urls, &exchange, avoid).await
    }

    /// Publishes one message, persistent whatever the capture says, so a broker restart in
    /// the scenario loses nothing.
    async fn send(
        &mut self,
        routing_key: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> anyhow::Result<()> {
        let message = Outgoing {
            routing_key: routing_key.into(),
            body: body.to_vec(),
            properties: properties.with_delivery_mode(2),
        };
        // A failed send (the channel is gone) is published again by confirm_all, on a new one.
        let confirm = self.publish(&message).await.ok();
        self.unconfirmed.push((confirm, message));
        if self.unconfirmed.len() >= Self::WINDOW {
            self.confirm_all().await?;
        }
        Ok(())
    }

    async fn publish(&self, m: &Outgoing) -> lapin::Result<lapin::PublisherConfirm> {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                m.routing_key.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &m.body,
                m.properties.clone(),
            )
            .await
    }

    /// Waits until the broker confirmed every message sent so far, publishing the refused
    /// ones again (through a new connection, next node first) until it takes them.
    async fn confirm_all(&mut self) -> anyhow::Result<()> {
        for _ in 0..Self::TRIES {
            let mut refused = Vec::new();
            for (confirm, message) in self.unconfirmed.drain(..) {
                let answer = match confirm {
                    Some(confirm) => confirm.await.ok(),
                    None => None,
                };
                if !matches!(answer, Some(lapin::Confirmation::Ack(_))) {
                    refused.push(message);
                }
            }
            if refused.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Self::PAUSE).await;
            let _ = self.connection.close(200, "replay publishes again".into()).await;
            // Round the nodes: the one it used may be the one that is down.
            for step in 1..=self.urls.len() {
                let node = (self.node + step) % self.urls.len();
                if let Ok((connection, channel)) = Publisher::open(&self.urls[node]).await {
                    (self.node, self.connection, self.channel) = (node, connection, channel);
                    break;
                }
            }
            for message in refused {
                let confirm = self.publish(&message).await.ok();
                self.unconfirmed.push((confirm, message));
            }
        }
        bail!("the broker did not confirm published messages after {} tries", Self::TRIES)
    }

    async fn close(self) {
        let _ = self.connection.close(200, "replay published".into()).await;
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn wait_ready(&self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("webhookd was not ready before the deadline");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Events webhookd has taken and not acknowledged yet, from its metrics.
    async fn events_in_progress(&self) -> anyhow::Result<u64> {
        self.gauge("webhookd_events_in_progress").await
    }

    /// webhookd's pending deliveries, from its metrics.
    async fn pending(&self) -> anyhow::Result<u64> {
        self.gauge("webhookd_deliveries_pending").await
    }

    /// The value of the unlabelled gauge `name` on webhookd's `/metrics`.
    async fn gauge(&self, name: &str) -> anyhow::Result<u64> {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await?.text().await?;
        metric_value(&text, name).map(|v| v as u64).ok_or_else(|| anyhow!("no {name} in the metrics"))
    }

    async fn deliveries_of(&self, subscription_id: &str, token: &str) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        loop {
            let page = self
                .call(
                    "GET",
                    &format!(
                        "/admin/v1/deliveries?subscription_id={subscription_id}&limit=1000&offset={}",
                        all.len()
                    ),
                    token,
                    None,
                )
                .await?;
            let items = page["deliveries"].as_array().cloned().unwrap_or_default();
            let n = items.len();
            all.extend(items);
            if n < 1000 {
                return Ok(all);
            }
        }
    }
}

/// The value of an unlabelled series `name` in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_read_by_exact_name() {
        let text = "# HELP x\nwebhookd_deliveries_pending_age 9\nwebhookd_deliveries_pending 42\n";
        assert_eq!(metric_value(text, "webhookd_deliveries_pending"), Some(42.0));
        assert_eq!(metric_value(text, "webhookd_missing"), None);
    }

    #[test]
    fn speeds_parse() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("original".parse::<Speed>(), Ok(Speed::Original));
        assert_eq!("100x".parse::<Speed>(), Ok(Speed::Times(100.0)));
        assert!("0x".parse::<Speed>().is_err());
        assert!("fast".parse::<Speed>().is_err());
    }
}
