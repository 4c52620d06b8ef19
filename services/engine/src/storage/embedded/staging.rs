//! Import staging: an import's points are written to a file of their own as
//! they arrive, holding no lock any writer needs, and only merged into the
//! blocks once the whole source has been read. A slow or stalled upload then
//! delays nobody but itself, and a failed one leaves nothing but a file to
//! delete.
//!
//! The file is raw points, 17 bytes each (`ts i64 | value bits u64 |
//! quality u8`, little endian), in arrival order. It needs no fsync: the
//! commit that merges it is the durable step, and a crash before that
//! discards the import (the next open deletes left-over staging files).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::io::{Faults, IoTarget, is_disk_full};
use crate::model::{Point, PointBatch};
use crate::storage::StorageError;

const POINT_LEN: usize = 17;
/// Points read back per chunk at commit.
pub const CHUNK_POINTS: usize = 64 * 1024;

/// Distinguishes concurrent imports' files.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// An import's staging file; deleted when dropped.
pub struct StagingFile {
    path: PathBuf,
    file: File,
    len: u64,
    faults: Faults,
    buffer: Vec<u8>,
}

/// Deletes what an interrupted run left in the staging directory.
pub fn clear(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn staging_error(error: io::Error) -> StorageError {
    if is_disk_full(&error) {
        StorageError::Full(format!("staging the import: {error}"))
    } else {
        StorageError::Io(error)
    }
}

impl StagingFile {
    pub fn create(dir: &Path, faults: Faults) -> Result<Self, StorageError> {
        fs::create_dir_all(dir).map_err(staging_error)?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("import-{}-{id}.points", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(staging_error)?;
        Ok(Self {
            path,
            file,
            len: 0,
            faults,
            buffer: Vec::new(),
        })
    }

    /// Appends a batch of points.
    pub fn append(&mut self, batch: &PointBatch) -> Result<(), StorageError> {
        self.buffer.clear();
        self.buffer.reserve(batch.len() * POINT_LEN);
        for p in batch.iter() {
            self.buffer.extend_from_slice(&p.timestamp_ms.to_le_bytes());
            self.buffer
                .extend_from_slice(&p.value.to_bits().to_le_bytes());
            self.buffer.push(p.quality);
        }
        self.faults
            .write_at(IoTarget::Staging, &self.file, &self.buffer, self.len)
            .map_err(staging_error)?;
        self.len += self.buffer.len() as u64;
        Ok(())
    }

    /// Points staged so far.
    pub fn points(&self) -> u64 {
        self.len / POINT_LEN as u64
    }

    /// Reads the staged points back, in order, in chunks.
    pub fn chunks(&self) -> impl Iterator<Item = Result<Vec<Point>, StorageError>> + '_ {
        let chunk_bytes = (CHUNK_POINTS * POINT_LEN) as u64;
        (0..self.len.div_ceil(chunk_bytes)).map(move |i| {
            let offset = i * chunk_bytes;
            let len = chunk_bytes.min(self.len - offset) as usize;
            let mut bytes = vec![0u8; len];
            self.faults
                .check(IoTarget::Staging, super::io::IoOp::Read)
                .and_then(|()| self.file.read_exact_at(&mut bytes, offset))?;
            Ok(bytes
                .chunks_exact(POINT_LEN)
                .map(|c| Point {
                    timestamp_ms: i64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
                    value: f64::from_bits(u64::from_le_bytes(
                        c[8..16].try_into().unwrap_or_default(),
                    )),
                    quality: c[16],
                })
                .collect())
        })
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_points_come_back_in_order_and_the_file_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let staging_dir = dir.path().join("staging");
        let mut file = StagingFile::create(&staging_dir, Faults::default()).unwrap();
        let batch: PointBatch = (0..(CHUNK_POINTS as i64 + 10))
            .map(|i| Point {
                timestamp_ms: -i,
                value: f64::from_bits(0x7ff8_0000_0000_0001 + i as u64),
                quality: (i % 256) as u8,
            })
            .collect();
        file.append(&batch).unwrap();
        assert_eq!(file.points(), batch.len() as u64);
        let back: Vec<Point> = file.chunks().flat_map(|c| c.unwrap()).collect();
        assert_eq!(back, batch.iter().collect::<Vec<_>>());
        drop(file);
        assert_eq!(fs::read_dir(&staging_dir).unwrap().count(), 0);
    }
}
