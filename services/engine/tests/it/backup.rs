//! Online backup and restore, and retention.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use engine::model::{Point, TimeRange};
use engine::storage::embedded::{EmbeddedOptions, EmbeddedStore};
use engine::storage::{SharedStorage, StorageEngine};
use futures_util::StreamExt;
use reqwest::StatusCode;

use crate::support::{
    TestServer, as_shared, client, engine_bin, open_embedded, point, samples, scan_all, sensor,
};

/// Batch `b`: 200 points of one of four sensors, values unique to the batch.
fn batch(b: i64) -> (String, Vec<Point>) {
    let id = format!("backup/{}", b % 4);
    let points = (0..200)
        .map(|j| point(b * 200 + j, (b * 7919 + j) as f64 / 3.0, (j % 3 * 64) as u8))
        .collect();
    (id, points)
}

fn export(dir: &std::path::Path, sensor: &str) -> String {
    let output = std::process::Command::new(engine_bin())
        .args(["export", "--sensor", sensor, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn restore(backup: &std::path::Path, into: &std::path::Path) {
    let output = std::process::Command::new(engine_bin())
        .args(["restore", "--input"])
        .arg(backup)
        .arg("--data-dir")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn csv(points: &[Point]) -> String {
    let mut out = String::from("timestamp_ms,value,quality\n");
    for p in points {
        out.push_str(&format!(
            "{},{},{}\n",
            p.timestamp_ms,
            ryu::Buffer::new().format(p.value),
            p.quality
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_writing_holds_every_write_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    // A small head: folds and WAL rotations happen during the backup.
    let store = open_embedded(
        dir.path(),
        EmbeddedOptions {
            head_flush_points: 3_000,
            ..EmbeddedOptions::default()
        },
    )
    .await;
    let storage: SharedStorage = as_shared(store.clone());
    let server = TestServer::start(storage.clone()).await;

    // A writer that never stops until told to.
    let acknowledged = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (storage, acknowledged, stop) = (storage.clone(), acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let mut b = 0;
            while !stop.load(Ordering::Acquire) {
                let (id, points) = batch(b);
                storage.write(samples(&sensor(&id), points)).await.unwrap();
                b += 1;
                acknowledged.store(b, Ordering::Release);
            }
        })
    };
    while acknowledged.load(Ordering::Acquire) < 1500 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before_backup = acknowledged.load(Ordering::Acquire);
    let response = client()
        .get(server.url("/api/v1/admin/backup"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/zstd");
    let mut body = response.bytes_stream();
    let backup_file = dir.path().join("backup.tar.zst");
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        bytes.extend_from_slice(&chunk.unwrap());
        // Slow reader: the writer goes on during the backup.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(&backup_file, &bytes).unwrap();
    let after_backup = acknowledged.load(Ordering::Acquire);
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    assert!(
        after_backup > before_backup + 10,
        "the writer was held up by the backup"
    );

    let restored = tempfile::tempdir().unwrap();
    restore(&backup_file, &restored.path().join("store"));
    let restored_dir = restored.path().join("store");
    let store = open_embedded(&restored_dir, EmbeddedOptions::default()).await;
    let mut present = BTreeSet::new();
    for b in 0..after_backup {
        let (id, points) = batch(b);
        let stored = scan_all(
            &*store,
            &sensor(&id),
            TimeRange::new(points[0].timestamp_ms, points[199].timestamp_ms + 1).unwrap(),
        )
        .await;
        match stored.len() {
            0 => assert!(
                b >= before_backup,
                "batch {b}, acknowledged before the backup, is missing"
            ),
            200 => {
                assert_eq!(stored, points, "batch {b}");
                present.insert(b);
            }
            n => panic!("batch {b} is half in the backup ({n} of 200)"),
        }
    }
    drop(store);
    // Byte-identical exports: exactly the batches found, nothing else.
    for s in 0..4 {
        let id = format!("backup/{s}");
        let expected: Vec<Point> = present
            .iter()
            .filter(|b| *b % 4 == s)
            .flat_map(|&b| batch(b).1)
            .collect();
        assert_eq!(export(&restored_dir, &id), csv(&expected), "{id}");
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_backs_up_a_stopped_store_and_restores_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = EmbeddedStore::open(&data).unwrap();
        for b in 0..50 {
            let (id, points) = batch(b);
            store.write_blocking(samples(&sensor(&id), points)).unwrap();
        }
        store
            .write_blocking(samples(
                &sensor("Kessel Ü1/Temperatur"),
                [point(-5, -0.0, 0)],
            ))
            .unwrap();
        // No close: part of it lives only in the WAL, which the backup opens.
    }
    let file = dir.path().join("b.tar.zst");
    let output = std::process::Command::new(engine_bin())
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg("--output")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let restored = dir.path().join("restored");
    restore(&file, &restored);
    for id in [
        "backup/0",
        "backup/1",
        "backup/2",
        "backup/3",
        "Kessel Ü1/Temperatur",
    ] {
        assert_eq!(export(&restored, id), export(&data, id), "{id}");
    }
    // Restoring over an existing store is refused.
    let output = std::process::Command::new(engine_bin())
        .args(["restore", "--input"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_blocks_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions {
        head_flush_points: 10_000,
        ..EmbeddedOptions::default()
    };
    let store = open_embedded(dir.path(), options.clone()).await;
    let storage: SharedStorage = as_shared(store.clone());
    let day = 86_400_000i64;
    // 60 days of one point a minute for two sensors, plus one kept apart.
    let old: Vec<Point> = (0..60 * 1440)
        .map(|i| point(i * 60_000, i as f64, 192))
        .collect();
    for id in ["plant/a", "plant/b", "lab/c"] {
        storage
            .write(samples(&sensor(id), old.clone()))
            .await
            .unwrap();
    }
    let store = {
        storage.close().await.unwrap();
        drop(storage);
        drop(store);
        open_embedded(dir.path(), options.clone()).await
    };
    let storage: SharedStorage = as_shared(store.clone());
    let rules = vec![
        "plant/b=1000d".parse().unwrap(),
        "plant/*=30d".parse().unwrap(),
    ];
    let now = 60 * day;
    let pass = engine::retention::apply(&storage, &rules, now)
        .await
        .unwrap();
    assert_eq!(pass.sensors, 1, "only plant/a is past its age");
    let cutoff = now - 30 * day;
    let a = scan_all(&*storage, &sensor("plant/a"), TimeRange::ALL).await;
    // Whole blocks only: nothing at or after the cutoff goes, and what is
    // left before it is less than one block.
    assert!(a.iter().filter(|p| p.timestamp_ms >= cutoff).count() == (30 * 1440) as usize);
    let kept_before = a.iter().filter(|p| p.timestamp_ms < cutoff).count();
    assert!(
        kept_before < 4096,
        "{kept_before} points before the cutoff kept"
    );
    assert_eq!(pass.dropped.points as usize, old.len() - a.len());
    assert!(pass.dropped.bytes > 0);
    let info = storage.sensor(&sensor("plant/a")).await.unwrap().unwrap();
    assert_eq!(info.count as usize, a.len());
    assert_eq!(info.first_timestamp_ms, a[0].timestamp_ms);
    assert_eq!(
        scan_all(&*storage, &sensor("plant/b"), TimeRange::ALL).await,
        old
    );
    assert_eq!(
        scan_all(&*storage, &sensor("lab/c"), TimeRange::ALL).await,
        old
    );

    // A rule that covers everything: the sensor leaves the list, and comes
    // back when written again.
    let all: Vec<engine::retention::RetentionRule> = vec!["lab/**=1d".parse().unwrap()];
    engine::retention::apply(&storage, &all, 1000 * day)
        .await
        .unwrap();
    let ids: Vec<String> = storage
        .sensors()
        .await
        .unwrap()
        .iter()
        .map(|s| s.sensor_id.to_string())
        .collect();
    assert_eq!(ids, vec!["plant/a", "plant/b"]);
    storage
        .write(samples(&sensor("lab/c"), [point(5, 5.0, 192)]))
        .await
        .unwrap();
    storage.close().await.unwrap();
    drop(storage);
    drop(store);
    let store = open_embedded(dir.path(), options).await;
    assert_eq!(
        scan_all(&*store, &sensor("lab/c"), TimeRange::ALL).await,
        vec![point(5, 5.0, 192)]
    );
    assert_eq!(
        store
            .sensor(&sensor("plant/a"))
            .await
            .unwrap()
            .unwrap()
            .count as usize,
        a.len()
    );
}
