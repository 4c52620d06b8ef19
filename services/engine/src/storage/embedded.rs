//! The embedded store: the default [`StorageEngine`], persistent in one data
//! directory.
//!
//! # Design
//!
//! ```text
//! DIR/LOCK          held with an OS file lock: one process per directory
//! DIR/wal/N.wal     write-ahead log segments (see `wal`)
//! DIR/blocks.redb   compressed blocks (see `codec`) and the sensor catalogue
//! ```
//!
//! A write appends one record to the WAL and `fdatasync`s it (now it is
//! durable and acknowledged), then lands in the *head*: an in-memory sorted
//! map per sensor. When the head holds [`EmbeddedOptions::head_flush_points`]
//! points, a *checkpoint* folds it into blocks in one redb transaction that
//! also records the WAL sequence it covers, and the covered segments are
//! deleted. Opening replays the segments after the last checkpoint.
//!
//! Blocks hold up to 4096 points of one sensor in time order, keyed by
//! `(sensor key, first timestamp)`, and never overlap, so a range scan is a
//! sequential read of a few hundred blocks per million points. A scan merges
//! the blocks with a copy of the head's points in its range (bounded by the
//! head size, never by the range), taking both under one lock so that a
//! concurrent checkpoint is never seen half-done.
//!
//! Imports are all-or-nothing: they run in one redb transaction that is only
//! committed when the whole source was read without error.

mod codec;
mod wal;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use futures_util::StreamExt;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use self::codec::MAX_BLOCK_POINTS;
use self::wal::{Group, WalWriter};
use super::m4::{Downsampled, M4, Summary};
use super::{ImportSummary, PointStream, SensorInfo, StorageEngine, StorageError, receiver_stream};
use crate::model::{Point, PointBatch, Sample, SensorId, TimeRange, check_timestamp};

/// Blocks: `(sensor key, first timestamp)` → encoded block.
const BLOCKS: TableDefinition<(u32, i64), &[u8]> = TableDefinition::new("blocks");
/// Per block, under the same key: its [`Summary`] (count, first, last, min,
/// max), so downsampling reads ~80 bytes instead of the block.
const SUMMARIES: TableDefinition<(u32, i64), &[u8]> = TableDefinition::new("summaries");
/// The catalogue: sensor id → `(key, count, first timestamp, last timestamp)`
/// of what is in blocks.
const SENSORS: TableDefinition<&str, (u32, u64, i64, i64)> = TableDefinition::new("sensors");
/// Bookkeeping: see the `META_*` keys.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The last WAL segment whose records are all in blocks.
const META_CHECKPOINT: &str = "wal_checkpoint";
/// The next unused sensor key.
const META_NEXT_KEY: &str = "next_sensor_key";

/// A checkpoint also happens when the open segment grows past this.
const WAL_SEGMENT_LIMIT: u64 = 256 << 20;
/// Batches a scan decodes ahead of its consumer.
const SCAN_READ_AHEAD: usize = 4;

/// Tuning of the embedded store. The defaults suit a server.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Points held in memory before they are folded into blocks. Bounds the
    /// head's memory (about 40 bytes a point) and the replay time after a crash.
    pub head_flush_points: usize,
    /// redb's page cache. Kept small: scans read each page once, and the
    /// kernel's page cache already holds hot files.
    pub cache_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            head_flush_points: 256 * 1024,
            cache_bytes: 32 << 20,
        }
    }
}

/// The embedded store. Cheap to share: wrap it in an `Arc`.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Serialises WAL appends, checkpoints and imports: one writer at a time
    /// keeps the WAL order equal to the order writes are applied.
    writer: Mutex<Writer>,
    /// What scans and lookups read; written only briefly by the writer.
    memory: RwLock<Memory>,
    options: EmbeddedOptions,
    /// Held for the store's lifetime: the OS releases it if the process dies.
    _lock: File,
}

struct Writer {
    wal: WalWriter,
    wal_dir: PathBuf,
    /// Set when the WAL could not be written: what is on disk is then
    /// unknown, so further writes are refused rather than risk acknowledging
    /// a write that is not durable (PostgreSQL's fsync lesson).
    failed: bool,
    closed: bool,
}

#[derive(Default)]
struct Memory {
    sensors: BTreeMap<SensorId, SensorState>,
    /// Points in all heads.
    head_points: usize,
    next_key: u32,
}

struct SensorState {
    key: u32,
    /// What is in blocks; `None` until the first checkpoint or import.
    stored: Option<Stats>,
    /// Points written since the last checkpoint: timestamp → (value, quality).
    head: BTreeMap<i64, (f64, u8)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stats {
    count: u64,
    first: i64,
    last: i64,
}

fn backend(error: impl Display) -> StorageError {
    StorageError::Backend(error.to_string())
}

fn corrupt(error: codec::CodecError) -> StorageError {
    StorageError::Corrupt(error.to_string())
}

fn join_error(error: tokio::task::JoinError) -> StorageError {
    StorageError::Backend(format!("storage task failed: {error}"))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, replaying the WAL.
    ///
    /// Fails with [`StorageError::Locked`] when another process has it open.
    /// Blocking: call it from a blocking context.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// [`StorageEngine::write`] for callers without an async runtime (tools,
    /// test setup): the same durable, atomic write, on the calling thread.
    pub fn write_blocking(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        self.inner.write(samples)
    }

    /// [`EmbeddedStore::open`] with explicit options.
    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let lock = lock_directory(dir)?;
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(dir.join("blocks.redb"))
            .map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(BLOCKS).map_err(backend)?;
        txn.open_table(SUMMARIES).map_err(backend)?;
        txn.open_table(SENSORS).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.commit().map_err(backend)?;

        let mut memory = Memory::default();
        let checkpoint;
        {
            let txn = db.begin_read().map_err(backend)?;
            let meta = txn.open_table(META).map_err(backend)?;
            let meta_value = |name| -> Result<u64, StorageError> {
                Ok(meta
                    .get(name)
                    .map_err(backend)?
                    .map_or(0, |guard| guard.value()))
            };
            checkpoint = meta_value(META_CHECKPOINT)?;
            memory.next_key = u32::try_from(meta_value(META_NEXT_KEY)?)
                .map_err(|_| StorageError::Corrupt("sensor key counter out of range".into()))?;
            let sensors = txn.open_table(SENSORS).map_err(backend)?;
            for entry in sensors.iter().map_err(backend)? {
                let (id, value) = entry.map_err(backend)?;
                let sensor_id = SensorId::new(id.value()).map_err(|e| {
                    StorageError::Corrupt(format!("stored sensor id {:?}: {e}", id.value()))
                })?;
                let (key, count, first, last) = value.value();
                memory.sensors.insert(
                    sensor_id,
                    SensorState {
                        key,
                        stored: Some(Stats { count, first, last }),
                        head: BTreeMap::new(),
                    },
                );
            }
        }

        let wal_dir = dir.join("wal");
        let mut last_seq = checkpoint;
        for (seq, path) in wal::list_segments(&wal_dir)? {
            last_seq = last_seq.max(seq);
            if seq <= checkpoint {
                continue;
            }
            let contents = wal::read_segment(&path)?;
            if contents.discarded_bytes > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    bytes = contents.discarded_bytes,
                    "discarded a torn or damaged WAL tail (unacknowledged writes)"
                );
            }
            for groups in contents.records {
                memory.apply(groups);
            }
        }

        let store = Self {
            inner: Arc::new(Inner {
                db,
                writer: Mutex::new(Writer {
                    wal: WalWriter::create(&wal_dir, last_seq + 1)?,
                    wal_dir,
                    failed: false,
                    closed: false,
                }),
                memory: RwLock::new(memory),
                options,
                _lock: lock,
            }),
        };
        // Fold the replayed head into blocks now: recovery is then finished,
        // and old segments (with any torn tail) are gone.
        let mut writer = store.inner.lock_writer()?;
        store.inner.checkpoint(&mut writer)?;
        drop(writer);
        Ok(store)
    }
}

fn lock_directory(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(StorageError::Locked {
                path: dir.display().to_string(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(e.into()),
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

impl Memory {
    /// Applies one WAL record's groups to the heads.
    fn apply(&mut self, groups: Vec<Group>) {
        for (sensor_id, points) in groups {
            let next_key = &mut self.next_key;
            let state = self.sensors.entry(sensor_id).or_insert_with(|| {
                let key = *next_key;
                *next_key += 1;
                SensorState {
                    key,
                    stored: None,
                    head: BTreeMap::new(),
                }
            });
            for p in points {
                if state
                    .head
                    .insert(p.timestamp_ms, (p.value, p.quality))
                    .is_none()
                {
                    self.head_points += 1;
                }
            }
        }
    }
}

impl Inner {
    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>, StorageError> {
        let writer = self
            .writer
            .lock()
            .map_err(|_| StorageError::Backend("a writer panicked".into()))?;
        if writer.closed {
            return Err(StorageError::Closed);
        }
        if writer.failed {
            return Err(StorageError::Failed(
                "an earlier write could not reach the disk; restart the engine to recover".into(),
            ));
        }
        Ok(writer)
    }

    fn read_memory(&self) -> std::sync::RwLockReadGuard<'_, Memory> {
        // A panic while holding the lock cannot leave Memory half-updated in a
        // way that matters more than losing the process, so poisoning is ignored.
        self.memory.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_memory(&self) -> std::sync::RwLockWriteGuard<'_, Memory> {
        self.memory.write().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        for sample in &samples {
            check_timestamp(sample.point.timestamp_ms).map_err(|e| {
                StorageError::InvalidInput(format!(
                    "sensor {:?}: timestamp_ms {e}",
                    sample.sensor_id.as_str()
                ))
            })?;
        }
        if samples.is_empty() {
            return Ok(());
        }
        let groups = group_by_sensor(samples);
        let mut writer = self.lock_writer()?;
        if let Err(e) = writer.wal.append(&groups) {
            writer.failed = true;
            return Err(e.into());
        }
        let head_points = {
            let mut memory = self.write_memory();
            memory.apply(groups);
            memory.head_points
        };
        if head_points >= self.options.head_flush_points || writer.wal.len() >= WAL_SEGMENT_LIMIT {
            // The write is durable in the WAL already; a failed checkpoint
            // only delays folding, so it is logged, not returned.
            if let Err(e) = self.checkpoint(&mut writer) {
                tracing::error!(error = %e, "checkpoint failed; will retry on the next write");
            }
        }
        Ok(())
    }

    /// Folds every head into blocks, records the WAL position it covers, and
    /// starts a new WAL segment. Called with the writer lock held.
    fn checkpoint(&self, writer: &mut Writer) -> Result<(), StorageError> {
        let seq = writer.wal.seq();
        let (work, next_key) = {
            let memory = self.read_memory();
            let work: Vec<(SensorId, u32, Option<Stats>, Vec<Point>)> = memory
                .sensors
                .iter()
                .filter(|(_, state)| !state.head.is_empty())
                .map(|(id, state)| {
                    let points = state
                        .head
                        .iter()
                        .map(|(&timestamp_ms, &(value, quality))| Point {
                            timestamp_ms,
                            value,
                            quality,
                        })
                        .collect();
                    (id.clone(), state.key, state.stored, points)
                })
                .collect();
            (work, memory.next_key)
        };

        let mut txn = self.db.begin_write().map_err(backend)?;
        // Records the allocator state with each commit, so reopening after a
        // crash needs no full-file repair scan.
        txn.set_quick_repair(true);
        let mut updated = Vec::with_capacity(work.len());
        {
            let mut blocks = BlockTables::open(&txn)?;
            let mut sensors = txn.open_table(SENSORS).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            for (sensor_id, key, stored, points) in work {
                let added = merge_into_blocks(&mut blocks, key, &points)?;
                let stats = combine(stored, added, &points);
                sensors
                    .insert(
                        sensor_id.as_str(),
                        (key, stats.count, stats.first, stats.last),
                    )
                    .map_err(backend)?;
                updated.push((sensor_id, stats));
            }
            meta.insert(META_CHECKPOINT, seq).map_err(backend)?;
            meta.insert(META_NEXT_KEY, u64::from(next_key))
                .map_err(backend)?;
        }
        txn.commit().map_err(backend)?;

        {
            let mut memory = self.write_memory();
            for (sensor_id, stats) in updated {
                if let Some(state) = memory.sensors.get_mut(&sensor_id) {
                    state.stored = Some(stats);
                    state.head.clear();
                }
            }
            memory.head_points = 0;
        }
        if let Err(e) = writer.wal.rotate() {
            writer.failed = true;
            return Err(e.into());
        }
        for (old_seq, path) in wal::list_segments(&writer.wal_dir)? {
            if old_seq <= seq {
                std::fs::remove_file(path)?;
            }
        }
        Ok(())
    }

    /// Takes a consistent snapshot for a scan: the head's points in range and
    /// a redb read transaction, under one lock.
    fn scan_snapshot(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
    ) -> Result<Option<ScanSnapshot>, StorageError> {
        if range.is_empty() {
            return Ok(None);
        }
        let memory = self.read_memory();
        let Some(state) = memory.sensors.get(sensor_id) else {
            return Ok(None);
        };
        let head = state
            .head
            .range(range.start_ms..range.end_ms)
            .map(|(&timestamp_ms, &(value, quality))| Point {
                timestamp_ms,
                value,
                quality,
            })
            .collect();
        let txn = match state.stored {
            Some(_) => Some(self.db.begin_read().map_err(backend)?),
            None => None,
        };
        Ok(Some(ScanSnapshot {
            key: state.key,
            range,
            head,
            txn,
        }))
    }

    fn sensor_info(
        &self,
        sensor_id: &SensorId,
        state: &SensorState,
    ) -> Result<SensorInfo, StorageError> {
        let info = |stats: Stats| SensorInfo {
            sensor_id: sensor_id.clone(),
            count: stats.count,
            first_timestamp_ms: stats.first,
            last_timestamp_ms: stats.last,
        };
        let head_first = state.head.first_key_value().map(|(&ts, _)| ts);
        let head_last = state.head.last_key_value().map(|(&ts, _)| ts);
        let (Some(head_first), Some(head_last)) = (head_first, head_last) else {
            return state.stored.map(info).ok_or_else(|| {
                StorageError::Corrupt(format!("sensor {sensor_id:?} has no points"))
            });
        };
        let Some(stored) = state.stored else {
            return Ok(info(Stats {
                count: state.head.len() as u64,
                first: head_first,
                last: head_last,
            }));
        };
        // Head points outside the stored span are new; inside it, look them up.
        let overlapping: Vec<i64> = state
            .head
            .range(stored.first..=stored.last)
            .map(|(&ts, _)| ts)
            .collect();
        let replaced = if overlapping.is_empty() {
            0
        } else {
            let txn = self.db.begin_read().map_err(backend)?;
            count_stored(&txn, state.key, &overlapping)?
        };
        Ok(info(Stats {
            count: stored.count + state.head.len() as u64 - replaced,
            first: stored.first.min(head_first),
            last: stored.last.max(head_last),
        }))
    }

    fn import(
        &self,
        sensor_id: &SensorId,
        mut batches: tokio::sync::mpsc::Receiver<ImportMessage>,
    ) -> Result<ImportSummary, StorageError> {
        let mut writer = self.lock_writer()?;
        // Fold the head first, so the import lands after every earlier write
        // (the later write wins) and the blocks are the only copy to merge into.
        if self.read_memory().head_points > 0 {
            self.checkpoint(&mut writer)?;
        }
        let (key, stored, is_new) = {
            let memory = self.read_memory();
            match memory.sensors.get(sensor_id) {
                Some(state) => (state.key, state.stored, false),
                None => (memory.next_key, None, true),
            }
        };
        let mut txn = self.db.begin_write().map_err(backend)?;
        txn.set_quick_repair(true);
        let mut points_read = 0u64;
        let mut stats = stored;
        {
            let mut blocks = BlockTables::open(&txn)?;
            loop {
                let batch = match batches.blocking_recv() {
                    Some(ImportMessage::Batch(batch)) => batch,
                    Some(ImportMessage::Commit) => break,
                    // The source failed; its error is reported by the caller.
                    None => return Err(StorageError::InvalidInput("import aborted".into())),
                };
                points_read += batch.len() as u64;
                let points = sorted_unique(batch)?;
                let added = merge_into_blocks(&mut blocks, key, &points)?;
                stats = Some(combine(stats, added, &points));
            }
        }
        let Some(stats) = stats.filter(|_| points_read > 0) else {
            return Ok(ImportSummary { points: 0 });
        };
        {
            let mut sensors = txn.open_table(SENSORS).map_err(backend)?;
            sensors
                .insert(
                    sensor_id.as_str(),
                    (key, stats.count, stats.first, stats.last),
                )
                .map_err(backend)?;
            if is_new {
                let mut meta = txn.open_table(META).map_err(backend)?;
                meta.insert(META_NEXT_KEY, u64::from(key) + 1)
                    .map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)?;
        let mut memory = self.write_memory();
        if is_new {
            memory.next_key = key + 1;
        }
        memory
            .sensors
            .entry(sensor_id.clone())
            .or_insert_with(|| SensorState {
                key,
                stored: None,
                head: BTreeMap::new(),
            })
            .stored = Some(stats);
        drop(writer);
        Ok(ImportSummary {
            points: points_read,
        })
    }
}

/// Groups samples per sensor, keeping their order within each sensor (the
/// later of two writes to one timestamp wins).
fn group_by_sensor(samples: Vec<Sample>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<SensorId, usize> = HashMap::new();
    for sample in samples {
        // Fast path: runs of one sensor, the usual shape of a batch.
        if let Some((last_id, points)) = groups.last_mut()
            && *last_id == sample.sensor_id
        {
            points.push(sample.point);
            continue;
        }
        match index.get(&sample.sensor_id) {
            Some(&i) => groups[i].1.push(sample.point),
            None => {
                index.insert(sample.sensor_id.clone(), groups.len());
                groups.push((sample.sensor_id, vec![sample.point]));
            }
        }
    }
    groups
}

/// Sorts a batch by timestamp, keeping the last of equal timestamps.
fn sorted_unique(batch: PointBatch) -> Result<Vec<Point>, StorageError> {
    let mut points: Vec<Point> = batch.iter().collect();
    for p in &points {
        check_timestamp(p.timestamp_ms)
            .map_err(|e| StorageError::InvalidInput(format!("timestamp_ms {e}")))?;
    }
    if !points
        .windows(2)
        .all(|w| w[0].timestamp_ms < w[1].timestamp_ms)
    {
        // Stable: among equal timestamps the last written stays last.
        points.sort_by_key(|p| p.timestamp_ms);
        let mut unique: Vec<Point> = Vec::with_capacity(points.len());
        for p in points {
            match unique.last_mut() {
                Some(last) if last.timestamp_ms == p.timestamp_ms => *last = p,
                _ => unique.push(p),
            }
        }
        points = unique;
    }
    Ok(points)
}

fn combine(stored: Option<Stats>, added: u64, points: &[Point]) -> Stats {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return stored.unwrap_or(Stats {
            count: 0,
            first: 0,
            last: 0,
        });
    };
    match stored {
        Some(s) => Stats {
            count: s.count + added,
            first: s.first.min(first.timestamp_ms),
            last: s.last.max(last.timestamp_ms),
        },
        None => Stats {
            count: added,
            first: first.timestamp_ms,
            last: last.timestamp_ms,
        },
    }
}

/// Merges sorted, unique `points` into a sensor's blocks; the points win over
/// stored points of the same timestamp. Returns how many timestamps are new.
///
/// Each point goes to the block that starts at or before it (its *owner*),
/// together with every following point before the next block starts, so
/// blocks never overlap. A full owner whose points all precede the group is
/// left alone: appends never rewrite full blocks.
fn merge_into_blocks(
    tables: &mut BlockTables<'_>,
    key: u32,
    points: &[Point],
) -> Result<u64, StorageError> {
    let BlockTables { blocks, summaries } = tables;
    let mut added = 0u64;
    let mut i = 0;
    while i < points.len() {
        let ts = points[i].timestamp_ms;
        let owner = match blocks
            .range((key, i64::MIN)..=(key, ts))
            .map_err(backend)?
            .next_back()
        {
            Some(entry) => {
                let (k, v) = entry.map_err(backend)?;
                Some((k.value().1, v.value().to_vec()))
            }
            None => None,
        };
        let next_start = match blocks
            .range((key, ts + 1)..=(key, i64::MAX))
            .map_err(backend)?
            .next()
        {
            Some(entry) => Some(entry.map_err(backend)?.0.value().1),
            None => None,
        };
        let end = match next_start {
            Some(next) => i + points[i..].partition_point(|p| p.timestamp_ms < next),
            None => points.len(),
        };
        let group = &points[i..end];
        let mut replaced_len = 0;
        let merged = match owner {
            Some((start, bytes)) => {
                let header = codec::header(&bytes).map_err(corrupt)?;
                if header.count as usize >= MAX_BLOCK_POINTS && ts > header.last_ts {
                    group.iter().copied().collect()
                } else {
                    let mut existing = PointBatch::with_capacity(header.count as usize);
                    codec::decode_into(&bytes, &mut existing).map_err(corrupt)?;
                    blocks.remove((key, start)).map_err(backend)?;
                    summaries.remove((key, start)).map_err(backend)?;
                    replaced_len = existing.len();
                    merge_sorted(&existing, group)
                }
            }
            None => group.iter().copied().collect::<PointBatch>(),
        };
        added += (merged.len() - replaced_len) as u64;
        for chunk_start in (0..merged.len()).step_by(MAX_BLOCK_POINTS) {
            let chunk_end = (chunk_start + MAX_BLOCK_POINTS).min(merged.len());
            let columns = (
                &merged.timestamps[chunk_start..chunk_end],
                &merged.values[chunk_start..chunk_end],
                &merged.qualities[chunk_start..chunk_end],
            );
            let block = codec::encode(columns.0, columns.1, columns.2);
            let block_key = (key, merged.timestamps[chunk_start]);
            blocks
                .insert(block_key, block.as_slice())
                .map_err(backend)?;
            if let Some(summary) = Summary::of_columns(columns.0, columns.1, columns.2) {
                summaries
                    .insert(block_key, summary.encode().as_slice())
                    .map_err(backend)?;
            }
        }
        i = end;
    }
    Ok(added)
}

/// The two tables a block lives in, written together.
struct BlockTables<'txn> {
    blocks: redb::Table<'txn, (u32, i64), &'static [u8]>,
    summaries: redb::Table<'txn, (u32, i64), &'static [u8]>,
}

impl<'txn> BlockTables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            blocks: txn.open_table(BLOCKS).map_err(backend)?,
            summaries: txn.open_table(SUMMARIES).map_err(backend)?,
        })
    }
}

/// Merges two sorted runs; on equal timestamps `newer` wins.
fn merge_sorted(older: &PointBatch, newer: &[Point]) -> PointBatch {
    let mut out = PointBatch::with_capacity(older.len() + newer.len());
    let (mut i, mut j) = (0, 0);
    while i < older.len() && j < newer.len() {
        let (a, b) = (older.timestamps[i], newer[j].timestamp_ms);
        if a < b {
            out.push(older.point(i));
            i += 1;
        } else {
            out.push(newer[j]);
            j += 1;
            if a == b {
                i += 1;
            }
        }
    }
    out.timestamps.extend_from_slice(&older.timestamps[i..]);
    out.values.extend_from_slice(&older.values[i..]);
    out.qualities.extend_from_slice(&older.qualities[i..]);
    for p in &newer[j..] {
        out.push(*p);
    }
    out
}

/// How many of `timestamps` (sorted) exist in the sensor's blocks.
fn count_stored(txn: &ReadTransaction, key: u32, timestamps: &[i64]) -> Result<u64, StorageError> {
    let blocks = txn.open_table(BLOCKS).map_err(backend)?;
    let mut found = 0;
    let mut decoded = PointBatch::default();
    let mut decoded_start = None;
    for &ts in timestamps {
        let Some(entry) = blocks
            .range((key, i64::MIN)..=(key, ts))
            .map_err(backend)?
            .next_back()
        else {
            continue;
        };
        let (k, v) = entry.map_err(backend)?;
        if decoded_start != Some(k.value().1) {
            decoded.clear();
            codec::decode_into(v.value(), &mut decoded).map_err(corrupt)?;
            decoded_start = Some(k.value().1);
        }
        if decoded.timestamps.binary_search(&ts).is_ok() {
            found += 1;
        }
    }
    Ok(found)
}

/// What a scan reads: fixed when the scan starts.
struct ScanSnapshot {
    key: u32,
    range: TimeRange,
    /// The head's points in range, sorted.
    head: Vec<Point>,
    /// Present when the sensor has blocks.
    txn: Option<ReadTransaction>,
}

impl ScanSnapshot {
    /// Decodes blocks in order, merges the head in, and sends batches until
    /// done or until the receiver is gone (the client left).
    fn produce(self, sender: &tokio::sync::mpsc::Sender<Result<PointBatch, StorageError>>) {
        if let Err(error) = self.produce_batches(sender) {
            let _ = sender.blocking_send(Err(error));
        }
    }

    fn produce_batches(
        &self,
        sender: &tokio::sync::mpsc::Sender<Result<PointBatch, StorageError>>,
    ) -> Result<(), StorageError> {
        let TimeRange { start_ms, end_ms } = self.range;
        let mut head = &self.head[..];
        if let Some(txn) = &self.txn {
            let blocks = txn.open_table(BLOCKS).map_err(backend)?;
            // The block that starts at or before the range may reach into it.
            let from = match blocks
                .range((self.key, i64::MIN)..=(self.key, start_ms))
                .map_err(backend)?
                .next_back()
            {
                Some(entry) => entry.map_err(backend)?.0.value().1,
                None => start_ms,
            };
            for entry in blocks
                .range((self.key, from)..(self.key, end_ms))
                .map_err(backend)?
            {
                let (_, block) = entry.map_err(backend)?;
                let mut batch = PointBatch::with_capacity(MAX_BLOCK_POINTS);
                codec::decode_into(block.value(), &mut batch).map_err(corrupt)?;
                trim_to_range(&mut batch, start_ms, end_ms);
                let Some(&last) = batch.timestamps.last() else {
                    continue;
                };
                let merged_head = head.partition_point(|p| p.timestamp_ms <= last);
                if merged_head > 0 {
                    batch = merge_sorted(&batch, &head[..merged_head]);
                    head = &head[merged_head..];
                }
                if sender.blocking_send(Ok(batch)).is_err() {
                    return Ok(());
                }
            }
        }
        for chunk in head.chunks(MAX_BLOCK_POINTS) {
            if sender
                .blocking_send(Ok(chunk.iter().copied().collect()))
                .is_err()
            {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl ScanSnapshot {
    /// M4 over the snapshot. A block that lies inside the range and inside
    /// one bucket, with no newer head point in its span, is folded from its
    /// summary without being read; only blocks at bucket edges are decoded.
    fn downsample(self, buckets: usize) -> Result<Downsampled, StorageError> {
        let TimeRange { start_ms, end_ms } = self.range;
        let mut m4 = M4::new(self.range, buckets);
        let mut head = &self.head[..];
        if let Some(txn) = &self.txn {
            let blocks = txn.open_table(BLOCKS).map_err(backend)?;
            let summaries = txn.open_table(SUMMARIES).map_err(backend)?;
            let from = match summaries
                .range((self.key, i64::MIN)..=(self.key, start_ms))
                .map_err(backend)?
                .next_back()
            {
                Some(entry) => entry.map_err(backend)?.0.value().1,
                None => start_ms,
            };
            for entry in summaries
                .range((self.key, from)..(self.key, end_ms))
                .map_err(backend)?
            {
                let (block_key, bytes) = entry.map_err(backend)?;
                let summary = Summary::decode(bytes.value())
                    .ok_or_else(|| StorageError::Corrupt("bad block summary".into()))?;
                let (first, last) = (summary.first.timestamp_ms, summary.last.timestamp_ms);
                // Head points before this block lie in a gap: no block holds them.
                let gap = head.partition_point(|p| p.timestamp_ms < first);
                for p in &head[..gap] {
                    m4.add_point(*p);
                }
                head = &head[gap..];
                let newer = head.partition_point(|p| p.timestamp_ms <= last);
                if newer == 0
                    && first >= start_ms
                    && last < end_ms
                    && m4.bucket_of(first) == m4.bucket_of(last)
                {
                    m4.add_summary(&summary);
                    continue;
                }
                let block = blocks
                    .get(block_key.value())
                    .map_err(backend)?
                    .ok_or_else(|| StorageError::Corrupt("a summary without its block".into()))?;
                let mut batch = PointBatch::with_capacity(summary.count as usize);
                codec::decode_into(block.value(), &mut batch).map_err(corrupt)?;
                trim_to_range(&mut batch, start_ms, end_ms);
                if newer > 0 {
                    batch = merge_sorted(&batch, &head[..newer]);
                    head = &head[newer..];
                }
                m4.add_batch(&batch);
            }
        }
        for p in head {
            m4.add_point(*p);
        }
        Ok(m4.finish())
    }
}

/// Keeps the points in `[start_ms, end_ms)` of a sorted batch.
fn trim_to_range(batch: &mut PointBatch, start_ms: i64, end_ms: i64) {
    let end = batch.timestamps.partition_point(|&ts| ts < end_ms);
    batch.timestamps.truncate(end);
    batch.values.truncate(end);
    batch.qualities.truncate(end);
    let start = batch.timestamps.partition_point(|&ts| ts < start_ms);
    if start > 0 {
        batch.timestamps.drain(..start);
        batch.values.drain(..start);
        batch.qualities.drain(..start);
    }
}

enum ImportMessage {
    Batch(PointBatch),
    Commit,
}

#[async_trait]
impl StorageEngine for EmbeddedStore {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.write(samples))
            .await
            .map_err(join_error)?
    }

    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        let snapshot = match self.inner.scan_snapshot(sensor_id, range) {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return futures_util::stream::empty().boxed(),
            Err(e) => return futures_util::stream::once(async { Err(e) }).boxed(),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(SCAN_READ_AHEAD);
        tokio::task::spawn_blocking(move || snapshot.produce(&sender));
        receiver_stream(receiver)
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let memory = inner.read_memory();
            memory
                .sensors
                .iter()
                .map(|(id, state)| inner.sensor_info(id, state))
                .collect()
        })
        .await
        .map_err(join_error)?
    }

    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        let inner = self.inner.clone();
        let sensor_id = sensor_id.clone();
        tokio::task::spawn_blocking(move || {
            let memory = inner.read_memory();
            memory
                .sensors
                .get(&sensor_id)
                .map(|state| inner.sensor_info(&sensor_id, state))
                .transpose()
        })
        .await
        .map_err(join_error)?
    }

    async fn downsample(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
        buckets: usize,
    ) -> Result<Downsampled, StorageError> {
        let Some(snapshot) = self.inner.scan_snapshot(sensor_id, range)? else {
            return Ok(Downsampled::default());
        };
        tokio::task::spawn_blocking(move || snapshot.downsample(buckets))
            .await
            .map_err(join_error)?
    }

    async fn import(
        &self,
        sensor_id: &SensorId,
        mut batches: PointStream,
    ) -> Result<ImportSummary, StorageError> {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let inner = self.inner.clone();
        let id = sensor_id.clone();
        let worker = tokio::task::spawn_blocking(move || inner.import(&id, receiver));
        let mut source_error = None;
        while let Some(item) = batches.next().await {
            match item {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    if sender.send(ImportMessage::Batch(batch)).await.is_err() {
                        break; // the worker failed; its error is below
                    }
                }
                Err(e) => {
                    source_error = Some(e);
                    break;
                }
            }
        }
        if source_error.is_none() {
            let _ = sender.send(ImportMessage::Commit).await;
        }
        drop(sender);
        let result = worker.await.map_err(join_error)?;
        match source_error {
            Some(e) => Err(e),
            None => result,
        }
    }

    async fn close(&self) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = match inner.lock_writer() {
                Ok(writer) => writer,
                Err(StorageError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            let result = inner.checkpoint(&mut writer);
            writer.closed = true;
            result
        })
        .await
        .map_err(join_error)?
    }
}
