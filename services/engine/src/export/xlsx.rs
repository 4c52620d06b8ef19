//! XLSX export: a real workbook, numbers as numbers, continued on a next
//! sheet past Excel's 1,048,576 rows.
//!
//! rust_xlsxwriter in constant-memory mode writes each sheet's rows to a
//! temporary file as they come, so memory stays flat however long the range;
//! the zip is then written straight into the response body. A workbook can
//! only be zipped once its sheets are complete, so unlike CSV the first body
//! bytes leave when the scan is done; the 200 and the headers leave at once.
//!
//! The workbook is built on a blocking thread that pulls batches from the
//! scan; a dropped body (the client left) stops it at the next batch.

use std::io::Write;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use jiff::tz::TimeZone;
use rust_xlsxwriter::{Workbook, Worksheet, XlsxError};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::ExportRequest;
use crate::storage::{PointStream, SharedStorage};

/// Excel's rows per sheet, including our header row.
pub const EXCEL_MAX_ROWS: u32 = 1_048_576;
/// Data rows per sheet: Excel's limit less the header.
pub const EXCEL_MAX_DATA_ROWS: u32 = EXCEL_MAX_ROWS - 1;

/// Size of the chunks the zip is cut into for the body.
const CHUNK_BYTES: usize = 64 * 1024;

type Chunk = Result<Bytes, std::io::Error>;

/// The XLSX body. `rows_per_sheet` is [`EXCEL_MAX_DATA_ROWS`] outside tests.
pub fn xlsx_body(
    storage: &SharedStorage,
    request: &ExportRequest,
    rows_per_sheet: u32,
    permit: OwnedSemaphorePermit,
) -> Body {
    let scan = storage.scan(&request.sensor_id, request.range);
    let time_zone = request.csv.time_zone.clone();
    let (tx, rx) = mpsc::channel::<Chunk>(4);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let result = write_workbook(&runtime, scan, time_zone, rows_per_sheet, &tx);
        if let Err(error) = result {
            if tx.is_closed() {
                tracing::debug!("XLSX export stopped: the client left");
            } else {
                tracing::error!(%error, "XLSX export failed; aborting the download");
                let _ = tx.blocking_send(Err(std::io::Error::other(error)));
            }
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}

#[derive(Debug, thiserror::Error)]
enum XlsxExportError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("xlsx: {0}")]
    Xlsx(#[from] XlsxError),
    #[error("the client left")]
    ClientGone,
}

fn write_workbook(
    runtime: &tokio::runtime::Handle,
    mut scan: PointStream,
    time_zone: Option<TimeZone>,
    rows_per_sheet: u32,
    tx: &mpsc::Sender<Chunk>,
) -> Result<(), XlsxExportError> {
    let mut workbook = Workbook::new();
    // Deflate level 1: most of an XLSX export's time is zipping the sheet
    // XML; level 1 is about twice as fast as the default 6 for a larger file.
    workbook.set_zip_compression_level(1);
    let mut sheet_rows = 0u32;
    let mut sheets = 0usize;
    let mut time_text = String::new();
    new_sheet(&mut workbook, &time_zone)?;
    sheets += 1;
    while let Some(batch) = runtime.block_on(scan.next()) {
        if tx.is_closed() {
            return Err(XlsxExportError::ClientGone);
        }
        let batch = batch?;
        for i in 0..batch.len() {
            if sheet_rows == rows_per_sheet {
                new_sheet(&mut workbook, &time_zone)?;
                sheets += 1;
                sheet_rows = 0;
            }
            let sheet = workbook.worksheet_from_index(sheets - 1)?;
            let row = sheet_rows + 1;
            sheet.write_number(row, 0, batch.timestamps[i] as f64)?;
            let value = batch.values[i];
            if value.is_finite() {
                sheet.write_number(row, 1, value)?;
            } else {
                // Excel has no NaN or infinity; keep them visible as text,
                // spelt as in the CSV.
                let text = if value.is_nan() {
                    "NaN"
                } else if value > 0.0 {
                    "inf"
                } else {
                    "-inf"
                };
                sheet.write_string(row, 1, text)?;
            }
            sheet.write_number(row, 2, f64::from(batch.qualities[i]))?;
            if let Some(zone) = &time_zone {
                time_text.clear();
                if let Ok(ts) = jiff::Timestamp::from_millisecond(batch.timestamps[i]) {
                    use std::fmt::Write as _;
                    let zoned = ts.to_zoned_datetime(zone.clone());
                    let _ = write!(time_text, "{}", zoned.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z"));
                }
                sheet.write_string(row, 3, &time_text)?;
            }
            sheet_rows += 1;
        }
    }
    drop(scan);
    let writer = ChannelWriter {
        tx,
        buffer: Vec::with_capacity(CHUNK_BYTES),
    };
    workbook.save_to_writer(writer)?;
    Ok(())
}

fn new_sheet(workbook: &mut Workbook, time_zone: &Option<TimeZone>) -> Result<(), XlsxError> {
    let sheet: &mut Worksheet = workbook.add_worksheet_with_constant_memory()?;
    sheet.write_string(0, 0, "timestamp_ms")?;
    sheet.write_string(0, 1, "value")?;
    sheet.write_string(0, 2, "quality")?;
    if time_zone.is_some() {
        sheet.write_string(0, 3, "time_local")?;
    }
    Ok(())
}

/// Cuts the zip into [`CHUNK_BYTES`] chunks for the body; fails (stopping the
/// zip) once the body is gone.
struct ChannelWriter<'a> {
    tx: &'a mpsc::Sender<Chunk>,
    buffer: Vec<u8>,
}

impl ChannelWriter<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client left"))
    }
}

impl Write for ChannelWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl Drop for ChannelWriter<'_> {
    fn drop(&mut self) {
        let _ = self.send();
    }
}
