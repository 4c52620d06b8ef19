//! No secret in a log line (issue 9): one `engine serve` at debug level,
//! driven with tokens through every way in (HTTP bearer, bad bearers, a
//! token in a URL by mistake, the session sign-in and its cookie, the
//! one-time sign-in link used twice, gRPC metadata, tokens made over HTTP
//! and by the CLI); then its whole log is searched for every secret,
//! code and cookie it saw. `scripts/test` also scans every engine log the
//! test run left in `target/test-logs/` for anything shaped like one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use engine::grpc::pb::ListSensorsRequest;
use engine::grpc::pb::sensor_engine_client::SensorEngineClient;
use reqwest::StatusCode;

use crate::ingest_support::{free_port, wait_until_listening};
use crate::support::{create_token_over_http, engine_bin, engine_log};

/// The value of the session cookie a response sets.
fn session_cookie(response: &reqwest::Response) -> String {
    let set = response.headers()["set-cookie"].to_str().unwrap();
    let pair = set.split(';').next().unwrap();
    pair.strip_prefix("engine_session=").unwrap().to_owned()
}

fn grpc_request(secret: &str) -> tonic::Request<ListSensorsRequest> {
    let mut request = tonic::Request::new(ListSensorsRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_reaches_the_log_through_any_transport() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (http_port, grpc_port) = (free_port(), free_port());
    let (log, log_path) = engine_log("log-scan");
    let mut child = Command::new(engine_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc_port}")])
        .args(["--web-dir", "none"])
        // Everything the engine and its libraries (hyper, h2, tonic) say.
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    // The one-time link is printed on standard output, apart from the log;
    // the rest of it is read too, so the engine never writes to a closed pipe.
    let stdout = child.stdout.take().unwrap();
    let (found, link) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(word) = line
                .split_whitespace()
                .find(|word| word.contains("/signin?code="))
            {
                let _ = found.send(word.to_owned());
            }
        }
    });
    let link = link
        .recv_timeout(Duration::from_secs(60))
        .expect("no sign-in link printed");
    wait_until_listening(&mut child, http_port, Duration::from_secs(30)).unwrap();
    wait_until_listening(&mut child, grpc_port, Duration::from_secs(30)).unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    assert!(
        link.starts_with(&format!("{base}/signin?code=stsi_")),
        "{link}"
    );
    let code = link.split_once("code=").unwrap().1.to_owned();
    let admin = std::fs::read_to_string(data.join("auth/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(!code.contains(&admin) && !admin.contains(&code));
    let mut secrets = vec![admin.clone(), code.clone()];

    let web = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("{base}{path}");

    // The one-time link: a session once, then the sign-in page.
    let first = web.get(&link).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(first.headers()["location"], "/");
    assert_eq!(first.headers()["cache-control"], "no-store");
    let link_cookie = session_cookie(&first);
    let second = web.get(&link).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        second.headers()["location"],
        engine::http::auth::LINK_REFUSED
    );
    assert!(second.headers().get("set-cookie").is_none());
    let me = web
        .get(url("/api/v1/session"))
        .header("cookie", format!("engine_session={link_cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    secrets.push(link_cookie);

    // HTTP bearer, right and wrong; a token in a URL by mistake.
    let sensors = web
        .get(url("/api/v1/sensors"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(sensors.status(), StatusCode::OK);
    let unknown = engine::auth::secret::generate();
    let malformed = format!("{}{}", engine::auth::secret::PREFIX, "z".repeat(40));
    for bad in [&unknown, &malformed] {
        let refused = web
            .get(url("/api/v1/sensors"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        let body = refused.text().await.unwrap();
        assert!(!body.contains(bad.as_str()), "the error names the secret");
    }
    let in_url = web
        .get(url(&format!("/api/v1/sensors?token={unknown}")))
        .send()
        .await
        .unwrap();
    assert_eq!(in_url.status(), StatusCode::UNAUTHORIZED);
    secrets.extend([unknown.clone(), malformed]);

    // A token made over HTTP, and one made by the CLI while the server runs.
    let made = create_token_over_http(
        &web,
        &url("/api/v1/tokens"),
        &admin,
        "over-http",
        &["read:**"],
    )
    .await;
    let over_http = made["secret"].as_str().unwrap().to_owned();
    let cli = Command::new(engine_bin())
        .args(["token", "create", "--data-dir"])
        .arg(&data)
        .args(["--name", "by-cli", "--scope", "export:**"])
        .output()
        .unwrap();
    assert!(cli.status.success());
    let by_cli = String::from_utf8(cli.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    assert!(
        !String::from_utf8_lossy(&cli.stderr).contains(&by_cli),
        "token create prints the secret on its standard error"
    );
    secrets.extend([over_http.clone(), by_cli.clone()]);

    // The session sign-in with a token, its cookie used, then signed out.
    let signed_in = web
        .post(url("/api/v1/session"))
        .json(&serde_json::json!({"token": by_cli}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::OK);
    let cookie = session_cookie(&signed_in);
    let with_cookie = |method: reqwest::Method, path: &str| {
        web.request(method, url(path))
            .header("cookie", format!("engine_session={cookie}"))
            .header("sec-fetch-site", "same-origin")
    };
    let export = with_cookie(
        reqwest::Method::GET,
        "/api/v1/export?sensor_id=none&start_ts=0&end_ts=10",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(export.status(), StatusCode::NOT_FOUND);
    let out = with_cookie(reqwest::Method::DELETE, "/api/v1/session")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let after = with_cookie(reqwest::Method::GET, "/api/v1/sensors")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let refused_sign_in = web
        .post(url("/api/v1/session"))
        .json(&serde_json::json!({"token": unknown}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused_sign_in.status(), StatusCode::UNAUTHORIZED);
    secrets.push(cookie);

    // gRPC metadata, right and wrong.
    let mut grpc = SensorEngineClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .unwrap();
    grpc.list_sensors(grpc_request(&over_http)).await.unwrap();
    let status = grpc.list_sensors(grpc_request(&unknown)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(!status.message().contains(&unknown));

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The log saw all of it (else finding nothing would prove nothing).
    for seen in [
        "/api/v1/sensors",
        "/signin?code=[redacted]",
        "token=[redacted]",
        "signed in with a one-time link",
        "one-time sign-in link refused",
        "first start",
        "gRPC listening",
    ] {
        assert!(
            log.contains(seen),
            "{seen:?} is not in the log {}",
            log_path.display()
        );
    }
    for (i, secret) in secrets.iter().enumerate() {
        if let Some((n, _)) = log
            .lines()
            .enumerate()
            .find(|(_, line)| line.contains(secret.as_str()))
        {
            panic!("secret #{i} is in {} line {}", log_path.display(), n + 1);
        }
    }
}
