//! Online backup against `tar` of the data directory, and export speed
//! while a backup runs.
//!
//! Loads `BACKUP_BENCH_POINTS` points (default 100M; 10 sensors at 1 s,
//! values a random walk at full precision) into the embedded store by
//! import, reopens it, then times, in the same run, each a median of 3:
//!
//! - `tar -cf FILE -C DATA_DIR .` (the reference: a copy of the bytes, with
//!   no consistency; the store is open), as it is and with its file then
//!   fsynced, as the backup's is;
//! - `EmbeddedStore::backup_to` a file (what `GET /api/v1/admin/backup` and
//!   `engine backup` stream: a consistent snapshot, tar + zstd);
//! - an export of one sensor (scan + CSV encode), idle and while a backup
//!   runs in another thread, in 5 interleaved rounds.
//!
//! Both copies read a data directory that is in the page cache after the
//! load, and write to the same disk. Prints a markdown table.
//!
//! Run: `BACKUP_BENCH_POINTS=100000000 cargo bench --bench backup`.

use std::io::BufWriter;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use engine::csv_format::CsvEncoder;
use engine::model::{PointBatch, SensorId, TimeRange};
use engine::storage::StorageEngine;
use engine::storage::embedded::EmbeddedStore;
use futures_util::StreamExt;

const SENSORS: usize = 10;
const BATCH: usize = 65_536;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The three load averages of a `/proc/loadavg` line.
fn load_of(line: &str) -> String {
    line.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| size_of(&e.unwrap().path()))
            .sum()
    } else {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

/// One sensor's points as import batches.
fn batches(seed: u64, points: usize) -> engine::storage::PointStream {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut value = 20.0f64;
    let start = 1_767_225_600_000i64;
    let mut done = 0usize;
    futures_util::stream::iter(std::iter::from_fn(move || {
        if done >= points {
            return None;
        }
        let n = BATCH.min(points - done);
        let mut batch = PointBatch::with_capacity(n);
        for i in done..done + n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            value += ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.1;
            batch.timestamps.push(start + i as i64 * 1000);
            batch.values.push(value);
            batch.qualities.push(192);
        }
        done += n;
        Some(Ok(batch))
    }))
    .boxed()
}

async fn export_seconds(store: &EmbeddedStore, sensor: &SensorId) -> f64 {
    let started = Instant::now();
    let encoder = CsvEncoder::default();
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut scan = store.scan(sensor, TimeRange::ALL);
    while let Some(batch) = scan.next().await {
        buffer.clear();
        encoder.write_batch(&batch.unwrap(), &mut buffer);
        std::hint::black_box(&buffer);
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let points: usize = std::env::var("BACKUP_BENCH_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let work =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let data = work.path().join("data");
    let per_sensor = points / SENSORS;
    let load_started = Instant::now();
    {
        let store = EmbeddedStore::open(&data).unwrap();
        runtime.block_on(async {
            for s in 0..SENSORS {
                let id = SensorId::new(&format!("plant/sensor-{s}")).unwrap();
                store
                    .import(&id, batches(s as u64, per_sensor))
                    .await
                    .unwrap();
            }
            store.close().await.unwrap();
        });
    }
    let load = load_started.elapsed().as_secs_f64();
    let data_bytes = size_of(&data);
    let store = Arc::new(EmbeddedStore::open(&data).unwrap());
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let tar_file = work.path().join("data.tar");
    // `tar` alone leaves its file in the page cache; the backup fsyncs its
    // own (a backup that a power cut can lose is not one), so `tar` is
    // timed both ways: as it is, and with its file fsynced.
    let (mut tar_times, mut tar_synced_times) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let started = Instant::now();
        let status = Command::new("tar")
            .arg("-cf")
            .arg(&tar_file)
            .arg("-C")
            .arg(&data)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        tar_times.push(started.elapsed().as_secs_f64());
        std::fs::File::open(&tar_file).unwrap().sync_all().unwrap();
        tar_synced_times.push(started.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(&tar_file);
    }
    let (tar, tar_synced) = (median(tar_times), median(tar_synced_times));
    let backup_file = work.path().join("backup.tar.zst");
    let mut backup_bytes = 0;
    let backup = median(
        (0..3)
            .map(|_| {
                let started = Instant::now();
                let file = std::fs::File::create(&backup_file).unwrap();
                store.backup_to(BufWriter::new(&file)).unwrap();
                file.sync_all().unwrap();
                let took = started.elapsed().as_secs_f64();
                backup_bytes = std::fs::metadata(&backup_file).unwrap().len();
                let _ = std::fs::remove_file(&backup_file);
                took
            })
            .collect(),
    );

    // Idle and busy exports interleaved, so that a machine whose load
    // drifts during the run shifts both alike: each round an export with no
    // backup running, then one while backups run back to back in another
    // thread (started 200 ms before it).
    let sensor = SensorId::new("plant/sensor-0").unwrap();
    let (mut idle_times, mut during_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut backups_done = 0;
    for _ in 0..5 {
        let idle = runtime.block_on(export_seconds(&store, &sensor));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let backups = std::thread::spawn({
            let (store, running, file) = (store.clone(), running.clone(), backup_file.clone());
            move || {
                let mut count = 0;
                while running.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = std::fs::File::create(&file).unwrap();
                    store.backup_to(BufWriter::new(&out)).unwrap();
                    count += 1;
                }
                count
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        let during = runtime.block_on(export_seconds(&store, &sensor));
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        backups_done += backups.join().unwrap();
        idle_times.push(idle);
        during_times.push(during);
        ratios.push(during / idle);
    }
    let (idle, during, slowdown) = (median(idle_times), median(during_times), median(ratios));
    runtime.block_on(store.close()).unwrap();

    println!(
        "Backup of {points} points ({SENSORS} sensors, loaded by import in {load:.1} s; data directory {:.1} MB); \
         load average at start: {}, at end: {}",
        data_bytes as f64 / 1e6,
        load_of(&load_avg),
        load_of(&std::fs::read_to_string("/proc/loadavg").unwrap_or_default()),
    );
    println!();
    println!("| Measurement (median of 3; exports of 5) | Result | Target |");
    println!("|---|---|---|");
    println!("| reference: `tar -cf` of the data directory | {tar:.2} s | - |");
    println!("| reference: the same, its file then fsynced | {tar_synced:.2} s | - |");
    println!(
        "| online backup (`backup_to` a file, tar + zstd, fsynced) | {backup:.2} s, {:.1} MB | - |",
        backup_bytes as f64 / 1e6
    );
    println!(
        "| backup time / tar time (both fsynced) | {:.2}x | <= 2x |",
        backup / tar_synced
    );
    println!(
        "| backup time / tar time (tar not fsynced) | {:.2}x | |",
        backup / tar
    );
    println!(
        "| export of {per_sensor} points (scan + CSV), idle | {:.3} s ({:.1} M points/s) | - |",
        idle,
        per_sensor as f64 / idle / 1e6
    );
    println!(
        "| the same export while backups run ({backups_done} taken meanwhile) | {:.3} s ({:.1} M points/s) | - |",
        during,
        per_sensor as f64 / during / 1e6
    );
    println!(
        "| export slowdown during a backup (median of the 5 rounds' own ratios) | {:+.0}% | within 20% |",
        (slowdown - 1.0) * 100.0
    );
}
