//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the HTTP API,
//! written by hand (a handful of routes does not justify a derive framework).
//!
//! The document is held to the server by `scripts/schemathesis`
//! (schemathesis, `--checks all`, against a real engine with auth on): every
//! value a schema allows must be accepted, every value it forbids refused,
//! and every status and body a route answers must be listed. So:
//!
//! - Parameters carry their exact shape: [`schemas`] (sensor ids, epoch
//!   milliseconds within the accepted range, enums for every closed set).
//! - Every operation lists each status it can answer. The authentication
//!   answers (401, 403, 429) and `security` follow from the route's
//!   [`Access`] in [`super::route_specs`], so they cannot drift from the
//!   middleware; [`operation`] gives the rest, per route.
//! - Error bodies name the exact `error` codes of each status ([`error`]).
//!
//! A route in [`super::route_specs`] without an entry in [`operation`] fails
//! the unit test below, naming it.

use axum::Json;
use axum::http::Method;
use serde_json::{Map, Value, json};

use super::auth::{Access, SESSION_COOKIE};
use crate::auth::Action;
use crate::model::{MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};

pub async fn openapi() -> Json<Value> {
    Json(document())
}

/// The document itself.
pub fn document() -> Value {
    let mut paths = Map::new();
    for spec in super::route_specs() {
        let Some(mut op) = operation(&spec.method, spec.path) else {
            tracing::warn!(method = %spec.method, path = spec.path, "route missing from the OpenAPI document");
            continue;
        };
        add_access(&mut op, &spec.method, spec.access);
        let item = paths
            .entry(spec.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[spec.method.as_str().to_ascii_lowercase()] = op;
    }
    json!({
      "openapi": "3.1.0",
      "info": {"title": "Sensor engine HTTP API", "version": env!("CARGO_PKG_VERSION"),
               "description": "Errors answer {\"error\": CODE, \"message\": TEXT}; each status lists its codes."},
      "security": [{"bearer": []}, {"session": []}],
      "paths": paths,
      "components": {
        "securitySchemes": {
          "bearer": {"type": "http", "scheme": "bearer",
                     "description": "Authorization: Bearer stse_... (engine token create). Scopes: admin, read:PATTERN, export:PATTERN (implies read), write:PATTERN; PATTERN: * any run without /, ** any run."},
          "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
                      "description": "The dashboard's session (POST /api/v1/session). State-changing requests with it must be same-origin."}
        },
        "schemas": schemas()
      }
    })
}

// ---- building blocks ----

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn query(name: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": required, "schema": schema,
           "description": description})
}

fn path_param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": schema,
           "description": description})
}

fn json_body(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// An error answer whose body's `error` is one of `codes`.
fn error(description: &str, codes: &[&str]) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {
             "allOf": [schema_ref("Error"), {"properties": {"error": {"enum": codes}}}]}}}})
}

/// 429, with the `Retry-After` the server sends.
fn too_many(description: &str) -> Value {
    let mut answer = error(description, &["too_many_requests"]);
    answer["headers"] =
        json!({"Retry-After": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}});
    answer
}

/// hyper's answer (no body) to a request line longer than it reads: a
/// query naming many long sensor ids can be.
fn uri_too_long() -> Value {
    json!({"description": "The query is longer than the server reads (many long sensor ids): split the export"})
}

fn invalid_parameter() -> Value {
    error(
        "A missing, malformed or inconsistent parameter, named in the message",
        &["invalid_parameter"],
    )
}

fn sensor_not_found() -> Value {
    error(
        "Unknown sensors (or ones the token cannot read), each named",
        &["sensor_not_found"],
    )
}

/// The store cannot serve for now: failed (restart it) or unreachable
/// (PostgreSQL down).
fn unavailable() -> Value {
    error(
        "The store refuses requests until it is restarted, or is unreachable",
        &["unavailable"],
    )
}

/// 401, 403 and 429 of authentication, and `security: []` on open routes,
/// from the route's access decision.
fn add_access(op: &mut Value, method: &Method, access: Access) {
    if access == Access::Open {
        op["security"] = json!([]);
        return;
    }
    let responses = &mut op["responses"];
    responses["401"] = json!({
      "description": "Missing, malformed, unknown, expired or revoked credentials",
      "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer realm=\"engine\""}}},
      "content": {"application/json": {"schema": {
        "allOf": [schema_ref("Error"), {"properties": {"error": {"const": "unauthorized"}}}]}}}
    });
    if responses.get("429").is_none() {
        responses["429"] = too_many("Too many failed authentications from this address");
    }
    // 403: admin routes for other tokens, scopes that allow reading but not
    // this action, and cross-site state changes with the session cookie.
    let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let forbidden = match access {
        Access::Admin => Some("The route needs an admin token"),
        Access::Sensors(Action::Export) => Some(
            "The token may read the sensor but not export it (sensors it cannot read answer 404)",
        ),
        Access::Sensors(Action::Write) => Some("The token may not write this sensor"),
        _ if changes_state => Some("A cross-site request with the session cookie"),
        _ => None,
    };
    if let Some(description) = forbidden {
        responses["403"] = error(description, &["forbidden"]);
    }
}

// ---- schemas ----

/// A sensor id: 1 to 255 bytes of UTF-8 (so at most 255 characters)
/// without control characters (Unicode Cc).
fn sensor_id() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 255,
           "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]+$",
           "description": "1 to 255 bytes of UTF-8 without control characters",
           "example": "plant/boiler-1/temperature"})
}

/// Epoch milliseconds within the range the engine stores
/// (0000-01-01 to 9999-12-29 UTC).
fn timestamp() -> Value {
    json!({"type": "integer", "format": "int64", "minimum": MIN_TIMESTAMP_MS, "maximum": MAX_TIMESTAMP_MS})
}

/// The end of a range may be one past the last storable timestamp.
fn range_end() -> Value {
    json!({"type": "integer", "format": "int64", "minimum": MIN_TIMESTAMP_MS, "maximum": MAX_TIMESTAMP_MS + 1})
}

const TS: &str = "Epoch milliseconds (RFC 3339 is accepted too); the range is [start_ts, end_ts)";

/// IANA time zone names this engine knows (its time zone database).
fn time_zones() -> Value {
    let mut names: Vec<String> = jiff::tz::db()
        .available()
        .map(|name| name.as_str().to_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        json!({"type": "string", "minLength": 1})
    } else {
        json!({"type": "string", "enum": names})
    }
}

const AGGREGATES: &[&str] = &[
    "first",
    "last",
    "min",
    "max",
    "mean",
    "count",
    "time_weighted_mean",
    "interpolated",
    "percent_good",
];

const ERROR_CODES: &[&str] = &[
    "invalid_parameter",
    "invalid_csv",
    "invalid_input",
    "sensor_not_found",
    "token_not_found",
    "not_found",
    "method_not_allowed",
    "payload_too_large",
    "request_timeout",
    "unauthorized",
    "forbidden",
    "too_many_requests",
    "insufficient_storage",
    "not_implemented",
    "unavailable",
    "internal",
];

/// A token scope: `admin`, or an action and a sensor pattern (1 to 1024
/// bytes without control characters, no run of three `*`).
fn scope() -> Value {
    // Runs of at most two `*` between other characters.
    let other = "[^*\\u0000-\\u001F\\u007F-\\u009F]";
    let pattern = format!("(((\\*{{1,2}}{other}|{other})+\\*{{0,2}})|\\*{{1,2}})");
    let mut forms = vec![json!({"type": "string", "const": "admin"})];
    for action in ["read", "export", "write"] {
        forms.push(
            json!({"type": "string", "pattern": format!("^{action}:{pattern}$"),
                          "maxLength": action.len() + 1 + 1024}),
        );
    }
    json!({"anyOf": forms,
           "description": "admin, read:PATTERN, export:PATTERN or write:PATTERN; PATTERN (at most 1024 bytes): * any run without /, ** any run"})
}

fn token_json(with_secret: bool) -> Value {
    let mut properties = json!({
      "id": {"type": "string"}, "name": {"type": "string"},
      "scopes": {"type": "array", "items": {"type": "string"}},
      "created_ms": {"type": "integer"},
      "expires_ms": {"type": ["integer", "null"]}, "revoked_ms": {"type": ["integer", "null"]},
      "last_used_ms": {"type": ["integer", "null"]}
    });
    let mut required = vec![
        "id",
        "name",
        "scopes",
        "created_ms",
        "expires_ms",
        "revoked_ms",
        "last_used_ms",
    ];
    if with_secret {
        properties["secret"] = json!({"type": "string", "description": "Shown this once"});
        required.push("secret");
    }
    json!({"type": "object", "required": required, "properties": properties})
}

fn schemas() -> Value {
    let nullable_ts = json!({"type": ["integer", "null"]});
    json!({
      "Error": {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string", "enum": ERROR_CODES},
        "message": {"type": "string"}}},
      "ExportSummary": {"type": "object",
        "required": ["rows", "rows_exact", "columns", "sensors", "first_timestamp_ms", "last_timestamp_ms", "file_name", "query"],
        "properties": {
          "rows": {"type": "integer", "minimum": 0},
          "rows_exact": {"type": "boolean", "description": "false for raw wide exports of several sensors: rows is then an upper bound"},
          "columns": {"type": "array", "items": {"type": "string"}},
          "sensors": {"type": "array", "items": {"type": "object",
            "required": ["sensor_id", "points", "first_timestamp_ms", "last_timestamp_ms"],
            "properties": {
              "sensor_id": {"type": "string"}, "points": {"type": "integer", "minimum": 0},
              "first_timestamp_ms": nullable_ts, "last_timestamp_ms": nullable_ts}}},
          "first_timestamp_ms": nullable_ts, "last_timestamp_ms": nullable_ts,
          "file_name": {"type": "string"}, "query": {"type": "string"}}},
      "Sensor": {"type": "object", "required": ["sensor_id", "count", "first_timestamp_ms", "last_timestamp_ms"],
        "properties": {
          "sensor_id": {"type": "string"}, "count": {"type": "integer", "minimum": 0},
          "first_timestamp_ms": {"type": "integer"}, "last_timestamp_ms": {"type": "integer"}}},
      "Series": {"type": "object",
        "required": ["sensor_id", "start_ts", "end_ts", "count", "downsampled", "timestamps", "values", "qualities"],
        "properties": {
          "sensor_id": {"type": "string"}, "start_ts": {"type": "integer"}, "end_ts": {"type": "integer"},
          "count": {"type": "integer", "minimum": 0, "description": "Raw points in the range"},
          "downsampled": {"type": "boolean"},
          "timestamps": {"type": "array", "items": {"type": "integer"}},
          "values": {"type": "array", "items": {"type": ["number", "null"]}, "description": "null for NaN and infinities"},
          "qualities": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}}}},
      "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "failed"]},
        "reason": {"type": "string"},
        "checks": {"type": "object", "additionalProperties": {"type": "string"},
                   "description": "Readiness with NATS: store and nats, each ok or why not"}}},
      "Me": {"type": "object", "required": ["name", "token_id", "scopes", "auth", "can_export", "can_write"],
        "properties": {
          "name": {"type": "string"}, "token_id": {"type": ["string", "null"]},
          "scopes": {"type": "array", "items": {"type": "string"}},
          "auth": {"type": "boolean"}, "can_export": {"type": "boolean"}, "can_write": {"type": "boolean"}}},
      "Token": token_json(false),
      "CreatedToken": token_json(true)
    })
}

// ---- the operations ----

/// The parameters of `GET /api/v1/export` and its summary. Rules between
/// parameters (which JSON Schema cannot state) are in the descriptions.
fn export_params() -> Value {
    let flag = json!({"type": "string", "enum": ["true", "false", "1", "0"]});
    json!([
        {"name": "sensor_id", "in": "query", "required": true, "style": "form", "explode": true,
         "schema": {"type": "array", "items": sensor_id(), "minItems": 1, "maxItems": crate::export::request::MAX_SENSORS, "uniqueItems": true},
         "description": "Sensor id; repeat for several (up to 1000, each once)"},
        query("start_ts", true, timestamp(), TS),
        query("end_ts", true, range_end(), "Epoch milliseconds, not before start_ts (RFC 3339 is accepted too)"),
        query("layout", false, json!({"type": "string", "enum": ["long", "wide"]}),
              "long (sensor_id,timestamp_ms,...; default for several sensors) or wide (a row per distinct timestamp, a column group per sensor)"),
        query("fill", false, json!({"type": "string", "enum": ["previous", "none"]}),
              "previous: in wide raw exports (layout=wide, no interval), an empty cell takes the sensor's previous value and quality"),
        query("interval", false, json!({"type": "string", "pattern": "^0*[1-9][0-9]{0,8}(ms|s|m|min|h|d)?$"}),
              "Bucket length: milliseconds, or 30s, 15m, 1h, 1d; needs aggregate; at most 100,000,000 buckets x sensors"),
        {"name": "aggregate", "in": "query", "required": false, "style": "form", "explode": false,
         "schema": {"type": "array", "items": {"type": "string", "enum": AGGREGATES}, "minItems": 1, "uniqueItems": true},
         "description": "Comma list of aggregates per bucket; needs interval"},
        query("include_bad", false, flag.clone(), "true: points of quality below 192 count into aggregates"),
        query("format", false, json!({"type": "string", "enum": ["csv", "xlsx", "parquet", "arrow", "jsonl"]}), "csv (default), xlsx, parquet, arrow or jsonl"),
        query("preset", false, json!({"type": "string", "enum": ["excel"]}),
              "excel: CSV for spreadsheets (BOM, formula-safe text, local time as a date-time)"),
        query("bom", false, flag, "true: start the CSV with a UTF-8 BOM (Excel)"),
        query("delimiter", false, json!({"type": "string", "enum": [",", ";", "\t", "tab"]}), ", (default), ; or tab"),
        query("decimal", false, json!({"type": "string", "enum": [".", ","]}), ". (default) or , (needs delimiter ; or tab)"),
        query("time_zone", false, time_zones(), "IANA zone: adds a time_local column; aligns hour and day buckets to local time"),
        query("exported_at", false, timestamp(), "The export time the XLSX information sheet names (default now)")
    ])
}

/// What `method path` does, its parameters and every answer of its own
/// (authentication's are added by [`add_access`]); `None` for a route not
/// documented yet.
fn operation(method: &Method, path: &str) -> Option<Value> {
    let op = match (method.as_str(), path) {
        ("GET", "/api/v1/export") => json!({
        "summary": "Download raw points or interval aggregates of one or many sensors as CSV, XLSX, Parquet, Arrow or JSON Lines (streamed)",
        "parameters": export_params(),
        "responses": {
          "200": {"description": "The rows, streamed; a failure mid-stream aborts the connection. gzip/zstd (Accept-Encoding) for CSV, JSON Lines and Arrow.",
                  "content": {crate::export::CSV_CONTENT_TYPE: {"schema": {"type": "string"}},
                              crate::export::XLSX_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
                              crate::export::PARQUET_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
                              crate::export::ARROW_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
                              crate::export::JSONL_CONTENT_TYPE: {"schema": {"type": "string"}}}},
          "400": invalid_parameter(),
          "404": sensor_not_found(),
          "414": uri_too_long(),
          "429": too_many("Too many exports running, in all or for this token, or too many failed authentications from this address"),
          "503": error("The store is unavailable, or the audit trail cannot record the export (nothing is streamed then)",
                       &["unavailable", "audit_unavailable"])
        }}),
        ("GET", "/api/v1/export/summary") => json!({
        "summary": "Rows, columns and time span an export with the same parameters would have, from block summaries",
        "parameters": export_params(),
        "responses": {
          "200": json_body("Summary", schema_ref("ExportSummary")),
          "400": invalid_parameter(), "404": sensor_not_found(), "414": uri_too_long(), "503": unavailable()
        }}),
        ("POST", "/api/v1/import") => json!({
        "summary": "Load a CSV in the export format into a sensor, all or nothing",
        "parameters": [query("sensor_id", true, sensor_id(), "Sensor id")],
        "requestBody": {"required": true, "content": {"text/csv": {"schema": {
          "type": "string",
          "pattern": "^timestamp_ms,value,quality\\r?\\n(-?[0-9]{1,13},-?[0-9]{1,9}(\\.[0-9]{1,6})?,(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\r?\\n)*$",
          "description": "The header timestamp_ms,value,quality, then a row per point (epoch ms, a number, quality 0 to 255); an optional BOM, \\n or \\r\\n line ends; the later of two rows of one timestamp wins",
          "example": "timestamp_ms,value,quality\n1767225600000,21.5,192\n"}}}},
        "responses": {
          "200": json_body("Imported", json!({"type": "object", "required": ["sensor_id", "points"], "properties": {
            "sensor_id": {"type": "string"}, "points": {"type": "integer", "minimum": 0}}})),
          "400": error("Malformed CSV, naming the line, or a bad parameter", &["invalid_csv", "invalid_parameter"]),
          "408": error("The body stalled longer than --import-idle-timeout; nothing stored", &["request_timeout"]),
          "413": error("The body is larger than --import-max-bytes; nothing stored", &["payload_too_large"]),
          "503": unavailable(),
          "507": error("No space left for the store; nothing stored, retry later", &["insufficient_storage"])
        }}),
        ("GET", "/api/v1/admin/backup") => json!({
        "summary": "A consistent backup of the running store (tar, zstd), streamed while writes go on",
        "responses": {
          "200": {"description": "The backup; restore it with `engine restore --input FILE --data-dir NEW_DIR`",
                  "content": {super::admin::BACKUP_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
          "501": error("This store has no online backup: use pg_dump for PostgreSQL", &["not_implemented"]),
          "503": unavailable()
        }}),
        ("GET", "/api/v1/series") => json!({
        "summary": "Chart data, M4-downsampled (first, min, max, last per time bucket)",
        "parameters": [
          query("sensor_id", true, sensor_id(), "Sensor id"),
          query("start_ts", false, timestamp(), "Epoch milliseconds (RFC 3339 is accepted too), default the sensor's first point; not after end_ts"),
          query("end_ts", false, timestamp(), "Epoch milliseconds (RFC 3339 is accepted too), default one past the sensor's last point"),
          query("max_points", false, json!({"type": "integer", "minimum": 1, "maximum": u32::MAX}),
                "Default 1000; at least 4 and at most 10000 are returned")
        ],
        "responses": {
          "200": json_body("Columnar points", schema_ref("Series")),
          "400": invalid_parameter(), "404": sensor_not_found(), "503": unavailable()
        }}),
        ("GET", "/api/v1/sensors") => json!({
        "summary": "Every sensor the token may read, with its point count and time span",
        "responses": {
          "200": json_body("Sensors", json!({"type": "object", "required": ["sensors"], "properties": {
            "sensors": {"type": "array", "items": schema_ref("Sensor")}}})),
          "503": unavailable()
        }}),
        ("GET", "/api/v1/sensors/{id}") => json!({
        "summary": "One sensor",
        "parameters": [path_param("id", sensor_id(), "Sensor id")],
        "responses": {
          "200": json_body("Sensor", schema_ref("Sensor")),
          "400": invalid_parameter(), "404": sensor_not_found(), "503": unavailable()
        }}),
        ("GET", "/api/v1/live") => json!({
        "summary": "Live points of a sensor as Server-Sent Events (an endless stream)",
        "parameters": [query("sensor_id", true, sensor_id(), "Sensor id")],
        "responses": {
          "200": {"description": "event: points, data {timestamps, values (null for NaN and infinities), qualities} per write; event: resync when points were missed (fetch the range again)",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}},
          "400": invalid_parameter(), "404": sensor_not_found()
        }}),
        ("GET", "/api/v1/openapi.json") => json!({
          "summary": "This document",
          "responses": {"200": json_body("OpenAPI 3.1", json!({"type": "object", "required": ["openapi", "paths"]}))}}),
        ("GET", "/api/v1/tokens") => json!({
        "summary": "Every token: id, name, scopes, created, expires, revoked, last used; never the secret",
        "responses": {
          "200": json_body("Tokens", json!({"type": "object", "required": ["tokens"], "properties": {
            "tokens": {"type": "array", "items": schema_ref("Token")}}})),
          "400": error("The server runs with --no-auth: it has no tokens", &["invalid_parameter"])
        }}),
        ("POST", "/api/v1/tokens") => json!({
        "summary": "Create a token; the answer holds its secret, shown once",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
          "type": "object", "required": ["name", "scopes"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200,
                     "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$",
                     "description": "1 to 200 characters without control characters, not only spaces"},
            "scopes": {"type": "array", "items": scope(), "minItems": 1},
            "expires_in": {"type": ["string", "null"], "pattern": "^0*[1-9][0-9]{0,9}(ms|s|m|h|d|w)$", "description": "e.g. 90d; absent or null: never expires"}}}}}},
        "responses": {
          "201": json_body("Created, with `secret`", schema_ref("CreatedToken")),
          "400": invalid_parameter()
        }}),
        ("DELETE", "/api/v1/tokens/{id}") => json!({
        "summary": "Revoke a token, at once",
        "parameters": [path_param("id", json!({"type": "string", "minLength": 1}), "The token's id (tok_...)")],
        "responses": {
          "200": json_body("The revoked token", schema_ref("Token")),
          "400": error("The server runs with --no-auth: it has no tokens", &["invalid_parameter"]),
          "404": error("No such token", &["token_not_found"])
        }}),
        ("POST", "/api/v1/session") => json!({
        "summary": "Sign in: exchange a token for an HttpOnly, SameSite=Strict session cookie",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
          "type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
        "responses": {
          "200": json_body("Signed in (Set-Cookie), or who everyone is under --no-auth", schema_ref("Me")),
          "400": error("The body is not {\"token\": \"...\"}", &["invalid_parameter"]),
          "401": error("Unknown, expired or revoked token", &["unauthorized"]),
          "403": error("A cross-site sign-in", &["forbidden"]),
          "429": too_many("Too many failed authentications from this address")
        }}),
        ("GET", "/api/v1/session") => json!({
          "summary": "Who is calling",
          "responses": {"200": json_body("The caller", schema_ref("Me"))}}),
        ("DELETE", "/api/v1/session") => json!({
          "summary": "Sign out: forgets the session and clears the cookie",
          "responses": {"204": {"description": "Signed out"}}}),
        ("GET", "/api/v1/audit") => json!({
        "summary": "The audit trail (admin): records oldest first, as stored (seq, ms, time, event, via, token_id, token_name, client, ..., prev, mac)",
        "parameters": [
          query("since", false, timestamp(), "Records at or after this instant (epoch ms or RFC 3339)"),
          query("token", false, json!({"type": "string"}), "Records of this token id (made with it, or creating or revoking it)"),
          query("sensor", false, json!({"type": "string"}), "Records naming this sensor, and the outcomes of its exports"),
          query("event", false, json!({"type": "string"}), "Records of this event: export_started, export_ended, import, grpc_write, token_created, token_revoked, sign_in, refused, refusals_dropped"),
          query("after_seq", false, json!({"type": "integer", "minimum": 0, "maximum": u64::MAX}), "Records after this seq (paging)"),
          query("limit", false, json!({"type": "integer", "minimum": 1, "maximum": 10000}), "At most this many (default 1000)")
        ],
        "responses": {
          "200": json_body("Matching records; truncated: more match (ask again with after_seq)", json!({
            "type": "object", "required": ["records", "truncated"], "properties": {
              "records": {"type": "array", "items": {"type": "object"}}, "truncated": {"type": "boolean"}}})),
          "400": invalid_parameter(),
          "503": error("The audit trail cannot be read", &["audit_unavailable"])
        }}),
        ("GET", "/signin") => json!({
        "summary": "A one-time sign-in link (printed by engine serve): exchanges its code for a session cookie, once, within minutes",
        "parameters": [query("code", false, json!({"type": "string"}), "The one-time code; not a token")],
        "responses": {
          "303": {"description": "To / with Set-Cookie when the code is good (nothing reusable stays in the address bar); else to the dashboard's sign-in page, which says why",
                  "headers": {"Location": {"schema": {"type": "string"}}}}
        }}),
        ("GET", "/healthz") => json!({
          "summary": "Liveness: 503 only when the store refuses writes until a restart",
          "responses": {"200": json_body("Serving (status ok, or degraded with a reason)", schema_ref("Health")),
                        "503": json_body("Failed: restart the engine", schema_ref("Health"))}}),
        ("GET", "/readyz") => json!({
          "summary": "Readiness: 200 only when reads and writes work (and NATS is reachable, when ingesting)",
          "responses": {"200": json_body("Ready", schema_ref("Health")),
                        "503": json_body("Degraded (disk full, recovers by itself; NATS unreachable) or failed", schema_ref("Health"))}}),
        ("GET", "/metrics") => json!({
          "summary": "Prometheus metrics: counts and durations, never a sensor id",
          "responses": {"200": {"description": "Prometheus text format",
                                "content": {crate::metrics::CONTENT_TYPE: {"schema": {"type": "string"}}}}}}),
        _ => return None,
    };
    Some(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new route must be documented (the schemathesis run tests only
    /// what the document lists).
    #[test]
    fn every_route_is_documented_with_its_statuses() {
        let doc = document();
        for spec in super::super::route_specs() {
            let op = &doc["paths"][spec.path][spec.method.as_str().to_ascii_lowercase()];
            assert!(
                op.is_object(),
                "{} {} is missing from the OpenAPI document: add it to openapi::operation",
                spec.method,
                spec.path
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(
                // A redirect is the success of /signin.
                responses
                    .keys()
                    .any(|status| status.starts_with('2') || status == "303"),
                "{} {} documents no success",
                spec.method,
                spec.path
            );
            if spec.access != Access::Open {
                for status in ["401", "429"] {
                    assert!(
                        responses.contains_key(status),
                        "{} {}",
                        spec.method,
                        spec.path
                    );
                }
            } else {
                assert_eq!(op["security"], json!([]), "{} {}", spec.method, spec.path);
            }
        }
    }
}
