//! `POST /api/v1/import?sensor_id=`: loads a CSV body in the export format,
//! streaming, all or nothing, with the rules of `engine import`
//! ([`read_points`]).
//!
//! The store stages the rows as they arrive without holding up any other
//! writer; the body is still bounded, in size and in how long it may stall,
//! so a stuck or endless upload ends with a clear answer and nothing stored.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::audit::{Actor, Outcome, Via, WriteKind, WriteSession};
use crate::csv_format::read_points;
use crate::storage::StorageError;

use super::error::ApiError;
use super::params;
use super::state::AppState;

/// Bounds of an import's body (shared state, so the router's state holds it).
pub use super::state::ImportLimits;

#[derive(Debug, Serialize)]
pub struct ImportResult {
    pub sensor_id: String,
    /// Rows read (a timestamp given twice counts twice; the later row wins).
    pub points: u64,
}

pub async fn import(
    State(state): State<AppState>,
    caller: super::auth::Caller,
    client: super::audit::Client,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    body: Body,
) -> Result<Json<ImportResult>, ApiError> {
    let Query(query) = query?;
    let sensor_id = params::sensor_id(query.get("sensor_id").map(String::as_str))?;
    caller.write(&sensor_id)?;
    // Recorded when it ends; `aborted` if the client leaves mid-upload.
    let mut session = WriteSession::start(
        state.audit.as_ref(),
        WriteKind::Import,
        Actor::of(Via::Http, Some(&caller.0), client.0),
    );
    session.sensor(sensor_id.as_str());
    let result = import_body(&state, &sensor_id, body).await;
    match &result {
        Ok(imported) => {
            session.stored(imported.points);
            session.finish(Outcome::Completed, None);
        }
        Err(error) => session.finish(Outcome::Failed, Some(error.to_string())),
    }
    result
}

async fn import_body(
    state: &AppState,
    sensor_id: &crate::model::SensorId,
    body: Body,
) -> Result<Json<ImportResult>, ApiError> {
    // The CSV reader is synchronous (the csv crate): it reads the body
    // through a bridge on a blocking thread, a couple of batches ahead.
    let breach = Arc::new(OnceLock::new());
    let body = Box::pin(bounded(body, state.import_limits, Arc::clone(&breach)));
    let batches = read_points(SyncIoBridge::new(StreamReader::new(body)));
    let result = state.storage.import(sensor_id, batches).await;
    // A broken bound surfaces in the CSV reader as a read error; answer
    // with what really happened.
    if let Some(error) = breach.get() {
        return Err(match error {
            Breach::TooLarge => ApiError::PayloadTooLarge(state.import_limits.max_bytes),
            Breach::Stalled => ApiError::BodyTimeout(state.import_limits.idle_timeout.as_secs()),
        });
    }
    match result {
        Ok(summary) => Ok(Json(ImportResult {
            sensor_id: sensor_id.as_str().to_owned(),
            points: summary.points,
        })),
        // In an import, rejected input is the CSV's ("line N: ...").
        Err(StorageError::InvalidInput(message)) => Err(ApiError::InvalidCsv(message)),
        Err(error) => Err(error.into()),
    }
}

/// Which bound of the body was broken.
#[derive(Debug, Clone, Copy)]
enum Breach {
    TooLarge,
    Stalled,
}

/// The body's bytes, ending in an error (and recording why in `breach`) once
/// more than `max_bytes` came, or nothing came for `idle_timeout`.
fn bounded(
    body: Body,
    limits: ImportLimits,
    breach: Arc<OnceLock<Breach>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let chunks = body.into_data_stream();
    futures_util::stream::unfold(
        (chunks, 0u64, false),
        move |(mut chunks, mut received, done)| {
            let breach = Arc::clone(&breach);
            async move {
                if done {
                    return None;
                }
                let fail = |why: Breach, message: &str| {
                    let _ = breach.set(why);
                    std::io::Error::other(message.to_owned())
                };
                let item = match tokio::time::timeout(limits.idle_timeout, chunks.next()).await {
                    Err(_) => Err(fail(Breach::Stalled, "the upload stalled")),
                    Ok(None) => return None,
                    Ok(Some(Err(error))) => Err(std::io::Error::other(error)),
                    Ok(Some(Ok(bytes))) => {
                        received += bytes.len() as u64;
                        if received > limits.max_bytes {
                            Err(fail(Breach::TooLarge, "the upload is too large"))
                        } else {
                            Ok(bytes)
                        }
                    }
                };
                let done = item.is_err();
                Some((item, (chunks, received, done)))
            }
        },
    )
}
