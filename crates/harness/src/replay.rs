//! Replaying a capture through a real webhookd: broker, webhookd (the real binary), scripted
//! receivers, subscriptions through the real APIs, then a report of every (event, subscription).
//!
//! The expected deliveries are predicted independently of webhookd's store: each captured event
//! is decoded and matched against the scenario's subscription specs here, and the outcome is then
//! read from webhookd's delivery log (admin API). Receivers check every signature.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use webhookd_core::event::Event;
use webhookd_core::matching::{match_keys, MatchKey};

use crate::broker::{free_broker_port, Broker};
use crate::capture::CapturedMessage;
use crate::receiver::{Received, Receiver};
use crate::scenario::{Events, Outcome, Scenario, SubscriptionSpec};

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

/// One attempt in the report.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptRow {
    /// When it started (RFC 3339).
    pub at: String,
    /// HTTP status, if any.
    pub status: Option<u64>,
    /// Duration, milliseconds.
    pub duration_ms: u64,
}

/// The result for one (event, subscription).
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// The event.
    pub event_id: String,
    /// The subscription's scenario name.
    pub subscription: String,
    /// Expected outcome.
    pub expected: String,
    /// Expected number of attempts, if any.
    pub expected_attempts: Option<u32>,
    /// What happened (a delivery state, or `none`).
    pub actual: String,
    /// The attempts made.
    pub attempts: Vec<AttemptRow>,
    /// Whether it matched.
    pub matched: bool,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Messages published.
    pub published: usize,
    /// Per (event, subscription).
    pub rows: Vec<Row>,
    /// Requests whose signature did not verify (path and reason).
    pub signature_failures: Vec<String>,
    /// Requests received by all receivers.
    pub requests_received: usize,
    /// True when every row matched and every signature verified.
    pub passed: bool,
    /// Seconds the replay took.
    pub seconds: f64,
}

impl Report {
    /// A readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "scenario {}: {} published, {} requests received, {} rows, {} mismatches, {} signature failures: {}\n",
            self.scenario,
            self.published,
            self.requests_received,
            self.rows.len(),
            self.rows.iter().filter(|r| !r.matched).count(),
            self.signature_failures.len(),
            if self.passed { "PASSED" } else { "FAILED" }
        );
        out.push_str("EVENT\tSUBSCRIPTION\tEXPECTED\tACTUAL\tATTEMPTS\tSTATUSES\tMATCH\n");
        for r in &self.rows {
            let statuses: Vec<String> =
                r.attempts.iter().map(|a| a.status.map_or("-".into(), |s| s.to_string())).collect();
            let expected = match r.expected_attempts {
                Some(n) => format!("{} after {n}", r.expected),
                None => r.expected.clone(),
            };
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                r.event_id,
                r.subscription,
                expected,
                r.actual,
                r.attempts.len(),
                statuses.join(","),
                if r.matched { "ok" } else { "MISMATCH" }
            ));
        }
        for f in &self.signature_failures {
            out.push_str(&format!("signature: {f}\n"));
        }
        out
    }
}

/// Runs the replay and returns its report.
pub async fn replay(
    scenario: &Scenario,
    events: &[CapturedMessage],
    options: &ReplayOptions,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!("webhookd-replay-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work)?;
    let result = run(scenario, events, options, &work, started).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run(
    scenario: &Scenario,
    events: &[CapturedMessage],
    options: &ReplayOptions,
    work: &Path,
    started: Instant,
) -> anyhow::Result<Report> {
    // A broker: the given one, or our own.
    let own_broker = match &options.amqp_url {
        Some(_) => None,
        None => {
            let dir = work.join("broker");
            let broker = tokio::task::spawn_blocking(move || -> anyhow::Result<Broker> {
                let port = free_broker_port()?;
                Broker::start(port, &dir)
            })
            .await??;
            Some(broker)
        }
    };
    let amqp_url = options
        .amqp_url
        .clone()
        .or_else(|| own_broker.as_ref().map(|b| b.url().to_string()))
        .unwrap_or_default();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let exchange = format!("replay.{tag}.events");

    let receiver = Receiver::start().await?;
    for r in &scenario.receivers {
        receiver.script(&format!("/{}", r.name), r.behaviour.script());
    }

    // Tokens, minted before webhookd starts (the store is single-process).
    let data_dir = work.join("data");
    let admin = mint(
        &options.webhookd_exe,
        &data_dir,
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
    )?;
    let mut merchant_tokens = BTreeMap::new();
    for s in scenario.subscriptions.iter().filter(|s| s.api == "rabo") {
        let merchant = s.merchant_id.clone().unwrap_or_default();
        if let std::collections::btree_map::Entry::Vacant(slot) = merchant_tokens.entry(merchant.clone()) {
            slot.insert(mint(
                &options.webhookd_exe,
                &data_dir,
                &["--user-id", "replay", "--merchant-id", &merchant],
            )?);
        }
    }

    let listen = format!("127.0.0.1:{}", free_port()?);
    let banks: Vec<String> = scenario.subscriptions.iter().filter_map(|s| s.bank_id.clone()).collect();
    let mut env = vec![
        ("WEBHOOKD_DATA_DIR", data_dir.display().to_string()),
        ("WEBHOOKD_HTTP_LISTEN", listen.clone()),
        ("WEBHOOKD_AMQP_URL", amqp_url.clone()),
        ("WEBHOOKD_AMQP_EXCHANGE", exchange.clone()),
        ("WEBHOOKD_AMQP_QUEUE", format!("replay.{tag}.queue")),
        ("WEBHOOKD_AMQP_DEAD_LETTER_EXCHANGE", format!("replay.{tag}.dead")),
        ("WEBHOOKD_AMQP_DEAD_LETTER_QUEUE", format!("replay.{tag}.dead")),
        ("WEBHOOKD_DESTINATIONS_ALLOW_HTTP", "true".into()),
        ("WEBHOOKD_DESTINATIONS_ALLOW", "127.0.0.1/32".into()),
        ("WEBHOOKD_DELIVERY_TIME_SCALE", options.time_scale.to_string()),
        ("WEBHOOKD_DELIVERY_TIMEOUT_MS", scenario.webhookd.timeout_ms.to_string()),
        ("WEBHOOKD_RETRY_RETRIES", scenario.webhookd.retries.to_string()),
        ("WEBHOOKD_RETRY_INITIAL_DELAY_MS", scenario.webhookd.initial_delay_ms.to_string()),
        ("WEBHOOKD_RABO_MAX_SUBSCRIPTIONS_PER_MERCHANT", "1000".into()),
    ];
    if !banks.is_empty() {
        env.push(("WEBHOOKD_OBP_BANKS", banks.join(",")));
    }
    let log = std::fs::File::create(work.join("webhookd.log"))?;
    let mut child = Command::new(&options.webhookd_exe)
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start webhookd")?;
    let outcome = drive(
        scenario,
        events,
        options,
        &receiver,
        &listen,
        &amqp_url,
        &exchange,
        &admin,
        &merchant_tokens,
        started,
    )
    .await;
    stop(&mut child);
    drop(own_broker);
    outcome.map_err(|e| {
        let log = std::fs::read_to_string(work.join("webhookd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        anyhow!(
            "{e:#}\nlast lines of webhookd's log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    scenario: &Scenario,
    events: &[CapturedMessage],
    options: &ReplayOptions,
    receiver: &Receiver,
    listen: &str,
    amqp_url: &str,
    exchange: &str,
    admin: &str,
    merchant_tokens: &BTreeMap<String, String>,
    started: Instant,
) -> anyhow::Result<Report> {
    let api = Api { http: reqwest::Client::builder().no_proxy().build()?, base: format!("http://{listen}") };
    api.wait_ready(Duration::from_secs(60)).await?;

    // Subscriptions through the real management APIs.
    let mut ids = BTreeMap::new();
    for s in &scenario.subscriptions {
        let url = receiver.url(&format!("/{}", s.receiver));
        let id = match s.api.as_str() {
            "obp" => {
                let bank = s.bank_id.clone().unwrap_or_default();
                let body = json!({
                    "account_id": s.account_id, "trigger_name": s.trigger, "url": url,
                    "http_method": s.http_method.clone().unwrap_or_else(|| "POST".into()),
                    "http_protocol": "HTTP/1.1", "is_active": "true"
                });
                let created = api
                    .call("POST", &format!("/obp/v4.0.0/banks/{bank}/account-web-hooks"), admin, Some(body))
                    .await?;
                created["account_webhook_id"].as_str().unwrap_or_default().to_string()
            }
            _ => {
                let merchant = s.merchant_id.clone().unwrap_or_default();
                let types = s.event_types.clone().unwrap_or_else(|| vec!["order.finalized/v1".into()]);
                let body =
                    json!({"status": "enabled", "url": url, "description": s.name, "eventTypes": types});
                let created = api
                    .call("POST", "/v3/webhooks/subscriptions", &merchant_tokens[&merchant], Some(body))
                    .await?;
                created["id"].as_str().unwrap_or_default().to_string()
            }
        };
        ids.insert(s.name.clone(), id);
    }
    let jwks = api.call("GET", "/.well-known/jwks.json", admin, None).await?;

    let published = publish(events, amqp_url, exchange, options).await?;

    // What must happen: predicted here from the capture and the subscription specs.
    let decoded: Vec<Event> =
        events.iter().filter_map(|m| Event::decode(&m.body_bytes().ok()?, 65_536).ok()).collect();
    let mut wanted: Vec<(String, String, Outcome, Option<u32>)> = Vec::new();
    for e in &scenario.expect {
        let spec = scenario
            .subscriptions
            .iter()
            .find(|s| s.name == e.subscription)
            .ok_or_else(|| anyhow!("unknown subscription"))?;
        let events: Vec<String> = match &e.events {
            Events::All => {
                decoded.iter().filter(|ev| reaches(ev, spec)).map(|ev| ev.event_id().to_string()).collect()
            }
            Events::Ids(list) => list.iter().map(ToString::to_string).collect(),
        };
        for ev in events {
            wanted.push((ev, e.subscription.clone(), e.outcome, e.attempts));
        }
    }

    // Wait until every expectation is reached or the deadline passes.
    let deadline = Instant::now() + options.deadline;
    let mut last_progress = Instant::now();
    let logs = loop {
        let mut logs = BTreeMap::new();
        for (name, id) in &ids {
            logs.insert(name.clone(), api.deliveries_of(id, admin).await?);
        }
        let settled = wanted.iter().filter(|w| settled(w, &logs)).count();
        if options.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            let pending = logs.values().flatten().filter(|d| d["state"] == "pending").count();
            eprintln!("replay: {published} published, {settled}/{} expectations reached, {pending} deliveries pending", wanted.len());
            last_progress = Instant::now();
        }
        // Judging before webhookd has read every message would pass "not delivered" too early.
        let consumed = api.consumed().await? >= published;
        if consumed && (settled == wanted.len() || final_everywhere(&wanted, &logs))
            || Instant::now() >= deadline
        {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut rows = Vec::new();
    for (event_id, sub, outcome, attempts) in &wanted {
        let delivery = find(&logs, sub, event_id);
        let actual = delivery.map_or("none".to_string(), |d| d["state"].as_str().unwrap_or("?").to_string());
        let attempt_rows: Vec<AttemptRow> = delivery
            .and_then(|d| d["attempt_log"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|a| AttemptRow {
                at: a["at"].as_str().unwrap_or_default().to_string(),
                status: a["status"].as_u64(),
                duration_ms: a["duration_ms"].as_u64().unwrap_or(0),
            })
            .collect();
        let matched = settled(&(event_id.clone(), sub.clone(), *outcome, *attempts), &logs);
        rows.push(Row {
            event_id: event_id.clone(),
            subscription: sub.clone(),
            expected: outcome.state().to_string(),
            expected_attempts: *attempts,
            actual,
            attempts: attempt_rows,
            matched,
        });
    }
    let received = receiver.received();
    let signature_failures: Vec<String> = received
        .iter()
        .filter(|r| r.status_sent != 0)
        .filter_map(|r| check_signature(r, &jwks).err())
        .collect();
    let passed = rows.iter().all(|r| r.matched) && signature_failures.is_empty();
    Ok(Report {
        scenario: scenario.name.clone(),
        published,
        rows,
        signature_failures,
        requests_received: received.len(),
        passed,
        seconds: started.elapsed().as_secs_f64(),
    })
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
fn final_everywhere(
    wanted: &[(String, String, Outcome, Option<u32>)],
    logs: &BTreeMap<String, Vec<Value>>,
) -> bool {
    let none_pending = logs.values().flatten().all(|d| d["state"] != "pending");
    let all_exist = wanted.iter().all(|(event, sub, outcome, _)| {
        *outcome == Outcome::NotDelivered || find(logs, sub, event).is_some()
    });
    none_pending && all_exist
}

fn find<'a>(logs: &'a BTreeMap<String, Vec<Value>>, sub: &str, event_id: &str) -> Option<&'a Value> {
    logs.get(sub)?.iter().find(|d| d["event_id"].as_str() == Some(event_id))
}

fn settled(w: &(String, String, Outcome, Option<u32>), logs: &BTreeMap<String, Vec<Value>>) -> bool {
    let (event_id, sub, outcome, attempts) = w;
    match (find(logs, sub, event_id), outcome) {
        (None, Outcome::NotDelivered) => true,
        (None, _) | (Some(_), Outcome::NotDelivered) => false,
        (Some(d), _) => {
            d["state"].as_str() == Some(outcome.state())
                && attempts.is_none_or(|n| d["attempts"].as_u64() == Some(u64::from(n)))
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

async fn publish(
    events: &[CapturedMessage],
    amqp_url: &str,
    exchange: &str,
    options: &ReplayOptions,
) -> anyhow::Result<usize> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let connection = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let origin = events.first().and_then(|m| m.received_at().ok());
    let start = Instant::now();
    let mut confirms = Vec::new();
    for (n, m) in events.iter().enumerate() {
        if let (Some(origin), Ok(at)) = (origin, m.received_at()) {
            let offset = (at - origin).as_seconds_f64().max(0.0);
            let wait = match options.speed {
                Speed::Max => None,
                Speed::Original => Some(offset),
                Speed::Times(f) => Some(offset / f),
            };
            if let Some(wait) = wait {
                let due = start + Duration::from_secs_f64(wait);
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let body = m.body_bytes()?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                m.to_amqp_properties(),
            )
            .await?;
        confirms.push(confirm);
        if confirms.len() >= 500 {
            for c in confirms.drain(..) {
                c.await?;
            }
        }
        if options.progress && (n + 1) % 1000 == 0 {
            eprintln!("replay: {} of {} published", n + 1, events.len());
        }
    }
    for c in confirms {
        c.await?;
    }
    let _ = connection.close(200, "replay published".into()).await;
    Ok(events.len())
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("webhookd did not become ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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

    /// Messages webhookd has consumed so far (valid or not), from its metrics.
    async fn consumed(&self) -> anyhow::Result<usize> {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("webhookd_events_consumed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as usize)
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

fn mint(exe: &Path, data_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .args(["token", "create"])
        .args(args)
        .env("WEBHOOKD_DATA_DIR", data_dir)
        .output()
        .context("cannot run webhookd token create")?;
    if !out.status.success() {
        bail!("webhookd token create failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Stops webhookd with SIGTERM (graceful), then waits; kills it if it does not stop.
fn stop(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse() {
        assert_eq!("max".parse::<Speed>(), Ok(Speed::Max));
        assert_eq!("original".parse::<Speed>(), Ok(Speed::Original));
        assert_eq!("100x".parse::<Speed>(), Ok(Speed::Times(100.0)));
        assert!("0x".parse::<Speed>().is_err());
        assert!("fast".parse::<Speed>().is_err());
    }
}
