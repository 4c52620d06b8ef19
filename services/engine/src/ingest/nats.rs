//! The NATS JetStream consumer.
//!
//! It ensures a stream (default `SENSORS` over `sensors.>`) and a durable pull
//! consumer on it, then loops: take every message that is ready (at least
//! one, at most [`NatsConfig::max_batch_messages`]), parse them, write all
//! their points with **one** `storage.write` (group commit: one fsync for
//! thousands of messages is what makes hundreds of thousands of points per
//! second possible), and only then acknowledge them.
//!
//! Every point carries the stream sequence of its message
//! ([`Sample::seq`]), and the store keeps, per point, the write with the
//! highest version: a message redelivered after a newer one for the same
//! point was stored (a crash before the acknowledgements, a lost
//! acknowledgement, a write that failed and was retried) changes nothing,
//! and rewriting the same message is harmless. So every published point
//! ends up stored once, with its last published value.
//!
//! Malformed messages are logged, counted, copied to a dead-letter subject
//! (`sensors_dlq.<original subject>`, outside `sensors.>` so they never come
//! back) and terminated (`+TERM`), so they never block the stream.
//!
//! Failures of any kind (NATS unreachable, the store refusing a write, a
//! broken stream) end the session; the messages it had not written are
//! negatively acknowledged with a delay (or simply come back after
//! `ack_wait`), and a new session starts after a pause that grows
//! exponentially, with jitter, over consecutive failures and shrinks back
//! only after a run of successful writes ([`Backoff`]). A full disk thus
//! costs a pause, not a restart. Each change of state is logged once, not
//! each retry. NATS being down, at start or later, never blocks anything
//! else: the consumer is its own task. Only features of nats-server 2.9 are
//! used.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::{FutureExt, StreamExt};

use super::{IngestStats, MalformedMessage, parse_message};
use crate::model::Sample;
use crate::storage::{SharedStorage, StorageError};

/// Where and how to consume.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL(s), e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// JetStream stream to ensure and consume.
    pub stream: String,
    /// Subjects the stream is created with (when it does not exist yet).
    pub subjects: Vec<String>,
    /// Durable consumer name: the server remembers its position across
    /// engine restarts.
    pub durable: String,
    /// Prefix of the dead-letter subjects; `None` to only log and drop.
    /// Must not fall under the stream's subjects.
    pub dead_letter_prefix: Option<String>,
    /// Most messages written in one group commit.
    pub max_batch_messages: usize,
    /// How long JetStream waits for an acknowledgement before redelivering:
    /// after a crash, unacknowledged messages come back this much later.
    pub ack_wait: Duration,
    /// Maximum age of messages kept in a stream this consumer creates.
    pub max_age: Duration,
    /// First pause after a failure; it doubles with each consecutive one.
    pub min_backoff: Duration,
    /// Longest pause between attempts.
    pub max_backoff: Duration,
    /// Replicas of a stream this consumer creates (3 on a 3-node cluster:
    /// nats-server syncs to disk only now and then, so replicas are what
    /// makes an acknowledged message survive the loss of a machine). An
    /// existing stream is left as it is.
    pub replicas: usize,
    /// How to authenticate to the server and trust its certificate.
    pub credentials: NatsCredentials,
}

/// A password or token from a flag or the environment: never in debug
/// output or logs (`ServeConfig` derives `Debug`).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// How the client authenticates to NATS (user/password, token, or a `.creds`
/// file of the decentralised JWT model) and which CA it trusts for TLS.
///
/// What a client may publish or consume is NATS's own business (subject
/// permissions per user): the engine only proves who it is.
#[derive(Clone, Default)]
pub struct NatsCredentials {
    /// User name and password (`authorization { users = [...] }`).
    pub user_password: Option<(String, String)>,
    /// A token (`authorization { token: ... }`).
    pub token: Option<String>,
    /// A `.creds` file (a user JWT and its NKey seed, as `nsc` writes it)
    /// for servers run in operator mode. Read when connecting, so a
    /// rotated file is picked up by the next connection.
    pub creds_file: Option<std::path::PathBuf>,
    /// PEM file of the CA that signed the server's certificate; TLS is then
    /// required.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Secrets are never printed, not even in debug output.
impl fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCredentials")
            .field(
                "user",
                &self.user_password.as_ref().map(|(user, _)| user.as_str()),
            )
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .field("creds_file", &self.creds_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl NatsCredentials {
    /// `options` with these credentials and CA. Fails when the creds file
    /// cannot be read or parsed.
    pub fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> std::io::Result<async_nats::ConnectOptions> {
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &self.creds_file {
            let in_file = |error: std::io::Error| {
                std::io::Error::new(
                    error.kind(),
                    format!("NATS creds file {}: {error}", path.display()),
                )
            };
            let text = std::fs::read_to_string(path).map_err(in_file)?;
            // async-nats's own message names the problem, never the seed.
            options = options.credentials(&text).map_err(in_file)?;
        }
        if let Some(path) = &self.ca_file {
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// The server addresses of a comma-separated list (`nats://a:4222,nats://b:4222`):
/// the client connects to one of them and fails over to the others.
pub fn server_addrs(urls: &str) -> std::io::Result<Vec<async_nats::ServerAddr>> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>().map_err(|error| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("NATS URL {url:?}: {error}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no NATS URL given",
        ));
    }
    Ok(addrs)
}

/// Connects a client named `name` to the servers of `config` with its
/// credentials; `tune` adds options of the caller's (callbacks, no echo).
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    tune: impl FnOnce(async_nats::ConnectOptions) -> async_nats::ConnectOptions,
) -> Result<async_nats::Client, SessionError> {
    let addrs = server_addrs(&config.url)?;
    let options = config.credentials.apply(
        async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5)),
    )?;
    Ok(tune(options).connect(addrs).await?)
}

impl NatsConfig {
    /// The defaults: stream `SENSORS` over `sensors.>`, durable consumer
    /// `sensor-engine`, dead letters on `sensors_dlq.>`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "SENSORS".to_owned(),
            subjects: vec!["sensors.>".to_owned()],
            durable: "sensor-engine".to_owned(),
            dead_letter_prefix: Some("sensors_dlq".to_owned()),
            max_batch_messages: 5_000,
            ack_wait: Duration::from_secs(10),
            max_age: Duration::from_secs(7 * 24 * 3600),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            replicas: 1,
            credentials: NatsCredentials::default(),
        }
    }
}

/// Longest wait for acknowledgements (or a dead-letter publish) to be
/// handed to the client before the session is given up.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait at shutdown for the last group's write and acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// When messages whose write failed come back: soon, but not in a loop
/// (the session ends, and the next one starts after the backoff anyway).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Successful group commits in a row after which the backoff starts again
/// from [`NatsConfig::min_backoff`]. One is not enough: a store that fails
/// every other write, or a connection that drops after each batch, must
/// still slow the retries down.
const SUCCESS_RUN: u32 = 8;

type Shutdown<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send)>;

/// Why a session with the server ended.
enum SessionEnd {
    /// Shutdown was asked for and everything received was written and
    /// acknowledged.
    Stopped,
}

/// Any error of a session's setup or stream.
pub type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// Why a session failed. Every kind counts towards the backoff; the kind
/// decides what is logged.
#[derive(Debug)]
enum Failure {
    /// Connecting, or ensuring the stream and the consumer, failed.
    Unreachable(SessionError),
    /// The store refused a write; its messages were not acknowledged.
    Store(StorageError),
    /// The connection or the consumer's message stream broke after setup.
    Stream(SessionError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable(error) => write!(f, "cannot reach NATS JetStream: {error}"),
            Failure::Store(error) => write!(f, "the store refused a write: {error}"),
            Failure::Stream(error) => write!(f, "NATS message stream failed: {error}"),
        }
    }
}

impl Failure {
    /// What is logged once per change: a failure of the same kind as the
    /// one before is a retry, not news.
    fn trouble(&self) -> Trouble {
        match self {
            Failure::Unreachable(_) => Trouble::Unreachable,
            Failure::Store(StorageError::Full(_)) => Trouble::StoreFull,
            Failure::Store(StorageError::Failed(_)) => Trouble::StoreFailed,
            Failure::Store(_) => Trouble::Store,
            Failure::Stream(_) => Trouble::Stream,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    Unreachable,
    StoreFull,
    StoreFailed,
    Store,
    Stream,
}

impl Trouble {
    /// Whether a new session settles it (otherwise only a write does).
    fn is_connection(self) -> bool {
        matches!(self, Trouble::Unreachable | Trouble::Stream)
    }
}

/// The pause before the next attempt: exponential over consecutive
/// failures of any kind, with jitter, back to the start only after
/// [`SUCCESS_RUN`] successful writes in a row. A successful connection is
/// not a success: with a store that refuses writes every session connects
/// and fails, and resetting there made a tight loop.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    /// Failures since the last run of successes.
    failures: u32,
    /// Successes since the last failure.
    successes: u32,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
            successes: 0,
        }
    }

    /// Counts a failure and returns the pause before the next attempt:
    /// `min * 2^(failures - 1)` capped at `max`, of which the upper half is
    /// random ("equal jitter": it still grows, and engines that failed
    /// together do not retry together).
    fn failed(&mut self) -> Duration {
        let exponent = self.failures.min(30);
        let base = self.min.saturating_mul(1 << exponent).min(self.max);
        self.failures = self.failures.saturating_add(1);
        self.successes = 0;
        base / 2 + base.mul_f64(random_unit() / 2.0)
    }

    fn succeeded(&mut self) {
        self.successes = self.successes.saturating_add(1);
        if self.successes >= SUCCESS_RUN {
            self.failures = 0;
        }
    }
}

/// A number in `[0, 1)`, random enough for jitter, without a crate: each
/// `RandomState` has its own random keys.
fn random_unit() -> f64 {
    (RandomState::new().hash_one(Instant::now()) >> 11) as f64 / (1u64 << 53) as f64
}

/// How ingestion is doing, as logged: one line per change, not per retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Consuming,
    Interrupted(Trouble),
}

/// The backoff and the logged state, shared by the loop and the write
/// tasks (a std mutex: never held across an `.await`).
#[derive(Debug)]
struct Progress {
    backoff: Backoff,
    state: State,
    /// Failures since ingestion last worked, for the "resumed" line.
    failures: u64,
    since: Option<Instant>,
}

impl Progress {
    fn new(config: &NatsConfig) -> Self {
        Self {
            backoff: Backoff::new(config.min_backoff, config.max_backoff),
            state: State::Starting,
            failures: 0,
            since: None,
        }
    }

    fn connected(&mut self, config: &NatsConfig) {
        match self.state {
            State::Starting => {
                tracing::info!(url = %config.url, stream = %config.stream, durable = %config.durable, "consuming NATS JetStream");
                self.state = State::Consuming;
            }
            State::Interrupted(trouble) if trouble.is_connection() => self.resumed(),
            _ => {}
        }
    }

    fn committed(&mut self) {
        self.backoff.succeeded();
        if matches!(self.state, State::Interrupted(_)) {
            self.resumed();
        }
    }

    fn resumed(&mut self) {
        let interrupted_for = self.since.take().map(|since| since.elapsed());
        tracing::info!(
            failures = self.failures,
            ?interrupted_for,
            "NATS ingestion resumed"
        );
        self.failures = 0;
        self.state = State::Consuming;
    }

    /// Counts a failure, logs it if it changes the state, and returns the
    /// pause before the next attempt.
    fn failed(&mut self, failure: &Failure, config: &NatsConfig) -> Duration {
        let delay = self.backoff.failed();
        let trouble = failure.trouble();
        self.failures += 1;
        self.since.get_or_insert_with(Instant::now);
        if self.state == State::Interrupted(trouble) {
            tracing::debug!(error = %failure, retry_in = ?delay, "NATS ingestion still interrupted");
        } else {
            tracing::warn!(error = %failure, url = %config.url, retry_in = ?delay, "NATS ingestion interrupted; retrying with growing pauses, logged again when this changes");
            self.state = State::Interrupted(trouble);
        }
        delay
    }
}

/// What a session's tasks share.
#[derive(Clone)]
struct Context {
    config: Arc<NatsConfig>,
    storage: SharedStorage,
    stats: Arc<IngestStats>,
    progress: Arc<Mutex<Progress>>,
}

impl Context {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        // Every update is a few assignments: a panic cannot leave it torn.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Consumes until `shutdown` completes, starting a new session after a
/// growing pause whenever one fails. Never returns an error: ingestion
/// trouble is logged and counted, and must not stop the engine.
pub async fn run(
    config: NatsConfig,
    storage: SharedStorage,
    stats: Arc<IngestStats>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let progress = Arc::new(Mutex::new(Progress::new(&config)));
    let context = Context {
        config: Arc::new(config),
        storage,
        stats,
        progress,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let delay = match session(&context, shutdown.as_mut()).await {
            Ok(SessionEnd::Stopped) => {
                tracing::info!("NATS consumer stopped");
                return;
            }
            Err(failure) => {
                context.stats.connected.store(false, Ordering::Relaxed);
                context.progress().failed(&failure, &context.config)
            }
        };
        tokio::select! {
            () = shutdown.as_mut() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection: connect, ensure stream and consumer, consume.
///
/// Pipelined: while one group is being written (and then acknowledged) in
/// its own task, the next is received and parsed. Groups are written one
/// after the other, in order.
async fn session(context: &Context, mut shutdown: Shutdown<'_>) -> Result<SessionEnd, Failure> {
    let config = &context.config;
    let setup = async {
        // Readiness follows the connection as the client sees it (it
        // reconnects by itself, to another server of the list).
        let stats = Arc::clone(&context.stats);
        let client = connect(config, "sensor-engine", |options| {
            options.event_callback(move |event| {
                let stats = Arc::clone(&stats);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            stats.connected.store(true, Ordering::Relaxed)
                        }
                        async_nats::Event::Disconnected => {
                            stats.connected.store(false, Ordering::Relaxed)
                        }
                        _ => {}
                    }
                }
            })
        })
        .await?;
        context.stats.connected.store(true, Ordering::Relaxed);
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: config.subjects.clone(),
                storage: stream::StorageType::File,
                max_age: config.max_age,
                num_replicas: config.replicas.max(1),
                ..Default::default()
            })
            .await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &config.durable,
                consumer::pull::Config {
                    durable_name: Some(config.durable.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    // Room for several group commits in flight.
                    max_ack_pending: (config.max_batch_messages * 4) as i64,
                    ..Default::default()
                },
            )
            .await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(config.max_batch_messages)
            .messages()
            .await?;
        Ok::<_, SessionError>((client, messages))
    };
    let (client, mut messages) = tokio::select! {
        () = shutdown.as_mut() => return Ok(SessionEnd::Stopped),
        result = setup => result.map_err(Failure::Unreachable)?,
    };
    context.stats.connects.fetch_add(1, Ordering::Relaxed);
    context.progress().connected(config);

    let mut in_flight: Option<tokio::task::JoinHandle<Result<(), Failure>>> = None;
    let mut batch: Vec<jetstream::Message> = Vec::with_capacity(config.max_batch_messages);
    loop {
        let (first, stopping) = tokio::select! {
            biased;
            () = shutdown.as_mut() => (None, true),
            // A failed write ends the session at once, not when the next
            // message happens to arrive (which it would then hold back).
            done = in_flight_done(&mut in_flight) => {
                in_flight = None;
                done?;
                continue;
            }
            next = messages.next() => (Some(next), false),
        };
        let mut failure: Option<SessionError> = None;
        match first {
            Some(Some(Ok(message))) => batch.push(message),
            Some(Some(Err(error))) => failure = Some(error.into()),
            Some(None) => failure = Some("the consumer's message stream ended".into()),
            None => {}
        }
        // Group commit: everything already received joins this write. At
        // shutdown this drains what the client has buffered.
        while failure.is_none() && batch.len() < config.max_batch_messages {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => batch.push(message),
                Some(Some(Err(error))) => failure = Some(error.into()),
                Some(None) => failure = Some("the consumer's message stream ended".into()),
                None => break,
            }
        }
        if !batch.is_empty() {
            let group = prepare(context, &client, &mut batch).await;
            // Keep writes in order: the previous group first. If it failed,
            // this one is handed back too rather than left to `ack_wait`.
            if let Err(failure) = finish(in_flight.take()).await {
                if let Some(group) = group {
                    retry_later(&client, group.messages.iter().map(|(message, _)| message)).await;
                }
                return Err(failure);
            }
            if let Some(group) = group {
                in_flight = Some(tokio::spawn(commit(context.clone(), client.clone(), group)));
            }
        }
        if stopping {
            // Finish the last group and push the acknowledgements out before
            // the connection goes; bounded, because with the server gone a
            // flush waits for a reconnection that may never come (the
            // unacknowledged messages are then simply redelivered).
            let drain = async {
                finish(in_flight.take()).await?;
                if client.connection_state() == async_nats::connection::State::Connected {
                    client
                        .flush()
                        .await
                        .map_err(|error| Failure::Stream(error.into()))?;
                }
                Ok::<_, Failure>(())
            };
            match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => tracing::warn!(
                    error = %failure,
                    "NATS ingestion stopped with messages unacknowledged; they will be redelivered"
                ),
                Err(_) => tracing::warn!(
                    "NATS acknowledgements not confirmed within {DRAIN_TIMEOUT:?} at shutdown; \
                     the messages will be redelivered"
                ),
            }
            return Ok(SessionEnd::Stopped);
        }
        if let Some(error) = failure {
            finish(in_flight.take()).await?;
            return Err(Failure::Stream(error));
        }
    }
}

/// Completes when the group in flight is written and acknowledged (or
/// failed); never while there is none.
async fn in_flight_done(
    task: &mut Option<tokio::task::JoinHandle<Result<(), Failure>>>,
) -> Result<(), Failure> {
    match task {
        None => std::future::pending().await,
        Some(task) => task
            .await
            .map_err(|error| Failure::Stream(Box::new(error)))?,
    }
}

/// Waits for a group's write and acknowledgements.
async fn finish(task: Option<tokio::task::JoinHandle<Result<(), Failure>>>) -> Result<(), Failure> {
    match task {
        None => Ok(()),
        Some(task) => task
            .await
            .map_err(|error| Failure::Stream(Box::new(error)))?,
    }
}

/// Parsed messages ready to be written together.
struct Group {
    samples: Vec<Sample>,
    /// The messages and their point counts.
    messages: Vec<(jetstream::Message, usize)>,
}

/// A message's points, each versioned with the message's stream sequence.
fn samples_of(message: &jetstream::Message) -> Result<Vec<Sample>, MalformedMessage> {
    let seq = message
        .info()
        .map_err(|error| MalformedMessage(format!("no JetStream metadata: {error}")))?
        .stream_sequence;
    let mut samples = parse_message(&message.payload)?;
    for sample in &mut samples {
        sample.seq = Some(seq);
    }
    Ok(samples)
}

/// Parses a group of messages (emptying `batch`); malformed ones are
/// dead-lettered at once. `None` when nothing is left to write.
async fn prepare(
    context: &Context,
    client: &async_nats::Client,
    batch: &mut Vec<jetstream::Message>,
) -> Option<Group> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut messages = Vec::with_capacity(batch.len());
    for message in batch.drain(..) {
        match samples_of(&message) {
            Ok(points) => {
                let count = points.len();
                samples.extend(points);
                messages.push((message, count));
            }
            Err(error) => dead_letter(context, client, &message, &error.0).await,
        }
    }
    (!messages.is_empty()).then_some(Group { samples, messages })
}

/// Writes one group with one store write and acknowledges its messages.
///
/// A store failure fails the session, its messages negatively acknowledged
/// so that they come back; rejected input is narrowed down to the messages
/// at fault.
async fn commit(context: Context, client: async_nats::Client, group: Group) -> Result<(), Failure> {
    let stats = &context.stats;
    let storage = &context.storage;
    match storage.write(group.samples).await {
        Ok(()) => {
            let points: usize = group.messages.iter().map(|(_, count)| count).sum();
            stats.points.fetch_add(points as u64, Ordering::Relaxed);
            stats
                .messages
                .fetch_add(group.messages.len() as u64, Ordering::Relaxed);
            let last = group
                .messages
                .last()
                .and_then(|(message, _)| message.info().ok());
            crate::metrics::nats_written(
                group.messages.len() as u64,
                last.as_ref().map(|info| info.pending),
                last.map(|info| info.published.unix_timestamp_nanos()),
            );
            context.progress().committed();
            // With the connection down, acknowledgements queue in the client
            // and, once its buffer is full, wait: give up on the session
            // instead of stalling (the points are stored; redelivery is
            // harmless).
            let acks = async {
                for (message, _) in &group.messages {
                    acknowledge(message, AckKind::Ack).await;
                }
            };
            tokio::time::timeout(ACK_TIMEOUT, acks)
                .await
                .map_err(|_| Failure::Stream("NATS acknowledgements timed out".into()))
        }
        Err(StorageError::InvalidInput(reason)) => {
            // Every point was validated, so this is the store's own limit:
            // find the messages it refuses, one by one.
            tracing::warn!(%reason, "store rejected a NATS batch; retrying message by message");
            let mut messages = group.messages.into_iter();
            while let Some((message, count)) = messages.next() {
                let samples = samples_of(&message).unwrap_or_default();
                match storage.write(samples).await {
                    Ok(()) => {
                        acknowledge(&message, AckKind::Ack).await;
                        stats.points.fetch_add(count as u64, Ordering::Relaxed);
                        stats.messages.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::nats_written(1, None, None);
                    }
                    Err(StorageError::InvalidInput(reason)) => {
                        dead_letter(&context, &client, &message, &reason).await;
                    }
                    Err(error) => {
                        stats.write_failures.fetch_add(1, Ordering::Relaxed);
                        let rest: Vec<_> = messages.collect();
                        retry_later(
                            &client,
                            std::iter::once(&message).chain(rest.iter().map(|(m, _)| m)),
                        )
                        .await;
                        return Err(Failure::Store(error));
                    }
                }
            }
            Ok(())
        }
        Err(error) => {
            stats.write_failures.fetch_add(1, Ordering::Relaxed);
            retry_later(&client, group.messages.iter().map(|(message, _)| message)).await;
            Err(Failure::Store(error))
        }
    }
}

/// Hands messages that were not written back to the server, for redelivery
/// after [`RETRY_DELAY`] rather than after `ack_wait`, and flushes: the
/// session ends next, and its connection with it. Best effort: a message
/// whose negative acknowledgement is lost comes back after `ack_wait`
/// anyway.
async fn retry_later<'a>(
    client: &async_nats::Client,
    messages: impl Iterator<Item = &'a jetstream::Message>,
) {
    let naks = async {
        for message in messages {
            acknowledge(message, AckKind::Nak(Some(RETRY_DELAY))).await;
        }
        let _ = client.flush().await;
    };
    let _ = tokio::time::timeout(ACK_TIMEOUT, naks).await;
}

async fn acknowledge(message: &jetstream::Message, kind: AckKind) {
    match tokio::time::timeout(ACK_TIMEOUT, message.ack_with(kind)).await {
        Ok(Ok(())) => {}
        // The server redelivers after `ack_wait`; a rewrite is harmless.
        Ok(Err(error)) => tracing::debug!(%error, "NATS acknowledgement failed"),
        Err(_) => tracing::debug!("NATS acknowledgement timed out"),
    }
}

/// Logs, counts, copies to the dead-letter subject and terminates a message
/// that can never be ingested.
async fn dead_letter(
    context: &Context,
    client: &async_nats::Client,
    message: &jetstream::Message,
    reason: &str,
) {
    let count = context.stats.malformed.fetch_add(1, Ordering::Relaxed) + 1;
    crate::metrics::nats_dead_lettered(message.info().ok().map(|info| info.pending));
    // A flood of garbage must not flood the log too.
    if count <= 100 || count.is_power_of_two() {
        tracing::warn!(subject = %message.subject, %reason, malformed_so_far = count, "dropping malformed NATS message");
    }
    if let Some(prefix) = &context.config.dead_letter_prefix {
        let mut headers = HeaderMap::new();
        // Header values must be one line.
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(500)
            .collect();
        headers.insert("Sensor-Engine-Error", reason.as_str());
        let subject = format!("{prefix}.{}", message.subject);
        let publish = client.publish_with_headers(subject, headers, message.payload.clone());
        match tokio::time::timeout(ACK_TIMEOUT, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "dead-letter publish failed"),
            Err(_) => tracing::debug!("dead-letter publish timed out"),
        }
    }
    acknowledge(message, AckKind::Term).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_resets_only_after_a_run_of_successes() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(3_000));
        for base in [100, 200, 400, 800, 1_600, 3_000, 3_000, 3_000] {
            let delay = backoff.failed();
            // Equal jitter: between half the base and the base.
            assert!(
                delay >= ms(base) / 2 && delay <= ms(base),
                "{delay:?} for a base of {base} ms"
            );
            // A few successes in between do not start it over.
            for _ in 1..SUCCESS_RUN {
                backoff.succeeded();
            }
        }
        for _ in 0..SUCCESS_RUN {
            backoff.succeeded();
        }
        assert!(
            backoff.failed() <= ms(100),
            "a run of successes starts over"
        );
    }

    #[test]
    fn jitter_spreads_the_pauses() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
            seen.insert(unit.to_bits());
        }
        assert!(seen.len() > 40, "{}", seen.len());
    }
}
