//! `/api/v1/tokens` (admin): the HTTP face of `engine token`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

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
    _: Caller,
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
    _: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenJson>, ApiError> {
    let auth = auth_of(&state)?;
    let now = jiff::Timestamp::now().as_millisecond();
    let record = auth.store().revoke(&id, now).await.map_err(store_error)?;
    auth.refresh().await.map_err(store_error)?;
    tracing::info!(token = %record.id, "token revoked");
    Ok(Json(TokenJson::of(record, None)))
}
