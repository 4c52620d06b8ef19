//! TLS of `engine serve --tls-cert --tls-key` (issue 9 item 6): the real
//! binary serves HTTPS and gRPC over TLS with a certificate generated here
//! (openssl CLI, as in `nats_auth`), and refuses plaintext on both ports.

use std::time::Duration;

use engine::grpc::pb::ListSensorsRequest;
use engine::grpc::pb::sensor_engine_client::SensorEngineClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::ingest_support::Engine;
use crate::nats_auth::make_certificates;

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// One HTTP/1.1 request over TLS to `host:port`, trusting only the CA in
/// `ca` (empty: trusting nothing), with rustls's own certificate and name
/// checks. Returns the status and the raw rest of the response. (A TLS
/// client of its own rather than reqwest's: reqwest's rustls features
/// would need aws-lc-rs, or a process-wide provider every other test's
/// plain client would then depend on.)
async fn https(
    ca: &[u8],
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut tls = connector
            .connect(ServerName::try_from(host.to_owned())?, tcp)
            .await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await?;
        let text = String::from_utf8(response)?;
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .ok_or_else(|| format!("not an HTTP response: {text:?}"))?
            .parse()?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, text))
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_serve_tls_only() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let cert = certs.path().join("server.pem");
    let key = certs.path().join("server.key");
    let ca = std::fs::read(certs.path().join("ca.pem")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let engine = Engine::start(
        data.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = engine.http_port;

    // HTTPS with the CA trusted: health, an import and its export.
    for host in ["localhost", "127.0.0.1"] {
        let (status, _) = https(&ca, host, port, "GET", "/healthz", "")
            .await
            .unwrap_or_else(|error| panic!("HTTPS to {host}: {error:?}"));
        assert_eq!(status, 200, "{host}");
    }
    let (status, text) = https(
        &ca,
        "localhost",
        port,
        "POST",
        "/api/v1/import?sensor_id=tls%2Fs",
        "timestamp_ms,value,quality\n1000,1.5,192\n2000,2.5,192\n",
    )
    .await
    .unwrap();
    assert!((200..300).contains(&status), "{text}");
    let (status, text) = https(
        &ca,
        "localhost",
        port,
        "GET",
        "/api/v1/export?sensor_id=tls%2Fs&start_ts=0&end_ts=99999999",
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("1000,1.5,192") && text.contains("2000,2.5,192"),
        "{text}"
    );

    // A client that does not trust the certificate, or expects another
    // name, is refused.
    assert!(
        https(&[], "localhost", port, "GET", "/healthz", "")
            .await
            .is_err()
    );
    assert!(
        https(&ca, "example.com", port, "GET", "/healthz", "")
            .await
            .is_err()
    );

    // Plain HTTP to the same port gets no HTTP answer.
    let plain = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        // The server may reset the connection: an error is a refusal too.
        let _ = tcp.read_to_end(&mut response).await;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(CALL_TIMEOUT, plain)
        .await
        .expect("the server closes a plain HTTP connection")
        .unwrap();
    assert!(
        !response.starts_with(b"HTTP/"),
        "plain HTTP answered: {:?}",
        String::from_utf8_lossy(&response)
    );

    // gRPC over TLS, the server's name checked against the certificate.
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", engine.grpc_port))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .expect("gRPC over TLS connects");
    let sensors = SensorEngineClient::new(channel)
        .list_sensors(ListSensorsRequest {})
        .await
        .expect("ListSensors over TLS")
        .into_inner()
        .sensors;
    let ids: Vec<&str> = sensors.iter().map(|s| s.sensor_id.as_str()).collect();
    assert_eq!(ids, ["tls/s"]);
    assert_eq!(sensors[0].count, 2);

    // Plaintext gRPC fails, at connect or at the call.
    let plaintext = async {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", engine.grpc_port))
            .unwrap()
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect()
            .await?;
        SensorEngineClient::new(channel)
            .list_sensors(ListSensorsRequest {})
            .await
            .map_err(|status| Box::new(status) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(plaintext.is_err(), "plaintext gRPC answered");
}

#[test]
fn a_lone_cert_or_a_bad_key_is_refused_at_start() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let data = tempfile::tempdir().unwrap();
    // The engine must refuse to start: a child still running after the
    // deadline is killed and fails the test instead of hanging it.
    let serve = |args: &[&std::ffi::OsStr]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_engine"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data.path())
            .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
            .args(args)
            .env_remove("ENGINE_TLS_CERT")
            .env_remove("ENGINE_TLS_KEY")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("engine serve {args:?} started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };
    let cert = certs.path().join("server.pem");
    let only_cert = serve(&["--tls-cert".as_ref(), cert.as_os_str()]);
    assert!(!only_cert.status.success());
    let stderr = String::from_utf8_lossy(&only_cert.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");

    // The CA's key does not belong to the server's certificate.
    let wrong_key = certs.path().join("ca.key");
    let mismatched = serve(&[
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        wrong_key.as_os_str(),
    ]);
    assert!(!mismatched.status.success());
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    assert!(stderr.contains("TLS"), "{stderr}");
}

/// The TLS accept loop keeps the plain one's protections: a client that
/// never sends its ClientHello is cut off after the header-read timeout,
/// and a request running at shutdown still finishes over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_keeps_the_handshake_timeout_and_graceful_shutdown() {
    use tokio::io::AsyncReadExt;

    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let tls = engine::tls::TlsMaterial::load(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
    )
    .unwrap();
    let ca = std::fs::read(certs.path().join("ca.pem")).unwrap();
    let config = engine::http::HttpConfig {
        header_read_timeout: Duration::from_millis(300),
        tls_config: Some(tls.http),
        ..crate::support::test_config()
    };
    assert!(config.tls());
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            "done"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        engine::http::serve(listener, app, &config, async {
            let _ = stopped.await;
        })
        .await
    });

    // Silent after connecting: closed by the server, not left open.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent TLS client kept its connection");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Shutdown while /slow runs: it still answers, then the server returns.
    let slow = tokio::spawn({
        let ca = ca.clone();
        async move { https(&ca, "localhost", addr.port(), "GET", "/slow", "").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    let (status, text) = slow.await.unwrap().expect("the running request finished");
    assert_eq!(status, 200);
    assert!(text.ends_with("done"), "{text}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server drained and returned")
        .unwrap()
        .unwrap();
    assert!(
        https(&ca, "localhost", addr.port(), "GET", "/slow", "")
            .await
            .is_err(),
        "still accepting after shutdown"
    );
}
