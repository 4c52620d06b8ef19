//! Cluster benchmark: NATS JetStream ingestion into PostgreSQL by one engine
//! against three engines sharing the durable consumer, in the same run.
//!
//! Each run: a fresh database on the machine's PostgreSQL
//! (`ENGINE_BENCH_PG`, default `postgres://postgres@127.0.0.1:5432`), a
//! private nats-server whose stream is preloaded with the backlog, then the
//! real `engine serve` processes (`--store postgres://... --nats-url ...`);
//! the time runs from starting the engines until the consumer has nothing
//! pending or unacknowledged (every point committed in PostgreSQL). Runs
//! alternate 1 and 3 engines; the table gives medians.
//!
//! Every process (PostgreSQL, nats-server, the engines) shares this
//! machine's cores: with 2 cores, three engines cannot beat one; the figure
//! shows what sharing the consumer costs, not how the cluster scales on
//! separate machines.
//!
//! Run: `cargo bench --bench cluster` (`BENCH_QUICK=1` for a short run).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

mod common;
use common::{Process, free_port, wait_port};

const POINTS_PER_MESSAGE: usize = 100;

fn pg_server() -> String {
    std::env::var("ENGINE_BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

async fn admin(sql: &str) {
    let (client, connection) =
        tokio_postgres::connect(&format!("{}/postgres", pg_server()), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL");
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
}

/// One measured run: seconds until `engines` engines drained `messages`.
async fn run_once(engines: usize, messages: usize, run: usize) -> f64 {
    let database = format!("engine_bench_cluster_{}_{run}", std::process::id());
    admin(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
    admin(&format!(
        "CREATE DATABASE {database} TEMPLATE template0 ENCODING 'UTF8'"
    ))
    .await;
    let store = format!("{}/{database}", pg_server());

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _nats = Process(
        Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    wait_port(port);
    let url = format!("nats://127.0.0.1:{port}");
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    // The stream as the engine creates it, preloaded with the backlog.
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "SENSORS".into(),
            subjects: vec!["sensors.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut acks = Vec::with_capacity(1000);
    for m in 0..messages {
        let sensor = m % 100;
        let mut payload = String::from("[");
        for p in 0..POINTS_PER_MESSAGE {
            if p > 0 {
                payload.push(',');
            }
            let ts = 1_767_225_600_000i64 + ((m / 100) * POINTS_PER_MESSAGE + p) as i64 * 1000;
            payload.push_str(&format!(
                r#"{{"sensor_id":"bench/s{sensor}","timestamp_ms":{ts},"value":{}}}"#,
                (m * 31 + p) as f64 / 3.0
            ));
        }
        payload.push(']');
        acks.push(
            js.publish(format!("sensors.s{sensor}"), payload.into())
                .await
                .unwrap(),
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.unwrap();
    }

    let started = Instant::now();
    let running: Vec<Process> = (0..engines)
        .map(|_| {
            Process(
                Command::new(env!("CARGO_BIN_EXE_engine"))
                    .current_dir(dir.path())
                    .args(["serve", "--no-auth", "--store", &store, "--nats-url", &url])
                    .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
                    .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
                    .args(["--web-dir", "/nonexistent"])
                    .env("RUST_LOG", "error")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("engine"),
            )
        })
        .collect();
    let mut stream = stream;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(mut consumer) = stream
            .get_consumer::<jetstream::consumer::pull::Config>("sensor-engine")
            .await
        else {
            continue;
        };
        let Ok(info) = consumer.info().await else {
            continue;
        };
        if info.num_pending == 0 && info.num_ack_pending == 0 && info.delivered.stream_sequence > 0
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "not drained");
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = stream.info().await;
    drop(running);
    // Every point is in PostgreSQL.
    let (client, connection) = tokio_postgres::connect(&store, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM points", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, messages * POINTS_PER_MESSAGE);
    drop(client);
    admin(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
    seconds
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let quick = std::env::var_os("BENCH_QUICK").is_some();
        let messages = if quick { 2_000 } else { 10_000 };
        let repeats = if quick { 1 } else { 3 };
        let points = (messages * POINTS_PER_MESSAGE) as f64;
        let (mut one, mut three) = (Vec::new(), Vec::new());
        for run in 0..repeats {
            one.push(run_once(1, messages, run * 2).await);
            three.push(run_once(3, messages, run * 2 + 1).await);
        }
        let (one, three) = (median(&mut one), median(&mut three));
        println!(
            "| NATS ingest into PostgreSQL, backlog of {} points ({POINTS_PER_MESSAGE}/message), engine start included | median of {repeats} |",
            points as u64
        );
        println!("|---|---|");
        println!(
            "| 1 engine | {one:.2} s ({:.0} points/s) |",
            points / one
        );
        println!(
            "| 3 engines, one durable consumer | {three:.2} s ({:.0} points/s, {:.2}x of 1 engine) |",
            points / three,
            one / three
        );
    });
}
