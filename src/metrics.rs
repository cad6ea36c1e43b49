//! Process-wide counters, exposed at `/metrics` (Prometheus text) and in
//! `/_health`. Declared once with their descriptions.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    (counters { $( $name:ident : $help:literal ),* $(,)? }
     gauges { $( $gauge:ident : $ghelp:literal ),* $(,)? }) => {
        /// Ingest and API counters, and gauges of what is waiting.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( pub $name: AtomicU64, )*
            $( pub $gauge: AtomicU64, )*
        }

        impl Metrics {
            /// Prometheus text exposition of every counter and gauge.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    out.push_str(concat!("# HELP lexview_", stringify!($name), " ", $help, "\n"));
                    out.push_str(concat!("# TYPE lexview_", stringify!($name), " counter\n"));
                    out.push_str(&format!(concat!("lexview_", stringify!($name), " {}\n"), self.$name.load(Ordering::Relaxed)));
                )*
                $(
                    out.push_str(concat!("# HELP lexview_", stringify!($gauge), " ", $ghelp, "\n"));
                    out.push_str(concat!("# TYPE lexview_", stringify!($gauge), " gauge\n"));
                    out.push_str(&format!(concat!("lexview_", stringify!($gauge), " {}\n"), self.$gauge.load(Ordering::Relaxed)));
                )*
                out
            }

            /// Every counter as (name, value).
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name.load(Ordering::Relaxed)), )* ]
            }
        }
    };
}

metrics! {
counters {
    frames_total: "Frames received from all sources.",
    frames_malformed_total: "Frames that could not be decoded (truncated, not DAG-CBOR, wrong shape).",
    commits_total: "#commit events decoded.",
    commits_rejected_total: "#commit events rejected whole (bad CAR, block hash mismatch, bad repo DID).",
    commits_verified_total: "#commit events whose signature, DID and rev were verified (--verify full).",
    verify_rejected_signature_total: "#commit events rejected for their signature (bad, high-S or malformed).",
    verify_rejected_identity_total: "#commit events rejected because the commit's DID is not the event's repo.",
    verify_rejected_rev_total: "#commit events rejected for their rev (not the event's, or not newer than the last).",
    verify_rejected_proof_total: "#commit events whose ops, inverted on the MST, do not give prevData (Sync 1.1).",
    verify_rejected_other_total: "#commit events rejected because the commit block or the signing key could not be read.",
    commits_deferred_total: "#commit (and #sync) events whose DID document could not be had now (the directory or the did:web host down or slow): their repository is resynced instead of the event dropped.",
    commits_unproven_total: "#commit events without prevData whose frame does not carry the tree nodes binding its ops to the signed root: not applied, their repository resynced.",
    commits_too_big_total: "#commit events marked tooBig whose records could not be read from the frame.",
    ops_skipped_total: "Repo ops in collections with no loaded record lexicon (skipped before decoding).",
    records_indexed_total: "Valid record creates and updates handed to the index writer.",
    records_deleted_total: "Record deletes handed to the index writer.",
    records_invalid_total: "Records that failed their lexicon and went to quarantine.",
    identity_events_total: "#identity events.",
    account_events_total: "#account events.",
    sync_events_total: "#sync events.",
    info_frames_total: "#info frames (e.g. OutdatedCursor).",
    error_frames_total: "Error frames (op -1) from a source, e.g. FutureCursor or ConsumerTooSlow.",
    unknown_frames_total: "Frames of a message type this version does not know.",
    frames_stale_seq_total: "Firehose frames dropped because their seq is not above the last one from their source (duplicates after a reconnect, or a source going backwards).",
    commits_inactive_total: "Commit events dropped because their account is not active (deactivated, taken down, suspended, deleted).",
    resyncs_requested_total: "Repositories marked for a resync from getRepo (#sync event, broken commit chain, reactivation).",
    resyncs_done_total: "Repository resyncs applied as snapshots.",
    resyncs_failed_total: "Repository resync attempts that failed (fetch, verification or parse); retried later.",
    resync_buffered_events_total: "Events of repositories under resync held back and applied after the snapshot.",
    resync_stale_events_total: "Buffered events already covered by their repository's snapshot (rev not newer), not applied.",
    backfill_repos_total: "Repositories applied by `lexview backfill`.",
    backfill_repos_listed_total: "Repositories that `serve --backfill` listed and asked to resync (those a backfill finished before are not counted).",
    backfill_records_total: "Records read from repositories by backfill.",
    handles_verified_total: "Handles checked both ways and shown (DID document and DNS/HTTPS agree).",
    handles_invalid_total: "Handles that did not verify, shown as handle.invalid.",
    reconnects_total: "Source reconnections.",
    batches_committed_total: "Writer transactions committed.",
    writer_errors_total: "Writer transactions that failed and were retried.",
    xrpc_requests_total: "XRPC requests served.",
    xrpc_errors_total: "XRPC requests answered with an error.",
    graphql_requests_total: "GraphQL requests served.",
    handle_checks_dropped_total: "Handle checks not queued because the queue was full (checked again at the next start).",
}
gauges {
    ingest_stopped: "1 when the ingest thread stopped while the server was not shutting down (the server then shuts down and exits non-zero).",
    writer_failures_in_a_row: "Index transactions that failed in a row, being retried (the process exits after 10, nothing of them committed).",
    queue_frames: "Frames received and waiting for the ingest thread (at most 1024).",
    queue_events: "Index events waiting for the writer.",
    queue_handle_checks: "Handles waiting to be checked (at most 10,000).",
    queue_resync_results: "Resync results (parts of repositories) waiting for the ingest thread (at most 16).",
}
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Ordering::Relaxed);
    }
    /// Lowers a gauge by one (not below zero).
    pub fn dec(gauge: &AtomicU64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}
