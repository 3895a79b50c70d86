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
    /// The scripted receivers.
    pub receivers: Vec<ReceiverSpec>,
    /// The subscriptions, created through the real management APIs.
    pub subscriptions: Vec<SubscriptionSpec>,
    /// What must happen.
    #[serde(default)]
    pub expect: Vec<Expectation>,
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
}

/// Which events an expectation covers.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Events {
    /// The word `all`.
    #[default]
    #[serde(with = "all")]
    All,
    /// Event ids.
    Ids(Vec<uuid::Uuid>),
}

mod all {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("all")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let text = String::deserialize(d)?;
        if text == "all" {
            Ok(())
        } else {
            Err(serde::de::Error::custom(format!(
                "events must be \"all\" or a list of event ids, got {text:?}"
            )))
        }
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
}
