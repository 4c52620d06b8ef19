//! `GET /api/v1/export/summary`: how many rows an export will have, and
//! which columns, before downloading it (the dashboard's dialog and its
//! Excel row-limit warning).
//!
//! Counts come from the store's block summaries (a one-bucket
//! [`crate::storage::StorageEngine::downsample`]: blocks inside the range
//! are counted from their summaries, only the two at its edges are decoded),
//! so a summary costs little more for 100M points than for 1M.
//!
//! Rows: raw single and long, the points in the range; aggregates, the
//! buckets (times the sensors, long). Raw wide rows are the distinct
//! timestamps of all sensors, which summaries cannot tell: `rows` is then the
//! sum of the points (an upper bound) with `rows_exact: false`, exact only
//! for one sensor.

use serde::Serialize;

use super::request::{ExportRequest, Layout};
use super::table::Schema;
use super::{ExportError, sensor_infos};
use crate::storage::SharedStorage;

/// The answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ExportSummary {
    pub rows: u64,
    pub rows_exact: bool,
    /// Column names, in order (`time_local` and the like not included).
    pub columns: Vec<String>,
    pub sensors: Vec<SensorSummary>,
    /// The first and last point in the range over all sensors.
    pub first_timestamp_ms: Option<i64>,
    pub last_timestamp_ms: Option<i64>,
    /// The download's file name and the request in canonical form.
    pub file_name: String,
    pub query: String,
}

/// One sensor's points in the range.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SensorSummary {
    pub sensor_id: String,
    pub points: u64,
    pub first_timestamp_ms: Option<i64>,
    pub last_timestamp_ms: Option<i64>,
}

/// Summarises what `request` would export.
pub async fn summarize(
    storage: &SharedStorage,
    request: &ExportRequest,
) -> Result<ExportSummary, ExportError> {
    sensor_infos(storage, &request.sensors).await?;
    let mut sensors = Vec::with_capacity(request.sensors.len());
    for id in &request.sensors {
        let summary = storage.downsample(id, request.range, 1).await?;
        sensors.push(SensorSummary {
            sensor_id: id.as_str().to_owned(),
            points: summary.count,
            first_timestamp_ms: summary.points.timestamps.first().copied(),
            last_timestamp_ms: summary.points.timestamps.last().copied(),
        });
    }
    let points: u64 = sensors.iter().map(|s| s.points).sum();
    let (rows, rows_exact) = match &request.resample {
        Some(resample) => {
            let buckets = resample.grid.bucket_count(request.range);
            match request.layout {
                Layout::Wide => (buckets, true),
                Layout::Single | Layout::Long => (buckets * request.sensors.len() as u64, true),
            }
        }
        None => (points, request.layout != Layout::Wide || sensors.len() == 1),
    };
    Ok(ExportSummary {
        rows,
        rows_exact,
        columns: Schema::of(request)
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        first_timestamp_ms: sensors.iter().filter_map(|s| s.first_timestamp_ms).min(),
        last_timestamp_ms: sensors.iter().filter_map(|s| s.last_timestamp_ms).max(),
        sensors,
        file_name: request.file_name().1,
        query: request.canonical_query(),
    })
}
