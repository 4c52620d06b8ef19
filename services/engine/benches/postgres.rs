//! PostgreSQL store benchmark: `cargo bench --bench postgres` (release).
//!
//! Needs PostgreSQL at `ENGINE_BENCH_PG` (default
//! `postgres://postgres@127.0.0.1:5432`, trust auth); creates a database of
//! its own and drops it at the end. Prints markdown tables of medians:
//!
//! 1. Writes through `StorageEngine::write` (batches as NATS ingestion and
//!    gRPC send them), one writer and four concurrent writers, new points.
//! 2. 1M rows of one sensor exported as CSV over HTTP by `PgStorage`
//!    (downloaded by `curl`, a separate process), against the reference
//!    measured in the same run on the same table: `psql -c "\copy (SELECT
//!    ts, value, quality FROM points WHERE ... ORDER BY ts) TO STDOUT (FORMAT
//!    csv, HEADER)"`.
//!
//! Environment: `PG_BENCH_WRITE_POINTS` (default 2,000,000 per run),
//! `PG_BENCH_RUNS` (default 5).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use engine::http::{self, HttpConfig};
use engine::model::{Point, PointBatch, Sample, SensorId};
use engine::storage::SharedStorage;
use engine::storage::postgres::PgStorage;
use futures_util::StreamExt;

/// 2025-01-01T00:00:00Z; one point a second from here.
const START_MS: i64 = 1_735_689_600_000;
const EXPORT_ROWS: usize = 1_000_000;
const EXPORT_SENSOR: &str = "plant-a/boiler-1/temperature";

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

fn point(i: usize) -> Point {
    let wave = 20.0 + 5.0 * (i as f64 / 3600.0).sin() + ((i * 7919) % 1000) as f64 * 1e-3;
    Point {
        timestamp_ms: START_MS + i as i64 * 1000,
        value: (wave * 1e6).round() / 1e6,
        quality: if i.is_multiple_of(997) { 0 } else { 192 },
    }
}

fn server_url() -> String {
    std::env::var("ENGINE_BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Runs one statement on the server's `postgres` database through psql.
fn admin(sql: &str) {
    let status = Command::new("psql")
        .args([&format!("{}/postgres", server_url()), "-X", "-q", "-c", sql])
        .status()
        .expect("psql runs");
    assert!(status.success(), "{sql}");
}

/// Seconds to write `points` new points of `sensors` sensors in batches of
/// `batch`, from `writers` concurrent tasks.
async fn write_run(
    store: &SharedStorage,
    run: usize,
    points: usize,
    batch: usize,
    writers: usize,
) -> f64 {
    let per_writer = points / writers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let store = Arc::clone(store);
            // A sensor per writer and run: every point is new.
            let id = SensorId::new(&format!("bench/run-{run}/writer-{writer}/b{batch}")).unwrap();
            tokio::spawn(async move {
                for from in (0..per_writer).step_by(batch) {
                    let samples: Vec<Sample> = (from..(from + batch).min(per_writer))
                        .map(|i| Sample::new(id.clone(), point(i)))
                        .collect();
                    store.write(samples).await.expect("write");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// One curl download to /dev/null: (seconds to last byte, bytes).
fn curl(url: &str) -> (f64, u64) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total} %{size_download}",
            url,
        ])
        .output()
        .expect("curl runs");
    assert!(output.status.success(), "curl failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    let seconds = fields
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or(f64::NAN);
    let bytes = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    (seconds, bytes)
}

/// The reference: psql's `\copy (SELECT ...) TO STDOUT (FORMAT csv, HEADER)`
/// of the same rows of the same table, whole psql process, output discarded.
fn psql_reference(url: &str, sensor_key: i32, runs: usize) -> f64 {
    let end = START_MS + EXPORT_ROWS as i64 * 1000;
    let query = format!(
        "\\copy (SELECT ts, value, quality FROM points WHERE sensor = {sensor_key} \
         AND ts >= {START_MS} AND ts < {end} ORDER BY ts) TO STDOUT (FORMAT csv, HEADER)"
    );
    let samples = (0..=runs)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new("psql")
                .args([url, "-X", "-q", "-c", &query])
                .stdout(Stdio::null())
                .status()
                .expect("psql runs");
            assert!(status.success());
            started.elapsed().as_secs_f64()
        })
        .collect::<Vec<_>>();
    median(samples[1..].to_vec()) // the first warms up
}

fn main() {
    let write_points = env_usize("PG_BENCH_WRITE_POINTS", 2_000_000);
    let runs = env_usize("PG_BENCH_RUNS", 5);
    let database = format!("engine_bench_{}", std::process::id());
    admin(&format!(
        "CREATE DATABASE {database} TEMPLATE template0 ENCODING 'UTF8'"
    ));
    let url = format!("{}/{database}", server_url());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (store, addr) = runtime.block_on(async {
        let store: SharedStorage = Arc::new(PgStorage::connect(&url).await.expect("connect"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::clone(&store);
        tokio::spawn(async move {
            http::serve_api(
                listener,
                served,
                axum::Router::new(),
                &HttpConfig {
                    web_dir: None,
                    ..HttpConfig::default()
                },
                std::future::pending(),
            )
            .await
        });
        (store, addr)
    });

    println!("## Writes through the trait ({write_points} new points a run, median of {runs})\n");
    println!("| writers | points per write | seconds | points/s |");
    println!("|---|---|---|---|");
    for (writers, batch) in [(1, 10_000), (1, 50_000), (4, 10_000)] {
        let seconds = median(
            (0..runs)
                .map(|run| runtime.block_on(write_run(&store, run, write_points, batch, writers)))
                .collect(),
        );
        println!(
            "| {writers} | {batch} | {seconds:.2} | {:.0}k |",
            write_points as f64 / seconds / 1e3
        );
    }

    let sensor = SensorId::new(EXPORT_SENSOR).unwrap();
    let key: i32 = runtime.block_on(async {
        let batches = futures_util::stream::iter((0..EXPORT_ROWS).step_by(65_536))
            .map(|from| {
                Ok((from..(from + 65_536).min(EXPORT_ROWS))
                    .map(point)
                    .collect::<PointBatch>())
            })
            .boxed();
        let started = Instant::now();
        store.import(&sensor, batches).await.expect("import");
        eprintln!(
            "imported {EXPORT_ROWS} points in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client.batch_execute("VACUUM ANALYZE points").await.unwrap();
        client
            .query_one("SELECT id FROM sensors WHERE name = $1", &[&EXPORT_SENSOR])
            .await
            .unwrap()
            .get(0)
    });
    let export_url = format!(
        "http://{addr}/api/v1/export?sensor_id=plant-a%2Fboiler-1%2Ftemperature&start_ts={START_MS}&end_ts={}",
        START_MS + EXPORT_ROWS as i64 * 1000
    );
    let scans: Vec<f64> = (0..runs)
        .map(|_| {
            runtime.block_on(async {
                let started = Instant::now();
                let mut scan = store.scan(&sensor, engine::model::TimeRange::ALL);
                let mut points = 0;
                while let Some(batch) = scan.next().await {
                    points += batch.expect("scan").len();
                }
                assert_eq!(points, EXPORT_ROWS);
                started.elapsed().as_secs_f64()
            })
        })
        .collect();
    let scan = median(scans);
    curl(&export_url); // warm-up
    let downloads: Vec<(f64, u64)> = (0..runs).map(|_| curl(&export_url)).collect();
    let ours = median(downloads.iter().map(|d| d.0).collect());
    let reference = psql_reference(&url, key, runs);
    println!("\n## 1M rows as CSV from PostgreSQL (median of {runs})\n");
    println!("| what | time | rows/s |");
    println!("|---|---|---|");
    println!(
        "| HTTP export from PgStorage, request to last byte ({:.1} MB) | {:.1} ms | {:.2} M |",
        downloads[0].1 as f64 / 1e6,
        ours * 1e3,
        EXPORT_ROWS as f64 / ours / 1e6
    );
    println!(
        "| reference: psql `\\copy (SELECT ts, value, quality ... ORDER BY ts) TO STDOUT (FORMAT csv, HEADER)`, same table | {:.1} ms | {:.2} M |",
        reference * 1e3,
        EXPORT_ROWS as f64 / reference / 1e6
    );
    println!(
        "| the same rows through `StorageEngine::scan` (no CSV, no HTTP) | {:.1} ms | {:.2} M |",
        scan * 1e3,
        EXPORT_ROWS as f64 / scan / 1e6
    );
    println!(
        "| speed-up over psql | {:.1}x | target >= 2x |",
        reference / ours
    );

    runtime.block_on(async { store.close().await.unwrap() });
    drop(store);
    drop(runtime);
    admin(&format!("DROP DATABASE {database} WITH (FORCE)"));
}
