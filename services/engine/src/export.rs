//! `GET /api/v1/export`: a sensor's raw points in a time range as a streamed
//! CSV (byte-identical to `engine export`) or XLSX download.
//!
//! Everything that can be refused is checked before the 200 goes out: the
//! parameters (400), the sensor (404), the export limit (429). After that the
//! body streams batch by batch from the store's scan; a store failure then
//! aborts the connection (an `Err` in the body stream) so clients mark the
//! download failed instead of saving half a file as complete.
//!
//! CSV is encoded in parallel with the scan: each batch is formatted on a
//! runtime worker while the connection task reads the next one, and
//! [`StreamExt::buffered`] keeps the chunks in order with at most
//! [`ENCODE_AHEAD`] in flight, so memory per export stays bounded.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};
use jiff::tz::TimeZone;
use tokio::sync::OwnedSemaphorePermit;

use crate::csv_format::{CsvEncoder, CsvOptions};
use crate::http::{ApiError, AppState, params};
use crate::model::{PointBatch, SensorId, TimeRange};
use crate::storage::{PointStream, SharedStorage};

pub mod xlsx;

/// `Content-Type` of a CSV export.
pub const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";
/// `Content-Type` of an XLSX export.
pub const XLSX_CONTENT_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// Encoded chunks in flight per export (being formatted or waiting to be
/// sent): about 4 x 120 KB. Measured on 2 cores, 4 beat 2 and 3 (the
/// encoders then never wait for the connection task), and memory stays small.
pub const ENCODE_AHEAD: usize = 4;

/// Batches smaller than this are merged before encoding, so each encode task
/// does enough work to be worth spawning and each chunk is a sensible write.
/// The embedded store's blocks hold up to 4096 points, so its batches pass
/// as they are; only smaller ones (a store's head) are merged.
const MIN_CHUNK_ROWS: usize = 4_096;

/// The file format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Xlsx,
}

/// A checked export request.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub sensor_id: SensorId,
    pub range: TimeRange,
    pub format: ExportFormat,
    pub csv: CsvOptions,
}

impl ExportRequest {
    /// Checks the query parameters: `sensor_id`, `start_ts`, `end_ts`
    /// (required), `format` (`csv`|`xlsx`), `bom`, `delimiter` (`,` `;` or
    /// tab), `decimal` (`.` or `,`), `time_zone` (an IANA name).
    pub fn from_query(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let get = |name: &str| query.get(name).map(String::as_str);
        let sensor_id = params::sensor_id(get("sensor_id"))?;
        let range = params::required_range(get("start_ts"), get("end_ts"))?;
        let format = match get("format") {
            None | Some("csv") => ExportFormat::Csv,
            Some("xlsx") => ExportFormat::Xlsx,
            Some(other) => {
                return Err(ApiError::InvalidParameter(format!(
                    "format: {other:?} is not csv or xlsx"
                )));
            }
        };
        let delimiter = match get("delimiter") {
            None | Some(",") => b',',
            Some(";") => b';',
            Some("\t" | "tab") => b'\t',
            Some(other) => {
                return Err(ApiError::InvalidParameter(format!(
                    "delimiter: {other:?} is not one of , ; tab"
                )));
            }
        };
        let decimal_comma = match get("decimal") {
            None | Some(".") => false,
            Some(",") => true,
            Some(other) => {
                return Err(ApiError::InvalidParameter(format!(
                    "decimal: {other:?} is not . or ,"
                )));
            }
        };
        if decimal_comma && delimiter == b',' {
            return Err(ApiError::InvalidParameter(
                "decimal=, needs a delimiter other than , (use delimiter=;)".to_owned(),
            ));
        }
        let bom = params::flag("bom", get("bom"))?;
        let time_zone = get("time_zone")
            .map(|name| {
                TimeZone::get(name).map_err(|_| {
                    ApiError::InvalidParameter(format!(
                        "time_zone: {name:?} is not a known IANA time zone"
                    ))
                })
            })
            .transpose()?;
        Ok(Self {
            sensor_id,
            range,
            format,
            csv: CsvOptions {
                delimiter,
                decimal_comma,
                bom,
                time_zone,
            },
        })
    }

    /// `sensor_20260101T000000Z_20260102T000000Z.csv`, ASCII only.
    pub fn file_name(&self) -> (String, String) {
        let extension = match self.format {
            ExportFormat::Csv => "csv",
            ExportFormat::Xlsx => "xlsx",
        };
        let suffix = format!(
            "_{}_{}.{extension}",
            file_time(self.range.start_ms),
            file_time(self.range.end_ms)
        );
        let ascii = format!("{}{suffix}", sanitize(self.sensor_id.as_str()));
        let full = format!("{}{suffix}", self.sensor_id.as_str());
        (ascii, full)
    }
}

/// A compact UTC time for file names: `20260101T000000Z`, with `.250` when
/// the milliseconds are not zero.
fn file_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) if ms % 1000 == 0 => ts.strftime("%Y%m%dT%H%M%SZ").to_string(),
        Ok(ts) => ts.strftime("%Y%m%dT%H%M%S.%3fZ").to_string(),
        Err(_) => ms.to_string(),
    }
}

/// Keeps ASCII letters, digits, `-` and `.`; everything else becomes `_`
/// (runs collapsed), so the name is safe in every file system and shell.
fn sanitize(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        let keep = c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if keep {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let trimmed = out.trim_matches(|c| c == '_' || c == '.');
    if trimmed.is_empty() {
        "sensor".to_owned()
    } else {
        trimmed.to_owned()
    }
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

/// The export handler.
pub async fn export(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let request = ExportRequest::from_query(&query)?;
    let permit = Arc::clone(&state.export_permits)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyRequests)?;
    if state.storage.sensor(&request.sensor_id).await?.is_none() {
        return Err(ApiError::SensorNotFound(request.sensor_id));
    }
    let (ascii, full) = request.file_name();
    let disposition = HeaderValue::from_str(&content_disposition(&ascii, &full))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    let (content_type, body) = match request.format {
        ExportFormat::Csv => (CSV_CONTENT_TYPE, csv_body(&state.storage, &request, permit)),
        ExportFormat::Xlsx => (
            XLSX_CONTENT_TYPE,
            xlsx::xlsx_body(&state.storage, &request, state.xlsx_rows_per_sheet, permit),
        ),
    };
    tracing::info!(
        sensor_id = %request.sensor_id,
        start_ms = request.range.start_ms,
        end_ms = request.range.end_ms,
        format = ?request.format,
        "export started"
    );
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response())
}

/// The CSV body: the header at once, then the rows batch by batch.
fn csv_body(
    storage: &SharedStorage,
    request: &ExportRequest,
    permit: OwnedSemaphorePermit,
) -> Body {
    let encoder = Arc::new(CsvEncoder::new(request.csv.clone()));
    let mut header = Vec::with_capacity(64);
    encoder.write_header(&mut header);
    let rows = rebatch(
        storage.scan(&request.sensor_id, request.range),
        MIN_CHUNK_ROWS,
    )
    .map(move |item| {
        let encoder = Arc::clone(&encoder);
        async move {
            let batch = item.map_err(|error| {
                tracing::error!(%error, "export failed mid-stream; aborting the download");
                std::io::Error::other(error)
            })?;
            // Formatting is CPU work of about a millisecond per chunk:
            // spawned, so it runs on the other core while this task scans.
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(batch.len() * 32);
                encoder.write_batch(&batch, &mut out);
                Bytes::from(out)
            })
            .await
            .map_err(std::io::Error::other)
        }
    })
    .buffered(ENCODE_AHEAD);
    let body = stream::once(async move { Ok(Bytes::from(header)) }).chain(rows);
    Body::from_stream(hold(body, permit))
}

/// Keeps `permit` alive exactly as long as the body stream, so the export
/// slot is freed when the download ends or the client leaves (not when the
/// headers leave), and logs once how the export ended.
pub(crate) fn hold<S>(body: S, permit: OwnedSemaphorePermit) -> Guarded<S>
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    Guarded {
        inner: Box::pin(body),
        _permit: permit,
        started: std::time::Instant::now(),
        bytes: 0,
        outcome: Outcome::Left,
    }
}

/// How an export's body ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every byte was handed to the connection.
    Completed,
    /// The store failed; the connection was aborted.
    Failed,
    /// Dropped before the end: the client left or the server shut down.
    Left,
}

/// The body stream of an export, with its permit and its bookkeeping.
pub(crate) struct Guarded<S> {
    inner: std::pin::Pin<Box<S>>,
    _permit: OwnedSemaphorePermit,
    started: std::time::Instant,
    bytes: u64,
    outcome: Outcome,
}

impl<S> futures_util::Stream for Guarded<S>
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>>,
{
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(chunk))) => self.bytes += chunk.len() as u64,
            std::task::Poll::Ready(Some(Err(_))) => self.outcome = Outcome::Failed,
            std::task::Poll::Ready(None) if self.outcome == Outcome::Left => {
                self.outcome = Outcome::Completed;
            }
            _ => {}
        }
        polled
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        tracing::info!(
            outcome = ?self.outcome,
            bytes = self.bytes,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "export ended"
        );
    }
}

/// Merges consecutive batches smaller than `min_rows`, so tiny store batches
/// do not become tiny chunks. Errors pass through at once.
pub(crate) fn rebatch(
    scan: PointStream,
    min_rows: usize,
) -> impl futures_util::Stream<Item = Result<PointBatch, crate::storage::StorageError>> + Send + 'static
{
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
    fn file_names_are_safe_and_keep_the_range() {
        assert_eq!(sanitize("Kessel Ü1/Temperatur"), "Kessel_1_Temperatur");
        assert_eq!(sanitize("../../etc/passwd"), "etc_passwd");
        assert_eq!(sanitize("ÄÖÜ"), "sensor");
        assert_eq!(file_time(1_767_225_600_000), "20260101T000000Z");
        assert_eq!(file_time(1_767_225_600_250), "20260101T000000.250Z");
        assert_eq!(
            content_disposition("a_b.csv", "a b.csv"),
            "attachment; filename=\"a_b.csv\"; filename*=UTF-8''a%20b.csv"
        );
        assert_eq!(
            content_disposition("t1.csv", "t1.csv"),
            "attachment; filename=\"t1.csv\""
        );
    }
}
