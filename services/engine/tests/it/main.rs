//! The one integration-test binary: each module tests one area against real
//! servers on free ports.

// Ingestion and live view (issue 5).
mod grpc;
mod ingest_support;
mod nats;
