//! Handle checks after commit: the handles a committed batch asserted (its
//! `#identity` events) are checked both ways on a thread of their own
//! (`identity::handles::HandleChecker`); until a check ends the claimed
//! handle is shown. Results come back to the writer as
//! `Change::HandleChecked`, which applies only while the handle is still the
//! claimed one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::identity::handles::{HandleChecker, Verdict};
use crate::index::event::{Change, IndexEvent};
use crate::metrics::Metrics;

/// Handles that may wait to be checked. One that finds the queue full is
/// left unchecked (shown as claimed, as every handle is until its check)
/// and counted; unchecked handles are queued again at the next start
/// ([`pending`]).
const QUEUE: usize = 10_000;

/// The checking thread's inbox: `(did, handle)` of committed `#identity`
/// events.
pub struct HandleQueue {
    tx: std::sync::mpsc::SyncSender<(String, String)>,
    metrics: Arc<Metrics>,
}

impl HandleQueue {
    /// Queues the handles a committed batch asserted.
    pub fn on_commit(&self, batch: &[IndexEvent]) {
        for ev in batch {
            for c in &ev.changes {
                if let Change::Identity {
                    did,
                    handle: Some(handle),
                } = c
                {
                    self.push(did.clone(), handle.clone());
                }
            }
        }
    }

    fn push(&self, did: String, handle: String) {
        match self.tx.try_send((did, handle)) {
            Ok(()) => Metrics::add(&self.metrics.queue_handle_checks, 1),
            Err(std::sync::mpsc::TrySendError::Full((did, handle))) => {
                Metrics::inc(&self.metrics.handle_checks_dropped_total);
                tracing::debug!(
                    did,
                    handle,
                    "handle check queue full: checked at the next start"
                );
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The handles of `actors` that were claimed and never checked (a check
/// dropped from a full queue, or cut short by a stop), up to [`QUEUE`].
pub fn pending(c: &duckdb::Connection) -> duckdb::Result<Vec<(String, String)>> {
    let mut stmt = c.prepare(
        "SELECT did, claimed_handle FROM actors
         WHERE claimed_handle IS NOT NULL AND handle_checked_at IS NULL LIMIT ?",
    )?;
    let rows = stmt.query_map([QUEUE as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Starts the checking thread; results go to the writer through `tx`. It
/// stops at `shutdown` (so the writer can drain).
/// `unchecked` ([`pending`]) are queued first.
pub fn start(
    checker: HandleChecker,
    tx: mpsc::Sender<IndexEvent>,
    metrics: Arc<Metrics>,
    unchecked: Vec<(String, String)>,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<HandleQueue>> {
    let (in_tx, in_rx) = std::sync::mpsc::sync_channel::<(String, String)>(QUEUE);
    let queue = Arc::new(HandleQueue {
        tx: in_tx,
        metrics: metrics.clone(),
    });
    if !unchecked.is_empty() {
        tracing::info!(handles = unchecked.len(), "checking handles left unchecked");
    }
    for (did, handle) in unchecked {
        queue.push(did, handle);
    }
    std::thread::Builder::new()
        .name("lexview-handles".into())
        .spawn(move || check_loop(checker, in_rx, tx, metrics, shutdown))?;
    Ok(queue)
}

/// Checks that could not be decided (an outage) are tried again after
/// this, doubling up to [`RETRY_MAX`]; the handle is shown as claimed
/// meanwhile.
const RETRY_BASE: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(600);

/// The checking thread: a check from the inbox, or one due again.
fn check_loop(
    checker: HandleChecker,
    inbox: std::sync::mpsc::Receiver<(String, String)>,
    tx: mpsc::Sender<IndexEvent>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // Undecided checks: when each is due, and how many times it failed.
    let mut later: Vec<(std::time::Instant, String, String, u32)> = Vec::new();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let now = std::time::Instant::now();
        let due = later.iter().position(|(at, ..)| *at <= now);
        let (did, handle, failures) = match due {
            Some(i) => {
                let (_, did, handle, n) = later.swap_remove(i);
                (did, handle, n)
            }
            None => match inbox.recv_timeout(Duration::from_millis(200)) {
                Ok((did, handle)) => {
                    Metrics::dec(&metrics.queue_handle_checks);
                    (did, handle, 0)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        let valid = match checker.verdict(&did, &handle) {
            Verdict::Valid => true,
            Verdict::Invalid => false,
            Verdict::Unknown(why) => {
                let wait = (RETRY_BASE * 2u32.saturating_pow(failures.min(16))).min(RETRY_MAX);
                tracing::debug!(
                    did,
                    handle,
                    ?wait,
                    "handle check undecided ({why}): tried again later"
                );
                if later.len() < QUEUE {
                    later.push((now + wait, did, handle, failures + 1));
                }
                continue;
            }
        };
        Metrics::inc(if valid {
            &metrics.handles_verified_total
        } else {
            &metrics.handles_invalid_total
        });
        if !valid {
            tracing::info!(
                did,
                handle,
                "handle does not verify: shown as handle.invalid"
            );
        }
        let ev = IndexEvent {
            source: "handles".into(),
            changes: vec![Change::HandleChecked { did, handle, valid }],
            ..Default::default()
        };
        if tx.blocking_send(ev).is_err() {
            return;
        }
    }
}
