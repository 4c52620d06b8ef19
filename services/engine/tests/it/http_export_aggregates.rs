//! Interval aggregates over HTTP, against values worked out by hand: a
//! bucket with bad points, empty buckets, interpolation across a gap, across
//! the range start and past the range end, and day buckets over both DST
//! changes in Europe/Berlin.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{TestServer, TestStore, client};

/// Sensor `a`, 10 s buckets over [0, 60 s):
///
/// ```text
/// -5 s  100 good   (before the range)
///  2 s   10 good   | bucket 0 [0, 10 s)
///  4 s   20 bad    |
///  6 s   30 good   |
///                    bucket 1 [10, 20 s): empty
/// 25 s   50 good     bucket 2
/// 31 s 1000 bad      bucket 3: only a bad point
/// 40 s   60 good   | bucket 4, the first exactly at its start
/// 45 s   70 uncertain
///                    bucket 5 [50, 60 s): empty
/// 70 s   80 good   (after the range)
/// ```
///
/// Sensor `b`: one point, 8 at 5 s: nothing before it.
fn store() -> Arc<TestStore> {
    let store = TestStore::shared(2);
    store.put(
        "a",
        [
            (-5_000, 100.0, 192),
            (2_000, 10.0, 192),
            (4_000, 20.0, 0),
            (6_000, 30.0, 192),
            (25_000, 50.0, 192),
            (31_000, 1000.0, 0),
            (40_000, 60.0, 192),
            (45_000, 70.0, 64),
            (70_000, 80.0, 192),
        ],
    );
    store.put("b", [(5_000, 8.0, 192)]);
    store
}

const ALL: &str = "first,last,min,max,mean,count,time_weighted_mean,interpolated,percent_good";

async fn rows(server: &TestServer, query: &str) -> Vec<Value> {
    let response = client()
        .get(server.url(&format!("/api/v1/export?{query}&format=jsonl")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// One expected row: timestamp, then the aggregates of [`ALL`] in order
/// (`None` = empty cell).
type Expected = (i64, [Option<f64>; 9]);

fn check(rows: &[Value], expected: &[Expected], prefix: &str, what: &str) {
    assert_eq!(rows.len(), expected.len(), "{what}: {rows:#?}");
    let names: Vec<&str> = ALL.split(',').collect();
    for (row, (t, values)) in rows.iter().zip(expected) {
        assert_eq!(row["timestamp_ms"], *t, "{what}: {row}");
        for (name, want) in names.iter().zip(values) {
            let got = &row[format!("{prefix}{name}")];
            match want {
                None => assert!(got.is_null(), "{what} t={t} {name}: {got} should be empty"),
                Some(want) => {
                    let got = got
                        .as_f64()
                        .unwrap_or_else(|| panic!("{what} t={t} {name}: {got}"));
                    assert!(
                        (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                        "{what} t={t} {name}: {got} != {want}"
                    );
                }
            }
        }
    }
}

const N: Option<f64> = None;

fn s(v: f64) -> Option<f64> {
    Some(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_match_values_worked_out_by_hand() {
    let server = TestServer::start(store()).await;
    let got = rows(
        &server,
        &format!("sensor_id=a&start_ts=0&end_ts=60000&interval=10s&aggregate={ALL}"),
    )
    .await;
    //          first    last     min      max      mean     count   twm      interpolated           percent_good
    let expected: [Expected; 6] = [
        // 100 held 0-2 s, 10 for 2-6 s, 30 for 6-10 s (the bad 20 is left out):
        // (200 000 + 40 000 + 120 000) / 10 000 = 36. Interpolated at 0
        // between -5 s (100) and 2 s (10): 100 - 90 * 5/7.
        (
            0,
            [
                s(10.0),
                s(30.0),
                s(10.0),
                s(30.0),
                s(20.0),
                s(0.0),
                s(36.0),
                s(100.0 - 90.0 * 5.0 / 7.0),
                s(200.0 / 3.0),
            ],
        ),
        // Empty: 30 held; interpolated at 10 s across the gap 6 s..25 s.
        (
            10_000,
            [
                N,
                N,
                N,
                N,
                N,
                s(0.0),
                s(30.0),
                s(30.0 + 20.0 * 4.0 / 19.0),
                N,
            ],
        ),
        // 30 for 5 s, 50 for 5 s.
        (
            20_000,
            [
                s(50.0),
                s(50.0),
                s(50.0),
                s(50.0),
                s(50.0),
                s(0.0),
                s(40.0),
                s(30.0 + 20.0 * 14.0 / 19.0),
                s(100.0),
            ],
        ),
        // Only a bad point: nothing counted, 0 % good; 50 held.
        (
            30_000,
            [
                N,
                N,
                N,
                N,
                N,
                s(0.0),
                s(50.0),
                s(50.0 + 10.0 * 5.0 / 15.0),
                s(0.0),
            ],
        ),
        // A point exactly at the start; the uncertain 70 is left out.
        (
            40_000,
            [
                s(60.0),
                s(60.0),
                s(60.0),
                s(60.0),
                s(60.0),
                s(0.0),
                s(60.0),
                s(60.0),
                s(50.0),
            ],
        ),
        // Empty; interpolated towards 80 at 70 s, past the range end.
        (
            50_000,
            [N, N, N, N, N, s(0.0), s(60.0), s(60.0 + 20.0 / 3.0), N],
        ),
    ];
    let counts = [2.0, 0.0, 1.0, 0.0, 1.0, 0.0];
    let expected: Vec<Expected> = expected
        .into_iter()
        .zip(counts)
        .map(|((t, mut v), count)| {
            v[5] = Some(count);
            (t, v)
        })
        .collect();
    check(&got, &expected, "", "good only");

    // include_bad: the bad and uncertain points count.
    let got = rows(
        &server,
        &format!(
            "sensor_id=a&start_ts=0&end_ts=60000&interval=10000&aggregate={ALL}&include_bad=true"
        ),
    )
    .await;
    let expected: Vec<Expected> = vec![
        // 100*2 + 10*2 + 20*2 + 30*4 (s) = 380 / 10.
        (
            0,
            [
                s(10.0),
                s(30.0),
                s(10.0),
                s(30.0),
                s(20.0),
                s(3.0),
                s(38.0),
                s(100.0 - 90.0 * 5.0 / 7.0),
                s(200.0 / 3.0),
            ],
        ),
        (
            10_000,
            [
                N,
                N,
                N,
                N,
                N,
                s(0.0),
                s(30.0),
                s(30.0 + 20.0 * 4.0 / 19.0),
                N,
            ],
        ),
        (
            20_000,
            [
                s(50.0),
                s(50.0),
                s(50.0),
                s(50.0),
                s(50.0),
                s(1.0),
                s(40.0),
                s(30.0 + 20.0 * 14.0 / 19.0),
                s(100.0),
            ],
        ),
        // 50 for 1 s, 1000 for 9 s; interpolated between 25 s (50) and 31 s (1000).
        (
            30_000,
            [
                s(1000.0),
                s(1000.0),
                s(1000.0),
                s(1000.0),
                s(1000.0),
                s(1.0),
                s(905.0),
                s(50.0 + 950.0 * 5.0 / 6.0),
                s(0.0),
            ],
        ),
        (
            40_000,
            [
                s(60.0),
                s(70.0),
                s(60.0),
                s(70.0),
                s(65.0),
                s(2.0),
                s(65.0),
                s(60.0),
                s(50.0),
            ],
        ),
        // 70 held; interpolated between 45 s (70) and 70 s (80).
        (
            50_000,
            [
                N,
                N,
                N,
                N,
                N,
                s(0.0),
                s(70.0),
                s(70.0 + 10.0 * 5.0 / 25.0),
                N,
            ],
        ),
    ];
    check(&got, &expected, "", "include_bad");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_earlier_point_the_lead_time_is_left_out() {
    let server = TestServer::start(store()).await;
    let got = rows(
        &server,
        &format!("sensor_id=b&start_ts=0&end_ts=30000&interval=10s&aggregate={ALL}"),
    )
    .await;
    let expected: Vec<Expected> = vec![
        // Known only from 5 s: the mean over 5-10 s is 8. Nothing before 5 s
        // to interpolate from at 0.
        (
            0,
            [
                s(8.0),
                s(8.0),
                s(8.0),
                s(8.0),
                s(8.0),
                s(1.0),
                s(8.0),
                N,
                s(100.0),
            ],
        ),
        // After the last point: stepped extrapolation.
        (10_000, [N, N, N, N, N, s(0.0), s(8.0), s(8.0), N]),
        (20_000, [N, N, N, N, N, s(0.0), s(8.0), s(8.0), N]),
    ];
    check(&got, &expected, "", "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layouts_carry_the_same_buckets() {
    let server = TestServer::start(store()).await;
    let query = "sensor_id=a&sensor_id=b&start_ts=0&end_ts=20000&interval=10s&aggregate=mean,count";
    let long = rows(&server, &format!("{query}&layout=long")).await;
    let pairs: Vec<(String, i64, Value, i64)> = long
        .iter()
        .map(|r| {
            (
                r["sensor_id"].as_str().unwrap().to_owned(),
                r["timestamp_ms"].as_i64().unwrap(),
                r["mean"].clone(),
                r["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("a".to_owned(), 0, Value::from(20.0), 2),
            ("b".to_owned(), 0, Value::from(8.0), 1),
            ("a".to_owned(), 10_000, Value::Null, 0),
            ("b".to_owned(), 10_000, Value::Null, 0),
        ]
    );
    let wide = rows(&server, &format!("{query}&layout=wide")).await;
    assert_eq!(
        wide[0],
        serde_json::json!({"timestamp_ms": 0, "a mean": 20.0, "a count": 2, "b mean": 8.0, "b count": 1})
    );
    assert_eq!(
        wide[1],
        serde_json::json!({"timestamp_ms": 10000, "a mean": null, "a count": 0, "b mean": null, "b count": 0})
    );
    // CSV: an undefined aggregate is an empty cell.
    let csv = client()
        .get(server.url(&format!("/api/v1/export?{query}&layout=wide")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv,
        "timestamp_ms,a mean,a count,b mean,b count\n0,20.0,2,8.0,1\n10000,,0,,0\n"
    );
}

fn ms(rfc3339: &str) -> i64 {
    engine::model::parse_timestamp(rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_buckets_in_berlin_last_23_and_25_hours_over_dst() {
    let store = TestStore::shared(7);
    // Spring: the day of 2026-03-29 has 23 hours. 0 from local midnight, 23
    // from 12:00 local (+02:00) = 10:00Z: 11 h of 0, 12 h of 23, mean 12.
    // Hourly points on the UTC hour from 2026-03-27T23:00Z for four days.
    let mut points = Vec::new();
    let spring_start = ms("2026-03-28T00:00:00+01:00");
    for h in 0..(24 * 4) {
        let t = spring_start + h * 3_600_000;
        let value = if t >= ms("2026-03-29T12:00:00+02:00") && t < ms("2026-03-30T00:00:00+02:00") {
            23.0
        } else {
            0.0
        };
        points.push((t, value, 192));
    }
    // Autumn: the day of 2026-10-25 has 25 hours. 0 from local midnight,
    // 25 from 12:00Z: 14 h of 0, 11 h of 25, mean 11.
    let autumn_start = ms("2026-10-24T00:00:00+02:00");
    for h in 0..(24 * 4) {
        let t = autumn_start + h * 3_600_000;
        let value = if t >= ms("2026-10-25T12:00:00Z") && t < ms("2026-10-26T00:00:00+01:00") {
            25.0
        } else {
            0.0
        };
        points.push((t, value, 192));
    }
    store.put("plant", points);
    let server = TestServer::start(store).await;
    for (start, days, lengths, means) in [
        (
            "2026-03-28T00:00:00+01:00",
            [
                "2026-03-28T00:00:00+01:00",
                "2026-03-29T00:00:00+01:00",
                "2026-03-30T00:00:00+02:00",
            ],
            [24, 23, 24],
            [0.0, 12.0, 0.0],
        ),
        (
            "2026-10-24T00:00:00+02:00",
            [
                "2026-10-24T00:00:00+02:00",
                "2026-10-25T00:00:00+02:00",
                "2026-10-26T00:00:00+01:00",
            ],
            [24, 25, 24],
            [0.0, 11.0, 0.0],
        ),
    ] {
        let end = ms(days[2]) + 24 * 3_600_000;
        let got = rows(
            &server,
            &format!(
                "sensor_id=plant&start_ts={}&end_ts={end}&interval=1d&time_zone=Europe/Berlin&aggregate=count,time_weighted_mean",
                ms(start)
            ),
        )
        .await;
        assert_eq!(got.len(), 3, "{got:#?}");
        for (i, row) in got.iter().enumerate() {
            assert_eq!(row["timestamp_ms"], ms(days[i]), "{start} day {i}");
            // One point an hour: the count is the day's length in hours.
            assert_eq!(row["count"], lengths[i], "{start} day {i}");
            assert_eq!(row["time_weighted_mean"], means[i], "{start} day {i}");
        }
    }
    // Without the time zone, days are UTC days: 24 points each.
    let got = rows(
        &server,
        &format!(
            "sensor_id=plant&start_ts={}&end_ts={}&interval=1d&aggregate=count",
            ms("2026-10-24T00:00:00Z"),
            ms("2026-10-26T00:00:00Z")
        ),
    )
    .await;
    let counts: Vec<i64> = got.iter().map(|r| r["count"].as_i64().unwrap()).collect();
    assert_eq!(
        counts,
        [24, 24],
        "UTC days are 24 hours, also on 2026-10-25"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_buckets_over_many_windows_equal_one_pass() {
    // 300k points, 1 ms apart, values i % 97; 1 s buckets. The export folds
    // the range in windows (in parallel) and stitches them; the result must
    // equal a plain pass over the points here.
    let store = TestStore::shared(4096);
    let n = 300_000i64;
    let points: Vec<(i64, f64, u8)> = (0..n)
        .map(|i| (i, (i % 97) as f64, if i % 10 == 3 { 0 } else { 192 }))
        .collect();
    store.put("dense", points.clone());
    let server = TestServer::start(store).await;
    let got = rows(
        &server,
        &format!("sensor_id=dense&start_ts=0&end_ts={n}&interval=1s&aggregate=mean,count,time_weighted_mean,min,max"),
    )
    .await;
    assert_eq!(got.len(), 300);
    let mut held: Option<f64> = None;
    for (b, row) in got.iter().enumerate() {
        let lo = b as i64 * 1000;
        let good: Vec<&(i64, f64, u8)> = points[lo as usize..lo as usize + 1000]
            .iter()
            .filter(|p| p.2 == 192)
            .collect();
        let mean = good.iter().map(|p| p.1).sum::<f64>() / good.len() as f64;
        let (mut area, mut covered) = (0.0, 0i64);
        let mut cursor = lo;
        for p in &good {
            if let Some(v) = held {
                area += v * (p.0 - cursor) as f64;
                covered += p.0 - cursor;
            }
            held = Some(p.1);
            cursor = p.0;
        }
        area += held.unwrap() * (lo + 1000 - cursor) as f64;
        covered += lo + 1000 - cursor;
        assert_eq!(row["count"], good.len(), "bucket {b}");
        assert!(
            (row["mean"].as_f64().unwrap() - mean).abs() < 1e-9,
            "bucket {b}"
        );
        let twm = row["time_weighted_mean"].as_f64().unwrap();
        assert!(
            (twm - area / covered as f64).abs() < 1e-9,
            "bucket {b}: {twm}"
        );
        assert_eq!(row["min"], 0.0);
        assert_eq!(row["max"], 96.0);
    }
}
