//! `GET /api/v1/series`: chart data, M4-downsampled over the scan stream.
//!
//! M4 (Jugel et al., VLDB 2014): the range is cut into `max_points / 4` equal
//! time buckets and each keeps its first, minimum, maximum and last point, in
//! time order. A line drawn through them is pixel-identical to one drawn
//! through every point at that width, spikes included, and memory is bounded
//! by `max_points` whatever the range holds. Ranges with at most `max_points`
//! points are returned raw.

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use futures_util::StreamExt;
use serde::Serialize;

use crate::http::{ApiError, AppState, params};
use crate::model::{Point, PointBatch, TimeRange};

/// Points returned when the client does not say.
pub const DEFAULT_MAX_POINTS: usize = 1_000;
/// The most points one response may hold; larger requests are capped.
pub const MAX_MAX_POINTS: usize = 10_000;
/// Fewest points: one M4 bucket.
const MIN_MAX_POINTS: usize = 4;

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

/// `sensor_id` (required), `start_ts`/`end_ts` (default: the sensor's first
/// point and one past its last), `max_points` (default 1000, capped at 10000).
pub async fn series(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Series>, ApiError> {
    let Query(query) = query?;
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
    let Some(info) = state.storage.sensor(&sensor_id).await? else {
        return Err(ApiError::SensorNotFound(sensor_id));
    };
    let start_ms = start.unwrap_or(info.first_timestamp_ms);
    let end_ms = end.unwrap_or(info.last_timestamp_ms.saturating_add(1));
    let range = params::range(start_ms, end_ms)?;

    let mut m4 = M4::new(range, max_points);
    let mut scan = state.storage.scan(&sensor_id, range);
    while let Some(batch) = scan.next().await {
        m4.push_batch(&batch?);
    }
    let (count, downsampled, points) = m4.finish();
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

/// One bucket's four points.
#[derive(Clone, Copy)]
struct Bucket {
    index: i128,
    first: Point,
    /// Smallest and largest finite-or-infinite value (NaN never wins).
    min: Option<Point>,
    max: Option<Point>,
    last: Point,
}

/// Streaming M4 over points in time order.
pub struct M4 {
    start_ms: i64,
    width: i128,
    max_points: usize,
    count: u64,
    /// Every point while there are at most `max_points`; dropped after.
    raw: Option<PointBatch>,
    out: PointBatch,
    bucket: Option<Bucket>,
}

impl M4 {
    pub fn new(range: TimeRange, max_points: usize) -> Self {
        let buckets = (max_points / 4).max(1) as i128;
        let span = (i128::from(range.end_ms) - i128::from(range.start_ms)).max(1);
        Self {
            start_ms: range.start_ms,
            width: (span + buckets - 1) / buckets,
            max_points,
            count: 0,
            raw: Some(PointBatch::default()),
            out: PointBatch::default(),
            bucket: None,
        }
    }

    pub fn push_batch(&mut self, batch: &PointBatch) {
        for point in batch.iter() {
            self.push(point);
        }
    }

    pub fn push(&mut self, point: Point) {
        self.count += 1;
        if let Some(raw) = &mut self.raw {
            if raw.len() < self.max_points {
                raw.push(point);
            } else {
                self.raw = None;
            }
        }
        let index = (i128::from(point.timestamp_ms) - i128::from(self.start_ms)) / self.width;
        let finite_or_inf = !point.value.is_nan();
        match &mut self.bucket {
            Some(bucket) if bucket.index == index => {
                if finite_or_inf {
                    if bucket.min.is_none_or(|m| point.value < m.value) {
                        bucket.min = Some(point);
                    }
                    if bucket.max.is_none_or(|m| point.value > m.value) {
                        bucket.max = Some(point);
                    }
                }
                bucket.last = point;
            }
            _ => {
                self.flush();
                let extreme = finite_or_inf.then_some(point);
                self.bucket = Some(Bucket {
                    index,
                    first: point,
                    min: extreme,
                    max: extreme,
                    last: point,
                });
            }
        }
    }

    fn flush(&mut self) {
        if let Some(bucket) = self.bucket.take() {
            let mut points = [
                Some(bucket.first),
                bucket.min,
                bucket.max,
                Some(bucket.last),
            ];
            points.sort_by_key(|p| p.map(|p| p.timestamp_ms));
            let mut previous: Option<i64> = None;
            for point in points.into_iter().flatten() {
                if previous != Some(point.timestamp_ms) {
                    self.out.push(point);
                    previous = Some(point.timestamp_ms);
                }
            }
        }
    }

    /// `(raw count, downsampled, points)`.
    pub fn finish(mut self) -> (u64, bool, PointBatch) {
        if let Some(raw) = self.raw.take() {
            return (self.count, false, raw);
        }
        self.flush();
        (self.count, true, self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(timestamp_ms: i64, value: f64) -> Point {
        Point {
            timestamp_ms,
            value,
            quality: 192,
        }
    }

    #[test]
    fn few_points_come_back_raw() {
        let mut m4 = M4::new(TimeRange::new(0, 100).unwrap(), 8);
        for t in 0..8 {
            m4.push(p(t, t as f64));
        }
        let (count, downsampled, points) = m4.finish();
        assert_eq!((count, downsampled, points.len()), (8, false, 8));
    }

    #[test]
    fn each_bucket_keeps_first_min_max_last_in_time_order() {
        // Two buckets of width 50 (max_points 8).
        let mut m4 = M4::new(TimeRange::new(0, 100).unwrap(), 8);
        let values = [5.0, 9.0, f64::NAN, -3.0, 4.0, 7.0];
        for (t, v) in values.iter().enumerate() {
            m4.push(p(t as i64 * 10, *v)); // 0..50 bucket 0: t=0,10,20,30,40
        }
        for t in 51..100 {
            m4.push(p(t, 1.0));
        }
        let (count, downsampled, points) = m4.finish();
        assert_eq!(count, 55);
        assert!(downsampled);
        // Bucket 0: first t0 (5), max t10 (9), min t30 (-3), last t40 (4); NaN
        // never wins. Bucket 1: first = max t50 (7), min t51 (1), last t99.
        assert_eq!(points.timestamps, vec![0, 10, 30, 40, 50, 51, 99]);
        assert_eq!(points.values[..4], [5.0, 9.0, -3.0, 4.0]);
        assert!(points.len() <= 8);
    }
}
