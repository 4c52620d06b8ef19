//! NATS credentials (issue 9 item 7): the consumer authenticates to a real
//! nats-server that requires it (user and password, token) and trusts its
//! TLS certificate through a CA file; generated here with the openssl CLI.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use engine::ingest::IngestStats;
use engine::ingest::nats::{NatsConfig, NatsCredentials, run};

use crate::grpc::{connect_engine, scan_all};
use crate::ingest_support::{Engine, NATS_SERVER, free_port, wait_until_listening};

/// A private nats-server started with `config` (the listen address and
/// JetStream directory are added), killed on drop.
struct SecuredNats {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SecuredNats {
    fn start(config: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let text = format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n{}\n",
            dir.path().join("js").display().to_string(),
            config(dir.path())
        );
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, text).unwrap();
        let log = dir.path().join("nats.log");
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start nats-server");
        let mut server = Self { child, port, dir };
        if let Err(why) = wait_until_listening(&mut server.child, port, Duration::from_secs(20)) {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("nats-server: {why}\n{log}");
        }
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for SecuredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes one point with a client authenticated by `options`.
async fn publish(options: async_nats::ConnectOptions, url: &str, sensor: &str, value: f64) {
    let client = options.connect(url).await.expect("publisher connects");
    let js = async_nats::jetstream::new(client);
    // The engine creates the stream; wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream("SENSORS").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the engine never created the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let message = format!(r#"{{"sensor_id":"{sensor}","timestamp_ms":1,"value":{value:?}}}"#);
    js.publish(format!("sensors.{sensor}"), message.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Waits until the engine stored the point.
async fn stored(engine: &Engine, sensor: &str, value: f64) {
    let mut client = connect_engine(engine.grpc_url()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(points) = scan_all(&mut client, sensor).await
            && points == vec![(1, value)]
        {
            return;
        }
        assert!(Instant::now() < deadline, "{sensor} not ingested");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The in-process consumer with `credentials` never gets in: it stays
/// disconnected (what `/readyz` reports) and never connects.
async fn refused(url: String, credentials: NatsCredentials) {
    let (dir, store) = {
        let dir = tempfile::tempdir().unwrap();
        let store = engine::storage::embedded::EmbeddedStore::open(dir.path()).unwrap();
        (dir, Arc::new(store))
    };
    let stats = Arc::new(IngestStats::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = NatsConfig {
        credentials,
        ..NatsConfig::new(url)
    };
    let task = tokio::spawn(run(config, store, Arc::clone(&stats), async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!stats.connected.load(Ordering::Relaxed));
    assert_eq!(stats.snapshot().connects, 0);
    let _ = stop.send(());
    task.await.unwrap();
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_from_the_environment() {
    let nats = SecuredNats::start(|_| {
        "authorization { users = [ { user: engine, password: \"s3cret pass\" } ] }".to_owned()
    });
    let data = tempfile::tempdir().unwrap();
    // Secrets through the environment, not the command line (`ps`).
    let engine = Engine::start_with_env(
        data.path(),
        &["--nats-url", &nats.url()],
        &[
            ("ENGINE_NATS_USER", "engine"),
            ("ENGINE_NATS_PASSWORD", "s3cret pass"),
        ],
    );
    publish(
        async_nats::ConnectOptions::with_user_and_password("engine".into(), "s3cret pass".into()),
        &nats.url(),
        "auth_user",
        1.25,
    )
    .await;
    stored(&engine, "auth_user", 1.25).await;
    refused(
        nats.url(),
        NatsCredentials {
            user_password: Some(("engine".into(), "wrong".into())),
            ..Default::default()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_and_tls_with_a_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let (cert, key, ca) = (
        certs.path().join("server.pem"),
        certs.path().join("server.key"),
        certs.path().join("ca.pem"),
    );
    let nats = SecuredNats::start(|_| {
        format!(
            "authorization {{ token: \"t0ken-for-engines\" }}\n\
             tls {{ cert_file: {:?}, key_file: {:?} }}",
            cert.display().to_string(),
            key.display().to_string()
        )
    });
    let data = tempfile::tempdir().unwrap();
    let engine = Engine::start(
        data.path(),
        &[
            "--nats-url",
            &nats.url(),
            "--nats-token",
            "t0ken-for-engines",
            "--nats-ca",
            ca.to_str().unwrap(),
        ],
    );
    publish(
        async_nats::ConnectOptions::with_token("t0ken-for-engines".into())
            .add_root_certificates(ca.clone())
            .require_tls(true),
        &nats.url(),
        "auth_tls",
        2.5,
    )
    .await;
    stored(&engine, "auth_tls", 2.5).await;
    // Without the CA the server's certificate is not trusted; with the
    // wrong token the server refuses.
    refused(
        nats.url(),
        NatsCredentials {
            token: Some("t0ken-for-engines".into()),
            ..Default::default()
        },
    )
    .await;
    refused(
        nats.url(),
        NatsCredentials {
            token: Some("wrong".into()),
            ca_file: Some(ca.clone()),
            ..Default::default()
        },
    )
    .await;
    let _ = &nats.dir;
}

/// A CA and a server certificate for 127.0.0.1 signed by it, with the
/// openssl command-line tool.
pub(crate) fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=engine test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// NATS's decentralised auth: a server in operator mode trusts an operator
/// key; accounts and users are JWTs signed down that chain, and a client
/// proves who it is with a `.creds` file (the user JWT and its NKey seed),
/// as `nsc` writes it. Built here with the nkeys crate, signed as the
/// server's JWT library expects (`alg: ed25519-nkey`).
mod jwt {
    use data_encoding::BASE64URL_NOPAD;
    use nkeys::KeyPair;

    fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
        let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let claims = serde_json::json!({
            "jti": format!("{name}-{subject}"),
            "iat": 1_700_000_000,
            "iss": issuer.public_key(),
            "name": name,
            "sub": subject,
            "nats": nats,
        });
        let claims = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
        let signed = format!("{header}.{claims}");
        let signature = issuer.sign(signed.as_bytes()).expect("sign");
        format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature))
    }

    pub fn operator(operator: &KeyPair) -> String {
        encode(
            operator,
            &operator.public_key(),
            "test-operator",
            serde_json::json!({ "type": "operator", "version": 2 }),
        )
    }

    /// An account; with `jetstream`, unlimited JetStream storage (the
    /// system account may have none).
    pub fn account(operator: &KeyPair, account: &KeyPair, name: &str, jetstream: bool) -> String {
        let storage = if jetstream { -1 } else { 0 };
        encode(
            operator,
            &account.public_key(),
            name,
            serde_json::json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1,
                    "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": storage, "disk_storage": storage,
                    "streams": storage, "consumer": storage
                }
            }),
        )
    }

    pub fn user(account: &KeyPair, user: &KeyPair) -> String {
        encode(
            account,
            &user.public_key(),
            "engine",
            serde_json::json!({
                "type": "user", "version": 2,
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1
            }),
        )
    }

    /// The `.creds` file of `user`, in `nsc`'s layout.
    pub fn creds(user_jwt: &str, user: &KeyPair) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            user.seed().expect("seed")
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_against_a_server_in_operator_mode() {
    use nkeys::KeyPair;
    let operator = KeyPair::new_operator();
    let system = KeyPair::new_account();
    let account = KeyPair::new_account();
    let user = KeyPair::new_user();
    let nats = SecuredNats::start(|_| {
        format!(
            "operator: {:?}\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: {:?}\n  {}: {:?}\n}}",
            jwt::operator(&operator),
            system.public_key(),
            system.public_key(),
            jwt::account(&operator, &system, "SYS", false),
            account.public_key(),
            jwt::account(&operator, &account, "PLANT", true),
        )
    });
    let keys = tempfile::tempdir().unwrap();
    let creds_text = jwt::creds(&jwt::user(&account, &user), &user);
    let creds = keys.path().join("engine.creds");
    std::fs::write(&creds, &creds_text).unwrap();
    let data = tempfile::tempdir().unwrap();
    let engine = Engine::start_with_env(
        data.path(),
        &["--nats-url", &nats.url()],
        &[("ENGINE_NATS_CREDS", creds.to_str().unwrap())],
    );
    publish(
        async_nats::ConnectOptions::with_credentials(&creds_text).unwrap(),
        &nats.url(),
        "auth_creds",
        3.75,
    )
    .await;
    stored(&engine, "auth_creds", 3.75).await;
    // A user signed by an account the operator never signed is refused,
    // and so is a creds file whose seed is not the JWT's user.
    let stranger = KeyPair::new_account();
    let outsider = keys.path().join("outsider.creds");
    std::fs::write(&outsider, jwt::creds(&jwt::user(&stranger, &user), &user)).unwrap();
    refused(
        nats.url(),
        NatsCredentials {
            creds_file: Some(outsider),
            ..Default::default()
        },
    )
    .await;
    let mismatched = keys.path().join("mismatched.creds");
    std::fs::write(
        &mismatched,
        jwt::creds(&jwt::user(&account, &user), &KeyPair::new_user()),
    )
    .unwrap();
    refused(
        nats.url(),
        NatsCredentials {
            creds_file: Some(mismatched),
            ..Default::default()
        },
    )
    .await;
}
