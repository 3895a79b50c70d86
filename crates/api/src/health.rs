//! Health probes for Kubernetes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;

use crate::state::ApiState;

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<ApiState>) -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
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
