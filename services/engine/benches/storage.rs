//! Storage benchmark: prints a markdown table of the foundation's targets.
//!
//! `cargo bench --bench storage` (release build). Each figure is the median
//! of several runs; PostgreSQL's `\copy` of the same CSV is measured in the
//! same run as a reference (skipped if `psql` cannot reach 127.0.0.1:5432).
//! `BENCH_RUNS` overrides the number of runs.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use engine::csv_format::read_points;
use engine::model::{Point, PointBatch, Sample, SensorId, TimeRange};
use engine::storage::StorageEngine;
use engine::storage::embedded::{EmbeddedOptions, EmbeddedStore};
use futures_util::StreamExt;

const POINTS: usize = 1_000_000;
const START_MS: i64 = 1_767_225_600_000;

struct Rng(u64);
impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random walk at 1 s intervals: full precision, or rounded to 0.01.
fn random_walk(seed: u64, quantised: bool) -> PointBatch {
    let mut rng = Rng(seed);
    let mut value = 100.0;
    (0..POINTS)
        .map(|i| {
            value += rng.next_f64() - 0.5;
            let v = if quantised {
                (value * 100.0).round() / 100.0
            } else {
                value
            };
            Point {
                timestamp_ms: START_MS + i as i64 * 1000,
                value: v,
                quality: if i % 1000 == 999 { 0 } else { 192 },
            }
        })
        .collect()
}

fn samples(id: &SensorId, batch: &PointBatch, from: usize, to: usize) -> Vec<Sample> {
    (from..to)
        .map(|i| Sample {
            sensor_id: id.clone(),
            seq: None,
            point: batch.point(i),
        })
        .collect()
}

fn open(dir: &Path) -> Arc<EmbeddedStore> {
    Arc::new(EmbeddedStore::open_with(dir, EmbeddedOptions::default()).expect("open"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes `batch` through the trait in batches of 100k points.
async fn bulk_write(store: &EmbeddedStore, id: &SensorId, batch: &PointBatch) {
    for from in (0..batch.len()).step_by(100_000) {
        let to = (from + 100_000).min(batch.len());
        store.write(samples(id, batch, from, to)).await.unwrap();
    }
}

/// Scans a range, returning (points, peak RSS growth over the start).
async fn scan(store: &EmbeddedStore, id: &SensorId, range: TimeRange) -> (usize, u64) {
    let base = rss_bytes();
    let mut peak = base;
    let mut points = 0;
    let mut stream = store.scan(id, range);
    let mut batches = 0u64;
    while let Some(batch) = stream.next().await {
        points += batch.unwrap().len();
        batches += 1;
        if batches.is_multiple_of(32) {
            peak = peak.max(rss_bytes());
        }
    }
    (points, peak.saturating_sub(base))
}

fn psql(args: &[&str]) -> Option<String> {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
        ])
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let full = random_walk(1, false);
    let quantised = random_walk(2, true);
    let mut rows: Vec<(String, String, String)> = Vec::new();

    runtime.block_on(async {
        // Bulk write through the trait, durable (WAL fsync per batch).
        let mut rates = Vec::new();
        for run in 0..runs {
            let dir = work.path().join(format!("write-{run}"));
            let store = open(&dir);
            let id = SensorId::new("bench/full").unwrap();
            let started = Instant::now();
            bulk_write(&store, &id, &full).await;
            rates.push(POINTS as f64 / started.elapsed().as_secs_f64());
            store.close().await.unwrap();
            drop(store);
            std::fs::remove_dir_all(&dir).unwrap();
        }
        rows.push((
            "Bulk write through the trait, durable (1M points, 100k per batch)".into(),
            format!("{:.2} M points/s", median(rates) / 1e6),
            ">= 1.5 M points/s".into(),
        ));

        // On-disk size.
        for (name, batch, target) in [
            ("full-precision random walk", &full, "aim 8"),
            ("random walk quantised to 0.01", &quantised, "aim 3"),
        ] {
            let dir = work.path().join(name.replace(' ', "-"));
            let store = open(&dir);
            bulk_write(&store, &SensorId::new("size").unwrap(), batch).await;
            store.close().await.unwrap();
            drop(store);
            rows.push((
                format!("On-disk size, {name} (whole data directory / points)"),
                format!("{:.2} bytes/point", dir_size(&dir) as f64 / POINTS as f64),
                format!("{target} (raw 17)"),
            ));
        }

        // Scan 1M points of one sensor stored among 3 others (4M points).
        let dir = work.path().join("scan");
        let store = open(&dir);
        let ids: Vec<SensorId> = (0..4)
            .map(|i| SensorId::new(&format!("plant/sensor-{i}")).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let batch = if i % 2 == 0 { &full } else { &quantised };
            bulk_write(&store, id, batch).await;
        }
        store.close().await.unwrap();
        drop(store);
        let store = open(&dir);
        for (id, label) in [(&ids[0], "full precision"), (&ids[1], "quantised 0.01")] {
            let mut rates = Vec::new();
            for _ in 0..runs.max(7) {
                let started = Instant::now();
                let (points, _) = scan(&store, id, TimeRange::ALL).await;
                assert_eq!(points, POINTS);
                rates.push(POINTS as f64 / started.elapsed().as_secs_f64());
            }
            rows.push((
                format!("Scan 1M points of one sensor among 4 (4M points), {label}"),
                format!("{:.0} M points/s", median(rates) / 1e6),
                ">= 50 M points/s".into(),
            ));
        }
        for points in [10_000usize, 1_000_000] {
            let range = TimeRange::new(START_MS, START_MS + points as i64 * 1000).unwrap();
            let growth: Vec<f64> = {
                let mut g = Vec::new();
                for _ in 0..3 {
                    let (n, grown) = scan(&store, &ids[0], range).await;
                    assert_eq!(n, points);
                    g.push(grown as f64);
                }
                g
            };
            rows.push((
                format!("Scan memory: peak RSS growth while scanning {points} points"),
                format!("{:.1} MiB", median(growth) / 1048576.0),
                "flat in the range".into(),
            ));
        }
        // Downsampling for the chart (M4 into 1000 buckets) over 1M points.
        let mut times = Vec::new();
        for _ in 0..runs.max(7) {
            let started = Instant::now();
            // The data's own span, as the dashboard asks: ~1000 points a bucket.
            let span = TimeRange::new(START_MS, START_MS + POINTS as i64 * 1000).unwrap();
            let out = store.downsample(&ids[0], span, 1000).await.unwrap();
            times.push(started.elapsed().as_secs_f64());
            assert_eq!(out.count, POINTS as u64);
        }
        rows.push((
            "Downsample 1M points to 1000 buckets (M4, for /api/v1/series)".into(),
            format!("{:.1} ms", median(times) * 1e3),
            "<= 50 ms".into(),
        ));
        store.close().await.unwrap();
        drop(store);

        // The same over 100M points: per-block summaries, not the points.
        if std::env::var("BENCH_SKIP_100M").is_err() {
            let dir = work.path().join("downsample-100m");
            let store = open(&dir);
            let id = SensorId::new("bench/100m").unwrap();
            for round in 0..100 {
                let mut batch = full.clone();
                for ts in &mut batch.timestamps {
                    *ts += round * POINTS as i64 * 1000;
                }
                bulk_write(&store, &id, &batch).await;
            }
            store.close().await.unwrap();
            drop(store);
            let store = open(&dir);
            let mut times = Vec::new();
            for _ in 0..runs.max(7) {
                let started = Instant::now();
                let span = TimeRange::new(START_MS, START_MS + 100 * POINTS as i64 * 1000).unwrap();
                let out = store.downsample(&id, span, 1000).await.unwrap();
                times.push(started.elapsed().as_secs_f64());
                assert_eq!(out.count, 100 * POINTS as u64);
            }
            rows.push((
                "Downsample 100M points to 1000 buckets".into(),
                format!("{:.1} ms", median(times) * 1e3),
                "<= 300 ms".into(),
            ));
            store.close().await.unwrap();
            drop(store);
            std::fs::remove_dir_all(&dir).unwrap();
        }

        // Import a 1M-row CSV, against PostgreSQL's \copy of the same file.
        let csv_path = work.path().join("import.csv");
        {
            let encoder = engine::csv_format::CsvEncoder::default();
            let mut bytes = Vec::new();
            encoder.write_header(&mut bytes);
            encoder.write_batch(&full, &mut bytes);
            std::fs::write(&csv_path, bytes).unwrap();
        }
        let mut ours = Vec::new();
        for run in 0..runs {
            let dir = work.path().join(format!("import-{run}"));
            let store = open(&dir);
            let file = std::fs::File::open(&csv_path).unwrap();
            let started = Instant::now();
            let summary = store
                .import(&SensorId::new("imported").unwrap(), read_points(file))
                .await
                .unwrap();
            ours.push(started.elapsed().as_secs_f64());
            assert_eq!(summary.points, POINTS as u64);
            drop(store);
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let ours = median(ours);
        rows.push((
            "Import a 1M-row CSV (engine import path, durable)".into(),
            format!("{:.3} s = {:.2} M rows/s", ours, POINTS as f64 / ours / 1e6),
            ">= 2 M rows/s".into(),
        ));
        let reference = psql(&[
            "-c",
            "DROP TABLE IF EXISTS bench_import; CREATE TABLE bench_import (sensor text NOT NULL DEFAULT 'imported', timestamp_ms bigint NOT NULL, value double precision, quality smallint, PRIMARY KEY (sensor, timestamp_ms))",
        ])
        .map(|_| {
            let mut times = Vec::new();
            for _ in 0..runs {
                psql(&["-c", "TRUNCATE bench_import"]).unwrap();
                let copy = format!(
                    "\\copy bench_import (timestamp_ms, value, quality) FROM '{}' WITH (FORMAT csv, HEADER)",
                    csv_path.display()
                );
                let started = Instant::now();
                psql(&["-c", &copy]).expect("\\copy");
                times.push(started.elapsed().as_secs_f64());
            }
            psql(&["-c", "DROP TABLE bench_import"]);
            median(times)
        });
        rows.push((
            "PostgreSQL 15 `\\copy` of the same file into a (sensor, ts)-keyed table".into(),
            match reference {
                Some(t) => format!("{t:.3} s = {:.2} M rows/s ({:.1}x slower)", POINTS as f64 / t / 1e6, t / ours),
                None => "not measured (psql unavailable)".into(),
            },
            "slower than ours".into(),
        ));
    });

    println!("| Measurement | Result (median of {runs}) | Target |");
    println!("|---|---|---|");
    for (name, result, target) in rows {
        println!("| {name} | {result} | {target} |");
    }
}
