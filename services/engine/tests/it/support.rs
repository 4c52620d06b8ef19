//! Helpers shared by the integration tests: deterministic data, the
//! embedded store in a temporary directory behind [`TestStore`] (synchronous
//! setup; scans that count, rebatch or fail; writes that can be refused),
//! and a real HTTP server on 127.0.0.1:0.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use engine::http::{self, AppState, HttpConfig};
use engine::model::{Point, PointBatch, Sample, SensorId, TimeRange};
use engine::storage::embedded::{EmbeddedOptions, EmbeddedStore};
use engine::storage::{
    Downsampled, ImportSummary, PointStream, SensorInfo, SharedStorage, StorageEngine,
    StorageError, StoreHealth,
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

/// Where the `engine serve` processes of the tests write their logs:
/// `target/test-logs/`, kept after the run, so that `scripts/test` can scan
/// every one of them for secrets (issue 9: no secret in any log line).
pub fn test_log_dir() -> std::path::PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("test-logs")
}

/// A new file in [`test_log_dir`] for the log (standard error) of one
/// engine process, named `NAME-PID-N.log`: the child's `stderr`, and its
/// path for a test that reads it back or names it in a failure.
pub fn engine_log(name: &str) -> (std::process::Stdio, std::path::PathBuf) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = test_log_dir();
    std::fs::create_dir_all(&dir).expect("create target/test-logs");
    let path = dir.join(format!(
        "{name}-{}-{}.log",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&path).expect("create an engine log file");
    (std::process::Stdio::from(file), path)
}

// ---- HTTP test helpers ----

/// What a [`WriteHook`] makes of one write.
pub enum WriteFault {
    /// The write goes to the store unchanged.
    Pass,
    /// The write is refused with this error; nothing reaches the store.
    Refuse(StorageError),
    /// The store takes the write, then the caller hears this error: a
    /// durable write whose acknowledgement was lost.
    FailAfter(StorageError),
}

/// Decides the fate of each write of a [`TestStore`].
pub type WriteHook = Box<dyn FnMut(&[Sample]) -> WriteFault + Send>;

/// The real embedded store in a temporary directory, for tests of the
/// transports, with what those tests need to observe or break:
///
/// - scans are cut into batches of at most `batch_rows` points, so that small
///   data still streams in many batches (the store's own batches are blocks
///   of up to 4096);
/// - scans are counted (batches yielded, scans still open) and, with
///   `fail_after`, fail after that many batches;
/// - writes pass a [`WriteHook`] that may refuse them.
///
/// Everything else (`downsample`, `health`, `import`, `sensors`, ...) goes to
/// the store unchanged, so the transports run their production paths. The
/// one store wrapper of the tests: no copy-pasted forwarding to fall behind
/// the trait.
pub struct TestStore {
    store: Arc<EmbeddedStore>,
    batch_rows: usize,
    fail_after: Option<usize>,
    /// Batches the scans handed to their consumers.
    pub batches_yielded: Arc<AtomicU64>,
    /// Scans created and not yet dropped.
    open_scans: Arc<AtomicU64>,
    write_hook: Mutex<Option<WriteHook>>,
    _dir: tempfile::TempDir,
}

/// The same wrapper, as the export tests name it: a store whose scans are
/// counted and may fail (see [`TestStore::embedded`]).
pub type Instrumented = TestStore;

impl TestStore {
    pub fn new(batch_rows: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        Self::wrap(Arc::new(store), dir, batch_rows, None)
    }

    fn wrap(
        store: Arc<EmbeddedStore>,
        dir: tempfile::TempDir,
        batch_rows: usize,
        fail_after: Option<usize>,
    ) -> Self {
        Self {
            store,
            batch_rows: batch_rows.max(1),
            fail_after,
            batches_yielded: Arc::default(),
            open_scans: Arc::default(),
            write_hook: Mutex::new(None),
            _dir: dir,
        }
    }

    pub fn shared(batch_rows: usize) -> Arc<Self> {
        Arc::new(Self::new(batch_rows))
    }

    /// The store loaded with `points` for `sensor` through its
    /// all-or-nothing import; scans yield the store's own batches and, with
    /// `fail_after`, fail after that many.
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
        Arc::new(Self::wrap(store, dir, usize::MAX, fail_after))
    }

    /// Every write from now on goes through `hook` first.
    pub fn set_write_hook(&self, hook: impl FnMut(&[Sample]) -> WriteFault + Send + 'static) {
        *self.write_hook.lock().unwrap() = Some(Box::new(hook));
    }

    /// Scans created and not dropped yet: a dropped scan has stopped.
    pub fn open_scans(&self) -> u64 {
        self.open_scans.load(Ordering::SeqCst)
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

/// Decrements a counter when dropped: lives inside a scan's stream.
struct OpenScan(Arc<AtomicU64>);

impl Drop for OpenScan {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl StorageEngine for TestStore {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        let fault = match self.write_hook.lock().unwrap().as_mut() {
            Some(hook) => hook(&samples),
            None => WriteFault::Pass,
        };
        match fault {
            WriteFault::Pass => self.store.write(samples).await,
            WriteFault::Refuse(error) => Err(error),
            WriteFault::FailAfter(error) => {
                self.store.write(samples).await?;
                Err(error)
            }
        }
    }

    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        let rows = self.batch_rows;
        self.open_scans.fetch_add(1, Ordering::SeqCst);
        let open = OpenScan(Arc::clone(&self.open_scans));
        let counter = Arc::clone(&self.batches_yielded);
        let rebatched = self.store.scan(sensor_id, range).flat_map(move |item| {
            let pieces: Vec<Result<PointBatch, StorageError>> = match item {
                Ok(batch) if batch.len() <= rows => vec![Ok(batch)],
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
        });
        let counted = rebatched.inspect(move |_| {
            let _alive = &open;
            counter.fetch_add(1, Ordering::SeqCst);
        });
        match self.fail_after {
            None => counted.boxed(),
            Some(n) => counted
                .take(n)
                .chain(stream::once(async {
                    Err(StorageError::Backend("injected failure".into()))
                }))
                .boxed(),
        }
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

    async fn downsample(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
        buckets: usize,
    ) -> Result<Downsampled, StorageError> {
        self.store.downsample(sensor_id, range, buckets).await
    }

    fn health(&self) -> StoreHealth {
        self.store.health()
    }

    async fn close(&self) -> Result<(), StorageError> {
        self.store.close().await
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

/// Creates a token over HTTP as `admin` (`POST` to `tokens_url`, the
/// server's `/api/v1/tokens`) and returns the server's answer: `id`,
/// `secret` and the rest.
pub async fn create_token_over_http(
    http: &reqwest::Client,
    tokens_url: &str,
    admin: &str,
    name: &str,
    scopes: &[&str],
) -> serde_json::Value {
    let response = http
        .post(tokens_url)
        .bearer_auth(admin)
        .json(&serde_json::json!({"name": name, "scopes": scopes}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    response.json().await.unwrap()
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
