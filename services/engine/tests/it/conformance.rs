//! The backend conformance suite: the semantics every `StorageEngine` keeps,
//! written against the trait alone and run against every implementation.
//!
//! To add a backend, implement [`Backend`] and add a `conformance_tests!`
//! line at the bottom.

use std::collections::BTreeMap;

use async_trait::async_trait;
use engine::model::{
    MAX_STREAM_SEQ, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, Point, PointBatch, Sample, TimeRange,
};
use engine::storage::embedded::EmbeddedOptions;
use engine::storage::{SharedStorage, StorageError};
use futures_util::StreamExt;

use crate::support::{Rng, as_shared, open_embedded, point, samples, scan_all, sensor};

/// A storage backend under test: `open` gives a store over the same data
/// every time it is called (after the previous one was closed and dropped).
#[async_trait]
pub trait Backend: Send {
    async fn open(&mut self) -> SharedStorage;
}

/// The embedded store in a temporary directory.
pub struct Embedded {
    dir: tempfile::TempDir,
    options: EmbeddedOptions,
}

impl Embedded {
    pub fn with_head_limit(head_flush_points: usize) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            options: EmbeddedOptions {
                head_flush_points,
                ..EmbeddedOptions::default()
            },
        }
    }
}

#[async_trait]
impl Backend for Embedded {
    async fn open(&mut self) -> SharedStorage {
        as_shared(open_embedded(self.dir.path(), self.options.clone()).await)
    }
}

async fn reopen(backend: &mut impl Backend, store: SharedStorage) -> SharedStorage {
    store.close().await.expect("close");
    drop(store);
    backend.open().await
}

fn bits(points: &[Point]) -> Vec<(i64, u64, u8)> {
    points
        .iter()
        .map(|p| (p.timestamp_ms, p.value.to_bits(), p.quality))
        .collect()
}

pub async fn empty_store_has_nothing(mut backend: impl Backend) {
    let store = backend.open().await;
    assert!(store.sensors().await.unwrap().is_empty());
    assert_eq!(store.sensor(&sensor("nope")).await.unwrap(), None);
    assert!(
        scan_all(&*store, &sensor("nope"), TimeRange::ALL)
            .await
            .is_empty()
    );
    store.write(Vec::new()).await.unwrap();
    assert!(store.sensors().await.unwrap().is_empty());
}

pub async fn points_come_back_sorted_bit_exact_and_persist(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("Kessel Ü1/Temperatur");
    let values = [
        -0.0,
        0.0,
        f64::from_bits(1),
        f64::NAN,
        f64::from_bits(0x7ff8_dead_beef_0001),
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        0.1 + 0.2,
    ];
    // Written in reverse order, with negative (pre-1970) timestamps.
    let written: Vec<Point> = values
        .iter()
        .enumerate()
        .rev()
        .map(|(i, &v)| point(i as i64 * 1000 - 4000, v, (i * 30) as u8))
        .collect();
    store.write(samples(&id, written.clone())).await.unwrap();
    let mut expected = written;
    expected.sort_by_key(|p| p.timestamp_ms);
    let read = scan_all(&*store, &id, TimeRange::ALL).await;
    assert_eq!(bits(&read), bits(&expected));

    let store = reopen(&mut backend, store).await;
    let read = scan_all(&*store, &id, TimeRange::ALL).await;
    assert_eq!(bits(&read), bits(&expected), "after reopening");
    let info = store.sensor(&id).await.unwrap().unwrap();
    assert_eq!(
        (info.count, info.first_timestamp_ms, info.last_timestamp_ms),
        (9, -4000, 4000)
    );
}

pub async fn later_write_of_a_timestamp_wins(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("replay");
    let first: Vec<Point> = (0..5000).map(|i| point(i, 1.0, 192)).collect();
    store.write(samples(&id, first.clone())).await.unwrap();
    store.write(samples(&id, first.clone())).await.unwrap(); // a replay
    let store = reopen(&mut backend, store).await;
    // Overwrite every 7th point, one batch with a duplicate inside it.
    let mut second: Vec<Point> = (0..5000).step_by(7).map(|i| point(i, 2.0, 64)).collect();
    second.push(point(14, 3.0, 0));
    store.write(samples(&id, second)).await.unwrap();
    let read = scan_all(&*store, &id, TimeRange::ALL).await;
    assert_eq!(read.len(), 5000);
    for p in &read {
        let expected = match p.timestamp_ms {
            14 => point(14, 3.0, 0),
            ts if ts % 7 == 0 => point(ts, 2.0, 64),
            ts => point(ts, 1.0, 192),
        };
        assert_eq!(*p, expected);
    }
    assert_eq!(store.sensor(&id).await.unwrap().unwrap().count, 5000);
    let store = reopen(&mut backend, store).await;
    assert_eq!(store.sensor(&id).await.unwrap().unwrap().count, 5000);
    assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await, read);
}

/// A point from a stream carries its stream sequence: a message redelivered
/// after a newer one for the same point was stored changes nothing, in the
/// head, in blocks and after reopening; a direct write outranks every stream
/// point.
pub async fn stream_sequences_order_writes_of_a_point(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("plant/seq");
    let at = |seq: u64, ts: i64, value: f64| Sample {
        sensor_id: id.clone(),
        point: point(ts, value, 192),
        seq: Some(seq),
    };
    let values = |points: Vec<Point>| points.iter().map(|p| p.value).collect::<Vec<f64>>();
    store
        .write(vec![at(10, 1, 10.0), at(11, 2, 11.0), at(12, 3, 12.0)])
        .await
        .unwrap();
    // A redelivery of seq 9 (older) and 11 (the same message again).
    store
        .write(vec![at(9, 1, 9.0), at(11, 2, 11.0), at(9, 4, 9.0)])
        .await
        .unwrap();
    // One batch holding a newer and an older message for one point.
    store
        .write(vec![at(14, 5, 14.0), at(13, 5, 13.0)])
        .await
        .unwrap();
    let expected = vec![10.0, 11.0, 12.0, 9.0, 14.0];
    assert_eq!(
        values(scan_all(&*store, &id, TimeRange::ALL).await),
        expected
    );

    // Now in blocks: stale messages still lose, newer ones still win.
    let store = reopen(&mut backend, store).await;
    store
        .write(vec![at(8, 1, 8.0), at(15, 2, 15.0), at(12, 3, -12.0)])
        .await
        .unwrap();
    let expected = vec![10.0, 15.0, -12.0, 9.0, 14.0];
    assert_eq!(
        values(scan_all(&*store, &id, TimeRange::ALL).await),
        expected
    );
    let store = reopen(&mut backend, store).await;
    assert_eq!(
        values(scan_all(&*store, &id, TimeRange::ALL).await),
        expected
    );

    // A direct write outranks every stream sequence, before and after a
    // reopen; later direct writes replace it.
    store
        .write(samples(&id, [point(1, -1.0, 0), point(3, -3.0, 0)]))
        .await
        .unwrap();
    store
        .write(vec![at(MAX_STREAM_SEQ, 1, 99.0), at(16, 6, 16.0)])
        .await
        .unwrap();
    let store = reopen(&mut backend, store).await;
    store.write(vec![at(17, 3, 17.0)]).await.unwrap();
    store
        .write(samples(&id, [point(3, -33.0, 0)]))
        .await
        .unwrap();
    let expected = vec![-1.0, 15.0, -33.0, 9.0, 14.0, 16.0];
    assert_eq!(
        values(scan_all(&*store, &id, TimeRange::ALL).await),
        expected
    );
    assert_eq!(store.sensor(&id).await.unwrap().unwrap().count, 6);

    // A sequence outside 1..=MAX_STREAM_SEQ is refused, and nothing of the
    // write is stored.
    for seq in [0, MAX_STREAM_SEQ + 1] {
        let error = store
            .write(vec![at(20, 7, 1.0), at(seq, 8, 1.0)])
            .await
            .unwrap_err();
        assert!(matches!(error, StorageError::InvalidInput(_)), "{error}");
    }
    assert_eq!(store.sensor(&id).await.unwrap().unwrap().count, 6);
}

/// An import takes effect when it commits: writes acknowledged before its
/// commit lose to it, writes after win, wherever each of them is stored.
pub async fn imports_and_writes_are_ordered_by_commit(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("ordered");
    store
        .write(samples(&id, (0..100).map(|i| point(i, 1.0, 192))))
        .await
        .unwrap();
    let store = reopen(&mut backend, store).await; // the first write in blocks
    store
        .write(samples(&id, (100..200).map(|i| point(i, 1.0, 192))))
        .await
        .unwrap(); // the second in the head
    let batches: Vec<Result<PointBatch, StorageError>> =
        vec![Ok((50..150).map(|i| point(i, 2.0, 64)).collect())];
    store
        .import(&id, futures_util::stream::iter(batches).boxed())
        .await
        .unwrap();
    store
        .write(samples(&id, [point(60, 3.0, 0), point(120, 3.0, 0)]))
        .await
        .unwrap();
    let check = |read: Vec<Point>| {
        assert_eq!(read.len(), 200);
        for p in read {
            let expected = match p.timestamp_ms {
                60 | 120 => 3.0,
                50..150 => 2.0,
                _ => 1.0,
            };
            assert_eq!(p.value, expected, "at {}", p.timestamp_ms);
        }
    };
    check(scan_all(&*store, &id, TimeRange::ALL).await);
    let store = reopen(&mut backend, store).await;
    check(scan_all(&*store, &id, TimeRange::ALL).await);
}

/// `-0.0` keeps its sign in a run of plain decimals, where a store might
/// pick a decimal encoding (no NaN around to force another), across every
/// way a point is stored.
pub async fn negative_zero_keeps_its_sign_among_decimals(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("zero");
    let written: Vec<Point> = (0..5000)
        .map(|i| {
            let value = match i % 5 {
                0 => -0.0,
                1 => 0.0,
                _ => (i % 97) as f64 / 4.0,
            };
            point(i, value, 192)
        })
        .collect();
    store.write(samples(&id, written.clone())).await.unwrap();
    assert_eq!(
        bits(&scan_all(&*store, &id, TimeRange::ALL).await),
        bits(&written)
    );
    let store = reopen(&mut backend, store).await;
    assert_eq!(
        bits(&scan_all(&*store, &id, TimeRange::ALL).await),
        bits(&written)
    );
    let imported = sensor("zero/imported");
    let batches: Vec<Result<PointBatch, StorageError>> =
        vec![Ok(written.iter().copied().collect())];
    store
        .import(&imported, futures_util::stream::iter(batches).boxed())
        .await
        .unwrap();
    let store = reopen(&mut backend, store).await;
    assert_eq!(
        bits(&scan_all(&*store, &imported, TimeRange::ALL).await),
        bits(&written)
    );
}

pub async fn ranges_are_half_open(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("range");
    store
        .write(samples(
            &id,
            (0..10_000).map(|i| point(i * 10, i as f64, 192)),
        ))
        .await
        .unwrap();
    for (start, end, expected) in [
        (0, 100, 10),         // start inclusive, end exclusive
        (1, 100, 9),          // start between points
        (0, 101, 11),         // end just after a point
        (50, 50, 0),          // empty
        (-1000, 0, 0),        // before everything
        (99_990, 200_000, 1), // the last point
        (100_000, i64::MAX, 0),
        (i64::MIN, i64::MAX, 10_000),
        (40_955, 40_975, 2), // across a block boundary (4096 points)
    ] {
        let range = TimeRange::new(start, end).unwrap();
        let read = scan_all(&*store, &id, range).await;
        assert_eq!(read.len(), expected, "[{start}, {end})");
        assert!(read.iter().all(|p| range.contains(p.timestamp_ms)));
    }
}

pub async fn extreme_timestamps_are_kept_and_out_of_range_rejected(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("extremes");
    store
        .write(samples(
            &id,
            [
                point(MIN_TIMESTAMP_MS, 1.0, 1),
                point(MAX_TIMESTAMP_MS, 2.0, 2),
            ],
        ))
        .await
        .unwrap();
    let bad = samples(&id, [point(5, 5.0, 5), point(MAX_TIMESTAMP_MS + 1, 3.0, 3)]);
    let error = store.write(bad).await.unwrap_err();
    assert!(matches!(error, StorageError::InvalidInput(_)), "{error}");
    let store = reopen(&mut backend, store).await;
    let read = scan_all(&*store, &id, TimeRange::ALL).await;
    assert_eq!(
        read,
        vec![
            point(MIN_TIMESTAMP_MS, 1.0, 1),
            point(MAX_TIMESTAMP_MS, 2.0, 2)
        ],
        "the rejected batch stored nothing"
    );
}

pub async fn sensors_are_listed_by_id_and_kept_apart(mut backend: impl Backend) {
    let store = backend.open().await;
    let ids = [
        "b/flow",
        "a.pressure:1",
        "Kessel Ü1/Temperatur",
        "with, comma and \"quotes\"",
    ];
    // One batch interleaving all sensors.
    let mut batch = Vec::new();
    for i in 0..400i64 {
        for (n, id) in ids.iter().enumerate() {
            batch.extend(samples(
                &sensor(id),
                [point(i * 1000 + n as i64, n as f64, 192)],
            ));
        }
    }
    store.write(batch).await.unwrap();
    let mut store = store;
    for round in 0..2 {
        let listed = store.sensors().await.unwrap();
        let mut sorted_ids = ids.to_vec();
        sorted_ids.sort();
        assert_eq!(
            listed
                .iter()
                .map(|s| s.sensor_id.as_str())
                .collect::<Vec<_>>(),
            sorted_ids,
            "round {round}"
        );
        for info in &listed {
            let n = ids
                .iter()
                .position(|id| *id == info.sensor_id.as_str())
                .unwrap() as i64;
            assert_eq!(info.count, 400);
            assert_eq!(info.first_timestamp_ms, n);
            assert_eq!(info.last_timestamp_ms, 399_000 + n);
            let read = scan_all(&*store, &info.sensor_id, TimeRange::ALL).await;
            assert_eq!(read.len(), 400);
            assert!(read.iter().all(|p| p.value == n as f64));
        }
        store = reopen(&mut backend, store).await;
    }
}

pub async fn import_is_all_or_nothing(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("imported");
    store
        .write(samples(&id, (0..100).map(|i| point(i, 1.0, 192))))
        .await
        .unwrap();
    let before = scan_all(&*store, &id, TimeRange::ALL).await;

    // A source that fails after two good batches (a bad CSV row, say).
    let batches: Vec<Result<PointBatch, StorageError>> = vec![
        Ok((50..5000).map(|i| point(i, 2.0, 192)).collect()),
        Ok((5000..9000).map(|i| point(i, 2.0, 192)).collect()),
        Err(StorageError::InvalidInput("line 9002: bad value".into())),
    ];
    let error = store
        .import(&id, futures_util::stream::iter(batches).boxed())
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "line 9002: bad value");
    assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await, before);
    let other = sensor("never-created");
    let failing = vec![
        Ok((0..10).map(|i| point(i, 2.0, 192)).collect()),
        Err(StorageError::InvalidInput("line 12: bad".into())),
    ];
    assert!(
        store
            .import(&other, futures_util::stream::iter(failing).boxed())
            .await
            .is_err()
    );
    assert_eq!(store.sensor(&other).await.unwrap(), None);

    // A successful import, unsorted and overlapping: the import wins.
    let batches: Vec<Result<PointBatch, StorageError>> = vec![
        Ok((50..5000).rev().map(|i| point(i, 2.0, 64)).collect()),
        Ok((4990..9000).map(|i| point(i, 3.0, 0)).collect()),
    ];
    let summary = store
        .import(&id, futures_util::stream::iter(batches).boxed())
        .await
        .unwrap();
    assert_eq!(summary.points, 4950 + 4010);
    let store = reopen(&mut backend, store).await;
    let read = scan_all(&*store, &id, TimeRange::ALL).await;
    assert_eq!(read.len(), 9000);
    for p in &read {
        let expected = match p.timestamp_ms {
            ts if ts < 50 => point(ts, 1.0, 192),
            ts if ts < 4990 => point(ts, 2.0, 64),
            ts => point(ts, 3.0, 0),
        };
        assert_eq!(*p, expected);
    }
    let info = store.sensor(&id).await.unwrap().unwrap();
    assert_eq!(
        (info.count, info.first_timestamp_ms, info.last_timestamp_ms),
        (9000, 0, 8999)
    );
}

/// Random writes, overwrites, reopenings and scans, checked against a
/// `BTreeMap` model after every step.
pub async fn random_operations_match_a_model(mut backend: impl Backend) {
    let mut rng = Rng::new(0x5EED);
    let ids = [sensor("m/0"), sensor("m/1"), sensor("m/2")];
    let mut model: Vec<BTreeMap<i64, Point>> = vec![BTreeMap::new(); ids.len()];
    let mut store = backend.open().await;
    for step in 0..60 {
        let mut batch = Vec::new();
        let n = rng.range(1, 3000);
        let (low, high) = if rng.chance(30) {
            (-50_000, 0)
        } else {
            (0, 200_000)
        };
        for _ in 0..n {
            let s = rng.range(0, ids.len() as i64) as usize;
            let ts = rng.range(low, high);
            let value = if rng.chance(50) {
                rng.range(-1000, 1000) as f64 / 100.0
            } else {
                f64::from_bits(rng.next_u64())
            };
            let p = point(ts, value, rng.range(0, 256) as u8);
            batch.extend(samples(&ids[s], [p]));
            model[s].insert(ts, p);
        }
        store.write(batch).await.unwrap();
        if rng.chance(15) {
            store = reopen(&mut backend, store).await;
        }
        for (s, id) in ids.iter().enumerate() {
            let start = rng.range(-60_000, 210_000);
            let end = start + rng.range(0, 100_000);
            let range = TimeRange::new(start, end).unwrap();
            let expected: Vec<Point> = model[s].range(start..end).map(|(_, p)| *p).collect();
            let read = scan_all(&*store, id, range).await;
            assert_eq!(
                bits(&read),
                bits(&expected),
                "step {step}, sensor {s}, [{start},{end})"
            );
            if let Some(info) = store.sensor(id).await.unwrap() {
                assert_eq!(info.count, model[s].len() as u64, "step {step}, sensor {s}");
                assert_eq!(info.first_timestamp_ms, *model[s].keys().next().unwrap());
                assert_eq!(
                    info.last_timestamp_ms,
                    *model[s].keys().next_back().unwrap()
                );
            } else {
                assert!(model[s].is_empty());
            }
        }
    }
}

pub async fn scans_stay_consistent_during_writes(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("busy");
    store
        .write(samples(&id, (0..20_000).map(|i| point(i, 0.0, 192))))
        .await
        .unwrap();
    let writer = {
        let store = store.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for round in 1..=30i64 {
                let batch = (0..20_000).step_by(3).map(|i| point(i, round as f64, 192));
                store.write(samples(&id, batch)).await.unwrap();
                store
                    .write(samples(&id, [point(20_000 + round, 0.0, 192)]))
                    .await
                    .unwrap();
            }
        })
    };
    for _ in 0..30 {
        let read = scan_all(&*store, &id, TimeRange::ALL).await;
        assert!(read.len() >= 20_000, "a scan lost points: {}", read.len());
        // A dropped scan must not disturb anything.
        let mut partial = store.scan(&id, TimeRange::ALL);
        let _ = partial.next().await;
        drop(partial);
    }
    writer.await.unwrap();
    let read = scan_all(&*store, &id, TimeRange::ALL).await;
    assert_eq!(read.len(), 20_030);
    assert!(
        read.iter()
            .filter(|p| p.timestamp_ms % 3 == 0 && p.timestamp_ms < 20_000)
            .all(|p| p.value == 30.0)
    );
}

/// The M4 reference, written independently of the engine's: per bucket the
/// earliest, latest, smallest and largest (earliest on ties, NaN never) point.
fn naive_m4(points: &[Point], range: TimeRange, buckets: usize) -> Vec<Point> {
    let span = (i128::from(range.end_ms) - i128::from(range.start_ms)).max(1);
    let mut groups: BTreeMap<i128, Vec<Point>> = BTreeMap::new();
    for p in points {
        let bucket =
            (i128::from(p.timestamp_ms) - i128::from(range.start_ms)) * buckets as i128 / span;
        groups.entry(bucket).or_default().push(*p);
    }
    let mut kept = Vec::new();
    for group in groups.values() {
        let mut chosen = vec![group[0], group[group.len() - 1]];
        let comparable: Vec<&Point> = group.iter().filter(|p| !p.value.is_nan()).collect();
        if let Some(min) = comparable.iter().min_by(|a, b| {
            a.value
                .total_cmp(&b.value)
                .then(a.timestamp_ms.cmp(&b.timestamp_ms))
        }) {
            chosen.push(**min);
        }
        if let Some(max) = comparable.iter().max_by(|a, b| {
            a.value
                .total_cmp(&b.value)
                .then(b.timestamp_ms.cmp(&a.timestamp_ms))
        }) {
            chosen.push(**max);
        }
        chosen.sort_by_key(|p| p.timestamp_ms);
        chosen.dedup_by_key(|p| p.timestamp_ms);
        kept.extend(chosen);
    }
    kept
}

pub async fn downsample_keeps_every_peak_and_dip(mut backend: impl Backend) {
    let mut store = backend.open().await;
    let id = sensor("m4");
    let mut rng = Rng::new(44);
    let mut ts = 0i64;
    let mut all = Vec::new();
    for _ in 0..30_000 {
        ts += rng.range(1, 200);
        let value = match rng.range(0, 100) {
            0 => f64::NAN,
            1 => 1e6,                               // a spike
            2 => -1e6,                              // a dip
            _ => rng.range(-100, 100) as f64 / 4.0, // many equal values: ties
        };
        all.push(point(ts, value, rng.range(0, 3) as u8 * 64));
    }
    for chunk in all.chunks(7000) {
        store
            .write(samples(&id, chunk.iter().copied()))
            .await
            .unwrap();
        store = reopen(&mut backend, store).await;
    }
    // Newer points over stored ones, and in the gaps, left in the head.
    let overwrite: Vec<Point> = all
        .iter()
        .step_by(97)
        .map(|p| point(p.timestamp_ms, -2e6, 0))
        .chain((0..50).map(|i| point(i * 60_000 + 1, 3e6, 64)))
        .collect();
    store.write(samples(&id, overwrite)).await.unwrap();
    let end = ts + 1;
    for (start, stop, buckets) in [
        (i64::MIN, i64::MAX, 100),
        (0, end, 1000),
        (0, end, 1),
        (12_345, 2_000_000, 7),
        (500, 600, 50),
        (100_000, 100_000, 10),
        (end, end + 1000, 10),
        (-5_000, end + 5_000, 3000),
    ] {
        let range = TimeRange::new(start, stop).unwrap();
        let points = scan_all(&*store, &id, range).await;
        let expected = naive_m4(&points, range, buckets);
        let got = store.downsample(&id, range, buckets).await.unwrap();
        assert_eq!(
            got.count,
            points.len() as u64,
            "[{start}, {stop}) / {buckets}"
        );
        let got: Vec<Point> = got.points.iter().collect();
        assert_eq!(bits(&got), bits(&expected), "[{start}, {stop}) / {buckets}");
    }
    let unknown = store
        .downsample(&sensor("none"), TimeRange::ALL, 10)
        .await
        .unwrap();
    assert_eq!((unknown.count, unknown.points.len()), (0, 0));
}

/// `read_prefix` gives the scan's first points: all of them, or more than
/// the limit; over blocks, the head, rewritten points, and ranges that
/// start and end inside blocks.
pub async fn read_prefix_is_the_start_of_the_scan(mut backend: impl Backend) {
    let store = backend.open().await;
    let id = sensor("prefix");
    let mut rng = Rng::new(0x9F1E);
    for run in 0..3i64 {
        let points: Vec<Point> = (0..20_000)
            .map(|i| point(run * 50_000 + i * 2, i as f64 * 0.25, 192))
            .collect();
        store.write(samples(&id, points)).await.unwrap();
    }
    // Rewrites and new points scattered over the runs: merged on read.
    let scattered: Vec<Point> = (0..500)
        .map(|_| point(rng.range(0, 150_000), rng.range(-99, 99) as f64, 7))
        .collect();
    store.write(samples(&id, scattered)).await.unwrap();
    let store = reopen(&mut backend, store).await;
    store
        .write(samples(
            &id,
            [point(25_001, -1.5, 1), point(170_000, 2.5, 2)],
        ))
        .await
        .unwrap();
    for (start, end) in [
        (0, 200_000),
        (1, 150_000),
        (39_999, 50_001),
        (12_345, 112_345),
        (-10, 5),
        (40_000, 50_000),
    ] {
        let range = TimeRange::new(start, end).unwrap();
        let all = scan_all(&*store, &id, range).await;
        for limit in [0, 1, 4_999, 30_000, usize::MAX] {
            let read = store.read_prefix(&id, range, limit).await.unwrap();
            let read: Vec<Point> = (0..read.len()).map(|i| read.point(i)).collect();
            assert!(
                read.len() == all.len() || read.len() > limit,
                "[{start},{end}) limit {limit}: {} of {}",
                read.len(),
                all.len()
            );
            assert_eq!(
                bits(&read),
                bits(&all[..read.len()]),
                "[{start},{end}) limit {limit}"
            );
        }
    }
}

pub async fn writes_after_close_fail(mut backend: impl Backend) {
    let store = backend.open().await;
    store.close().await.unwrap();
    let error = store
        .write(samples(&sensor("late"), [point(1, 1.0, 192)]))
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::Closed), "{error}");
}

macro_rules! conformance_tests {
    ($module:ident, $backend:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            conformance_tests!(@tests $backend;
                empty_store_has_nothing,
                points_come_back_sorted_bit_exact_and_persist,
                later_write_of_a_timestamp_wins,
                stream_sequences_order_writes_of_a_point,
                imports_and_writes_are_ordered_by_commit,
                negative_zero_keeps_its_sign_among_decimals,
                ranges_are_half_open,
                extreme_timestamps_are_kept_and_out_of_range_rejected,
                sensors_are_listed_by_id_and_kept_apart,
                import_is_all_or_nothing,
                random_operations_match_a_model,
                scans_stay_consistent_during_writes,
                downsample_keeps_every_peak_and_dip,
                read_prefix_is_the_start_of_the_scan,
                writes_after_close_fail
            );
        }
    };
    (@tests $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($backend).await
            }
        )*
    };
}

// The default configuration: most points stay in the head between checkpoints.
conformance_tests!(embedded, Embedded::with_head_limit(256 * 1024));
// A tiny head: nearly every write goes through a checkpoint into blocks.
conformance_tests!(embedded_small_head, Embedded::with_head_limit(100));

/// The embedded store behind the live-view wrapper, as `engine serve` runs it.
pub struct Live(Embedded);

#[async_trait]
impl Backend for Live {
    async fn open(&mut self) -> SharedStorage {
        std::sync::Arc::new(engine::live::LiveStorage::new(self.0.open().await))
    }
}

conformance_tests!(live_embedded, Live(Embedded::with_head_limit(256 * 1024)));

// PostgreSQL: a fresh database per test on the machine's server.
conformance_tests!(postgres, crate::pg_support::Postgres::default());
