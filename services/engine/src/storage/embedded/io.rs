//! The embedded store's file I/O: how a failure is classified (a full disk
//! is recoverable, a failed fsync is not), the redb storage backend that
//! records which kind of failure redb hit, and the fault injector tests use
//! to fail the Nth write, fsync or read.
//!
//! Why classify: after a failed `fsync` the kernel may have dropped the dirty
//! pages, so what is on disk is unknown and the only honest answer is to
//! refuse writes until a restart has recovered from the log (PostgreSQL's
//! "fsyncgate"). A write refused for lack of space left nothing behind that
//! we cannot undo, so the store keeps serving and takes writes again when
//! there is room.

use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redb::StorageBackend;
use redb::backends::FileBackend;

/// Which file an operation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoTarget {
    /// A write-ahead log segment.
    Wal,
    /// `blocks.redb`.
    Blocks,
    /// An import's staging file.
    Staging,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    Write,
    Sync,
    Read,
    SetLen,
}

/// What an injected fault does to one operation.
#[derive(Debug)]
pub enum Fault {
    /// The operation fails with this error before touching the file.
    Fail(io::Error),
    /// A write stores only this many bytes, then fails with ENOSPC (a short
    /// write, as a filling disk produces).
    Short(usize),
}

/// Decides, before each file operation, whether it fails. Tests implement
/// it to fail the Nth write, fsync or read; production has none.
pub trait FaultInjector: Send + Sync + fmt::Debug + 'static {
    fn before(&self, target: IoTarget, op: IoOp, len: usize) -> Option<Fault>;
}

/// The injector of a store, if any. Cheap to clone.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<dyn FaultInjector>>);

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(injector) => injector.fmt(f),
            None => f.write_str("no faults"),
        }
    }
}

impl Faults {
    pub fn new(injector: Arc<dyn FaultInjector>) -> Self {
        Self(Some(injector))
    }

    fn before(&self, target: IoTarget, op: IoOp, len: usize) -> Option<Fault> {
        self.0.as_ref()?.before(target, op, len)
    }

    /// Fails a non-write operation if the injector says so.
    pub fn check(&self, target: IoTarget, op: IoOp) -> io::Result<()> {
        match self.before(target, op, 0) {
            None => Ok(()),
            Some(Fault::Fail(error)) => Err(error),
            Some(Fault::Short(_)) => Err(disk_full_error()),
        }
    }

    /// `file.write_all_at(data, offset)`, unless a fault intervenes.
    pub fn write_at(
        &self,
        target: IoTarget,
        file: &File,
        data: &[u8],
        offset: u64,
    ) -> io::Result<()> {
        match self.before(target, IoOp::Write, data.len()) {
            None => file.write_all_at(data, offset),
            Some(Fault::Fail(error)) => Err(error),
            Some(Fault::Short(stored)) => {
                let stored = stored.min(data.len());
                file.write_all_at(&data[..stored], offset)?;
                Err(disk_full_error())
            }
        }
    }

    /// `file.sync_data()`, unless a fault intervenes.
    pub fn sync(&self, target: IoTarget, file: &File) -> io::Result<()> {
        self.check(target, IoOp::Sync)?;
        file.sync_data()
    }

    /// `file.set_len(len)`, unless a fault intervenes.
    pub fn set_len(&self, target: IoTarget, file: &File, len: u64) -> io::Result<()> {
        self.check(target, IoOp::SetLen)?;
        file.set_len(len)
    }
}

/// ENOSPC, as the kernel reports a full disk.
pub fn disk_full_error() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// Whether an error means "no space": the disk (ENOSPC) or a quota (EDQUOT)
/// is full. Anything else (EIO above all) is not recoverable in place.
pub fn is_disk_full(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// What went wrong under redb, as redb itself only reports "an I/O error"
/// and then refuses every later operation until the database is reopened.
#[derive(Debug, Default)]
pub struct BackendFailures {
    /// A write or resize failed for lack of space: reopening the database
    /// recovers it (its last commit is intact; the WAL still holds the rest).
    disk_full: AtomicBool,
    /// An fsync, a read, or a write for any other reason failed: what redb
    /// has on disk is unknown.
    fatal: AtomicBool,
}

impl BackendFailures {
    /// Forgets a recoverable failure, after a reopen.
    pub fn clear_disk_full(&self) {
        self.disk_full.store(false, Ordering::Release);
    }

    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Acquire)
    }

    pub fn fatal(&self) -> bool {
        self.fatal.load(Ordering::Acquire)
    }

    fn record(&self, op: IoOp, error: &io::Error) {
        if op != IoOp::Sync && is_disk_full(error) {
            self.disk_full.store(true, Ordering::Release);
        } else {
            self.fatal.store(true, Ordering::Release);
        }
    }
}

/// redb's file backend, with the failure kind recorded and faults injected.
#[derive(Debug)]
pub struct GuardedBackend {
    inner: FileBackend,
    /// A second handle of the same file for writes, so a fault can make a
    /// short write (store a prefix) as a filling disk does.
    file: File,
    faults: Faults,
    failures: Arc<BackendFailures>,
    /// The span of the file written since the last sync (see
    /// [`GuardedBackend::write_back_paced`]).
    dirty: Mutex<Option<(u64, u64)>>,
}

/// Written back at a time before a sync of the blocks file.
const WRITE_BACK_WINDOW: u64 = 1 << 20;

impl GuardedBackend {
    pub fn new(file: File, faults: Faults, failures: Arc<BackendFailures>) -> io::Result<Self> {
        let writer = file.try_clone()?;
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Self {
            inner,
            file: writer,
            faults,
            failures,
            dirty: Mutex::new(None),
        })
    }

    /// Writes the pages dirtied since the last sync back to the disk a
    /// window at a time, each waited for, before the sync itself. A fold
    /// commits megabytes at once; flushed in one go they sit in front of
    /// every WAL `fdatasync` issued meanwhile (the device flushes its whole
    /// cache). In windows, a WAL sync waits for at most one. Its effect on
    /// the write-latency bench is not measured apart from the WAL changes
    /// (BENCHMARKS.md). PostgreSQL spreads its checkpoint
    /// writes for the same reason (`checkpoint_flush_after`). Best effort:
    /// the sync that follows is what makes the data durable.
    fn write_back_paced(&self) {
        let span = self.dirty.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((start, end)) = span else { return };
        if end - start <= WRITE_BACK_WINDOW {
            return;
        }
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let mut at = start;
        while at < end {
            let len = WRITE_BACK_WINDOW.min(end - at);
            // SAFETY: a plain syscall on a file descriptor this value owns.
            let done = unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), at as i64, len as i64, flags)
            };
            if done != 0 {
                return;
            }
            at += len;
        }
    }

    fn noted<T>(&self, op: IoOp, result: io::Result<T>) -> io::Result<T> {
        if let Err(error) = &result {
            self.failures.record(op, error);
        }
        result
    }
}

impl StorageBackend for GuardedBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let result = self
            .faults
            .check(IoTarget::Blocks, IoOp::Read)
            .and_then(|()| self.inner.read(offset, out));
        self.noted(IoOp::Read, result)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let result = self
            .faults
            .check(IoTarget::Blocks, IoOp::SetLen)
            .and_then(|()| self.inner.set_len(len));
        self.noted(IoOp::SetLen, result)
    }

    fn sync_data(&self) -> io::Result<()> {
        let result = self
            .faults
            .check(IoTarget::Blocks, IoOp::Sync)
            .and_then(|()| {
                self.write_back_paced();
                self.inner.sync_data()
            });
        self.noted(IoOp::Sync, result)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            let end = offset + data.len() as u64;
            *dirty = Some(dirty.map_or((offset, end), |(s, e)| (s.min(offset), e.max(end))));
        }
        let result = self
            .faults
            .write_at(IoTarget::Blocks, &self.file, data, offset);
        self.noted(IoOp::Write, result)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// Free bytes for an unprivileged writer on the file system holding `path`
/// (`statvfs`), or `None` when it cannot be asked.
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid
    // out-pointer for the duration of the call.
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (result == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Lowers the calling thread's CPU priority by `by` nice steps (Linux: a
/// thread's own nice value, at most 19; elsewhere nothing). For background
/// work that may take its time (a backup's reading and compressing): it
/// then yields the CPU to writers and scans when they want it, and still
/// takes all that is idle. Not for the fold: a fold that falls behind
/// slows writes down (backpressure), which measured worse under load. Lowering needs no privilege but cannot be undone by an
/// unprivileged process, so only threads of our own that end with the work
/// call it, never a pool thread.
pub fn lower_thread_priority(by: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid, getpriority and setpriority take plain integers
        // and touch no memory of ours.
        let result = unsafe {
            let tid = libc::gettid() as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS as _, tid);
            libc::setpriority(libc::PRIO_PROCESS as _, tid, (now + by).min(19))
        };
        if result != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "could not lower the thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = by;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_no_space_errors_are_recoverable() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_disk_full(&io::Error::other("x")));
        let failures = BackendFailures::default();
        failures.record(IoOp::Sync, &disk_full_error());
        assert!(
            failures.fatal(),
            "a failed fsync is fatal whatever errno says"
        );
        let failures = BackendFailures::default();
        failures.record(IoOp::Write, &disk_full_error());
        assert!(failures.disk_full() && !failures.fatal());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn lowered_priority_is_the_threads_own() {
        // SAFETY: plain integers in and out.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS as _, libc::gettid() as _) };
        let before = nice();
        let lowered = std::thread::spawn(move || {
            lower_thread_priority(7);
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + 7).min(19));
        assert_eq!(nice(), before, "other threads keep theirs");
    }

    #[test]
    fn free_bytes_reads_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some());
        assert!(free_bytes(&dir.path().join("missing")).is_none());
    }
}
