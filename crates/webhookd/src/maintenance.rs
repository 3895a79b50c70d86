//! Housekeeping on a timer: auto-disabling of subscriptions that only fail, and retention of
//! the finished deliveries the delivery log follower has not removed yet (it removes them as it
//! folds; this catches up while no records arrive). Idempotency keys expire where the catalog
//! is applied. Each pass runs off the async threads in bounded
//! batches, so it never stalls deliveries.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use webhookd_catalog::Catalog;
use webhookd_core::catalog::SubscriptionPatch;
use webhookd_core::clock::Clock;
use webhookd_metrics::Metrics;
use webhookd_store::{Change, Store};

use crate::config::Config;

/// `[maintenance]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSettings {
    /// Seconds between passes.
    pub interval_seconds: u64,
}

/// `[retention]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Seconds a finished delivery is kept.
    pub keep_finished_seconds: u64,
    /// Deliveries removed per batch.
    pub batch: usize,
}

/// `[auto_disable]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoDisableSettings {
    /// Whether failing subscriptions are disabled.
    pub enabled: bool,
    /// Seconds of nothing but failures before a subscription is disabled.
    pub failing_for_seconds: u64,
}

/// Runs passes until `shutdown`; the first pass right after start.
pub async fn run(catalog: Catalog, config: Arc<Config>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let store = catalog.store().clone();
    let mut ticks = tokio::time::interval(Duration::from_secs(config.maintenance.interval_seconds.max(1)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Clock::real().now_ms();
        prune(&store, &config, &metrics, now, &shutdown).await;
        if config.auto_disable.enabled {
            if let Err(e) = auto_disable(&catalog, &config, &metrics, now).await {
                error!(error = %e, "auto-disable pass failed");
            }
        }
    }
}

/// Removes finished deliveries past retention, a batch at a time; stops between batches at
/// shutdown (the rest waits for the next pass).
async fn prune(store: &Store, config: &Config, metrics: &Metrics, now_ms: u64, shutdown: &CancellationToken) {
    let cutoff = now_ms.saturating_sub(config.retention.keep_finished_seconds.saturating_mul(1000));
    let batch = config.retention.batch.max(1);
    let mut total = 0;
    loop {
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.prune_finished(cutoff, batch)).await {
            Ok(Ok(removed)) => {
                total += removed;
                metrics.deliveries_pruned.inc_by(removed as u64);
                if removed < batch || shutdown.is_cancelled() {
                    break;
                }
            }
            Ok(Err(e)) => {
                error!(error = %e, "retention pass failed");
                break;
            }
            Err(e) => {
                error!(error = %e, "retention task failed");
                break;
            }
        }
    }
    if total > 0 {
        info!(removed = total, "finished deliveries past retention removed");
    }
}

/// One auto-disable pass: disables the subscriptions failing since before the configured
/// period, through the catalog (so every replica disables them); returns how many this replica
/// counted (those its own change found still active).
pub async fn auto_disable(
    catalog: &Catalog,
    config: &Config,
    metrics: &Metrics,
    now_ms: u64,
) -> anyhow::Result<usize> {
    let mut counted = 0;
    let store = catalog.store();
    let before = now_ms.saturating_sub(config.auto_disable.failing_for_seconds.saturating_mul(1000));
    for (id, since) in store.failing_since_before(before)? {
        let Some(subscription) = store.subscription(&id)? else {
            store.clear_failing(&id)?;
            continue;
        };
        if !subscription.is_active() {
            store.clear_failing(&id)?;
            continue;
        }
        let api = subscription.api();
        // Only the active flag: a change of another field meanwhile stays.
        let disable = Change::Patch { id: id.clone(), owner: None, patch: SubscriptionPatch::active(false) };
        // Every replica sees the same failures (the delivery log stream) and may disable the
        // subscription; the change applied while it was still active is the one that counts.
        let disabled_here = match catalog.submit(disable).await? {
            Ok(previous) => previous.is_some_and(|p| p.is_active()),
            // Deleted meanwhile: nothing to disable.
            Err(webhookd_store::StoreError::NotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        store.clear_failing(&id)?;
        if disabled_here {
            counted += 1;
            metrics.subscriptions_auto_disabled.with_label_values(&[api.as_str()]).inc();
            warn!(subscription_id = %id, failing_since = %webhookd_core::clock::rfc3339_ms(since), "subscription disabled after failing for the configured period; its pending retries continue");
        }
    }
    Ok(counted)
}
