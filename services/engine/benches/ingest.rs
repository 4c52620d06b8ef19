//! Ingestion benchmark: NATS JetStream ingest, gRPC Write, publish-to-visible
//! latency, and export speed while ingesting. Prints a markdown table
//! (saved as `bench-ingest.md` at the repository root).
//!
//! Everything runs on this machine: a private nats-server
//! (`/usr/sbin/nats-server`, JetStream in a temporary directory), the
//! embedded store in a temporary directory behind [`LiveStorage`], the
//! consumer and the gRPC server in-process, exactly as `engine serve` wires
//! them. Publishers and clients share the same cores as the engine, so the
//! figures are a floor.
//!
//! Run: `cargo bench --bench ingest` (release profile).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::csv_format::CsvEncoder;
use engine::grpc::pb::sensor_engine_client::SensorEngineClient;
use engine::grpc::pb::{Point as PbPoint, SubscribeRequest, WriteRequest};
use engine::ingest::IngestStats;
use engine::ingest::nats::NatsConfig;
use engine::live::LiveStorage;
use engine::model::{Point, Sample, SensorId, TimeRange};
use engine::storage::embedded::EmbeddedStore;
use engine::storage::{
    Downsampled, ImportSummary, PointStream, SensorInfo, SharedStorage, StorageEngine, StorageError,
};
use futures_util::StreamExt;
use tokio::sync::watch;

mod common;
use common::{Nats, load_average, nats_message, percentile};

const POINTS_PER_MESSAGE: i64 = 100;

async fn publish_backlog(js: &async_nats::jetstream::Context, prefix: &str, messages: i64) {
    let mut pending = Vec::with_capacity(2000);
    for i in 0..messages {
        let sensor = format!("{prefix}/{}", i % 8);
        let ack = js
            .publish(
                format!("sensors.{prefix}.{}", i % 8),
                nats_message(&sensor, (i / 8) * 100, POINTS_PER_MESSAGE).into(),
            )
            .await
            .unwrap();
        pending.push(ack);
        if pending.len() == 2000 {
            for ack in pending.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in pending {
        ack.await.unwrap();
    }
}

async fn wait_points(stats: &IngestStats, points: u64) {
    while stats.points.load(Ordering::Relaxed) < points {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn export_seconds(storage: &SharedStorage, sensor: &SensorId) -> (f64, usize) {
    let started = Instant::now();
    let encoder = CsvEncoder::default();
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut bytes = 0;
    encoder.write_header(&mut buffer);
    let mut scan = storage.scan(sensor, TimeRange::ALL);
    while let Some(batch) = scan.next().await {
        encoder.write_batch(&batch.unwrap(), &mut buffer);
        bytes += buffer.len();
        buffer.clear();
    }
    (started.elapsed().as_secs_f64(), bytes)
}

/// The embedded store, timing each write: tells store stalls (fsync,
/// checkpoints) apart from transport delays in the latency figures.
struct TimedStore {
    inner: Arc<EmbeddedStore>,
    writes: Mutex<Vec<Duration>>,
}

#[async_trait::async_trait]
impl StorageEngine for TimedStore {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        let started = Instant::now();
        let result = self.inner.write(samples).await;
        self.writes.lock().unwrap().push(started.elapsed());
        result
    }
    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        self.inner.scan(sensor_id, range)
    }
    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        self.inner.sensors().await
    }
    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        self.inner.sensor(sensor_id).await
    }
    async fn import(
        &self,
        sensor_id: &SensorId,
        batches: PointStream,
    ) -> Result<ImportSummary, StorageError> {
        self.inner.import(sensor_id, batches).await
    }
    async fn downsample(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
        buckets: usize,
    ) -> Result<Downsampled, StorageError> {
        self.inner.downsample(sensor_id, range, buckets).await
    }
    async fn close(&self) -> Result<(), StorageError> {
        self.inner.close().await
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let load_before = load_average();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let scale = if quick { 10 } else { 1 };
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let timed = Arc::new(TimedStore {
        inner: store.clone(),
        writes: Mutex::new(Vec::new()),
    });
    let live = Arc::new(LiveStorage::new(timed.clone()));
    let hub = live.hub().clone();
    let storage: SharedStorage = live;
    let (stop, stopping) = watch::channel(false);
    let signal = move || {
        let mut rx = stopping.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut rows: Vec<(String, String)> = Vec::new();

    // The gRPC server, as `engine serve` runs it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grpc = tokio::spawn(engine::grpc::serve(
        listener,
        storage.clone(),
        hub.clone(),
        signal(),
    ));
    let url = format!("http://{addr}");
    // The NATS consumer (stopped after the latency phase, for the backlog).
    let stats = Arc::new(IngestStats::default());
    let (first_stop, first_stopping) = watch::channel(false);
    let first = tokio::spawn(engine::ingest::nats::run(
        NatsConfig::new(nats.url()),
        storage.clone(),
        stats.clone(),
        async move {
            let mut rx = first_stopping;
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    while js.get_stream("SENSORS").await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while stats.connects.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 1. Publish (NATS) to visible (gRPC Subscribe) at 10k points/s, on a
    // fresh store: the steady state of a plant.
    let mut client = SensorEngineClient::connect(url.clone()).await.unwrap();
    let mut follower = client
        .subscribe(SubscribeRequest {
            sensor_id: "latency/probe".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let seconds = if quick { 2 } else { 10 };
    let sent: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![None; seconds * 100 + 1]));
    let publisher = tokio::spawn({
        let js = js.clone();
        let sent = sent.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            for seq in 0..(seconds * 100) as i64 {
                tick.tick().await;
                let payload = nats_message(
                    "latency/probe",
                    seq * POINTS_PER_MESSAGE,
                    POINTS_PER_MESSAGE,
                );
                sent.lock().unwrap()[seq as usize] = Some(Instant::now());
                // The publish acknowledgement is not waited for: it is not
                // part of the path being measured.
                let _ = js.publish("sensors.latency", payload.into()).await.unwrap();
            }
        }
    });
    let mut latencies = Vec::new();
    let expected = seconds * 100;
    while latencies.len() < expected {
        let Ok(Some(Ok(batch))) =
            tokio::time::timeout(Duration::from_secs(5), follower.next()).await
        else {
            break;
        };
        let now = Instant::now();
        let mut seqs: Vec<i64> = batch
            .timestamps_ms
            .iter()
            .map(|ts| ts / POINTS_PER_MESSAGE)
            .collect();
        seqs.dedup();
        for seq in seqs {
            if let Some(Some(at)) = sent.lock().unwrap().get(seq as usize) {
                latencies.push(now - *at);
            }
        }
    }
    publisher.await.unwrap();
    latencies.sort();
    let mut writes = std::mem::take(&mut *timed.writes.lock().unwrap());
    writes.sort();
    if !latencies.is_empty() {
        rows.push((
            format!(
                "Publish (NATS) to visible (gRPC Subscribe) at 10k points/s, {} messages: p50 / p99 / max",
                latencies.len()
            ),
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                percentile(&latencies, 0.5).as_secs_f64() * 1e3,
                percentile(&latencies, 0.99).as_secs_f64() * 1e3,
                latencies.last().unwrap().as_secs_f64() * 1e3
            ),
        ));
    }

    if !writes.is_empty() {
        rows.push((
            format!(
                "Store writes during that phase ({}): p50 / p99 / max",
                writes.len()
            ),
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                percentile(&writes, 0.5).as_secs_f64() * 1e3,
                percentile(&writes, 0.99).as_secs_f64() * 1e3,
                writes.last().unwrap().as_secs_f64() * 1e3
            ),
        ));
    }

    // 2. NATS throughput. A backlog first: the durable consumer is stopped,
    // 2M points are published, and the consumer is started again to drain
    // them (the engine alone on the cores). Then publisher and engine
    // concurrently.
    let _ = first_stop.send(true);
    first.await.unwrap();
    let messages = 20_000 / scale;
    let total = (messages * POINTS_PER_MESSAGE) as u64;
    publish_backlog(&js, "backlog", messages).await;
    let base = stats.points.load(Ordering::Relaxed);
    let started = Instant::now();
    let consumer = tokio::spawn(engine::ingest::nats::run(
        NatsConfig::new(nats.url()),
        storage.clone(),
        stats.clone(),
        signal(),
    ));
    wait_points(&stats, base + total).await;
    let backlog_rate = total as f64 / started.elapsed().as_secs_f64();
    rows.push((
        format!("NATS ingest, draining a backlog ({total} points, 100/message, acked after fsync)"),
        format!("{backlog_rate:.0} points/s"),
    ));
    let base = stats.points.load(Ordering::Relaxed);
    let total = (messages * POINTS_PER_MESSAGE) as u64;
    let started = Instant::now();
    publish_backlog(&js, "live", messages).await;
    wait_points(&stats, base + total).await;
    let live_rate = total as f64 / started.elapsed().as_secs_f64();
    rows.push((
        format!("NATS ingest, publisher and engine concurrently ({total} points, 100/message, acked after fsync)"),
        format!("{:.0} points/s", live_rate),
    ));

    // 3. gRPC Write: one stream of 10k-point requests, and 4 streams.
    for streams in [1usize, 4] {
        let per_stream = 2_000_000 / scale as i64 / streams as i64;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..streams {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = SensorEngineClient::connect(url).await.unwrap();
                let sensor = format!("grpc/{streams}/{s}");
                let requests = (0..per_stream / 10_000).map(move |r| WriteRequest {
                    points: (r * 10_000..(r + 1) * 10_000)
                        .map(|ts| PbPoint {
                            sensor_id: sensor.clone(),
                            timestamp_ms: ts,
                            value: Some(ts as f64 * 0.1),
                            quality: 192,
                        })
                        .collect(),
                });
                client
                    .write(futures_util::stream::iter(requests))
                    .await
                    .unwrap()
                    .into_inner()
                    .points_written
            }));
        }
        let mut written = 0;
        for task in tasks {
            written += task.await.unwrap();
        }
        let rate = written as f64 / started.elapsed().as_secs_f64();
        rows.push((
            format!("gRPC Write, {streams} stream(s) of 10k-point requests ({written} points)"),
            format!("{rate:.0} points/s"),
        ));
    }

    // 4. Export (scan + CSV encode) of 1M points, idle and while NATS
    // ingests 100k points/s.
    let sensor = SensorId::new("export/probe").unwrap();
    let export_points = 2_000_000 / scale as i64;
    for chunk in 0..(export_points / 100_000).max(1) {
        let samples = (chunk * 100_000..(chunk + 1) * 100_000)
            .map(|ts| Sample {
                sensor_id: sensor.clone(),
                seq: None,
                point: Point {
                    timestamp_ms: ts,
                    value: ts as f64 / 3.0,
                    quality: 192,
                },
            })
            .collect();
        storage.write(samples).await.unwrap();
    }
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(export_seconds(&storage, &sensor).await.0);
    }
    let (load_stop, load_stopped) = watch::channel(false);
    let before = stats.points.load(Ordering::Relaxed);
    let load_started = Instant::now();
    let load = tokio::spawn({
        let js = js.clone();
        async move {
            // 100 messages of 100 points every 100 ms = 100k points/s.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut seq = 0i64;
            while !*load_stopped.borrow() {
                tick.tick().await;
                for _ in 0..100 {
                    let sensor = format!("load/{}", seq % 8);
                    let _ = js
                        .publish(
                            format!("sensors.load.{}", seq % 8),
                            nats_message(&sensor, (seq / 8) * 100, POINTS_PER_MESSAGE).into(),
                        )
                        .await;
                    seq += 1;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut loaded = Vec::new();
    for _ in 0..5 {
        loaded.push(export_seconds(&storage, &sensor).await.0);
    }
    let _ = load_stop.send(true);
    load.await.unwrap();
    let ingested = stats.points.load(Ordering::Relaxed) - before;
    let load_rate = ingested as f64 / load_started.elapsed().as_secs_f64();
    idle.sort_by(f64::total_cmp);
    loaded.sort_by(f64::total_cmp);
    let (idle_median, loaded_median) = (idle[2], loaded[2]);
    rows.push((
        format!("Export of {export_points} points (scan + CSV encode), idle: median of 5"),
        format!(
            "{:.3} s ({:.0} points/s)",
            idle_median,
            export_points as f64 / idle_median
        ),
    ));
    rows.push((
        format!(
            "Same export while NATS ingests ~{:.0}k points/s: median of 5",
            load_rate / 1e3
        ),
        format!(
            "{:.3} s ({:.0} points/s, {:+.0}% time)",
            loaded_median,
            export_points as f64 / loaded_median,
            (loaded_median / idle_median - 1.0) * 100.0
        ),
    ));

    let _ = stop.send(true);
    let _ = consumer.await;
    let _ = grpc.await;
    drop(storage);
    store.close().await.unwrap();

    println!("| Measurement | Result |");
    println!("| --- | --- |");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
    let snapshot = stats.snapshot();
    println!();
    println!(
        "Consumer counters: {} messages, {} points, {} malformed, {} write failures.",
        snapshot.messages, snapshot.points, snapshot.malformed, snapshot.write_failures
    );
    println!(
        "Machine: {} cores; engine, nats-server, publishers and clients share them. \
         Load average before / after: {} / {}.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before.trim(),
        load_average().trim()
    );
}
