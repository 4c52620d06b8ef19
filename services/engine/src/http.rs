//! The HTTP API: router, shared state, and a server hardened for the network.
//!
//! # Layout
//!
//! Three layers, every import pointing down:
//!
//! 1. This file: [`router`] (every route; tests call it with `.oneshot()`)
//!    and [`serve`] (the accept loop, with a header-read timeout against
//!    slowloris and graceful shutdown with a deadline).
//! 2. The handlers: `export` (`GET /api/v1/export` and its `/summary`, over
//!    [`crate::export`]), `series` (M4 chart data), `sensors`, `import`,
//!    `health`, `openapi`.
//! 3. What every handler shares: [`state`] ([`AppState`], [`HttpConfig`]),
//!    [`error::ApiError`] (the one error type, mapped to status + JSON once)
//!    and `params` (checked query parameters). None of these imports a
//!    handler or the router.
//!
//! Handlers see the store only as [`SharedStorage`], never a concrete type.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::storage::SharedStorage;

mod admin;
pub mod error;
mod export;
mod health;
pub mod import;
mod openapi;
pub(crate) mod params;
mod sensors;
/// `pub(crate)` for the fuzz entry points ([`crate::fuzzing`]).
pub(crate) mod series;
pub mod state;

pub use error::ApiError;
pub use state::{AppState, HttpConfig};

/// The default HTTP address: all interfaces, port 8080 (gRPC keeps 50051).
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

/// Every route: `/healthz`, `/readyz`, the API under `/api/v1`, then the
/// dashboard.
pub fn router(state: AppState, web_dir: Option<&std::path::Path>) -> Router {
    // Compression (gzip, zstd) at the fastest level for the JSON answers.
    // Not for exports: they compress inside their parallel encoders (and
    // set Content-Encoding, which this layer leaves alone), or are
    // compressed already (XLSX, Parquet).
    let not_exports = NotForContentType::const_new(crate::export::CSV_CONTENT_TYPE)
        .and(NotForContentType::const_new(
            crate::export::XLSX_CONTENT_TYPE,
        ))
        .and(NotForContentType::const_new(
            crate::export::PARQUET_CONTENT_TYPE,
        ))
        .and(NotForContentType::const_new(
            crate::export::ARROW_CONTENT_TYPE,
        ))
        .and(NotForContentType::const_new(
            crate::export::JSONL_CONTENT_TYPE,
        ));
    let compress = CompressionLayer::new()
        .quality(CompressionLevel::Fastest)
        .compress_when(
            DefaultPredicate::new()
                .and(not_exports)
                .and(NotForContentType::const_new(admin::BACKUP_CONTENT_TYPE)),
        );
    let api = Router::new()
        .route("/export", get(export::export))
        .route("/export/summary", get(export::summary))
        .route("/import", post(import::import))
        .route("/series", get(series::series))
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
/// the header-read timeout, which needs a timer. With `config.tls_config`
/// every accepted connection is TLS (a plain HTTP request fails its
/// handshake); the handshake shares the header-read timeout.
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
    let tls = config
        .tls_config
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
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
                let service = TowerToHyperService::new(app.clone());
                match &tls {
                    None => {
                        let connection = graceful
                            .watch(builder.serve_connection(TokioIo::new(stream), service));
                        connections.spawn(async move {
                            if let Err(error) = connection.await {
                                tracing::debug!(%peer, %error, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        // The handshake runs in the connection's task, so a
                        // slow client cannot hold up the accept loop, and
                        // under the header-read timeout, so a silent one
                        // cannot hold a task forever.
                        let (acceptor, builder) = (acceptor.clone(), builder.clone());
                        let (watcher, handshake_timeout) =
                            (graceful.watcher(), config.header_read_timeout);
                        connections.spawn(async move {
                            let stream = match tokio::time::timeout(
                                handshake_timeout,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = watcher
                                .watch(builder.serve_connection(TokioIo::new(stream), service));
                            if let Err(error) = connection.await {
                                tracing::debug!(%peer, %error, "connection ended with an error");
                            }
                        });
                    }
                }
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
