//! From one raw frame to one [`IndexEvent`]: decode, filter by collection,
//! read the CAR slice, decode and validate records, extract links. Pure
//! (no I/O), so the same code serves the live firehose, replay files and the
//! benchmark.

use std::sync::Arc;

use crate::decode::car::{read_car, verify_block};
use crate::decode::frame::{decode_frame, Commit, Frame, FrameError};
use crate::decode::value::dagcbor_to_json;
use crate::index::event::{Change, IndexEvent, Quarantined, RecordWrite};
use crate::lexicon::Catalog;
use crate::metrics::Metrics;
use crate::syntax::{is_valid_did, is_valid_record_key};

/// Why a frame produced nothing to index.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("commit seq {seq} from {repo}: {reason}")]
    CommitRejected {
        seq: i64,
        repo: String,
        reason: String,
    },
}

/// What a frame turned out to be.
#[derive(Debug)]
pub enum Outcome {
    /// Apply this (it may carry only a cursor advance).
    Event(IndexEvent),
    /// An error frame from the source (`op: -1`).
    SourceError {
        error: String,
        message: Option<String>,
    },
    /// An `#info` frame.
    Info {
        name: String,
        message: Option<String>,
    },
}

/// Turns frames into index events, given the loaded lexicons.
pub struct Ingestor {
    /// Swapped whole when the lexicons are reloaded (SIGHUP).
    catalog: Arc<arc_swap::ArcSwap<Catalog>>,
    metrics: Arc<Metrics>,
}

impl Ingestor {
    pub fn new(catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> Ingestor {
        Ingestor::shared(Arc::new(arc_swap::ArcSwap::new(catalog)), metrics)
    }

    /// An ingestor that follows `catalog` as it is swapped.
    pub fn shared(catalog: Arc<arc_swap::ArcSwap<Catalog>>, metrics: Arc<Metrics>) -> Ingestor {
        Ingestor { catalog, metrics }
    }

    /// Processes one `subscribeRepos` frame from `source`.
    pub fn process(&self, source: &str, bytes: &[u8]) -> Result<Outcome, IngestError> {
        let m = &self.metrics;
        Metrics::inc(&m.frames_total);
        let frame = decode_frame(bytes).inspect_err(|_| Metrics::inc(&m.frames_malformed_total))?;
        let mut event = IndexEvent {
            source: source.to_string(),
            cursor: frame.seq(),
            ..Default::default()
        };
        match frame {
            Frame::Commit(c) => {
                Metrics::inc(&m.commits_total);
                event.time = Some(c.time.to_string());
                event.changes = self
                    .commit_changes(&c)
                    .inspect_err(|_| Metrics::inc(&m.commits_rejected_total))?;
            }
            Frame::Identity(i) => {
                Metrics::inc(&m.identity_events_total);
                event.time = Some(i.time.to_string());
                event.changes.push(Change::Identity {
                    did: i.did.to_string(),
                    handle: i.handle.map(str::to_string),
                });
            }
            Frame::Account(a) => {
                Metrics::inc(&m.account_events_total);
                event.time = Some(a.time.to_string());
                event.changes.push(Change::Account {
                    did: a.did.to_string(),
                    active: a.active,
                    status: a.status.map(str::to_string),
                });
            }
            Frame::Sync(s) => {
                // Resync from getRepo is the verifying path's job (issue 4);
                // here the event only advances the cursor.
                Metrics::inc(&m.sync_events_total);
                tracing::debug!(did = s.did, rev = s.rev, "#sync event");
            }
            Frame::Info(i) => {
                Metrics::inc(&m.info_frames_total);
                return Ok(Outcome::Info {
                    name: i.name,
                    message: i.message,
                });
            }
            Frame::Error(e) => {
                Metrics::inc(&m.error_frames_total);
                return Ok(Outcome::SourceError {
                    error: e.error,
                    message: e.message,
                });
            }
            Frame::Other { kind, .. } => {
                Metrics::inc(&m.unknown_frames_total);
                tracing::debug!(kind, "frame type not handled");
            }
        }
        Ok(Outcome::Event(event))
    }

    fn commit_changes(&self, c: &Commit<'_>) -> Result<Vec<Change>, IngestError> {
        let m = &self.metrics;
        let reject = |reason: String| IngestError::CommitRejected {
            seq: c.seq,
            repo: c.repo.to_string(),
            reason,
        };
        let catalog = self.catalog.load();
        // Filter by collection before anything expensive.
        let wanted: Vec<_> = c
            .ops
            .iter()
            .filter_map(|op| {
                let (collection, rkey) = op.split_path()?;
                catalog
                    .has_record(collection)
                    .then_some((op, collection, rkey))
            })
            .collect();
        Metrics::add(&m.ops_skipped_total, (c.ops.len() - wanted.len()) as u64);
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        if !is_valid_did(c.repo) {
            return Err(reject(format!("repo {:?} is not a valid DID", c.repo)));
        }
        let needs_blocks = wanted.iter().any(|(op, ..)| op.action != "delete");
        let blocks = if needs_blocks && !c.blocks.is_empty() {
            read_car(c.blocks)
                .map_err(|e| reject(e.to_string()))?
                .blocks
        } else {
            Default::default()
        };
        let mut changes = Vec::with_capacity(wanted.len());
        for (op, collection, rkey) in wanted {
            // An invalid record: counted here, kept aside by the writer.
            let quarantine = |cid: Option<String>, reason: String, record| {
                Metrics::inc(&m.records_invalid_total);
                Change::Invalid(Quarantined {
                    did: c.repo.to_string(),
                    collection: collection.to_string(),
                    rkey: rkey.to_string(),
                    cid,
                    rev: c.rev.to_string(),
                    reason,
                    record,
                })
            };
            if !is_valid_record_key(rkey) {
                changes.push(quarantine(
                    None,
                    format!("invalid record key {rkey:?}"),
                    None,
                ));
                continue;
            }
            match op.action {
                "delete" => {
                    Metrics::inc(&m.records_deleted_total);
                    changes.push(Change::Delete {
                        did: c.repo.to_string(),
                        collection: collection.to_string(),
                        rkey: rkey.to_string(),
                        rev: c.rev.to_string(),
                    });
                }
                "create" | "update" => {
                    let Some(cid) = op.cid else {
                        changes.push(quarantine(
                            None,
                            format!("{} op without a cid", op.action),
                            None,
                        ));
                        continue;
                    };
                    let Some(block) = blocks.get(&cid) else {
                        if c.too_big {
                            Metrics::inc(&m.commits_too_big_total);
                            tracing::warn!(
                                repo = c.repo,
                                path = op.path,
                                "tooBig commit: record not in frame"
                            );
                        } else {
                            return Err(reject(format!(
                                "record block {cid} for {} missing from the commit",
                                op.path
                            )));
                        }
                        continue;
                    };
                    // The record's bytes must be what its CID says.
                    verify_block(&cid, block).map_err(|e| reject(e.to_string()))?;
                    let cid_str = cid.to_string();
                    let record = match dagcbor_to_json(block) {
                        Ok(v) => v,
                        Err(e) => {
                            changes.push(quarantine(
                                Some(cid_str),
                                format!("record is not valid DAG-CBOR: {e}"),
                                None,
                            ));
                            continue;
                        }
                    };
                    if let Err(e) = catalog.validate_record(collection, &record) {
                        changes.push(quarantine(Some(cid_str), e.to_string(), Some(record)));
                        continue;
                    }
                    Metrics::inc(&m.records_indexed_total);
                    let mut write = RecordWrite::new(
                        c.repo.to_string(),
                        collection.to_string(),
                        rkey.to_string(),
                        cid_str,
                        c.rev.to_string(),
                        record,
                    );
                    write.update = op.action == "update";
                    changes.push(Change::Put(write));
                }
                other => {
                    changes.push(quarantine(
                        None,
                        format!("unknown op action {other:?}"),
                        None,
                    ));
                }
            }
        }
        Ok(changes)
    }
}
