//! The export CSV format, written by exports and read by imports.
//!
//! The strict default, byte for byte:
//!
//! ```text
//! timestamp_ms,value,quality\n
//! 1767225600000,21.5,192\n
//! ```
//!
//! - `timestamp_ms`: epoch milliseconds, an integer.
//! - `value`: the shortest decimal that parses back to the identical `f64`
//!   (ryu), `NaN`, `inf` or `-inf`. NaN payloads and the sign of NaN cannot
//!   be written in CSV and are lost; every other bit survives the round trip.
//! - `quality`: an integer 0 to 255.
//!
//! Lines end with `\n` (RFC 4180 says `\r\n`; every spreadsheet and CSV reader
//! we know accepts `\n`, and the importer accepts both). Options for Excel
//! users ([`CsvOptions`]) change the delimiter, decimal mark, add a BOM or a
//! local-time column; the default stays strict.
//!
//! Encoding is hand-rolled with itoa + ryu into a reused buffer: the `csv`
//! crate's writer is correct but about 2x slower here, and none of our fields
//! ever needs quoting. Decoding uses the `csv` crate, which copes with quoting,
//! CRLF and other real-world spreadsheet output.

use std::io::Read;

use jiff::tz::TimeZone;

mod fields;
pub(crate) use fields::{FieldWriter, MAX_INT_BYTES, MAX_VALUE_BYTES};

use crate::model::{PointBatch, check_timestamp};
use crate::storage::{PointStream, StorageError, receiver_stream};

/// The header line of the strict format, without the line end.
pub const HEADER: &str = "timestamp_ms,value,quality";

/// The UTF-8 byte order mark, written first with `bom = true`.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// How an export is written. [`CsvOptions::default`] is the strict format.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// Field delimiter: `,` (default) or `;` for European Excel locales.
    pub delimiter: u8,
    /// Decimal mark for values: `.` (default) or `,` (with `;` as delimiter).
    pub decimal_comma: bool,
    /// Write a UTF-8 BOM first, so Excel reads non-ASCII text as UTF-8.
    pub bom: bool,
    /// Adds a `time_local` column: ISO 8601 local time with its UTC offset in
    /// this zone. The offset makes times at DST changes unambiguous.
    pub time_zone: Option<TimeZone>,
    /// The Excel preset: text that Excel would take for a formula (a cell
    /// starting with `=`, `+`, `-`, `@`, tab or CR, so also `-inf`) gets a
    /// leading `'` (OWASP's CSV-injection rule), and `time_local` is a
    /// date-time Excel recognises (`2026-10-25 02:30:00.000`) with the
    /// offset in a `utc_offset` column of its own (`UTC+02:00`).
    pub excel: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: b',',
            decimal_comma: false,
            bom: false,
            time_zone: None,
            excel: false,
        }
    }
}

/// Writes point batches as CSV rows into a caller's buffer.
///
/// The encoder holds no output buffer itself, so a streaming exporter can
/// reuse (or hand off) its buffers batch by batch.
#[derive(Debug, Clone, Default)]
pub struct CsvEncoder {
    options: CsvOptions,
}

impl CsvEncoder {
    pub fn new(options: CsvOptions) -> Self {
        Self { options }
    }

    /// Appends the BOM (if asked) and the header line.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        if self.options.bom {
            out.extend_from_slice(UTF8_BOM);
        }
        let d = self.options.delimiter;
        out.extend_from_slice(b"timestamp_ms");
        out.push(d);
        out.extend_from_slice(b"value");
        out.push(d);
        out.extend_from_slice(b"quality");
        if self.options.time_zone.is_some() {
            out.push(d);
            out.extend_from_slice(b"time_local");
        }
        out.push(b'\n');
    }

    /// Appends one row per point of `batch`.
    pub fn write_batch(&self, batch: &PointBatch, out: &mut Vec<u8>) {
        let d = self.options.delimiter;
        let mark = self.options.mark();
        let mut floats = ryu::Buffer::new();
        // A typical row is under 32 bytes; reserve once per batch.
        out.reserve(batch.len() * 32);
        let mut fields = FieldWriter::new(out);
        for i in 0..batch.len() {
            fields.room(MAX_INT_BYTES + MAX_VALUE_BYTES + 6);
            fields.int(batch.timestamps[i]);
            fields.byte(d);
            fields.value(batch.values[i], mark, &mut floats);
            fields.byte(d);
            fields.quality(batch.qualities[i]);
            if let Some(zone) = &self.options.time_zone {
                fields.byte(d);
                fields.with_vec(|out| write_local_time(batch.timestamps[i], zone, out));
                fields.room(1);
            }
            fields.byte(b'\n');
        }
    }
}

/// ISO 8601 local time with offset and milliseconds: `2026-03-29T03:00:00.000+02:00`.
pub fn write_local_time(timestamp_ms: i64, zone: &TimeZone, out: &mut Vec<u8>) {
    use std::io::Write;
    // Stored timestamps are always in jiff's range (see model::check_timestamp).
    if let Ok(ts) = jiff::Timestamp::from_millisecond(timestamp_ms) {
        let zoned = ts.to_zoned_datetime(zone.clone());
        let _ = write!(out, "{}", zoned.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z"));
    }
}

impl CsvOptions {
    /// The decimal mark of values.
    pub fn mark(&self) -> u8 {
        if self.decimal_comma { b',' } else { b'.' }
    }
}

/// A value: ryu's shortest round-trip decimal, `NaN`, `inf`, `-inf`; with
/// the Excel preset `-inf` becomes `'-inf` (text, not a formula). Needs
/// room for [`MAX_VALUE_BYTES`].
#[inline]
pub(crate) fn write_float(
    value: f64,
    options: &CsvOptions,
    floats: &mut ryu::Buffer,
    fields: &mut FieldWriter,
) {
    if options.excel && value == f64::NEG_INFINITY {
        fields.bytes(b"'-inf");
        return;
    }
    fields.value(value, options.mark(), floats);
}

/// Appends `value` if it is an exact decimal of at most six places between
/// 1e-5 and 1e9 in magnitude, byte for byte as ryu would; returns false,
/// appending nothing, for every other value (see
/// [`FieldWriter::short_decimal`]).
pub(crate) fn write_short_decimal(value: f64, mark: u8, out: &mut Vec<u8>) -> bool {
    let mut fields = FieldWriter::new(out);
    fields.room_exact(MAX_VALUE_BYTES);
    fields.short_decimal(value, mark)
}

/// A text field: quoted when it holds the delimiter, a quote or a line
/// break; with the Excel preset, `'` first when it could start a formula.
pub fn text_field(text: &str, options: &CsvOptions) -> Vec<u8> {
    let formula = options.excel && text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = text
        .bytes()
        .any(|b| b == options.delimiter || b == b'"' || b == b'\n' || b == b'\r');
    let mut out = Vec::with_capacity(text.len() + 3);
    if quote {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    for b in text.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    if quote {
        out.push(b'"');
    }
    out
}

/// The Excel preset's local time: `2026-10-25 02:30:00.000` with the
/// CSV's decimal mark before the milliseconds (`02:30:00,000` with
/// `decimal=,`: spreadsheets read the fraction with the locale's mark, and
/// take the text for a date-time only then), the delimiter, and the offset
/// as text: `UTC+02:00`.
pub fn write_excel_local_time(
    timestamp_ms: i64,
    zone: &TimeZone,
    options: &CsvOptions,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    if let Ok(ts) = jiff::Timestamp::from_millisecond(timestamp_ms) {
        let zoned = ts.to_zoned_datetime(zone.clone());
        let mark = if options.decimal_comma { ',' } else { '.' };
        let _ = write!(
            out,
            "{}{mark}{:03}",
            zoned.strftime("%Y-%m-%d %H:%M:%S"),
            timestamp_ms.rem_euclid(1000)
        );
        out.push(options.delimiter);
        let _ = write!(out, "{}", zoned.strftime("UTC%:z"));
    }
}

/// A problem in an imported CSV, with the 1-based line it was found on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct CsvError {
    pub line: u64,
    pub problem: String,
}

/// Reads CSV in the export format into point batches, checking every row.
///
/// Accepts an optional UTF-8 BOM and `\n` or `\r\n` line ends; the header must
/// be `timestamp_ms,value,quality`. Every other deviation is an error naming
/// the line: a wrong field count, a timestamp that is not an integer or is out
/// of range, a value that is not a number, a quality outside 0 to 255,
/// invalid UTF-8.
pub struct CsvPointReader<R: Read> {
    reader: csv::Reader<R>,
    record: csv::ByteRecord,
    header_checked: bool,
}

impl<R: Read> CsvPointReader<R> {
    pub fn new(source: R) -> Self {
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(256 * 1024)
            .from_reader(source);
        Self {
            reader,
            record: csv::ByteRecord::new(),
            header_checked: false,
        }
    }

    /// Reads up to `max_points` rows; an empty batch means the end.
    pub fn next_batch(&mut self, max_points: usize) -> Result<PointBatch, CsvError> {
        if !self.header_checked {
            self.check_header()?;
        }
        let mut batch = PointBatch::with_capacity(max_points.min(65_536));
        while batch.len() < max_points {
            if !self.read_record()? {
                break;
            }
            let line = self.line();
            if self.record.len() == 1 && self.record[0].is_empty() {
                // A blank line (csv reports these as one empty field): skip it.
                continue;
            }
            if self.record.len() != 3 {
                return Err(CsvError {
                    line,
                    problem: format!(
                        "expected 3 fields (timestamp_ms,value,quality), found {}",
                        self.record.len()
                    ),
                });
            }
            let timestamp = parse_field(&self.record[0], line, "timestamp_ms", |s| {
                let ms: i64 = s.parse().map_err(|_| {
                    format!("timestamp_ms {s:?} is not an integer (epoch milliseconds)")
                })?;
                check_timestamp(ms).map_err(|e| format!("timestamp_ms {e}"))
            })?;
            let value = parse_field(&self.record[1], line, "value", |s| {
                s.parse::<f64>()
                    .map_err(|_| format!("value {s:?} is not a number"))
            })?;
            let quality = parse_field(&self.record[2], line, "quality", |s| {
                s.parse::<u8>()
                    .map_err(|_| format!("quality {s:?} is not an integer from 0 to 255"))
            })?;
            batch.timestamps.push(timestamp);
            batch.values.push(value);
            batch.qualities.push(quality);
        }
        Ok(batch)
    }

    fn check_header(&mut self) -> Result<(), CsvError> {
        self.header_checked = true;
        if !self.read_record()? {
            return Err(CsvError {
                line: 1,
                problem: format!("the file is empty; expected the header {HEADER}"),
            });
        }
        let mut fields: Vec<&[u8]> = self.record.iter().collect();
        if let Some(first) = fields.first_mut() {
            *first = first.strip_prefix(UTF8_BOM).unwrap_or(first);
        }
        if fields != [&b"timestamp_ms"[..], b"value", b"quality"] {
            let found = String::from_utf8_lossy(&fields.join(&b","[..])).into_owned();
            return Err(CsvError {
                line: self.line(),
                problem: format!("expected the header {HEADER}, found {found:?}"),
            });
        }
        Ok(())
    }

    fn read_record(&mut self) -> Result<bool, CsvError> {
        self.reader
            .read_byte_record(&mut self.record)
            .map_err(|e| CsvError {
                line: e.position().map_or(self.line(), |p| p.line()),
                problem: match e.kind() {
                    csv::ErrorKind::Io(io) => format!("read error: {io}"),
                    _ => e.to_string(),
                },
            })
    }

    fn line(&self) -> u64 {
        self.record.position().map_or(1, |p| p.line())
    }
}

/// Rows per batch handed on by [`read_points`].
const READ_BATCH_POINTS: usize = 16_384;

/// Parses CSV from a blocking reader on a blocking thread into a stream of
/// batches, two batches ahead at most. A bad row ends the stream with
/// [`StorageError::InvalidInput`] naming the line, which makes
/// [`crate::storage::StorageEngine::import`] discard the whole import.
/// Dropping the stream stops the parser.
pub fn read_points(source: impl Read + Send + 'static) -> PointStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut reader = CsvPointReader::new(source);
        loop {
            let item = match reader.next_batch(READ_BATCH_POINTS) {
                Ok(batch) if batch.is_empty() => return,
                Ok(batch) => Ok(batch),
                Err(e) => Err(StorageError::InvalidInput(e.to_string())),
            };
            let failed = item.is_err();
            if sender.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    receiver_stream(receiver)
}

fn parse_field<T>(
    raw: &[u8],
    line: u64,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, CsvError> {
    let text = std::str::from_utf8(raw).map_err(|_| CsvError {
        line,
        problem: format!("{name} is not valid UTF-8"),
    })?;
    parse(text.trim()).map_err(|problem| CsvError { line, problem })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point;

    /// The fast path writes what ryu writes, or nothing.
    fn check_against_ryu(value: f64) -> bool {
        let mut fast = Vec::new();
        let taken = write_short_decimal(value, b'.', &mut fast);
        if taken {
            assert_eq!(
                std::str::from_utf8(&fast).unwrap(),
                ryu::Buffer::new().format(value),
                "{value:e} (bits {:#x})",
                value.to_bits()
            );
        } else {
            assert!(fast.is_empty());
        }
        taken
    }

    #[test]
    fn short_decimals_are_written_exactly_as_ryu_writes_them() {
        let edges = [
            0.00001,
            0.000012,
            0.000009,
            1e-5,
            1e-6,
            0.1,
            0.2,
            0.3,
            1.0,
            -1.0,
            21.5,
            -0.5,
            100000000.0,
            999999999.999999,
            1e9,
            123456.789,
            0.1 + 0.2,
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::MIN_POSITIVE,
            5e-324,
            1013.25,
            4.35,
            2.675,
            1.005,
        ];
        for value in edges {
            check_against_ryu(value);
        }
        // Random decimals of 0 to 8 places over the whole range, parsed as
        // a reader would; and random bit patterns.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut taken = 0;
        for _ in 0..2_000_000 {
            let places = next() % 9;
            let digits = next() % 10u64.pow(1 + (next() % 16) as u32);
            let text = format!("{}e-{places}", digits);
            let value: f64 = text.parse().unwrap();
            let value = if next() % 2 == 0 { value } else { -value };
            taken += usize::from(check_against_ryu(value));
            check_against_ryu(f64::from_bits(next()));
        }
        assert!(taken > 500_000, "the fast path was taken {taken} times");
    }

    fn batch(points: &[(i64, f64, u8)]) -> PointBatch {
        points
            .iter()
            .map(|&(timestamp_ms, value, quality)| Point {
                timestamp_ms,
                value,
                quality,
            })
            .collect()
    }

    fn encode(options: CsvOptions, points: &[(i64, f64, u8)]) -> String {
        let encoder = CsvEncoder::new(options);
        let mut out = Vec::new();
        encoder.write_header(&mut out);
        encoder.write_batch(&batch(points), &mut out);
        String::from_utf8(out).unwrap()
    }

    const AWKWARD: &[(i64, f64, u8)] = &[
        (-1, -0.0, 0),
        (0, 5e-324, 64),
        (1, f64::NAN, 192),
        (2, f64::INFINITY, 192),
        (3, f64::NEG_INFINITY, 255),
        (4, 0.1 + 0.2, 192),
        (5, 1e300, 192),
        (6, 21.5, 192),
        (7, 3.0, 192),
    ];

    #[test]
    fn strict_format_is_exact() {
        assert_eq!(
            encode(CsvOptions::default(), AWKWARD),
            "timestamp_ms,value,quality\n\
             -1,-0.0,0\n\
             0,5e-324,64\n\
             1,NaN,192\n\
             2,inf,192\n\
             3,-inf,255\n\
             4,0.30000000000000004,192\n\
             5,1e300,192\n\
             6,21.5,192\n\
             7,3.0,192\n"
        );
    }

    #[test]
    fn written_values_read_back_bit_exactly() {
        let text = encode(CsvOptions::default(), AWKWARD);
        let mut reader = CsvPointReader::new(text.as_bytes());
        let read = reader.next_batch(100).unwrap();
        let expected = batch(AWKWARD);
        assert_eq!(read.timestamps, expected.timestamps);
        assert_eq!(read.qualities, expected.qualities);
        for (got, want) in read.values.iter().zip(&expected.values) {
            if want.is_nan() {
                assert!(got.is_nan());
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{want}");
            }
        }
        assert!(reader.next_batch(100).unwrap().is_empty());
    }

    #[test]
    fn excel_options_change_delimiter_decimal_bom_and_add_local_time() {
        let options = CsvOptions {
            delimiter: b';',
            decimal_comma: true,
            bom: true,
            time_zone: Some(TimeZone::get("Europe/Berlin").unwrap()),
            excel: false,
        };
        // Berlin springs forward at 2026-03-29T01:00Z: 01:59:59.999+01:00, then 03:00+02:00.
        let text = encode(
            options,
            &[
                (1_774_745_999_999, 21.5, 192),
                (1_774_746_000_000, -0.25, 64),
            ],
        );
        assert_eq!(
            text,
            "\u{feff}timestamp_ms;value;quality;time_local\n\
             1774745999999;21,5;192;2026-03-29T01:59:59.999+01:00\n\
             1774746000000;-0,25;64;2026-03-29T03:00:00.000+02:00\n"
        );
    }

    #[test]
    fn reader_accepts_bom_crlf_and_blank_lines() {
        let text = "\u{feff}timestamp_ms,value,quality\r\n1,2.5,192\r\n\r\n3,4,0\r\n";
        let mut reader = CsvPointReader::new(text.as_bytes());
        assert_eq!(
            reader.next_batch(10).unwrap(),
            batch(&[(1, 2.5, 192), (3, 4.0, 0)])
        );
    }

    fn first_error(text: &[u8]) -> String {
        let mut reader = CsvPointReader::new(text);
        loop {
            match reader.next_batch(2) {
                Ok(batch) if batch.is_empty() => panic!("no error in {text:?}"),
                Ok(_) => continue,
                Err(e) => return e.to_string(),
            }
        }
    }

    #[test]
    fn reader_names_the_line_and_the_problem() {
        let head = "timestamp_ms,value,quality\n1,1,192\n2,2,192\n";
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "line 1: the file is empty"),
            (
                b"ts,value,quality\n".to_vec(),
                "line 1: expected the header",
            ),
            (
                format!("{head}3,abc,192\n").into_bytes(),
                "line 4: value \"abc\" is not a number",
            ),
            (
                format!("{head}3,1\n").into_bytes(),
                "line 4: expected 3 fields",
            ),
            (
                format!("{head}x,1,192\n").into_bytes(),
                "line 4: timestamp_ms \"x\" is not an integer",
            ),
            (
                format!("{head}99999999999999999,1,192\n").into_bytes(),
                "line 4: timestamp_ms 99999999999999999 is outside the supported range",
            ),
            (
                format!("{head}3,1,256\n").into_bytes(),
                "line 4: quality \"256\" is not an integer from 0 to 255",
            ),
            (
                b"timestamp_ms,value,quality\n1,\xff,192\n".to_vec(),
                "line 2: value is not valid UTF-8",
            ),
        ];
        for (text, expected) in &cases {
            let error = first_error(text);
            assert!(error.starts_with(expected), "{error:?} vs {expected:?}");
        }
    }
}
