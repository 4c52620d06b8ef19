//! CSV of export tables: several sensors (long, wide) and aggregates, with
//! the options of [`CsvOptions`] (Excel preset included).

use super::table::{Cells, Chunk, Schema};
use crate::csv_format::{
    CsvOptions, FieldWriter, MAX_INT_BYTES, MAX_VALUE_BYTES, UTF8_BOM, text_field,
    write_excel_local_time, write_float, write_local_time,
};

/// Writes export tables ([`Schema`] + [`Chunk`]s) as CSV: several sensors
/// (long, wide) and aggregates. For the single layout of raw points it
/// writes what [`CsvEncoder`](crate::csv_format::CsvEncoder) writes, byte for byte.
///
/// Sensor ids are text: quoted (RFC 4180) when they hold the delimiter or a
/// quote. An empty cell is an empty field.
#[derive(Debug, Clone)]
pub struct TableCsvEncoder {
    options: CsvOptions,
    schema: Schema,
    /// Each sensor id as a finished field (quoted and escaped as needed).
    sensor_fields: Vec<Vec<u8>>,
    /// The most bytes a row's fields take before its local time.
    row_bytes: usize,
}

impl TableCsvEncoder {
    pub fn new(options: CsvOptions, schema: Schema) -> Self {
        let sensor_fields = schema
            .sensors
            .iter()
            .map(|id| text_field(id.as_str(), &options))
            .collect::<Vec<_>>();
        let longest_sensor = sensor_fields.iter().map(Vec::len).max().unwrap_or(0);
        let row_bytes =
            longest_sensor + MAX_INT_BYTES + schema.columns.len() * (MAX_VALUE_BYTES + 1) + 3;
        Self {
            options,
            schema,
            sensor_fields,
            row_bytes,
        }
    }

    /// Appends the BOM (if asked) and the header line.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        if self.options.bom {
            out.extend_from_slice(UTF8_BOM);
        }
        let d = self.options.delimiter;
        let mut names: Vec<&str> = self.schema.names();
        if self.options.time_zone.is_some() {
            names.push("time_local");
            if self.options.excel {
                names.push("utc_offset");
            }
        }
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                out.push(d);
            }
            out.extend_from_slice(&text_field(name, &self.options));
        }
        out.push(b'\n');
    }

    /// Appends one line per row of `chunk`.
    pub fn write_chunk(&self, chunk: &Chunk, out: &mut Vec<u8>) {
        let d = self.options.delimiter;
        let mut floats = ryu::Buffer::new();
        out.reserve(chunk.len() * (16 + 20 * chunk.columns.len()));
        let mut fields = FieldWriter::new(out);
        for row in 0..chunk.len() {
            fields.room(self.row_bytes);
            if self.schema.long {
                fields.bytes(&self.sensor_fields[chunk.sensors[row] as usize]);
                fields.byte(d);
            }
            fields.int(chunk.timestamps[row]);
            for column in &chunk.columns {
                fields.byte(d);
                if !column.is_present(row) {
                    continue;
                }
                match &column.cells {
                    Cells::Float(values) => {
                        write_float(values[row], &self.options, &mut floats, &mut fields);
                    }
                    Cells::Quality(qualities) => fields.quality(qualities[row]),
                    Cells::Count(counts) => fields.uint(counts[row]),
                }
            }
            if let Some(zone) = &self.options.time_zone {
                fields.byte(d);
                fields.with_vec(|out| {
                    if self.options.excel {
                        write_excel_local_time(chunk.timestamps[row], zone, &self.options, out);
                    } else {
                        write_local_time(chunk.timestamps[row], zone, out);
                    }
                });
                fields.room(1);
            }
            fields.byte(b'\n');
        }
    }
}
