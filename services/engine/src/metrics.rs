//! Prometheus metrics: `GET /metrics` in the Prometheus text format.
//!
//! Built on the `metrics` facade with `metrics-exporter-prometheus` as its
//! recorder. The facade lets the store, the NATS consumer and the HTTP layer
//! record where things happen (`counter!(...).increment(n)`) without a
//! registry handed through the `StorageEngine` trait; until [`install`] runs
//! (the CLI's one-shot commands, unit tests) every record is a no-op.
//!
//! Label values are bounded sets (route templates, status codes, sources):
//! never a sensor id or a raw path, which would grow the series without end.
//!
//! Every metric name lives here, with a helper per event, so the
//! instrumented code stays one line.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::http::AppState;

/// Points stored, by `source`: `write` (gRPC, NATS, demo) or `import`.
pub const POINTS_WRITTEN: &str = "engine_points_written_total";
/// Rows (CSV lines, Parquet rows, ...) handed to export encoders.
pub const EXPORT_ROWS: &str = "engine_export_rows_total";
/// HTTP exports whose body is still streaming.
pub const EXPORTS_RUNNING: &str = "engine_exports_running";
/// HTTP requests by `route` (the matched template), `method`, `status`.
pub const HTTP_REQUESTS: &str = "engine_http_requests_total";
/// Time to the response headers (a streamed export's body is not in it).
pub const HTTP_DURATION: &str = "engine_http_request_duration_seconds";
/// NATS: messages the consumer still has to deliver after the last one
/// written (JetStream's own count from the message metadata).
pub const NATS_PENDING: &str = "engine_nats_pending_messages";
/// NATS: age of the last written message when it was written (publish to
/// durable).
pub const NATS_LAG: &str = "engine_nats_ingest_lag_seconds";
/// NATS: messages written (then acknowledged).
pub const NATS_MESSAGES: &str = "engine_nats_messages_total";
/// NATS: malformed messages copied to the dead-letter subject.
pub const NATS_DEAD_LETTERED: &str = "engine_nats_dead_lettered_total";
/// Embedded store: time to fold one frozen head into blocks.
pub const CHECKPOINT_DURATION: &str = "engine_checkpoint_duration_seconds";
/// Embedded store: points in the in-memory heads (active and frozen).
pub const HEAD_POINTS: &str = "engine_head_points";
/// Embedded store: frozen heads waiting to be folded.
pub const FROZEN_HEADS: &str = "engine_frozen_heads";
/// Bytes of the write-ahead log on disk.
pub const WAL_BYTES: &str = "engine_wal_bytes";
/// Bytes of the store's files on disk (blocks and WAL), allocated.
pub const STORE_BYTES: &str = "engine_store_bytes";

/// The `Content-Type` of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same
/// handle). Histograms get buckets, not summaries, so they aggregate across
/// instances.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ],
            )
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(NATS_LAG.into()),
                    &[
                        0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
                    ],
                )
            })
            .map(PrometheusBuilder::build_recorder);
        match recorder {
            Ok(recorder) => {
                let handle = recorder.handle();
                if metrics::set_global_recorder(recorder).is_err() {
                    tracing::warn!(
                        "a metrics recorder was installed already; /metrics stays empty"
                    );
                }
                describe();
                handle
            }
            // Only on an empty bucket list, which the constants above are not.
            Err(error) => {
                tracing::warn!(%error, "metrics recorder not installed");
                PrometheusBuilder::new().build_recorder().handle()
            }
        }
    })
}

/// `# HELP` lines.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(POINTS_WRITTEN, "Points stored, by source (write, import).");
    describe_counter!(EXPORT_ROWS, "Rows handed to export encoders.");
    describe_gauge!(
        EXPORTS_RUNNING,
        "HTTP exports whose body is still streaming."
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route template, method and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time from request to response headers, by route template and status."
    );
    describe_gauge!(
        NATS_PENDING,
        "Messages JetStream still holds for the consumer."
    );
    describe_histogram!(
        NATS_LAG,
        Unit::Seconds,
        "Publish-to-durable time of NATS messages."
    );
    describe_counter!(NATS_MESSAGES, "NATS messages written and acknowledged.");
    describe_counter!(NATS_DEAD_LETTERED, "Malformed NATS messages dead-lettered.");
    describe_histogram!(
        CHECKPOINT_DURATION,
        Unit::Seconds,
        "Time to fold one frozen head into blocks."
    );
    describe_gauge!(
        HEAD_POINTS,
        "Points in the in-memory heads (active and frozen)."
    );
    describe_gauge!(FROZEN_HEADS, "Frozen heads waiting to be folded.");
    describe_gauge!(
        WAL_BYTES,
        Unit::Bytes,
        "Bytes of the write-ahead log on disk."
    );
    describe_gauge!(
        STORE_BYTES,
        Unit::Bytes,
        "Bytes of the store's files on disk."
    );
}

/// `n` points stored by `source` (`"write"` or `"import"`).
pub fn points_written(source: &'static str, n: u64) {
    metrics::counter!(POINTS_WRITTEN, "source" => source).increment(n);
}

/// `n` rows went to an export encoder.
pub fn export_rows(n: u64) {
    metrics::counter!(EXPORT_ROWS).increment(n);
}

/// Counts an HTTP export as running until it is dropped.
pub struct ExportRunning(());

impl ExportRunning {
    pub fn start() -> Self {
        metrics::gauge!(EXPORTS_RUNNING).increment(1.0);
        Self(())
    }
}

impl Drop for ExportRunning {
    fn drop(&mut self) {
        metrics::gauge!(EXPORTS_RUNNING).decrement(1.0);
    }
}

/// `messages` NATS messages written; the last one was published at
/// `published_unix_nanos` with `pending` more waiting behind it.
pub fn nats_written(messages: u64, pending: Option<u64>, published_unix_nanos: Option<i128>) {
    metrics::counter!(NATS_MESSAGES).increment(messages);
    if let Some(pending) = pending {
        metrics::gauge!(NATS_PENDING).set(pending as f64);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    if let Some(published) = published_unix_nanos {
        // Clocks of two machines: a message "from the future" counts as 0.
        let age = (now - published).max(0) as f64 / 1e9;
        metrics::histogram!(NATS_LAG).record(age);
    }
}

/// One NATS message dead-lettered, `pending` more waiting behind it.
pub fn nats_dead_lettered(pending: Option<u64>) {
    metrics::counter!(NATS_DEAD_LETTERED).increment(1);
    if let Some(pending) = pending {
        metrics::gauge!(NATS_PENDING).set(pending as f64);
    }
}

/// A fold of a frozen head took `took`.
pub fn checkpoint(took: Duration) {
    metrics::histogram!(CHECKPOINT_DURATION).record(took.as_secs_f64());
}

/// The heads hold `points` points, `frozen` of them heads waiting for a fold.
pub fn heads(points: usize, frozen: usize) {
    metrics::gauge!(HEAD_POINTS).set(points as f64);
    metrics::gauge!(FROZEN_HEADS).set(frozen as f64);
}

/// HTTP middleware: counts and times every request under its route
/// template (`/api/v1/sensors/{id}`, never the raw path); requests no
/// route matched (the dashboard's files, unknown paths) count as
/// `fallback`.
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "fallback".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "route" => route.clone(), "status" => status.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// `GET /metrics`: every metric, with the store's disk usage read now.
pub async fn render(State(state): State<AppState>) -> Response {
    if let Some(usage) = state.storage.disk_usage() {
        metrics::gauge!(WAL_BYTES).set(usage.wal_bytes as f64);
        metrics::gauge!(STORE_BYTES).set(usage.total_bytes as f64);
    }
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        install().render(),
    )
        .into_response()
}
