//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer):
//! one function per decoder of bytes that come from outside the process,
//! and the round trips that must be the identity.
//!
//! Each function takes the fuzzer's raw bytes, feeds them to the real
//! decoder (the same function the store or the server calls), and checks
//! the decoder's own promises: an error or a value, never a panic, and
//! whatever decodes encodes back to the same thing. A broken promise panics,
//! which libFuzzer reports as a crash with the input that caused it. Not an
//! API: hidden from the docs, and free to change with the decoders.

use std::collections::HashMap;
use std::path::Path;

use crate::csv_format::{CsvEncoder, CsvOptions, CsvPointReader};
use crate::export::ExportRequest;
use crate::grpc::pb;
use crate::http::series::SeriesParams;
use crate::model::{MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, PointBatch};
use crate::storage::embedded::{codec, wal};

/// A cursor over fuzz bytes that hands out numbers, zeros when it runs dry.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The WAL reader. First byte: bit 0 says whether the segment is the
/// newest (the only one allowed a torn tail); bit 1 wraps the rest as the
/// payload of one correctly framed record (so the payload decoder is
/// reached without the fuzzer having to forge a CRC); otherwise the rest is
/// a whole segment file.
///
/// Checks: the intact prefix and the torn tail add up to the file; the
/// records read, written again, read back as the same records.
pub fn wal_segment(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let newest = mode & 1 != 0;
    let framed;
    let bytes = if mode & 2 != 0 {
        // A payload in a record frame: magic, length, checksum.
        let mut segment = wal::segment_header().to_vec();
        segment.extend_from_slice(b"REC\x1e");
        segment.extend_from_slice(&(rest.len() as u32).to_le_bytes());
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&(rest.len() as u32).to_le_bytes());
        hasher.update(rest);
        segment.extend_from_slice(&hasher.finalize().to_le_bytes());
        segment.extend_from_slice(rest);
        framed = segment;
        &framed[..]
    } else {
        rest
    };
    let path = Path::new("fuzz.wal");
    let Ok(contents) = wal::parse_segment(path, bytes, newest) else {
        return;
    };
    assert_eq!(
        contents.intact_len + contents.torn_bytes + contents.zero_tail,
        bytes.len() as u64,
        "intact prefix, torn tail and preallocated zeros must cover the segment"
    );
    if contents.records.is_empty() {
        return;
    }
    let mut again = wal::segment_header().to_vec();
    for record in &contents.records {
        wal::frame_record(record, &mut again).expect("a decoded record encodes");
    }
    let reread = wal::parse_segment(path, &again, false).expect("re-encoded records read back");
    assert_eq!(reread.torn_bytes, 0);
    let mut twice = wal::segment_header().to_vec();
    for record in &reread.records {
        wal::frame_record(record, &mut twice).expect("a decoded record encodes");
    }
    // Bytes, not records: NaN values compare unequal as f64.
    assert_eq!(again, twice, "records changed on a write/read round trip");
}

/// The block decoder on arbitrary bytes (a block as read from redb).
///
/// Checks: a block that decodes has the header's point count, first and
/// last timestamp; its versions decode to the same count; encoding what
/// decoded (when its timestamps are strictly increasing, as the store
/// writes them) decodes to the same bits.
pub fn codec_decode(data: &[u8]) {
    let Ok(header) = codec::header(data) else {
        return;
    };
    let _ = codec::column_sizes(data);
    let mut versions = Vec::new();
    let versions_ok = codec::decode_versions(data, &mut versions).is_ok();
    if versions_ok {
        assert_eq!(versions.len(), header.count as usize);
    }
    let mut batch = PointBatch::default();
    // A non-empty batch first: decode_into appends and must leave what was
    // there untouched, also when it fails.
    batch.timestamps.push(7);
    batch.values.push(1.5);
    batch.qualities.push(3);
    let decoded = codec::decode_into(data, &mut batch);
    assert_eq!(
        (
            batch.timestamps[0],
            batch.values[0].to_bits(),
            batch.qualities[0]
        ),
        (7, 1.5f64.to_bits(), 3)
    );
    assert_eq!(batch.timestamps.len(), batch.values.len());
    assert_eq!(batch.timestamps.len(), batch.qualities.len());
    let Ok(decoded) = decoded else {
        assert_eq!(batch.len(), 1, "a failed decode must leave nothing behind");
        return;
    };
    assert_eq!(
        (decoded.count, decoded.first_ts, decoded.last_ts),
        (header.count, header.first_ts, header.last_ts)
    );
    assert_eq!(batch.len(), 1 + header.count as usize);
    assert_eq!(batch.timestamps[1], header.first_ts);
    assert_eq!(*batch.timestamps.last().unwrap_or(&0), header.last_ts);
    let timestamps = &batch.timestamps[1..];
    if versions_ok && timestamps.windows(2).all(|w| w[0] < w[1]) {
        round_trip(
            timestamps,
            &batch.values[1..],
            &batch.qualities[1..],
            &versions,
        );
    }
}

/// Encode then decode is the identity, bit for bit: timestamps, value bits
/// (NaN payloads, -0.0, subnormals), qualities, versions. The input picks
/// the points: timestamps from a start and steps (strictly increasing),
/// values from raw bits or small decimals, so every encoder mode is met.
pub fn codec_round_trip(data: &[u8]) {
    let mut bytes = Bytes(data);
    let mode = bytes.u8();
    let mut ts = bytes.u64() as i64;
    let mut timestamps = Vec::new();
    let mut values = Vec::new();
    let mut qualities = Vec::new();
    let mut versions = Vec::new();
    let mut version = bytes.u64();
    while !bytes.is_empty() && timestamps.len() < codec::MAX_BLOCK_POINTS {
        let control = bytes.u8();
        timestamps.push(ts);
        let value = match control & 3 {
            0 => f64::from_bits(bytes.u64()),
            // Decimals with a few digits, as sensors send.
            1 => (bytes.u8() as i8 as f64) / 10f64.powi((control >> 2 & 7) as i32),
            2 => values.last().copied().unwrap_or(0.0),
            _ => (bytes.u64() as i64 as f64) / 1000.0,
        };
        values.push(value);
        qualities.push(if control & 0x20 != 0 { bytes.u8() } else { 192 });
        if mode & 1 != 0 {
            version = version.wrapping_add(bytes.u8() as u64);
        }
        versions.push(version);
        let step = match mode >> 1 & 3 {
            0 => 1000,
            1 => 1000 + (bytes.u8() as i64 % 5) - 2,
            2 => bytes.u64() as i64 & 0xffff_ffff,
            _ => bytes.u64() as i64 >> 1,
        }
        .max(1);
        match ts.checked_add(step) {
            Some(next) => ts = next,
            None => break,
        }
    }
    if timestamps.is_empty() {
        return;
    }
    round_trip(&timestamps, &values, &qualities, &versions);
}

fn round_trip(timestamps: &[i64], values: &[f64], qualities: &[u8], versions: &[u64]) {
    let block = codec::encode(timestamps, values, qualities, versions);
    let mut batch = PointBatch::default();
    let header = codec::decode_into(&block, &mut batch).expect("an encoded block decodes");
    assert_eq!(header.count as usize, timestamps.len());
    assert_eq!(batch.timestamps, timestamps);
    let bits = |v: &[f64]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&batch.values), bits(values), "values changed bits");
    assert_eq!(batch.qualities, qualities);
    let mut decoded_versions = Vec::new();
    codec::decode_versions(&block, &mut decoded_versions).expect("versions decode");
    assert_eq!(decoded_versions, versions);
}

/// The CSV import reader (what `POST /api/v1/import` and `engine import`
/// parse). Checks: every row it returns has a timestamp in range; the
/// points written back in the export format read back the same.
pub fn csv_import(data: &[u8]) {
    let mut reader = CsvPointReader::new(data);
    let mut all = PointBatch::default();
    loop {
        match reader.next_batch(1 + data.len() % 7) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => {
                for &ts in &batch.timestamps {
                    assert!((MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&ts));
                }
                all.extend_from_batch(&batch);
            }
            Err(error) => {
                assert!(error.line >= 1);
                return;
            }
        }
    }
    csv_round_trip_batch(&all);
}

/// The CSV writer then the reader: the identity on timestamps and
/// qualities, and on value bits except NaN (CSV writes every NaN `NaN`).
pub fn csv_round_trip(data: &[u8]) {
    let mut bytes = Bytes(data);
    let mut batch = PointBatch::default();
    let span = (MAX_TIMESTAMP_MS as i128 - MIN_TIMESTAMP_MS as i128 + 1) as u128;
    while !bytes.is_empty() {
        let ts = MIN_TIMESTAMP_MS as i128 + (bytes.u64() as u128 % span) as i128;
        batch.timestamps.push(ts as i64);
        batch.values.push(f64::from_bits(bytes.u64()));
        batch.qualities.push(bytes.u8());
    }
    csv_round_trip_batch(&batch);
}

fn csv_round_trip_batch(batch: &PointBatch) {
    let encoder = CsvEncoder::new(CsvOptions::default());
    let mut csv = Vec::new();
    encoder.write_header(&mut csv);
    encoder.write_batch(batch, &mut csv);
    let mut reader = CsvPointReader::new(&csv[..]);
    let mut back = PointBatch::default();
    loop {
        let next = reader
            .next_batch(4096)
            .expect("the export format reads back");
        if next.is_empty() {
            break;
        }
        back.extend_from_batch(&next);
    }
    assert_eq!(back.timestamps, batch.timestamps);
    assert_eq!(back.qualities, batch.qualities);
    assert_eq!(back.values.len(), batch.values.len());
    for (read, written) in back.values.iter().zip(&batch.values) {
        if written.is_nan() {
            assert!(read.is_nan());
        } else {
            assert_eq!(
                read.to_bits(),
                written.to_bits(),
                "{written:?} came back {read:?}"
            );
        }
    }
}

/// A NATS message payload (JSON point or array of points). Checks: every
/// point has a timestamp in range and no stream sequence (the consumer
/// sets it from the message).
pub fn nats_message(data: &[u8]) {
    if let Ok(samples) = crate::ingest::parse_message(data) {
        for sample in samples {
            assert!(
                (MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&sample.point.timestamp_ms),
                "timestamp out of range accepted"
            );
            assert!(sample.seq.is_none());
        }
    }
}

/// A gRPC `WriteRequest` as it comes off the wire (protobuf), converted to
/// samples as `Write` does; and the sensor id of a `ScanRequest`. Checks:
/// accepted points are in range, one sample per point.
pub fn grpc_request(data: &[u8]) {
    use prost::Message as _;
    if let Ok(request) = pb::WriteRequest::decode(data) {
        let count = request.points.len();
        if let Ok(samples) = crate::grpc::samples_from_proto(request.points) {
            assert_eq!(samples.len(), count);
            for sample in samples {
                assert!((MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&sample.point.timestamp_ms));
            }
        }
    }
    if let Ok(request) = pb::ScanRequest::decode(data) {
        let _ = crate::grpc::parse_sensor_id(&request.sensor_id);
    }
}

/// An HTTP query string, decoded as axum decodes it, then checked as the
/// export (and export summary) and series endpoints check it. Checks: an
/// accepted export has 1 to 1,000 sensors and a non-inverted range; its
/// canonical query (what the files and the dashboard carry) parses to a
/// request with the same canonical query; its file name makes a valid
/// `Content-Disposition` header.
pub fn http_query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = format!("/api/v1/export?{text}").parse::<axum::http::Uri>() else {
        return;
    };
    if let Ok(axum::extract::Query(pairs)) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        && let Ok(request) = ExportRequest::from_pairs(&pairs, 0)
    {
        check_export_request(&request);
    }
    if let Ok(axum::extract::Query(query)) =
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
        && let Ok(params) = SeriesParams::parse(&query)
    {
        assert!(params.max_points >= 4 && params.max_points <= 10_000);
        if let (Some(start), Some(end)) = (params.start, params.end) {
            assert!(start <= end);
        }
    }
}

fn check_export_request(request: &ExportRequest) {
    assert!(!request.sensors.is_empty() && request.sensors.len() <= 1_000);
    assert!(request.range.start_ms <= request.range.end_ms);
    let canonical = request.canonical_query();
    let uri: axum::http::Uri = format!("/api/v1/export?{canonical}")
        .parse()
        .expect("the canonical query is a valid URI query");
    let axum::extract::Query(pairs) =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .expect("the canonical query decodes");
    let again = ExportRequest::from_pairs(&pairs, 0).expect("the canonical query parses");
    assert_eq!(again.canonical_query(), canonical);
    let (ascii, full) = request.file_name();
    axum::http::HeaderValue::from_str(&crate::export::content_disposition(&ascii, &full))
        .expect("Content-Disposition is a valid header");
}

/// An encoded block, for the seed corpus of `codec_decode`.
pub fn encode_block(
    timestamps: &[i64],
    values: &[f64],
    qualities: &[u8],
    versions: &[u64],
) -> Vec<u8> {
    codec::encode(timestamps, values, qualities, versions)
}

/// The groups of a seed WAL record: `(sensor id, points as (ts, value,
/// quality), stream seqs)`.
pub type SeedGroups<'a> = Vec<(&'a str, Vec<(i64, f64, u8)>, Option<Vec<u64>>)>;

/// A WAL segment holding one record per group list, for the seed corpus of
/// `wal_segment`: `(sensor id, points as (ts, value, quality), stream
/// seqs)`.
pub fn encode_segment(records: &[(u64, SeedGroups<'_>)]) -> Vec<u8> {
    let mut out = wal::segment_header().to_vec();
    for (version, groups) in records {
        let record = wal::Record {
            version: Some(*version),
            groups: groups
                .iter()
                .map(|(id, points, seqs)| wal::Group {
                    sensor_id: crate::model::SensorId::new(id).expect("a valid seed id"),
                    points: points
                        .iter()
                        .map(|&(timestamp_ms, value, quality)| crate::model::Point {
                            timestamp_ms,
                            value,
                            quality,
                        })
                        .collect(),
                    seqs: seqs.clone(),
                })
                .collect(),
        };
        wal::frame_record(&record, &mut out).expect("a seed record encodes");
    }
    out
}
