//! `GET /api/v1/export` and `GET /api/v1/export/summary`: parse the query
//! into an [`ExportRequest`], claim an export slot, and answer with what
//! [`crate::export`] streams (or counts).
//!
//! Everything that can be refused is refused before the 200: the parameters
//! (400), the sensors (404, naming each unknown one), the export limit
//! (429). The export slot is held by the body, so it is freed when the
//! download ends or the client leaves, not when the headers leave.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

use crate::audit::{Actor, Audit, AuditEvent, Outcome as AuditOutcome, Via};
use crate::export::summary::{ExportSummary, summarize};
use crate::export::{self, Encoding, ExportOptions, ExportRequest, content_disposition};

use super::error::ApiError;
use super::state::AppState;

type Pairs = Vec<(String, String)>;

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The export handler.
pub async fn export(
    State(state): State<AppState>,
    caller: super::auth::Caller,
    client: super::audit::Client,
    headers: HeaderMap,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = query?;
    let request = ExportRequest::from_pairs(&pairs, now_ms())?;
    caller.export(&request.sensors)?;
    // Per token, beside the global limit: one token cannot take every slot.
    let token_slot = super::auth::TokenExportSlot::claim(&state, &caller.0)?;
    let permit = Arc::clone(&state.export_permits)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyRequests)?;
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .and_then(Encoding::negotiate);
    let options = ExportOptions {
        xlsx_rows_per_sheet: state.xlsx_rows_per_sheet,
        accept,
    };
    let started = export::open(&state.storage, request, options).await?;
    // The start record is durable before the first byte leaves; without
    // it, nothing leaves (dropping the body stops the export's work).
    let audited = match &state.audit {
        None => None,
        Some(audit) => Some(
            audit_start(
                audit,
                &caller.0,
                client,
                &pairs,
                (&started.request, started.encoding, &started.rows),
            )
            .await?,
        ),
    };
    let request = &started.request;
    let (ascii, full) = request.file_name();
    let disposition = HeaderValue::from_str(&content_disposition(&ascii, &full))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    tracing::info!(
        sensors = request.sensors.len(),
        first_sensor = %request.sensors[0],
        start_ms = request.range.start_ms,
        end_ms = request.range.end_ms,
        format = request.format.name(),
        layout = request.layout.name(),
        resampled = request.resample.is_some(),
        encoding = started.encoding.map(Encoding::name),
        "export started"
    );
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(request.format.content_type()),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(futures_util::StreamExt::map(
            hold(started.body, permit, audited),
            move |chunk| {
                // The token's slot is freed with the body, like the permit.
                let _slot = &token_slot;
                chunk
            },
        )),
    )
        .into_response();
    let response_headers = response.headers_mut();
    if let Some(encoding) = started.encoding {
        response_headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.name()),
        );
    }
    if request.format.compressible() {
        response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    Ok(response)
}

/// Writes an export's start record, durably; 503 when it cannot.
async fn audit_start(
    audit: &Arc<Audit>,
    caller: &crate::auth::Principal,
    client: super::audit::Client,
    pairs: &Pairs,
    (request, encoding, rows): (
        &ExportRequest,
        Option<Encoding>,
        &Arc<std::sync::atomic::AtomicU64>,
    ),
) -> Result<ExportAudit, ApiError> {
    let actor = Actor::of(Via::Http, Some(caller), client.0);
    let event = AuditEvent::ExportStarted {
        actor: actor.clone(),
        sensors: request.sensors.iter().map(|s| s.to_string()).collect(),
        start_ms: request.range.start_ms,
        end_ms: request.range.end_ms,
        format: request.format.name().to_owned(),
        options: pairs
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "sensor_id" | "start_ts" | "end_ts"))
            .cloned()
            .collect(),
        encoding: encoding.map(|e| e.name().to_owned()),
    };
    match audit.record_durable(event).await {
        Ok(start_seq) => Ok(ExportAudit {
            audit: Arc::clone(audit),
            actor,
            start_seq,
            rows: Arc::clone(rows),
        }),
        Err(error) => {
            tracing::error!(%error, "export refused: its audit record cannot be written");
            Err(ApiError::AuditUnavailable(
                "exports are refused until it can (see the server log)".into(),
            ))
        }
    }
}

/// What an export's outcome record needs.
struct ExportAudit {
    audit: Arc<Audit>,
    actor: Actor,
    start_seq: u64,
    rows: Arc<std::sync::atomic::AtomicU64>,
}

/// The summary handler: the same parameters, answered as JSON.
pub async fn summary(
    State(state): State<AppState>,
    caller: super::auth::Caller,
    query: Result<Query<Pairs>, QueryRejection>,
) -> Result<Json<ExportSummary>, ApiError> {
    let Query(pairs) = query?;
    let request = ExportRequest::from_pairs(&pairs, now_ms())?;
    caller.export(&request.sensors)?;
    Ok(Json(summarize(&state.storage, &request).await?))
}

/// Keeps `permit` alive exactly as long as the body stream, so the export
/// slot is freed when the download ends or the client leaves (not when the
/// headers leave), and logs once how the export ended.
fn hold<S>(body: S, permit: OwnedSemaphorePermit, audit: Option<ExportAudit>) -> Guarded<S>
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    Guarded {
        inner: Box::pin(body),
        _permit: permit,
        _running: crate::metrics::ExportRunning::start(),
        started: std::time::Instant::now(),
        bytes: 0,
        outcome: Outcome::Left,
        audit,
    }
}

/// How an export's body ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Every byte was handed to the connection.
    Completed,
    /// The store failed; the connection was aborted.
    Failed,
    /// Dropped before the end: the client left or the server shut down.
    Left,
}

/// The body stream of an export, with its permit and its bookkeeping.
struct Guarded<S> {
    inner: std::pin::Pin<Box<S>>,
    _permit: OwnedSemaphorePermit,
    /// Counts the export in `engine_exports_running` while it streams.
    _running: crate::metrics::ExportRunning,
    started: std::time::Instant,
    bytes: u64,
    outcome: Outcome,
    /// Where the outcome is recorded (group-committed, not waited for).
    audit: Option<ExportAudit>,
}

impl<S> futures_util::Stream for Guarded<S>
where
    S: futures_util::Stream<Item = Result<Bytes, std::io::Error>>,
{
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(chunk))) => self.bytes += chunk.len() as u64,
            std::task::Poll::Ready(Some(Err(_))) => self.outcome = Outcome::Failed,
            std::task::Poll::Ready(None) if self.outcome == Outcome::Left => {
                self.outcome = Outcome::Completed;
            }
            _ => {}
        }
        polled
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        tracing::info!(
            outcome = ?self.outcome,
            bytes = self.bytes,
            elapsed_ms = duration_ms,
            "export ended"
        );
        if let Some(audited) = self.audit.take() {
            audited.audit.record(AuditEvent::ExportEnded {
                actor: audited.actor,
                start_seq: audited.start_seq,
                outcome: match self.outcome {
                    Outcome::Completed => AuditOutcome::Completed,
                    Outcome::Failed => AuditOutcome::Failed,
                    Outcome::Left => AuditOutcome::Aborted,
                },
                rows: audited.rows.load(std::sync::atomic::Ordering::Relaxed),
                bytes: self.bytes,
                duration_ms,
            });
        }
    }
}
