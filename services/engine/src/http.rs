//! The HTTP API: router, shared state, and a server hardened for the network.
//!
//! # Layout
//!
//! - [`router`]: every route; tests call it with `.oneshot()`.
//! - [`serve`]: the accept loop on a bound listener, with a header-read
//!   timeout (slowloris) and graceful shutdown with a deadline.
//! - [`error::ApiError`]: the one error type, mapped to status + JSON once.
//! - [`crate::export`]: `GET /api/v1/export` (CSV and XLSX downloads).
//! - [`crate::series`]: `GET /api/v1/series` (M4-downsampled chart data).
//! - `sensors`, `import`, `openapi`: the small endpoints.
//!
//! Handlers see the store only as [`SharedStorage`], never a concrete type.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::storage::SharedStorage;

mod admin;
pub mod error;
mod health;
pub mod import;
mod openapi;
pub(crate) mod params;
mod sensors;

pub use error::ApiError;

/// The default HTTP address: all interfaces, port 8080 (gRPC keeps 50051).
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

/// How the HTTP server behaves. [`HttpConfig::default`] is what `engine serve`
/// uses unless told otherwise.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The built dashboard (`viz/dist`), served with an SPA fallback to
    /// `index.html` after the API routes. `None` serves the API alone.
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            web_dir: Some(PathBuf::from("viz/dist")),
            max_concurrent_exports: 64,
            xlsx_rows_per_sheet: crate::export::xlsx::EXCEL_MAX_DATA_ROWS,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            import_max_bytes: 16 << 30,
            import_idle_timeout: Duration::from_secs(30),
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
    pub import_limits: import::ImportLimits,
}

impl AppState {
    pub fn new(storage: SharedStorage, config: &HttpConfig) -> Self {
        Self {
            storage,
            export_permits: Arc::new(Semaphore::new(config.max_concurrent_exports)),
            xlsx_rows_per_sheet: config.xlsx_rows_per_sheet.max(1),
            import_limits: import::ImportLimits {
                max_bytes: config.import_max_bytes,
                idle_timeout: config.import_idle_timeout,
            },
        }
    }
}

/// Every route: `/healthz`, `/readyz`, the API under `/api/v1`, then the
/// dashboard.
pub fn router(state: AppState, web_dir: Option<&std::path::Path>) -> Router {
    // Compression (gzip, zstd) at the fastest level: CSV shrinks about 3x for
    // little CPU. Not for XLSX, which is a zip already.
    let compress = CompressionLayer::new()
        .quality(CompressionLevel::Fastest)
        .compress_when(
            DefaultPredicate::new()
                .and(NotForContentType::const_new(
                    crate::export::XLSX_CONTENT_TYPE,
                ))
                .and(NotForContentType::const_new(admin::BACKUP_CONTENT_TYPE)),
        );
    let api = Router::new()
        .route("/export", get(crate::export::export))
        .route("/import", post(import::import))
        .route("/series", get(crate::series::series))
        .route("/sensors", get(sensors::list))
        .route("/sensors/{id}", get(sensors::get))
        .route("/openapi.json", get(openapi::openapi))
        .route("/admin/backup", get(admin::backup))
        .fallback(api_not_found)
        .method_not_allowed_fallback(api_method_not_allowed)
        .layer(compress);
    let mut app = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .nest("/api/v1", api);
    if let Some(dir) = web_dir {
        let spa = ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")));
        app = app.fallback_service(spa);
    }
    // One span per request (method, path, version) and one line per
    // response (status, latency to the headers); exports add their own line
    // when the body ends.
    app.layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
            .on_response(DefaultOnResponse::new().level(Level::INFO)),
    )
    .with_state(state)
}

async fn api_not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

async fn api_method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Serves the whole HTTP API over `storage` on `listener` until `shutdown`
/// resolves: what `engine serve` runs. `extra_routes` (the live view's SSE)
/// are served beside the API. A missing `web_dir` is logged and the API
/// served alone.
pub async fn serve_api(
    listener: TcpListener,
    storage: SharedStorage,
    extra_routes: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let web_dir = config.web_dir.as_deref().filter(|dir| {
        let found = dir.join("index.html").is_file();
        if !found {
            tracing::warn!(dir = %dir.display(), "no dashboard build here (index.html); serving the API only");
        }
        found
    });
    let app = router(AppState::new(storage, config), web_dir).merge(extra_routes);
    serve(listener, app, config, shutdown).await
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting,
/// lets running requests finish for up to `config.shutdown_grace`, drops what
/// is left and returns.
///
/// Uses hyper's HTTP/1.1 connection builder directly (not `axum::serve`) for
/// the header-read timeout, which needs a timer.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let graceful = GracefulShutdown::new();
    // Connection tasks, so the ones still running at the deadline can be
    // aborted instead of outliving the server.
    let mut connections = JoinSet::new();
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::debug!(addr = ?local, "HTTP server accepting");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly
                        // instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connection = builder.serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(app.clone()),
                );
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        "HTTP server stopped accepting; waiting for running requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("HTTP connections closed"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!(open = connections.len(), "shutdown deadline passed; dropping connections");
        }
    }
    connections.shutdown().await;
    Ok(())
}
