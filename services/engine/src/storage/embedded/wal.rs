//! The write-ahead log: where a write becomes durable before it is
//! acknowledged.
//!
//! The log is a sequence of segment files `wal/<seq>.wal`. A segment is a
//! magic header followed by records `len u32 | crc32 u32 | payload`. A write
//! appends one record and calls `fdatasync` before returning, so an
//! acknowledged write is on disk. A crash can leave a torn last record; the
//! reader stops at the first record that is short or fails its checksum and
//! keeps the intact prefix, since only an unacknowledged write can be torn.
//!
//! Payload of a record (one atomic write batch):
//! `groups varint, then per group: id_len varint, id bytes, points varint,
//! points × (ts i64, value bits u64, quality u8)`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::model::{Point, SensorId};

const MAGIC: &[u8; 8] = b"SNSWAL01";
const RECORD_HEADER: usize = 8;
const POINT_LEN: usize = 17;

/// The points of one sensor inside a record.
pub type Group = (SensorId, Vec<Point>);

/// The open segment that writes append to.
pub struct WalWriter {
    dir: PathBuf,
    seq: u64,
    file: File,
    len: u64,
    /// Reused to build records without allocating per write.
    buffer: Vec<u8>,
}

impl WalWriter {
    /// Creates segment `seq` (and makes its directory entry durable).
    pub fn create(dir: &Path, seq: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Self {
            dir: dir.to_owned(),
            seq,
            file,
            len: MAGIC.len() as u64,
            buffer: Vec::new(),
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
    pub fn append(&mut self, groups: &[Group]) -> io::Result<()> {
        self.buffer.clear();
        self.buffer.extend_from_slice(&[0; RECORD_HEADER]);
        encode_payload(groups, &mut self.buffer);
        let payload_len = self.buffer.len() - RECORD_HEADER;
        let payload_len = u32::try_from(payload_len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a single write batch is larger than 4 GiB",
            )
        })?;
        let crc = crc32fast::hash(&self.buffer[RECORD_HEADER..]);
        self.buffer[0..4].copy_from_slice(&payload_len.to_le_bytes());
        self.buffer[4..8].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all(&self.buffer)?;
        self.file.sync_data()?;
        self.len += self.buffer.len() as u64;
        if self.buffer.capacity() > 16 << 20 {
            self.buffer = Vec::new();
        }
        Ok(())
    }

    /// Starts the next segment; the caller deletes older ones once their
    /// contents are checkpointed.
    pub fn rotate(&mut self) -> io::Result<()> {
        *self = Self::create(&self.dir, self.seq + 1)?;
        Ok(())
    }
}

fn encode_payload(groups: &[Group], out: &mut Vec<u8>) {
    put_varint(out, groups.len() as u64);
    for (sensor, points) in groups {
        put_varint(out, sensor.as_str().len() as u64);
        out.extend_from_slice(sensor.as_str().as_bytes());
        put_varint(out, points.len() as u64);
        out.reserve(points.len() * POINT_LEN);
        for p in points {
            out.extend_from_slice(&p.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&p.value.to_bits().to_le_bytes());
            out.push(p.quality);
        }
    }
}

/// What reading a segment found.
#[derive(Debug, Default)]
pub struct SegmentContents {
    /// Every intact record, in order.
    pub records: Vec<Vec<Group>>,
    /// Bytes after the intact prefix (a torn or damaged tail), ignored.
    pub discarded_bytes: u64,
}

/// Reads every intact record of a segment, stopping at the first damaged one.
pub fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let bytes = fs::read(path)?;
    let mut contents = SegmentContents::default();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // A segment torn before its header was complete holds no record.
        contents.discarded_bytes = bytes.len() as u64;
        return Ok(contents);
    }
    let mut at = MAGIC.len();
    while let Some(header) = bytes.get(at..at + RECORD_HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(groups) = decode_payload(payload) else {
            break;
        };
        contents.records.push(groups);
        at += RECORD_HEADER + len;
    }
    contents.discarded_bytes = (bytes.len() - at) as u64;
    Ok(contents)
}

fn decode_payload(payload: &[u8]) -> Option<Vec<Group>> {
    let mut at = 0;
    let group_count = get_varint(payload, &mut at)?;
    let mut groups = Vec::new();
    for _ in 0..group_count {
        let id_len = get_varint(payload, &mut at)? as usize;
        let id = std::str::from_utf8(payload.get(at..at.checked_add(id_len)?)?).ok()?;
        let sensor = SensorId::new(id).ok()?;
        at += id_len;
        let count = get_varint(payload, &mut at)? as usize;
        let bytes = payload.get(at..at.checked_add(count.checked_mul(POINT_LEN)?)?)?;
        at += bytes.len();
        let points = bytes
            .chunks_exact(POINT_LEN)
            .map(|c| Point {
                timestamp_ms: i64::from_le_bytes(c[0..8].try_into().unwrap_or_default()),
                value: f64::from_bits(u64::from_le_bytes(c[8..16].try_into().unwrap_or_default())),
                quality: c[16],
            })
            .collect();
        groups.push((sensor, points));
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

    fn group(id: &str, n: i64) -> Group {
        let points = (0..n)
            .map(|i| Point {
                timestamp_ms: i,
                value: i as f64 / 3.0,
                quality: 192,
            })
            .collect();
        (SensorId::new(id).unwrap(), points)
    }

    #[test]
    fn every_truncation_keeps_exactly_the_intact_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), 7).unwrap();
        let records = vec![
            vec![group("a", 3)],
            vec![group("Kessel Ü1/Temperatur", 10), group("b", 1)],
            vec![group("c", 100)],
        ];
        let mut ends = vec![wal.len()];
        for record in &records {
            wal.append(record).unwrap();
            ends.push(wal.len());
        }
        let path = segment_path(dir.path(), 7);
        let full = fs::read(&path).unwrap();
        for cut in 0..=full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let contents = read_segment(&path).unwrap();
            let intact = ends.iter().filter(|&&end| end as usize <= cut).count();
            let expected = intact.saturating_sub(1);
            assert_eq!(contents.records.len(), expected, "cut at {cut}");
            assert_eq!(contents.records[..], records[..expected]);
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_log_at_the_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = WalWriter::create(dir.path(), 1).unwrap();
        wal.append(&[group("a", 5)]).unwrap();
        let first_end = wal.len() as usize;
        wal.append(&[group("b", 5)]).unwrap();
        let path = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[first_end + 20] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let contents = read_segment(&path).unwrap();
        assert_eq!(contents.records, vec![vec![group("a", 5)]]);
        assert_eq!(contents.discarded_bytes, (bytes.len() - first_end) as u64);
    }
}
