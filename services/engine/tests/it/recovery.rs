//! Opening after damage: a torn WAL tail, a second process.

use std::path::{Path, PathBuf};

use engine::model::TimeRange;
use engine::storage::StorageEngine;
use engine::storage::StorageError;
use engine::storage::embedded::{EmbeddedOptions, EmbeddedStore};

use crate::support::{Rng, engine_bin, open_embedded, point, samples, scan_all, sensor};

fn newest_wal(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments.pop().expect("a WAL segment")
}

/// Where the records of a WAL segment end: segments are preallocated with
/// zeros, and every record here ends with a quality of 192, so the last
/// non-zero byte ends the last record.
fn records_end(wal: &Path) -> u64 {
    let bytes = std::fs::read(wal).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |at| at as u64 + 1)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("wal")).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_opens_with_the_intact_prefix() {
    let base = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions::default(); // big head: everything stays in the WAL
    let id = sensor("torn");
    let mut rng = Rng::new(3);
    let mut ends = Vec::new(); // WAL length after each acknowledged batch
    let mut batches = Vec::new();
    {
        let store = open_embedded(base.path(), options.clone()).await;
        store
            .write(samples(&sensor("before"), [point(1, 1.0, 192)]))
            .await
            .unwrap();
        store.close().await.unwrap(); // "before" is now in blocks
    }
    let store = open_embedded(base.path(), options.clone()).await;
    let wal = newest_wal(base.path());
    let start = records_end(&wal);
    for b in 0..30i64 {
        let n = rng.range(1, 60);
        let points: Vec<_> = (0..n)
            .map(|j| point(b * 100 + j, (b * 100 + j) as f64 * 0.5, 192))
            .collect();
        store.write(samples(&id, points.clone())).await.unwrap();
        ends.push(records_end(&wal));
        batches.push(points);
    }
    drop(store); // no close: the batches live only in the WAL
    let preallocated = std::fs::read(&wal).unwrap();
    let bytes = &preallocated[..*ends.last().unwrap() as usize];

    let mut cuts: Vec<u64> = vec![0, 3, 8, start];
    for &end in &ends {
        cuts.extend([end - 1, end, end + 1, end.saturating_sub(9)]);
    }
    for _ in 0..100 {
        cuts.push(rng.range(0, bytes.len() as i64) as u64);
    }
    cuts.retain(|&c| c <= bytes.len() as u64);
    // Each cut twice: the file cut short there (a segment that was not
    // preallocated), and zeros from there on (a preallocated one, as a
    // crash leaves it).
    for (cut, zeros_after) in cuts.into_iter().flat_map(|cut| [(cut, false), (cut, true)]) {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(base.path(), copy.path());
        let mut torn = bytes[..cut as usize].to_vec();
        if zeros_after {
            torn.resize(preallocated.len(), 0);
        }
        std::fs::write(
            copy.path().join("wal").join(wal.file_name().unwrap()),
            &torn,
        )
        .unwrap();
        let store = open_embedded(copy.path(), options.clone()).await;
        let expected: Vec<_> = ends
            .iter()
            .zip(&batches)
            .filter(|&(&end, _)| end <= cut)
            .flat_map(|(_, points)| points.iter().copied())
            .collect();
        assert_eq!(
            scan_all(&*store, &id, TimeRange::ALL).await,
            expected,
            "cut at {cut}, zeros after: {zeros_after}"
        );
        assert_eq!(
            scan_all(&*store, &sensor("before"), TimeRange::ALL)
                .await
                .len(),
            1
        );
        // And the recovered store takes new writes that survive a reopen.
        store
            .write(samples(&id, [point(1_000_000, 7.0, 192)]))
            .await
            .unwrap();
        drop(store);
        let store = open_embedded(copy.path(), options.clone()).await;
        assert_eq!(
            scan_all(&*store, &id, TimeRange::ALL).await.len(),
            expected.len() + 1,
            "cut at {cut}, zeros after: {zeros_after}"
        );
    }
}

/// A damaged record that is not the torn end of the log: opening refuses,
/// names segment and offset, deletes nothing; `engine repair` keeps every
/// other record. Each record of a multi-record segment is damaged in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_damage_stops_the_open_and_repair_keeps_the_intact_records() {
    let base = tempfile::tempdir().unwrap();
    let options = EmbeddedOptions::default(); // big head: everything stays in the WAL
    let id = sensor("damaged");
    let store = open_embedded(base.path(), options.clone()).await;
    let wal = newest_wal(base.path());
    let mut starts = vec![records_end(&wal)];
    let mut batches = Vec::new();
    for b in 0..6i64 {
        let points: Vec<_> = (0..50 + b)
            .map(|j| point(b * 1000 + j, (b * 1000 + j) as f64 / 3.0, 192))
            .collect();
        store.write(samples(&id, points.clone())).await.unwrap();
        starts.push(records_end(&wal));
        batches.push(points);
    }
    drop(store); // no close: the batches live only in the WAL
    let bytes = std::fs::read(&wal).unwrap();
    let segment_name = wal.file_name().unwrap().to_owned();

    for damaged in 0..batches.len() {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(base.path(), copy.path());
        let copied = copy.path().join("wal").join(&segment_name);
        let mut broken = bytes.clone();
        let (start, end) = (starts[damaged] as usize, starts[damaged + 1] as usize);
        broken[(start + end) / 2] ^= 0x40;
        std::fs::write(&copied, &broken).unwrap();

        let path = copy.path().to_owned();
        let opened = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
            .await
            .unwrap();
        let expected: Vec<_> = if damaged == batches.len() - 1 {
            // The last record: as a torn write would leave it. Dropped, as
            // an unacknowledged write.
            let store = opened.expect("a damaged last record reads as a torn tail");
            assert_eq!(
                scan_all(&store, &id, TimeRange::ALL).await,
                batches[..damaged].concat()
            );
            continue;
        } else {
            match opened {
                Err(StorageError::Corrupt(message)) => {
                    assert!(
                        message.contains(&*segment_name.to_string_lossy())
                            && message.contains(&format!("at byte {start}"))
                            && message.contains("engine repair"),
                        "record {damaged}: {message}"
                    );
                }
                Err(other) => panic!("record {damaged}: {other}"),
                Ok(_) => panic!("record {damaged}: the damaged WAL opened"),
            }
            assert_eq!(
                std::fs::read(&copied).unwrap(),
                broken,
                "nothing is deleted or changed"
            );
            batches
                .iter()
                .enumerate()
                .filter(|&(b, _)| b != damaged)
                .flat_map(|(_, points)| points.iter().copied())
                .collect()
        };

        let output = std::process::Command::new(engine_bin())
            .args(["repair", "--data-dir"])
            .arg(copy.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(
            stderr.contains("kept 5 intact records")
                && stderr.contains(&format!("bytes {start}..{end}")),
            "{stderr}"
        );
        let moved: Vec<_> = std::fs::read_dir(copy.path().join("wal").join("damaged"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(moved.len(), 1);
        assert_eq!(
            std::fs::read(&moved[0]).unwrap(),
            broken,
            "the original is kept"
        );
        let store = open_embedded(copy.path(), options.clone()).await;
        assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_opener_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_embedded(dir.path(), EmbeddedOptions::default()).await;
    store
        .write(samples(&sensor("x"), [point(1, 1.0, 192)]))
        .await
        .unwrap();

    let path = dir.path().to_owned();
    let second = tokio::task::spawn_blocking(move || EmbeddedStore::open(&path))
        .await
        .unwrap();
    assert!(matches!(second, Err(StorageError::Locked { .. })));

    let output = std::process::Command::new(engine_bin())
        .args(["sensors", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is in use by another process"), "{stderr}");

    // The first store is unharmed.
    assert_eq!(
        scan_all(&*store, &sensor("x"), TimeRange::ALL).await.len(),
        1
    );
}
