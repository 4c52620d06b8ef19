//! Retention: sensors matching a rule lose their points older than the
//! rule's age, in whole blocks, in the background.
//!
//! Rules are `PATTERN=AGE` (`--retention 'plant/**=400d'`), patterns as token
//! scopes write them (see [`SensorPattern`]); the first rule that matches a
//! sensor applies, so put specific rules before `**`. A sensor no rule
//! matches is kept forever.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use crate::model::{SensorPattern, parse_duration};
use crate::storage::{Dropped, SharedStorage, StorageError};

/// One `PATTERN=AGE` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    pub pattern: SensorPattern,
    pub keep: Duration,
}

impl FromStr for RetentionRule {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (pattern, age) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("{text:?} is not PATTERN=AGE (e.g. '**=400d')"))?;
        Ok(Self {
            pattern: SensorPattern::new(pattern).map_err(|e| format!("{pattern:?}: {e}"))?,
            keep: parse_duration(age)?,
        })
    }
}

/// What one pass dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub sensors: u64,
    pub dropped: Dropped,
}

/// Applies the rules once, as of `now_ms`.
pub async fn apply(
    storage: &SharedStorage,
    rules: &[RetentionRule],
    now_ms: i64,
) -> Result<PassSummary, StorageError> {
    let mut summary = PassSummary::default();
    if rules.is_empty() {
        return Ok(summary);
    }
    for info in storage.sensors().await? {
        let Some(rule) = rules
            .iter()
            .find(|rule| rule.pattern.matches(info.sensor_id.as_str()))
        else {
            continue;
        };
        let cutoff = now_ms.saturating_sub(rule.keep.as_millis().min(i64::MAX as u128) as i64);
        if info.first_timestamp_ms >= cutoff {
            continue;
        }
        let dropped = storage.drop_before(&info.sensor_id, cutoff).await?;
        if dropped.points > 0 {
            summary.sensors += 1;
            summary.dropped.points += dropped.points;
            summary.dropped.bytes += dropped.bytes;
        }
    }
    Ok(summary)
}

/// Applies the rules every `interval` until `shutdown`; reports what each
/// pass reclaimed.
pub async fn run(
    storage: SharedStorage,
    rules: Vec<RetentionRule>,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send,
) {
    if rules.is_empty() {
        return;
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let now_ms = jiff::Timestamp::now().as_millisecond();
        match apply(&storage, &rules, now_ms).await {
            Ok(summary) if summary.dropped.points > 0 => tracing::info!(
                sensors = summary.sensors,
                points = summary.dropped.points,
                bytes_reclaimed = summary.dropped.bytes,
                "retention dropped old blocks (their space is reused for new data)"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "retention pass failed; will retry"),
        }
        tokio::select! {
            () = shutdown.as_mut() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
