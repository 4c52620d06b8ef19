//! Export for analysts benchmark: `cargo bench --bench export_analysts`.
//!
//! Serves the HTTP API on 127.0.0.1:0 in this process over the embedded
//! store in a temporary directory and downloads with `curl` (a separate
//! process). Prints a markdown table of medians with the references measured
//! in the same run:
//!
//! - Parquet, 1M rows of one sensor, against DuckDB's `COPY (SELECT ...) TO
//!   'x.parquet' (FORMAT parquet, COMPRESSION zstd)` from its own table of
//!   the same rows (DuckDB from PyPI in `.venv-bench`, made by
//!   `scripts/python-bench-env`; skipped if it cannot be installed).
//! - Wide and long CSV of 10 sensors x 1M points.
//! - `interval=1m&aggregate=mean,min,max,time_weighted_mean` over 10M points.
//! - Peak RSS growth of a wide export of 100 sensors.
//! - The 1M-row export compressed as Chromium asks (zstd) and with gzip,
//!   against the uncompressed one.
//! - `GET /api/v1/export/summary` over 100M stored points.
//!
//! Environment: `EXPORT_BENCH_RUNS` (default 5), `SUMMARY_POINTS` (default
//! 100,000,000).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::http::{self, HttpConfig};
use engine::model::{Point, PointBatch, SensorId};
use engine::storage::embedded::EmbeddedStore;
use engine::storage::{SharedStorage, StorageEngine};
use futures_util::StreamExt;

/// 2025-01-01T00:00:00Z; one point a second from here.
const START_MS: i64 = 1_735_689_600_000;
const MILLION: usize = 1_000_000;

/// A plant-like signal: a slow wave, noise, 6 decimals; every 997th bad.
fn point(sensor: usize, i: usize) -> Point {
    let wave = 20.0
        + 5.0 * ((i + sensor * 977) as f64 / 3600.0).sin()
        + ((i * 7919 + sensor) % 1000) as f64 * 1e-3;
    Point {
        timestamp_ms: START_MS + i as i64 * 1000,
        value: (wave * 1e6).round() / 1e6,
        quality: if i.is_multiple_of(997) { 0 } else { 192 },
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// One curl download: (seconds to last byte, bytes), saved to `out` or dropped.
fn curl(url: &str, extra: &[&str], out: &str) -> (f64, u64) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-o",
            out,
            "-w",
            "%{time_total} %{size_download}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    let total = fields
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or(f64::NAN);
    let bytes = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    (total, bytes)
}

fn timed(runs: usize, url: &str, extra: &[&str]) -> (f64, u64) {
    let (seconds, bytes, _) = timed_with_cpu(runs, url, extra);
    (seconds, bytes)
}

/// Median seconds to last byte, bytes, and median CPU seconds a download
/// cost: the server (this process) and curl together.
fn timed_with_cpu(runs: usize, url: &str, extra: &[&str]) -> (f64, u64, f64) {
    curl(url, extra, "/dev/null");
    let mut seconds = Vec::with_capacity(runs);
    let mut cpu = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let before = cpu_seconds();
        let (s, b) = curl(url, extra, "/dev/null");
        cpu.push(cpu_seconds() - before);
        seconds.push(s);
        bytes = b;
    }
    (median(seconds), bytes, median(cpu))
}

/// CPU seconds used so far by this process and by the children it waited
/// for (the curls).
fn cpu_seconds() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut usage) } == 0 {
            for time in [usage.ru_utime, usage.ru_stime] {
                total += time.tv_sec as f64 + time.tv_usec as f64 * 1e-6;
            }
        }
    }
    total
}

async fn load(store: &EmbeddedStore, sensor: &str, index: usize, points: usize) {
    let batches = futures_util::stream::iter((0..points).step_by(65_536))
        .map(move |from| {
            let batch: PointBatch = (from..(from + 65_536).min(points))
                .map(|i| point(index, i))
                .collect();
            Ok(batch)
        })
        .boxed();
    store
        .import(&SensorId::new(sensor).unwrap(), batches)
        .await
        .expect("import");
}

fn query(sensors: &[String], points: usize) -> String {
    let mut q: Vec<String> = sensors.iter().map(|s| format!("sensor_id={s}")).collect();
    q.push(format!("start_ts={START_MS}"));
    q.push(format!("end_ts={}", START_MS + points as i64 * 1000));
    q.join("&")
}

fn main() {
    let runs = env_usize("EXPORT_BENCH_RUNS", 5);
    let summary_points = env_usize("SUMMARY_POINTS", 100_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ten: Vec<String> = (0..10).map(|s| format!("wide{s}")).collect();
    let hundred: Vec<String> = (0..100).map(|s| format!("many{s:03}")).collect();
    let addr = runtime.block_on(async {
        let path = dir.path().to_owned();
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
            .await
            .unwrap()
            .expect("store opens");
        let loading = Instant::now();
        for (s, id) in ten.iter().enumerate() {
            load(&store, id, s, MILLION).await;
        }
        load(&store, "dense", 0, 10 * MILLION).await;
        for (s, id) in hundred.iter().enumerate() {
            load(&store, id, s, 100_000).await;
        }
        load(&store, "huge", 0, summary_points).await;
        eprintln!(
            "loaded {} points in {:.1} s",
            10 * MILLION + 10 * MILLION + 100 * 100_000 + summary_points,
            loading.elapsed().as_secs_f64()
        );
        let storage: SharedStorage = Arc::new(store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = HttpConfig {
            web_dir: None,
            ..HttpConfig::default()
        };
        tokio::spawn(async move {
            http::serve_api(
                listener,
                storage,
                axum::Router::new(),
                &config,
                std::future::pending(),
            )
            .await
        });
        addr
    });
    let url = |q: &str| format!("http://{addr}/api/v1/export?{q}");
    let one = query(&ten[..1], MILLION);

    // Parquet, and the DuckDB reference.
    let work = tempfile::tempdir().unwrap();
    let parquet_path = work.path().join("ours.parquet");
    let (parquet_s, parquet_bytes) = timed(runs, &url(&format!("{one}&format=parquet")), &[]);
    curl(
        &url(&format!("{one}&format=parquet")),
        &[],
        parquet_path.to_str().unwrap(),
    );
    let duckdb = duckdb_reference(&url(&one), work.path(), runs);

    // CSV, plain and compressed as a browser asks.
    let (csv_s, csv_bytes, csv_cpu) = timed_with_cpu(runs, &url(&one), &[]);
    let chromium = "Accept-Encoding: gzip, deflate, br, zstd";
    let (zstd_s, zstd_bytes, zstd_cpu) = timed_with_cpu(runs, &url(&one), &["-H", chromium]);
    let (gzip_s, gzip_bytes) = timed(runs, &url(&one), &["-H", "Accept-Encoding: gzip"]);

    // Several sensors.
    let tens = query(&ten, MILLION);
    let (wide_s, _) = timed(runs, &url(&format!("{tens}&layout=wide")), &[]);
    let (long_s, _) = timed(runs, &url(&format!("{tens}&layout=long")), &[]);

    // Aggregates over 10M points.
    let dense = query(&["dense".to_owned()], 10 * MILLION);
    let (aggregate_s, _) = timed(
        runs,
        &url(&format!(
            "{dense}&interval=1m&aggregate=mean,min,max,time_weighted_mean"
        )),
        &[],
    );

    // Memory of a 100-sensor wide export.
    // Measured from before the first such export: its windows and chunks
    // are what a 100-sensor export adds to a running server.
    let hundreds = query(&hundred, 100_000);
    std::thread::sleep(Duration::from_millis(300));
    let idle = status_kib("VmRSS:");
    reset_peak_rss();
    let (hundred_s, hundred_bytes) =
        curl(&url(&format!("{hundreds}&layout=wide")), &[], "/dev/null");
    let hundred_peak = status_kib("VmHWM:").saturating_sub(idle) as f64 / 1024.0;

    // The summary over the big sensor.
    let huge = query(&["huge".to_owned()], summary_points);
    let summary_url = format!("http://{addr}/api/v1/export/summary?{huge}");
    let (summary_s, _) = timed(runs.max(5), &summary_url, &[]);

    let ms = |s: f64| s * 1e3;
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "Export for analysts: {} cores, median of {runs} runs, curl as the client, {} build.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        }
    );
    println!("| measurement | result | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| Parquet, 1M rows of one sensor over HTTP (zstd), request to last byte | {:.1} ms, {:.2} MB | faster than DuckDB |",
        ms(parquet_s),
        mb(parquet_bytes)
    );
    match &duckdb {
        Ok((seconds, bytes)) => {
            println!(
                "| reference: DuckDB `COPY (SELECT ...) TO 'x.parquet' (FORMAT parquet, COMPRESSION zstd)` from its own table, same rows | {:.1} ms, {:.2} MB | - |",
                ms(*seconds),
                mb(*bytes)
            );
            println!(
                "| Parquet: our time / DuckDB's, our size / DuckDB's | {:.2}x, {:.2}x | < 1x, <= 1.1x |",
                parquet_s / seconds,
                parquet_bytes as f64 / *bytes as f64
            );
        }
        Err(e) => println!("| reference: DuckDB | not measured: {e} | - |"),
    }
    println!(
        "| wide CSV, 10 sensors x 1M points (1M rows) | {:.1} ms = {:.1} M rows/s | >= 5 M rows/s |",
        ms(wide_s),
        1.0 / wide_s
    );
    println!(
        "| long CSV, 10 sensors x 1M points (10M rows) | {:.1} ms = {:.1} M rows/s | >= 10 M rows/s |",
        ms(long_s),
        10.0 / long_s
    );
    println!(
        "| interval=1m, mean,min,max,time_weighted_mean over 10M points | {:.1} ms = {:.0} M points/s | >= 100 M points/s |",
        ms(aggregate_s),
        10.0 / aggregate_s
    );
    println!(
        "| wide CSV of 100 sensors x 100k points: peak RSS growth ({:.1} MB in {:.0} ms) | {:.1} MiB | <= 64 MiB |",
        mb(hundred_bytes),
        ms(hundred_s),
        hundred_peak
    );
    println!(
        "| 1M rows CSV, uncompressed | {:.1} ms, {:.1} MB | - |",
        ms(csv_s),
        mb(csv_bytes)
    );
    println!(
        "| 1M rows CSV, Chromium's Accept-Encoding (zstd chosen) | {:.1} ms, {:.1} MB = {:.2}x the uncompressed time | <= 1.5x |",
        ms(zstd_s),
        mb(zstd_bytes),
        zstd_s / csv_s
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "| CPU per 1M-row CSV download, server and curl: uncompressed, zstd | {:.1} ms, {:.1} ms: zstd can finish no sooner than {:.1} ms on {cores} cores = {:.2}x the uncompressed time | - |",
        ms(csv_cpu),
        ms(zstd_cpu),
        ms(zstd_cpu / cores),
        zstd_cpu / cores / csv_s
    );
    println!(
        "| 1M rows CSV, Accept-Encoding: gzip | {:.1} ms, {:.1} MB = {:.2}x the uncompressed time | <= 1.5x |",
        ms(gzip_s),
        mb(gzip_bytes),
        gzip_s / csv_s
    );
    println!(
        "| export summary over {}M stored points (curl, request to last byte) | {:.1} ms | < 20 ms |",
        summary_points / MILLION,
        ms(summary_s)
    );
    drop(runtime);
}

/// DuckDB's own table of the same 1M rows (loaded from our CSV export),
/// then `COPY (SELECT ...) TO 'x.parquet'` timed inside DuckDB: (median
/// seconds, file size).
fn duckdb_reference(
    csv_url: &str,
    work: &std::path::Path,
    runs: usize,
) -> Result<(f64, u64), String> {
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/python-bench-env");
    let output = Command::new(&script).output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "scripts/python-bench-env failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let python = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let csv = work.join("rows.csv");
    curl(csv_url, &[], csv.to_str().unwrap());
    let program = r#"
import duckdb, os, statistics, sys, time
csv, out, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"CREATE TABLE t AS SELECT CAST(timestamp_ms AS BIGINT) AS timestamp_ms, CAST(value AS DOUBLE) AS value, CAST(quality AS UTINYINT) AS quality FROM read_csv('{csv}', header=true)")
samples = []
for run in range(runs + 1):
    if os.path.exists(out):
        os.remove(out)
    started = time.perf_counter()
    con.execute(f"COPY (SELECT timestamp_ms, value, quality FROM t ORDER BY timestamp_ms) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
    if run:
        samples.append(time.perf_counter() - started)
print(statistics.median(samples), os.path.getsize(out))
"#;
    let out = work.join("duckdb.parquet");
    let output = Command::new(&python)
        .arg("-c")
        .arg(program)
        .arg(&csv)
        .arg(&out)
        .arg(runs.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    let seconds = fields
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or("no time")?;
    let bytes = fields
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or("no size")?;
    Ok((seconds, bytes))
}
