//! The webhookd HTTP API (axum): the JWKS receivers verify signatures with, health probes,
//! and (next) the subscription management APIs.
//!
//! # Layout
//! - [`state`]: what handlers share.
//! - [`wellknown`]: `GET /.well-known/jwks.json`.
//! - [`health`]: `GET /healthz`, `GET /readyz`, `GET /metrics`.

pub mod health;
pub mod state;
pub mod wellknown;

use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use state::{ApiState, Readiness};

/// Errors of the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listener failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// All routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(wellknown::jwks))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown`, then finishes requests in progress.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
