//! Live view: the points of a sensor pushed to its followers as they are
//! written.
//!
//! [`LiveStorage`] wraps any [`StorageEngine`] and, after each successful
//! write or import, hands the points to a [`LiveHub`]: one
//! `tokio::sync::broadcast` channel per followed sensor. The gRPC `Subscribe`
//! call ([`crate::grpc`]) and the HTTP server-sent-events endpoint
//! ([`routes`]) both read from the hub, so every way of writing (gRPC, NATS,
//! HTTP import, the demo simulator) is visible live, and no transport needs to
//! know about the others.
//!
//! Followers never slow down writers: publishing is a non-blocking send, and a
//! follower that falls behind by more than [`CHANNEL_CAPACITY`] writes is told
//! to resynchronise ([`LiveUpdate::Resync`]) instead of holding back the rest.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::Query;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::http::{ApiError, params};
use crate::model::TimeRange;
use crate::model::{PointBatch, Sample, SensorId};
use crate::storage::{
    ByteStream, Downsampled, Dropped, ImportSummary, PointStream, SensorInfo, SharedStorage,
    StorageEngine, StorageError, StoreHealth,
};

/// Writes a follower may fall behind before it is told to resynchronise.
///
/// At one write per second per sensor (a typical plant) that is a quarter of
/// an hour; a burst of writes faster than a browser reads costs a refetch,
/// never memory without bound.
pub const CHANNEL_CAPACITY: usize = 1024;

/// Most points an import buffers for followers; a larger import is announced
/// as [`LiveUpdate::Resync`] instead, since imports may exceed memory.
pub const IMPORT_LIVE_LIMIT: usize = 100_000;

/// What a follower of a sensor receives.
#[derive(Debug, Clone)]
pub enum LiveUpdate {
    /// Points just written, in the order they were written.
    Points(Arc<PointBatch>),
    /// Points were missed (the follower fell behind, or a large import
    /// rewrote history): refetch the range on screen.
    Resync,
}

/// The fan-out of written points to their followers. Cheap to clone.
#[derive(Clone, Default)]
pub struct LiveHub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    /// One channel per followed sensor. A std mutex: it is held only for
    /// map lookups and non-blocking sends, never across an `.await`.
    channels: Mutex<HashMap<SensorId, broadcast::Sender<LiveUpdate>>>,
    /// Set at shutdown: new followers get an ended stream, so long-lived
    /// HTTP and gRPC streams let graceful shutdown finish.
    closed: AtomicBool,
}

/// Points destined to followers, prepared before a write and delivered after
/// it succeeded.
type Pending = Vec<(broadcast::Sender<LiveUpdate>, PointBatch)>;

impl LiveHub {
    pub fn new() -> Self {
        Self::default()
    }

    fn channels(&self) -> MutexGuard<'_, HashMap<SensorId, broadcast::Sender<LiveUpdate>>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every operation on it is a single insert/remove/lookup).
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Follows one sensor from now on.
    pub fn subscribe(&self, sensor_id: &SensorId) -> LiveSubscription {
        let mut channels = self.channels();
        if self.inner.closed.load(Ordering::Acquire) {
            // A receiver whose sender is already gone: it ends at once.
            let (_, receiver) = broadcast::channel(1);
            return LiveSubscription { receiver };
        }
        channels.retain(|_, sender| sender.receiver_count() > 0);
        let receiver = channels
            .entry(sensor_id.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        LiveSubscription { receiver }
    }

    /// Number of sensors somebody follows (for tests and metrics).
    pub fn followed_sensors(&self) -> usize {
        self.channels()
            .values()
            .filter(|sender| sender.receiver_count() > 0)
            .count()
    }

    /// Ends every follower's stream and refuses new ones; called at shutdown.
    pub fn close(&self) {
        let mut channels = self.channels();
        self.inner.closed.store(true, Ordering::Release);
        channels.clear();
    }

    /// Groups the followed sensors' points of a write. Costs one lock and
    /// nothing else when nobody follows anything.
    fn prepare(&self, samples: &[Sample]) -> Pending {
        let channels = self.channels();
        if channels.is_empty() {
            return Vec::new();
        }
        let mut batches: HashMap<&SensorId, (broadcast::Sender<LiveUpdate>, PointBatch)> =
            HashMap::new();
        for sample in samples {
            if let Some((_, batch)) = batches.get_mut(&sample.sensor_id) {
                batch.push(sample.point);
            } else if let Some(sender) = channels.get(&sample.sensor_id)
                && sender.receiver_count() > 0
            {
                let mut batch = PointBatch::default();
                batch.push(sample.point);
                batches.insert(&sample.sensor_id, (sender.clone(), batch));
            }
        }
        batches.into_values().collect()
    }

    fn deliver(pending: Pending) {
        for (sender, batch) in pending {
            // An error only means the last follower left meanwhile.
            let _ = sender.send(LiveUpdate::Points(Arc::new(batch)));
        }
    }

    /// Publishes points already stored (used by writers that bypass
    /// [`LiveStorage`]; everything else goes through it).
    pub fn publish(&self, samples: &[Sample]) {
        Self::deliver(self.prepare(samples));
    }

    /// Publishes points of one sensor stored elsewhere (another engine on
    /// the same store, [`crate::cluster`]); nothing when nobody follows it.
    pub fn publish_points(&self, sensor_id: &SensorId, batch: PointBatch) {
        if let Some(sender) = self.sender_of(sensor_id)
            && !batch.is_empty()
        {
            let _ = sender.send(LiveUpdate::Points(Arc::new(batch)));
        }
    }

    /// Whether somebody follows `sensor_id` (so that points of other
    /// engines are decoded only for followed sensors).
    pub fn is_followed(&self, sensor_id: &SensorId) -> bool {
        self.sender_of(sensor_id).is_some()
    }

    /// Tells the followers of `sensor_id` to refetch (another engine
    /// imported more than it could send).
    pub fn resync(&self, sensor_id: &SensorId) {
        if let Some(sender) = self.sender_of(sensor_id) {
            let _ = sender.send(LiveUpdate::Resync);
        }
    }

    /// Tells every follower to refetch: points of other engines may have
    /// been missed (the link between engines was down).
    pub fn resync_all(&self) {
        for sender in self.channels().values() {
            let _ = sender.send(LiveUpdate::Resync);
        }
    }

    fn sender_of(&self, sensor_id: &SensorId) -> Option<broadcast::Sender<LiveUpdate>> {
        self.channels()
            .get(sensor_id)
            .filter(|sender| sender.receiver_count() > 0)
            .cloned()
    }
}

/// One follower of one sensor.
pub struct LiveSubscription {
    receiver: broadcast::Receiver<LiveUpdate>,
}

impl LiveSubscription {
    /// The next update; `None` once the hub closed.
    pub async fn recv(&mut self) -> Option<LiveUpdate> {
        match self.receiver.recv().await {
            Ok(update) => Some(update),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(LiveUpdate::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The updates as a stream, ending when the hub closes.
    pub fn into_stream(self) -> impl Stream<Item = LiveUpdate> + Send + 'static {
        stream::unfold(self, |mut subscription| async move {
            let update = subscription.recv().await?;
            Some((update, subscription))
        })
    }
}

/// Where a [`LiveStorage`] also sends what it stored, for the live views of
/// other engines sharing its store (cluster mode: [`crate::cluster`]).
///
/// Two steps because the write consumes its samples: [`LiveRelay::encode`]
/// before it, [`LiveRelay::send`] once it is durable, so no engine shows a
/// point that was not stored.
pub trait LiveRelay: Send + Sync + 'static {
    /// The messages telling the other engines about these samples.
    fn encode(&self, samples: &[Sample]) -> Vec<bytes::Bytes>;
    /// Sends what [`LiveRelay::encode`] made; never blocks (live is best
    /// effort: a message that cannot be sent now is dropped).
    fn send(&self, messages: Vec<bytes::Bytes>);
    /// Tells the other engines' followers of `sensor_id` to refetch.
    fn resync(&self, sensor_id: &SensorId);
}

/// A [`StorageEngine`] that tells a [`LiveHub`] about every successful write
/// and import of the store it wraps. Everything else is delegated unchanged.
pub struct LiveStorage {
    inner: SharedStorage,
    hub: LiveHub,
    relay: Option<Arc<dyn LiveRelay>>,
}

impl LiveStorage {
    pub fn new(inner: SharedStorage) -> Self {
        Self::with_relay(inner, LiveHub::new(), None)
    }

    /// With a hub made beforehand and a relay to other engines (cluster
    /// mode), which also feeds their writes into `hub`.
    pub fn with_relay(
        inner: SharedStorage,
        hub: LiveHub,
        relay: Option<Arc<dyn LiveRelay>>,
    ) -> Self {
        Self { inner, hub, relay }
    }

    /// The hub to subscribe to (clone it into the gRPC service and the
    /// HTTP routes).
    pub fn hub(&self) -> &LiveHub {
        &self.hub
    }
}

#[async_trait]
impl StorageEngine for LiveStorage {
    async fn write(&self, samples: Vec<Sample>) -> Result<(), StorageError> {
        // Prepared before the write consumes the samples; delivered only
        // once it is durable, so a follower never sees a point that is lost.
        let pending = self.hub.prepare(&samples);
        let relayed = self.relay.as_ref().map(|relay| relay.encode(&samples));
        let points = samples.len() as u64;
        self.inner.write(samples).await?;
        crate::metrics::points_written("write", points);
        LiveHub::deliver(pending);
        if let (Some(relay), Some(messages)) = (&self.relay, relayed) {
            relay.send(messages);
        }
        Ok(())
    }

    fn scan(&self, sensor_id: &SensorId, range: TimeRange) -> PointStream {
        self.inner.scan(sensor_id, range)
    }

    /// Forwarded: the inner store may decode into one batch.
    async fn read_prefix(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
        limit: usize,
    ) -> Result<PointBatch, StorageError> {
        self.inner.read_prefix(sensor_id, range, limit).await
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StorageError> {
        self.inner.sensors().await
    }

    async fn sensor(&self, sensor_id: &SensorId) -> Result<Option<SensorInfo>, StorageError> {
        self.inner.sensor(sensor_id).await
    }

    /// Forwarded, not the trait's default: the inner store may answer from
    /// summaries instead of a full scan.
    async fn downsample(
        &self,
        sensor_id: &SensorId,
        range: TimeRange,
        buckets: usize,
    ) -> Result<Downsampled, StorageError> {
        self.inner.downsample(sensor_id, range, buckets).await
    }

    async fn import(
        &self,
        sensor_id: &SensorId,
        batches: PointStream,
    ) -> Result<ImportSummary, StorageError> {
        let Some(sender) = self.hub.sender_of(sensor_id) else {
            let summary = self.inner.import(sensor_id, batches).await?;
            crate::metrics::points_written("import", summary.points);
            // Other engines' followers refetch rather than get a copy: an
            // import may be larger than memory.
            if let Some(relay) = &self.relay {
                relay.resync(sensor_id);
            }
            return Ok(summary);
        };
        // Somebody follows this sensor: keep a copy of a small import for
        // them, or just remember that it was too large to send.
        let copy = Arc::new(Mutex::new(Some(PointBatch::default())));
        let tee = {
            let copy = Arc::clone(&copy);
            batches
                .inspect(move |item| {
                    let mut copy = copy.lock().unwrap_or_else(|p| p.into_inner());
                    if let (Ok(batch), Some(kept)) = (item, copy.as_mut()) {
                        if kept.len() + batch.len() > IMPORT_LIVE_LIMIT {
                            *copy = None;
                        } else {
                            kept.extend_from_batch(batch);
                        }
                    }
                })
                .boxed()
        };
        let summary = self.inner.import(sensor_id, tee).await?;
        crate::metrics::points_written("import", summary.points);
        if let Some(relay) = &self.relay {
            relay.resync(sensor_id);
        }
        let kept = copy.lock().unwrap_or_else(|p| p.into_inner()).take();
        let update = match kept {
            Some(batch) if batch.is_empty() => return Ok(summary),
            Some(batch) => LiveUpdate::Points(Arc::new(batch)),
            None => LiveUpdate::Resync,
        };
        let _ = sender.send(update);
        Ok(summary)
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }

    fn disk_usage(&self) -> Option<crate::storage::DiskUsage> {
        self.inner.disk_usage()
    }

    async fn drop_before(
        &self,
        sensor_id: &SensorId,
        before_ms: i64,
    ) -> Result<Dropped, StorageError> {
        self.inner.drop_before(sensor_id, before_ms).await
    }

    fn backup(&self) -> Result<ByteStream, StorageError> {
        self.inner.backup()
    }

    async fn close(&self) -> Result<(), StorageError> {
        self.hub.close();
        self.inner.close().await
    }
}

/// Query of `GET /api/v1/live`.
#[derive(Debug, Deserialize)]
struct LiveQuery {
    sensor_id: Option<String>,
}

/// Data of an `event: points` server-sent event.
#[derive(Debug, Serialize)]
struct PointsEvent<'a> {
    timestamps: &'a [i64],
    /// JSON has no NaN or infinity: non-finite values are `null`.
    values: Vec<Option<f64>>,
    qualities: &'a [u8],
}

/// The live HTTP endpoint, for the HTTP server to `.merge`:
///
/// `GET /api/v1/live?sensor_id=ID` answers `text/event-stream`. Each write to
/// the sensor becomes one event
///
/// ```text
/// event: points
/// data: {"timestamps":[1767225600000],"values":[21.5],"qualities":[192]}
/// ```
///
/// (`null` for a non-finite value), and `event: resync` (data `{}`) asks the
/// client to refetch its range because points were missed. A comment is sent
/// every 15 s to keep proxies from closing an idle stream. The stream ends at
/// server shutdown; browsers' `EventSource` then reconnects by itself.
///
/// Errors answer `{"error": "invalid_parameter", "message": ...}` with 400,
/// the shape the rest of the API uses.
/// The live view's route.
pub const LIVE_PATH: &str = "/api/v1/live";

pub fn routes<S>(hub: LiveHub) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new().route(
        LIVE_PATH,
        get(
            move |caller: Option<axum::Extension<crate::auth::Principal>>,
                  query: Result<Query<LiveQuery>, _>| {
                live_events(hub.clone(), caller.map(|c| c.0), query)
            },
        ),
    )
}

/// `caller` is set by the HTTP router's authentication middleware, which
/// `engine serve` always puts in front of this route; only a router
/// assembled by hand (the tests of the live view) comes without one.
async fn live_events(
    hub: LiveHub,
    caller: Option<crate::auth::Principal>,
    query: Result<Query<LiveQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let sensor_id = params::sensor_id(query.sensor_id.as_deref())?;
    if caller.is_some_and(|caller| !caller.sees(sensor_id.as_str())) {
        return Err(ApiError::SensorNotFound(sensor_id));
    }
    let subscription = hub.subscribe(&sensor_id);
    let events = stream::once(async { Ok(Event::default().comment("following")) }).chain(
        subscription
            .into_stream()
            .map(|update| Ok::<_, Infallible>(sse_event(&update))),
    );
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Reverse proxies (nginx) would otherwise buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn sse_event(update: &LiveUpdate) -> Event {
    match update {
        LiveUpdate::Points(batch) => Event::default().event("points").data(points_json(batch)),
        LiveUpdate::Resync => Event::default().event("resync").data("{}"),
    }
}

/// The data line of an `event: points`.
fn points_json(batch: &PointBatch) -> String {
    let data = PointsEvent {
        timestamps: &batch.timestamps,
        values: batch
            .values
            .iter()
            .map(|v| v.is_finite().then_some(*v))
            .collect(),
        qualities: &batch.qualities,
    };
    // Serialising integers, finite floats and nulls cannot fail.
    serde_json::to_string(&data).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Point, quality};

    /// The real embedded store in a temporary directory, removed when the
    /// returned guard drops.
    pub(crate) fn embedded_store() -> (SharedStorage, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::embedded::EmbeddedStore::open(dir.path()).unwrap();
        (Arc::new(store), dir)
    }

    pub(crate) fn sample(id: &str, ts: i64, value: f64) -> Sample {
        Sample {
            sensor_id: SensorId::new(id).unwrap(),
            seq: None,
            point: Point {
                timestamp_ms: ts,
                value,
                quality: quality::GOOD,
            },
        }
    }

    #[tokio::test]
    async fn followers_get_only_their_sensors_points_after_the_write() {
        let (store, _dir) = embedded_store();
        let live = LiveStorage::new(store);
        let a = SensorId::new("a").unwrap();
        let mut follower = live.hub().subscribe(&a);
        live.write(vec![
            sample("a", 1, 1.0),
            sample("b", 1, 2.0),
            sample("a", 2, 3.0),
        ])
        .await
        .unwrap();
        let Some(LiveUpdate::Points(batch)) = follower.recv().await else {
            panic!("expected points");
        };
        assert_eq!(batch.timestamps, vec![1, 2]);
        assert_eq!(batch.values, vec![1.0, 3.0]);
    }

    #[tokio::test]
    async fn a_failed_write_publishes_nothing() {
        let (store, _dir) = embedded_store();
        let live = LiveStorage::new(store);
        let a = SensorId::new("a").unwrap();
        let mut follower = live.hub().subscribe(&a);
        let bad = sample("a", i64::MAX, 1.0);
        assert!(live.write(vec![bad]).await.is_err());
        live.hub().close();
        assert!(follower.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_lagging_follower_is_told_to_resync() {
        let (store, _dir) = embedded_store();
        let live = LiveStorage::new(store);
        let a = SensorId::new("a").unwrap();
        let mut follower = live.hub().subscribe(&a);
        for ts in 0..(CHANNEL_CAPACITY as i64 + 5) {
            live.write(vec![sample("a", ts, 0.0)]).await.unwrap();
        }
        assert!(matches!(follower.recv().await, Some(LiveUpdate::Resync)));
    }

    #[tokio::test]
    async fn small_imports_are_published_and_closing_ends_followers() {
        let (store, _dir) = embedded_store();
        let live = LiveStorage::new(store);
        let a = SensorId::new("a").unwrap();
        let mut follower = live.hub().subscribe(&a);
        let batch: PointBatch = [sample("a", 5, 1.5).point].into_iter().collect();
        live.import(&a, stream::iter(vec![Ok(batch)]).boxed())
            .await
            .unwrap();
        let Some(LiveUpdate::Points(got)) = follower.recv().await else {
            panic!("expected points");
        };
        assert_eq!(got.timestamps, vec![5]);
        live.close().await.unwrap();
        assert!(follower.recv().await.is_none());
        assert!(live.hub().subscribe(&a).recv().await.is_none());
    }

    /// The numbers of an event's `values` parse back (with Rust's correctly
    /// rounded parser, not serde_json's) to the very bits written: -0.0,
    /// subnormals and full-precision values included.
    #[test]
    fn sse_event_values_are_bit_exact() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut values: Vec<f64> = (0..20_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                f64::from_bits(state)
            })
            .collect();
        values.extend([
            -0.0,
            0.0,
            5e-324,
            -f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            0.1 + 0.2,
        ]);
        let batch: PointBatch = values
            .iter()
            .enumerate()
            .map(|(i, &value)| Point {
                timestamp_ms: i as i64,
                value,
                quality: 192,
            })
            .collect();
        let json = points_json(&batch);
        let start = json.find(r#""values":["#).unwrap() + r#""values":["#.len();
        let end = start + json[start..].find(']').unwrap();
        let texts: Vec<&str> = json[start..end].split(',').collect();
        assert_eq!(texts.len(), values.len());
        for (text, value) in texts.iter().zip(&values) {
            if value.is_finite() {
                let parsed: f64 = text.parse().unwrap();
                assert_eq!(parsed.to_bits(), value.to_bits(), "{text}");
            } else {
                assert_eq!(*text, "null");
            }
        }
    }

    #[test]
    fn sse_events_write_non_finite_values_as_null() {
        let batch: PointBatch = [
            sample("a", 1, f64::NAN).point,
            sample("a", 2, 2.5).point,
            sample("a", 3, f64::NEG_INFINITY).point,
        ]
        .into_iter()
        .collect();
        assert_eq!(
            points_json(&batch),
            r#"{"timestamps":[1,2,3],"values":[null,2.5,null],"qualities":[192,192,192]}"#
        );
    }
}
