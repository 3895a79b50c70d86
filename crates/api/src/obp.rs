//! OBP v4.0.0 Account Webhooks: create, enable/disable, list.
//!
//! The checks run in OBP's order and the first failing one answers: malformed JSON, missing
//! credentials, unknown bank, missing role, body of the wrong shape, bad trigger, bad boolean,
//! unknown webhook; then ours (url, method, protocol), which OBP does not check.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webhookd_core::auth::{roles, Caller};
use webhookd_core::catalog::{Owner, SubscriptionPatch};
use webhookd_core::destination::DestinationPolicy;
use webhookd_core::subscription::{Api, ObpWebhook, Subscription, Trigger};
use webhookd_store::{Change, StoreError};

use crate::auth;
use crate::destinations;
use crate::error::{ApiError, Format, OBP_NOT_LOGGED_IN};
use crate::state::ApiState;

/// An account webhook as OBP answers it (`is_active` a boolean).
#[derive(Serialize)]
pub struct AccountWebhookJson {
    account_webhook_id: String,
    bank_id: String,
    account_id: String,
    trigger_name: String,
    url: String,
    http_method: String,
    http_protocol: String,
    created_by_user_id: String,
    is_active: bool,
}

impl From<&ObpWebhook> for AccountWebhookJson {
    fn from(w: &ObpWebhook) -> AccountWebhookJson {
        AccountWebhookJson {
            account_webhook_id: w.account_webhook_id.to_string(),
            bank_id: w.bank_id.clone(),
            account_id: w.account_id.clone(),
            trigger_name: w.trigger.as_str().to_string(),
            url: w.url.clone(),
            http_method: w.http_method.clone(),
            http_protocol: w.http_protocol.clone(),
            created_by_user_id: w.created_by_user_id.clone(),
            is_active: w.is_active,
        }
    }
}

/// `AccountWebhookPostJson`: every field a string, `is_active` included.
#[derive(Deserialize)]
struct PostJson {
    account_id: String,
    trigger_name: String,
    url: String,
    http_method: String,
    http_protocol: String,
    is_active: String,
}

/// `AccountWebhookPutJson`.
#[derive(Deserialize)]
struct PutJson {
    account_webhook_id: String,
    is_active: String,
}

/// Query of the list endpoint.
#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
    offset: Option<String>,
    account_id: Option<String>,
    user_id: Option<String>,
}

const MAX_URL_LEN: usize = 1024;
const METHODS: [&str; 4] = ["POST", "PUT", "DELETE", "GET"];
const PROTOCOLS: [&str; 2] = ["HTTP/1.1", "HTTP/2.0"];

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::obp(StatusCode::BAD_REQUEST, message)
}

/// Checks 2 to 4: credentials, bank, role.
fn authorize(state: &ApiState, headers: &HeaderMap, bank_id: &str, role: &str) -> Result<Caller, ApiError> {
    let caller = auth::caller(state, headers)
        .map_err(ApiError::obp_internal)?
        .ok_or_else(|| ApiError::obp(StatusCode::UNAUTHORIZED, OBP_NOT_LOGGED_IN))?;
    if !state.obp.banks.iter().any(|b| b == bank_id) {
        return Err(ApiError::obp(
            StatusCode::NOT_FOUND,
            format!("OBP-30001: Bank not found. Please specify a valid value for BANK_ID. Current BankId is {bank_id}"),
        ));
    }
    if !caller.has_role(role, bank_id) {
        return Err(ApiError::obp(
            StatusCode::FORBIDDEN,
            format!("OBP-20006: User is missing one or more roles: {role} at Bank({bank_id})"),
        ));
    }
    Ok(caller)
}

/// Check 1: the body is JSON at all.
fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| bad_request("OBP-10001: Incorrect json format."))
}

/// Check 7: OBP's boolean strings.
fn parse_is_active(text: &str) -> Result<bool, ApiError> {
    match text.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad_request(
            "OBP-10019: Invalid Boolean. Could not convert value to a boolean type. Possible values of the json field is_active are true or false.",
        )),
    }
}

/// A create request that passed every check but the host's DNS resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccountWebhook {
    /// The account whose transactions fire it.
    pub account_id: String,
    /// The trigger.
    pub trigger: Trigger,
    /// The url as given (stored so).
    pub url: String,
    /// The url parsed and normalized; its host is resolved and checked next.
    pub destination: url::Url,
    /// HTTP method, upper case.
    pub http_method: String,
    /// HTTP protocol, upper case.
    pub http_protocol: String,
    /// Whether it starts active.
    pub is_active: bool,
}

/// Runs the create handler's body checks, in its order, without credentials: check 1, then 5
/// to 7 and ours up to the url's shape. The handler runs exactly these steps (with checks 2 to 4
/// between 1 and 5, and the DNS check after); public so that the fuzz target runs them too.
pub fn parse_create_body(body: &[u8], policy: &DestinationPolicy) -> Result<NewAccountWebhook, ApiError> {
    validate_create(parse_json(body)?, policy)
}

/// Checks 5 to 7 and ours on a create body that is JSON.
fn validate_create(
    value: serde_json::Value,
    policy: &DestinationPolicy,
) -> Result<NewAccountWebhook, ApiError> {
    let post: PostJson = serde_json::from_value(value).map_err(|_| {
        bad_request("OBP-10001: Incorrect json format. The Json body should be the AccountWebhookPostJson ")
    })?;
    let trigger = Trigger::parse(&post.trigger_name).ok_or_else(|| {
        bad_request(format!(
            "OBP-10039: Incorrect Trigger name:{}. Possible values are OnBalanceChange, OnCreditTransaction, OnDebitTransaction",
            post.trigger_name
        ))
    })?;
    let is_active = parse_is_active(&post.is_active)?;
    // Ours: OBP stores these unchecked; we refuse what cannot be delivered safely.
    let http_method = post.http_method.to_ascii_uppercase();
    if !METHODS.contains(&http_method.as_str()) {
        return Err(bad_request(format!(
            "OBP-10404: Invalid http_method {:?}. Possible values are POST, PUT, DELETE, GET",
            post.http_method
        )));
    }
    let http_protocol = post.http_protocol.to_ascii_uppercase();
    if !PROTOCOLS.contains(&http_protocol.as_str()) {
        return Err(bad_request(format!(
            "OBP-10405: Invalid http_protocol {:?}. Possible values are HTTP/1.1, HTTP/2.0",
            post.http_protocol
        )));
    }
    if post.account_id.trim().is_empty() || post.account_id.len() > 255 {
        return Err(bad_request("OBP-10406: Invalid account_id. It must be 1 to 255 characters."));
    }
    let destination = policy.check_url(&post.url, Some(MAX_URL_LEN)).map_err(invalid_url)?;
    Ok(NewAccountWebhook {
        account_id: post.account_id,
        trigger,
        url: post.url,
        destination,
        http_method,
        http_protocol,
        is_active,
    })
}

fn invalid_url(why: impl std::fmt::Display) -> ApiError {
    bad_request(format!("OBP-10407: Invalid url. {why}"))
}

/// `POST /obp/v4.0.0/banks/{BANK_ID}/account-web-hooks`
pub async fn create(
    State(state): State<ApiState>,
    Path(bank_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<AccountWebhookJson>), ApiError> {
    let value = parse_json(&body)?;
    let caller = authorize(&state, &headers, &bank_id, roles::CAN_CREATE_WEBHOOK)?;
    let new = validate_create(value, &state.destinations)?;
    destinations::check_resolved(&state.destinations, &new.destination).await.map_err(invalid_url)?;

    let webhook = ObpWebhook {
        account_webhook_id: Uuid::new_v4(),
        bank_id,
        account_id: new.account_id,
        trigger: new.trigger,
        url: new.url,
        http_method: new.http_method,
        http_protocol: new.http_protocol,
        created_by_user_id: caller.user_id,
        is_active: new.is_active,
        created_at_ms: now_ms(),
    };
    let change = Change::Create {
        subscription: Subscription::Obp(webhook.clone()),
        max_per_owner: None,
        idempotency: None,
    };
    state.change(Format::Obp, change).await?.map_err(|e| {
        tracing::error!(error = %e, "cannot create an account webhook");
        bad_request("OBP-30047: Cannot create Webhook")
    })?;
    tracing::info!(subscription_id = %webhook.account_webhook_id, bank_id = %webhook.bank_id, "account webhook created");
    Ok((StatusCode::CREATED, Json(AccountWebhookJson::from(&webhook))))
}

/// An enable/disable request that passed the body checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookUpdate {
    /// The webhook to change.
    pub account_webhook_id: Uuid,
    /// Its new state.
    pub is_active: bool,
}

/// Runs the update handler's body checks, in its order, without credentials: check 1, then 5,
/// 7 and the id's shape (an id that is no UUID is "not found", check 8). Public so that the fuzz
/// target runs exactly what the handler runs.
pub fn parse_update_body(body: &[u8]) -> Result<WebhookUpdate, ApiError> {
    validate_update(parse_json(body)?)
}

fn webhook_not_found() -> ApiError {
    bad_request("OBP-30050: Webhook not found. Please specify a valid value for account_webhook_id.")
}

/// Checks 5, 7 and the id's shape on an update body that is JSON.
fn validate_update(value: serde_json::Value) -> Result<WebhookUpdate, ApiError> {
    let put: PutJson = serde_json::from_value(value).map_err(|_| {
        bad_request("OBP-10001: Incorrect json format. The Json body should be the AccountWebhookPutJson ")
    })?;
    let is_active = parse_is_active(&put.is_active)?;
    let account_webhook_id = Uuid::parse_str(&put.account_webhook_id).map_err(|_| webhook_not_found())?;
    Ok(WebhookUpdate { account_webhook_id, is_active })
}

/// `PUT /obp/v4.0.0/banks/{BANK_ID}/account-web-hooks`: enables or disables a webhook.
pub async fn update(
    State(state): State<ApiState>,
    Path(bank_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AccountWebhookJson>, ApiError> {
    let value = parse_json(&body)?;
    authorize(&state, &headers, &bank_id, roles::CAN_UPDATE_WEBHOOK)?;
    let WebhookUpdate { account_webhook_id: id, is_active } = validate_update(value)?;
    // Only the flag changes (a field-level change, not a replace built from a local read), and
    // the bank is checked where the change is applied (a local read could be behind the log).
    let owner = Some(Owner { api: Api::Obp, id: bank_id.clone() });
    let patch = Change::Patch { id: id.to_string(), owner, patch: SubscriptionPatch::active(is_active) };
    let previous = state.change(Format::Obp, patch).await?.map_err(|e| match e {
        StoreError::NotFound(_) => webhook_not_found(),
        other => {
            tracing::error!(error = %other, "cannot update an account webhook");
            bad_request("OBP-30049: Cannot create Webhook")
        }
    })?;
    let webhook = match previous.map(|p| SubscriptionPatch::active(is_active).applied_to(&p)) {
        Some(Ok(Subscription::Obp(w))) => w,
        _ => return Err(webhook_not_found()),
    };
    tracing::info!(subscription_id = %webhook.account_webhook_id, is_active, "account webhook updated");
    Ok(Json(AccountWebhookJson::from(&webhook)))
}

/// The list answer.
#[derive(Serialize)]
pub struct WebHooksJson {
    web_hooks: Vec<AccountWebhookJson>,
}

/// `GET /obp/v4.0.0/management/banks/{BANK_ID}/account-web-hooks`
pub async fn list(
    State(state): State<ApiState>,
    Path(bank_id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<WebHooksJson>, ApiError> {
    authorize(&state, &headers, &bank_id, roles::CAN_GET_WEBHOOKS)?;
    let (limit, offset) = page(&query)?;
    let all = state.store.subscriptions_of_bank(&bank_id).map_err(ApiError::obp_internal)?;
    let web_hooks = all
        .iter()
        .filter_map(|s| match s {
            Subscription::Obp(w) => Some(w),
            Subscription::Rabo(_) => None,
        })
        .filter(|w| query.account_id.as_deref().is_none_or(|a| w.account_id == a))
        .filter(|w| query.user_id.as_deref().is_none_or(|u| w.created_by_user_id == u))
        .skip(offset)
        .take(limit)
        .map(AccountWebhookJson::from)
        .collect();
    Ok(Json(WebHooksJson { web_hooks }))
}

/// The `limit` and `offset` of a list query, checked as the list handler checks them (it calls
/// this); public so that the fuzz target runs it on arbitrary query strings.
pub fn page(query: &ListQuery) -> Result<(usize, usize), ApiError> {
    let limit = parse_bound("limit", query.limit.as_deref(), 50, 1)?;
    let offset = parse_bound("offset", query.offset.as_deref(), 0, 0)?;
    Ok((limit, offset))
}

/// An integer query parameter of at least `min`. An integer too large to represent is still an
/// integer >= `min`, as documented: it means "all of them" (a limit) or "past the end" (an offset).
fn parse_bound(name: &str, value: Option<&str>, default: usize, min: usize) -> Result<usize, ApiError> {
    let Some(text) = value else { return Ok(default) };
    match text.trim().parse::<i64>() {
        Ok(n) if n >= min as i64 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(usize::MAX),
        _ => Err(bad_request(format!(
            "OBP-10016: Incorrect filter Parameters in URL. {name} must be an integer >= {min}, got {text:?}"
        ))),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
