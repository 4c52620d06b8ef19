//! A sensor time-series engine: keeps readings of industrial sensors durably,
//! serves them to a web dashboard and exports them raw for offline analysis.
//!
//! # Layout
//!
//! - [`model`]: sensor ids, points, columnar point batches, time ranges.
//! - [`storage`]: the [`storage::StorageEngine`] trait every transport depends
//!   on, [`storage::embedded`], the default persistent store, and
//!   [`storage::postgres`], the store on PostgreSQL.
//! - [`csv_format`]: the export CSV format, written (export) and read (import).
//! - [`export`]: exports for analysts: one or many sensors, raw or interval
//!   aggregates, long or wide, as CSV, XLSX, Parquet, Arrow or JSON Lines,
//!   streamed; shared by the HTTP API and `engine export`.
//! - [`http`]: the HTTP API: router and server above the handlers (export,
//!   series, sensors, import), which sit above what they share (state,
//!   errors, parameters).
//! - [`live`]: the live view: a store wrapper that publishes every written
//!   point to followers (gRPC `Subscribe`, the SSE endpoint).
//! - [`grpc`]: the gRPC API `sensor.v1.SensorEngine` (tonic), with health and
//!   reflection.
//! - [`ingest`]: JSON points from NATS JetStream ([`ingest::nats`]), group
//!   committed and acknowledged after they are durable.
//! - [`metrics`]: Prometheus metrics (`GET /metrics`), recorded where
//!   things happen through the `metrics` facade.
//! - [`retention`]: drops points older than a rule's age, in the background.
//! - [`demo`]: the `serve --demo` plant simulator.
//! - [`store_copy`]: `engine copy`, every sensor from one store to another
//!   (embedded and PostgreSQL), checked by count and checksum.
//! - [`config`]: `engine serve --config FILE` and `--print-config`,
//!   generic over the command line's definition.
//! - [`logging`]: `--log-format text|json` on standard error.
//! - [`auth`]: tokens (hash only), scopes over sensor patterns, browser
//!   sessions: the one check HTTP, SSE and gRPC make.
//! - [`audit`]: the tamper-evident audit trail (exports, imports, writes,
//!   tokens, sign-ins, refusals), HMAC-chained JSON Lines in `DATA_DIR/audit/`.
//! - [`cli`]: the `engine` command line; `main.rs` only calls [`cli::run`].
//! - `fuzzing` (hidden): the decoders' entry points for the fuzz targets in
//!   `fuzz/`.

pub mod audit;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod csv_format;
pub mod demo;
pub mod export;
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod retention;
pub mod server;
pub mod storage;
pub mod store_copy;
pub mod tls;
