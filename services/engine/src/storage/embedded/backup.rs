//! Online backup and restore of the embedded store.
//!
//! A backup is a tar archive, zstd-compressed (`tar --zstd -tf` lists it):
//!
//! ```text
//! engine-backup.json          what is inside: format, time, sensors, segments
//! blocks/000001.dump ...      the block tables, as records (below), in chunks
//! wal/<seq>.wal               the WAL segments not yet folded into blocks
//! ```
//!
//! Consistent without stopping writers: under the WAL lock (held for
//! microseconds) the backup takes a redb read transaction and notes the WAL's
//! end; every write acknowledged before that moment is in the transaction's
//! blocks or in the WAL up to that end, and a write is one WAL record, never
//! half of one. While the backup runs, folds go on but keep the WAL segments
//! it still needs. The blocks are copied logically from the read
//! transaction, whose pages redb never reuses while it is open.
//!
//! A dump record: `table u8 | key_len u32 | key | value_len u32 | value`,
//! little endian; tables 1 blocks, 2 summaries (key `sensor key u32 | first
//! ts i64`), 3 sensors (key the id; value `key u32 | count u64 | first i64 |
//! last i64`), 4 meta (key the name; value u64).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use super::blocks::{self, BLOCKS, Blocks, META, SENSORS, SUMMARIES, backend};
use super::io::Faults;
use crate::storage::StorageError;

const MANIFEST: &str = "engine-backup.json";
const FORMAT: u32 = 1;
/// Dump bytes per tar entry: the unit held in memory while writing.
const CHUNK_BYTES: usize = 8 << 20;
const TABLE_BLOCKS: u8 = 1;
const TABLE_SUMMARIES: u8 = 2;
const TABLE_SENSORS: u8 = 3;
const TABLE_META: u8 = 4;

/// What a backup holds, written first into it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    /// When the backup's snapshot was taken (epoch milliseconds).
    pub created_ms: i64,
    /// Per sensor id, the points in blocks at that moment.
    pub sensors_in_blocks: Vec<(String, u64)>,
    /// WAL segments (sequence, bytes) copied with it.
    pub wal_segments: Vec<(u64, u64)>,
}

/// What one backup covers: fixed when it starts.
pub struct Snapshot {
    pub txn: ReadTransaction,
    /// `(sequence, path, bytes to copy)` of every WAL segment after the
    /// transaction's checkpoint.
    pub segments: Vec<(u64, PathBuf, u64)>,
}

/// What a finished backup or restore moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupSummary {
    pub sensors: u64,
    pub points_in_blocks: u64,
    pub wal_bytes: u64,
    pub block_bytes: u64,
}

fn storage_io(error: io::Error) -> StorageError {
    StorageError::Io(error)
}

/// Writes the backup of `snapshot` to `out` (zstd-compressed tar).
///
/// The work (reading the blocks, framing, compressing) runs on a thread of
/// its own at a lower CPU priority, so exports and writes keep their speed
/// while a backup runs; this thread only moves finished chunks to `out`,
/// so the two overlap.
pub fn write_backup(
    snapshot: Snapshot,
    mut out: impl Write,
) -> Result<BackupSummary, StorageError> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_DEPTH);
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("backup".into())
            .spawn_scoped(scope, move || {
                super::io::lower_thread_priority(BACKUP_NICE);
                let pipe = Pipe {
                    sender,
                    buffer: Vec::with_capacity(PIPE_CHUNK),
                };
                compress_backup(&snapshot, pipe)
            })
            .map_err(storage_io)?;
        let mut written = Ok(());
        for chunk in &receiver {
            if let Err(error) = out.write_all(&chunk) {
                written = Err(error);
                break;
            }
        }
        // The worker's next send fails now, which ends it.
        drop(receiver);
        let summary = worker
            .join()
            .map_err(|_| StorageError::Backend("the backup worker panicked".into()))?;
        // A failed `out` first: the worker then only saw the pipe close.
        written.map_err(storage_io)?;
        let summary = summary?;
        out.flush().map_err(storage_io)?;
        Ok(summary)
    })
}

/// Compressed bytes in flight from the worker: chunks of this size, at most
/// this many waiting.
const PIPE_CHUNK: usize = 1 << 20;
const PIPE_DEPTH: usize = 4;
/// zstd's fastest kind of level: the blocks are compressed already, and at
/// negative levels zstd leaves literals as they are instead of Huffman-coding
/// them, which was most of a backup's CPU at level 1 (measured on 20M
/// points: half the time, 8% more bytes). Still a standard zstd frame.
const ZSTD_LEVEL: i32 = -1;
/// Nice steps the backup worker runs below the caller.
const BACKUP_NICE: i32 = 10;

/// The worker's end of the pipe; a send fails once the writer is gone.
struct Pipe {
    sender: std::sync::mpsc::SyncSender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl Write for Pipe {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= PIPE_CHUNK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(PIPE_CHUNK));
        self.sender
            .send(chunk)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

fn compress_backup(snapshot: &Snapshot, out: Pipe) -> Result<BackupSummary, StorageError> {
    let mut summary = BackupSummary::default();
    let sensors = blocks::all_stats(&snapshot.txn)?;
    let manifest = Manifest {
        format: FORMAT,
        created_ms: jiff::Timestamp::now().as_millisecond(),
        sensors_in_blocks: sensors
            .iter()
            .map(|(id, stats)| (id.as_str().to_owned(), stats.count))
            .collect(),
        wal_segments: snapshot
            .segments
            .iter()
            .map(|(seq, _, len)| (*seq, *len))
            .collect(),
    };
    summary.sensors = sensors.len() as u64;
    summary.points_in_blocks = sensors.iter().map(|(_, s)| s.count).sum();

    let encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(storage_io)?;
    let mut tar = tar::Builder::new(encoder);
    let manifest_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| StorageError::Backend(format!("backup manifest: {e}")))?;
    append(&mut tar, MANIFEST, &manifest_json)?;

    let mut chunk = Vec::with_capacity(CHUNK_BYTES + (1 << 16));
    let mut chunks = 0u32;
    let mut flush = |tar: &mut tar::Builder<_>, chunk: &mut Vec<u8>, force: bool| {
        if chunk.len() >= CHUNK_BYTES || (force && !chunk.is_empty()) {
            chunks += 1;
            append(tar, &format!("blocks/{chunks:06}.dump"), chunk)?;
            chunk.clear();
        }
        Ok::<_, StorageError>(())
    };
    let txn = &snapshot.txn;
    for (tag, table) in [(TABLE_BLOCKS, BLOCKS), (TABLE_SUMMARIES, SUMMARIES)] {
        let table = txn.open_table(table).map_err(backend)?;
        for entry in table.iter().map_err(backend)? {
            let (key, value) = entry.map_err(backend)?;
            let (sensor_key, first) = key.value();
            let mut key_bytes = [0u8; 12];
            key_bytes[..4].copy_from_slice(&sensor_key.to_le_bytes());
            key_bytes[4..].copy_from_slice(&first.to_le_bytes());
            if tag == TABLE_BLOCKS {
                summary.block_bytes += value.value().len() as u64;
            }
            put_record(&mut chunk, tag, &key_bytes, value.value());
            flush(&mut tar, &mut chunk, false)?;
        }
    }
    let sensors_table = txn.open_table(SENSORS).map_err(backend)?;
    for entry in sensors_table.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        let (sensor_key, count, first, last) = value.value();
        let mut value_bytes = Vec::with_capacity(28);
        value_bytes.extend_from_slice(&sensor_key.to_le_bytes());
        value_bytes.extend_from_slice(&count.to_le_bytes());
        value_bytes.extend_from_slice(&first.to_le_bytes());
        value_bytes.extend_from_slice(&last.to_le_bytes());
        put_record(
            &mut chunk,
            TABLE_SENSORS,
            key.value().as_bytes(),
            &value_bytes,
        );
    }
    let meta = txn.open_table(META).map_err(backend)?;
    for entry in meta.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        put_record(
            &mut chunk,
            TABLE_META,
            key.value().as_bytes(),
            &value.value().to_le_bytes(),
        );
    }
    flush(&mut tar, &mut chunk, true)?;

    for (seq, path, len) in &snapshot.segments {
        let file = std::fs::File::open(path).map_err(storage_io)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(*len);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, format!("wal/{seq:020}.wal"), file.take(*len))
            .map_err(storage_io)?;
        summary.wal_bytes += len;
    }
    let encoder = tar.into_inner().map_err(storage_io)?;
    let mut out = encoder.finish().map_err(storage_io)?;
    out.flush().map_err(storage_io)?;
    Ok(summary)
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, name, bytes)
        .map_err(storage_io)
}

fn put_record(out: &mut Vec<u8>, table: u8, key: &[u8], value: &[u8]) {
    out.push(table);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

/// Rebuilds a store in `dir` (which must be new or empty) from a backup.
/// The caller opens it afterwards, which replays the WAL it holds.
pub fn restore(input: impl Read, dir: &Path) -> Result<(Manifest, BackupSummary), StorageError> {
    let invalid = |what: String| StorageError::InvalidInput(format!("not a valid backup: {what}"));
    if dir.exists() && std::fs::read_dir(dir).map_err(storage_io)?.next().is_some() {
        return Err(StorageError::InvalidInput(format!(
            "{} is not empty; restore into a new directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir.join("wal")).map_err(storage_io)?;
    let decoder = zstd::stream::read::Decoder::new(input).map_err(storage_io)?;
    let mut archive = tar::Archive::new(decoder);
    let blocks = Blocks::open(&dir.join("blocks.redb"), 32 << 20, Faults::default())?;
    let mut manifest: Option<Manifest> = None;
    let mut summary = BackupSummary::default();
    for entry in archive.entries().map_err(|e| invalid(e.to_string()))? {
        let mut entry = entry.map_err(|e| invalid(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| invalid(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if name == MANIFEST {
            let mut json = Vec::new();
            entry.read_to_end(&mut json).map_err(storage_io)?;
            let parsed: Manifest =
                serde_json::from_slice(&json).map_err(|e| invalid(format!("{MANIFEST}: {e}")))?;
            if parsed.format != FORMAT {
                return Err(invalid(format!("format {} is not {FORMAT}", parsed.format)));
            }
            manifest = Some(parsed);
        } else if manifest.is_none() {
            return Err(invalid(format!("{name} comes before {MANIFEST}")));
        } else if name.starts_with("blocks/") && name.ends_with(".dump") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(storage_io)?;
            load_records(&blocks, &bytes, &mut summary).map_err(|e| match e {
                StorageError::Corrupt(what) => invalid(format!("{name}: {what}")),
                other => other,
            })?;
        } else if let Some(file) = name.strip_prefix("wal/") {
            let seq_ok = file
                .strip_suffix(".wal")
                .is_some_and(|seq| seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()));
            if !seq_ok {
                return Err(invalid(format!("unexpected entry {name}")));
            }
            let path = dir.join("wal").join(file);
            let mut out = std::fs::File::create(&path).map_err(storage_io)?;
            summary.wal_bytes += io::copy(&mut entry, &mut out).map_err(storage_io)?;
            out.sync_all().map_err(storage_io)?;
        } else {
            return Err(invalid(format!("unexpected entry {name}")));
        }
    }
    let manifest = manifest.ok_or_else(|| invalid(format!("no {MANIFEST}")))?;
    // Every sensor's block count as the backup saw it.
    let txn = blocks.begin_read()?;
    let restored: Vec<(String, u64)> = blocks::all_stats(&txn)?
        .into_iter()
        .map(|(id, stats)| (id.as_str().to_owned(), stats.count))
        .collect();
    if restored != manifest.sensors_in_blocks {
        return Err(invalid(
            "the restored blocks do not match the backup's manifest (truncated?)".into(),
        ));
    }
    summary.sensors = restored.len() as u64;
    summary.points_in_blocks = restored.iter().map(|(_, n)| n).sum();
    std::fs::File::open(dir.join("wal"))
        .and_then(|d| d.sync_all())
        .map_err(storage_io)?;
    Ok((manifest, summary))
}

fn load_records(
    blocks: &Blocks,
    mut bytes: &[u8],
    summary: &mut BackupSummary,
) -> Result<(), StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(what.to_owned());
    let txn = blocks.begin_write()?;
    {
        let mut tables = blocks::BlockTables::open(&txn)?;
        while !bytes.is_empty() {
            let (&table, rest) = bytes.split_first().ok_or_else(|| corrupt("empty record"))?;
            let (key, rest) = take_field(rest).ok_or_else(|| corrupt("a key is cut short"))?;
            let (value, rest) = take_field(rest).ok_or_else(|| corrupt("a value is cut short"))?;
            bytes = rest;
            match table {
                TABLE_BLOCKS | TABLE_SUMMARIES => {
                    let key: [u8; 12] = key.try_into().map_err(|_| corrupt("a block key"))?;
                    let sensor_key = u32::from_le_bytes([key[0], key[1], key[2], key[3]]);
                    let first = i64::from_le_bytes(key[4..].try_into().unwrap_or_default());
                    let table = if table == TABLE_BLOCKS {
                        summary.block_bytes += value.len() as u64;
                        &mut tables.blocks
                    } else {
                        &mut tables.summaries
                    };
                    table.insert((sensor_key, first), value).map_err(backend)?;
                }
                TABLE_SENSORS => {
                    let id = std::str::from_utf8(key).map_err(|_| corrupt("a sensor id"))?;
                    let value: [u8; 28] =
                        value.try_into().map_err(|_| corrupt("a sensor entry"))?;
                    let u64_at = |at: usize| {
                        u64::from_le_bytes(value[at..at + 8].try_into().unwrap_or_default())
                    };
                    let entry = (
                        u32::from_le_bytes([value[0], value[1], value[2], value[3]]),
                        u64_at(4),
                        u64_at(12) as i64,
                        u64_at(20) as i64,
                    );
                    tables.sensors.insert(id, entry).map_err(backend)?;
                }
                TABLE_META => {
                    let name = std::str::from_utf8(key).map_err(|_| corrupt("a meta name"))?;
                    let value: [u8; 8] = value.try_into().map_err(|_| corrupt("a meta value"))?;
                    tables
                        .meta
                        .insert(name, u64::from_le_bytes(value))
                        .map_err(backend)?;
                }
                _ => return Err(corrupt("an unknown table")),
            }
        }
    }
    txn.commit().map_err(backend)
}

fn take_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let field = bytes.get(4..4 + len)?;
    Some((field, &bytes[4 + len..]))
}
