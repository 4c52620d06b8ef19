//! Kill a writer with SIGKILL at random moments, again and again: after each
//! restart the store opens and every acknowledged write is there, whole.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use engine::model::{Point, SensorId, TimeRange};
use engine::storage::embedded::EmbeddedOptions;
use engine::storage::{SharedStorage, StorageEngine};

use crate::support::{Rng, as_shared, open_embedded, point, samples, scan_all, sensor};

const CHILD_DIR: &str = "ENGINE_CRASH_CHILD_DIR";
const CHILD_FIRST_BATCH: &str = "ENGINE_CRASH_CHILD_FIRST_BATCH";
const POINTS_PER_BATCH: i64 = 100;

/// Small, so that background folds (redb commits, WAL rotation) happen all
/// the time and kills land inside them too (the test counts how many do).
fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        head_flush_points: 1500,
        ..EmbeddedOptions::default()
    }
}

/// Batch `b` writes 100 points to `crash/{b % 3}` and one to `crash/all`,
/// atomically: after a crash either all 101 are there or none.
fn batch(b: i64) -> Vec<(SensorId, Point)> {
    let main = sensor(&format!("crash/{}", b % 3));
    let mut points: Vec<(SensorId, Point)> = (0..POINTS_PER_BATCH)
        .map(|j| {
            (
                main.clone(),
                point(
                    b * POINTS_PER_BATCH + j,
                    (b * 1000 + j) as f64 / 7.0,
                    (j % 256) as u8,
                ),
            )
        })
        .collect();
    points.push((sensor("crash/all"), point(b, b as f64, 192)));
    points
}

/// The writer, run as a child process of the test below (ignored otherwise).
#[test]
#[ignore = "child process of acknowledged_writes_survive_sigkill"]
fn crash_writer_child() {
    let dir = std::env::var(CHILD_DIR).expect("run by acknowledged_writes_survive_sigkill");
    let first: i64 = std::env::var(CHILD_FIRST_BATCH).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = open_embedded(dir.as_ref(), options()).await;
        for b in first.. {
            let batch = batch(b)
                .into_iter()
                .flat_map(|(id, p)| samples(&id, [p]))
                .collect();
            store.write(batch).await.unwrap();
            // How many frozen heads wait to be folded (or are being folded)
            // right now: a kill after this line lands inside a fold when
            // it is not 0.
            println!("ack {b} {}", store.frozen_heads());
        }
    });
}

/// Every point of `crash/*` by sensor and timestamp.
async fn stored_points(store: &dyn StorageEngine) -> HashMap<(String, i64), Point> {
    let mut all = HashMap::new();
    for id in ["crash/0", "crash/1", "crash/2", "crash/all"] {
        for p in scan_all(store, &sensor(id), TimeRange::ALL).await {
            all.insert((id.to_owned(), p.timestamp_ms), p);
        }
    }
    all
}

fn presence(stored: &HashMap<(String, i64), Point>, b: i64) -> usize {
    batch(b)
        .into_iter()
        .filter(|(id, p)| stored.get(&(id.as_str().to_owned(), p.timestamp_ms)) == Some(p))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let rounds: usize = std::env::var("ENGINE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0xC0FFEE);
    let mut acknowledged: Vec<i64> = Vec::new();
    let mut next_batch = 0i64;
    let mut kills_during_folds = 0;
    let full = (POINTS_PER_BATCH + 1) as usize;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash::crash_writer_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_FIRST_BATCH, next_batch.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| {
                    let (b, frozen) = line.strip_prefix("ack ")?.split_once(' ')?;
                    Some((b.parse::<i64>().ok()?, frozen.parse::<usize>().ok()?))
                })
                .collect::<Vec<(i64, usize)>>()
        });
        // Mostly mid-stream; sometimes right at start-up, during recovery.
        let delay = if rng.chance(20) {
            rng.range(0, 15)
        } else {
            rng.range(20, 250)
        };
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        if lines.last().is_some_and(|&(_, frozen)| frozen > 0) {
            kills_during_folds += 1;
        }
        let acked: Vec<i64> = lines.into_iter().map(|(b, _)| b).collect();
        let in_flight = acked.last().map_or(next_batch, |last| last + 1);
        next_batch = in_flight + 1;

        let store: SharedStorage = as_shared(open_embedded(dir.path(), options()).await);
        let stored = stored_points(&*store).await;
        for &b in &acked {
            assert_eq!(
                presence(&stored, b),
                full,
                "round {round}: acknowledged batch {b} lost"
            );
        }
        let partial = presence(&stored, in_flight);
        assert!(
            partial == 0 || partial == full,
            "round {round}: unacknowledged batch {in_flight} half there ({partial} of {full})"
        );
        acknowledged.extend(acked);
        if round % 10 == 9 || round + 1 == rounds {
            for &b in &acknowledged {
                assert_eq!(
                    presence(&stored, b),
                    full,
                    "round {round}: earlier batch {b} lost"
                );
            }
        }
        store.close().await.unwrap();
    }
    // The test means nothing if the writer never got going.
    assert!(
        acknowledged.len() > rounds,
        "only {} batches acknowledged in {rounds} rounds",
        acknowledged.len()
    );
    // Nor if no kill ever landed inside a background fold.
    assert!(
        kills_during_folds * 10 >= rounds,
        "only {kills_during_folds} of {rounds} kills landed while a fold was under way"
    );
    eprintln!(
        "{rounds} kills ({kills_during_folds} while a fold was under way), {} acknowledged \
         batches verified",
        acknowledged.len()
    );
}
