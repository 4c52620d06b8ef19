//! `/api/v1/tokens` (admin): the HTTP face of `engine token`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::audit::{Actor, AuditEvent, Via};
use crate::auth::{TokenError, TokenRecord, TokenStoreError};

use super::auth::Caller;
use super::error::ApiError;
use super::state::AppState;

/// A token as lists show it: never the secret, nor its hash.
#[derive(Debug, Serialize)]
pub struct TokenJson {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub last_used_ms: Option<i64>,
}

impl TokenJson {
    pub fn of(record: TokenRecord, last_used_ms: Option<i64>) -> Self {
        Self {
            id: record.id,
            name: record.name,
            scopes: record.scopes,
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            revoked_ms: record.revoked_ms,
            last_used_ms,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CreateToken {
    name: String,
    scopes: Vec<String>,
    /// e.g. `90d`; absent: never expires.
    #[serde(default)]
    expires_in: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedJson {
    #[serde(flatten)]
    pub token: TokenJson,
    /// Shown this once; only its hash is kept.
    pub secret: String,
}

fn store_error(error: TokenStoreError) -> ApiError {
    match error {
        TokenStoreError::NotFound(id) => ApiError::TokenNotFound(id),
        other => ApiError::Storage(crate::storage::StorageError::Backend(other.to_string())),
    }
}

fn auth_of(state: &AppState) -> Result<&std::sync::Arc<crate::auth::Authenticator>, ApiError> {
    state.auth.as_ref().ok_or_else(|| {
        ApiError::InvalidParameter("this server runs with --no-auth: it has no tokens".into())
    })
}

/// `GET /api/v1/tokens`.
pub async fn list(State(state): State<AppState>, _: Caller) -> Result<Response, ApiError> {
    let auth = auth_of(&state)?;
    auth.flush_uses().await.map_err(store_error)?;
    let last_used = auth.store().last_used().await.map_err(store_error)?;
    let tokens: Vec<TokenJson> = auth
        .store()
        .all()
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|record| {
            let used = last_used.get(&record.id).copied();
            TokenJson::of(record, used)
        })
        .collect();
    Ok(Json(serde_json::json!({ "tokens": tokens })).into_response())
}

/// `POST /api/v1/tokens` `{"name", "scopes": [...], "expires_in"?}`: 201
/// with the secret, shown once.
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    client: super::audit::Client,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let auth = auth_of(&state)?;
    let Json(body) = body.map_err(|e| ApiError::InvalidParameter(e.body_text()))?;
    let expires = body
        .expires_in
        .as_deref()
        .map(crate::model::parse_duration)
        .transpose()
        .map_err(ApiError::InvalidParameter)?;
    let created = crate::auth::create_token(&**auth.store(), &body.name, &body.scopes, expires)
        .await
        .map_err(|e| match e {
            TokenError::Invalid(message) => ApiError::InvalidParameter(message),
            TokenError::Store(e) => store_error(e),
        })?;
    // A token nobody can see was made is not made: without its record, it
    // is revoked again and the request refused.
    if let Some(audit) = &state.audit {
        let record = &created.record;
        let event = AuditEvent::TokenCreated {
            actor: Actor::of(Via::Http, Some(&caller), client.0),
            target_token_id: record.id.clone(),
            target_name: record.name.clone(),
            scopes: record.scopes.clone(),
            expires_ms: record.expires_ms,
        };
        if let Err(error) = audit.record_durable(event).await {
            tracing::error!(%error, token = %record.id, "token not created: its audit record cannot be written");
            let now = jiff::Timestamp::now().as_millisecond();
            auth.store()
                .revoke(&record.id, now)
                .await
                .map_err(store_error)?;
            return Err(ApiError::AuditUnavailable(
                "the token was not created (see the server log)".into(),
            ));
        }
    }
    auth.refresh().await.map_err(store_error)?;
    tracing::info!(token = %created.record.id, name = %created.record.name, "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedJson {
            token: TokenJson::of(created.record, None),
            secret: created.secret,
        }),
    )
        .into_response())
}

/// `DELETE /api/v1/tokens/{id}`: revokes at once.
pub async fn revoke(
    State(state): State<AppState>,
    Caller(caller): Caller,
    client: super::audit::Client,
    Path(id): Path<String>,
) -> Result<Json<TokenJson>, ApiError> {
    let auth = auth_of(&state)?;
    let now = jiff::Timestamp::now().as_millisecond();
    let record = auth.store().revoke(&id, now).await.map_err(store_error)?;
    auth.refresh().await.map_err(store_error)?;
    // A revocation is never held back by the audit trail: it applies
    // first, and a failure to record it is logged.
    if let Some(audit) = &state.audit {
        let event = AuditEvent::TokenRevoked {
            actor: Actor::of(Via::Http, Some(&caller), client.0),
            target_token_id: record.id.clone(),
            target_name: record.name.clone(),
        };
        if let Err(error) = audit.record_durable(event).await {
            tracing::error!(%error, token = %record.id, "token revoked, but its audit record cannot be written");
        }
    }
    tracing::info!(token = %record.id, "token revoked");
    Ok(Json(TokenJson::of(record, None)))
}
