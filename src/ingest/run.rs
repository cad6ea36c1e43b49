//! The ingest thread: frames from the sources in rounds (signatures of a
//! round checked in parallel, ahead of the in-order pass), finished resync
//! fetches and backfill requests, every event handed to the writer through
//! the resync router.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ingestor::{IngestError, Ingestor, Outcome};
use super::resync::{Fetched, Router, Workers};
use crate::index::event::IndexEvent;
use crate::source::{RawFrame, Wire};

/// Backfill requests waiting in the channel, and the router's queue length
/// up to which more are taken from it.
pub const BACKFILL_WINDOW: usize = 1024;

/// What the ingest thread needs besides frames: resync workers and their
/// results, and the shutdown signal.
pub struct IngestContext {
    pub handle: tokio::runtime::Handle,
    pub workers: Option<Arc<Workers>>,
    pub fetched: mpsc::Receiver<Fetched>,
    /// Repositories to backfill (`--backfill`).
    pub requests: mpsc::Receiver<String>,
    pub shutdown: CancellationToken,
    /// For the queue gauges.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What the ingest thread waits for.
enum Input {
    Frame(Option<RawFrame>),
    Fetched(Fetched),
    Request(String),
    /// A failed resync's retry is due.
    Retry,
    Stop,
}

/// Frames are taken in rounds of what is waiting (up to this many), so that
/// signature checks can run in parallel before the frames are handled one by
/// one, in order.
const ROUND: usize = 256;

pub fn ingest_loop(
    ingestor: Ingestor,
    rx: mpsc::Receiver<RawFrame>,
    tx: mpsc::Sender<IndexEvent>,
    router: Router,
    ctx: IngestContext,
) {
    /// Says so when the thread unwinds (a bug: no input should make it
    /// panic), and starts the shutdown: a server that cannot ingest exits
    /// (non-zero) for its supervisor to restart it. (A thread whose sources
    /// ended, a replay read to its end, is done, not stopped.)
    struct Stopped(CancellationToken, Arc<crate::metrics::Metrics>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            if std::thread::panicking() && !self.0.is_cancelled() {
                tracing::error!("the ingest thread stopped; shutting down");
                crate::metrics::Metrics::set(&self.1.ingest_stopped, 1);
                self.0.cancel();
            }
        }
    }
    let _stopped = Stopped(ctx.shutdown.clone(), ctx.metrics.clone());
    rounds(ingestor, rx, tx, router, ctx);
}

/// The ingest thread's loop, until the sources end and resyncs are done,
/// or shutdown.
fn rounds(
    ingestor: Ingestor,
    mut rx: mpsc::Receiver<RawFrame>,
    tx: mpsc::Sender<IndexEvent>,
    mut router: Router,
    mut ctx: IngestContext,
) {
    let mut round: Vec<RawFrame> = Vec::with_capacity(ROUND);
    let mut sources_open = true;
    loop {
        if let Some(workers) = &ctx.workers {
            for did in router.start_fetches() {
                tracing::debug!(did, "resync: fetching the repository");
                workers.fetch(&did);
            }
        }
        if !sources_open && (router.idle() || ctx.workers.is_none()) {
            return;
        }
        router.requeue_due(std::time::Instant::now());
        crate::metrics::Metrics::set(&ctx.metrics.queue_frames, rx.len() as u64);
        crate::metrics::Metrics::set(&ctx.metrics.queue_resync_results, ctx.fetched.len() as u64);
        let retry = router.next_retry();
        let input = ctx.handle.block_on(async {
            let retry_at = tokio::time::Instant::from_std(retry.unwrap_or_else(|| {
                std::time::Instant::now() + std::time::Duration::from_secs(3600)
            }));
            tokio::select! {
                biased;
                Some(f) = ctx.fetched.recv() => Input::Fetched(f),
                _ = tokio::time::sleep_until(retry_at), if retry.is_some() => Input::Retry,
                Some(did) = ctx.requests.recv(), if router.queued() < BACKFILL_WINDOW => {
                    Input::Request(did)
                }
                f = rx.recv(), if sources_open => Input::Frame(f),
                _ = ctx.shutdown.cancelled(), if !sources_open => Input::Stop,
            }
        });
        let first = match input {
            Input::Fetched(f) => {
                for ev in router.finished(f) {
                    if tx.blocking_send(ev).is_err() {
                        return;
                    }
                }
                continue;
            }
            // Sources are done, but resyncs are in flight: wait for them
            // (unless shutting down: they are resumed on the next start).
            Input::Frame(None) => {
                sources_open = false;
                continue;
            }
            Input::Request(did) => {
                router.request(&did);
                continue;
            }
            Input::Retry => continue,
            Input::Stop => return,
            Input::Frame(Some(f)) => f,
        };
        round.push(first);
        take_waiting(&mut rx, &mut round);
        let firehose = firehose_frames(&round);
        if firehose.len() > 1 {
            ingestor.precheck(&firehose);
        }
        // While more frames are waiting, the next round is checked while this
        // one is handled (for a few rounds, then the other inputs get a turn).
        for stretch in 0.. {
            let mut next = Vec::with_capacity(ROUND);
            if stretch < OVERLAPPED_ROUNDS {
                take_waiting(&mut rx, &mut next);
            }
            // A shutdown stops the round: frames not handled were not
            // applied, so the cursor has not passed them.
            let shutdown = &ctx.shutdown;
            let handled = ingestor.overlapped(&firehose_frames(&next), || {
                round.drain(..).all(|frame| {
                    !shutdown.is_cancelled() && handle_frame(&ingestor, &frame, &mut router, &tx)
                })
            });
            if !handled {
                return;
            }
            if next.is_empty() {
                break;
            }
            round = next;
        }
    }
}

/// Frames taken in a row before the ingest thread looks at its other inputs.
const OVERLAPPED_ROUNDS: usize = 8;

/// Moves the frames that are waiting into `round`, up to [`ROUND`].
fn take_waiting(rx: &mut mpsc::Receiver<RawFrame>, round: &mut Vec<RawFrame>) {
    while round.len() < ROUND {
        match rx.try_recv() {
            Ok(f) => round.push(f),
            Err(_) => break,
        }
    }
}

fn firehose_frames(round: &[RawFrame]) -> Vec<&[u8]> {
    round
        .iter()
        .filter(|f| f.wire == Wire::Firehose)
        .map(|f| f.bytes.as_slice())
        .collect()
}

/// Ingests one frame and hands its events to the writer (through the resync
/// router); false once the writer is gone.
fn handle_frame(
    ingestor: &Ingestor,
    frame: &RawFrame,
    router: &mut Router,
    tx: &mpsc::Sender<IndexEvent>,
) -> bool {
    let processed = match frame.wire {
        Wire::Firehose => ingestor.process(&frame.source, &frame.bytes),
        Wire::Jetstream => ingestor.process_jetstream(&frame.source, &frame.bytes),
    };
    match processed {
        Ok(Outcome::Event(ev)) => {
            // Firehose events at or before the stored cursor were dropped by
            // the ingestor's seq order. Jetstream resumes rewound and out of
            // time order: its events are applied again, which is harmless.
            for ev in router.route(ev) {
                if tx.blocking_send(ev).is_err() {
                    return false;
                }
            }
        }
        Ok(Outcome::Dropped { reason }) => {
            tracing::debug!(source = %frame.source, "event dropped: {reason}");
        }
        Ok(Outcome::SourceError { error, message }) => {
            tracing::warn!(source = %frame.source, error, ?message, "error frame from source");
            // The relay's sequence was reset: the source goes on live
            // (`firehose::run`), and its new, lower seqs are not stale.
            if error == "FutureCursor" {
                ingestor.forget_seq(&frame.source);
            }
        }
        Ok(Outcome::Info { name, message }) => {
            tracing::warn!(source = %frame.source, name, ?message, "info frame from source");
        }
        Err(e) => {
            tracing::warn!(source = %frame.source, "frame skipped: {e}");
            // A rejected event is done with: the cursor moves past it.
            if let IngestError::CommitRejected { seq, .. } = e {
                if frame.wire == Wire::Firehose && seq > 0 {
                    let ev = IndexEvent {
                        source: frame.source.to_string(),
                        cursor: Some(seq),
                        ..Default::default()
                    };
                    for ev in router.route(ev) {
                        if tx.blocking_send(ev).is_err() {
                            return false;
                        }
                    }
                }
            }
        }
    }
    true
}
