//! Parquet and Arrow IPC stream exports, written by the arrow-rs crates.
//!
//! Types: `sensor_id` a dictionary-encoded string (`dictionary<uint16,
//! utf8>`; one dictionary, the sensors asked, for the whole file),
//! `timestamp_ms` a UTC millisecond timestamp, values and aggregates
//! `float64` (bit-exact: NaN payloads and `-0.0` kept), qualities `uint8`,
//! counts `uint64`; an empty cell is null. The schema's metadata (and
//! Parquet's key-value metadata) names the sensors, the range and the query.
//!
//! Both are written on a blocking thread that pulls chunks from the export
//! and writes through a [`ChannelWriter`] into the body:
//!
//! - Parquet: zstd, row groups of at most [`ROW_GROUP_ROWS`] rows or
//!   [`ROW_GROUP_BYTES`] encoded bytes; the writer hands a row group's
//!   bytes on as soon as it closes, so memory is one row group, whatever
//!   the range. Timestamps are delta-encoded, values byte-stream-split (both
//!   compress far better that way).
//! - Arrow IPC stream: the schema, the dictionary, then a record batch per
//!   chunk.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::types::UInt16Type;
use arrow_array::{
    ArrayRef, DictionaryArray, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    UInt8Array, UInt16Array, UInt64Array,
};
use arrow_buffer::{NullBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding as ParquetEncoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::request::ExportRequest;
use super::sink::ChannelWriter;
use super::table::{Cells, Chunk, Kind, Schema};
use crate::storage::StorageError;

/// Rows per Parquet row group at most.
pub const ROW_GROUP_ROWS: usize = 1024 * 1024;
/// Encoded bytes per Parquet row group at most (wide exports of many
/// sensors reach it before the row count).
pub const ROW_GROUP_BYTES: usize = 32 << 20;

/// The Arrow schema of an export, with its metadata.
pub fn arrow_schema(schema: &Schema, request: &ExportRequest) -> SchemaRef {
    let mut fields = Vec::with_capacity(schema.columns.len() + 2);
    if schema.long {
        fields.push(Field::new(
            "sensor_id",
            DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8)),
            false,
        ));
    }
    fields.push(Field::new(
        "timestamp_ms",
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    ));
    // Raw values of one sensor per row are never empty; wide cells and
    // aggregates can be.
    let nullable = request.resample.is_some() || request.layout == super::request::Layout::Wide;
    for column in &schema.columns {
        let field = match column.kind {
            Kind::Float => Field::new(&column.name, DataType::Float64, nullable),
            Kind::Quality => Field::new(&column.name, DataType::UInt8, nullable),
            Kind::Count => Field::new(&column.name, DataType::UInt64, false),
        };
        fields.push(field);
    }
    Arc::new(ArrowSchema::new_with_metadata(fields, metadata(request)))
}

/// What the file says about itself: sensors, range, query.
fn metadata(request: &ExportRequest) -> HashMap<String, String> {
    let sensors: Vec<&str> = request.sensors.iter().map(|s| s.as_str()).collect();
    let mut metadata = HashMap::new();
    metadata.insert(
        "engine.sensors".to_owned(),
        serde_json::to_string(&sensors).unwrap_or_default(),
    );
    metadata.insert(
        "engine.start_ms".to_owned(),
        request.range.start_ms.to_string(),
    );
    metadata.insert("engine.end_ms".to_owned(), request.range.end_ms.to_string());
    metadata.insert("engine.query".to_owned(), request.canonical_query());
    metadata.insert("engine.layout".to_owned(), request.layout.name().to_owned());
    metadata
}

/// A chunk as a record batch; the columns are moved, not copied.
pub fn record_batch(
    chunk: Chunk,
    schema: &SchemaRef,
    sensor_names: &Arc<StringArray>,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(chunk.columns.len() + 2);
    if !chunk.sensors.is_empty() || schema.field(0).name() == "sensor_id" {
        let keys: Vec<u16> = chunk.sensors.iter().map(|&s| s as u16).collect();
        let dictionary = DictionaryArray::<UInt16Type>::try_new(
            UInt16Array::from(keys),
            Arc::clone(sensor_names) as ArrayRef,
        )?;
        arrays.push(Arc::new(dictionary));
    }
    arrays.push(Arc::new(
        TimestampMillisecondArray::new(ScalarBuffer::from(chunk.timestamps), None)
            .with_timezone("UTC"),
    ));
    for column in chunk.columns {
        let nulls = column.present.map(NullBuffer::from);
        let array: ArrayRef = match column.cells {
            Cells::Float(values) => Arc::new(Float64Array::new(ScalarBuffer::from(values), nulls)),
            Cells::Quality(values) => Arc::new(UInt8Array::new(ScalarBuffer::from(values), nulls)),
            Cells::Count(values) => Arc::new(UInt64Array::new(ScalarBuffer::from(values), nulls)),
        };
        arrays.push(array);
    }
    RecordBatch::try_new(Arc::clone(schema), arrays)
}

fn parquet_properties(schema: &SchemaRef) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_created_by(format!("sensor engine {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(
            schema
                .metadata()
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect(),
        ));
    for field in schema.fields() {
        let path = ColumnPath::from(field.name().as_str());
        match field.data_type() {
            DataType::Timestamp(..) => {
                builder = builder
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, ParquetEncoding::DELTA_BINARY_PACKED);
            }
            DataType::Float64 => {
                builder = builder
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, ParquetEncoding::BYTE_STREAM_SPLIT);
            }
            _ => {}
        }
    }
    builder.build()
}

fn arrow_error(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// Which columnar format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Columnar {
    Parquet,
    Arrow,
}

/// Writes the chunks as Parquet or Arrow IPC into `sink`, on the calling
/// (blocking) thread.
pub fn write_columnar(
    format: Columnar,
    runtime: &tokio::runtime::Handle,
    mut chunks: BoxStream<'static, Result<Chunk, StorageError>>,
    schema: &Schema,
    request: &ExportRequest,
    mut sink: ChannelWriter,
) {
    let arrow = arrow_schema(schema, request);
    let names: Vec<&str> = schema.sensors.iter().map(|s| s.as_str()).collect();
    let sensor_names = Arc::new(StringArray::from(names));
    let result = (|| -> std::io::Result<()> {
        match format {
            Columnar::Parquet => {
                let properties = parquet_properties(&arrow);
                let mut writer =
                    ArrowWriter::try_new(&mut sink, Arc::clone(&arrow), Some(properties))
                        .map_err(arrow_error)?;
                while let Some(chunk) = runtime.block_on(chunks.next()) {
                    let chunk = chunk.map_err(std::io::Error::other)?;
                    let batch = record_batch(chunk, &arrow, &sensor_names).map_err(arrow_error)?;
                    // Flushes a row group by itself at ROW_GROUP_ROWS or
                    // ROW_GROUP_BYTES (its in_progress_size()), handing the
                    // bytes to the sink.
                    writer.write(&batch).map_err(arrow_error)?;
                }
                writer.close().map_err(arrow_error)?;
            }
            Columnar::Arrow => {
                let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut sink, &arrow)
                    .map_err(arrow_error)?;
                while let Some(chunk) = runtime.block_on(chunks.next()) {
                    let chunk = chunk.map_err(std::io::Error::other)?;
                    let batch = record_batch(chunk, &arrow, &sensor_names).map_err(arrow_error)?;
                    writer.write(&batch).map_err(arrow_error)?;
                }
                writer.finish().map_err(arrow_error)?;
            }
        }
        Ok(())
    })();
    drop(chunks);
    if let Err(error) = result.and_then(|()| sink.finish()) {
        sink.fail(error);
    }
}
