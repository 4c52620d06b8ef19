//! `POST /api/v1/import?sensor_id=`: loads a CSV body in the export format,
//! streaming, all or nothing, with the rules of `engine import`
//! ([`read_points`]).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use futures_util::TryStreamExt;
use serde::Serialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::csv_format::read_points;
use crate::storage::StorageError;

use super::error::ApiError;
use super::params;
use super::state::AppState;

#[derive(Debug, Serialize)]
pub struct ImportResult {
    pub sensor_id: String,
    /// Rows read (a timestamp given twice counts twice; the later row wins).
    pub points: u64,
}

pub async fn import(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Body,
) -> Result<Json<ImportResult>, ApiError> {
    let Query(query) = query?;
    let sensor_id = params::sensor_id(query.get("sensor_id").map(String::as_str))?;

    // The CSV reader is synchronous (the csv crate): it reads the body
    // through a bridge on a blocking thread, a couple of batches ahead.
    let body = body.into_data_stream().map_err(std::io::Error::other);
    let batches = read_points(SyncIoBridge::new(StreamReader::new(body)));
    match state.storage.import(&sensor_id, batches).await {
        Ok(summary) => Ok(Json(ImportResult {
            sensor_id: sensor_id.as_str().to_owned(),
            points: summary.points,
        })),
        // In an import, rejected input is the CSV's ("line N: ...").
        Err(StorageError::InvalidInput(message)) => Err(ApiError::InvalidCsv(message)),
        Err(error) => Err(error.into()),
    }
}
