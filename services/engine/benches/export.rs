//! HTTP export benchmark: `cargo bench --bench export` (release).
//!
//! Loads 10M points of one sensor into the embedded store in a temporary
//! directory, serves the HTTP API on 127.0.0.1:0 in this process (a runtime
//! with one worker per core, as `engine serve`), and downloads with `curl`,
//! a separate process, so the client neither shares this process's memory
//! figures nor its runtime. Prints a markdown table of medians, with the
//! references measured in the same run: one core formatting the same 1M rows
//! in memory, and PostgreSQL 15 `COPY (SELECT ...) TO STDOUT (FORMAT csv,
//! HEADER)` of the same rows through psql (needs 127.0.0.1:5432, user
//! `postgres`, database `test`, trust auth; skipped if unreachable).
//!
//! Environment: `EXPORT_BENCH_ROWS` (default 10,000,000), `EXPORT_BENCH_RUNS`
//! (default 9).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::csv_format::CsvEncoder;
use engine::http::{self, HttpConfig};
use engine::model::{Point, PointBatch, SensorId};
use engine::storage::embedded::EmbeddedStore;
use engine::storage::{SharedStorage, StorageEngine};
use futures_util::StreamExt;

const SENSOR: &str = "plant-a/boiler-1/temperature";
/// 2025-01-01T00:00:00Z; one point a second from here.
const START_MS: i64 = 1_735_689_600_000;
const ONE_MILLION: usize = 1_000_000;
const CONCURRENT: usize = 64;

fn point(i: usize) -> Point {
    let wave = 20.0 + 5.0 * (i as f64 / 3600.0).sin() + ((i * 7919) % 1000) as f64 * 1e-3;
    Point {
        timestamp_ms: START_MS + i as i64 * 1000,
        value: (wave * 1e6).round() / 1e6,
        quality: if i.is_multiple_of(997) { 0 } else { 192 },
    }
}

fn batch(range: std::ops::Range<usize>) -> PointBatch {
    range.map(point).collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `1M`, `10M`, `200k`: row counts for the table.
fn count(rows: usize) -> String {
    if rows >= 1_000_000 && rows.is_multiple_of(1_000_000) {
        format!("{}M", rows / 1_000_000)
    } else if rows >= 1_000 {
        format!("{}k", rows / 1_000)
    } else {
        rows.to_string()
    }
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

/// Resets VmHWM to the current RSS (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn export_url(addr: std::net::SocketAddr, rows: usize) -> String {
    format!(
        "http://{addr}/api/v1/export?sensor_id=plant-a%2Fboiler-1%2Ftemperature&start_ts={START_MS}&end_ts={}",
        START_MS + rows as i64 * 1000
    )
}

/// One curl download to /dev/null: (seconds to first byte, seconds to last byte, bytes).
fn curl(url: &str, extra: &[&str]) -> (f64, f64, u64) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-w",
            "%{time_starttransfer} %{time_total} %{size_download}",
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
    let mut next = || {
        fields
            .next()
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (next(), next(), next() as u64)
}

/// psql connected to the reference database (127.0.0.1:5432, trust auth).
fn psql_command() -> Command {
    let mut command = Command::new("psql");
    command.args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "test",
        "-v",
        "ON_ERROR_STOP=1",
        "-X",
        "-q",
    ]);
    command
}

fn psql(args: &[&str]) -> std::io::Result<std::process::Output> {
    psql_command().args(args).output()
}

fn main() {
    let rows = env_usize("EXPORT_BENCH_ROWS", 10_000_000);
    let runs = env_usize("EXPORT_BENCH_RUNS", 9);
    let one_m = rows.min(ONE_MILLION);
    let dir = tempfile::tempdir().expect("temp dir");

    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, _store) = server_runtime.block_on(async {
        let path = dir.path().to_owned();
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
            .await
            .unwrap()
            .expect("store opens");
        let loading = Instant::now();
        let batches = futures_util::stream::iter((0..rows).step_by(65_536))
            .map(move |from| Ok(batch(from..(from + 65_536).min(rows))))
            .boxed();
        store
            .import(&SensorId::new(SENSOR).unwrap(), batches)
            .await
            .expect("import");
        eprintln!(
            "loaded {rows} points in {:.1} s",
            loading.elapsed().as_secs_f64()
        );
        let storage: SharedStorage = Arc::new(store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = HttpConfig {
            web_dir: None,
            max_concurrent_exports: 2 * CONCURRENT,
            ..HttpConfig::default()
        };
        let served = Arc::clone(&storage);
        tokio::spawn(async move {
            http::serve_api(
                listener,
                served,
                axum::Router::new(),
                &config,
                std::future::pending(),
            )
            .await
        });
        (addr, storage)
    });

    let url_1m = export_url(addr, one_m);
    let url_all = export_url(addr, rows);

    // Warm up: page cache, redb cache, allocator.
    curl(&url_all, &[]);
    curl(&url_1m, &[]);

    // Reference: one core formatting the same 1M rows in memory.
    let rows_1m = batch(0..one_m);
    let encoder = CsvEncoder::default();
    let in_memory = median(
        (0..runs)
            .map(|_| {
                let started = Instant::now();
                let mut out = Vec::with_capacity(one_m * 32);
                encoder.write_header(&mut out);
                encoder.write_batch(&rows_1m, &mut out);
                std::hint::black_box(&out);
                started.elapsed().as_secs_f64()
            })
            .collect(),
    );
    // The same rows with every value through ryu, as before the decimal
    // fast path (write_short_decimal): what that path saves.
    let in_memory_ryu = median(
        (0..runs)
            .map(|_| {
                let started = Instant::now();
                let mut out = Vec::with_capacity(one_m * 32);
                encoder.write_header(&mut out);
                let (mut ints, mut floats) = (itoa::Buffer::new(), ryu::Buffer::new());
                for i in 0..rows_1m.len() {
                    out.extend_from_slice(ints.format(rows_1m.timestamps[i]).as_bytes());
                    out.push(b',');
                    out.extend_from_slice(floats.format(rows_1m.values[i]).as_bytes());
                    out.push(b',');
                    out.extend_from_slice(ints.format(rows_1m.qualities[i]).as_bytes());
                    out.push(b'\n');
                }
                std::hint::black_box(&out);
                started.elapsed().as_secs_f64()
            })
            .collect(),
    );
    drop(rows_1m);

    let mut ttfb = Vec::new();
    let mut total_1m = Vec::new();
    let mut bytes_1m = 0;
    for _ in 0..runs {
        let (first, total, bytes) = curl(&url_1m, &[]);
        ttfb.push(first);
        total_1m.push(total);
        bytes_1m = bytes;
    }
    let total_all: Vec<f64> = (0..runs.min(5)).map(|_| curl(&url_all, &[]).1).collect();
    let bytes_all = curl(&url_all, &[]).2;

    let compressed: Vec<(&str, f64, u64)> = ["gzip", "zstd"]
        .into_iter()
        .map(|encoding| {
            let header = format!("Accept-Encoding: {encoding}");
            let samples: Vec<(f64, u64)> = (0..runs.min(5))
                .map(|_| {
                    let (_, total, bytes) = curl(&url_1m, &["-H", &header]);
                    (total, bytes)
                })
                .collect();
            let bytes = samples[0].1;
            (
                encoding,
                median(samples.into_iter().map(|s| s.0).collect()),
                bytes,
            )
        })
        .collect();

    let xlsx: Vec<(f64, f64, u64)> = (0..3)
        .map(|_| curl(&format!("{url_1m}&format=xlsx"), &[]))
        .collect();
    let xlsx_bytes = xlsx[0].2;
    let xlsx_ttfb = median(xlsx.iter().map(|s| s.0).collect());
    let xlsx_total = median(xlsx.iter().map(|s| s.1).collect());

    // Memory: peak RSS over idle for one full export, then for 64 at once.
    std::thread::sleep(Duration::from_millis(200));
    let idle = status_kib("VmRSS:");
    reset_peak_rss();
    curl(&url_all, &[]);
    let peak_one = status_kib("VmHWM:").saturating_sub(idle);

    let single_hash = hash_download(&url_1m);
    std::thread::sleep(Duration::from_millis(200));
    let idle_concurrent = status_kib("VmRSS:");
    reset_peak_rss();
    let started = Instant::now();
    let children: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            Command::new("bash")
                .args([
                    "-c",
                    &format!("set -o pipefail; curl -sSf '{url_1m}' | md5sum"),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("bash runs")
        })
        .collect();
    let hashes: Vec<String> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("download");
            assert!(output.status.success(), "a concurrent download failed");
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
        .collect();
    let concurrent_wall = started.elapsed().as_secs_f64();
    let peak_concurrent = status_kib("VmHWM:").saturating_sub(idle_concurrent);
    let identical = hashes.iter().all(|h| *h == single_hash);

    // 1,000 aborted downloads: each reads the first bytes of a 10M export
    // and resets the connection, as a cancelled browser download.
    let aborts = 1000;
    std::thread::sleep(Duration::from_millis(200));
    let tasks_before = server_runtime.metrics().num_alive_tasks();
    let rss_before = status_kib("VmRSS:");
    server_runtime.block_on(async {
        for _ in 0..aborts {
            abort_download(addr, &url_all).await;
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let cpu_settled = cpu_seconds();
    std::thread::sleep(Duration::from_secs(1));
    let cpu_after_aborts = cpu_seconds() - cpu_settled;
    let tasks_after = server_runtime.metrics().num_alive_tasks();
    let rss_after_aborts = status_kib("VmRSS:") as i64 - rss_before as i64;

    let postgres = postgres_reference(&url_1m, one_m, runs.min(5));

    let mb = |bytes: u64| bytes as f64 / 1e6;
    let ms = |s: f64| s * 1e3;
    let mut table = String::new();
    let mut line = |s: String| {
        table.push_str(&s);
        table.push('\n');
    };
    line(format!(
        "Export benchmark: {} cores, {rows} points loaded, median of {runs} runs (10M: of {}), curl as the client, {} build.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        runs.min(5),
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        }
    ));
    line("| measurement | result | target |".into());
    line("| --- | ---: | --- |".into());
    line(format!(
        "| {} rows CSV over HTTP, request to last byte ({:.1} MB) | {:.1} ms | <= 100 ms (1M), >= 5x faster than PostgreSQL |",
        count(one_m),
        mb(bytes_1m),
        ms(median(total_1m.clone()))
    ));
    line(format!(
        "| {} rows CSV over HTTP, request to last byte ({:.1} MB) | {:.1} ms | <= 1000 ms (10M) |",
        count(rows),
        mb(bytes_all),
        ms(median(total_all))
    ));
    line(format!(
        "| time to first byte ({} export, curl time_starttransfer) | {:.2} ms | <= 10 ms |",
        count(one_m),
        ms(median(ttfb))
    ));
    for (encoding, total, bytes) in &compressed {
        line(format!(
            "| {} rows, Accept-Encoding: {encoding} (fastest level) | {:.1} ms, {:.1} MB | - |",
            count(one_m),
            ms(*total),
            mb(*bytes)
        ));
    }
    line(format!(
        "| {} rows XLSX, streamed (request to last byte, first byte, size) | {:.0} ms, first byte {:.0} ms, {:.1} MB | - |",
        count(one_m),
        ms(xlsx_total),
        ms(xlsx_ttfb),
        mb(xlsx_bytes)
    ));
    line(format!(
        "| peak RSS growth, one {} export | {:.1} MiB | <= 32 MiB (10M) |",
        count(rows),
        peak_one as f64 / 1024.0
    ));
    line(format!(
        "| peak RSS growth, {CONCURRENT} concurrent {} exports ({:.2} s wall, bytes identical: {}) | {:.1} MiB | <= 128 MiB, all succeed |",
        count(one_m),
        concurrent_wall,
        if identical { "yes" } else { "NO" },
        peak_concurrent as f64 / 1024.0
    ));
    line(format!(
        "| {aborts} aborted downloads: alive tasks before/after, CPU in the next second, RSS change | {tasks_before}/{tasks_after}, {:.0} ms, {:+.1} MiB | nothing left behind |",
        ms(cpu_after_aborts),
        rss_after_aborts as f64 / 1024.0
    ));
    line(format!(
        "| reference: one core formatting the same rows in memory (CsvEncoder) | {:.1} ms | - |",
        ms(in_memory)
    ));
    line(format!(
        "| reference: the same with every value through ryu (no decimal fast path) | {:.1} ms | - |",
        ms(in_memory_ryu)
    ));
    match postgres {
        Ok(pg) => {
            line(format!(
                "| reference: PostgreSQL `COPY (SELECT ...) TO STDOUT (FORMAT csv, HEADER)` via psql, same rows | {:.1} ms | - |",
                ms(pg)
            ));
            line(format!(
                "| speed-up over PostgreSQL | {:.1}x | >= 5x |",
                pg / median(total_1m)
            ));
        }
        Err(e) => line(format!("| reference: PostgreSQL | not measured: {e} | - |")),
    }
    print!("{table}");
    let _ = std::io::stdout().flush();
    drop(server_runtime);
}

/// This process's user + system CPU seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th
    // and stime the 13th of those, in clock ticks (100 a second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Requests `url`, reads the first bytes, then resets the connection (RST,
/// as a cancelled browser download).
async fn abort_download(addr: std::net::SocketAddr, url: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = url.split_once(&addr.to_string()).map_or("/", |(_, p)| p);
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    socket.write_all(request.as_bytes()).await.expect("request");
    let mut buf = [0u8; 4096];
    let n = socket.read(&mut buf).await.expect("response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let _ = socket.set_zero_linger();
}

fn hash_download(url: &str) -> String {
    let output = Command::new("bash")
        .args([
            "-c",
            &format!("set -o pipefail; curl -sSf '{url}' | md5sum"),
        ])
        .output()
        .expect("bash runs");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Loads the same 1M rows (from our own export) into a PostgreSQL table with
/// a primary key on the timestamp, times psql's `\copy (SELECT ...) TO
/// STDOUT` of them (whole psql process, as a user would run it), drops the
/// table. Median seconds.
fn postgres_reference(url_1m: &str, rows: usize, runs: usize) -> Result<f64, String> {
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let path = file.path().to_str().ok_or("temp path")?.to_owned();
    let status = Command::new("curl")
        .args(["-sSf", "-o", &path, url_1m])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("could not fetch the export".into());
    }
    let table = "bench_export_http";
    let setup = format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (timestamp_ms bigint PRIMARY KEY, value double precision NOT NULL, quality smallint NOT NULL);"
    );
    let ok = |out: std::io::Result<std::process::Output>| -> Result<(), String> {
        let out = out.map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    };
    ok(psql(&["-c", &setup]))?;
    let result = (|| {
        ok(psql(&[
            "-c",
            &format!("\\copy {table} FROM '{path}' (FORMAT csv, HEADER)"),
        ]))?;
        ok(psql(&["-c", &format!("VACUUM ANALYZE {table}")]))?;
        let end = START_MS + rows as i64 * 1000;
        let query = format!(
            "\\copy (SELECT timestamp_ms, value, quality FROM {table} WHERE timestamp_ms >= {START_MS} AND timestamp_ms < {end} ORDER BY timestamp_ms) TO STDOUT (FORMAT csv, HEADER)"
        );
        // Warm-up, then timed runs.
        let mut samples = Vec::new();
        for run in 0..=runs {
            let started = Instant::now();
            // Output to /dev/null: the reference pays for producing the CSV,
            // not for this process collecting 30 MB of it.
            let out = psql_command()
                .args(["-c", &query])
                .stdout(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            let elapsed = started.elapsed().as_secs_f64();
            if !out.success() {
                return Err("psql \\copy failed".into());
            }
            if run > 0 {
                samples.push(elapsed);
            }
        }
        Ok(median(samples))
    })();
    let _ = psql(&["-c", &format!("DROP TABLE IF EXISTS {table}")]);
    result
}
