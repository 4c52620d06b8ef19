//! Raw points of several sensors merged into one table, long or wide.
//!
//! Memory grows with the number of sensors, never with the rows: the range
//! is read in time windows of about [`WINDOW_POINTS`] points over all
//! sensors. A window's sensors are scanned one after the other (so an export
//! of 1,000 sensors never holds 1,000 scans open, each with a thread), then
//! merged in memory while the next window is read. The window length adapts
//! to the points found, and a burst denser than planned cuts the window
//! short instead of growing it past [`WINDOW_CAP`].
//!
//! - Long: rows in timestamp order, ties in the order the sensors were asked.
//! - Wide: a row per distinct timestamp; a sensor without a point there has
//!   an empty cell, or with `fill=previous` its previous value and quality
//!   (also from before the range start).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use futures_util::stream::BoxStream;

use super::table::{Cells, Chunk, Column};
use crate::model::{PointBatch, SensorId, TimeRange};
use crate::storage::{SharedStorage, StorageError};

/// Points a window aims at, over all its sensors (about 9 MB): enough that
/// a window's scans cost little beside its rows.
const WINDOW_POINTS: usize = 512 * 1024;
/// Points a window may hold before it is cut short.
const WINDOW_CAP: usize = 2 * WINDOW_POINTS;
/// Cells (rows x value columns) per output chunk: what one encoder task
/// formats at a time.
const CHUNK_CELLS: usize = 64 * 1024;

/// A merge of several sensors' raw points.
pub struct MergePlan {
    pub storage: SharedStorage,
    pub sensors: Arc<[SensorId]>,
    pub range: TimeRange,
    pub wide: bool,
    pub fill_previous: bool,
    /// Points expected in the range over all sensors (from the catalogue),
    /// to size the first window.
    pub points_estimate: f64,
}

/// The merged rows as chunks.
pub fn merged_chunks(plan: MergePlan) -> BoxStream<'static, Result<Chunk, StorageError>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        if let Err(error) = produce(plan, &sender).await {
            let _ = sender.send(Err(error)).await;
        }
    });
    super::receiver_stream(receiver)
}

/// One window's points, a batch per sensor, all in `[start, end)`.
struct Window {
    end: i64,
    batches: Vec<PointBatch>,
    points: usize,
}

async fn produce(
    plan: MergePlan,
    sender: &tokio::sync::mpsc::Sender<Result<Chunk, StorageError>>,
) -> Result<(), StorageError> {
    let plan = Arc::new(plan);
    let TimeRange { start_ms, end_ms } = plan.range;
    if start_ms >= end_ms {
        return Ok(());
    }
    let length = (end_ms as i128 - start_ms as i128) as f64;
    let mut duration =
        (length * WINDOW_POINTS as f64 / plan.points_estimate.max(1.0)).clamp(1.0, length) as i64;
    let mut fill: Vec<Option<(f64, u8)>> = vec![None; plan.sensors.len()];
    if plan.fill_previous {
        for (s, id) in plan.sensors.iter().enumerate() {
            fill[s] = plan
                .storage
                .last_point_before(id, start_ms, 0)
                .await?
                .map(|p| (p.value, p.quality));
        }
    }
    let fetch = |from: i64, duration: i64| {
        let plan = Arc::clone(&plan);
        let to = from.saturating_add(duration).min(end_ms);
        tokio::spawn(async move { fetch_window(&plan, from, to).await })
    };
    let mut next = Some(fetch(start_ms, duration));
    while let Some(pending) = next.take() {
        let mut guard = AbortOnDrop(Some(pending));
        let window = guard
            .0
            .take()
            .expect("set above")
            .await
            .map_err(|e| StorageError::Backend(format!("export task: {e}")))??;
        if window.end < end_ms {
            // Aim the next window at WINDOW_POINTS from this one's density.
            let scale = WINDOW_POINTS as f64 / window.points.max(1) as f64;
            let previous = duration as f64;
            duration = (previous * scale).clamp(1.0, previous * 4.0) as i64;
            next = Some(fetch(window.end, duration));
        }
        let abort_next = AbortOnDrop(next.take());
        for mut chunk in merge(&plan, window.batches) {
            if plan.fill_previous {
                fill_from_previous(&mut chunk, &mut fill);
            }
            if sender.send(Ok(chunk)).await.is_err() {
                return Ok(()); // the client left
            }
        }
        next = abort_next.into_inner();
    }
    Ok(())
}

/// A task handle aborted on drop, so a client that leaves stops the
/// prefetched window's scans too.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    fn into_inner(mut self) -> Option<tokio::task::JoinHandle<T>> {
        self.0.take()
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Reads `[from, to)` of every sensor, cutting the window short at a burst.
async fn fetch_window(plan: &MergePlan, from: i64, to: i64) -> Result<Window, StorageError> {
    let mut end = to;
    let mut points = 0;
    let mut batches = Vec::with_capacity(plan.sensors.len());
    for id in plan.sensors.iter() {
        let range = TimeRange {
            start_ms: from,
            end_ms: end,
        };
        let limit = WINDOW_CAP - points.min(WINDOW_CAP);
        let mut collected = plan.storage.read_prefix(id, range, limit).await?;
        if collected.len() > limit {
            let keep = limit.max(1);
            end = collected.timestamps[keep - 1] + 1;
            collected.truncate(keep);
        }
        points += collected.len();
        batches.push(collected);
    }
    // A later sensor may have cut the window: trim the earlier ones.
    points = 0;
    for batch in &mut batches {
        truncate_before(batch, end);
        points += batch.len();
    }
    Ok(Window {
        end,
        batches,
        points,
    })
}

fn truncate_before(batch: &mut PointBatch, end: i64) {
    batch.truncate(batch.timestamps.partition_point(|&t| t < end));
}

/// Merges a window's batches into chunks of the plan's layout.
fn merge(plan: &MergePlan, batches: Vec<PointBatch>) -> Vec<Chunk> {
    if plan.wide {
        merge_wide(&batches)
    } else {
        merge_long(&batches)
    }
}

/// Timestamp order, ties in sensor order. A linear pick for a few sensors,
/// a heap for many.
fn merge_long(batches: &[PointBatch]) -> Vec<Chunk> {
    let total: usize = batches.iter().map(PointBatch::len).sum();
    let rows_per_chunk = CHUNK_CELLS;
    let mut chunks = Vec::new();
    let mut chunk = long_chunk(rows_per_chunk.min(total));
    let push = |chunk: &mut Chunk, s: usize, i: usize| {
        let batch = &batches[s];
        chunk.sensors.push(s as u32);
        chunk.timestamps.push(batch.timestamps[i]);
        if let Cells::Float(values) = &mut chunk.columns[0].cells {
            values.push(batch.values[i]);
        }
        if let Cells::Quality(qualities) = &mut chunk.columns[1].cells {
            qualities.push(batch.qualities[i]);
        }
    };
    let mut heads = vec![0usize; batches.len()];
    let mut emitted = 0;
    if batches.len() <= 8 {
        while emitted < total {
            let mut best: Option<(i64, usize)> = None;
            for (s, batch) in batches.iter().enumerate() {
                if let Some(&t) = batch.timestamps.get(heads[s])
                    && best.is_none_or(|(bt, _)| t < bt)
                {
                    best = Some((t, s));
                }
            }
            let Some((_, s)) = best else { break };
            push(&mut chunk, s, heads[s]);
            heads[s] += 1;
            emitted += 1;
            if chunk.len() == rows_per_chunk {
                let remaining = total - emitted;
                chunks.push(std::mem::replace(
                    &mut chunk,
                    long_chunk(rows_per_chunk.min(remaining)),
                ));
            }
        }
    } else {
        let mut heap: BinaryHeap<Reverse<(i64, usize)>> = batches
            .iter()
            .enumerate()
            .filter_map(|(s, b)| b.timestamps.first().map(|&t| Reverse((t, s))))
            .collect();
        while let Some(Reverse((_, s))) = heap.pop() {
            push(&mut chunk, s, heads[s]);
            heads[s] += 1;
            emitted += 1;
            if let Some(&t) = batches[s].timestamps.get(heads[s]) {
                heap.push(Reverse((t, s)));
            }
            if chunk.len() == rows_per_chunk {
                let remaining = total - emitted;
                chunks.push(std::mem::replace(
                    &mut chunk,
                    long_chunk(rows_per_chunk.min(remaining)),
                ));
            }
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

fn long_chunk(capacity: usize) -> Chunk {
    Chunk {
        sensors: Vec::with_capacity(capacity),
        timestamps: Vec::with_capacity(capacity),
        columns: vec![
            Column {
                cells: Cells::Float(Vec::with_capacity(capacity)),
                present: None,
            },
            Column {
                cells: Cells::Quality(Vec::with_capacity(capacity)),
                present: None,
            },
        ],
    }
}

/// A row per distinct timestamp, a value and a quality column per sensor.
fn merge_wide(batches: &[PointBatch]) -> Vec<Chunk> {
    let sensors = batches.len();
    let rows_per_chunk = (CHUNK_CELLS / sensors.max(1)).max(64);
    if let Some(first) = batches.first()
        && batches[1..]
            .iter()
            .all(|b| b.timestamps == first.timestamps)
    {
        // Sensors sampled together (the common case): the columns are the
        // batches' own, cut into chunks; no cell is empty.
        return (0..first.len())
            .step_by(rows_per_chunk)
            .map(|from| {
                let to = (from + rows_per_chunk).min(first.len());
                let mut columns = Vec::with_capacity(2 * sensors);
                for batch in batches {
                    columns.push(Column {
                        cells: Cells::Float(batch.values[from..to].to_vec()),
                        present: None,
                    });
                    columns.push(Column {
                        cells: Cells::Quality(batch.qualities[from..to].to_vec()),
                        present: None,
                    });
                }
                Chunk {
                    sensors: Vec::new(),
                    timestamps: first.timestamps[from..to].to_vec(),
                    columns,
                }
            })
            .collect();
    }
    let mut heads = vec![0usize; sensors];
    let mut chunks = Vec::new();
    let mut chunk = wide_chunk(sensors, rows_per_chunk);
    loop {
        let mut next: Option<i64> = None;
        for (s, batch) in batches.iter().enumerate() {
            if let Some(&t) = batch.timestamps.get(heads[s]) {
                next = Some(next.map_or(t, |n: i64| n.min(t)));
            }
        }
        let Some(t) = next else { break };
        chunk.timestamps.push(t);
        for (s, batch) in batches.iter().enumerate() {
            let here = batch.timestamps.get(heads[s]) == Some(&t);
            let (value, quality) = if here {
                let i = heads[s];
                heads[s] += 1;
                (batch.values[i], batch.qualities[i])
            } else {
                (0.0, 0)
            };
            let [value_column, quality_column] = &mut chunk.columns[2 * s..2 * s + 2] else {
                unreachable!("two columns per sensor")
            };
            if let Cells::Float(values) = &mut value_column.cells {
                values.push(value);
            }
            if let Cells::Quality(qualities) = &mut quality_column.cells {
                qualities.push(quality);
            }
            for column in [value_column, quality_column] {
                if let Some(present) = &mut column.present {
                    present.push(here);
                }
            }
        }
        if chunk.len() == rows_per_chunk {
            chunks.push(std::mem::replace(
                &mut chunk,
                wide_chunk(sensors, rows_per_chunk),
            ));
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    for chunk in &mut chunks {
        for column in &mut chunk.columns {
            if column
                .present
                .as_ref()
                .is_some_and(|p| p.iter().all(|&x| x))
            {
                column.present = None;
            }
        }
    }
    chunks
}

fn wide_chunk(sensors: usize, capacity: usize) -> Chunk {
    let mut columns = Vec::with_capacity(2 * sensors);
    for _ in 0..sensors {
        columns.push(Column {
            cells: Cells::Float(Vec::with_capacity(capacity)),
            present: Some(Vec::with_capacity(capacity)),
        });
        columns.push(Column {
            cells: Cells::Quality(Vec::with_capacity(capacity)),
            present: Some(Vec::with_capacity(capacity)),
        });
    }
    Chunk {
        sensors: Vec::new(),
        timestamps: Vec::with_capacity(capacity),
        columns,
    }
}

/// Fills a wide chunk's empty cells with each sensor's previous value and
/// quality, carried in `last` from chunk to chunk.
fn fill_from_previous(chunk: &mut Chunk, last: &mut [Option<(f64, u8)>]) {
    for (s, held) in last.iter_mut().enumerate() {
        let [value_column, quality_column] = &mut chunk.columns[2 * s..2 * s + 2] else {
            unreachable!("two columns per sensor")
        };
        let (Cells::Float(values), Cells::Quality(qualities)) =
            (&mut value_column.cells, &mut quality_column.cells)
        else {
            unreachable!("value and quality columns")
        };
        let Some(present) = value_column.present.as_mut() else {
            if let (Some(&v), Some(&q)) = (values.last(), qualities.last()) {
                *held = Some((v, q));
            }
            continue;
        };
        for row in 0..present.len() {
            if present[row] {
                *held = Some((values[row], qualities[row]));
            } else if let Some((v, q)) = *held {
                values[row] = v;
                qualities[row] = q;
                present[row] = true;
            }
        }
        if present.iter().all(|&p| p) {
            value_column.present = None;
            quality_column.present = None;
        } else {
            quality_column.present = value_column.present.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Point;

    fn batch(points: &[(i64, f64)]) -> PointBatch {
        points
            .iter()
            .map(|&(timestamp_ms, value)| Point {
                timestamp_ms,
                value,
                quality: 192,
            })
            .collect()
    }

    #[test]
    fn long_breaks_ties_in_the_order_asked_with_few_and_many_sensors() {
        for sensors in [3, 12] {
            let batches: Vec<PointBatch> = (0..sensors)
                .map(|s| batch(&[(1, s as f64), (2 + (s % 3) as i64, 0.5), (20, s as f64)]))
                .collect();
            let chunks = merge_long(&batches);
            let rows: Vec<(i64, u32)> = chunks
                .iter()
                .flat_map(|c| c.timestamps.iter().copied().zip(c.sensors.iter().copied()))
                .collect();
            let mut expected = rows.clone();
            expected.sort();
            assert_eq!(rows, expected, "{sensors} sensors");
            let total: usize = batches.iter().map(PointBatch::len).sum();
            assert_eq!(rows.len(), total);
        }
    }

    #[test]
    fn sensors_sampled_together_keep_their_columns() {
        let a = batch(&[(1, 10.0), (2, 20.0), (3, 30.0)]);
        let b = batch(&[(1, -1.0), (2, -2.0), (3, -3.0)]);
        let chunks = merge_wide(&[a, b]);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].timestamps, [1, 2, 3]);
        assert_eq!(
            chunks[0].columns[2].cells,
            Cells::Float(vec![-1.0, -2.0, -3.0])
        );
        assert!(chunks[0].columns.iter().all(|c| c.present.is_none()));
        // The same rows as the general merge gives.
        let mut uneven = batch(&[(1, -1.0), (2, -2.0), (3, -3.0)]);
        uneven.push(Point {
            timestamp_ms: 4,
            value: 0.0,
            quality: 0,
        });
        let general = merge_wide(&[batch(&[(1, 10.0), (2, 20.0), (3, 30.0)]), uneven]);
        assert_eq!(general[0].timestamps, [1, 2, 3, 4]);
        assert_eq!(
            general[0].columns[0].present.as_deref(),
            Some(&[true, true, true, false][..])
        );
    }

    #[test]
    fn wide_rows_are_distinct_timestamps_and_fill_carries_the_previous_value() {
        let a = batch(&[(1, 10.0), (3, 30.0)]);
        let b = batch(&[(2, 2.0), (3, 3.0)]);
        let mut chunks = merge_wide(&[a, b]);
        assert_eq!(chunks.len(), 1);
        let chunk = &mut chunks[0];
        assert_eq!(chunk.timestamps, [1, 2, 3]);
        assert_eq!(
            chunk.columns[0].present.as_deref(),
            Some(&[true, false, true][..])
        );
        assert_eq!(
            chunk.columns[2].present.as_deref(),
            Some(&[false, true, true][..])
        );
        let mut last = vec![None, Some((-1.0, 64))];
        fill_from_previous(chunk, &mut last);
        assert_eq!(chunk.columns[0].cells, Cells::Float(vec![10.0, 10.0, 30.0]));
        assert_eq!(chunk.columns[2].cells, Cells::Float(vec![-1.0, 2.0, 3.0]));
        assert_eq!(chunk.columns[3].cells, Cells::Quality(vec![64, 192, 192]));
        assert!(chunk.columns.iter().all(|c| c.present.is_none()));
        assert_eq!(last, [Some((30.0, 192)), Some((3.0, 192))]);
    }
}
