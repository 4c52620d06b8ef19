//! The promise the product is built on, as a property: random bit patterns
//! written through every way in (the `StorageEngine` trait, gRPC `Write`,
//! HTTP import, NATS) come back bit for bit through every way out (gRPC
//! `Scan`, HTTP export, `/api/v1/series` raw), while the store checkpoints
//! and after it is reopened.
//!
//! Real components only: the embedded store on disk (a small head, so many
//! checkpoints happen), the HTTP server and the gRPC server on port 0, a
//! tonic client, a private nats-server and the real consumer.
//!
//! What a path cannot carry is not asked of it: CSV and the JSON of NATS
//! write every NaN as `NaN`, so their NaNs arrive as the canonical NaN
//! (payload and sign lost); the CSV export writes any NaN as `NaN`, and the
//! series JSON writes NaN and infinities as `null`. gRPC and the trait carry
//! all 64 bits, NaN payloads included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::grpc::pb::sensor_engine_client::SensorEngineClient;
use engine::grpc::pb::{self, WriteRequest};
use engine::ingest::IngestStats;
use engine::ingest::nats::NatsConfig;
use engine::live::LiveStorage;
use engine::model::{Point, Sample, SensorId};
use engine::storage::SharedStorage;
use engine::storage::embedded::EmbeddedOptions;
use tokio::sync::oneshot;

use crate::grpc::scan_all;
use crate::ingest_support::{NatsServer, eventually};
use crate::support::{Rng, TestServer, client, open_embedded};

const NATS_VALUES: usize = 300_000;
const OTHER_VALUES: usize = 100_000;
/// Points per NATS message and per gRPC `WriteRequest`.
const NATS_MESSAGE_POINTS: usize = 100;
const GRPC_REQUEST_POINTS: usize = 5_000;
/// The most raw points one `/api/v1/series` answer holds.
const SERIES_WINDOW: usize = 10_000;

/// The ways in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Trait,
    Grpc,
    HttpImport,
    Nats,
}

impl Way {
    /// What the store receives when `value` is sent this way.
    fn carried(self, value: f64) -> f64 {
        match self {
            Way::Trait | Way::Grpc => value,
            // "NaN" in CSV and JSON: Rust's parser makes it the canonical NaN.
            Way::HttpImport | Way::Nats if value.is_nan() => f64::NAN,
            Way::HttpImport | Way::Nats => value,
        }
    }
}

/// One sensor's points as written, and what must come back.
struct Written {
    way: Way,
    sensor: String,
    points: Vec<Point>,
}

impl Written {
    fn expected(&self, index: usize) -> Point {
        let point = self.points[index];
        Point {
            value: self.way.carried(point.value),
            ..point
        }
    }
}

/// Random values in runs of one kind, so that whole blocks are of one kind
/// and the codec uses each of its encodings: any 64 bits (NaN payloads,
/// infinities, subnormals included), decimals with the occasional -0.0 (the
/// decimal codec), special values, subnormals, a noisy sensor, constants.
fn random_values(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut values = Vec::with_capacity(n);
    while values.len() < n {
        let run = (rng.range(1, 5_000) as usize).min(n - values.len());
        let kind = rng.range(0, 6);
        let constant = f64::from_bits(rng.next_u64());
        let mut walk = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 200.0 - 100.0;
        for _ in 0..run {
            let value = match kind {
                0 => f64::from_bits(rng.next_u64()),
                1 => {
                    if rng.chance(2) {
                        if rng.chance(50) { -0.0 } else { 0.0 }
                    } else {
                        let digits = rng.range(0, 5) as i32;
                        rng.range(-10_000_000, 10_000_000) as f64 / 10f64.powi(digits)
                    }
                }
                2 => special(rng),
                3 => {
                    let sign = rng.next_u64() & (1 << 63);
                    f64::from_bits(sign | (rng.next_u64() & ((1 << 52) - 1)))
                }
                4 => {
                    walk += (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                    walk
                }
                _ => constant,
            };
            values.push(value);
        }
    }
    values
}

fn special(rng: &mut Rng) -> f64 {
    let nan_payload = 0x7FF0_0000_0000_0000 | (rng.next_u64() & ((1 << 52) - 1)).max(1);
    let candidates = [
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        -f64::NAN,
        f64::from_bits(nan_payload),
        f64::from_bits(nan_payload | (1 << 63)),
        f64::from_bits(1),
        -f64::from_bits(1),
        f64::from_bits((1 << 52) - 1),
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        f64::MAX,
        f64::MIN,
        f64::EPSILON,
        1.0,
        -1.0,
        1.0f64.next_up(),
        1.0f64.next_down(),
        0.1,
        0.1 + 0.2,
        1e300,
        -1e-300,
        9_007_199_254_740_993.0,
    ];
    candidates[rng.range(0, candidates.len() as i64) as usize]
}

/// `n` points with strictly increasing timestamps at irregular gaps, some
/// before 1970, and any quality byte.
fn random_points(rng: &mut Rng, n: usize) -> Vec<Point> {
    let mut timestamp_ms = rng.range(-1_000_000_000_000, 2_000_000_000_000);
    random_values(rng, n)
        .into_iter()
        .map(|value| {
            timestamp_ms += rng.range(1, 3_000);
            Point {
                timestamp_ms,
                value,
                quality: rng.next_u64() as u8,
            }
        })
        .collect()
}

/// The text a writer puts into CSV or JSON for `value`: the shortest
/// round-trip form, or the names of the non-finite values.
fn number_text(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-inf".to_owned()
    } else {
        serde_json::to_string(&value).unwrap()
    }
}

/// The servers and the consumer over one store.
struct Running {
    storage: SharedStorage,
    http: TestServer,
    grpc_addr: std::net::SocketAddr,
    grpc_stop: oneshot::Sender<()>,
    grpc_task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    nats_stats: Arc<IngestStats>,
    nats_stop: oneshot::Sender<()>,
    nats_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Everything `engine serve` runs, over the store in `dir`.
    async fn start(dir: &std::path::Path, nats_url: String) -> Self {
        let options = EmbeddedOptions {
            // Many checkpoints while the test writes.
            head_flush_points: 50_000,
            ..EmbeddedOptions::default()
        };
        let live = Arc::new(LiveStorage::new(open_embedded(dir, options).await));
        let hub = live.hub().clone();
        let storage: SharedStorage = live;
        let http = TestServer::start(storage.clone()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = listener.local_addr().unwrap();
        let (grpc_stop, stopped) = oneshot::channel::<()>();
        let grpc_task = tokio::spawn(engine::grpc::serve(
            listener,
            storage.clone(),
            hub,
            async move {
                let _ = stopped.await;
            },
        ));
        let nats_stats = Arc::new(IngestStats::default());
        let (nats_stop, stopped) = oneshot::channel::<()>();
        let nats_task = tokio::spawn(engine::ingest::nats::run(
            NatsConfig::new(nats_url),
            storage.clone(),
            Arc::clone(&nats_stats),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            storage,
            http,
            grpc_addr,
            grpc_stop,
            grpc_task,
            nats_stats,
            nats_stop,
            nats_task,
        }
    }

    async fn grpc_client(&self) -> SensorEngineClient<tonic::transport::Channel> {
        SensorEngineClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .unwrap()
            .max_decoding_message_size(engine::grpc::MAX_MESSAGE_BYTES)
    }

    /// Stops everything and closes the store, so it can be opened again.
    async fn stop(self) {
        let _ = self.nats_stop.send(());
        self.nats_task.await.unwrap();
        let _ = self.grpc_stop.send(());
        self.grpc_task.await.unwrap().unwrap();
        self.http.stop().await;
        self.storage.close().await.unwrap();
    }
}

async fn write_through_the_trait(storage: &SharedStorage, written: &Written) {
    let id = SensorId::new(&written.sensor).unwrap();
    // In chunks, last chunk first: points may arrive in any order.
    for chunk in written.points.chunks(7_000).rev() {
        let samples = chunk
            .iter()
            .map(|&point| Sample::new(id.clone(), point))
            .collect();
        storage.write(samples).await.unwrap();
    }
}

async fn write_through_grpc(running: &Running, written: &Written) {
    let requests: Vec<WriteRequest> = written
        .points
        .chunks(GRPC_REQUEST_POINTS)
        .map(|chunk| WriteRequest {
            points: chunk
                .iter()
                .map(|point| pb::Point {
                    sensor_id: written.sensor.clone(),
                    timestamp_ms: point.timestamp_ms,
                    value: Some(point.value),
                    quality: u32::from(point.quality),
                })
                .collect(),
        })
        .collect();
    let response = running
        .grpc_client()
        .await
        .write(futures_util::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.points_written, written.points.len() as u64);
}

async fn write_through_http_import(running: &Running, written: &Written) {
    let mut csv = String::from("timestamp_ms,value,quality\n");
    for point in &written.points {
        csv.push_str(&format!(
            "{},{},{}\n",
            point.timestamp_ms,
            number_text(point.value),
            point.quality
        ));
    }
    let url = running.http.url(&format!(
        "/api/v1/import?sensor_id={}",
        encode(&written.sensor)
    ));
    let response = client().post(url).body(csv).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["points"], written.points.len());
}

/// Publishes the points (acknowledged by the stream, not yet consumed).
async fn publish_through_nats(js: &async_nats::jetstream::Context, written: &Written) {
    let sensor = serde_json::to_string(&written.sensor).unwrap();
    let mut acks = Vec::new();
    for chunk in written.points.chunks(NATS_MESSAGE_POINTS) {
        let points: Vec<String> = chunk
            .iter()
            .map(|point| {
                let value = match number_text(point.value) {
                    text if point.value.is_finite() => text,
                    name => format!("\"{name}\""),
                };
                format!(
                    r#"{{"sensor_id":{sensor},"timestamp_ms":{},"value":{value},"quality":{}}}"#,
                    point.timestamp_ms, point.quality
                )
            })
            .collect();
        let payload = format!("[{}]", points.join(","));
        acks.push(js.publish("sensors.exact", payload.into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

fn encode(sensor: &str) -> String {
    sensor
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Checks `got` (the `index`th point read) against what was written; a NaN
/// is compared bit for bit only where the way out carries its bits.
fn check(written: &Written, index: usize, got: Point, nan_bits: bool, way_out: &str) {
    let expected = written.expected(index);
    let same_value = if expected.value.is_nan() && !nan_bits {
        got.value.is_nan()
    } else {
        got.value.to_bits() == expected.value.to_bits()
    };
    assert!(
        same_value && got.timestamp_ms == expected.timestamp_ms && got.quality == expected.quality,
        "{:?} in, {way_out} out, {}, point {index}: wrote {:?} ({:#018x}), read {:?} ({:#018x})",
        written.way,
        written.sensor,
        expected,
        expected.value.to_bits(),
        got,
        got.value.to_bits()
    );
}

async fn read_through_grpc_scan(running: &Running, written: &Written) {
    let mut client = running.grpc_client().await;
    let mut scan = client
        .scan(pb::ScanRequest {
            sensor_id: written.sensor.clone(),
            start_ms: None,
            end_ms: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut index = 0;
    while let Some(batch) = futures_util::StreamExt::next(&mut scan).await {
        let batch = batch.unwrap();
        for ((&timestamp_ms, &value), &quality) in batch
            .timestamps_ms
            .iter()
            .zip(&batch.values)
            .zip(&batch.qualities)
        {
            let got = Point {
                timestamp_ms,
                value,
                quality: quality as u8,
            };
            check(written, index, got, true, "gRPC Scan");
            index += 1;
        }
    }
    assert_eq!(
        index,
        written.points.len(),
        "{}: points scanned",
        written.sensor
    );
    // The helper the other tests use agrees.
    assert_eq!(
        scan_all(&mut client, &written.sensor).await.unwrap().len(),
        written.points.len()
    );
}

async fn read_through_http_export(running: &Running, written: &Written) {
    let url = running.http.url(&format!(
        "/api/v1/export?sensor_id={}&start_ts=-9999999999999&end_ts=9999999999999",
        encode(&written.sensor)
    ));
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("timestamp_ms,value,quality"));
    let mut index = 0;
    for line in lines {
        let mut fields = line.split(',');
        let (Some(t), Some(v), Some(q), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            panic!("{}: bad CSV line {line:?}", written.sensor);
        };
        let got = Point {
            timestamp_ms: t.parse().unwrap(),
            // Rust's parser is correctly rounded: the text is exact iff this is.
            value: v.parse().unwrap(),
            quality: q.parse().unwrap(),
        };
        check(written, index, got, false, "HTTP export");
        index += 1;
    }
    assert_eq!(
        index,
        written.points.len(),
        "{}: rows exported",
        written.sensor
    );
}

/// The raw text of each element of the JSON array named `name` (numbers or
/// `null` only), read without a JSON parser so that the check does not
/// depend on the parser the server uses.
fn raw_array<'a>(json: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!("\"{name}\":[");
    let start = json.find(&key).unwrap() + key.len();
    let end = start + json[start..].find(']').unwrap();
    if start == end {
        return Vec::new();
    }
    json[start..end].split(',').collect()
}

async fn read_through_series(running: &Running, written: &Written) {
    let points = &written.points;
    let mut index = 0;
    for window in (0..points.len()).step_by(SERIES_WINDOW) {
        let last = (window + SERIES_WINDOW).min(points.len()) - 1;
        let url = running.http.url(&format!(
            "/api/v1/series?sensor_id={}&start_ts={}&end_ts={}&max_points={SERIES_WINDOW}",
            encode(&written.sensor),
            points[window].timestamp_ms,
            points[last].timestamp_ms + 1
        ));
        let response = client().get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let json = response.text().await.unwrap();
        assert!(
            json.contains(r#""downsampled":false"#),
            "raw points expected"
        );
        let timestamps = raw_array(&json, "timestamps");
        let values = raw_array(&json, "values");
        let qualities = raw_array(&json, "qualities");
        assert_eq!(timestamps.len(), last - window + 1);
        assert_eq!(values.len(), timestamps.len());
        for ((t, v), q) in timestamps.iter().zip(&values).zip(&qualities) {
            let expected = written.expected(index);
            let value = if *v == "null" {
                assert!(
                    !expected.value.is_finite(),
                    "{:?} in, series out, {} point {index}: null for {:?}",
                    written.way,
                    written.sensor,
                    expected.value
                );
                expected.value
            } else {
                v.parse().unwrap()
            };
            let got = Point {
                timestamp_ms: t.parse().unwrap(),
                value,
                quality: q.parse().unwrap(),
            };
            check(written, index, got, true, "/api/v1/series");
            index += 1;
        }
    }
    assert_eq!(index, points.len());
}

async fn read_back_every_way(running: &Running, all: &[Written], when: &str) {
    let started = Instant::now();
    for written in all {
        read_through_grpc_scan(running, written).await;
        read_through_http_export(running, written).await;
        read_through_series(running, written).await;
    }
    eprintln!(
        "bit-exact ({when}): {} points read back through gRPC Scan, HTTP export and series in {:?}",
        all.iter().map(|w| w.points.len()).sum::<usize>(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bit_patterns_come_back_bit_for_bit_through_every_way_in_and_out() {
    let mut rng = Rng::new(0xB17_E8AC7);
    let mut sensors = Vec::new();
    let mut add = |way: Way, name: &str, n: usize, rng: &mut Rng| {
        sensors.push(Written {
            way,
            sensor: name.to_owned(),
            points: random_points(rng, n),
        });
    };
    add(Way::Trait, "exact/trait", OTHER_VALUES, &mut rng);
    add(Way::Grpc, "exact/grpc Ü", OTHER_VALUES, &mut rng);
    add(
        Way::HttpImport,
        "exact/import 1",
        OTHER_VALUES / 2,
        &mut rng,
    );
    add(
        Way::HttpImport,
        "exact/import 2",
        OTHER_VALUES / 2,
        &mut rng,
    );
    for k in 0..3 {
        add(
            Way::Nats,
            &format!("exact/nats.{k}"),
            NATS_VALUES / 3,
            &mut rng,
        );
    }
    let total: usize = sensors.iter().map(|w| w.points.len()).sum();
    let count = |way: Way| -> usize {
        sensors
            .iter()
            .filter(|w| w.way == way)
            .map(|w| w.points.len())
            .sum()
    };
    assert!(count(Way::Nats) >= 300_000);
    for way in [Way::Trait, Way::Grpc, Way::HttpImport] {
        assert!(count(way) >= 100_000, "{way:?}");
    }
    let special_values = sensors
        .iter()
        .flat_map(|w| &w.points)
        .filter(|p| p.value == 0.0 && p.value.is_sign_negative())
        .count();
    assert!(
        special_values > 100,
        "-0.0 is among the values: {special_values}"
    );

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let running = Running::start(dir.path(), nats.url()).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stats = Arc::clone(&running.nats_stats);
    assert!(
        eventually(Duration::from_secs(20), || stats.snapshot().connects > 0).await,
        "the NATS consumer never connected"
    );

    // Every way in at once, as a server sees them.
    let started = Instant::now();
    let writes = sensors.iter().map(|written| {
        let (running, js) = (&running, &js);
        async move {
            match written.way {
                Way::Trait => write_through_the_trait(&running.storage, written).await,
                Way::Grpc => write_through_grpc(running, written).await,
                Way::HttpImport => write_through_http_import(running, written).await,
                Way::Nats => publish_through_nats(js, written).await,
            }
        }
    });
    futures_util::future::join_all(writes).await;
    let nats_points = count(Way::Nats) as u64;
    assert!(
        eventually(Duration::from_secs(60), || stats.snapshot().points
            >= nats_points)
        .await,
        "NATS points consumed: {} of {nats_points}",
        stats.snapshot().points
    );
    eprintln!(
        "bit-exact: {total} points written in {:?}",
        started.elapsed()
    );

    read_back_every_way(&running, &sensors, "running").await;
    running.stop().await;

    // Reopened: blocks from the checkpoints, the head replayed from the WAL.
    let running = Running::start(dir.path(), nats.url()).await;
    read_back_every_way(&running, &sensors, "reopened").await;
    running.stop().await;
}
