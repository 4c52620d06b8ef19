//! Exports for analysts: raw points or interval aggregates of one or many
//! sensors, long or wide, as CSV, XLSX, Parquet, Arrow IPC or JSON Lines,
//! streamed with bounded memory. Served by `GET /api/v1/export` and written
//! by `engine export`, from the same [`ExportRequest`] to the same bytes.
//!
//! # Layout
//!
//! - [`request`]: the parameters, checked ([`ExportRequest`]).
//! - [`table`]: the shape every export takes on its way to a format: a
//!   [`table::Schema`] and a stream of [`table::Chunk`]s.
//! - Where chunks come from: one sensor's scan as it is; [`merge`] (several
//!   sensors, long or wide, in time windows); [`aggregate`] (buckets).
//! - Where they go: [`csv`] and [`jsonl`] (encoded in parallel, a chunk per
//!   runtime worker), [`xlsx`] and [`columnar`] (Parquet, Arrow; a writer on
//!   a blocking thread).
//! - [`compress`]: gzip and zstd done inside the parallel encoders.
//! - [`summary`]: counting rows before downloading, from block summaries.
//!
//! Everything that can be refused is checked before the first byte
//! ([`open`]): the parameters, the sensors. After that the body streams; a
//! store failure then ends the body with an error, so a client marks the
//! download failed instead of keeping half a file.
//!
//! A request with one `sensor_id` and no `layout`, `interval` or `aggregate`
//! writes exactly what it always did (the strict CSV, through
//! [`CsvEncoder`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::csv_format::CsvEncoder;
use crate::model::{PointBatch, SensorId, TimeRange};
use crate::storage::{PointStream, SensorInfo, SharedStorage, StorageError};

pub mod aggregate;
pub mod columnar;
pub mod compress;
pub mod csv;
pub mod jsonl;
pub mod merge;
pub mod request;
pub mod sink;
pub mod summary;
pub mod table;
pub mod xlsx;

pub use compress::Encoding;
pub use request::{ExportFormat, ExportRequest, Layout};

/// `Content-Type` of a CSV export.
pub const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";
/// `Content-Type` of an XLSX export.
pub const XLSX_CONTENT_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
/// `Content-Type` of a Parquet export.
pub const PARQUET_CONTENT_TYPE: &str = "application/vnd.apache.parquet";
/// `Content-Type` of an Arrow IPC stream export.
pub const ARROW_CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";
/// `Content-Type` of a JSON Lines export.
pub const JSONL_CONTENT_TYPE: &str = "application/jsonl; charset=utf-8";

/// Encoded chunks in flight per export (being formatted or waiting to be
/// sent). Measured on 2 cores, 4 beat 2 and 3 (the encoders then never wait
/// for the connection task), and memory stays small.
pub const ENCODE_AHEAD: usize = 4;

/// Batches smaller than this are merged before encoding, so each encode task
/// does enough work to be worth spawning and each chunk is a sensible write.
/// The embedded store's blocks hold up to 4096 points, so its batches pass
/// as they are; only smaller ones (a store's head) are merged.
const MIN_CHUNK_ROWS: usize = 4_096;

/// Why an export was refused before its first byte.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A missing, unparsable or inconsistent parameter.
    #[error("{0}")]
    InvalidParameter(String),
    /// Sensors without points; every one is named.
    #[error("{}", not_found_message(.0))]
    SensorsNotFound(Vec<SensorId>),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// `sensor "a" not found`, or `sensors "a", "b" not found`.
pub fn not_found_message(ids: &[SensorId]) -> String {
    match ids {
        [one] => format!("sensor {one:?} not found"),
        many => {
            let names: Vec<String> = many.iter().map(|id| format!("{id:?}")).collect();
            format!("sensors {} not found", names.join(", "))
        }
    }
}

/// The body of an export: encoded (and maybe compressed) bytes; an `Err`
/// means the download failed and must be aborted.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A checked, started export.
pub struct Export {
    pub request: ExportRequest,
    /// The content coding the body is in, if any.
    pub encoding: Option<Encoding>,
    pub body: ByteStream,
    /// Rows read for the body so far (the audit trail's count).
    pub rows: Arc<AtomicU64>,
}

/// Settings of the serving side.
#[derive(Debug, Clone, Copy)]
pub struct ExportOptions {
    /// XLSX data rows per sheet (Excel's limit outside tests).
    pub xlsx_rows_per_sheet: u32,
    /// The coding the client accepts (`Accept-Encoding`), for the formats
    /// worth compressing.
    pub accept: Option<Encoding>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            xlsx_rows_per_sheet: xlsx::EXCEL_MAX_DATA_ROWS,
            accept: None,
        }
    }
}

/// Looks up every sensor of the request; an error names each unknown one.
pub async fn sensor_infos(
    storage: &SharedStorage,
    sensors: &[SensorId],
) -> Result<Vec<SensorInfo>, ExportError> {
    let mut infos = Vec::with_capacity(sensors.len());
    let mut unknown = Vec::new();
    for id in sensors {
        match storage.sensor(id).await? {
            Some(info) => infos.push(info),
            None => unknown.push(id.clone()),
        }
    }
    if unknown.is_empty() {
        Ok(infos)
    } else {
        Err(ExportError::SensorsNotFound(unknown))
    }
}

/// Points of `info`'s sensor expected in `range`, assuming they are spread
/// evenly over its span (to size windows; never trusted for more).
fn points_in(info: &SensorInfo, range: TimeRange) -> f64 {
    let first = info.first_timestamp_ms as i128;
    let last = info.last_timestamp_ms as i128 + 1;
    let overlap = (last.min(range.end_ms as i128) - first.max(range.start_ms as i128)).max(0);
    info.count as f64 * overlap as f64 / (last - first).max(1) as f64
}

/// Checks the sensors and starts the export: the body streams from here.
pub async fn open(
    storage: &SharedStorage,
    request: ExportRequest,
    options: ExportOptions,
) -> Result<Export, ExportError> {
    let infos = sensor_infos(storage, &request.sensors).await?;
    let points_estimate: f64 = infos.iter().map(|i| points_in(i, request.range)).sum();
    if request.format == ExportFormat::Xlsx {
        let columns = table::Schema::of(&request).names().len() + 2;
        if columns > xlsx::EXCEL_MAX_COLUMNS {
            return Err(ExportError::InvalidParameter(format!(
                "format=xlsx: {columns} columns; Excel holds {} (use layout=long, or parquet)",
                xlsx::EXCEL_MAX_COLUMNS
            )));
        }
    }
    let encoding = options.accept.filter(|_| request.format.compressible());
    let schema = table::Schema::of(&request);
    let raw_single = request.resample.is_none() && request.sensors.len() == 1;
    let rows = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&rows);
    let body = if raw_single
        && request.layout == Layout::Single
        && request.format == ExportFormat::Csv
        && !request.csv.excel
    {
        // Today's bytes, through today's encoder.
        let scan = storage.scan(&request.sensors[0], request.range);
        legacy_csv_body(scan, &request, encoding, counted)
    } else {
        let chunks = chunks(storage, &request, points_estimate)
            .inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    crate::metrics::export_rows(chunk.len() as u64);
                    counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            })
            .boxed();
        match request.format {
            ExportFormat::Csv => {
                let encoder = Arc::new(csv::TableCsvEncoder::new(request.csv.clone(), schema));
                let mut header = Vec::with_capacity(256);
                encoder.write_header(&mut header);
                encoded_body(header, chunks, encoding, move |chunk, out| {
                    encoder.write_chunk(&chunk, out)
                })
            }
            ExportFormat::Jsonl => {
                let encoder = Arc::new(jsonl::JsonlEncoder::new(&schema));
                encoded_body(Vec::new(), chunks, encoding, move |chunk, out| {
                    encoder.write_chunk(&chunk, out)
                })
            }
            ExportFormat::Xlsx => {
                let rows_per_sheet = options.xlsx_rows_per_sheet;
                blocking_body(encoding, &request, move |runtime, request, sink| {
                    xlsx::write_xlsx(runtime, chunks, &schema, request, rows_per_sheet, sink)
                })
            }
            ExportFormat::Parquet | ExportFormat::Arrow => {
                let format = if request.format == ExportFormat::Parquet {
                    columnar::Columnar::Parquet
                } else {
                    columnar::Columnar::Arrow
                };
                blocking_body(encoding, &request, move |runtime, request, sink| {
                    columnar::write_columnar(format, runtime, chunks, &schema, request, sink)
                })
            }
        }
    };
    Ok(Export {
        request,
        encoding,
        body,
        rows,
    })
}

/// Where the request's rows come from.
fn chunks(
    storage: &SharedStorage,
    request: &ExportRequest,
    points_estimate: f64,
) -> BoxStream<'static, Result<table::Chunk, StorageError>> {
    let sensors: Arc<[SensorId]> = request.sensors.clone().into();
    if let Some(resample) = &request.resample {
        let plan = aggregate::Plan {
            storage: Arc::clone(storage),
            sensors,
            range: request.range,
            grid: resample.grid.clone(),
            aggregates: resample.aggregates.clone(),
            include_bad: resample.include_bad,
            long: request.layout == Layout::Long,
            wide: request.layout == Layout::Wide,
        };
        return aggregate::aggregate_chunks(plan, points_estimate);
    }
    if sensors.len() == 1 {
        // One sensor needs no merge: its scan is already in order.
        let long = (request.layout == Layout::Long).then_some(0);
        return rebatch(storage.scan(&sensors[0], request.range), MIN_CHUNK_ROWS)
            .map(move |batch| batch.map(|b| table::Chunk::of_points(b, long)))
            .boxed();
    }
    merge::merged_chunks(merge::MergePlan {
        storage: Arc::clone(storage),
        sensors,
        range: request.range,
        wide: request.layout == Layout::Wide,
        fill_previous: request.fill_previous,
        points_estimate,
    })
}

/// The single-sensor strict CSV: the header at once, then the rows batch by
/// batch, encoded by [`CsvEncoder`] exactly as before.
fn legacy_csv_body(
    scan: PointStream,
    request: &ExportRequest,
    encoding: Option<Encoding>,
    rows: Arc<AtomicU64>,
) -> ByteStream {
    let encoder = Arc::new(CsvEncoder::new(request.csv.clone()));
    let mut header = Vec::with_capacity(64);
    encoder.write_header(&mut header);
    let batches = rebatch(scan, MIN_CHUNK_ROWS).inspect(move |batch| {
        if let Ok(batch) = batch {
            crate::metrics::export_rows(batch.len() as u64);
            rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    });
    encoded_body(header, batches, encoding, move |batch: PointBatch, out| {
        encoder.write_batch(&batch, out)
    })
}

/// A body of `header`, then each item encoded by `encode` on a runtime
/// worker while the next is read, at most [`ENCODE_AHEAD`] in flight, in
/// order; compressed in the same task when `encoding` is set.
fn encoded_body<T, S, F>(
    header: Vec<u8>,
    items: S,
    encoding: Option<Encoding>,
    encode: F,
) -> ByteStream
where
    T: Send + 'static,
    S: Stream<Item = Result<T, StorageError>> + Send + 'static,
    F: Fn(T, &mut Vec<u8>) + Send + Sync + 'static,
{
    let encode = Arc::new(encode);
    let encoded = items
        .map(move |item| {
            let encode = Arc::clone(&encode);
            async move {
                let item = item.map_err(|error| {
                    tracing::error!(%error, "export failed mid-stream; aborting the download");
                    std::io::Error::other(error)
                })?;
                // Formatting is CPU work of about a millisecond per chunk:
                // spawned, so it runs on the other core while this task reads.
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    encode(item, &mut out);
                    match encoding {
                        None => Ok(compress::Compressed {
                            len: out.len() as u64,
                            bytes: Bytes::from(out),
                            crc: crc32fast::Hasher::new(),
                        }),
                        Some(encoding) => encoding.compress(&out),
                    }
                })
                .await
                .map_err(std::io::Error::other)?
            }
        })
        .buffered(ENCODE_AHEAD);
    let first = match encoding {
        None => Bytes::from(header),
        Some(encoding) => {
            let mut first = encoding.header().to_vec();
            match encoding.compress(&header) {
                Ok(compressed) => {
                    first.extend_from_slice(&compressed.bytes);
                    let mut running = compress::Running::default();
                    running.add(&compressed);
                    return with_trailer(first, running, encoded, encoding);
                }
                Err(error) => return stream::once(async move { Err(error) }).boxed(),
            }
        }
    };
    stream::once(async move { Ok(first) })
        .chain(encoded.map(|chunk| chunk.map(|c| c.bytes)))
        .filter(|chunk| std::future::ready(!matches!(chunk, Ok(b) if b.is_empty())))
        .boxed()
}

/// A compressed body: the first bytes, the chunks, then the coding's trailer
/// (gzip's CRC and length) once every chunk went out.
fn with_trailer(
    first: Vec<u8>,
    mut running: compress::Running,
    encoded: impl Stream<Item = std::io::Result<compress::Compressed>> + Send + 'static,
    encoding: Encoding,
) -> ByteStream {
    let mut encoded = Box::pin(encoded);
    let mut done = false;
    let body =
        stream::once(async move { Ok(Bytes::from(first)) }).chain(stream::poll_fn(move |cx| {
            if done {
                return std::task::Poll::Ready(None);
            }
            match encoded.as_mut().poll_next(cx) {
                std::task::Poll::Ready(Some(Ok(chunk))) => {
                    running.add(&chunk);
                    std::task::Poll::Ready(Some(Ok(chunk.bytes)))
                }
                std::task::Poll::Ready(Some(Err(error))) => {
                    done = true;
                    std::task::Poll::Ready(Some(Err(error)))
                }
                std::task::Poll::Ready(None) => {
                    done = true;
                    let trailer = encoding.trailer(&running.crc, running.len);
                    std::task::Poll::Ready(Some(Ok(trailer)))
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        }));
    body.filter(|chunk| std::future::ready(!matches!(chunk, Ok(b) if b.is_empty())))
        .boxed()
}

/// A body written by `write` on a blocking thread (XLSX, Parquet, Arrow).
fn blocking_body<F>(encoding: Option<Encoding>, request: &ExportRequest, write: F) -> ByteStream
where
    F: FnOnce(&tokio::runtime::Handle, &ExportRequest, sink::ChannelWriter) + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<sink::ByteChunk>(4);
    let runtime = tokio::runtime::Handle::current();
    let request = request.clone();
    tokio::task::spawn_blocking(move || {
        let sink = sink::ChannelWriter::new(tx, encoding);
        write(&runtime, &request, sink);
    });
    stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    })
    .boxed()
}

/// Batches a producer task sends into `receiver`, as a stream. Dropping the
/// stream closes the channel, which tells the producer to stop.
pub(crate) fn receiver_stream<T: Send + 'static>(
    mut receiver: mpsc::Receiver<Result<T, StorageError>>,
) -> BoxStream<'static, Result<T, StorageError>> {
    stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

/// `attachment; filename="<ascii>"`, plus RFC 6266 / RFC 8187
/// `filename*=UTF-8''<percent-encoded>` when the id needed sanitising.
pub fn content_disposition(ascii: &str, full: &str) -> String {
    let mut value = format!("attachment; filename=\"{ascii}\"");
    if ascii != full {
        value.push_str("; filename*=UTF-8''");
        for byte in full.bytes() {
            // RFC 8187 attr-char.
            if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                value.push(byte as char);
            } else {
                value.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    value
}

/// Merges consecutive batches smaller than `min_rows`, so tiny store batches
/// do not become tiny chunks. Errors pass through at once.
pub(crate) fn rebatch(
    scan: PointStream,
    min_rows: usize,
) -> impl Stream<Item = Result<PointBatch, StorageError>> + Send + 'static {
    stream::unfold((scan, false), move |(mut scan, done)| async move {
        if done {
            return None;
        }
        let mut merged: Option<PointBatch> = None;
        loop {
            match scan.next().await {
                Some(Ok(batch)) => {
                    let acc = match merged.as_mut() {
                        None if batch.len() >= min_rows => return Some((Ok(batch), (scan, false))),
                        None => merged.insert(batch),
                        Some(acc) => {
                            acc.extend_from_batch(&batch);
                            acc
                        }
                    };
                    if acc.len() >= min_rows {
                        return merged.map(|b| (Ok(b), (scan, false)));
                    }
                }
                Some(Err(error)) => return Some((Err(error), (scan, true))),
                None => return merged.map(|b| (Ok(b), (scan, true))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_adds_the_utf8_name_when_needed() {
        assert_eq!(
            content_disposition("a_b.csv", "a b.csv"),
            "attachment; filename=\"a_b.csv\"; filename*=UTF-8''a%20b.csv"
        );
        assert_eq!(
            content_disposition("t1.csv", "t1.csv"),
            "attachment; filename=\"t1.csv\""
        );
    }

    #[test]
    fn unknown_sensors_are_all_named() {
        let ids = [SensorId::new("a").unwrap(), SensorId::new("b c").unwrap()];
        assert_eq!(not_found_message(&ids[..1]), "sensor \"a\" not found");
        assert_eq!(not_found_message(&ids), "sensors \"a\", \"b c\" not found");
    }
}
