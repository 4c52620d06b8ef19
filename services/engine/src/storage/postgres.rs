//! [`PgStorage`]: the [`StorageEngine`] on PostgreSQL, for several engines
//! sharing one database (and for operators who already run PostgreSQL,
//! TimescaleDB or Citus).
//!
//! # Design
//!
//! ```text
//! engine_schema(version)              the schema version (see `schema`)
//! sensors(id, name unique)            sensor ids → small integer keys
//! points(sensor, ts, value, quality, version, overwritten)
//!     primary key (sensor, ts), partitioned by month of ts
//! sensor_stats(sensor, points, first_ts, last_ts)
//! direct_write_version                a sequence: one value per direct write
//! ```
//!
//! - **Bit-exact values**: points travel only in PostgreSQL's *binary* COPY
//!   format (see `copy`); text would lose NaN payloads. `value` is never
//!   compared or sorted in SQL (PostgreSQL takes all NaNs as equal and above
//!   every number, and -0 = 0), so M4 runs in Rust over streamed rows: the
//!   trait's default `downsample`, the embedded store's algorithm exactly.
//! - **Writes** (and imports) COPY their rows into a temporary staging table,
//!   then one statement upserts them into `points` and adds what was new to
//!   `sensor_stats`, in one transaction. The upsert replaces a stored point
//!   only if the new version is at least as high (`WHERE points.version <=
//!   EXCLUDED.version`), so a redelivered stream message never overwrites a
//!   newer point, whichever engine stores it and whenever.
//! - **Versions** are u64 (stream sequences below 2^63, direct writes above)
//!   stored order-preserving in a signed bigint by flipping the top bit
//!   ([`stored_version`]). A direct write takes one value of the sequence
//!   `direct_write_version`: shared by every engine on the database, handed
//!   out in request order, surviving restarts, and costing one `nextval` in
//!   the upsert statement itself. (A hybrid clock per engine would need
//!   synchronised clocks to order writes of different engines; the sequence
//!   orders them by the database alone.) Of two racing direct writes of one
//!   point, the one that drew the higher version wins, whichever commits last.
//! - **Imports** are one transaction: COPY of the whole source into the
//!   staging table, then one upsert with one version; the last row of a
//!   timestamp wins (`DISTINCT ON` over the row number). A failing source or
//!   a killed engine leaves nothing behind.
//! - **Scans** read pages of 16 Ki points, each one short query returning
//!   three arrays in binary (keyset paging on `ts`), into a bounded channel
//!   at the reader's pace: a slow reader leaves no query running, and one
//!   that drops the stream mid-query gets that query cancelled (and its
//!   connection closed instead of pooled, so a late cancel cannot hit the
//!   next user's query). COPY OUT was the first design; tokio-postgres
//!   handles its message per row at about a third of the page speed.
//!   Long ranges are read in two time pieces at once (see `scan_into`).
//! - **Health** is a background probe (`SELECT 1` every second) plus what
//!   every operation sees: an unreachable database is reported as
//!   [`StoreHealth::Degraded`], and `Ok` again once it answers.
//!
//! Cluster mode (later): writes already carry the stream `seq` per point and
//! commit atomically, so an engine can acknowledge its NATS messages after
//! the commit, and a `NOTIFY` in the write transaction can tell the other
//! engines' live views.

mod copy;
mod schema;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use deadpool_postgres::{
    HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::{
    ImportSummary, PointStream, SensorInfo, StorageEngine, StorageError, StoreHealth,
    receiver_stream,
};
use crate::model::{
    MAX_STREAM_SEQ, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, PointBatch, Sample, SensorId, TimeRange,
    check_timestamp,
};

pub use self::schema::SCHEMA_VERSION;

/// Points in a page of a scan: one query, one batch (about 280 KiB).
const SCAN_BATCH_POINTS: usize = 16 * 1024;
/// Batches a scan decodes ahead of its reader.
const SCAN_READ_AHEAD: usize = 4;
/// COPY bytes sent to the server at a time during an import.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the background probe checks the database.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Every new connection: the staging tables, one pair per connection
/// (temporary tables are private to a session), emptied by every commit;
/// and the planner kept from sorting or bitmap-scanning where the primary
/// key's order serves. Without statistics (right after a load, before
/// autovacuum analyses a new partition) it estimates a handful of rows and
/// picks a bitmap scan plus a sort for a scan page, reading the whole rest
/// of the range for each page of 16 Ki points. The engine's other
/// statements sort only where nothing else can (staged rows, DISTINCT ON).
/// JIT off: the penalty that disables sorts lifts every such plan's cost
/// over `jit_above_cost`, and compiling took 180 ms of a 30 ms write.
const SESSION_SETUP: &str = "
    SET enable_sort = off;
    SET enable_bitmapscan = off;
    SET jit = off;
    CREATE TEMP TABLE write_stage (
        sensor integer, ts bigint, value double precision, quality smallint, version bigint
    ) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE import_stage (
        ts bigint, value double precision, quality smallint, ord bigint
    ) ON COMMIT DELETE ROWS;
";

const COPY_WRITE_STAGE: &str = "COPY write_stage FROM STDIN (FORMAT binary)";
const COPY_IMPORT_STAGE: &str = "COPY import_stage FROM STDIN (FORMAT binary)";

/// The guarded upsert and the statistics of what was new, shared by writes
/// and imports: `{source}` yields `(sensor, ts, value, quality, version)`
/// with at most one row per key, `next.version` is this write's direct
/// version. Rows go in key order so concurrent writers lock in one order.
macro_rules! upsert {
    ($source:literal) => {
        concat!(
            "WITH next AS (SELECT nextval('direct_write_version') AS version),
            written AS (
                INSERT INTO points AS p (sensor, ts, value, quality, version) ",
            $source,
            " ON CONFLICT (sensor, ts) DO UPDATE
                    SET value = EXCLUDED.value, quality = EXCLUDED.quality,
                        version = EXCLUDED.version, overwritten = true
                    WHERE p.version <= EXCLUDED.version
                RETURNING p.sensor, p.ts, NOT p.overwritten AS inserted
            )
            INSERT INTO sensor_stats AS st (sensor, points, first_ts, last_ts)
            SELECT sensor, count(*) FILTER (WHERE inserted), min(ts), max(ts)
            FROM written GROUP BY sensor ORDER BY sensor
            ON CONFLICT (sensor) DO UPDATE
                SET points = st.points + EXCLUDED.points,
                    first_ts = least(st.first_ts, EXCLUDED.first_ts),
                    last_ts = greatest(st.last_ts, EXCLUDED.last_ts)"
        )
    };
}

/// The fast path for points that are all new (live readings, a first
/// import): a plain INSERT, about twice as fast as the upsert's speculative
/// insertion, with statistics straight from the source rows. Any stored key
/// among them fails it with a unique violation; the caller then rolls back
/// to a savepoint and upserts. `{source}` as for [`upsert!`]; `{stats}`
/// yields `(sensor, ts)` of the same rows.
macro_rules! insert_new {
    ($source:literal, $stats:literal) => {
        concat!(
            "WITH next AS (SELECT nextval('direct_write_version') AS version),
            written AS (INSERT INTO points (sensor, ts, value, quality, version) ",
            $source,
            ")
            INSERT INTO sensor_stats AS st (sensor, points, first_ts, last_ts)
            SELECT sensor, count(*), min(ts), max(ts) FROM (",
            $stats,
            ") rows GROUP BY sensor ORDER BY sensor
            ON CONFLICT (sensor) DO UPDATE
                SET points = st.points + EXCLUDED.points,
                    first_ts = least(st.first_ts, EXCLUDED.first_ts),
                    last_ts = greatest(st.last_ts, EXCLUDED.last_ts)"
        )
    };
}

/// A write's rows are unique per key already (resolved in Rust).
const WRITE_UPSERT: &str = upsert!(
    "SELECT s.sensor, s.ts, s.value, s.quality, coalesce(s.version, next.version)
     FROM write_stage s CROSS JOIN next ORDER BY s.sensor, s.ts"
);
const WRITE_NEW: &str = insert_new!(
    "SELECT s.sensor, s.ts, s.value, s.quality, coalesce(s.version, next.version)
     FROM write_stage s CROSS JOIN next",
    "SELECT sensor, ts FROM write_stage"
);

/// An import's rows may repeat a timestamp: the last one (highest `ord`) wins.
const IMPORT_UPSERT: &str = upsert!(
    "SELECT $1::integer, l.ts, l.value, l.quality, next.version
     FROM (SELECT DISTINCT ON (ts) ts, value, quality FROM import_stage ORDER BY ts, ord DESC) l
     CROSS JOIN next ORDER BY l.ts"
);
/// An import whose timestamps strictly increase (an export, a store's scan)
/// needs no de-duplication.
const IMPORT_NEW_SORTED: &str = insert_new!(
    "SELECT $1::integer, ts, value, quality, next.version FROM import_stage CROSS JOIN next",
    "SELECT $1::integer AS sensor, ts FROM import_stage"
);

/// A version as stored: the u64 with its top bit flipped, as i64. Keeps the
/// order (stream sequences 1..2^63-1 become negative, direct versions from
/// 2^63 become 0 and up), so SQL compares versions as plain bigints.
pub fn stored_version(version: u64) -> i64 {
    (version ^ (1 << 63)) as i64
}

/// Tuning of [`PgStorage`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections to PostgreSQL at most. A running scan (an export) holds
    /// one for its duration, two while it reads a piece ahead; at least 2.
    pub pool_size: usize,
    /// Points in a piece of a long scan (see `scan_into`); the default,
    /// 128 Ki points, is about 2 MiB decoded.
    pub scan_piece_points: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            pool_size: 16,
            scan_piece_points: 128 * 1024,
        }
    }
}

/// The PostgreSQL store. Cheap to share: wrap it in an `Arc`.
pub struct PgStorage {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// For the short-lived connections of schema changes, apart from the
    /// pool so that an import holding a pooled connection never waits for
    /// another one.
    config: tokio_postgres::Config,
    /// `host:port/database`, for messages (never the password).
    target: String,
    /// Sensor ids seen committed; ids are never reused or changed.
    sensor_keys: RwLock<HashMap<SensorId, i32>>,
    /// Months that have a partition, when the engine manages the partitions
    /// of `points` (`None` for a table the operator created, such as a
    /// TimescaleDB hypertable).
    partitions: Option<Mutex<HashSet<i64>>>,
    /// One partition creator at a time in this process (the database
    /// serialises creators of all engines with an advisory lock).
    partition_creation: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    health: Mutex<StoreHealth>,
    scan_piece_points: usize,
    /// Set when the last all-new attempt found a stored key: the next write
    /// goes straight to the upsert.
    upsert_next: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A PostgreSQL error as a [`StorageError`]: a full disk is
/// [`StorageError::Full`], everything else the backend's own error.
fn pg_error(error: tokio_postgres::Error) -> StorageError {
    match error.as_db_error() {
        Some(db) if *db.code() == SqlState::DISK_FULL => {
            StorageError::Full(format!("PostgreSQL: {}", db.message()))
        }
        Some(db) => {
            StorageError::Backend(format!("PostgreSQL {}: {}", db.code().code(), db.message()))
        }
        None => StorageError::Backend(format!("PostgreSQL: {error}")),
    }
}

impl PgStorage {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB`, any libpq-style
    /// URL or key=value string tokio-postgres reads; no TLS), creating or
    /// migrating the schema.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: PgOptions) -> Result<Self, StorageError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StorageError::InvalidInput(format!("store URL {url:?}: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("sensor-engine");
        }
        let target = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // A broken connection is found by its closed socket; a query
                // per checkout would cost a round trip on every operation.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(SESSION_SETUP)
                        .await
                        .map_err(HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StorageError::Backend(format!("PostgreSQL connection pool: {e}")))?;

        let mut client = connect_direct(&config, &target).await?;
        let partitioned = schema::migrate(&mut client).await?;
        let partitions = if partitioned {
            let months = schema::existing_partitions(&client).await?;
            Some(Mutex::new(months.into_iter().collect()))
        } else {
            None
        };
        drop(client);
        let inner = Arc::new(Inner {
            pool,
            config,
            target,
            sensor_keys: RwLock::default(),
            partitions,
            partition_creation: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            health: Mutex::new(StoreHealth::Ok),
            upsert_next: AtomicBool::new(false),
            scan_piece_points: options.scan_piece_points.max(1),
        });
        // Fails here, not at the first request, if the pool cannot connect.
        drop(inner.client().await?);
        tokio::spawn(probe(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }
}

/// `host:port/database` of a configuration.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{database}")
}

async fn connect_direct(
    config: &tokio_postgres::Config,
    target: &str,
) -> Result<tokio_postgres::Client, StorageError> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        StorageError::Backend(format!("cannot connect to PostgreSQL at {target}: {e}"))
    })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Checks the database every [`PROBE_INTERVAL`] until the store is closed
/// or dropped, so `health()` is honest even when nothing else runs.
async fn probe(store: Weak<Inner>) {
    loop {
        let Some(inner) = store.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let answer = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let client = inner.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| inner.failed(e))
        })
        .await;
        match answer {
            Ok(Ok(_)) => inner.reachable(),
            Ok(Err(_)) => {} // already recorded by `client` or `failed`
            Err(_) => inner.unreachable("no answer within 5 s"),
        }
        drop(inner);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

impl Inner {
    fn check_open(&self) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StorageError::Closed)
        } else {
            Ok(())
        }
    }

    fn unreachable(&self, reason: &str) {
        let message = format!("PostgreSQL at {} is unreachable: {reason}", self.target);
        let mut health = lock(&self.health);
        if *health == StoreHealth::Ok {
            tracing::warn!("{message}");
        }
        *health = StoreHealth::Degraded(message);
    }

    fn reachable(&self) {
        let mut health = lock(&self.health);
        if *health != StoreHealth::Ok {
            tracing::info!(target = %self.target, "PostgreSQL is reachable again");
            *health = StoreHealth::Ok;
        }
    }

    /// A pooled connection; an unreachable database is recorded in health.
    async fn client(&self) -> Result<Object, StorageError> {
        match self.pool.get().await {
            Ok(client) => Ok(client),
            Err(PoolError::Closed) => Err(StorageError::Closed),
            Err(error) => {
                self.unreachable(&error.to_string());
                Err(StorageError::Backend(format!(
                    "cannot connect to PostgreSQL at {}: {error}",
                    self.target
                )))
            }
        }
    }

    /// Maps an error of a query, recording a lost connection in health.
    fn failed(&self, error: tokio_postgres::Error) -> StorageError {
        if error.is_closed() || error.as_db_error().is_none() {
            self.unreachable(&error.to_string());
        }
        pg_error(error)
    }

    /// The keys of `ids`, creating the missing sensors inside `tx` (so a
    /// rolled-back import leaves no sensor behind). The caller caches them
    /// once `tx` has committed.
    async fn sensor_keys(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        ids: &[&SensorId],
    ) -> Result<HashMap<SensorId, i32>, StorageError> {
        let mut keys = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        {
            let cache = self.sensor_keys.read().unwrap_or_else(|p| p.into_inner());
            for &id in ids {
                match cache.get(id) {
                    Some(&key) => {
                        keys.insert(id.clone(), key);
                    }
                    None => missing.push(id.as_str()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(keys);
        }
        tx.execute(
            "INSERT INTO sensors (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
            &[&missing],
        )
        .await
        .map_err(|e| self.failed(e))?;
        let rows = tx
            .query(
                "SELECT name, id FROM sensors WHERE name = ANY($1::text[])",
                &[&missing],
            )
            .await
            .map_err(|e| self.failed(e))?;
        for row in rows {
            keys.insert(stored_sensor_id(row.get(0))?, row.get(1));
        }
        Ok(keys)
    }

    fn remember_sensor_keys(&self, keys: HashMap<SensorId, i32>) {
        let mut cache = self.sensor_keys.write().unwrap_or_else(|p| p.into_inner());
        cache.extend(keys);
    }

    /// Makes sure every month in `months` has its partition.
    async fn ensure_partitions(&self, months: BTreeSet<i64>) -> Result<(), StorageError> {
        let Some(known) = &self.partitions else {
            return Ok(());
        };
        let missing = |known: &HashSet<i64>| -> Vec<i64> {
            months
                .iter()
                .copied()
                .filter(|m| !known.contains(m))
                .collect()
        };
        if missing(&lock(known)).is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.partition_creation.lock().await;
        let months = missing(&lock(known));
        if months.is_empty() {
            return Ok(());
        }
        let mut client = connect_direct(&self.config, &self.target).await?;
        schema::create_partitions(&mut client, &months).await?;
        lock(known).extend(months);
        Ok(())
    }
}

/// The months of `timestamps`, computed once per run of one month.
fn months_of(timestamps: impl Iterator<Item = i64>) -> BTreeSet<i64> {
    let mut months = BTreeSet::new();
    let mut current = (0, 0); // [start, end) of the last month seen
    for ts in timestamps {
        if !(current.0..current.1).contains(&ts) {
            let month = schema::month_of(ts);
            current = (
                schema::month_start_ms(month),
                schema::month_start_ms(month + 1),
            );
            months.insert(month);
        }
    }
    months
}

fn stored_sensor_id(name: &str) -> Result<SensorId, StorageError> {
    SensorId::new(name)
        .map_err(|e| StorageError::Corrupt(format!("stored sensor id {name:?}: {e}")))
}

fn invalid_timestamp(
    timestamp_ms: i64,
) -> impl FnOnce(crate::model::InvalidTimestamp) -> StorageError {
    move |e| StorageError::InvalidInput(format!("timestamp {timestamp_ms}: {e}"))
}

/// Moves the staged rows into `points`: first with `fresh` (all new; empty
/// to skip it) under a savepoint, and if a key was already stored, with
/// `upsert`.
async fn store_staged(
    inner: &Inner,
    tx: &deadpool_postgres::Transaction<'_>,
    fresh: &str,
    upsert: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(), tokio_postgres::Error> {
    if !fresh.is_empty() && !inner.upsert_next.swap(false, Ordering::Relaxed) {
        let statement = tx.prepare_cached(fresh).await?;
        tx.batch_execute("SAVEPOINT fresh").await?;
        match tx.execute(&statement, params).await {
            Ok(_) => return tx.batch_execute("RELEASE SAVEPOINT fresh").await,
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT fresh").await?;
                // Overwrites come in runs (a replay, a re-import): skip the
                // attempt next time, then try it again.
                inner.upsert_next.store(true, Ordering::Relaxed);
            }
            Err(error) => return Err(error),
        }
    }
    let statement = tx.prepare_cached(upsert).await?;
    tx.execute(&statement, params).await.map(drop)
}

/// COPYs `rows` (binary COPY bytes, header to trailer) with `statement`.
async fn copy_in(
    tx: &deadpool_postgres::Transaction<'_>,
    statement: &str,
    rows: Bytes,
) -> Result<(), tokio_postgres::Error> {
    let statement = tx.prepare_cached(statement).await?;
    let sink = tx.copy_in::<_, Bytes>(&statement).await?;
    pin_mut!(sink);
    let mut at = 0;
    while at < rows.len() {
        let end = (at + COPY_CHUNK_BYTES).min(rows.len());
        sink.feed(rows.slice(at..end)).await?;
        at = end;
    }
    sink.finish().await?;
    Ok(())
}

#[async_trait]
impl StorageEngine for PgStorage {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        let inner = &*self.inner;
        inner.check_open()?;
        if samples.is_empty() {
            return Ok(());
        }
        for sample in &samples {
            let ts = sample.point.timestamp_ms;
            check_timestamp(ts).map_err(invalid_timestamp(ts))?;
            if let Some(seq) = sample.seq.filter(|seq| !(1..=MAX_STREAM_SEQ).contains(seq)) {
                return Err(StorageError::InvalidInput(format!(
                    "stream sequence {seq} is outside 1..={MAX_STREAM_SEQ}"
                )));
            }
        }
        inner
            .ensure_partitions(months_of(samples.iter().map(|s| s.point.timestamp_ms)))
            .await?;

        let mut client = inner.client().await?;
        let tx = client.transaction().await.map_err(|e| inner.failed(e))?;
        let mut ids: Vec<&SensorId> = samples.iter().map(|s| &s.sensor_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let keys = inner.sensor_keys(&tx, &ids).await?;

        // One row per (sensor, timestamp): the highest version, the last
        // written among equals (a direct write outranks every stream seq).
        let mut order: Vec<(i32, i64, u64, usize)> = samples
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let key = keys.get(&s.sensor_id).copied().unwrap_or_default();
                (key, s.point.timestamp_ms, s.seq.unwrap_or(u64::MAX), index)
            })
            .collect();
        order.sort_unstable();
        let mut rows = BytesMut::with_capacity(21 + order.len() * copy::WRITE_ROW_LEN);
        copy::put_header(&mut rows);
        for (at, &(key, ts, _, index)) in order.iter().enumerate() {
            if order
                .get(at + 1)
                .is_some_and(|next| (next.0, next.1) == (key, ts))
            {
                continue;
            }
            let sample = &samples[index];
            copy::put_write_row(
                &mut rows,
                key,
                &sample.point,
                sample.seq.map(stored_version),
            );
        }
        copy::put_trailer(&mut rows);

        copy_in(&tx, COPY_WRITE_STAGE, rows.freeze())
            .await
            .map_err(|e| inner.failed(e))?;
        store_staged(inner, &tx, WRITE_NEW, WRITE_UPSERT, &[])
            .await
            .map_err(|e| inner.failed(e))?;
        tx.commit().await.map_err(|e| inner.failed(e))?;
        inner.remember_sensor_keys(keys);
        inner.reachable();
        Ok(())
    }

    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        // Nothing is stored outside the accepted range; the clamp also keeps
        // the bounds plain bigint literals.
        let start = range.start_ms.max(MIN_TIMESTAMP_MS);
        let end = range.end_ms.min(MAX_TIMESTAMP_MS + 1);
        if start >= end {
            return futures_util::stream::empty().boxed();
        }
        let (sender, receiver) = mpsc::channel(SCAN_READ_AHEAD);
        let inner = Arc::clone(&self.inner);
        let sensor_id = sensor_id.clone();
        tokio::spawn(async move {
            if let Err(error) = scan_into(&inner, &sensor_id, start, end, &sender).await {
                let _ = sender.send(Err(error)).await;
            }
        });
        receiver_stream(receiver)
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        let inner = &*self.inner;
        let client = inner.client().await?;
        let rows = client
            .query(
                "SELECT s.name, s.id, st.points, st.first_ts, st.last_ts \
                 FROM sensor_stats st JOIN sensors s ON s.id = st.sensor \
                 WHERE st.points > 0 ORDER BY s.name",
                &[],
            )
            .await
            .map_err(|e| inner.failed(e))?;
        let mut keys = HashMap::with_capacity(rows.len());
        let mut sensors = Vec::with_capacity(rows.len());
        for row in rows {
            let sensor_id = stored_sensor_id(row.get(0))?;
            keys.insert(sensor_id.clone(), row.get(1));
            sensors.push(sensor_info(sensor_id, row.get(2), row.get(3), row.get(4)));
        }
        inner.remember_sensor_keys(keys);
        Ok(sensors)
    }

    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        let inner = &*self.inner;
        let client = inner.client().await?;
        let row = client
            .query_opt(
                "SELECT st.points, st.first_ts, st.last_ts \
                 FROM sensor_stats st JOIN sensors s ON s.id = st.sensor \
                 WHERE s.name = $1 AND st.points > 0",
                &[&sensor_id.as_str()],
            )
            .await
            .map_err(|e| inner.failed(e))?;
        Ok(row.map(|row| sensor_info(sensor_id.clone(), row.get(0), row.get(1), row.get(2))))
    }

    async fn import(
        &self,
        sensor_id: &SensorId,
        mut batches: PointStream,
    ) -> Result<ImportSummary, StorageError> {
        let inner = &*self.inner;
        inner.check_open()?;
        let mut client = inner.client().await?;
        let tx = client.transaction().await.map_err(|e| inner.failed(e))?;
        let keys = inner.sensor_keys(&tx, &[sensor_id]).await?;
        let key = keys.get(sensor_id).copied().unwrap_or_default();

        let mut rows: i64 = 0;
        let mut months = BTreeSet::new();
        // Whether the timestamps strictly increase across the whole source.
        let mut sorted = true;
        let mut last_ts = i64::MIN;
        {
            let statement = tx
                .prepare_cached(COPY_IMPORT_STAGE)
                .await
                .map_err(|e| inner.failed(e))?;
            let sink = tx
                .copy_in::<_, Bytes>(&statement)
                .await
                .map_err(|e| inner.failed(e))?;
            pin_mut!(sink);
            let mut buffer = BytesMut::with_capacity(COPY_CHUNK_BYTES + 64 * 1024);
            copy::put_header(&mut buffer);
            // An error returns here: the sink, dropped unfinished, aborts
            // the COPY and the transaction rolls back.
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                for point in batch.iter() {
                    let ts = point.timestamp_ms;
                    check_timestamp(ts).map_err(invalid_timestamp(ts))?;
                    sorted &= rows == 0 || ts > last_ts;
                    last_ts = ts;
                    copy::put_import_row(&mut buffer, &point, rows);
                    rows += 1;
                }
                months.append(&mut months_of(batch.timestamps.iter().copied()));
                if buffer.len() >= COPY_CHUNK_BYTES {
                    sink.send(buffer.split().freeze())
                        .await
                        .map_err(|e| inner.failed(e))?;
                }
            }
            copy::put_trailer(&mut buffer);
            sink.send(buffer.freeze())
                .await
                .map_err(|e| inner.failed(e))?;
            sink.finish().await.map_err(|e| inner.failed(e))?;
        }
        if rows == 0 {
            // Nothing to store; leave no sensor behind either.
            return Ok(ImportSummary { points: 0 });
        }
        inner.ensure_partitions(months).await?;
        // A large unsorted import sorts in memory rather than on disk.
        tx.batch_execute("SET LOCAL work_mem = '64MB'")
            .await
            .map_err(|e| inner.failed(e))?;
        let fresh = if sorted { IMPORT_NEW_SORTED } else { "" };
        store_staged(inner, &tx, fresh, IMPORT_UPSERT, &[&key])
            .await
            .map_err(|e| inner.failed(e))?;
        tx.commit().await.map_err(|e| inner.failed(e))?;
        inner.remember_sensor_keys(keys);
        Ok(ImportSummary {
            points: rows as u64,
        })
    }

    fn health(&self) -> StoreHealth {
        lock(&self.inner.health).clone()
    }

    async fn close(&self) -> Result<(), StorageError> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.pool.close();
        Ok(())
    }
}

fn sensor_info(sensor_id: SensorId, count: i64, first: i64, last: i64) -> SensorInfo {
    SensorInfo {
        sensor_id,
        count: count as u64,
        first_timestamp_ms: first,
        last_timestamp_ms: last,
    }
}

type BatchSender = mpsc::Sender<Result<PointBatch, StorageError>>;

/// Streams `[start, end)` of a sensor into `sender`.
///
/// A range of more than [`PgOptions::scan_piece_points`] (estimated from the sensor's
/// statistics) is read in pieces of about that many points, each its own
/// COPY on its own connection, the next one running while the current one
/// is read: two server processes share the work of one export, and the
/// piece read ahead bounds the memory. Pieces are disjoint time ranges read
/// in order, so the stream stays in strictly increasing timestamp order.
async fn scan_into(
    inner: &Arc<Inner>,
    sensor_id: &SensorId,
    start: i64,
    end: i64,
    sender: &BatchSender,
) -> Result<(), StorageError> {
    let client = inner.client().await?;
    let span = client
        .query_opt(
            "SELECT st.sensor, st.points, st.first_ts, st.last_ts \
             FROM sensors s JOIN sensor_stats st ON st.sensor = s.id WHERE s.name = $1",
            &[&sensor_id.as_str()],
        )
        .await
        .map_err(|e| inner.failed(e))?;
    let Some(span) = span else { return Ok(()) };
    let (key, points, first, last): (i32, i64, i64, i64) =
        (span.get(0), span.get(1), span.get(2), span.get(3));
    let (start, end) = (start.max(first), end.min(last.saturating_add(1)));
    if start >= end {
        return Ok(());
    }
    let estimate = i128::from(points) * (i128::from(end) - i128::from(start))
        / (i128::from(last) - i128::from(first) + 1);
    let piece_points = inner.scan_piece_points;
    let pieces = (estimate / piece_points as i128).clamp(1, 1 << 16) as i64;
    if pieces == 1 {
        return read_range(inner, client, key, start, end, sender).await;
    }
    drop(client);
    let bound = |piece: i64| -> i64 {
        let offset = (i128::from(end) - i128::from(start)) * i128::from(piece) / i128::from(pieces);
        (i128::from(start) + offset) as i64
    };
    let read_piece = |piece: i64| {
        let (piece_sender, receiver) = mpsc::channel(piece_points / SCAN_BATCH_POINTS + 2);
        if piece >= pieces {
            return receiver; // past the last piece: closed and empty
        }
        let (inner, from, to) = (Arc::clone(inner), bound(piece), bound(piece + 1));
        tokio::spawn(async move {
            let result = match inner.client().await {
                Ok(client) => read_range(&inner, client, key, from, to, &piece_sender).await,
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                let _ = piece_sender.send(Err(error)).await;
            }
        });
        receiver
    };
    let mut current = read_piece(0);
    let mut ahead = read_piece(1);
    for piece in 0..pieces {
        while let Some(item) = current.recv().await {
            let failed = item.is_err();
            // A gone reader drops the pieces' receivers; their tasks cancel.
            if sender.send(item).await.is_err() || failed {
                return Ok(());
            }
        }
        current = std::mem::replace(&mut ahead, read_piece(piece + 2));
    }
    Ok(())
}

/// One page of a scan: at most `$4` points from `$2`, as three arrays in
/// one row. Far faster than COPY OUT's message per row through
/// tokio-postgres, and binary, so values keep every bit. (Arrays of a sorted
/// subquery come out sorted in practice; `read_range` checks and sorts
/// rather than trust it.)
const SCAN_PAGE: &str = "SELECT count(*), array_agg(ts), array_agg(value), array_agg(quality) \
    FROM (SELECT ts, value, quality FROM points \
          WHERE sensor = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4) page";

/// Streams `[start, end)` of the sensor with `key` into `sender`, a page of
/// [`SCAN_BATCH_POINTS`] at a time, each page a short query that starts
/// after the last timestamp of the one before. While the reader is slow no
/// query runs; if it goes away during one, that query is cancelled.
async fn read_range(
    inner: &Inner,
    client: Object,
    key: i32,
    start: i64,
    end: i64,
    sender: &BatchSender,
) -> Result<(), StorageError> {
    let read = tokio::select! {
        read = read_pages(inner, &client, key, start, end, sender) => Some(read),
        () = sender.closed() => None,
    };
    match read {
        Some(read) => read,
        None => {
            abandon(client).await;
            Ok(())
        }
    }
}

/// The page loop of [`read_range`]; everything it awaits on the server
/// (preparing waits for locks too) is cancelled if the reader goes away.
async fn read_pages(
    inner: &Inner,
    client: &Object,
    key: i32,
    start: i64,
    end: i64,
    sender: &BatchSender,
) -> Result<(), StorageError> {
    let statement = client
        .prepare_cached(SCAN_PAGE)
        .await
        .map_err(|e| inner.failed(e))?;
    let limit = SCAN_BATCH_POINTS as i64;
    let mut from = start;
    while from < end {
        let page = client
            .query_one(&statement, &[&key, &from, &end, &limit])
            .await
            .map_err(|e| inner.failed(e))?;
        let count: i64 = page.get(0);
        if count == 0 {
            break;
        }
        let batch = page_batch(page.get(1), page.get(2), page.get::<_, Vec<i16>>(3))?;
        from = batch.timestamps[batch.len() - 1].saturating_add(1);
        if sender.send(Ok(batch)).await.is_err() || count < limit {
            break;
        }
    }
    inner.reachable();
    Ok(())
}

/// The columns of a page as a batch in strictly increasing time order.
fn page_batch(
    timestamps: Vec<i64>,
    values: Vec<f64>,
    qualities: Vec<i16>,
) -> Result<PointBatch, StorageError> {
    let qualities = qualities
        .into_iter()
        .map(|q| {
            u8::try_from(q)
                .map_err(|_| StorageError::Corrupt(format!("stored quality {q} is not a byte")))
        })
        .collect::<Result<Vec<u8>, _>>()?;
    if timestamps.len() != values.len() || timestamps.len() != qualities.len() {
        return Err(StorageError::Corrupt(
            "a scan page with uneven columns".into(),
        ));
    }
    let mut batch = PointBatch {
        timestamps,
        values,
        qualities,
    };
    if !batch.timestamps.is_sorted() {
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_unstable_by_key(|&i| batch.timestamps[i]);
        batch = order.into_iter().map(|i| batch.point(i)).collect();
    }
    if batch.timestamps.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err(StorageError::Corrupt("a timestamp stored twice".into()));
    }
    Ok(batch)
}

/// Stops the query running on `client` and closes the connection rather
/// than return it to the pool, where a late cancel could hit another query.
async fn abandon(client: Object) {
    if let Err(error) = client.cancel_token().cancel_query(NoTls).await {
        tracing::debug!(%error, "cancelling an abandoned scan failed");
    }
    drop(Object::take(client));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_versions_keep_the_order_of_versions() {
        let versions = [
            0,
            1,
            2,
            MAX_STREAM_SEQ - 1,
            MAX_STREAM_SEQ,
            MAX_STREAM_SEQ + 1,
            MAX_STREAM_SEQ + 2,
            u64::MAX,
        ];
        for pair in versions.windows(2) {
            assert!(
                stored_version(pair[0]) < stored_version(pair[1]),
                "{pair:?}"
            );
        }
        assert_eq!(
            stored_version(MAX_STREAM_SEQ + 1),
            0,
            "direct writes from 0"
        );
        assert_eq!(stored_version(1), i64::MIN + 1);
    }

    #[test]
    fn months_of_a_run_of_timestamps() {
        let day = 86_400_000;
        let months = months_of([-1, 0, 1, 30 * day, 31 * day, 0].into_iter());
        assert_eq!(
            months.into_iter().collect::<Vec<_>>(),
            vec![1969 * 12 + 11, 1970 * 12, 1970 * 12 + 1]
        );
    }
}
