//! Commit verification (`--verify full`): the signing key from the repo's DID
//! document, the commit's signature over its unsigned DAG-CBOR encoding, the
//! commit's DID against the event's repo, its rev against the event's and
//! against the last rev seen for the repo, and the Sync 1.1 proof (`proof`:
//! the ops inverted on the MST give `prevData`).

pub mod commit;
pub mod mst;
pub mod proof;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use cid::Cid;

pub use commit::{commit_data, verify_commit, VerifiedCommit};

use crate::identity::{IdentityError, Resolve};
use crate::keys::{KeyError, PublicKey};

/// Why a commit (or a key) was rejected. The variant names are the reasons
/// counted in metrics.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum VerifyError {
    #[error("commit is for {commit}, event is for {repo}")]
    DidMismatch { commit: String, repo: String },
    #[error("commit rev {commit} differs from the event's rev {event}")]
    RevMismatch { commit: String, event: String },
    #[error("rev {rev} is not newer than {last}, the last seen for this repo")]
    RevNotNewer { rev: String, last: String },
    #[error("commit block: {0}")]
    CommitBlock(String),
    #[error("unsupported commit version {0}")]
    Version(u64),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("Sync 1.1 proof: {0}")]
    Proof(String),
    /// The frame does not carry what binds its ops to the signed root.
    #[error("ops not proven: {0}")]
    Unproven(String),
}

impl VerifyError {
    /// A short stable name, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::DidMismatch { .. } => "did_mismatch",
            VerifyError::RevMismatch { .. } => "rev_mismatch",
            VerifyError::RevNotNewer { .. } => "rev_not_newer",
            VerifyError::CommitBlock(_) => "commit_block",
            VerifyError::Version(_) => "commit_version",
            VerifyError::Key(k) => k.reason(),
            VerifyError::Identity(IdentityError::Key(k)) => k.reason(),
            VerifyError::Identity(IdentityError::Resolve(_)) => "resolve",
            VerifyError::Identity(IdentityError::Unavailable(_)) => "unavailable",
            VerifyError::Proof(_) => "proof",
            VerifyError::Unproven(_) => "unproven",
        }
    }
}

/// The SHA-256 of a whole frame.
pub type FrameKey = [u8; 32];

/// The key [`Verifier::precheck`] and [`Verifier::verify`] share for a frame.
pub fn frame_key(frame: &[u8]) -> FrameKey {
    use sha2::Digest;
    sha2::Sha256::digest(frame).into()
}

/// The key of a `#commit` event for [`Verifier::precheck`] and
/// [`Verifier::verify`]: the SHA-256 of everything a check's result depends
/// on, namely the repo, the rev, the commit's CID (its block is
/// content-addressed, so the signature follows), `prevData` and every op;
/// the proof's MST nodes are content-addressed too. Hashing these instead of
/// the whole frame (5 KB on average) saves a few µs per event.
pub fn commit_key(c: &crate::decode::frame::Commit<'_>) -> FrameKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    // Each field length-prefixed, so no two events hash the same input.
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    let cid = |c: &Option<Cid>| c.map(|c| c.to_bytes()).unwrap_or_default();
    field(c.repo.as_bytes());
    field(c.rev.as_bytes());
    field(&c.commit.to_bytes());
    field(&cid(&c.prev_data));
    for op in &c.ops {
        field(op.action.as_bytes());
        field(op.path.as_bytes());
        field(&cid(&op.cid));
        field(&cid(&op.prev));
    }
    h.finalize().into()
}

/// What the verifier remembers of a repo: its last accepted rev and, when
/// the commit carried it, the MST root (`data`) at that rev.
#[derive(Debug, Clone)]
struct RepoHead {
    rev: String,
    data: Option<Cid>,
}

/// Whether a commit continues the repo's chain as the verifier knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Its `prevData` is the data of the last accepted commit.
    Continues,
    /// Nothing to compare (first commit seen, or no `prevData`).
    Unknown,
    /// Its `prevData` is not the last accepted commit's data: commits were
    /// missed (or the repo changed out of band), so the repo needs a resync.
    Broken,
}

/// Verifies commits for the ingest pipeline and remembers each repo's last
/// rev and data CID (in memory: after a restart the first commit of a repo
/// is checked against nothing).
pub struct Verifier {
    resolver: Arc<dyn Resolve>,
    /// The last accepted head per repo, for the most recently active million
    /// repos (~150 MB at most): a repo that fell out is checked against
    /// nothing, as after a restart.
    revs: Mutex<lru::LruCache<String, RepoHead, foldhash::fast::RandomState>>,
    rev_order: bool,
    /// Commits already checked by [`Verifier::precheck`], by [`commit_key`]:
    /// any other event (even one carrying the same commit with other ops or
    /// another prevData) is checked in full. Each with the round that checked
    /// it and the key it was checked with.
    prechecked: Mutex<HashMap<FrameKey, Prechecked, foldhash::fast::RandomState>>,
    /// The newest pre-check round.
    round: std::sync::atomic::AtomicU64,
}

/// A result of [`Verifier::precheck`].
struct Prechecked {
    round: u64,
    key: PublicKey,
    commit: VerifiedCommit,
}

impl Verifier {
    pub fn new(resolver: Box<dyn Resolve>) -> Verifier {
        Verifier::shared(Arc::from(resolver))
    }

    /// A verifier over a resolver others use too (resync shares its cache).
    pub fn shared(resolver: Arc<dyn Resolve>) -> Verifier {
        Verifier {
            resolver,
            revs: Mutex::new(lru::LruCache::with_hasher(
                NonZeroUsize::new(1_000_000).expect("non-zero"),
                foldhash::fast::RandomState::default(),
            )),
            rev_order: true,
            prechecked: Mutex::new(HashMap::default()),
            round: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Without the per-repo rev order and chain checks (benchmarks replaying
    /// one recording in a loop, where every commit comes back).
    pub fn without_rev_order(mut self) -> Verifier {
        self.rev_order = false;
        self
    }

    /// Verifies one commit event's commit block. On a bad signature the
    /// cached key is dropped and the DID resolved again once (the key may
    /// have been rotated).
    /// Checks a commit's signature ahead of [`Verifier::verify`], which then
    /// only checks rev order for it. Pure apart from key resolution, so many
    /// run in parallel; a failure is left for `verify` to find and report.
    /// `proof` checks the commit's Sync 1.1 proof given its MST root; when
    /// it passes too, the result says so and the in-order pass skips it.
    pub fn precheck(
        &self,
        frame: FrameKey,
        block: &[u8],
        repo: &str,
        rev: &str,
        proof: impl FnOnce(&Cid) -> Result<(), VerifyError>,
    ) {
        let Ok(key) = self.resolver.signing_key(repo) else {
            return;
        };
        if let Ok(mut commit) = verify_commit(block, repo, rev, &key) {
            commit.proven = proof(&commit.data).is_ok();
            let round = self.round.load(std::sync::atomic::Ordering::Acquire);
            self.prechecked
                .lock()
                .expect("precheck lock")
                .insert(frame, Prechecked { round, key, commit });
        }
    }

    /// Starts a pre-check round: forgets the results of every round before
    /// the previous one. The previous round's results stay, so its frames can
    /// be handled while the new round is checked.
    pub fn next_round(&self) {
        let round = self.round.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        self.prechecked
            .lock()
            .expect("precheck lock")
            .retain(|_, p| p.round + 1 >= round);
    }

    /// Verifies one commit event's commit block (its frame's key is `frame`);
    /// the caller calls [`Verifier::accepted`] once the rest checks out.
    pub fn verify(
        &self,
        frame: &FrameKey,
        block: &[u8],
        repo: &str,
        rev: &str,
    ) -> Result<VerifiedCommit, VerifyError> {
        self.verify_at(frame, block, repo, rev, false)
    }

    /// As [`Verifier::verify`] for a `#sync` event's commit, which may
    /// restate the repo's current rev (a PDS sends one on reactivation).
    pub fn verify_sync(
        &self,
        frame: &FrameKey,
        block: &[u8],
        repo: &str,
        rev: &str,
    ) -> Result<VerifiedCommit, VerifyError> {
        self.verify_at(frame, block, repo, rev, true)
    }

    fn verify_at(
        &self,
        frame: &FrameKey,
        block: &[u8],
        repo: &str,
        rev: &str,
        same_rev: bool,
    ) -> Result<VerifiedCommit, VerifyError> {
        if let Some(last) = self.revs.lock().expect("revs lock").peek(repo) {
            let stale = match same_rev {
                true => rev < last.rev.as_str(),
                false => rev <= last.rev.as_str(),
            };
            if self.rev_order && stale {
                return Err(VerifyError::RevNotNewer {
                    rev: rev.to_string(),
                    last: last.rev.clone(),
                });
            }
        }
        let key = self.resolver.signing_key(repo)?;
        // A pre-checked result (kept for this round and the next), only if
        // it was checked with the DID's current key: an `#identity` handled
        // while the round was being checked may have replaced it.
        let pre = self
            .prechecked
            .lock()
            .expect("precheck lock")
            .get(frame)
            .filter(|p| p.commit.did == repo && p.commit.rev == rev && p.key == key)
            .map(|p| p.commit.clone());
        if let Some(commit) = pre {
            return Ok(commit);
        }
        let verified = match verify_commit(block, repo, rev, &key) {
            Err(VerifyError::Key(KeyError::BadSignature)) => {
                self.resolver.invalidate(repo);
                let fresh = self.resolver.signing_key(repo)?;
                if fresh == key {
                    return Err(KeyError::BadSignature.into());
                }
                verify_commit(block, repo, rev, &fresh)?
            }
            other => other?,
        };
        Ok(verified)
    }

    /// Records `rev` (with MST root `data`) as the repo's latest, once every
    /// check of its commit passed (a rejected commit must not move the rev
    /// order on), and says whether `prev_data` continued the chain.
    pub fn accepted(&self, repo: &str, rev: &str, data: Cid, prev_data: Option<Cid>) -> Chain {
        let mut revs = self.revs.lock().expect("revs lock");
        let chain = match (revs.peek(repo).and_then(|h| h.data), prev_data) {
            _ if !self.rev_order => Chain::Unknown,
            (Some(last), Some(prev)) if last == prev => Chain::Continues,
            (Some(_), Some(_)) => Chain::Broken,
            _ => Chain::Unknown,
        };
        revs.put(
            repo.to_string(),
            RepoHead {
                rev: rev.to_string(),
                data: Some(data),
            },
        );
        chain
    }

    /// A commit that was not verified (it touches no loaded collection):
    /// its MST root (if it could be read) becomes the one the next commit's
    /// `prevData` is compared with; the rev order stays with verified commits.
    pub fn passed_over(&self, repo: &str, data: Option<Cid>) {
        let mut revs = self.revs.lock().expect("revs lock");
        match revs.get_mut(repo) {
            Some(head) => head.data = data,
            // No verified rev yet: the empty rev orders below every rev.
            None => {
                revs.put(
                    repo.to_string(),
                    RepoHead {
                        rev: String::new(),
                        data,
                    },
                );
            }
        }
    }

    /// The MST root of the repo's last accepted commit, if known.
    pub fn last_data(&self, repo: &str) -> Option<Cid> {
        self.revs.lock().expect("revs lock").peek(repo)?.data
    }

    /// Resolves the keys of these repos ahead of their checks, concurrently.
    pub fn prefetch(&self, repos: &[&str]) {
        self.resolver.prefetch(repos);
    }

    /// The resolver this verifier uses.
    pub fn resolver(&self) -> Arc<dyn Resolve> {
        self.resolver.clone()
    }

    /// An `#identity` event: the DID's key may have changed.
    pub fn identity_changed(&self, did: &str) {
        self.resolver.invalidate(did);
        self.prechecked
            .lock()
            .expect("precheck lock")
            .retain(|_, p| p.commit.did != did);
    }
}
