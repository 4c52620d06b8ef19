//! M4 downsampling: per time bucket keep the first, last, minimum and maximum
//! point, so a chart of any number of points shows every peak and dip
//! (Jugel et al., "M4: A Visualization-Oriented Time Series Data
//! Aggregation", VLDB 2014).
//!
//! [`M4`] folds either single points or whole [`Summary`]s of points that
//! fall into one bucket, which lets a store answer from per-block summaries
//! without decoding the blocks.

use crate::model::{Point, PointBatch, TimeRange};

/// First, last, minimum and maximum of a run of points, and how many.
///
/// NaN values never become the minimum or maximum (they are not comparable);
/// they can be first or last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub first: Point,
    pub last: Point,
    pub min: Option<Point>,
    pub max: Option<Point>,
}

impl Summary {
    pub fn of_point(p: Point) -> Self {
        let comparable = (!p.value.is_nan()).then_some(p);
        Self {
            count: 1,
            first: p,
            last: p,
            min: comparable,
            max: comparable,
        }
    }

    /// Summarises columns of points in strictly increasing time order.
    pub fn of_columns(timestamps: &[i64], values: &[f64], qualities: &[u8]) -> Option<Self> {
        if timestamps.is_empty() {
            return None;
        }
        let point = |i: usize| Point {
            timestamp_ms: timestamps[i],
            value: values[i],
            quality: qualities[i],
        };
        let mut summary = Self::of_point(point(0));
        summary.last = point(timestamps.len() - 1);
        summary.count = timestamps.len() as u64;
        let (mut min, mut max) = (None::<usize>, None::<usize>);
        for (i, &v) in values.iter().enumerate() {
            if v.is_nan() {
                continue;
            }
            // Strict comparisons: among equal values the earliest is kept.
            if min.is_none_or(|m| v < values[m]) {
                min = Some(i);
            }
            if max.is_none_or(|m| v > values[m]) {
                max = Some(i);
            }
        }
        summary.min = min.map(point);
        summary.max = max.map(point);
        Some(summary)
    }

    /// Combines two summaries of disjoint runs.
    pub fn merge(&mut self, other: &Summary) {
        self.count += other.count;
        if other.first.timestamp_ms < self.first.timestamp_ms {
            self.first = other.first;
        }
        if other.last.timestamp_ms > self.last.timestamp_ms {
            self.last = other.last;
        }
        self.min = pick(self.min, other.min, |a, b| a < b);
        self.max = pick(self.max, other.max, |a, b| a > b);
    }

    /// Fixed-size encoding, stored beside each block.
    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        out[0..8].copy_from_slice(&self.count.to_le_bytes());
        let flags = u8::from(self.min.is_some()) | (u8::from(self.max.is_some()) << 1);
        out[8] = flags;
        let none = Point {
            timestamp_ms: 0,
            value: 0.0,
            quality: 0,
        };
        for (slot, p) in [
            Some(self.first),
            Some(self.last),
            self.min.or(Some(none)),
            self.max.or(Some(none)),
        ]
        .into_iter()
        .flatten()
        .enumerate()
        {
            let at = 9 + slot * 17;
            out[at..at + 8].copy_from_slice(&p.timestamp_ms.to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&p.value.to_bits().to_le_bytes());
            out[at + 16] = p.quality;
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let point = |slot: usize| {
            let at = 9 + slot * 17;
            Point {
                timestamp_ms: i64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default()),
                value: f64::from_bits(u64::from_le_bytes(
                    bytes[at + 8..at + 16].try_into().unwrap_or_default(),
                )),
                quality: bytes[at + 16],
            }
        };
        Some(Self {
            count: u64::from_le_bytes(bytes[0..8].try_into().ok()?),
            first: point(0),
            last: point(1),
            min: (bytes[8] & 1 != 0).then(|| point(2)),
            max: (bytes[8] & 2 != 0).then(|| point(3)),
        })
    }
}

/// Bytes of an encoded [`Summary`].
pub const ENCODED_LEN: usize = 9 + 4 * 17;

fn pick(a: Option<Point>, b: Option<Point>, better: impl Fn(f64, f64) -> bool) -> Option<Point> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let b_wins =
                better(b.value, a.value) || (b.value == a.value && b.timestamp_ms < a.timestamp_ms);
            Some(if b_wins { b } else { a })
        }
        (a, b) => a.or(b),
    }
}

/// A downsampled range: the raw point count and at most four points a bucket.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Downsampled {
    /// Points in the range before downsampling.
    pub count: u64,
    /// The kept points, in time order.
    pub points: PointBatch,
}

/// Accumulates points and summaries into equal-width time buckets.
pub struct M4 {
    start: i64,
    span: i128,
    buckets: Vec<Option<Summary>>,
}

impl M4 {
    /// `buckets` equal slices of `range` (at least one).
    pub fn new(range: TimeRange, buckets: usize) -> Self {
        Self {
            start: range.start_ms,
            span: (i128::from(range.end_ms) - i128::from(range.start_ms)).max(1),
            buckets: vec![None; buckets.max(1)],
        }
    }

    /// The bucket of a timestamp inside the range.
    pub fn bucket_of(&self, timestamp_ms: i64) -> usize {
        let offset = i128::from(timestamp_ms) - i128::from(self.start);
        let index = offset * self.buckets.len() as i128 / self.span;
        index.clamp(0, self.buckets.len() as i128 - 1) as usize
    }

    pub fn add_point(&mut self, p: Point) {
        self.add_summary(&Summary::of_point(p));
    }

    /// Folds a batch in time order, one summary per run of points that share
    /// a bucket (no per-point division).
    pub fn add_batch(&mut self, batch: &PointBatch) {
        let mut from = 0;
        while from < batch.len() {
            let bucket = self.bucket_of(batch.timestamps[from]);
            let next_start = self.bucket_start(bucket + 1);
            let run = batch.timestamps[from..].partition_point(|&ts| i128::from(ts) < next_start);
            let to = from + run.max(1);
            if let Some(summary) = Summary::of_columns(
                &batch.timestamps[from..to],
                &batch.values[from..to],
                &batch.qualities[from..to],
            ) {
                self.add_summary(&summary);
            }
            from = to;
        }
    }

    /// The first timestamp of bucket `index`: the least `ts` with
    /// `bucket_of(ts) >= index`, i.e. `start + ceil(index * span / buckets)`.
    fn bucket_start(&self, index: usize) -> i128 {
        let n = self.buckets.len() as i128;
        let offset = index as i128 * self.span;
        i128::from(self.start) + (offset + n - 1) / n
    }

    /// Folds a summary whose points all fall into the bucket of its first.
    pub fn add_summary(&mut self, summary: &Summary) {
        let bucket = self.bucket_of(summary.first.timestamp_ms);
        match &mut self.buckets[bucket] {
            Some(existing) => existing.merge(summary),
            empty => *empty = Some(*summary),
        }
    }

    pub fn finish(self) -> Downsampled {
        let mut out = Downsampled::default();
        for summary in self.buckets.into_iter().flatten() {
            out.count += summary.count;
            let mut kept = [
                Some(summary.first),
                summary.min,
                summary.max,
                Some(summary.last),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<Point>>();
            kept.sort_by_key(|p| p.timestamp_ms);
            kept.dedup_by_key(|p| p.timestamp_ms);
            for p in kept {
                out.points.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(timestamp_ms: i64, value: f64) -> Point {
        Point {
            timestamp_ms,
            value,
            quality: 192,
        }
    }

    #[test]
    fn keeps_first_min_max_last_per_bucket() {
        let mut m4 = M4::new(TimeRange::new(0, 100).unwrap(), 2);
        for (ts, v) in [(0, 5.0), (10, -3.0), (20, f64::NAN), (30, 9.0), (49, 1.0)] {
            m4.add_point(p(ts, v));
        }
        m4.add_point(p(50, 2.0));
        let out = m4.finish();
        assert_eq!(out.count, 6);
        assert_eq!(out.points.timestamps, vec![0, 10, 30, 49, 50]);
    }

    #[test]
    fn folding_a_batch_equals_folding_its_points() {
        let mut state = 17u64;
        let batch: PointBatch = (0..5000)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let value = if state.is_multiple_of(50) {
                    f64::NAN
                } else {
                    (state % 1000) as f64
                };
                p(i * 37 - 90_000, value)
            })
            .collect();
        for (start, end, buckets) in [
            (-90_000, 95_000, 7),
            (-100_000, 100_000, 1000),
            (i64::MIN, i64::MAX, 3),
            (-90_000, -89_000, 10),
        ] {
            let range = TimeRange::new(start, end).unwrap();
            let mut by_batch = M4::new(range, buckets);
            let mut by_point = M4::new(range, buckets);
            let inside: PointBatch = batch
                .iter()
                .filter(|q| range.contains(q.timestamp_ms))
                .collect();
            by_batch.add_batch(&inside);
            for q in inside.iter() {
                by_point.add_point(q);
            }
            let (a, b) = (by_batch.finish(), by_point.finish());
            // Bit-exact (Point's equality), so NaN values compare equal.
            let points = |d: &Downsampled| d.points.iter().collect::<Vec<Point>>();
            assert_eq!(a.count, b.count);
            assert!(points(&a) == points(&b), "[{start}, {end}) / {buckets}");
        }
    }

    #[test]
    fn summaries_encode_and_merge_like_points() {
        let ts = [1, 2, 3, 4];
        let values = [f64::NAN, 4.0, -1.0, 4.0];
        let summary = Summary::of_columns(&ts, &values, &[1, 2, 3, 4]).unwrap();
        assert_eq!(Summary::decode(&summary.encode()), Some(summary));
        let mut folded = Summary::of_point(p(1, f64::NAN));
        for (t, v) in ts.iter().zip(values).skip(1) {
            folded.merge(&Summary::of_point(Point {
                timestamp_ms: *t,
                value: v,
                quality: *t as u8,
            }));
        }
        assert_eq!(folded.count, 4);
        assert_eq!(folded.min.unwrap().timestamp_ms, 3);
        assert_eq!(
            folded.max.unwrap().timestamp_ms,
            2,
            "earliest of equal maxima"
        );
        assert_eq!(summary.max.unwrap().timestamp_ms, 2);
        assert_eq!(Summary::of_columns(&[], &[], &[]), None);
        let all_nan = Summary::of_columns(&[1], &[f64::NAN], &[0]).unwrap();
        assert_eq!(all_nan.min, None);
        assert_eq!(Summary::decode(&all_nan.encode()).unwrap().min, None);
    }
}
