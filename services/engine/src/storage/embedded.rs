//! The embedded store: the default [`StorageEngine`], persistent in one data
//! directory.
//!
//! # Design
//!
//! ```text
//! DIR/LOCK          held with an OS file lock: one process per directory
//! DIR/wal/N.wal     write-ahead log segments (see `wal`)
//! DIR/blocks.redb   compressed blocks (see `codec`, `blocks`) and the catalogue
//! DIR/staging/      imports being received (see `staging`)
//! ```
//!
//! A write appends one record to the WAL and `fdatasync`s it (now it is
//! durable and acknowledged), then lands in the *active head*: an in-memory
//! sorted map per sensor. When the active head holds
//! [`EmbeddedOptions::head_flush_points`] points it is *frozen*: the WAL moves
//! on to a new segment, a fresh head takes new writes, and a background
//! thread folds the frozen head into blocks in one redb transaction that also
//! records the WAL segment it covers; then the covered segments are deleted.
//! No write waits for that fold. If folding falls behind (two frozen heads
//! waiting and the active head full again), writes slow down, then wait: the
//! memory a store uses stays bounded. Opening replays the segments after the
//! last fold.
//!
//! Every point carries a version (its stream sequence, or for a direct write
//! a number above every stream sequence that grows with each write), and a
//! point only replaces one of the same timestamp whose version is not
//! higher, wherever the two meet: in a head, between heads, or when a head
//! is folded into blocks. So the order in which heads and imports reach the
//! blocks never decides which value wins.
//!
//! A full disk is not fatal: a write the WAL cannot take is undone and
//! refused ([`StorageError::Full`]), a fold that cannot be committed is
//! retried, and both work again once there is room, without a restart. A
//! failed fsync is fatal: what is on disk is then unknown, so the store
//! refuses writes ([`StorageError::Failed`]) until a restart has recovered
//! from the WAL.
//!
//! Imports are all-or-nothing and never block other writers: they are
//! staged in a file of their own while the source is read, then merged into
//! the blocks in one transaction.

mod backup;
mod blocks;
/// `pub(crate)` for the fuzz entry points ([`crate::fuzzing`]).
pub(crate) mod codec;
mod group_commit;
mod head;
pub mod io;
mod staging;
/// `pub(crate)` for the fuzz entry points ([`crate::fuzzing`]).
pub(crate) mod wal;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use self::blocks::{BlockTables, Blocks, ScanSnapshot};
use self::group_commit::GroupCommit;
use self::head::{Head, Versioned, merge_heads};
use self::io::Faults;
use self::staging::StagingFile;
use self::wal::{Group, Record, WalError, WalWriter};
use super::m4::Downsampled;
use super::{
    ByteStream, Dropped, ImportSummary, PointStream, SensorInfo, StorageEngine, StorageError,
    StoreHealth, receiver_stream,
};
use crate::model::{
    FIRST_DIRECT_VERSION, MAX_STREAM_SEQ, PointBatch, Sample, SensorId, TimeRange, check_timestamp,
};

pub use self::backup::{BackupSummary, Manifest as BackupManifest};
pub use self::wal::RepairReport;

/// Batches a scan decodes ahead of its consumer.
const SCAN_READ_AHEAD: usize = 4;
/// Frozen heads that may wait to be folded before writes slow down.
pub const MAX_FROZEN_HEADS: usize = 2;
/// A group commit takes queued writes up to this many points (and always
/// one): a commit stays about as long as one large write's.
const MAX_GROUP_COMMIT_POINTS: usize = 64 << 10;
/// How soon a fold that failed (a full disk) is tried again.
const RETRY_FOLD_AFTER: Duration = Duration::from_secs(1);

/// Tuning of the embedded store. The defaults suit a server.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Points held in the active head before it is frozen and folded into
    /// blocks. Bounds the heads' memory (about 50 bytes a point, up to three
    /// heads) and the replay time after a crash.
    pub head_flush_points: usize,
    /// A head is also frozen when its WAL segment grows past this.
    pub wal_segment_bytes: u64,
    /// redb's page cache. Kept small: scans read each page once, and the
    /// kernel's page cache already holds hot files.
    pub cache_bytes: usize,
    /// Injected I/O faults, for tests; none in production.
    pub faults: Faults,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            head_flush_points: 256 * 1024,
            wal_segment_bytes: 256 << 20,
            cache_bytes: 32 << 20,
            faults: Faults::default(),
        }
    }
}

impl EmbeddedOptions {
    /// Bytes of zeros a new WAL segment is written with (see
    /// [`WalWriter::create`]): about what a full head takes in the WAL
    /// (17 bytes a point, framing, a stream seq for some), at most 32 MiB.
    fn wal_preallocation(&self) -> u64 {
        (self.head_flush_points as u64)
            .saturating_mul(24)
            .min(32 << 20)
            .min(self.wal_segment_bytes)
    }
}

/// The embedded store. Cheap to share: wrap it in an `Arc`.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Inner {
    dir: PathBuf,
    blocks: Blocks,
    /// Serialises WAL appends, so the WAL order is the order versions are
    /// handed out and writes applied.
    wal: Mutex<WalState>,
    /// Writes waiting for the WAL: those that arrive during a sync share
    /// the next one. Weighed in points.
    commits: GroupCommit<Vec<Group>>,
    /// What scans and lookups read; written only briefly.
    memory: RwLock<Memory>,
    /// Serialises redb write transactions: folds and import commits.
    block_writer: Mutex<()>,
    signal: Arc<Signal>,
    health: HealthState,
    /// Backups running: while any is, folded WAL segments are kept (a
    /// backup copies them after its snapshot); the next fold deletes them.
    backups_running: Arc<AtomicUsize>,
    options: EmbeddedOptions,
    /// Held for the store's lifetime: the OS releases it if the process dies.
    _lock: File,
}

struct WalState {
    writer: WalWriter,
    /// The next segment, created ahead by the checkpoint thread, so that a
    /// freeze under this lock swaps files instead of creating and syncing
    /// one (two fsyncs every writer would wait for).
    spare: Option<WalWriter>,
    /// The checkpoint thread is creating the spare (outside this lock).
    spare_pending: bool,
    /// Spares are made once a first freeze happened: a store whose head
    /// never fills keeps a single segment.
    spare_wanted: bool,
    /// The version the next direct write gets.
    next_version: u64,
    closed: bool,
}

#[derive(Default)]
struct Memory {
    /// Every known sensor and its key in the blocks.
    keys: HashMap<SensorId, u32>,
    next_key: u32,
    active: Head,
    /// Heads waiting to be folded, oldest first.
    frozen: VecDeque<Arc<Frozen>>,
}

/// A head that takes no more writes, waiting to be folded into blocks.
struct Frozen {
    head: Head,
    /// The newest WAL segment whose records it holds: once it is in blocks,
    /// that segment and older ones can go.
    wal_seq: u64,
}

/// Wakes the background fold and those who wait for it.
#[derive(Default)]
struct Signal {
    state: Mutex<SignalState>,
    /// A head was frozen, or the store is stopping.
    work: Condvar,
    /// A fold finished (or failed): writers held back may go on.
    progress: Condvar,
}

#[derive(Default)]
struct SignalState {
    /// A head was frozen since the fold last looked.
    pending: bool,
    stopping: bool,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, SignalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop(&self) {
        self.lock().stopping = true;
        self.work.notify_all();
        self.progress.notify_all();
    }

    fn wake_fold(&self) {
        self.lock().pending = true;
        self.work.notify_all();
    }
}

/// What probes see, with each change of state logged once.
struct HealthState {
    wal_full: AtomicBool,
    blocks_full: AtomicBool,
    failed: Mutex<Option<String>>,
    reported: Mutex<StoreHealth>,
}

impl HealthState {
    fn new() -> Self {
        Self {
            wal_full: AtomicBool::new(false),
            blocks_full: AtomicBool::new(false),
            failed: Mutex::new(None),
            reported: Mutex::new(StoreHealth::Ok),
        }
    }

    fn current(&self) -> StoreHealth {
        if let Some(reason) = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return StoreHealth::Failed(reason);
        }
        if self.wal_full.load(Ordering::Acquire) || self.blocks_full.load(Ordering::Acquire) {
            return StoreHealth::Degraded(
                "no space left on the data directory's disk: writes are refused until space is freed"
                    .into(),
            );
        }
        StoreHealth::Ok
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_wal_full(&self, full: bool) {
        if self.wal_full.swap(full, Ordering::AcqRel) != full {
            self.report();
        }
    }

    fn set_blocks_full(&self, full: bool) {
        if self.blocks_full.swap(full, Ordering::AcqRel) != full {
            self.report();
        }
    }

    fn fail(&self, reason: String) {
        {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            if failed.is_some() {
                return;
            }
            *failed = Some(reason);
        }
        self.report();
    }

    /// Logs the state if it changed since the last report.
    fn report(&self) {
        let now = self.current();
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        if *reported == now {
            return;
        }
        match &now {
            StoreHealth::Ok => tracing::info!("store healthy again: writes are accepted"),
            StoreHealth::Degraded(reason) => tracing::warn!(%reason, "store degraded"),
            StoreHealth::Failed(reason) => tracing::error!(%reason, "store failed"),
        }
        *reported = now;
    }
}

fn join_error(error: tokio::task::JoinError) -> StorageError {
    StorageError::Backend(format!("storage task failed: {error}"))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, replaying the WAL.
    ///
    /// Fails with [`StorageError::Locked`] when another process has it open,
    /// and with [`StorageError::Corrupt`] naming the segment and offset when
    /// the WAL is damaged (not merely torn at its end); `engine repair` then
    /// recovers what is intact. Blocking: call it from a blocking context.
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
        staging::clear(&dir.join("staging"))?;
        let blocks = Blocks::open(
            &dir.join("blocks.redb"),
            options.cache_bytes,
            options.faults.clone(),
        )?;

        let mut memory = Memory::default();
        let (checkpoint, last_version) = {
            let txn = blocks.begin_read()?;
            memory.next_key = u32::try_from(blocks::meta_value(&txn, blocks::META_NEXT_KEY)?)
                .map_err(|_| StorageError::Corrupt("sensor key counter out of range".into()))?;
            for (sensor_id, stats) in blocks::all_stats(&txn)? {
                memory.keys.insert(sensor_id, stats.key);
            }
            (
                blocks::meta_value(&txn, blocks::META_CHECKPOINT)?,
                blocks::meta_value(&txn, blocks::META_LAST_VERSION)?,
            )
        };

        // Replay what the blocks do not hold yet.
        let wal_dir = dir.join("wal");
        let segments = wal::list_segments(&wal_dir)?;
        let newest = segments
            .last()
            .map_or(checkpoint, |(seq, _)| (*seq).max(checkpoint));
        let last_written = last_written_segment(&segments);
        let mut next_version = last_version.max(FIRST_DIRECT_VERSION) + 1;
        let mut replayed = Head::default();
        for (seq, path) in &segments {
            if *seq <= checkpoint {
                continue;
            }
            let contents = wal::read_segment(path, *seq >= last_written).map_err(wal_open_error)?;
            for record in &contents.records {
                let version = record.version.unwrap_or(next_version);
                next_version = next_version.max(version + 1);
                memory.register(record);
                replayed.apply(record, version);
            }
            if contents.torn_bytes > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    bytes = contents.torn_bytes,
                    "dropped a torn WAL tail (a write cut short by a crash, never acknowledged)"
                );
                wal::truncate_torn_tail(path, contents.intact_len)?;
            }
        }
        let writer = WalWriter::create(
            &wal_dir,
            newest + 1,
            options.faults.clone(),
            options.wal_preallocation(),
        )
        .map_err(|e| wal_error(e, &HealthState::new()))?;
        if replayed.is_empty() {
            delete_segments_up_to(&wal_dir, newest);
        } else {
            memory.frozen.push_back(Arc::new(Frozen {
                head: replayed,
                wal_seq: newest,
            }));
        }

        let signal = Arc::new(Signal::default());
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            blocks,
            wal: Mutex::new(WalState {
                writer,
                spare: None,
                spare_pending: false,
                spare_wanted: false,
                next_version,
                closed: false,
            }),
            commits: GroupCommit::new(MAX_GROUP_COMMIT_POINTS),
            memory: RwLock::new(memory),
            block_writer: Mutex::new(()),
            signal: Arc::clone(&signal),
            health: HealthState::new(),
            backups_running: Arc::new(AtomicUsize::new(0)),
            options,
            _lock: lock,
        });
        // Fold the replayed head now: recovery is then finished. On a full
        // disk the store opens anyway and the fold is retried.
        if let Err(error) = inner.fold_all() {
            if !error.is_transient() {
                return Err(error);
            }
            tracing::warn!(%error, "could not fold the replayed WAL yet; will retry");
        }
        let checkpointer = spawn_checkpointer(Arc::downgrade(&inner), signal)?;
        Ok(Self {
            inner,
            checkpointer: Mutex::new(Some(checkpointer)),
        })
    }

    /// Repairs a damaged WAL in `dir` (the store must not be open): every
    /// segment the next open would refuse is rewritten with its intact
    /// records, the original moved to `wal/damaged/`. Returns one report per
    /// repaired segment (none when nothing was damaged).
    pub fn repair(dir: &Path) -> Result<Vec<RepairReport>, StorageError> {
        let _lock = lock_directory(dir)?;
        let checkpoint = {
            let blocks = Blocks::open(&dir.join("blocks.redb"), 1 << 20, Faults::default())?;
            let txn = blocks.begin_read()?;
            blocks::meta_value(&txn, blocks::META_CHECKPOINT)?
        };
        let wal_dir = dir.join("wal");
        let segments = wal::list_segments(&wal_dir)?;
        let last_written = last_written_segment(&segments);
        let mut reports = Vec::new();
        for (seq, path) in segments {
            if seq <= checkpoint {
                continue;
            }
            if let Err(WalError::Damaged { .. }) = wal::read_segment(&path, seq >= last_written) {
                reports.push(
                    wal::repair_segment(&path).map_err(|e| wal_error(e, &HealthState::new()))?,
                );
            }
        }
        Ok(reports)
    }

    /// Folds everything into blocks and gives the file's free pages back
    /// to the file system, whatever its size (`engine compact`; the store
    /// must not be serving).
    pub fn compact(&self) -> Result<bool, StorageError> {
        self.inner.blocks.compact_if_worthwhile(true)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Writes a consistent backup (zstd-compressed tar) to `out`, on the
    /// calling thread; writes go on meanwhile. See `backup` for the format.
    pub fn backup_to(&self, out: impl std::io::Write) -> Result<BackupSummary, StorageError> {
        let (snapshot, _running) = self.inner.backup_snapshot()?;
        backup::write_backup(snapshot, out)
    }

    /// Rebuilds a store in `dir` (new or empty) from a backup, replays the
    /// WAL it holds and folds it: the store then holds exactly what the
    /// backup did.
    pub fn restore(
        input: impl std::io::Read,
        dir: &Path,
    ) -> Result<(BackupManifest, BackupSummary), StorageError> {
        let restored = backup::restore(input, dir)?;
        let store = Self::open(dir)?;
        store.inner.close()?;
        Ok(restored)
    }

    fn stop_checkpointer(&self) {
        self.inner.signal.stop();
        let handle = self
            .checkpointer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Without `close`, what is not folded stays in the WAL for the next
        // open; the thread must not keep the store (and its lock) alive.
        self.stop_checkpointer();
    }
}

fn wal_open_error(error: WalError) -> StorageError {
    match error {
        damaged @ WalError::Damaged { .. } => StorageError::Corrupt(damaged.to_string()),
        other => wal_error(other, &HealthState::new()),
    }
}

/// Maps a WAL failure, recording what it means for the store's health.
fn wal_error(error: WalError, health: &HealthState) -> StorageError {
    match error {
        WalError::Full(e) => {
            health.set_wal_full(true);
            StorageError::Full(e.to_string())
        }
        WalError::Failed(e) => {
            let reason = format!("the write-ahead log could not be written: {e}");
            health.fail(reason.clone());
            StorageError::Failed(reason)
        }
        WalError::Damaged { .. } => StorageError::Corrupt(error.to_string()),
        WalError::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            StorageError::InvalidInput(e.to_string())
        }
        WalError::Io(e) => StorageError::Io(e),
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

/// Allocated bytes of the files in `dir` and below (the WAL's apart); a
/// file that vanishes meanwhile (a deleted segment) just does not count.
fn disk_usage(dir: &Path) -> super::DiskUsage {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => walk(&entry.path(), total),
                Ok(meta) => *total += meta.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    let (mut wal_bytes, mut total_bytes) = (0, 0);
    walk(&dir.join("wal"), &mut wal_bytes);
    walk(dir, &mut total_bytes);
    super::DiskUsage {
        wal_bytes,
        total_bytes,
    }
}

/// The segment writes went to last: the only one that may end in a torn
/// record, it and the ones after it. Segments after it hold no record (a
/// spare created ahead, or one cut short while being created): no write
/// went to them, so the one before was still being written.
fn last_written_segment(segments: &[(u64, PathBuf)]) -> u64 {
    segments
        .iter()
        .rev()
        .find(|(_, path)| wal::has_records(path).unwrap_or(true))
        .map_or(0, |(seq, _)| *seq)
}

fn delete_segments_up_to(wal_dir: &Path, seq: u64) {
    match wal::list_segments(wal_dir) {
        Ok(segments) => {
            for (old, path) in segments {
                if old <= seq
                    && let Err(error) = std::fs::remove_file(&path)
                {
                    tracing::warn!(%error, segment = %path.display(), "could not delete a folded WAL segment");
                }
            }
        }
        Err(error) => tracing::warn!(%error, "could not list WAL segments"),
    }
}

/// Starts the background fold. It holds the store weakly, so dropping the
/// store ends it.
fn spawn_checkpointer(
    inner: Weak<Inner>,
    signal: Arc<Signal>,
) -> Result<std::thread::JoinHandle<()>, StorageError> {
    std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            loop {
                {
                    let Some(store) = inner.upgrade() else { return };
                    // First the spare, so that the next freeze finds it.
                    if let Err(error) = store.prepare_spare() {
                        tracing::debug!(%error, "could not create the next WAL segment yet");
                    }
                    loop {
                        match store.fold_oldest() {
                            Ok(true) => continue,
                            Ok(false) => {}
                            // Logged by the health state when it matters
                            // (a full disk, a failure); retried below.
                            Err(error) => tracing::debug!(%error, "fold failed"),
                        }
                        break;
                    }
                    if store.health.failure().is_some() {
                        return;
                    }
                }
                let mut state = signal.lock();
                if !state.pending && !state.stopping {
                    // Woken by a freeze; or, after a timeout, retrying a
                    // fold that failed.
                    state = signal
                        .work
                        .wait_timeout(state, RETRY_FOLD_AFTER)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                state.pending = false;
                if state.stopping {
                    return;
                }
            }
        })
        .map_err(StorageError::Io)
}

impl Memory {
    /// Gives every sensor of a record a key.
    fn register(&mut self, record: &Record) {
        for group in &record.groups {
            self.key_of(&group.sensor_id);
        }
    }

    fn key_of(&mut self, sensor_id: &SensorId) -> u32 {
        if let Some(&key) = self.keys.get(sensor_id) {
            return key;
        }
        let key = self.next_key;
        self.next_key += 1;
        self.keys.insert(sensor_id.clone(), key);
        key
    }

    fn heads(&self) -> impl Iterator<Item = &Head> {
        self.frozen
            .iter()
            .map(|frozen| &frozen.head)
            .chain(std::iter::once(&self.active))
    }

    /// The heads' points of one sensor in range, merged.
    fn head_points(&self, sensor_id: &SensorId, range: TimeRange) -> Vec<Versioned> {
        merge_heads(self.heads(), sensor_id, range)
    }
}

impl Inner {
    fn lock_wal(&self) -> Result<MutexGuard<'_, WalState>, StorageError> {
        let wal = self
            .wal
            .lock()
            .map_err(|_| StorageError::Backend("a writer panicked".into()))?;
        if wal.closed {
            return Err(StorageError::Closed);
        }
        if let Some(reason) = self.health.failure() {
            return Err(StorageError::Failed(reason));
        }
        Ok(wal)
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
            if let Some(seq) = sample.seq
                && !(1..=MAX_STREAM_SEQ).contains(&seq)
            {
                return Err(StorageError::InvalidInput(format!(
                    "sensor {:?}: stream sequence {seq} is outside 1 to {MAX_STREAM_SEQ}",
                    sample.sensor_id.as_str()
                )));
            }
        }
        if samples.is_empty() {
            return Ok(());
        }
        self.hold_back_writes()?;
        let groups = group_by_sensor(samples);
        let points = groups.iter().map(|group| group.points.len()).sum();
        self.commits
            .submit(groups, points, |writes| self.commit_writes(writes))
    }

    /// Commits queued writes together (see [`GroupCommit`]): one WAL record
    /// each, with versions in submission order, appended with one write and
    /// one `fdatasync`; then applied to the head in the same order. Returns
    /// one result per write.
    fn commit_writes(&self, writes: Vec<Vec<Group>>) -> Vec<Result<(), StorageError>> {
        let count = writes.len();
        let mut wal = match self.lock_wal() {
            Ok(wal) => wal,
            Err(error) => return (0..count).map(|_| Err(error.duplicate())).collect(),
        };
        let mut results: Vec<Result<(), StorageError>> = Vec::with_capacity(count);
        let mut records = Vec::with_capacity(count);
        let mut framed = Vec::new();
        let mut version = wal.next_version;
        for mut groups in writes {
            for group in &mut groups {
                if let Some(seqs) = &mut group.seqs {
                    // Direct points in a group that also has stream points.
                    for seq in seqs.iter_mut().filter(|seq| **seq == 0) {
                        *seq = version;
                    }
                }
            }
            let record = Record {
                version: Some(version),
                groups,
            };
            let start = framed.len();
            match wal::frame_record(&record, &mut framed) {
                Ok(()) => {
                    results.push(Ok(()));
                    records.push((version, record));
                    version += 1;
                }
                Err(error) => {
                    // Too large for one record: this write alone is refused.
                    framed.truncate(start);
                    results.push(Err(wal_error(error, &self.health)));
                }
            }
        }
        if records.is_empty() {
            return results;
        }
        if let Err(error) = wal.writer.append_framed(&framed) {
            let error = wal_error(error, &self.health);
            return results
                .into_iter()
                .map(|result| result.and(Err(error.duplicate())))
                .collect();
        }
        self.health.set_wal_full(false);
        wal.next_version = version;
        let (head_points, frozen) = {
            let mut memory = self.write_memory();
            for (version, record) in &records {
                memory.register(record);
                memory.active.apply(record, *version);
            }
            (memory.active.points(), memory.frozen.len())
        };
        self.report_heads();
        if frozen < MAX_FROZEN_HEADS
            && (head_points >= self.options.head_flush_points
                || wal.writer.len() >= self.options.wal_segment_bytes)
        {
            // The writes are durable already; a failed freeze only delays it.
            if let Err(error) = self.freeze(&mut wal) {
                tracing::debug!(%error, "could not freeze the head yet");
            }
        }
        results
    }

    /// Backpressure: while two frozen heads wait and the active head is past
    /// its limit, each write is delayed a little more the fuller it gets; at
    /// twice the limit writes wait for a fold (or, when folds fail for lack
    /// of space, are refused as the disk is full).
    fn hold_back_writes(&self) -> Result<(), StorageError> {
        let limit = self.options.head_flush_points.max(1);
        let started = std::time::Instant::now();
        loop {
            let (active, frozen) = {
                let memory = self.read_memory();
                (memory.active.points(), memory.frozen.len())
            };
            if frozen < MAX_FROZEN_HEADS || active < limit {
                return Ok(());
            }
            if active < 2 * limit {
                let excess = (active - limit) as u64;
                std::thread::sleep(Duration::from_micros(excess * 10_000 / limit as u64));
                return Ok(());
            }
            if let Some(reason) = self.health.failure() {
                return Err(StorageError::Failed(reason));
            }
            // Folds failing for lack of space: ask for a retry now (there
            // may be room again) and refuse only if it does not get through.
            if let StoreHealth::Degraded(reason) = self.health.current() {
                if started.elapsed() > 2 * RETRY_FOLD_AFTER {
                    return Err(StorageError::Full(reason));
                }
                self.signal.wake_fold();
            }
            let state = self.signal.lock();
            if state.stopping {
                return Err(StorageError::Closed);
            }
            let _ = self
                .signal
                .progress
                .wait_timeout(state, Duration::from_millis(100));
        }
    }

    /// Freezes the active head: the WAL moves to a new segment, so the head
    /// holds exactly the records of the segments up to the old one.
    ///
    /// Takes the spare segment when the checkpoint thread has one ready;
    /// while it is creating one, the freeze waits for a later write (the
    /// head goes a little past its limit); with neither, it creates the
    /// next segment itself.
    fn freeze(&self, wal: &mut WalState) -> Result<(), StorageError> {
        let covers = wal.writer.seq();
        wal.spare_wanted = true;
        match wal.spare.take() {
            Some(spare) => wal.writer = spare,
            None if wal.spare_pending => return Ok(()),
            None => wal
                .writer
                .rotate()
                .map_err(|e| wal_error(e, &self.health))?,
        }
        {
            let mut memory = self.write_memory();
            let head = std::mem::take(&mut memory.active);
            if head.is_empty() {
                return Ok(());
            }
            memory.frozen.push_back(Arc::new(Frozen {
                head,
                wal_seq: covers,
            }));
        }
        self.signal.wake_fold();
        Ok(())
    }

    /// Creates the next WAL segment ahead, outside the WAL lock, for the
    /// next freeze to take (see [`WalState::spare`]).
    fn prepare_spare(&self) -> Result<(), StorageError> {
        let seq = {
            let mut wal = self.lock_wal()?;
            if wal.spare.is_some() || wal.spare_pending || !wal.spare_wanted {
                return Ok(());
            }
            wal.spare_pending = true;
            wal.writer.seq() + 1
        };
        let created = WalWriter::create(
            &self.dir.join("wal"),
            seq,
            self.options.faults.clone(),
            self.options.wal_preallocation(),
        );
        let mut wal = self.wal.lock().unwrap_or_else(|e| e.into_inner());
        wal.spare_pending = false;
        // No freeze ran meanwhile: freezes wait while a spare is pending.
        debug_assert_eq!(wal.writer.seq() + 1, seq);
        // A failure is not the store's health: the next freeze creates the
        // segment itself, and reports it then if it still fails.
        wal.spare = Some(created.map_err(|e| StorageError::Backend(e.to_string()))?);
        Ok(())
    }

    /// Points in the heads and frozen heads, for the metrics.
    fn report_heads(&self) {
        let memory = self.read_memory();
        crate::metrics::heads(memory.heads().map(Head::points).sum(), memory.frozen.len());
    }

    /// Folds frozen heads until none is left (at open and close).
    fn fold_all(&self) -> Result<(), StorageError> {
        while self.fold_oldest()? {}
        Ok(())
    }

    /// Folds the oldest frozen head into blocks; `false` when there is none.
    fn fold_oldest(&self) -> Result<bool, StorageError> {
        let _block_writer = self.block_writer.lock().unwrap_or_else(|e| e.into_inner());
        let (frozen, keys, next_key) = {
            let memory = self.read_memory();
            let Some(frozen) = memory.frozen.front().cloned() else {
                return Ok(false);
            };
            let keys: Vec<(SensorId, u32)> = frozen
                .head
                .sensor_ids()
                .map(|id| (id.clone(), memory.keys.get(id).copied().unwrap_or(u32::MAX)))
                .collect();
            (frozen, keys, memory.next_key)
        };
        let started = std::time::Instant::now();
        let result = self.commit_blocks(frozen.head.points(), |tables| {
            for (sensor_id, key) in &keys {
                let points = frozen.head.sensor_points(sensor_id);
                tables.merge_sensor(sensor_id, *key, &points)?;
            }
            tables.raise_meta(blocks::META_CHECKPOINT, frozen.wal_seq)?;
            tables.raise_meta(blocks::META_NEXT_KEY, u64::from(next_key))?;
            tables.raise_meta(blocks::META_LAST_VERSION, frozen.head.max_version())?;
            Ok(())
        });
        match result {
            Ok(()) => {
                {
                    let mut memory = self.write_memory();
                    if memory
                        .frozen
                        .front()
                        .is_some_and(|front| Arc::ptr_eq(front, &frozen))
                    {
                        memory.frozen.pop_front();
                    }
                }
                crate::metrics::checkpoint(started.elapsed());
                self.report_heads();
                drop(self.signal.lock());
                self.signal.progress.notify_all();
                if self.backups_running.load(Ordering::Acquire) == 0 {
                    delete_segments_up_to(&self.dir.join("wal"), frozen.wal_seq);
                }
                Ok(true)
            }
            Err(error) => {
                self.signal.progress.notify_all();
                Err(error)
            }
        }
    }

    /// Runs one redb write transaction over the block tables, expecting it
    /// to add about `points` points, and turns a failure into what it means
    /// for the store: a full disk is waited out (the database is reopened at
    /// its last commit), anything else at the disk is fatal.
    fn commit_blocks(
        &self,
        points: usize,
        work: impl FnOnce(&mut BlockTables<'_>) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        // A transaction that surely cannot fit is not started: redb would
        // have to be reopened after it failed, which ends running scans.
        // (Blocks take 1 to 9 bytes a point; the tree pages redb copies on
        // write add little.) A looser guess only costs that reopen.
        let needed = points as u64 * 12 + (256 << 10);
        if let Some(free) = io::free_bytes(&self.dir)
            && free < needed
        {
            self.health.set_blocks_full(true);
            return Err(StorageError::Full(format!(
                "{free} bytes free, a fold needs up to {needed}"
            )));
        }
        // Each commit raises a counter, so that after a failed commit the
        // reopened database tells whether it landed after all (a write can
        // fail after redb's header already reached the file).
        let mut commit_id = 0;
        let attempt = || -> Result<(), StorageError> {
            let txn = self.blocks.begin_write()?;
            {
                let mut tables = BlockTables::open(&txn)?;
                work(&mut tables)?;
                commit_id = tables.meta(blocks::META_COMMITS)? + 1;
                tables.raise_meta(blocks::META_COMMITS, commit_id)?;
            }
            txn.commit().map_err(blocks::backend)
        };
        let error = match attempt() {
            Ok(()) => {
                self.health.set_blocks_full(false);
                return Ok(());
            }
            Err(error) => error,
        };
        let failures = self.blocks.failures();
        if failures.fatal() {
            // What reached the disk is unknown: this commit may or may not
            // be found after a restart, as with any database whose fsync
            // failed mid-commit. Nothing is accepted after it.
            let reason = format!(
                "blocks.redb could not be written ({error}); whether the write in flight was \
                 stored is known only after a restart"
            );
            self.health.fail(reason.clone());
            return Err(StorageError::Failed(reason));
        }
        if !failures.disk_full() {
            return Err(error);
        }
        self.health.set_blocks_full(true);
        if let Err(reopen) = self.blocks.reopen() {
            // Until it reopens, nothing reads it; the outcome is settled then.
            tracing::warn!(error = %reopen, "could not reopen blocks.redb yet");
            return Err(StorageError::Full(error.to_string()));
        }
        let landed = commit_id > 0
            && self
                .blocks
                .begin_read()
                .and_then(|txn| blocks::meta_value(&txn, blocks::META_COMMITS))
                .is_ok_and(|commits| commits == commit_id);
        if landed {
            self.health.set_blocks_full(false);
            Ok(())
        } else {
            Err(StorageError::Full(error.to_string()))
        }
    }

    /// Takes a consistent snapshot for a scan: the heads' points in range
    /// and a redb read transaction.
    ///
    /// Consistent without holding the memory lock while the transaction
    /// begins: a fold commits before it drops its head from memory, so a
    /// snapshot that misses the head begins its transaction after the
    /// commit; one that has both sees some points twice, and the version
    /// rule makes that harmless.
    fn scan_snapshot(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
    ) -> Result<Option<ScanSnapshot>, StorageError> {
        if range.is_empty() {
            return Ok(None);
        }
        let (key, head) = {
            let memory = self.read_memory();
            let Some(&key) = memory.keys.get(sensor_id) else {
                return Ok(None);
            };
            (key, memory.head_points(sensor_id, range))
        };
        Ok(Some(ScanSnapshot {
            key,
            range,
            head,
            txn: self.blocks.begin_read()?,
        }))
    }

    /// Count and span of the given sensors (every known one when `None`),
    /// ordered by id.
    fn sensor_infos(&self, only: Option<&SensorId>) -> Result<Vec<SensorInfo>, StorageError> {
        let heads: BTreeMap<SensorId, Vec<i64>> = {
            let memory = self.read_memory();
            let ids: Vec<&SensorId> = match only {
                Some(id) => memory
                    .keys
                    .get_key_value(id)
                    .map(|(id, _)| id)
                    .into_iter()
                    .collect(),
                None => memory.keys.keys().collect(),
            };
            ids.into_iter()
                .map(|id| {
                    let timestamps = memory
                        .head_points(id, TimeRange::ALL)
                        .iter()
                        .map(|v| v.point.timestamp_ms)
                        .collect();
                    (id.clone(), timestamps)
                })
                .collect()
        };
        let txn = self.blocks.begin_read()?;
        let mut infos = Vec::with_capacity(heads.len());
        for (sensor_id, head) in heads {
            let stats = blocks::stats_of(&txn, &sensor_id)?;
            let info = match (stats, head.first(), head.last()) {
                (None, None, _) | (None, _, None) => continue,
                (Some(stats), None, _) | (Some(stats), _, None) => SensorInfo {
                    sensor_id,
                    count: stats.count,
                    first_timestamp_ms: stats.first,
                    last_timestamp_ms: stats.last,
                },
                (None, Some(&first), Some(&last)) => SensorInfo {
                    sensor_id,
                    count: head.len() as u64,
                    first_timestamp_ms: first,
                    last_timestamp_ms: last,
                },
                (Some(stats), Some(&first), Some(&last)) => {
                    // Head points outside the stored span are new; inside
                    // it, look them up.
                    let from = head.partition_point(|&ts| ts < stats.first);
                    let to = head.partition_point(|&ts| ts <= stats.last);
                    let replaced = blocks::count_stored(&txn, stats.key, &head[from..to])?;
                    SensorInfo {
                        sensor_id,
                        count: stats.count + head.len() as u64 - replaced,
                        first_timestamp_ms: stats.first.min(first),
                        last_timestamp_ms: stats.last.max(last),
                    }
                }
            };
            infos.push(info);
        }
        Ok(infos)
    }

    /// Stages an import from `batches`, then merges it into the blocks in
    /// one transaction. Nothing of it is visible before the commit.
    fn import(
        &self,
        sensor_id: &SensorId,
        mut batches: tokio::sync::mpsc::Receiver<ImportMessage>,
    ) -> Result<ImportSummary, StorageError> {
        if let Some(reason) = self.health.failure() {
            return Err(StorageError::Failed(reason));
        }
        let mut staged =
            StagingFile::create(&self.dir.join("staging"), self.options.faults.clone())?;
        loop {
            match batches.blocking_recv() {
                Some(ImportMessage::Batch(batch)) => {
                    for &ts in &batch.timestamps {
                        check_timestamp(ts)
                            .map_err(|e| StorageError::InvalidInput(format!("timestamp_ms {e}")))?;
                    }
                    staged.append(&batch)?;
                }
                Some(ImportMessage::Commit) => break,
                // The source failed; its error is reported by the caller.
                None => return Err(StorageError::InvalidInput("import aborted".into())),
            }
        }
        let points_read = staged.points();
        if points_read == 0 {
            return Ok(ImportSummary { points: 0 });
        }

        let _block_writer = self.block_writer.lock().unwrap_or_else(|e| e.into_inner());
        // The import's version: above every write acknowledged before this
        // moment, below every write after it.
        let version = {
            let mut wal = self.lock_wal()?;
            let version = wal.next_version;
            wal.next_version += 1;
            version
        };
        let (key, next_key) = {
            let mut memory = self.write_memory();
            let key = memory.key_of(sensor_id);
            (key, memory.next_key)
        };
        self.commit_blocks(points_read as usize, |tables| {
            for chunk in staged.chunks() {
                let points: Vec<Versioned> = blocks::sorted_unique(chunk?)
                    .into_iter()
                    .map(|point| Versioned { point, version })
                    .collect();
                tables.merge_sensor(sensor_id, key, &points)?;
            }
            tables.raise_meta(blocks::META_NEXT_KEY, u64::from(next_key))?;
            tables.raise_meta(blocks::META_LAST_VERSION, version)?;
            Ok(())
        })?;
        Ok(ImportSummary {
            points: points_read,
        })
    }

    /// The snapshot a backup copies, and the guard that keeps the WAL
    /// segments it needs until it is done.
    fn backup_snapshot(&self) -> Result<(backup::Snapshot, BackupRunning), StorageError> {
        let wal = self.lock_wal()?;
        self.backups_running.fetch_add(1, Ordering::AcqRel);
        let running = BackupRunning(Arc::clone(&self.backups_running));
        let txn = self.blocks.begin_read()?;
        let checkpoint = blocks::meta_value(&txn, blocks::META_CHECKPOINT)?;
        let (current, current_len) = (wal.writer.seq(), wal.writer.len());
        drop(wal);
        let mut segments = Vec::new();
        for (seq, path) in wal::list_segments(&self.dir.join("wal"))? {
            if seq <= checkpoint || seq > current {
                continue;
            }
            let len = if seq == current {
                current_len
            } else {
                std::fs::metadata(&path)?.len()
            };
            segments.push((seq, path, len));
        }
        Ok((backup::Snapshot { txn, segments }, running))
    }

    /// Retention: removes the sensor's blocks whose points all lie before
    /// `before_ms`, and corrects its catalogue entry.
    fn drop_before(&self, sensor_id: &SensorId, before_ms: i64) -> Result<Dropped, StorageError> {
        let _block_writer = self.block_writer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(key) = self.read_memory().keys.get(sensor_id).copied() else {
            return Ok(Dropped::default());
        };
        let mut dropped = Dropped::default();
        self.commit_blocks(0, |tables| {
            dropped = tables.drop_blocks_before(sensor_id, key, before_ms)?;
            Ok(())
        })?;
        Ok(dropped)
    }

    fn close(&self) -> Result<(), StorageError> {
        let result = {
            let mut wal = loop {
                let wal = match self.lock_wal() {
                    Ok(wal) => wal,
                    Err(StorageError::Closed) => return Ok(()),
                    Err(e) => return Err(e),
                };
                // A spare being created would make the freeze wait.
                if !wal.spare_pending {
                    break wal;
                }
                drop(wal);
                std::thread::sleep(Duration::from_millis(1));
            };
            let empty = self.read_memory().active.is_empty();
            let result = if empty { Ok(()) } else { self.freeze(&mut wal) };
            wal.closed = true;
            result
        };
        result.and_then(|()| self.fold_all())?;
        // Closing is the moment no scan holds the file: give free pages back.
        if let Err(error) = self.blocks.compact_if_worthwhile(false) {
            tracing::warn!(%error, "could not compact blocks.redb");
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.signal.stop();
    }
}

/// Counts a running backup for as long as it lives.
struct BackupRunning(Arc<AtomicUsize>);

impl Drop for BackupRunning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hands what a blocking writer writes to an async reader, in chunks, with
/// at most a few chunks in flight; fails with `BrokenPipe` once the reader
/// is gone (the client left), which ends the backup.
struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<Result<bytes::Bytes, StorageError>>,
    buffer: Vec<u8>,
}

const CHANNEL_CHUNK: usize = 256 << 10;

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHANNEL_CHUNK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHANNEL_CHUNK),
        ));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

enum ImportMessage {
    Batch(PointBatch),
    Commit,
}

/// Groups samples per sensor, keeping their order within each sensor (the
/// later of two writes to one timestamp wins). A group with any stream
/// point keeps a seq per point; direct points get 0 there, to be replaced
/// by the write's version.
fn group_by_sensor(samples: Vec<Sample>) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<SensorId, usize> = HashMap::new();
    for sample in samples {
        // Fast path: runs of one sensor, the usual shape of a batch.
        let at = match groups.last() {
            Some(last) if last.sensor_id == sample.sensor_id => groups.len() - 1,
            _ => match index.get(&sample.sensor_id) {
                Some(&i) => i,
                None => {
                    index.insert(sample.sensor_id.clone(), groups.len());
                    groups.push(Group {
                        sensor_id: sample.sensor_id.clone(),
                        points: Vec::new(),
                        seqs: None,
                    });
                    groups.len() - 1
                }
            },
        };
        let group = &mut groups[at];
        if sample.seq.is_some() && group.seqs.is_none() {
            group.seqs = Some(vec![0; group.points.len()]);
        }
        if let Some(seqs) = &mut group.seqs {
            seqs.push(sample.seq.unwrap_or(0));
        }
        group.points.push(sample.point);
    }
    groups
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

    async fn read_prefix(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
        limit: usize,
    ) -> Result<PointBatch, StorageError> {
        let Some(snapshot) = self.inner.scan_snapshot(sensor_id, range)? else {
            return Ok(PointBatch::default());
        };
        tokio::task::spawn_blocking(move || snapshot.read_prefix(limit))
            .await
            .map_err(join_error)?
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.sensor_infos(None))
            .await
            .map_err(join_error)?
    }

    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        let inner = self.inner.clone();
        let sensor_id = sensor_id.clone();
        tokio::task::spawn_blocking(move || {
            Ok(inner.sensor_infos(Some(&sensor_id))?.into_iter().next())
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

    fn health(&self) -> StoreHealth {
        self.inner.health.current()
    }

    async fn drop_before(
        &self,
        sensor_id: &SensorId,
        before_ms: i64,
    ) -> Result<Dropped, StorageError> {
        let inner = self.inner.clone();
        let sensor_id = sensor_id.clone();
        tokio::task::spawn_blocking(move || inner.drop_before(&sensor_id, before_ms))
            .await
            .map_err(join_error)?
    }

    fn disk_usage(&self) -> Option<super::DiskUsage> {
        Some(disk_usage(&self.inner.dir))
    }

    fn backup(&self) -> Result<ByteStream, StorageError> {
        let (sender, mut receiver) = tokio::sync::mpsc::channel(4);
        // The snapshot is taken before this returns, so the backup covers
        // every write acknowledged before the call.
        let (snapshot, running) = self.inner.backup_snapshot()?;
        tokio::task::spawn_blocking(move || {
            let _running = running;
            let mut out = ChannelWriter {
                sender: sender.clone(),
                buffer: Vec::with_capacity(CHANNEL_CHUNK),
            };
            match backup::write_backup(snapshot, &mut out) {
                Ok(summary) => tracing::info!(?summary, "backup written"),
                Err(error) => {
                    tracing::warn!(%error, "backup ended early");
                    let _ = sender.blocking_send(Err(error));
                }
            }
        });
        Ok(futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx)).boxed())
    }

    async fn close(&self) -> Result<(), StorageError> {
        self.stop_checkpointer();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.close())
            .await
            .map_err(join_error)?
    }
}

/// Where a store's bytes go: what the blocks encode, column by column, and
/// what the file takes. See [`EmbeddedStore::footprint`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub blocks: u64,
    pub points: u64,
    /// Encoded bytes: header, timestamps, values, qualities, versions.
    pub columns: [u64; 5],
    /// Summaries of the blocks (for downsampling and counts).
    pub summary_bytes: u64,
    /// `blocks.redb`: its length, and the bytes the file system allocated.
    pub file_apparent: u64,
    pub file_allocated: u64,
}

impl Footprint {
    pub fn encoded(&self) -> u64 {
        self.columns.iter().sum()
    }
}

/// Exposed for the fold's own tests and benches.
#[doc(hidden)]
impl EmbeddedStore {
    /// How many frozen heads wait to be folded.
    pub fn frozen_heads(&self) -> usize {
        self.inner.read_memory().frozen.len()
    }

    /// Reads every block to tell where the bytes go.
    pub fn footprint(&self) -> Result<Footprint, StorageError> {
        use redb::ReadableTable;
        use std::os::unix::fs::MetadataExt;
        let txn = self.inner.blocks.begin_read()?;
        let mut footprint = Footprint::default();
        let blocks = txn.open_table(blocks::BLOCKS).map_err(blocks::backend)?;
        for entry in blocks.iter().map_err(blocks::backend)? {
            let (_, value) = entry.map_err(blocks::backend)?;
            let sizes = codec::column_sizes(value.value()).map_err(blocks::corrupt)?;
            for (total, size) in footprint.columns.iter_mut().zip(sizes) {
                *total += size as u64;
            }
            footprint.blocks += 1;
            footprint.points +=
                u64::from(codec::header(value.value()).map_err(blocks::corrupt)?.count);
        }
        let summaries = txn.open_table(blocks::SUMMARIES).map_err(blocks::backend)?;
        for entry in summaries.iter().map_err(blocks::backend)? {
            footprint.summary_bytes += entry.map_err(blocks::backend)?.1.value().len() as u64;
        }
        let metadata = std::fs::metadata(self.inner.dir.join("blocks.redb"))?;
        footprint.file_apparent = metadata.len();
        footprint.file_allocated = metadata.blocks() * 512;
        Ok(footprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point;

    fn samples(id: &SensorId, from: i64, n: i64) -> Vec<Sample> {
        (from..from + n)
            .map(|ts| {
                Sample::new(
                    id.clone(),
                    Point {
                        timestamp_ms: ts,
                        value: ts as f64 * 0.5,
                        quality: 192,
                    },
                )
            })
            .collect()
    }

    /// The segments of `dir` and their lengths, oldest first.
    fn segments(dir: &Path) -> Vec<(u64, PathBuf, u64)> {
        wal::list_segments(&dir.join("wal"))
            .unwrap()
            .into_iter()
            .map(|(seq, path)| {
                let len = std::fs::metadata(&path).unwrap().len();
                (seq, path, len)
            })
            .collect()
    }

    #[test]
    fn a_torn_tail_before_the_spare_segment_opens_with_the_intact_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            head_flush_points: 100,
            ..EmbeddedOptions::default()
        };
        let id = SensorId::new("spare").unwrap();
        let header = wal::segment_header().len() as u64;
        {
            let store = EmbeddedStore::open_with(dir.path(), options.clone()).unwrap();
            // Fills the head: the first freeze, after which spares are made.
            store.write_blocking(samples(&id, 0, 100)).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while store.inner.wal.lock().unwrap().spare.is_none() {
                assert!(std::time::Instant::now() < deadline, "no spare segment");
                std::thread::sleep(Duration::from_millis(5));
            }
            store.write_blocking(samples(&id, 100, 10)).unwrap();
            store.write_blocking(samples(&id, 110, 10)).unwrap();
            // No close: the last writes live only in the WAL, the spare
            // after their segment.
        }
        let on_disk = segments(dir.path());
        let (last, rest) = on_disk.split_last().unwrap();
        assert!(
            !wal::has_records(&last.1).unwrap(),
            "the spare holds no record: {on_disk:?}"
        );
        let written = rest.last().unwrap();
        assert!(wal::has_records(&written.1).unwrap());
        // A write cut short by the crash, never acknowledged, where the
        // next record goes (inside the preallocated zeros).
        let intact = wal::read_segment(&written.1, true).unwrap().intact_len;
        assert!(intact > header);
        let file = OpenOptions::new().write(true).open(&written.1).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &[0x52, 0x45, 0x43, 0x1e, 9, 9], intact)
            .unwrap();
        drop(file);

        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        let txn = store.inner.blocks.begin_read().unwrap();
        let stats = blocks::stats_of(&txn, &id).unwrap().unwrap();
        assert_eq!((stats.count, stats.first, stats.last), (120, 0, 119));
        assert_eq!(
            std::fs::metadata(&written.1).map(|m| m.len()).ok(),
            None,
            "the replayed segment is folded and deleted"
        );
    }
}
