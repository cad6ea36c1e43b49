//! Commit verification (`--verify full`): the signing key from the repo's DID
//! document, the commit's signature over its unsigned DAG-CBOR encoding
//! (secp256k1 or P-256, compact 64-byte signatures, low-S only), the commit's
//! DID against the event's repo, its rev against the event's and against the
//! last rev seen for the repo.
//!
//! The curve arithmetic is libsecp256k1's (the `secp256k1` crate: a
//! verification costs about half of k256's here, 46-63 µs against 112-118 µs,
//! and signatures decide verified ingest) and p256's, the multibase decoding
//! the `multibase` crate's. What is written here is the atproto glue no crate
//! in this dependency set offers on its own terms: which DID-document entry
//! holds the key (Multikey and the legacy `EcdsaSecp256k1VerificationKey2019`),
//! the unsigned commit bytes, and the low-S rule (the RustCrypto verifiers
//! accept high-S signatures, atproto does not; libsecp256k1 rejects them, and
//! the check here names the reason). jacquard-repo does this too but brings
//! its own stack (see ../shared/DEPENDENCIES.md).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cid::Cid;
use serde_json::Value;

/// Why a commit (or a key) was rejected. The variant names are the reasons
/// counted in metrics.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum VerifyError {
    #[error("signature does not verify against the DID document's key")]
    BadSignature,
    #[error("signature is not low-S")]
    HighS,
    #[error("signature is not 64 bytes (r || s)")]
    SignatureFormat,
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
    #[error("signing key: {0}")]
    Key(String),
    #[error("DID resolution: {0}")]
    Resolve(String),
    #[error("Sync 1.1 proof: {0}")]
    Proof(String),
}

impl VerifyError {
    /// A short stable name, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::BadSignature => "bad_signature",
            VerifyError::HighS => "high_s",
            VerifyError::SignatureFormat => "signature_format",
            VerifyError::DidMismatch { .. } => "did_mismatch",
            VerifyError::RevMismatch { .. } => "rev_mismatch",
            VerifyError::RevNotNewer { .. } => "rev_not_newer",
            VerifyError::CommitBlock(_) => "commit_block",
            VerifyError::Version(_) => "commit_version",
            VerifyError::Key(_) => "key",
            VerifyError::Resolve(_) => "resolve",
            VerifyError::Proof(_) => "proof",
        }
    }
}

// ---- keys ----

/// A repo signing key.
#[derive(Debug, Clone, PartialEq)]
pub enum PublicKey {
    K256(secp256k1::PublicKey),
    P256(p256::ecdsa::VerifyingKey),
}

/// libsecp256k1's verification context (creating one costs nothing since
/// its 0.4, but one is enough).
static SECP256K1: std::sync::LazyLock<secp256k1::Secp256k1<secp256k1::VerifyOnly>> =
    std::sync::LazyLock::new(secp256k1::Secp256k1::verification_only);

/// Multicodec prefixes of the two key types (varint-encoded).
const SECP256K1_PUB: [u8; 2] = [0xe7, 0x01];
const P256_PUB: [u8; 2] = [0x80, 0x24];

fn multibase_bytes(s: &str) -> Result<Vec<u8>, VerifyError> {
    let (base, bytes) =
        multibase::decode(s).map_err(|e| VerifyError::Key(format!("multibase: {e}")))?;
    if base != multibase::Base::Base58Btc {
        return Err(VerifyError::Key(format!("{base:?} is not base58btc")));
    }
    Ok(bytes)
}

impl PublicKey {
    /// A key from SEC1 bytes (compressed or not) of the given curve.
    fn from_sec1(curve_k256: bool, bytes: &[u8]) -> Result<PublicKey, VerifyError> {
        let bad = |e: &dyn std::fmt::Display| VerifyError::Key(format!("not a curve point: {e}"));
        Ok(if curve_k256 {
            // Compressed or uncompressed SEC1 only: libsecp256k1 would also
            // take the "hybrid" 0x06/0x07 form, which no DID document uses.
            match (bytes.len(), bytes.first()) {
                (33, Some(2 | 3)) | (65, Some(4)) => {}
                _ => return Err(bad(&"not a compressed or uncompressed SEC1 key")),
            }
            PublicKey::K256(secp256k1::PublicKey::from_slice(bytes).map_err(|e| bad(&e))?)
        } else {
            PublicKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes).map_err(|e| bad(&e))?)
        })
    }

    /// A `Multikey` value: multibase of the multicodec-prefixed compressed key.
    pub fn from_multikey(s: &str) -> Result<PublicKey, VerifyError> {
        let bytes = multibase_bytes(s)?;
        match bytes.get(..2) {
            Some(p) if p == SECP256K1_PUB => PublicKey::from_sec1(true, &bytes[2..]),
            Some(p) if p == P256_PUB => PublicKey::from_sec1(false, &bytes[2..]),
            _ => Err(VerifyError::Key("unknown multicodec key type".into())),
        }
    }

    /// A `did:key`.
    pub fn from_did_key(did: &str) -> Result<PublicKey, VerifyError> {
        let s = did
            .strip_prefix("did:key:")
            .ok_or_else(|| VerifyError::Key(format!("{did:?} is not a did:key")))?;
        PublicKey::from_multikey(s)
    }

    /// The `#atproto` verification method of a DID document, in the current
    /// (`Multikey`) or legacy (`EcdsaSecp256k1VerificationKey2019`,
    /// `EcdsaSecp256r1VerificationKey2019`: multibase of the bare key) form.
    pub fn from_did_document(doc: &Value) -> Result<PublicKey, VerifyError> {
        let id = doc.get("id").and_then(Value::as_str).unwrap_or_default();
        let methods = doc
            .get("verificationMethod")
            .and_then(Value::as_array)
            .ok_or_else(|| VerifyError::Key("DID document has no verificationMethod".into()))?;
        let method = methods
            .iter()
            .find(|m| {
                let mid = m.get("id").and_then(Value::as_str).unwrap_or_default();
                mid == "#atproto" || mid == format!("{id}#atproto")
            })
            .ok_or_else(|| VerifyError::Key("DID document has no #atproto key".into()))?;
        let multibase = method
            .get("publicKeyMultibase")
            .and_then(Value::as_str)
            .ok_or_else(|| VerifyError::Key("#atproto key has no publicKeyMultibase".into()))?;
        match method.get("type").and_then(Value::as_str) {
            Some("Multikey") => PublicKey::from_multikey(multibase),
            Some("EcdsaSecp256k1VerificationKey2019") => {
                PublicKey::from_sec1(true, &multibase_bytes(multibase)?)
            }
            Some("EcdsaSecp256r1VerificationKey2019") => {
                PublicKey::from_sec1(false, &multibase_bytes(multibase)?)
            }
            other => Err(VerifyError::Key(format!("unsupported key type {other:?}"))),
        }
    }

    /// Verifies an atproto signature over `message` (hashed with SHA-256 by
    /// the verifier): exactly 64 bytes `r || s`, with `s` in the lower half.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
        use p256::ecdsa::signature::Verifier;
        let Ok(compact) = <&[u8; 64]>::try_from(sig) else {
            return Err(VerifyError::SignatureFormat);
        };
        match self {
            PublicKey::K256(key) => {
                let parsed = secp256k1::ecdsa::Signature::from_compact(compact)
                    .map_err(|_| VerifyError::SignatureFormat)?;
                // libsecp256k1 rejects a high-S signature too; this says why.
                let mut low = parsed;
                low.normalize_s();
                if low != parsed {
                    return Err(VerifyError::HighS);
                }
                let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(message).into();
                SECP256K1
                    .verify_ecdsa(secp256k1::Message::from_digest(digest), &parsed, key)
                    .map_err(|_| VerifyError::BadSignature)
            }
            PublicKey::P256(key) => {
                let sig = p256::ecdsa::Signature::from_slice(sig)
                    .map_err(|_| VerifyError::SignatureFormat)?;
                if sig.normalize_s().is_some() {
                    return Err(VerifyError::HighS);
                }
                key.verify(message, &sig)
                    .map_err(|_| VerifyError::BadSignature)
            }
        }
    }
}

// ---- commits ----

/// A signed repo commit (v3; v2 differs only in its version).
#[derive(Debug, serde::Deserialize)]
struct SignedCommit {
    did: String,
    version: u64,
    data: Cid,
    rev: String,
    prev: Option<Cid>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// The commit without `sig`, fields in DAG-CBOR key order (length, then
/// bytes: did, rev, data, prev, version), as it was signed.
#[derive(serde::Serialize)]
struct UnsignedCommit<'a> {
    did: &'a str,
    rev: &'a str,
    data: &'a Cid,
    prev: &'a Option<Cid>,
    version: u64,
}

/// What a verified commit says.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCommit {
    pub did: String,
    pub rev: String,
    pub data: Cid,
    /// The Sync 1.1 proof was checked too (by a pre-check).
    pub proven: bool,
}

/// Checks a commit block's signature with `key` and that it belongs to
/// `repo` at `rev`.
pub fn verify_commit(
    block: &[u8],
    repo: &str,
    rev: &str,
    key: &PublicKey,
) -> Result<VerifiedCommit, VerifyError> {
    let c: SignedCommit = serde_ipld_dagcbor::from_slice(block)
        .map_err(|e| VerifyError::CommitBlock(e.to_string()))?;
    if c.version != 3 && c.version != 2 {
        return Err(VerifyError::Version(c.version));
    }
    if c.did != repo {
        return Err(VerifyError::DidMismatch {
            commit: c.did,
            repo: repo.to_string(),
        });
    }
    if c.rev != rev {
        return Err(VerifyError::RevMismatch {
            commit: c.rev,
            event: rev.to_string(),
        });
    }
    let unsigned = serde_ipld_dagcbor::to_vec(&UnsignedCommit {
        did: &c.did,
        rev: &c.rev,
        data: &c.data,
        prev: &c.prev,
        version: c.version,
    })
    .map_err(|e| VerifyError::CommitBlock(e.to_string()))?;
    key.verify(&unsigned, &c.sig)?;
    Ok(VerifiedCommit {
        did: c.did,
        rev: c.rev,
        data: c.data,
        proven: false,
    })
}

/// The MST root (`data`) of a commit block, unverified.
pub fn commit_data(block: &[u8]) -> Result<Cid, VerifyError> {
    #[derive(serde::Deserialize)]
    struct Data {
        data: Cid,
    }
    serde_ipld_dagcbor::from_slice::<Data>(block)
        .map(|d| d.data)
        .map_err(|e| VerifyError::CommitBlock(e.to_string()))
}

// ---- resolution ----

/// Where signing keys come from.
pub trait Resolve: Send + Sync {
    /// The current signing key of `did`, from a cache or the network.
    fn signing_key(&self, did: &str) -> Result<PublicKey, VerifyError>;
    /// The PDS that hosts `did`'s repository (the DID document's
    /// `#atproto_pds` service), for fetching it with `getRepo`.
    fn pds_endpoint(&self, did: &str) -> Result<String, VerifyError>;
    /// The DID document's `alsoKnownAs` (`at://handle` entries claim handles).
    fn also_known_as(&self, did: &str) -> Result<Vec<String>, VerifyError>;
    /// Forgets what is cached for `did` (an `#identity` event, or a
    /// signature that failed with the cached key).
    fn invalidate(&self, did: &str);
    /// Resolves, ahead of need and concurrently, the DIDs not cached yet.
    fn prefetch(&self, _dids: &[&str]) {}
}

/// The `#atproto_pds` service endpoint of a DID document.
pub fn pds_of_document(doc: &Value) -> Option<String> {
    doc.get("service")?
        .as_array()?
        .iter()
        .find(|s| {
            s.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.ends_with("#atproto_pds"))
        })?
        .get("serviceEndpoint")?
        .as_str()
        .map(|e| e.trim_end_matches('/').to_string())
}

/// Keys from a fixed map of DID documents (tests, benchmarks, offline runs).
pub struct StaticResolver(
    HashMap<String, PublicKey>,
    HashMap<String, String>,
    HashMap<String, Vec<String>>,
);

/// The `alsoKnownAs` entries of a DID document.
pub fn also_known_as_of(doc: &Value) -> Vec<String> {
    doc.get("alsoKnownAs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

impl StaticResolver {
    /// From a JSON object `{did: document}` (like the Jetstream corpus's
    /// `did_docs.json`). Documents without a usable key are left out.
    pub fn from_documents(docs: &Value) -> StaticResolver {
        let keys = docs
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(did, doc)| Some((did.clone(), PublicKey::from_did_document(doc).ok()?)))
            .collect();
        let hosts = docs
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(did, doc)| Some((did.clone(), pds_of_document(doc)?)))
            .collect();
        let names = docs
            .as_object()
            .into_iter()
            .flatten()
            .map(|(did, doc)| (did.clone(), also_known_as_of(doc)))
            .collect();
        StaticResolver(keys, hosts, names)
    }
}

impl StaticResolver {
    /// From a `{did: document}` JSON file (`--did-docs`).
    pub fn from_file(path: &std::path::Path) -> Result<StaticResolver, VerifyError> {
        let bad = |e: &dyn std::fmt::Display| {
            VerifyError::Resolve(format!("--did-docs {}: {e}", path.display()))
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
        let docs: Value = serde_json::from_str(&text).map_err(|e| bad(&e))?;
        Ok(StaticResolver::from_documents(&docs))
    }
}

/// The resolver of `--did-docs FILE` when given, else of `--plc` and did:web
/// (documents cached for an hour, or until the DID's `#identity` event).
pub fn resolver(
    plc: &str,
    did_docs: Option<&std::path::Path>,
) -> Result<Arc<dyn Resolve>, VerifyError> {
    Ok(match did_docs {
        Some(path) => Arc::new(StaticResolver::from_file(path)?),
        None => Arc::new(HttpResolver::new(plc, Duration::from_secs(3600))),
    })
}

impl Resolve for StaticResolver {
    fn signing_key(&self, did: &str) -> Result<PublicKey, VerifyError> {
        self.0
            .get(did)
            .cloned()
            .ok_or_else(|| VerifyError::Resolve(format!("no DID document for {did}")))
    }
    fn pds_endpoint(&self, did: &str) -> Result<String, VerifyError> {
        self.1
            .get(did)
            .cloned()
            .ok_or_else(|| VerifyError::Resolve(format!("no #atproto_pds service for {did}")))
    }
    fn also_known_as(&self, did: &str) -> Result<Vec<String>, VerifyError> {
        self.2
            .get(did)
            .cloned()
            .ok_or_else(|| VerifyError::Resolve(format!("no DID document for {did}")))
    }
    fn invalidate(&self, _did: &str) {}
}

/// did:plc through a PLC directory and did:web through HTTPS, with an lru
/// cache whose entries live `ttl`, and failures remembered for a minute.
/// Blocking: a lookup runs on the thread that needs the key; the ingest
/// thread `prefetch`es a round's unseen DIDs 16 at a time first.
pub struct HttpResolver {
    plc: String,
    client: reqwest::blocking::Client,
    cache: Mutex<lru::LruCache<String, (Instant, Resolved)>>,
    /// DIDs that failed to resolve, not asked again for [`FAILURE_TTL`].
    failed: Mutex<lru::LruCache<String, Instant>>,
    ttl: Duration,
}

impl HttpResolver {
    pub fn new(plc: &str, ttl: Duration) -> HttpResolver {
        HttpResolver {
            plc: plc.trim_end_matches('/').to_string(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .user_agent(concat!("lexview/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("HTTP client"),
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(100_000).expect("non-zero"),
            )),
            failed: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(100_000).expect("non-zero"),
            )),
            ttl,
        }
    }

    /// The URL of a DID's document.
    pub fn document_url(&self, did: &str) -> Result<String, VerifyError> {
        if did.starts_with("did:plc:") {
            Ok(format!("{}/{did}", self.plc))
        } else if let Some(host) = did.strip_prefix("did:web:") {
            if host.contains(':') {
                // A port or a path: not allowed for atproto's did:web.
                return Err(VerifyError::Resolve(format!("unsupported did:web {did}")));
            }
            Ok(format!("https://{host}/.well-known/did.json"))
        } else {
            Err(VerifyError::Resolve(format!(
                "unsupported DID method: {did}"
            )))
        }
    }

    fn fetch(&self, did: &str) -> Result<Resolved, VerifyError> {
        let url = self.document_url(did)?;
        let resp = self
            .client
            .get(&url)
            .send()
            .map_err(|e| VerifyError::Resolve(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(VerifyError::Resolve(format!(
                "{url}: HTTP {}",
                resp.status()
            )));
        }
        let doc: Value = resp
            .json()
            .map_err(|e| VerifyError::Resolve(format!("{url}: {e}")))?;
        if doc.get("id").and_then(Value::as_str) != Some(did) {
            return Err(VerifyError::Resolve(format!(
                "{url}: document is not for {did}"
            )));
        }
        Ok(Resolved {
            key: PublicKey::from_did_document(&doc)?,
            pds: pds_of_document(&doc),
            aka: also_known_as_of(&doc),
        })
    }

    fn resolve(&self, did: &str) -> Result<Resolved, VerifyError> {
        if let Some((at, r)) = self.cache.lock().expect("resolver cache").get(did) {
            if at.elapsed() < self.ttl {
                return Ok(r.clone());
            }
        }
        if let Some(at) = self.failed.lock().expect("resolver failures").get(did) {
            if at.elapsed() < FAILURE_TTL {
                return Err(VerifyError::Resolve(format!(
                    "{did}: failed to resolve less than {} s ago",
                    FAILURE_TTL.as_secs()
                )));
            }
        }
        let r = self.fetch(did).inspect_err(|_| {
            self.failed
                .lock()
                .expect("resolver failures")
                .put(did.to_string(), Instant::now());
        })?;
        self.cache
            .lock()
            .expect("resolver cache")
            .put(did.to_string(), (Instant::now(), r.clone()));
        Ok(r)
    }
}

/// How long a DID that failed to resolve is not asked again.
const FAILURE_TTL: Duration = Duration::from_secs(60);

/// What a DID document says that lexview uses.
#[derive(Debug, Clone)]
struct Resolved {
    key: PublicKey,
    pds: Option<String>,
    aka: Vec<String>,
}

impl Resolve for HttpResolver {
    fn signing_key(&self, did: &str) -> Result<PublicKey, VerifyError> {
        Ok(self.resolve(did)?.key)
    }
    fn pds_endpoint(&self, did: &str) -> Result<String, VerifyError> {
        self.resolve(did)?
            .pds
            .ok_or_else(|| VerifyError::Resolve(format!("{did}: no #atproto_pds service")))
    }
    fn also_known_as(&self, did: &str) -> Result<Vec<String>, VerifyError> {
        Ok(self.resolve(did)?.aka)
    }
    /// Up to 16 lookups at once: on a cold cache (a start on the live
    /// network) a round of frames names hundreds of new DIDs, and one at a
    /// time they would stall the ingest thread for seconds.
    fn prefetch(&self, dids: &[&str]) {
        let mut missing: Vec<&str> = {
            let cache = self.cache.lock().expect("resolver cache");
            let failed = self.failed.lock().expect("resolver failures");
            dids.iter()
                .copied()
                .filter(|d| {
                    cache
                        .peek(*d)
                        .is_none_or(|(at, _)| at.elapsed() >= self.ttl)
                        && failed.peek(*d).is_none_or(|at| at.elapsed() >= FAILURE_TTL)
                })
                .collect()
        };
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let per_thread = missing.len().div_ceil(16);
        std::thread::scope(|s| {
            for chunk in missing.chunks(per_thread) {
                s.spawn(move || {
                    for did in chunk {
                        let _ = self.resolve(did);
                    }
                });
            }
        });
    }
    fn invalidate(&self, did: &str) {
        self.cache.lock().expect("resolver cache").pop(did);
        self.failed.lock().expect("resolver failures").pop(did);
    }
}

// ---- the verifier the pipeline uses ----

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
            Err(VerifyError::BadSignature) => {
                self.resolver.invalidate(repo);
                let fresh = self.resolver.signing_key(repo)?;
                if fresh == key {
                    return Err(VerifyError::BadSignature);
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn the_interop_signature_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/interop/crypto/signature-fixtures.json"
        );
        let vectors: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(vectors.len(), 6);
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        for v in &vectors {
            let message = b64.decode(v["messageBase64"].as_str().unwrap()).unwrap();
            let sig = b64
                .decode(v["signatureBase64"].as_str().unwrap().trim_end_matches('='))
                .unwrap();
            let from_did = PublicKey::from_did_key(v["publicKeyDid"].as_str().unwrap()).unwrap();
            let k256 = v["algorithm"] == "ES256K";
            let raw = multibase_bytes(v["publicKeyMultibase"].as_str().unwrap()).unwrap();
            let from_doc = PublicKey::from_sec1(k256, &raw).unwrap();
            assert_eq!(from_did, from_doc, "{}", v["comment"]);
            let got = from_did.verify(&message, &sig);
            assert_eq!(
                got.is_ok(),
                v["validSignature"].as_bool().unwrap(),
                "{}: {got:?}",
                v["comment"]
            );
            let tags: Vec<&str> = v["tags"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if tags.contains(&"high-s") {
                assert_eq!(got, Err(VerifyError::HighS), "{}", v["comment"]);
            }
            if tags.contains(&"der-encoded") {
                assert_eq!(got, Err(VerifyError::SignatureFormat), "{}", v["comment"]);
            }
        }
    }

    #[test]
    fn failed_lookups_are_not_repeated_for_a_while() {
        // Nothing listens on port 9 of loopback: every lookup fails at once.
        let r = HttpResolver::new("http://127.0.0.1:9", Duration::from_secs(3600));
        r.prefetch(&[
            "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
            "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb",
        ]);
        let e = r
            .signing_key("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
            .unwrap_err();
        assert!(e.to_string().contains("failed to resolve less than"), "{e}");
        // An #identity event clears it: the next lookup goes out again.
        r.invalidate("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa");
        let e = r
            .signing_key("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
            .unwrap_err();
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    }

    #[test]
    fn legacy_and_multikey_documents() {
        let legacy: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/repos/greenground.didDoc.json"
            ))
            .unwrap(),
        )
        .unwrap();
        assert!(matches!(
            PublicKey::from_did_document(&legacy),
            Ok(PublicKey::K256(_))
        ));
        let docs: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/jetstream/did_docs.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let n = docs.as_object().unwrap().len();
        assert_eq!(
            StaticResolver::from_documents(&docs).0.len(),
            n,
            "every production document has a key"
        );
    }
}
