//! A full disk under the whole server: `engine serve` with its data
//! directory on a small tmpfs, written to over NATS, HTTP import and gRPC
//! until the disk is full, folds (checkpoints) running all along (a small
//! `--head-flush-points`), then the disk grown (remounted bigger) with no
//! restart. Meanwhile a backup is taken: into a file on the full disk (it
//! fails there, and the server does not care), and into memory (it works
//! and restores every write acknowledged before it).
//!
//! Promises checked: `/healthz` stays 200 while `/readyz` says 503
//! "degraded"; gRPC answers RESOURCE_EXHAUSTED and import 507; every path
//! takes writes again once there is room; nothing acknowledged is lost and
//! NATS messages held back meanwhile all land.
//!
//! Needs root (mount), like `full_disk`.

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use engine::grpc::pb::WriteRequest;
use futures_util::StreamExt;

use crate::full_disk::SmallDisk;
use crate::grpc::{connect_engine, point, scan_all};
use crate::ingest_support::{Engine, NatsServer};
use crate::nats::{points_message, value_of};

const NATS_POINTS: i64 = 500;
const GRPC_POINTS: i64 = 1000;
const IMPORT_POINTS: i64 = 2000;

fn import_csv(k: i64) -> String {
    let mut csv = String::from("timestamp_ms,value,quality\n");
    for ts in 0..IMPORT_POINTS {
        csv.push_str(&format!("{ts},{:?},192\n", value_of(ts + k * 7919, 3)));
    }
    csv
}

fn grpc_request(batch: i64) -> WriteRequest {
    WriteRequest {
        points: (batch * GRPC_POINTS..(batch + 1) * GRPC_POINTS)
            .map(|ts| point("fd/grpc", ts, value_of(ts, 1)))
            .collect(),
    }
}

fn wal_segments(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("wal"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "wal"))
                .count()
        })
        .unwrap_or(0)
}

/// Publishes the `n`th NATS message of the test and returns its stream
/// sequence once JetStream has it.
async fn publish_nats(js: &async_nats::jetstream::Context, n: i64) -> u64 {
    let payload = points_message("fd/nats", n * NATS_POINTS, NATS_POINTS, 0);
    js.publish("sensors.fd", payload.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

async fn status(http: &reqwest::Client, url: String) -> (u16, String) {
    let response = http.get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_fills_its_disk_on_every_path_and_recovers_when_it_grows() {
    let disk = SmallDisk::mount("8m");
    let data = disk.dir("data");
    let nats = NatsServer::start();
    let engine = Engine::start(
        &data,
        &["--nats-url", &nats.url(), "--head-flush-points", "20000"],
    );
    let base = format!("http://127.0.0.1:{}", engine.http_port);
    let http = reqwest::Client::new();
    let mut grpc = connect_engine(engine.grpc_url()).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.get_stream("SENSORS").await.is_err() {
        assert!(Instant::now() < deadline, "no stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Fill: every round a NATS message, a gRPC write, and every fourth an
    // import, until gRPC and import are both refused.
    let mut nats_messages = 0i64;
    let mut last_seq = 0;
    let mut grpc_acked: Vec<i64> = Vec::new();
    let mut imports_acked: Vec<i64> = Vec::new();
    let (mut grpc_full, mut import_full) = (false, false);
    let mut most_segments = 0;
    for round in 0i64.. {
        assert!(round < 20_000, "the disk never filled");
        last_seq = publish_nats(&js, nats_messages).await;
        nats_messages += 1;
        if !grpc_full {
            let batch = grpc_acked.len() as i64;
            match grpc
                .write(futures_util::stream::iter(vec![grpc_request(batch)]))
                .await
            {
                Ok(_) => grpc_acked.push(batch),
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                    grpc_full = true;
                }
            }
        }
        if !import_full && round % 4 == 0 {
            let k = imports_acked.len() as i64;
            let response = http
                .post(format!("{base}/api/v1/import?sensor_id=fd%2Fimport%2F{k}"))
                .body(import_csv(k))
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                200 => imports_acked.push(k),
                507 => import_full = true,
                other => panic!(
                    "import answered {other}: {}",
                    response.text().await.unwrap()
                ),
            }
        }
        most_segments = most_segments.max(wal_segments(&data));
        if grpc_full && import_full {
            break;
        }
    }
    assert!(grpc_acked.len() > 5 && imports_acked.len() > 2);

    // Full: alive, not ready; reads go on.
    let (code, body) = status(&http, format!("{base}/healthz")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = status(&http, format!("{base}/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("degraded"), "{body}");
    let (code, _) = status(
        &http,
        format!("{base}/api/v1/export?sensor_id=fd%2Fgrpc&start_ts=0&end_ts=1000"),
    )
    .await;
    assert_eq!(code, 200);
    // A few more NATS messages arrive while it is full: they must wait.
    for _ in 0..5 {
        last_seq = publish_nats(&js, nats_messages).await;
        nats_messages += 1;
    }

    // A backup into a file on the full disk fails at the client's end; the
    // server carries on. One into memory works and restores every write
    // acknowledged so far.
    let mut download = http
        .get(format!("{base}/api/v1/admin/backup"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes_stream();
    let mut file = std::fs::File::create(disk.path.join("backup.tar.zst")).unwrap();
    let mut refused = None;
    while let Some(chunk) = download.next().await {
        if let Err(error) = file.write_all(&chunk.unwrap()).and_then(|()| file.flush()) {
            refused = Some(error);
            break;
        }
    }
    drop(download);
    drop(file);
    let refused = refused.expect("a backup fits on a full disk");
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    let _ = std::fs::remove_file(disk.path.join("backup.tar.zst"));
    let backup = http
        .get(format!("{base}/api/v1/admin/backup"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let backup_file = elsewhere.path().join("full.tar.zst");
    std::fs::write(&backup_file, &backup).unwrap();
    let restored = elsewhere.path().join("restored");
    let output = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["restore", "--input"])
        .arg(&backup_file)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let output = Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["sensors", "--data-dir"])
        .arg(&restored)
        .output()
        .unwrap();
    let listing = String::from_utf8(output.stdout).unwrap();
    let count_of = |id: &str| {
        listing
            .lines()
            .find(|line| line.split('\t').next() == Some(id))
            .and_then(|line| line.split('\t').nth(1))
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        count_of("fd/grpc"),
        grpc_acked.len() as i64 * GRPC_POINTS,
        "{listing}"
    );
    for k in &imports_acked {
        assert_eq!(
            count_of(&format!("fd/import/{k}")),
            IMPORT_POINTS,
            "{listing}"
        );
    }
    let (code, _) = status(&http, format!("{base}/healthz")).await;
    assert_eq!(code, 200);

    // Room again: every path takes writes, without a restart.
    let full_at = Instant::now();
    disk.resize("256m");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let batch = grpc_acked.len() as i64;
        if grpc
            .write(futures_util::stream::iter(vec![grpc_request(batch)]))
            .await
            .is_ok()
        {
            grpc_acked.push(batch);
            break;
        }
        assert!(Instant::now() < deadline, "gRPC writes did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let k = imports_acked.len() as i64;
    let response = http
        .post(format!("{base}/api/v1/import?sensor_id=fd%2Fimport%2F{k}"))
        .body(import_csv(k))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "import after the disk grew"
    );
    imports_acked.push(k);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = crate::nats::consumer_info(&js).await;
        if info.ack_floor.stream_sequence == last_seq && info.num_pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "NATS did not catch up: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed = full_at.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&http, format!("{base}/readyz")).await.0 != 200 || wal_segments(&data) > 3 {
        assert!(
            Instant::now() < deadline,
            "not ready, or folds not caught up ({} WAL segments)",
            wal_segments(&data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing acknowledged lost, every value bit for bit.
    let stored = scan_all(&mut grpc, "fd/grpc").await.unwrap();
    assert_eq!(stored.len() as i64, grpc_acked.len() as i64 * GRPC_POINTS);
    for (i, (ts, value)) in stored.iter().enumerate() {
        assert_eq!(*ts, i as i64);
        assert_eq!(value.to_bits(), value_of(*ts, 1).to_bits());
    }
    let stored = scan_all(&mut grpc, "fd/nats").await.unwrap();
    assert_eq!(stored.len() as i64, nats_messages * NATS_POINTS);
    for (i, (ts, value)) in stored.iter().enumerate() {
        assert_eq!(*ts, i as i64);
        assert_eq!(value.to_bits(), value_of(*ts, 0).to_bits());
    }
    for k in &imports_acked {
        let stored = scan_all(&mut grpc, &format!("fd/import/{k}"))
            .await
            .unwrap();
        assert_eq!(stored.len() as i64, IMPORT_POINTS);
        for (ts, value) in stored {
            assert_eq!(value.to_bits(), value_of(ts + k * 7919, 3).to_bits());
        }
    }
    eprintln!(
        "full disk (engine): {} gRPC batches, {} imports, {nats_messages} NATS messages; \
         up to {most_segments} WAL segments while filling (folds waiting); \
         every path writing again {:.1} s after the disk grew",
        grpc_acked.len(),
        imports_acked.len(),
        resumed.as_secs_f64()
    );
}
