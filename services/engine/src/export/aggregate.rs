//! Interval aggregates: a bucket grid over the range and, per bucket and
//! sensor, the aggregates OPC UA Part 13 defines, computed in one pass.
//!
//! # The grid
//!
//! Buckets are `[t, t + interval)`. Without a time zone (or with an
//! interval that is not whole hours) the grid is aligned to the epoch. With
//! `time_zone` and whole hours or days it is aligned to local wall-clock
//! time: day buckets start at local midnight, so the day of a DST change
//! lasts 23 or 25 hours; an hour bucket whose local start falls into a
//! fall-back fold lasts two hours; one that falls into a spring-forward gap
//! starts when the gap ends (and is left out when that is the next bucket's
//! start). The first and last buckets are clipped to the range when it does
//! not start or end on the grid. Every bucket of the range gets a row.
//!
//! # The aggregates
//!
//! Points whose quality is below 192 (not good) are left out unless
//! `include_bad`; `percent_good` always counts every point.
//!
//! - `first`, `last`, `min`, `max`, `mean`, `count`: of the bucket's
//!   points. `min` and `max` skip NaN (NaN is not ordered); `mean` is NaN
//!   when a NaN is among the values.
//! - `time_weighted_mean` (OPC UA TimeAverage with stepped interpolation):
//!   each point's value holds until the next point; the bucket's mean is
//!   the area under that step line divided by the time it covers. The time
//!   from the bucket start to its first point carries the previous point's
//!   value, also from before the range; with no previous point that time is
//!   left out. An empty bucket after a point is that point's value.
//! - `interpolated` (OPC UA Interpolated): the value at the bucket start on
//!   the straight line between the points around it, also outside the
//!   range. After the last point, that point's value (stepped
//!   extrapolation); before the first point, empty.
//! - `percent_good`: the share of the bucket's points with good quality, in
//!   percent.
//!
//! An aggregate undefined for a bucket (an empty bucket's `mean`) is an empty
//! cell; `count` is then 0.
//!
//! # Speed
//!
//! The range is cut into windows of whole buckets. Two windows are folded at
//! once (each scanning its sensors and folding whole runs of a bucket's
//! points in tight loops), and a cheap sequential pass stitches them: the
//! value held from before a window and the point after a bucket start that
//! lies in a later window are only known there.

use std::sync::Arc;

use futures_util::StreamExt;
use jiff::tz::TimeZone;

use super::table::{Cells, Chunk, Column};
use crate::model::{SensorId, TimeRange, quality};
use crate::storage::{SharedStorage, StorageError};

/// An aggregate a resampled export can compute per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    First,
    Last,
    Min,
    Max,
    Mean,
    Count,
    TimeWeightedMean,
    Interpolated,
    PercentGood,
}

impl Aggregate {
    pub const ALL: [Aggregate; 9] = [
        Aggregate::First,
        Aggregate::Last,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Mean,
        Aggregate::Count,
        Aggregate::TimeWeightedMean,
        Aggregate::Interpolated,
        Aggregate::PercentGood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Aggregate::First => "first",
            Aggregate::Last => "last",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Mean => "mean",
            Aggregate::Count => "count",
            Aggregate::TimeWeightedMean => "time_weighted_mean",
            Aggregate::Interpolated => "interpolated",
            Aggregate::PercentGood => "percent_good",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The bucket grid: bucket `k` starts at [`Grid::start_of`]`(k)`.
#[derive(Debug, Clone)]
pub struct Grid {
    interval_ms: i64,
    /// Set when buckets follow local wall-clock time (a time zone and a
    /// whole-hour interval).
    zone: Option<TimeZone>,
}

const HOUR_MS: i64 = 3_600_000;

impl Grid {
    pub fn new(interval_ms: i64, time_zone: Option<TimeZone>) -> Self {
        let zone = time_zone.filter(|_| interval_ms % HOUR_MS == 0);
        Self { interval_ms, zone }
    }

    /// Local wall-clock milliseconds ("as if UTC") of an instant.
    fn local_ms(zone: &TimeZone, t: i64) -> i64 {
        match jiff::Timestamp::from_millisecond(t) {
            Ok(ts) => t + i64::from(zone.to_offset(ts).seconds()) * 1000,
            Err(_) => t,
        }
    }

    /// The instant of local wall-clock milliseconds; in a gap the instant
    /// after it, in a fold the earlier one (jiff's "compatible").
    fn instant_of_local(zone: &TimeZone, local: i64) -> i64 {
        let civil = jiff::Timestamp::from_millisecond(local)
            .map(|ts| TimeZone::UTC.to_datetime(ts))
            .ok();
        civil
            .and_then(|dt| zone.to_ambiguous_timestamp(dt).compatible().ok())
            .map_or(local, |ts| ts.as_millisecond())
    }

    /// Where bucket `k` starts.
    pub fn start_of(&self, k: i64) -> i64 {
        let local = k.saturating_mul(self.interval_ms);
        match &self.zone {
            None => local,
            Some(zone) => Self::instant_of_local(zone, local),
        }
    }

    /// The bucket holding instant `t`.
    pub fn index_of(&self, t: i64) -> i64 {
        match &self.zone {
            None => t.div_euclid(self.interval_ms),
            Some(zone) => {
                let mut k = Self::local_ms(zone, t).div_euclid(self.interval_ms);
                // Gaps and folds can put the wall-clock guess one off.
                while k > i64::MIN && self.start_of(k) > t {
                    k -= 1;
                }
                while self.start_of(k + 1) <= t {
                    k += 1;
                }
                k
            }
        }
    }

    /// Bucket indexes overlapping `range` (`first..last`, possibly empty).
    pub fn indexes(&self, range: TimeRange) -> std::ops::Range<i64> {
        if range.is_empty() {
            return 0..0;
        }
        self.index_of(range.start_ms)..self.index_of(range.end_ms - 1) + 1
    }

    /// How many buckets overlap `range`, at most (a bucket a DST gap
    /// swallowed counts).
    pub fn bucket_bound(&self, range: TimeRange) -> u64 {
        let k = self.indexes(range);
        (k.end - k.start) as u64
    }

    /// How many buckets (rows of one sensor) `range` has: exact up to a
    /// million buckets with a time zone, the bound past that.
    pub fn bucket_count(&self, range: TimeRange) -> u64 {
        let bound = self.bucket_bound(range);
        if self.zone.is_none() || bound > 1_000_000 {
            return bound;
        }
        self.indexes(range)
            .filter(|&k| {
                let (lo, hi) = self.clipped(k, range);
                hi > lo
            })
            .count() as u64
    }

    /// Bucket `k` clipped to `range`: `(lo, hi)`; empty (`lo == hi`) for a
    /// bucket a gap swallowed.
    pub fn clipped(&self, k: i64, range: TimeRange) -> (i64, i64) {
        let lo = self.start_of(k).max(range.start_ms);
        let hi = self.start_of(k + 1).min(range.end_ms).max(lo);
        (lo, hi)
    }
}

/// One bucket of one sensor, folded within one window.
#[derive(Debug, Clone, Default)]
struct Acc {
    /// Every point in the bucket, and the good ones among them.
    points: u64,
    good: u64,
    /// The included points (good ones, or all with `include_bad`).
    count: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    first: Option<f64>,
    last: Option<f64>,
    /// Step-line area and the time it covers, from the window's own points.
    area: f64,
    covered_ms: i64,
    /// Time in the bucket before the window's first included point: its
    /// value is the one held from before the window (stitched later).
    lead_ms: i64,
    /// The included points around the bucket start within the window.
    before_start: Option<(i64, f64)>,
    after_start: Option<(i64, f64)>,
}

/// A window's fold of one sensor.
#[derive(Debug, Clone, Default)]
struct Folded {
    buckets: Vec<Acc>,
    last_included: Option<(i64, f64)>,
}

/// Folds one sensor's points of a window into its buckets.
struct Folder<'a> {
    /// `(lo, hi)` of each bucket of the window, contiguous.
    edges: &'a [(i64, i64)],
    include_bad: bool,
    bucket: usize,
    /// Where the step line has been accounted to, in the current bucket.
    cursor: i64,
    /// The value the step line holds now (the last included point's).
    held: Option<f64>,
    /// Buckets `pending..=bucket` still wait for their first included point
    /// at or after their start.
    pending: usize,
    out: Folded,
}

impl<'a> Folder<'a> {
    fn new(edges: &'a [(i64, i64)], include_bad: bool) -> Self {
        Self {
            edges,
            include_bad,
            bucket: 0,
            cursor: edges.first().map_or(0, |e| e.0),
            held: None,
            pending: 0,
            out: Folded {
                buckets: vec![Acc::default(); edges.len()],
                last_included: None,
            },
        }
    }

    /// Accounts the step line up to `t` in the current bucket.
    fn step_to(&mut self, t: i64) {
        let span = t - self.cursor;
        if span > 0 {
            let acc = &mut self.out.buckets[self.bucket];
            match self.held {
                Some(v) => {
                    acc.area += v * span as f64;
                    acc.covered_ms += span;
                }
                None => acc.lead_ms += span,
            }
        }
        self.cursor = t;
    }

    /// Closes buckets until the one holding `t` is current.
    fn advance_to(&mut self, t: i64) {
        while self.bucket + 1 < self.edges.len() && t >= self.edges[self.bucket].1 {
            let hi = self.edges[self.bucket].1;
            self.step_to(hi);
            self.bucket += 1;
            self.cursor = self.edges[self.bucket].0;
            self.out.buckets[self.bucket].before_start = self.out.last_included;
        }
    }

    fn resolve_pending(&mut self, point: (i64, f64)) {
        for acc in &mut self.out.buckets[self.pending..=self.bucket] {
            acc.after_start = Some(point);
        }
        self.pending = self.bucket + 1;
    }

    /// Folds a batch (sorted, within the window).
    fn add(&mut self, timestamps: &[i64], values: &[f64], qualities: &[u8]) {
        let mut from = 0;
        while from < timestamps.len() {
            self.advance_to(timestamps[from]);
            let hi = self.edges[self.bucket].1;
            let to = if self.bucket + 1 == self.edges.len() {
                timestamps.len()
            } else {
                from + timestamps[from..].partition_point(|&t| t < hi)
            };
            self.add_run(
                &timestamps[from..to],
                &values[from..to],
                &qualities[from..to],
            );
            from = to;
        }
    }

    /// Folds points that all lie in the current bucket.
    fn add_run(&mut self, ts: &[i64], vs: &[f64], qs: &[u8]) {
        let good = qs.iter().filter(|&&q| q >= quality::GOOD).count();
        {
            let acc = &mut self.out.buckets[self.bucket];
            acc.points += ts.len() as u64;
            acc.good += good as u64;
        }
        if self.include_bad || good == ts.len() {
            self.add_included(ts, vs);
        } else {
            for i in 0..ts.len() {
                if qs[i] >= quality::GOOD {
                    self.add_included(&ts[i..=i], &vs[i..=i]);
                }
            }
        }
    }

    /// Folds included points (non-empty, all in the current bucket).
    fn add_included(&mut self, ts: &[i64], vs: &[f64]) {
        let n = ts.len();
        self.step_to(ts[0]);
        self.resolve_pending((ts[0], vs[0]));
        let acc = &mut self.out.buckets[self.bucket];
        // The step line between the run's own points.
        let mut area = 0.0;
        for i in 0..n - 1 {
            area += vs[i] * (ts[i + 1] - ts[i]) as f64;
        }
        acc.area += area;
        acc.covered_ms += ts[n - 1] - ts[0];
        acc.count += n as u64;
        acc.sum += vs.iter().sum::<f64>();
        let (mut min, mut max) = (acc.min, acc.max);
        for &v in vs {
            if !v.is_nan() {
                min = Some(min.map_or(v, |m| if v < m { v } else { m }));
                max = Some(max.map_or(v, |m| if v > m { v } else { m }));
            }
        }
        acc.min = min;
        acc.max = max;
        acc.first.get_or_insert(vs[0]);
        acc.last = Some(vs[n - 1]);
        self.cursor = ts[n - 1];
        self.held = Some(vs[n - 1]);
        self.out.last_included = Some((ts[n - 1], vs[n - 1]));
    }

    fn finish(mut self) -> Folded {
        if let Some(&(_, hi)) = self.edges.last() {
            self.advance_to(hi);
            self.step_to(hi);
        }
        self.out
    }
}

/// What the sequential pass carries from one window to the next, per sensor.
#[derive(Debug, Clone, Default)]
struct Carry {
    /// The last included point before the current window.
    previous: Option<(i64, f64)>,
    /// The first included point at or after some time, found by looking
    /// ahead (for `interpolated` across a gap); valid while at or after the
    /// window start.
    lookahead: Option<Option<(i64, f64)>>,
}

/// Finished values of one bucket of one sensor.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BucketValues {
    pub first: Option<f64>,
    pub last: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub count: u64,
    pub time_weighted_mean: Option<f64>,
    pub interpolated: Option<f64>,
    pub percent_good: Option<f64>,
}

impl BucketValues {
    pub fn get(&self, aggregate: Aggregate) -> Option<f64> {
        match aggregate {
            Aggregate::First => self.first,
            Aggregate::Last => self.last,
            Aggregate::Min => self.min,
            Aggregate::Max => self.max,
            Aggregate::Mean => self.mean,
            Aggregate::Count => Some(self.count as f64),
            Aggregate::TimeWeightedMean => self.time_weighted_mean,
            Aggregate::Interpolated => self.interpolated,
            Aggregate::PercentGood => self.percent_good,
        }
    }
}

/// The value at `t` on the line through `before` and `after`.
fn interpolate(t: i64, before: Option<(i64, f64)>, after: Option<(i64, f64)>) -> Option<f64> {
    match (before, after) {
        (_, Some((ta, va))) if ta == t => Some(va),
        (Some((tb, vb)), _) if tb == t => Some(vb),
        (Some((tb, vb)), Some((ta, va))) => {
            let fraction = (t - tb) as f64 / (ta - tb) as f64;
            Some(vb + (va - vb) * fraction)
        }
        (Some((_, vb)), None) => Some(vb),
        (None, _) => None,
    }
}

/// What a resampled export computes, shared by its windows.
pub struct Plan {
    pub storage: SharedStorage,
    pub sensors: Arc<[SensorId]>,
    pub range: TimeRange,
    pub grid: Grid,
    pub aggregates: Vec<Aggregate>,
    pub include_bad: bool,
    /// A `sensor_id` column (long layout); single has none.
    pub long: bool,
    /// A column group per sensor (wide layout).
    pub wide: bool,
}

impl Plan {
    fn min_quality(&self) -> u8 {
        if self.include_bad { 0 } else { quality::GOOD }
    }

    fn wants(&self, aggregate: Aggregate) -> bool {
        self.aggregates.contains(&aggregate)
    }
}

/// Points folded per window, about: enough to amortise a window's scans,
/// small enough that two windows keep both cores busy on a short range.
const WINDOW_POINTS: f64 = 1_000_000.0;
/// Bucket cells (buckets x sensors) per window at most: the window's
/// accumulators and its output chunk stay a few MB.
const WINDOW_CELLS: i64 = 32_768;

/// Streams the aggregate rows of `plan` as chunks, one per window.
pub fn aggregate_chunks(
    plan: Plan,
    points_estimate: f64,
) -> futures_util::stream::BoxStream<'static, Result<Chunk, StorageError>> {
    let plan = Arc::new(plan);
    let indexes = plan.grid.indexes(plan.range);
    let buckets = indexes.end - indexes.start;
    let per_bucket = points_estimate / buckets.max(1) as f64;
    let by_points = (WINDOW_POINTS / per_bucket.max(1.0)) as i64;
    let by_cells = WINDOW_CELLS / plan.sensors.len() as i64;
    let window = by_points.min(by_cells).max(1);
    let windows: Vec<(i64, i64)> = (indexes.start..indexes.end)
        .step_by(window as usize)
        .map(|k| (k, (k + window).min(indexes.end)))
        .collect();
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let producer = Arc::clone(&plan);
    tokio::spawn(async move {
        let folds = futures_util::stream::iter(windows)
            .map(|(from, to)| {
                let plan = Arc::clone(&producer);
                AbortOnDrop(tokio::spawn(fold_window(plan, from, to)))
            })
            .buffered(2);
        let result = stitch(&producer, folds, &sender).await;
        if let Err(error) = result {
            let _ = sender.send(Err(error)).await;
        }
    });
    super::receiver_stream(receiver)
}

/// A spawned task, aborted when its handle is dropped (the client left).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, StorageError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|joined| joined.map_err(|e| StorageError::Backend(format!("export task: {e}"))))
    }
}

/// One window: its (non-empty) buckets and each sensor's fold.
struct WindowFold {
    edges: Vec<(i64, i64)>,
    sensors: Vec<Folded>,
}

async fn fold_window(plan: Arc<Plan>, from: i64, to: i64) -> Result<WindowFold, StorageError> {
    let edges: Vec<(i64, i64)> = (from..to)
        .map(|k| plan.grid.clipped(k, plan.range))
        .filter(|(lo, hi)| hi > lo)
        .collect();
    if edges.is_empty() {
        return Ok(WindowFold {
            edges,
            sensors: Vec::new(),
        });
    }
    let span = TimeRange {
        start_ms: edges[0].0,
        end_ms: edges[edges.len() - 1].1,
    };
    let mut sensors = Vec::with_capacity(plan.sensors.len());
    for id in plan.sensors.iter() {
        let mut folder = Folder::new(&edges, plan.include_bad);
        let mut scan = plan.storage.scan(id, span);
        while let Some(batch) = scan.next().await {
            let batch = batch?;
            folder.add(&batch.timestamps, &batch.values, &batch.qualities);
        }
        sensors.push(folder.finish());
    }
    Ok(WindowFold { edges, sensors })
}

/// The sequential pass: carries each sensor's held value and lookahead from
/// window to window, finishes the buckets and sends them as chunks.
async fn stitch(
    plan: &Plan,
    mut folds: impl futures_util::Stream<Item = Result<Result<WindowFold, StorageError>, StorageError>>
    + Unpin,
    sender: &tokio::sync::mpsc::Sender<Result<Chunk, StorageError>>,
) -> Result<(), StorageError> {
    let needs_previous =
        plan.wants(Aggregate::TimeWeightedMean) || plan.wants(Aggregate::Interpolated);
    let mut carries = Vec::with_capacity(plan.sensors.len());
    for id in plan.sensors.iter() {
        let previous = if needs_previous {
            plan.storage
                .last_point_before(id, plan.range.start_ms, plan.min_quality())
                .await?
                .map(|p| (p.timestamp_ms, p.value))
        } else {
            None
        };
        carries.push(Carry {
            previous,
            lookahead: None,
        });
    }
    while let Some(fold) = folds.next().await {
        let fold = fold??;
        if fold.edges.is_empty() {
            continue;
        }
        let window_end = fold.edges.last().map_or(plan.range.end_ms, |e| e.1);
        let mut values: Vec<Vec<BucketValues>> = Vec::with_capacity(plan.sensors.len());
        for (s, folded) in fold.sensors.iter().enumerate() {
            let needs_lookahead = plan.wants(Aggregate::Interpolated)
                && folded.buckets.iter().any(|b| b.after_start.is_none());
            if needs_lookahead {
                let stale = match carries[s].lookahead {
                    Some(Some((t, _))) => t < window_end,
                    Some(None) => false,
                    None => true,
                };
                if stale {
                    let next = first_point_from(plan, &plan.sensors[s], window_end).await?;
                    carries[s].lookahead = Some(next);
                }
            }
            let carry = &carries[s];
            let after_window = carry.lookahead.flatten();
            let finished = fold
                .edges
                .iter()
                .zip(&folded.buckets)
                .map(|(&(lo, _), acc)| finish(acc, lo, carry.previous, after_window))
                .collect();
            values.push(finished);
            if let Some(last) = folded.last_included {
                carries[s].previous = Some(last);
            }
        }
        let chunk = to_chunk(plan, &fold, &values);
        if sender.send(Ok(chunk)).await.is_err() {
            return Ok(()); // the client left
        }
    }
    Ok(())
}

/// The first included point at or after `from`, however far.
async fn first_point_from(
    plan: &Plan,
    id: &SensorId,
    from: i64,
) -> Result<Option<(i64, f64)>, StorageError> {
    let mut scan = plan.storage.scan(
        id,
        TimeRange {
            start_ms: from,
            end_ms: i64::MAX,
        },
    );
    let min_quality = plan.min_quality();
    while let Some(batch) = scan.next().await {
        let batch = batch?;
        if let Some(i) = batch.qualities.iter().position(|&q| q >= min_quality) {
            return Ok(Some((batch.timestamps[i], batch.values[i])));
        }
    }
    Ok(None)
}

fn finish(
    acc: &Acc,
    lo: i64,
    previous: Option<(i64, f64)>,
    after_window: Option<(i64, f64)>,
) -> BucketValues {
    let (mut area, mut covered) = (acc.area, acc.covered_ms);
    if let (Some((_, v)), true) = (previous, acc.lead_ms > 0) {
        area += v * acc.lead_ms as f64;
        covered += acc.lead_ms;
    }
    let before = acc.before_start.or(previous);
    let after = acc.after_start.or(after_window);
    BucketValues {
        first: acc.first,
        last: acc.last,
        min: acc.min,
        max: acc.max,
        mean: (acc.count > 0).then(|| acc.sum / acc.count as f64),
        count: acc.count,
        time_weighted_mean: (covered > 0).then(|| area / covered as f64),
        interpolated: interpolate(lo, before, after),
        percent_good: (acc.points > 0).then(|| acc.good as f64 * 100.0 / acc.points as f64),
    }
}

/// The window's rows: wide, one per bucket; long (and single), one per
/// bucket and sensor. A row's `timestamp_ms` is its bucket's start (the
/// range start for a first bucket that starts before it).
fn to_chunk(plan: &Plan, fold: &WindowFold, values: &[Vec<BucketValues>]) -> Chunk {
    let buckets = fold.edges.len();
    let sensors = plan.sensors.len();
    let column = |cells: Vec<Option<f64>>, count: bool| -> Column {
        if count {
            return Column {
                cells: Cells::Count(cells.iter().map(|c| c.unwrap_or(0.0) as u64).collect()),
                present: None,
            };
        }
        let present: Vec<bool> = cells.iter().map(Option::is_some).collect();
        let all = present.iter().all(|&p| p);
        Column {
            cells: Cells::Float(cells.iter().map(|c| c.unwrap_or(0.0)).collect()),
            present: (!all).then_some(present),
        }
    };
    if plan.wide {
        let mut columns = Vec::with_capacity(sensors * plan.aggregates.len());
        for sensor_values in values {
            for &aggregate in &plan.aggregates {
                let cells = sensor_values.iter().map(|b| b.get(aggregate)).collect();
                columns.push(column(cells, aggregate == Aggregate::Count));
            }
        }
        return Chunk {
            sensors: Vec::new(),
            timestamps: fold.edges.iter().map(|e| e.0).collect(),
            columns,
        };
    }
    let rows = buckets * sensors;
    let mut sensor_index = Vec::with_capacity(if plan.long { rows } else { 0 });
    let mut timestamps = Vec::with_capacity(rows);
    for &(lo, _) in &fold.edges {
        for s in 0..sensors {
            if plan.long {
                sensor_index.push(s as u32);
            }
            timestamps.push(lo);
        }
    }
    let columns = plan
        .aggregates
        .iter()
        .map(|&aggregate| {
            let mut cells = Vec::with_capacity(rows);
            for i in 0..buckets {
                for sensor_values in values {
                    cells.push(sensor_values[i].get(aggregate));
                }
            }
            column(cells, aggregate == Aggregate::Count)
        })
        .collect();
    Chunk {
        sensors: sensor_index,
        timestamps,
        columns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;

    fn fold(edges: &[(i64, i64)], points: &[(i64, f64, u8)], include_bad: bool) -> Folded {
        let mut folder = Folder::new(edges, include_bad);
        let ts: Vec<i64> = points.iter().map(|p| p.0).collect();
        let vs: Vec<f64> = points.iter().map(|p| p.1).collect();
        let qs: Vec<u8> = points.iter().map(|p| p.2).collect();
        folder.add(&ts, &vs, &qs);
        folder.finish()
    }

    #[test]
    fn day_buckets_in_berlin_last_23_and_25_hours_over_dst() {
        let grid = Grid::new(24 * H, Some(TimeZone::get("Europe/Berlin").unwrap()));
        // 2026-03-29 00:00+01:00 = 2026-03-28T23:00Z; the next midnight is +02:00.
        let march_29 = grid.index_of(1_774_738_800_000);
        assert_eq!(grid.start_of(march_29), 1_774_738_800_000);
        assert_eq!(
            grid.start_of(march_29 + 1) - grid.start_of(march_29),
            23 * H
        );
        // 2026-10-25 00:00+02:00 = 2026-10-24T22:00Z lasts 25 hours.
        let october_25 = grid.index_of(1_792_879_200_000);
        assert_eq!(grid.start_of(october_25), 1_792_879_200_000);
        assert_eq!(
            grid.start_of(october_25 + 1) - grid.start_of(october_25),
            25 * H
        );
        // Any instant inside a day maps to it.
        assert_eq!(grid.index_of(1_792_879_200_000 + 24 * H + 59), october_25);
    }

    #[test]
    fn without_a_zone_the_grid_is_aligned_to_the_epoch() {
        let grid = Grid::new(60_000, None);
        assert_eq!(grid.index_of(-1), -1);
        assert_eq!(grid.start_of(grid.index_of(125_000)), 120_000);
        let range = TimeRange::new(30_000, 150_000).unwrap();
        assert_eq!(grid.indexes(range), 0..3);
        assert_eq!(grid.clipped(0, range), (30_000, 60_000));
        assert_eq!(grid.clipped(2, range), (120_000, 150_000));
    }

    #[test]
    fn the_step_line_holds_each_value_until_the_next_point() {
        // Buckets [0,10) [10,20); points at 2 (v=1), 6 (v=3), 14 (v=5).
        let folded = fold(
            &[(0, 10), (10, 20)],
            &[(2, 1.0, 192), (6, 3.0, 192), (14, 5.0, 192)],
            false,
        );
        let a = &folded.buckets[0];
        // Known from 2: 1 for 4 ms, 3 for 4 ms; 2 ms unknown before.
        assert_eq!((a.area, a.covered_ms, a.lead_ms), (16.0, 8, 2));
        let b = &folded.buckets[1];
        // 3 for 4 ms (10..14), 5 for 6 ms.
        assert_eq!((b.area, b.covered_ms, b.lead_ms), (42.0, 10, 0));
        // With a previous value of 7 held into the window: (16 + 14) / 10.
        let values = finish(a, 0, Some((-5, 7.0)), None);
        assert_eq!(values.time_weighted_mean, Some(3.0));
        assert_eq!(values.interpolated, Some(7.0 + (1.0 - 7.0) * 5.0 / 7.0));
    }
}
