//! NATS JetStream ingestion against a real (private) nats-server.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::ingest::IngestStats;
use engine::ingest::nats::{NatsConfig, run};
use engine::storage::SharedStorage;
use futures_util::StreamExt;
use tokio::sync::oneshot;

use crate::ingest_support::{NatsServer, eventually, free_port};
use crate::support::TestStore;

/// A message of `count` points of `sensor` starting at `first_ts`.
pub fn points_message(sensor: &str, first_ts: i64, count: i64) -> String {
    let points: Vec<String> = (first_ts..first_ts + count)
        .map(|ts| {
            format!(
                r#"{{"sensor_id":{},"timestamp_ms":{ts},"value":{}.5,"quality":192}}"#,
                serde_json::to_string(sensor).unwrap(),
                ts % 1000
            )
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
    let stats = Arc::new(IngestStats::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let storage: SharedStorage = store;
    let task = tokio::spawn(run(
        NatsConfig::new(url),
        storage,
        Arc::clone(&stats),
        async move {
            let _ = stopped.await;
        },
    ));
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
        let payload = points_message(sensor, i * 50, 50);
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
    assert_eq!(store.points("plant/a").len(), 100 * 50);
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
    js.publish("sensors.x", points_message("x", 0, 100).into())
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
    js.publish("sensors.x", points_message("x", 100, 100).into())
        .await
        .unwrap()
        .await
        .unwrap();
    let counted = Arc::clone(&store);
    assert!(eventually(Duration::from_secs(20), || counted.total() == 200).await);
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_point_is_stored_exactly_once_across_a_sigkill() {
    use crate::grpc::{connect_engine, scan_all};
    use crate::ingest_support::Engine;

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), &["--nats-url", &nats.url()]);

    // The engine creates the stream; wait for it before publishing.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut tries = 0;
    while js.get_stream("SENSORS").await.is_err() {
        tries += 1;
        assert!(tries < 200, "the engine never created the stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    const MESSAGES: i64 = 1000;
    const SENSORS: [&str; 4] = ["k/a", "k/b", "Kessel Ü1/Temperatur", "k/d"];
    let publisher = tokio::spawn({
        let js = js.clone();
        async move {
            for i in 0..MESSAGES {
                let sensor = SENSORS[(i % 4) as usize];
                let first_ts = (i / 4) * 100;
                js.publish(
                    format!("sensors.{}", i % 4),
                    points_message(sensor, first_ts, 100).into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                if i % 97 == 0 {
                    js.publish("sensors.bad", "{oops".into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    engine.kill();
    publisher.await.unwrap();

    let engine = Engine::start(dir.path(), &["--nats-url", &nats.url()]);
    let mut grpc = connect_engine(engine.grpc_url()).await;
    let per_sensor = (MESSAGES / 4 * 100) as usize;
    // Messages in flight at the kill come back after the consumer's
    // ack_wait (10 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut complete = true;
        for sensor in SENSORS {
            let stored = match scan_all(&mut grpc, sensor).await {
                Ok(points) => points.len(),
                Err(status) if status.code() == tonic::Code::NotFound => 0,
                Err(status) => panic!("scan {sensor}: {status:?}"),
            };
            if stored < per_sensor {
                complete = false;
            }
        }
        if complete {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every point arrived"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for sensor in SENSORS {
        let stored = scan_all(&mut grpc, sensor).await.expect("scan");
        assert_eq!(stored.len(), per_sensor, "{sensor}: exactly once");
        for (i, (ts, value)) in stored.iter().enumerate() {
            assert_eq!(*ts, i as i64);
            assert_eq!(*value, (ts % 1000) as f64 + 0.5);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_with_the_server_gone() {
    let nats = NatsServer::start();
    let store = TestStore::shared(4096);
    let consumer = start_consumer(nats.url(), Arc::clone(&store));
    consumer.wait_connected().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("sensors.x", points_message("x", 0, 100).into())
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
