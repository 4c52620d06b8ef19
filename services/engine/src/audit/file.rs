//! [`FileAuditSink`]: the audit trail as JSON Lines in `DATA_DIR/audit/`.
//!
//! - `audit-000001.jsonl`, `audit-000002.jsonl`, ...: one record a line,
//!   `{"seq":N,"ms":...,"time":"...","event":"...",...,"prev":"<hex>","mac":"<hex>"}`.
//!   `mac` is HMAC-SHA256 over the line's bytes before `,"mac":`, which hold
//!   `prev`, the MAC of the record before (64 zeros before the first): an
//!   edited, removed or reordered record breaks the chain, and without the
//!   key nobody can write a new one that fits. A file is closed once it
//!   passes the rotation size; the next one's first record chains to its
//!   last, so the chain runs across files.
//! - `.lock`: every writer (the server, and `engine token` commands run
//!   beside it) appends under an exclusive `flock` of it and first checks
//!   that the file is still as long as it left it; if not, someone else
//!   appended, and it reads the last record again before chaining to it.
//!   Readers (`audit list`, `audit verify`, `GET /api/v1/audit`) take no
//!   lock: they read complete lines only.
//! - The key: `DATA_DIR/auth/audit-key` (64 hex digits, mode 0600), apart
//!   from the log, created on first use.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ring::hmac;
use serde::Serialize;

use super::verify::{AuditFilter, AuditPage};
use super::{AuditError, AuditEvent, AuditSink};
use crate::auth::secret;

/// The MAC before the first record.
pub const ZERO_MAC: [u8; 32] = [0; 32];

/// Bytes of `,"mac":"<64 hex>"}` at the end of every line.
pub const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// `DATA_DIR/auth/audit-key`.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("auth").join("audit-key")
}

/// `DATA_DIR/audit/`.
pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// Reads a key file (64 hex digits).
pub fn read_key(path: &Path) -> Result<hmac::Key, AuditError> {
    let text = fs::read_to_string(path).map_err(|e| AuditError::io(path, e))?;
    let bytes = secret::unhex(text.trim())
        .filter(|b| b.len() == 32)
        .ok_or_else(|| AuditError::io(path, "not a key (64 hex digits)"))?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// The data directory's key, created (256 random bits, mode 0600) when
/// missing. Two processes creating it at once agree on one: each writes its
/// own and links it into place; the loser reads the winner's.
pub fn load_or_create_key(data_dir: &Path) -> Result<hmac::Key, AuditError> {
    let path = key_path(data_dir);
    if path.exists() {
        return read_key(&path);
    }
    let dir = data_dir.join("auth");
    fs::create_dir_all(&dir).map_err(|e| AuditError::io(&dir, e))?;
    let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
    let partial = dir.join(format!("audit-key.partial.{}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&partial)?;
        writeln!(file, "{}", secret::hex(&secret::random_bytes::<32>()))?;
        file.sync_all()?;
        match fs::hard_link(&partial, &path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = fs::remove_file(&partial);
    written.map_err(|e| AuditError::io(&path, e))?;
    if let Ok(dir) = File::open(&dir) {
        let _ = dir.sync_all();
    }
    read_key(&path)
}

/// The log files of `dir`, oldest first, with their numbers.
pub fn log_files(dir: &Path) -> Result<Vec<(u32, PathBuf)>, AuditError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_prefix("audit-")
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            files.push((number, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn file_name(number: u32) -> String {
    format!("audit-{number:06}.jsonl")
}

/// The MAC at the end of a line (without its `\n`), and the bytes it covers.
pub fn split_mac(line: &[u8]) -> Option<(&[u8], [u8; 32])> {
    if line.len() < MAC_SUFFIX_LEN + 2 || !line.ends_with(b"\"}") {
        return None;
    }
    let (body, suffix) = line.split_at(line.len() - MAC_SUFFIX_LEN);
    let hex = suffix.strip_prefix(b",\"mac\":\"")?.strip_suffix(b"\"}")?;
    let bytes = secret::unhex(std::str::from_utf8(hex).ok()?)?;
    Some((body, bytes.try_into().ok()?))
}

/// The sequence number and `prev` of a record line.
pub fn seq_and_prev(line: &[u8]) -> Option<(u64, [u8; 32])> {
    #[derive(serde::Deserialize)]
    struct Head {
        seq: u64,
        prev: String,
    }
    let head: Head = serde_json::from_slice(line).ok()?;
    let prev = secret::unhex(&head.prev)?.try_into().ok()?;
    Some((head.seq, prev))
}

#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    ms: i64,
    time: String,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: String,
}

/// One record's line (with its `\n`) and its MAC.
fn encode(
    key: &hmac::Key,
    seq: u64,
    prev: &[u8; 32],
    event: &AuditEvent,
) -> Result<(Vec<u8>, [u8; 32]), AuditError> {
    let now = jiff::Timestamp::now();
    let mut line = serde_json::to_vec(&Body {
        seq,
        ms: now.as_millisecond(),
        time: format!("{now:.3}"),
        event,
        prev: secret::hex(prev),
    })
    .map_err(|e| AuditError::Invalid(e.to_string()))?;
    line.pop(); // the closing brace
    let tag = hmac::sign(key, &line);
    let mac: [u8; 32] = tag
        .as_ref()
        .try_into()
        .map_err(|_| AuditError::Invalid("HMAC length".into()))?;
    line.extend_from_slice(b",\"mac\":\"");
    line.extend_from_slice(secret::hex(&mac).as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, mac))
}

/// The file being appended to, as this process last left it.
struct Tail {
    file: File,
    path: PathBuf,
    number: u32,
    size: u64,
    seq: u64,
    mac: [u8; 32],
}

struct Inner {
    dir: PathBuf,
    key: hmac::Key,
    rotate_bytes: u64,
    lock: File,
    tail: Mutex<Option<Tail>>,
}

/// The audit trail in `DATA_DIR/audit/` (see the module docs).
#[derive(Clone)]
pub struct FileAuditSink {
    inner: Arc<Inner>,
}

impl FileAuditSink {
    /// The trail of `data_dir`, rotating files past `rotate_bytes`; creates
    /// `audit/` and the key when missing.
    pub fn open(data_dir: &Path, rotate_bytes: u64) -> Result<Self, AuditError> {
        let key = load_or_create_key(data_dir)?;
        let dir = log_dir(data_dir);
        fs::create_dir_all(&dir).map_err(|e| AuditError::io(&dir, e))?;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| AuditError::io(&lock_path, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                key,
                rotate_bytes: rotate_bytes.max(1),
                lock,
                tail: Mutex::new(None),
            }),
        })
    }

    /// `DATA_DIR/audit/`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// [`AuditSink::append`] without the runtime (the CLI, tests).
    pub fn append_blocking(
        &self,
        events: &[AuditEvent],
        sync: bool,
    ) -> Result<Vec<u64>, AuditError> {
        self.inner.append(events, sync)
    }
}

/// An exclusive `flock`, released on drop.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(file: &'a File) -> std::io::Result<Self> {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            Ok(Self(file))
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Where the last `\n` before `before` is, reading backwards.
fn rfind_newline(file: &File, before: u64) -> std::io::Result<Option<u64>> {
    let mut end = before;
    let mut buffer = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buffer.len() as u64);
        let chunk = &mut buffer[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

/// The length of `file` up to its last complete line, and that line.
fn last_line(file: &File, len: u64) -> std::io::Result<(u64, Option<Vec<u8>>)> {
    let Some(newline) = rfind_newline(file, len)? else {
        return Ok((0, None));
    };
    let start = rfind_newline(file, newline)?.map_or(0, |p| p + 1);
    let mut line = vec![0u8; (newline - start) as usize];
    file.read_exact_at(&mut line, start)?;
    Ok((newline + 1, Some(line)))
}

impl Inner {
    fn open_append(&self, path: &Path) -> Result<File, AuditError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| AuditError::io(path, e))
    }

    fn sync_dir(&self) {
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
    }

    /// The chain's end as it is on disk: the newest file (a torn last line,
    /// a write cut short, is cut off), and the last record, looked for in
    /// older files when the newest is empty.
    fn reload(&self) -> Result<Tail, AuditError> {
        let files = log_files(&self.dir)?;
        let Some((number, path)) = files.last().cloned() else {
            let path = self.dir.join(file_name(1));
            let file = self.open_append(&path)?;
            self.sync_dir();
            return Ok(Tail {
                file,
                path,
                number: 1,
                size: 0,
                seq: 0,
                mac: ZERO_MAC,
            });
        };
        let file = self.open_append(&path)?;
        let len = file.metadata().map_err(|e| AuditError::io(&path, e))?.len();
        let (size, mut last) = last_line(&file, len).map_err(|e| AuditError::io(&path, e))?;
        if size != len {
            tracing::warn!(file = %path.display(), bytes = len - size, "audit trail: cutting off an incomplete last line");
            file.set_len(size).map_err(|e| AuditError::io(&path, e))?;
        }
        for (_, older) in files.iter().rev().skip(1) {
            if last.is_some() {
                break;
            }
            let old = File::open(older).map_err(|e| AuditError::io(older, e))?;
            let len = old.metadata().map_err(|e| AuditError::io(older, e))?.len();
            last = last_line(&old, len)
                .map_err(|e| AuditError::io(older, e))?
                .1;
        }
        let (seq, mac) = match last {
            None => (0, ZERO_MAC),
            Some(line) => {
                let damaged = || {
                    AuditError::Invalid(format!(
                        "the last record of {} is damaged; run `engine audit verify`",
                        path.display()
                    ))
                };
                let (_, mac) = split_mac(&line).ok_or_else(damaged)?;
                let (seq, _) = seq_and_prev(&line).ok_or_else(damaged)?;
                (seq, mac)
            }
        };
        Ok(Tail {
            file,
            path,
            number,
            size,
            seq,
            mac,
        })
    }

    /// The tail, checked against the disk: reloaded when another process
    /// appended since (the file is longer than this one left it).
    fn current<'a>(&self, slot: &'a mut Option<Tail>) -> Result<&'a mut Tail, AuditError> {
        let fresh = match slot.take() {
            Some(tail) => match tail.file.metadata() {
                Ok(meta) if meta.len() == tail.size => tail,
                _ => self.reload()?,
            },
            None => self.reload()?,
        };
        Ok(slot.insert(fresh))
    }

    /// Closes a full file and begins the next. Looks at the directory
    /// first: another process may have begun it already.
    fn rotate(&self, slot: &mut Option<Tail>) -> Result<(), AuditError> {
        if let Some(tail) = slot.as_ref() {
            tail.file
                .sync_data()
                .map_err(|e| AuditError::io(&tail.path, e))?;
        }
        let mut tail = self.reload()?;
        if tail.size >= self.rotate_bytes {
            let number = tail.number + 1;
            let path = self.dir.join(file_name(number));
            let file = self.open_append(&path)?;
            self.sync_dir();
            tail = Tail {
                file,
                path,
                number,
                size: 0,
                seq: tail.seq,
                mac: tail.mac,
            };
        }
        *slot = Some(tail);
        Ok(())
    }

    fn append(&self, events: &[AuditEvent], sync: bool) -> Result<Vec<u64>, AuditError> {
        let mut slot = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let lock_path = self.dir.join(".lock");
        let _held = Flock::exclusive(&self.lock).map_err(|e| AuditError::io(&lock_path, e))?;
        let result = self.append_locked(&mut slot, events, sync);
        if result.is_err() {
            // Whatever the disk holds now is read again next time.
            *slot = None;
        }
        result
    }

    fn append_locked(
        &self,
        slot: &mut Option<Tail>,
        events: &[AuditEvent],
        sync: bool,
    ) -> Result<Vec<u64>, AuditError> {
        let mut seqs = Vec::with_capacity(events.len());
        self.current(slot)?;
        for event in events {
            if slot.as_ref().is_some_and(|t| t.size >= self.rotate_bytes) {
                self.rotate(slot)?;
            }
            let tail = self.current(slot)?;
            let (line, mac) = encode(&self.key, tail.seq + 1, &tail.mac, event)?;
            if let Err(error) = tail.file.write_all(&line) {
                // Leave no half record behind (ENOSPC mid-line).
                let _ = tail.file.set_len(tail.size);
                return Err(AuditError::io(&tail.path, error));
            }
            tail.size += line.len() as u64;
            tail.seq += 1;
            tail.mac = mac;
            seqs.push(tail.seq);
        }
        if sync && let Some(tail) = slot.as_ref() {
            tail.file
                .sync_data()
                .map_err(|e| AuditError::io(&tail.path, e))?;
        }
        Ok(seqs)
    }

    fn sync(&self) -> Result<(), AuditError> {
        let slot = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(tail) => tail
                .file
                .sync_data()
                .map_err(|e| AuditError::io(&tail.path, e)),
            None => Ok(()),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuditError::Invalid(format!("audit task failed: {e}")))?
}

#[async_trait]
impl AuditSink for FileAuditSink {
    async fn append(&self, events: Vec<AuditEvent>, sync: bool) -> Result<Vec<u64>, AuditError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.append(&events, sync)).await
    }

    async fn sync(&self) -> Result<(), AuditError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.sync()).await
    }

    async fn read(&self, filter: &AuditFilter) -> Result<AuditPage, AuditError> {
        let (dir, filter) = (self.inner.dir.clone(), filter.clone());
        blocking(move || super::verify::read_records(&dir, &filter)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Via};

    fn event(n: u64) -> AuditEvent {
        AuditEvent::TokenRevoked {
            actor: Actor::cli(),
            target_token_id: format!("tok_{n}"),
            target_name: "n".into(),
        }
    }

    #[test]
    fn two_writers_share_one_chain_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let a = FileAuditSink::open(dir.path(), 1000).unwrap();
        let b = FileAuditSink::open(dir.path(), 1000).unwrap();
        let mut seqs = Vec::new();
        for n in 0..20 {
            let writer = if n % 3 == 0 { &b } else { &a };
            seqs.extend(writer.append_blocking(&[event(n)], n % 5 == 0).unwrap());
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        assert!(log_files(a.dir()).unwrap().len() > 2, "rotated");
        let report = crate::audit::verify::verify_dir(dir.path(), None, false).unwrap();
        assert!(report.problem.is_none(), "{report:?}");
        assert_eq!(report.records, 20);
        let _ = Via::Cli;
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileAuditSink::open(dir.path(), 1 << 20).unwrap();
        sink.append_blocking(&[event(1)], true).unwrap();
        let path = log_files(sink.dir()).unwrap()[0].1.clone();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":2,\"ms\"").unwrap();
        let fresh = FileAuditSink::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(fresh.append_blocking(&[event(2)], true).unwrap(), vec![2]);
        let report = crate::audit::verify::verify_dir(dir.path(), None, false).unwrap();
        assert!(report.problem.is_none(), "{report:?}");
        assert_eq!(report.records, 2);
    }
}
