//! Point lookups of concurrent requests, merged into one statement.
//!
//! DuckDB plans a statement that reads a table again at every execution
//! (1.5 keeps no plan for one: `PreparedStatement::CanCachePlan` refuses any
//! table scan), and that planning dominates a point lookup: on the 5M-record
//! load store a lookup of one record by URI took 0.16 ms and one of eight
//! URIs 0.39 ms, 0.03 ms per further key. Under load many requests look up
//! the same kind of row at the same time (a post's record, its counts, its
//! replies, an author's profile). A [`Batcher`] has two workers; a free one
//! takes every request waiting for its kind of lookup and answers them all
//! with one statement, so a burst pays the planning once. A request that
//! finds a worker free is looked up at once: batching adds no wait when the
//! server is idle, only when it would queue anyway.
//!
//! No crate does this for a synchronous database handle: async-graphql's
//! DataLoader batches the loads of one query, not of concurrent requests
//! (and waits a delay to collect them).

use super::store::{ReadPool, Result, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Workers per batcher: statements of one kind running at once (the
/// machines this is measured on have two cores).
const WORKERS: usize = 2;

/// A batch stops taking more waiting requests once it has this many keys
/// (a request is never split). Past 16 keys the lookups switch from an IN
/// list of parameters to a list macro (`store::rows_with`); at 32 a batch
/// costs about a third of the same keys looked up one by one.
const MAX_KEYS: usize = 32;

/// Runs one statement for a set of keys on a read connection, giving each
/// row with the key it answers (any number of rows per key).
type Lookup<R> =
    dyn Fn(&duckdb::Connection, &[String]) -> duckdb::Result<Vec<(String, R)>> + Send + Sync;

struct Job<R> {
    keys: Vec<String>,
    reply: oneshot::Sender<Result<Vec<(String, R)>>>,
}

/// How much batching happened: statements run and the requests they
/// answered (`lexview_lookup_statements_total` and
/// `lexview_lookup_requests_total` in `/metrics`).
#[derive(Default)]
pub struct BatchCounts {
    pub statements: AtomicU64,
    pub requests: AtomicU64,
}

/// One kind of point lookup, shared by every request (see the module
/// documentation).
pub struct Batcher<R> {
    name: &'static str,
    jobs: mpsc::UnboundedSender<Job<R>>,
    counts: Arc<BatchCounts>,
}

impl<R: Clone + Send + 'static> Batcher<R> {
    /// Starts the workers (on the current tokio runtime). `lookup` runs
    /// the statement for the keys of a batch; the keys are distinct.
    pub fn new(
        name: &'static str,
        readers: Arc<ReadPool>,
        lookup: impl Fn(&duckdb::Connection, &[String]) -> duckdb::Result<Vec<(String, R)>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        let (jobs, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        let lookup: Arc<Lookup<R>> = Arc::new(lookup);
        let counts = Arc::new(BatchCounts::default());
        for _ in 0..WORKERS {
            tokio::spawn(work(
                waiting.clone(),
                readers.clone(),
                lookup.clone(),
                counts.clone(),
            ));
        }
        Batcher { name, jobs, counts }
    }

    /// The rows for `keys` (each key once), each with its key, from a
    /// statement that may answer other requests' keys too.
    pub async fn get(&self, mut keys: Vec<String>) -> Result<Vec<(String, R)>> {
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let stopped = || {
            StoreError::Io(std::io::Error::other(format!(
                "the {} lookups have stopped (the server is shutting down)",
                self.name
            )))
        };
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { keys, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn counts(&self) -> &BatchCounts {
        &self.counts
    }
}

/// A worker: waits for a request, takes every other one waiting (up to
/// [`MAX_KEYS`] keys), answers them with one statement, and again.
async fn work<R: Clone + Send + 'static>(
    waiting: Arc<Mutex<mpsc::UnboundedReceiver<Job<R>>>>,
    readers: Arc<ReadPool>,
    lookup: Arc<Lookup<R>>,
    counts: Arc<BatchCounts>,
) {
    loop {
        let batch = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            let mut n = first.keys.len();
            let mut batch = vec![first];
            while n < MAX_KEYS {
                match waiting.try_recv() {
                    Ok(job) => {
                        n += job.keys.len();
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        counts.statements.fetch_add(1, Ordering::Relaxed);
        counts
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut keys: Vec<String> = batch.iter().flat_map(|j| j.keys.iter().cloned()).collect();
        keys.sort_unstable();
        keys.dedup();
        let lookup = lookup.clone();
        let rows = readers.with(move |c| lookup(c, &keys)).await;
        deliver(batch, rows);
    }
}

/// Hands each request the rows of its keys.
fn deliver<R: Clone>(mut batch: Vec<Job<R>>, rows: Result<Vec<(String, R)>>) {
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            // StoreError is not Clone: each request gets the message.
            let message = e.to_string();
            for job in batch {
                let _ = job
                    .reply
                    .send(Err(StoreError::Io(std::io::Error::other(message.clone()))));
            }
            return;
        }
    };
    if batch.len() == 1 {
        let job = batch.pop().expect("one job");
        let _ = job.reply.send(Ok(rows));
        return;
    }
    let mut by_key: HashMap<String, Vec<R>> = HashMap::new();
    for (key, row) in rows {
        by_key.entry(key).or_default().push(row);
    }
    for job in batch {
        let mine = job
            .keys
            .iter()
            .filter_map(|k| Some((k, by_key.get(k)?)))
            .flat_map(|(k, rows)| rows.iter().map(move |r| (k.clone(), r.clone())))
            .collect();
        let _ = job.reply.send(Ok(mine));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::store::Store;

    /// A lookup that answers each key with two rows, and fails for "bad".
    fn echo(c: &duckdb::Connection, keys: &[String]) -> duckdb::Result<Vec<(String, String)>> {
        if keys.iter().any(|k| k == "bad") {
            c.execute_batch("SELECT * FROM no_such_table")?;
        }
        let mut stmt = c.prepare_cached(
            "SELECT k, k || suffix FROM (SELECT unnest(string_split(?, ' ')) AS k),
                 (VALUES ('!'), ('?')) AS s(suffix)",
        )?;
        let rows = stmt.query_map([keys.join(" ")], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    fn sorted(mut rows: Vec<(String, String)>) -> Vec<(String, String)> {
        rows.sort();
        rows
    }

    fn expected(keys: &[&str]) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = keys
            .iter()
            .flat_map(|k| {
                [
                    (k.to_string(), format!("{k}!")),
                    (k.to_string(), format!("{k}?")),
                ]
            })
            .collect();
        rows.sort();
        rows.dedup();
        rows
    }

    #[tokio::test]
    async fn concurrent_requests_share_statements_and_get_only_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let batcher = Batcher::new("echo", store.readers(), echo);
        // Forty requests at once, overlapping: request i asks for keys i and
        // i + 1, and the first asks for one key twice.
        let asks: Vec<Vec<String>> = (0..40)
            .map(|i| match i {
                0 => vec!["k0".to_string(), "k0".to_string()],
                i => vec![format!("k{i}"), format!("k{}", i + 1)],
            })
            .collect();
        let answers =
            futures::future::join_all(asks.iter().map(|keys| batcher.get(keys.clone()))).await;
        for (keys, answer) in asks.iter().zip(answers) {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            assert_eq!(sorted(answer.unwrap()), expected(&keys), "{keys:?}");
        }
        let statements = batcher.counts().statements.load(Ordering::Relaxed);
        let requests = batcher.counts().requests.load(Ordering::Relaxed);
        assert_eq!(requests, 40);
        // All forty were waiting before a worker ran: at most MAX_KEYS keys
        // (plus the request that crossed it) per statement.
        assert!((2..=4).contains(&statements), "{statements} statements");
    }

    #[tokio::test]
    async fn a_failed_statement_fails_its_requests_and_the_next_ones_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let batcher = Batcher::new("echo", store.readers(), echo);
        let (bad, good) = futures::future::join(
            batcher.get(vec!["bad".to_string()]),
            batcher.get(vec!["a".to_string()]),
        )
        .await;
        let message = bad.expect_err("the bad key fails").to_string();
        assert!(message.contains("no_such_table"), "{message}");
        // "a" failed with it when they shared the statement; asked alone
        // it is answered.
        if let Err(e) = good {
            assert!(e.to_string().contains("no_such_table"), "{e}");
        }
        let again = batcher.get(vec!["a".to_string()]).await.unwrap();
        assert_eq!(sorted(again), expected(&["a"]));
        assert!(batcher.get(Vec::new()).await.unwrap().is_empty());
    }
}
