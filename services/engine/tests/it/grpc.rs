//! The gRPC API with a real tonic client, and the SSE live endpoint.

use std::sync::Arc;
use std::time::Duration;

use engine::grpc::pb::sensor_engine_client::SensorEngineClient;
use engine::grpc::pb::{ListSensorsRequest, Point, ScanRequest, SubscribeRequest, WriteRequest};
use engine::live::{LiveHub, LiveStorage};
use engine::storage::SharedStorage;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub fn point(sensor: &str, ts: i64, value: f64) -> Point {
    Point {
        sensor_id: sensor.to_owned(),
        timestamp_ms: ts,
        value: Some(value),
        quality: 192,
    }
}

struct Server {
    addr: std::net::SocketAddr,
    hub: LiveHub,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start_server() -> Server {
    let live = Arc::new(LiveStorage::new(crate::support::TestStore::shared(4096)));
    let hub = live.hub().clone();
    let storage: SharedStorage = live;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(engine::grpc::serve(
        listener,
        storage,
        hub.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        hub,
        stop,
        task,
    }
}

async fn client(addr: std::net::SocketAddr) -> SensorEngineClient<Channel> {
    SensorEngineClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn write_scan_list_and_subscribe_with_a_tonic_client() {
    let server = start_server().await;
    let mut client = client(server.addr).await;

    let mut follower = client
        .subscribe(SubscribeRequest {
            sensor_id: "Kessel Ü1/Temperatur".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let requests = vec![
        WriteRequest {
            points: vec![point("Kessel Ü1/Temperatur", 10, 1.5), point("b", 1, 2.0)],
        },
        WriteRequest { points: vec![] },
        WriteRequest {
            points: vec![
                point("Kessel Ü1/Temperatur", 5, f64::NAN),
                point("Kessel Ü1/Temperatur", 7, -0.0),
                point("Kessel Ü1/Temperatur", 10, 5e-324),
            ],
        },
    ];
    let response = client
        .write(futures_util::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.points_written, 5);

    // Requests that queue up may be merged into one store write, so the
    // follower sees one or two updates; together, every point in order.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let update = tokio::time::timeout(Duration::from_secs(5), follower.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!update.resync);
        seen.extend(update.timestamps_ms.into_iter().zip(update.values));
    }
    assert_eq!(seen[0], (10, 1.5));
    assert_eq!(seen[1].0, 5);
    assert_eq!((seen[2].0, seen[2].1.to_bits()), (7, (-0.0f64).to_bits()));
    assert_eq!(seen[3], (10, 5e-324));

    let mut scan = client
        .scan(ScanRequest {
            sensor_id: "Kessel Ü1/Temperatur".into(),
            start_ms: Some(0),
            end_ms: Some(11),
        })
        .await
        .unwrap()
        .into_inner();
    let batch = scan.next().await.unwrap().unwrap();
    assert_eq!(batch.timestamps_ms, vec![5, 7, 10]);
    assert!(batch.values[0].is_nan());
    // Bit-exact both ways: -0.0 (sent because `value` has explicit presence)
    // and a subnormal.
    assert_eq!(batch.values[1].to_bits(), (-0.0f64).to_bits(), "-0.0 kept");
    assert_eq!(batch.values[2].to_bits(), 5e-324f64.to_bits(), "bit-exact");
    assert_eq!(batch.qualities, vec![192, 192, 192]);
    assert!(scan.next().await.is_none());

    let sensors = client
        .list_sensors(ListSensorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sensors;
    let ids: Vec<&str> = sensors.iter().map(|s| s.sensor_id.as_str()).collect();
    assert_eq!(ids, vec!["Kessel Ü1/Temperatur", "b"]);
    assert_eq!(sensors[0].count, 3);

    // Errors: not found, bad input (nothing of that request stored).
    let status = client
        .scan(ScanRequest {
            sensor_id: "nope".into(),
            start_ms: None,
            end_ms: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let mut bad = point("b", 2, 1.0);
    bad.quality = 999;
    let status = client
        .write(futures_util::stream::iter(vec![WriteRequest {
            points: vec![point("b", 3, 1.0), bad],
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("point 1"), "{}", status.message());
    // A point without a value is refused, naming it, never stored as 0.0;
    // nothing of its request is stored.
    let mut unset = point("unset", 2, 0.0);
    unset.value = None;
    let status = client
        .write(futures_util::stream::iter(vec![WriteRequest {
            points: vec![point("unset", 1, 1.0), unset],
        }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        r#"point 1 (sensor_id "unset", timestamp_ms 2): value is not set"#
    );
    let status = scan_all(&mut client, "unset").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    // Shutdown ends the open Subscribe stream, then the server returns.
    server.stop.send(()).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), follower.next())
        .await
        .expect("subscribe stream ended at shutdown");
    assert!(end.is_none() || end.unwrap().is_err());
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("server stopped")
        .unwrap()
        .unwrap();
    assert_eq!(server.hub.followed_sensors(), 0);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = start_server().await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sensor.v1.SensorEngine".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures_util::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"sensor.v1.SensorEngine".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn sse_endpoint_pushes_points_as_they_are_written() {
    let live = Arc::new(LiveStorage::new(crate::support::TestStore::shared(4096)));
    let app: axum::Router = engine::live::routes(live.hub().clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // A bad request is a JSON 400.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/v1/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut reply)
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains(r#""error":"invalid_parameter""#), "{reply}");

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(
            b"GET /api/v1/live?sensor_id=Kessel%20%C3%9C1%2FTemperatur HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    let mut head = Vec::new();
    loop {
        let line = lines.next_line().await.unwrap().unwrap();
        if line.is_empty() {
            break;
        }
        head.push(line.to_ascii_lowercase());
    }
    assert!(head[0].starts_with("http/1.1 200"), "{head:?}");
    assert!(
        head.iter().any(|h| h == "content-type: text/event-stream"),
        "{head:?}"
    );
    // Wait for the subscription to exist, then write.
    while live.hub().followed_sensors() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let storage: SharedStorage = live.clone();
    let sample = |ts: i64, value: f64| engine::model::Sample {
        sensor_id: engine::model::SensorId::new("Kessel Ü1/Temperatur").unwrap(),
        seq: None,
        point: engine::model::Point {
            timestamp_ms: ts,
            value,
            quality: 192,
        },
    };
    storage
        .write(vec![sample(1, 21.5), sample(2, f64::NAN)])
        .await
        .unwrap();
    let mut event = Vec::new();
    while event.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Chunked framing lines and the opening comment are not ours.
        if line.starts_with("event:") || line.starts_with("data:") {
            event.push(line);
        }
    }
    assert_eq!(event[0], "event: points");
    assert_eq!(
        event[1],
        r#"data: {"timestamps":[1,2],"values":[21.5,null],"qualities":[192,192]}"#
    );
}

/// Every point of `sensor` through gRPC Scan, as `(timestamp, value)`, or
/// the status the call or its stream failed with (`NOT_FOUND` for a sensor
/// without points): never an error passed off as an empty sensor.
pub async fn scan_all(
    client: &mut SensorEngineClient<Channel>,
    sensor: &str,
) -> Result<Vec<(i64, f64)>, tonic::Status> {
    let mut scan = client
        .scan(ScanRequest {
            sensor_id: sensor.into(),
            start_ms: None,
            end_ms: None,
        })
        .await?
        .into_inner();
    let mut points = Vec::new();
    while let Some(batch) = scan.next().await {
        let batch = batch?;
        points.extend(batch.timestamps_ms.into_iter().zip(batch.values));
    }
    Ok(points)
}

/// Connects to a (re)started engine, retrying while it comes up.
pub async fn connect_engine(url: String) -> SensorEngineClient<Channel> {
    for _ in 0..100 {
        if let Ok(client) = SensorEngineClient::connect(url.clone()).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to {url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    use crate::ingest_support::Engine;

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(dir.path(), &[]);
    let url = engine.grpc_url();
    const PER_CALL: i64 = 500;
    let writer = tokio::spawn({
        let url = url.clone();
        async move {
            let mut client = connect_engine(url).await;
            let mut acknowledged = 0i64;
            // Each call is one acknowledgement: its points are durable once
            // the response arrives.
            for call in 0.. {
                let points = (call * PER_CALL..(call + 1) * PER_CALL)
                    .map(|ts| point("sigkill/grpc", ts, ts as f64 * 0.5))
                    .collect();
                let result = client
                    .write(futures_util::stream::iter(vec![WriteRequest { points }]))
                    .await;
                match result {
                    Ok(response) => {
                        assert_eq!(response.into_inner().points_written, PER_CALL as u64);
                        acknowledged = (call + 1) * PER_CALL;
                    }
                    Err(_) => break,
                }
            }
            acknowledged
        }
    });
    // Let the writer get well under way, then pull the plug.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    engine.kill();
    let acknowledged = writer.await.unwrap();
    assert!(acknowledged > 0, "nothing was acknowledged before the kill");

    let engine = Engine::start(dir.path(), &[]);
    let mut client = connect_engine(engine.grpc_url()).await;
    let stored = scan_all(&mut client, "sigkill/grpc").await.expect("scan");
    assert!(
        stored.len() as i64 >= acknowledged,
        "{} stored < {acknowledged} acknowledged",
        stored.len()
    );
    for (i, (ts, value)) in stored.iter().enumerate() {
        assert_eq!(*ts, i as i64, "points are contiguous from 0, once each");
        assert_eq!(*value, *ts as f64 * 0.5);
    }
    eprintln!(
        "gRPC SIGKILL: {acknowledged} acknowledged, {} stored after restart",
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_history_and_live_points_and_sigterm_drains_everything() {
    use crate::ingest_support::{Engine, NatsServer};

    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::start(dir.path(), &["--demo", "--nats-url", &nats.url()]);
    let mut client = connect_engine(engine.grpc_url()).await;

    // A week of history at 10 s for five sensors, written at start.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let sensors = client
            .list_sensors(ListSensorsRequest {})
            .await
            .unwrap()
            .into_inner()
            .sensors;
        let complete = sensors.len() == 5
            && sensors.iter().all(|s| {
                s.count >= 60_000
                    && s.last_timestamp_ms - s.first_timestamp_ms >= 7 * 24 * 3_600_000 - 20_000
            });
        if complete {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backfill incomplete: {sensors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Then live points, about once a second, through Subscribe.
    let mut follower = client
        .subscribe(SubscribeRequest {
            sensor_id: "Kessel Ü1/Temperatur".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let update = tokio::time::timeout(Duration::from_secs(10), follower.next())
        .await
        .expect("a live demo point within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(update.timestamps_ms.len(), 1, "{update:?}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now_ms - update.timestamps_ms[0]).abs() < 5_000);

    // SIGTERM: every component stops on the one signal; the open Subscribe
    // stream ends instead of holding the server up.
    let pid = engine.child.id().to_string();
    let started = std::time::Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = engine.child.wait().unwrap();
        (status, engine)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match follower.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the Subscribe stream ended");
    assert!(end.is_none() || end.unwrap().is_err());
}
