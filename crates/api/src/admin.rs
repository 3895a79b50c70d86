//! The delivery admin API (role `CanManageDeliveries`): the delivery log of a subscription or an
//! event with every attempt, redelivery of one delivery, bulk recovery of a subscription; and
//! where this replica stands on the catalog log. Errors are problem+json.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webhookd_core::auth::roles;
use webhookd_core::delivery::{AttemptRecord, Delivery, DeliveryState};
use webhookd_core::retry::Schedule;
use webhookd_delivery::RedeliverError;
use webhookd_store::{DeliveriesOf, DeliveryFilter};

use crate::auth;
use crate::error::ApiError;
use crate::state::ApiState;

/// One attempt as the log shows it.
#[derive(Serialize)]
pub struct AttemptJson {
    attempt: u32,
    at: String,
    duration_ms: u64,
    status: Option<u16>,
    response_excerpt: String,
    error: Option<String>,
    outcome: DeliveryState,
}

/// One delivery with its log.
#[derive(Serialize)]
pub struct DeliveryJson {
    id: Uuid,
    event_id: Uuid,
    api: &'static str,
    subscription_id: String,
    trigger: String,
    method: String,
    url: String,
    state: DeliveryState,
    attempts: u32,
    next_attempt_at: Option<String>,
    occurred_at: String,
    created_at: String,
    finished_at: Option<String>,
    last_status: Option<u16>,
    last_error: Option<String>,
    retry_schedule: Schedule,
    attempt_log: Vec<AttemptJson>,
}

use webhookd_core::clock::rfc3339_ms as rfc3339;

fn view(state: &ApiState, d: Delivery) -> Result<DeliveryJson, ApiError> {
    let log = state.store.attempts_of(&d.id).map_err(ApiError::problem_internal)?;
    Ok(DeliveryJson {
        id: d.id,
        event_id: d.event_id,
        api: d.api.as_str(),
        subscription_id: d.subscription_id,
        trigger: d.trigger,
        method: d.method,
        url: d.url,
        state: d.state,
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at_ms.map(rfc3339),
        occurred_at: rfc3339(u64::try_from(d.occurred_at_ms).unwrap_or(0)),
        created_at: rfc3339(d.created_at_ms),
        finished_at: d.finished_at_ms.map(rfc3339),
        last_status: d.last_status,
        last_error: d.last_error,
        retry_schedule: d.schedule.unwrap_or_else(|| state.dispatch.schedule()),
        attempt_log: log.into_iter().map(attempt_view).collect(),
    })
}

fn attempt_view(a: AttemptRecord) -> AttemptJson {
    AttemptJson {
        attempt: a.attempt,
        at: rfc3339(a.at_ms),
        duration_ms: a.duration_ms,
        status: a.status,
        response_excerpt: a.response_excerpt,
        error: a.error,
        outcome: a.outcome,
    }
}

/// 401 without a valid token, 403 without the role.
fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let caller = auth::caller(state, headers)
        .map_err(ApiError::problem_internal)?
        .ok_or_else(|| ApiError::problem(StatusCode::UNAUTHORIZED, "a valid bearer token is required"))?;
    if !caller.has_role(roles::CAN_MANAGE_DELIVERIES, "*") {
        return Err(ApiError::problem(
            StatusCode::FORBIDDEN,
            format!("the role {} is required", roles::CAN_MANAGE_DELIVERIES),
        ));
    }
    Ok(())
}

/// Query of the list. The numbers are read here rather than by the extractor, so that a bad
/// one gets a sentence naming it and an integer too large for a machine word is still read as
/// the integer it is.
#[derive(Deserialize)]
pub struct ListQuery {
    subscription_id: Option<String>,
    event_id: Option<String>,
    state: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// An integer query parameter in `min..=max`, or its default; too large to represent counts as
/// larger than any `max`.
fn integer(
    name: &str,
    text: Option<&str>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ApiError> {
    let Some(text) = text else { return Ok(default) };
    let n = match text.trim().parse::<u64>() {
        Ok(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Some(usize::MAX),
        Err(_) => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        _ => {
            let range = if max == usize::MAX {
                format!("an integer >= {min}")
            } else {
                format!("an integer from {min} to {max}")
            };
            Err(ApiError::problem(StatusCode::BAD_REQUEST, format!("{name} must be {range}, got {text:?}")))
        }
    }
}

/// An RFC 3339 time given as `name` (a query parameter or a body field) as unix milliseconds;
/// a time before 1970 counts as 1970.
fn instant(name: &str, text: Option<&str>) -> Result<Option<u64>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| Some(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)))
        .map_err(|_| {
            ApiError::problem(
                StatusCode::BAD_REQUEST,
                format!("{name} must be an RFC 3339 time such as 2026-11-20T09:00:00Z, got {text:?}"),
            )
        })
}

/// `GET /admin/v1/deliveries?[subscription_id=|event_id=]&state=&since=&until=&limit=&offset=`
pub async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&state, &headers)?;
    let bad = |detail: String| ApiError::problem(StatusCode::BAD_REQUEST, detail);
    let filter = match q.state.as_deref() {
        None => None,
        Some("pending") => Some(DeliveryState::Pending),
        Some("delivered") => Some(DeliveryState::Delivered),
        Some("failed") => Some(DeliveryState::Failed),
        Some("misconfigured") => Some(DeliveryState::Misconfigured),
        Some(other) => {
            return Err(bad(format!(
                "state must be pending, delivered, failed or misconfigured, got {other:?}"
            )))
        }
    };
    let limit = integer("limit", q.limit.as_deref(), 50, 1, 1000)?;
    let offset = integer("offset", q.offset.as_deref(), 0, 0, usize::MAX)?;
    let filter = DeliveryFilter {
        state: filter,
        since_ms: instant("since", q.since.as_deref())?,
        until_ms: instant("until", q.until.as_deref())?,
    };
    // An event by its UUID, or by the `ev_` id a Rabo receiver got in `x-smartpay-event-id`.
    let event_ids = match &q.event_id {
        None => Vec::new(),
        Some(e) => match (Uuid::parse_str(e), webhookd_core::ids::event_ids_of_rabo(e)) {
            (Ok(id), _) => vec![id],
            (_, Some(ids)) => ids,
            _ => {
                return Err(bad(format!(
                "event_id must be an event's UUID or its Rabo id (ev_ and 21 letters or digits), got {e:?}"
            )))
            }
        },
    };
    if q.subscription_id.is_some() && q.event_id.is_some() {
        return Err(bad("give at most one of subscription_id and event_id".into()));
    }
    // A page may read far into the view (every delivery, filtered by state): off the async
    // workers, like the catalog digest.
    let (store, subscription) = (state.store.clone(), q.subscription_id.clone());
    let page = tokio::task::spawn_blocking(move || {
        let of = match (&subscription, event_ids.is_empty()) {
            (Some(s), _) => DeliveriesOf::Subscription(s),
            (None, false) => DeliveriesOf::Events(&event_ids),
            (None, true) => DeliveriesOf::All,
        };
        store.deliveries_page(of, &filter, offset, limit)
    })
    .await
    .map_err(ApiError::problem_internal)?
    .map_err(ApiError::problem_internal)?;
    let deliveries = page.into_iter().map(|d| view(&state, d)).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(serde_json::json!({ "deliveries": deliveries })))
}

fn delivery_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::problem(StatusCode::NOT_FOUND, format!("no delivery {text}")))
}

/// `GET /admin/v1/deliveries/{delivery_id}`
pub async fn get(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<DeliveryJson>, ApiError> {
    authorize(&state, &headers)?;
    let uuid = delivery_id(&id)?;
    let d = state
        .store
        .delivery(&uuid)
        .map_err(ApiError::problem_internal)?
        .ok_or_else(|| ApiError::problem(StatusCode::NOT_FOUND, format!("no delivery {id}")))?;
    Ok(Json(view(&state, d)?))
}

/// `POST /admin/v1/deliveries/{delivery_id}/redeliver`: a failed or misconfigured delivery is
/// sent again now with a new schedule, keeping its event id.
pub async fn redeliver(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<DeliveryJson>), ApiError> {
    authorize(&state, &headers)?;
    let uuid = delivery_id(&id)?;
    let d = state.dispatch.redeliver(&uuid).await.map_err(redelivery_error)?;
    tracing::info!(event_id = %d.event_id, subscription_id = %d.subscription_id, delivery_id = %d.id, "redelivery requested");
    Ok((StatusCode::ACCEPTED, Json(view(&state, d)?)))
}

/// Body of a bulk recovery.
#[derive(Deserialize)]
pub struct RecoverJson {
    since: String,
}

/// `POST /admin/v1/subscriptions/{subscription_id}/recover`: every failed delivery of the
/// subscription created at or after `since` is sent again with a new schedule.
pub async fn recover(
    State(state): State<ApiState>,
    Path(subscription_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    authorize(&state, &headers)?;
    let body: RecoverJson = serde_json::from_slice(&body).map_err(|e| {
        ApiError::problem(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"since\": \"<RFC 3339 time>\"}}: {e}"),
        )
    })?;
    let since_ms = instant("since", Some(&body.since))?.unwrap_or(0);
    let recovered = state.dispatch.recover(&subscription_id, since_ms).await.map_err(redelivery_error)?;
    tracing::info!(subscription_id = %subscription_id, recovered = recovered.len(), "bulk recovery requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"recovered": recovered.len(), "delivery_ids": recovered})),
    ))
}

fn redelivery_error(e: RedeliverError) -> ApiError {
    match e {
        RedeliverError::NotFound(id) => ApiError::problem(StatusCode::NOT_FOUND, format!("no delivery {id}")),
        e @ RedeliverError::NotFinished { .. } => ApiError::problem(StatusCode::CONFLICT, e.to_string()),
        e @ RedeliverError::Unavailable(_) => {
            ApiError::problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        RedeliverError::Store(e) => ApiError::problem_internal(e),
    }
}

/// Where this replica stands on the catalog log.
#[derive(Serialize)]
pub struct CatalogJson {
    applied_offset: Option<u64>,
    caught_up: bool,
    digest: String,
}

/// How often the position and the digest are read again when a record was applied in between.
const DIGEST_TRIES: usize = 5;

/// `GET /admin/v1/catalog`: the offset of the last catalog record applied here, whether this
/// replica has caught up, and a digest of its catalog as applied (equal on replicas that applied
/// as far). The position is read before and after the digest, so the two belong together.
pub async fn catalog(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<CatalogJson>, ApiError> {
    authorize(&state, &headers)?;
    for _ in 0..DIGEST_TRIES {
        let before = state.catalog.applied_offset();
        let store = state.store.clone();
        // A scan of the whole catalog: off the async workers.
        let digest = tokio::task::spawn_blocking(move || store.catalog_digest())
            .await
            .map_err(ApiError::problem_internal)?
            .map_err(ApiError::problem_internal)?;
        if state.catalog.applied_offset() == before {
            return Ok(Json(CatalogJson {
                applied_offset: before,
                caught_up: state.catalog.is_caught_up(),
                digest,
            }));
        }
    }
    Err(ApiError::problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the catalog kept changing while it was read; ask again",
    ))
}

/// `GET /admin/v1/config`: the configuration this replica runs with (secrets masked), where
/// its values came from, and when it started. `webhookd config show --running` prints it.
pub async fn config(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Json<crate::state::RunningConfig>, ApiError> {
    authorize(&state, &headers)?;
    Ok(Json(state.running_config.as_ref().clone()))
}
