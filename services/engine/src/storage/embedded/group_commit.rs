//! Group commit: writes that arrive while the WAL is syncing share the next
//! sync instead of queueing for one each.
//!
//! Without it every write waits for the `fdatasync` of every write queued
//! ahead of it, so on a disk where a sync takes 5 to 25 ms a burst of
//! writers turns into a tail of hundreds of milliseconds. With it a write
//! waits for at most the sync that is running and its own. The scheme is
//! the one of LevelDB's and RocksDB's write groups: the first writer to find
//! no commit running becomes the leader, takes every queued write (its own
//! first among them), commits them together and hands each writer its
//! result; writers that come meanwhile queue for the leader's next round or
//! for the next leader.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::storage::StorageError;

/// A queue of writes of type `W` and the writers waiting on them.
pub struct GroupCommit<W> {
    state: Mutex<State<W>>,
    /// Signalled when a commit ends: its writers' results are in, and a
    /// waiting writer may take the lead.
    turn: Condvar,
    /// A commit takes queued writes until their weights reach this (and
    /// always at least one), which bounds how long one commit runs.
    max_weight: usize,
}

struct State<W> {
    next_ticket: u64,
    queued: VecDeque<Queued<W>>,
    results: HashMap<u64, Result<(), StorageError>>,
    leading: bool,
    /// A commit panicked: its writes' fate is unknown, so no writer waits
    /// for a result that will never come.
    poisoned: bool,
}

struct Queued<W> {
    ticket: u64,
    weight: usize,
    write: W,
}

impl<W> GroupCommit<W> {
    pub fn new(max_weight: usize) -> Self {
        Self {
            state: Mutex::new(State {
                next_ticket: 0,
                queued: VecDeque::new(),
                results: HashMap::new(),
                leading: false,
                poisoned: false,
            }),
            turn: Condvar::new(),
            max_weight,
        }
    }

    /// Queues `write` and returns once it is committed, or failed.
    ///
    /// `commit` gets writes in the order they were submitted and returns one
    /// result per write, in the same order. It runs on the calling thread of
    /// whichever writer leads, never on two threads at once.
    pub fn submit(
        &self,
        write: W,
        weight: usize,
        mut commit: impl FnMut(Vec<W>) -> Vec<Result<(), StorageError>>,
    ) -> Result<(), StorageError> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queued.push_back(Queued {
            ticket,
            weight,
            write,
        });
        loop {
            if let Some(result) = state.results.remove(&ticket) {
                return result;
            }
            if state.poisoned {
                return Err(poisoned());
            }
            if !state.leading {
                break;
            }
            state = self.turn.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        // Lead until this writer's own write is committed: the queue is in
        // submission order, so each round brings it closer.
        state.leading = true;
        let mut leader = Leading {
            queue: self,
            finished: false,
        };
        loop {
            let mut tickets = Vec::new();
            let mut writes = Vec::new();
            let mut weight = 0;
            while let Some(next) = state.queued.front() {
                if !writes.is_empty() && weight + next.weight > self.max_weight {
                    break;
                }
                let next = state.queued.pop_front().expect("front exists");
                weight += next.weight;
                tickets.push(next.ticket);
                writes.push(next.write);
            }
            drop(state);
            let results = commit(writes);
            debug_assert_eq!(results.len(), tickets.len());
            state = self.lock();
            let mut results = results.into_iter();
            for ticket in tickets {
                let result = results.next().unwrap_or_else(|| Err(poisoned()));
                state.results.insert(ticket, result);
            }
            self.turn.notify_all();
            if let Some(result) = state.results.remove(&ticket) {
                state.leading = false;
                leader.finished = true;
                // Another writer may be queued already: wake one to lead.
                self.turn.notify_all();
                return result;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // A panic inside `commit` happens outside this lock, so the state is
        // never half-updated; `Leading` marks the queue poisoned.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Held by the leader while it commits; if `commit` panics, unwinding drops
/// it and the writers waiting for that commit get an error instead of
/// waiting forever.
struct Leading<'a, W> {
    queue: &'a GroupCommit<W>,
    finished: bool,
}

impl<W> Drop for Leading<'_, W> {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.queue.lock();
            state.leading = false;
            state.poisoned = true;
            self.queue.turn.notify_all();
        }
    }
}

fn poisoned() -> StorageError {
    StorageError::Backend("a writer panicked during a commit".into())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use super::*;

    #[test]
    fn writes_that_queue_during_a_commit_share_the_next_one_in_order() {
        let queue = Arc::new(GroupCommit::<u32>::new(usize::MAX));
        let commits = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let writers = 8;
        let start = Arc::new(Barrier::new(writers));
        let handles: Vec<_> = (0..writers as u32)
            .map(|i| {
                let (queue, commits, start) = (queue.clone(), commits.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    queue.submit(i, 1, |writes| {
                        // A slow "sync": the others queue behind it.
                        std::thread::sleep(Duration::from_millis(30));
                        let results = writes.iter().map(|_| Ok(())).collect();
                        commits.lock().unwrap().push(writes);
                        results
                    })
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
        let commits = commits.lock().unwrap();
        let committed: usize = commits.iter().map(Vec::len).sum();
        assert_eq!(committed, writers, "every write committed exactly once");
        assert!(
            commits.len() < writers,
            "eight writers arriving together needed {} commits: no grouping",
            commits.len()
        );
    }

    #[test]
    fn each_writer_gets_its_own_result() {
        let queue = Arc::new(GroupCommit::<u32>::new(usize::MAX));
        let handles: Vec<_> = (0..6u32)
            .map(|i| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let result = queue.submit(i, 1, |writes| {
                        std::thread::sleep(Duration::from_millis(5));
                        writes
                            .iter()
                            .map(|&w| {
                                if w % 2 == 0 {
                                    Ok(())
                                } else {
                                    Err(StorageError::InvalidInput(format!("odd {w}")))
                                }
                            })
                            .collect()
                    });
                    (i, result)
                })
            })
            .collect();
        for handle in handles {
            let (i, result) = handle.join().unwrap();
            match result {
                Ok(()) => assert_eq!(i % 2, 0),
                Err(StorageError::InvalidInput(message)) => assert_eq!(message, format!("odd {i}")),
                Err(other) => panic!("writer {i}: {other}"),
            }
        }
    }

    #[test]
    fn a_commit_takes_queued_writes_up_to_the_weight_limit_in_order() {
        let queue = Arc::new(GroupCommit::<usize>::new(10));
        let commits = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let submit = |weight: usize| {
            let (queue, commits) = (queue.clone(), commits.clone());
            std::thread::spawn(move || {
                queue.submit(weight, weight, |writes| {
                    if writes == [1] {
                        // The first commit is slow: the rest queue behind it.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    let results = writes.iter().map(|_| Ok(())).collect();
                    commits.lock().unwrap().push(writes);
                    results
                })
            })
        };
        let mut handles = vec![submit(1)];
        for weight in [4, 5, 20, 3] {
            std::thread::sleep(Duration::from_millis(20));
            handles.push(submit(weight));
        }
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
        // 4 + 5 fit in 10; 20 alone is over the limit but a commit always
        // takes one; 3 comes last, order kept throughout.
        assert_eq!(
            *commits.lock().unwrap(),
            vec![vec![1], vec![4, 5], vec![20], vec![3]]
        );
    }

    #[test]
    fn a_panicking_commit_fails_its_writers_instead_of_hanging_them() {
        let queue = Arc::new(GroupCommit::<u32>::new(usize::MAX));
        let leader = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let _ = queue.submit(0, 1, |_| {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("injected");
                });
            })
        };
        std::thread::sleep(Duration::from_millis(10));
        let follower = queue.submit(1, 1, |writes| writes.iter().map(|_| Ok(())).collect());
        assert!(leader.join().is_err(), "the leader's panic propagates");
        assert!(
            matches!(follower, Err(StorageError::Backend(_))),
            "{follower:?}"
        );
    }
}
