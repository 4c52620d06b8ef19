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
    /// NATS `.creds` file (user JWT and NKey seed, as `nsc` writes it) for
    /// a server in operator (JWT) mode. Keep it readable by the engine only.
    #[arg(long, env = "ENGINE_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// PEM file of the CA that signed the NATS servers' certificates: the
    /// connection then requires TLS.
    #[arg(long, env = "ENGINE_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// Whether the store is shared with other engines (PostgreSQL): set by
    /// the command from `--store`, not a flag of its own. With `--nats-url`
    /// it turns on the live relay between engines.
    #[arg(skip)]
    pub shared_store: bool,
    /// Directory of a built dashboard to serve at `/` instead of the one
    /// embedded in the binary (for dashboard development: `viz/dist`).
    #[arg(long, env = "ENGINE_WEB_DIR")]
    pub web_dir: Option<PathBuf>,
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
    /// Exports running at once; one more is answered 429 at once.
    #[arg(long, env = "ENGINE_MAX_CONCURRENT_EXPORTS", default_value_t = 64)]
    pub max_concurrent_exports: usize,
    /// Time a client gets to send a request's headers (against slowloris).
    #[arg(long, env = "ENGINE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = crate::model::parse_duration)]
    pub header_read_timeout: Duration,
    /// After a shutdown signal, how long running HTTP requests (exports)
    /// may take to finish before their connections are dropped.
    #[arg(long, env = "ENGINE_SHUTDOWN_GRACE", default_value = "30s", value_parser = crate::model::parse_duration)]
    pub shutdown_grace: Duration,
    /// After a shutdown signal, how long gRPC calls may take to finish
    /// before they are cut (a client streaming `Write` forever must not keep
    /// the process alive; its unacknowledged points are not stored).
    #[arg(long, env = "ENGINE_DRAIN_TIMEOUT", default_value = "10s", value_parser = crate::model::parse_duration)]
    pub drain_timeout: Duration,
    /// XLSX data rows per sheet before the export goes on in the next sheet
    /// (Excel holds 1,048,576 rows with the header).
    #[arg(long, env = "ENGINE_XLSX_ROWS_PER_SHEET", default_value_t = crate::export::xlsx::EXCEL_MAX_DATA_ROWS, value_parser = clap::value_parser!(u32).range(1..))]
    pub xlsx_rows_per_sheet: u32,
    /// Embedded store: points written to the in-memory head before it is
    /// frozen and folded into blocks in the background (memory, about 50
    /// bytes a point for up to three heads, and replay time after a crash).
    #[arg(long, env = "ENGINE_HEAD_FLUSH_POINTS", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub head_flush_points: u64,
    /// Embedded store: a head is also frozen when its WAL segment grows past
    /// this many bytes.
    #[arg(long, env = "ENGINE_WAL_SEGMENT_BYTES", default_value_t = 256 << 20)]
    pub wal_segment_bytes: u64,
    /// Embedded store: bytes of redb's page cache.
    #[arg(long, env = "ENGINE_CACHE_BYTES", default_value_t = 32 << 20)]
    pub cache_bytes: u64,
    /// NATS: the JetStream stream to consume (created over `sensors.>`
    /// when missing).
    #[arg(long, env = "ENGINE_NATS_STREAM", default_value = "SENSORS")]
    pub nats_stream: String,
    /// NATS: the durable consumer's name (the server keeps its position).
    #[arg(long, env = "ENGINE_NATS_DURABLE", default_value = "sensor-engine")]
    pub nats_durable: String,
    /// NATS: most messages written in one group commit.
    #[arg(long, env = "ENGINE_NATS_MAX_BATCH_MESSAGES", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub nats_max_batch_messages: u64,
    /// NATS: how long JetStream waits for an acknowledgement before it
    /// redelivers a message.
    #[arg(long, env = "ENGINE_NATS_ACK_WAIT", default_value = "10s", value_parser = crate::model::parse_duration)]
    pub nats_ack_wait: Duration,
    /// Read every option above from this TOML file (keys as the flags, with
    /// `_` for `-`); a flag or an environment variable outranks the file.
    #[arg(long, env = "ENGINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (TOML) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Serve without authentication: anyone who can connect may read,
    /// export and write everything. Refused unless every listener is on a
    /// loopback address.
    #[arg(long, env = "ENGINE_NO_AUTH")]
    pub no_auth: bool,
    /// Print a one-time sign-in link for the dashboard at this start too,
    /// not only at the first one: it signs in as the admin token whose
    /// secret is in `DATA_DIR/auth/admin-token`, once, within 10 minutes.
    /// For an operator at the server's console (`scripts/run` sets it);
    /// leave it off where standard output goes to a shared log.
    #[arg(long, env = "ENGINE_SIGNIN_LINK")]
    pub signin_link: bool,
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
    /// Size in bytes at which the audit trail (`DATA_DIR/audit/`) closes a
    /// file and begins the next; the chain of MACs runs across files.
    #[arg(long, env = "ENGINE_AUDIT_ROTATE_BYTES", default_value_t = crate::audit::DEFAULT_ROTATE_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    pub audit_rotate_bytes: u64,
}

impl ServeConfig {
    /// The embedded store's tuning these flags ask for.
    pub fn embedded_options(&self) -> crate::storage::embedded::EmbeddedOptions {
        crate::storage::embedded::EmbeddedOptions {
            head_flush_points: usize::try_from(self.head_flush_points).unwrap_or(usize::MAX),
            wal_segment_bytes: self.wal_segment_bytes,
            cache_bytes: usize::try_from(self.cache_bytes).unwrap_or(usize::MAX),
            ..Default::default()
        }
    }

    /// The NATS consumer these flags ask for, if any.
    fn nats(&self) -> Option<NatsConfig> {
        let url = self.nats_url.clone()?;
        Some(NatsConfig {
            stream: self.nats_stream.clone(),
            durable: self.nats_durable.clone(),
            max_batch_messages: usize::try_from(self.nats_max_batch_messages).unwrap_or(usize::MAX),
            ack_wait: self.nats_ack_wait,
            replicas: self.nats_replicas,
            credentials: crate::ingest::nats::NatsCredentials {
                user_password: self
                    .nats_user
                    .clone()
                    .zip(self.nats_password.as_ref().map(|p| p.expose().to_owned())),
                token: self.nats_token.as_ref().map(|t| t.expose().to_owned()),
                ca_file: self.nats_ca.clone(),
                creds_file: self.nats_creds.clone(),
            },
            ..NatsConfig::new(url)
        })
    }
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
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokenStoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
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
    let (auth, sign_in_code) = open_auth(&config).await?;
    let audit = open_audit(&config)?;
    let listener = bind(config.http_addr).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        addr = %listener.local_addr()?,
        url = %format!("{scheme}://{}", listener.local_addr()?),
        "HTTP listening"
    );
    if let Some(code) = sign_in_code {
        print_sign_in_link(scheme, listener.local_addr()?, &code, &config);
    }
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
    let nats_config = config.nats();
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

    if let Some(auth) = &auth {
        tokio::spawn(Arc::clone(auth).watch(signal.clone().wait()));
    }
    let grpc = tokio::spawn({
        let (storage, hub, auth, audit, tls, stopped) = (
            storage.clone(),
            hub.clone(),
            auth.clone(),
            audit.clone(),
            tls.clone(),
            signal.clone().wait(),
        );
        async move {
            grpc::serve_with(
                grpc_listener,
                storage,
                hub,
                auth,
                audit,
                tls.as_ref(),
                stopped,
            )
            .await
        }
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
        web_dir: config.web_dir.clone(),
        max_concurrent_exports: config.max_concurrent_exports,
        xlsx_rows_per_sheet: config.xlsx_rows_per_sheet,
        header_read_timeout: config.header_read_timeout,
        shutdown_grace: config.shutdown_grace,
        import_max_bytes: config.import_max_bytes,
        import_idle_timeout: Duration::from_secs(config.import_idle_timeout),
        readiness: nats_readiness(&config, &ingest_stats),
        auth: auth.clone(),
        auth_failure_limit: config.auth_failure_limit,
        max_exports_per_token: config.max_exports_per_token,
        tls_config: tls.as_ref().map(|tls| Arc::clone(&tls.http)),
        audit: audit.clone(),
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
    let drain_timeout = config.drain_timeout;
    match tokio::time::timeout(drain_timeout, grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "gRPC server failed"),
        Ok(Err(error)) => tracing::error!(%error, "gRPC server task failed"),
        Err(_) => tracing::warn!("gRPC calls still running after {drain_timeout:?}; cut"),
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
    // The last outcomes (exports cut by the shutdown) made durable.
    if let Some(audit) = &audit
        && let Err(error) = audit.flush().await
    {
        tracing::error!(%error, "cannot flush the audit trail");
    }
    http?;
    Ok(())
}

/// The audit trail in the data directory (with or without auth: exports
/// are recorded either way); none without a data directory.
fn open_audit(config: &ServeConfig) -> Result<Option<Arc<crate::audit::Audit>>, ServeError> {
    let Some(dir) = &config.data_dir else {
        return Ok(None);
    };
    let sink = crate::audit::FileAuditSink::open(dir, config.audit_rotate_bytes)?;
    tracing::info!(dir = %sink.dir().display(), "audit trail on");
    Ok(Some(crate::audit::Audit::start(Arc::new(sink))))
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

/// The tokens requests are checked against, or `None` with `--no-auth`
/// (refused unless every listener is on loopback), and a one-time sign-in
/// code to print. On the first start of a data directory without tokens,
/// creates an admin token and writes it to `auth/admin-token`
/// (owner-only): the secret never goes to the log; the code is for that
/// token, and is made again at later starts with `--signin-link`.
async fn open_auth(
    config: &ServeConfig,
) -> Result<(Option<Arc<crate::auth::Authenticator>>, Option<String>), ServeError> {
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
        return Ok((None, None));
    }
    let dir = config.data_dir.clone().ok_or_else(|| {
        ServeError::Config("authentication needs a data directory for its tokens".into())
    })?;
    let store: Arc<dyn TokenStore> = Arc::new(FileTokenStore::open(&dir)?);
    let auth = Authenticator::load(Arc::clone(&store)).await?;
    let path = admin_token_path(&dir);
    let mut code = None;
    if auth.is_empty() {
        let created =
            crate::auth::create_token(&*store, "admin (first start)", &["admin".into()], None)
                .await
                .map_err(|e| ServeError::Config(e.to_string()))?;
        crate::auth::store::write_atomically(&path, format!("{}\n", created.secret).as_bytes())?;
        auth.refresh().await?;
        tracing::info!(
            token = %created.record.id,
            file = %path.display(),
            "first start: created an admin token; its secret is in the file (owner-only)"
        );
        code = auth.issue_sign_in_code(&created.secret).ok();
    } else if config.signin_link {
        let secret = std::fs::read_to_string(&path).unwrap_or_default();
        match auth.issue_sign_in_code(secret.trim()) {
            Ok(issued) => code = Some(issued),
            Err(reason) => tracing::warn!(
                file = %path.display(),
                %reason,
                "--signin-link: no link, the first-start admin token is not usable; \
                 sign in with a token of `engine token create`"
            ),
        }
    }
    tracing::info!(tokens = auth.len(), "authentication on");
    Ok((Some(auth), code))
}

/// Where the first start keeps the admin token's secret (owner-only).
fn admin_token_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("auth").join("admin-token")
}

/// Prints the one-time sign-in link on standard output, apart from the log
/// (standard error): the printed line is the only place the code appears.
/// An address on every interface is shown as loopback, which works from
/// the server's own console.
fn print_sign_in_link(scheme: &str, addr: SocketAddr, code: &str, config: &ServeConfig) {
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    };
    let minutes = crate::auth::SIGN_IN_CODE_TTL.as_secs() / 60;
    let file = config
        .data_dir
        .as_deref()
        .map(admin_token_path)
        .unwrap_or_default();
    // Not `println!`: a closed standard output (`engine serve | head`) must
    // not stop the server.
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout().lock(),
        "\n  Sign in to the dashboard with this one-time link (works once, within {minutes} minutes):\n\n      \
         {scheme}://{host}{}?code={code}\n\n  Later: sign in with the token in {}, or start again \
         with --signin-link for a new link.\n",
        crate::http::auth::SIGN_IN_LINK_PATH,
        file.display()
    );
    tracing::info!("a one-time sign-in link was printed on standard output");
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
