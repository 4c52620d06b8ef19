//! The data model: sensor ids, points, batches of points and time ranges.
//!
//! A point is `(timestamp_ms, value, quality)` of one sensor. Timestamps are
//! epoch milliseconds (negative before 1970), values any `f64` kept bit-exactly
//! (including `-0.0`, subnormals, NaN payloads and infinities), quality an
//! OPC-style byte.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// OPC-style quality codes. Any byte is accepted and kept; these are the usual ones.
pub mod quality {
    /// The reading is good.
    pub const GOOD: u8 = 192;
    /// The reading is uncertain (a sensor drifting, a value substituted).
    pub const UNCERTAIN: u8 = 64;
    /// The reading is bad (a sensor failure, a communication loss).
    pub const BAD: u8 = 0;
}

/// The earliest timestamp the engine accepts: 0000-01-01T00:00:00Z.
///
/// Bounded so every stored point can be written as a calendar time in any
/// zone (RFC 3339, the `time_local` column), and so `i64::MIN`/`i64::MAX`
/// stay free as open range ends.
pub const MIN_TIMESTAMP_MS: i64 = -62_167_219_200_000;
/// The latest timestamp the engine accepts: 9999-12-29T23:59:59.999Z (the
/// last day that is still year 9999 in every time zone).
pub const MAX_TIMESTAMP_MS: i64 = 253_402_127_999_999;

/// Maximum length of a sensor id in bytes.
pub const MAX_SENSOR_ID_LEN: usize = 255;

/// The id of a sensor: 1 to 255 bytes of UTF-8 without control characters.
///
/// Real tag names contain `/`, `.`, `:`, spaces, commas, quotes and non-ASCII
/// letters (`Kessel Ü1/Temperatur`); all are valid. Cloning is cheap (`Arc<str>`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SensorId(Arc<str>);

/// Why a string is not a valid [`SensorId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSensorId {
    #[error("sensor id is empty")]
    Empty,
    #[error("sensor id is {0} bytes long; at most 255 are allowed")]
    TooLong(usize),
    #[error("sensor id contains the control character U+{0:04X}")]
    ControlCharacter(u32),
}

impl SensorId {
    /// Validates and wraps a sensor id.
    pub fn new(id: &str) -> Result<Self, InvalidSensorId> {
        if id.is_empty() {
            return Err(InvalidSensorId::Empty);
        }
        if id.len() > MAX_SENSOR_ID_LEN {
            return Err(InvalidSensorId::TooLong(id.len()));
        }
        if let Some(c) = id.chars().find(|c| c.is_control()) {
            return Err(InvalidSensorId::ControlCharacter(c as u32));
        }
        Ok(Self(Arc::from(id)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SensorId {
    type Err = InvalidSensorId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for SensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for SensorId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A pattern over sensor ids: `*` matches any run of characters except
/// `/`, `**` any run of characters, everything else itself. `plant/line-1/*`
/// matches `plant/line-1/pressure` but not `plant/line-1/a/b`; `**` matches
/// every sensor. Used by token scopes and retention rules alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorPattern {
    text: String,
    parts: Vec<PatternPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternPart {
    Literal(String),
    /// `*`: any run without `/`.
    Segment,
    /// `**`: any run.
    Any,
}

/// Why a string is not a valid [`SensorPattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPattern {
    #[error("the pattern is empty")]
    Empty,
    #[error("the pattern is {0} bytes long; at most 1024 are allowed")]
    TooLong(usize),
    #[error("the pattern contains the control character U+{0:04X}")]
    ControlCharacter(u32),
    #[error("`***` is ambiguous; use `**`")]
    TripleStar,
}

impl SensorPattern {
    pub fn new(text: &str) -> Result<Self, InvalidPattern> {
        if text.is_empty() {
            return Err(InvalidPattern::Empty);
        }
        if text.len() > 1024 {
            return Err(InvalidPattern::TooLong(text.len()));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(InvalidPattern::ControlCharacter(c as u32));
        }
        if text.contains("***") {
            return Err(InvalidPattern::TripleStar);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("**") {
                parts.push(PatternPart::Any);
                rest = after;
            } else if let Some(after) = rest.strip_prefix('*') {
                parts.push(PatternPart::Segment);
                rest = after;
            } else {
                let end = rest.find('*').unwrap_or(rest.len());
                parts.push(PatternPart::Literal(rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `sensor_id` matches the whole pattern.
    pub fn matches(&self, sensor_id: &str) -> bool {
        matches_parts(&self.parts, sensor_id)
    }
}

/// Glob matching in O(parts x length): `reach[j]` says whether the parts so
/// far can match the first `j` bytes of `text`. (Backtracking would be
/// exponential in the number of stars.) Bytes are safe here: `/` is ASCII,
/// and a literal, being UTF-8, never starts inside a character.
fn matches_parts(parts: &[PatternPart], text: &str) -> bool {
    let text = text.as_bytes();
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for part in parts {
        let mut next = vec![false; text.len() + 1];
        match part {
            PatternPart::Literal(literal) => {
                let literal = literal.as_bytes();
                for j in 0..=text.len() {
                    if reach[j] && text[j..].starts_with(literal) {
                        next[j + literal.len()] = true;
                    }
                }
            }
            PatternPart::Segment | PatternPart::Any => {
                let crosses_slash = matches!(part, PatternPart::Any);
                for j in 0..=text.len() {
                    next[j] = reach[j]
                        || (j > 0 && next[j - 1] && (crosses_slash || text[j - 1] != b'/'));
                }
            }
        }
        reach = next;
    }
    reach[text.len()]
}

impl FromStr for SensorPattern {
    type Err = InvalidPattern;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for SensorPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One reading of one sensor.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub timestamp_ms: i64,
    pub value: f64,
    pub quality: u8,
}

impl PartialEq for Point {
    /// Bit-exact: `NaN == NaN` when the bits agree, `-0.0 != 0.0`.
    fn eq(&self, other: &Self) -> bool {
        self.timestamp_ms == other.timestamp_ms
            && self.value.to_bits() == other.value.to_bits()
            && self.quality == other.quality
    }
}
impl Eq for Point {}

/// The largest stream sequence a [`Sample`] may carry (`2^63 - 1`). Versions
/// above it belong to direct writes, so a direct write outranks every point
/// that came from a stream.
pub const MAX_STREAM_SEQ: u64 = (1 << 63) - 1;

/// The lowest version of a direct write: every direct write outranks every
/// point from a stream. Points stored before versions existed have it.
pub const FIRST_DIRECT_VERSION: u64 = 1 << 63;

/// A point addressed to a sensor: the unit of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub sensor_id: SensorId,
    pub point: Point,
    /// Where the point stands in an ordered log it came from: the NATS
    /// JetStream stream sequence of its message (1 to [`MAX_STREAM_SEQ`]).
    /// `None` for a direct write (gRPC, import, the demo).
    ///
    /// A store orders the writes of one `(sensor, timestamp)` by version: a
    /// point from a stream has its `seq`, a direct write a version above
    /// every stream sequence that grows with each direct write. A write
    /// replaces the stored point only when its version is at least as high,
    /// so a message redelivered after a newer one was stored changes nothing.
    pub seq: Option<u64>,
}

impl Sample {
    /// A direct write of `point` to `sensor_id`.
    pub fn new(sensor_id: SensorId, point: Point) -> Self {
        Self {
            sensor_id,
            point,
            seq: None,
        }
    }
}

/// Points of one sensor in columns, the unit a scan yields.
///
/// Columnar because every consumer wants columns: the CSV encoder walks them
/// in lock step, the chart takes `[[xs], [ys]]`, the codec compresses each.
/// Within a scan, batches are in strictly increasing timestamp order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointBatch {
    pub timestamps: Vec<i64>,
    pub values: Vec<f64>,
    pub qualities: Vec<u8>,
}

impl PointBatch {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            timestamps: Vec::with_capacity(capacity),
            values: Vec::with_capacity(capacity),
            qualities: Vec::with_capacity(capacity),
        }
    }

    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    pub fn push(&mut self, point: Point) {
        self.timestamps.push(point.timestamp_ms);
        self.values.push(point.value);
        self.qualities.push(point.quality);
    }

    /// Appends every point of `other`, in its order.
    pub fn extend_from_batch(&mut self, other: &PointBatch) {
        self.timestamps.extend_from_slice(&other.timestamps);
        self.values.extend_from_slice(&other.values);
        self.qualities.extend_from_slice(&other.qualities);
    }

    /// Room for `additional` more points in every column.
    pub fn reserve(&mut self, additional: usize) {
        self.timestamps.reserve(additional);
        self.values.reserve(additional);
        self.qualities.reserve(additional);
    }

    /// Keeps the first `len` points.
    pub fn truncate(&mut self, len: usize) {
        self.timestamps.truncate(len);
        self.values.truncate(len);
        self.qualities.truncate(len);
    }

    pub fn clear(&mut self) {
        self.timestamps.clear();
        self.values.clear();
        self.qualities.clear();
    }

    pub fn point(&self, index: usize) -> Point {
        Point {
            timestamp_ms: self.timestamps[index],
            value: self.values[index],
            quality: self.qualities[index],
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Point> + '_ {
        (0..self.len()).map(|i| self.point(i))
    }
}

impl FromIterator<Point> for PointBatch {
    fn from_iter<I: IntoIterator<Item = Point>>(iter: I) -> Self {
        let mut batch = PointBatch::default();
        for point in iter {
            batch.push(point);
        }
        batch
    }
}

/// A half-open time range `[start_ms, end_ms)`: start inclusive, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl TimeRange {
    /// Every representable point.
    pub const ALL: TimeRange = TimeRange {
        start_ms: i64::MIN,
        end_ms: i64::MAX,
    };

    /// `[start_ms, end_ms)`; `None` when `start_ms > end_ms` (inverted).
    pub fn new(start_ms: i64, end_ms: i64) -> Option<Self> {
        (start_ms <= end_ms).then_some(Self { start_ms, end_ms })
    }

    pub fn contains(&self, timestamp_ms: i64) -> bool {
        self.start_ms <= timestamp_ms && timestamp_ms < self.end_ms
    }

    pub fn is_empty(&self) -> bool {
        self.start_ms >= self.end_ms
    }
}

/// Parses a duration given as a number and a unit: `500ms`, `90s`, `15m`,
/// `12h`, `400d`, `2w` (what retention rules and token expiries take).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h, d or w)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        other => return Err(format!("{other:?} is not a unit (ms, s, m, h, d or w)")),
    };
    let ms = number
        .checked_mul(unit_ms)
        .filter(|&ms| ms <= MAX_TIMESTAMP_MS as u64)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    if ms == 0 {
        return Err(format!("{text:?} is zero"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// Why a timestamp string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTimestamp {
    #[error("{0:?} is neither epoch milliseconds nor an RFC 3339 time")]
    Unparsable(String),
    #[error("{0} is outside the supported range (0000-01-01 to 9999-12-29)")]
    OutOfRange(i128),
}

/// Checks that a timestamp lies in `[MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS]`.
pub fn check_timestamp(timestamp_ms: i64) -> Result<i64, InvalidTimestamp> {
    if (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&timestamp_ms) {
        Ok(timestamp_ms)
    } else {
        Err(InvalidTimestamp::OutOfRange(timestamp_ms.into()))
    }
}

/// Parses the exclusive end of a range: a timestamp, or one past the last
/// one the engine accepts (`MAX_TIMESTAMP_MS + 1`), so that a range can
/// include a point at `MAX_TIMESTAMP_MS`.
pub fn parse_range_end(text: &str) -> Result<i64, InvalidTimestamp> {
    match text.trim().parse::<i64>() {
        Ok(ms) if ms == MAX_TIMESTAMP_MS + 1 => Ok(ms),
        _ => parse_timestamp(text),
    }
}

/// Parses a timestamp given as epoch milliseconds (`1767225600000`, `-5`) or
/// as RFC 3339 (`2026-01-01T00:00:00Z`, `2026-01-01T01:00:00.250+01:00`).
pub fn parse_timestamp(text: &str) -> Result<i64, InvalidTimestamp> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i128>() {
        return match i64::try_from(ms) {
            Ok(ms) => check_timestamp(ms),
            Err(_) => Err(InvalidTimestamp::OutOfRange(ms)),
        };
    }
    match text.parse::<jiff::Timestamp>() {
        Ok(ts) => check_timestamp(ts.as_millisecond()),
        Err(_) => Err(InvalidTimestamp::Unparsable(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_ids_accept_real_tag_names_and_reject_control_characters() {
        for id in [
            "Kessel Ü1/Temperatur",
            "plant.a:line-1,\"quoted\"",
            "x",
            &"é".repeat(127),
        ] {
            assert_eq!(SensorId::new(id).unwrap().as_str(), id);
        }
        assert_eq!(SensorId::new(""), Err(InvalidSensorId::Empty));
        assert_eq!(
            SensorId::new(&"a".repeat(256)),
            Err(InvalidSensorId::TooLong(256))
        );
        assert_eq!(
            SensorId::new("a\tb"),
            Err(InvalidSensorId::ControlCharacter(9))
        );
        assert_eq!(
            SensorId::new("a\u{7f}"),
            Err(InvalidSensorId::ControlCharacter(0x7f))
        );
    }

    #[test]
    fn timestamps_parse_from_milliseconds_and_rfc3339() {
        assert_eq!(parse_timestamp("1767225600000"), Ok(1_767_225_600_000));
        assert_eq!(parse_timestamp("-1"), Ok(-1));
        assert_eq!(
            parse_timestamp("2026-01-01T01:00:00.250+01:00"),
            Ok(1_767_225_600_250)
        );
        assert_eq!(
            parse_timestamp("1969-12-31T23:59:59.999Z"),
            Ok(-1),
            "before 1970 is valid"
        );
        assert_eq!(
            parse_timestamp(&MAX_TIMESTAMP_MS.to_string()),
            Ok(MAX_TIMESTAMP_MS)
        );
        assert_eq!(
            parse_timestamp("0000-01-01T00:00:00Z"),
            Ok(MIN_TIMESTAMP_MS)
        );
        assert!(matches!(
            parse_timestamp("253402128000000"),
            Err(InvalidTimestamp::OutOfRange(_))
        ));
        assert!(matches!(
            parse_timestamp("99999999999999999999999"),
            Err(InvalidTimestamp::OutOfRange(_))
        ));
        assert!(matches!(
            parse_timestamp("yesterday"),
            Err(InvalidTimestamp::Unparsable(_))
        ));
    }

    #[test]
    fn patterns_match_segments_and_whole_ids() {
        let matches = |pattern: &str, id: &str| SensorPattern::new(pattern).unwrap().matches(id);
        assert!(matches("**", "anything/at/all"));
        assert!(matches("plant/line-1/*", "plant/line-1/pressure"));
        assert!(!matches("plant/line-1/*", "plant/line-1/a/b"));
        assert!(!matches("plant/line-1/*", "plant/line-2/pressure"));
        assert!(matches("plant/**", "plant/a/b/c"));
        assert!(!matches("plant/**", "plantx/a"));
        assert!(matches("*/temp", "boiler/temp"));
        assert!(!matches("*/temp", "a/boiler/temp"));
        assert!(matches("Kessel Ü*/Temperatur", "Kessel Ü1/Temperatur"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axx/byyc"));
        assert!(matches("*", "top-level"));
        assert!(!matches("*", "a/b"));
        // Many stars cost no more than a few (no backtracking).
        let starry = format!("{}b", "*a".repeat(400));
        assert!(!matches(&starry, &"a".repeat(255)));
        assert_eq!(SensorPattern::new(""), Err(InvalidPattern::Empty));
        assert_eq!(SensorPattern::new("a***"), Err(InvalidPattern::TripleStar));
        assert_eq!(
            SensorPattern::new("a\nb"),
            Err(InvalidPattern::ControlCharacter(10))
        );
    }

    #[test]
    fn durations_have_units() {
        use std::time::Duration;
        assert_eq!(
            parse_duration("400d"),
            Ok(Duration::from_secs(400 * 86_400))
        );
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "10", "d", "1.5h", "-1d", "0s", "3y", "99999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn time_ranges_are_half_open() {
        let range = TimeRange::new(10, 20).unwrap();
        assert!(range.contains(10) && range.contains(19));
        assert!(!range.contains(20) && !range.contains(9));
        assert!(TimeRange::new(20, 10).is_none());
        assert!(TimeRange::new(5, 5).unwrap().is_empty());
    }
}
