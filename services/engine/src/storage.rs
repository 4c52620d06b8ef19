//! The storage contract: [`StorageEngine`], the only thing export, API and
//! ingest code may depend on.
//!
//! Implementations:
//! - [`embedded`]: the default, a persistent store in a data directory
//!   (write-ahead log + compressed per-sensor blocks in redb).
//! - [`postgres`]: the store on PostgreSQL, for several engines sharing one
//!   database (`--store postgres://...`).
//!
//! Every implementation must pass the backend conformance suite in
//! `tests/it/conformance.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::model::{Point, PointBatch, Sample, SensorId, TimeRange};

/// A stream of bytes a store produces (a backup), for an HTTP body or a file.
pub type ByteStream = BoxStream<'static, Result<bytes::Bytes, StorageError>>;

pub mod embedded;
pub mod m4;
pub mod postgres;

pub use m4::Downsampled;

/// A stream of point batches of one sensor, in strictly increasing timestamp
/// order across batches, each batch non-empty.
///
/// The stream owns everything it needs (`'static`), so it can be handed to an
/// HTTP body. Dropping it stops the scan.
pub type PointStream = BoxStream<'static, Result<PointBatch, StorageError>>;

/// The batches a producer thread sends into `receiver`, as a [`PointStream`].
/// Dropping the stream closes the channel, which tells the producer to stop.
pub(crate) fn receiver_stream(
    mut receiver: tokio::sync::mpsc::Receiver<Result<PointBatch, StorageError>>,
) -> PointStream {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed()
}

/// What the store knows about one sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorInfo {
    pub sensor_id: SensorId,
    /// Number of distinct timestamps stored.
    pub count: u64,
    /// Earliest stored timestamp.
    pub first_timestamp_ms: i64,
    /// Latest stored timestamp.
    pub last_timestamp_ms: i64,
}

/// What [`StorageEngine::drop_before`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub points: u64,
    /// Bytes the store freed for reuse.
    pub bytes: u64,
}

/// What a store occupies on disk, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes of the write-ahead log.
    pub wal_bytes: u64,
    /// Bytes of every file of the store, the WAL included (allocated).
    pub total_bytes: u64,
}

/// The outcome of a successful [`StorageEngine::import`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    /// Points read from the source (a point written twice counts twice).
    pub points: u64,
}

/// Errors at the storage boundary. Mapped to HTTP and gRPC status in one place
/// each (`http::error`, `grpc`).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The caller's input was rejected (a malformed import row, an
    /// out-of-range timestamp). Nothing of the request was stored.
    #[error("{0}")]
    InvalidInput(String),
    /// Another process holds the data directory.
    #[error("data directory {path} is in use by another process")]
    Locked { path: String },
    /// Stored data failed a consistency check.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// An error of the backend's own (redb, PostgreSQL).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The disk (or quota) is full: the write was refused and left nothing
    /// behind. The store keeps serving reads and takes writes again as soon
    /// as there is room, without a restart.
    #[error("no space left for the store: {0}")]
    Full(String),
    /// An earlier failure (a failed fsync) left what is on disk unknown, so
    /// the store refuses writes until it is restarted and has recovered.
    #[error("the store refuses writes until it is restarted: {0}")]
    Failed(String),
    /// The store was shut down.
    #[error("the store is closed")]
    Closed,
    /// This store cannot do that (a backup of a PostgreSQL store is
    /// `pg_dump`'s job).
    #[error("not supported by this store: {0}")]
    Unsupported(String),
}

impl StorageError {
    /// Whether a write that failed with this error may succeed if retried
    /// later without a restart (a full disk, a store briefly unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Full(_))
    }

    /// The same error again, for each of several writes that one failure
    /// refused together (a group commit). An I/O error keeps its kind and
    /// message.
    pub fn duplicate(&self) -> StorageError {
        match self {
            StorageError::InvalidInput(m) => StorageError::InvalidInput(m.clone()),
            StorageError::Locked { path } => StorageError::Locked { path: path.clone() },
            StorageError::Corrupt(m) => StorageError::Corrupt(m.clone()),
            StorageError::Io(e) => StorageError::Io(std::io::Error::new(e.kind(), e.to_string())),
            StorageError::Backend(m) => StorageError::Backend(m.clone()),
            StorageError::Full(m) => StorageError::Full(m.clone()),
            StorageError::Failed(m) => StorageError::Failed(m.clone()),
            StorageError::Closed => StorageError::Closed,
            StorageError::Unsupported(m) => StorageError::Unsupported(m.clone()),
        }
    }
}

/// Whether a store can do its work, for liveness and readiness probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Reads and writes work.
    Ok,
    /// Reads work; writes are refused for now (a full disk) and will work
    /// again by themselves once the cause is gone.
    Degraded(String),
    /// Writes are refused until a restart (a failed fsync, a lost
    /// connection that cannot be re-established).
    Failed(String),
}

/// A time-series store of sensor points.
///
/// Semantics every implementation keeps (checked by the conformance suite):
/// - A point is identified by `(sensor_id, timestamp_ms)`; writing it again
///   replaces it (the later write wins), so replays are idempotent.
/// - Values are kept bit-exactly.
/// - A write that returned `Ok` is durable.
/// - Points may arrive in any order; scans return them in timestamp order.
#[async_trait]
pub trait StorageEngine: Send + Sync + 'static {
    /// Writes a batch of points, of any sensors, atomically and durably.
    ///
    /// Timestamps outside `[MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS]` reject the
    /// whole batch with [`StorageError::InvalidInput`].
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError>;

    /// Streams one sensor's points in `range`, in timestamp order, without
    /// materialising the range. An unknown sensor yields an empty stream: ask
    /// [`StorageEngine::sensor`] first to tell "unknown" from "empty range".
    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream;

    /// The first points of one sensor's `range`, in order, as one batch: all
    /// of them, or, once more than `limit` are read, those read so far (a
    /// stored chunk more at most). For exports that merge sensors a time
    /// window at a time and must bound a window's points.
    ///
    /// The default collects [`scan`](StorageEngine::scan); a store that can
    /// decode into one batch without a hand-off per block should override it.
    async fn read_prefix(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
        limit: usize,
    ) -> Result<PointBatch, StorageError> {
        let mut collected = PointBatch::default();
        let mut scan = self.scan(sensor_id, range);
        while collected.len() <= limit {
            match scan.next().await {
                Some(batch) => collected.extend_from_batch(&batch?),
                None => break,
            }
        }
        Ok(collected)
    }

    /// Every sensor with its point count and time span, ordered by id.
    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError>;

    /// One sensor, or `None` when it has no points.
    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError>;

    /// Loads a stream of batches into one sensor, all or nothing: if the
    /// stream yields an error, or the store fails, nothing of it is kept and
    /// that error is returned. The stream may be far larger than memory.
    async fn import(
        &self,
        sensor_id: &SensorId,
        batches: PointStream,
    ) -> Result<ImportSummary, StorageError>;

    /// Downsamples one sensor's `range` into `buckets` equal time slices,
    /// keeping per slice the first, last, minimum and maximum point (M4), and
    /// counts the raw points. Charts draw this; every peak and dip survives.
    ///
    /// The default folds a full scan; a store with per-block summaries can
    /// answer without decoding blocks that fall inside one slice.
    async fn downsample(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
        buckets: usize,
    ) -> Result<Downsampled, StorageError> {
        let mut m4 = m4::M4::new(range, buckets);
        let mut scan = self.scan(sensor_id, range);
        while let Some(batch) = scan.next().await {
            m4.add_batch(&batch?);
        }
        Ok(m4.finish())
    }

    /// Drops the points of one sensor older than `before_ms`, in whole
    /// blocks where the store has them (retention): a point may outlive the
    /// cut-off a little, never the reverse.
    async fn drop_before(
        &self,
        sensor_id: &SensorId,
        before_ms: i64,
    ) -> Result<Dropped, StorageError> {
        let _ = (sensor_id, before_ms);
        Err(StorageError::Unsupported("retention".into()))
    }

    /// A consistent backup of the whole store, streamed: every write
    /// acknowledged before the call is in it, no write is half in it, and
    /// writes go on meanwhile.
    fn backup(&self) -> Result<ByteStream, StorageError> {
        Err(StorageError::Unsupported("online backup".into()))
    }

    /// The last point of `sensor_id` before `before_ms` whose quality is at
    /// least `min_quality` (0: any), however far back; `None` when there is
    /// none. Exports need it for the value held into a range (`fill=previous`,
    /// time-weighted means, interpolation across the range start).
    ///
    /// The default scans backwards in windows that grow fourfold from an
    /// hour, so a recent point costs one small scan; a store that can read
    /// its blocks backwards should override it.
    async fn last_point_before(
        &self,
        sensor_id: &SensorId,
        before_ms: i64,
        min_quality: u8,
    ) -> Result<Option<Point>, StorageError> {
        let Some(info) = self.sensor(sensor_id).await? else {
            return Ok(None);
        };
        let mut end = before_ms.min(info.last_timestamp_ms.saturating_add(1));
        let mut width: i64 = 3_600_000;
        while end > info.first_timestamp_ms {
            let start = end.saturating_sub(width).max(info.first_timestamp_ms);
            let mut found = None;
            let mut scan = self.scan(
                sensor_id,
                TimeRange {
                    start_ms: start,
                    end_ms: end,
                },
            );
            while let Some(batch) = scan.next().await {
                let batch = batch?;
                if let Some(i) = batch.qualities.iter().rposition(|&q| q >= min_quality) {
                    found = Some(batch.point(i));
                }
            }
            if found.is_some() {
                return Ok(found);
            }
            end = start;
            width = width.saturating_mul(4);
        }
        Ok(None)
    }

    /// How the store is doing right now; cheap (no I/O), so probes may call
    /// it often.
    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }

    /// What the store occupies on disk right now; `None` where the store
    /// does not know (a database server). Reads file sizes, no data: cheap
    /// enough for every metrics scrape.
    fn disk_usage(&self) -> Option<DiskUsage> {
        None
    }

    /// Makes everything written so far durable in the store's main structure
    /// and releases resources. Writes after `close` fail with
    /// [`StorageError::Closed`].
    async fn close(&self) -> Result<(), StorageError>;
}

/// How the transports hold a store: shared, behind the trait.
pub type SharedStorage = Arc<dyn StorageEngine>;
