//! Helpers of the ingestion tests (`grpc`, `nats`): free ports, a private
//! nats-server, an in-memory store, and the real `engine` binary.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use engine::model::{Point, PointBatch, Sample, SensorId, TimeRange, check_timestamp};
use engine::storage::{ImportSummary, PointStream, SensorInfo, StorageEngine, StorageError};
use futures_util::StreamExt;
use futures_util::stream;

/// The nats-server Debian installs (2.9).
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Waits until something accepts connections on `port`. Prefer
/// [`wait_until_listening`] for a child process: it notices an early exit.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `child` accepts connections on `port`; an error if it exits
/// first or takes longer than `timeout`.
pub fn wait_until_listening(child: &mut Child, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before listening on {port}: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("not listening on {port} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private nats-server with JetStream on a random port, killed on drop,
/// so tests never share the machine's stream state.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        // Owned before waiting, so a failed wait still kills it.
        let mut server = Self {
            child,
            port,
            _dir: dir,
        };
        if let Err(why) = wait_until_listening(&mut server.child, port, Duration::from_secs(20)) {
            panic!("nats-server on {port}: {why}");
        }
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `engine serve` process, SIGKILLed on drop.
pub struct Engine {
    pub child: Child,
    pub grpc_port: u16,
}

impl Engine {
    /// Starts `engine serve` on a data directory with fresh ports and waits
    /// until gRPC accepts connections.
    ///
    /// A port picked free can be taken by someone else before the engine
    /// binds it; the engine then exits at once, and is started again on
    /// other ports.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut last_error = String::new();
        for _ in 0..3 {
            let http_port = free_port();
            let grpc_port = free_port();
            let child = Command::new(env!("CARGO_BIN_EXE_engine"))
                .arg("serve")
                .arg("--data-dir")
                .arg(data_dir)
                .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
                .args(extra)
                // Warnings and errors only: the test output stays readable.
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start engine");
            // Owned before waiting, so a failed wait still kills it.
            let mut engine = Self { child, grpc_port };
            match wait_until_listening(&mut engine.child, grpc_port, Duration::from_secs(90)) {
                Ok(()) => return engine,
                Err(why) => last_error = why,
            }
        }
        panic!("the engine did not start: {last_error}");
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// SIGKILL: no flush, no shutdown path.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A store in memory, for tests of the transports alone.
#[derive(Default)]
pub struct MemStore {
    data: Mutex<BTreeMap<SensorId, BTreeMap<i64, Point>>>,
}

impl MemStore {
    /// Every point of a sensor.
    pub fn points(&self, sensor_id: &str) -> Vec<Point> {
        let data = self.data.lock().unwrap();
        SensorId::new(sensor_id)
            .ok()
            .and_then(|id| data.get(&id).map(|p| p.values().copied().collect()))
            .unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.data.lock().unwrap().values().map(|p| p.len()).sum()
    }
}

fn info(id: &SensorId, points: &BTreeMap<i64, Point>) -> Option<SensorInfo> {
    Some(SensorInfo {
        sensor_id: id.clone(),
        count: points.len() as u64,
        first_timestamp_ms: *points.keys().next()?,
        last_timestamp_ms: *points.keys().next_back()?,
    })
}

#[async_trait]
impl StorageEngine for MemStore {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        for s in &samples {
            check_timestamp(s.point.timestamp_ms)
                .map_err(|e| StorageError::InvalidInput(e.to_string()))?;
        }
        let mut data = self.data.lock().unwrap();
        for s in samples {
            data.entry(s.sensor_id)
                .or_default()
                .insert(s.point.timestamp_ms, s.point);
        }
        Ok(())
    }

    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        let data = self.data.lock().unwrap();
        let batch: PointBatch = data
            .get(sensor_id)
            .map(|points| {
                points
                    .range(range.start_ms..range.end_ms.max(range.start_ms))
                    .map(|(_, p)| *p)
                    .collect()
            })
            .unwrap_or_default();
        let items = if batch.is_empty() {
            vec![]
        } else {
            vec![Ok(batch)]
        };
        stream::iter(items).boxed()
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        let data = self.data.lock().unwrap();
        Ok(data.iter().filter_map(|(id, p)| info(id, p)).collect())
    }

    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        let data = self.data.lock().unwrap();
        Ok(data.get(sensor_id).and_then(|p| info(sensor_id, p)))
    }

    async fn import(
        &self,
        sensor_id: &SensorId,
        mut batches: PointStream,
    ) -> Result<ImportSummary, StorageError> {
        let mut samples = Vec::new();
        while let Some(batch) = batches.next().await {
            for point in batch?.iter() {
                samples.push(Sample {
                    sensor_id: sensor_id.clone(),
                    point,
                });
            }
        }
        let points = samples.len() as u64;
        self.write(samples).await?;
        Ok(ImportSummary { points })
    }

    async fn close(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}
