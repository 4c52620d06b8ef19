//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the HTTP API,
//! written by hand (a handful of routes does not justify a derive framework).

use axum::Json;
use serde_json::{Value, json};

pub async fn openapi() -> Json<Value> {
    Json(document())
}

fn param(name: &str, required: bool, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": required,
           "schema": {"type": "string"}, "description": description})
}

fn error(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The parameters of `GET /api/v1/export` and its summary.
fn export_params(ts: &str) -> Value {
    json!([
        param(
            "sensor_id",
            true,
            "Sensor id; repeat for several (up to 1000)"
        ),
        param("start_ts", true, ts),
        param("end_ts", true, ts),
        param(
            "layout",
            false,
            "long (sensor_id,timestamp_ms,...; default for several sensors) or wide (a row per distinct timestamp, a column group per sensor)"
        ),
        param(
            "fill",
            false,
            "previous: in wide raw exports, an empty cell takes the sensor's previous value and quality"
        ),
        param(
            "interval",
            false,
            "Bucket length: milliseconds, or 30s, 15m, 1h, 1d"
        ),
        param(
            "aggregate",
            false,
            "Comma list: first,last,min,max,mean,count,time_weighted_mean,interpolated,percent_good"
        ),
        param(
            "include_bad",
            false,
            "true: points of quality below 192 count into aggregates"
        ),
        param(
            "format",
            false,
            "csv (default), xlsx, parquet, arrow or jsonl"
        ),
        param(
            "preset",
            false,
            "excel: CSV for spreadsheets (BOM, formula-safe text, local time as a date-time)"
        ),
        param("bom", false, "true: start the CSV with a UTF-8 BOM (Excel)"),
        param("delimiter", false, ", (default), ; or tab"),
        param("decimal", false, ". (default) or , (needs delimiter ;)"),
        param(
            "time_zone",
            false,
            "IANA zone: adds a time_local column; aligns hour and day buckets to local time"
        ),
        param(
            "exported_at",
            false,
            "The export time the XLSX information sheet names (default now)"
        )
    ])
}

/// The document itself, with the bearer scheme and the 401/403 answers of
/// every guarded route (see [`super::auth::document_security`]).
pub fn document() -> Value {
    let mut document = routes_document();
    super::auth::document_security(&mut document);
    document
}

fn routes_document() -> Value {
    let ts = "Epoch milliseconds or RFC 3339; the range is [start_ts, end_ts).";
    json!({
      "openapi": "3.1.0",
      "info": {"title": "Sensor engine HTTP API", "version": env!("CARGO_PKG_VERSION")},
      "paths": {
        "/api/v1/export": {"get": {
          "summary": "Download raw points or interval aggregates of one or many sensors as CSV, XLSX, Parquet, Arrow or JSON Lines (streamed)",
          "parameters": export_params(ts),
          "responses": {
            "200": {"description": "The rows, streamed; a failure mid-stream aborts the connection. gzip/zstd (Accept-Encoding) for CSV, JSON Lines and Arrow.",
                    "content": {"text/csv": {}, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {},
                                "application/vnd.apache.parquet": {}, "application/vnd.apache.arrow.stream": {}, "application/jsonl": {}}},
            "400": error("Missing, unparsable or inconsistent parameter (invalid_parameter)"),
            "404": error("Unknown sensors, each named (sensor_not_found)"),
            "429": error("Too many exports running (too_many_requests); see Retry-After")
          }}},
        "/api/v1/export/summary": {"get": {
          "summary": "Rows, columns and time span an export with the same parameters would have, from block summaries",
          "parameters": export_params(ts),
          "responses": {
            "200": {"description": "Summary", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ExportSummary"}}}},
            "400": error("invalid_parameter"), "404": error("sensor_not_found")
          }}},
        "/api/v1/import": {"post": {
          "summary": "Load a CSV in the export format into a sensor, all or nothing",
          "parameters": [param("sensor_id", true, "Sensor id")],
          "requestBody": {"required": true, "content": {"text/csv": {}}},
          "responses": {
            "200": {"description": "Imported", "content": {"application/json": {"schema": {
              "type": "object", "properties": {"sensor_id": {"type": "string"}, "points": {"type": "integer"}}}}}},
            "400": error("Malformed CSV, naming the line (invalid_csv), or bad parameter"),
            "408": error("The body stalled longer than --import-idle-timeout (request_timeout); nothing stored"),
            "413": error("The body is larger than --import-max-bytes (payload_too_large); nothing stored"),
            "503": error("The store refuses writes until it is restarted (unavailable)"),
            "507": error("No space left for the store (insufficient_storage); nothing stored, retry later")
          }}},
        "/api/v1/admin/backup": {"get": {
          "summary": "A consistent backup of the running store (tar, zstd), streamed while writes go on",
          "responses": {
            "200": {"description": "The backup; restore it with `engine restore --input FILE --data-dir NEW_DIR`",
                    "content": {"application/zstd": {}}},
            "501": error("This store has no online backup (not_implemented): use pg_dump for PostgreSQL")
          }}},
        "/api/v1/series": {"get": {
          "summary": "Chart data, M4-downsampled (first, min, max, last per time bucket)",
          "parameters": [
            param("sensor_id", true, "Sensor id"),
            param("start_ts", false, ts), param("end_ts", false, ts),
            param("max_points", false, "Default 1000, capped at 10000")
          ],
          "responses": {
            "200": {"description": "Columnar points", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Series"}}}},
            "400": error("invalid_parameter"), "404": error("sensor_not_found")
          }}},
        "/api/v1/sensors": {"get": {
          "summary": "Every sensor with its point count and time span",
          "responses": {"200": {"description": "Sensors", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"sensors": {"type": "array", "items": {"$ref": "#/components/schemas/Sensor"}}}}}}}}}},
        "/api/v1/sensors/{id}": {"get": {
          "summary": "One sensor",
          "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
          "responses": {
            "200": {"description": "Sensor", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Sensor"}}}},
            "404": error("sensor_not_found")
          }}},
        "/api/v1/live": {"get": {
          "summary": "Live points of a sensor as Server-Sent Events",
          "parameters": [param("sensor_id", true, "Sensor id")],
          "responses": {
            "200": {"description": "event: points, data {timestamps, values (null for NaN and infinities), qualities} per write; event: resync when points were missed (fetch the range again)",
                    "content": {"text/event-stream": {}}},
            "400": error("invalid_parameter")
          }}},
        "/healthz": {"get": {"summary": "Liveness: 503 only when the store refuses writes until a restart", "responses": {"200": {"description": "serving (status ok, or degraded with a reason)"}, "503": {"description": "failed: restart the engine"}}}},
        "/readyz": {"get": {"summary": "Readiness: 200 only when reads and writes work", "responses": {"200": {"description": "ready"}, "503": {"description": "degraded (disk full, recovers by itself) or failed"}}}}
      },
      "components": {"schemas": {
        "Error": {"type": "object", "required": ["error", "message"], "properties": {
          "error": {"type": "string", "enum": ["invalid_parameter", "invalid_csv", "invalid_input", "sensor_not_found", "not_found", "method_not_allowed", "too_many_requests", "unavailable", "audit_unavailable", "internal"]},
          "message": {"type": "string"}}},
        "ExportSummary": {"type": "object", "properties": {
          "rows": {"type": "integer"}, "rows_exact": {"type": "boolean", "description": "false for raw wide exports of several sensors: rows is then an upper bound"},
          "columns": {"type": "array", "items": {"type": "string"}},
          "sensors": {"type": "array", "items": {"type": "object", "properties": {
            "sensor_id": {"type": "string"}, "points": {"type": "integer"},
            "first_timestamp_ms": {"type": ["integer", "null"]}, "last_timestamp_ms": {"type": ["integer", "null"]}}}},
          "first_timestamp_ms": {"type": ["integer", "null"]}, "last_timestamp_ms": {"type": ["integer", "null"]},
          "file_name": {"type": "string"}, "query": {"type": "string"}}},
        "Sensor": {"type": "object", "properties": {
          "sensor_id": {"type": "string"}, "count": {"type": "integer"},
          "first_timestamp_ms": {"type": "integer"}, "last_timestamp_ms": {"type": "integer"}}},
        "Series": {"type": "object", "properties": {
          "sensor_id": {"type": "string"}, "start_ts": {"type": "integer"}, "end_ts": {"type": "integer"},
          "count": {"type": "integer", "description": "Raw points in the range"},
          "downsampled": {"type": "boolean"},
          "timestamps": {"type": "array", "items": {"type": "integer"}},
          "values": {"type": "array", "items": {"type": ["number", "null"]}, "description": "null for NaN and infinities"},
          "qualities": {"type": "array", "items": {"type": "integer"}}}}
      }}
    })
}
