//! The `engine` command line. `main.rs` only calls [`run`].

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use futures_util::StreamExt;

use crate::csv_format::read_points;
use crate::export::{self, ExportError, ExportOptions, ExportRequest};
use crate::model::{SensorId, parse_timestamp};
use crate::server::{self, ServeConfig};
use crate::storage::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::storage::postgres::PgStorage;
use crate::storage::{SharedStorage, StorageError};
use crate::store_copy;

/// Sensor time-series engine: stores sensor readings, serves the dashboard,
/// exports raw data as CSV or Excel.
#[derive(Debug, Parser)]
#[command(name = "engine", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Format of the log on standard error: `text` (colour only on a
    /// terminal) or `json` (one object per line).
    #[arg(long, global = true, env = "ENGINE_LOG_FORMAT", default_value = "text")]
    log_format: crate::logging::LogFormat,
}

/// Where the data is: the flags shared by every command.
#[derive(Debug, clap::Args)]
struct DataDir {
    /// Directory of the embedded store; created if missing. Only one process
    /// can use it at a time.
    #[arg(long, env = "ENGINE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Use PostgreSQL instead of the data directory:
    /// postgres://USER@HOST:PORT/DATABASE (the engine creates its tables).
    /// Several engines may share one database.
    #[arg(long, env = "ENGINE_STORE", value_name = "URL")]
    store: Option<String>,
}

/// `engine export`'s flags: the HTTP export's parameters by other names.
#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// A sensor to export; repeat for several (up to 1,000).
    #[arg(long = "sensor", required = true)]
    sensors: Vec<String>,
    /// First timestamp included: epoch milliseconds or RFC 3339. Default:
    /// the earliest point of the sensors.
    #[arg(long, value_parser = parse_timestamp)]
    start: Option<i64>,
    /// First timestamp excluded. Default: just after the latest point.
    #[arg(long, value_parser = parse_timestamp)]
    end: Option<i64>,
    /// `long` or `wide` (several sensors; default long).
    #[arg(long)]
    layout: Option<String>,
    /// `previous`: wide cells without a point take the sensor's previous value.
    #[arg(long)]
    fill: Option<String>,
    /// Bucket length: milliseconds, or `30s`, `15m`, `1h`, `1d`.
    #[arg(long)]
    interval: Option<String>,
    /// Aggregates per bucket, a comma list: first,last,min,max,mean,count,
    /// time_weighted_mean,interpolated,percent_good.
    #[arg(long)]
    aggregate: Option<String>,
    /// Count points of every quality into the aggregates, not only good ones.
    #[arg(long)]
    include_bad: bool,
    /// IANA time zone: a `time_local` column, and local-time buckets.
    #[arg(long)]
    time_zone: Option<String>,
    /// `csv` (default), `xlsx`, `parquet`, `arrow` or `jsonl`.
    #[arg(long)]
    format: Option<String>,
    /// CSV: write a UTF-8 byte order mark first.
    #[arg(long)]
    bom: bool,
    /// CSV: the field delimiter, `,` `;` or `tab`.
    #[arg(long)]
    delimiter: Option<String>,
    /// CSV: the decimal mark, `.` or `,`.
    #[arg(long)]
    decimal: Option<String>,
    /// CSV: `excel`, for spreadsheets (see the README).
    #[arg(long)]
    preset: Option<String>,
    /// The export time the XLSX information sheet names (default: now).
    #[arg(long)]
    exported_at: Option<String>,
    /// Write to FILE (complete files only: written beside it, then renamed)
    /// instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

impl ExportArgs {
    /// The HTTP export's query parameters for these flags.
    fn pairs(&self, start: i64, end: i64) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .sensors
            .iter()
            .map(|s| ("sensor_id".to_owned(), s.clone()))
            .collect();
        pairs.push(("start_ts".into(), start.to_string()));
        pairs.push(("end_ts".into(), end.to_string()));
        let optional = [
            ("layout", &self.layout),
            ("fill", &self.fill),
            ("interval", &self.interval),
            ("aggregate", &self.aggregate),
            ("time_zone", &self.time_zone),
            ("format", &self.format),
            ("delimiter", &self.delimiter),
            ("decimal", &self.decimal),
            ("preset", &self.preset),
            ("exported_at", &self.exported_at),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                pairs.push((name.to_owned(), value.clone()));
            }
        }
        if self.include_bad {
            pairs.push(("include_bad".into(), "true".into()));
        }
        if self.bom {
            pairs.push(("bom".into(), "true".into()));
        }
        pairs
    }
}

// Parsed once per process: the size of `Serve`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP API and dashboard, gRPC, NATS ingestion.
    Serve {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        config: Box<ServeConfig>,
    },
    /// Load a CSV (header `timestamp_ms,value,quality`) into one sensor, all
    /// or nothing: a bad row stores nothing of the file.
    Import {
        #[command(flatten)]
        data_dir: DataDir,
        /// The sensor the rows belong to.
        #[arg(long)]
        sensor: SensorId,
        /// The CSV file; standard input when absent or `-`.
        file: Option<PathBuf>,
    },
    /// Export sensors' points, raw or as interval aggregates, to standard
    /// output or a file: byte-identical to the HTTP export
    /// (`GET /api/v1/export`) with the same parameters.
    Export {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        export: Box<ExportArgs>,
    },
    /// List sensors with point count and first/last timestamp (tab-separated).
    Sensors {
        #[command(flatten)]
        data_dir: DataDir,
    },
    /// Copy every sensor from one store to another, then check point counts
    /// and a checksum per sensor. Rerun after an interruption: sensors
    /// already copied are skipped.
    Copy {
        /// The source: a data directory or a postgres:// URL.
        #[arg(long, value_name = "DIR|URL")]
        from: String,
        /// The destination: a data directory or a postgres:// URL.
        #[arg(long, value_name = "DIR|URL")]
        to: String,
    },
    /// Write a consistent backup (zstd-compressed tar) of a store that is
    /// not running; for a running one, `GET /api/v1/admin/backup`.
    Backup {
        #[command(flatten)]
        data_dir: DataDir,
        /// The backup file to write; standard output when `-`.
        #[arg(long)]
        output: PathBuf,
    },
    /// Rebuild a store from a backup into a new (or empty) directory.
    Restore {
        /// The backup file; standard input when `-`.
        #[arg(long)]
        input: PathBuf,
        /// Directory of the new store.
        #[arg(long, env = "ENGINE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Create, list and revoke API tokens. Works while `engine serve` runs
    /// on the same data directory; a revocation applies within a second.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Read and check the audit trail (`DATA_DIR/audit/`); works while
    /// `engine serve` runs on the same data directory.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Recover a store whose write-ahead log is damaged (opening it says
    /// so): keeps every intact record, moves each damaged segment to
    /// `wal/damaged/`, and reports what could not be recovered. The store
    /// must not be in use.
    Repair {
        #[command(flatten)]
        data_dir: DataDir,
    },
}

/// `engine token ...`.
#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; its secret is printed once, alone on the last line
    /// of standard output.
    Create {
        #[arg(long, env = "ENGINE_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// A name to recognise it by ("grafana", "alice").
        #[arg(long)]
        name: String,
        /// `admin`, `read:PATTERN`, `export:PATTERN` (implies read) or
        /// `write:PATTERN`; repeatable. PATTERN: `*` any run without `/`,
        /// `**` any run, e.g. `export:plant/line-1/*`.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime, e.g. `90d`, `12h`; default: never expires.
        #[arg(long, value_parser = crate::model::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List tokens (tab-separated; never the secret).
    List {
        #[arg(long, env = "ENGINE_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
    /// Revoke a token by id; a running server refuses it within a second.
    Revoke {
        #[arg(long, env = "ENGINE_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// The token's id (`tok_...`, see `engine token list`).
        id: String,
    },
}

/// `engine audit ...`.
#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Records, oldest first: tab-separated (seq, time, event, via, token,
    /// client, the rest as key=value), or as stored with `--json`.
    List {
        #[arg(long, env = "ENGINE_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// Records at or after TS (epoch ms or RFC 3339).
        #[arg(long, value_parser = parse_timestamp)]
        since: Option<i64>,
        /// Records of this token id (made with it, or creating or revoking it).
        #[arg(long)]
        token: Option<String>,
        /// Records naming this sensor (and the outcomes of its exports).
        #[arg(long)]
        sensor: Option<String>,
        /// Only this kind: export_started, export_ended, import, grpc_write,
        /// token_created, token_revoked, sign_in, refused, refusals_dropped.
        #[arg(long)]
        event: Option<String>,
        /// At most this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object a line, exactly as stored.
        #[arg(long)]
        json: bool,
    },
    /// Check every record's MAC and the chain across files; exits non-zero
    /// naming the first record that was edited, removed or reordered.
    Verify {
        #[arg(long, env = "ENGINE_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// The key to check with (a copy kept elsewhere); default
        /// `DATA_DIR/auth/audit-key`.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Accept a trail whose oldest files were deleted on purpose: the
        /// first remaining record may follow one that is gone.
        #[arg(long)]
        allow_pruned: bool,
    },
}

async fn run_audit(command: AuditCommand) -> Result<(), CliError> {
    use crate::audit::{AuditFilter, file, verify};
    let mut out = io::BufWriter::new(io::stdout().lock());
    match command {
        AuditCommand::List {
            data_dir,
            since,
            token,
            sensor,
            event,
            limit,
            json,
        } => {
            let filter = AuditFilter {
                since_ms: since,
                token,
                sensor,
                event,
                after_seq: None,
                limit,
            };
            let page = verify::read_records(&file::log_dir(&data_dir), &filter)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            if !json {
                writeln!(out, "seq\ttime\tevent\tvia\ttoken\tclient\tdetails")
                    .map_err(CliError::Output)?;
            }
            for record in &page.records {
                if json {
                    writeln!(out, "{record}").map_err(CliError::Output)?;
                    continue;
                }
                let field = |name: &str| match record.get(name) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => "-".into(),
                    Some(other) => other.to_string(),
                };
                let token = match (record.get("token_id"), record.get("token_name")) {
                    (Some(id), Some(name)) => format!(
                        "{} ({})",
                        id.as_str().unwrap_or("-"),
                        name.as_str().unwrap_or("")
                    ),
                    (None, Some(name)) => name.as_str().unwrap_or("-").to_owned(),
                    (_, None) => record
                        .get("os_user")
                        .and_then(|u| u.as_str())
                        .map_or_else(|| "-".into(), |u| format!("user {u}")),
                };
                const SHOWN: &[&str] = &[
                    "seq",
                    "ms",
                    "time",
                    "event",
                    "via",
                    "token_id",
                    "token_name",
                    "client",
                    "os_user",
                    "prev",
                    "mac",
                ];
                let details: Vec<String> = record
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(key, _)| !SHOWN.contains(&key.as_str()))
                    .map(|(key, value)| match value {
                        serde_json::Value::String(s) => format!("{key}={s}"),
                        other => format!("{key}={other}"),
                    })
                    .collect();
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{token}\t{}\t{}",
                    field("seq"),
                    field("time"),
                    field("event"),
                    field("via"),
                    field("client"),
                    details.join(" ")
                )
                .map_err(CliError::Output)?;
            }
            if page.truncated {
                eprintln!("(more records match; raise --limit or narrow with --since)");
            }
        }
        AuditCommand::Verify {
            data_dir,
            key,
            allow_pruned,
        } => {
            let report = verify::verify_dir(&data_dir, key.as_deref(), allow_pruned)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            if let Some(problem) = &report.problem {
                return Err(CliError::Usage(format!(
                    "the audit trail was tampered with or damaged: {}: {} \
                     ({} records before it are intact)",
                    problem.at, problem.what, report.records
                )));
            }
            let range = match (report.first_seq, report.last_seq) {
                (Some(first), Some(last)) => format!("seq {first} to {last}"),
                _ => "no records".into(),
            };
            writeln!(
                out,
                "audit trail intact: {} records ({range}) in {} files in {}",
                report.records,
                report.files,
                report.dir.display()
            )
            .map_err(CliError::Output)?;
        }
    }
    out.flush().map_err(CliError::Output)
}

/// Records a token change made by the CLI, durably, in the data
/// directory's audit trail: appended under the trail's file lock, so a
/// running server's records and these share one chain.
fn audit_token_change(data_dir: &Path, event: crate::audit::AuditEvent) -> Result<(), CliError> {
    let sink = crate::audit::FileAuditSink::open(data_dir, crate::audit::DEFAULT_ROTATE_BYTES)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    sink.append_blocking(&[event], true)
        .map(|_| ())
        .map_err(|e| CliError::Usage(e.to_string()))
}

fn format_ms(ms: Option<i64>) -> String {
    match ms.map(jiff::Timestamp::from_millisecond) {
        None => "-".into(),
        Some(Ok(t)) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Some(Err(_)) => "?".into(),
    }
}

async fn run_token(command: TokenCommand) -> Result<(), CliError> {
    use crate::auth::{FileTokenStore, TokenError, TokenStore};
    let open = |dir: &Path| FileTokenStore::open(dir).map_err(|e| CliError::Usage(e.to_string()));
    let mut out = io::BufWriter::new(io::stdout().lock());
    match command {
        TokenCommand::Create {
            data_dir,
            name,
            scopes,
            expires,
        } => {
            let store = open(&data_dir)?;
            let created = crate::auth::create_token(&store, &name, &scopes, expires)
                .await
                .map_err(|e| match e {
                    TokenError::Invalid(m) => CliError::Usage(m),
                    TokenError::Store(e) => CliError::Usage(e.to_string()),
                })?;
            let record = &created.record;
            let audited = audit_token_change(
                &data_dir,
                crate::audit::AuditEvent::TokenCreated {
                    actor: crate::audit::Actor::cli(),
                    target_token_id: record.id.clone(),
                    target_name: record.name.clone(),
                    scopes: record.scopes.clone(),
                    expires_ms: record.expires_ms,
                },
            );
            if let Err(error) = audited {
                // Not in the trail: not made.
                let now = jiff::Timestamp::now().as_millisecond();
                let _ = store.revoke(&record.id, now).await;
                return Err(CliError::Usage(format!(
                    "token not created: its audit record cannot be written: {error}"
                )));
            }
            eprintln!(
                "created token {} ({}) with scopes {}; expires {}. The secret below is shown \
                 this once: only its hash is kept.",
                created.record.id,
                created.record.name,
                created.record.scopes.join(" "),
                format_ms(created.record.expires_ms),
            );
            writeln!(out, "{}", created.record.id).map_err(CliError::Output)?;
            writeln!(out, "{}", created.secret).map_err(CliError::Output)?;
        }
        TokenCommand::List { data_dir } => {
            let store = open(&data_dir)?;
            let tokens = store
                .all()
                .await
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let used = store
                .last_used()
                .await
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let now = jiff::Timestamp::now().as_millisecond();
            writeln!(out, "id\tname\tscopes\tcreated\texpires\tlast_used\tstate")
                .map_err(CliError::Output)?;
            for t in tokens {
                let state = if t.revoked_ms.is_some() {
                    "revoked"
                } else if t.expires_ms.is_some_and(|at| now >= at) {
                    "expired"
                } else {
                    "active"
                };
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\t{}\t{state}",
                    t.id,
                    t.name,
                    t.scopes.join(","),
                    format_ms(Some(t.created_ms)),
                    format_ms(t.expires_ms),
                    format_ms(used.get(&t.id).copied()),
                )
                .map_err(CliError::Output)?;
            }
        }
        TokenCommand::Revoke { data_dir, id } => {
            let store = open(&data_dir)?;
            let now = jiff::Timestamp::now().as_millisecond();
            let record = store
                .revoke(&id, now)
                .await
                .map_err(|e| CliError::Usage(e.to_string()))?;
            eprintln!("revoked {} ({})", record.id, record.name);
            audit_token_change(
                &data_dir,
                crate::audit::AuditEvent::TokenRevoked {
                    actor: crate::audit::Actor::cli(),
                    target_token_id: record.id.clone(),
                    target_name: record.name.clone(),
                },
            )
            .map_err(|e| {
                CliError::Usage(format!(
                    "the token is revoked, but its audit record cannot be written: {e}"
                ))
            })?;
        }
    }
    out.flush().map_err(CliError::Output)
}

/// Errors of a CLI command, printed as `error: ...`.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Copy(#[from] store_copy::CopyError),
}

/// `engine export`: the same request and the same bytes as the HTTP export.
async fn run_export(storage: &SharedStorage, args: &ExportArgs) -> Result<(), CliError> {
    // Without a range, the sensors' whole span.
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    if args.start.is_none() || args.end.is_none() {
        for raw in &args.sensors {
            if let Ok(id) = SensorId::new(raw)
                && let Some(info) = storage.sensor(&id).await?
            {
                first = first.min(info.first_timestamp_ms);
                last = last.max(info.last_timestamp_ms);
            }
        }
    }
    let (first, end_default) = if first > last {
        (0, 0)
    } else {
        (first, last + 1)
    };
    let start = args.start.unwrap_or(first.min(args.end.unwrap_or(first)));
    let end = args.end.unwrap_or(end_default.max(start));
    if start > end {
        return Err(CliError::Usage("--start is after --end".into()));
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let request = ExportRequest::from_pairs(&args.pairs(start, end), now)?;
    let mut body = export::open(storage, request, ExportOptions::default())
        .await?
        .body;
    let (mut out, partial): (Box<dyn Write>, Option<PathBuf>) = match &args.output {
        Some(path) => {
            let partial = path.with_extension(match path.extension() {
                Some(ext) => format!("{}.partial", ext.to_string_lossy()),
                None => "partial".to_owned(),
            });
            let file = std::fs::File::create(&partial).map_err(|source| CliError::File {
                path: partial.clone(),
                source,
            })?;
            (
                Box::new(io::BufWriter::with_capacity(256 * 1024, file)),
                Some(partial),
            )
        }
        None => (
            Box::new(io::BufWriter::with_capacity(
                256 * 1024,
                io::stdout().lock(),
            )),
            None,
        ),
    };
    let written: Result<(), CliError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CliError::Usage(format!("export failed: {e}")))?;
            out.write_all(&chunk).map_err(CliError::Output)?;
        }
        out.flush().map_err(CliError::Output)
    }
    .await;
    drop(out);
    match (written, partial, &args.output) {
        (Ok(()), Some(partial), Some(path)) => {
            std::fs::rename(&partial, path).map_err(|source| CliError::File {
                path: path.clone(),
                source,
            })
        }
        (Err(e), Some(partial), _) => {
            let _ = std::fs::remove_file(partial);
            Err(e)
        }
        (result, _, _) => result,
    }
}

/// Parses the command line and runs the command; the process exit code.
pub fn run() -> ExitCode {
    // `serve --config FILE` is merged in below flags and environment.
    let (cli, matches) = match crate::config::parse::<Cli>(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(error) => error.exit(),
    };
    if let Command::Serve { config, .. } = &cli.command
        && config.print_config
    {
        print!("{}", crate::config::effective::<Cli>(&matches));
        return ExitCode::SUCCESS;
    }
    crate::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // `engine export | head` closes the pipe early: not an error.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store a command names: PostgreSQL with `--store`, else the
/// embedded store in `--data-dir`.
async fn open_store(location: &DataDir) -> Result<SharedStorage, CliError> {
    match &location.store {
        Some(url) if is_postgres_url(url) => Ok(Arc::new(PgStorage::connect(url).await?)),
        Some(url) => Err(CliError::Usage(format!(
            "--store takes a postgres:// URL, not {url:?}; a data directory goes to --data-dir"
        ))),
        None => Ok(open_embedded(&location.data_dir).await?),
    }
}

/// Refuses `--store` for a command of the embedded store alone.
fn embedded_only(location: &DataDir, command: &str) -> Result<(), CliError> {
    match location.store {
        Some(_) => Err(CliError::Usage(format!(
            "engine {command} works on a data directory; PostgreSQL has its own \
             tools (pg_dump, pg_restore)"
        ))),
        None => Ok(()),
    }
}

fn is_postgres_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// A `postgres://` URL or else a data directory (`engine copy`).
async fn open_location(location: &str) -> Result<SharedStorage, CliError> {
    if is_postgres_url(location) {
        Ok(Arc::new(PgStorage::connect(location).await?))
    } else {
        Ok(open_embedded(Path::new(location)).await?)
    }
}

async fn open_embedded(data_dir: &Path) -> Result<Arc<EmbeddedStore>, CliError> {
    open_embedded_with(data_dir, EmbeddedOptions::default()).await
}

async fn open_embedded_with(
    data_dir: &Path,
    options: EmbeddedOptions,
) -> Result<Arc<EmbeddedStore>, CliError> {
    let dir = data_dir.to_owned();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&dir, options))
        .await
        .map_err(|e| CliError::Usage(format!("opening the store panicked: {e}")))??;
    Ok(Arc::new(store))
}

async fn execute(command: Command) -> Result<(), CliError> {
    match command {
        Command::Token { command } => run_token(command).await,
        Command::Audit { command } => run_audit(command).await,
        Command::Serve {
            data_dir,
            mut config,
        } => {
            config.data_dir = Some(data_dir.data_dir.clone());
            config.shared_store = data_dir.store.is_some();
            let store: SharedStorage = match &data_dir.store {
                None => open_embedded_with(&data_dir.data_dir, config.embedded_options()).await?,
                Some(_) => open_store(&data_dir).await?,
            };
            let result = server::run(*config, store.clone(), server::shutdown_signal()).await;
            store.close().await?;
            result?;
            Ok(())
        }
        Command::Import {
            data_dir,
            sensor,
            file,
        } => {
            let source: Box<dyn Read + Send> = match file {
                Some(path) if path.as_os_str() != "-" => {
                    Box::new(std::fs::File::open(&path).map_err(|source| CliError::File {
                        path: path.clone(),
                        source,
                    })?)
                }
                _ => Box::new(io::stdin()),
            };
            let store = open_store(&data_dir).await?;
            let summary = store.import(&sensor, read_points(source)).await?;
            store.close().await?;
            eprintln!("imported {} points into {sensor}", summary.points);
            Ok(())
        }
        Command::Export { data_dir, export } => {
            let store = open_store(&data_dir).await?;
            let storage: SharedStorage = store.clone();
            let result = run_export(&storage, &export).await;
            store.close().await?;
            result
        }
        Command::Backup { data_dir, output } => {
            embedded_only(&data_dir, "backup")?;
            let store = open_embedded(&data_dir.data_dir).await?;
            let summary = tokio::task::spawn_blocking(move || {
                if output.as_os_str() == "-" {
                    store.backup_to(io::BufWriter::new(io::stdout().lock()))
                } else {
                    let file = std::fs::File::create(&output).map_err(StorageError::Io)?;
                    let summary = store.backup_to(io::BufWriter::new(&file))?;
                    file.sync_all().map_err(StorageError::Io)?;
                    Ok(summary)
                }
            })
            .await
            .map_err(|e| CliError::Usage(format!("backup panicked: {e}")))??;
            eprintln!(
                "backed up {} sensors: {} points in blocks ({} bytes), {} bytes of WAL",
                summary.sensors, summary.points_in_blocks, summary.block_bytes, summary.wal_bytes
            );
            Ok(())
        }
        Command::Restore { input, data_dir } => {
            let (manifest, summary) = tokio::task::spawn_blocking(move || {
                if input.as_os_str() == "-" {
                    EmbeddedStore::restore(io::stdin().lock(), &data_dir)
                } else {
                    let file = std::fs::File::open(&input).map_err(StorageError::Io)?;
                    EmbeddedStore::restore(io::BufReader::new(file), &data_dir)
                }
            })
            .await
            .map_err(|e| CliError::Usage(format!("restore panicked: {e}")))??;
            eprintln!(
                "restored {} sensors from a backup taken at {}: {} points in blocks, {} bytes of WAL replayed",
                summary.sensors,
                jiff::Timestamp::from_millisecond(manifest.created_ms)
                    .map_or_else(|_| manifest.created_ms.to_string(), |t| t.to_string()),
                summary.points_in_blocks,
                summary.wal_bytes
            );
            Ok(())
        }
        Command::Repair { data_dir } => {
            embedded_only(&data_dir, "repair")?;
            let dir = data_dir.data_dir.clone();
            let reports = tokio::task::spawn_blocking(move || EmbeddedStore::repair(&dir))
                .await
                .map_err(|e| CliError::Usage(format!("repair panicked: {e}")))??;
            if reports.is_empty() {
                eprintln!("the write-ahead log is intact; nothing to repair");
            }
            for report in reports {
                let lost: u64 = report.lost_ranges.iter().map(|(from, to)| to - from).sum();
                eprintln!(
                    "repaired {}: kept {} intact records; {lost} damaged bytes could not be \
                     recovered (at {}); the original is kept as {}",
                    report.segment.display(),
                    report.records_kept,
                    report
                        .lost_ranges
                        .iter()
                        .map(|(from, to)| format!("bytes {from}..{to}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    report.moved_to.display(),
                );
            }
            Ok(())
        }
        Command::Sensors { data_dir } => {
            let store = open_store(&data_dir).await?;
            let mut out = io::BufWriter::new(io::stdout().lock());
            writeln!(
                out,
                "sensor_id\tcount\tfirst_timestamp_ms\tlast_timestamp_ms"
            )
            .map_err(CliError::Output)?;
            for info in store.sensors().await? {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    info.sensor_id, info.count, info.first_timestamp_ms, info.last_timestamp_ms
                )
                .map_err(CliError::Output)?;
            }
            out.flush().map_err(CliError::Output)?;
            Ok(())
        }
        Command::Copy { from, to } => {
            let source = open_location(&from).await?;
            let destination = open_location(&to).await?;
            let mut out = io::BufWriter::new(io::stdout().lock());
            writeln!(out, "sensor_id\tpoints\tchecksum").map_err(CliError::Output)?;
            let copied = store_copy::copy_all(&*source, &*destination, |copy| {
                let what = if copy.copied {
                    "copied"
                } else {
                    "already there:"
                };
                eprintln!(
                    "{what} {} points of {}",
                    copy.fingerprint.points, copy.sensor_id
                );
            })
            .await?;
            destination.close().await?;
            for copy in &copied {
                writeln!(
                    out,
                    "{}\t{}\t{:016x}",
                    copy.sensor_id, copy.fingerprint.points, copy.fingerprint.checksum
                )
                .map_err(CliError::Output)?;
            }
            out.flush().map_err(CliError::Output)?;
            eprintln!(
                "checked {} sensors: counts and checksums agree",
                copied.len()
            );
            Ok(())
        }
    }
}
