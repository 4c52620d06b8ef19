//! The audit trail: who exported, imported, wrote, signed in, made or
//! revoked tokens, and who was refused; append-only, tamper-evident.
//!
//! # Layout
//!
//! - This file: the events ([`AuditEvent`]), the [`AuditSink`] trait a store
//!   of records implements (a PostgreSQL sink can later hold the trail of
//!   several engines, like [`crate::auth::TokenStore`]), and [`Audit`], the
//!   handle the transports record through: one writer task that group-commits
//!   what arrives, waits for durability only when asked (an export's start),
//!   and limits refusal records so a flood cannot fill the disk.
//! - [`file`]: [`FileAuditSink`], JSON Lines in `DATA_DIR/audit/`, each
//!   record carrying an HMAC-SHA256 chained over the one before, keyed by
//!   `DATA_DIR/auth/audit-key`; rotation by size; readers need no lock.
//! - [`verify`]: `engine audit verify`, which names the first record that
//!   was edited, removed or reordered, and the filters of `audit list` and
//!   `GET /api/v1/audit`.
//!
//! Nothing here knows HTTP or gRPC: the transports build the events.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub mod file;
pub mod verify;

pub use file::FileAuditSink;
pub use verify::{AuditFilter, AuditPage, VerifyReport};

/// Refusal records (401, 403, 429, failed sign-ins) written per second at
/// most; the rest are counted into one [`AuditEvent::RefusalsDropped`].
/// A steady flood then costs about 10 × 300 bytes a second, not the disk.
pub const REFUSALS_PER_SECOND: u32 = 10;

/// Default size at which a log file is closed and the next one begun.
pub const DEFAULT_ROTATE_BYTES: u64 = 64 << 20;

/// How often records written without waiting are made durable (the group
/// commit of outcomes, imports, sign-ins...).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Why the audit trail could not be written or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail {path}: {message}")]
    Io { path: String, message: String },
    #[error("audit trail: {0}")]
    Invalid(String),
    #[error("the audit trail's writer has stopped")]
    Stopped,
}

impl AuditError {
    pub fn io(path: &std::path::Path, error: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            message: error.to_string(),
        }
    }
}

/// By which door a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Http,
    Grpc,
    Cli,
}

/// Who did it: the token (id and name, as they were then), the client's
/// address, and for the CLI the operating-system user.
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    pub via: Via,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_user: Option<String>,
}

impl Actor {
    /// A caller of the HTTP or gRPC API.
    pub fn of(
        via: Via,
        principal: Option<&crate::auth::Principal>,
        client: Option<std::net::SocketAddr>,
    ) -> Self {
        Self {
            via,
            token_id: principal.and_then(|p| p.token_id.as_deref().map(str::to_owned)),
            token_name: principal.map(|p| p.name.to_string()),
            client: client.map(|c| c.to_string()),
            os_user: None,
        }
    }

    /// Whoever runs this `engine` command.
    pub fn cli() -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            // SAFETY: getuid cannot fail and touches no memory.
            .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
        Self {
            via: Via::Cli,
            token_id: None,
            token_name: None,
            client: None,
            os_user: Some(user),
        }
    }
}

/// How something that ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every byte went out (export), everything was stored (import, write).
    Completed,
    /// The client went away before the end (or the server shut down).
    Aborted,
    /// The server failed or refused part way (store error, bad input).
    Failed,
}

/// How a browser session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInMethod {
    /// `POST /api/v1/session` with a token.
    Token,
    /// A one-time sign-in link.
    Link,
}

/// One thing the audit trail records. Serialised flat into the record:
/// `"event": "export_started"` and the fields below.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// An export is about to stream: durable before its first byte.
    ExportStarted {
        #[serde(flatten)]
        actor: Actor,
        sensors: Vec<String>,
        start_ms: i64,
        end_ms: i64,
        format: String,
        /// Every other query parameter as given (layout, interval,
        /// aggregate, time_zone, delimiter...).
        options: Vec<(String, String)>,
        #[serde(skip_serializing_if = "Option::is_none")]
        encoding: Option<String>,
    },
    /// How the export of the `export_started` record `start_seq` ended.
    ExportEnded {
        #[serde(flatten)]
        actor: Actor,
        start_seq: u64,
        outcome: Outcome,
        /// Rows read for the body; for an aborted export up to a few chunks
        /// more than the client received.
        rows: u64,
        /// Bytes handed to the connection.
        bytes: u64,
        duration_ms: u64,
    },
    /// `POST /api/v1/import`.
    Import {
        #[serde(flatten)]
        actor: Actor,
        sensors: Vec<String>,
        rows: u64,
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        duration_ms: u64,
    },
    /// A gRPC `Write` stream, from its start to its end.
    GrpcWrite {
        #[serde(flatten)]
        actor: Actor,
        /// The sensors written (the first [`MAX_LISTED_SENSORS`]).
        sensors: Vec<String>,
        rows: u64,
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        duration_ms: u64,
    },
    TokenCreated {
        #[serde(flatten)]
        actor: Actor,
        target_token_id: String,
        target_name: String,
        scopes: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_ms: Option<i64>,
    },
    TokenRevoked {
        #[serde(flatten)]
        actor: Actor,
        target_token_id: String,
        target_name: String,
    },
    /// A browser session opened (or not: `outcome: failed`, `reason`).
    SignIn {
        #[serde(flatten)]
        actor: Actor,
        method: SignInMethod,
        outcome: SignInOutcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A request answered 401, 403 or 429 (gRPC `UNAUTHENTICATED`,
    /// `PERMISSION_DENIED`).
    Refused {
        #[serde(flatten)]
        actor: Actor,
        status: String,
        method: String,
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Refusals over [`REFUSALS_PER_SECOND`] that were only counted.
    RefusalsDropped {
        count: u64,
        first_ms: i64,
        last_ms: i64,
    },
}

/// Sensors a record lists at most (a gRPC write may touch thousands).
pub const MAX_LISTED_SENSORS: usize = 1000;

/// Whether a sign-in worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInOutcome {
    Ok,
    Failed,
}

/// Where audit records are kept. [`FileAuditSink`] is the data directory's;
/// a PostgreSQL table could hold several engines' trails (each append then
/// a transaction that reads the last MAC under a row lock).
#[async_trait]
pub trait AuditSink: Send + Sync + 'static {
    /// Appends `events` in order, each chained to the one before; with
    /// `sync`, durable when this returns. The sequence number of each.
    async fn append(&self, events: Vec<AuditEvent>, sync: bool) -> Result<Vec<u64>, AuditError>;
    /// Makes everything appended so far durable.
    async fn sync(&self) -> Result<(), AuditError>;
    /// Records matching `filter`, oldest first; works while another process
    /// appends.
    async fn read(&self, filter: &AuditFilter) -> Result<AuditPage, AuditError>;
}

type Waiter = oneshot::Sender<Result<u64, AuditError>>;

// Messages go through the channel one by one; boxing each event would
// cost an allocation per record for nothing.
#[allow(clippy::large_enum_variant)]
enum Message {
    Event(AuditEvent, Option<Waiter>),
    Flush(oneshot::Sender<Result<(), AuditError>>),
}

/// Refusals of the current second, and the ones dropped.
#[derive(Default)]
struct RefusalWindow {
    started: Option<Instant>,
    written: u32,
    dropped: u64,
    first_ms: i64,
    last_ms: i64,
}

impl RefusalWindow {
    /// A summary of what was dropped, once the second it was dropped in
    /// has passed (or now, with `force`).
    fn take_summary(&mut self, force: bool) -> Option<AuditEvent> {
        let expired = self
            .started
            .is_none_or(|s| s.elapsed() >= Duration::from_secs(1));
        if self.dropped == 0 || !(expired || force) {
            return None;
        }
        let event = AuditEvent::RefusalsDropped {
            count: self.dropped,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
        };
        self.dropped = 0;
        Some(event)
    }
}

/// The handle every transport records through. Cheap to call: events go to
/// one writer task over a channel; only [`Audit::record_durable`] waits.
pub struct Audit {
    tx: mpsc::UnboundedSender<Message>,
    refusals: Arc<Mutex<RefusalWindow>>,
    sink: Arc<dyn AuditSink>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Audit {
    /// Starts the writer task over `sink` (needs a Tokio runtime).
    pub fn start(sink: Arc<dyn AuditSink>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let refusals = Arc::new(Mutex::new(RefusalWindow::default()));
        tokio::spawn(write_loop(Arc::clone(&sink), rx, Arc::clone(&refusals)));
        Arc::new(Self { tx, refusals, sink })
    }

    pub fn sink(&self) -> &Arc<dyn AuditSink> {
        &self.sink
    }

    /// Records `event` without waiting: written at once, durable within
    /// [`SYNC_INTERVAL`] (group-committed). A failure to write is logged.
    pub fn record(&self, event: AuditEvent) {
        if self.tx.send(Message::Event(event, None)).is_err() {
            tracing::error!("audit record lost: the writer has stopped");
        }
    }

    /// Records `event` and returns once it is durable (fsynced), with its
    /// sequence number; an error means it is not in the trail.
    pub async fn record_durable(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Message::Event(event, Some(done)))
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }

    /// Records a refusal, at most [`REFUSALS_PER_SECOND`] a second; the
    /// rest are counted into one `refusals_dropped` record.
    pub fn refused(&self, event: AuditEvent) {
        let summary = {
            let mut window = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            let summary = window.take_summary(false);
            if window
                .started
                .is_none_or(|s| s.elapsed() >= Duration::from_secs(1))
            {
                window.started = Some(Instant::now());
                window.written = 0;
            }
            if window.written < REFUSALS_PER_SECOND {
                window.written += 1;
                Ok(summary)
            } else {
                let now = now_ms();
                if window.dropped == 0 {
                    window.first_ms = now;
                }
                window.dropped += 1;
                window.last_ms = now;
                Err(summary)
            }
        };
        match summary {
            Ok(summary) => {
                if let Some(summary) = summary {
                    self.record(summary);
                }
                self.record(event);
            }
            Err(Some(summary)) => self.record(summary),
            Err(None) => {}
        }
    }

    /// Waits until everything recorded so far is written and durable.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let summary = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_summary(true);
        if let Some(summary) = summary {
            self.record(summary);
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Message::Flush(done))
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }
}

/// Which kind of write a [`WriteSession`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// `POST /api/v1/import`.
    Import,
    /// A gRPC `Write` stream.
    GrpcWrite,
}

/// One import or gRPC write session, recorded once when it ends: finished
/// with [`WriteSession::finish`], or `aborted` when dropped before (the
/// client went away and the handler was cancelled).
pub struct WriteSession {
    audit: Option<Arc<Audit>>,
    kind: WriteKind,
    actor: Actor,
    sensors: Vec<String>,
    seen: std::collections::HashSet<String>,
    started: Instant,
    rows: u64,
}

impl WriteSession {
    /// Starts a session; records nothing without `audit`.
    pub fn start(audit: Option<&Arc<Audit>>, kind: WriteKind, actor: Actor) -> Self {
        Self {
            audit: audit.cloned(),
            kind,
            actor,
            sensors: Vec::new(),
            seen: std::collections::HashSet::new(),
            started: Instant::now(),
            rows: 0,
        }
    }

    /// A sensor written (listed once, the first [`MAX_LISTED_SENSORS`]).
    pub fn sensor(&mut self, id: &str) {
        if self.audit.is_none()
            || self.sensors.len() >= MAX_LISTED_SENSORS
            || self.sensors.last().is_some_and(|last| last == id)
            || self.seen.contains(id)
        {
            return;
        }
        self.seen.insert(id.to_owned());
        self.sensors.push(id.to_owned());
    }

    /// Rows stored so far.
    pub fn stored(&mut self, rows: u64) {
        self.rows += rows;
    }

    /// Records how the session ended.
    pub fn finish(mut self, outcome: Outcome, error: Option<String>) {
        self.emit(outcome, error);
    }

    fn emit(&mut self, outcome: Outcome, error: Option<String>) {
        let Some(audit) = self.audit.take() else {
            return;
        };
        let (actor, sensors) = (self.actor.clone(), std::mem::take(&mut self.sensors));
        let duration_ms = self.started.elapsed().as_millis() as u64;
        audit.record(match self.kind {
            WriteKind::Import => AuditEvent::Import {
                actor,
                sensors,
                rows: self.rows,
                outcome,
                error,
                duration_ms,
            },
            WriteKind::GrpcWrite => AuditEvent::GrpcWrite {
                actor,
                sensors,
                rows: self.rows,
                outcome,
                error,
                duration_ms,
            },
        });
    }
}

impl Drop for WriteSession {
    fn drop(&mut self) {
        self.emit(Outcome::Aborted, None);
    }
}

/// Most events written in one append (one lock, one write each, one sync).
const MAX_BATCH: usize = 1024;

/// The writer: takes what has queued up, appends it in one go, syncs when a
/// waiter needs it, and once a second syncs the rest and writes the summary
/// of dropped refusals.
async fn write_loop(
    sink: Arc<dyn AuditSink>,
    mut rx: mpsc::UnboundedReceiver<Message>,
    refusals: Arc<Mutex<RefusalWindow>>,
) {
    let mut ticks = tokio::time::interval(SYNC_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unsynced = false;
    loop {
        let first = tokio::select! {
            message = rx.recv() => match message {
                Some(message) => message,
                None => break,
            },
            _ = ticks.tick() => {
                let summary = refusals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_summary(false);
                if let Some(summary) = summary {
                    unsynced |= append(&*sink, vec![(summary, None)], false).await;
                }
                if unsynced {
                    match sink.sync().await {
                        Ok(()) => unsynced = false,
                        Err(error) => tracing::error!(%error, "cannot sync the audit trail"),
                    }
                }
                continue;
            }
        };
        let mut events = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Event(event, waiter) => events.push((event, waiter)),
                Message::Flush(done) => flushes.push(done),
            }
            if events.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let sync = !flushes.is_empty() || events.iter().any(|(_, w)| w.is_some());
        if !events.is_empty() {
            let wrote = append(&*sink, events, sync).await;
            unsynced |= wrote && !sync;
        }
        if !flushes.is_empty() {
            let result = if unsynced { sink.sync().await } else { Ok(()) };
            if result.is_ok() {
                unsynced = false;
            }
            for done in flushes {
                let _ = done.send(result.clone());
            }
        }
    }
    if unsynced && let Err(error) = sink.sync().await {
        tracing::error!(%error, "cannot sync the audit trail");
    }
}

/// Appends one batch and answers its waiters; whether anything was written.
async fn append(
    sink: &dyn AuditSink,
    events: Vec<(AuditEvent, Option<Waiter>)>,
    sync: bool,
) -> bool {
    let (events, waiters): (Vec<_>, Vec<_>) = events.into_iter().unzip();
    let count = events.len();
    match sink.append(events, sync).await {
        Ok(seqs) => {
            for (waiter, seq) in waiters.into_iter().zip(seqs) {
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(seq));
                }
            }
            true
        }
        Err(error) => {
            let lost = waiters.iter().filter(|w| w.is_none()).count();
            tracing::error!(%error, records = count, lost, "cannot write the audit trail");
            for waiter in waiters.into_iter().flatten() {
                let _ = waiter.send(Err(error.clone()));
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(n: usize) -> AuditEvent {
        AuditEvent::Refused {
            actor: Actor::of(Via::Http, None, None),
            status: "401".into(),
            method: "GET".into(),
            path: format!("/api/v1/sensors/{n}"),
            reason: None,
        }
    }

    #[tokio::test]
    async fn a_flood_of_refusals_is_cut_to_a_few_records_and_one_count() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FileAuditSink::open(dir.path(), DEFAULT_ROTATE_BYTES).unwrap());
        let audit = Audit::start(sink.clone());
        for n in 0..500 {
            audit.refused(refusal(n));
        }
        audit.flush().await.unwrap();
        let page = sink.read(&AuditFilter::default()).await.unwrap();
        let refused = page
            .records
            .iter()
            .filter(|r| r["event"] == "refused")
            .count();
        let dropped: u64 = page
            .records
            .iter()
            .filter(|r| r["event"] == "refusals_dropped")
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        assert!(refused <= 2 * REFUSALS_PER_SECOND as usize, "{refused}");
        assert_eq!(refused as u64 + dropped, 500);
        let report = verify::verify_dir(dir.path(), None, false).unwrap();
        assert!(report.problem.is_none(), "{report:?}");
    }
}
