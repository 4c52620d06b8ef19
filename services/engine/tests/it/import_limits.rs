//! Imports never hold up other writers, and a stalled or oversized upload
//! ends with a clear answer and nothing stored.

use std::sync::Arc;
use std::time::Duration;

use engine::model::TimeRange;
use engine::storage::{SharedStorage, StorageEngine};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    TestServer, TestStore, client, point, samples, scan_all, sensor, test_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_import_blocks_no_writer_and_times_out_storing_nothing() {
    let store = TestStore::shared(4096);
    let storage: SharedStorage = store.clone();
    let config = engine::http::HttpConfig {
        import_idle_timeout: Duration::from_secs(3),
        ..test_config()
    };
    let server = TestServer::start_with(storage.clone(), config).await;

    // An upload that sends its first rows, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(
            b"POST /api/v1/import?sensor_id=stalled HTTP/1.1\r\nHost: x\r\n\
              Content-Length: 1000000\r\n\r\ntimestamp_ms,value,quality\n1,1.5,192\n2,2.5,192\n",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Meanwhile every other writer goes on: direct writes and another import.
    for i in 0..50 {
        storage
            .write(samples(&sensor("other"), [point(i, i as f64, 192)]))
            .await
            .unwrap();
    }
    let quick = client()
        .post(server.url("/api/v1/import?sensor_id=quick"))
        .body("timestamp_ms,value,quality\n5,0.5,192\n6,-0.0,0\n")
        .send()
        .await
        .unwrap();
    assert_eq!(quick.status(), StatusCode::OK);
    assert_eq!(
        scan_all(&*storage, &sensor("other"), TimeRange::ALL)
            .await
            .len(),
        50
    );
    assert_eq!(
        scan_all(&*storage, &sensor("quick"), TimeRange::ALL)
            .await
            .len(),
        2
    );

    // All of that happened while the stalled upload was still open.
    let mut first = [0u8; 1];
    let pending = tokio::time::timeout(Duration::from_millis(10), stalled.peek(&mut first)).await;
    assert!(
        pending.is_err(),
        "the stalled import was answered before the writers finished"
    );

    // Then it is abandoned with 408, and nothing of it is stored.
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut response))
        .await
        .expect("the stalled import is answered")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains("\"error\":\"request_timeout\""),
        "{response}"
    );
    assert_eq!(storage.sensor(&sensor("stalled")).await.unwrap(), None);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_import_is_refused_and_stores_nothing() {
    let store = Arc::new(TestStore::new(4096));
    let config = engine::http::HttpConfig {
        import_max_bytes: 10_000,
        ..test_config()
    };
    let server = TestServer::start_with(store.clone(), config).await;
    let mut body = String::from("timestamp_ms,value,quality\n");
    for i in 0..2000 {
        body.push_str(&format!("{i},{}.25,192\n", i % 100));
    }
    assert!(body.len() > 10_000);
    let response = client()
        .post(server.url("/api/v1/import?sensor_id=big"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "payload_too_large");
    assert_eq!(store.sensor(&sensor("big")).await.unwrap(), None);
    // Within the limit, the same kind of upload is taken.
    let response = client()
        .post(server.url("/api/v1/import?sensor_id=big"))
        .body(body[..9_000].rsplit_once('\n').unwrap().0.to_owned() + "\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
