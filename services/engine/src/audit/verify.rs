//! Reading the audit trail: [`verify_dir`] (`engine audit verify`) checks
//! every MAC and the chain and names the first record that was edited,
//! removed or reordered; [`read_records`] (`engine audit list`,
//! `GET /api/v1/audit`) filters records. Neither takes a lock: a line is
//! read only once it is complete (ends in `\n`).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use ring::hmac;
use serde::Serialize;

use super::AuditError;
use super::file::{ZERO_MAC, key_path, log_dir, log_files, read_key, seq_and_prev, split_mac};

/// Which records to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Records at or after this instant (epoch ms).
    pub since_ms: Option<i64>,
    /// Records of this token: done with it, or creating or revoking it.
    pub token: Option<String>,
    /// Records naming this sensor, and the outcomes of those exports.
    pub sensor: Option<String>,
    /// Only this kind (`export_started`, `refused`, ...).
    pub event: Option<String>,
    /// Records after this sequence number (paging).
    pub after_seq: Option<u64>,
    /// At most this many; `None`: all.
    pub limit: Option<usize>,
}

/// What [`read_records`] found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditPage {
    /// Records as stored (JSON objects), oldest first.
    pub records: Vec<serde_json::Value>,
    /// More records matched than `limit`: ask again with `after_seq` set
    /// to the last one's `seq`.
    pub truncated: bool,
}

/// Complete lines of one file, with their line numbers (1-based); a last
/// line without `\n` is being written (or was cut short) and is left out,
/// reported as the second value.
/// Lines of a file with their numbers, and whether a torn one followed.
type Lines = (Vec<(u64, Vec<u8>)>, bool);

fn lines(path: &Path) -> Result<Lines, AuditError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        // Rotated away or deleted between listing and reading.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(AuditError::io(path, e)),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut out = Vec::new();
    let mut number = 0;
    loop {
        let mut line = Vec::new();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| AuditError::io(path, e))?;
        if read == 0 {
            return Ok((out, false));
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            return Ok((out, true));
        }
        line.pop();
        out.push((number, line));
    }
}

fn matches(record: &serde_json::Value, filter: &AuditFilter, exports: &HashSet<u64>) -> bool {
    let text = |name: &str| record.get(name).and_then(|v| v.as_str());
    if let Some(since) = filter.since_ms
        && record
            .get("ms")
            .and_then(|v| v.as_i64())
            .unwrap_or(i64::MIN)
            < since
    {
        return false;
    }
    if let Some(event) = &filter.event
        && text("event") != Some(event.as_str())
    {
        return false;
    }
    if let Some(token) = &filter.token
        && text("token_id") != Some(token.as_str())
        && text("target_token_id") != Some(token.as_str())
    {
        return false;
    }
    if let Some(sensor) = &filter.sensor {
        let names = record
            .get("sensors")
            .and_then(|v| v.as_array())
            .is_some_and(|list| list.iter().any(|s| s.as_str() == Some(sensor.as_str())));
        let of_export = record
            .get("start_seq")
            .and_then(|v| v.as_u64())
            .is_some_and(|seq| exports.contains(&seq));
        if !names && !of_export {
            return false;
        }
    }
    true
}

/// Records of the trail in `dir` (`DATA_DIR/audit/`) matching `filter`,
/// oldest first.
pub fn read_records(dir: &Path, filter: &AuditFilter) -> Result<AuditPage, AuditError> {
    let mut records = Vec::new();
    // Exports of the sensor asked for, so their outcomes match too.
    let mut exports = HashSet::new();
    for (_, path) in log_files(dir)? {
        for (_, line) in lines(&path)?.0 {
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            let seq = record.get("seq").and_then(|v| v.as_u64()).unwrap_or(0);
            // Whatever else is asked, an outcome follows its start.
            if let Some(sensor) = &filter.sensor
                && record.get("event").and_then(|v| v.as_str()) == Some("export_started")
                && record
                    .get("sensors")
                    .and_then(|v| v.as_array())
                    .is_some_and(|list| list.iter().any(|s| s.as_str() == Some(sensor.as_str())))
            {
                exports.insert(seq);
            }
            if filter.after_seq.is_some_and(|after| seq <= after) {
                continue;
            }
            if !matches(&record, filter, &exports) {
                continue;
            }
            if filter.limit.is_some_and(|limit| records.len() >= limit) {
                return Ok(AuditPage {
                    records,
                    truncated: true,
                });
            }
            records.push(record);
        }
    }
    Ok(AuditPage {
        records,
        truncated: false,
    })
}

/// Where a record is.
#[derive(Debug, Clone, Serialize)]
pub struct Place {
    pub file: String,
    pub line: u64,
    pub seq: Option<u64>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file, self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        Ok(())
    }
}

/// The first thing wrong with the trail.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub at: Place,
    pub what: String,
}

/// What [`verify_dir`] found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub files: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// `None`: every record is intact and in order.
    pub problem: Option<Problem>,
    /// Not proof of tampering: a last line being written, older files
    /// deleted (with `allow_pruned`).
    pub warnings: Vec<String>,
}

struct Entry {
    at: Place,
    /// MAC ok, sequence number, prev, own MAC; `Err` says what is wrong.
    record: Result<(u64, [u8; 32], [u8; 32]), String>,
}

/// Checks the trail of `data_dir`: every record's MAC with the key (the
/// data directory's, or `key_file`), and that each follows the one before
/// (sequence number and `prev`), across files. Stops at the first problem.
/// With `allow_pruned` the oldest remaining record may chain to a record
/// that is gone (older files deleted on purpose); else the trail must
/// begin at seq 1.
///
/// What it cannot see: records cut off the end (the newest ones, or the
/// newest files, deleted), and a trail replaced whole by someone holding
/// the key. Compare the last `seq` with one noted elsewhere to catch the
/// first.
pub fn verify_dir(
    data_dir: &Path,
    key_file: Option<&Path>,
    allow_pruned: bool,
) -> Result<VerifyReport, AuditError> {
    let key = read_key(key_file.unwrap_or(&key_path(data_dir)))?;
    let dir = log_dir(data_dir);
    let files = log_files(&dir)?;
    let mut report = VerifyReport {
        dir: dir.clone(),
        files: files.len(),
        records: 0,
        first_seq: None,
        last_seq: None,
        problem: None,
        warnings: Vec::new(),
    };
    let mut entries = Vec::new();
    for (index, (_, path)) in files.iter().enumerate() {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let (lines, torn) = lines(path)?;
        let torn_at = lines.len() as u64 + 1;
        for (line, bytes) in lines {
            let head = seq_and_prev(&bytes);
            let at = Place {
                file: name.clone(),
                line,
                seq: head.map(|(seq, _)| seq),
            };
            let record = match (split_mac(&bytes), head) {
                (Some((body, mac)), Some((seq, prev))) => {
                    if hmac::verify(&key, body, &mac).is_ok() {
                        Ok((seq, prev, mac))
                    } else {
                        Err("edited: its MAC does not match its content".to_owned())
                    }
                }
                _ => Err("not a record (damaged, or a line inserted)".to_owned()),
            };
            entries.push(Entry { at, record });
        }
        if torn && index + 1 == files.len() {
            report.warnings.push(format!(
                "{name} line {torn_at}: an incomplete last line (being written, or a write cut short); not a record"
            ));
        } else if torn {
            entries.push(Entry {
                at: Place {
                    file: name.clone(),
                    line: torn_at,
                    seq: None,
                },
                record: Err("an incomplete line inside the trail".into()),
            });
        }
    }
    let present: HashSet<u64> = entries
        .iter()
        .filter_map(|e| e.record.as_ref().ok().map(|r| r.0))
        .collect();
    let mut last: Option<(u64, [u8; 32], Place)> = None;
    for entry in entries {
        let (seq, prev, mac) = match entry.record {
            Ok(record) => record,
            Err(what) => {
                report.problem = Some(Problem { at: entry.at, what });
                return Ok(report);
            }
        };
        let (expected, chained) = match &last {
            Some((last_seq, last_mac, _)) => (last_seq + 1, prev == *last_mac),
            None => (1, prev == ZERO_MAC),
        };
        let problem = if seq == expected && chained {
            None
        } else if last.is_none() {
            if allow_pruned {
                report.warnings.push(format!(
                    "the trail begins at seq {seq}: records 1 to {} were deleted (allowed by --allow-pruned)",
                    seq.saturating_sub(1)
                ));
                None
            } else {
                Some(format!(
                    "the trail begins at seq {seq}, not 1: the records before it were removed \
                     (if older files were deleted on purpose, pass --allow-pruned)"
                ))
            }
        } else if seq == expected {
            Some(
                "does not chain to the record before it (that one was replaced, or files of \
                 another trail were mixed in)"
                    .to_owned(),
            )
        } else if seq > expected && present.contains(&expected) {
            Some(format!(
                "out of order: seq {expected} should come before it but comes later (records reordered)"
            ))
        } else if seq > expected {
            let previous = last.as_ref().map(|l| l.2.to_string()).unwrap_or_default();
            Some(if seq == expected + 1 {
                format!("record seq {expected} was removed (between {previous} and this one)")
            } else {
                format!(
                    "records seq {expected} to {} were removed (between {previous} and this one)",
                    seq - 1
                )
            })
        } else {
            Some(format!(
                "out of order: seq {seq} comes after seq {} (records reordered or repeated)",
                expected - 1
            ))
        };
        if let Some(what) = problem {
            report.problem = Some(Problem { at: entry.at, what });
            return Ok(report);
        }
        report.records += 1;
        report.first_seq.get_or_insert(seq);
        report.last_seq = Some(seq);
        last = Some((seq, mac, entry.at));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditEvent, FileAuditSink};

    fn event(n: u64) -> AuditEvent {
        AuditEvent::TokenRevoked {
            actor: Actor::cli(),
            target_token_id: format!("tok_{n}"),
            target_name: format!("name {n}"),
        }
    }

    fn trail(rotate: u64, n: u64) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileAuditSink::open(dir.path(), rotate).unwrap();
        for i in 0..n {
            sink.append_blocking(&[event(i)], false).unwrap();
        }
        let files = log_files(sink.dir())
            .unwrap()
            .into_iter()
            .map(|f| f.1)
            .collect();
        (dir, files)
    }

    fn edit(path: &Path, change: impl FnOnce(&mut Vec<String>)) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        change(&mut lines);
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn problem(dir: &Path) -> Problem {
        verify_dir(dir, None, false)
            .unwrap()
            .problem
            .expect("a problem")
    }

    #[test]
    fn edits_removals_and_swaps_are_named() {
        let (dir, files) = trail(1 << 20, 10);
        assert!(
            verify_dir(dir.path(), None, false)
                .unwrap()
                .problem
                .is_none()
        );
        edit(&files[0], |l| l[3] = l[3].replace("name 3", "name X"));
        let p = problem(dir.path());
        assert_eq!((p.at.line, p.at.seq), (4, Some(4)), "{p:?}");
        assert!(p.what.contains("edited"), "{p:?}");

        let (dir, files) = trail(1 << 20, 10);
        edit(&files[0], |l| {
            l.remove(4);
        });
        let p = problem(dir.path());
        assert_eq!(p.at.seq, Some(6), "{p:?}");
        assert!(p.what.contains("seq 5 was removed"), "{p:?}");

        let (dir, files) = trail(1 << 20, 10);
        edit(&files[0], |l| l.swap(6, 7));
        let p = problem(dir.path());
        assert_eq!((p.at.line, p.at.seq), (7, Some(8)), "{p:?}");
        assert!(p.what.contains("out of order"), "{p:?}");
    }

    #[test]
    fn a_missing_middle_file_is_found_and_pruning_needs_saying_so() {
        let (dir, files) = trail(600, 30);
        assert!(files.len() >= 4, "{files:?}");
        let report = verify_dir(dir.path(), None, false).unwrap();
        assert!(report.problem.is_none(), "{report:?}");
        assert_eq!(report.records, 30);
        std::fs::remove_file(&files[0]).unwrap();
        assert!(problem(dir.path()).what.contains("--allow-pruned"));
        let pruned = verify_dir(dir.path(), None, true).unwrap();
        assert!(pruned.problem.is_none(), "{pruned:?}");
        std::fs::remove_file(&files[2]).unwrap();
        let p = problem(dir.path());
        assert!(p.what.contains("were removed"), "{p:?}");
        assert_eq!(p.at.line, 1, "{p:?}");
    }
}
