//! The single index writer: batches events by size and time and commits each
//! batch (data and cursors) in one DuckDB transaction. A failed transaction is
//! retried; the batch is never dropped and the cursor never moves past it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::event::IndexEvent;
use super::store::{ApplyStats, Store};
use crate::metrics::Metrics;

/// Batching bounds.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Commit once this many events are pending...
    pub max_events: usize,
    /// ...or once the oldest pending event has waited this long.
    pub max_delay: Duration,
}

/// 150k events: under load a batch then carries more than DuckDB's row-group
/// size (122,880 rows) of new records, so DuckDB writes them compressed
/// while appending and logs only their blocks, instead of writing every row
/// to the WAL and compressing it again at the next checkpoint. At 130k the
/// generated corpus's batches held ~117k new records, just under it; 150k
/// gave (b) 77-84k against 66-78k events/s (interleaved runs, 2026-12-04).
impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_events: 150_000,
            max_delay: Duration::from_millis(200),
        }
    }
}

/// The committed position of one source.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourcePosition {
    pub cursor: Option<i64>,
    #[serde(rename = "eventTime")]
    pub event_time: Option<String>,
}

/// Committed positions, shared with `/_health`.
#[derive(Debug, Default)]
pub struct Positions(RwLock<BTreeMap<String, SourcePosition>>);

impl Positions {
    pub fn snapshot(&self) -> BTreeMap<String, SourcePosition> {
        self.0.read().expect("positions lock").clone()
    }
    pub fn set(&self, source: &str, cursor: Option<i64>, event_time: Option<String>) {
        self.0
            .write()
            .expect("positions lock")
            .insert(source.to_string(), SourcePosition { cursor, event_time });
    }
}

/// Failed transactions in a row after which the process exits.
pub const MAX_FAILURES_IN_A_ROW: u32 = 10;

/// The exit status then (EX_TEMPFAIL: try again later).
pub const EXIT_WRITER_FAILED: i32 = 75;

/// Called with each batch once it is committed (e.g. to invalidate caches),
/// with what the commit did.
pub type OnCommit = Arc<dyn Fn(&[IndexEvent], &ApplyStats) + Send + Sync>;

/// Runs until the channel closes, then commits what is pending and returns the store.
pub async fn run(
    mut store: Store,
    mut rx: mpsc::Receiver<IndexEvent>,
    config: WriterConfig,
    positions: Arc<Positions>,
    metrics: Arc<Metrics>,
    on_commit: OnCommit,
) -> Store {
    let mut pending: Vec<IndexEvent> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let next = match deadline {
            Some(d) => tokio::select! {
                ev = rx.recv() => ev.map(Some),
                _ = tokio::time::sleep_until(d) => Some(None),
            },
            None => rx.recv().await.map(Some),
        };
        let closed = match next {
            Some(Some(ev)) => {
                if pending.is_empty() {
                    deadline = Some(Instant::now() + config.max_delay);
                }
                pending.push(ev);
                if pending.len() < config.max_events {
                    continue;
                }
                false
            }
            Some(None) => false,
            None => true,
        };
        if !pending.is_empty() {
            Metrics::set(&metrics.queue_events, rx.len() as u64);
            let batch = std::mem::take(&mut pending);
            store = commit(store, batch, &positions, &metrics, &on_commit).await;
        }
        if closed {
            return store;
        }
        deadline = None;
    }
}

async fn commit(
    mut store: Store,
    mut batch: Vec<IndexEvent>,
    positions: &Positions,
    metrics: &Metrics,
    on_commit: &OnCommit,
) -> Store {
    let mut attempt = 0u32;
    loop {
        let hook = on_commit.clone();
        let (s, b, result) = tokio::task::spawn_blocking(move || {
            // Snapshots become explicit deletes first, so that `on_commit`
            // (search, subscriptions, caches) sees every removed record.
            let r = store
                .expand_snapshots(&mut batch)
                .and_then(|_| store.apply(&batch));
            // Caches are invalidated before the cursor moves on, so a client
            // that saw the new cursor never reads a view cached from before
            // the batch. Here, on a blocking thread: the hook may wait for
            // room in the search indexer's queue.
            if let Ok(stats) = &r {
                hook(&batch, stats);
            }
            (store, batch, r)
        })
        .await
        .expect("writer task panicked");
        store = s;
        batch = b;
        match result {
            Ok(stats) => {
                Metrics::inc(&metrics.batches_committed_total);
                Metrics::set(&metrics.writer_failures_in_a_row, 0);
                tracing::debug!(?stats, "batch committed");

                let mut last: BTreeMap<&str, (i64, Option<&String>)> = BTreeMap::new();
                for ev in &batch {
                    if let Some(c) = ev.cursor {
                        last.insert(&ev.source, (c, ev.time.as_ref()));
                    }
                }
                for (source, (cursor, time)) in last {
                    positions.set(source, Some(cursor), time.cloned());
                }
                return store;
            }
            Err(e) => {
                // Nothing of the batch was committed: retry it whole, and
                // give up (exit, for a supervisor to restart the process)
                // when it keeps failing: a full disk, a broken store. The
                // cursor never moved past the batch, so a restart loses
                // nothing.
                Metrics::inc(&metrics.writer_errors_total);
                Metrics::set(&metrics.writer_failures_in_a_row, u64::from(attempt) + 1);
                if attempt + 1 >= MAX_FAILURES_IN_A_ROW {
                    tracing::error!(
                        error = %e,
                        "index transaction failed {MAX_FAILURES_IN_A_ROW} times in a row; exiting (nothing of the batch was committed)"
                    );
                    std::process::exit(EXIT_WRITER_FAILED);
                }
                let wait = Duration::from_millis(200 * 2u64.pow(attempt.min(5)));
                tracing::error!(error = %e, ?wait, events = batch.len(), "index transaction failed; retrying");
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
        }
    }
}
