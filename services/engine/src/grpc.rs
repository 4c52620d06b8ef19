//! The gRPC API: `sensor.v1.SensorEngine` (see `proto/sensor/v1/sensor.proto`
//! at the repository root), the standard health service and reflection.
//!
//! The service depends on the [`StorageEngine`] trait and the [`LiveHub`]
//! only. [`status_from`] is the one place a [`StorageError`] becomes a
//! [`Status`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;

use crate::audit::{Actor, Audit, AuditEvent, Outcome, Via, WriteKind, WriteSession};
use crate::auth::{Action, Authenticator, Principal, Unauthorized};
use crate::live::{LiveHub, LiveUpdate};
use crate::model::{Point, PointBatch, Sample, SensorId, TimeRange, check_timestamp};
use crate::storage::{SharedStorage, StorageError, StoreHealth};

use pb::sensor_engine_server::{SensorEngine, SensorEngineServer};

/// Code generated from `proto/sensor/v1/sensor.proto` by `build.rs`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sensor.v1");

    /// The encoded descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/sensor_descriptor.bin"));
}

/// Largest request message accepted: 64 MiB, about a million points. tonic's
/// default of 4 MiB would cut batched writers off at ~150k points a message.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Most points in one `ScanResponse`: ~1.2 MB, well under the 4 MiB every
/// gRPC client accepts by default.
pub const SCAN_BATCH_POINTS: usize = 65_536;

/// Decoded `Write` requests waiting for the store, per call.
const WRITE_QUEUE: usize = 4;

/// Most points merged into one store write from queued `Write` requests.
const MAX_MERGED_POINTS: usize = 1_000_000;

/// Aborts a task when dropped, so a failed call stops its reader.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `sensor.v1.SensorEngine` service.
#[derive(Clone)]
pub struct GrpcService {
    storage: SharedStorage,
    hub: LiveHub,
    /// Whether calls must carry a [`Principal`] (set by [`interceptor`]);
    /// without one they are refused. Off: everyone may do everything.
    auth: bool,
    /// Where write sessions are recorded (`Scan` is a read, not an export:
    /// not recorded).
    audit: Option<Arc<Audit>>,
}

impl GrpcService {
    /// `storage` should be the [`crate::live::LiveStorage`] whose hub is
    /// `hub`, so that writes made here reach subscribers too.
    pub fn new(storage: SharedStorage, hub: LiveHub) -> Self {
        Self {
            storage,
            hub,
            auth: false,
            audit: None,
        }
    }

    /// Who is calling: the interceptor's [`Principal`]; with auth off,
    /// everyone.
    fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        match request.extensions().get::<Principal>() {
            Some(principal) => Ok(principal.clone()),
            None if !self.auth => Ok(Principal::unrestricted()),
            None => Err(Status::unauthenticated("no credentials")),
        }
    }
}

/// Checks `authorization: Bearer SECRET` of every call and attaches the
/// [`Principal`]; refuses with `UNAUTHENTICATED` (the reason, never the
/// secret). The health service is served without it.
pub fn interceptor(
    auth: Option<Arc<Authenticator>>,
    audit: Option<Arc<Audit>>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let Some(auth) = &auth else {
            request.extensions_mut().insert(Principal::unrestricted());
            return Ok(request);
        };
        let result = match request.metadata().get("authorization") {
            None => Err(Unauthorized::Missing),
            Some(value) => match value.to_str().ok().and_then(|v| v.split_once(' ')) {
                Some((scheme, secret)) if scheme.eq_ignore_ascii_case("bearer") => {
                    auth.authenticate(secret.trim())
                }
                _ => Err(Unauthorized::Malformed),
            },
        };
        request.metadata_mut().remove("authorization");
        match result {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Err(reason) => {
                if let Some(audit) = &audit {
                    audit.refused(AuditEvent::Refused {
                        actor: Actor::of(Via::Grpc, None, request.remote_addr()),
                        status: "UNAUTHENTICATED".into(),
                        method: "grpc".into(),
                        path: "sensor.v1.SensorEngine".into(),
                        reason: Some(reason.to_string()),
                    });
                }
                Err(Status::unauthenticated(format!(
                    "{reason}: send metadata authorization: Bearer TOKEN"
                )))
            }
        }
    }
}

fn sensor_not_found(sensor_id: &SensorId) -> Status {
    Status::not_found(format!("sensor {sensor_id:?} not found"))
}

/// Maps a storage failure to a gRPC status: the only such mapping.
///
/// Rejected input is the caller's fault and says why; internal failures are
/// logged here, once, and answered without details.
pub fn status_from(error: StorageError) -> Status {
    match error {
        StorageError::InvalidInput(message) => Status::invalid_argument(message),
        StorageError::Closed => Status::unavailable("the store is closed; retry later"),
        StorageError::Full(message) => {
            Status::resource_exhausted(format!("no space left for the store: {message}"))
        }
        StorageError::Unsupported(what) => {
            Status::unimplemented(format!("not supported by this store: {what}"))
        }
        StorageError::Failed(message) => Status::unavailable(format!(
            "the store refuses writes until it is restarted: {message}"
        )),
        error => {
            tracing::error!(%error, "gRPC request failed in the store");
            match error {
                StorageError::Corrupt(_) => {
                    Status::data_loss("stored data is corrupt; see the server log")
                }
                _ => Status::internal("internal error; see the server log"),
            }
        }
    }
}

pub(crate) fn parse_sensor_id(id: &str) -> Result<SensorId, Status> {
    SensorId::new(id)
        .map_err(|e| Status::invalid_argument(format!("invalid sensor_id {id:?}: {e}")))
}

/// Validates a request's points; the whole request is rejected on the first
/// bad one, naming it.
pub(crate) fn samples_from_proto(points: Vec<pb::Point>) -> Result<Vec<Sample>, Status> {
    let mut samples = Vec::with_capacity(points.len());
    // Writers usually send runs of one sensor: reuse the id instead of
    // validating and allocating it again per point.
    let mut last: Option<SensorId> = None;
    for (index, point) in points.into_iter().enumerate() {
        let sensor_id = match &last {
            Some(id) if id.as_str() == point.sensor_id => id.clone(),
            _ => {
                let id = parse_sensor_id(&point.sensor_id).map_err(|s| {
                    Status::invalid_argument(format!("point {index}: {}", s.message()))
                })?;
                last = Some(id.clone());
                id
            }
        };
        let timestamp_ms = check_timestamp(point.timestamp_ms)
            .map_err(|e| Status::invalid_argument(format!("point {index}: timestamp_ms {e}")))?;
        let quality = u8::try_from(point.quality).map_err(|_| {
            Status::invalid_argument(format!(
                "point {index}: quality {} is above 255",
                point.quality
            ))
        })?;
        // `value` has explicit presence: a writer that forgot it must hear
        // so, not find 0.0 stored.
        let value = point.value.ok_or_else(|| {
            Status::invalid_argument(format!(
                "point {index} (sensor_id {:?}, timestamp_ms {timestamp_ms}): value is not set",
                sensor_id.as_str()
            ))
        })?;
        samples.push(Sample {
            sensor_id,
            seq: None,
            point: Point {
                timestamp_ms,
                value,
                quality,
            },
        });
    }
    Ok(samples)
}

fn scan_response(batch: &PointBatch) -> pb::ScanResponse {
    pb::ScanResponse {
        timestamps_ms: batch.timestamps.clone(),
        values: batch.values.clone(),
        qualities: batch.qualities.iter().map(|&q| u32::from(q)).collect(),
    }
}

/// Splits a store batch into messages of at most [`SCAN_BATCH_POINTS`].
fn scan_responses(batch: PointBatch) -> Vec<pb::ScanResponse> {
    if batch.len() <= SCAN_BATCH_POINTS {
        return vec![scan_response(&batch)];
    }
    (0..batch.len())
        .step_by(SCAN_BATCH_POINTS)
        .map(|start| {
            let end = (start + SCAN_BATCH_POINTS).min(batch.len());
            pb::ScanResponse {
                timestamps_ms: batch.timestamps[start..end].to_vec(),
                values: batch.values[start..end].to_vec(),
                qualities: batch.qualities[start..end]
                    .iter()
                    .map(|&q| u32::from(q))
                    .collect(),
            }
        })
        .collect()
}

#[tonic::async_trait]
impl SensorEngine for GrpcService {
    async fn write(
        &self,
        request: Request<Streaming<pb::WriteRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let caller = self.caller(&request)?;
        // Recorded when the stream ends; `aborted` if the call is cancelled.
        let actor = Actor::of(Via::Grpc, Some(&caller), request.remote_addr());
        let refused_as = self.audit.is_some().then(|| actor.clone());
        let mut session = WriteSession::start(self.audit.as_ref(), WriteKind::GrpcWrite, actor);
        let mut requests = request.into_inner();
        // Pipelined: a reader task decodes and validates the next requests
        // while the store writes the previous ones, and requests that queued
        // up meanwhile are merged into one store write (one fsync).
        let (decoded, mut queue) = mpsc::channel::<Result<Vec<Sample>, Status>>(WRITE_QUEUE);
        let reader = AbortOnDrop(tokio::spawn(async move {
            loop {
                let item = match requests.message().await {
                    Ok(Some(message)) => samples_from_proto(message.points).and_then(|samples| {
                        // The whole request is refused if one point is not
                        // the caller's to write.
                        match samples
                            .iter()
                            .find(|s| !caller.allows(Action::Write, s.sensor_id.as_str()))
                        {
                            Some(s) => Err(Status::permission_denied(format!(
                                "this token may not write sensor {:?}",
                                s.sensor_id.as_str()
                            ))),
                            None => Ok(samples),
                        }
                    }),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if decoded.send(item).await.is_err() || failed {
                    return;
                }
            }
        }));
        let written: Result<u64, Status> = async {
            let mut points_written = 0u64;
            while let Some(item) = queue.recv().await {
                let mut samples = item?;
                let mut failure = None;
                while samples.len() < MAX_MERGED_POINTS {
                    match queue.try_recv() {
                        Ok(Ok(more)) => samples.extend(more),
                        Ok(Err(status)) => {
                            // The requests before the bad one are still written.
                            failure = Some(status);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !samples.is_empty() {
                    let count = samples.len() as u64;
                    for sample in &samples {
                        session.sensor(sample.sensor_id.as_str());
                    }
                    self.storage.write(samples).await.map_err(status_from)?;
                    session.stored(count);
                    points_written += count;
                }
                if let Some(status) = failure {
                    return Err(status);
                }
            }
            Ok(points_written)
        }
        .await;
        drop(reader);
        match written {
            Ok(points_written) => {
                session.finish(Outcome::Completed, None);
                Ok(Response::new(pb::WriteResponse { points_written }))
            }
            Err(status) => {
                if status.code() == tonic::Code::PermissionDenied
                    && let (Some(audit), Some(actor)) = (&self.audit, refused_as)
                {
                    audit.refused(AuditEvent::Refused {
                        actor,
                        status: "PERMISSION_DENIED".into(),
                        method: "grpc".into(),
                        path: "/sensor.v1.SensorEngine/Write".into(),
                        reason: Some(status.message().to_owned()),
                    });
                }
                let outcome = if status.code() == tonic::Code::Cancelled {
                    Outcome::Aborted
                } else {
                    Outcome::Failed
                };
                session.finish(outcome, Some(status.message().to_owned()));
                Err(status)
            }
        }
    }

    type ScanStream = BoxStream<'static, Result<pb::ScanResponse, Status>>;

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        let sensor_id = parse_sensor_id(&request.sensor_id)?;
        if !caller.sees(sensor_id.as_str()) {
            return Err(sensor_not_found(&sensor_id));
        }
        let start = request.start_ms.unwrap_or(i64::MIN);
        let end = request.end_ms.unwrap_or(i64::MAX);
        let range = TimeRange::new(start, end).ok_or_else(|| {
            Status::invalid_argument(format!("start_ms {start} is after end_ms {end}"))
        })?;
        if self
            .storage
            .sensor(&sensor_id)
            .await
            .map_err(status_from)?
            .is_none()
        {
            return Err(sensor_not_found(&sensor_id));
        }
        let responses = self
            .storage
            .scan(&sensor_id, range)
            .flat_map(|item| {
                let items: Vec<Result<pb::ScanResponse, Status>> = match item {
                    Ok(batch) => scan_responses(batch).into_iter().map(Ok).collect(),
                    Err(error) => vec![Err(status_from(error))],
                };
                stream::iter(items)
            })
            .boxed();
        Ok(Response::new(responses))
    }

    async fn list_sensors(
        &self,
        request: Request<pb::ListSensorsRequest>,
    ) -> Result<Response<pb::ListSensorsResponse>, Status> {
        let caller = self.caller(&request)?;
        let sensors = self.storage.sensors().await.map_err(status_from)?;
        Ok(Response::new(pb::ListSensorsResponse {
            sensors: sensors
                .into_iter()
                .filter(|info| caller.sees(info.sensor_id.as_str()))
                .map(|info| pb::SensorInfo {
                    sensor_id: info.sensor_id.to_string(),
                    count: info.count,
                    first_timestamp_ms: info.first_timestamp_ms,
                    last_timestamp_ms: info.last_timestamp_ms,
                })
                .collect(),
        }))
    }

    type SubscribeStream = BoxStream<'static, Result<pb::SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = self.caller(&request)?;
        let sensor_id = parse_sensor_id(&request.into_inner().sensor_id)?;
        if !caller.sees(sensor_id.as_str()) {
            return Err(sensor_not_found(&sensor_id));
        }
        let updates = self
            .hub
            .subscribe(&sensor_id)
            .into_stream()
            .map(|update| {
                Ok(match update {
                    LiveUpdate::Points(batch) => pb::SubscribeResponse {
                        timestamps_ms: batch.timestamps.clone(),
                        values: batch.values.clone(),
                        qualities: batch.qualities.iter().map(|&q| u32::from(q)).collect(),
                        resync: false,
                    },
                    LiveUpdate::Resync => pb::SubscribeResponse {
                        resync: true,
                        ..Default::default()
                    },
                })
            })
            .boxed();
        Ok(Response::new(updates))
    }
}

/// Serves the API, health and reflection on `listener` until `shutdown`
/// completes, then stops accepting, closes the live hub (which ends every
/// `Subscribe` stream, or graceful shutdown would wait for them forever) and
/// waits for the calls in flight.
pub async fn serve(
    listener: TcpListener,
    storage: SharedStorage,
    hub: LiveHub,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, storage, hub, None, None, None, shutdown).await
}

/// [`serve`] with every call but health checked against `auth` (`None`:
/// `--no-auth`, everyone may do everything), write sessions and refusals
/// recorded in `audit`, over TLS when `tls` is given
/// (`--tls-cert`/`--tls-key`: tonic's own rustls server, so every
/// connection must then be TLS and a plaintext client fails).
pub async fn serve_with(
    listener: TcpListener,
    storage: SharedStorage,
    hub: LiveHub,
    auth: Option<Arc<Authenticator>>,
    audit: Option<Arc<Audit>>,
    tls: Option<&crate::tls::TlsMaterial>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SensorEngineServer<GrpcService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection = match reflection {
        Ok(service) => Some(service),
        Err(error) => {
            // Only a broken build could get here; serve the API without it.
            tracing::error!(%error, "gRPC reflection disabled");
            None
        }
    };
    // The health service follows the store: NOT_SERVING once it refuses
    // writes until a restart (a full disk is not that: reads still work and
    // writes are answered RESOURCE_EXHAUSTED until there is room).
    let follow_store = {
        let (health, storage) = (health.clone(), storage.clone());
        tokio::spawn(async move {
            let mut failed = false;
            loop {
                let now_failed = matches!(storage.health(), StoreHealth::Failed(_));
                if now_failed != failed {
                    failed = now_failed;
                    if failed {
                        health
                            .set_not_serving::<SensorEngineServer<GrpcService>>()
                            .await;
                    } else {
                        health
                            .set_serving::<SensorEngineServer<GrpcService>>()
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut engine = GrpcService::new(storage, hub.clone());
    engine.auth = auth.is_some();
    engine.audit = audit.clone();
    let service = SensorEngineServer::new(engine).max_decoding_message_size(MAX_MESSAGE_BYTES);
    // Reflection describes the API, not data; still only for token holders
    // when auth is on. Health stays open for probes.
    let reflection =
        reflection.map(|r| InterceptedService::new(r, interceptor(auth.clone(), audit.clone())));
    let service = InterceptedService::new(service, interceptor(auth, audit));
    let shutdown: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        shutdown.await;
        follow_store.abort();
        health
            .set_not_serving::<SensorEngineServer<GrpcService>>()
            .await;
        hub.close();
    });
    tracing::info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "gRPC listening");
    // Without nodelay, Nagle's algorithm holds small Subscribe messages
    // back for tens of milliseconds (the builder's own nodelay setting only
    // applies to sockets it binds itself).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        ))?;
    }
    builder
        // Finds dead peers of long Subscribe streams.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::LiveStorage;
    use crate::live::tests::embedded_store;
    use std::sync::Arc;

    #[test]
    fn bad_points_are_rejected_with_their_index() {
        let point = |id: &str, ts: i64, q: u32| pb::Point {
            sensor_id: id.to_owned(),
            timestamp_ms: ts,
            value: Some(1.0),
            quality: q,
        };
        assert_eq!(
            samples_from_proto(vec![point("a", 1, 192), point("a", 2, 0)])
                .unwrap()
                .len(),
            2
        );
        let status = samples_from_proto(vec![point("a", 1, 192), point("", 1, 1)]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("point 1:"),
            "{}",
            status.message()
        );
        let status = samples_from_proto(vec![point("a", 1, 256)]).unwrap_err();
        assert!(status.message().contains("quality 256"));
        let status = samples_from_proto(vec![point("a", i64::MAX, 1)]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let mut unset = point("Kessel Ü1", 7, 192);
        unset.value = None;
        let status = samples_from_proto(vec![point("a", 1, 192), unset]).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            r#"point 1 (sensor_id "Kessel Ü1", timestamp_ms 7): value is not set"#
        );
    }

    #[test]
    fn large_batches_are_split_into_messages() {
        let batch: PointBatch = (0..(SCAN_BATCH_POINTS as i64 * 2 + 1))
            .map(|ts| Point {
                timestamp_ms: ts,
                value: 0.0,
                quality: 192,
            })
            .collect();
        let sizes: Vec<usize> = scan_responses(batch)
            .iter()
            .map(|r| r.timestamps_ms.len())
            .collect();
        assert_eq!(sizes, vec![SCAN_BATCH_POINTS, SCAN_BATCH_POINTS, 1]);
    }

    #[tokio::test]
    async fn scan_of_an_unknown_sensor_is_not_found_and_errors_map_once() {
        let (store, _dir) = embedded_store();
        let live = Arc::new(LiveStorage::new(store));
        let hub = live.hub().clone();
        let service = GrpcService::new(live, hub);
        let status = service
            .scan(Request::new(pb::ScanRequest {
                sensor_id: "nope".into(),
                start_ms: None,
                end_ms: None,
            }))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(
            status_from(StorageError::Closed).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            status_from(StorageError::Backend("x".into())).code(),
            tonic::Code::Internal
        );
    }
}
