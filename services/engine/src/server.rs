//! `engine serve`: runs the HTTP server (and, with their flags, gRPC and the
//! NATS consumer) over one store until one shutdown signal stops them all.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::ingest::IngestStats;
use crate::ingest::nats::NatsConfig;
use crate::live::LiveStorage;
use crate::storage::SharedStorage;
use crate::{demo, grpc, ingest, live};

/// How long in-flight gRPC calls may take to finish after the shutdown
/// signal before they are cut (a client streaming `Write` forever must not
/// keep the process alive; its unacknowledged points are simply not stored).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `engine serve` was asked to run.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the HTTP API and the dashboard listen.
    pub http_addr: SocketAddr,
    /// Where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// The NATS server to consume readings from; `None` disables ingestion.
    pub nats_url: Option<String>,
    /// The built dashboard (`viz/dist`), served at `/`.
    pub web_dir: PathBuf,
    /// Run the built-in plant simulator.
    pub demo: bool,
    /// See [`crate::http::HttpConfig::import_max_bytes`].
    pub import_max_bytes: u64,
    /// See [`crate::http::HttpConfig::import_idle_timeout`].
    pub import_idle_timeout: Duration,
    /// Retention rules, applied every `retention_interval`.
    pub retention: Vec<crate::retention::RetentionRule>,
    pub retention_interval: Duration,
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` completes, then stops accepting and drains.
pub async fn run(
    config: ServeConfig,
    storage: SharedStorage,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Every write (gRPC, NATS, demo, HTTP import) goes through the live hub,
    // so the live view and gRPC Subscribe see all of them.
    let live = Arc::new(LiveStorage::new(storage));
    let hub = live.hub().clone();
    let storage: SharedStorage = live;

    let listener = bind(config.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
    let grpc_listener = bind(config.grpc_addr).await?;

    // One signal fanned out to every component. The hub closes first so
    // that open SSE and Subscribe streams end and let the servers drain.
    let (stop, stopping) = watch::channel(false);
    let stop = Arc::new(stop);
    let signal = Shutdown(stopping);
    tokio::spawn({
        let (stop, hub) = (Arc::clone(&stop), hub.clone());
        async move {
            shutdown.await;
            hub.close();
            stop.send_replace(true);
        }
    });

    let grpc = tokio::spawn(grpc::serve(
        grpc_listener,
        storage.clone(),
        hub.clone(),
        signal.clone().wait(),
    ));
    let ingest_stats = Arc::new(IngestStats::default());
    let nats = config.nats_url.clone().map(|url| {
        tokio::spawn(ingest::nats::run(
            NatsConfig::new(url),
            storage.clone(),
            Arc::clone(&ingest_stats),
            signal.clone().wait(),
        ))
    });
    let simulator = config
        .demo
        .then(|| tokio::spawn(demo::run(storage.clone(), signal.clone().wait())));
    let retention = tokio::spawn(crate::retention::run(
        storage.clone(),
        config.retention.clone(),
        config.retention_interval,
        signal.clone().wait(),
    ));

    let http_config = crate::http::HttpConfig {
        web_dir: Some(config.web_dir.clone()),
        import_max_bytes: config.import_max_bytes,
        import_idle_timeout: config.import_idle_timeout,
        ..crate::http::HttpConfig::default()
    };
    let http = crate::http::serve_api(
        listener,
        storage.clone(),
        live::routes(hub.clone()),
        &http_config,
        signal.clone().wait(),
    )
    .await;

    // However HTTP ended, everything else stops too; then drain.
    hub.close();
    stop.send_replace(true);
    match tokio::time::timeout(DRAIN_TIMEOUT, grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "gRPC server failed"),
        Ok(Err(error)) => tracing::error!(%error, "gRPC server task failed"),
        Err(_) => tracing::warn!("gRPC calls still running after {DRAIN_TIMEOUT:?}; cut"),
    }
    if let Some(task) = nats {
        let _ = task.await;
        tracing::info!(stats = ?ingest_stats.snapshot(), "NATS ingestion drained");
    }
    if let Some(task) = simulator {
        let _ = task.await;
    }
    let _ = retention.await;
    http?;
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The fanned-out shutdown signal; each component awaits its own copy.
#[derive(Clone)]
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    async fn wait(mut self) {
        // An error means the sender is gone: stop as well.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

/// Completes on Ctrl-C or SIGTERM: the one signal every component stops on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
