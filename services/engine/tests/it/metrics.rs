//! `GET /metrics` of a real `engine serve`, read with the Prometheus
//! project's own text-format parser (`prometheus_client.parser`, Python, in
//! the test virtualenv): counters move after a write, an import, an export
//! and a dead-lettered NATS message; labels carry route templates, never
//! sensor ids or raw paths.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::binary::Served;
use crate::http_export_formats::python;
use crate::ingest_support::NatsServer;
use crate::support::client;

/// Every byte but letters and digits percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One parsed sample.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    family: String,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    labels: std::collections::HashMap<String, String>,
    value: f64,
}

struct Scrape {
    samples: Vec<Sample>,
}

async fn scrape(served: &Served) -> Scrape {
    let response = client().get(served.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/parse_metrics.py");
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    Scrape { samples }
}

/// Samples of a family (a histogram's buckets, sum and count included).
fn samples<'a>(scrape: &'a Scrape, family: &str) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.family == family)
        .collect()
}

/// The sum of a counter's or gauge's samples with these labels; 0 when
/// absent. (The parser names a counter's family without `_total`.)
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| {
            assert!(
                s.kind == "counter" || s.kind == "gauge",
                "{name}: {}",
                s.kind
            );
            s.value
        })
        .sum()
}

/// A histogram's observation count with these labels.
fn observations(scrape: &Scrape, family: &str, labels: &[(&str, &str)]) -> f64 {
    let count = format!("{family}_count");
    scrape
        .samples
        .iter()
        .filter(|s| s.family == family && s.name == count && s.kind == "histogram")
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_after_writes_imports_exports_and_dead_letters() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let served = Served::start(
        dir.path(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--nats-url",
            &nats.url(),
            "--web-dir",
            dir.path().join("no-dashboard").to_str().unwrap(),
        ],
        None,
    );
    let before = scrape(&served).await;
    assert_eq!(value(&before, "engine_export_rows_total", &[]), 0.0);
    assert_eq!(value(&before, "engine_exports_running", &[]), 0.0);

    // An import of 3 points into a sensor whose id must not become a label.
    let secret = "Kessel Ü1/secret-id";
    let import = client()
        .post(served.url(&format!("/api/v1/import?sensor_id={}", encode(secret))))
        .body("timestamp_ms,value,quality\n1,1.5,192\n2,2.5,192\n3,3.5,0\n")
        .send()
        .await
        .unwrap();
    assert_eq!(import.status(), 200, "{}", import.text().await.unwrap());

    // NATS: a message of 2 points and a malformed one.
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nc);
    let stream_ready = async {
        while js.get_stream("SENSORS").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), stream_ready)
        .await
        .expect("the engine creates the stream");
    let good = r#"[{"sensor_id":"nats-sensor","timestamp_ms":10,"value":1.0},
                   {"sensor_id":"nats-sensor","timestamp_ms":11,"value":2.0}]"#;
    js.publish("sensors.a", good.into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("sensors.a", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // The export of the imported sensor, read to its end.
    let export = client()
        .get(served.url(&format!(
            "/api/v1/export?sensor_id={}&start_ts=0&end_ts=100",
            encode(secret)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(export.text().await.unwrap().lines().count(), 4);
    let one = client()
        .get(served.url(&format!("/api/v1/sensors/{}", encode(secret))))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = client()
        .get(served.url("/api/v1/sensors/no-such-sensor"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Poll until the NATS message is in and the export has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let after = scrape(&served).await;
        let settled = value(
            &after,
            "engine_points_written_total",
            &[("source", "write")],
        ) >= 2.0
            && value(&after, "engine_nats_dead_lettered_total", &[]) >= 1.0
            && value(&after, "engine_exports_running", &[]) == 0.0;
        if settled || std::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(
        value(
            &after,
            "engine_points_written_total",
            &[("source", "import")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &after,
            "engine_points_written_total",
            &[("source", "write")]
        ),
        2.0
    );
    assert_eq!(value(&after, "engine_export_rows_total", &[]), 3.0);
    assert_eq!(value(&after, "engine_exports_running", &[]), 0.0);
    assert_eq!(value(&after, "engine_nats_dead_lettered_total", &[]), 1.0);
    assert_eq!(value(&after, "engine_nats_messages_total", &[]), 1.0);
    assert_eq!(value(&after, "engine_nats_pending_messages", &[]), 0.0);
    assert_eq!(
        observations(&after, "engine_nats_ingest_lag_seconds", &[]),
        1.0
    );
    // The NATS points wait in the head; the import went to blocks directly.
    assert_eq!(value(&after, "engine_head_points", &[]), 2.0);
    assert!(value(&after, "engine_wal_bytes", &[]) > 0.0);
    assert!(value(&after, "engine_store_bytes", &[]) >= value(&after, "engine_wal_bytes", &[]));
    // Requests by route template and status.
    let requests = |route: &str, status: &str| {
        value(
            &after,
            "engine_http_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("/api/v1/export", "200"), 1.0);
    assert_eq!(requests("/api/v1/import", "200"), 1.0);
    assert_eq!(requests("/api/v1/sensors/{id}", "200"), 1.0);
    assert_eq!(requests("/api/v1/sensors/{id}", "404"), 1.0);
    assert!(requests("/metrics", "200") >= 1.0);
    let export_timed = observations(
        &after,
        "engine_http_request_duration_seconds",
        &[("route", "/api/v1/export"), ("status", "200")],
    );
    assert_eq!(export_timed, 1.0);
    let buckets = samples(&after, "engine_http_request_duration_seconds")
        .into_iter()
        .filter(|s| {
            s.name.ends_with("_bucket")
                && s.labels.get("route").map(String::as_str) == Some("/api/v1/export")
        })
        .count();
    assert!(buckets > 5, "{buckets} buckets");
    // No label value carries a sensor id or a raw path.
    for sample in &after.samples {
        for (name, label) in &sample.labels {
            assert!(
                !label.contains("secret")
                    && !label.contains("no-such")
                    && !label.contains("nats-sensor"),
                "{} has {name}={label}",
                sample.name
            );
        }
    }
    assert!(served.stop().success());
}

/// A checkpoint (a head folded into blocks) shows in its histogram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_timed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let served = Served::start(
        dir.path(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--head-flush-points",
            "100",
        ],
        None,
    );
    // Writes fill the head (imports go to blocks directly): 300 points
    // cross the limit of 100 at least twice.
    let mut grpc =
        crate::grpc::connect_engine(format!("http://127.0.0.1:{}", served.grpc_port)).await;
    for call in 0..3i64 {
        let points = (call * 100..(call + 1) * 100)
            .map(|ts| crate::grpc::point("folded", ts, ts as f64))
            .collect();
        grpc.write(futures_util::stream::iter(vec![
            engine::grpc::pb::WriteRequest { points },
        ]))
        .await
        .unwrap();
    }
    // Imports go to blocks directly; live writes fill the head.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = scrape(&served).await;
        let folds = observations(&scrape, "engine_checkpoint_duration_seconds", &[]);
        if folds >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint timed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.stop().success());
}
