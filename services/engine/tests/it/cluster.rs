//! Cluster mode (issue 11 item 4): several `engine serve` processes on one
//! PostgreSQL database and one NATS JetStream (a 3-node nats-server cluster
//! with a 3-replica stream), on loopback.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use engine::grpc::pb::sensor_engine_client::SensorEngineClient;
use engine::grpc::pb::{SubscribeRequest, WriteRequest};
use futures_util::StreamExt;

use crate::grpc::{connect_engine, point, scan_all};
use crate::ingest_support::{NATS_SERVER, free_port, wait_until_listening};
use crate::pg_support::TestDatabase;

/// One `engine serve` of a cluster, SIGKILLed on drop.
pub struct ClusterEngine {
    child: Child,
    pub http_port: u16,
    pub grpc_port: u16,
    store: String,
    nats_urls: String,
    extra: Vec<String>,
}

/// Starts `engine serve` on the shared store and NATS servers, on the given
/// ports, and waits until HTTP and gRPC accept connections. The one place
/// the cluster tests start engines: flags every engine needs go here.
pub fn start_engine(
    store: &str,
    nats_urls: &str,
    http_port: u16,
    grpc_port: u16,
    extra: &[String],
) -> ClusterEngine {
    let dir = std::env::temp_dir();
    let child = Command::new(env!("CARGO_BIN_EXE_engine"))
        .current_dir(&dir)
        .arg("serve")
        // Loopback only: the tests of tokens are in auth.rs.
        .arg("--no-auth")
        .args(["--store", store])
        .args(["--nats-url", nats_urls])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
        .args(["--web-dir", "/nonexistent"])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(crate::support::engine_log("cluster").0)
        .spawn()
        .expect("start engine");
    let mut engine = ClusterEngine {
        child,
        http_port,
        grpc_port,
        store: store.to_owned(),
        nats_urls: nats_urls.to_owned(),
        extra: extra.to_vec(),
    };
    for port in [grpc_port, http_port] {
        if let Err(why) = wait_until_listening(&mut engine.child, port, Duration::from_secs(60)) {
            panic!("engine: {why}");
        }
    }
    engine
}

impl ClusterEngine {
    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// SIGKILL, then the same engine again on the same ports.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        *self = start_engine(
            &self.store,
            &self.nats_urls,
            self.http_port,
            self.grpc_port,
            &self.extra,
        );
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ClusterEngine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One nats-server of a [`NatsCluster`].
struct Node {
    name: String,
    port: u16,
    child: Option<Child>,
}

/// Three nats-servers with JetStream in one cluster, on private ports and
/// directories, killed on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    pub fn start(size: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for i in 0..size {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{}\n\
                 jetstream {{ store_dir: {:?} }}\n\
                 cluster {{ name: engine_test\n listen: 127.0.0.1:{}\n routes: [{routes}] }}\n",
                client_ports[i],
                store.display().to_string(),
                route_ports[i],
            );
            let path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&path, config).unwrap();
            let child = Command::new(NATS_SERVER)
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server");
            nodes.push(Node {
                name,
                port: client_ports[i],
                child: Some(child),
            });
        }
        let mut cluster = Self { nodes, _dir: dir };
        for node in &mut cluster.nodes {
            let port = node.port;
            if let Err(why) =
                wait_until_listening(node.child.as_mut().unwrap(), port, Duration::from_secs(20))
            {
                panic!("nats-server {}: {why}", node.name);
            }
        }
        cluster
    }

    /// Every server's URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs the server named `name`; returns when it is gone.
    fn kill(&mut self, name: &str) {
        let node = self.nodes.iter_mut().find(|n| n.name == name).unwrap();
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client of the servers still running.
    async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("nats://127.0.0.1:{}", n.port).parse().unwrap())
            .collect();
        async_nats::ConnectOptions::new()
            .connect(addrs)
            .await
            .expect("connect to the NATS cluster")
    }

    /// Waits until JetStream answers (a meta leader was elected).
    async fn wait_for_jetstream(&self) {
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = || async {
            let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
            let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
            info.get("error").is_none().then_some(())
        };
        while ready().await.is_none() {
            assert!(Instant::now() < deadline, "JetStream cluster not ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

const SENSORS: usize = 10;
const TIMESTAMPS: i64 = 100;
const ROUNDS: u64 = 6;

fn sensor_of(key: usize) -> String {
    format!("cluster/line-{}", key % SENSORS)
}

fn timestamp_of(key: usize) -> i64 {
    1_767_225_600_000 + (key / SENSORS) as i64 * 1_000
}

/// A full-precision value, distinct per round and key.
fn value_of(round: u64, key: usize) -> f64 {
    ((round * 1_000_003 + key as u64) as f64) / 7.0 + 0.1
}

fn message(round: u64, key: usize) -> bytes::Bytes {
    format!(
        r#"{{"sensor_id":"{}","timestamp_ms":{},"value":{:?}}}"#,
        sensor_of(key),
        timestamp_of(key),
        value_of(round, key)
    )
    .into()
}

/// Publishes one round (every key once; every seventh twice, a duplicate
/// publish) and returns when JetStream acknowledged all of it, retrying what
/// failed (a retried publish that had landed is a duplicate too). Returns
/// the time of the first failure and of the first success after it.
async fn publish_round(js: &jetstream::Context, round: u64) -> (Option<Instant>, Option<Instant>) {
    let keys = SENSORS * TIMESTAMPS as usize;
    let mut todo: Vec<usize> = (0..keys).chain((0..keys).step_by(7)).collect();
    let (mut failed_at, mut resumed_at) = (None, None);
    while !todo.is_empty() {
        let mut failed = Vec::new();
        for chunk in todo.chunks(200) {
            let mut acks = Vec::new();
            for &key in chunk {
                let subject = format!("sensors.{}", sensor_of(key).replace('/', "."));
                acks.push((key, js.publish(subject, message(round, key)).await));
            }
            for (key, ack) in acks {
                let ok = match ack {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    if failed_at.is_some() && resumed_at.is_none() {
                        resumed_at = Some(Instant::now());
                    }
                } else {
                    failed_at.get_or_insert_with(Instant::now);
                    failed.push(key);
                }
            }
        }
        if !failed.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        todo = failed;
    }
    (failed_at, resumed_at)
}

/// The highest stream sequence stored in `points` so far.
async fn max_stored_seq(db: &tokio_postgres::Client) -> u64 {
    let row = db
        .query_one(
            "SELECT coalesce(max(version), -9223372036854775808) FROM points WHERE version < 0",
            &[],
        )
        .await
        .unwrap();
    let stored: i64 = row.get(0);
    (stored as u64) ^ (1 << 63)
}

/// Every sensor's export as CSV from one engine, concatenated.
async fn exports(http: &reqwest::Client, engine: &ClusterEngine) -> Vec<u8> {
    let mut all = Vec::new();
    for s in 0..SENSORS {
        let url = engine.http(&format!(
            "/api/v1/export?sensor_id={}&start_ts=0&end_ts=9999999999999",
            sensor_of(s).replace('/', "%2F")
        ));
        let response = http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        all.extend_from_slice(&response.bytes().await.unwrap());
    }
    all
}

/// The cluster test of the issue: publishes with overwrites and duplicates
/// while the stream's leader and one engine are SIGKILLed; at the end every
/// key holds its last published value once, the consumer has nothing
/// pending, and all three engines export the same bytes. Also measures the
/// failover: how long after the leader's death ingestion goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_survive_the_stream_leader_and_an_engine_dying() {
    let started = Instant::now();
    let db = TestDatabase::create().await;
    let mut nats = NatsCluster::start(3);
    nats.wait_for_jetstream().await;
    let extra = vec!["--nats-replicas".to_owned(), "3".to_owned()];
    let mut engines: Vec<ClusterEngine> = (0..3)
        .map(|_| start_engine(&db.url(), &nats.urls(), free_port(), free_port(), &extra))
        .collect();
    let client = nats.client().await;
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    // The engines create the stream, with three replicas.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        if let Ok(stream) = js.get_stream("SENSORS").await {
            break stream;
        }
        assert!(Instant::now() < deadline, "no engine created the stream");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stream.info().await.unwrap().config.num_replicas, 3);
    let pg = db.client().await;

    for round in 0..2 {
        publish_round(&js, round).await;
    }
    // Kill the stream's leader while the engines are consuming.
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the stream has a leader");
    let before_kill = max_stored_seq(&pg).await;
    let killed_at = Instant::now();
    nats.kill(&leader);
    let (_, publish_resumed) = publish_round(&js, 2).await;
    // Ingestion resumed: a message published after the kill is stored.
    let deadline = killed_at + Duration::from_secs(30);
    while max_stored_seq(&pg).await <= before_kill {
        assert!(Instant::now() < deadline, "ingestion did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ingest_resumed = killed_at.elapsed();
    let publish_resumed = publish_resumed.map(|at| at.duration_since(killed_at));
    eprintln!(
        "FAILOVER: stream leader {leader} killed; publishing resumed after {publish_resumed:?}, \
         ingestion into PostgreSQL after {ingest_resumed:?}"
    );
    assert!(
        ingest_resumed < Duration::from_secs(15),
        "ingestion resumed only after {ingest_resumed:?}"
    );

    // Kill an engine with messages in flight, and bring it back.
    publish_round(&js, 3).await;
    let publishing = {
        let js = js.clone();
        tokio::spawn(async move {
            publish_round(&js, 4).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    engines[1].kill_and_restart();
    publishing.await.unwrap();
    publish_round(&js, ROUNDS - 1).await;

    // Everything consumed and acknowledged.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("sensor-engine").await.unwrap();
    loop {
        if let Ok(info) = consumer.info().await
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer still has messages pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stream.info().await;

    // Every key once, with its last published value.
    let keys = SENSORS * TIMESTAMPS as usize;
    let rows: i64 = pg
        .query_one("SELECT count(*) FROM points", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, keys as i64);
    let mut grpc = connect_engine(engines[2].grpc_url()).await;
    let mut stored: HashMap<(String, i64), u64> = HashMap::new();
    for s in 0..SENSORS {
        for (ts, value) in scan_all(&mut grpc, &sensor_of(s)).await.unwrap() {
            stored.insert((sensor_of(s), ts), value.to_bits());
        }
    }
    assert_eq!(stored.len(), keys);
    for key in 0..keys {
        assert_eq!(
            stored[&(sensor_of(key), timestamp_of(key))],
            value_of(ROUNDS - 1, key).to_bits(),
            "key {key}"
        );
    }

    // The same export, byte for byte, from every engine.
    let http = crate::support::client();
    let first = exports(&http, &engines[0]).await;
    assert!(first.len() > keys * 10);
    for engine in &engines[1..] {
        assert!(exports(&http, engine).await == first, "exports differ");
    }
    eprintln!("cluster test took {:?}", started.elapsed());
}

/// Reads server-sent events from `url` until one carries `needle`.
async fn sse_until(
    http: &reqwest::Client,
    url: String,
    needle: String,
) -> tokio::task::JoinHandle<bool> {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    tokio::spawn(async move {
        let mut seen = String::new();
        let read = async {
            while let Some(Ok(chunk)) = body.next().await {
                seen.push_str(&String::from_utf8_lossy(&chunk));
                if seen.contains(&needle) {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or(false)
    })
}

async fn write(
    client: &mut SensorEngineClient<tonic::transport::Channel>,
    sensor: &str,
    ts: i64,
    value: f64,
) {
    client
        .write(futures_util::stream::iter(vec![WriteRequest {
            points: vec![point(sensor, ts, value)],
        }]))
        .await
        .unwrap();
}

async fn import(http: &reqwest::Client, engine: &ClusterEngine, sensor: &str, csv: &str) {
    let response = http
        .post(engine.http(&format!("/api/v1/import?sensor_id={sensor}")))
        .body(csv.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// What "the later write wins" means across engines: direct writes (HTTP
/// import, gRPC Write) are ordered by a version the database hands out, so
/// the write made later wins, whichever engine took it; a direct write
/// outranks every NATS message of the same point. A point stored by one
/// engine reaches SSE and Subscribe followers of the others. `/readyz`
/// follows NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_order_across_engines_and_live_view_spans_them() {
    let db = TestDatabase::create().await;
    let nats = crate::ingest_support::NatsServer::start();
    let a = start_engine(&db.url(), &nats.url(), free_port(), free_port(), &[]);
    let b = start_engine(&db.url(), &nats.url(), free_port(), free_port(), &[]);
    let http = crate::support::client();
    let mut grpc_a = connect_engine(a.grpc_url()).await;
    let mut grpc_b = connect_engine(b.grpc_url()).await;

    // Both ready: store and NATS reachable.
    for engine in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = http.get(engine.http("/readyz")).send().await.unwrap();
            if response.status() == 200 {
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["checks"]["nats"], "ok", "{body}");
                assert_eq!(body["checks"]["store"], "ok", "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "engine not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Import at A, then a gRPC write at B, then an import at A again, of
    // one point: each later write wins, on both engines.
    import(
        &http,
        &a,
        "d",
        "timestamp_ms,value,quality\n5,1.5,192\n6,1.0,192\n",
    )
    .await;
    write(&mut grpc_b, "d", 5, 2.5).await;
    for client in [&mut grpc_a, &mut grpc_b] {
        assert_eq!(
            scan_all(client, "d").await.unwrap(),
            vec![(5, 2.5), (6, 1.0)]
        );
    }
    import(&http, &a, "d", "timestamp_ms,value,quality\n5,3.5,192\n").await;
    assert_eq!(
        scan_all(&mut grpc_b, "d").await.unwrap(),
        vec![(5, 3.5), (6, 1.0)]
    );
    // A NATS message never overrides a direct write of the same point.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.publish(
        "sensors.d",
        r#"[{"sensor_id":"d","timestamp_ms":5,"value":9.5},{"sensor_id":"d","timestamp_ms":7,"value":7.5}]"#.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let points = scan_all(&mut grpc_a, "d").await.unwrap();
        if points.len() == 3 {
            assert_eq!(points, vec![(5, 3.5), (6, 1.0), (7, 7.5)]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NATS point not stored: {points:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Live: an SSE follower at A and a Subscribe follower at B see a point
    // written at B, then one written at A.
    let sse_at_a = sse_until(
        &http,
        a.http("/api/v1/live?sensor_id=live"),
        r#""timestamps":[42],"values":[4.25]"#.to_owned(),
    )
    .await;
    let mut follower_b = grpc_b
        .subscribe(SubscribeRequest {
            sensor_id: "live".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Followers exist once their requests are answered; the relay link
    // may still be connecting: write until A's follower sees it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&mut grpc_b, "live", 42, 4.25).await;
    assert!(
        sse_at_a.await.unwrap(),
        "A's SSE follower never saw B's point"
    );
    write(&mut grpc_a, "live", 43, 4.5).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while !seen.contains(&43) {
        let batch = tokio::time::timeout_at(deadline.into(), follower_b.next())
            .await
            .expect("B's Subscribe follower never saw A's point")
            .unwrap()
            .unwrap();
        seen.extend(batch.timestamps_ms);
    }

    // NATS gone: not ready (the store still is), yet alive.
    drop(nats);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = http.get(a.http("/readyz")).send().await.unwrap();
        if response.status() == 503 {
            let body: serde_json::Value = response.json().await.unwrap();
            assert_ne!(body["checks"]["nats"], "ok", "{body}");
            assert_eq!(body["checks"]["store"], "ok", "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readyz ignores NATS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = http.get(a.http("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}
