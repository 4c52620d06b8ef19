//! A full disk under a running `engine serve` (a real tmpfs, mounted small,
//! then grown): NATS ingestion pauses with its messages unacknowledged, HTTP
//! import and gRPC `Write` are refused with their specific answers, the
//! health endpoints tell the truth, and once the filesystem grows every
//! published point lands exactly once with its last published value,
//! without a restart, and nothing of a refused import or write shows up.
//!
//! Needs root (mount), like `full_disk`.

use std::time::{Duration, Instant};

use engine::grpc::pb::{Point as PbPoint, WriteRequest};

use crate::full_disk::SmallDisk;
use crate::grpc::{connect_engine, scan_all};
use crate::ingest_support::{Engine, NatsServer};
use crate::nats::{consumer_info, points_message, value_of, wait_for_consumer};

/// Points per NATS message.
const POINTS: i64 = 500;
/// Distinct chunks of `POINTS` published once, then the first `REWRITES`
/// of them published again with other values: about 300,000 points, far
/// more than the 4 MiB filesystem holds.
const CHUNKS: i64 = 500;
const REWRITES: i64 = 100;

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("HTTP request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn wait_until(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn grpc_points(sensor: &str, count: i64) -> Vec<PbPoint> {
    (0..count)
        .map(|ts| PbPoint {
            sensor_id: sensor.into(),
            timestamp_ms: ts,
            value: Some(value_of(ts, 7)),
            quality: 192,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engine_on_a_full_disk_pauses_then_takes_every_point_without_a_restart() {
    let disk = SmallDisk::mount("4m");
    let data_dir = disk.dir("store");
    let nats = NatsServer::start();
    let engine = Engine::start(&data_dir, &["--nats-url", &nats.url()]);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    wait_for_consumer(&js).await;

    // Publish everything; publish index `p` gives chunk `plan[p]` the
    // values of `p`, so the rewrites are the last values of their chunks.
    let plan: Vec<i64> = (0..CHUNKS).chain(0..REWRITES).collect();
    let mut acks = Vec::new();
    for (publish, &chunk) in plan.iter().enumerate() {
        let payload = points_message("full/f", chunk * POINTS, POINTS, publish as u64);
        acks.push(js.publish("sensors.f", payload.into()).await.unwrap());
    }
    let mut last_seq = 0;
    for ack in acks {
        last_seq = last_seq.max(ack.await.unwrap().sequence);
    }
    assert_eq!(last_seq, plan.len() as u64);

    // The disk fills: not ready, still alive, messages left unacknowledged.
    wait_until(
        "the engine reports a full disk",
        Duration::from_secs(60),
        async || get(&engine.http_url("/readyz")).await.0 == 503,
    )
    .await;
    let (status, body) = get(&engine.http_url("/healthz")).await;
    assert_eq!(status, 200, "a full disk is no reason to restart: {body}");
    assert!(body.contains("degraded"), "{body}");
    let (_, ready) = get(&engine.http_url("/readyz")).await;
    assert!(ready.contains("space"), "readyz names the reason: {ready}");
    let stalled = consumer_info(&js).await;
    assert!(
        stalled.ack_floor.stream_sequence < last_seq,
        "not everything fit, yet all was acknowledged: {stalled:?}"
    );

    // HTTP import: 507 with its JSON error, nothing stored.
    let csv: String = std::iter::once("timestamp_ms,value,quality\n".to_owned())
        .chain((0..200_000).map(|ts| format!("{ts},{},192\n", value_of(ts, 9))))
        .collect();
    let response = reqwest::Client::new()
        .post(engine.http_url("/api/v1/import?sensor_id=full%2Fimported"))
        .body(csv)
        .send()
        .await
        .unwrap();
    // The server answers as soon as staging fails, before the upload ends,
    // and may close the connection with the request body unread: the body
    // of the answer can then be lost to the reset, never its status.
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 507, "{body}");
    assert!(
        body.is_empty() || body.contains("insufficient_storage"),
        "{body}"
    );

    // gRPC Write: RESOURCE_EXHAUSTED, nothing stored.
    let mut grpc = connect_engine(engine.grpc_url()).await;
    let refused = grpc
        .write(futures_util::stream::iter(vec![WriteRequest {
            points: grpc_points("full/grpc", 100_000),
        }]))
        .await
        .expect_err("a 100,000-point write on a full disk");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // Reads go on meanwhile.
    assert!(!scan_all(&mut grpc, "full/f").await.unwrap().is_empty());

    // Room again: everything lands without a restart.
    disk.resize("256m");
    wait_until(
        "every message is acknowledged",
        Duration::from_secs(120),
        async || {
            let info = consumer_info(&js).await;
            info.ack_floor.stream_sequence == last_seq
                && info.num_ack_pending == 0
                && info.num_pending == 0
        },
    )
    .await;
    wait_until("ready again", Duration::from_secs(30), async || {
        get(&engine.http_url("/readyz")).await.0 == 200
    })
    .await;
    let stored = scan_all(&mut grpc, "full/f").await.unwrap();
    assert_eq!(stored.len(), (CHUNKS * POINTS) as usize, "every point once");
    for (i, (ts, value)) in stored.iter().enumerate() {
        assert_eq!(*ts, i as i64, "contiguous from 0");
        let chunk = ts / POINTS;
        let last_publish = plan.iter().rposition(|&c| c == chunk).unwrap() as u64;
        assert_eq!(
            value.to_bits(),
            value_of(*ts, last_publish).to_bits(),
            "at {ts}: the last published value"
        );
    }
    for refused in ["full%2Fimported", "full%2Fgrpc"] {
        let (status, body) = get(&engine.http_url(&format!("/api/v1/sensors/{refused}"))).await;
        assert_eq!(status, 404, "nothing of a refused write is stored: {body}");
    }
    // The same engine takes writes on every path again.
    grpc.write(futures_util::stream::iter(vec![WriteRequest {
        points: grpc_points("full/grpc", 1_000),
    }]))
    .await
    .unwrap();
    assert_eq!(scan_all(&mut grpc, "full/grpc").await.unwrap().len(), 1_000);
    eprintln!(
        "full disk under a served engine: {} of {last_seq} messages acknowledged when it filled",
        stalled.ack_floor.stream_sequence
    );
}
