//! `GET /healthz` (liveness) and `GET /readyz` (readiness): what a load
//! balancer or an orchestrator asks before it sends traffic or restarts us.
//!
//! - Liveness fails only when a restart is what helps: the store refuses
//!   writes until it is restarted (a failed fsync).
//! - Readiness also fails while the store cannot take writes for now (a full
//!   disk); it recovers by itself once there is room, so no restart.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::storage::StoreHealth;

use super::AppState;

#[derive(Debug, Serialize)]
pub struct HealthJson {
    /// `ok`, `degraded` or `failed`.
    pub status: &'static str,
    /// Why, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn health_json(health: StoreHealth) -> HealthJson {
    match health {
        StoreHealth::Ok => HealthJson {
            status: "ok",
            reason: None,
        },
        StoreHealth::Degraded(reason) => HealthJson {
            status: "degraded",
            reason: Some(reason),
        },
        StoreHealth::Failed(reason) => HealthJson {
            status: "failed",
            reason: Some(reason),
        },
    }
}

/// Liveness: 200 while serving, even with a full disk; 503 once the store
/// refuses writes until a restart.
pub async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<HealthJson>) {
    let health = state.storage.health();
    let status = match health {
        StoreHealth::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (status, Json(health_json(health)))
}

/// Readiness: 200 only when reads and writes work; 503 while the disk is
/// full or the store has failed.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<HealthJson>) {
    let health = state.storage.health();
    let status = match health {
        StoreHealth::Ok => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(health_json(health)))
}
