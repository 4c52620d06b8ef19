//! `GET /api/v1/sensors` and `GET /api/v1/sensors/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::model::SensorId;
use crate::storage::SensorInfo;

use super::error::ApiError;
use super::state::AppState;

/// One sensor as the dashboard sees it.
#[derive(Debug, Serialize)]
pub struct SensorJson {
    pub sensor_id: String,
    pub count: u64,
    pub first_timestamp_ms: i64,
    pub last_timestamp_ms: i64,
}

impl From<SensorInfo> for SensorJson {
    fn from(info: SensorInfo) -> Self {
        Self {
            sensor_id: info.sensor_id.as_str().to_owned(),
            count: info.count,
            first_timestamp_ms: info.first_timestamp_ms,
            last_timestamp_ms: info.last_timestamp_ms,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SensorList {
    pub sensors: Vec<SensorJson>,
}

/// Only the sensors the caller may read: the others do not exist for it.
pub async fn list(
    State(state): State<AppState>,
    super::auth::Caller(caller): super::auth::Caller,
) -> Result<Json<SensorList>, ApiError> {
    let sensors = state.storage.sensors().await?;
    Ok(Json(SensorList {
        sensors: sensors
            .into_iter()
            .filter(|info| caller.sees(info.sensor_id.as_str()))
            .map(SensorJson::from)
            .collect(),
    }))
}

pub async fn get(
    State(state): State<AppState>,
    caller: super::auth::Caller,
    Path(id): Path<String>,
) -> Result<Json<SensorJson>, ApiError> {
    let id =
        SensorId::new(&id).map_err(|e| ApiError::InvalidParameter(format!("sensor id: {e}")))?;
    caller.read(&id)?;
    match state.storage.sensor(&id).await? {
        Some(info) => Ok(Json(info.into())),
        None => Err(ApiError::SensorNotFound(id)),
    }
}
