//! From one raw frame to one [`IndexEvent`]: decode, filter by collection,
//! read the CAR slice, decode and validate records, extract links. Pure
//! (no I/O), so the same code serves the live firehose, replay files and the
//! benchmark.

use std::sync::Arc;

use crate::decode::car::{read_car, verify_block};
use crate::decode::frame::{decode_frame, Commit, Frame, FrameError, RepoOp};
use crate::decode::value::dagcbor_to_json;
use crate::index::event::{Change, IndexEvent, Quarantined, RecordWrite};
use crate::lexicon::Catalog;
use crate::metrics::Metrics;
use crate::syntax::{is_valid_did, is_valid_record_key};

/// Deferred commits are said at most every 10 s (an outage defers them all).
static DEFERRED_LOG: super::Throttle = super::Throttle::new(std::time::Duration::from_secs(10));

/// What verifying a commit decided.
enum Checked {
    /// Authentic: its ops apply; with the resync to ask for when its
    /// `prevData` breaks the chain the verifier knows.
    Verified { resync: Option<Change> },
    /// Its DID document cannot be had now: the repository is resynced
    /// instead of the commit applied.
    Deferred(Change),
}

/// A commit's CAR blocks by CID.
type BlockMap<'a> = std::collections::HashMap<cid::Cid, &'a [u8], foldhash::fast::RandomState>;

/// Whether any op of `c` is in a collection with a loaded record lexicon.
fn touches(catalog: &Catalog, c: &Commit<'_>) -> bool {
    c.ops.iter().any(|op| {
        op.split_path()
            .is_some_and(|(collection, _)| catalog.has_record(collection))
    })
}

/// A Jetstream v1 event (only the fields lexview uses).
#[derive(serde::Deserialize)]
struct JetEvent {
    did: String,
    time_us: i64,
    kind: String,
    commit: Option<JetCommit>,
    identity: Option<JetIdentity>,
    account: Option<JetAccount>,
}

#[derive(serde::Deserialize)]
struct JetCommit {
    rev: String,
    operation: String,
    collection: String,
    rkey: String,
    record: Option<serde_json::Value>,
    cid: Option<String>,
}

#[derive(serde::Deserialize)]
struct JetIdentity {
    handle: Option<String>,
}

#[derive(serde::Deserialize)]
struct JetAccount {
    active: bool,
    status: Option<String>,
}

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
    /// A well-formed event that is not applied, by rule: a seq not above the
    /// source's last, or a commit of an account that is not active.
    Dropped { reason: String },
}

/// Turns frames into index events, given the loaded lexicons.
pub struct Ingestor {
    /// Swapped whole when the lexicons are reloaded (SIGHUP).
    catalog: Arc<arc_swap::ArcSwap<Catalog>>,
    metrics: Arc<Metrics>,
    /// Present with `--verify full`.
    verifier: Option<Arc<crate::verify::Verifier>>,
    /// The last seq per firehose source, with [`Ingestor::with_seq_order`].
    seqs: Option<std::sync::Mutex<std::collections::HashMap<String, i64>>>,
    /// Accounts whose last `#account` event said they are not active: their
    /// commits are dropped (as a relay drops them), and their reactivation
    /// asks for a resync of what they may have written meanwhile.
    inactive: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Ingestor {
    pub fn new(catalog: Arc<Catalog>, metrics: Arc<Metrics>) -> Ingestor {
        Ingestor::shared(Arc::new(arc_swap::ArcSwap::new(catalog)), metrics)
    }

    /// An ingestor that follows `catalog` as it is swapped.
    pub fn shared(catalog: Arc<arc_swap::ArcSwap<Catalog>>, metrics: Arc<Metrics>) -> Ingestor {
        Ingestor {
            catalog,
            metrics,
            verifier: None,
            seqs: None,
            inactive: Default::default(),
        }
    }

    /// Drops firehose frames whose seq is not above the last one seen from
    /// the same source (a relay's or PDS's seq only grows).
    pub fn with_seq_order(mut self) -> Ingestor {
        self.seqs = Some(Default::default());
        self
    }

    /// Starts `source` after `seq` (its stored cursor): frames at or before
    /// it were applied before a restart. Needs [`Ingestor::with_seq_order`].
    pub fn resume_after(&self, source: &str, seq: i64) {
        if let Some(seqs) = &self.seqs {
            seqs.lock()
                .expect("seqs lock")
                .insert(source.to_string(), seq);
        }
    }

    /// Forgets `source`'s last seq: its relay said the cursor is in the
    /// future (its sequence was reset), and its frames start again low.
    pub fn forget_seq(&self, source: &str) {
        if let Some(seqs) = &self.seqs {
            seqs.lock().expect("seqs lock").remove(source);
        }
    }

    /// Accounts the store knows as not active (at start).
    pub fn set_inactive(&self, dids: impl IntoIterator<Item = String>) {
        self.inactive.lock().expect("inactive lock").extend(dids);
    }

    /// An account event: whether it changed the account's active state, and
    /// a resync request when it reactivates it (commits made while it was
    /// inactive were dropped).
    fn account_changed(&self, did: &str, active: bool) -> (bool, Option<Change>) {
        let mut inactive = self.inactive.lock().expect("inactive lock");
        let was_active = !inactive.contains(did);
        if active {
            inactive.remove(did);
        } else {
            inactive.insert(did.to_string());
        }
        let resync = (!was_active && active).then(|| {
            Metrics::inc(&self.metrics.resyncs_requested_total);
            Change::Resync {
                did: did.to_string(),
                reason: "account reactivated".into(),
            }
        });
        (was_active != active, resync)
    }

    /// Whether the last `#account` event for `did` said it is not active.
    pub fn is_inactive(&self, did: &str) -> bool {
        self.inactive.lock().expect("inactive lock").contains(did)
    }

    /// Verifies every commit that touches a loaded collection before using it.
    pub fn with_verifier(mut self, verifier: Arc<crate::verify::Verifier>) -> Ingestor {
        self.verifier = Some(verifier);
        self
    }

    /// With a verifier: checks the signatures of these frames' commits in
    /// parallel (rayon), ahead of [`Ingestor::process`], which then handles
    /// the frames one by one in order (rev order, DID, everything else).
    /// The results of this round and the one before are kept, so the frames
    /// of one round can be handled while the next is checked
    /// ([`Ingestor::overlapped`]).
    pub fn precheck(&self, frames: &[&[u8]]) {
        use rayon::prelude::*;
        let Some(verifier) = &self.verifier else {
            return;
        };
        verifier.next_round();
        let catalog = self.catalog.load();
        // The commits that touch a loaded collection, decoded once.
        let commits: Vec<Commit<'_>> = frames
            .par_iter()
            .filter_map(|bytes| match decode_frame(bytes) {
                Ok(Frame::Commit(c)) if touches(&catalog, &c) => Some(c),
                _ => None,
            })
            .collect();
        // Keys of repos not seen yet, fetched concurrently first.
        let repos: Vec<&str> = commits.iter().map(|c| c.repo).collect();
        verifier.prefetch(&repos);
        commits.par_iter().for_each(|c| {
            let Ok(blocks) = read_car(c.blocks) else {
                return;
            };
            if let Some(block) = blocks.blocks.get(&c.commit) {
                if verify_block(&c.commit, block).is_ok() {
                    let key = crate::verify::commit_key(c);
                    verifier.precheck(key, block, c.repo, c.rev, |data| {
                        crate::verify::proof::check_proof(c, &blocks.blocks, data)
                    });
                }
            }
        });
    }

    /// Checks the frames `next` (as [`Ingestor::precheck`]) while `handle`
    /// runs, which handles the previous round's frames in order: with two
    /// cores, one round's signatures and proofs overlap with the sequential
    /// pass (and the writer) over the one before.
    pub fn overlapped<R: Send>(&self, next: &[&[u8]], handle: impl FnOnce() -> R + Send) -> R {
        if self.verifier.is_none() || next.is_empty() {
            return handle();
        }
        rayon::join(handle, || self.precheck(next)).0
    }

    /// Processes one `subscribeRepos` frame from `source`.
    pub fn process(&self, source: &str, bytes: &[u8]) -> Result<Outcome, IngestError> {
        let m = &self.metrics;
        Metrics::inc(&m.frames_total);
        let frame = decode_frame(bytes).inspect_err(|_| Metrics::inc(&m.frames_malformed_total))?;
        if let (Some(seqs), Some(seq)) = (&self.seqs, frame.seq()) {
            let mut seqs = seqs.lock().expect("seqs lock");
            match seqs.get(source) {
                Some(&last) if seq <= last => {
                    Metrics::inc(&m.frames_stale_seq_total);
                    return Ok(Outcome::Dropped {
                        reason: format!("seq {seq} is not above {last}, the last from {source}"),
                    });
                }
                _ => {
                    seqs.insert(source.to_string(), seq);
                }
            }
        }
        let mut event = IndexEvent {
            source: source.to_string(),
            cursor: frame.seq(),
            ..Default::default()
        };
        match frame {
            Frame::Commit(c) => {
                Metrics::inc(&m.commits_total);
                if self.is_inactive(c.repo) {
                    Metrics::inc(&m.commits_inactive_total);
                    return Ok(Outcome::Dropped {
                        reason: format!("commit {} of {}: account not active", c.rev, c.repo),
                    });
                }
                event.time = Some(c.time.to_string());
                event.changes = self
                    .commit_changes(&c)
                    .inspect_err(|_| Metrics::inc(&m.commits_rejected_total))?;
            }
            Frame::Identity(i) => {
                Metrics::inc(&m.identity_events_total);
                if let Some(v) = &self.verifier {
                    v.identity_changed(i.did);
                }
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
                let (_, resync) = self.account_changed(a.did, a.active);
                event.changes.extend(resync);
            }
            Frame::Sync(s) => {
                Metrics::inc(&m.sync_events_total);
                event.time = Some(s.time.to_string());
                event.changes.extend(
                    self.sync_change(&s, bytes)
                        .inspect_err(|_| Metrics::inc(&m.commits_rejected_total))?,
                );
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

    /// Processes one Jetstream JSON event from `source`. Its cursor is the
    /// event's `time_us`. Records are validated like the firehose's; their
    /// CIDs are taken on trust (see `source::jetstream`).
    pub fn process_jetstream(&self, source: &str, bytes: &[u8]) -> Result<Outcome, IngestError> {
        let m = &self.metrics;
        Metrics::inc(&m.frames_total);
        let ev: JetEvent = serde_json::from_slice(bytes).map_err(|e| {
            Metrics::inc(&m.frames_malformed_total);
            IngestError::Frame(FrameError::Body {
                kind: "Jetstream".into(),
                message: e.to_string(),
            })
        })?;
        let mut event = IndexEvent {
            source: source.to_string(),
            cursor: Some(ev.time_us),
            time: chrono::DateTime::from_timestamp_micros(ev.time_us)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            ..Default::default()
        };
        match (ev.kind.as_str(), ev.commit, ev.identity, ev.account) {
            ("commit", Some(_), _, _) if self.is_inactive(&ev.did) => {
                Metrics::inc(&m.commits_total);
                Metrics::inc(&m.commits_inactive_total);
                return Ok(Outcome::Dropped {
                    reason: format!("commit of {}: account not active", ev.did),
                });
            }
            ("commit", Some(c), _, _) => {
                Metrics::inc(&m.commits_total);
                event.changes = self
                    .jetstream_change(&ev.did, c)
                    .inspect_err(|_| Metrics::inc(&m.commits_rejected_total))?
                    .into_iter()
                    .collect();
            }
            ("identity", _, Some(i), _) => {
                Metrics::inc(&m.identity_events_total);
                event.changes.push(Change::Identity {
                    did: ev.did,
                    handle: i.handle,
                });
            }
            ("account", _, _, Some(a)) => {
                Metrics::inc(&m.account_events_total);
                let (_, resync) = self.account_changed(&ev.did, a.active);
                event.changes.push(Change::Account {
                    did: ev.did,
                    active: a.active,
                    status: a.status,
                });
                event.changes.extend(resync);
            }
            (kind, ..) => {
                Metrics::inc(&m.unknown_frames_total);
                tracing::debug!(kind, "Jetstream event kind not handled");
            }
        }
        Ok(Outcome::Event(event))
    }

    fn jetstream_change(&self, did: &str, c: JetCommit) -> Result<Option<Change>, IngestError> {
        let m = &self.metrics;
        if !self.catalog.load().has_record(&c.collection) {
            Metrics::inc(&m.ops_skipped_total);
            return Ok(None);
        }
        let reject = |reason: String| IngestError::CommitRejected {
            seq: 0,
            repo: did.to_string(),
            reason,
        };
        if !is_valid_did(did) {
            return Err(reject(format!("repo {did:?} is not a valid DID")));
        }
        let quarantine = |cid: Option<String>, reason: String, record| {
            Metrics::inc(&m.records_invalid_total);
            Change::Invalid(Quarantined {
                did: did.to_string(),
                collection: c.collection.clone(),
                rkey: c.rkey.clone(),
                cid,
                rev: c.rev.clone(),
                reason,
                record,
            })
        };
        if !is_valid_record_key(&c.rkey) {
            return Ok(Some(quarantine(
                None,
                format!("invalid record key {:?}", c.rkey),
                None,
            )));
        }
        Ok(Some(match c.operation.as_str() {
            "delete" => {
                Metrics::inc(&m.records_deleted_total);
                Change::Delete {
                    did: did.to_string(),
                    collection: c.collection,
                    rkey: c.rkey,
                    rev: c.rev,
                }
            }
            "create" | "update" => {
                let (Some(cid), Some(mut record)) = (c.cid, c.record) else {
                    return Ok(Some(quarantine(
                        None,
                        format!("{} without a cid and record", c.operation),
                        None,
                    )));
                };
                if !crate::syntax::Format::Cid.is_valid(&cid) {
                    return Ok(Some(quarantine(None, format!("invalid cid {cid:?}"), None)));
                }
                crate::decode::value::canonical_key_order(&mut record);
                let catalog = self.catalog.load();
                if let Err(e) = catalog.validate_record(&c.collection, &record) {
                    return Ok(Some(quarantine(Some(cid), e.to_string(), Some(record))));
                }
                Metrics::inc(&m.records_indexed_total);
                let update = c.operation == "update";
                let mut write =
                    RecordWrite::new(did.to_string(), c.collection, c.rkey, cid, c.rev, record);
                write.update = update;
                Change::Put(write)
            }
            other => quarantine(None, format!("unknown operation {other:?}"), None),
        }))
    }

    /// A record block (already hash-checked against `cid`) decoded and
    /// validated: a `Put`, or an `Invalid` with the reason. Counted.
    pub fn record_from_block(
        &self,
        did: &str,
        collection: &str,
        rkey: &str,
        cid: &cid::Cid,
        rev: &str,
        block: &[u8],
    ) -> Change {
        let m = &self.metrics;
        let cid = cid.to_string();
        let quarantine = |reason: String, record| {
            Metrics::inc(&m.records_invalid_total);
            Change::Invalid(Quarantined {
                did: did.to_string(),
                collection: collection.to_string(),
                rkey: rkey.to_string(),
                cid: Some(cid.clone()),
                rev: rev.to_string(),
                reason,
                record,
            })
        };
        let record = match dagcbor_to_json(block) {
            Ok(v) => v,
            Err(e) => return quarantine(format!("record is not valid DAG-CBOR: {e}"), None),
        };
        if let Err(e) = self.catalog.load().validate_record(collection, &record) {
            return quarantine(e.to_string(), Some(record));
        }
        Metrics::inc(&m.records_indexed_total);
        Change::Put(RecordWrite::new(
            did.to_string(),
            collection.to_string(),
            rkey.to_string(),
            cid.clone(),
            rev.to_string(),
            record,
        ))
    }

    /// Whether records of `collection` are indexed (per the current catalog).
    pub fn wants(&self, collection: &str) -> bool {
        self.catalog.load().has_record(collection)
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
            // Not verified (a signature costs ~70 us), but its MST root is
            // remembered so the next verified commit's chain can be checked.
            if let Some(verifier) = &self.verifier {
                let data = read_car(c.blocks)
                    .ok()
                    .and_then(|b| crate::verify::commit_data(b.blocks.get(&c.commit)?).ok());
                verifier.passed_over(c.repo, data);
            }
            return Ok(Vec::new());
        }
        if !is_valid_did(c.repo) {
            return Err(reject(format!("repo {:?} is not a valid DID", c.repo)));
        }
        let needs_blocks =
            self.verifier.is_some() || wanted.iter().any(|(op, ..)| op.action != "delete");
        let blocks = if needs_blocks && !c.blocks.is_empty() {
            read_car(c.blocks)
                .map_err(|e| reject(e.to_string()))?
                .blocks
        } else {
            Default::default()
        };
        // Only commits that touch a loaded collection get here: a signature
        // check costs ~70 us.
        let resync = match &self.verifier {
            Some(verifier) => match self.verify_commit(verifier, c, &blocks)? {
                Checked::Verified { resync } => resync,
                // Nothing of the commit is applied; its repository is
                // resynced (durably requested in the batch that moves the
                // cursor past it), and its later events wait for that.
                Checked::Deferred(resync) => return Ok(vec![resync]),
            },
            None => None,
        };
        let mut changes = Vec::with_capacity(wanted.len());
        let mut missing = false;
        for (op, collection, rkey) in wanted {
            match self.op_change(c, op, collection, rkey, &blocks)? {
                Some(change) => changes.push(change),
                None => missing = true,
            }
        }
        // A tooBig commit's records that the frame does not carry come from
        // the repository itself.
        let resync = match resync {
            None if missing => {
                Metrics::inc(&self.metrics.resyncs_requested_total);
                Some(Change::Resync {
                    did: c.repo.to_string(),
                    reason: format!("tooBig commit {}", c.rev),
                })
            }
            r => r,
        };
        changes.extend(resync);
        Ok(changes)
    }

    /// Verifies a commit that touches a loaded collection (a signature
    /// check costs ~70 us): its signature, DID, rev order and Sync 1.1
    /// proof. A commit whose DID document cannot be had now (the directory
    /// or the did:web host is down or slow) is deferred to a resync of its
    /// repository, never dropped: only a definite failure rejects it.
    fn verify_commit(
        &self,
        verifier: &crate::verify::Verifier,
        c: &Commit<'_>,
        blocks: &BlockMap<'_>,
    ) -> Result<Checked, IngestError> {
        let m = &self.metrics;
        let reject = |reason: String| IngestError::CommitRejected {
            seq: c.seq,
            repo: c.repo.to_string(),
            reason,
        };
        let mut resync = None;
        let checked = blocks
            .get(&c.commit)
            .ok_or_else(|| crate::verify::VerifyError::CommitBlock("missing from the frame".into()))
            .and_then(|block| {
                verify_block(&c.commit, block)
                    .map_err(|e| crate::verify::VerifyError::CommitBlock(e.to_string()))?;
                verifier.verify(&crate::verify::commit_key(c), block, c.repo, c.rev)
            })
            .and_then(|v| {
                if v.proven {
                    return Ok(v);
                }
                crate::verify::proof::check_proof(c, blocks, &v.data).map(|()| v)
            });
        match checked {
            Ok(v) => {
                Metrics::inc(&m.commits_verified_total);
                let chain = verifier.accepted(c.repo, c.rev, v.data, c.prev_data);
                if chain == crate::verify::Chain::Broken {
                    // Applied (it is authentic), and the repo is fetched
                    // whole, since something between was missed.
                    Metrics::inc(&m.resyncs_requested_total);
                    tracing::warn!(
                        repo = c.repo,
                        rev = c.rev,
                        "prevData does not follow the last commit seen: resync"
                    );
                    resync = Some(Change::Resync {
                        did: c.repo.to_string(),
                        reason: format!("broken chain at rev {}", c.rev),
                    });
                }
            }
            Err(crate::verify::VerifyError::Identity(
                crate::identity::IdentityError::Unavailable(why),
            )) => {
                Metrics::inc(&m.commits_deferred_total);
                Metrics::inc(&m.resyncs_requested_total);
                if let Some(more) = DEFERRED_LOG.due() {
                    tracing::warn!(
                        repo = c.repo,
                        rev = c.rev,
                        more_since_last_said = more,
                        "DID document unavailable now: the repository will be resynced ({why})"
                    );
                }
                return Ok(Checked::Deferred(Change::Resync {
                    did: c.repo.to_string(),
                    reason: format!("commit {} deferred: DID document unavailable", c.rev),
                }));
            }
            // Signed, but its ops are not bound to the signed tree (no
            // `prevData`, and the frame lacks the nodes): not trusted, the
            // repository is fetched whole instead.
            Err(crate::verify::VerifyError::Unproven(why)) => {
                Metrics::inc(&m.commits_unproven_total);
                Metrics::inc(&m.resyncs_requested_total);
                tracing::warn!(
                    repo = c.repo,
                    rev = c.rev,
                    "{why}: the repository will be resynced"
                );
                return Ok(Checked::Deferred(Change::Resync {
                    did: c.repo.to_string(),
                    reason: format!("commit {} without a proof of its ops", c.rev),
                }));
            }
            Err(e) => {
                use crate::keys::KeyError as K;
                use crate::verify::VerifyError as V;
                Metrics::inc(match e {
                    V::Key(K::BadSignature | K::HighS | K::SignatureFormat) => {
                        &m.verify_rejected_signature_total
                    }
                    V::DidMismatch { .. } => &m.verify_rejected_identity_total,
                    V::RevMismatch { .. } | V::RevNotNewer { .. } => &m.verify_rejected_rev_total,
                    V::Proof(_) => &m.verify_rejected_proof_total,
                    _ => &m.verify_rejected_other_total,
                });
                return Err(reject(format!("verification failed ({}): {e}", e.reason())));
            }
        }
        Ok(Checked::Verified { resync })
    }

    /// The change one op of a commit makes (None for a record of a tooBig
    /// commit that the frame does not carry).
    fn op_change(
        &self,
        c: &Commit<'_>,
        op: &RepoOp<'_>,
        collection: &str,
        rkey: &str,
        blocks: &BlockMap<'_>,
    ) -> Result<Option<Change>, IngestError> {
        let m = &self.metrics;
        let reject = |reason: String| IngestError::CommitRejected {
            seq: c.seq,
            repo: c.repo.to_string(),
            reason,
        };
        // An invalid record: counted here, kept aside by the writer.
        let quarantine = |reason: String| {
            Metrics::inc(&m.records_invalid_total);
            Some(Change::Invalid(Quarantined {
                did: c.repo.to_string(),
                collection: collection.to_string(),
                rkey: rkey.to_string(),
                cid: None,
                rev: c.rev.to_string(),
                reason,
                record: None,
            }))
        };
        if !is_valid_record_key(rkey) {
            return Ok(quarantine(format!("invalid record key {rkey:?}")));
        }
        match op.action {
            "delete" => {
                Metrics::inc(&m.records_deleted_total);
                Ok(Some(Change::Delete {
                    did: c.repo.to_string(),
                    collection: collection.to_string(),
                    rkey: rkey.to_string(),
                    rev: c.rev.to_string(),
                }))
            }
            "create" | "update" => {
                let Some(cid) = op.cid else {
                    return Ok(quarantine(format!("{} op without a cid", op.action)));
                };
                let Some(block) = blocks.get(&cid) else {
                    if !c.too_big {
                        return Err(reject(format!(
                            "record block {cid} for {} missing from the commit",
                            op.path
                        )));
                    }
                    Metrics::inc(&m.commits_too_big_total);
                    tracing::warn!(
                        repo = c.repo,
                        path = op.path,
                        "tooBig commit: record not in frame"
                    );
                    return Ok(None);
                };
                // The record's bytes must be what its CID says.
                verify_block(&cid, block).map_err(|e| reject(e.to_string()))?;
                let mut change =
                    self.record_from_block(c.repo, collection, rkey, &cid, c.rev, block);
                if let Change::Put(w) = &mut change {
                    w.update = op.action == "update";
                }
                Ok(Some(change))
            }
            other => Ok(quarantine(format!("unknown op action {other:?}"))),
        }
    }

    /// A `#sync` event: the repo's state changed without the commits on the
    /// stream. With a verifier its commit is checked (signature, DID, rev
    /// order) and the repo resynced unless its MST root is the one already
    /// known; without one, the repo is resynced.
    fn sync_change(
        &self,
        s: &crate::decode::frame::Sync<'_>,
        frame: &[u8],
    ) -> Result<Option<Change>, IngestError> {
        let reject = |reason: String| IngestError::CommitRejected {
            seq: s.seq,
            repo: s.did.to_string(),
            reason,
        };
        if !is_valid_did(s.did) {
            return Err(reject(format!("#sync for {:?}: not a valid DID", s.did)));
        }
        if let Some(verifier) = &self.verifier {
            let car = read_car(s.blocks).map_err(|e| reject(e.to_string()))?;
            let root = car
                .roots
                .first()
                .ok_or_else(|| reject("#sync CAR has no root".into()))?;
            let block = car
                .blocks
                .get(root)
                .ok_or_else(|| reject("#sync commit block missing".into()))?;
            verify_block(root, block).map_err(|e| reject(e.to_string()))?;
            match verifier.verify_sync(&crate::verify::frame_key(frame), block, s.did, s.rev) {
                Ok(v) => {
                    let known = verifier.last_data(s.did);
                    verifier.accepted(s.did, s.rev, v.data, None);
                    if known == Some(v.data) {
                        return Ok(None);
                    }
                }
                // Resynced anyway: the snapshot is verified when it is read.
                Err(crate::verify::VerifyError::Identity(
                    crate::identity::IdentityError::Unavailable(_),
                )) => Metrics::inc(&self.metrics.commits_deferred_total),
                Err(e) => {
                    return Err(reject(format!(
                        "#sync verification failed ({}): {e}",
                        e.reason()
                    )))
                }
            }
        }
        Metrics::inc(&self.metrics.resyncs_requested_total);
        Ok(Some(Change::Resync {
            did: s.did.to_string(),
            reason: format!("#sync at rev {}", s.rev),
        }))
    }
}
