//! Storage footprint: bytes per point on disk for three kinds of data, and
//! where they go (column by column, summaries, the file's own overhead).
//!
//! `cargo bench --bench footprint`. Each data set is 1M points imported into
//! a fresh store through `engine import`'s path (the CSV reader and
//! `StorageEngine::import`), then closed; `blocks.redb` is measured as the
//! file system sees it (apparent length, allocated blocks).

use std::sync::Arc;

use engine::csv_format::{CsvEncoder, read_points};
use engine::model::{Point, PointBatch, SensorId};
use engine::storage::StorageEngine;
use engine::storage::embedded::EmbeddedStore;

const POINTS: usize = 1_000_000;
const START_MS: i64 = 1_767_225_600_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random walk; `step_ms` gives each step (regular or irregular).
fn data(quantised: bool, mut step_ms: impl FnMut(&mut Rng) -> i64) -> PointBatch {
    let mut rng = Rng(0x5EED);
    let (mut value, mut ts) = (100.0, START_MS);
    (0..POINTS)
        .map(|_| {
            value += rng.unit() - 0.5;
            ts += step_ms(&mut rng);
            Point {
                timestamp_ms: ts,
                value: if quantised {
                    (value * 100.0).round() / 100.0
                } else {
                    value
                },
                quality: 192,
            }
        })
        .collect()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sets: [(&str, PointBatch, (f64, f64)); 3] = [
        (
            "regular 1 s, quantised to 0.01",
            data(true, |_| 1000),
            (1.2, 1.2),
        ),
        (
            "regular 1 s, full precision",
            data(false, |_| 1000),
            (8.0, 8.0),
        ),
        (
            "irregular 1-199 ms, full precision",
            data(false, |rng| 1 + (rng.next() % 199) as i64),
            (10.0, 10.0),
        ),
    ];
    println!(
        "| data (1M points, imported) | allocated / apparent bytes per point | target | encoded: timestamps / values / qualities / versions / headers / summaries | blocks |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, batch, target) in sets {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = Vec::with_capacity(POINTS * 32);
        let encoder = CsvEncoder::default();
        encoder.write_header(&mut csv);
        encoder.write_batch(&batch, &mut csv);
        let footprint = runtime.block_on(async {
            let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
            store
                .import(
                    &SensorId::new("s").unwrap(),
                    read_points(std::io::Cursor::new(csv)),
                )
                .await
                .unwrap();
            store.close().await.unwrap();
            store.footprint().unwrap()
        });
        assert_eq!(footprint.points, POINTS as u64);
        let per_point = |bytes: u64| bytes as f64 / POINTS as f64;
        println!(
            "| {name} | {:.2} / {:.2} | <= {} / {} | {:.2} / {:.2} / {:.3} / {:.3} / {:.3} / {:.3} | {} |",
            per_point(footprint.file_allocated),
            per_point(footprint.file_apparent),
            target.0,
            target.1,
            per_point(footprint.columns[1]),
            per_point(footprint.columns[2]),
            per_point(footprint.columns[3]),
            per_point(footprint.columns[4]),
            per_point(footprint.columns[0]),
            per_point(footprint.summary_bytes),
            footprint.blocks,
        );
    }
}
