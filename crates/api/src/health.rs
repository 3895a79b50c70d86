//! Health probes for Kubernetes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use crate::state::ApiState;

/// `GET /metrics`: Prometheus text exposition. The store gauges are read at scrape time (each
/// is O(1) or one seek), so no timer keeps them fresh.
pub async fn metrics(State(state): State<ApiState>) -> impl axum::response::IntoResponse {
    let m = &state.metrics;
    let store = &state.store;
    m.deliveries_pending.set(store.pending_count() as i64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let oldest = store.oldest_pending_ms().ok().flatten().map_or(0, |at| now.saturating_sub(at));
    m.oldest_pending_age.set(oldest as f64 / 1000.0);
    if let Ok(size) = store.size_on_disk() {
        m.store_size.set(size as i64);
    }
    if let Ok(counts) = store.subscription_counts() {
        for (api, state, n) in counts {
            m.subscriptions.with_label_values(&[api.as_str(), state.as_str()]).set(n as i64);
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render())
}

/// Liveness: the process answers.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: store open, broker connected, consumer running.
pub async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<serde_json::Value>) {
    match (state.readiness)() {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "reason": reason})))
        }
    }
}
