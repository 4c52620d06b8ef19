//! What the PostgreSQL store must do beyond the conformance suite: stop
//! abandoned queries on the server, report an unreachable database, share a
//! database between engines, keep the operator's own `points` table, and
//! agree bit for bit with the embedded store on edge values and M4.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::model::{MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, Point, Sample, TimeRange};
use engine::storage::embedded::EmbeddedOptions;
use engine::storage::postgres::{PgOptions, PgStorage};
use engine::storage::{SharedStorage, StorageEngine, StorageError, StoreHealth};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::pg_support::TestDatabase;
use crate::support::{Rng, open_embedded, point, samples, scan_all, sensor};

fn bits(points: &[Point]) -> Vec<(i64, u64, u8)> {
    points
        .iter()
        .map(|p| (p.timestamp_ms, p.value.to_bits(), p.quality))
        .collect()
}

/// Polls `condition` every 50 ms for up to `limit`.
async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Queries on `database` that are running a scan's page right now.
async fn running_scans(db: &TestDatabase, observer: &tokio_postgres::Client) -> i64 {
    observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND state = 'active' AND query LIKE 'SELECT count(*), array_agg(ts)%'",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_scan_leaves_no_query_running() {
    let db = TestDatabase::create().await;
    let store = db
        .open_with(PgOptions {
            scan_piece_points: usize::MAX, // one piece: one query at a time
            ..PgOptions::default()
        })
        .await;
    let id = sensor("big");
    let batches: Vec<Result<_, StorageError>> = (0..10)
        .map(|chunk| {
            Ok((0..50_000)
                .map(|i| point(chunk * 50_000 + i, i as f64, 192))
                .collect())
        })
        .collect();
    store
        .import(&id, futures_util::stream::iter(batches).boxed())
        .await
        .unwrap();
    let observer = db.client().await;

    // A reader that stops reading leaves no query running: pages are
    // fetched only as the reader takes them.
    let mut scan = store.scan(&id, TimeRange::ALL);
    assert_eq!(scan.next().await.unwrap().unwrap().timestamps[0], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(running_scans(&db, &observer).await, 0);
    drop(scan);

    // A reader that goes away while a page query runs (here: waits for a
    // lock another session holds) gets that query cancelled on the server.
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE points IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut scan = store.scan(&id, TimeRange::ALL);
    let waited = tokio::time::timeout(Duration::from_millis(500), scan.next()).await;
    assert!(waited.is_err(), "the scan read past the lock");
    assert_eq!(running_scans(&db, &observer).await, 1, "its query waits");
    drop(scan);
    let stopped = eventually(Duration::from_secs(10), || async {
        running_scans(&db, &observer).await == 0
    })
    .await;
    assert!(stopped, "the dropped scan's query still runs on the server");
    locker.batch_execute("ROLLBACK").await.unwrap();

    // The store is fine afterwards, and a full scan still reads everything.
    assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await.len(), 500_000);
}

/// A TCP proxy in front of the real PostgreSQL, to make it unreachable and
/// reachable again without touching the server.
struct Proxy {
    port: u16,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepting = {
            let tasks = Arc::clone(&tasks);
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let connection = tokio::spawn(async move {
                        if let Ok(mut server) =
                            tokio::net::TcpStream::connect("127.0.0.1:5432").await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    tasks.lock().unwrap().push(connection);
                }
            })
        };
        tasks.lock().unwrap().push(accepting);
        Self { port, tasks }
    }

    /// Closes the listener and every proxied connection.
    fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_an_unreachable_database_and_recovers() {
    let db = TestDatabase::create().await;
    drop(db.open().await); // the schema, through the direct way
    let proxy = Proxy::start(0).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, db.name);
    let store = PgStorage::connect(&url).await.unwrap();
    let id = sensor("s");
    store
        .write(samples(&id, [point(1, 1.0, 192)]))
        .await
        .unwrap();
    assert_eq!(store.health(), StoreHealth::Ok);

    proxy.stop();
    let degraded = eventually(Duration::from_secs(10), || async {
        matches!(store.health(), StoreHealth::Degraded(_))
    })
    .await;
    assert!(degraded, "still {:?}", store.health());
    let StoreHealth::Degraded(reason) = store.health() else {
        unreachable!()
    };
    assert!(reason.contains("unreachable"), "{reason}");
    assert!(
        store
            .write(samples(&id, [point(2, 2.0, 192)]))
            .await
            .is_err()
    );

    let _back = Proxy::start(proxy.port).await;
    let recovered = eventually(Duration::from_secs(10), || async {
        store.health() == StoreHealth::Ok
    })
    .await;
    assert!(recovered, "still {:?}", store.health());
    store
        .write(samples(&id, [point(2, 2.0, 192)]))
        .await
        .unwrap();
    assert_eq!(scan_all(&store, &id, TimeRange::ALL).await.len(), 2);
}

/// Edge values and ids both stores must keep exactly.
async fn keeps_edge_values(store: SharedStorage) {
    let values = [
        -0.0,
        0.0,
        f64::from_bits(1),                     // the smallest subnormal
        f64::from_bits(0x000f_ffff_ffff_ffff), // the largest subnormal
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::from_bits(0x7ff0_0000_0000_0001), // signalling NaN with payload
        f64::from_bits(0xfff8_0000_0000_0123), // negative quiet NaN with payload
        f64::MAX,
        f64::MIN_POSITIVE,
    ];
    let ids = [
        format!("{}x", "Ü".repeat(127)),  // 255 bytes, 2-byte letters
        format!("{}abc", "𝄞".repeat(63)), // 255 bytes, 4-byte letters
        "Kessel Ü1/Temperatur, \"A\"".to_owned(),
    ];
    for id in &ids {
        assert_eq!(id.len().min(255), id.len());
        let id = sensor(id);
        let mut points: Vec<Point> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| point(i as i64 * 1000 - 5000, v, (i * 25) as u8))
            .collect();
        points.push(point(MIN_TIMESTAMP_MS, 1.0, 0));
        points.push(point(MAX_TIMESTAMP_MS, 2.0, 255));
        store
            .write(samples(&id, points.iter().copied()))
            .await
            .unwrap();
        points.sort_by_key(|p| p.timestamp_ms);
        for range in [
            TimeRange::ALL,
            TimeRange::new(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS + 1).unwrap(),
        ] {
            let read = scan_all(&*store, &id, range).await;
            assert_eq!(bits(&read), bits(&points), "{id}");
        }
        let info = store.sensor(&id).await.unwrap().unwrap();
        assert_eq!(
            (info.count, info.first_timestamp_ms, info.last_timestamp_ms),
            (points.len() as u64, MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)
        );
    }
    let listed: Vec<String> = store
        .sensors()
        .await
        .unwrap()
        .iter()
        .map(|s| s.sensor_id.to_string())
        .collect();
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(listed, expected, "byte order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_and_ids_are_kept_exactly_by_both_stores() {
    let db = TestDatabase::create().await;
    keeps_edge_values(db.open().await).await;
    let dir = tempfile::tempdir().unwrap();
    keeps_edge_values(open_embedded(dir.path(), EmbeddedOptions::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downsampling_matches_the_embedded_store() {
    let db = TestDatabase::create().await;
    let pg: SharedStorage = db.open().await;
    let dir = tempfile::tempdir().unwrap();
    let embedded: SharedStorage = open_embedded(dir.path(), EmbeddedOptions::default()).await;
    let id = sensor("m4");
    let mut rng = Rng::new(7);
    let mut ts = -50_000;
    let mut written = Vec::new();
    for _ in 0..40_000 {
        ts += rng.range(1, 100);
        let value = match rng.range(0, 50) {
            0 => f64::NAN,
            1 => f64::from_bits(0x7ff4_0000_0000_0abc),
            2 => -0.0,
            3 => 0.0,
            4 => f64::INFINITY,
            5 => f64::NEG_INFINITY,
            _ => rng.range(-20, 20) as f64 / 2.0, // ties
        };
        written.push(point(ts, value, rng.range(0, 256) as u8));
    }
    for store in [&pg, &embedded] {
        for chunk in written.chunks(9000) {
            store
                .write(samples(&id, chunk.iter().copied()))
                .await
                .unwrap();
        }
    }
    for (start, end, buckets) in [
        (i64::MIN, i64::MAX, 100),
        (-50_000, ts + 1, 1000),
        (0, 100_000, 7),
        (-10, 10, 20),
        (ts, ts + 10, 3),
    ] {
        let range = TimeRange::new(start, end).unwrap();
        let a = pg.downsample(&id, range, buckets).await.unwrap();
        let b = embedded.downsample(&id, range, buckets).await.unwrap();
        assert_eq!(a.count, b.count, "[{start}, {end}) / {buckets}");
        let (a, b): (Vec<Point>, Vec<Point>) =
            (a.points.iter().collect(), b.points.iter().collect());
        assert_eq!(bits(&a), bits(&b), "[{start}, {end}) / {buckets}");
    }
}

fn stream_sample(id: &engine::model::SensorId, p: Point, seq: u64) -> Sample {
    Sample {
        sensor_id: id.clone(),
        point: p,
        seq: Some(seq),
    }
}

/// Two engines on one database: stream sequences order the writes of a
/// point whoever stores them, and direct writes outrank streams and grow
/// across engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_database_agree_on_versions() {
    let db = TestDatabase::create().await;
    let (a, b) = (db.open().await, db.open().await);
    let id = sensor("shared");

    a.write(vec![stream_sample(&id, point(1, 10.0, 1), 10)])
        .await
        .unwrap();
    b.write(vec![stream_sample(&id, point(1, 5.0, 1), 5)])
        .await
        .unwrap(); // a late redelivery
    assert_eq!(
        scan_all(&*a, &id, TimeRange::ALL).await,
        vec![point(1, 10.0, 1)]
    );
    b.write(vec![stream_sample(&id, point(1, 10.5, 2), 10)])
        .await
        .unwrap(); // the same seq again
    assert_eq!(
        scan_all(&*b, &id, TimeRange::ALL).await,
        vec![point(1, 10.5, 2)],
        "an equal version replaces"
    );

    a.write(samples(&id, [point(1, 100.0, 3)])).await.unwrap(); // direct
    b.write(vec![stream_sample(&id, point(1, 6.0, 1), u64::MAX >> 1)])
        .await
        .unwrap();
    assert_eq!(
        scan_all(&*a, &id, TimeRange::ALL).await,
        vec![point(1, 100.0, 3)],
        "direct outranks any seq"
    );
    b.write(samples(&id, [point(1, 200.0, 4)])).await.unwrap(); // a later direct write
    assert_eq!(
        scan_all(&*a, &id, TimeRange::ALL).await,
        vec![point(1, 200.0, 4)]
    );
    a.write(samples(&id, [point(1, 300.0, 5)])).await.unwrap();
    assert_eq!(
        scan_all(&*b, &id, TimeRange::ALL).await,
        vec![point(1, 300.0, 5)]
    );

    // Within one batch: the higher seq wins whatever the order, and among
    // equal versions the later sample.
    a.write(vec![
        stream_sample(&id, point(2, 2.0, 0), 7),
        stream_sample(&id, point(2, 1.0, 0), 3),
        stream_sample(&id, point(3, 1.0, 0), 4),
        stream_sample(&id, point(3, 2.0, 0), 4),
    ])
    .await
    .unwrap();
    let read = scan_all(&*b, &id, TimeRange::ALL).await;
    assert_eq!(&read[1..], &[point(2, 2.0, 0), point(3, 2.0, 0)]);
    assert_eq!(b.sensor(&id).await.unwrap().unwrap().count, 3);

    let error = a
        .write(vec![stream_sample(&id, point(4, 1.0, 0), 1 << 63)])
        .await
        .unwrap_err();
    assert!(matches!(error, StorageError::InvalidInput(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_partitioned_by_month_and_an_operators_table_is_kept() {
    let db = TestDatabase::create().await;
    let store = db.open().await;
    let id = sensor("p");
    let day = 86_400_000;
    store
        .write(samples(
            &id,
            [point(-1, 1.0, 0), point(0, 2.0, 0), point(40 * day, 3.0, 0)],
        ))
        .await
        .unwrap();
    let client = db.client().await;
    let partitions: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'points'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        partitions,
        ["points_y1969m12", "points_y1970m01", "points_y1970m02"]
    );
    let version: i32 = client
        .query_one("SELECT version FROM engine_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, engine::storage::postgres::SCHEMA_VERSION);

    // A `points` the operator made (as for a TimescaleDB hypertable): used
    // as it is, no partitions.
    let own = TestDatabase::create().await;
    own.client()
        .await
        .batch_execute(
            "CREATE TABLE points (sensor integer NOT NULL, quality smallint NOT NULL, \
             overwritten boolean NOT NULL DEFAULT false, ts bigint NOT NULL, \
             value double precision NOT NULL, version bigint NOT NULL, PRIMARY KEY (sensor, ts))",
        )
        .await
        .unwrap();
    let store = own.open().await;
    store
        .write(samples(
            &id,
            [
                point(MIN_TIMESTAMP_MS, 1.0, 0),
                point(MAX_TIMESTAMP_MS, 2.0, 0),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(scan_all(&*store, &id, TimeRange::ALL).await.len(), 2);
    let kind: String = own
        .client()
        .await
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE relname = 'points'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "r");

    // A database from a newer engine is refused, not misread.
    client
        .batch_execute("UPDATE engine_schema SET version = version + 1")
        .await
        .unwrap();
    let error = PgStorage::connect(&db.url()).await.err().unwrap();
    assert!(
        error.to_string().contains("newer than this engine"),
        "{error}"
    );
}

// ---- The command line on PostgreSQL: --store, copy, a killed import ----

fn engine_cli(args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new(crate::support::engine_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "engine {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout_of(args: &[&str]) -> Vec<u8> {
    engine_cli(args).stdout
}

/// Writes sensors with edge values (NaN payloads, -0.0, subnormals,
/// infinities, extreme timestamps, 255-byte ids) into an embedded store.
async fn fill_embedded(dir: &std::path::Path, big: usize) -> Vec<String> {
    let store = open_embedded(dir, EmbeddedOptions::default()).await;
    let ids = vec![
        format!("{}x", "Ü".repeat(127)),
        "Kessel Ü1/Temperatur, \"Nord\"".to_owned(),
        "plant/line-1/pressure".to_owned(),
    ];
    let edge = [
        f64::from_bits(0x7ff0_0000_0000_0001),
        f64::from_bits(0xfff8_0000_0000_0123),
        -0.0,
        f64::from_bits(1),
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.1 + 0.2,
    ];
    for (n, id) in ids.iter().enumerate() {
        let id = sensor(id);
        let mut points: Vec<Point> = edge
            .iter()
            .enumerate()
            .map(|(i, &v)| point(i as i64 - 3, v, i as u8))
            .collect();
        points.push(point(MIN_TIMESTAMP_MS, 1.0, 0));
        points.push(point(MAX_TIMESTAMP_MS, 2.0, 255));
        store.write(samples(&id, points)).await.unwrap();
        let count = if n == 2 { big } else { 1000 };
        for chunk in (0..count).collect::<Vec<_>>().chunks(100_000) {
            let batch = chunk
                .iter()
                .map(|&i| point(1_767_225_600_000 + i as i64 * 1000, i as f64 * 0.25, 192));
            store.write(samples(&id, batch)).await.unwrap();
        }
    }
    store.close().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_embedded_to_postgres_and_back_keeps_every_sensor_identical() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ids = fill_embedded(a.path(), 300_000).await;
    let db = TestDatabase::create().await;
    let url = db.url();
    let (a_dir, b_dir) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());

    let report = engine_cli(&["copy", "--from", a_dir, "--to", &url]);
    let table = String::from_utf8(report.stdout).unwrap();
    assert_eq!(table.lines().count(), 1 + ids.len(), "{table}");
    engine_cli(&["copy", "--from", &url, "--to", b_dir]);
    // Rerunning changes nothing and says so.
    let rerun = engine_cli(&["copy", "--from", a_dir, "--to", &url]);
    let said = String::from_utf8(rerun.stderr).unwrap();
    assert_eq!(said.matches("already there").count(), ids.len(), "{said}");
    assert_eq!(
        String::from_utf8(rerun.stdout).unwrap(),
        table,
        "same checksums"
    );

    let listing = |location: &[&str]| stdout_of(&[&["sensors"], location].concat());
    let sensors = listing(&["--data-dir", a_dir]);
    assert_eq!(listing(&["--store", &url]), sensors);
    assert_eq!(listing(&["--data-dir", b_dir]), sensors);
    for id in &ids {
        let export = |location: &[&str]| {
            stdout_of(&[&["export", "--sensor", id.as_str()], location].concat())
        };
        let original = export(&["--data-dir", a_dir]);
        assert!(original.len() > 100);
        assert!(
            export(&["--store", &url]) == original,
            "{id} from PostgreSQL"
        );
        assert!(
            export(&["--data-dir", b_dir]) == original,
            "{id} after the round trip"
        );
    }
    // Bit for bit, NaN payloads included (CSV writes every NaN as `NaN`).
    let (a_store, b_store) = (
        open_embedded(a.path(), EmbeddedOptions::default()).await,
        open_embedded(b.path(), EmbeddedOptions::default()).await,
    );
    for id in &ids {
        let id = sensor(id);
        assert_eq!(
            bits(&scan_all(&*a_store, &id, TimeRange::ALL).await),
            bits(&scan_all(&*b_store, &id, TimeRange::ALL).await)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_is_finished_by_a_rerun() {
    let a = tempfile::tempdir().unwrap();
    let ids = fill_embedded(a.path(), 600_000).await;
    let db = TestDatabase::create().await;
    let url = db.url();
    let a_dir = a.path().to_str().unwrap();
    let mut child = std::process::Command::new(crate::support::engine_bin())
        .args(["copy", "--from", a_dir, "--to", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Sensors go in byte order of their ids: a small one, the big one
    // (plant/...), a small one.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0);
        if line.starts_with("copied") {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap(); // SIGKILL, in the middle of the big sensor
    child.wait().unwrap();

    let rerun = engine_cli(&["copy", "--from", a_dir, "--to", &url]);
    let said = String::from_utf8(rerun.stderr).unwrap();
    assert_eq!(said.matches("already there").count(), 1, "{said}");
    assert_eq!(said.matches("copied").count(), 2, "{said}");
    for id in &ids {
        let export = |location: &[&str]| {
            stdout_of(&[&["export", "--sensor", id.as_str()], location].concat())
        };
        assert!(
            export(&["--store", &url]) == export(&["--data-dir", a_dir]),
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_killed_midway_leaves_nothing_in_postgres() {
    use std::io::Write;
    let db = TestDatabase::create().await;
    let url = db.url();
    drop(db.open().await); // the schema exists: only the import's rows count
    let observer = db.client().await;
    let mut child = std::process::Command::new(crate::support::engine_bin())
        .args(["import", "--store", &url, "--sensor", "killed"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut csv = String::from("timestamp_ms,value,quality\n");
    for i in 0..200_000 {
        csv.push_str(&format!("{i},{}.5,192\n", i % 1000));
    }
    input.write_all(csv.as_bytes()).unwrap();
    input.flush().unwrap();
    // The rows are on their way into PostgreSQL, inside the import's COPY.
    let copying = eventually(Duration::from_secs(20), || async {
        let row = observer
            .query_one(
                "SELECT coalesce(sum(tuples_processed), 0)::bigint FROM pg_stat_progress_copy \
                 WHERE datname = $1",
                &[&db.name],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) > 0
    })
    .await;
    assert!(copying, "the import never reached PostgreSQL");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(input);

    let gone = eventually(Duration::from_secs(10), || async {
        let row = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db.name],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) == 0
    })
    .await;
    assert!(gone, "the killed import's session lingers");
    for table in ["points", "sensors", "sensor_stats"] {
        let rows: i64 = observer
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "{table}");
    }
    let store = db.open().await;
    assert!(store.sensors().await.unwrap().is_empty());
}

/// Long scans are read in pieces (time slices of about equal point counts
/// by the statistics): every point comes once and in order, however the
/// points are spread, and a reader that stops early stops the pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_scans_in_pieces_return_every_point_once() {
    let db = TestDatabase::create().await;
    let store = db
        .open_with(PgOptions {
            scan_piece_points: 7_000,
            ..PgOptions::default()
        })
        .await;
    let id = sensor("pieces");
    // Dense, then sparse, then the extremes: pieces by time are uneven.
    let mut expected: Vec<Point> = (0..100_000).map(|i| point(i, i as f64, 1)).collect();
    expected.extend((0..20).map(|i| point(1_000_000_000 + i * 999_999_937, -(i as f64), 2)));
    expected.extend([
        point(MIN_TIMESTAMP_MS, 0.5, 3),
        point(MAX_TIMESTAMP_MS, 1.5, 4),
    ]);
    store
        .write(samples(&id, expected.iter().rev().copied()))
        .await
        .unwrap();
    expected.sort_by_key(|p| p.timestamp_ms);
    for (start, end) in [
        (i64::MIN, i64::MAX),
        (0, 100_000),
        (50_000, 2_000_000_000),
        (-1, 99_999),
        (99_999, 100_000),
        (MAX_TIMESTAMP_MS, i64::MAX),
    ] {
        let range = TimeRange::new(start, end).unwrap();
        let want: Vec<Point> = expected
            .iter()
            .copied()
            .filter(|p| range.contains(p.timestamp_ms))
            .collect();
        let read = scan_all(&*store, &id, range).await;
        assert_eq!(bits(&read), bits(&want), "[{start}, {end})");
    }
    let observer = db.client().await;
    let mut scan = store.scan(&id, TimeRange::ALL);
    scan.next().await.unwrap().unwrap();
    drop(scan);
    let stopped = eventually(Duration::from_secs(10), || async {
        running_scans(&db, &observer).await == 0
    })
    .await;
    assert!(stopped);
}
