//! NATS JetStream ingestion against a real (private) nats-server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::ingest::IngestStats;
use engine::ingest::nats::{NatsConfig, run};
use engine::model::Sample;
use engine::storage::{SharedStorage, StorageError};
use futures_util::StreamExt;
use tokio::sync::oneshot;

use crate::ingest_support::{NatsServer, eventually, free_port};
use crate::support::{Rng, TestStore, WriteFault};

/// The value `publish` gives the point at `ts`: full precision (17
/// significant digits, like a real sensor's reading converted from
/// binary), so a value rounded on the way shows, and different for every
/// publish, so a stale or duplicate write shows too.
pub fn value_of(ts: i64, publish: u64) -> f64 {
    let mut rng = Rng::new((ts as u64).wrapping_mul(0x1000_0000_01B3) ^ publish);
    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2_000.0 - 1_000.0
}

/// A message of `count` points of `sensor` from `first_ts`, with the
/// values of `publish` ([`value_of`]), printed as a publisher prints them
/// (shortest round-trip form).
pub fn points_message(sensor: &str, first_ts: i64, count: i64, publish: u64) -> String {
    let sensor = serde_json::to_string(sensor).unwrap();
    let points: Vec<String> = (first_ts..first_ts + count)
        .map(|ts| {
            let value = serde_json::to_string(&value_of(ts, publish)).unwrap();
            format!(r#"{{"sensor_id":{sensor},"timestamp_ms":{ts},"value":{value},"quality":192}}"#)
        })
        .collect();
    format!("[{}]", points.join(","))
}

struct Consumer {
    stats: Arc<IngestStats>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn start_consumer(url: String, store: Arc<TestStore>) -> Consumer {
    start_consumer_with(NatsConfig::new(url), store)
}

fn start_consumer_with(config: NatsConfig, store: SharedStorage) -> Consumer {
    let stats = Arc::new(IngestStats::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, store, Arc::clone(&stats), async move {
        let _ = stopped.await;
    }));
    Consumer { stats, stop, task }
}

impl Consumer {
    async fn wait_connected(&self) {
        let stats = Arc::clone(&self.stats);
        assert!(
            eventually(Duration::from_secs(20), || stats
                .connects
                .load(Ordering::Relaxed)
                > 0)
            .await,
            "the consumer never connected"
        );
    }

    async fn stop(self) -> IngestStatsSnapshot {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the consumer did not stop")
            .unwrap();
        self.stats.snapshot()
    }
}

type IngestStatsSnapshot = engine::ingest::IngestSnapshot;

/// Publishes and waits for the stream's acknowledgement; returns the
/// message's stream sequence.
pub async fn publish(js: &async_nats::jetstream::Context, subject: &str, payload: String) -> u64 {
    js.publish(subject.to_owned(), payload.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// Waits until the engine created its stream and durable consumer.
pub async fn wait_for_consumer(js: &async_nats::jetstream::Context) {
    for _ in 0..400 {
        if let Ok(stream) = js.get_stream("SENSORS").await
            && stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("sensor-engine")
                .await
                .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the engine never created its stream and consumer");
}

/// The engine's durable consumer as the server sees it.
pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
) -> async_nats::jetstream::consumer::Info {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("SENSORS")
        .await
        .unwrap()
        .get_consumer("sensor-engine")
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_without_stopping_the_flow() {
    let nats = NatsServer::start();
    let store = TestStore::shared(4096);
    let consumer = start_consumer(nats.url(), Arc::clone(&store));
    consumer.wait_connected().await;

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut dead_letters = client.subscribe("sensors_dlq.>").await.unwrap();
    client.flush().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let malformed = [
        "not json",
        r#"{"sensor_id":"a","timestamp_ms":1}"#,
        r#"{"sensor_id":"","timestamp_ms":1,"value":1}"#,
        r#"{"sensor_id":"a","timestamp_ms":1,"value":1,"quality":300}"#,
        r#"[{"sensor_id":"a","timestamp_ms":99999999999999999,"value":1}]"#,
    ];
    let mut expected = 0;
    for i in 0..200i64 {
        let sensor = if i % 2 == 0 {
            "plant/a"
        } else {
            "Kessel Ü1/Temperatur"
        };
        let payload = points_message(sensor, i * 50, 50, i as u64);
        js.publish(format!("sensors.m{}", i % 7), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        expected += 50;
        if i % 40 == 0 {
            let bad = malformed[(i / 40) as usize];
            js.publish("sensors.bad", bad.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    js.publish(
        "sensors.one",
        r#"{"sensor_id":"solo","timestamp_ms":5,"value":"-inf"}"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    expected += 1;

    let counted = Arc::clone(&store);
    assert!(
        eventually(Duration::from_secs(20), || counted.total() == expected).await,
        "stored {} of {expected}",
        store.total()
    );
    assert_eq!(store.points("solo")[0].value, f64::NEG_INFINITY);
    let stored = store.points("plant/a");
    assert_eq!(stored.len(), 100 * 50);
    for point in stored {
        let publish = (point.timestamp_ms / 50) as u64;
        assert_eq!(
            point.value.to_bits(),
            value_of(point.timestamp_ms, publish).to_bits(),
            "the value published at {}, bit for bit",
            point.timestamp_ms
        );
    }
    for _ in 0..malformed.len() {
        let letter = tokio::time::timeout(Duration::from_secs(5), dead_letters.next())
            .await
            .expect("a dead letter")
            .unwrap();
        assert_eq!(letter.subject.as_str(), "sensors_dlq.sensors.bad");
        assert!(letter.headers.is_some());
    }
    let stats = consumer.stop().await;
    assert_eq!(stats.malformed, malformed.len() as u64);
    assert_eq!(stats.points, expected as u64);
    assert_eq!(stats.messages, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_waits_for_a_late_server_and_reconnects_after_a_restart() {
    let port = free_port();
    let store = TestStore::shared(4096);
    let consumer = start_consumer(format!("nats://127.0.0.1:{port}"), Arc::clone(&store));
    // Nothing listens yet: the consumer retries with backoff.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(consumer.stats.connects.load(Ordering::Relaxed), 0);

    let nats = NatsServer::start_on(port);
    consumer.wait_connected().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("sensors.x", points_message("x", 0, 100, 0).into())
        .await
        .unwrap()
        .await
        .unwrap();
    let counted = Arc::clone(&store);
    assert!(eventually(Duration::from_secs(20), || counted.total() == 100).await);
    drop(js);

    // The server goes away and comes back (its JetStream state is gone with
    // its directory): the consumer re-creates stream and consumer.
    drop(nats);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nats = NatsServer::start_on(port);
    let stats = Arc::clone(&consumer.stats);
    assert!(
        eventually(Duration::from_secs(30), || stats
            .connects
            .load(Ordering::Relaxed)
            >= 2)
        .await,
        "no reconnection"
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("sensors.x", points_message("x", 100, 100, 0).into())
        .await
        .unwrap()
        .await
        .unwrap();
    let counted = Arc::clone(&store);
    assert!(eventually(Duration::from_secs(20), || counted.total() == 200).await);
    consumer.stop().await;
}

/// Each sensor's chunks of 100 points are published twice, the rewrite two
/// chunks after the first, with different values each time; the engine is
/// SIGKILLed while it consumes, with messages delivered and not yet
/// acknowledged. Those come back (duplicates) after the restarted engine
/// already stored some of their rewrites: every point must end up stored
/// once, with its last published value, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_point_is_stored_exactly_once_with_its_last_value_across_a_sigkill() {
    use crate::grpc::{connect_engine, scan_all};
    use crate::ingest_support::Engine;

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), &["--nats-url", &nats.url()]);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    wait_for_consumer(&js).await;

    const CHUNKS: i64 = 250;
    const POINTS: i64 = 100;
    const SENSORS: [&str; 4] = ["k/a", "k/b", "Kessel Ü1/Temperatur", "k/d"];
    // (sensor, chunk) per publish: the first publish of chunk c, then the
    // rewrite of chunk c - 2; a publish's values are those of its index.
    let mut plan: Vec<(usize, i64)> = Vec::new();
    for chunk in 0..CHUNKS + 2 {
        for sensor in 0..SENSORS.len() {
            if chunk < CHUNKS {
                plan.push((sensor, chunk));
            }
            if chunk >= 2 {
                plan.push((sensor, chunk - 2));
            }
        }
    }
    let total = plan.len() as u64;
    // Published as fast as the server takes them (acknowledgements awaited
    // afterwards), so the engine always has a backlog: at the kill, some
    // messages are delivered to it and not yet acknowledged.
    let publisher = tokio::spawn({
        let js = js.clone();
        let plan = plan.clone();
        async move {
            let mut acks = Vec::new();
            for (publish, &(sensor, chunk)) in plan.iter().enumerate() {
                let payload =
                    points_message(SENSORS[sensor], chunk * POINTS, POINTS, publish as u64);
                acks.push(
                    js.publish(format!("sensors.{sensor}"), payload.into())
                        .await
                        .unwrap(),
                );
                if publish % 97 == 0 {
                    acks.push(js.publish("sensors.bad", "{oops".into()).await.unwrap());
                }
            }
            let mut last = 0;
            for ack in acks {
                last = last.max(ack.await.unwrap().sequence);
            }
            last
        }
    });
    // Kill once the engine has acknowledged a good part, with more in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = consumer_info(&js).await;
        if info.ack_floor.stream_sequence >= 300 && info.num_ack_pending > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the engine did not consume: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.kill();
    let at_kill = consumer_info(&js).await;
    let last_seq = publisher.await.unwrap();
    assert!(
        at_kill.ack_floor.stream_sequence > 0 && at_kill.ack_floor.stream_sequence < last_seq,
        "the kill landed mid-stream: {at_kill:?} of {last_seq} messages"
    );
    assert!(
        at_kill.num_ack_pending > 0,
        "messages were in flight at the kill: {at_kill:?}"
    );

    let engine = Engine::start(dir.path(), &["--nats-url", &nats.url()]);
    // Messages in flight at the kill come back after the consumer's
    // ack_wait (10 s); wait until every message is acknowledged and none
    // is pending redelivery, so that no stale write can come after the
    // check below.
    let deadline = Instant::now() + Duration::from_secs(90);
    let settled = loop {
        let info = consumer_info(&js).await;
        if info.ack_floor.stream_sequence == last_seq
            && info.num_ack_pending == 0
            && info.num_pending == 0
        {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "not everything was consumed: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        settled.delivered.consumer_sequence > settled.delivered.stream_sequence,
        "some messages were delivered twice (redelivered after the kill): {settled:?}"
    );

    let mut grpc = connect_engine(engine.grpc_url()).await;
    let last_publish_of = |sensor: usize, chunk: i64| {
        plan.iter()
            .rposition(|&planned| planned == (sensor, chunk))
            .unwrap() as u64
    };
    for (index, sensor) in SENSORS.iter().enumerate() {
        let stored = scan_all(&mut grpc, sensor).await.expect("scan");
        assert_eq!(
            stored.len(),
            (CHUNKS * POINTS) as usize,
            "{sensor}: every point once"
        );
        for (i, (ts, value)) in stored.iter().enumerate() {
            assert_eq!(*ts, i as i64, "{sensor}: points are contiguous from 0");
            let last = last_publish_of(index, ts / POINTS);
            assert_eq!(
                value.to_bits(),
                value_of(*ts, last).to_bits(),
                "{sensor} at {ts}: the last published value ({}), not {value} (publish {})",
                value_of(*ts, last),
                (0..total)
                    .find(|&p| value_of(*ts, p).to_bits() == value.to_bits())
                    .map_or("none".to_owned(), |p| p.to_string()),
            );
        }
    }
    eprintln!(
        "NATS SIGKILL: killed with {} acknowledged and {} in flight of {last_seq} messages; {} deliveries in all",
        at_kill.ack_floor.stream_sequence,
        at_kill.num_ack_pending,
        settled.delivered.consumer_sequence
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_with_the_server_gone() {
    let nats = NatsServer::start();
    let store = TestStore::shared(4096);
    let consumer = start_consumer(nats.url(), Arc::clone(&store));
    consumer.wait_connected().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("sensors.x", points_message("x", 0, 100, 0).into())
        .await
        .unwrap()
        .await
        .unwrap();
    let counted = Arc::clone(&store);
    assert!(eventually(Duration::from_secs(20), || counted.total() == 100).await);
    drop(js);
    drop(nats);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    consumer.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// What the store was asked to write, in order: `(sensor, seq, value,
/// outcome)` per point.
type WriteLog = Arc<Mutex<Vec<(String, Option<u64>, f64, &'static str)>>>;

fn record(log: &WriteLog, samples: &[Sample], outcome: &'static str) {
    let mut log = log.lock().unwrap();
    for sample in samples {
        log.push((
            sample.sensor_id.as_str().to_owned(),
            sample.seq,
            sample.point.value,
            outcome,
        ));
    }
}

/// Position in `log` of the write of `seq` to `sensor` with `outcome`.
fn position(log: &WriteLog, sensor: &str, seq: u64, outcome: &str) -> Option<usize> {
    log.lock()
        .unwrap()
        .iter()
        .position(|(s, q, _, o)| s == sensor && *q == Some(seq) && *o == outcome)
}

/// An older message for a point comes back after a newer one was stored:
/// once because its first write was refused (nak, redelivered a second
/// later), once because its write went through but its acknowledgement was
/// lost. Either way the newer value stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_older_message_never_overwrites_a_newer_value() {
    let nats = NatsServer::start();
    let store = TestStore::shared(4096);
    let log = WriteLog::default();
    store.set_write_hook({
        let log = Arc::clone(&log);
        let mut faulted = std::collections::HashSet::new();
        move |samples| {
            let sensor = samples[0].sensor_id.as_str().to_owned();
            let fault = match sensor.as_str() {
                "refused" if faulted.insert(sensor.clone()) => {
                    WriteFault::Refuse(StorageError::Backend("injected: write refused".into()))
                }
                "unacknowledged" if faulted.insert(sensor.clone()) => WriteFault::FailAfter(
                    StorageError::Backend("injected: stored, acknowledgement lost".into()),
                ),
                _ => WriteFault::Pass,
            };
            let outcome = match fault {
                WriteFault::Refuse(_) => "refused",
                _ => "written",
            };
            record(&log, samples, outcome);
            fault
        }
    });
    let consumer = start_consumer(nats.url(), Arc::clone(&store));
    consumer.wait_connected().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);

    for (sensor, first_outcome) in [("refused", "refused"), ("unacknowledged", "written")] {
        let older = publish(&js, "sensors.r", points_message(sensor, 1, 1, 1)).await;
        assert!(
            eventually(Duration::from_secs(20), || position(
                &log,
                sensor,
                older,
                first_outcome
            )
            .is_some())
            .await,
            "{sensor}: the first write never happened"
        );
        // The consumer naks the message (back in a second) and starts a new
        // session after a short pause; published once that session is up
        // (not into the failing one, where it would wait for `ack_wait`),
        // the newer message is stored first.
        let sessions = consumer.stats.connects.load(Ordering::SeqCst);
        let stats = Arc::clone(&consumer.stats);
        assert!(
            eventually(Duration::from_secs(20), || stats
                .connects
                .load(Ordering::SeqCst)
                > sessions)
            .await,
            "{sensor}: no new session after the failed write"
        );
        let newer = publish(&js, "sensors.r", points_message(sensor, 1, 1, 2)).await;
        let redelivered_after_newer = || {
            let newer_at = position(&log, sensor, newer, "written");
            let log = log.lock().unwrap();
            newer_at.is_some_and(|at| {
                log[at..]
                    .iter()
                    .any(|(s, q, _, o)| s == sensor && *q == Some(older) && *o == "written")
            })
        };
        assert!(
            eventually(Duration::from_secs(30), redelivered_after_newer).await,
            "{sensor}: the older message was not redelivered after the newer one was stored: {:?}",
            log.lock().unwrap()
        );
        let stored = store.points(sensor);
        assert_eq!(stored.len(), 1);
        assert_eq!(
            stored[0].value.to_bits(),
            value_of(1, 2).to_bits(),
            "{sensor}: the newer value stays (older {}, newer {}, stored {})",
            value_of(1, 1),
            value_of(1, 2),
            stored[0].value
        );
    }
    consumer.stop().await;
}

/// While the store answers "disk full", nothing is acknowledged and the
/// consumer keeps trying, pausing longer each time; once there is room,
/// every message lands with its last value, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_ingestion_until_there_is_room_again() {
    let nats = NatsServer::start();
    let store = TestStore::shared(4096);
    let full = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    store.set_write_hook({
        let (full, refused) = (Arc::clone(&full), Arc::clone(&refused));
        move |_| {
            if full.load(Ordering::SeqCst) {
                refused.fetch_add(1, Ordering::SeqCst);
                WriteFault::Refuse(StorageError::Full(
                    "injected: No space left on device".into(),
                ))
            } else {
                WriteFault::Pass
            }
        }
    });
    let config = NatsConfig {
        ack_wait: Duration::from_secs(2),
        max_backoff: Duration::from_secs(1),
        ..NatsConfig::new(nats.url())
    };
    let consumer = start_consumer_with(config, store.clone());
    consumer.wait_connected().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);

    // Each message rewrites the same 50 points with its own values.
    const MESSAGES: u64 = 30;
    let mut last_seq = 0;
    for publish_index in 0..MESSAGES {
        last_seq = publish(&js, "sensors.f", points_message("f", 0, 50, publish_index)).await;
    }
    let counted = Arc::clone(&refused);
    assert!(
        eventually(Duration::from_secs(20), || counted.load(Ordering::SeqCst)
            >= 3)
        .await,
        "the consumer did not retry"
    );
    let info = consumer_info(&js).await;
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "acknowledged while full: {info:?}"
    );
    assert_eq!(consumer.stats.snapshot().messages, 0);
    assert_eq!(store.total(), 0);

    full.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = consumer_info(&js).await;
        if info.ack_floor.stream_sequence == last_seq && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingestion did not resume: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = store.points("f");
    assert_eq!(stored.len(), 50);
    for point in stored {
        assert_eq!(
            point.value.to_bits(),
            value_of(point.timestamp_ms, MESSAGES - 1).to_bits(),
            "the last published value at {}",
            point.timestamp_ms
        );
    }
    assert!(
        !consumer.task.is_finished(),
        "the same consumer, never restarted"
    );
    let stats = consumer.stop().await;
    assert!(stats.write_failures >= 3, "{stats:?}");
    assert!(stats.messages >= MESSAGES, "{stats:?}");
}

/// A store that refuses writes until it is restarted (a failed fsync):
/// nothing is acknowledged, so after the restart everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_leaves_every_message_unacknowledged() {
    let nats = NatsServer::start();
    let store = TestStore::shared(4096);
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    store.set_write_hook({
        let refused = Arc::clone(&refused);
        move |_| {
            refused.fetch_add(1, Ordering::SeqCst);
            WriteFault::Refuse(StorageError::Failed("injected: fsync failed".into()))
        }
    });
    let consumer = start_consumer(nats.url(), Arc::clone(&store));
    consumer.wait_connected().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut last_seq = 0;
    for publish_index in 0..10 {
        last_seq = publish(
            &js,
            "sensors.x",
            points_message("x", publish_index as i64 * 10, 10, publish_index),
        )
        .await;
    }
    let counted = Arc::clone(&refused);
    assert!(
        eventually(Duration::from_secs(20), || counted.load(Ordering::SeqCst)
            >= 2)
        .await
    );
    let stats = consumer.stop().await;
    assert_eq!(stats.messages, 0);
    let info = consumer_info(&js).await;
    assert_eq!(info.ack_floor.stream_sequence, 0, "{info:?}");
    assert_eq!(
        info.num_ack_pending as u64 + info.num_pending,
        last_seq,
        "every message is still owed: {info:?}"
    );

    // "Restarted": the store takes writes again; a new consumer gets all.
    store.set_write_hook(|_| WriteFault::Pass);
    let consumer = start_consumer(nats.url(), Arc::clone(&store));
    let counted = Arc::clone(&store);
    assert!(
        eventually(Duration::from_secs(30), || counted.total() == 100).await,
        "stored {} of 100",
        store.total()
    );
    consumer.stop().await;
}

thread_local! {
    /// Where this thread's log lines go, if anywhere (see [`capture_logs`]).
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// The log lines of the consumer written on this thread.
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn count(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|line| line.contains(needle)).count()
    }
}

/// Routes each log line to the capture of the thread that wrote it.
struct ThreadRouted;

impl std::io::Write for ThreadRouted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|capture| {
            if let Some(lines) = &*capture.borrow() {
                lines.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the NATS consumer's log lines written on this thread from now
/// on. A global subscriber routing by thread, not a scoped one: tracing
/// caches whether a log line is wanted when another test's thread first
/// writes it, and with a scoped subscriber alone it can cache "no".
fn capture_logs() -> CapturedLogs {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ThreadRouted)
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "engine::ingest::nats=info",
            ))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber");
    });
    let lines = Arc::new(Mutex::new(Vec::new()));
    CAPTURE.with(|capture| *capture.borrow_mut() = Some(Arc::clone(&lines)));
    CapturedLogs(lines)
}

/// The pauses between sessions while every write fails grow exponentially
/// (each session connects fine: a connection is not a success), start over
/// after a run of successful writes, and each change of state is logged
/// once, not each retry.
///
/// Single-threaded runtime: every task runs on this thread, so its log
/// capture sees the consumer's lines.
#[tokio::test]
async fn backoff_grows_over_failures_resets_after_successes_and_logs_each_change_once() {
    let logs = capture_logs();

    let nats = NatsServer::start();
    let store = TestStore::shared(4096);
    let failing = Arc::new(AtomicBool::new(true));
    let failures: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let successes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    store.set_write_hook({
        let (failing, failures) = (Arc::clone(&failing), Arc::clone(&failures));
        let successes = Arc::clone(&successes);
        move |_| {
            if failing.load(Ordering::SeqCst) {
                failures.lock().unwrap().push(Instant::now());
                WriteFault::Refuse(StorageError::Backend("injected: write failed".into()))
            } else {
                successes.fetch_add(1, Ordering::SeqCst);
                WriteFault::Pass
            }
        }
    });
    let ms = Duration::from_millis;
    let config = NatsConfig {
        min_backoff: ms(100),
        max_backoff: ms(1_600),
        ..NatsConfig::new(nats.url())
    };
    let consumer = start_consumer_with(config, store.clone());
    consumer.wait_connected().await;
    // A steady flow: every session has a message to fail on at once.
    let publisher = tokio::spawn({
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        async move {
            for publish_index in 0.. {
                publish(
                    &js,
                    "sensors.b",
                    points_message("b", publish_index as i64, 1, publish_index),
                )
                .await;
                tokio::time::sleep(ms(25)).await;
            }
        }
    });
    let pauses = |failures: &Arc<Mutex<Vec<Instant>>>| -> Vec<Duration> {
        let at = failures.lock().unwrap();
        at.windows(2).map(|w| w[1] - w[0]).collect()
    };
    let enough = |n: usize| {
        let failures = Arc::clone(&failures);
        move || failures.lock().unwrap().len() >= n
    };

    // Every write fails: pauses of 100 ms doubling up to 1.6 s, each
    // between half its base and its base (jitter), plus the time a new
    // session takes to get its first message (generous: a loaded machine).
    // The lower bounds are what a backoff reset by each connection breaks.
    assert!(eventually(Duration::from_secs(30), enough(8)).await);
    let grown = pauses(&failures);
    for (k, pause) in grown.iter().take(7).enumerate() {
        let base = ms((100u64 << k).min(1_600));
        assert!(
            *pause >= base / 2 && *pause <= base + ms(3_000),
            "pause {k} was {pause:?}, base {base:?}: {grown:?}"
        );
    }

    // Writes work again: after a run of successful writes (group commits;
    // the backlog may come in a few big ones), the pauses start over.
    failing.store(false, Ordering::SeqCst);
    let written = Arc::clone(&successes);
    assert!(
        eventually(Duration::from_secs(30), || written.load(Ordering::SeqCst)
            >= 20)
        .await,
        "ingestion did not resume"
    );
    failures.lock().unwrap().clear();
    failing.store(true, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(30), enough(3)).await);
    let restarted = pauses(&failures);
    // Not reset, it would be at least half of 1.6 s.
    assert!(
        restarted[0] < ms(800),
        "after the successes the pauses start over: {restarted:?} (before: {grown:?})"
    );

    publisher.abort();
    let stats = consumer.stop().await;
    assert!(stats.connects >= 10, "{stats:?}");
    let millis =
        |pauses: &[Duration]| -> Vec<u128> { pauses.iter().map(Duration::as_millis).collect() };
    eprintln!(
        "NATS backoff: pauses while failing {:?} ms; after a run of successes {:?} ms; {} sessions",
        millis(&grown),
        millis(&restarted),
        stats.connects
    );
    // One line per change of state: interrupted, resumed, interrupted.
    assert_eq!(logs.count("consuming NATS JetStream"), 1);
    assert_eq!(logs.count("NATS ingestion interrupted"), 2, "{stats:?}");
    assert_eq!(logs.count("NATS ingestion resumed"), 1);
}
