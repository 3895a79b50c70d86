//! The `[obp]` and `[rabo]` configuration sections.

use serde::{Deserialize, Serialize};

/// OBP API settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObpSettings {
    /// The banks this installation serves; any other BANK_ID answers OBP-30001.
    pub banks: Vec<String>,
}

/// Rabo Smart Pay API settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaboSettings {
    /// Most subscriptions one merchant may have; creating one more answers 403.
    pub max_subscriptions_per_merchant: u32,
    /// How long an idempotency key is remembered, hours.
    pub idempotency_ttl_hours: u64,
}

impl Default for RaboSettings {
    fn default() -> RaboSettings {
        RaboSettings { max_subscriptions_per_merchant: 32, idempotency_ttl_hours: 48 }
    }
}
