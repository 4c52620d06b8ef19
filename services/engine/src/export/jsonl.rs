//! JSON Lines: one JSON object per row, keys the column names.
//!
//! Numbers are the shortest decimal that reads back to the same f64 (as in
//! the CSV); NaN and infinities, which JSON cannot hold, are the strings
//! `"NaN"`, `"inf"` and `"-inf"`, as NATS ingestion accepts them. An empty
//! cell (no point, an undefined aggregate) is `null`.

use super::table::{Cells, Chunk, Schema};
use crate::csv_format::write_short_decimal;

/// Writes chunks as JSON Lines.
#[derive(Debug, Clone)]
pub struct JsonlEncoder {
    long: bool,
    /// `"name":` of each column after `timestamp_ms`, escaped once.
    keys: Vec<Vec<u8>>,
    /// Each sensor id as a JSON string, escaped once.
    sensor_values: Vec<Vec<u8>>,
}

fn json_string(text: &str) -> Vec<u8> {
    serde_json::to_vec(text).unwrap_or_else(|_| b"\"\"".to_vec())
}

impl JsonlEncoder {
    pub fn new(schema: &Schema) -> Self {
        let keys = schema
            .columns
            .iter()
            .map(|c| {
                let mut key = json_string(&c.name);
                key.push(b':');
                key
            })
            .collect();
        let sensor_values = schema
            .sensors
            .iter()
            .map(|id| json_string(id.as_str()))
            .collect();
        Self {
            long: schema.long,
            keys,
            sensor_values,
        }
    }

    /// Appends one line per row of `chunk`.
    pub fn write_chunk(&self, chunk: &Chunk, out: &mut Vec<u8>) {
        let mut ints = itoa::Buffer::new();
        let mut floats = ryu::Buffer::new();
        out.reserve(chunk.len() * (32 + 24 * chunk.columns.len()));
        for row in 0..chunk.len() {
            out.push(b'{');
            if self.long {
                out.extend_from_slice(b"\"sensor_id\":");
                out.extend_from_slice(&self.sensor_values[chunk.sensors[row] as usize]);
                out.push(b',');
            }
            out.extend_from_slice(b"\"timestamp_ms\":");
            out.extend_from_slice(ints.format(chunk.timestamps[row]).as_bytes());
            for (column, key) in chunk.columns.iter().zip(&self.keys) {
                out.push(b',');
                out.extend_from_slice(key);
                if !column.is_present(row) {
                    out.extend_from_slice(b"null");
                    continue;
                }
                match &column.cells {
                    Cells::Float(values) => {
                        let value = values[row];
                        if value.is_finite() {
                            if !write_short_decimal(value, b'.', out) {
                                out.extend_from_slice(floats.format_finite(value).as_bytes());
                            }
                        } else if value.is_nan() {
                            out.extend_from_slice(b"\"NaN\"");
                        } else if value > 0.0 {
                            out.extend_from_slice(b"\"inf\"");
                        } else {
                            out.extend_from_slice(b"\"-inf\"");
                        }
                    }
                    Cells::Quality(qualities) => {
                        out.extend_from_slice(ints.format(qualities[row]).as_bytes());
                    }
                    Cells::Count(counts) => {
                        out.extend_from_slice(ints.format(counts[row]).as_bytes());
                    }
                }
            }
            out.extend_from_slice(b"}\n");
        }
    }
}
