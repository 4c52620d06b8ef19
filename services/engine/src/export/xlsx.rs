//! XLSX export, streamed: a real workbook whose bytes leave as the scan runs,
//! numbers as numbers, continued on a next sheet past Excel's 1,048,576 rows.
//!
//! An XLSX file is a zip of XML parts. The sheets are written first, row by
//! row, each deflated (level 1) straight into the body; the zip's data
//! descriptors carry each part's CRC and sizes after its data, so nothing is
//! ever seeked back to or held whole. The small parts that list the sheets
//! (`workbook.xml`, relationships, content types) and the zip's central
//! directory follow at the end, when the number of sheets is known. Memory is
//! one batch and the deflate window, whatever the range; no temporary files.
//!
//! Cells: `timestamp_ms`, `value` and `quality` are numbers (`value` exact:
//! the shortest decimal that reads back to the same f64); NaN and infinities,
//! which Excel cannot hold, are the text `NaN`, `inf`, `-inf` as in the CSV.
//! With `time_zone`, a `time_local` text column as in the CSV.
//!
//! The encoding runs on a blocking thread (deflate is CPU work) that pulls
//! batches from the scan; a dropped body (the client left) stops it at the
//! next chunk.

use std::io::Write;

use axum::body::{Body, Bytes};
use flate2::Compression;
use flate2::write::DeflateEncoder;
use futures_util::StreamExt;
use jiff::tz::TimeZone;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::ExportRequest;
use crate::model::PointBatch;
use crate::storage::{PointStream, SharedStorage, StorageError};

/// Excel's rows per sheet, including our header row.
pub const EXCEL_MAX_ROWS: u32 = 1_048_576;
/// Data rows per sheet: Excel's limit less the header.
pub const EXCEL_MAX_DATA_ROWS: u32 = EXCEL_MAX_ROWS - 1;

/// Size of the chunks the zip is cut into for the body.
const CHUNK_BYTES: usize = 128 * 1024;

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
        let sink = ChannelWriter {
            tx: &tx,
            buffer: Vec::with_capacity(CHUNK_BYTES),
        };
        let result = write_workbook(&runtime, scan, time_zone, rows_per_sheet.max(1), sink);
        if let Err(error) = result {
            if tx.is_closed() {
                tracing::debug!("XLSX export stopped: the client left");
            } else {
                tracing::error!(%error, "XLSX export failed; aborting the download");
                let _ = tx.blocking_send(Err(error));
            }
        }
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}

fn write_workbook<W: Write>(
    runtime: &tokio::runtime::Handle,
    mut scan: PointStream,
    time_zone: Option<TimeZone>,
    rows_per_sheet: u32,
    out: W,
) -> std::io::Result<()> {
    let mut zip = ZipStream::new(out);
    let mut sheet = SheetWriter::new(time_zone);
    let mut sheets = 1u32;
    let mut rows_in_sheet = 0u32;
    let mut xml = Vec::with_capacity(512 * 1024);
    zip.begin(&sheet_part(sheets))?;
    sheet.start(&mut xml);
    while let Some(batch) = runtime.block_on(scan.next()) {
        let batch: PointBatch = batch.map_err(storage_error)?;
        let mut from = 0;
        while from < batch.len() {
            if rows_in_sheet == rows_per_sheet {
                sheet.end(&mut xml);
                zip.write(&xml)?;
                xml.clear();
                zip.end()?;
                sheets += 1;
                rows_in_sheet = 0;
                zip.begin(&sheet_part(sheets))?;
                sheet.start(&mut xml);
            }
            let take = (batch.len() - from).min((rows_per_sheet - rows_in_sheet) as usize);
            sheet.rows(&batch, from..from + take, &mut xml);
            rows_in_sheet += take as u32;
            from += take;
            zip.write(&xml)?;
            xml.clear();
        }
    }
    drop(scan);
    sheet.end(&mut xml);
    zip.write(&xml)?;
    zip.end()?;
    for (name, content) in package_parts(sheets) {
        zip.begin(&name)?;
        zip.write(content.as_bytes())?;
        zip.end()?;
    }
    zip.finish()
}

fn storage_error(error: StorageError) -> std::io::Error {
    std::io::Error::other(error)
}

fn sheet_part(number: u32) -> String {
    format!("xl/worksheets/sheet{number}.xml")
}

const MAIN_NS: &str = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
const REL_NS: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
const PKG_REL_NS: &str = "http://schemas.openxmlformats.org/package/2006/relationships";
const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n";

/// The parts besides the sheets, for a workbook of `sheets` sheets.
fn package_parts(sheets: u32) -> Vec<(String, String)> {
    let numbers = 1..=sheets;
    let sheet_list: String = numbers
        .clone()
        .map(|n| format!("<sheet name=\"Sheet{n}\" sheetId=\"{n}\" r:id=\"rId{n}\"/>"))
        .collect();
    let sheet_rels: String = numbers
        .clone()
        .map(|n| {
            format!(
                "<Relationship Id=\"rId{n}\" Type=\"{REL_NS}/worksheet\" Target=\"worksheets/sheet{n}.xml\"/>"
            )
        })
        .collect();
    let sheet_types: String = numbers
        .map(|n| {
            format!(
                "<Override PartName=\"/xl/worksheets/sheet{n}.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/>"
            )
        })
        .collect();
    let styles_id = sheets + 1;
    vec![
        (
            "xl/styles.xml".into(),
            format!(
                "{XML_DECL}<styleSheet xmlns=\"{MAIN_NS}\">\
                 <fonts count=\"1\"><font><sz val=\"11\"/><name val=\"Calibri\"/><family val=\"2\"/></font></fonts>\
                 <fills count=\"2\"><fill><patternFill patternType=\"none\"/></fill><fill><patternFill patternType=\"gray125\"/></fill></fills>\
                 <borders count=\"1\"><border><left/><right/><top/><bottom/><diagonal/></border></borders>\
                 <cellStyleXfs count=\"1\"><xf numFmtId=\"0\" fontId=\"0\" fillId=\"0\" borderId=\"0\"/></cellStyleXfs>\
                 <cellXfs count=\"1\"><xf numFmtId=\"0\" fontId=\"0\" fillId=\"0\" borderId=\"0\" xfId=\"0\"/></cellXfs>\
                 <cellStyles count=\"1\"><cellStyle name=\"Normal\" xfId=\"0\" builtinId=\"0\"/></cellStyles>\
                 </styleSheet>"
            ),
        ),
        (
            "xl/workbook.xml".into(),
            format!(
                "{XML_DECL}<workbook xmlns=\"{MAIN_NS}\" xmlns:r=\"{REL_NS}\"><sheets>{sheet_list}</sheets></workbook>"
            ),
        ),
        (
            "xl/_rels/workbook.xml.rels".into(),
            format!(
                "{XML_DECL}<Relationships xmlns=\"{PKG_REL_NS}\">{sheet_rels}\
                 <Relationship Id=\"rId{styles_id}\" Type=\"{REL_NS}/styles\" Target=\"styles.xml\"/></Relationships>"
            ),
        ),
        (
            "_rels/.rels".into(),
            format!(
                "{XML_DECL}<Relationships xmlns=\"{PKG_REL_NS}\">\
                 <Relationship Id=\"rId1\" Type=\"{REL_NS}/officeDocument\" Target=\"xl/workbook.xml\"/></Relationships>"
            ),
        ),
        (
            "[Content_Types].xml".into(),
            format!(
                "{XML_DECL}<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
                 <Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/>\
                 <Default Extension=\"xml\" ContentType=\"application/xml\"/>\
                 <Override PartName=\"/xl/workbook.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml\"/>\
                 <Override PartName=\"/xl/styles.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml\"/>\
                 {sheet_types}</Types>"
            ),
        ),
    ]
}

/// Writes one sheet's XML: a header row, then the points, one row each.
struct SheetWriter {
    time_zone: Option<TimeZone>,
    /// The next row number (1-based, as in `A1`).
    row: u32,
    ints: itoa::Buffer,
    floats: ryu::Buffer,
}

impl SheetWriter {
    fn new(time_zone: Option<TimeZone>) -> Self {
        Self {
            time_zone,
            row: 1,
            ints: itoa::Buffer::new(),
            floats: ryu::Buffer::new(),
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(XML_DECL.as_bytes());
        out.extend_from_slice(b"<worksheet xmlns=\"");
        out.extend_from_slice(MAIN_NS.as_bytes());
        out.extend_from_slice(b"\"><sheetData><row r=\"1\">");
        self.row = 1;
        let mut headers = vec!["timestamp_ms", "value", "quality"];
        if self.time_zone.is_some() {
            headers.push("time_local");
        }
        for (column, header) in headers.into_iter().enumerate() {
            self.text_cell(column, header, out);
        }
        out.extend_from_slice(b"</row>");
        self.row = 2;
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"</sheetData></worksheet>");
    }

    fn rows(&mut self, batch: &PointBatch, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        let mut local = String::new();
        for i in range {
            out.extend_from_slice(b"<row r=\"");
            out.extend_from_slice(self.ints.format(self.row).as_bytes());
            out.extend_from_slice(b"\">");
            self.number_cell(0, NumberText::Int(batch.timestamps[i]), out);
            let value = batch.values[i];
            if value.is_finite() {
                self.number_cell(1, NumberText::Float(value), out);
            } else {
                let text = if value.is_nan() {
                    "NaN"
                } else if value > 0.0 {
                    "inf"
                } else {
                    "-inf"
                };
                self.text_cell(1, text, out);
            }
            self.number_cell(2, NumberText::Int(i64::from(batch.qualities[i])), out);
            if let Some(zone) = &self.time_zone {
                local.clear();
                if let Ok(ts) = jiff::Timestamp::from_millisecond(batch.timestamps[i]) {
                    use std::fmt::Write as _;
                    let zoned = ts.to_zoned_datetime(zone.clone());
                    let _ = write!(local, "{}", zoned.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z"));
                }
                let text = std::mem::take(&mut local);
                self.text_cell(3, &text, out);
                local = text;
            }
            out.extend_from_slice(b"</row>");
            self.row += 1;
        }
    }

    /// `A7`-style reference of `column` (0-based, at most 4 columns) in the current row.
    fn reference(&mut self, column: usize, out: &mut Vec<u8>) {
        out.push(b'A' + column as u8);
        out.extend_from_slice(self.ints.format(self.row).as_bytes());
    }

    fn number_cell(&mut self, column: usize, number: NumberText, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<c r=\"");
        self.reference(column, out);
        out.extend_from_slice(b"\"><v>");
        match number {
            NumberText::Int(n) => out.extend_from_slice(self.ints.format(n).as_bytes()),
            // ryu's shortest round-trip form; `1e300` is valid xsd:double.
            NumberText::Float(x) => out.extend_from_slice(self.floats.format_finite(x).as_bytes()),
        }
        out.extend_from_slice(b"</v></c>");
    }

    /// A text cell; our texts hold no characters XML needs escaped.
    fn text_cell(&mut self, column: usize, text: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<c r=\"");
        self.reference(column, out);
        out.extend_from_slice(b"\" t=\"inlineStr\"><is><t>");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"</t></is></c>");
    }
}

enum NumberText {
    Int(i64),
    Float(f64),
}

/// A zip archive written front to back, never seeking: each entry's CRC and
/// sizes follow its data in a data descriptor (general purpose flag bit 3).
/// No ZIP64: an archive past 4 GiB fails (and the download with it) rather
/// than be written wrong; that is over 100 million rows.
struct ZipStream<W: Write> {
    state: EntryState<W>,
    entries: Vec<ZipEntry>,
}

enum EntryState<W: Write> {
    Between(Counting<W>),
    In(Box<OpenEntry<W>>),
    Broken,
}

struct OpenEntry<W: Write> {
    deflate: DeflateEncoder<Counting<W>>,
    crc: crc32fast::Hasher,
    uncompressed: u64,
    entry: ZipEntry,
}

struct ZipEntry {
    name: String,
    offset: u64,
    crc: u32,
    compressed: u64,
    uncompressed: u64,
}

/// Counts the bytes written through it: the zip's offsets.
struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// MS-DOS date of 1980-01-01 and time 00:00: the zip's timestamps carry no
/// information here and a fixed one keeps exports reproducible.
const DOS_DATE: u16 = (1 << 5) | 1;
const DOS_TIME: u16 = 0;

fn too_big() -> std::io::Error {
    std::io::Error::other("the XLSX would exceed 4 GiB (ZIP64 is not written)")
}

fn u32_of(n: u64) -> std::io::Result<u32> {
    u32::try_from(n).map_err(|_| too_big())
}

impl<W: Write> ZipStream<W> {
    fn new(out: W) -> Self {
        Self {
            state: EntryState::Between(Counting {
                inner: out,
                written: 0,
            }),
            entries: Vec::new(),
        }
    }

    fn begin(&mut self, name: &str) -> std::io::Result<()> {
        let EntryState::Between(mut out) = std::mem::replace(&mut self.state, EntryState::Broken)
        else {
            return Err(std::io::Error::other("zip entry already open"));
        };
        let offset = out.written;
        let mut header = Vec::with_capacity(30 + name.len());
        header.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        header.extend_from_slice(&20u16.to_le_bytes()); // version needed: 2.0
        header.extend_from_slice(&0x0008u16.to_le_bytes()); // data descriptor
        header.extend_from_slice(&8u16.to_le_bytes()); // deflate
        header.extend_from_slice(&DOS_TIME.to_le_bytes());
        header.extend_from_slice(&DOS_DATE.to_le_bytes());
        header.extend_from_slice(&[0; 12]); // CRC and sizes: in the descriptor
        header.extend_from_slice(&(name.len() as u16).to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes()); // no extra field
        header.extend_from_slice(name.as_bytes());
        out.write_all(&header)?;
        self.state = EntryState::In(Box::new(OpenEntry {
            deflate: DeflateEncoder::new(out, Compression::fast()),
            crc: crc32fast::Hasher::new(),
            uncompressed: 0,
            entry: ZipEntry {
                name: name.to_owned(),
                offset,
                crc: 0,
                compressed: 0,
                uncompressed: 0,
            },
        }));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let EntryState::In(open) = &mut self.state else {
            return Err(std::io::Error::other("no zip entry open"));
        };
        open.crc.update(data);
        open.uncompressed += data.len() as u64;
        open.deflate.write_all(data)
    }

    fn end(&mut self) -> std::io::Result<()> {
        let EntryState::In(open) = std::mem::replace(&mut self.state, EntryState::Broken) else {
            return Err(std::io::Error::other("no zip entry open"));
        };
        let OpenEntry {
            deflate,
            crc,
            uncompressed,
            mut entry,
        } = *open;
        let data_start = entry.offset + 30 + entry.name.len() as u64;
        let mut out = deflate.finish()?;
        entry.crc = crc.finalize();
        entry.compressed = out.written - data_start;
        entry.uncompressed = uncompressed;
        let mut descriptor = Vec::with_capacity(16);
        descriptor.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        descriptor.extend_from_slice(&entry.crc.to_le_bytes());
        descriptor.extend_from_slice(&u32_of(entry.compressed)?.to_le_bytes());
        descriptor.extend_from_slice(&u32_of(entry.uncompressed)?.to_le_bytes());
        out.write_all(&descriptor)?;
        self.entries.push(entry);
        self.state = EntryState::Between(out);
        Ok(())
    }

    /// Writes the central directory and its end record.
    fn finish(mut self) -> std::io::Result<()> {
        let EntryState::Between(mut out) = std::mem::replace(&mut self.state, EntryState::Broken)
        else {
            return Err(std::io::Error::other("zip entry still open"));
        };
        let directory_start = out.written;
        for entry in &self.entries {
            let mut record = Vec::with_capacity(46 + entry.name.len());
            record.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            record.extend_from_slice(&20u16.to_le_bytes()); // made by: 2.0
            record.extend_from_slice(&20u16.to_le_bytes()); // needed: 2.0
            record.extend_from_slice(&0x0008u16.to_le_bytes());
            record.extend_from_slice(&8u16.to_le_bytes());
            record.extend_from_slice(&DOS_TIME.to_le_bytes());
            record.extend_from_slice(&DOS_DATE.to_le_bytes());
            record.extend_from_slice(&entry.crc.to_le_bytes());
            record.extend_from_slice(&u32_of(entry.compressed)?.to_le_bytes());
            record.extend_from_slice(&u32_of(entry.uncompressed)?.to_le_bytes());
            record.extend_from_slice(&(entry.name.len() as u16).to_le_bytes());
            record.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attributes
            record.extend_from_slice(&[0; 4]); // external attributes
            record.extend_from_slice(&u32_of(entry.offset)?.to_le_bytes());
            record.extend_from_slice(entry.name.as_bytes());
            out.write_all(&record)?;
        }
        let directory_size = out.written - directory_start;
        let count = u16::try_from(self.entries.len()).map_err(|_| too_big())?;
        let mut end = Vec::with_capacity(22);
        end.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        end.extend_from_slice(&[0; 4]); // disk numbers
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&u32_of(directory_size)?.to_le_bytes());
        end.extend_from_slice(&u32_of(directory_start)?.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes()); // no comment
        out.write_all(&end)?;
        out.flush()
    }
}

/// Cuts the zip into [`CHUNK_BYTES`] chunks for the body; fails (stopping the
/// export) once the body is gone.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zip_entries_carry_crc_and_sizes_in_descriptors() {
        let mut bytes = Vec::new();
        let mut zip = ZipStream::new(&mut bytes);
        zip.begin("a.txt").unwrap();
        zip.write(b"hello hello hello").unwrap();
        zip.end().unwrap();
        zip.finish().unwrap();
        // Local header, then the end-of-central-directory record last.
        assert_eq!(&bytes[..4], b"PK\x03\x04");
        let end = &bytes[bytes.len() - 22..];
        assert_eq!(&end[..4], b"PK\x05\x06");
        assert_eq!(u16::from_le_bytes([end[10], end[11]]), 1);
        let crc = crc32fast::hash(b"hello hello hello");
        let descriptor_at = bytes.windows(4).position(|w| w == b"PK\x07\x08").unwrap();
        assert_eq!(
            bytes[descriptor_at + 4..descriptor_at + 8],
            crc.to_le_bytes()
        );
    }
}
