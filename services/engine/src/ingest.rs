//! Ingestion from message brokers: the JSON point format and its counters;
//! [`nats`] consumes it from NATS JetStream.
//!
//! A message is one point or a JSON array of points:
//!
//! ```json
//! {"sensor_id": "plant/boiler-1/temperature", "timestamp_ms": 1767225600000, "value": 21.5, "quality": 192}
//! ```
//!
//! `quality` is optional (default 192, good); `value` is a number or one of
//! the strings `"NaN"`, `"inf"`, `"-inf"` (JSON has no literal for them; any
//! string Rust's `f64` parser takes is accepted, case-insensitively).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::model::{Point, Sample, SensorId, check_timestamp, quality};

pub mod nats;

/// Why a message was not understood. The message is dropped (and counted),
/// never retried: retrying cannot make it valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedMessage(pub String);

/// Counters of an ingestion source, readable while it runs.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Messages written (then acknowledged).
    pub messages: AtomicU64,
    /// Points written.
    pub points: AtomicU64,
    /// Messages dropped as malformed.
    pub malformed: AtomicU64,
    /// Store writes that failed (their messages are redelivered).
    pub write_failures: AtomicU64,
    /// Times the source (re)connected.
    pub connects: AtomicU64,
    /// Whether the source's server is reachable right now (for `/readyz`).
    pub connected: std::sync::atomic::AtomicBool,
}

/// A copy of [`IngestStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestSnapshot {
    pub messages: u64,
    pub points: u64,
    pub malformed: u64,
    pub write_failures: u64,
    pub connects: u64,
}

impl IngestStats {
    pub fn snapshot(&self) -> IngestSnapshot {
        IngestSnapshot {
            messages: self.messages.load(Ordering::Relaxed),
            points: self.points.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
        }
    }
}

#[derive(Deserialize)]
struct JsonPoint<'a> {
    /// Borrowed from the payload unless it has escapes: no allocation per
    /// point for the usual message of one sensor's points.
    #[serde(borrow)]
    sensor_id: Cow<'a, str>,
    timestamp_ms: i64,
    value: JsonValue,
    #[serde(default = "good")]
    quality: u8,
}

fn good() -> u8 {
    quality::GOOD
}

/// A value given as a JSON number or as a string (for NaN and infinities).
struct JsonValue(f64);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = JsonValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or \"NaN\", \"inf\", \"-inf\"")
            }
            fn visit_f64<E>(self, v: f64) -> Result<JsonValue, E> {
                Ok(JsonValue(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<JsonValue, E> {
                Ok(JsonValue(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<JsonValue, E> {
                Ok(JsonValue(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonValue, E> {
                v.trim()
                    .parse::<f64>()
                    .map(JsonValue)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Parses one message: a JSON point or an array of them. All points are
/// validated (sensor id, timestamp range, quality) so that a store write of
/// valid messages cannot be rejected for one bad point.
pub fn parse_message(payload: &[u8]) -> Result<Vec<Sample>, MalformedMessage> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    let points: Vec<JsonPoint> = if first == Some(&b'[') {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice(payload).map(|p| vec![p])
    }
    .map_err(|e| MalformedMessage(format!("not a JSON point or array of points: {e}")))?;
    let mut samples = Vec::with_capacity(points.len());
    let mut last: Option<SensorId> = None;
    for (index, p) in points.into_iter().enumerate() {
        let sensor_id = match &last {
            Some(id) if id.as_str() == p.sensor_id.as_ref() => id.clone(),
            _ => {
                let id = SensorId::new(&p.sensor_id).map_err(|e| {
                    MalformedMessage(format!("point {index}: invalid sensor_id: {e}"))
                })?;
                last = Some(id.clone());
                id
            }
        };
        let timestamp_ms = check_timestamp(p.timestamp_ms)
            .map_err(|e| MalformedMessage(format!("point {index}: timestamp_ms {e}")))?;
        samples.push(Sample {
            sensor_id,
            seq: None,
            point: Point {
                timestamp_ms,
                value: p.value.0,
                quality: p.quality,
            },
        });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_arrays_and_non_finite_values() {
        let one = parse_message(
            br#"{"sensor_id": "Kessel \u00dc1/Temperatur", "timestamp_ms": 1767225600000, "value": 21.5}"#,
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].sensor_id.as_str(), "Kessel Ü1/Temperatur");
        assert_eq!(one[0].point.quality, 192);
        assert_eq!(one[0].point.value, 21.5);

        let many = parse_message(
            br#" [{"sensor_id":"a","timestamp_ms":1,"value":"NaN","quality":0},
                 {"sensor_id":"a","timestamp_ms":2,"value":"inf"},
                 {"sensor_id":"b","timestamp_ms":-3,"value":"-inf"},
                 {"sensor_id":"b","timestamp_ms":4,"value":7}]"#,
        )
        .unwrap();
        assert_eq!(many.len(), 4);
        assert!(many[0].point.value.is_nan());
        assert_eq!(many[0].point.quality, 0);
        assert_eq!(many[1].point.value, f64::INFINITY);
        assert_eq!(many[2].point.value, f64::NEG_INFINITY);
        assert_eq!(many[2].point.timestamp_ms, -3);
        assert_eq!(many[3].point.value, 7.0);
        assert!(parse_message(b"[]").unwrap().is_empty());
    }

    /// The value of a one-point message whose `value` is the JSON text `number`.
    fn parsed_value(number: &str) -> f64 {
        let message = format!(r#"{{"sensor_id":"a","timestamp_ms":1,"value":{number}}}"#);
        parse_message(message.as_bytes()).unwrap()[0].point.value
    }

    /// Every number is parsed exactly as Rust's correctly rounded parser
    /// reads it, whatever its form: the shortest form a publisher prints,
    /// long and exponent forms, integers, `-0`. Without serde_json's
    /// `float_roundtrip` about one shortest form in ten came back one unit
    /// in the last place off.
    #[test]
    fn numbers_are_parsed_bit_exactly() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut checked = 0;
        while checked < 20_000 {
            let value = f64::from_bits(next());
            if !value.is_finite() {
                continue;
            }
            checked += 1;
            let shortest = serde_json::to_string(&value).unwrap();
            for text in [shortest, format!("{value:.40e}"), format!("{value:e}")] {
                let expected: f64 = text.parse().unwrap();
                assert_eq!(parsed_value(&text).to_bits(), expected.to_bits(), "{text}");
            }
            assert_eq!(
                parsed_value(&format!("{value:e}")).to_bits(),
                value.to_bits()
            );
        }
        for text in [
            "91.63583055104459",
            "-0",
            "-0.0",
            "0",
            "5e-324",
            "2.4703282292062328e-324",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "9007199254740993",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "0.1000000000000000055511151231257827021181583404541015625",
        ] {
            let expected: f64 = text.parse().unwrap();
            assert_eq!(parsed_value(text).to_bits(), expected.to_bits(), "{text}");
        }
        assert_eq!(parsed_value("-0").to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn rejects_malformed_messages_whole() {
        for bad in [
            &b"not json"[..],
            br#"{"sensor_id":"a","timestamp_ms":1}"#,
            br#"{"sensor_id":"","timestamp_ms":1,"value":1}"#,
            br#"{"sensor_id":"a","timestamp_ms":1,"value":"warm"}"#,
            br#"{"sensor_id":"a","timestamp_ms":1,"value":1,"quality":256}"#,
            br#"{"sensor_id":"a","timestamp_ms":99999999999999999,"value":1}"#,
            br#"[{"sensor_id":"a","timestamp_ms":1,"value":1},{"sensor_id":"a\n","timestamp_ms":1,"value":1}]"#,
            br#"{"sensor_id":"a","timestamp_ms":1.5,"value":1}"#,
            b"",
            b"\xff\xfe",
        ] {
            assert!(parse_message(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
