//! PostgreSQL's binary COPY format, written by hand for writes and imports.
//!
//! Why by hand: tokio-postgres's `BinaryCopyInWriter` awaits once per row
//! (rust-postgres issue #1114: minutes where raw bytes take seconds). Our
//! rows are a few fixed-width numbers, so encoding them straight into one
//! buffer per batch is both simpler and much faster.
//!
//! The format (PostgreSQL docs, "COPY", binary format): an 11-byte signature,
//! a 32-bit flags word and a 32-bit header-extension length (then that many
//! bytes); per row a 16-bit field count, then per field a 32-bit length (-1
//! for NULL) and that many bytes in network order; a 16-bit -1 ends the data.
//! float8 travels as its raw IEEE 754 bits, which is why only this format
//! keeps NaN payloads (the text format writes every NaN as `NaN`).

use bytes::{BufMut, BytesMut};

use crate::model::Point;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The header we send: signature, no flags, no header extension.
pub fn put_header(out: &mut BytesMut) {
    out.put_slice(SIGNATURE);
    out.put_u32(0);
    out.put_u32(0);
}

/// The end-of-data marker.
pub fn put_trailer(out: &mut BytesMut) {
    out.put_i16(-1);
}

/// Bytes of one `write_stage` row with a version.
pub const WRITE_ROW_LEN: usize = 2 + (4 + 4) + (4 + 8) + (4 + 8) + (4 + 2) + (4 + 8);

/// One row of the `write_stage` table: `(sensor int4, ts int8, value
/// float8, quality int2, version int8)`, where a `None` version (a direct
/// write) is NULL and gets the write's version in SQL.
pub fn put_write_row(out: &mut BytesMut, sensor: i32, point: &Point, version: Option<i64>) {
    out.put_i16(5);
    out.put_i32(4);
    out.put_i32(sensor);
    put_point_fields(out, point);
    match version {
        Some(version) => {
            out.put_i32(8);
            out.put_i64(version);
        }
        None => out.put_i32(-1),
    }
}

/// One row of the `import_stage` table: `(ts int8, value float8, quality
/// int2, ord int8)`; `ord` numbers the rows of an import so the last of
/// several rows with one timestamp wins.
pub fn put_import_row(out: &mut BytesMut, point: &Point, ord: i64) {
    out.put_i16(4);
    put_point_fields(out, point);
    out.put_i32(8);
    out.put_i64(ord);
}

fn put_point_fields(out: &mut BytesMut, point: &Point) {
    out.put_i32(8);
    out.put_i64(point.timestamp_ms);
    out.put_i32(8);
    out.put_u64(point.value.to_bits());
    out.put_i32(2);
    out.put_i16(i16::from(point.quality));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(timestamp_ms: i64, bits: u64, quality: u8) -> Point {
        Point {
            timestamp_ms,
            value: f64::from_bits(bits),
            quality,
        }
    }

    #[test]
    fn rows_are_laid_out_as_postgres_expects() {
        let mut out = BytesMut::new();
        put_header(&mut out);
        put_write_row(&mut out, 7, &p(-2, 0x8000_0000_0000_0000, 255), None);
        put_import_row(&mut out, &p(1, 0x7ff8_dead_beef_0001, 0), 9);
        put_trailer(&mut out);
        let mut expected = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0".to_vec();
        // write row: 5 fields, sensor, ts, value (-0.0), quality, NULL version
        expected.extend([0, 5, 0, 0, 0, 4, 0, 0, 0, 7]);
        expected.extend([0, 0, 0, 8, 255, 255, 255, 255, 255, 255, 255, 254]);
        expected.extend([0, 0, 0, 8, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend([0, 0, 0, 2, 0, 255]);
        expected.extend([255, 255, 255, 255]);
        // import row: 4 fields, ts, value (NaN with payload), quality, ord
        expected.extend([0, 4, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend([0, 0, 0, 8, 0x7f, 0xf8, 0xde, 0xad, 0xbe, 0xef, 0, 1]);
        expected.extend([0, 0, 0, 2, 0, 0]);
        expected.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
        expected.extend([255, 255]);
        assert_eq!(out.to_vec(), expected);
        assert_eq!(WRITE_ROW_LEN, 2 + 8 + 12 + 12 + 6 + 12);
    }
}
