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
use axum::routing::{MethodRouter, delete, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::storage::SharedStorage;

mod admin;
pub mod audit;
pub mod auth;
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
mod tokens;
mod web;

pub use error::ApiError;
pub use state::{AppState, HttpConfig};

/// The default HTTP address: all interfaces, port 8080 (gRPC keeps 50051).
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

/// One route and who may call it: the decision every route must make. The
/// router is built from this list ([`api_routes`]) and the auth matrix test
/// walks it, so a route cannot be added without one.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    /// The full path as routed, with `{param}` placeholders.
    pub path: &'static str,
    pub access: auth::Access,
}

const fn spec(method: Method, path: &'static str, access: auth::Access) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
    }
}

/// The API routes under `/api/v1`, each with its access decision.
fn api_routes() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use crate::auth::Action::{Export, Read, Write};
    use auth::Access::{Admin, Authenticated, Open, Sensors};
    vec![
        (
            spec(Method::GET, "/api/v1/export", Sensors(Export)),
            get(export::export),
        ),
        (
            spec(Method::GET, "/api/v1/export/summary", Sensors(Export)),
            get(export::summary),
        ),
        (
            spec(Method::POST, "/api/v1/import", Sensors(Write)),
            post(import::import),
        ),
        (
            spec(Method::GET, "/api/v1/series", Sensors(Read)),
            get(series::series),
        ),
        (
            spec(Method::GET, "/api/v1/sensors", Sensors(Read)),
            get(sensors::list),
        ),
        (
            spec(Method::GET, "/api/v1/sensors/{id}", Sensors(Read)),
            get(sensors::get),
        ),
        (
            spec(Method::GET, "/api/v1/openapi.json", Authenticated),
            get(openapi::openapi),
        ),
        (
            spec(Method::GET, "/api/v1/admin/backup", Admin),
            get(admin::backup),
        ),
        (
            spec(Method::GET, "/api/v1/tokens", Admin),
            get(tokens::list),
        ),
        (
            spec(Method::POST, "/api/v1/tokens", Admin),
            post(tokens::create),
        ),
        (
            spec(Method::DELETE, "/api/v1/tokens/{id}", Admin),
            delete(tokens::revoke),
        ),
        (spec(Method::GET, "/api/v1/audit", Admin), get(audit::list)),
        (
            spec(Method::POST, "/api/v1/session", Open),
            post(auth::sign_in),
        ),
        (
            spec(Method::GET, "/api/v1/session", Authenticated),
            get(auth::whoami),
        ),
        (
            spec(Method::DELETE, "/api/v1/session", Authenticated),
            delete(auth::sign_out),
        ),
    ]
}

/// Every route `engine serve` answers, with its access decision: the API,
/// the probes and the live view's SSE (served beside the router by
/// [`serve_api`]).
pub fn route_specs() -> Vec<RouteSpec> {
    use auth::Access::{Open, Sensors};
    let mut specs = vec![
        spec(Method::GET, "/healthz", Open),
        spec(Method::GET, "/readyz", Open),
        // Counts and durations only, never a sensor id (see crate::metrics):
        // open like the probes, so Prometheus scrapes it without a secret.
        spec(Method::GET, "/metrics", Open),
        // The one-time sign-in link: its code is the credential.
        spec(Method::GET, auth::SIGN_IN_LINK_PATH, Open),
        spec(
            Method::GET,
            crate::live::LIVE_PATH,
            Sensors(crate::auth::Action::Read),
        ),
    ];
    specs.extend(api_routes().into_iter().map(|(spec, _)| spec));
    specs
}

/// Where the dashboard at `/` comes from.
#[derive(Debug, Clone, Copy)]
pub enum Dashboard<'a> {
    /// None: the API alone (tests).
    None,
    /// A built dashboard in a directory (`--web-dir`, for development).
    Dir(&'a std::path::Path),
    /// The build embedded in the binary (or, without one, a page saying
    /// how to build it).
    Embedded,
}

/// Every route: `/healthz`, `/readyz`, `/metrics`, the API under `/api/v1`,
/// then the dashboard from `web_dir` (none without it); all behind the
/// authentication middleware.
pub fn router(state: AppState, web_dir: Option<&std::path::Path>) -> Router {
    router_with(
        state,
        web_dir.map_or(Dashboard::None, Dashboard::Dir),
        Router::new(),
    )
}

/// [`router`] with the dashboard from anywhere, the embedded one included,
/// and `extra` routes (the live view's SSE) merged in before the
/// authentication middleware, so they are guarded like the rest.
pub fn router_with(state: AppState, dashboard: Dashboard<'_>, extra: Router) -> Router {
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
    let mut api = Router::new();
    for (spec, handler) in api_routes() {
        let path = spec.path.strip_prefix("/api/v1").unwrap_or(spec.path);
        api = api.route(path, handler);
    }
    let api = api
        .fallback(api_not_found)
        .method_not_allowed_fallback(api_method_not_allowed)
        .layer(compress);
    let mut app = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        // Prometheus scrapes it; open (see route_specs).
        .route("/metrics", get(crate::metrics::render))
        .route(auth::SIGN_IN_LINK_PATH, get(auth::sign_in_link))
        .nest("/api/v1", api);
    match dashboard {
        Dashboard::None => {}
        Dashboard::Dir(dir) => {
            let spa = ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")));
            app = app.fallback_service(spa);
        }
        Dashboard::Embedded => {
            // Compressed on request (the script is ~300 KB, ~100 KB
            // gzipped); the layer sits on this handler alone.
            let compress = CompressionLayer::new().quality(CompressionLevel::Fastest);
            app = app.fallback(axum::handler::Handler::layer(web::serve, compress));
        }
    }
    // One span per request (method, URI without secrets, version) and one
    // line per response (status, latency to the headers); exports add their
    // own line when the body ends.
    app.with_state(state.clone())
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(
            state,
            auth::authenticate,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        uri = %loggable_uri(request.uri()),
                        version = ?request.version(),
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
}

/// Query parameters whose values never reach the log: the one-time
/// sign-in code, and a token someone put in a URL by mistake.
const SECRET_PARAMS: &[&str] = &["code", "token", "access_token", "secret"];

/// The URI as the request log shows it: the values of [`SECRET_PARAMS`],
/// and any value that looks like a token, are replaced by `[redacted]`.
pub fn loggable_uri(uri: &Uri) -> std::borrow::Cow<'_, str> {
    let Some(query) = uri.query() else {
        return std::borrow::Cow::Borrowed(uri.path());
    };
    let secret = |pair: &str| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        SECRET_PARAMS.contains(&name) || value.contains(crate::auth::secret::PREFIX)
    };
    if !query.split('&').any(secret) {
        return std::borrow::Cow::Owned(uri.to_string());
    }
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret(pair) => format!("{name}=[redacted]"),
            _ => pair.to_owned(),
        })
        .collect();
    std::borrow::Cow::Owned(format!("{}?{}", uri.path(), query.join("&")))
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
/// are served beside the API. The dashboard comes from `config.web_dir`
/// when set (a directory without `index.html` is logged and the embedded
/// dashboard served instead), else from the binary.
pub async fn serve_api(
    listener: TcpListener,
    storage: SharedStorage,
    extra_routes: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let dashboard = match config.web_dir.as_deref() {
        Some(dir) if dir.join("index.html").is_file() => Dashboard::Dir(dir),
        Some(dir) => {
            tracing::warn!(dir = %dir.display(), "no dashboard build here (index.html); serving the embedded one");
            Dashboard::Embedded
        }
        None => Dashboard::Embedded,
    };
    if matches!(dashboard, Dashboard::Embedded) && !web::embedded() {
        tracing::warn!("this binary was built without the dashboard; / says how to build it");
    }
    crate::metrics::install();
    let app = router_with(AppState::new(storage, config), dashboard, extra_routes)
        // Last, so every route (the live view's too) and the fallback are
        // counted, each under its route template.
        .layer(axum::middleware::from_fn(crate::metrics::track_http));
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
                // The client's address, for the failed-authentication limit
                // and the audit trail.
                let service = TowerToHyperService::new(tower::ServiceExt::map_request(
                    app.clone(),
                    move |mut request: axum::http::Request<hyper::body::Incoming>| {
                        request
                            .extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        request
                    },
                ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_log_shows_no_code_and_no_token() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(loggable_uri(&uri("/healthz")), "/healthz");
        assert_eq!(
            loggable_uri(&uri("/api/v1/series?sensor_id=a%2Fb&max_points=10")),
            "/api/v1/series?sensor_id=a%2Fb&max_points=10"
        );
        assert_eq!(
            loggable_uri(&uri("/signin?code=stsi_00ff")),
            "/signin?code=[redacted]"
        );
        assert_eq!(
            loggable_uri(&uri("/api/v1/sensors?x=1&token=abc&y=stse_12")),
            "/api/v1/sensors?x=1&token=[redacted]&y=[redacted]"
        );
    }
}
