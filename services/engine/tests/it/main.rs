//! The engine's one integration-test binary (one link, one place to look).

mod support;

// The PostgreSQL store (issue 11).
mod pg_support;
mod postgres;
// Cluster mode: engines sharing PostgreSQL and a NATS cluster.
mod cluster;

mod backup;
mod cli;
mod conformance;
mod crash;
mod faults;
mod full_disk;
mod full_disk_served;
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
// NATS credentials and TLS (issue 9 item 7).
mod nats_auth;
// TLS of the HTTP and gRPC listeners (issue 9 item 6).
mod tls;

// Reliability (issue 13): fuzz inputs replayed, network faults, full disks.
mod full_disk_engine;
mod fuzz_regressions;
mod netfault;

// Operations (issue 12): metrics, the self-contained binary, configuration.
mod binary;
mod config;
mod metrics;

// Security (issue 9): tokens, scopes, sessions, the audit trail; no
// secret in a log.
mod audit;
mod auth;
mod log_scan;
