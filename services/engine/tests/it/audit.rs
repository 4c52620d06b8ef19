//! The audit trail (issue 9 item 8) against a running server: exports
//! recorded before their first byte with their outcome, abandoned downloads,
//! refusals cut to a rate, token changes by the CLI beside a running
//! `engine serve`, `engine audit verify` catching edits, removals and swaps
//! across rotated files, and an unwritable trail (a full tmpfs) refusing
//! exports until it has room again, without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::auth::{FileTokenStore, create_token};
use reqwest::StatusCode;
use serde_json::Value;

use crate::auth::AuthServer;
use crate::full_disk::SmallDisk;
use crate::ingest_support::Engine;
use crate::support::{client, create_token_over_http, engine_bin};

/// An admin and an export token made in `dir` before the server starts.
async fn tokens(dir: &Path) -> (String, String, String) {
    let store = FileTokenStore::open(dir).unwrap();
    let admin = create_token(&store, "auditor", &["admin".into()], None)
        .await
        .unwrap()
        .secret;
    let export = create_token(&store, "analyst", &["export:plant/**".into()], None)
        .await
        .unwrap();
    (admin, export.secret, export.record.id)
}

/// `GET /api/v1/audit?QUERY` with the admin token.
async fn records(server: &AuthServer, admin: &str, query: &str) -> Vec<Value> {
    let response = client()
        .get(server.url(&format!("/api/v1/audit?{query}")))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    page["records"].as_array().unwrap().clone()
}

/// Polls until a record of `query` satisfies `want` (outcomes are written
/// when the body is dropped, a moment after the client saw its end).
async fn wait_for(
    server: &AuthServer,
    admin: &str,
    query: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(found) = records(server, admin, query).await.into_iter().find(&want) {
            return found;
        }
        assert!(Instant::now() < deadline, "no such record for {query}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn engine(args: &[&str]) -> std::process::Output {
    std::process::Command::new(engine_bin())
        .args(args)
        .output()
        .unwrap()
}

/// `engine audit verify --data-dir DIR`: (success, stdout + stderr).
fn verify(dir: &Path) -> (bool, String) {
    let out = engine(&["audit", "verify", "--data-dir", dir.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_export_is_recorded_before_its_first_byte_and_its_outcome_after() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, analyst, analyst_id) = tokens(dir.path()).await;
    let server = AuthServer::start(dir.path(), &[]).await;
    let response = client()
        .get(server.url(
            "/api/v1/export?sensor_id=plant/a&start_ts=0&end_ts=10&format=jsonl&time_zone=Europe/Berlin",
        ))
        .bearer_auth(&analyst)
        .header("accept-encoding", "identity")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.bytes().await.unwrap();

    let started = wait_for(
        &server,
        &admin,
        "sensor=plant/a&event=export_started",
        |_| true,
    )
    .await;
    assert_eq!(started["token_id"], analyst_id.as_str(), "{started}");
    assert_eq!(started["token_name"], "analyst");
    assert_eq!(started["via"], "http");
    assert!(
        started["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{started}"
    );
    assert_eq!(started["sensors"], serde_json::json!(["plant/a"]));
    assert_eq!(
        (started["start_ms"].as_i64(), started["end_ms"].as_i64()),
        (Some(0), Some(10))
    );
    assert_eq!(started["format"], "jsonl");
    assert_eq!(
        started["options"],
        serde_json::json!([["format", "jsonl"], ["time_zone", "Europe/Berlin"]])
    );
    let start_seq = started["seq"].as_u64().unwrap();
    let ended = wait_for(&server, &admin, "event=export_ended", |r| {
        r["start_seq"].as_u64() == Some(start_seq)
    })
    .await;
    assert_eq!(ended["outcome"], "completed", "{ended}");
    assert_eq!(ended["rows"], 2, "{ended}");
    assert_eq!(ended["bytes"].as_u64(), Some(body.len() as u64));
    assert_eq!(ended["token_id"], analyst_id.as_str());

    // The CLI reads the same trail while the server runs (no lock), and
    // `--sensor` finds the outcome through its start.
    let listed = engine(&[
        "audit",
        "list",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--sensor",
        "plant/a",
        "--json",
    ]);
    assert!(listed.status.success());
    let lines: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&str> = lines.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["export_started", "export_ended"], "{lines:?}");
    let by_token = engine(&[
        "audit",
        "list",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--token",
        &analyst_id,
    ]);
    let text = String::from_utf8(by_token.stdout).unwrap();
    assert!(
        text.contains("export_ended") && text.contains("outcome=completed"),
        "{text}"
    );

    // Sign-ins, with their method; a failed one is a refusal.
    let http = client();
    let ok = http
        .post(server.url("/api/v1/session"))
        .json(&serde_json::json!({ "token": analyst }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let bad = http
        .post(server.url("/api/v1/session"))
        .json(&serde_json::json!({ "token": "stse_nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let signed = wait_for(&server, &admin, "event=sign_in", |r| r["outcome"] == "ok").await;
    assert_eq!(signed["method"], "token", "{signed}");
    assert_eq!(signed["token_id"], analyst_id.as_str());
    let failed = wait_for(&server, &admin, "event=sign_in", |r| {
        r["outcome"] == "failed"
    })
    .await;
    assert_eq!(failed["reason"], "malformed credentials", "{failed}");

    // Tokens made and revoked over HTTP.
    let made = create_token_over_http(
        &http,
        &server.url("/api/v1/tokens"),
        &admin,
        "grafana",
        &["read:**"],
    )
    .await;
    let made_id = made["id"].as_str().unwrap().to_owned();
    let revoked = http
        .delete(server.url(&format!("/api/v1/tokens/{made_id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let changes = records(&server, &admin, &format!("token={made_id}")).await;
    let kinds: Vec<&str> = changes
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["token_created", "token_revoked"], "{changes:?}");
    assert_eq!(changes[0]["token_name"], "auditor");
    assert_eq!(changes[0]["scopes"], serde_json::json!(["read:**"]));

    // An import, and the refusal of one without the scope.
    let imported = http
        .post(server.url("/api/v1/import?sensor_id=plant/new"))
        .bearer_auth(&admin)
        .body("timestamp_ms,value,quality\n1,1.5,192\n2,2.5,192\n")
        .send()
        .await
        .unwrap();
    assert_eq!(imported.status(), StatusCode::OK);
    let import = wait_for(&server, &admin, "event=import", |_| true).await;
    assert_eq!(import["rows"], 2, "{import}");
    assert_eq!(import["outcome"], "completed");
    let refused = http
        .post(server.url("/api/v1/import?sensor_id=plant/new"))
        .bearer_auth(&analyst)
        .body("timestamp_ms,value,quality\n1,1.5,192\n")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refusal = wait_for(&server, &admin, "event=refused", |r| r["status"] == "403").await;
    assert_eq!(refusal["token_id"], analyst_id.as_str(), "{refusal}");
    assert_eq!(refusal["path"], "/api/v1/import");
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("may not write"),
        "{refusal}"
    );

    // Only admins read the trail.
    let denied = http
        .get(server.url("/api/v1/audit"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    server.stop().await;
    let (ok, text) = verify(dir.path());
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_the_client_abandons_is_recorded_as_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, analyst, _) = tokens(dir.path()).await;
    let server = AuthServer::start(dir.path(), &[]).await;
    // Far more than the socket buffers hold: the body is still streaming
    // when the client goes.
    const ROWS: i64 = 1_000_000;
    server
        .store
        .put("plant/big", (0..ROWS).map(|i| (i, i as f64 * 0.5, 192)));
    let mut response = client()
        .get(server.url("/api/v1/export?sensor_id=plant/big&start_ts=0&end_ts=99999999"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(response);

    let ended = wait_for(
        &server,
        &admin,
        "sensor=plant/big&event=export_ended",
        |_| true,
    )
    .await;
    assert_eq!(ended["outcome"], "aborted", "{ended}");
    let rows = ended["rows"].as_u64().unwrap();
    assert!(rows < ROWS as u64, "{ended}");
    assert!(ended["bytes"].as_u64().unwrap() > 0, "{ended}");

    // A complete one of the same sensor, for contrast.
    let whole = client()
        .get(server.url("/api/v1/export?sensor_id=plant/big&start_ts=0&end_ts=99999999"))
        .bearer_auth(&analyst)
        .header("accept-encoding", "identity")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let ended = wait_for(
        &server,
        &admin,
        "sensor=plant/big&event=export_ended",
        |r| r["outcome"] == "completed",
    )
    .await;
    assert_eq!(ended["rows"].as_u64(), Some(ROWS as u64));
    assert_eq!(ended["bytes"].as_u64(), Some(whole.len() as u64));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_refusals_is_recorded_at_a_bounded_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, _, _) = tokens(dir.path()).await;
    let server = AuthServer::start(dir.path(), &[]).await;
    let http = client();
    const FLOOD: usize = 300;
    let requests = (0..FLOOD).map(|_| {
        let (http, url) = (http.clone(), server.url("/api/v1/sensors"));
        async move { http.get(url).send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    // The count of the dropped ones is written once their second is over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = records(&server, &admin, "limit=10000").await;
    let refused = all.iter().filter(|r| r["event"] == "refused").count();
    let dropped: u64 = all
        .iter()
        .filter(|r| r["event"] == "refusals_dropped")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        refused as u64 + dropped,
        FLOOD as u64,
        "{refused} + {dropped}"
    );
    assert!(
        refused <= 3 * engine::audit::REFUSALS_PER_SECOND as usize,
        "{refused} refusal records"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_changes_by_the_cli_beside_a_running_engine_join_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The real binary; --no-auth (loopback), whose exports are audited too.
    let served = Engine::start(&data, &["--audit-rotate-bytes", "1500"]);
    let data_arg = data.to_str().unwrap();
    let http = client();
    http.post(served.http_url("/api/v1/import?sensor_id=line%2Fx"))
        .body("timestamp_ms,value,quality\n1,1.0,192\n2,2.0,192\n3,3.0,192\n")
        .send()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for round in 0..3 {
        let csv = http
            .get(served.http_url("/api/v1/export?sensor_id=line%2Fx&start_ts=0&end_ts=10"))
            .send()
            .await
            .unwrap();
        assert_eq!(csv.status(), StatusCode::OK);
        csv.bytes().await.unwrap();
        let created = engine(&[
            "token",
            "create",
            "--data-dir",
            data_arg,
            "--name",
            &format!("ci-{round}"),
            "--scope",
            "read:**",
        ]);
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let id = String::from_utf8(created.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned();
        let revoked = engine(&["token", "revoke", "--data-dir", data_arg, &id]);
        assert!(revoked.status.success());
        ids.push(id);
    }
    // The server's last outcomes reach the disk within its group commit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, text) = verify(&data);
    assert!(ok, "{text}");
    let files = std::fs::read_dir(data.join("audit")).unwrap().count();
    assert!(files > 3, "rotated: {files} entries");
    let listed = engine(&["audit", "list", "--data-dir", data_arg, "--json"]);
    let lines: Vec<Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());
    for id in &ids {
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|r| r["target_token_id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 2, "{mine:?}");
        assert!(
            mine.iter()
                .all(|r| r["via"] == "cli" && r["os_user"].is_string())
        );
    }
    let exports = lines
        .iter()
        .filter(|r| r["event"] == "export_started")
        .count();
    assert_eq!(exports, 3);
    assert!(
        lines
            .iter()
            .any(|r| r["event"] == "import" && r["rows"] == 3)
    );
    drop(served);
}

/// Copies the trail and the key of `from` into a fresh data directory.
fn copy_trail(from: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for sub in ["audit", "auth"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let entry = entry.unwrap();
            if entry.path().is_file() {
                std::fs::copy(entry.path(), data.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    (dir, data)
}

fn log_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    change(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_verify_names_the_first_edited_removed_or_reordered_record() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, analyst, _) = tokens(dir.path()).await;
    let server = AuthServer::start(dir.path(), &["--audit-rotate-bytes", "4000"]).await;
    for _ in 0..12 {
        let csv = client()
            .get(server.url("/api/v1/export?sensor_id=plant/a&start_ts=0&end_ts=10"))
            .bearer_auth(&analyst)
            .send()
            .await
            .unwrap();
        csv.bytes().await.unwrap();
    }
    wait_for(&server, &admin, "event=export_ended&limit=10000", |_| true).await;
    server.stop().await;
    let files = log_files(dir.path());
    assert!(files.len() >= 3, "rotated: {files:?}");
    let (ok, text) = verify(dir.path());
    assert!(ok && text.contains("intact"), "{text}");

    // A changed field.
    let (_keep, data) = copy_trail(dir.path());
    let second = &log_files(&data)[1];
    rewrite(second, |lines| {
        lines[1] = lines[1].replace("\"via\":\"http\"", "\"via\":\"grpc\"")
    });
    let (ok, text) = verify(&data);
    assert!(!ok, "{text}");
    let name = second.file_name().unwrap().to_str().unwrap();
    assert!(
        text.contains(&format!("{name} line 2")) && text.contains("edited"),
        "{text}"
    );

    // A deleted line.
    let (_keep, data) = copy_trail(dir.path());
    let first = &log_files(&data)[0];
    let removed_seq = {
        let text = std::fs::read_to_string(first).unwrap();
        let line: Value = serde_json::from_str(text.lines().nth(2).unwrap()).unwrap();
        line["seq"].as_u64().unwrap()
    };
    rewrite(first, |lines| {
        lines.remove(2);
    });
    let (ok, text) = verify(&data);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("seq {removed_seq} was removed")),
        "{text}"
    );

    // Two lines swapped.
    let (_keep, data) = copy_trail(dir.path());
    let first = &log_files(&data)[0];
    rewrite(first, |lines| lines.swap(1, 2));
    let (ok, text) = verify(&data);
    assert!(!ok, "{text}");
    assert!(
        text.contains("line 2") && text.contains("out of order"),
        "{text}"
    );

    // A whole file in the middle deleted.
    let (_keep, data) = copy_trail(dir.path());
    std::fs::remove_file(&log_files(&data)[1]).unwrap();
    let (ok, text) = verify(&data);
    assert!(!ok && text.contains("removed"), "{text}");

    // The oldest file deleted: only accepted when said so.
    let (_keep, data) = copy_trail(dir.path());
    std::fs::remove_file(&log_files(&data)[0]).unwrap();
    let (ok, text) = verify(&data);
    assert!(!ok && text.contains("--allow-pruned"), "{text}");
    let pruned = engine(&[
        "audit",
        "verify",
        "--allow-pruned",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        pruned.status.success(),
        "{}",
        String::from_utf8_lossy(&pruned.stderr)
    );
}

/// Fills the filesystem of `dir` with a file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0xA5u8; 64 * 1024];
    loop {
        if let Err(error) = file.write_all(&block).and_then(|()| file.sync_all()) {
            assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
            break;
        }
    }
    // Small leftovers too, so no page of the filesystem is free.
    while file
        .write_all(&block[..512])
        .and_then(|()| file.sync_all())
        .is_ok()
    {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_audit_trail_refuses_exports_until_it_has_room_again() {
    // The data directory (tokens and the audit trail) on a real tmpfs: a
    // full filesystem fails even root's writes, unlike permissions. Every
    // record in a file of its own (rotation at 1 byte), so each needs a
    // fresh page and a full disk refuses the very next one.
    let disk = SmallDisk::mount("2m");
    let data = disk.dir("data");
    let (admin, analyst, _) = tokens(&data).await;
    let server = AuthServer::start(&data, &["--audit-rotate-bytes", "1"]).await;
    let url = server.url("/api/v1/export?sensor_id=plant/a&start_ts=0&end_ts=10");
    let http = client();
    let before = http.get(&url).bearer_auth(&analyst).send().await.unwrap();
    assert_eq!(before.status(), StatusCode::OK);
    before.bytes().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    fill(&disk.path);
    for _ in 0..3 {
        let refused = http.get(&url).bearer_auth(&analyst).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            refused.headers()["content-type"].to_str().unwrap(),
            "application/json"
        );
        let body = refused.text().await.unwrap();
        assert!(body.contains("\"error\":\"audit_unavailable\""), "{body}");
        assert!(!body.contains("timestamp_ms"), "no data leaves: {body}");
    }

    // Room again: the same server exports, without a restart.
    disk.resize("64m");
    let after = http.get(&url).bearer_auth(&analyst).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(
        after.text().await.unwrap(),
        "timestamp_ms,value,quality\n1,1.0,192\n2,2.0,192\n"
    );
    let ended = wait_for(&server, &admin, "event=export_ended&limit=10000", |r| {
        r["outcome"] == "completed"
    })
    .await;
    assert_eq!(ended["rows"], 2);
    server.stop().await;
    // The refused exports left no record, and the chain is whole.
    let (ok, text) = verify(&data);
    assert!(ok, "{text}");
    let listed = engine(&[
        "audit",
        "list",
        "--data-dir",
        data.to_str().unwrap(),
        "--event",
        "export_started",
    ]);
    let starts = String::from_utf8(listed.stdout).unwrap().lines().count() - 1;
    assert_eq!(starts, 2, "the export before and the one after");
}
