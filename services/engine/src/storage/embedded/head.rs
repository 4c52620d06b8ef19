//! The head: points written since the last checkpoint, in memory, sorted
//! per sensor, each with its version.
//!
//! The store keeps one *active* head that writes go to and up to
//! [`super::MAX_FROZEN_HEADS`] *frozen* heads that a background checkpoint is
//! folding into blocks. Scans read all of them; where several hold the same
//! timestamp, the highest version wins (see [`Versioned::supersedes`]).

use std::collections::{BTreeMap, HashMap};

use super::wal::Record;
use crate::model::{Point, SensorId, TimeRange};

/// A point with its version.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Versioned {
    pub point: Point,
    pub version: u64,
}

impl Versioned {
    /// Whether `self`, written later than `older` or found in a newer place
    /// (a head over blocks, a newer head over an older), replaces it: only
    /// when its version is at least as high. Equal versions are the same
    /// write (a redelivered message, one import), so the newer copy wins.
    pub fn supersedes(&self, older_version: u64) -> bool {
        self.version >= older_version
    }
}

/// Value, quality and version of a point in a head.
#[derive(Debug, Clone, Copy)]
struct Entry {
    value: f64,
    quality: u8,
    version: u64,
}

/// One head: per sensor, timestamp → point.
#[derive(Default)]
pub struct Head {
    sensors: HashMap<SensorId, BTreeMap<i64, Entry>>,
    /// Points in all sensors (distinct timestamps).
    points: usize,
}

impl Head {
    pub fn points(&self) -> usize {
        self.points
    }

    pub fn is_empty(&self) -> bool {
        self.points == 0
    }

    /// Applies one logged write. A point replaces the one at its timestamp
    /// only if its version is at least as high.
    pub fn apply(&mut self, record: &Record, record_version: u64) {
        for group in &record.groups {
            let entries = match self.sensors.get_mut(&group.sensor_id) {
                Some(entries) => entries,
                None => self.sensors.entry(group.sensor_id.clone()).or_default(),
            };
            for (i, p) in group.points.iter().enumerate() {
                let entry = Entry {
                    value: p.value,
                    quality: p.quality,
                    version: group.version(i, record_version),
                };
                match entries.entry(p.timestamp_ms) {
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(entry);
                        self.points += 1;
                    }
                    std::collections::btree_map::Entry::Occupied(mut slot) => {
                        if entry.version >= slot.get().version {
                            slot.insert(entry);
                        }
                    }
                }
            }
        }
    }

    /// The sensors that have points here.
    pub fn sensor_ids(&self) -> impl Iterator<Item = &SensorId> {
        self.sensors.keys()
    }

    /// Every point of one sensor, in timestamp order.
    pub fn sensor_points(&self, sensor_id: &SensorId) -> Vec<Versioned> {
        self.range(sensor_id, TimeRange::ALL)
    }

    /// The points of one sensor in `range`, in timestamp order.
    pub fn range(&self, sensor_id: &SensorId, range: TimeRange) -> Vec<Versioned> {
        let Some(entries) = self.sensors.get(sensor_id) else {
            return Vec::new();
        };
        if range.is_empty() {
            return Vec::new();
        }
        entries
            .range(range.start_ms..range.end_ms)
            .map(|(&timestamp_ms, e)| Versioned {
                point: Point {
                    timestamp_ms,
                    value: e.value,
                    quality: e.quality,
                },
                version: e.version,
            })
            .collect()
    }

    /// The largest version of a direct write here (0 when none).
    pub fn max_version(&self) -> u64 {
        self.sensors
            .values()
            .flat_map(|entries| entries.values().map(|e| e.version))
            .max()
            .unwrap_or(0)
    }
}

/// Merges the points of several heads, oldest head first, into one sorted
/// run: where heads share a timestamp, the highest version wins, and among
/// equal versions the newer head.
pub fn merge_heads<'a>(
    heads: impl IntoIterator<Item = &'a Head>,
    sensor_id: &SensorId,
    range: TimeRange,
) -> Vec<Versioned> {
    let mut runs: Vec<Vec<Versioned>> = heads
        .into_iter()
        .map(|head| head.range(sensor_id, range))
        .filter(|run| !run.is_empty())
        .collect();
    match runs.len() {
        0 => Vec::new(),
        1 => runs.pop().unwrap_or_default(),
        _ => {
            let mut merged: BTreeMap<i64, Versioned> = BTreeMap::new();
            for run in runs {
                for v in run {
                    match merged.entry(v.point.timestamp_ms) {
                        std::collections::btree_map::Entry::Vacant(slot) => {
                            slot.insert(v);
                        }
                        std::collections::btree_map::Entry::Occupied(mut slot) => {
                            if v.supersedes(slot.get().version) {
                                slot.insert(v);
                            }
                        }
                    }
                }
            }
            merged.into_values().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::embedded::wal::Group;

    fn record(points: &[(i64, f64)], seqs: Option<Vec<u64>>) -> Record {
        Record {
            version: Some(100),
            groups: vec![Group {
                sensor_id: SensorId::new("s").unwrap(),
                points: points
                    .iter()
                    .map(|&(timestamp_ms, value)| Point {
                        timestamp_ms,
                        value,
                        quality: 192,
                    })
                    .collect(),
                seqs,
            }],
        }
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let id = SensorId::new("s").unwrap();
        let mut head = Head::default();
        head.apply(&record(&[(1, 1.0), (2, 2.0)], Some(vec![10, 11])), 0);
        head.apply(&record(&[(1, -1.0)], Some(vec![9])), 0);
        head.apply(&record(&[(2, -2.0)], Some(vec![11])), 0);
        let values: Vec<f64> = head
            .sensor_points(&id)
            .iter()
            .map(|v| v.point.value)
            .collect();
        assert_eq!(
            values,
            vec![1.0, -2.0],
            "older seq ignored, equal seq replaces"
        );
        assert_eq!(head.points(), 2);

        let mut newer = Head::default();
        newer.apply(&record(&[(1, 5.0), (3, 3.0)], Some(vec![8, 1])), 0);
        let merged = merge_heads([&head, &newer], &id, TimeRange::ALL);
        let values: Vec<f64> = merged.iter().map(|v| v.point.value).collect();
        assert_eq!(
            values,
            vec![1.0, -2.0, 3.0],
            "a newer head's older seq loses too"
        );
    }
}
