//! XLSX export, streamed: a real workbook whose bytes leave as the export
//! runs, numbers as numbers, continued on a next sheet past Excel's 1,048,576
//! rows, and an `Info` sheet last that names the sensors, range, time zone,
//! query and export time.
//!
//! An XLSX file is a zip of XML parts. The sheets are written first, row by
//! row, each deflated (level 1) straight into the body; the zip's data
//! descriptors carry each part's CRC and sizes after its data, so nothing is
//! ever seeked back to or held whole. The small parts that list the sheets
//! (`workbook.xml`, relationships, content types), the `Info` sheet and the
//! zip's central directory follow at the end, when the number of sheets and
//! rows is known. Memory is one chunk and the deflate window, whatever the
//! range; no temporary files.
//!
//! Cells: timestamps, values, qualities and aggregates are numbers (values
//! exact: the shortest decimal that reads back to the same f64); NaN and
//! infinities, which Excel cannot hold, are the text `NaN`, `inf`, `-inf`.
//! Text cells (sensor ids, headers) are inline strings, which Excel never
//! evaluates as formulas. With `time_zone`, `time_local` is a real date-time
//! (a serial number styled `yyyy-mm-dd hh:mm:ss.000`, sortable and
//! chartable) and `utc_offset` its offset as text (`UTC+02:00`), which keeps
//! the hour repeated at the end of summer time apart.
//!
//! The encoding runs on a blocking thread (deflate is CPU work) that pulls
//! chunks from the export; a dropped body (the client left) stops it at the
//! next chunk.

use std::io::Write;

use flate2::Compression;
use flate2::write::DeflateEncoder;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use jiff::tz::TimeZone;

use super::request::ExportRequest;
use super::sink::ChannelWriter;
use super::table::{Cells, Chunk, Schema};
use crate::csv_format::write_short_decimal;
use crate::storage::StorageError;

/// Excel's rows per sheet, including our header row.
pub const EXCEL_MAX_ROWS: u32 = 1_048_576;
/// Data rows per sheet: Excel's limit less the header.
pub const EXCEL_MAX_DATA_ROWS: u32 = EXCEL_MAX_ROWS - 1;
/// Excel's columns per sheet.
pub const EXCEL_MAX_COLUMNS: usize = 16_384;

/// Milliseconds from Excel's day 0 (1899-12-30) to 1970-01-01.
const EXCEL_EPOCH_MS: i64 = 25_569 * 86_400_000;
const DAY_MS: f64 = 86_400_000.0;

/// Writes the workbook into `sink` on the calling (blocking) thread.
/// `rows_per_sheet` is [`EXCEL_MAX_DATA_ROWS`] outside tests.
pub fn write_xlsx(
    runtime: &tokio::runtime::Handle,
    chunks: BoxStream<'static, Result<Chunk, StorageError>>,
    schema: &Schema,
    request: &ExportRequest,
    rows_per_sheet: u32,
    mut sink: ChannelWriter,
) {
    let result = write_workbook(
        runtime,
        chunks,
        schema,
        request,
        rows_per_sheet.max(1),
        &mut sink,
    );
    if let Err(error) = result.and_then(|()| sink.finish()) {
        sink.fail(error);
    }
}

fn write_workbook<W: Write>(
    runtime: &tokio::runtime::Handle,
    mut chunks: BoxStream<'static, Result<Chunk, StorageError>>,
    schema: &Schema,
    request: &ExportRequest,
    rows_per_sheet: u32,
    out: W,
) -> std::io::Result<()> {
    let mut zip = ZipStream::new(out);
    let mut sheet = SheetWriter::new(schema, request.csv.time_zone.clone());
    let mut sheets = 1u32;
    let mut rows_in_sheet = 0u32;
    let mut total_rows = 0u64;
    let mut xml = Vec::with_capacity(512 * 1024);
    zip.begin(&sheet_part(sheets))?;
    sheet.start(&mut xml);
    while let Some(chunk) = runtime.block_on(chunks.next()) {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let mut from = 0;
        while from < chunk.len() {
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
            let take = (chunk.len() - from).min((rows_per_sheet - rows_in_sheet) as usize);
            sheet.rows(&chunk, from..from + take, &mut xml);
            rows_in_sheet += take as u32;
            total_rows += take as u64;
            from += take;
            zip.write(&xml)?;
            xml.clear();
        }
    }
    drop(chunks);
    sheet.end(&mut xml);
    zip.write(&xml)?;
    zip.end()?;
    zip.begin(&sheet_part(sheets + 1))?;
    zip.write(info_sheet(request, total_rows).as_bytes())?;
    zip.end()?;
    for (name, content) in package_parts(sheets) {
        zip.begin(&name)?;
        zip.write(content.as_bytes())?;
        zip.end()?;
    }
    zip.finish()
}

fn sheet_part(number: u32) -> String {
    format!("xl/worksheets/sheet{number}.xml")
}

const MAIN_NS: &str = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
const REL_NS: &str = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
const PKG_REL_NS: &str = "http://schemas.openxmlformats.org/package/2006/relationships";
const XML_DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n";

/// Escapes text for XML character data and attribute values.
fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn utc_text(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// The `Info` sheet: what the workbook holds, as label/value rows.
fn info_sheet(request: &ExportRequest, rows: u64) -> String {
    let mut entries: Vec<(String, String)> = Vec::new();
    for (i, id) in request.sensors.iter().enumerate() {
        entries.push((format!("sensor {}", i + 1), id.as_str().to_owned()));
    }
    entries.push(("range start (UTC)".into(), utc_text(request.range.start_ms)));
    entries.push((
        "range end (UTC, excluded)".into(),
        utc_text(request.range.end_ms),
    ));
    entries.push((
        "time zone".into(),
        request
            .csv
            .time_zone
            .as_ref()
            .and_then(|z| z.iana_name().map(str::to_owned))
            .unwrap_or_else(|| "UTC (no time_zone)".into()),
    ));
    entries.push(("layout".into(), request.layout.name().into()));
    if let Some(resample) = &request.resample {
        entries.push(("interval".into(), resample.interval_text.clone()));
        let names: Vec<&str> = resample.aggregates.iter().map(|a| a.name()).collect();
        entries.push(("aggregates".into(), names.join(",")));
        entries.push(("include_bad".into(), resample.include_bad.to_string()));
    }
    entries.push(("query".into(), request.canonical_query()));
    entries.push(("rows".into(), rows.to_string()));
    entries.push(("exported at (UTC)".into(), utc_text(request.exported_at_ms)));
    entries.push((
        "exported by".into(),
        format!("sensor engine {}", env!("CARGO_PKG_VERSION")),
    ));
    let mut xml = format!("{XML_DECL}<worksheet xmlns=\"{MAIN_NS}\"><sheetData>");
    for (i, (label, value)) in entries.iter().enumerate() {
        let r = i + 1;
        xml.push_str(&format!(
            "<row r=\"{r}\"><c r=\"A{r}\" t=\"inlineStr\"><is><t>{}</t></is></c><c r=\"B{r}\" t=\"inlineStr\"><is><t>{}</t></is></c></row>",
            escape_xml(label),
            escape_xml(value)
        ));
    }
    xml.push_str("</sheetData></worksheet>");
    xml
}

/// The parts besides the sheets, for a workbook of `sheets` data sheets and
/// the `Info` sheet after them.
fn package_parts(sheets: u32) -> Vec<(String, String)> {
    let numbers = 1..=sheets + 1;
    let sheet_list: String = numbers
        .clone()
        .map(|n| {
            let name = if n > sheets {
                "Info".to_owned()
            } else {
                format!("Sheet{n}")
            };
            format!("<sheet name=\"{name}\" sheetId=\"{n}\" r:id=\"rId{n}\"/>")
        })
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
    let styles_id = sheets + 2;
    vec![
        (
            "xl/styles.xml".into(),
            format!(
                "{XML_DECL}<styleSheet xmlns=\"{MAIN_NS}\">\
                 <numFmts count=\"1\"><numFmt numFmtId=\"164\" formatCode=\"yyyy\\-mm\\-dd\\ hh:mm:ss.000\"/></numFmts>\
                 <fonts count=\"1\"><font><sz val=\"11\"/><name val=\"Calibri\"/><family val=\"2\"/></font></fonts>\
                 <fills count=\"2\"><fill><patternFill patternType=\"none\"/></fill><fill><patternFill patternType=\"gray125\"/></fill></fills>\
                 <borders count=\"1\"><border><left/><right/><top/><bottom/><diagonal/></border></borders>\
                 <cellStyleXfs count=\"1\"><xf numFmtId=\"0\" fontId=\"0\" fillId=\"0\" borderId=\"0\"/></cellStyleXfs>\
                 <cellXfs count=\"2\"><xf numFmtId=\"0\" fontId=\"0\" fillId=\"0\" borderId=\"0\" xfId=\"0\"/>\
                 <xf numFmtId=\"164\" fontId=\"0\" fillId=\"0\" borderId=\"0\" xfId=\"0\" applyNumberFormat=\"1\"/></cellXfs>\
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

/// `A`, `B`, ..., `Z`, `AA`, ... for a 0-based column.
fn column_letters(mut column: usize) -> Vec<u8> {
    let mut letters = Vec::new();
    loop {
        letters.push(b'A' + (column % 26) as u8);
        if column < 26 {
            break;
        }
        column = column / 26 - 1;
    }
    letters.reverse();
    letters
}

/// Writes one sheet's XML: a header row, then the rows of chunks.
struct SheetWriter {
    headers: Vec<String>,
    long: bool,
    /// Each sensor id, escaped for XML once.
    sensor_texts: Vec<String>,
    time_zone: Option<TimeZone>,
    letters: Vec<Vec<u8>>,
    /// The next row number (1-based, as in `A1`).
    row: u32,
    ints: itoa::Buffer,
    floats: ryu::Buffer,
}

impl SheetWriter {
    fn new(schema: &Schema, time_zone: Option<TimeZone>) -> Self {
        let mut headers: Vec<String> = schema.names().iter().map(|n| escape_xml(n)).collect();
        if time_zone.is_some() {
            headers.push("time_local".into());
            headers.push("utc_offset".into());
        }
        let letters = (0..headers.len()).map(column_letters).collect();
        Self {
            headers,
            long: schema.long,
            sensor_texts: schema
                .sensors
                .iter()
                .map(|s| escape_xml(s.as_str()))
                .collect(),
            time_zone,
            letters,
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
        for column in 0..self.headers.len() {
            let header = std::mem::take(&mut self.headers[column]);
            self.text_cell(column, &header, out);
            self.headers[column] = header;
        }
        out.extend_from_slice(b"</row>");
        self.row = 2;
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"</sheetData></worksheet>");
    }

    fn rows(&mut self, chunk: &Chunk, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        for i in range {
            out.extend_from_slice(b"<row r=\"");
            out.extend_from_slice(self.ints.format(self.row).as_bytes());
            out.extend_from_slice(b"\">");
            let mut column = 0;
            if self.long {
                let text = std::mem::take(&mut self.sensor_texts[chunk.sensors[i] as usize]);
                self.text_cell(column, &text, out);
                self.sensor_texts[chunk.sensors[i] as usize] = text;
                column += 1;
            }
            self.number_cell(column, NumberText::Int(chunk.timestamps[i]), None, out);
            column += 1;
            for cells in &chunk.columns {
                if cells.is_present(i) {
                    match &cells.cells {
                        Cells::Float(values) => self.float_cell(column, values[i], out),
                        Cells::Quality(values) => {
                            self.number_cell(
                                column,
                                NumberText::Int(i64::from(values[i])),
                                None,
                                out,
                            );
                        }
                        Cells::Count(values) => {
                            self.number_cell(column, NumberText::Int(values[i] as i64), None, out);
                        }
                    }
                }
                column += 1;
            }
            if let Some(zone) = self.time_zone.clone()
                && let Ok(ts) = jiff::Timestamp::from_millisecond(chunk.timestamps[i])
            {
                let offset = zone.to_offset(ts);
                let local_ms = chunk.timestamps[i] + i64::from(offset.seconds()) * 1000;
                // One division of an exact integer: correctly rounded.
                let serial = (local_ms + EXCEL_EPOCH_MS) as f64 / DAY_MS;
                self.number_cell(column, NumberText::Float(serial), Some(1), out);
                let text = ts.to_zoned_datetime(zone).strftime("UTC%:z").to_string();
                self.text_cell(column + 1, &text, out);
            }
            out.extend_from_slice(b"</row>");
            self.row += 1;
        }
    }

    /// `A7`-style reference of `column` (0-based) in the current row.
    fn reference(&mut self, column: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.letters[column]);
        out.extend_from_slice(self.ints.format(self.row).as_bytes());
    }

    fn float_cell(&mut self, column: usize, value: f64, out: &mut Vec<u8>) {
        if value.is_finite() {
            self.number_cell(column, NumberText::Float(value), None, out);
        } else {
            let text = if value.is_nan() {
                "NaN"
            } else if value > 0.0 {
                "inf"
            } else {
                "-inf"
            };
            self.text_cell(column, text, out);
        }
    }

    fn number_cell(
        &mut self,
        column: usize,
        number: NumberText,
        style: Option<u8>,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(b"<c r=\"");
        self.reference(column, out);
        if let Some(style) = style {
            out.extend_from_slice(b"\" s=\"");
            out.extend_from_slice(self.ints.format(style).as_bytes());
        }
        out.extend_from_slice(b"\"><v>");
        match number {
            NumberText::Int(n) => out.extend_from_slice(self.ints.format(n).as_bytes()),
            // ryu's shortest round-trip form; `1e300` is valid xsd:double.
            NumberText::Float(x) => {
                if !write_short_decimal(x, b'.', out) {
                    out.extend_from_slice(self.floats.format_finite(x).as_bytes());
                }
            }
        }
        out.extend_from_slice(b"</v></c>");
    }

    /// A text cell (an inline string: never a formula); `text` is escaped.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_past_z_get_two_letters_and_text_is_escaped() {
        assert_eq!(column_letters(0), b"A");
        assert_eq!(column_letters(25), b"Z");
        assert_eq!(column_letters(26), b"AA");
        assert_eq!(column_letters(16_383), b"XFD");
        assert_eq!(escape_xml("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }

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
