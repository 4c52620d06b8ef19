//! The release binary as an operator gets it: `engine serve` started as a
//! process, and the helper the metrics and configuration tests start it
//! with.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ingest_support::{free_port, wait_until_listening};
use crate::support::{client, engine_bin, engine_log};

/// A running `engine serve`, killed on drop.
pub struct Served {
    pub child: Child,
    pub http_port: u16,
    pub grpc_port: u16,
}

impl Served {
    /// `engine serve` in `cwd` on fresh ports with `args` added; waits until
    /// HTTP accepts connections (retrying on other ports if one was taken
    /// meanwhile). `stderr` goes to `stderr_to` when given, else to a file
    /// of `target/test-logs/`.
    pub fn start(cwd: &Path, args: &[&str], stderr_to: Option<&Path>) -> Self {
        let mut last_error = String::new();
        for _ in 0..3 {
            let (http_port, grpc_port) = (free_port(), free_port());
            let stderr = match stderr_to {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => engine_log("served").0,
            };
            let child = Command::new(engine_bin())
                .current_dir(cwd)
                .arg("serve")
                // Loopback only; tokens are tested in auth.rs.
                .arg("--no-auth")
                .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
                .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
                .args(args)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("start engine");
            let mut served = Self {
                child,
                http_port,
                grpc_port,
            };
            match wait_until_listening(&mut served.child, http_port, Duration::from_secs(60)) {
                Ok(()) => return served,
                Err(why) => last_error = why,
            }
        }
        panic!("the engine did not start: {last_error}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary copied alone into an empty directory and started there: `/`
/// serves the dashboard embedded in it, and the assets the page names.
#[tokio::test]
async fn a_copied_binary_serves_the_embedded_dashboard_from_an_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("engine");
    std::fs::copy(engine_bin(), &copy).unwrap();
    let embedded = std::process::Command::new(&copy)
        .args(["serve", "--print-config"])
        .output()
        .unwrap();
    assert!(embedded.status.success());
    let served = Served::start(dir.path(), &[], None);

    let index = client().get(served.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let content_type = index.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = index.text().await.unwrap();
    assert!(
        html.contains("<div id=\"root\">"),
        "not the dashboard's index.html (was viz/dist built before the engine?): {html}"
    );
    // Every script and stylesheet the page names is served, with its type.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|part| part.starts_with("/assets/"))
        .collect();
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{html}");
    for asset in assets {
        let response = client().get(served.url(asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        let expected = if asset.ends_with(".js") {
            "text/javascript"
        } else if asset.ends_with(".css") {
            "text/css"
        } else {
            ""
        };
        assert!(
            content_type.starts_with(expected),
            "{asset}: {content_type}"
        );
        assert!(!response.bytes().await.unwrap().is_empty(), "{asset}");
    }
    // A dashboard route (a link someone shared) gets the page too; the API
    // still answers JSON errors.
    let deep = client()
        .get(served.url("/some/view?sensor=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(deep.status(), 200);
    assert!(deep.text().await.unwrap().contains("<div id=\"root\">"));
    let api = client()
        .get(served.url("/api/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    // Nothing was needed from the working directory but the data it made.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "engine" || n == "data"),
        "{names:?}"
    );
    assert!(served.stop().success());
}
