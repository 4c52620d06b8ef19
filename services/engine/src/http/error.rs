//! [`ApiError`]: every way an HTTP request can fail, mapped to a status and a
//! JSON body in exactly one place ([`IntoResponse`] below).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::export::ExportError;
use crate::model::SensorId;
use crate::storage::StorageError;

/// Seconds a client is asked to wait after a 429 before trying again.
const RETRY_AFTER_SECONDS: &str = "1";

/// An error answered before any byte of a response body has gone out.
///
/// The body is always `{"error": "<code>", "message": "<what is wrong>"}`;
/// the dashboard and scripts branch on `error`, people read `message`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A missing, unparsable or inconsistent query parameter: 400.
    #[error("{0}")]
    InvalidParameter(String),
    /// An uploaded CSV broke the import format: 400, naming the line.
    #[error("{0}")]
    InvalidCsv(String),
    /// The sensor has no points: 404.
    #[error("sensor {0:?} not found")]
    SensorNotFound(SensorId),
    /// Several sensors of one request have no points: 404 naming each.
    #[error("{}", crate::export::not_found_message(.0))]
    SensorsNotFound(Vec<SensorId>),
    /// No such API route: 404.
    #[error("no API route {0}")]
    RouteNotFound(String),
    /// The route exists but not for this method: 405.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// An upload is larger than the server takes: 413.
    #[error("the body is larger than the {0} bytes this server takes (--import-max-bytes)")]
    PayloadTooLarge(u64),
    /// An upload stalled: no bytes for longer than the server waits: 408.
    #[error("the body stalled: no data for {0} s (--import-idle-timeout)")]
    BodyTimeout(u64),
    /// Too many exports at once: 429 with `Retry-After`, answered at once
    /// instead of queueing without bound.
    #[error("too many exports are running; retry in {RETRY_AFTER_SECONDS} s")]
    TooManyRequests,
    /// Missing, malformed, unknown, expired or revoked credentials: 401
    /// with `WWW-Authenticate: Bearer`.
    #[error("{0}: send Authorization: Bearer TOKEN or sign in")]
    Unauthorized(crate::auth::Unauthorized),
    /// Valid credentials without the right scope: 403.
    #[error("{0}")]
    Forbidden(String),
    /// Too many failed sign-ins or token checks from one address: 429.
    #[error("too many failed authentications from this address; retry later")]
    TooManyFailures,
    /// A named token does not exist: 404.
    #[error("no token with id {0:?}")]
    TokenNotFound(String),
    /// The audit trail cannot be written (or read): 503. An export is
    /// refused rather than streamed without its record.
    #[error("the audit trail cannot be written: {0}")]
    AuditUnavailable(String),
    /// The store failed. Rejected input is the client's fault (400); anything
    /// else is logged here once and answered as a generic 500.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<ExportError> for ApiError {
    fn from(error: ExportError) -> Self {
        match error {
            ExportError::InvalidParameter(message) => ApiError::InvalidParameter(message),
            ExportError::SensorsNotFound(mut ids) if ids.len() == 1 => {
                ApiError::SensorNotFound(ids.remove(0))
            }
            ExportError::SensorsNotFound(ids) => ApiError::SensorsNotFound(ids),
            ExportError::Storage(error) => ApiError::Storage(error),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidParameter(rejection.body_text())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl ApiError {
    /// The HTTP status and the stable machine-readable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidParameter(_) => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            ApiError::InvalidCsv(_) => (StatusCode::BAD_REQUEST, "invalid_csv"),
            ApiError::SensorNotFound(_) | ApiError::SensorsNotFound(_) => {
                (StatusCode::NOT_FOUND, "sensor_not_found")
            }
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::TooManyFailures => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::TokenNotFound(_) => (StatusCode::NOT_FOUND, "token_not_found"),
            ApiError::AuditUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            ApiError::Storage(StorageError::InvalidInput(_)) => {
                (StatusCode::BAD_REQUEST, "invalid_input")
            }
            ApiError::Storage(StorageError::Full(_)) => {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ApiError::Storage(StorageError::Unsupported(_)) => {
                (StatusCode::NOT_IMPLEMENTED, "not_implemented")
            }
            ApiError::Storage(StorageError::Closed | StorageError::Failed(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            ApiError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            // Internal details go to the log, not to the client.
            tracing::error!(error = %self, "request failed");
            "internal error; see the server log".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: code,
                message: message.clone(),
            }),
        )
            .into_response();
        if matches!(
            self,
            ApiError::Unauthorized(_)
                | ApiError::Forbidden(_)
                | ApiError::TooManyRequests
                | ApiError::TooManyFailures
        ) {
            // What the audit trail records of a refusal.
            response
                .extensions_mut()
                .insert(super::audit::Refusal(message.clone()));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"engine\""),
            );
        }
        if matches!(self, ApiError::TooManyRequests | ApiError::TooManyFailures) {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}
