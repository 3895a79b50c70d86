//! What the handlers share.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use webhookd_core::destination::DestinationPolicy;
use webhookd_core::signing::SharedKeys;
use webhookd_delivery::Prober;
use webhookd_metrics::Metrics;

use crate::settings::{ObpSettings, RaboSettings};
use webhookd_catalog::{Catalog, CatalogError, Outcome};
use webhookd_store::Store;

use crate::error::{ApiError, Format};

/// Answers whether the process is ready to take traffic, and if not, why.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Shared state of all handlers; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The store: this replica's applied view of the catalog, and its deliveries (reads).
    pub store: Store,
    /// The catalog: every subscription change goes through its log.
    pub catalog: Catalog,
    /// Signing keys; the JWKS is derived from them at request time so retired keys expire.
    pub keys: SharedKeys,
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
    /// Queues redeliveries and recoveries.
    pub dispatch: webhookd_delivery::Dispatch,
    /// Idempotency keys whose request is running on this replica.
    pub idempotency_in_flight: Arc<KeysInFlight>,
    /// The configuration this replica runs with.
    pub running_config: Arc<RunningConfig>,
}

/// The configuration a replica runs with, as `GET /admin/v1/config` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunningConfig {
    /// Where its values came from: the defaults, the file, the variables (names only).
    pub source: String,
    /// When this replica started, RFC 3339.
    pub started_at: String,
    /// The effective configuration as TOML, secrets masked.
    pub toml: String,
}

/// Idempotency keys whose first request is running on this replica: a repeat meanwhile is told
/// so (409) rather than racing it through the log (where it would get the first answer anyway).
#[derive(Default)]
pub struct KeysInFlight {
    keys: Mutex<HashSet<(String, String)>>,
}

/// Holds a key in flight until dropped.
pub struct InFlight<'a> {
    keys: &'a KeysInFlight,
    key: (String, String),
}

impl KeysInFlight {
    /// Marks `key` of `scope` in flight; `None` if it is already.
    pub fn enter(&self, scope: &str, key: &str) -> Option<InFlight<'_>> {
        let key = (scope.to_string(), key.to_string());
        let fresh = self.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone());
        fresh.then_some(InFlight { keys: self, key })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.keys.keys.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

impl ApiState {
    /// Submits a catalog change and waits until this replica has applied it; answers what the
    /// apply did (the previous subscription, or the state's refusal). A change that could not be
    /// confirmed and applied in time is a 503 in `format` (it may still be applied later).
    pub async fn change(
        &self,
        format: Format,
        change: webhookd_core::catalog::Change,
    ) -> Result<Outcome, ApiError> {
        self.catalog.submit(change).await.map_err(|e| match e {
            CatalogError::Store(e) => match format {
                Format::Obp => ApiError::obp_internal(e),
                Format::Problem => ApiError::problem_internal(e),
            },
            unavailable => {
                tracing::warn!(error = %unavailable, "a catalog change was not applied in time");
                ApiError::refused(
                    format,
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "the change could not be confirmed in time and may still be applied: read it back \
                     before changing it again (a create retried with the same Idempotency-Key creates \
                     at most once)",
                )
            }
        })
    }
}
