//! `engine copy`: moves every sensor from one store to another (embedded
//! to PostgreSQL and back), through the [`StorageEngine`] trait alone.
//!
//! Each sensor is one streamed import into the destination: all or nothing,
//! memory bounded by a few batches whatever its size. A rerun after an
//! interruption skips the sensors whose points the destination already has
//! exactly (same count and checksum), and redoes the one that was cut off.
//! At the end every sensor is read back from both stores and compared by
//! point count and checksum.

use futures_util::StreamExt;

use crate::model::{SensorId, TimeRange};
use crate::storage::{StorageEngine, StorageError};

/// What both stores hold of one sensor: the number of points and a checksum
/// of their timestamps, value bits and qualities in time order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub points: u64,
    /// 64-bit FNV-1a: stable across builds and machines, so two runs can be
    /// compared; not a defence against tampering, which is not the threat.
    pub checksum: u64,
}

/// What happened to one sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorCopy {
    pub sensor_id: SensorId,
    pub fingerprint: Fingerprint,
    /// `false` when the destination already held exactly these points.
    pub copied: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(
        "sensor {sensor_id}: the destination holds {to_points} points (checksum {to_checksum:016x}), \
         the source {from_points} (checksum {from_checksum:016x})"
    )]
    Mismatch {
        sensor_id: SensorId,
        from_points: u64,
        from_checksum: u64,
        to_points: u64,
        to_checksum: u64,
    },
}

/// Reads every point of a sensor and fingerprints it.
pub async fn fingerprint(
    store: &dyn StorageEngine,
    sensor_id: &SensorId,
) -> Result<Fingerprint, StorageError> {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    let mut points = 0;
    let mut scan = store.scan(sensor_id, TimeRange::ALL);
    while let Some(batch) = scan.next().await {
        let batch = batch?;
        points += batch.len() as u64;
        for point in batch.iter() {
            let mut bytes = [0u8; 17];
            bytes[..8].copy_from_slice(&point.timestamp_ms.to_le_bytes());
            bytes[8..16].copy_from_slice(&point.value.to_bits().to_le_bytes());
            bytes[16] = point.quality;
            for byte in bytes {
                hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
            }
        }
    }
    Ok(Fingerprint {
        points,
        checksum: hash,
    })
}

/// Copies every sensor of `from` into `to`, then checks each; `progress`
/// hears about each sensor as it is done.
pub async fn copy_all(
    from: &dyn StorageEngine,
    to: &dyn StorageEngine,
    mut progress: impl FnMut(&SensorCopy),
) -> Result<Vec<SensorCopy>, CopyError> {
    let mut done = Vec::new();
    for info in from.sensors().await? {
        let sensor_id = info.sensor_id;
        let already_there = match to.sensor(&sensor_id).await? {
            Some(there)
                if (
                    there.count,
                    there.first_timestamp_ms,
                    there.last_timestamp_ms,
                ) == (info.count, info.first_timestamp_ms, info.last_timestamp_ms) =>
            {
                let source = fingerprint(from, &sensor_id).await?;
                (fingerprint(to, &sensor_id).await? == source).then_some(source)
            }
            _ => None,
        };
        let copy = match already_there {
            Some(fingerprint) => SensorCopy {
                sensor_id,
                fingerprint,
                copied: false,
            },
            None => {
                to.import(&sensor_id, from.scan(&sensor_id, TimeRange::ALL))
                    .await?;
                SensorCopy {
                    fingerprint: fingerprint(from, &sensor_id).await?,
                    sensor_id,
                    copied: true,
                }
            }
        };
        progress(&copy);
        done.push(copy);
    }
    for copy in done.iter().filter(|copy| copy.copied) {
        let there = fingerprint(to, &copy.sensor_id).await?;
        if there != copy.fingerprint {
            return Err(CopyError::Mismatch {
                sensor_id: copy.sensor_id.clone(),
                from_points: copy.fingerprint.points,
                from_checksum: copy.fingerprint.checksum,
                to_points: there.points,
                to_checksum: there.checksum,
            });
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Point, Sample};
    use crate::storage::embedded::EmbeddedStore;

    fn samples(id: &SensorId, points: impl IntoIterator<Item = (i64, f64)>) -> Vec<Sample> {
        points
            .into_iter()
            .map(|(timestamp_ms, value)| {
                Sample::new(
                    id.clone(),
                    Point {
                        timestamp_ms,
                        value,
                        quality: 192,
                    },
                )
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_check_and_skip_what_is_there() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from = EmbeddedStore::open(a.path()).unwrap();
        let to = EmbeddedStore::open(b.path()).unwrap();
        let (x, y) = (SensorId::new("x").unwrap(), SensorId::new("y").unwrap());
        from.write(samples(&x, (0..5000).map(|i| (i, i as f64))))
            .await
            .unwrap();
        from.write(samples(&y, [(1, -0.0), (2, f64::NAN)]))
            .await
            .unwrap();
        // The destination already has y exactly, and a different x.
        to.write(samples(&y, [(1, -0.0), (2, f64::NAN)]))
            .await
            .unwrap();
        to.write(samples(&x, [(0, 1.5)])).await.unwrap();

        let done = copy_all(&from, &to, |_| {}).await.unwrap();
        assert_eq!(
            done.iter()
                .map(|c| (c.sensor_id.as_str(), c.fingerprint.points, c.copied))
                .collect::<Vec<_>>(),
            [("x", 5000, true), ("y", 2, false)]
        );
        assert_eq!(
            fingerprint(&to, &x).await.unwrap(),
            fingerprint(&from, &x).await.unwrap()
        );
        // -0.0 and 0.0 differ in the checksum.
        to.write(samples(&y, [(1, 0.0)])).await.unwrap();
        assert_ne!(
            fingerprint(&to, &y).await.unwrap(),
            fingerprint(&from, &y).await.unwrap()
        );

        // Extra points in the destination are found, not hidden.
        to.write(samples(&x, [(9999, 1.0)])).await.unwrap();
        let error = copy_all(&from, &to, |_| {}).await.unwrap_err();
        assert!(
            matches!(
                &error,
                CopyError::Mismatch {
                    to_points: 5001,
                    ..
                }
            ),
            "{error}"
        );
    }
}
