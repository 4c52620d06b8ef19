//! What every handler shares: the server's settings ([`HttpConfig`]) and the
//! state each request sees ([`AppState`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::storage::SharedStorage;

/// How the HTTP server behaves. [`HttpConfig::default`] is what `engine serve`
/// uses unless told otherwise.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// A built dashboard (`viz/dist`) to serve from disk, with an SPA
    /// fallback to `index.html` after the API routes. `None`: `serve_api`
    /// serves the one embedded in the binary, `router` none.
    pub web_dir: Option<PathBuf>,
    /// Exports running at once; one more is answered 429 at once. Each export
    /// holds its permit until its body ends, not just until the headers leave.
    pub max_concurrent_exports: usize,
    /// XLSX data rows per sheet before continuing on the next sheet (Excel's
    /// limit is 1,048,576 rows including the header). Lowered in tests.
    pub xlsx_rows_per_sheet: u32,
    /// Time a client gets to send a request's headers; a slow or silent client
    /// (slowloris) is cut off after it. axum's `serve` sets none.
    pub header_read_timeout: Duration,
    /// After a shutdown signal, how long running requests (exports) may take
    /// to finish before their connections are dropped.
    pub shutdown_grace: Duration,
    /// Largest CSV body `POST /api/v1/import` takes; a larger one is
    /// answered 413 and nothing of it is stored.
    pub import_max_bytes: u64,
    /// How long an import's body may stall (no bytes arriving) before the
    /// import is abandoned with 408 and nothing of it stored.
    pub import_idle_timeout: Duration,
    /// What `/readyz` checks besides the store (NATS, when ingesting).
    pub readiness: Vec<ReadinessProbe>,
    /// The tokens requests are checked against; `None` serves everyone
    /// (`--no-auth`, and the tests that are not about auth).
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// Whether session cookies get `Secure` (served over TLS).
    pub secure_cookies: bool,
    /// Failed authentications from one address before it is answered 429
    /// (for a minute); after a quarter of them answers are slowed.
    pub auth_failure_limit: u32,
    /// Exports one token may run at once, beside `max_concurrent_exports`;
    /// one more is answered 429.
    pub max_exports_per_token: usize,
    /// TLS of every connection (`--tls-cert`/`--tls-key`); `None` serves
    /// plain HTTP. See [`HttpConfig::tls`].
    pub tls_config: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The audit trail exports, imports, token changes, sign-ins and
    /// refusals are recorded in; `None` records nothing (tests of other
    /// things). With it, an export whose start record cannot be made
    /// durable is refused (503).
    pub audit: Option<Arc<crate::audit::Audit>>,
}

impl HttpConfig {
    /// Whether the server speaks HTTPS only. When it does, session cookies
    /// must be set `Secure`, so a browser never sends them over plain HTTP.
    pub fn tls(&self) -> bool {
        self.tls_config.is_some()
    }
}

/// One more dependency `/readyz` checks, by name (`"nats"`): `Ok` when it
/// is reachable, else why not. Called on every probe: must be cheap.
#[derive(Clone)]
pub struct ReadinessProbe {
    pub name: &'static str,
    pub check: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for ReadinessProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessProbe")
            .field("name", &self.name)
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            web_dir: None,
            max_concurrent_exports: 64,
            xlsx_rows_per_sheet: crate::export::xlsx::EXCEL_MAX_DATA_ROWS,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            import_max_bytes: 16 << 30,
            import_idle_timeout: Duration::from_secs(30),
            readiness: Vec::new(),
            auth: None,
            secure_cookies: false,
            auth_failure_limit: 20,
            max_exports_per_token: 8,
            tls_config: None,
            audit: None,
        }
    }
}

/// What every handler gets: the store behind its trait, and the export limit.
#[derive(Clone)]
pub struct AppState {
    pub storage: SharedStorage,
    /// One permit per running export, moved into the response body so it is
    /// released only when the download ends (or the client leaves).
    pub export_permits: Arc<Semaphore>,
    pub xlsx_rows_per_sheet: u32,
    pub import_limits: ImportLimits,
    /// What `/readyz` checks besides the store.
    pub readiness: Arc<[ReadinessProbe]>,
    /// See [`HttpConfig::auth`].
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// Failed authentications per client address (slowed, then 429).
    pub auth_failures: Option<Arc<super::auth::FailureLimiter>>,
    pub secure_cookies: bool,
    /// Exports running per token id (see [`HttpConfig::max_exports_per_token`]).
    pub token_exports: super::auth::TokenExports,
    pub max_exports_per_token: usize,
    /// The server speaks HTTPS only (`--tls-cert`): session cookies must
    /// then be set `Secure`, so a browser never sends them over plain HTTP.
    pub tls: bool,
    /// See [`HttpConfig::audit`].
    pub audit: Option<Arc<crate::audit::Audit>>,
}

/// What an import may take: its size and how long its body may stall.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    pub max_bytes: u64,
    pub idle_timeout: Duration,
}

impl AppState {
    pub fn new(storage: SharedStorage, config: &HttpConfig) -> Self {
        Self {
            storage,
            export_permits: Arc::new(Semaphore::new(config.max_concurrent_exports)),
            xlsx_rows_per_sheet: config.xlsx_rows_per_sheet.max(1),
            import_limits: ImportLimits {
                max_bytes: config.import_max_bytes,
                idle_timeout: config.import_idle_timeout,
            },
            readiness: config.readiness.clone().into(),
            auth: config.auth.clone(),
            auth_failures: config
                .auth
                .as_ref()
                .map(|_| Arc::new(super::auth::FailureLimiter::new(config.auth_failure_limit))),
            secure_cookies: config.secure_cookies || config.tls(),
            token_exports: Arc::default(),
            max_exports_per_token: config.max_exports_per_token.max(1),
            tls: config.tls(),
            audit: config.audit.clone(),
        }
    }
}
