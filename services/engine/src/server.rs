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

/// Everything `engine serve` was asked to run: its flags, each with an
/// environment variable. A new limit or address belongs here, so that it is a
/// flag, an environment variable and a config-file key at once.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address of the HTTP API and dashboard.
    #[arg(long, env = "ENGINE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Address of the gRPC API.
    #[arg(long, env = "ENGINE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// NATS server to ingest readings from (JetStream), e.g.
    /// nats://127.0.0.1:4222; without it, no NATS ingestion. Several servers
    /// of one cluster, comma-separated (nats://a:4222,nats://b:4222), let
    /// the client fail over between them.
    #[arg(long, env = "ENGINE_NATS_URL")]
    pub nats_url: Option<String>,
    /// Replicas of the stream when this engine creates it: 3 on a 3-node
    /// NATS cluster, so an acknowledged message survives a lost machine.
    #[arg(long, env = "ENGINE_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Core NATS subject on which engines sharing a store (cluster mode:
    /// `--store postgres://...` and `--nats-url`) tell each other what they
    /// stored, for every engine's live view.
    #[arg(long, env = "ENGINE_NATS_LIVE_SUBJECT", default_value = crate::cluster::DEFAULT_LIVE_SUBJECT)]
    pub nats_live_subject: String,
    /// NATS user name (with `--nats-password`), when the server requires
    /// authorization.
    #[arg(long, env = "ENGINE_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password; prefer the environment variable (a flag shows in `ps`).
    #[arg(
        long,
        env = "ENGINE_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<crate::ingest::nats::Secret>,
    /// NATS authorization token; prefer the environment variable.
    #[arg(long, env = "ENGINE_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<crate::ingest::nats::Secret>,
    /// PEM file of the CA that signed the NATS servers' certificates: the
    /// connection then requires TLS.
    #[arg(long, env = "ENGINE_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// Whether the store is shared with other engines (PostgreSQL): set by
    /// the command from `--store`, not a flag of its own. With `--nats-url`
    /// it turns on the live relay between engines.
    #[arg(skip)]
    pub shared_store: bool,
    /// Directory of the built dashboard, served at `/`.
    #[arg(long, env = "ENGINE_WEB_DIR", default_value = "viz/dist")]
    pub web_dir: PathBuf,
    /// Run the built-in plant simulator: history plus live readings.
    #[arg(long)]
    pub demo: bool,
    /// Largest CSV body `POST /api/v1/import` takes, in bytes.
    #[arg(long, env = "ENGINE_IMPORT_MAX_BYTES", default_value_t = 16 << 30)]
    pub import_max_bytes: u64,
    /// Seconds an import's body may stall before the import is abandoned.
    #[arg(long, env = "ENGINE_IMPORT_IDLE_TIMEOUT", default_value_t = 30)]
    pub import_idle_timeout: u64,
    /// Drop points older than AGE of sensors matching PATTERN, e.g.
    /// `'plant/**=400d'`; repeatable, the first matching rule applies.
    #[arg(
        long = "retention",
        value_name = "PATTERN=AGE",
        env = "ENGINE_RETENTION",
        value_delimiter = ','
    )]
    pub retention: Vec<crate::retention::RetentionRule>,
    /// PEM certificate chain (leaf first) to serve HTTP and gRPC over TLS
    /// with; needs `--tls-key`. Without both, both listeners speak plaintext
    /// (fine on loopback or behind a TLS-terminating proxy).
    #[arg(
        long,
        env = "ENGINE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(
        long,
        env = "ENGINE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// How often retention runs, e.g. `10m`.
    #[arg(long, env = "ENGINE_RETENTION_INTERVAL", default_value = "10m", value_parser = crate::model::parse_duration)]
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
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves until `shutdown` completes, then stops accepting and drains.
pub async fn run(
    config: ServeConfig,
    storage: SharedStorage,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // A bad certificate or key stops the start before anything listens.
    let tls = crate::tls::TlsMaterial::from_options(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
    )?;
    let listener = bind(config.http_addr).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        addr = %listener.local_addr()?,
        url = %format!("{scheme}://{}", listener.local_addr()?),
        "HTTP listening"
    );
    let grpc_listener = bind(config.grpc_addr).await?;

    // One signal fanned out to every component. The hub closes first so
    // that open SSE and Subscribe streams end and let the servers drain.
    let (stop, stopping) = watch::channel(false);
    let stop = Arc::new(stop);
    let signal = Shutdown(stopping);

    // Every write (gRPC, NATS, demo, HTTP import) goes through the live hub,
    // so the live view and gRPC Subscribe see all of them; in cluster mode
    // the hub also gets what the other engines stored (crate::cluster).
    let hub = live::LiveHub::new();
    let nats_config = config.nats_url.clone().map(|url| NatsConfig {
        replicas: config.nats_replicas,
        credentials: crate::ingest::nats::NatsCredentials {
            user_password: config
                .nats_user
                .clone()
                .zip(config.nats_password.as_ref().map(|p| p.expose().to_owned())),
            token: config.nats_token.as_ref().map(|t| t.expose().to_owned()),
            ca_file: config.nats_ca.clone(),
        },
        ..NatsConfig::new(url)
    });
    let relay = match (&nats_config, config.shared_store) {
        (Some(nats_config), true) => {
            let (relay, task) = crate::cluster::NatsLiveRelay::start(
                nats_config.clone(),
                config.nats_live_subject.clone(),
                hub.clone(),
                signal.clone().wait(),
            );
            Some((relay, task))
        }
        _ => None,
    };
    let live = Arc::new(LiveStorage::with_relay(
        storage,
        hub.clone(),
        relay
            .as_ref()
            .map(|(relay, _)| Arc::clone(relay) as Arc<dyn live::LiveRelay>),
    ));
    let storage: SharedStorage = live;
    tokio::spawn({
        let (stop, hub) = (Arc::clone(&stop), hub.clone());
        async move {
            shutdown.await;
            hub.close();
            stop.send_replace(true);
        }
    });

    let grpc = tokio::spawn({
        let (storage, hub, tls, stopped) = (
            storage.clone(),
            hub.clone(),
            tls.clone(),
            signal.clone().wait(),
        );
        async move { grpc::serve_with_tls(grpc_listener, storage, hub, tls.as_ref(), stopped).await }
    });
    let ingest_stats = Arc::new(IngestStats::default());
    let nats = nats_config.map(|nats_config| {
        tokio::spawn(ingest::nats::run(
            nats_config,
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
        import_idle_timeout: Duration::from_secs(config.import_idle_timeout),
        readiness: nats_readiness(&config, &ingest_stats),
        tls_config: tls.as_ref().map(|tls| Arc::clone(&tls.http)),
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
    if let Some((_, task)) = relay {
        let _ = task.await;
    }
    if let Some(task) = simulator {
        let _ = task.await;
    }
    let _ = retention.await;
    http?;
    Ok(())
}

/// `/readyz` also asks whether the NATS consumer is connected, when there
/// is one.
fn nats_readiness(
    config: &ServeConfig,
    stats: &Arc<IngestStats>,
) -> Vec<crate::http::state::ReadinessProbe> {
    if config.nats_url.is_none() {
        return Vec::new();
    }
    let stats = Arc::clone(stats);
    vec![crate::http::state::ReadinessProbe {
        name: "nats",
        check: Arc::new(move || {
            if stats.connected.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not connected to NATS".to_owned())
            }
        }),
    }]
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
