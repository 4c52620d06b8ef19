//! The engine's one integration-test binary (one link, one place to look).

mod support;

// The PostgreSQL store (issue 11).
mod pg_support;
mod postgres;

mod backup;
mod cli;
mod conformance;
mod crash;
mod faults;
mod full_disk;
mod http_api;
mod http_export;
mod http_export_aggregates;
mod http_export_formats;
mod import_limits;
mod recovery;

// Ingestion and live view (issue 5): gRPC, NATS, SSE, demo.
mod grpc;
// Values bit for bit through every way in and out (issue 8).
mod bit_exact;
mod ingest_support;
mod nats;

// Security (issue 9): tokens, scopes, sessions.
mod auth;
