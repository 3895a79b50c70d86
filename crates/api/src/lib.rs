//! The webhookd HTTP API (axum): the two subscription management APIs (OBP v4.0.0 Account
//! Webhooks, Rabo Smart Pay Webhook Subscriptions), the JWKS receivers verify signatures with,
//! health probes, metrics, and the OpenAPI document.
//!
//! # Layout
//! - [`obp`]: OBP account webhooks, with OBP's checks in OBP's order.
//! - [`rabo`]: Rabo subscriptions, idempotency keys, verify.
//! - [`admin`]: the delivery log, redelivery and recovery (role `CanManageDeliveries`).
//! - [`auth`]: bearer tokens.
//! - [`destinations`]: refusing urls that point inside.
//! - [`error`]: every error mapped to OBP's or RFC 9457's format, in one place.
//! - [`limits`]: request size and time bounds, and the HTTP server loop that enforces them.
//! - [`settings`]: `[obp]` and `[rabo]`.
//! - [`state`]: what handlers share.
//! - [`wellknown`]: `GET /.well-known/jwks.json`.
//! - [`health`]: `GET /healthz`, `GET /readyz`, `GET /metrics`.

pub mod admin;
pub mod auth;
pub mod destinations;
pub mod error;
pub mod health;
pub mod limits;
pub mod obp;
pub mod rabo;
pub mod settings;
pub mod state;
pub mod tls;
pub mod wellknown;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use settings::{ObpSettings, RaboSettings};
pub use state::{ApiState, Readiness};

/// The OpenAPI 3.1 document of every route, served at `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// Errors of the API server itself (request errors are [`error::ApiError`]).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Every route: method, path, handler. The router is built from this table, and a test checks
/// it against the OpenAPI document in both directions.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<ApiState>)> {
    const OBP_BANK: &str = "/obp/v4.0.0/banks/{bank_id}/account-web-hooks";
    const OBP_MANAGEMENT: &str = "/obp/v4.0.0/management/banks/{bank_id}/account-web-hooks";
    const RABO_ONE: &str = "/v3/webhooks/subscriptions/{subscription_id}";
    vec![
        (Method::POST, OBP_BANK, post(obp::create)),
        (Method::PUT, OBP_BANK, put(obp::update)),
        (Method::GET, OBP_MANAGEMENT, get(obp::list)),
        (Method::GET, "/v3/webhooks/events", get(rabo::event_types)),
        (Method::GET, "/v3/webhooks/subscriptions", get(rabo::list)),
        (Method::POST, "/v3/webhooks/subscriptions", post(rabo::create)),
        (Method::GET, RABO_ONE, get(rabo::get)),
        (Method::PATCH, RABO_ONE, patch(rabo::update)),
        (Method::DELETE, RABO_ONE, delete(rabo::delete)),
        (Method::POST, "/v3/webhooks/subscriptions/{subscription_id}/verify", post(rabo::verify)),
        (Method::GET, "/admin/v1/deliveries", get(admin::list)),
        (Method::GET, "/admin/v1/deliveries/{delivery_id}", get(admin::get)),
        (Method::POST, "/admin/v1/deliveries/{delivery_id}/redeliver", post(admin::redeliver)),
        (Method::POST, "/admin/v1/subscriptions/{subscription_id}/recover", post(admin::recover)),
        (Method::GET, "/admin/v1/catalog", get(admin::catalog)),
        (Method::GET, "/admin/v1/config", get(admin::config)),
        (Method::GET, "/.well-known/jwks.json", get(wellknown::jwks)),
        (Method::GET, "/healthz", get(health::healthz)),
        (Method::GET, "/readyz", get(health::readyz)),
        (Method::GET, "/metrics", get(health::metrics)),
        (Method::GET, "/openapi.json", get(openapi)),
    ]
}

/// All routes, with the request bounds of [`limits`] and every error in its API's format.
///
/// Layers, outermost first: errors of the framework rewritten in the path's format; panics
/// answered 500; URI and header sizes; the body size by `Content-Length`; the request timeout;
/// the body read in full within its own deadline; then the route.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(limits::buffer_body))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, limits::REQUEST_TIMEOUT))
        .layer(RequestBodyLimitLayer::new(limits::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(limits::check_head))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(axum::middleware::from_fn(error::uniform))
        .with_state(state)
}

/// Serves the API on `listener` (over TLS when `tls` is given) until `shutdown`, then finishes
/// requests in progress.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<tls::Tls>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    limits::serve(listener, router(state), tls, shutdown).await;
    Ok(())
}

/// A handler panicked: logged here, answered 500 (and put in its API's format by
/// [`error::uniform`]); the connection and the server carry on.
fn panicked(cause: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    let message = cause
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| cause.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "a request handler panicked");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
