//! Helpers of the ingestion tests (`grpc`, `nats`): free ports, a private
//! nats-server, and the real `engine` binary.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server Debian installs (2.9).
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Waits until something accepts connections on `port`. Prefer
/// [`wait_until_listening`] for a child process: it notices an early exit.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `child` accepts connections on `port`; an error if it exits
/// first or takes longer than `timeout`.
pub fn wait_until_listening(child: &mut Child, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before listening on {port}: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("not listening on {port} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private nats-server with JetStream on a random port, killed on drop,
/// so tests never share the machine's stream state.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        // Owned before waiting, so a failed wait still kills it.
        let mut server = Self {
            child,
            port,
            _dir: dir,
        };
        if let Err(why) = wait_until_listening(&mut server.child, port, Duration::from_secs(20)) {
            panic!("nats-server on {port}: {why}");
        }
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `engine serve` process, SIGKILLed on drop.
pub struct Engine {
    pub child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl Engine {
    /// Starts `engine serve` on a data directory with fresh ports and waits
    /// until gRPC accepts connections.
    ///
    /// A port picked free can be taken by someone else before the engine
    /// binds it; the engine then exits at once, and is started again on
    /// other ports.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`Engine::start`] with environment variables for the child (secrets
    /// go there rather than on a command line).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut last_error = String::new();
        for _ in 0..3 {
            let http_port = free_port();
            let grpc_port = free_port();
            let child = Command::new(env!("CARGO_BIN_EXE_engine"))
                .arg("serve")
                // Auth off: these tests are about ingestion (auth has its own).
                .arg("--no-auth")
                .arg("--data-dir")
                .arg(data_dir)
                .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
                .args(extra)
                .envs(env.iter().copied())
                // Warnings and errors only, in a file of target/test-logs.
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(crate::support::engine_log("engine").0)
                .spawn()
                .expect("start engine");
            // Owned before waiting, so a failed wait still kills it.
            let mut engine = Self {
                child,
                grpc_port,
                http_port,
            };
            match wait_until_listening(&mut engine.child, grpc_port, Duration::from_secs(90)) {
                Ok(()) => return engine,
                Err(why) => last_error = why,
            }
        }
        panic!("the engine did not start: {last_error}");
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The URL of `path_and_query` on the engine's HTTP API.
    pub fn http_url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.http_port)
    }

    /// SIGKILL: no flush, no shutdown path.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}
