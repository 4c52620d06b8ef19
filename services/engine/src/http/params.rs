//! Query parameters shared by the series, import and live endpoints, each
//! checked with a message that names the parameter.

use crate::model::{SensorId, TimeRange, parse_timestamp};

use super::error::ApiError;

/// A required, valid `sensor_id`.
pub fn sensor_id(raw: Option<&str>) -> Result<SensorId, ApiError> {
    let raw = raw.ok_or_else(|| missing("sensor_id"))?;
    SensorId::new(raw).map_err(|e| ApiError::InvalidParameter(format!("sensor_id: {e}")))
}

/// A timestamp in epoch milliseconds or RFC 3339, if given.
pub fn timestamp(name: &str, raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    raw.map(|raw| {
        parse_timestamp(raw).map_err(|e| ApiError::InvalidParameter(format!("{name}: {e}")))
    })
    .transpose()
}

/// `[start_ms, end_ms)`, rejecting an inverted range (an empty one is fine).
pub fn range(start_ms: i64, end_ms: i64) -> Result<TimeRange, ApiError> {
    TimeRange::new(start_ms, end_ms).ok_or_else(|| {
        ApiError::InvalidParameter(format!(
            "start_ts ({start_ms}) is after end_ts ({end_ms}); the range is [start_ts, end_ts)"
        ))
    })
}

pub fn missing(name: &str) -> ApiError {
    ApiError::InvalidParameter(format!("{name} is required"))
}
