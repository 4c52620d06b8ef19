//! A sensor time-series engine: keeps readings of industrial sensors durably,
//! serves them to a web dashboard and exports them raw for offline analysis.
//!
//! # Layout
//!
//! - [`model`]: sensor ids, points, columnar point batches, time ranges.
//! - [`storage`]: the [`storage::StorageEngine`] trait every transport depends
//!   on, and [`storage::embedded`], the default persistent store.
//! - [`csv_format`]: the export CSV format, written (export) and read (import).
//! - [`http`]: the HTTP API (router, errors, server); [`export`] (CSV and
//!   XLSX downloads) and [`series`] (M4 chart data) are its biggest routes.
//! - [`cli`]: the `engine` command line; `main.rs` only calls [`cli::run`].

pub mod cli;
pub mod csv_format;
pub mod export;
pub mod http;
pub mod model;
pub mod series;
pub mod server;
pub mod storage;
