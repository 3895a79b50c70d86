//! Every error the API answers, mapped to a response in one place: OBP's `{"code","message"}`
//! for OBP routes, RFC 9457 problem+json for Rabo routes (and every other path).
//!
//! Handlers answer [`ApiError`]s. What the framework refuses before or around a handler (a body
//! too large, a request too slow, a query that does not parse, an unknown path or method) is
//! rewritten by [`uniform`] into the same two formats, chosen by the request's path, so a client
//! of either API never has to parse a third format.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error and the format it is answered in.
#[derive(Debug)]
pub enum ApiError {
    /// An OBP error: HTTP status and `OBP-NNNNN: text`.
    Obp {
        /// HTTP status (also the `code` field).
        status: StatusCode,
        /// The OBP message.
        message: String,
    },
    /// A Rabo problem: HTTP status and a clear detail.
    Problem {
        /// HTTP status.
        status: StatusCode,
        /// What went wrong, for the caller.
        detail: String,
    },
}

/// OBP's answer to a request without valid credentials.
pub const OBP_NOT_LOGGED_IN: &str = "OBP-20001: User not logged in. Authentication is required!";

/// The error format of a request, decided by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OBP's `{"code","message"}`: every path under `/obp/`.
    Obp,
    /// RFC 9457 problem+json: the Rabo, admin and operational paths, and unknown ones.
    Problem,
}

impl Format {
    /// The format a request for `path` is answered in.
    pub fn of_path(path: &str) -> Format {
        if path.starts_with("/obp/") {
            Format::Obp
        } else {
            Format::Problem
        }
    }
}

impl ApiError {
    /// A refusal of the request as such (its size, its pace, its path or method) in `format`.
    ///
    /// OBP codes for these are ours (OBP-1042x, see docs/api.md); a 5xx shows no detail on OBP
    /// routes, as OBP's own `OBP-50000` does not.
    pub fn refused(format: Format, status: StatusCode, detail: impl Into<String>) -> ApiError {
        let detail = detail.into();
        match format {
            Format::Problem => ApiError::problem(status, detail),
            Format::Obp if status.is_server_error() => ApiError::obp(status, "OBP-50000: Unknown Error."),
            Format::Obp => ApiError::obp(status, format!("{} {detail}", obp_refusal(status))),
        }
    }

    /// An OBP error.
    pub fn obp(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::Obp { status, message: message.into() }
    }

    /// A problem+json error.
    pub fn problem(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError::Problem { status, detail: detail.into() }
    }

    /// An OBP internal error; the cause is logged, never shown.
    pub fn obp_internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "OBP request failed");
        ApiError::obp(StatusCode::INTERNAL_SERVER_ERROR, "OBP-50000: Unknown Error.")
    }

    /// A Rabo internal error; the cause is logged, never shown.
    pub fn problem_internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "request failed");
        ApiError::problem(StatusCode::INTERNAL_SERVER_ERROR, "an internal error occurred; it has been logged")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Obp { status, message } => {
                let unauthorized = status == StatusCode::UNAUTHORIZED;
                let mut response = (status, axum::Json(json!({"code": status.as_u16(), "message": message})))
                    .into_response();
                if unauthorized {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"webhookd\""),
                    );
                }
                response
            }
            ApiError::Problem { status, detail } => {
                let body = json!({
                    "type": "about:blank",
                    "title": status.canonical_reason().unwrap_or("Error"),
                    "status": status.as_u16(),
                    "detail": detail,
                });
                let mut response = (status, body.to_string()).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
                if status == StatusCode::UNAUTHORIZED {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"webhookd\""),
                    );
                }
                response
            }
        }
    }
}

/// OBP code and title of a refusal by HTTP status.
fn obp_refusal(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "OBP-10421: Endpoint not found.",
        StatusCode::METHOD_NOT_ALLOWED => "OBP-10422: Method not allowed.",
        StatusCode::REQUEST_TIMEOUT => "OBP-10423: Request timeout.",
        StatusCode::PAYLOAD_TOO_LARGE => "OBP-10424: Request body too large.",
        StatusCode::URI_TOO_LONG => "OBP-10425: URI too long.",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "OBP-10426: Request headers too large.",
        _ => "OBP-10420: Invalid request.",
    }
}

/// Most bytes of a framework error's text kept as the detail.
const FRAMEWORK_TEXT_MAX: usize = 1024;

/// Middleware: an error answered by anything but a handler (axum's extractor rejections, the
/// tower-http limit, timeout and panic layers, the method router) is rewritten in the format of
/// the request's path. Answers already in JSON or problem+json pass unchanged.
pub async fn uniform(request: Request, next: Next) -> Response {
    let format = Format::of_path(request.uri().path());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    let status = response.status();
    if matches!(status, StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
        // The rest of the body was not read: do not wait for it, close after the answer.
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !(status.is_client_error() || status.is_server_error()) || is_api_format(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, FRAMEWORK_TEXT_MAX).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let detail = match status {
        // axum adds the `allow` header after every layer, so it is not known here.
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{method} is not allowed on {path}; the allow header lists the methods that are")
        }
        StatusCode::PAYLOAD_TOO_LARGE => crate::limits::body_too_large(),
        StatusCode::SERVICE_UNAVAILABLE if text.is_empty() => crate::limits::request_too_slow(),
        StatusCode::INTERNAL_SERVER_ERROR => "an internal error occurred; it has been logged".to_string(),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("refused").to_string(),
        _ => text,
    };
    let mut out = ApiError::refused(format, status, detail).into_response();
    for name in [header::ALLOW, header::CONNECTION] {
        if let Some(value) = parts.headers.get(&name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

/// Whether a response is already one of the API's own JSON answers.
fn is_api_format(response: &Response) -> bool {
    let Some(content_type) = response.headers().get(header::CONTENT_TYPE) else { return false };
    let essence = content_type.to_str().unwrap_or("").split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/problem+json")
}

/// The answer for a path no route serves, in the path's format.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    let detail = format!("no endpoint {method} {}", uri.path());
    ApiError::refused(Format::of_path(uri.path()), StatusCode::NOT_FOUND, detail)
}
