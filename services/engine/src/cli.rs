//! The `engine` command line. `main.rs` only calls [`run`].

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use futures_util::StreamExt;

use crate::csv_format::{CsvEncoder, read_points};
use crate::model::{SensorId, TimeRange, parse_duration, parse_timestamp};
use crate::retention::RetentionRule;
use crate::server::{self, ServeConfig};
use crate::storage::embedded::EmbeddedStore;
use crate::storage::{SharedStorage, StorageEngine, StorageError};

/// Sensor time-series engine: stores sensor readings, serves the dashboard,
/// exports raw data as CSV or Excel.
#[derive(Debug, Parser)]
#[command(name = "engine", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The data directory flag shared by every command.
#[derive(Debug, clap::Args)]
struct DataDir {
    /// Directory of the embedded store; created if missing. Only one process
    /// can use it at a time.
    #[arg(long, env = "ENGINE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP API and dashboard, gRPC, NATS ingestion.
    Serve {
        #[command(flatten)]
        data_dir: DataDir,
        /// Address of the HTTP API and dashboard.
        #[arg(long, env = "ENGINE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// Address of the gRPC API.
        #[arg(long, env = "ENGINE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        /// NATS server to ingest readings from (JetStream), e.g. nats://127.0.0.1:4222.
        #[arg(long, env = "ENGINE_NATS_URL")]
        nats_url: Option<String>,
        /// Directory of the built dashboard, served at `/`.
        #[arg(long, env = "ENGINE_WEB_DIR", default_value = "viz/dist")]
        web_dir: PathBuf,
        /// Run the built-in plant simulator: history plus live readings.
        #[arg(long)]
        demo: bool,
        /// Largest CSV body `POST /api/v1/import` takes, in bytes.
        #[arg(long, env = "ENGINE_IMPORT_MAX_BYTES", default_value_t = 16 << 30)]
        import_max_bytes: u64,
        /// Seconds an import's body may stall before the import is abandoned.
        #[arg(long, env = "ENGINE_IMPORT_IDLE_TIMEOUT", default_value_t = 30)]
        import_idle_timeout: u64,
        /// Drop points older than AGE of sensors matching PATTERN, e.g.
        /// `'plant/**=400d'`; repeatable, the first matching rule applies.
        #[arg(
            long = "retention",
            value_name = "PATTERN=AGE",
            env = "ENGINE_RETENTION",
            value_delimiter = ','
        )]
        retention: Vec<RetentionRule>,
        /// How often retention runs, e.g. `10m`.
        #[arg(long, env = "ENGINE_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
        retention_interval: std::time::Duration,
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
    /// Write one sensor's points as CSV to standard output, exactly as the
    /// HTTP export serves them.
    Export {
        #[command(flatten)]
        data_dir: DataDir,
        /// The sensor to export.
        #[arg(long)]
        sensor: SensorId,
        /// First timestamp included: epoch milliseconds or RFC 3339.
        #[arg(long, value_parser = parse_timestamp)]
        start: Option<i64>,
        /// First timestamp excluded: epoch milliseconds or RFC 3339.
        #[arg(long, value_parser = parse_timestamp)]
        end: Option<i64>,
    },
    /// List sensors with point count and first/last timestamp (tab-separated).
    Sensors {
        #[command(flatten)]
        data_dir: DataDir,
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
    /// Recover a store whose write-ahead log is damaged (opening it says
    /// so): keeps every intact record, moves each damaged segment to
    /// `wal/damaged/`, and reports what could not be recovered. The store
    /// must not be in use.
    Repair {
        #[command(flatten)]
        data_dir: DataDir,
    },
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
}

/// Parses the command line and runs the command; the process exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
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

async fn open_store(data_dir: &Path) -> Result<Arc<EmbeddedStore>, CliError> {
    let dir = data_dir.to_owned();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
        .await
        .map_err(|e| CliError::Usage(format!("opening the store panicked: {e}")))??;
    Ok(Arc::new(store))
}

async fn execute(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve {
            data_dir,
            http_addr,
            grpc_addr,
            nats_url,
            web_dir,
            demo,
            import_max_bytes,
            import_idle_timeout,
            retention,
            retention_interval,
        } => {
            let store = open_store(&data_dir.data_dir).await?;
            let config = ServeConfig {
                http_addr,
                grpc_addr,
                nats_url,
                web_dir,
                demo,
                import_max_bytes,
                import_idle_timeout: std::time::Duration::from_secs(import_idle_timeout),
                retention,
                retention_interval,
            };
            let storage: SharedStorage = store.clone();
            let result = server::run(config, storage, server::shutdown_signal()).await;
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
            let store = open_store(&data_dir.data_dir).await?;
            let summary = store.import(&sensor, read_points(source)).await?;
            store.close().await?;
            eprintln!("imported {} points into {sensor}", summary.points);
            Ok(())
        }
        Command::Export {
            data_dir,
            sensor,
            start,
            end,
        } => {
            let range = TimeRange::new(start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX))
                .ok_or_else(|| CliError::Usage("--start is after --end".into()))?;
            let store = open_store(&data_dir.data_dir).await?;
            if store.sensor(&sensor).await?.is_none() {
                return Err(CliError::Usage(format!("sensor {sensor:?} not found")));
            }
            let encoder = CsvEncoder::default();
            let mut out = io::BufWriter::with_capacity(256 * 1024, io::stdout().lock());
            let mut buffer = Vec::with_capacity(256 * 1024);
            encoder.write_header(&mut buffer);
            let mut scan = store.scan(&sensor, range);
            while let Some(batch) = scan.next().await {
                encoder.write_batch(&batch?, &mut buffer);
                out.write_all(&buffer).map_err(CliError::Output)?;
                buffer.clear();
            }
            out.write_all(&buffer).map_err(CliError::Output)?;
            out.flush().map_err(CliError::Output)?;
            Ok(())
        }
        Command::Backup { data_dir, output } => {
            let store = open_store(&data_dir.data_dir).await?;
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
            let store = open_store(&data_dir.data_dir).await?;
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
    }
}
