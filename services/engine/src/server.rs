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
    /// nats://127.0.0.1:4222; without it, no NATS ingestion.
    #[arg(long, env = "ENGINE_NATS_URL")]
    pub nats_url: Option<String>,
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
    /// How often retention runs, e.g. `10m`.
    #[arg(long, env = "ENGINE_RETENTION_INTERVAL", default_value = "10m", value_parser = crate::model::parse_duration)]
    pub retention_interval: Duration,
    /// Serve without authentication: anyone who can connect may read,
    /// export and write everything. Refused unless every listener is on a
    /// loopback address.
    #[arg(long, env = "ENGINE_NO_AUTH")]
    pub no_auth: bool,
    /// The data directory: where the tokens (`auth/`) live. Set by the
    /// command line from `--data-dir`, not a flag of its own.
    #[arg(skip)]
    pub data_dir: Option<PathBuf>,
    /// Failed authentications from one client address before it is
    /// answered 429 for a minute; after a quarter of them, each answer is
    /// slowed down.
    #[arg(long, env = "ENGINE_AUTH_FAILURE_LIMIT", default_value_t = 20)]
    pub auth_failure_limit: u32,
    /// Exports one token may run at once (beside the global limit of 64);
    /// one more is answered 429.
    #[arg(long, env = "ENGINE_MAX_EXPORTS_PER_TOKEN", default_value_t = 8)]
    pub max_exports_per_token: usize,
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
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokenStoreError),
}

/// Serves until `shutdown` completes, then stops accepting and drains.
pub async fn run(
    config: ServeConfig,
    storage: SharedStorage,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Every write (gRPC, NATS, demo, HTTP import) goes through the live hub,
    // so the live view and gRPC Subscribe see all of them.
    let auth = open_auth(&config).await?;
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

    if let Some(auth) = &auth {
        tokio::spawn(Arc::clone(auth).watch(signal.clone().wait()));
    }
    let grpc = tokio::spawn(grpc::serve_with_auth(
        grpc_listener,
        storage.clone(),
        hub.clone(),
        auth.clone(),
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
        import_idle_timeout: Duration::from_secs(config.import_idle_timeout),
        auth: auth.clone(),
        auth_failure_limit: config.auth_failure_limit,
        max_exports_per_token: config.max_exports_per_token,
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

/// The tokens requests are checked against, or `None` with `--no-auth`
/// (refused unless every listener is on loopback). On the first start of a
/// data directory without tokens, creates an admin token and writes it to
/// `auth/admin-token` (owner-only): the secret never goes to the log.
async fn open_auth(
    config: &ServeConfig,
) -> Result<Option<Arc<crate::auth::Authenticator>>, ServeError> {
    use crate::auth::{Authenticator, FileTokenStore, TokenStore};
    if config.no_auth {
        let exposed: Vec<String> = [config.http_addr, config.grpc_addr]
            .iter()
            .filter(|addr| !addr.ip().is_loopback())
            .map(ToString::to_string)
            .collect();
        if !exposed.is_empty() {
            return Err(ServeError::Config(format!(
                "--no-auth is refused: {} not a loopback address; anyone on the network \
                 could read, export and overwrite every sensor. Listen on 127.0.0.1 or \
                 use tokens (engine token create)",
                exposed.join(" and ")
            )));
        }
        tracing::warn!("authentication is off (--no-auth): loopback listeners only");
        return Ok(None);
    }
    let dir = config.data_dir.clone().ok_or_else(|| {
        ServeError::Config("authentication needs a data directory for its tokens".into())
    })?;
    let store: Arc<dyn TokenStore> = Arc::new(FileTokenStore::open(&dir)?);
    let auth = Authenticator::load(Arc::clone(&store)).await?;
    if auth.is_empty() {
        let created =
            crate::auth::create_token(&*store, "admin (first start)", &["admin".into()], None)
                .await
                .map_err(|e| ServeError::Config(e.to_string()))?;
        let path = dir.join("auth").join("admin-token");
        crate::auth::store::write_atomically(&path, format!("{}\n", created.secret).as_bytes())?;
        auth.refresh().await?;
        tracing::info!(
            token = %created.record.id,
            file = %path.display(),
            "first start: created an admin token; its secret is in the file (owner-only)"
        );
    }
    tracing::info!(tokens = auth.len(), "authentication on");
    Ok(Some(auth))
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
