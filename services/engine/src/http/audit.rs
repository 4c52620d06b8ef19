//! `GET /api/v1/audit` (admin): the audit trail, filtered; and what the
//! other handlers share to record into it (the client's address, refusals).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::Response;

use crate::audit::{Actor, Audit, AuditEvent, AuditFilter, AuditPage, Via};
use crate::model::parse_timestamp;

use super::auth::Caller;
use super::error::ApiError;
use super::state::AppState;

/// Records `GET /api/v1/audit` answers at most.
pub const MAX_LIMIT: usize = 10_000;
/// ... and without `limit`.
pub const DEFAULT_LIMIT: usize = 1_000;

/// The client's address (put on every request by [`super::serve`]); `None`
/// for a router called without a socket (tests).
#[derive(Debug, Clone, Copy)]
pub struct Client(pub Option<SocketAddr>);

impl Client {
    pub fn of(extensions: &axum::http::Extensions) -> Self {
        Self(
            extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

/// Why a request was refused, put on the response by [`ApiError`] for the
/// audit trail (the message the client got).
#[derive(Debug, Clone)]
pub struct Refusal(pub String);

/// Records a 401, 403 or 429 answer (rate-limited, see
/// [`Audit::refused`]). Sign-ins record their own failures.
pub fn record_refusal(
    audit: &Audit,
    method: &Method,
    path: &str,
    client: Client,
    principal: Option<&crate::auth::Principal>,
    response: &Response,
) {
    let status = response.status();
    if !matches!(
        status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
    ) || (method == Method::POST && path == "/api/v1/session")
    {
        return;
    }
    audit.refused(AuditEvent::Refused {
        actor: Actor::of(Via::Http, principal, client.0),
        status: status.as_u16().to_string(),
        method: method.to_string(),
        path: path.to_owned(),
        reason: response.extensions().get::<Refusal>().map(|r| r.0.clone()),
    });
}

/// `GET /api/v1/audit?since=&token=&sensor=&event=&after_seq=&limit=`:
/// records oldest first, at most `limit` (1,000; up to 10,000);
/// `truncated` says there are more (ask again with `after_seq`).
pub async fn list(
    State(state): State<AppState>,
    _: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query?;
    let audit = state
        .audit
        .as_ref()
        .ok_or_else(|| ApiError::AuditUnavailable("this server keeps no audit trail".into()))?;
    let text = |name: &str| query.get(name).filter(|v| !v.is_empty()).cloned();
    let since_ms = text("since")
        .map(|v| parse_timestamp(&v))
        .transpose()
        .map_err(|e| ApiError::InvalidParameter(format!("since: {e}")))?;
    let number = |name: &str| {
        text(name)
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| ApiError::InvalidParameter(format!("{name}: not a whole number")))
    };
    let after_seq = number("after_seq")?;
    let limit = number("limit")?.map_or(DEFAULT_LIMIT, |n| n as usize);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::InvalidParameter(format!(
            "limit: 1 to {MAX_LIMIT}"
        )));
    }
    let filter = AuditFilter {
        since_ms,
        token: text("token"),
        sensor: text("sensor"),
        event: text("event"),
        after_seq,
        limit: Some(limit),
    };
    let page = audit.sink().read(&filter).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read the audit trail");
        ApiError::AuditUnavailable(e.to_string())
    })?;
    Ok(Json(page))
}
