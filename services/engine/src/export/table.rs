//! The one shape every export takes between the store and a file format: a
//! [`Schema`] (the columns) and a stream of [`Chunk`]s (rows in columns).
//!
//! Raw points of one sensor, several sensors merged (long or wide) and
//! interval aggregates all become chunks, and every writer (CSV, JSON Lines,
//! XLSX, Parquet, Arrow) reads chunks, so each layout is written by each
//! format without a writer per combination.

use std::sync::Arc;

use super::aggregate::Aggregate;
use super::request::{ExportRequest, Layout};
use crate::model::{PointBatch, SensorId};

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A float, bit-exact (value, or an aggregate).
    Float,
    /// A quality byte.
    Quality,
    /// A count (never empty).
    Count,
}

/// A column after `sensor_id` (long) and `timestamp_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub kind: Kind,
}

/// The columns of an export: `sensor_id` (long layout only), then
/// `timestamp_ms`, then [`Schema::columns`].
#[derive(Debug, Clone)]
pub struct Schema {
    /// The sensors in the order asked; a long chunk's `sensors` index them.
    pub sensors: Arc<[SensorId]>,
    /// Whether rows carry a `sensor_id` column (long layout).
    pub long: bool,
    pub columns: Vec<ColumnSpec>,
}

impl Schema {
    /// The columns `request` produces.
    pub fn of(request: &ExportRequest) -> Self {
        let sensors: Arc<[SensorId]> = request.sensors.clone().into();
        let float = |name: String| ColumnSpec {
            name,
            kind: Kind::Float,
        };
        let of_aggregate = |name: String, aggregate: Aggregate| ColumnSpec {
            name,
            kind: if aggregate == Aggregate::Count {
                Kind::Count
            } else {
                Kind::Float
            },
        };
        let mut columns = Vec::new();
        match (&request.resample, request.layout) {
            (None, Layout::Single | Layout::Long) => {
                columns.push(float("value".into()));
                columns.push(ColumnSpec {
                    name: "quality".into(),
                    kind: Kind::Quality,
                });
            }
            (None, Layout::Wide) => {
                for id in sensors.iter() {
                    columns.push(float(id.as_str().to_owned()));
                    columns.push(ColumnSpec {
                        name: format!("{id} quality"),
                        kind: Kind::Quality,
                    });
                }
            }
            (Some(resample), Layout::Single | Layout::Long) => {
                for &aggregate in &resample.aggregates {
                    columns.push(of_aggregate(aggregate.name().to_owned(), aggregate));
                }
            }
            (Some(resample), Layout::Wide) => {
                for id in sensors.iter() {
                    for &aggregate in &resample.aggregates {
                        columns.push(of_aggregate(
                            format!("{id} {}", aggregate.name()),
                            aggregate,
                        ));
                    }
                }
            }
        }
        Self {
            sensors,
            long: request.layout == Layout::Long,
            columns,
        }
    }

    /// Every column name in order, `sensor_id` and `timestamp_ms` included.
    pub fn names(&self) -> Vec<&str> {
        let mut names = Vec::with_capacity(self.columns.len() + 2);
        if self.long {
            names.push("sensor_id");
        }
        names.push("timestamp_ms");
        names.extend(self.columns.iter().map(|c| c.name.as_str()));
        names
    }
}

/// The cells of one column of a chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Cells {
    Float(Vec<f64>),
    Quality(Vec<u8>),
    Count(Vec<u64>),
}

/// One column of a chunk: its cells, and which of them hold a value
/// (`None`: all do). A cell that holds none is written empty (CSV, XLSX) or
/// null (JSON Lines, Parquet, Arrow); its slot in `cells` is ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub cells: Cells,
    pub present: Option<Vec<bool>>,
}

impl Column {
    pub fn is_present(&self, row: usize) -> bool {
        self.present.as_ref().is_none_or(|p| p[row])
    }
}

/// Rows in columns, matching a [`Schema`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    /// Long layout: the row's sensor, an index into [`Schema::sensors`].
    /// Empty otherwise.
    pub sensors: Vec<u32>,
    pub timestamps: Vec<i64>,
    pub columns: Vec<Column>,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// One sensor's raw points as a chunk (single layout, or long with
    /// `sensor` as every row's sensor): the batch's columns are moved, not
    /// copied.
    pub fn of_points(batch: PointBatch, long_sensor: Option<u32>) -> Self {
        let sensors = match long_sensor {
            Some(index) => vec![index; batch.len()],
            None => Vec::new(),
        };
        Self {
            sensors,
            timestamps: batch.timestamps,
            columns: vec![
                Column {
                    cells: Cells::Float(batch.values),
                    present: None,
                },
                Column {
                    cells: Cells::Quality(batch.qualities),
                    present: None,
                },
            ],
        }
    }
}
