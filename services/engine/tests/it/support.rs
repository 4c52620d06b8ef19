//! Shared test helpers: an in-memory store, a store wrapper that fails or
//! counts mid-scan, and a real HTTP server on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use engine::http::{self, AppState, HttpConfig};
use engine::model::{Point, PointBatch, Sample, SensorId, TimeRange};
use engine::storage::embedded::EmbeddedStore;
use engine::storage::{
    ImportSummary, PointStream, SensorInfo, SharedStorage, StorageEngine, StorageError,
};
use futures_util::{StreamExt, stream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Series = BTreeMap<i64, (f64, u8)>;

/// A store in memory: the reference semantics, for tests of the transports.
/// Scans read `batch_rows` points per step under a short lock, lazily.
pub struct MemStore {
    data: Arc<RwLock<BTreeMap<SensorId, Series>>>,
    batch_rows: usize,
}

impl MemStore {
    pub fn new(batch_rows: usize) -> Self {
        Self {
            data: Arc::default(),
            batch_rows,
        }
    }

    pub fn shared(batch_rows: usize) -> Arc<Self> {
        Arc::new(Self::new(batch_rows))
    }

    /// Adds points without the async ceremony.
    pub fn put(&self, sensor: &str, points: impl IntoIterator<Item = (i64, f64, u8)>) {
        let mut data = self.data.write().unwrap();
        let series = data.entry(SensorId::new(sensor).unwrap()).or_default();
        for (t, v, q) in points {
            series.insert(t, (v, q));
        }
    }
}

fn info(id: &SensorId, series: &Series) -> Option<SensorInfo> {
    Some(SensorInfo {
        sensor_id: id.clone(),
        count: series.len() as u64,
        first_timestamp_ms: *series.keys().next()?,
        last_timestamp_ms: *series.keys().next_back()?,
    })
}

#[async_trait]
impl StorageEngine for MemStore {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        let mut data = self.data.write().unwrap();
        for s in samples {
            data.entry(s.sensor_id)
                .or_default()
                .insert(s.point.timestamp_ms, (s.point.value, s.point.quality));
        }
        Ok(())
    }

    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        let data = Arc::clone(&self.data);
        let id = sensor_id.clone();
        let rows = self.batch_rows;
        stream::unfold(Some(range.start_ms), move |cursor| {
            let data = Arc::clone(&data);
            let id = id.clone();
            async move {
                let from = cursor?;
                if from >= range.end_ms {
                    return None;
                }
                let mut batch = PointBatch::with_capacity(rows);
                let mut next = None;
                {
                    let data = data.read().unwrap();
                    let series = data.get(&id)?;
                    for (&t, &(v, q)) in series.range(from..range.end_ms) {
                        if batch.len() == rows {
                            next = Some(t);
                            break;
                        }
                        batch.push(Point {
                            timestamp_ms: t,
                            value: v,
                            quality: q,
                        });
                    }
                }
                if batch.is_empty() {
                    return None;
                }
                Some((Ok(batch), next))
            }
        })
        .boxed()
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        let data = self.data.read().unwrap();
        Ok(data.iter().filter_map(|(id, s)| info(id, s)).collect())
    }

    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        let data = self.data.read().unwrap();
        Ok(data.get(sensor_id).and_then(|s| info(sensor_id, s)))
    }

    async fn import(
        &self,
        sensor_id: &SensorId,
        mut batches: PointStream,
    ) -> Result<ImportSummary, StorageError> {
        let mut staged = Vec::new();
        while let Some(batch) = batches.next().await {
            staged.extend(batch?.iter());
        }
        let mut data = self.data.write().unwrap();
        let series = data.entry(sensor_id.clone()).or_default();
        for p in &staged {
            series.insert(p.timestamp_ms, (p.value, p.quality));
        }
        Ok(ImportSummary {
            points: staged.len() as u64,
        })
    }

    async fn close(&self) -> Result<(), StorageError> {
        Ok(())
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
        let path = dir.path().to_owned();
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
            .await
            .unwrap()
            .unwrap();
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
            inner: Arc::new(store),
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
