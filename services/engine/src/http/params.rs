//! Query parameters shared by the export, series and import endpoints, each
//! checked with a message that names the parameter.

use crate::model::{SensorId, TimeRange, parse_timestamp};

use super::ApiError;

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

/// The half-open range `[start_ts, end_ts)`; both bounds required.
pub fn required_range(start: Option<&str>, end: Option<&str>) -> Result<TimeRange, ApiError> {
    let start_ms = timestamp("start_ts", start)?.ok_or_else(|| missing("start_ts"))?;
    let end_ms = timestamp("end_ts", end)?.ok_or_else(|| missing("end_ts"))?;
    range(start_ms, end_ms)
}

/// `[start_ms, end_ms)`, rejecting an inverted range (an empty one is fine).
pub fn range(start_ms: i64, end_ms: i64) -> Result<TimeRange, ApiError> {
    TimeRange::new(start_ms, end_ms).ok_or_else(|| {
        ApiError::InvalidParameter(format!(
            "start_ts ({start_ms}) is after end_ts ({end_ms}); the range is [start_ts, end_ts)"
        ))
    })
}

/// A boolean flag: `true`/`false`/`1`/`0`, absent = `false`.
pub fn flag(name: &str, raw: Option<&str>) -> Result<bool, ApiError> {
    match raw {
        None => Ok(false),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(ApiError::InvalidParameter(format!(
            "{name}: {other:?} is not true or false"
        ))),
    }
}

pub fn missing(name: &str) -> ApiError {
    ApiError::InvalidParameter(format!("{name} is required"))
}
