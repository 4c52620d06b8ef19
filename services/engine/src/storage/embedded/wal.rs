//! The write-ahead log: where a write becomes durable before it is
//! acknowledged.
//!
//! The log is a sequence of segment files `wal/<seq>.wal`. A segment is a
//! magic header followed by records
//! `RECORD_MAGIC u32 | len u32 | crc32(len ‖ payload) u32 | payload`.
//! A write appends one record and calls `fdatasync` before returning, so an
//! acknowledged write is on disk. Writes that arrive while a sync runs are
//! appended together with the next one (group commit), one record each.
//!
//! Reading tells two kinds of bad bytes apart:
//! - a **torn tail**: bad bytes at the end of the newest segment with no
//!   intact record after them. Only an unacknowledged write (cut short by a
//!   crash) can leave one; it is dropped and the file truncated to its intact
//!   prefix.
//! - **damage**: a bad record followed by an intact one, or any bad record in
//!   an older segment. Acknowledged writes may be in or after it, so opening
//!   stops with [`WalError::Damaged`] naming the segment and offset, and
//!   nothing is deleted; `engine repair` keeps every intact record and moves
//!   the damaged segment aside ([`repair_segment`]).
//!
//! The record magic lets the reader find the next record after damage (the
//! length field itself may be what was damaged); the checksum covers the
//! length, so a damaged length is detected too.
//!
//! Payload of a record (one atomic write batch), little endian:
//! `version u64 | groups varint`, then per group:
//! `id_len varint | id bytes | flags u8 | points varint | points × (ts i64,
//! value bits u64, quality u8 [, seq u64 if flags & HAS_SEQ])`.
//! `version` is the write's version, which every point without its own
//! stream `seq` takes.
//!
//! Segments of the first format (`SNSWAL01`: no record magic, no versions)
//! are still read, so a store written by an earlier engine recovers.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::io::{Faults, IoTarget, free_bytes, is_disk_full};
use crate::model::{Point, SensorId};

const MAGIC: &[u8; 8] = b"SNSWAL02";
const MAGIC_V1: &[u8; 8] = b"SNSWAL01";
const RECORD_MAGIC: [u8; 4] = *b"REC\x1e";
const RECORD_HEADER: usize = 12;
const RECORD_HEADER_V1: usize = 8;
const POINT_LEN: usize = 17;
const HAS_SEQ: u8 = 1;

/// The points of one sensor inside a record, with their stream sequences
/// when they came from a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub sensor_id: SensorId,
    pub points: Vec<Point>,
    /// One per point, or `None` when every point takes the record's version.
    pub seqs: Option<Vec<u64>>,
}

impl Group {
    /// The version of point `index`.
    pub fn version(&self, index: usize, record_version: u64) -> u64 {
        match &self.seqs {
            Some(seqs) => seqs[index],
            None => record_version,
        }
    }
}

/// One atomic write.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The version of the points without a stream seq. Records of the first
    /// format have none: replay assigns them in log order.
    pub version: Option<u64>,
    pub groups: Vec<Group>,
}

/// Why the log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// No space (ENOSPC, EDQUOT): the write left nothing behind and may be
    /// retried when there is room.
    #[error("no space left for the write-ahead log: {0}")]
    Full(io::Error),
    /// An fsync failed, or the log could not be put back in order after a
    /// failed write: what is on disk is unknown.
    #[error("the write-ahead log failed: {0}")]
    Failed(io::Error),
    /// Bad bytes that are not a torn tail: acknowledged writes may be lost.
    #[error(
        "write-ahead log segment {} is damaged at byte {offset}: {reason}; \
         run `engine repair` to keep its intact records and move it aside",
        path.display()
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The open segment that writes append to.
pub struct WalWriter {
    dir: PathBuf,
    seq: u64,
    file: File,
    /// Bytes of intact records (and the header): where the next one goes.
    len: u64,
    faults: Faults,
}

impl WalWriter {
    /// Creates segment `seq` and makes it and its directory entry durable.
    ///
    /// With `preallocate` > 0 the segment is first written full of zeros up
    /// to that many bytes (as PostgreSQL does with its WAL segments): an
    /// append inside that space changes no file metadata, so its
    /// `fdatasync` flushes the record alone instead of committing the
    /// filesystem journal, which on ext4 also waits for the blocks file's
    /// dirty pages (a checkpoint's). Readers take zeros after the last
    /// record as the end of the segment. A disk without room to spare for
    /// the zeros gets a segment without them.
    pub fn create(
        dir: &Path,
        seq: u64,
        faults: Faults,
        preallocate: u64,
    ) -> Result<Self, WalError> {
        let classify = |error: io::Error| {
            if is_disk_full(&error) {
                WalError::Full(error)
            } else {
                WalError::Io(error)
            }
        };
        fs::create_dir_all(dir).map_err(classify)?;
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(classify)?;
        let written = faults
            .write_at(IoTarget::Wal, &file, MAGIC, 0)
            .and_then(|()| fill_with_zeros(&faults, &file, dir, preallocate))
            .and_then(|()| faults.sync(IoTarget::Wal, &file))
            .and_then(|()| sync_dir(dir));
        if let Err(error) = written {
            // Nothing in it was acknowledged: remove it, so no later open
            // mistakes a headless file for a torn segment.
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(classify(error));
        }
        Ok(Self {
            dir: dir.to_owned(),
            seq,
            file,
            len: MAGIC.len() as u64,
            faults,
        })
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Bytes in the segment so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends one record and waits until it is on disk.
    pub fn append(&mut self, record: &Record) -> Result<(), WalError> {
        let mut framed = Vec::new();
        frame_record(record, &mut framed)?;
        self.append_framed(&framed)
    }

    /// Appends records framed by [`frame_record`] (one or several: a group
    /// commit) with one write and one `fdatasync`, and waits until they are
    /// on disk. Either all of them are acknowledged or none.
    ///
    /// A write that fails for lack of space is undone (the segment is cut
    /// back to its intact records) and reported as [`WalError::Full`]; the
    /// log stays usable. A failed fsync, or a failed undo, is
    /// [`WalError::Failed`]: the caller must stop writing.
    pub fn append_framed(&mut self, framed: &[u8]) -> Result<(), WalError> {
        if let Err(error) = self
            .faults
            .write_at(IoTarget::Wal, &self.file, framed, self.len)
        {
            // Cut off whatever part of the records reached the file. It was
            // never synced, but a later sync would persist it as damage.
            if let Err(undo) = self.faults.set_len(IoTarget::Wal, &self.file, self.len) {
                return Err(WalError::Failed(undo));
            }
            return Err(if is_disk_full(&error) {
                WalError::Full(error)
            } else {
                WalError::Failed(error)
            });
        }
        if let Err(error) = self.faults.sync(IoTarget::Wal, &self.file) {
            // The caller is told the write failed, so it must not come back
            // after a restart as if it had been acknowledged: cut it off
            // (best effort: with fsync failing, nothing is certain).
            let _ = self.faults.set_len(IoTarget::Wal, &self.file, self.len);
            return Err(WalError::Failed(error));
        }
        self.len += framed.len() as u64;
        Ok(())
    }

    /// Starts the next segment. On failure this one stays open and usable.
    /// Not preallocated: this runs under the WAL lock, when no spare was
    /// ready.
    pub fn rotate(&mut self) -> Result<(), WalError> {
        let next = Self::create(&self.dir, self.seq + 1, self.faults.clone(), 0)?;
        *self = next;
        Ok(())
    }
}

/// Appends `record` to `out` as it goes into a segment: header (magic,
/// length, checksum) and payload.
pub fn frame_record(record: &Record, out: &mut Vec<u8>) -> Result<(), WalError> {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    encode_payload(record, out);
    let payload_len = u32::try_from(out.len() - start - RECORD_HEADER).map_err(|_| {
        WalError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a single write batch is larger than 4 GiB",
        ))
    })?;
    let header = &mut out[start..start + RECORD_HEADER];
    header[0..4].copy_from_slice(&RECORD_MAGIC);
    header[4..8].copy_from_slice(&payload_len.to_le_bytes());
    let crc = record_crc(&out[start + 4..start + 8], &out[start + RECORD_HEADER..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The bytes every segment of the current format starts with.
pub fn segment_header() -> &'static [u8] {
    MAGIC
}

/// Writes zeros after the header up to `len` bytes (see
/// [`WalWriter::create`]) into `file`, a segment in `dir`. Out of space, it
/// cuts the file back to its header and reports success: the segment then
/// grows as it is written.
fn fill_with_zeros(faults: &Faults, file: &File, dir: &Path, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    // Nothing to fill (a rotation under the WAL lock, a repair): no
    // statvfs either.
    if len <= MAGIC.len() as u64 || !room_to_spare(dir, len) {
        return Ok(());
    }
    let zeros = vec![0u8; CHUNK.min(len as usize)];
    let mut at = MAGIC.len() as u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        if let Err(error) = faults.write_at(IoTarget::Wal, file, &zeros[..n], at) {
            if is_disk_full(&error) {
                return faults.set_len(IoTarget::Wal, file, MAGIC.len() as u64);
            }
            return Err(error);
        }
        at += n as u64;
    }
    Ok(())
}

/// Free space a disk must keep beyond a segment's zeros for them to be
/// written: the last megabytes of a nearly full disk go to records, the
/// blocks and the audit trail, not to space reserved ahead.
const PREALLOCATION_RESERVE: u64 = 256 << 20;

/// Whether the filesystem of `dir` has room for `len` bytes of zeros and
/// [`PREALLOCATION_RESERVE`] besides.
fn room_to_spare(dir: &Path, len: u64) -> bool {
    free_bytes(dir).is_some_and(|free| free >= len.saturating_add(PREALLOCATION_RESERVE))
}

/// Whether a segment holds anything after its header: a record, or part of
/// one (zeros are preallocated space, see [`WalWriter::create`]).
pub fn has_records(path: &Path) -> io::Result<bool> {
    use std::io::Read as _;
    let mut head = Vec::with_capacity(MAGIC.len() + RECORD_HEADER);
    File::open(path)?
        .take((MAGIC.len() + RECORD_HEADER) as u64)
        .read_to_end(&mut head)?;
    Ok(head.iter().skip(MAGIC.len()).any(|&b| b != 0))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn record_crc(len: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len);
    hasher.update(payload);
    hasher.finalize()
}

fn encode_payload(record: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(&record.version.unwrap_or(0).to_le_bytes());
    put_varint(out, record.groups.len() as u64);
    for group in &record.groups {
        let id = group.sensor_id.as_str();
        put_varint(out, id.len() as u64);
        out.extend_from_slice(id.as_bytes());
        out.push(if group.seqs.is_some() { HAS_SEQ } else { 0 });
        put_varint(out, group.points.len() as u64);
        let point_len = POINT_LEN + if group.seqs.is_some() { 8 } else { 0 };
        out.reserve(group.points.len() * point_len);
        for (i, p) in group.points.iter().enumerate() {
            out.extend_from_slice(&p.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&p.value.to_bits().to_le_bytes());
            out.push(p.quality);
            if let Some(seqs) = &group.seqs {
                out.extend_from_slice(&seqs[i].to_le_bytes());
            }
        }
    }
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub struct SegmentContents {
    /// Every intact record, in order.
    pub records: Vec<Record>,
    /// Length of the intact prefix: where a torn tail starts.
    pub intact_len: u64,
    /// Bytes of a torn tail after the intact prefix (0 when none).
    pub torn_bytes: u64,
    /// Bytes of preallocated zeros after the intact prefix, never written
    /// (see [`WalWriter::create`]; 0 when none). The three parts cover the
    /// segment.
    pub zero_tail: u64,
}

/// Reads every record of a segment. `newest` says whether it is the last
/// segment, the only one that may end in a torn tail.
pub fn read_segment(path: &Path, newest: bool) -> Result<SegmentContents, WalError> {
    let bytes = fs::read(path)?;
    parse_segment(path, &bytes, newest)
}

/// [`read_segment`] on the bytes of the segment at `path` (named in errors).
pub fn parse_segment(path: &Path, bytes: &[u8], newest: bool) -> Result<SegmentContents, WalError> {
    let damaged = |offset: usize, reason: &str| WalError::Damaged {
        path: path.to_owned(),
        offset: offset as u64,
        reason: reason.to_owned(),
    };
    let mut contents = SegmentContents::default();
    let written = bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
    if written < MAGIC.len() {
        // A segment torn before its header was complete (nothing, or the
        // preallocated zeros, after it) holds no record.
        let header = &bytes[..written];
        if newest && (MAGIC.starts_with(header) || MAGIC_V1.starts_with(header)) {
            contents.torn_bytes = bytes.len() as u64;
            return Ok(contents);
        }
        return Err(damaged(0, "the segment header is cut short"));
    }
    if &bytes[..MAGIC.len()] == MAGIC_V1 {
        return Ok(read_v1(bytes));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(damaged(0, "not a write-ahead log segment (bad magic)"));
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        match record_at(bytes, at) {
            Ok((record, end)) => {
                contents.records.push(record);
                at = end;
            }
            Err(_) if bytes[at..].iter().all(|&b| b == 0) => {
                // Preallocated space, never written: the clean end.
                contents.intact_len = at as u64;
                contents.zero_tail = (bytes.len() - at) as u64;
                return Ok(contents);
            }
            Err(reason) => {
                if let Some(next) = next_intact_record(bytes, at + 1) {
                    return Err(damaged(
                        at,
                        &format!("{reason}, but an intact record follows at byte {next}"),
                    ));
                }
                if !newest {
                    return Err(damaged(
                        at,
                        &format!("{reason} in a segment that is not the newest"),
                    ));
                }
                break;
            }
        }
    }
    contents.intact_len = at as u64;
    contents.torn_bytes = (bytes.len() - at) as u64;
    Ok(contents)
}

/// The record at `at` and where it ends, or why there is none.
fn record_at(bytes: &[u8], at: usize) -> Result<(Record, usize), &'static str> {
    let header = bytes
        .get(at..at + RECORD_HEADER)
        .ok_or("a record header is cut short")?;
    if header[0..4] != RECORD_MAGIC {
        return Err("bad record magic");
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let end = at + RECORD_HEADER + len;
    let payload = bytes
        .get(at + RECORD_HEADER..end)
        .ok_or("a record runs past the end of the segment")?;
    if record_crc(&header[4..8], payload) != crc {
        return Err("a record fails its checksum");
    }
    let record = decode_payload(payload).ok_or("a record's contents do not decode")?;
    Ok((record, end))
}

/// The offset of the first intact record at or after `from`.
fn next_intact_record(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + RECORD_HEADER <= bytes.len() {
        let found = bytes[at..]
            .windows(RECORD_MAGIC.len())
            .position(|w| w == RECORD_MAGIC)?;
        at += found;
        if record_at(bytes, at).is_ok() {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// A first-format segment: stops at the first bad record (that format
/// cannot tell damage from a torn tail).
fn read_v1(bytes: &[u8]) -> SegmentContents {
    let mut contents = SegmentContents::default();
    let mut at = MAGIC_V1.len();
    while let Some(header) = bytes.get(at..at + RECORD_HEADER_V1) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + RECORD_HEADER_V1..at + RECORD_HEADER_V1 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(groups) = decode_groups(payload, 0, false) else {
            break;
        };
        contents.records.push(Record {
            version: None,
            groups,
        });
        at += RECORD_HEADER_V1 + len;
    }
    contents.intact_len = at as u64;
    contents.torn_bytes = (bytes.len() - at) as u64;
    contents
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let version = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let groups = decode_groups(payload, 8, true)?;
    Some(Record {
        version: Some(version),
        groups,
    })
}

fn decode_groups(payload: &[u8], mut at: usize, with_flags: bool) -> Option<Vec<Group>> {
    let group_count = get_varint(payload, &mut at)?;
    let mut groups = Vec::new();
    for _ in 0..group_count {
        let id_len = get_varint(payload, &mut at)? as usize;
        let id = std::str::from_utf8(payload.get(at..at.checked_add(id_len)?)?).ok()?;
        let sensor_id = SensorId::new(id).ok()?;
        at += id_len;
        let flags = if with_flags {
            let flags = *payload.get(at)?;
            at += 1;
            flags
        } else {
            0
        };
        let has_seq = flags & HAS_SEQ != 0;
        let count = get_varint(payload, &mut at)? as usize;
        let point_len = POINT_LEN + if has_seq { 8 } else { 0 };
        let bytes = payload.get(at..at.checked_add(count.checked_mul(point_len)?)?)?;
        at += bytes.len();
        let u64_at =
            |c: &[u8], i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap_or_default());
        let points = bytes
            .chunks_exact(point_len)
            .map(|c| Point {
                timestamp_ms: u64_at(c, 0) as i64,
                value: f64::from_bits(u64_at(c, 8)),
                quality: c[16],
            })
            .collect();
        let seqs = has_seq.then(|| {
            bytes
                .chunks_exact(point_len)
                .map(|c| u64_at(c, 17))
                .collect()
        });
        groups.push(Group {
            sensor_id,
            points,
            seqs,
        });
    }
    (at == payload.len()).then_some(groups)
}

/// The segments in `dir`, ordered by sequence number.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            segments.push((seq, path));
        }
    }
    segments.sort();
    Ok(segments)
}

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Cuts a torn tail off the newest segment, durably, so that once a newer
/// segment exists this one reads as whole.
pub fn truncate_torn_tail(path: &Path, intact_len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(intact_len)?;
    file.sync_all()
}

/// What [`repair_segment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub segment: PathBuf,
    /// Where the damaged original was moved.
    pub moved_to: PathBuf,
    /// Intact records kept.
    pub records_kept: usize,
    /// Byte ranges `[start, end)` of the original that held no intact record.
    pub lost_ranges: Vec<(u64, u64)>,
}

/// Keeps every intact record of a damaged segment: moves the original to
/// `wal/damaged/` and writes the intact records, in order, into a new
/// segment of the same number.
pub fn repair_segment(path: &Path) -> Result<RepairReport, WalError> {
    let bytes = fs::read(path)?;
    let mut records = Vec::new();
    let mut lost_ranges = Vec::new();
    let mut at = MAGIC.len().min(bytes.len());
    if bytes.get(..MAGIC.len()) == Some(MAGIC_V1.as_slice()) {
        records = read_v1(&bytes).records;
    } else {
        if bytes.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            lost_ranges.push((0, at as u64));
        }
        while at < bytes.len() {
            match record_at(&bytes, at) {
                Ok((record, end)) => {
                    records.push(record);
                    at = end;
                }
                Err(_) => {
                    let next = next_intact_record(&bytes, at + 1).unwrap_or(bytes.len());
                    lost_ranges.push((at as u64, next as u64));
                    at = next;
                }
            }
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let damaged_dir = dir.join("damaged");
    fs::create_dir_all(&damaged_dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let moved_to = damaged_dir.join(format!("{name}.{stamp}"));

    let seq = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| io::Error::other("not a segment file name"))?;
    // The scratch directory is not scanned for segments: a crash midway
    // leaves the original in place and the scratch copy ignored.
    let scratch = dir.join("repair.tmp");
    let _ = fs::remove_dir_all(&scratch);
    let mut writer = WalWriter::create(&scratch, seq, Faults::default(), 0)?;
    for record in &records {
        writer.append(record)?;
    }
    drop(writer);
    // Keep the original first (a copy, synced), then replace it atomically:
    // at every moment the segment is either the original or the repair.
    {
        let mut copy = File::create(&moved_to)?;
        std::io::Write::write_all(&mut copy, &bytes)?;
        copy.sync_all()?;
    }
    fs::rename(segment_path(&scratch, seq), segment_path(dir, seq))?;
    sync_dir(dir)?;
    sync_dir(&damaged_dir)?;
    fs::remove_dir_all(&scratch)?;
    Ok(RepairReport {
        segment: path.to_owned(),
        moved_to,
        records_kept: records.len(),
        lost_ranges,
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        value |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: &str, n: i64, with_seqs: bool) -> Group {
        let points = (0..n)
            .map(|i| Point {
                timestamp_ms: i,
                value: i as f64 / 3.0,
                quality: 192,
            })
            .collect();
        Group {
            sensor_id: SensorId::new(id).unwrap(),
            points,
            seqs: with_seqs.then(|| (0..n as u64).map(|i| 1000 + i).collect()),
        }
    }

    fn record(version: u64, groups: Vec<Group>) -> Record {
        Record {
            version: Some(version),
            groups,
        }
    }

    fn three_records(dir: &Path) -> (Vec<Record>, Vec<u64>, PathBuf) {
        let mut wal = WalWriter::create(dir, 7, Faults::default(), 0).unwrap();
        let records = vec![
            record(1 << 63, vec![group("a", 3, false)]),
            record(
                (1 << 63) + 1,
                vec![
                    group("Kessel Ü1/Temperatur", 10, true),
                    group("b", 1, false),
                ],
            ),
            record((1 << 63) + 2, vec![group("c", 100, false)]),
        ];
        let mut ends = vec![wal.len()];
        for record in &records {
            wal.append(record).unwrap();
            ends.push(wal.len());
        }
        (records, ends, segment_path(dir, 7))
    }

    #[test]
    fn a_preallocated_segment_ends_at_its_last_record_and_a_torn_one_is_still_torn() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), 3, Faults::default(), 64 << 10).unwrap();
        let path = segment_path(dir.path(), 3);
        assert_eq!(fs::metadata(&path).unwrap().len(), 64 << 10);
        assert!(!has_records(&path).unwrap(), "zeros only: no record yet");
        let records = vec![
            record(1 << 63, vec![group("a", 3, false)]),
            record((1 << 63) + 1, vec![group("b", 50, true)]),
        ];
        for record in &records {
            wal.append(record).unwrap();
        }
        let intact = wal.len();
        drop(wal);
        assert!(has_records(&path).unwrap());
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            64 << 10,
            "appends stay inside"
        );
        for newest in [true, false] {
            let contents = read_segment(&path, newest).unwrap();
            assert_eq!(contents.records, records);
            assert_eq!((contents.intact_len, contents.torn_bytes), (intact, 0));
            assert_eq!(contents.zero_tail, (64 << 10) - intact);
        }
        // A record cut short by a crash, zeros after it.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &RECORD_MAGIC, intact).unwrap();
        drop(file);
        let contents = read_segment(&path, true).unwrap();
        assert_eq!(contents.records, records);
        assert_eq!(contents.intact_len, intact);
        assert!(contents.torn_bytes > 0);
        assert!(matches!(
            read_segment(&path, false),
            Err(WalError::Damaged { offset, .. }) if offset == intact
        ));
    }

    #[test]
    fn every_truncation_of_the_newest_segment_keeps_exactly_the_intact_records() {
        let dir = tempfile::tempdir().unwrap();
        let (records, ends, path) = three_records(dir.path());
        let full = fs::read(&path).unwrap();
        for cut in 0..=full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let contents = read_segment(&path, true).unwrap();
            let intact = ends.iter().filter(|&&end| end as usize <= cut).count();
            let expected = intact.saturating_sub(1);
            assert_eq!(contents.records.len(), expected, "cut at {cut}");
            assert_eq!(contents.records[..], records[..expected]);
            assert_eq!(
                contents.intact_len + contents.torn_bytes,
                cut as u64,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn damage_before_an_intact_record_is_an_error_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (_, ends, path) = three_records(dir.path());
        let original = fs::read(&path).unwrap();
        for record in 0..3 {
            let (start, end) = (ends[record] as usize, ends[record + 1] as usize);
            for at in [start, start + 5, start + 9, start + 13, end - 1] {
                let mut bytes = original.clone();
                bytes[at] ^= 0x10;
                fs::write(&path, &bytes).unwrap();
                let result = read_segment(&path, true);
                if record < 2 {
                    match result {
                        Err(WalError::Damaged { offset, .. }) => {
                            assert_eq!(offset, start as u64, "record {record}, byte {at}")
                        }
                        other => panic!("record {record}, byte {at}: {other:?}"),
                    }
                } else {
                    // The last record: indistinguishable from a torn write.
                    let contents = result.unwrap();
                    assert_eq!(contents.records.len(), 2);
                    assert_eq!(contents.intact_len, start as u64);
                }
                // In an older segment, even the last record's damage counts.
                assert!(matches!(
                    read_segment(&path, false),
                    Err(WalError::Damaged { .. })
                ));
            }
        }
    }

    #[test]
    fn repair_keeps_every_intact_record_and_moves_the_original_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (records, ends, path) = three_records(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[ends[1] as usize + 20] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let report = repair_segment(&path).unwrap();
        assert_eq!(report.records_kept, 2);
        assert_eq!(report.lost_ranges, vec![(ends[1], ends[2])]);
        assert_eq!(fs::read(&report.moved_to).unwrap(), bytes);
        let contents = read_segment(&path, false).unwrap();
        assert_eq!(
            contents.records,
            vec![records[0].clone(), records[2].clone()]
        );
    }

    #[test]
    fn first_format_segments_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        let mut bytes = MAGIC_V1.to_vec();
        let mut payload = Vec::new();
        put_varint(&mut payload, 1);
        put_varint(&mut payload, 1);
        payload.push(b'a');
        put_varint(&mut payload, 1);
        payload.extend_from_slice(&5i64.to_le_bytes());
        payload.extend_from_slice(&2.5f64.to_bits().to_le_bytes());
        payload.push(192);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        fs::write(&path, &bytes).unwrap();
        let contents = read_segment(&path, true).unwrap();
        assert_eq!(contents.records.len(), 1);
        assert_eq!(contents.records[0].version, None);
        assert_eq!(contents.records[0].groups[0].points[0].value, 2.5);
    }
}
