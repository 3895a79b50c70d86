//! Subscriptions of both APIs, as stored: OBP account webhooks and Rabo Smart Pay subscriptions.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::matching::MatchKey;

/// Which public API a subscription (and its deliveries) belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Open Bank Project v4.0.0 account webhooks.
    Obp,
    /// Rabo Smart Pay webhook subscriptions.
    Rabo,
}

impl Api {
    /// Both APIs.
    pub const ALL: [Api; 2] = [Api::Obp, Api::Rabo];

    /// The lowercase name, also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Obp => "obp",
            Api::Rabo => "rabo",
        }
    }
}

/// An OBP account webhook trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Trigger {
    /// Fires on every posted transaction with a non-zero amount.
    OnBalanceChange,
    /// Fires when the amount is positive.
    OnCreditTransaction,
    /// Fires when the amount is negative.
    OnDebitTransaction,
}

impl Trigger {
    /// All triggers, in OBP's documented order.
    pub const ALL: [Trigger; 3] =
        [Trigger::OnBalanceChange, Trigger::OnCreditTransaction, Trigger::OnDebitTransaction];

    /// The OBP name of the trigger.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::OnBalanceChange => "OnBalanceChange",
            Trigger::OnCreditTransaction => "OnCreditTransaction",
            Trigger::OnDebitTransaction => "OnDebitTransaction",
        }
    }

    /// Parses an OBP trigger name (exact, as OBP does).
    pub fn parse(name: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// A Rabo Smart Pay event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RaboEventType {
    /// `test/v1`: sent by `verify` and by `test` events.
    #[serde(rename = "test/v1")]
    Test,
    /// `order.finalized/v1`: an order reached its final status.
    #[serde(rename = "order.finalized/v1")]
    OrderFinalized,
}

impl RaboEventType {
    /// All known event types.
    pub const ALL: [RaboEventType; 2] = [RaboEventType::Test, RaboEventType::OrderFinalized];

    /// The wire name, e.g. `order.finalized/v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            RaboEventType::Test => "test/v1",
            RaboEventType::OrderFinalized => "order.finalized/v1",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<RaboEventType> {
        RaboEventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The description listed by `GET /v3/webhooks/events`.
    pub fn description(self) -> &'static str {
        match self {
            RaboEventType::Test => "A test event, sent when a subscription is verified.",
            RaboEventType::OrderFinalized => "An order has reached its final status.",
        }
    }
}

/// An OBP account webhook as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObpWebhook {
    /// The webhook's UUID (`account_webhook_id`).
    pub account_webhook_id: Uuid,
    /// The bank it belongs to.
    pub bank_id: String,
    /// The account whose transactions fire it.
    pub account_id: String,
    /// Which trigger fires it.
    pub trigger: Trigger,
    /// Where deliveries go.
    pub url: String,
    /// HTTP method of deliveries (POST, PUT, DELETE carry the body; GET sends none).
    pub http_method: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub http_protocol: String,
    /// The user who created it.
    pub created_by_user_id: String,
    /// Whether new events match it.
    pub is_active: bool,
    /// Creation time, unix milliseconds (gives the listing its stable order).
    pub created_at_ms: u64,
}

/// Whether a Rabo subscription receives new events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaboStatus {
    /// New events are delivered.
    Enabled,
    /// New events are not delivered (queued ones still are).
    Disabled,
}

/// A Rabo Smart Pay webhook subscription as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaboSubscription {
    /// `wsb_` + 21 lowercase alphanumerics.
    pub id: String,
    /// The merchant that owns it; only that merchant can see or change it.
    pub merchant_id: String,
    /// Enabled or disabled.
    pub status: RaboStatus,
    /// Where deliveries go.
    pub url: String,
    /// Optional description, echoed in every delivered envelope.
    pub description: Option<String>,
    /// The event types it receives (never empty).
    pub event_types: Vec<RaboEventType>,
    /// Creation time, unix milliseconds.
    pub created_at_ms: u64,
}

/// A subscription of either API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "api", rename_all = "lowercase")]
pub enum Subscription {
    /// An OBP account webhook.
    Obp(ObpWebhook),
    /// A Rabo Smart Pay subscription.
    Rabo(RaboSubscription),
}

/// What the match index holds for a subscription: enough to build a delivery without
/// reading the subscription itself (index-only matching).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The subscription id (UUID for OBP, `wsb_...` for Rabo).
    pub subscription_id: String,
    /// Destination url.
    pub url: String,
    /// HTTP method.
    pub http_method: String,
    /// Whether to speak HTTP/2 (OBP `HTTP/2.0`).
    pub http2: bool,
    /// The Rabo description echoed in the envelope.
    pub description: Option<String>,
}

impl Subscription {
    /// The id as stored (the store key).
    pub fn id(&self) -> String {
        match self {
            Subscription::Obp(w) => w.account_webhook_id.to_string(),
            Subscription::Rabo(s) => s.id.clone(),
        }
    }

    /// The API it belongs to.
    pub fn api(&self) -> Api {
        match self {
            Subscription::Obp(_) => Api::Obp,
            Subscription::Rabo(_) => Api::Rabo,
        }
    }

    /// Whether new events match it.
    pub fn is_active(&self) -> bool {
        match self {
            Subscription::Obp(w) => w.is_active,
            Subscription::Rabo(s) => s.status == RaboStatus::Enabled,
        }
    }

    /// The index keys under which it is found; empty when inactive, so inactive subscriptions
    /// cost nothing at match time.
    pub fn match_keys(&self) -> Vec<MatchKey> {
        if !self.is_active() {
            return Vec::new();
        }
        match self {
            Subscription::Obp(w) => vec![MatchKey::Obp {
                bank_id: w.bank_id.clone(),
                account_id: w.account_id.clone(),
                trigger: w.trigger,
            }],
            Subscription::Rabo(s) => s
                .event_types
                .iter()
                .map(|t| MatchKey::Rabo { merchant_id: s.merchant_id.clone(), event_type: *t })
                .collect(),
        }
    }

    /// What the index stores for it.
    pub fn target(&self) -> Target {
        match self {
            Subscription::Obp(w) => Target {
                subscription_id: self.id(),
                url: w.url.clone(),
                http_method: w.http_method.clone(),
                http2: w.http_protocol.eq_ignore_ascii_case("HTTP/2.0"),
                description: None,
            },
            Subscription::Rabo(s) => Target {
                subscription_id: s.id.clone(),
                url: s.url.clone(),
                http_method: "POST".into(),
                http2: false,
                description: s.description.clone(),
            },
        }
    }
}
