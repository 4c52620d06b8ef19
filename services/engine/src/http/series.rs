//! `GET /api/v1/series`: chart data, M4-downsampled by the store.
//!
//! M4 (Jugel et al., VLDB 2014; see `storage::m4`): the range is cut into
//! `max_points / 4` equal time buckets and each keeps its first, minimum,
//! maximum and last point, in time order. A line drawn through them is
//! pixel-identical to one drawn through every point at that width, spikes
//! included. The store answers from per-block summaries where a block fits
//! one bucket, so the cost follows the bucket count, not the raw count.
//! Ranges with at most `max_points` points are returned raw.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use futures_util::StreamExt;
use serde::Serialize;

use crate::model::{PointBatch, SensorId};

use super::error::ApiError;
use super::params;
use super::state::AppState;

/// Points returned when the client does not say.
pub const DEFAULT_MAX_POINTS: usize = 1_000;
/// The most points one response may hold; larger requests are capped.
pub const MAX_MAX_POINTS: usize = 10_000;
/// Fewest points: one M4 bucket.
pub const MIN_MAX_POINTS: usize = 4;

/// The response: columnar, as uPlot takes it.
#[derive(Debug, Serialize)]
pub struct Series {
    pub sensor_id: String,
    pub start_ts: i64,
    pub end_ts: i64,
    /// Raw points in the range, before downsampling.
    pub count: u64,
    pub downsampled: bool,
    pub timestamps: Vec<i64>,
    /// `null` for NaN and infinities, which JSON cannot carry.
    pub values: Vec<Option<f64>>,
    pub qualities: Vec<u8>,
}

/// The checked query of a series request.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesParams {
    pub sensor_id: SensorId,
    pub start: Option<i64>,
    pub end: Option<i64>,
    /// Within [`MIN_MAX_POINTS`]..=[`MAX_MAX_POINTS`].
    pub max_points: usize,
}

impl SeriesParams {
    /// Checks the query's parameters (a function of its own so the fuzzer
    /// reaches it without a server).
    pub fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let get = |name: &str| query.get(name).map(String::as_str);
        let sensor_id = params::sensor_id(get("sensor_id"))?;
        let start = params::timestamp("start_ts", get("start_ts"))?;
        let end = params::timestamp("end_ts", get("end_ts"))?;
        let max_points = match get("max_points") {
            None => DEFAULT_MAX_POINTS,
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n) if n > 0 => n.clamp(MIN_MAX_POINTS, MAX_MAX_POINTS),
                _ => {
                    return Err(ApiError::InvalidParameter(format!(
                        "max_points: {raw:?} is not a positive integer"
                    )));
                }
            },
        };
        if let (Some(start), Some(end)) = (start, end) {
            params::range(start, end)?;
        }
        Ok(Self {
            sensor_id,
            start,
            end,
            max_points,
        })
    }
}

/// `sensor_id` (required), `start_ts`/`end_ts` (default: the sensor's first
/// point and one past its last), `max_points` (default 1000, capped at 10000).
pub async fn series(
    State(state): State<AppState>,
    caller: super::auth::Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Series>, ApiError> {
    let Query(query) = query?;
    let SeriesParams {
        sensor_id,
        start,
        end,
        max_points,
    } = SeriesParams::parse(&query)?;
    caller.read(&sensor_id)?;
    let Some(info) = state.storage.sensor(&sensor_id).await? else {
        return Err(ApiError::SensorNotFound(sensor_id));
    };
    let start_ms = start.unwrap_or(info.first_timestamp_ms);
    let end_ms = end.unwrap_or(info.last_timestamp_ms.saturating_add(1));
    let range = params::range(start_ms, end_ms)?;

    let summary = state
        .storage
        .downsample(&sensor_id, range, max_points / 4)
        .await?;
    let count = summary.count;
    let downsampled = count > max_points as u64;
    let points = if downsampled || summary.points.len() as u64 == count {
        summary.points
    } else {
        // Few enough to send every point: read them (at most `max_points`).
        let mut raw = PointBatch::with_capacity(count as usize);
        let mut scan = state.storage.scan(&sensor_id, range);
        while let Some(batch) = scan.next().await {
            let batch = batch?;
            raw.extend_from_batch(&batch);
        }
        raw
    };
    Ok(Json(Series {
        sensor_id: sensor_id.as_str().to_owned(),
        start_ts: range.start_ms,
        end_ts: range.end_ms,
        count,
        downsampled,
        timestamps: points.timestamps,
        values: points
            .values
            .into_iter()
            .map(|v| v.is_finite().then_some(v))
            .collect(),
        qualities: points.qualities,
    }))
}
