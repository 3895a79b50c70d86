//! Bearer-token authentication: the token's hash is looked up in the store; the token itself is
//! never logged or kept.

use axum::http::{header, HeaderMap};
use webhookd_core::auth::Caller;

use crate::state::ApiState;

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The authenticated caller; `Ok(None)` when the token is missing, unknown or revoked.
pub fn caller(state: &ApiState, headers: &HeaderMap) -> Result<Option<Caller>, webhookd_store::StoreError> {
    match bearer(headers) {
        Some(token) => state.store.authenticate(token),
        None => Ok(None),
    }
}
