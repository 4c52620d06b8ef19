//! Helpers shared by the integration tests: deterministic data, the
//! embedded store in a temporary directory (also behind [`TestStore`], with
//! synchronous setup), a store wrapper that fails or counts mid-scan, and a
//! real HTTP server on 127.0.0.1:0.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use engine::http::{self, AppState, HttpConfig};
use engine::model::{Point, PointBatch, Sample, SensorId, TimeRange};
use engine::storage::embedded::{EmbeddedOptions, EmbeddedStore};
use engine::storage::{
    ImportSummary, PointStream, SensorInfo, SharedStorage, StorageEngine, StorageError,
};
use futures_util::{StreamExt, stream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A deterministic generator (xorshift64*), so tests need no crate and every
/// failure can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[low, high)`.
    pub fn range(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next_u64() % (high - low) as u64) as i64
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

pub fn sensor(id: &str) -> SensorId {
    SensorId::new(id).unwrap()
}

pub fn point(timestamp_ms: i64, value: f64, quality: u8) -> Point {
    Point {
        timestamp_ms,
        value,
        quality,
    }
}

pub fn samples(sensor_id: &SensorId, points: impl IntoIterator<Item = Point>) -> Vec<Sample> {
    points
        .into_iter()
        .map(|point| Sample {
            sensor_id: sensor_id.clone(),
            seq: None,
            point,
        })
        .collect()
}

/// Reads a whole scan, checking the stream's own promises on the way: no
/// empty batch, strictly increasing timestamps across batches.
pub async fn scan_all(
    store: &dyn StorageEngine,
    sensor_id: &SensorId,
    range: TimeRange,
) -> Vec<Point> {
    let mut stream = store.scan(sensor_id, range);
    let mut points: Vec<Point> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch: PointBatch = batch.expect("scan failed");
        assert!(!batch.is_empty(), "a scan yielded an empty batch");
        for p in batch.iter() {
            if let Some(last) = points.last() {
                assert!(
                    last.timestamp_ms < p.timestamp_ms,
                    "scan out of order at {}",
                    p.timestamp_ms
                );
            }
            assert!(
                range.contains(p.timestamp_ms),
                "{} outside {range:?}",
                p.timestamp_ms
            );
            points.push(p);
        }
    }
    points
}

/// Opens an embedded store on a blocking thread.
///
/// Retries for a moment while the directory reads as locked: this test
/// process spawns child processes from other threads, and between fork and
/// exec a child holds copies of our file descriptors, the lock's among them.
/// A real second opener is tested with `EmbeddedStore::open` directly.
pub async fn open_embedded(dir: &Path, options: EmbeddedOptions) -> Arc<EmbeddedStore> {
    for attempt in 0.. {
        let (dir, options) = (dir.to_owned(), options.clone());
        match tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, options))
            .await
            .unwrap()
        {
            Ok(store) => return Arc::new(store),
            Err(StorageError::Locked { .. }) if attempt < 100 => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open store: {e}"),
        }
    }
    unreachable!()
}

pub fn as_shared(store: Arc<EmbeddedStore>) -> SharedStorage {
    store
}

/// The `engine` binary built for these tests.
pub fn engine_bin() -> &'static str {
    env!("CARGO_BIN_EXE_engine")
}

// ---- HTTP test helpers ----

/// The real embedded store in a temporary directory, for tests of the
/// transports. `put` writes synchronously, for test setup; scans are cut into
/// batches of at most `batch_rows` points, so that small data still streams
/// in many batches (the store's own batches are blocks of up to 4096).
pub struct TestStore {
    store: Arc<EmbeddedStore>,
    batch_rows: usize,
    _dir: tempfile::TempDir,
}

impl TestStore {
    pub fn new(batch_rows: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        Self {
            store: Arc::new(store),
            batch_rows: batch_rows.max(1),
            _dir: dir,
        }
    }

    pub fn shared(batch_rows: usize) -> Arc<Self> {
        Arc::new(Self::new(batch_rows))
    }

    /// Writes points durably, without the async ceremony.
    pub fn put(&self, sensor: &str, points: impl IntoIterator<Item = (i64, f64, u8)>) {
        let sensor_id = SensorId::new(sensor).unwrap();
        let samples = points
            .into_iter()
            .map(|(timestamp_ms, value, quality)| Sample {
                sensor_id: sensor_id.clone(),
                seq: None,
                point: Point {
                    timestamp_ms,
                    value,
                    quality,
                },
            })
            .collect();
        self.store.write_blocking(samples).expect("write");
    }

    /// Every point of a sensor, read through a real scan. Synchronous, for
    /// polled conditions; needs the multi-threaded test runtime.
    pub fn points(&self, sensor: &str) -> Vec<Point> {
        let id = SensorId::new(sensor).unwrap();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(scan_all(&*self.store, &id, TimeRange::ALL))
        })
    }

    /// Points stored, over all sensors. Synchronous, like [`TestStore::points`].
    pub fn total(&self) -> usize {
        let sensors = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(self.store.sensors())
        });
        sensors.unwrap().iter().map(|s| s.count as usize).sum()
    }
}

#[async_trait]
impl StorageEngine for TestStore {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        self.store.write(samples).await
    }

    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        let rows = self.batch_rows;
        self.store
            .scan(sensor_id, range)
            .flat_map(move |item| {
                let pieces: Vec<Result<PointBatch, StorageError>> = match item {
                    Ok(batch) => (0..batch.len())
                        .step_by(rows)
                        .map(|from| {
                            Ok((from..(from + rows).min(batch.len()))
                                .map(|i| batch.point(i))
                                .collect())
                        })
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                stream::iter(pieces)
            })
            .boxed()
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        self.store.sensors().await
    }

    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        self.store.sensor(sensor_id).await
    }

    async fn import(
        &self,
        sensor_id: &SensorId,
        batches: PointStream,
    ) -> Result<ImportSummary, StorageError> {
        self.store.import(sensor_id, batches).await
    }

    async fn close(&self) -> Result<(), StorageError> {
        self.store.close().await
    }
}

/// Delegates to a real store; its scans fail after `fail_after` batches (if
/// set) and count the batches they yield, to show a scan stopped.
pub struct Instrumented {
    pub inner: SharedStorage,
    pub fail_after: Option<usize>,
    pub batches_yielded: Arc<AtomicU64>,
    /// The data directory of an embedded store, removed with the wrapper.
    _dir: Option<tempfile::TempDir>,
}

impl Instrumented {
    /// The real embedded store in a temporary directory, loaded with
    /// `points` for `sensor` through its all-or-nothing import.
    pub async fn embedded(
        sensor: &str,
        points: Vec<(i64, f64, u8)>,
        fail_after: Option<usize>,
    ) -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let store = open_embedded(dir.path(), EmbeddedOptions::default()).await;
        let batches: Vec<Result<PointBatch, StorageError>> = points
            .chunks(65_536)
            .map(|chunk| {
                Ok(chunk
                    .iter()
                    .map(|&(timestamp_ms, value, quality)| Point {
                        timestamp_ms,
                        value,
                        quality,
                    })
                    .collect())
            })
            .collect();
        store
            .import(
                &SensorId::new(sensor).unwrap(),
                stream::iter(batches).boxed(),
            )
            .await
            .unwrap();
        Arc::new(Self {
            inner: store,
            fail_after,
            batches_yielded: Arc::default(),
            _dir: Some(dir),
        })
    }
}

#[async_trait]
impl StorageEngine for Instrumented {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        self.inner.write(samples).await
    }
    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        let counter = Arc::clone(&self.batches_yielded);
        let scan = self.inner.scan(sensor_id, range).inspect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        match self.fail_after {
            None => scan.boxed(),
            Some(n) => scan
                .take(n)
                .chain(stream::once(async {
                    Err(StorageError::Backend("injected failure".into()))
                }))
                .boxed(),
        }
    }
    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        self.inner.sensors().await
    }
    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        self.inner.sensor(sensor_id).await
    }
    async fn import(
        &self,
        sensor_id: &SensorId,
        batches: PointStream,
    ) -> Result<ImportSummary, StorageError> {
        self.inner.import(sensor_id, batches).await
    }
    async fn close(&self) -> Result<(), StorageError> {
        self.inner.close().await
    }
}

/// A real server on 127.0.0.1:0, stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    pub config: HttpConfig,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(storage: SharedStorage) -> Self {
        Self::start_with(storage, test_config()).await
    }

    pub async fn start_with(storage: SharedStorage, config: HttpConfig) -> Self {
        let state = AppState::new(storage, &config);
        let app = http::router(state.clone(), config.web_dir.as_deref());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server_config = config.clone();
        let task = tokio::spawn(async move {
            http::serve(listener, app, &server_config, async {
                let _ = rx.await;
            })
            .await
        });
        Self {
            addr,
            state,
            config,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn free_export_permits(&self) -> usize {
        self.state.export_permits.available_permits()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn test_config() -> HttpConfig {
    HttpConfig {
        web_dir: None,
        ..HttpConfig::default()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The strict CSV the encoder should give for `points`, built by hand.
pub fn expected_csv(points: &[(i64, &str, u8)]) -> String {
    let mut out = String::from("timestamp_ms,value,quality\n");
    for (t, v, q) in points {
        out.push_str(&format!("{t},{v},{q}\n"));
    }
    out
}

/// `n` points from `start`, one per millisecond, with varied values.
pub fn ramp(start: i64, n: usize) -> Vec<(i64, f64, u8)> {
    (0..n)
        .map(|i| {
            let t = start + i as i64;
            (
                t,
                (i as f64) * 0.25 - 1000.0 + (i % 7) as f64 / 3.0,
                (i % 3 * 64) as u8,
            )
        })
        .collect()
}
