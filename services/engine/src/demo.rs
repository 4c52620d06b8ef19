//! The demo simulator (`engine serve --demo`): a few plant sensors with
//! plausible behaviour, so a newcomer sees history and live data at once.
//!
//! - two boiler temperatures with a daily cycle, and a German-named one
//!   (`Kessel Ü1/Temperatur`) to show non-ASCII ids work end to end;
//! - a line pressure with noise and rare spikes;
//! - a flow with a production-shift pattern and bad-quality dropouts (value
//!   NaN, quality 0), which the chart shows as gaps.
//!
//! It backfills [`BACKFILL`] of history at [`BACKFILL_INTERVAL_MS`], then
//! writes one point per sensor every second. Everything goes through
//! `storage.write` of the store it is given (the [`crate::live::LiveStorage`]
//! wrapper, like every ingestion path), so the live view shows it.
//!
//! Values are a pure function of sensor and timestamp: restarting the demo on
//! the same data directory rewrites identical points instead of doubling
//! anything, and only the missing part of the history is backfilled.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::{Point, Sample, SensorId, quality};
use crate::storage::{SharedStorage, StorageError};

/// How much history is backfilled.
pub const BACKFILL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Spacing of backfilled points: 10 s, about 60k points per sensor.
pub const BACKFILL_INTERVAL_MS: i64 = 10_000;
/// Spacing of live points.
pub const LIVE_INTERVAL_MS: i64 = 1_000;
/// Points per backfill write.
const BACKFILL_CHUNK: usize = 50_000;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Temperature { base: f64, swing: f64 },
    Pressure,
    Flow,
}

/// The simulated sensors.
const SENSORS: &[(&str, Kind)] = &[
    (
        "plant/boiler-1/temperature",
        Kind::Temperature {
            base: 78.0,
            swing: 6.0,
        },
    ),
    (
        "plant/boiler-2/temperature",
        Kind::Temperature {
            base: 71.5,
            swing: 4.0,
        },
    ),
    (
        "Kessel Ü1/Temperatur",
        Kind::Temperature {
            base: 64.0,
            swing: 3.0,
        },
    ),
    ("plant/line-1/pressure", Kind::Pressure),
    ("plant/line-1/flow", Kind::Flow),
];

const DAY_MS: f64 = 86_400_000.0;

/// The ids of the simulated sensors.
pub fn sensor_ids() -> Vec<SensorId> {
    SENSORS
        .iter()
        .filter_map(|(id, _)| SensorId::new(id).ok())
        .collect()
}

/// A deterministic pseudo-random number in `[0, 1)` for `(salt, ts)`
/// (splitmix64).
fn noise(salt: u64, timestamp_ms: i64) -> f64 {
    let mut z = (timestamp_ms as u64)
        .wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Roughly normal noise with standard deviation 1 (sum of four uniforms).
fn gauss(salt: u64, timestamp_ms: i64) -> f64 {
    let sum: f64 = (0..4).map(|k| noise(salt * 8 + k, timestamp_ms)).sum();
    (sum - 2.0) * (3.0f64).sqrt()
}

/// The simulated reading of sensor number `index` at `timestamp_ms`.
fn reading(index: usize, kind: Kind, timestamp_ms: i64) -> Point {
    let salt = index as u64 + 1;
    let day_phase = (timestamp_ms as f64 % DAY_MS) / DAY_MS * std::f64::consts::TAU;
    let (value, quality) = match kind {
        Kind::Temperature { base, swing } => {
            // Warmest mid-afternoon, plus a slow drift and sensor noise.
            let daily = swing * (day_phase - 2.4).sin();
            let drift = 0.8 * (timestamp_ms as f64 / (DAY_MS * 2.7)).sin();
            (
                base + daily + drift + 0.15 * gauss(salt, timestamp_ms),
                quality::GOOD,
            )
        }
        Kind::Pressure => {
            let spike = if noise(salt ^ 0xABCD, timestamp_ms) < 0.002 {
                1.2 + 0.8 * noise(salt ^ 0x1234, timestamp_ms)
            } else {
                0.0
            };
            (
                4.2 + 0.04 * gauss(salt, timestamp_ms) + spike,
                quality::GOOD,
            )
        }
        Kind::Flow => {
            // Two shifts a day; every ~4 h a few minutes of dropout.
            let shift = if (day_phase / std::f64::consts::TAU * 24.0) % 12.0 < 9.0 {
                12.0
            } else {
                4.5
            };
            let window = timestamp_ms.div_euclid(4 * 3_600_000);
            let offset = timestamp_ms.rem_euclid(4 * 3_600_000);
            let dropout_start = (noise(salt ^ 0x77, window) * 3.5 * 3_600_000.0) as i64;
            if (dropout_start..dropout_start + 180_000).contains(&offset) {
                (f64::NAN, quality::BAD)
            } else {
                (shift + 0.3 * gauss(salt, timestamp_ms), quality::GOOD)
            }
        }
    };
    Point {
        timestamp_ms,
        value,
        quality,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes the missing history of every simulated sensor up to `until_ms`
/// (exclusive), at most [`BACKFILL`] back. Returns the points written.
pub async fn backfill(storage: &SharedStorage, until_ms: i64) -> Result<u64, StorageError> {
    let earliest = until_ms - BACKFILL.as_millis() as i64;
    let mut written = 0u64;
    let mut chunk = Vec::with_capacity(BACKFILL_CHUNK);
    for (index, (id, kind)) in SENSORS.iter().enumerate() {
        let Ok(sensor_id) = SensorId::new(id) else {
            continue;
        };
        let after = match storage.sensor(&sensor_id).await? {
            Some(info) => info.last_timestamp_ms + 1,
            None => earliest,
        };
        let start = after.max(earliest);
        // Aligned to the interval, so restarts hit the same timestamps.
        let mut ts = start.div_euclid(BACKFILL_INTERVAL_MS) * BACKFILL_INTERVAL_MS;
        if ts < start {
            ts += BACKFILL_INTERVAL_MS;
        }
        while ts < until_ms {
            chunk.push(Sample {
                sensor_id: sensor_id.clone(),
                seq: None,
                point: reading(index, *kind, ts),
            });
            if chunk.len() == BACKFILL_CHUNK {
                written += chunk.len() as u64;
                storage.write(std::mem::take(&mut chunk)).await?;
            }
            ts += BACKFILL_INTERVAL_MS;
        }
    }
    if !chunk.is_empty() {
        written += chunk.len() as u64;
        storage.write(chunk).await?;
    }
    Ok(written)
}

/// The points of every simulated sensor at `timestamp_ms`.
pub fn tick(timestamp_ms: i64) -> Vec<Sample> {
    SENSORS
        .iter()
        .enumerate()
        .filter_map(|(index, (id, kind))| {
            Some(Sample {
                sensor_id: SensorId::new(id).ok()?,
                seq: None,
                point: reading(index, *kind, timestamp_ms),
            })
        })
        .collect()
}

/// Backfills, then writes live points every second until `shutdown`.
///
/// A failed write is logged and the simulator goes on: it is a demo, and the
/// store reports its own trouble.
pub async fn run(storage: SharedStorage, shutdown: impl Future<Output = ()> + Send) {
    let mut shutdown = std::pin::pin!(shutdown);
    let started = now_ms();
    tokio::select! {
        () = shutdown.as_mut() => return,
        result = backfill(&storage, started) => match result {
            Ok(points) => tracing::info!(points, sensors = SENSORS.len(), "demo history backfilled"),
            Err(error) => tracing::error!(%error, "demo backfill failed"),
        },
    }
    let mut interval = tokio::time::interval(Duration::from_millis(LIVE_INTERVAL_MS as u64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return,
            _ = interval.tick() => {}
        }
        let ts = now_ms().div_euclid(LIVE_INTERVAL_MS) * LIVE_INTERVAL_MS;
        if let Err(error) = storage.write(tick(ts)).await {
            tracing::warn!(%error, "demo write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::tests::embedded_store;

    #[test]
    fn readings_are_plausible_and_deterministic() {
        let day_start = 1_767_225_600_000;
        let mut dropouts = 0;
        let mut spikes = 0;
        for step in 0..8640 {
            let ts = day_start + step * BACKFILL_INTERVAL_MS;
            for (index, (_, kind)) in SENSORS.iter().enumerate() {
                let p = reading(index, *kind, ts);
                assert_eq!(p, reading(index, *kind, ts));
                match kind {
                    Kind::Temperature { .. } => assert!((55.0..95.0).contains(&p.value)),
                    Kind::Pressure => {
                        assert!((3.9..6.5).contains(&p.value));
                        spikes += usize::from(p.value > 5.0);
                    }
                    Kind::Flow => {
                        if p.quality == quality::BAD {
                            assert!(p.value.is_nan());
                            dropouts += 1;
                        } else {
                            assert!((2.0..15.0).contains(&p.value));
                        }
                    }
                }
            }
        }
        assert!(
            dropouts > 0 && spikes > 0,
            "dropouts {dropouts}, spikes {spikes}"
        );
    }

    #[tokio::test]
    async fn backfill_writes_history_once() {
        let (store, _dir) = embedded_store();
        let now = 1_767_225_600_000;
        let first = backfill(&store, now).await.unwrap();
        assert_eq!(first, 5 * 60_480);
        let later = backfill(&store, now + 60_000).await.unwrap();
        assert_eq!(later, 5 * 6);
        let sensors = store.sensors().await.unwrap();
        assert_eq!(sensors.len(), 5);
        assert!(
            sensors
                .iter()
                .any(|s| s.sensor_id.as_str() == "Kessel Ü1/Temperatur")
        );
    }
}
