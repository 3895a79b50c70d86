//! Every error the API answers, mapped to a response in one place: OBP's `{"code","message"}`
//! for OBP routes, RFC 9457 problem+json for Rabo routes.

use axum::http::{header, HeaderValue, StatusCode};
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

impl ApiError {
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
