//! `POST /api/v1/import?sensor_id=`: loads a CSV body in the export format,
//! streaming, all or nothing, with the rules of `engine import`
//! ([`CsvPointReader`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::csv_format::{CsvError, CsvPointReader};
use crate::model::PointBatch;
use crate::storage::{PointStream, StorageError};

use super::{ApiError, AppState, params};

/// Rows parsed per batch handed to the store.
const IMPORT_BATCH_ROWS: usize = 16_384;

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

    // The CSV reader is synchronous (the csv crate); it runs on a blocking
    // thread reading the body through a bridge, and hands batches to the
    // store through a small channel, so memory stays bounded by the body size.
    let body = body.into_data_stream().map_err(std::io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(body));
    let (tx, rx) = mpsc::channel::<Result<PointBatch, StorageError>>(2);
    let csv_error: Arc<Mutex<Option<CsvError>>> = Arc::default();
    let csv_error_slot = Arc::clone(&csv_error);
    let parser = tokio::task::spawn_blocking(move || {
        let mut reader = CsvPointReader::new(reader);
        loop {
            let item = match reader.next_batch(IMPORT_BATCH_ROWS) {
                Ok(batch) if batch.is_empty() => return,
                Ok(batch) => Ok(batch),
                Err(error) => {
                    let message = error.to_string();
                    if let Ok(mut slot) = csv_error_slot.lock() {
                        *slot = Some(error);
                    }
                    Err(StorageError::InvalidInput(message))
                }
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    let batches: PointStream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();

    let result = state.storage.import(&sensor_id, batches).await;
    // The parser ends once the channel is closed; it holds nothing we need.
    drop(parser);
    match result {
        Ok(summary) => Ok(Json(ImportResult {
            sensor_id: sensor_id.as_str().to_owned(),
            points: summary.points,
        })),
        Err(error) => {
            let csv = csv_error.lock().ok().and_then(|mut slot| slot.take());
            match csv {
                Some(csv) => Err(ApiError::InvalidCsv(csv.to_string())),
                None => Err(error.into()),
            }
        }
    }
}
