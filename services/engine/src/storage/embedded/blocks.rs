//! The blocks: compressed runs of points in redb, their summaries, the sensor
//! catalogue, and the reads and merges over them.
//!
//! Blocks hold up to [`MAX_BLOCK_POINTS`] points of one sensor in time order,
//! keyed by `(sensor key, first timestamp)`, and never overlap, so a range
//! scan is a sequential read of a few hundred blocks per million points.
//!
//! Everything known about what is in blocks (the sensor catalogue's counts
//! and spans above all) is read from the same redb transaction as the blocks
//! themselves, never from memory: a reader then sees blocks and catalogue of
//! one commit, whatever a checkpoint does meanwhile.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use super::codec::{self, MAX_BLOCK_POINTS};
use super::head::Versioned;
use super::io::{BackendFailures, Faults, GuardedBackend};
use crate::model::{Point, PointBatch, SensorId, TimeRange};
use crate::storage::StorageError;
use crate::storage::m4::{Downsampled, M4, Summary};

/// Blocks: `(sensor key, first timestamp)` → encoded block.
pub const BLOCKS: TableDefinition<(u32, i64), &[u8]> = TableDefinition::new("blocks");
/// Per block, under the same key: its [`Summary`] (count, first, last, min,
/// max), so downsampling reads ~80 bytes instead of the block.
pub const SUMMARIES: TableDefinition<(u32, i64), &[u8]> = TableDefinition::new("summaries");
/// The catalogue: sensor id → `(key, count, first timestamp, last timestamp)`
/// of what is in blocks.
pub const SENSORS: TableDefinition<&str, (u32, u64, i64, i64)> = TableDefinition::new("sensors");
/// Bookkeeping: see the `META_*` keys.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The last WAL segment whose records are all in blocks.
pub const META_CHECKPOINT: &str = "wal_checkpoint";
/// The next unused sensor key.
pub const META_NEXT_KEY: &str = "next_sensor_key";
/// The highest version in blocks, so direct-write versions keep growing
/// after the WAL that held them is gone.
pub const META_LAST_VERSION: &str = "last_version";
/// Commits so far: tells whether a commit that reported a failure landed.
pub const META_COMMITS: &str = "commits";

pub fn backend(error: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(error.to_string())
}

pub fn corrupt(error: codec::CodecError) -> StorageError {
    StorageError::Corrupt(error.to_string())
}

/// What is in blocks about one sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub key: u32,
    pub count: u64,
    pub first: i64,
    pub last: i64,
}

/// Largest `blocks.redb` compacted at every close (seconds at most).
const COMPACT_ON_CLOSE_MAX_BYTES: u64 = 2 << 30;

/// `blocks.redb`, reopenable: redb refuses every operation after a failed
/// write until the database is closed and opened again, which is how a
/// store recovers from a full disk without a restart.
pub struct Blocks {
    path: PathBuf,
    cache_bytes: usize,
    faults: Faults,
    failures: Arc<BackendFailures>,
    db: RwLock<Option<Database>>,
}

impl Blocks {
    /// Opens (creating if needed) the database and its tables.
    ///
    /// A new database is created under a temporary name and renamed into
    /// place once complete, so a failure while creating it (a full disk)
    /// never leaves a half-written file that no later open could read.
    pub fn open(path: &Path, cache_bytes: usize, faults: Faults) -> Result<Self, StorageError> {
        if !path.exists() {
            let fresh = path.with_extension("redb.new");
            let _ = std::fs::remove_file(&fresh);
            let creating = Self::with_path(&fresh, cache_bytes, faults.clone());
            creating.reopen()?;
            creating.create_tables()?;
            drop(creating);
            std::fs::rename(&fresh, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        let blocks = Self::with_path(path, cache_bytes, faults);
        blocks.reopen()?;
        blocks.create_tables()?;
        Ok(blocks)
    }

    fn with_path(path: &Path, cache_bytes: usize, faults: Faults) -> Self {
        Self {
            path: path.to_owned(),
            cache_bytes,
            faults,
            failures: Arc::new(BackendFailures::default()),
            db: RwLock::new(None),
        }
    }

    fn create_tables(&self) -> Result<(), StorageError> {
        let txn = self.begin_write()?;
        txn.open_table(BLOCKS).map_err(backend)?;
        txn.open_table(SUMMARIES).map_err(backend)?;
        txn.open_table(SENSORS).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.commit().map_err(backend)
    }

    pub fn failures(&self) -> &BackendFailures {
        &self.failures
    }

    /// Closes the database (read transactions still open then fail) and
    /// opens it again at its last commit.
    pub fn reopen(&self) -> Result<(), StorageError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        drop(slot.take());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)?;
        let backend_io =
            GuardedBackend::new(file, self.faults.clone(), Arc::clone(&self.failures))?;
        let db = Database::builder()
            .set_cache_size(self.cache_bytes)
            .create_with_backend(backend_io)
            .map_err(backend)?;
        self.failures.clear_disk_full();
        *slot = Some(db);
        Ok(())
    }

    /// The open database, opening it again first if a reopen after a
    /// failure did not succeed yet (the disk was still full).
    fn database(&self) -> Result<std::sync::RwLockReadGuard<'_, Option<Database>>, StorageError> {
        {
            let slot = self.db.read().unwrap_or_else(|e| e.into_inner());
            if slot.is_some() {
                return Ok(slot);
            }
        }
        if self.db.read().unwrap_or_else(|e| e.into_inner()).is_none() {
            self.reopen()?;
        }
        Ok(self.db.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Gives the file's free pages back when they are a good part of it
    /// (after retention, or after an import rewrote many blocks); without
    /// `force`, only for files small enough to compact in a moment. Needs the
    /// database to itself: skipped while any read transaction is open.
    pub fn compact_if_worthwhile(&self, force: bool) -> Result<bool, StorageError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        let Some(db) = slot.as_mut() else {
            return Ok(false);
        };
        let used = {
            let txn = db.begin_write().map_err(backend)?;
            let stats = txn.stats().map_err(backend)?;
            txn.abort().map_err(backend)?;
            stats.allocated_pages() * stats.page_size() as u64
        };
        let file = std::fs::metadata(&self.path)?.len();
        if file < used + used / 16 {
            return Ok(false);
        }
        if !force && file > COMPACT_ON_CLOSE_MAX_BYTES {
            tracing::info!(
                free_bytes = file - used,
                "blocks.redb has free pages; `engine compact` gives them back (too large to do at every close)"
            );
            return Ok(false);
        }
        match db.compact() {
            Ok(_) => Ok(true),
            Err(error) => {
                tracing::debug!(%error, "compaction skipped");
                Ok(false)
            }
        }
    }

    pub fn begin_read(&self) -> Result<ReadTransaction, StorageError> {
        let slot = self.database()?;
        let db = slot.as_ref().ok_or(StorageError::Closed)?;
        db.begin_read().map_err(backend)
    }

    pub fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        let slot = self.database()?;
        let db = slot.as_ref().ok_or(StorageError::Closed)?;
        let mut txn = db.begin_write().map_err(backend)?;
        // Records the allocator state with each commit, so reopening after a
        // crash needs no full-file repair scan.
        txn.set_quick_repair(true);
        Ok(txn)
    }
}

/// A META value, 0 when absent.
pub fn meta_value(txn: &ReadTransaction, name: &str) -> Result<u64, StorageError> {
    let meta = txn.open_table(META).map_err(backend)?;
    Ok(meta
        .get(name)
        .map_err(backend)?
        .map_or(0, |guard| guard.value()))
}

/// The catalogue entry of one sensor.
pub fn stats_of(
    txn: &ReadTransaction,
    sensor_id: &SensorId,
) -> Result<Option<Stats>, StorageError> {
    let sensors = txn.open_table(SENSORS).map_err(backend)?;
    Ok(sensors
        .get(sensor_id.as_str())
        .map_err(backend)?
        .map(|guard| {
            let (key, count, first, last) = guard.value();
            Stats {
                key,
                count,
                first,
                last,
            }
        }))
}

/// Every catalogue entry.
pub fn all_stats(txn: &ReadTransaction) -> Result<Vec<(SensorId, Stats)>, StorageError> {
    let sensors = txn.open_table(SENSORS).map_err(backend)?;
    let mut out = Vec::new();
    for entry in sensors.iter().map_err(backend)? {
        let (id, value) = entry.map_err(backend)?;
        let sensor_id = SensorId::new(id.value()).map_err(|e| {
            StorageError::Corrupt(format!("stored sensor id {:?}: {e}", id.value()))
        })?;
        let (key, count, first, last) = value.value();
        out.push((
            sensor_id,
            Stats {
                key,
                count,
                first,
                last,
            },
        ));
    }
    Ok(out)
}

/// The tables a write transaction changes.
pub struct BlockTables<'txn> {
    pub blocks: redb::Table<'txn, (u32, i64), &'static [u8]>,
    pub summaries: redb::Table<'txn, (u32, i64), &'static [u8]>,
    pub sensors: redb::Table<'txn, &'static str, (u32, u64, i64, i64)>,
    pub meta: redb::Table<'txn, &'static str, u64>,
}

impl<'txn> BlockTables<'txn> {
    pub fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StorageError> {
        Ok(Self {
            blocks: txn.open_table(BLOCKS).map_err(backend)?,
            summaries: txn.open_table(SUMMARIES).map_err(backend)?,
            sensors: txn.open_table(SENSORS).map_err(backend)?,
            meta: txn.open_table(META).map_err(backend)?,
        })
    }

    pub fn meta(&self, name: &str) -> Result<u64, StorageError> {
        Ok(self
            .meta
            .get(name)
            .map_err(backend)?
            .map_or(0, |guard| guard.value()))
    }

    /// Raises a META value to at least `value`.
    pub fn raise_meta(&mut self, name: &str, value: u64) -> Result<(), StorageError> {
        if self.meta(name)? < value {
            self.meta.insert(name, value).map_err(backend)?;
        }
        Ok(())
    }

    /// Merges sorted, unique `points` into a sensor's blocks and updates its
    /// catalogue entry. Each point replaces a stored one of the same
    /// timestamp only if its version is at least as high.
    pub fn merge_sensor(
        &mut self,
        sensor_id: &SensorId,
        key: u32,
        points: &[Versioned],
    ) -> Result<(), StorageError> {
        let (Some(first), Some(last)) = (points.first(), points.last()) else {
            return Ok(());
        };
        let stored = self
            .sensors
            .get(sensor_id.as_str())
            .map_err(backend)?
            .map(|guard| guard.value());
        let added = self.merge_into_blocks(key, points)?;
        let (first, last) = (first.point.timestamp_ms, last.point.timestamp_ms);
        let entry = match stored {
            Some((_, count, stored_first, stored_last)) => (
                key,
                count + added,
                stored_first.min(first),
                stored_last.max(last),
            ),
            None => (key, added, first, last),
        };
        self.sensors
            .insert(sensor_id.as_str(), entry)
            .map_err(backend)?;
        Ok(())
    }

    /// Removes a sensor's blocks whose last point lies before `before_ms`
    /// and corrects its catalogue entry (removed when no block is left).
    pub fn drop_blocks_before(
        &mut self,
        sensor_id: &SensorId,
        key: u32,
        before_ms: i64,
    ) -> Result<crate::storage::Dropped, StorageError> {
        let mut dropped = crate::storage::Dropped::default();
        let mut doomed = Vec::new();
        for entry in self
            .blocks
            .range((key, i64::MIN)..(key, before_ms))
            .map_err(backend)?
        {
            let (k, v) = entry.map_err(backend)?;
            let header = codec::header(v.value()).map_err(corrupt)?;
            if header.last_ts >= before_ms {
                break; // blocks never overlap: the rest reach past it too
            }
            doomed.push(k.value());
            dropped.points += u64::from(header.count);
            dropped.bytes += v.value().len() as u64;
        }
        if doomed.is_empty() {
            return Ok(dropped);
        }
        for block_key in &doomed {
            self.blocks.remove(*block_key).map_err(backend)?;
            self.summaries.remove(*block_key).map_err(backend)?;
        }
        let stored = self
            .sensors
            .get(sensor_id.as_str())
            .map_err(backend)?
            .map(|guard| guard.value());
        let first_left = match self
            .blocks
            .range((key, i64::MIN)..=(key, i64::MAX))
            .map_err(backend)?
            .next()
        {
            Some(entry) => Some(entry.map_err(backend)?.0.value().1),
            None => None,
        };
        match (stored, first_left) {
            (Some((_, count, _, last)), Some(first)) => {
                let entry = (key, count.saturating_sub(dropped.points), first, last);
                self.sensors
                    .insert(sensor_id.as_str(), entry)
                    .map_err(backend)?;
            }
            _ => {
                self.sensors.remove(sensor_id.as_str()).map_err(backend)?;
            }
        }
        Ok(dropped)
    }

    /// Returns how many timestamps are new.
    ///
    /// Each point goes to the block that starts at or before it (its
    /// *owner*), together with every following point before the next block
    /// starts, so blocks never overlap. A full owner whose points all precede
    /// the group is left alone: appends never rewrite full blocks.
    fn merge_into_blocks(&mut self, key: u32, points: &[Versioned]) -> Result<u64, StorageError> {
        let mut added = 0u64;
        let mut i = 0;
        while i < points.len() {
            let ts = points[i].point.timestamp_ms;
            let owner = match self
                .blocks
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
            let next_start = match self
                .blocks
                .range((key, ts + 1)..=(key, i64::MAX))
                .map_err(backend)?
                .next()
            {
                Some(entry) => Some(entry.map_err(backend)?.0.value().1),
                None => None,
            };
            let end = match next_start {
                Some(next) => i + points[i..].partition_point(|p| p.point.timestamp_ms < next),
                None => points.len(),
            };
            let group = &points[i..end];
            let mut replaced_len = 0;
            let merged = match owner {
                Some((start, bytes)) => {
                    let header = codec::header(&bytes).map_err(corrupt)?;
                    let full = header.count as usize >= MAX_BLOCK_POINTS
                        || bytes.len() >= codec::MAX_BLOCK_BYTES * 7 / 8;
                    if full && ts > header.last_ts {
                        VersionedColumns::from_points(group)
                    } else {
                        let existing = VersionedColumns::decode(&bytes)?;
                        self.blocks.remove((key, start)).map_err(backend)?;
                        self.summaries.remove((key, start)).map_err(backend)?;
                        replaced_len = existing.batch.len();
                        existing.merge(group)
                    }
                }
                None => VersionedColumns::from_points(group),
            };
            added += (merged.batch.len() - replaced_len) as u64;
            for (from, to, block) in merged.encode_blocks() {
                let (ts, values, qualities) = (
                    &merged.batch.timestamps[from..to],
                    &merged.batch.values[from..to],
                    &merged.batch.qualities[from..to],
                );
                let block_key = (key, ts[0]);
                self.blocks
                    .insert(block_key, block.as_slice())
                    .map_err(backend)?;
                if let Some(summary) = Summary::of_columns(ts, values, qualities) {
                    self.summaries
                        .insert(block_key, summary.encode().as_slice())
                        .map_err(backend)?;
                }
            }
            i = end;
        }
        Ok(added)
    }
}

/// A run of points in columns with their versions.
struct VersionedColumns {
    batch: PointBatch,
    versions: Vec<u64>,
}

impl VersionedColumns {
    fn from_points(points: &[Versioned]) -> Self {
        Self {
            batch: points.iter().map(|v| v.point).collect(),
            versions: points.iter().map(|v| v.version).collect(),
        }
    }

    fn decode(block: &[u8]) -> Result<Self, StorageError> {
        let header = codec::header(block).map_err(corrupt)?;
        let mut batch = PointBatch::with_capacity(header.count as usize);
        codec::decode_into(block, &mut batch).map_err(corrupt)?;
        let mut versions = Vec::with_capacity(header.count as usize);
        codec::decode_versions(block, &mut versions).map_err(corrupt)?;
        Ok(Self { batch, versions })
    }

    /// Cuts the run into blocks of at most [`MAX_BLOCK_POINTS`] points and
    /// [`codec::MAX_BLOCK_BYTES`] bytes: `(from, to, encoded)` each.
    fn encode_blocks(&self) -> Vec<(usize, usize, Vec<u8>)> {
        let n = self.batch.len();
        let mut out = Vec::with_capacity(n.div_ceil(MAX_BLOCK_POINTS));
        let mut from = 0;
        while from < n {
            let mut to = (from + MAX_BLOCK_POINTS).min(n);
            loop {
                let block = codec::encode(
                    &self.batch.timestamps[from..to],
                    &self.batch.values[from..to],
                    &self.batch.qualities[from..to],
                    &self.versions[from..to],
                );
                if block.len() <= codec::MAX_BLOCK_BYTES || to - from == 1 {
                    out.push((from, to, block));
                    break;
                }
                // Too big: take the share that fits, with a little slack
                // (points differ in size), and try again.
                let fitting = (to - from) * codec::MAX_BLOCK_BYTES / block.len() * 63 / 64;
                to = from + fitting.clamp(1, to - from - 1);
            }
            from = to;
        }
        out
    }

    /// Merges newer points in; see [`Versioned::supersedes`].
    fn merge(&self, newer: &[Versioned]) -> Self {
        let older = &self.batch;
        let mut out = Self {
            batch: PointBatch::with_capacity(older.len() + newer.len()),
            versions: Vec::with_capacity(older.len() + newer.len()),
        };
        let (mut i, mut j) = (0, 0);
        while i < older.len() || j < newer.len() {
            let take_older = match (older.timestamps.get(i), newer.get(j)) {
                (Some(&a), Some(b)) if a == b.point.timestamp_ms => {
                    let keep_older = !b.supersedes(self.versions[i]);
                    if keep_older {
                        j += 1;
                    } else {
                        i += 1;
                    }
                    keep_older
                }
                (Some(&a), Some(b)) => a < b.point.timestamp_ms,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_older {
                out.batch.push(older.point(i));
                out.versions.push(self.versions[i]);
                i += 1;
            } else {
                out.batch.push(newer[j].point);
                out.versions.push(newer[j].version);
                j += 1;
            }
        }
        out
    }
}

/// Merges head points into a decoded block's points for a reader. The
/// block's versions are only decoded when a head point shares a timestamp
/// with it.
fn merge_for_read(
    block: &[u8],
    batch: PointBatch,
    head: &[Versioned],
) -> Result<PointBatch, StorageError> {
    if head.is_empty() {
        return Ok(batch);
    }
    let shares_timestamp = head.iter().any(|v| {
        batch
            .timestamps
            .binary_search(&v.point.timestamp_ms)
            .is_ok()
    });
    let versions = if shares_timestamp {
        let mut versions = Vec::with_capacity(batch.len());
        codec::decode_versions(block, &mut versions).map_err(corrupt)?;
        // The batch may be trimmed to a range: align the versions with it.
        let mut all = PointBatch::default();
        codec::decode_into(block, &mut all).map_err(corrupt)?;
        let start = all
            .timestamps
            .partition_point(|&ts| Some(&ts) < batch.timestamps.first());
        versions[start..start + batch.len()].to_vec()
    } else {
        vec![0; batch.len()]
    };
    Ok(VersionedColumns { batch, versions }.merge(head).batch)
}

/// How many of `timestamps` (sorted) exist in the sensor's blocks.
pub fn count_stored(
    txn: &ReadTransaction,
    key: u32,
    timestamps: &[i64],
) -> Result<u64, StorageError> {
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
pub struct ScanSnapshot {
    pub key: u32,
    pub range: TimeRange,
    /// The heads' points in range, merged and sorted.
    pub head: Vec<Versioned>,
    pub txn: ReadTransaction,
}

type Sender = tokio::sync::mpsc::Sender<Result<PointBatch, StorageError>>;

impl ScanSnapshot {
    /// Decodes blocks in order, merges the head in, and sends batches until
    /// done or until the receiver is gone (the client left).
    pub fn produce(self, sender: &Sender) {
        if let Err(error) = self.produce_batches(sender) {
            let _ = sender.blocking_send(Err(error));
        }
    }

    /// The sensor's entries (blocks or their summaries, keyed alike) that
    /// may hold points of the range: from the one that starts at or before
    /// the range start, which may reach into it.
    fn entries<'t, V: redb::Value + 'static>(
        &self,
        table: &'t impl ReadableTable<(u32, i64), V>,
    ) -> Result<redb::Range<'t, (u32, i64), V>, StorageError> {
        let TimeRange { start_ms, end_ms } = self.range;
        let from = match table
            .range((self.key, i64::MIN)..=(self.key, start_ms))
            .map_err(backend)?
            .next_back()
        {
            Some(entry) => entry.map_err(backend)?.0.value().1,
            None => start_ms,
        };
        table
            .range((self.key, from)..(self.key, end_ms))
            .map_err(backend)
    }

    /// A block's points in range, with the head's points up to its last one
    /// merged in and taken off `head`: what a scan yields for the block.
    fn block_points(
        &self,
        block: &[u8],
        head: &mut &[Versioned],
    ) -> Result<PointBatch, StorageError> {
        let mut batch = PointBatch::with_capacity(MAX_BLOCK_POINTS);
        codec::decode_into(block, &mut batch).map_err(corrupt)?;
        trim_to_range(&mut batch, self.range.start_ms, self.range.end_ms);
        let Some(&last) = batch.timestamps.last() else {
            return Ok(batch);
        };
        let merged_head = head.partition_point(|p| p.point.timestamp_ms <= last);
        if merged_head > 0 {
            batch = merge_for_read(block, batch, &head[..merged_head])?;
            *head = &head[merged_head..];
        }
        Ok(batch)
    }

    fn produce_batches(&self, sender: &Sender) -> Result<(), StorageError> {
        let mut head = &self.head[..];
        let blocks = self.txn.open_table(BLOCKS).map_err(backend)?;
        for entry in self.entries(&blocks)? {
            let (_, block) = entry.map_err(backend)?;
            let batch = self.block_points(block.value(), &mut head)?;
            if batch.is_empty() {
                continue;
            }
            if sender.blocking_send(Ok(batch)).is_err() {
                return Ok(());
            }
        }
        for chunk in head.chunks(MAX_BLOCK_POINTS) {
            if sender
                .blocking_send(Ok(chunk.iter().map(|v| v.point).collect()))
                .is_err()
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The points in range, in order, as one batch: all of them, or once
    /// more than `limit` are read, the ones read so far (a whole block
    /// more at most). The blocks are decoded straight into the batch: no
    /// batch per block, no hand-off per block to another thread.
    pub fn read_prefix(self, limit: usize) -> Result<PointBatch, StorageError> {
        let TimeRange { start_ms, end_ms } = self.range;
        let mut head = &self.head[..];
        let mut out = PointBatch::default();
        let blocks = self.txn.open_table(BLOCKS).map_err(backend)?;
        for entry in self.entries(&blocks)? {
            if out.len() > limit {
                return Ok(out);
            }
            let (_, block) = entry.map_err(backend)?;
            let header = codec::header(block.value()).map_err(corrupt)?;
            if head
                .first()
                .is_some_and(|p| p.point.timestamp_ms <= header.last_ts)
            {
                // Head points fall in this block: merged as a scan does.
                out.extend_from_batch(&self.block_points(block.value(), &mut head)?);
                continue;
            }
            // The common case: decoded in place, then cut to the range (only
            // the first block can start before it, only the last end after
            // it; the cut is two binary searches).
            let first = out.is_empty();
            codec::decode_into(block.value(), &mut out).map_err(corrupt)?;
            trim_to_range(&mut out, start_ms, end_ms);
            if first {
                // Room for the range at this block's density (up to the
                // limit), so the batch is not regrown and recopied.
                let span = (header.last_ts - header.first_ts).max(1) as f64;
                let rest = (end_ms as f64 - header.last_ts as f64).max(0.0);
                let expected = (header.count as f64 * rest / span * 1.05) as usize;
                out.reserve(expected.min(limit.saturating_add(MAX_BLOCK_POINTS)));
            }
        }
        for point in head {
            out.push(point.point);
        }
        Ok(out)
    }

    /// M4 over the snapshot. A block that lies inside the range and inside
    /// one bucket, with no head point in its span, is folded from its
    /// summary without being read; only blocks at bucket edges are decoded.
    pub fn downsample(self, buckets: usize) -> Result<Downsampled, StorageError> {
        let TimeRange { start_ms, end_ms } = self.range;
        let mut m4 = M4::new(self.range, buckets);
        let mut head = &self.head[..];
        let blocks = self.txn.open_table(BLOCKS).map_err(backend)?;
        let summaries = self.txn.open_table(SUMMARIES).map_err(backend)?;
        for entry in self.entries(&summaries)? {
            let (block_key, bytes) = entry.map_err(backend)?;
            let summary = Summary::decode(bytes.value())
                .ok_or_else(|| StorageError::Corrupt("bad block summary".into()))?;
            let (first, last) = (summary.first.timestamp_ms, summary.last.timestamp_ms);
            // Head points before this block lie in a gap: no block holds them.
            let gap = head.partition_point(|p| p.point.timestamp_ms < first);
            for p in &head[..gap] {
                m4.add_point(p.point);
            }
            head = &head[gap..];
            let newer = head.partition_point(|p| p.point.timestamp_ms <= last);
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
            if newer > 0 && !batch.is_empty() {
                batch = merge_for_read(block.value(), batch, &head[..newer])?;
            } else if newer > 0 {
                for p in &head[..newer] {
                    m4.add_point(p.point);
                }
            }
            head = &head[newer..];
            m4.add_batch(&batch);
        }
        for p in head {
            m4.add_point(p.point);
        }
        Ok(m4.finish())
    }
}

/// Keeps the points in `[start_ms, end_ms)` of a sorted batch.
pub fn trim_to_range(batch: &mut PointBatch, start_ms: i64, end_ms: i64) {
    batch.truncate(batch.timestamps.partition_point(|&ts| ts < end_ms));
    let start = batch.timestamps.partition_point(|&ts| ts < start_ms);
    if start > 0 {
        batch.timestamps.drain(..start);
        batch.values.drain(..start);
        batch.qualities.drain(..start);
    }
}

/// Sorts points by timestamp, keeping the last of equal timestamps.
pub fn sorted_unique(mut points: Vec<Point>) -> Vec<Point> {
    if points
        .windows(2)
        .all(|w| w[0].timestamp_ms < w[1].timestamp_ms)
    {
        return points;
    }
    // Stable: among equal timestamps the last written stays last.
    points.sort_by_key(|p| p.timestamp_ms);
    let mut unique: Vec<Point> = Vec::with_capacity(points.len());
    for p in points {
        match unique.last_mut() {
            Some(last) if last.timestamp_ms == p.timestamp_ms => *last = p,
            _ => unique.push(p),
        }
    }
    unique
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versioned(ts: i64, value: f64, version: u64) -> Versioned {
        Versioned {
            point: Point {
                timestamp_ms: ts,
                value,
                quality: 192,
            },
            version,
        }
    }

    #[test]
    fn merging_keeps_the_higher_version_of_each_timestamp() {
        let stored = VersionedColumns::from_points(&[
            versioned(1, 1.0, 5),
            versioned(2, 2.0, 5),
            versioned(4, 4.0, 5),
        ]);
        let merged = stored.merge(&[
            versioned(0, 0.5, 1),
            versioned(1, -1.0, 4),
            versioned(2, -2.0, 5),
            versioned(3, 3.0, 1),
            versioned(4, -4.0, 6),
            versioned(9, 9.0, 1),
        ]);
        let values: Vec<f64> = merged.batch.values.clone();
        assert_eq!(values, vec![0.5, 1.0, -2.0, 3.0, -4.0, 9.0]);
        assert_eq!(merged.versions, vec![1, 5, 5, 1, 6, 1]);
    }

    #[test]
    fn reads_align_versions_with_a_trimmed_block() {
        let points: Vec<Versioned> = (0..10)
            .map(|i| versioned(i, i as f64, 10 + i as u64))
            .collect();
        let columns = VersionedColumns::from_points(&points);
        let block = codec::encode(
            &columns.batch.timestamps,
            &columns.batch.values,
            &columns.batch.qualities,
            &columns.versions,
        );
        let mut batch = PointBatch::default();
        codec::decode_into(&block, &mut batch).unwrap();
        trim_to_range(&mut batch, 3, 8);
        // ts 4 has version 14: an older write (13) loses, a newer (15) wins.
        let merged = merge_for_read(&block, batch.clone(), &[versioned(4, -1.0, 13)]).unwrap();
        assert_eq!(merged.values, vec![3.0, 4.0, 5.0, 6.0, 7.0]);
        let merged = merge_for_read(&block, batch, &[versioned(4, -1.0, 15)]).unwrap();
        assert_eq!(merged.values, vec![3.0, -1.0, 5.0, 6.0, 7.0]);
    }
}
