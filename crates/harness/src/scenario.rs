//! Replay scenarios: the subscriptions to create, how each receiver behaves, and what must
//! happen to every (event, subscription). Written in TOML (or JSON); see docs/harness.md.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::receiver::{Reply, Script};

/// A whole scenario.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A name for reports.
    pub name: String,
    /// Retry schedule and timeouts of the webhookd under test.
    #[serde(default)]
    pub webhookd: WebhookdSettings,
    /// webhookd replicas acting as one service (each its own process and data dir; the
    /// same broker, queues, streams and signing keys).
    #[serde(default = "one")]
    pub replicas: usize,
    /// Broker nodes: 1 (one broker) or 3 (a cluster on loopback; replica N talks to node
    /// N, round the nodes). Node actions need the replay's own brokers.
    #[serde(default = "one")]
    pub broker_nodes: usize,
    /// The scripted receivers.
    pub receivers: Vec<ReceiverSpec>,
    /// The subscriptions, created through the real management APIs.
    pub subscriptions: Vec<SubscriptionSpec>,
    /// What must happen.
    #[serde(default)]
    pub expect: Vec<Expectation>,
    /// Faults and changes made during the replay, in order.
    #[serde(default)]
    pub actions: Vec<Action>,
}

fn one() -> usize {
    1
}

/// Settings of the webhookd under test (the rest are webhookd's defaults).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookdSettings {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Delay before the first retry, milliseconds (before the time scale).
    pub initial_delay_ms: u64,
    /// Timeout of one attempt, milliseconds (real time).
    pub timeout_ms: u64,
}

impl Default for WebhookdSettings {
    fn default() -> WebhookdSettings {
        WebhookdSettings { retries: 20, initial_delay_ms: 2_000, timeout_ms: 5_000 }
    }
}

/// A receiver and its behaviour.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverSpec {
    /// Name, referenced by subscriptions.
    pub name: String,
    /// How it answers.
    #[serde(default)]
    pub behaviour: Behaviour,
    /// Times when it is down (nothing listens on its port: connections are refused).
    #[serde(default)]
    pub down: Vec<Window>,
}

/// A time window, in milliseconds of real time from the start of publishing.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start.
    pub from_ms: u64,
    /// End (exclusive).
    pub until_ms: u64,
}

/// How a receiver answers.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Behaviour {
    /// 200 with body `ack` (success for both APIs).
    #[default]
    Ack,
    /// 200 without `ack` (misconfigured for Rabo, success for OBP).
    NoAck,
    /// Fails `times` times with `status`, then acknowledges.
    FailThenAck {
        /// How many failures first.
        times: usize,
        /// Their status.
        status: u16,
    },
    /// Always answers `status`.
    AlwaysFail {
        /// The status.
        status: u16,
    },
    /// Acknowledges after `delay_ms`.
    Slow {
        /// The delay.
        delay_ms: u64,
    },
    /// Accepts the connection and never answers (the attempt times out).
    Timeout,
    /// Answers 302 to `location`.
    Redirect {
        /// Where it points.
        location: String,
    },
    /// Answers `status` to a random share `rate` (0.0 to 1.0) of requests, `ack` to the rest;
    /// the draws are seeded, so a run can be repeated.
    RandomFail {
        /// Share of failures.
        rate: f64,
        /// Their status.
        status: u16,
        /// Seed of the draws.
        #[serde(default)]
        seed: u64,
    },
}

impl Behaviour {
    /// The receiver script for this behaviour.
    pub fn script(&self) -> Script {
        match self {
            Behaviour::Ack => Script::always(Reply::ack()),
            Behaviour::NoAck => Script::always(Reply::ok("ok")),
            Behaviour::FailThenAck { times, status } => {
                Script::fail_then(*times, Reply::status(*status), Reply::ack())
            }
            Behaviour::AlwaysFail { status } => Script::always(Reply::status(*status)),
            Behaviour::Slow { delay_ms } => Script::always(Reply::Delay {
                after: Duration::from_millis(*delay_ms),
                status: 200,
                body: "ack".into(),
            }),
            Behaviour::Timeout => Script::always(Reply::Hang),
            Behaviour::Redirect { location } => Script::always(Reply::Headers {
                status: 302,
                body: String::new(),
                headers: vec![("location".into(), location.clone())],
            }),
            Behaviour::RandomFail { rate, status, seed } => {
                Script::random(*rate, Reply::status(*status), Reply::ack(), *seed)
            }
        }
    }
}

/// A subscription to create.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Name, referenced by expectations.
    pub name: String,
    /// `obp` or `rabo`.
    pub api: String,
    /// The receiver it points to.
    pub receiver: String,
    /// OBP: bank id.
    #[serde(default)]
    pub bank_id: Option<String>,
    /// OBP: account id.
    #[serde(default)]
    pub account_id: Option<String>,
    /// OBP: trigger name.
    #[serde(default)]
    pub trigger: Option<String>,
    /// OBP: http method (default POST).
    #[serde(default)]
    pub http_method: Option<String>,
    /// Rabo: merchant id.
    #[serde(default)]
    pub merchant_id: Option<String>,
    /// Rabo: event types (default `["order.finalized/v1"]`).
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
}

/// What must happen to the deliveries of one subscription.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// The subscription's name.
    pub subscription: String,
    /// Which events: all events of the capture that reach this subscription (`all`, the
    /// default), or a list of event ids.
    #[serde(default)]
    pub events: Events,
    /// The outcome.
    pub outcome: Outcome,
    /// For `delivered`/`failed`: exactly this many attempts.
    #[serde(default)]
    pub attempts: Option<u32>,
    /// For `delivered`/`failed`: at least this many attempts (e.g. across a receiver outage).
    #[serde(default)]
    pub min_attempts: Option<u32>,
}

/// Which events an expectation covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Events {
    /// Every event of the capture that reaches the subscription (`"all"`).
    #[default]
    All,
    /// Those published while the subscription was enabled (`"active"`).
    Active,
    /// Those published while it was disabled or deleted by an action (`"inactive"`).
    Inactive,
    /// These event ids.
    Ids(Vec<uuid::Uuid>),
}

impl Events {
    const WORDS: [(&'static str, Events); 3] =
        [("all", Events::All), ("active", Events::Active), ("inactive", Events::Inactive)];
}

impl Serialize for Events {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Events::Ids(ids) => ids.serialize(s),
            word => {
                let name = Events::WORDS.iter().find(|(_, w)| w == word).map_or("all", |(n, _)| n);
                s.serialize_str(name)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Events {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Events, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Ids(Vec<uuid::Uuid>),
        }
        match Raw::deserialize(d)? {
            Raw::Ids(ids) => Ok(Events::Ids(ids)),
            Raw::Word(word) => Events::WORDS.iter().find(|(n, _)| *n == word).map(|(_, e)| e.clone()).ok_or_else(
                || {
                    serde::de::Error::custom(format!(
                        "events must be \"all\", \"active\", \"inactive\" or a list of event ids, got {word:?}"
                    ))
                },
            ),
        }
    }
}

/// A fault or change made during the replay.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Runs once this many messages of the capture are published and confirmed by the broker
    /// (0: before the first; the capture's length or more: after the last).
    pub after_events: usize,
    /// Then waits this long (real time) first.
    #[serde(default)]
    pub wait_ms: u64,
    /// What to do.
    #[serde(rename = "do")]
    pub kind: ActionKind,
    /// The subscription, for `disable`, `enable` and `delete`.
    #[serde(default)]
    pub subscription: Option<String>,
    /// The replica (1 = the first) a replica action acts on, or a subscription change goes
    /// through; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<usize>,
    /// The broker node (1-3) of a node action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
    /// `kill_replica`: delete its data dir before starting it again (a replica lost with its
    /// disk).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wipe: bool,
    /// `kill_replica`, `kill_broker_node`: how long it stays down before it is started again,
    /// milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub down_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Action {
    /// An action of `kind` once `after_events` are published; the rest at its defaults.
    pub fn new(after_events: usize, kind: ActionKind) -> Action {
        Action {
            after_events,
            wait_ms: 0,
            kind,
            subscription: None,
            replica: None,
            node: None,
            wipe: false,
            down_ms: 0,
        }
    }

    /// The replica it acts on or goes through, counted from 0.
    pub fn replica_index(&self) -> usize {
        self.replica.unwrap_or(1).saturating_sub(1)
    }
}

/// What an action does.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// SIGKILL a replica (`replica`, default 1), then start it again on the same data.
    Kill,
    /// SIGTERM a replica (graceful), wait for it to exit, then start it again.
    Restart,
    /// SIGKILL a replica; with `wipe`, delete its data dir; after `down_ms`, start it again.
    KillReplica,
    /// A graceful restart of a replica (as `restart`).
    RestartReplica,
    /// Stop the broker and start it again (only with the replay's own single broker).
    RestartBroker,
    /// SIGKILL broker node `node` of the cluster; after `down_ms`, start it again and wait
    /// until the cluster is whole.
    KillBrokerNode,
    /// SIGSTOP broker node `node` (it neither answers nor closes its connections).
    FreezeBrokerNode,
    /// SIGCONT broker node `node`, then wait until the cluster is whole.
    ThawBrokerNode,
    /// Disable a subscription through its API.
    Disable,
    /// Enable it again.
    Enable,
    /// Delete a subscription (Rabo only: OBP v4.0.0 has no delete).
    Delete,
}

impl ActionKind {
    /// Its name in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Kill => "kill",
            ActionKind::Restart => "restart",
            ActionKind::KillReplica => "kill_replica",
            ActionKind::RestartReplica => "restart_replica",
            ActionKind::RestartBroker => "restart_broker",
            ActionKind::KillBrokerNode => "kill_broker_node",
            ActionKind::FreezeBrokerNode => "freeze_broker_node",
            ActionKind::ThawBrokerNode => "thaw_broker_node",
            ActionKind::Disable => "disable",
            ActionKind::Enable => "enable",
            ActionKind::Delete => "delete",
        }
    }

    /// Whether the action changes a subscription (and so names one).
    pub fn on_subscription(self) -> bool {
        matches!(self, ActionKind::Disable | ActionKind::Enable | ActionKind::Delete)
    }

    /// Whether the action acts on a broker node of the cluster (and so names one).
    pub fn on_node(self) -> bool {
        matches!(self, ActionKind::KillBrokerNode | ActionKind::FreezeBrokerNode | ActionKind::ThawBrokerNode)
    }

    /// Whether the action acts on one replica.
    pub fn on_replica(self) -> bool {
        matches!(
            self,
            ActionKind::Kill | ActionKind::Restart | ActionKind::KillReplica | ActionKind::RestartReplica
        )
    }
}

/// The expected end of a delivery.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged.
    Delivered,
    /// Retry schedule exhausted.
    Failed,
    /// Stopped as misconfigured.
    Misconfigured,
    /// No delivery at all (no match, disabled, deleted, or a poison event).
    NotDelivered,
}

impl Outcome {
    /// The delivery state name it corresponds to.
    pub fn state(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Misconfigured => "misconfigured",
            Outcome::NotDelivered => "none",
        }
    }
}

impl Scenario {
    /// Reads a scenario from TOML (`.toml`) or JSON (anything else) and checks its references.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let scenario: Scenario = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).with_context(|| format!("{} is not a valid scenario", path.display()))?
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a valid scenario", path.display()))?
        };
        scenario.check()?;
        Ok(scenario)
    }

    /// Checks names and required fields.
    pub fn check(&self) -> anyhow::Result<()> {
        for s in &self.subscriptions {
            if !self.receivers.iter().any(|r| r.name == s.receiver) {
                bail!("subscription {} points to unknown receiver {}", s.name, s.receiver);
            }
            match s.api.as_str() {
                "obp" if s.bank_id.is_none() || s.account_id.is_none() || s.trigger.is_none() => {
                    bail!("OBP subscription {} needs bank_id, account_id and trigger", s.name)
                }
                "rabo" if s.merchant_id.is_none() => bail!("Rabo subscription {} needs merchant_id", s.name),
                "obp" | "rabo" => {}
                other => bail!("subscription {}: api must be obp or rabo, got {other}", s.name),
            }
        }
        for e in &self.expect {
            if !self.subscriptions.iter().any(|s| s.name == e.subscription) {
                bail!("an expectation names unknown subscription {}", e.subscription);
            }
        }
        for r in &self.receivers {
            if let Behaviour::RandomFail { rate, .. } = r.behaviour {
                if !(0.0..=1.0).contains(&rate) {
                    bail!("receiver {}: random_fail rate must be between 0 and 1, got {rate}", r.name);
                }
            }
            if let Some(w) = r.down.iter().find(|w| w.until_ms <= w.from_ms) {
                bail!("receiver {}: a down window must end after it starts ({w:?})", r.name);
            }
        }
        if self.replicas == 0 {
            bail!("replicas must be 1 or more");
        }
        if !matches!(self.broker_nodes, 1 | 3) {
            bail!("broker_nodes must be 1 or 3, got {}", self.broker_nodes);
        }
        for (n, a) in self.actions.iter().enumerate() {
            if n > 0 && a.after_events < self.actions[n - 1].after_events {
                bail!("actions must be in order of after_events");
            }
            if let Some(r) = a.replica {
                if r == 0 || r > self.replicas {
                    bail!("action {n} names replica {r}; the scenario has replicas 1 to {}", self.replicas);
                }
                if !(a.kind.on_replica() || a.kind.on_subscription()) {
                    bail!("action {n} ({}) takes no replica", a.kind.name());
                }
            }
            match (a.node, a.kind.on_node()) {
                (None, true) => bail!("action {n} ({}) needs a node", a.kind.name()),
                (Some(node), true) if node == 0 || node > self.broker_nodes => {
                    bail!(
                        "action {n} names broker node {node}; the scenario has nodes 1 to {}",
                        self.broker_nodes
                    )
                }
                (Some(_), false) => bail!("action {n} ({}) takes no node", a.kind.name()),
                _ => {}
            }
            if a.kind == ActionKind::RestartBroker && self.broker_nodes != 1 {
                bail!("action {n}: restart_broker is for one broker; a cluster's nodes have node actions");
            }
            if a.wipe && a.kind != ActionKind::KillReplica {
                bail!("action {n}: only kill_replica can wipe a data dir");
            }
            if a.down_ms > 0 && !matches!(a.kind, ActionKind::KillReplica | ActionKind::KillBrokerNode) {
                bail!("action {n}: down_ms is for kill_replica and kill_broker_node");
            }
            match (&a.subscription, a.kind.on_subscription()) {
                (None, true) => bail!("action {n} ({:?}) needs a subscription", a.kind),
                (Some(name), true) => {
                    let Some(spec) = self.subscriptions.iter().find(|s| &s.name == name) else {
                        bail!("action {n} names unknown subscription {name}");
                    };
                    if a.kind == ActionKind::Delete && spec.api != "rabo" {
                        bail!("action {n}: only Rabo subscriptions can be deleted ({name} is {})", spec.api);
                    }
                }
                (Some(_), false) => bail!("action {n} ({:?}) takes no subscription", a.kind),
                (None, false) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_reads_from_toml_and_checks_references() {
        let text = r#"
name = "outage"
[webhookd]
retries = 3
initial_delay_ms = 100
[[receivers]]
name = "shop"
behaviour = { fail_then_ack = { times = 2, status = 503 } }
[[receivers]]
name = "calm"
[[subscriptions]]
name = "orders"
api = "rabo"
receiver = "shop"
merchant_id = "m-1"
[[expect]]
subscription = "orders"
outcome = "delivered"
attempts = 3
[[expect]]
subscription = "orders"
events = ["6f1c1f8e-3b8c-4a43-9d3c-0a8f6b1e2d11"]
outcome = "delivered"
"#;
        let dir = std::env::temp_dir().join(format!("scenario-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.toml");
        std::fs::write(&path, text).unwrap();
        let s = Scenario::load(&path).unwrap();
        assert_eq!(s.webhookd.retries, 3);
        assert_eq!(s.webhookd.timeout_ms, 5_000);
        assert_eq!(s.receivers[0].behaviour, Behaviour::FailThenAck { times: 2, status: 503 });
        assert_eq!(s.receivers[1].behaviour, Behaviour::Ack);
        assert_eq!(s.expect[0].events, Events::All);
        assert!(matches!(s.expect[1].events, Events::Ids(ref ids) if ids.len() == 1));
        std::fs::write(&path, text.replace("receiver = \"shop\"", "receiver = \"nobody\"")).unwrap();
        assert!(Scenario::load(&path).unwrap_err().to_string().contains("unknown receiver nobody"));
        std::fs::write(
            &path,
            text.replace("outcome = \"delivered\"\nattempts", "outcome = \"lost\"\nattempts"),
        )
        .unwrap();
        assert!(Scenario::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn actions_down_windows_and_event_selectors_read_and_are_checked() {
        let base = r#"
name = "faults"
[[receivers]]
name = "r"
down = [{ from_ms = 100, until_ms = 900 }]
behaviour = { random_fail = { rate = 0.1, status = 503, seed = 3 } }
[[subscriptions]]
name = "orders"
api = "rabo"
receiver = "r"
merchant_id = "m-1"
[[subscriptions]]
name = "ledger"
api = "obp"
receiver = "r"
bank_id = "b"
account_id = "a"
trigger = "OnBalanceChange"
[[expect]]
subscription = "orders"
events = "inactive"
outcome = "not_delivered"
[[expect]]
subscription = "orders"
events = "active"
outcome = "delivered"
min_attempts = 2
[[actions]]
after_events = 5
do = "kill"
[[actions]]
after_events = 7
wait_ms = 50
do = "disable"
subscription = "orders"
"#;
        let s: Scenario = toml::from_str(base).unwrap();
        s.check().unwrap();
        assert_eq!(s.receivers[0].down, [Window { from_ms: 100, until_ms: 900 }]);
        assert_eq!(s.receivers[0].behaviour, Behaviour::RandomFail { rate: 0.1, status: 503, seed: 3 });
        assert_eq!(s.expect[0].events, Events::Inactive);
        assert_eq!(s.expect[1].events, Events::Active);
        assert_eq!(s.expect[1].min_attempts, Some(2));
        assert_eq!(s.actions[1].kind, ActionKind::Disable);
        assert_eq!(s.actions[1].wait_ms, 50);
        // Written back, it reads the same.
        let again: Scenario = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(again.expect[0].events, Events::Inactive);
        assert_eq!(again.actions, s.actions);

        let refused = |from: &str, to: &str| {
            let s: Scenario = toml::from_str(&base.replace(from, to)).unwrap();
            s.check().unwrap_err().to_string()
        };
        assert!(refused("after_events = 7", "after_events = 2").contains("in order"));
        assert!(refused(
            "do = \"disable\"\nsubscription = \"orders\"",
            "do = \"delete\"\nsubscription = \"ledger\""
        )
        .contains("only Rabo"));
        assert!(refused("do = \"kill\"", "do = \"kill\"\nsubscription = \"orders\"").contains("takes no"));
        assert!(refused("until_ms = 900", "until_ms = 100").contains("must end after"));
        assert!(refused("rate = 0.1", "rate = 1.5").contains("between 0 and 1"));
        assert!(toml::from_str::<Scenario>(&base.replace("\"inactive\"", "\"sometimes\"")).is_err());
    }

    #[test]
    fn replicas_and_broker_nodes_read_and_are_checked() {
        let base = r#"
name = "replicas"
replicas = 3
broker_nodes = 3
[[receivers]]
name = "r"
[[subscriptions]]
name = "orders"
api = "rabo"
receiver = "r"
merchant_id = "m-1"
[[actions]]
after_events = 5
do = "kill_replica"
replica = 2
wipe = true
down_ms = 500
[[actions]]
after_events = 6
do = "freeze_broker_node"
node = 3
[[actions]]
after_events = 7
do = "disable"
subscription = "orders"
replica = 3
"#;
        let s: Scenario = toml::from_str(base).unwrap();
        s.check().unwrap();
        assert_eq!((s.replicas, s.broker_nodes), (3, 3));
        assert_eq!(s.actions[0].kind, ActionKind::KillReplica);
        assert_eq!((s.actions[0].replica_index(), s.actions[0].wipe, s.actions[0].down_ms), (1, true, 500));
        assert_eq!(s.actions[1].node, Some(3));
        assert_eq!(s.actions[2].replica_index(), 2);
        let again: Scenario = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(again.actions, s.actions);
        // One replica, one broker by default.
        let plain: Scenario = toml::from_str(&base.replace("replicas = 3\nbroker_nodes = 3\n", "")).unwrap();
        assert_eq!((plain.replicas, plain.broker_nodes), (1, 1));
        assert_eq!(Action::new(3, ActionKind::Kill).replica_index(), 0);

        let refused = |from: &str, to: &str| {
            let s: Scenario = toml::from_str(&base.replace(from, to)).unwrap();
            s.check().unwrap_err().to_string()
        };
        assert!(refused("replica = 2", "replica = 4").contains("replicas 1 to 3"));
        assert!(refused("node = 3", "node = 4").contains("nodes 1 to 3"));
        assert!(refused("node = 3\n", "").contains("needs a node"));
        assert!(refused("broker_nodes = 3", "broker_nodes = 2").contains("1 or 3"));
        assert!(refused("do = \"kill_replica\"", "do = \"restart_replica\"")
            .contains("only kill_replica can wipe"));
        assert!(refused("replica = 2\nwipe = true\n", "node = 1\n").contains("takes no node"));
        assert!(refused("do = \"freeze_broker_node\"\nnode = 3", "do = \"restart_broker\"")
            .contains("restart_broker is for one broker"));
    }
}
