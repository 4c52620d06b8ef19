//! [`ExportRequest`]: the checked parameters of an export, the same for
//! `GET /api/v1/export` (query parameters) and `engine export` (flags turned
//! into the same name/value pairs), so both answer with identical bytes.

use jiff::tz::TimeZone;

use super::ExportError;
use super::aggregate::{Aggregate, Grid};
use crate::csv_format::CsvOptions;
use crate::model::{SensorId, TimeRange, parse_range_end, parse_timestamp};

/// The most sensors one export may name.
pub const MAX_SENSORS: usize = 1_000;

/// The most cells (buckets x sensors) one resampled export may have: every
/// bucket gets a row, so `interval=1` over years would never end.
pub const MAX_BUCKET_CELLS: u64 = 100_000_000;

/// The file format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Xlsx,
    Parquet,
    Arrow,
    Jsonl,
}

impl ExportFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Xlsx => "xlsx",
            ExportFormat::Parquet => "parquet",
            ExportFormat::Arrow => "arrows",
            ExportFormat::Jsonl => "jsonl",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Xlsx => "xlsx",
            ExportFormat::Parquet => "parquet",
            ExportFormat::Arrow => "arrow",
            ExportFormat::Jsonl => "jsonl",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv => super::CSV_CONTENT_TYPE,
            ExportFormat::Xlsx => super::XLSX_CONTENT_TYPE,
            ExportFormat::Parquet => super::PARQUET_CONTENT_TYPE,
            ExportFormat::Arrow => super::ARROW_CONTENT_TYPE,
            ExportFormat::Jsonl => super::JSONL_CONTENT_TYPE,
        }
    }

    /// Whether HTTP compression is worth it: Parquet and XLSX are
    /// compressed inside already.
    pub fn compressible(self) -> bool {
        matches!(
            self,
            ExportFormat::Csv | ExportFormat::Jsonl | ExportFormat::Arrow
        )
    }
}

/// How the rows of several sensors are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One sensor, today's columns: `timestamp_ms,value,quality` (or the
    /// aggregates). What a request with one `sensor_id` and no `layout` gets.
    Single,
    /// `sensor_id,timestamp_ms,...`: a row per point (or bucket) per sensor.
    Long,
    /// `timestamp_ms,<id>,<id> quality,...`: a row per distinct timestamp
    /// (or bucket), a column group per sensor.
    Wide,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Single => "single",
            Layout::Long => "long",
            Layout::Wide => "wide",
        }
    }
}

/// Resampling: a bucket grid and the aggregates computed per bucket.
#[derive(Debug, Clone)]
pub struct Resample {
    pub grid: Grid,
    /// The `interval` as given, for the canonical query.
    pub interval_text: String,
    pub aggregates: Vec<Aggregate>,
    /// Counts points of every quality into the aggregates, not just good ones.
    pub include_bad: bool,
}

/// A checked export request.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The sensors, in the order asked; no duplicates.
    pub sensors: Vec<SensorId>,
    pub range: TimeRange,
    pub layout: Layout,
    /// `fill=previous` (wide raw only): an empty cell takes the sensor's
    /// previous value and quality, also from before the range start.
    pub fill_previous: bool,
    pub resample: Option<Resample>,
    pub format: ExportFormat,
    /// Delimiter, decimal mark, BOM, time zone (`time_local` column), and
    /// the Excel preset's rules. Used by CSV; XLSX takes the time zone.
    pub csv: CsvOptions,
    /// When the export was made, for the XLSX information sheet; pinned with
    /// `exported_at=` so a download can be reproduced byte for byte.
    pub exported_at_ms: i64,
}

/// The query parameters an export understands; anything else is ignored,
/// as before.
const SINGLE_VALUED: &[&str] = &[
    "start_ts",
    "end_ts",
    "layout",
    "fill",
    "interval",
    "include_bad",
    "time_zone",
    "format",
    "bom",
    "delimiter",
    "decimal",
    "preset",
    "exported_at",
];

fn invalid(message: impl Into<String>) -> ExportError {
    ExportError::InvalidParameter(message.into())
}

fn flag(name: &str, raw: Option<&str>) -> Result<bool, ExportError> {
    match raw {
        None => Ok(false),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(invalid(format!("{name}: {other:?} is not true or false"))),
    }
}

fn timestamp(name: &str, raw: Option<&str>) -> Result<Option<i64>, ExportError> {
    raw.map(|raw| parse_timestamp(raw).map_err(|e| invalid(format!("{name}: {e}"))))
        .transpose()
}

impl ExportRequest {
    /// Checks an export's parameters, given as name/value pairs in the order
    /// of the query string (`sensor_id` and `aggregate` may repeat):
    ///
    /// `sensor_id` (1 to 1,000), `start_ts`, `end_ts` (required; epoch ms or
    /// RFC 3339), `layout` (`long`|`wide`), `fill` (`previous`), `interval`
    /// (ms, or `30s` `15m` `1h` `1d`), `aggregate` (comma list),
    /// `include_bad`, `time_zone` (IANA), `format`
    /// (`csv`|`xlsx`|`parquet`|`arrow`|`jsonl`), `bom`, `delimiter`
    /// (`,` `;` tab), `decimal` (`.` `,`), `preset` (`excel`), `exported_at`.
    ///
    /// `now_ms` is the export time unless `exported_at` pins it.
    pub fn from_pairs(pairs: &[(String, String)], now_ms: i64) -> Result<Self, ExportError> {
        for name in SINGLE_VALUED {
            if pairs.iter().filter(|(key, _)| key == name).count() > 1 {
                return Err(invalid(format!("{name} is given more than once")));
            }
        }
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let mut sensors: Vec<SensorId> = Vec::new();
        for (_, raw) in pairs.iter().filter(|(key, _)| key == "sensor_id") {
            let id = SensorId::new(raw).map_err(|e| invalid(format!("sensor_id: {e}")))?;
            if sensors.contains(&id) {
                return Err(invalid(format!("sensor_id {raw:?} is given twice")));
            }
            sensors.push(id);
        }
        if sensors.is_empty() {
            return Err(invalid("sensor_id is required"));
        }
        if sensors.len() > MAX_SENSORS {
            return Err(invalid(format!(
                "{} sensor_id values; at most {MAX_SENSORS} are allowed",
                sensors.len()
            )));
        }
        let start_ms = timestamp("start_ts", get("start_ts"))?
            .ok_or_else(|| invalid("start_ts is required"))?;
        let end_ms = get("end_ts")
            .map(|raw| parse_range_end(raw).map_err(|e| invalid(format!("end_ts: {e}"))))
            .transpose()?
            .ok_or_else(|| invalid("end_ts is required"))?;
        let range = TimeRange::new(start_ms, end_ms).ok_or_else(|| {
            invalid(format!(
                "start_ts ({start_ms}) is after end_ts ({end_ms}); the range is [start_ts, end_ts)"
            ))
        })?;
        let layout = match get("layout") {
            None if sensors.len() == 1 => Layout::Single,
            None | Some("long") => Layout::Long,
            Some("wide") => Layout::Wide,
            Some(other) => return Err(invalid(format!("layout: {other:?} is not long or wide"))),
        };
        let fill_previous = match get("fill") {
            None | Some("none") => false,
            Some("previous") => true,
            Some(other) => {
                return Err(invalid(format!("fill: {other:?} is not previous or none")));
            }
        };
        let time_zone = get("time_zone")
            .map(|name| {
                TimeZone::get(name).map_err(|_| {
                    invalid(format!("time_zone: {name:?} is not a known IANA time zone"))
                })
            })
            .transpose()?;
        let include_bad = flag("include_bad", get("include_bad"))?;
        let aggregate_lists: Vec<&str> = pairs
            .iter()
            .filter(|(key, _)| key == "aggregate")
            .map(|(_, value)| value.as_str())
            .collect();
        let resample = match (get("interval"), aggregate_lists.is_empty()) {
            (None, true) => None,
            (None, false) => return Err(invalid("aggregate needs an interval (interval=1m)")),
            (Some(_), true) => {
                return Err(invalid(
                    "interval needs aggregate= (a comma list of first,last,min,max,mean,count,time_weighted_mean,interpolated,percent_good)",
                ));
            }
            (Some(interval), false) => {
                let interval_ms = parse_interval(interval)?;
                let mut aggregates = Vec::new();
                for name in aggregate_lists.iter().flat_map(|list| list.split(',')) {
                    let aggregate = Aggregate::parse(name.trim()).ok_or_else(|| {
                        invalid(format!(
                            "aggregate: {name:?} is not one of first,last,min,max,mean,count,time_weighted_mean,interpolated,percent_good"
                        ))
                    })?;
                    if aggregates.contains(&aggregate) {
                        return Err(invalid(format!("aggregate {name:?} is given twice")));
                    }
                    aggregates.push(aggregate);
                }
                let grid = Grid::new(interval_ms, time_zone.clone());
                let cells = grid
                    .bucket_bound(range)
                    .saturating_mul(sensors.len() as u64);
                if cells > MAX_BUCKET_CELLS {
                    return Err(invalid(format!(
                        "interval {interval}: {cells} buckets x sensors; at most {MAX_BUCKET_CELLS} per export (use a longer interval or a shorter range)"
                    )));
                }
                Some(Resample {
                    grid,
                    interval_text: interval.to_owned(),
                    aggregates,
                    include_bad,
                })
            }
        };
        if fill_previous && (layout != Layout::Wide || resample.is_some()) {
            return Err(invalid(
                "fill=previous applies to layout=wide of raw points (no interval)",
            ));
        }
        let format = match get("format") {
            None | Some("csv") => ExportFormat::Csv,
            Some("xlsx") => ExportFormat::Xlsx,
            Some("parquet") => ExportFormat::Parquet,
            Some("arrow") => ExportFormat::Arrow,
            Some("jsonl") => ExportFormat::Jsonl,
            Some(other) => {
                return Err(invalid(format!(
                    "format: {other:?} is not csv, xlsx, parquet, arrow or jsonl"
                )));
            }
        };
        let excel = match get("preset") {
            None => false,
            Some("excel") => true,
            Some(other) => return Err(invalid(format!("preset: {other:?} is not excel"))),
        };
        let delimiter = match get("delimiter") {
            None | Some(",") => b',',
            Some(";") => b';',
            Some("\t" | "tab") => b'\t',
            Some(other) => {
                return Err(invalid(format!(
                    "delimiter: {other:?} is not one of , ; tab"
                )));
            }
        };
        let decimal_comma = match get("decimal") {
            None | Some(".") => false,
            Some(",") => true,
            Some(other) => return Err(invalid(format!("decimal: {other:?} is not . or ,"))),
        };
        if decimal_comma && delimiter == b',' {
            return Err(invalid(
                "decimal=, needs a delimiter other than , (use delimiter=;)",
            ));
        }
        // The Excel preset writes a BOM unless told otherwise: without it
        // Excel reads UTF-8 as the local code page.
        let bom = match get("bom") {
            None => excel,
            raw => flag("bom", raw)?,
        };
        let exported_at_ms = timestamp("exported_at", get("exported_at"))?.unwrap_or(now_ms);
        Ok(Self {
            sensors,
            range,
            layout,
            fill_previous,
            resample,
            format,
            csv: CsvOptions {
                delimiter,
                decimal_comma,
                bom,
                time_zone,
                excel,
            },
            exported_at_ms,
        })
    }

    /// The request as a canonical query string (the parameters that shape
    /// the data, in a fixed order), for file metadata and the dashboard.
    pub fn canonical_query(&self) -> String {
        let mut pairs: Vec<(&str, String)> = self
            .sensors
            .iter()
            .map(|id| ("sensor_id", id.as_str().to_owned()))
            .collect();
        pairs.push(("start_ts", self.range.start_ms.to_string()));
        pairs.push(("end_ts", self.range.end_ms.to_string()));
        if self.layout != Layout::Single {
            pairs.push(("layout", self.layout.name().to_owned()));
        }
        if self.fill_previous {
            pairs.push(("fill", "previous".to_owned()));
        }
        if let Some(resample) = &self.resample {
            pairs.push(("interval", resample.interval_text.clone()));
            let names: Vec<&str> = resample.aggregates.iter().map(|a| a.name()).collect();
            pairs.push(("aggregate", names.join(",")));
            if resample.include_bad {
                pairs.push(("include_bad", "true".to_owned()));
            }
        }
        if let Some(zone) = &self.csv.time_zone {
            pairs.push(("time_zone", zone.iana_name().unwrap_or("UTC").to_owned()));
        }
        pairs.push(("format", self.format.name().to_owned()));
        let mut out = String::new();
        for (name, value) in pairs {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(name);
            out.push('=');
            percent_encode(&value, &mut out);
        }
        out
    }

    /// `sensor_20260101T000000Z_20260102T000000Z.csv` (ASCII) and the same
    /// with the id as it is; several sensors: `<first>_and_<n>_more_...`.
    pub fn file_name(&self) -> (String, String) {
        let suffix = format!(
            "_{}_{}.{}",
            file_time(self.range.start_ms),
            file_time(self.range.end_ms),
            self.format.extension()
        );
        let first = self.sensors[0].as_str();
        let more = match self.sensors.len() {
            1 => String::new(),
            n => format!("_and_{}_more", n - 1),
        };
        let ascii = format!("{}{more}{suffix}", sanitize(first));
        let full = format!("{first}{more}{suffix}");
        (ascii, full)
    }
}

/// `60000`, `500ms`, `30s`, `15m`, `1h`, `1d` as milliseconds (positive).
pub fn parse_interval(raw: &str) -> Result<i64, ExportError> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let scale: i64 = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    let count: Option<i64> = digits.parse().ok();
    match count.and_then(|n| n.checked_mul(scale)) {
        Some(ms) if ms > 0 && scale > 0 => Ok(ms),
        _ => Err(invalid(format!(
            "interval: {raw:?} is not a positive duration (milliseconds, or like 30s, 15m, 1h, 1d)"
        ))),
    }
}

/// RFC 3986 unreserved characters stay; everything else is `%XX`.
fn percent_encode(value: &str, out: &mut String) {
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// A compact UTC time for file names: `20260101T000000Z`, with `.250` when
/// the milliseconds are not zero.
pub(crate) fn file_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(ts) if ms % 1000 == 0 => ts.strftime("%Y%m%dT%H%M%SZ").to_string(),
        Ok(ts) => ts.strftime("%Y%m%dT%H%M%S.%3fZ").to_string(),
        Err(_) => ms.to_string(),
    }
}

/// Keeps ASCII letters, digits, `-` and `.`; everything else becomes `_`
/// (runs collapsed), so the name is safe in every file system and shell.
pub(crate) fn sanitize(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        let keep = c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if keep {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let trimmed = out.trim_matches(|c| c == '_' || c == '.');
    if trimmed.is_empty() {
        "sensor".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(String, String)> {
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    fn parse(query: &str) -> Result<ExportRequest, String> {
        ExportRequest::from_pairs(&pairs(query), 0).map_err(|e| e.to_string())
    }

    #[test]
    fn intervals_take_milliseconds_and_units() {
        assert_eq!(parse_interval("60000").unwrap(), 60_000);
        assert_eq!(parse_interval("30s").unwrap(), 30_000);
        assert_eq!(parse_interval("15m").unwrap(), 900_000);
        assert_eq!(parse_interval("1h").unwrap(), 3_600_000);
        assert_eq!(parse_interval("1d").unwrap(), 86_400_000);
        for bad in ["0", "-5", "1w", "h", "", "99999999999999999999d"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_sensor_without_layout_is_the_single_layout() {
        let request = parse("sensor_id=a&start_ts=0&end_ts=10").unwrap();
        assert_eq!(request.layout, Layout::Single);
        let request = parse("sensor_id=a&sensor_id=b&start_ts=0&end_ts=10").unwrap();
        assert_eq!(request.layout, Layout::Long);
        assert_eq!(request.sensors.len(), 2);
    }

    #[test]
    fn inconsistent_requests_name_the_problem() {
        for (query, needle) in [
            ("start_ts=0&end_ts=1", "sensor_id is required"),
            ("sensor_id=a&sensor_id=a&start_ts=0&end_ts=1", "twice"),
            (
                "sensor_id=a&start_ts=0&end_ts=1&interval=1m",
                "needs aggregate",
            ),
            (
                "sensor_id=a&start_ts=0&end_ts=1&aggregate=mean",
                "needs an interval",
            ),
            (
                "sensor_id=a&start_ts=0&end_ts=1&interval=1m&aggregate=median",
                "median",
            ),
            (
                "sensor_id=a&start_ts=0&end_ts=1&fill=previous",
                "fill=previous",
            ),
            (
                "sensor_id=a&start_ts=0&end_ts=1&start_ts=2",
                "more than once",
            ),
            ("sensor_id=a&start_ts=0&end_ts=1&layout=tall", "layout"),
            ("sensor_id=a&start_ts=0&end_ts=1&preset=lotus", "preset"),
            (
                "sensor_id=a&start_ts=0&end_ts=100000000000&interval=1&aggregate=mean",
                "buckets",
            ),
        ] {
            let error = parse(query).unwrap_err();
            assert!(error.contains(needle), "{query}: {error}");
        }
    }

    #[test]
    fn the_excel_preset_writes_a_bom_unless_told_otherwise() {
        assert!(
            parse("sensor_id=a&start_ts=0&end_ts=1&preset=excel")
                .unwrap()
                .csv
                .bom
        );
        assert!(
            !parse("sensor_id=a&start_ts=0&end_ts=1&preset=excel&bom=false")
                .unwrap()
                .csv
                .bom
        );
    }

    #[test]
    fn file_names_are_safe_and_keep_the_range() {
        assert_eq!(sanitize("Kessel Ü1/Temperatur"), "Kessel_1_Temperatur");
        assert_eq!(sanitize("../../etc/passwd"), "etc_passwd");
        assert_eq!(sanitize("ÄÖÜ"), "sensor");
        assert_eq!(file_time(1_767_225_600_000), "20260101T000000Z");
        assert_eq!(file_time(1_767_225_600_250), "20260101T000000.250Z");
        let request =
            parse("sensor_id=a/b&sensor_id=c&sensor_id=d&start_ts=0&end_ts=1000&format=parquet")
                .unwrap();
        assert_eq!(
            request.file_name().0,
            "a_b_and_2_more_19700101T000000Z_19700101T000001Z.parquet"
        );
        assert_eq!(
            request.canonical_query(),
            "sensor_id=a%2Fb&sensor_id=c&sensor_id=d&start_ts=0&end_ts=1000&layout=long&format=parquet"
        );
    }
}
