//! A full disk under a running store (a real tmpfs, mounted small and then
//! grown): writes are refused cleanly while it is full, nothing refused
//! shows up later, reads go on, and writes work again once there is room,
//! without a restart.
//!
//! Needs root (mount); CI runs as root. Without it the test says so and
//! fails, rather than pass without having run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use engine::model::{Point, TimeRange};
use engine::storage::embedded::EmbeddedOptions;
use engine::storage::{StorageEngine, StorageError, StoreHealth};

use crate::support::{open_embedded, point, samples, scan_all, sensor};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
pub struct SmallDisk {
    _base: tempfile::TempDir,
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(size: &str) -> Self {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the full-disk tests run as root in CI)"
        );
        Self { _base: base, path }
    }

    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {size}");
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn batch(b: i64) -> Vec<Point> {
    // Full-precision values: they compress badly, so the disk fills.
    (0..1000)
        .map(|j| point(b * 1000 + j, ((b * 1000 + j) as f64).sin() * 1e3, 192))
        .collect()
}

async fn wait_for(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dir_size(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .map(|p| p.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_then_recovers_without_a_restart() {
    let disk = SmallDisk::mount("3m");
    let dir = disk.dir("store");
    let options = EmbeddedOptions {
        // Folds (redb commits) all the time, so the disk fills under them too.
        head_flush_points: 20_000,
        ..EmbeddedOptions::default()
    };
    let store = open_embedded(&dir, options.clone()).await;
    let id = sensor("plant/full");
    let mut acknowledged = 0i64;
    let refused = loop {
        match store.write(samples(&id, batch(acknowledged))).await {
            Ok(()) => acknowledged += 1,
            Err(error) => break error,
        }
        assert!(acknowledged < 10_000, "the disk never filled");
    };
    assert!(matches!(refused, StorageError::Full(_)), "{refused}");
    assert!(acknowledged > 10, "only {acknowledged} batches fit");
    assert!(
        matches!(store.health(), StoreHealth::Degraded(_)),
        "{:?}",
        store.health()
    );
    // Reads go on; the refused batch is nowhere; acknowledged ones all are.
    let read = scan_all(&*store, &id, TimeRange::ALL).await;
    let expected: Vec<Point> = (0..acknowledged).flat_map(batch).collect();
    assert_eq!(read, expected);
    // Trying again is refused the same way, or taken whole if a fold
    // finishing meanwhile freed WAL space: never half-written.
    match store.write(samples(&id, batch(acknowledged))).await {
        Ok(()) => acknowledged += 1,
        Err(error) => assert!(matches!(error, StorageError::Full(_)), "{error}"),
    }
    let expected: Vec<Point> = (0..acknowledged).flat_map(batch).collect();
    assert_eq!(
        store.sensor(&id).await.unwrap().unwrap().count,
        expected.len() as u64
    );

    // Room again: the same store takes the refused batch and more.
    disk.resize("64m");
    wait_for("the refused batch is taken", async || {
        store.write(samples(&id, batch(acknowledged))).await.is_ok()
    })
    .await;
    acknowledged += 1;
    for _ in 0..40 {
        store
            .write(samples(&id, batch(acknowledged)))
            .await
            .unwrap();
        acknowledged += 1;
    }
    wait_for("the store is healthy again", async || {
        store.health() == StoreHealth::Ok && store.frozen_heads() == 0
    })
    .await;
    let expected: Vec<Point> = (0..acknowledged).flat_map(batch).collect();
    assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await, expected);
    store.close().await.unwrap();
    drop(store);
    assert!(walk(&dir.join("staging")).is_empty());
    let store = open_embedded(&dir, options).await;
    assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await, expected);
    assert!(dir_size(&dir) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_does_not_fit_stores_nothing_and_the_next_one_works() {
    let disk = SmallDisk::mount("2m");
    let dir = disk.dir("store");
    let store = open_embedded(&dir, EmbeddedOptions::default()).await;
    let id = sensor("imported");
    store.write(samples(&id, batch(0))).await.unwrap();
    let big: Vec<Result<engine::model::PointBatch, StorageError>> = (1..200)
        .map(|b| Ok(batch(b).into_iter().collect()))
        .collect();
    let error = store
        .import(
            &id,
            futures_util::StreamExt::boxed(futures_util::stream::iter(big)),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::Full(_)), "{error}");
    assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await, batch(0));
    assert!(
        walk(&dir.join("staging")).is_empty(),
        "the staging file is gone"
    );
    let small: Vec<Result<engine::model::PointBatch, StorageError>> =
        vec![Ok(batch(1).into_iter().collect())];
    store
        .import(
            &id,
            futures_util::StreamExt::boxed(futures_util::stream::iter(small)),
        )
        .await
        .unwrap();
    let expected: Vec<Point> = (0..2).flat_map(batch).collect();
    assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await, expected);
}
