//! The rest of the HTTP API on a real server: sensors, series (M4), import,
//! OpenAPI, health, the dashboard's static files, and server hygiene
//! (header-read timeout, graceful shutdown).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::support::{TestServer, TestStore, client, ramp, test_config};

#[tokio::test]
async fn sensors_list_and_one_and_404() {
    let store = TestStore::shared(100);
    store.put("b", [(5, 1.0, 192), (9, 2.0, 192)]);
    store.put("a", [(-3, 1.0, 0)]);
    let server = TestServer::start(store).await;
    let list: serde_json::Value = client()
        .get(server.url("/api/v1/sensors"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list,
        serde_json::json!({"sensors": [
            {"sensor_id": "a", "count": 1, "first_timestamp_ms": -3, "last_timestamp_ms": -3},
            {"sensor_id": "b", "count": 2, "first_timestamp_ms": 5, "last_timestamp_ms": 9},
        ]})
    );
    let one: serde_json::Value = client()
        .get(server.url("/api/v1/sensors/b"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["count"], 2);
    let missing = client()
        .get(server.url("/api/v1/sensors/zzz"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "sensor_not_found");
    assert!(body["message"].as_str().unwrap().contains("not found"));
    server.stop().await;
}

#[tokio::test]
async fn series_returns_raw_points_below_max_points_and_m4_above() {
    let store = TestStore::shared(1000);
    let mut points = ramp(0, 10_000);
    points[5000].1 = 1e9; // a spike M4 must keep
    points[7000].1 = f64::NAN;
    store.put("s", points);
    store.put("small", [(1, 1.5, 192), (2, f64::INFINITY, 0)]);
    let server = TestServer::start(store).await;

    let small: serde_json::Value = client()
        .get(server.url("/api/v1/series?sensor_id=small"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        small,
        serde_json::json!({"sensor_id": "small", "start_ts": 1, "end_ts": 3, "count": 2,
            "downsampled": false, "timestamps": [1, 2], "values": [1.5, null], "qualities": [192, 0]})
    );

    let big: serde_json::Value = client()
        .get(server.url("/api/v1/series?sensor_id=s&start_ts=0&end_ts=10000&max_points=400"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(big["count"], 10_000);
    assert_eq!(big["downsampled"], true);
    let timestamps = big["timestamps"].as_array().unwrap();
    assert!(
        timestamps.len() <= 400 && timestamps.len() > 200,
        "{}",
        timestamps.len()
    );
    assert_eq!(timestamps.len(), big["values"].as_array().unwrap().len());
    assert_eq!(timestamps.len(), big["qualities"].as_array().unwrap().len());
    let ts: Vec<i64> = timestamps.iter().map(|t| t.as_i64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "time order");
    assert!(
        big["values"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(1e9)),
        "spike kept"
    );
    assert_eq!(ts[0], 0);
    assert_eq!(*ts.last().unwrap(), 9999);

    for (query, status) in [
        ("sensor_id=nope", StatusCode::NOT_FOUND),
        ("", StatusCode::BAD_REQUEST),
        ("sensor_id=s&max_points=0", StatusCode::BAD_REQUEST),
        ("sensor_id=s&max_points=lots", StatusCode::BAD_REQUEST),
        ("sensor_id=s&start_ts=9&end_ts=1", StatusCode::BAD_REQUEST),
    ] {
        let response = client()
            .get(server.url(&format!("/api/v1/series?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{query}");
    }
    // Capped at 10000 points.
    let capped: serde_json::Value = client()
        .get(server.url("/api/v1/series?sensor_id=s&max_points=1000000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(capped["timestamps"].as_array().unwrap().len() <= 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_export_is_the_identity_and_errors_name_the_line() {
    let source = TestStore::shared(1000);
    let mut points = ramp(-500, 30_000);
    points[1].1 = -0.0;
    points[2].1 = f64::NAN;
    points[3].1 = f64::INFINITY;
    points[4].1 = 5e-324;
    source.put("src", points);
    let server = TestServer::start(source).await;
    let export = |id: &str| {
        let url = server.url(&format!(
            "/api/v1/export?sensor_id={id}&start_ts=-1000&end_ts=99999999"
        ));
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        }
    };
    let first = export("src").await;
    let imported = client()
        .post(server.url("/api/v1/import?sensor_id=copy"))
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), StatusCode::OK);
    let summary: serde_json::Value = imported.json().await.unwrap();
    assert_eq!(
        summary,
        serde_json::json!({"sensor_id": "copy", "points": 30_000})
    );
    let second = export("copy").await;
    assert!(first == second, "export, import, export changed the bytes");

    let bad = client()
        .post(server.url("/api/v1/import?sensor_id=broken"))
        .body("timestamp_ms,value,quality\n1,2,192\n2,abc,192\n")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"], "invalid_csv");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("line 3: value \"abc\""),
        "{body}"
    );
    let nothing = client()
        .get(server.url("/api/v1/sensors/broken"))
        .send()
        .await
        .unwrap();
    assert_eq!(nothing.status(), StatusCode::NOT_FOUND, "all or nothing");

    let no_id = client()
        .post(server.url("/api/v1/import"))
        .body("timestamp_ms,value,quality\n")
        .send()
        .await
        .unwrap();
    assert_eq!(no_id.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_openapi_and_unknown_api_routes_via_oneshot() {
    let state = engine::http::AppState::new(TestStore::shared(10), &test_config());
    let app = engine::http::router(state, None);
    let response = app
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let response = app
        .clone()
        .oneshot(
            Request::get("/api/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/v1/export",
        "/api/v1/import",
        "/api/v1/series",
        "/api/v1/sensors",
        "/api/v1/sensors/{id}",
        "/api/v1/live",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} undocumented");
    }

    let response = app
        .clone()
        .oneshot(Request::get("/api/v1/nope").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"], "not_found");

    let response = app
        .oneshot(
            Request::delete("/api/v1/export")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"], "method_not_allowed");
}

#[tokio::test]
async fn the_dashboard_is_served_with_spa_fallback_after_the_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "<html>app</html>").unwrap();
    std::fs::create_dir(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("assets/app.js"), "console.log(1)").unwrap();
    let config = engine::http::HttpConfig {
        web_dir: Some(dir.path().to_owned()),
        ..test_config()
    };
    let server = TestServer::start_with(TestStore::shared(10), config).await;
    let get = |path: &str| client().get(server.url(path)).send();
    let index = get("/").await.unwrap();
    assert_eq!(index.status(), StatusCode::OK);
    assert_eq!(index.text().await.unwrap(), "<html>app</html>");
    assert_eq!(
        get("/assets/app.js").await.unwrap().text().await.unwrap(),
        "console.log(1)"
    );
    let deep = get("/dashboard/boiler?from=now-6h").await.unwrap();
    assert_eq!(deep.status(), StatusCode::OK);
    assert_eq!(deep.text().await.unwrap(), "<html>app</html>");
    // API routes come first; unknown API routes stay JSON 404s.
    assert_eq!(
        get("/api/v1/sensors").await.unwrap().text().await.unwrap(),
        "{\"sensors\":[]}"
    );
    assert_eq!(
        get("/api/v1/nope").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let config = engine::http::HttpConfig {
        header_read_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let server = TestServer::start_with(TestStore::shared(10), config).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The server closes (possibly after a 408); it must not wait for us.
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_running_exports_finish() {
    let store = TestStore::shared(4096);
    store.put("s", ramp(0, 300_000));
    let mut server = TestServer::start(store).await;
    let mut response = client()
        .get(server.url("/api/v1/export?sensor_id=s&start_ts=0&end_ts=99999999"))
        .send()
        .await
        .unwrap();
    let mut received = response.chunk().await.unwrap().unwrap().len();
    server.signal_shutdown();
    // The listener closes as soon as the accept loop sees the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(server.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert!(
        received > 300_000 * 10,
        "the running export finished: {received} bytes"
    );
    let task = server.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drops_exports_still_running_at_the_deadline() {
    let store = TestStore::shared(4096);
    // ~84 MB of CSV: far more than the loopback socket buffers can absorb
    // while the client reads nothing, so the export cannot finish by itself.
    store.put("s", ramp(0, 3_000_000));
    let config = engine::http::HttpConfig {
        shutdown_grace: Duration::from_millis(200),
        ..test_config()
    };
    let mut server = TestServer::start_with(store, config).await;
    let mut response = client()
        .get(server.url("/api/v1/export?sensor_id=s&start_ts=0&end_ts=99999999"))
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().unwrap();
    // We stop reading: the export cannot finish by itself.
    server.signal_shutdown();
    let task = server.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returned after the deadline")
        .unwrap()
        .unwrap();
    let mut failed = false;
    loop {
        match response.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a dropped export must not look complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_on_the_embedded_store_keeps_spikes_and_bounds_points() {
    let mut points = ramp(0, 100_000);
    points[54_321].1 = -1e9; // a dip inside one block
    points[99_998].1 = f64::NAN;
    let store = crate::support::Instrumented::embedded("s", points, None).await;
    let server = TestServer::start(store).await;
    for max_points in [4, 400, 1000, 10_000] {
        let body: serde_json::Value = client()
            .get(server.url(&format!(
                "/api/v1/series?sensor_id=s&start_ts=0&end_ts=100000&max_points={max_points}"
            )))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["count"], 100_000);
        assert_eq!(body["downsampled"], true);
        let ts: Vec<i64> = body["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect();
        assert!(ts.len() <= max_points, "{} > {max_points}", ts.len());
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "time order");
        assert_eq!(ts[0], 0, "first point kept");
        assert_eq!(*ts.last().unwrap(), 99_999, "last point kept");
        let values = body["values"].as_array().unwrap();
        assert!(
            values.contains(&serde_json::json!(-1e9)),
            "dip lost at {max_points}"
        );
    }
}

/// The real `engine serve`: SIGTERM stops accepting, lets a running export
/// finish, and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_serve_on_sigterm_finishes_running_exports_then_exits() {
    use crate::ingest_support::{free_port, wait_for_port};
    let dir = tempfile::tempdir().unwrap();
    let rows = 400_000;
    // The canonical form (what an export writes), so the download must be
    // byte-identical to the file imported.
    let encoder = engine::csv_format::CsvEncoder::default();
    let mut csv = Vec::new();
    encoder.write_header(&mut csv);
    let batch: engine::model::PointBatch = ramp(1_000, rows)
        .into_iter()
        .map(|(timestamp_ms, value, quality)| engine::model::Point {
            timestamp_ms,
            value,
            quality,
        })
        .collect();
    encoder.write_batch(&batch, &mut csv);
    let csv_path = dir.path().join("points.csv");
    std::fs::write(&csv_path, &csv).unwrap();
    let data = dir.path().join("data");
    let bin = crate::support::engine_bin();
    let import = std::process::Command::new(bin)
        .arg("import")
        .arg("--data-dir")
        .arg(&data)
        .args(["--sensor", "s"])
        .arg(&csv_path)
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );

    let (http, grpc) = (free_port(), free_port());
    let mut server = std::process::Command::new(bin)
        .arg("serve")
        // Not a test of auth (tests/it/auth.rs is).
        .arg("--no-auth")
        .arg("--data-dir")
        .arg(&data)
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--web-dir")
        .arg(dir.path().join("no-dashboard"))
        .stdout(std::process::Stdio::null())
        .stderr(crate::support::engine_log("http-api").0)
        .spawn()
        .unwrap();
    tokio::task::spawn_blocking(move || wait_for_port(http, Duration::from_secs(20)))
        .await
        .unwrap();

    let mut response = client()
        .get(format!(
            "http://127.0.0.1:{http}/api/v1/export?sensor_id=s&start_ts=0&end_ts=99999999"
        ))
        .send()
        .await
        .unwrap();
    let mut body = response.chunk().await.unwrap().unwrap().to_vec();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // Not reading for a while: the export is mid-way, held by backpressure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", http))
            .await
            .is_err(),
        "still accepting after SIGTERM"
    );
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert!(body == csv, "the running export was cut or changed");
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "engine serve exited with {status}");
}
