//! The NATS JetStream consumer.
//!
//! It ensures a stream (default `SENSORS` over `sensors.>`) and a durable pull
//! consumer on it, then loops: take every message that is ready (at least
//! one, at most [`NatsConfig::max_batch_messages`]), parse them, write all
//! their points with **one** `storage.write` (group commit: one fsync for
//! thousands of messages is what makes hundreds of thousands of points per
//! second possible), and only then acknowledge them. A crash before the
//! acknowledgements means JetStream redelivers, and rewriting a point is
//! harmless (the later write of a `(sensor, timestamp)` wins with the same
//! value), so every published point is stored exactly once.
//!
//! Malformed messages are logged, counted, copied to a dead-letter subject
//! (`sensors_dlq.<original subject>`, outside `sensors.>` so they never come
//! back) and terminated (`+TERM`), so they never block the stream.
//!
//! NATS being down, at start or later, never blocks anything else: the
//! consumer is its own task and reconnects with exponential backoff.
//! Only features of nats-server 2.9 are used.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::{FutureExt, StreamExt};

use super::{IngestStats, parse_message};
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
    /// Longest pause between reconnection attempts.
    pub max_backoff: Duration,
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
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Longest wait for acknowledgements (or a dead-letter publish) to be
/// handed to the client before the session is given up.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait at shutdown for the last group's write and acknowledgements.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type Shutdown<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send)>;

/// Why a session with the server ended.
enum SessionEnd {
    /// Shutdown was asked for and everything received was written and
    /// acknowledged.
    Stopped,
}

type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// What a session's tasks share.
#[derive(Clone)]
struct Context {
    config: Arc<NatsConfig>,
    storage: SharedStorage,
    stats: Arc<IngestStats>,
}

/// Consumes until `shutdown` completes, reconnecting with backoff whenever
/// the server is unreachable or the consumer fails. Never returns an error:
/// ingestion trouble is logged and counted, and must not stop the engine.
pub async fn run(
    config: NatsConfig,
    storage: SharedStorage,
    stats: Arc<IngestStats>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let context = Context {
        config: Arc::new(config),
        storage,
        stats,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut connected = false;
        match session(&context, shutdown.as_mut(), &mut connected).await {
            Ok(SessionEnd::Stopped) => {
                tracing::info!("NATS consumer stopped");
                return;
            }
            Err(error) => {
                if connected {
                    backoff = Duration::from_millis(100);
                }
                tracing::warn!(%error, url = %context.config.url, retry_in = ?backoff, "NATS ingestion interrupted");
            }
        }
        tokio::select! {
            () = shutdown.as_mut() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(context.config.max_backoff);
    }
}

/// One connection: connect, ensure stream and consumer, consume.
///
/// Pipelined: while one group is being written (and then acknowledged) in
/// its own task, the next is received and parsed. Groups are written one
/// after the other, in order.
async fn session(
    context: &Context,
    mut shutdown: Shutdown<'_>,
    connected: &mut bool,
) -> Result<SessionEnd, SessionError> {
    let config = &context.config;
    let setup = async {
        let client = async_nats::ConnectOptions::new()
            .name("sensor-engine")
            .connection_timeout(Duration::from_secs(5))
            .connect(config.url.as_str())
            .await?;
        let js = jetstream::new(client.clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: config.subjects.clone(),
                storage: stream::StorageType::File,
                max_age: config.max_age,
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
        result = setup => result?,
    };
    *connected = true;
    context.stats.connects.fetch_add(1, Ordering::Relaxed);
    tracing::info!(url = %config.url, stream = %config.stream, durable = %config.durable, "consuming NATS JetStream");

    let mut in_flight: Option<tokio::task::JoinHandle<Result<(), SessionError>>> = None;
    let mut batch: Vec<jetstream::Message> = Vec::with_capacity(config.max_batch_messages);
    loop {
        let (first, stopping) = tokio::select! {
            biased;
            () = shutdown.as_mut() => (None, true),
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
            // Keep writes in order: the previous group first.
            finish(in_flight.take()).await?;
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
                    client.flush().await?;
                }
                Ok::<_, SessionError>(())
            };
            match tokio::time::timeout(DRAIN_TIMEOUT, drain).await {
                Ok(result) => result?,
                Err(_) => tracing::warn!(
                    "NATS acknowledgements not confirmed within {DRAIN_TIMEOUT:?} at shutdown; \
                     the messages will be redelivered"
                ),
            }
            return Ok(SessionEnd::Stopped);
        }
        if failure.is_some() {
            finish(in_flight.take()).await?;
        }
        if let Some(error) = failure {
            return Err(error);
        }
    }
}

/// Waits for a group's write and acknowledgements.
async fn finish(
    task: Option<tokio::task::JoinHandle<Result<(), SessionError>>>,
) -> Result<(), SessionError> {
    match task {
        None => Ok(()),
        Some(task) => task.await.map_err(SessionError::from)?,
    }
}

/// Parsed messages ready to be written together.
struct Group {
    samples: Vec<Sample>,
    /// The messages and their point counts.
    messages: Vec<(jetstream::Message, usize)>,
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
        match parse_message(&message.payload) {
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
/// A store failure is an error of the session (the messages are
/// negatively acknowledged and come back), except rejected input, which is
/// narrowed down to the messages at fault.
async fn commit(
    context: Context,
    client: async_nats::Client,
    group: Group,
) -> Result<(), SessionError> {
    let stats = &context.stats;
    let storage = &context.storage;
    match storage.write(group.samples).await {
        Ok(()) => {
            let points: usize = group.messages.iter().map(|(_, count)| count).sum();
            stats.points.fetch_add(points as u64, Ordering::Relaxed);
            stats
                .messages
                .fetch_add(group.messages.len() as u64, Ordering::Relaxed);
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
                .map_err(|_| SessionError::from("NATS acknowledgements timed out"))
        }
        Err(StorageError::InvalidInput(reason)) => {
            // Every point was validated, so this is the store's own limit:
            // find the messages it refuses, one by one.
            tracing::warn!(%reason, "store rejected a NATS batch; retrying message by message");
            for (message, count) in group.messages {
                let samples = parse_message(&message.payload).unwrap_or_default();
                match storage.write(samples).await {
                    Ok(()) => {
                        acknowledge(&message, AckKind::Ack).await;
                        stats.points.fetch_add(count as u64, Ordering::Relaxed);
                        stats.messages.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(StorageError::InvalidInput(reason)) => {
                        dead_letter(&context, &client, &message, &reason).await;
                    }
                    Err(error) => {
                        stats.write_failures.fetch_add(1, Ordering::Relaxed);
                        return Err(error.into());
                    }
                }
            }
            Ok(())
        }
        Err(error) => {
            stats.write_failures.fetch_add(1, Ordering::Relaxed);
            // Ask for redelivery soon rather than after `ack_wait`.
            for (message, _) in &group.messages {
                acknowledge(message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            Err(error.into())
        }
    }
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
