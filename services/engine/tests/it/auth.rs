//! Authentication and authorisation (issue 9): the auth matrix over every
//! HTTP route and gRPC method, sessions, the token CLI against a running
//! server, `--no-auth` refused on the network.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use engine::auth::{Authenticator, FileTokenStore, TokenStore, create_token};
use engine::grpc::pb::sensor_engine_client::SensorEngineClient;
use engine::grpc::pb::{ListSensorsRequest, Point, ScanRequest, SubscribeRequest, WriteRequest};
use engine::http::auth::Access;
use engine::model::Sample;
use engine::server::ServeConfig;
use engine::storage::SharedStorage;
use reqwest::{Method, StatusCode};
use tokio::sync::oneshot;

use crate::ingest_support::{free_port, wait_for_port};
use crate::support::{
    TestStore, client, create_token_over_http, engine_bin, point, samples, sensor,
};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    serve: ServeConfig,
}

/// `engine serve` in this process (the real `server::run`) on fresh ports,
/// with auth on over the tokens of `data_dir`.
pub struct AuthServer {
    pub http: u16,
    pub grpc: u16,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), engine::server::ServeError>>>,
    /// The store behind the server, for tests that look at what was written.
    #[allow(dead_code)]
    pub store: Arc<TestStore>,
}

impl AuthServer {
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let store = TestStore::shared(4096);
        store.put("plant/a", [(1, 1.0, 192), (2, 2.0, 192)]);
        store.put("other/b", [(1, 3.0, 192)]);
        let (http, grpc) = (free_port(), free_port());
        let mut args = vec![
            "serve".to_owned(),
            "--http-addr".into(),
            format!("127.0.0.1:{http}"),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc}"),
            "--web-dir".into(),
            "no-dashboard-here".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut config = Flags::parse_from(args).serve;
        config.data_dir = Some(data_dir.to_owned());
        let (stop, stopped) = oneshot::channel::<()>();
        let shared: SharedStorage = store.clone();
        let task = tokio::spawn(engine::server::run(config, shared, async move {
            let _ = stopped.await;
        }));
        tokio::task::spawn_blocking(move || {
            wait_for_port(http, Duration::from_secs(20));
            wait_for_port(grpc, Duration::from_secs(20));
        })
        .await
        .unwrap();
        Self {
            http,
            grpc,
            stop: Some(stop),
            task: Some(task),
            store,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One set of credentials the matrix tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    None,
    Malformed,
    Unknown,
    Expired,
    Revoked,
    WrongAction,
    WrongPattern,
    Right,
}

const CASES: [Case; 8] = [
    Case::None,
    Case::Malformed,
    Case::Unknown,
    Case::Expired,
    Case::Revoked,
    Case::WrongAction,
    Case::WrongPattern,
    Case::Right,
];

/// The secrets of the matrix: one per kind, made in the server's store.
struct Secrets {
    expired: String,
    revoked: String,
    admin: String,
    read: String,
    export: String,
    write: String,
    read_other: String,
    export_other: String,
    write_other: String,
}

async fn make(store: &dyn TokenStore, scope: &str) -> String {
    create_token(store, scope, &[scope.to_owned()], None)
        .await
        .unwrap()
        .secret
}

async fn secrets(dir: &Path) -> Secrets {
    let store = FileTokenStore::open(dir).unwrap();
    let expired = create_token(
        &store,
        "exp",
        &["admin".into()],
        Some(Duration::from_millis(1)),
    )
    .await
    .unwrap()
    .secret;
    let revoked = create_token(&store, "rev", &["admin".into()], None)
        .await
        .unwrap();
    store.revoke(&revoked.record.id, 1).await.unwrap();
    Secrets {
        expired,
        revoked: revoked.secret,
        admin: make(&store, "admin").await,
        read: make(&store, "read:plant/**").await,
        export: make(&store, "export:plant/**").await,
        write: make(&store, "write:plant/**").await,
        read_other: make(&store, "read:other/**").await,
        export_other: make(&store, "export:other/**").await,
        write_other: make(&store, "write:other/**").await,
    }
}

impl Secrets {
    /// The `Authorization` value of `case` for a route of `access`.
    fn header(&self, case: Case, access: Access) -> Option<String> {
        use engine::auth::Action::{Export, Read, Write};
        let bearer = |s: &str| Some(format!("Bearer {s}"));
        match case {
            Case::None => None,
            Case::Malformed => Some("Basic dXNlcjpwdw==".into()),
            Case::Unknown => bearer(&engine::auth::secret::generate()),
            Case::Expired => bearer(&self.expired),
            Case::Revoked => bearer(&self.revoked),
            Case::WrongAction => match access {
                Access::Sensors(Read) => bearer(&self.write),
                Access::Sensors(Export) | Access::Sensors(Write) | Access::Admin => {
                    bearer(&self.read)
                }
                Access::Authenticated | Access::Open => bearer(&self.read),
            },
            Case::WrongPattern => match access {
                Access::Sensors(Read) => bearer(&self.read_other),
                Access::Sensors(Export) => bearer(&self.export_other),
                Access::Sensors(Write) => bearer(&self.write_other),
                _ => bearer(&self.export_other),
            },
            Case::Right => match access {
                Access::Sensors(Read) => bearer(&self.read),
                Access::Sensors(Export) => bearer(&self.export),
                Access::Sensors(Write) => bearer(&self.write),
                Access::Admin => bearer(&self.admin),
                Access::Authenticated | Access::Open => bearer(&self.read),
            },
        }
    }
}

/// A concrete request for a route of the router. A route missing here fails
/// the matrix: whoever adds a route decides its access and adds an example.
fn example(method: &Method, path: &str) -> Option<(String, Option<(&'static str, String)>)> {
    let json = |s: &str| Some(("application/json", s.to_owned()));
    Some(match (method.as_str(), path) {
        ("GET", "/healthz") => ("/healthz".into(), None),
        ("GET", "/readyz") => ("/readyz".into(), None),
        ("GET", "/metrics") => ("/metrics".into(), None),
        ("GET", "/api/v1/live") => ("/api/v1/live?sensor_id=plant/a".into(), None),
        ("GET", "/api/v1/export") => (
            "/api/v1/export?sensor_id=plant/a&start_ts=0&end_ts=10".into(),
            None,
        ),
        ("GET", "/api/v1/export/summary") => (
            "/api/v1/export/summary?sensor_id=plant/a&start_ts=0&end_ts=10".into(),
            None,
        ),
        ("POST", "/api/v1/import") => (
            "/api/v1/import?sensor_id=plant/new".into(),
            Some(("text/csv", "timestamp_ms,value,quality\n5,1.5,192\n".into())),
        ),
        ("GET", "/api/v1/series") => ("/api/v1/series?sensor_id=plant/a".into(), None),
        ("GET", "/api/v1/sensors") => ("/api/v1/sensors".into(), None),
        ("GET", "/api/v1/sensors/{id}") => ("/api/v1/sensors/plant%2Fa".into(), None),
        ("GET", "/api/v1/openapi.json") => ("/api/v1/openapi.json".into(), None),
        ("GET", "/api/v1/admin/backup") => ("/api/v1/admin/backup".into(), None),
        ("GET", "/api/v1/tokens") => ("/api/v1/tokens".into(), None),
        ("POST", "/api/v1/tokens") => (
            "/api/v1/tokens".into(),
            json(r#"{"name":"made","scopes":["read:**"],"expires_in":"1d"}"#),
        ),
        ("DELETE", "/api/v1/tokens/{id}") => ("/api/v1/tokens/VICTIM".into(), None),
        ("GET", "/api/v1/audit") => ("/api/v1/audit?limit=5".into(), None),
        ("POST", "/api/v1/session") => ("/api/v1/session".into(), json(r#"{"token":"x"}"#)),
        ("GET", "/api/v1/session") => ("/api/v1/session".into(), None),
        ("DELETE", "/api/v1/session") => ("/api/v1/session".into(), None),
        // An unknown one-time code: the sign-in page (303), never a cookie.
        ("GET", "/signin") => (format!("/signin?code=stsi_{}", "0".repeat(64)), None),
        _ => return None,
    })
}

/// The documented answer of `case` on a route of `access`.
fn expected(case: Case, access: Access) -> StatusCode {
    use engine::auth::Action::{Export, Read, Write};
    match (access, case) {
        (Access::Open, _) => StatusCode::OK,
        (_, Case::None | Case::Malformed | Case::Unknown | Case::Expired | Case::Revoked) => {
            StatusCode::UNAUTHORIZED
        }
        (_, Case::Right) => StatusCode::OK,
        (Access::Authenticated, _) => StatusCode::OK,
        (Access::Admin, _) => StatusCode::FORBIDDEN,
        // Unreadable sensors do not exist for the caller.
        (Access::Sensors(Read), _) => StatusCode::NOT_FOUND,
        (Access::Sensors(Export), Case::WrongAction) => StatusCode::FORBIDDEN,
        (Access::Sensors(Export), _) => StatusCode::NOT_FOUND,
        // A refused write reveals nothing about other sensors: 403 always.
        (Access::Sensors(Write), _) => StatusCode::FORBIDDEN,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_http_route_answers_every_kind_of_credentials_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(5)).await; // the expired one expires
    // The matrix fails on purpose more often than the default allows.
    let server = AuthServer::start(dir.path(), &["--auth-failure-limit", "100000"]).await;
    // Redirects are answers too (the sign-in link's 303).
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let store = FileTokenStore::open(dir.path()).unwrap();
    let specs = engine::http::route_specs();
    assert!(specs.len() >= 17, "{specs:?}");
    let mut failures = Vec::new();
    for spec in &specs {
        let Some((path, body)) = example(&spec.method, spec.path) else {
            panic!(
                "{} {} has no example in the auth matrix: decide its access and add one",
                spec.method, spec.path
            );
        };
        for case in CASES {
            let mut path = path.clone();
            if path.contains("VICTIM") {
                let victim = create_token(&store, "victim", &["read:**".into()], None)
                    .await
                    .unwrap();
                path = path.replace("VICTIM", &victim.record.id);
            }
            let mut request = http.request(spec.method.clone(), server.url(&path));
            if let Some(value) = secrets.header(case, spec.access) {
                request = request.header("authorization", value);
            }
            if let Some((content_type, body)) = &body {
                request = request
                    .header("content-type", *content_type)
                    .body(body.clone());
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let mut want = expected(case, spec.access);
            // The open sign-in route with a bad token in its body.
            if spec.path == "/api/v1/session" && spec.method == Method::POST {
                want = StatusCode::UNAUTHORIZED;
            }
            if spec.path == engine::http::auth::SIGN_IN_LINK_PATH {
                want = StatusCode::SEE_OTHER;
                assert!(response.headers().get("set-cookie").is_none());
                assert_eq!(
                    response.headers()["location"],
                    engine::http::auth::LINK_REFUSED
                );
            }
            // Listing answers every valid token, with only its sensors.
            if spec.path == "/api/v1/sensors" && want == StatusCode::NOT_FOUND {
                want = StatusCode::OK;
            }
            let ok = if want == StatusCode::OK {
                // The test store has no online backup (501): past auth all
                // the same.
                status.is_success()
                    || (spec.path.ends_with("backup") && status == StatusCode::NOT_IMPLEMENTED)
            } else {
                status == want
            };
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    response.headers()["www-authenticate"].to_str().unwrap(),
                    "Bearer realm=\"engine\""
                );
            }
            let is_list = spec.path == "/api/v1/sensors";
            let streams = spec.path == "/api/v1/live" || spec.path.ends_with("backup");
            let text = if streams && status.is_success() {
                String::new()
            } else {
                response.text().await.unwrap()
            };
            if !ok {
                failures.push(format!(
                    "{} {path} with {case:?}: {status} (want {want}) {text}",
                    spec.method
                ));
                continue;
            }
            if !status.is_success()
                && status != StatusCode::NOT_IMPLEMENTED
                && status != StatusCode::SEE_OTHER
            {
                let code = match status {
                    StatusCode::UNAUTHORIZED => "unauthorized",
                    StatusCode::FORBIDDEN => "forbidden",
                    _ => "sensor_not_found",
                };
                assert!(
                    text.contains(&format!("\"error\":\"{code}\"")),
                    "{path} {case:?}: {text}"
                );
            }
            if is_list && status.is_success() {
                let sees = text.contains("plant/a");
                assert_eq!(sees, case == Case::Right, "{case:?}: {text}");
                let other = text.contains("other/b");
                assert_eq!(other, case == Case::WrongPattern, "{case:?}: {text}");
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    server.stop().await;
}

fn authorized<T>(message: T, secret: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert("authorization", secret.parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_grpc_method_answers_every_kind_of_credentials_as_documented() {
    use engine::auth::Action::{Read, Write};
    use tonic::Code;
    // Every rpc of the service is in this test.
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../proto/sensor/v1/sensor.proto"
    ))
    .unwrap();
    let rpcs = proto
        .lines()
        .filter(|l| l.trim_start().starts_with("rpc "))
        .count();
    assert_eq!(rpcs, 4, "a new rpc needs its row in the auth matrix");

    let dir = tempfile::tempdir().unwrap();
    let secrets = secrets(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let server = AuthServer::start(dir.path(), &[]).await;
    let mut grpc = SensorEngineClient::connect(format!("http://127.0.0.1:{}", server.grpc))
        .await
        .unwrap();
    let mut failures = Vec::new();
    for case in CASES {
        let want = |access: Access| match (case, access) {
            (Case::None | Case::Malformed | Case::Unknown | Case::Expired | Case::Revoked, _) => {
                Code::Unauthenticated
            }
            (Case::Right, _) => Code::Ok,
            (_, Access::Sensors(Write)) => Code::PermissionDenied,
            _ => Code::NotFound,
        };
        let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);

        let access = Access::Sensors(Write);
        let header = secrets.header(case, access);
        let points = vec![Point {
            sensor_id: "plant/g".into(),
            timestamp_ms: 7,
            value: Some(1.0),
            quality: 192,
        }];
        let got = code(
            grpc.write(authorized(
                futures_util::stream::iter(vec![WriteRequest { points }]),
                header.as_deref(),
            ))
            .await
            .map(|_| ()),
        );
        if got != want(access) {
            failures.push(format!("Write {case:?}: {got:?}"));
        }

        let access = Access::Sensors(Read);
        let header = secrets.header(case, access);
        let scan = ScanRequest {
            sensor_id: "plant/a".into(),
            start_ms: None,
            end_ms: None,
        };
        let got = code(
            grpc.scan(authorized(scan, header.as_deref()))
                .await
                .map(|_| ()),
        );
        if got != want(access) {
            failures.push(format!("Scan {case:?}: {got:?}"));
        }
        let subscribe = SubscribeRequest {
            sensor_id: "plant/a".into(),
        };
        let got = code(
            grpc.subscribe(authorized(subscribe, header.as_deref()))
                .await
                .map(|_| ()),
        );
        if got != want(access) {
            failures.push(format!("Subscribe {case:?}: {got:?}"));
        }
        // Listing answers every valid token, with only its sensors.
        match grpc
            .list_sensors(authorized(ListSensorsRequest {}, header.as_deref()))
            .await
        {
            Ok(list) => {
                let ids: Vec<String> = list
                    .into_inner()
                    .sensors
                    .into_iter()
                    .map(|s| s.sensor_id)
                    .collect();
                let valid = matches!(case, Case::WrongAction | Case::WrongPattern | Case::Right);
                assert!(valid, "ListSensors {case:?} answered");
                assert_eq!(
                    ids.iter().any(|i| i == "plant/a"),
                    case == Case::Right,
                    "{ids:?}"
                );
                let other = ids.iter().any(|i| i == "other/b");
                assert_eq!(other, case == Case::WrongPattern, "{ids:?}");
            }
            Err(status) => {
                if status.code() != Code::Unauthenticated {
                    failures.push(format!("ListSensors {case:?}: {status:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The standard health service stays open.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", server.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_cookie_works_for_export_and_sse_until_sign_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileTokenStore::open(dir.path()).unwrap();
    let export = make(&store, "export:plant/**").await;
    let server = AuthServer::start(dir.path(), &[]).await;
    let http = client();
    let signed_in = http
        .post(server.url("/api/v1/session"))
        .json(&serde_json::json!({ "token": export }))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::OK);
    let set_cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Max-Age=", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains(&export), "the cookie is not the token");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let me: serde_json::Value = signed_in.json().await.unwrap();
    assert_eq!(me["can_export"], true);

    let csv = http
        .get(server.url("/api/v1/export?sensor_id=plant/a&start_ts=0&end_ts=10"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert_eq!(
        csv.text().await.unwrap(),
        "timestamp_ms,value,quality\n1,1.0,192\n2,2.0,192\n"
    );
    let sse = http
        .get(server.url("/api/v1/live?sensor_id=plant/a"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    drop(sse);

    // A cross-site state change with the cookie is refused; same-origin passes.
    let cross = http
        .delete(server.url("/api/v1/session"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let out = http
        .delete(server.url("/api/v1/session"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = http
        .get(server.url("/api/v1/export?sensor_id=plant/a&start_ts=0&end_ts=10"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_failures_from_one_address_are_slowed_then_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = AuthServer::start(dir.path(), &[]).await;
    let http = client();
    let mut last = StatusCode::OK;
    let started = std::time::Instant::now();
    for _ in 0..25 {
        last = http
            .get(server.url("/api/v1/sensors"))
            .header("authorization", "Bearer nope")
            .send()
            .await
            .unwrap()
            .status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not slowed"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_token_runs_at_most_its_share_of_exports() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileTokenStore::open(dir.path()).unwrap();
    let first = make(&store, "export:plant/**").await;
    let second = make(&store, "export:**").await;
    let server = AuthServer::start(dir.path(), &["--max-exports-per-token", "1"]).await;
    // Enough rows that the first download is still open when the next asks.
    server
        .store
        .put("plant/big", (0..300_000).map(|i| (i, i as f64, 192)));
    let http = client();
    let url = server.url("/api/v1/export?sensor_id=plant/big&start_ts=0&end_ts=999999");
    let mut running = http.get(&url).bearer_auth(&first).send().await.unwrap();
    assert_eq!(running.status(), StatusCode::OK);
    let _ = running.chunk().await.unwrap();
    let refused = http.get(&url).bearer_auth(&first).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    // Another token is not held back by the first.
    let other = http.get(&url).bearer_auth(&second).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    drop(other);
    // The slot is freed when the download ends.
    while running.chunk().await.unwrap().is_some() {}
    drop(running);
    let mut again = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..50 {
        again = http
            .get(&url)
            .bearer_auth(&first)
            .send()
            .await
            .unwrap()
            .status();
        if again == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again, StatusCode::OK);
    server.stop().await;
}

fn run(args: &[&str]) -> std::process::Output {
    std::process::Command::new(engine_bin())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_made_and_revoked_by_the_cli_apply_to_a_running_server() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (http, grpc) = (free_port(), free_port());
    let (log, log_path) = crate::support::engine_log("auth-cli");
    let mut child = std::process::Command::new(engine_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--web-dir", "none"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    tokio::task::spawn_blocking(move || wait_for_port(http, Duration::from_secs(30)))
        .await
        .unwrap();
    // First start: an admin token in an owner-only file.
    let admin_file = data.join("auth/admin-token");
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_owned();

    let data_arg = data.to_str().unwrap();
    let created = run(&[
        "token",
        "create",
        "--data-dir",
        data_arg,
        "--name",
        "ci",
        "--scope",
        "read:plant/**",
        "--expires",
        "1d",
    ]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stdout = String::from_utf8(created.stdout).unwrap();
    let secret = stdout.lines().last().unwrap().to_owned();
    let id = stdout.lines().next().unwrap().to_owned();
    assert!(engine::auth::secret::well_formed(&secret), "{stdout}");
    let web = client();
    let url = format!("http://127.0.0.1:{http}/api/v1/sensors");
    let get = |secret: String| {
        let (web, url) = (web.clone(), url.clone());
        async move {
            web.get(url)
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get(secret.clone()).await, StatusCode::OK);

    let listed = run(&["token", "list", "--data-dir", data_arg]);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listing.contains(&id) && listing.contains("read:plant/**"),
        "{listing}"
    );
    assert!(
        !listing.contains(&secret) && !listing.contains(&admin),
        "{listing}"
    );

    let revoked = run(&["token", "revoke", "--data-dir", data_arg, &id]);
    assert!(revoked.status.success());
    let since = std::time::Instant::now();
    while get(secret.clone()).await != StatusCode::UNAUTHORIZED {
        assert!(
            since.elapsed() < Duration::from_secs(1),
            "revocation took over 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The admin token manages tokens over HTTP.
    let made = create_token_over_http(
        &web,
        &format!("http://127.0.0.1:{http}/api/v1/tokens"),
        &admin,
        "h",
        &["write:x/*"],
    )
    .await;
    let new_secret = made["secret"].as_str().unwrap().to_owned();
    assert_eq!(get(new_secret).await, StatusCode::OK);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("first start"), "{log}");
    assert!(
        log.contains(admin_file.to_str().unwrap()),
        "the first-start line names the file: {log}"
    );
    for secret in [&admin, &secret] {
        assert!(!log.contains(secret.as_str()), "a secret in the log");
    }
}

#[test]
fn no_auth_is_refused_unless_every_listener_is_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let output = run(&[
        "serve",
        "--no-auth",
        "--data-dir",
        data,
        "--http-addr",
        "0.0.0.0:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--no-auth is refused"), "{stderr}");
}

/// Keeps the helpers the other auth tests share in use.
#[allow(dead_code)]
fn _uses(_: Arc<Authenticator>, _: Sample) {
    let _ = (sensor("x"), samples(&sensor("x"), [point(1, 1.0, 1)]));
}
