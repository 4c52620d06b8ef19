//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use engine::model::{Point, PointBatch, Sample, SensorId, TimeRange};
use engine::storage::embedded::{EmbeddedOptions, EmbeddedStore};
use engine::storage::{SharedStorage, StorageEngine, StorageError};
use futures_util::StreamExt;

/// A deterministic generator (xorshift64*), so tests need no crate and every
/// failure can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[low, high)`.
    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next_u64() % (high - low) as u64) as i64
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

pub fn sensor(id: &str) -> SensorId {
    SensorId::new(id).unwrap()
}

pub fn point(timestamp_ms: i64, value: f64, quality: u8) -> Point {
    Point {
        timestamp_ms,
        value,
        quality,
    }
}

pub fn samples(sensor_id: &SensorId, points: impl IntoIterator<Item = Point>) -> Vec<Sample> {
    points
        .into_iter()
        .map(|point| Sample {
            sensor_id: sensor_id.clone(),
            point,
        })
        .collect()
}

/// Reads a whole scan, checking the stream's own promises on the way: no
/// empty batch, strictly increasing timestamps across batches.
pub async fn scan_all(
    store: &dyn StorageEngine,
    sensor_id: &SensorId,
    range: TimeRange,
) -> Vec<Point> {
    let mut stream = store.scan(sensor_id, range);
    let mut points: Vec<Point> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch: PointBatch = batch.expect("scan failed");
        assert!(!batch.is_empty(), "a scan yielded an empty batch");
        for p in batch.iter() {
            if let Some(last) = points.last() {
                assert!(
                    last.timestamp_ms < p.timestamp_ms,
                    "scan out of order at {}",
                    p.timestamp_ms
                );
            }
            assert!(
                range.contains(p.timestamp_ms),
                "{} outside {range:?}",
                p.timestamp_ms
            );
            points.push(p);
        }
    }
    points
}

/// Opens an embedded store on a blocking thread.
///
/// Retries for a moment while the directory reads as locked: this test
/// process spawns child processes from other threads, and between fork and
/// exec a child holds copies of our file descriptors, the lock's among them.
/// A real second opener is tested with `EmbeddedStore::open` directly.
pub async fn open_embedded(dir: &Path, options: EmbeddedOptions) -> Arc<EmbeddedStore> {
    for attempt in 0.. {
        let (dir, options) = (dir.to_owned(), options.clone());
        match tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, options))
            .await
            .unwrap()
        {
            Ok(store) => return Arc::new(store),
            Err(StorageError::Locked { .. }) if attempt < 100 => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open store: {e}"),
        }
    }
    unreachable!()
}

pub fn as_shared(store: Arc<EmbeddedStore>) -> SharedStorage {
    store
}

/// The `engine` binary built for these tests.
pub fn engine_bin() -> &'static str {
    env!("CARGO_BIN_EXE_engine")
}
