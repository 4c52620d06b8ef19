//! Write latency under sustained load: does any `write` wait for a
//! checkpoint?
//!
//! The engine as `engine serve` wires it (embedded store behind
//! `LiveStorage`, gRPC server, NATS consumer, all in process; a private
//! nats-server). Two loads run together for `WRITE_BENCH_SECONDS` (default
//! 60):
//!
//! - gRPC: 500k points/s as 100 `Write` calls a second of 5,000 points (one
//!   sensor per 10 calls, 50 sensors), each call timed from send to answer;
//! - NATS: 10k points/s as 100 messages a second of 100 points, each timed
//!   from publish to arrival at a gRPC `Subscribe` follower.
//!
//! The same run is repeated with checkpoints out of the way (a head limit
//! larger than the run writes) as the reference: what the calls cost
//! without any fold. A third column times the disk alone: what one
//! `Write` call's WAL record costs the device (a preallocated file,
//! overwritten at the same rate and size and `fdatasync`ed each time), the
//! floor any engine that acknowledges after a sync stands on. Prints a
//! markdown table.
//!
//! Run: `WRITE_BENCH_SECONDS=60 cargo bench --bench write_latency`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::grpc::pb::sensor_engine_client::SensorEngineClient;
use engine::grpc::pb::{Point as PbPoint, SubscribeRequest, WriteRequest};
use engine::ingest::IngestStats;
use engine::ingest::nats::NatsConfig;
use engine::live::LiveStorage;
use engine::storage::SharedStorage;
use engine::storage::embedded::{EmbeddedOptions, EmbeddedStore};
use futures_util::StreamExt;
use tokio::sync::watch;

mod common;
use common::{Nats, nats_message, percentile};

const CALLS_PER_SECOND: u64 = 100;
const POINTS_PER_CALL: i64 = 5_000;
const MESSAGES_PER_SECOND: u64 = 100;
const POINTS_PER_MESSAGE: i64 = 100;

/// The three load averages of a `/proc/loadavg` line.
fn load_of(line: &str) -> String {
    line.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What one run measured.
struct Run {
    writes: Vec<Duration>,
    visible: Vec<Duration>,
    behind: usize,
    folds: usize,
}

async fn run_once(seconds: u64, options: EmbeddedOptions) -> Run {
    let nats = Nats::start();
    let head_limit = options.head_flush_points.max(1);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open_with(dir.path(), options).unwrap());
    let live = Arc::new(LiveStorage::new(store.clone()));
    let hub = live.hub().clone();
    let storage: SharedStorage = live;
    let (stop, stopping) = watch::channel(false);
    let signal = move || {
        let mut rx = stopping.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let grpc = tokio::spawn(engine::grpc::serve(
        listener,
        storage.clone(),
        hub.clone(),
        signal(),
    ));
    let stats = Arc::new(IngestStats::default());
    let consumer = tokio::spawn(engine::ingest::nats::run(
        NatsConfig::new(nats.url()),
        storage.clone(),
        stats.clone(),
        signal(),
    ));
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    while js.get_stream("SENSORS").await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut follower_client = loop {
        if let Ok(client) = SensorEngineClient::connect(url.clone()).await {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut follower = follower_client
        .subscribe(SubscribeRequest {
            sensor_id: "latency/probe".into(),
        })
        .await
        .unwrap()
        .into_inner();

    // Requests built ahead: the writer's own CPU is not what is measured.
    let calls = seconds * CALLS_PER_SECOND;
    let requests: Vec<WriteRequest> = (0..calls as i64)
        .map(|call| {
            let sensor = format!("load/{:02}", call % 50);
            let first = (call / 50) * POINTS_PER_CALL;
            WriteRequest {
                points: (first..first + POINTS_PER_CALL)
                    .map(|ts| PbPoint {
                        sensor_id: sensor.clone(),
                        timestamp_ms: ts,
                        value: Some((ts % 1013) as f64 * 0.37),
                        quality: 192,
                    })
                    .collect(),
            }
        })
        .collect();
    let writer = tokio::spawn({
        let url = url.clone();
        async move {
            let mut client = SensorEngineClient::connect(url).await.unwrap();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / CALLS_PER_SECOND as u32);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut latencies = Vec::with_capacity(requests.len());
            let mut behind = 0;
            for request in requests {
                let due = tick.tick().await;
                if due.elapsed() > Duration::from_millis(10) {
                    behind += 1;
                }
                let started = Instant::now();
                client
                    .write(futures_util::stream::iter(vec![request]))
                    .await
                    .unwrap();
                latencies.push(started.elapsed());
            }
            (latencies, behind)
        }
    });
    let sent: Arc<Mutex<Vec<Option<Instant>>>> =
        Arc::new(Mutex::new(vec![
            None;
            (seconds * MESSAGES_PER_SECOND) as usize + 1
        ]));
    let publisher = tokio::spawn({
        let (js, sent) = (js.clone(), sent.clone());
        async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs(1) / MESSAGES_PER_SECOND as u32);
            for seq in 0..(seconds * MESSAGES_PER_SECOND) as i64 {
                tick.tick().await;
                let payload = nats_message(
                    "latency/probe",
                    seq * POINTS_PER_MESSAGE,
                    POINTS_PER_MESSAGE,
                );
                sent.lock().unwrap()[seq as usize] = Some(Instant::now());
                let _ = js.publish("sensors.latency", payload.into()).await.unwrap();
            }
        }
    });
    let mut visible = Vec::new();
    let expected = (seconds * MESSAGES_PER_SECOND) as usize;
    while visible.len() < expected {
        let Ok(Some(Ok(batch))) =
            tokio::time::timeout(Duration::from_secs(10), follower.next()).await
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
                visible.push(now - *at);
            }
        }
    }
    publisher.await.unwrap();
    let (mut writes, behind) = writer.await.unwrap();
    stop.send_replace(true);
    let _ = grpc.await;
    let _ = consumer.await;
    let folds = (seconds as usize * 500_000) / head_limit;
    engine::storage::StorageEngine::close(&*store)
        .await
        .unwrap();
    writes.sort();
    visible.sort();
    Run {
        writes,
        visible,
        behind,
        folds,
    }
}

/// Bytes of WAL record one `Write` call of [`POINTS_PER_CALL`] points makes
/// (about 20 bytes a point before the record's framing).
const RECORD_BYTES: usize = POINTS_PER_CALL as usize * 20;

/// The disk alone: [`CALLS_PER_SECOND`] overwrites a second of
/// [`RECORD_BYTES`] into a file written full beforehand (as the WAL
/// preallocates its segments), each followed by `fdatasync`; each timed.
fn disk_alone(seconds: u64) -> Vec<Duration> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment");
    let calls = (seconds * CALLS_PER_SECOND) as usize;
    let mut file = std::fs::File::create(&path).unwrap();
    let record = vec![0x5a_u8; RECORD_BYTES];
    for _ in 0..calls {
        file.write_all(&record).unwrap();
    }
    file.sync_all().unwrap();
    let period = Duration::from_secs(1) / CALLS_PER_SECOND as u32;
    let start = Instant::now();
    let mut syncs = Vec::with_capacity(calls);
    for call in 0..calls {
        let due = start + period * call as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let started = Instant::now();
        file.write_all_at(&record, (call * RECORD_BYTES) as u64)
            .unwrap();
        file.sync_data().unwrap();
        syncs.push(started.elapsed());
    }
    syncs.sort();
    syncs
}

fn main() {
    let seconds: u64 = std::env::var("WRITE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let with = runtime.block_on(run_once(seconds, EmbeddedOptions::default()));
    let without = runtime.block_on(run_once(
        seconds,
        EmbeddedOptions {
            head_flush_points: usize::MAX / 4,
            wal_segment_bytes: u64::MAX / 4,
            ..EmbeddedOptions::default()
        },
    ));
    let disk = disk_alone(seconds);
    println!(
        "Write latency, {seconds} s at 500k points/s through gRPC ({} calls of {POINTS_PER_CALL} points) \
         with NATS at 10k points/s alongside; load average at start: {}, at end: {}",
        with.writes.len(),
        load_of(&load),
        load_of(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default()),
    );
    println!();
    println!(
        "| Measurement | With checkpoints (~{} folds) | Reference: no checkpoint | Disk alone: {RECORD_BYTES}-byte overwrite + `fdatasync` | Target |",
        with.folds
    );
    println!("|---|---|---|---|---|");
    for (name, p) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        println!(
            "| gRPC `Write` call, {name} | {:.2} ms | {:.2} ms | {:.2} ms | |",
            ms(percentile(&with.writes, p)),
            ms(percentile(&without.writes, p)),
            ms(percentile(&disk, p))
        );
    }
    println!(
        "| gRPC `Write` call, max | {:.2} ms | {:.2} ms | {:.2} ms | |",
        ms(*with.writes.last().unwrap()),
        ms(*without.writes.last().unwrap()),
        ms(*disk.last().unwrap())
    );
    let ratio = |times: &[Duration]| {
        percentile(times, 0.999).as_secs_f64() / percentile(times, 0.5).as_secs_f64()
    };
    println!(
        "| p99.9 / p50 | {:.2}x | {:.2}x | {:.2}x | <= 3x |",
        ratio(&with.writes),
        ratio(&without.writes),
        ratio(&disk)
    );
    println!(
        "| calls started late (> 10 ms behind the 100/s schedule) | {} | {} | | |",
        with.behind, without.behind
    );
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        println!(
            "| NATS publish to visible (Subscribe), {name} | {:.1} ms | {:.1} ms | | {} |",
            ms(percentile(&with.visible, p)),
            ms(percentile(&without.visible, p)),
            if name == "p99" { "<= 20 ms" } else { "" }
        );
    }
    println!(
        "| NATS publish to visible, max ({} messages) | {:.1} ms | {:.1} ms | | |",
        with.visible.len(),
        ms(*with.visible.last().unwrap()),
        ms(*without.visible.last().unwrap())
    );
}
