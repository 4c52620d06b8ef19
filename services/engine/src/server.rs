//! `engine serve`: runs the HTTP server (and, with their flags, gRPC and the
//! NATS consumer) over one store until one shutdown signal stops them all.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::routing::get;

use crate::storage::SharedStorage;

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
    let _ = storage;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.http_addr,
            source,
        })?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
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
