//! What the handlers share.

use std::sync::Arc;

use webhookd_core::destination::DestinationPolicy;
use webhookd_core::signing::KeyRing;
use webhookd_delivery::Prober;
use webhookd_metrics::Metrics;

use crate::settings::{ObpSettings, RaboSettings};
use webhookd_store::Store;

/// Answers whether the process is ready to take traffic, and if not, why.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Shared state of all handlers; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Store,
    /// Signing keys; the JWKS is derived from them at request time so retired keys expire.
    pub keys: Arc<KeyRing>,
    /// How long a retired key stays published, seconds.
    pub retired_key_publish_secs: i64,
    /// Readiness of the parts (store, broker, consumer).
    pub readiness: Readiness,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// OBP settings (known banks).
    pub obp: Arc<ObpSettings>,
    /// Rabo settings (limits, idempotency).
    pub rabo: Arc<RaboSettings>,
    /// Which destinations subscriptions may point to.
    pub destinations: Arc<DestinationPolicy>,
    /// Sends `verify` test events.
    pub prober: Arc<Prober>,
}
