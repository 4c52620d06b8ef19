//! `GET /api/v1/export` against a real server on port 0: exact bytes,
//! headers, every error code, boundaries, parallel downloads, disconnects,
//! a mid-stream storage failure, compression, Excel options and XLSX.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    Instrumented, TestServer, TestStore, client, expected_csv, ramp, test_config,
};

const SENSOR: &str = "boiler-1/temp";

/// Awkward values: every float the format must keep.
fn awkward_store() -> Arc<TestStore> {
    let store = TestStore::shared(3);
    store.put(
        SENSOR,
        [
            (-1, -0.0, 0),
            (0, 5e-324, 64),
            (1, f64::NAN, 192),
            (2, f64::INFINITY, 192),
            (3, f64::NEG_INFINITY, 255),
            (4, 0.1 + 0.2, 192),
            (5, 1e300, 192),
            (6, 21.5, 192),
            (7, 3.0, 192),
        ],
    );
    store
}

async fn get(server: &TestServer, query: &str) -> reqwest::Response {
    client()
        .get(server.url(&format!("/api/v1/export?{query}")))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn csv_export_is_exact_with_download_headers() {
    let server = TestServer::start(awkward_store()).await;
    let response = get(&server, "sensor_id=boiler-1%2Ftemp&start_ts=-1&end_ts=8").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"boiler-1_temp_19691231T235959.999Z_19700101T000000.008Z.csv\"; \
         filename*=UTF-8''boiler-1%2Ftemp_19691231T235959.999Z_19700101T000000.008Z.csv"
    );
    assert!(
        headers.get("content-length").is_none(),
        "streamed, not buffered"
    );
    let body = response.text().await.unwrap();
    assert_eq!(
        body,
        expected_csv(&[
            (-1, "-0.0", 0),
            (0, "5e-324", 64),
            (1, "NaN", 192),
            (2, "inf", 192),
            (3, "-inf", 255),
            (4, "0.30000000000000004", 192),
            (5, "1e300", 192),
            (6, "21.5", 192),
            (7, "3.0", 192),
        ])
    );
}

#[tokio::test]
async fn range_is_half_open_and_accepts_rfc3339() {
    let server = TestServer::start(awkward_store()).await;
    // [0, 2): 0 and 1, not 2.
    let body = get(
        &server,
        &format!("sensor_id={}&start_ts=0&end_ts=2", "boiler-1/temp"),
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(body, expected_csv(&[(0, "5e-324", 64), (1, "NaN", 192)]));
    // The same range in RFC 3339 (+ encoded as %2B).
    let body = get(
        &server,
        "sensor_id=boiler-1/temp&start_ts=1970-01-01T00:00:00Z&end_ts=1970-01-01T01:00:00.002%2B01:00",
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(body, expected_csv(&[(0, "5e-324", 64), (1, "NaN", 192)]));
}

#[tokio::test]
async fn empty_ranges_are_the_header_alone() {
    let server = TestServer::start(awkward_store()).await;
    for query in [
        "start_ts=3&end_ts=3",
        "start_ts=100&end_ts=200",
        "start_ts=-99&end_ts=-1",
    ] {
        let response = get(&server, &format!("sensor_id=boiler-1/temp&{query}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        assert_eq!(
            response.text().await.unwrap(),
            "timestamp_ms,value,quality\n"
        );
    }
}

async fn assert_error(server: &TestServer, query: &str, status: StatusCode, code: &str) {
    let response = get(server, query).await;
    assert_eq!(response.status(), status, "{query}");
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "{query}"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], code, "{query}: {body}");
    let message = body["message"].as_str().unwrap();
    assert!(!message.is_empty(), "{query}");
}

#[tokio::test]
async fn every_error_is_json_with_its_code_before_any_csv() {
    let server = TestServer::start(awkward_store()).await;
    let bad = StatusCode::BAD_REQUEST;
    for query in [
        "start_ts=0&end_ts=1",
        "sensor_id=boiler-1/temp&end_ts=1",
        "sensor_id=boiler-1/temp&start_ts=0",
        "sensor_id=&start_ts=0&end_ts=1",
        "sensor_id=boiler-1/temp&start_ts=yesterday&end_ts=1",
        "sensor_id=boiler-1/temp&start_ts=0&end_ts=1e3",
        "sensor_id=boiler-1/temp&start_ts=0&end_ts=99999999999999999999",
        "sensor_id=boiler-1/temp&start_ts=5&end_ts=4",
        "sensor_id=boiler-1/temp&start_ts=0&end_ts=1&format=pdf",
        "sensor_id=boiler-1/temp&start_ts=0&end_ts=1&delimiter=x",
        "sensor_id=boiler-1/temp&start_ts=0&end_ts=1&bom=maybe",
        "sensor_id=boiler-1/temp&start_ts=0&end_ts=1&time_zone=Mars/Olympus",
        "sensor_id=boiler-1/temp&start_ts=0&end_ts=1&decimal=,",
    ] {
        assert_error(&server, query, bad, "invalid_parameter").await;
    }
    assert_error(
        &server,
        "sensor_id=nope&start_ts=0&end_ts=1",
        StatusCode::NOT_FOUND,
        "sensor_not_found",
    )
    .await;
    let body: serde_json::Value = get(&server, "sensor_id=nope&start_ts=0&end_ts=1")
        .await
        .json()
        .await
        .unwrap();
    assert!(body["message"].as_str().unwrap().contains("not found"));
    // The message names the problem.
    let body: serde_json::Value = get(&server, "sensor_id=boiler-1/temp&start_ts=5&end_ts=4")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("after end_ts"),
        "{body}"
    );
}

#[tokio::test]
async fn non_ascii_ids_get_an_rfc6266_filename() {
    let store = TestStore::shared(100);
    store.put("Kessel Ü1", [(1_767_225_600_000, 1.5, 192)]);
    let server = TestServer::start(store).await;
    let response = get(
        &server,
        "sensor_id=Kessel%20%C3%9C1&start_ts=2026-01-01T00:00:00Z&end_ts=2026-01-02T00:00:00Z",
    )
    .await;
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"Kessel_1_20260101T000000Z_20260102T000000Z.csv\"; \
         filename*=UTF-8''Kessel%20%C3%9C1_20260101T000000Z_20260102T000000Z.csv"
    );
}

#[tokio::test]
async fn excel_options_bom_semicolon_and_local_time() {
    let store = TestStore::shared(100);
    // Berlin leaves summer time at 2026-10-25T01:00Z: 02:30 local happens twice.
    store.put(
        "Kessel Ü1",
        [
            (1_792_888_200_000, 21.5, 192),
            (1_792_891_800_000, -0.25, 64),
        ],
    );
    let server = TestServer::start(store).await;
    let body = get(
        &server,
        "sensor_id=Kessel%20%C3%9C1&start_ts=0&end_ts=1800000000000&bom=true&delimiter=;&time_zone=Europe/Berlin",
    )
    .await
    .bytes()
    .await
    .unwrap();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        "\u{feff}timestamp_ms;value;quality;time_local\n\
         1792888200000;21.5;192;2026-10-25T02:30:00.000+02:00\n\
         1792891800000;-0.25;64;2026-10-25T02:30:00.000+01:00\n"
    );
    let body = get(
        &server,
        "sensor_id=Kessel%20%C3%9C1&start_ts=0&end_ts=1800000000000&delimiter=;&decimal=,",
    )
    .await
    .text()
    .await
    .unwrap();
    assert_eq!(
        body,
        "timestamp_ms;value;quality\n1792888200000;21,5;192\n1792891800000;-0,25;64\n"
    );
}

/// The real embedded store holding `n` points of [`SENSOR`].
async fn big_store(n: usize) -> Arc<Instrumented> {
    Instrumented::embedded(SENSOR, ramp(1_000_000, n), None).await
}

fn big_expected(n: usize) -> Vec<u8> {
    let encoder = engine::csv_format::CsvEncoder::default();
    let mut out = Vec::new();
    encoder.write_header(&mut out);
    let batch: engine::model::PointBatch = ramp(1_000_000, n)
        .into_iter()
        .map(|(t, v, q)| engine::model::Point {
            timestamp_ms: t,
            value: v,
            quality: q,
        })
        .collect();
    encoder.write_batch(&batch, &mut out);
    out
}

const BIG_QUERY: &str = "sensor_id=boiler-1/temp&start_ts=0&end_ts=9999999999";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_parallel_downloads_get_identical_bytes() {
    let n = 50_000;
    let server = TestServer::start(big_store(n).await).await;
    let expected = big_expected(n);
    let client = client();
    let downloads = (0..40).map(|_| {
        let client = client.clone();
        let url = server.url(&format!("/api/v1/export?{BIG_QUERY}"));
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.bytes().await.unwrap()
        })
    });
    for body in futures_util::future::join_all(downloads).await {
        assert!(body.unwrap() == expected[..], "a download differed");
    }
    assert_eq!(
        server.free_export_permits(),
        server.config.max_concurrent_exports
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_429_with_retry_after_and_the_permit_lives_with_the_body() {
    let config = engine::http::HttpConfig {
        max_concurrent_exports: 2,
        ..test_config()
    };
    // Big enough that a body cannot fit into the socket buffers and end.
    let server = TestServer::start_with(big_store(2_000_000).await, config).await;
    let client = client();
    let url = server.url(&format!("/api/v1/export?{BIG_QUERY}"));
    // Two downloads whose bodies we do not read yet: their headers are out,
    // the permits must still be held.
    let a = client.get(&url).send().await.unwrap();
    let b = client.get(&url).send().await.unwrap();
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(server.free_export_permits(), 0);
    let refused = client.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_requests");
    // Ending one (here: the client leaves) frees a slot.
    drop(a);
    wait_for(|| server.free_export_permits() == 1).await;
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::OK
    );
    drop(b);
}

async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not reached in 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_the_scan() {
    let store = big_store(1_000_000).await;
    let server = TestServer::start(store.clone()).await;
    let mut response = client()
        .get(server.url(&format!("/api/v1/export?{BIG_QUERY}")))
        .send()
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"timestamp_ms,value,quality\n"));
    assert_eq!(store.open_scans(), 1, "the export reads one scan");
    drop(response);
    // The scan itself must go (its stream dropped, which stops the store's
    // reader), not merely the response: counting batches after that point
    // could never change, so what counts is how far it got.
    wait_for(|| store.open_scans() == 0).await;
    let scanned = store.batches_yielded.load(Ordering::SeqCst);
    // 1M rows are 245 blocks of 4096, 27 MB of CSV; what the client left
    // unread fits in the socket buffers (a few MB, some tens of blocks).
    assert!(
        scanned < 200,
        "scanned {scanned} of 245 batches for a client that left"
    );
    wait_for(|| server.free_export_permits() == server.config.max_concurrent_exports).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_aborted_downloads_leave_nothing_behind() {
    let server = TestServer::start(big_store(300_000).await).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let idle_tasks = metrics.num_alive_tasks();
    let request = format!("GET /api/v1/export?{BIG_QUERY} HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..1000 {
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        // Abortive close (RST), as a browser cancelling a download.
        socket.set_zero_linger().unwrap();
        drop(socket);
    }
    wait_for(|| {
        server.free_export_permits() == server.config.max_concurrent_exports
            && metrics.num_alive_tasks() <= idle_tasks
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_failure_mid_stream_is_a_failed_download() {
    // The failure comes 30 blocks (245k rows, 7 MB) in. After 3 blocks,
    // with encoding as fast as it is now, the error sometimes (2 runs in
    // 8, under the other tests' load) ended the connection before any row
    // had reached the client: the download failed as it should, but the
    // test could not see that it failed mid-stream.
    let store = Instrumented::embedded(SENSOR, ramp(1_000_000, 100_000), Some(30)).await;
    let server = TestServer::start(store).await;
    let mut response = client()
        .get(server.url(&format!("/api/v1/export?{BIG_QUERY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = 0;
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received += chunk.len(),
            Ok(None) => panic!("the body ended cleanly after {received} bytes"),
            Err(error) => break error,
        }
    };
    assert!(received > 0, "some rows went out before the failure");
    assert!(error.is_body() || error.is_decode(), "{error:?}");

    // And curl, as a user would run it, reports the transfer failed. No
    // curl is a failure, not a skip (scripts/ensure-services installs it).
    let url = server.url(&format!("/api/v1/export?{BIG_QUERY}"));
    let curl = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", &url])
            .output()
    });
    let output = curl
        .await
        .unwrap()
        .expect("run curl (scripts/ensure-services installs it)");
    assert!(!output.status.success(), "curl saw a complete download");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("curl: (18)") || stderr.contains("curl: (56)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_zstd_are_honoured_and_decode_to_the_same_bytes() {
    let n = 100_000;
    let server = TestServer::start(big_store(n).await).await;
    let expected = big_expected(n);
    for encoding in ["gzip", "zstd"] {
        // Raw: check the header and that it is smaller.
        let raw = reqwest::Client::builder()
            .no_proxy()
            .no_gzip()
            .no_zstd()
            .build()
            .unwrap()
            .get(server.url(&format!("/api/v1/export?{BIG_QUERY}")))
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(raw.headers()["content-encoding"], encoding);
        let compressed = raw.bytes().await.unwrap();
        assert!(
            compressed.len() * 2 < expected.len(),
            "{encoding}: {}",
            compressed.len()
        );
        // Decoded by the client.
        let decoded = client()
            .get(server.url(&format!("/api/v1/export?{BIG_QUERY}")))
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(decoded == expected[..], "{encoding} decoded differently");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xlsx_is_a_real_workbook_continued_on_next_sheets() {
    use calamine::{Data, Reader, Xlsx};
    let store = TestStore::shared(7);
    let mut points = ramp(1_767_225_600_000, 25);
    points[3].1 = f64::NAN;
    points[4].1 = f64::NEG_INFINITY;
    points[5].1 = 0.1 + 0.2;
    store.put("Kessel Ü1", points.clone());
    let config = engine::http::HttpConfig {
        xlsx_rows_per_sheet: 10,
        ..test_config()
    };
    let server = TestServer::start_with(store, config).await;
    let response = client()
        .get(server.url(
            "/api/v1/export?sensor_id=Kessel%20%C3%9C1&start_ts=0&end_ts=9999999999999&format=xlsx&time_zone=Europe/Berlin",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(".xlsx\"")
    );
    assert!(response.headers().get("content-encoding").is_none());
    let bytes = response.bytes().await.unwrap();
    assert!(
        bytes.starts_with(b"PK\x03\x04"),
        "a zip, streamed from its first part"
    );
    let mut workbook = Xlsx::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let names = workbook.sheet_names();
    // Three data sheets (25 rows at 10 a sheet), then the information sheet.
    assert_eq!(names, ["Sheet1", "Sheet2", "Sheet3", "Info"]);
    let mut rows = Vec::new();
    for name in &names[..3] {
        let range = workbook.worksheet_range(name).unwrap();
        let mut sheet_rows = range.rows();
        let header: Vec<String> = sheet_rows
            .next()
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            header,
            [
                "timestamp_ms",
                "value",
                "quality",
                "time_local",
                "utc_offset"
            ]
        );
        rows.extend(sheet_rows.map(|r| r.to_vec()));
    }
    assert_eq!(rows.len(), 25);
    for (row, (t, v, q)) in rows.iter().zip(&points) {
        assert_eq!(row[0], Data::Float(*t as f64));
        match &row[1] {
            Data::Float(got) => assert_eq!(got.to_bits(), v.to_bits(), "exact number"),
            Data::String(text) if v.is_nan() => assert_eq!(text, "NaN"),
            Data::String(text) if v.is_infinite() => assert_eq!(text, "-inf"),
            other => panic!("{other:?} for {v}"),
        }
        assert_eq!(row[2], Data::Float(f64::from(*q)));
    }
    // Local time is a real date-time (Excel's serial day number, local
    // wall clock), its offset text beside it: 2026-01-01T01:00:00.000+01:00.
    match &rows[0][3] {
        Data::DateTime(date) => assert_eq!(date.as_f64(), (46_023.0 * 24.0 + 1.0) / 24.0),
        other => panic!("time_local is {other:?}, not a date-time"),
    }
    assert_eq!(rows[0][4], Data::String("UTC+01:00".into()));
    // The information sheet names what the workbook holds.
    let info = workbook.worksheet_range("Info").unwrap();
    let info: Vec<(String, String)> = info
        .rows()
        .map(|r| (r[0].to_string(), r[1].to_string()))
        .collect();
    let field = |name: &str| {
        info.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {info:?}"))
    };
    assert_eq!(field("sensor 1"), "Kessel Ü1");
    assert_eq!(field("range start (UTC)"), "1970-01-01T00:00:00.000Z");
    assert_eq!(field("time zone"), "Europe/Berlin");
    assert_eq!(field("rows"), "25");
    assert!(field("query").contains("sensor_id=Kessel%20%C3%9C1"));
    assert!(field("exported at (UTC)").ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xlsx_storage_failure_aborts_the_download() {
    let store = Instrumented::embedded(SENSOR, ramp(1_000_000, 50_000), Some(2)).await;
    let server = TestServer::start(store).await;
    let response = client()
        .get(server.url(&format!("/api/v1/export?{BIG_QUERY}&format=xlsx")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_first_byte_is_immediate_even_for_a_big_range() {
    let server = TestServer::start(big_store(1_000_000).await).await;
    let started = Instant::now();
    let mut response = client()
        .get(server.url(&format!("/api/v1/export?{BIG_QUERY}")))
        .send()
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    let ttfb = started.elapsed();
    assert!(first.starts_with(b"timestamp_ms"));
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    let total = started.elapsed();
    // Relative, as debug builds on a loaded 2-core machine are slow; the
    // benchmark measures the real figure in release.
    assert!(ttfb * 10 < total, "first byte after {ttfb:?} of {total:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_is_byte_identical_to_engine_export() {
    use crate::support::open_embedded;
    use engine::storage::StorageEngine;
    use engine::storage::embedded::EmbeddedOptions;
    let dir = tempfile::tempdir().unwrap();
    let mut points = ramp(-20_000, 40_000);
    points[10].1 = -0.0;
    points[11].1 = f64::NAN;
    points[12].1 = f64::INFINITY;
    points[13].1 = 5e-324;
    points[14].1 = 1e300;
    {
        let source = Instrumented::embedded(SENSOR, points, None).await;
        // Copy into a directory we control, through the trait.
        let store = open_embedded(dir.path(), EmbeddedOptions::default()).await;
        let id = engine::model::SensorId::new(SENSOR).unwrap();
        let scan = source.scan(&id, engine::model::TimeRange::ALL);
        store.import(&id, scan).await.unwrap();
        store.close().await.unwrap();
    }
    let path = dir.path().to_owned();
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .arg("export")
            .arg("--data-dir")
            .arg(&path)
            .args([
                "--sensor",
                SENSOR,
                "--start=-15000",
                "--end=2026-01-01T00:00:00Z",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );

    let store = open_embedded(dir.path(), EmbeddedOptions::default()).await;
    let server = TestServer::start(store).await;
    let http = get(
        &server,
        "sensor_id=boiler-1/temp&start_ts=-15000&end_ts=2026-01-01T00:00:00Z",
    )
    .await
    .bytes()
    .await
    .unwrap();
    assert_eq!(http.len(), cli.stdout.len());
    assert!(http == cli.stdout, "HTTP and CLI exports differ");
    assert!(http.starts_with(b"timestamp_ms,value,quality\n-15000,"));
}
