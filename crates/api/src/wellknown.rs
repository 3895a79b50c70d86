//! `GET /.well-known/jwks.json`: the public keys receivers verify signatures with.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use crate::state::ApiState;

/// The JWKS: ES256 keys (Rabo's detached JWS) and Ed25519 keys (Standard Webhooks `v1a`),
/// active and recently retired.
pub async fn jwks(State(state): State<ApiState>) -> impl IntoResponse {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = state.keys.current().jwks(now, state.retired_key_publish_secs);
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(body))
}
