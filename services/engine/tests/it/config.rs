//! `engine serve --config FILE`, `--print-config` and the example file
//! `engine.example.toml`; and `--log-format` of the real binary.
//!
//! The option list comes from clap's definition of `serve`, so a flag added
//! to `ServeConfig` on any branch is checked here without editing this file.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;

use crate::binary::Served;
use crate::support::{client, engine_bin};

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../engine.example.toml")
}

/// `engine ARGS` with no `ENGINE_*` variables but `env`, in a temporary
/// working directory.
fn engine(args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(engine_bin());
    command
        .current_dir(dir.path())
        .args(args)
        .stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("ENGINE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The value of `key` in a TOML document, as TOML text.
fn key(document: &str, key: &str) -> Option<String> {
    let table: toml::Table = document.parse().unwrap();
    table.get(key).map(ToString::to_string)
}

#[test]
fn the_example_names_every_option_with_its_default() {
    let example = std::fs::read_to_string(example_path()).unwrap();
    // It parses, and every key in it is an option (the loader refuses others).
    let table: toml::Table = example.parse().expect("engine.example.toml parses");
    let keys = engine::config::keys::<engine::cli::Cli>();
    assert!(keys.len() >= 20, "{keys:?}");
    for key in table.keys() {
        assert!(keys.contains(key), "{key} is not an option of engine serve");
    }
    // Every option is named: set, or commented out when it has no default.
    for key in &keys {
        let named = example.lines().any(|line| {
            line.starts_with(&format!("{key} = ")) || line.starts_with(&format!("# {key} = "))
        });
        assert!(
            named,
            "engine.example.toml does not name `{key}`: regenerate it with \
             `engine serve --print-config > engine.example.toml`"
        );
    }
    // And it is exactly the defaults: what --print-config prints without a
    // file, and with the example as the file.
    let defaults = stdout(&engine(&["serve", "--print-config"], &[]));
    assert_eq!(
        example, defaults,
        "engine.example.toml is not the defaults: regenerate it with \
         `engine serve --print-config > engine.example.toml`"
    );
    let path = example_path();
    let loaded = stdout(&engine(
        &[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    ));
    assert_eq!(loaded, defaults);
}

#[test]
fn every_serve_flag_has_an_environment_variable() {
    let cli = engine::cli::Cli::command();
    let serve = cli.find_subcommand("serve").unwrap();
    for arg in serve.get_arguments() {
        let id = arg.get_id().as_str();
        if ["help", "print_config", "demo"].contains(&id) || !arg.get_action().takes_values() {
            continue;
        }
        assert!(
            arg.get_env().is_some(),
            "--{id} has no environment variable"
        );
    }
}

#[test]
fn flags_outrank_the_environment_which_outranks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engine.toml");
    std::fs::write(
        &file,
        r#"
http_addr = "127.0.0.1:1111"
grpc_addr = "127.0.0.1:1112"
max_concurrent_exports = 7
shutdown_grace = "5s"
retention = ["plant/**=30d", "**=400d"]
demo = true
"head-flush-points" = 1000
"#,
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let printed = stdout(&engine(
        &[
            "serve",
            "--config",
            file,
            "--max-concurrent-exports",
            "9",
            "--print-config",
        ],
        &[
            ("ENGINE_HTTP_ADDR", "127.0.0.1:2222"),
            ("ENGINE_MAX_CONCURRENT_EXPORTS", "8"),
        ],
    ));
    // env > file
    assert_eq!(key(&printed, "http_addr").unwrap(), r#""127.0.0.1:2222""#);
    // flag > env > file
    assert_eq!(key(&printed, "max_concurrent_exports").unwrap(), "9");
    // file > default
    assert_eq!(key(&printed, "grpc_addr").unwrap(), r#""127.0.0.1:1112""#);
    assert_eq!(key(&printed, "shutdown_grace").unwrap(), r#""5s""#);
    assert_eq!(key(&printed, "demo").unwrap(), "true");
    assert_eq!(key(&printed, "head_flush_points").unwrap(), "1000");
    assert_eq!(
        key(&printed, "retention").unwrap().replace(' ', ""),
        r#"["plant/**=30d","**=400d"]"#
    );
    // default
    assert_eq!(key(&printed, "header_read_timeout").unwrap(), r#""10s""#);
    // The printed configuration is a config file that gives the same.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).unwrap();
    let reprinted = stdout(&engine(
        &[
            "serve",
            "--config",
            again.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    ));
    assert_eq!(reprinted, printed);
}

#[test]
fn a_bad_config_file_is_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("max_exports = 3\n", "max_exports"),
        ("max_concurrent_exports = \"many\"\n", "many"),
        ("shutdown_grace = \"5 parsecs\"\n", "parsecs"),
        ("http_addr = [\n", "engine.toml"),
        ("config = \"other.toml\"\n", "config"),
    ];
    for (text, named) in cases {
        let file = dir.path().join("engine.toml");
        std::fs::write(&file, text).unwrap();
        let output = engine(&["serve", "--config", file.to_str().unwrap()], &[]);
        assert_eq!(output.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(named), "{text}: {stderr}");
    }
    let missing = engine(&["serve", "--config", "/nonexistent/engine.toml"], &[]);
    assert_eq!(missing.status.code(), Some(2));
}

/// The file's settings reach the server: a limit taken from it is in force.
#[tokio::test]
async fn a_config_file_sets_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engine.toml");
    std::fs::write(
        &file,
        "max_concurrent_exports = 1\nxlsx_rows_per_sheet = 2\n",
    )
    .unwrap();
    let served = Served::start(
        dir.path(),
        &["--config", file.to_str().unwrap(), "--data-dir", "d"],
        None,
    );
    let import = client()
        .post(served.url("/api/v1/import?sensor_id=s"))
        .body("timestamp_ms,value,quality\n1,1,192\n2,2,192\n3,3,192\n4,4,192\n5,5,192\n")
        .send()
        .await
        .unwrap();
    assert_eq!(import.status(), 200);
    let xlsx = client()
        .get(served.url("/api/v1/export?sensor_id=s&start_ts=0&end_ts=10&format=xlsx"))
        .send()
        .await
        .unwrap();
    assert_eq!(xlsx.status(), 200);
    let bytes = xlsx.bytes().await.unwrap();
    let workbook: calamine::Xlsx<_> =
        calamine::open_workbook_from_rs(std::io::Cursor::new(bytes.to_vec())).unwrap();
    use calamine::Reader;
    // 5 rows at 2 per sheet: 3 data sheets and the Info sheet.
    assert_eq!(
        workbook.sheet_names().len(),
        4,
        "{:?}",
        workbook.sheet_names()
    );
    assert!(served.stop().success());
}

#[test]
fn text_logs_carry_no_colour_off_a_terminal_and_json_logs_parse() {
    let dir = tempfile::tempdir().unwrap();
    // Text, standard error to a file.
    let log = dir.path().join("text.log");
    let served = Served::start(dir.path(), &["--data-dir", "d"], Some(&log));
    assert!(served.stop().success());
    let text = std::fs::read(&log).unwrap();
    assert!(!text.is_empty());
    assert!(
        !text.contains(&0x1b),
        "escape codes in the log: {}",
        String::from_utf8_lossy(&text)
    );
    assert!(String::from_utf8_lossy(&text).contains("HTTP listening"));

    // JSON: every line an object with a level and a message.
    let log = dir.path().join("json.log");
    let served = Served::start(
        dir.path(),
        &["--data-dir", "d", "--log-format", "json"],
        Some(&log),
    );
    assert!(served.stop().success());
    let json = std::fs::read_to_string(&log).unwrap();
    let mut messages = Vec::new();
    for line in json.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        messages.push(
            value["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert!(
        messages.iter().any(|m| m == "HTTP listening"),
        "{messages:?}"
    );
    assert!(!json.contains('\u{1b}'));
}
