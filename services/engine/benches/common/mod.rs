//! What the benches that run real servers share: free ports, child
//! processes that die with the bench, a private nats-server, and the JSON
//! messages the NATS consumer takes. Included by `mod common;`.

// Each bench uses only part of this.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 10 s for something to listen on `port`.
pub fn wait_port(port: u16) {
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on port {port}");
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private nats-server with JetStream; its temporary directory holds the
/// streams and goes with it.
pub struct Nats {
    _process: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (/usr/sbin/nats-server)");
        let process = Process(child);
        wait_port(port);
        Nats {
            _process: process,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// One message of `points` points of `sensor`, 1 ms apart from `first_ts`,
/// as the NATS consumer takes it. Built with `itoa` rather than `format!`:
/// the publisher shares the cores with the engine.
pub fn nats_message(sensor: &str, first_ts: i64, points: i64) -> String {
    let mut out = String::with_capacity(points as usize * 90);
    let mut numbers = itoa::Buffer::new();
    out.push('[');
    for ts in first_ts..first_ts + points {
        if ts != first_ts {
            out.push(',');
        }
        out.push_str(r#"{"sensor_id":""#);
        out.push_str(sensor);
        out.push_str(r#"","timestamp_ms":"#);
        out.push_str(numbers.format(ts));
        out.push_str(r#","value":"#);
        out.push_str(numbers.format(ts % 977));
        out.push_str(r#".25,"quality":192}"#);
    }
    out.push(']');
    out
}

/// The machine's three load averages, for the tables (figures on a busy
/// machine are floors).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
