//! Cluster mode: several engines on one PostgreSQL store and one NATS
//! JetStream stream, behind a load balancer.
//!
//! What makes it one system (see the README's "Cluster mode"):
//! - **Ingestion**: every engine pulls from the same durable consumer
//!   ([`crate::ingest::nats`]); JetStream hands each message to one of them,
//!   and it is acknowledged only after its PostgreSQL transaction committed.
//!   A point's version is its message's stream sequence, and the store keeps
//!   the highest version per point, so a redelivery or a race between
//!   engines never lets an older message overwrite a newer one.
//! - **Direct writes** (HTTP import, gRPC `Write`) take their version from a
//!   sequence in the database, shared by every engine and above every stream
//!   sequence: of two direct writes of one point, the one that drew the
//!   later version wins, whichever engine took it.
//! - **Live view**: this module. After a write is durable, the engine that
//!   made it publishes its points on a core NATS subject (not a stream:
//!   live is best effort, and history is in the store); every other engine
//!   feeds them into its own [`LiveHub`], so SSE and gRPC `Subscribe`
//!   clients of any engine see points stored by any engine. The client is
//!   made with `no_echo`, so an engine does not get its own points back.
//!   When the link drops, followers are told to refetch once it is back.
//!
//! Relayed messages are a small binary format (bit-exact values, no JSON):
//!
//! ```text
//! kind u8 (1 = points, 2 = resync), then entries until the end:
//!   id_len u16, id (UTF-8)                      [kind 2]
//!   id_len u16, id, count u32, count × (ts i64, value bits u64, quality u8)   [kind 1]
//! ```
//! all big-endian. A malformed message is dropped, never a panic.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::ingest::nats::{NatsConfig, connect};
use crate::live::{LiveHub, LiveRelay};
use crate::model::{Point, PointBatch, Sample, SensorId};

/// The default subject the engines of a cluster tell each other on; outside
/// the stream's `sensors.>` so the stream never captures it.
pub const DEFAULT_LIVE_SUBJECT: &str = "sensor_engine_live";

/// Largest relayed message: well under NATS's default 1 MiB payload limit.
const MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// Messages queued for sending; more are dropped (live is best effort, and
/// a writer must never wait for the live view).
const QUEUE: usize = 1024;

/// Pause before reconnecting after the link failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

const KIND_POINTS: u8 = 1;
const KIND_RESYNC: u8 = 2;
/// id_len + count.
const ENTRY_HEADER: usize = 2 + 4;
const POINT_BYTES: usize = 8 + 8 + 1;

/// The relay of one engine: what its writes send, and the task that sends
/// them and feeds the other engines' points into the local hub.
pub struct NatsLiveRelay {
    queue: mpsc::Sender<Bytes>,
    /// Messages dropped because the queue was full (for logs and tests).
    dropped: AtomicU64,
}

impl NatsLiveRelay {
    /// Starts the relay's task on `subject`, connected with `config`'s
    /// servers and credentials, until `shutdown`.
    pub fn start(
        config: NatsConfig,
        subject: String,
        hub: LiveHub,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (queue, outgoing) = mpsc::channel(QUEUE);
        let relay = Arc::new(Self {
            queue,
            dropped: AtomicU64::new(0),
        });
        let task = tokio::spawn(run(config, subject, hub, outgoing, shutdown));
        (relay, task)
    }

    /// Messages dropped so far because sending could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn enqueue(&self, message: Bytes) {
        if self.queue.try_send(message).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "live relay to other engines falls behind; dropping"
                );
            }
        }
    }
}

impl LiveRelay for NatsLiveRelay {
    fn encode(&self, samples: &[Sample]) -> Vec<Bytes> {
        encode_points(samples)
    }

    fn send(&self, messages: Vec<Bytes>) {
        for message in messages {
            self.enqueue(message);
        }
    }

    fn resync(&self, sensor_id: &SensorId) {
        self.enqueue(encode_resync(sensor_id));
    }
}

/// Connects, relays both ways, reconnects after a pause when the link
/// fails; returns at shutdown.
async fn run(
    config: NatsConfig,
    subject: String,
    hub: LiveHub,
    mut outgoing: mpsc::Receiver<Bytes>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut first = true;
    loop {
        let link = async {
            let client =
                connect(&config, "sensor-engine-live", |options| options.no_echo()).await?;
            let incoming = client.subscribe(subject.clone()).await?;
            Ok::<_, crate::ingest::nats::SessionError>((client, incoming))
        };
        let linked = tokio::select! {
            () = shutdown.as_mut() => return,
            linked = link => linked,
        };
        match linked {
            Ok((client, mut incoming)) => {
                if !first {
                    // Points of other engines may have been missed.
                    hub.resync_all();
                    tracing::info!("live relay between engines reconnected");
                }
                first = false;
                loop {
                    tokio::select! {
                        () = shutdown.as_mut() => {
                            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
                            return;
                        }
                        message = outgoing.recv() => {
                            let Some(message) = message else { return };
                            if let Err(error) = client.publish(subject.clone(), message).await {
                                tracing::debug!(%error, "live relay publish failed");
                                break;
                            }
                        }
                        message = incoming.next() => {
                            let Some(message) = message else { break };
                            if let Err(error) = deliver(&hub, message.payload) {
                                tracing::debug!(%error, "dropping a malformed live relay message");
                            }
                        }
                    }
                }
            }
            Err(error) => {
                first = false;
                tracing::debug!(%error, "live relay cannot reach NATS");
            }
        }
        tokio::select! {
            () = shutdown.as_mut() => return,
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

/// The messages for a write's samples, grouped per sensor in the order of
/// the write, each at most [`MAX_MESSAGE_BYTES`] (a sensor's points may span
/// several).
pub fn encode_points(samples: &[Sample]) -> Vec<Bytes> {
    let mut order: Vec<(&SensorId, Vec<Point>)> = Vec::new();
    let mut index: HashMap<&SensorId, usize> = HashMap::new();
    for sample in samples {
        let i = *index.entry(&sample.sensor_id).or_insert_with(|| {
            order.push((&sample.sensor_id, Vec::new()));
            order.len() - 1
        });
        order[i].1.push(sample.point);
    }
    let mut messages = Vec::new();
    let mut out = BytesMut::new();
    for (sensor_id, points) in order {
        let id = sensor_id.as_str().as_bytes();
        let mut rest = &points[..];
        while !rest.is_empty() {
            if out.is_empty() {
                out.put_u8(KIND_POINTS);
            }
            let room = MAX_MESSAGE_BYTES.saturating_sub(out.len() + ENTRY_HEADER + id.len());
            let take = (room / POINT_BYTES).min(rest.len());
            if take == 0 {
                messages.push(std::mem::take(&mut out).freeze());
                continue;
            }
            out.put_u16(id.len() as u16);
            out.put_slice(id);
            out.put_u32(take as u32);
            for point in &rest[..take] {
                out.put_i64(point.timestamp_ms);
                out.put_u64(point.value.to_bits());
                out.put_u8(point.quality);
            }
            rest = &rest[take..];
        }
    }
    if !out.is_empty() {
        messages.push(out.freeze());
    }
    messages
}

/// The message asking other engines' followers of `sensor_id` to refetch.
pub fn encode_resync(sensor_id: &SensorId) -> Bytes {
    let id = sensor_id.as_str().as_bytes();
    let mut out = BytesMut::with_capacity(3 + id.len());
    out.put_u8(KIND_RESYNC);
    out.put_u16(id.len() as u16);
    out.put_slice(id);
    out.freeze()
}

/// What a relayed message says.
#[derive(Debug, PartialEq)]
pub enum Relayed {
    Points(Vec<(SensorId, PointBatch)>),
    Resync(Vec<SensorId>),
}

/// Decodes a relayed message; an error for anything malformed.
pub fn decode(mut message: Bytes) -> Result<Relayed, String> {
    if message.is_empty() {
        return Err("empty message".into());
    }
    let kind = message.get_u8();
    if kind != KIND_POINTS && kind != KIND_RESYNC {
        return Err(format!("unknown kind {kind}"));
    }
    let mut points = Vec::new();
    let mut resyncs = Vec::new();
    while message.has_remaining() {
        if message.remaining() < 2 {
            return Err("truncated sensor id length".into());
        }
        let len = usize::from(message.get_u16());
        if message.remaining() < len {
            return Err("truncated sensor id".into());
        }
        let id = message.split_to(len);
        let id = std::str::from_utf8(&id).map_err(|e| format!("sensor id: {e}"))?;
        let sensor_id = SensorId::new(id).map_err(|e| format!("sensor id: {e}"))?;
        match kind {
            KIND_RESYNC => resyncs.push(sensor_id),
            KIND_POINTS => {
                if message.remaining() < 4 {
                    return Err("truncated point count".into());
                }
                let count = message.get_u32() as usize;
                if message.remaining() / POINT_BYTES < count {
                    return Err("truncated points".into());
                }
                let mut batch = PointBatch::with_capacity(count);
                for _ in 0..count {
                    batch.push(Point {
                        timestamp_ms: message.get_i64(),
                        value: f64::from_bits(message.get_u64()),
                        quality: message.get_u8(),
                    });
                }
                points.push((sensor_id, batch));
            }
            other => return Err(format!("unknown kind {other}")),
        }
    }
    Ok(match kind {
        KIND_RESYNC => Relayed::Resync(resyncs),
        _ => Relayed::Points(points),
    })
}

/// Hands a relayed message to the local followers.
fn deliver(hub: &LiveHub, message: Bytes) -> Result<(), String> {
    match decode(message)? {
        Relayed::Points(batches) => {
            for (sensor_id, batch) in batches {
                hub.publish_points(&sensor_id, batch);
            }
        }
        Relayed::Resync(sensors) => {
            for sensor_id in sensors {
                hub.resync(&sensor_id);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, ts: i64, value: f64) -> Sample {
        Sample {
            sensor_id: SensorId::new(id).unwrap(),
            seq: None,
            point: Point {
                timestamp_ms: ts,
                value,
                quality: 7,
            },
        }
    }

    #[test]
    fn points_round_trip_bit_exactly_grouped_per_sensor() {
        let nan = f64::from_bits(0x7ff8_0000_dead_beef);
        let samples = vec![
            sample("a", i64::MIN, -0.0),
            sample("b/é", 2, nan),
            sample("a", i64::MAX, 5e-324),
        ];
        let messages = encode_points(&samples);
        assert_eq!(messages.len(), 1);
        let Relayed::Points(batches) = decode(messages[0].clone()).unwrap() else {
            panic!("points expected");
        };
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].0.as_str(), "a");
        assert_eq!(batches[0].1.timestamps, vec![i64::MIN, i64::MAX]);
        assert_eq!(batches[0].1.values[0].to_bits(), (-0.0f64).to_bits());
        assert_eq!(batches[0].1.values[1].to_bits(), 1);
        assert_eq!(batches[1].0.as_str(), "b/é");
        assert_eq!(batches[1].1.values[0].to_bits(), nan.to_bits());
        assert_eq!(batches[1].1.qualities, vec![7]);
    }

    #[test]
    fn large_writes_are_split_under_the_payload_limit() {
        let samples: Vec<Sample> = (0..100_000).map(|i| sample("s", i, i as f64)).collect();
        let messages = encode_points(&samples);
        assert!(messages.len() > 1);
        let mut timestamps = Vec::new();
        for message in messages {
            assert!(message.len() <= MAX_MESSAGE_BYTES);
            let Relayed::Points(batches) = decode(message).unwrap() else {
                panic!("points expected");
            };
            for (_, batch) in batches {
                timestamps.extend(batch.timestamps);
            }
        }
        assert_eq!(timestamps, (0..100_000).collect::<Vec<i64>>());
    }

    #[test]
    fn resync_round_trips_and_garbage_is_an_error_not_a_panic() {
        let id = SensorId::new("plant/x").unwrap();
        assert_eq!(
            decode(encode_resync(&id)).unwrap(),
            Relayed::Resync(vec![id])
        );
        let good = encode_points(&[sample("a", 1, 1.0)])[0].clone();
        for cut in 0..good.len() {
            let _ = decode(good.slice(..cut));
        }
        for garbage in [
            &b""[..],
            b"\x09",
            b"\x01\xff\xff",
            b"\x01\x00\x01a\xff\xff\xff\xff",
        ] {
            assert!(decode(Bytes::copy_from_slice(garbage)).is_err());
        }
        assert!(decode(Bytes::from_static(b"\x01\x00\x02\xff\xfe\x00\x00\x00\x00")).is_err());
    }
}
