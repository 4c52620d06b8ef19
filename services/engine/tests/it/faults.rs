//! Injected I/O faults under the WAL and under redb: for every N, the Nth
//! write, fsync, read or resize of a workload fails (EIO, ENOSPC, or a short
//! write). Whatever N: no acknowledged write is lost, no write that got an
//! error shows up later, a failed fsync makes the store refuse writes (and
//! report it) instead of carrying on, and reopening recovers the
//! acknowledged prefix.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use engine::model::{Point, PointBatch, SensorId, TimeRange};
use engine::storage::embedded::io::{Fault, FaultInjector, Faults, IoOp, IoTarget};
use engine::storage::embedded::{EmbeddedOptions, EmbeddedStore};
use engine::storage::{StorageEngine, StorageError, StoreHealth};

use crate::support::{point, samples, scan_all, sensor};

/// Fails the `fail_at`th operation of one kind (1-based; 0 never), and
/// counts them all.
#[derive(Debug)]
struct FailNth {
    target: IoTarget,
    op: IoOp,
    fail_at: u64,
    error: FaultKind,
    seen: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Eio,
    NoSpace,
    ShortWrite,
}

impl FaultInjector for FailNth {
    fn before(&self, target: IoTarget, op: IoOp, len: usize) -> Option<Fault> {
        if target != self.target || op != self.op {
            return None;
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.fail_at {
            return None;
        }
        Some(match self.error {
            FaultKind::Eio => Fault::Fail(std::io::Error::from_raw_os_error(libc_eio())),
            FaultKind::NoSpace => Fault::Fail(std::io::Error::from_raw_os_error(28)),
            FaultKind::ShortWrite => Fault::Short(len / 2),
        })
    }
}

fn libc_eio() -> i32 {
    5
}

fn options(faults: Faults) -> EmbeddedOptions {
    EmbeddedOptions {
        // Folds every few writes, so blocks are written all along.
        head_flush_points: 300,
        faults,
        ..EmbeddedOptions::default()
    }
}

/// Write `w` puts 50 points into one of three sensors, each value unique to
/// the write, so a lost or a ghost write is visible.
fn write_points(w: i64) -> (SensorId, Vec<Point>) {
    let id = sensor(&format!("faults/{}", w % 3));
    let points = (0..50)
        .map(|j| point(w * 37 + j, (w * 1000 + j) as f64 + 0.5, 192))
        .collect();
    (id, points)
}

const WRITES: i64 = 30;

fn import_points() -> Vec<Point> {
    (0..200).map(|i| point(i, i as f64 * 0.25, 64)).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write(i64),
    Import,
}

/// What the workload saw.
struct Outcome {
    /// The operation refused first with `StorageError::Failed`, if any.
    fatal_in_flight: Option<Op>,
    acknowledged: Vec<i64>,
    refused: Vec<(i64, StorageError)>,
    /// Whether the import was acknowledged (`None`: not reached).
    imported: Option<bool>,
    health_after: StoreHealth,
}

/// Opens a store, retrying while the directory reads as locked: other
/// tests spawn processes, and between fork and exec a child holds copies of
/// our descriptors, the lock's among them.
async fn open_retrying(
    dir: &std::path::Path,
    options: EmbeddedOptions,
) -> Result<EmbeddedStore, StorageError> {
    for _ in 0..100 {
        let (dir, options) = (dir.to_owned(), options.clone());
        match tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, options))
            .await
            .unwrap()
        {
            Err(StorageError::Locked { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            result => return result,
        }
    }
    Err(StorageError::Locked {
        path: dir.display().to_string(),
    })
}

/// Writes, scans and closes, recording which writes were acknowledged.
async fn workload(dir: &std::path::Path, faults: Faults) -> Result<Outcome, StorageError> {
    let options = options(faults);
    let dir_owned = dir.to_owned();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir_owned, options))
        .await
        .unwrap()?;
    let mut outcome = Outcome {
        fatal_in_flight: None,
        acknowledged: Vec::new(),
        refused: Vec::new(),
        imported: None,
        health_after: StoreHealth::Ok,
    };
    for w in 0..WRITES {
        let (id, points) = write_points(w);
        match store.write(samples(&id, points)).await {
            Ok(()) => outcome.acknowledged.push(w),
            Err(error) => {
                if matches!(error, StorageError::Failed(_)) && outcome.fatal_in_flight.is_none() {
                    outcome.fatal_in_flight = Some(Op::Write(w));
                }
                outcome.refused.push((w, error));
            }
        }
        if w == WRITES / 2 {
            // An import in the middle: staged, then committed into blocks.
            let batch: PointBatch = import_points().into_iter().collect();
            let batches = futures_util::stream::iter([Ok(batch)]);
            match store
                .import(
                    &sensor("faults/import"),
                    futures_util::StreamExt::boxed(batches),
                )
                .await
            {
                Ok(_) => outcome.imported = Some(true),
                Err(error) => {
                    if matches!(error, StorageError::Failed(_)) && outcome.fatal_in_flight.is_none()
                    {
                        outcome.fatal_in_flight = Some(Op::Import);
                    }
                    outcome.imported = Some(false);
                }
            }
        }
        if w % 7 == 6 {
            // Reads may fail under a read fault; they must not panic.
            let mut scan = store.scan(&id, TimeRange::ALL);
            while let Some(batch) = futures_util::StreamExt::next(&mut scan).await {
                if batch.is_err() {
                    break;
                }
            }
        }
    }
    outcome.health_after = store.health();
    let _ = store.close().await;
    Ok(outcome)
}

/// Reopens without faults and checks the promises against `outcome`.
async fn check_recovery(dir: &std::path::Path, outcome: &Outcome, case: &str) {
    let store = open_retrying(dir, options(Faults::default()))
        .await
        .unwrap_or_else(|e| panic!("{case}: reopening failed: {e}"));
    let mut stored: HashMap<(String, i64), f64> = HashMap::new();
    for s in 0..3 {
        let id = sensor(&format!("faults/{s}"));
        for p in scan_all(&store, &id, TimeRange::ALL).await {
            stored.insert((id.to_string(), p.timestamp_ms), p.value);
        }
    }
    let present = |w: i64| {
        let (id, points) = write_points(w);
        points
            .iter()
            .filter(|p| stored.get(&(id.to_string(), p.timestamp_ms)) == Some(&p.value))
            .count()
    };
    for &w in &outcome.acknowledged {
        assert_eq!(present(w), 50, "{case}: acknowledged write {w} lost");
    }
    // The one operation in flight when an fsync failed has an unknown
    // outcome (as in any database); every other refused one is absent.
    let in_flight_unknown = outcome.fatal_in_flight;
    for (w, error) in &outcome.refused {
        if in_flight_unknown == Some(Op::Write(*w)) {
            let n = present(*w);
            assert!(n == 0 || n == 50, "{case}: write {w} half stored ({n})");
            continue;
        }
        assert_eq!(
            present(*w),
            0,
            "{case}: refused write {w} ({error}) is visible"
        );
    }
    let imported = scan_all(&store, &sensor("faults/import"), TimeRange::ALL).await;
    match outcome.imported {
        Some(true) => assert_eq!(imported, import_points(), "{case}: the import"),
        Some(false) if in_flight_unknown == Some(Op::Import) => assert!(
            imported.is_empty() || imported == import_points(),
            "{case}: the import is half stored"
        ),
        Some(false) => assert!(imported.is_empty(), "{case}: a refused import is visible"),
        None => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_fault_keeps_the_promises() {
    // First count the operations of each kind in a clean run.
    let mut counts: Vec<((IoTarget, IoOp), u64)> = Vec::new();
    for target in [IoTarget::Wal, IoTarget::Blocks, IoTarget::Staging] {
        for op in [IoOp::Write, IoOp::Sync, IoOp::Read, IoOp::SetLen] {
            let dir = tempfile::tempdir().unwrap();
            let counter = Arc::new(FailNth {
                target,
                op,
                fail_at: 0,
                error: FaultKind::Eio,
                seen: AtomicU64::new(0),
            });
            let outcome = workload(dir.path(), Faults::new(counter.clone()))
                .await
                .unwrap();
            assert_eq!(outcome.acknowledged.len() as i64, WRITES);
            counts.push(((target, op), counter.seen.load(Ordering::SeqCst)));
        }
    }
    let wal_writes = counts
        .iter()
        .find(|(k, _)| *k == (IoTarget::Wal, IoOp::Write))
        .unwrap()
        .1;
    assert!(wal_writes >= WRITES as u64, "{counts:?}");

    let exhaustive = std::env::var("ENGINE_FAULTS_EXHAUSTIVE").is_ok_and(|v| v == "1");
    let mut injected = 0u64;
    for &((target, op), count) in &counts {
        let kinds: &[FaultKind] = match op {
            IoOp::Write => &[FaultKind::Eio, FaultKind::NoSpace, FaultKind::ShortWrite],
            IoOp::Sync => &[FaultKind::Eio],
            IoOp::Read | IoOp::SetLen => &[FaultKind::Eio, FaultKind::NoSpace],
        };
        for n in 1..=count {
            for (k, &kind) in kinds.iter().enumerate() {
                // In the ordinary suite, about 40 N per kind of operation
                // for the first kind of fault and a third of those for the
                // others; every N of every kind with
                // ENGINE_FAULTS_EXHAUSTIVE=1.
                let stride = if exhaustive {
                    1
                } else {
                    (count / 40).max(1) * if k > 0 { 3 } else { 1 }
                };
                if n % stride != 0 {
                    continue;
                }
                let case = format!("{target:?} {op:?} #{n} {kind:?}");
                let dir = tempfile::tempdir().unwrap();
                let injector = Arc::new(FailNth {
                    target,
                    op,
                    fail_at: n,
                    error: kind,
                    seen: AtomicU64::new(0),
                });
                let outcome = match workload(dir.path(), Faults::new(injector)).await {
                    Ok(outcome) => outcome,
                    // The fault hit the open itself: nothing was acknowledged.
                    Err(_) => Outcome {
                        fatal_in_flight: None,
                        acknowledged: Vec::new(),
                        refused: Vec::new(),
                        imported: None,
                        health_after: StoreHealth::Ok,
                    },
                };
                injected += 1;
                let fatal = op == IoOp::Sync || kind == FaultKind::Eio;
                if fatal && !outcome.refused.is_empty() {
                    // After a fatal fault the store stops taking writes for
                    // good, and says so.
                    let first = outcome.refused[0].0;
                    assert!(
                        outcome.acknowledged.iter().all(|&w| w < first),
                        "{case}: a write was acknowledged after a fatal fault"
                    );
                    assert!(
                        matches!(outcome.health_after, StoreHealth::Failed(_)),
                        "{case}: health {:?}",
                        outcome.health_after
                    );
                }
                if !fatal {
                    // A full disk costs at most the write it hit.
                    assert!(
                        outcome.refused.len() <= 1 && outcome.imported != Some(false)
                            || outcome.refused.is_empty(),
                        "{case}: {} writes refused",
                        outcome.refused.len()
                    );
                    assert!(
                        outcome
                            .refused
                            .iter()
                            .all(|(_, e)| matches!(e, StorageError::Full(_))),
                        "{case}: {:?}",
                        outcome
                            .refused
                            .iter()
                            .map(|(_, e)| e.to_string())
                            .collect::<Vec<_>>()
                    );
                }
                check_recovery(dir.path(), &outcome, &case).await;
            }
        }
    }
    eprintln!("injected {injected} faults over {counts:?}");
    assert!(injected > 100, "only {injected} faults injected");
}
