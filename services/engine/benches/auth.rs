//! Authentication benchmark: `cargo bench --bench auth` (release).
//!
//! 1. The token check of every request (shape, SHA-256, lookup by hash,
//!    constant-time comparison, revocation and expiry) at 10,000 tokens,
//!    with two references measured in the same run: SHA-256 of the secret
//!    alone (the floor), and a scan comparing the hash with every token (what
//!    a lookup avoids).
//! 2. A 1M-row CSV export over HTTP with auth and the audit trail on (a
//!    bearer token; the export's start record fsynced before its first
//!    byte, its outcome group-committed), with auth alone, and with neither
//!    (`--no-auth`), on the same store and server build, alternated run by
//!    run; downloaded by `curl`, a separate process.
//!
//! Environment: `AUTH_BENCH_RUNS` (default 9).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use engine::audit::{Audit, FileAuditSink};
use engine::auth::{Authenticator, FileTokenStore, TokenRecord, TokenStore, secret};
use engine::http::{self, HttpConfig};
use engine::model::{Point, PointBatch, SensorId};
use engine::storage::embedded::EmbeddedStore;
use engine::storage::{SharedStorage, StorageEngine};
use futures_util::StreamExt;

const TOKENS: usize = 10_000;
const ROWS: usize = 1_000_000;
const SENSOR: &str = "plant/line-1/temperature";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn runs() -> usize {
    std::env::var("AUTH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
}

/// Nanoseconds per call of `f` over `secrets`, median of runs.
fn per_call(secrets: &[String], runs: usize, mut f: impl FnMut(&str) -> bool) -> f64 {
    let mut figures = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut ok = 0usize;
        for secret in secrets {
            ok += usize::from(f(secret));
        }
        assert_eq!(ok, secrets.len());
        figures.push(started.elapsed().as_nanos() as f64 / secrets.len() as f64);
    }
    median(figures)
}

fn main() {
    let runs = runs();
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // 10,000 tokens, written as one file (as 10,000 `token create` would).
    let secrets: Vec<String> = (0..TOKENS).map(|_| secret::generate()).collect();
    let records: Vec<TokenRecord> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| TokenRecord {
            id: format!("tok_{i:016x}"),
            name: format!("bench {i}"),
            hash: secret::hex(&secret::hash(s)),
            scopes: vec!["read:plant/**".into(), "export:plant/line-1/*".into()],
            created_ms: 0,
            expires_ms: Some(i64::MAX),
            revoked_ms: None,
        })
        .collect();
    let store = FileTokenStore::open(dir.path()).expect("token store");
    std::fs::write(
        store.dir().join("tokens.json"),
        serde_json::to_vec(&serde_json::json!({"version": 1, "tokens": records})).unwrap(),
    )
    .unwrap();
    let store: Arc<dyn TokenStore> = Arc::new(store);
    let auth = runtime
        .block_on(Authenticator::load(Arc::clone(&store)))
        .expect("load");
    assert_eq!(auth.len(), TOKENS);

    let check = per_call(&secrets, runs, |s| auth.authenticate(s).is_ok());
    let sha = per_call(&secrets, runs, |s| {
        std::hint::black_box(secret::hash(s));
        true
    });
    let hashes: Vec<[u8; 32]> = secrets.iter().map(|s| secret::hash(s)).collect();
    let scan_sample: Vec<String> = secrets.iter().step_by(100).cloned().collect();
    let scan = per_call(&scan_sample, runs, |s| {
        let h = secret::hash(s);
        hashes
            .iter()
            .filter(|k| secret::constant_time_eq(&k[..], &h))
            .count()
            == 1
    });

    // 1M rows over HTTP, auth on and off.
    let data = dir.path().join("store");
    let (audited, with_auth, without_auth, secret) = runtime.block_on(async {
        let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&data))
            .await
            .unwrap()
            .expect("store");
        let batches = futures_util::stream::iter((0..ROWS).step_by(65_536))
            .map(|from| {
                Ok((from..(from + 65_536).min(ROWS))
                    .map(|i| Point {
                        timestamp_ms: 1_735_689_600_000 + i as i64 * 1000,
                        value: 20.0 + (i % 1000) as f64 * 0.001,
                        quality: 192,
                    })
                    .collect::<PointBatch>())
            })
            .boxed();
        store
            .import(&SensorId::new(SENSOR).unwrap(), batches)
            .await
            .expect("import");
        let storage: SharedStorage = Arc::new(store);
        let created = engine::auth::create_token(
            &*store_ref(&auth),
            "bench",
            &["export:plant/**".into()],
            None,
        )
        .await
        .unwrap();
        auth.refresh().await.unwrap();
        // The audit trail on the same disk as the store, as in production.
        let audit_dir = dir.path().join("audited");
        let sink = FileAuditSink::open(&audit_dir, engine::audit::DEFAULT_ROTATE_BYTES)
            .expect("audit trail");
        let audit = Audit::start(Arc::new(sink));
        let mut addrs = Vec::new();
        for (auth, audit) in [
            (Some(Arc::clone(&auth)), Some(audit)),
            (Some(Arc::clone(&auth)), None),
            (None, None),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let config = HttpConfig {
                web_dir: None,
                auth,
                audit,
                ..HttpConfig::default()
            };
            let served = Arc::clone(&storage);
            tokio::spawn(async move {
                http::serve_api(
                    listener,
                    served,
                    axum::Router::new(),
                    &config,
                    std::future::pending(),
                )
                .await
            });
        }
        (addrs[0], addrs[1], addrs[2], created.secret)
    });
    let url = |addr: std::net::SocketAddr| {
        format!("http://{addr}/api/v1/export?sensor_id={SENSOR}&start_ts=0&end_ts=9999999999999")
    };
    let download = |addr, bearer: Option<&str>| {
        let mut curl = Command::new("curl");
        curl.args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ]);
        if let Some(secret) = bearer {
            curl.args(["-H", &format!("Authorization: Bearer {secret}")]);
        }
        let started = Instant::now();
        let out = curl
            .arg(url(addr))
            .stderr(Stdio::inherit())
            .output()
            .expect("curl");
        let seconds = started.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.starts_with("200 "), "export failed: {text}");
        seconds
    };
    download(audited, Some(&secret)); // warm the caches
    let (mut full, mut on, mut off) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        full.push(download(audited, Some(&secret)));
        on.push(download(with_auth, Some(&secret)));
        off.push(download(without_auth, None));
    }
    let (full, on, off) = (median(full), median(on), median(off));
    let records = engine::audit::verify::verify_dir(&dir.path().join("audited"), None, false)
        .expect("verify");
    assert!(records.problem.is_none(), "{records:?}");
    // Outcomes are group-committed: the last one may still be on its way.
    assert!(records.records as usize > 2 * runs, "{records:?}");

    println!("| Measure | Median |");
    println!("|---|---|");
    println!(
        "| Token check at {TOKENS} tokens (shape, SHA-256, lookup, expiry) | {:.0} ns |",
        check
    );
    println!("| reference: SHA-256 of the secret alone | {:.0} ns |", sha);
    println!(
        "| reference: scanning {TOKENS} hashes instead of a lookup | {:.0} ns |",
        scan
    );
    println!(
        "| 1M-row CSV export, auth + audit trail on (bearer) | {:.3} s |",
        full
    );
    println!(
        "| 1M-row CSV export, auth on, no audit trail | {:.3} s |",
        on
    );
    println!("| 1M-row CSV export, --no-auth | {:.3} s |", off);
    println!(
        "| auth + audit on vs --no-auth | {:+.1} % |",
        (full / off - 1.0) * 100.0
    );
    println!(
        "| auth alone vs --no-auth | {:+.1} % |",
        (on / off - 1.0) * 100.0
    );
}

fn store_ref(auth: &Authenticator) -> Arc<dyn TokenStore> {
    Arc::clone(auth.store())
}
