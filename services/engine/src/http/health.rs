//! `GET /healthz` (liveness) and `GET /readyz` (readiness): what a load
//! balancer or an orchestrator asks before it sends traffic or restarts us.
//!
//! - Liveness fails only when a restart is what helps: the store refuses
//!   writes until it is restarted (a failed fsync).
//! - Readiness also fails while the store cannot take writes for now (a full
//!   disk, an unreachable PostgreSQL); it recovers by itself once there is
//!   room, so no restart. It also checks the other dependencies this engine
//!   was started with (NATS), each named in `checks`: a load balancer then
//!   sends traffic to the engines that can do their whole job.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::storage::StoreHealth;

use super::state::AppState;

#[derive(Debug, Serialize)]
pub struct HealthJson {
    /// `ok`, `degraded` or `failed`.
    pub status: &'static str,
    /// Why, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Readiness only, when there is more than the store to check: each
    /// dependency (`store`, `nats`) with `ok` or why not.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub checks: std::collections::BTreeMap<&'static str, String>,
}

fn health_json(health: StoreHealth) -> HealthJson {
    match health {
        StoreHealth::Ok => HealthJson {
            status: "ok",
            reason: None,
            checks: Default::default(),
        },
        StoreHealth::Degraded(reason) => HealthJson {
            status: "degraded",
            reason: Some(reason),
            checks: Default::default(),
        },
        StoreHealth::Failed(reason) => HealthJson {
            status: "failed",
            reason: Some(reason),
            checks: Default::default(),
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

/// Readiness: 200 only when reads and writes work and every other
/// dependency (NATS) is reachable; 503 while the disk is full, the store
/// has failed or is unreachable, or NATS is unreachable.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<HealthJson>) {
    let health = state.storage.health();
    let mut status = match health {
        StoreHealth::Ok => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut json = health_json(health);
    if !state.readiness.is_empty() {
        let store = json.reason.clone().unwrap_or_else(|| "ok".to_owned());
        json.checks.insert("store", store);
        for probe in state.readiness.iter() {
            let outcome = match (probe.check)() {
                Ok(()) => "ok".to_owned(),
                Err(why) => {
                    status = StatusCode::SERVICE_UNAVAILABLE;
                    if json.status == "ok" {
                        json.status = "degraded";
                        json.reason = Some(format!("{}: {why}", probe.name));
                    }
                    why
                }
            };
            json.checks.insert(probe.name, outcome);
        }
    }
    (status, Json(json))
}
