//! Identity: DID documents (their signing key, PDS endpoint and claimed
//! handles), resolved from a PLC directory or did:web, or read from a file;
//! handles checked both ways (`handles`).

pub mod handles;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::keys::{KeyError, PublicKey};
use crate::net::Trust;

/// Why a DID's document could not be had or used.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum IdentityError {
    /// The document cannot be had now (a timeout, a refused connection, a
    /// 5xx or 429 answer): asking again later may succeed.
    #[error("DID resolution (unavailable for now): {0}")]
    Unavailable(String),
    /// The document does not exist, is not for the DID, or the DID cannot
    /// be resolved at all.
    #[error("DID resolution: {0}")]
    Resolve(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Where signing keys come from.
pub trait Resolve: Send + Sync {
    /// The current signing key of `did`, from a cache or the network.
    fn signing_key(&self, did: &str) -> Result<PublicKey, IdentityError>;
    /// The PDS that hosts `did`'s repository (the DID document's
    /// `#atproto_pds` service), for fetching it with `getRepo`.
    fn pds_endpoint(&self, did: &str) -> Result<String, IdentityError>;
    /// The DID document's `alsoKnownAs` (`at://handle` entries claim handles).
    fn also_known_as(&self, did: &str) -> Result<Vec<String>, IdentityError>;
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
    pub fn from_file(path: &std::path::Path) -> Result<StaticResolver, IdentityError> {
        let bad = |e: &dyn std::fmt::Display| {
            IdentityError::Resolve(format!("--did-docs {}: {e}", path.display()))
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
    http: &crate::net::Http,
) -> Result<Arc<dyn Resolve>, IdentityError> {
    Ok(match did_docs {
        Some(path) => Arc::new(StaticResolver::from_file(path)?),
        None => Arc::new(HttpResolver::new(
            plc,
            Duration::from_secs(3600),
            http.clone(),
        )),
    })
}

impl Resolve for StaticResolver {
    fn signing_key(&self, did: &str) -> Result<PublicKey, IdentityError> {
        self.0
            .get(did)
            .cloned()
            .ok_or_else(|| IdentityError::Resolve(format!("no DID document for {did}")))
    }
    fn pds_endpoint(&self, did: &str) -> Result<String, IdentityError> {
        self.1
            .get(did)
            .cloned()
            .ok_or_else(|| IdentityError::Resolve(format!("no #atproto_pds service for {did}")))
    }
    fn also_known_as(&self, did: &str) -> Result<Vec<String>, IdentityError> {
        self.2
            .get(did)
            .cloned()
            .ok_or_else(|| IdentityError::Resolve(format!("no DID document for {did}")))
    }
    fn invalidate(&self, _did: &str) {}
}

/// did:plc through a PLC directory and did:web through HTTPS, with an lru
/// cache whose entries live `ttl`, and failures remembered for a minute.
/// Blocking: a lookup runs on the thread that needs the key; the ingest
/// thread `prefetch`es a round's unseen DIDs 16 at a time first.
pub struct HttpResolver {
    plc: String,
    http: crate::net::Http,
    cache: Mutex<lru::LruCache<String, (Instant, Resolved)>>,
    /// DIDs that failed to resolve, with the error, not asked again for
    /// [`failure_ttl`].
    failed: Mutex<lru::LruCache<String, (Instant, IdentityError)>>,
    /// When the PLC directory last failed as a whole (a connection or DNS
    /// failure, a 5xx): every did:plc lookup fails at once until
    /// [`DIRECTORY_PAUSE`] has passed, instead of each trying (and waiting
    /// on DNS) again.
    directory_down: Mutex<Option<(Instant, IdentityError)>>,
    ttl: Duration,
}

impl HttpResolver {
    pub fn new(plc: &str, ttl: Duration, http: crate::net::Http) -> HttpResolver {
        HttpResolver {
            plc: plc.trim_end_matches('/').to_string(),
            http,
            directory_down: Mutex::new(None),
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(100_000).expect("non-zero"),
            )),
            failed: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(100_000).expect("non-zero"),
            )),
            ttl,
        }
    }

    /// The URL of a DID's document, and whom it belongs to: the configured
    /// PLC directory, or a did:web host the DID names.
    pub fn document_url(&self, did: &str) -> Result<(String, Trust), IdentityError> {
        if did.starts_with("did:plc:") {
            Ok((format!("{}/{did}", self.plc), Trust::Configured))
        } else if let Some(host) = did.strip_prefix("did:web:") {
            if host.contains(':') || host.contains('/') || host.is_empty() {
                // A port or a path: not allowed for atproto's did:web.
                return Err(IdentityError::Resolve(format!("unsupported did:web {did}")));
            }
            Ok((format!("https://{host}/.well-known/did.json"), Trust::Named))
        } else {
            Err(IdentityError::Resolve(format!(
                "unsupported DID method: {did}"
            )))
        }
    }

    fn fetch(&self, did: &str) -> Result<Resolved, IdentityError> {
        let (url, trust) = self.document_url(did)?;
        let directory = trust == Trust::Configured;
        if directory {
            if let Some((at, e)) = &*self.directory_down.lock().expect("directory state") {
                if at.elapsed() < DIRECTORY_PAUSE {
                    return Err(e.clone());
                }
            }
        }
        let doc: Value = self
            .http
            .get_json(&url, trust, DOCUMENT_DEADLINE, DOCUMENT_LIMIT)
            .map_err(|e| match e.is_transient() {
                true => {
                    let e = IdentityError::Unavailable(e.to_string());
                    if directory {
                        *self.directory_down.lock().expect("directory state") =
                            Some((Instant::now(), e.clone()));
                    }
                    e
                }
                false => IdentityError::Resolve(e.to_string()),
            })?;
        if doc.get("id").and_then(Value::as_str) != Some(did) {
            return Err(IdentityError::Resolve(format!(
                "{url}: document is not for {did}"
            )));
        }
        Ok(Resolved {
            key: PublicKey::from_did_document(&doc)?,
            pds: pds_of_document(&doc),
            aka: also_known_as_of(&doc),
        })
    }

    fn resolve(&self, did: &str) -> Result<Resolved, IdentityError> {
        if let Some((at, r)) = self.cache.lock().expect("resolver cache").get(did) {
            if at.elapsed() < self.ttl {
                return Ok(r.clone());
            }
        }
        if let Some((at, e)) = self.failed.lock().expect("resolver failures").get(did) {
            if at.elapsed() < failure_ttl(e) {
                return Err(e.clone());
            }
        }
        let r = self.fetch(did).inspect_err(|e| {
            self.failed
                .lock()
                .expect("resolver failures")
                .put(did.to_string(), (Instant::now(), e.clone()));
        })?;
        self.cache
            .lock()
            .expect("resolver cache")
            .put(did.to_string(), (Instant::now(), r.clone()));
        Ok(r)
    }
}

/// How long a DID whose resolution failed is not asked again: a minute
/// after a definite answer, a few seconds after an outage (so that work
/// waiting for it resumes soon after the directory is back).
fn failure_ttl(e: &IdentityError) -> Duration {
    match e {
        IdentityError::Unavailable(_) => Duration::from_secs(5),
        _ => Duration::from_secs(60),
    }
}

/// How long the PLC directory is not asked again after it failed as a
/// whole.
const DIRECTORY_PAUSE: Duration = Duration::from_secs(2);

/// How long a DID document may take, and how large it may be.
const DOCUMENT_DEADLINE: Duration = Duration::from_secs(10);
const DOCUMENT_LIMIT: u64 = 256 * 1024;

/// What a DID document says that lexview uses.
#[derive(Debug, Clone)]
struct Resolved {
    key: PublicKey,
    pds: Option<String>,
    aka: Vec<String>,
}

impl Resolve for HttpResolver {
    fn signing_key(&self, did: &str) -> Result<PublicKey, IdentityError> {
        Ok(self.resolve(did)?.key)
    }
    fn pds_endpoint(&self, did: &str) -> Result<String, IdentityError> {
        self.resolve(did)?
            .pds
            .ok_or_else(|| IdentityError::Resolve(format!("{did}: no #atproto_pds service")))
    }
    fn also_known_as(&self, did: &str) -> Result<Vec<String>, IdentityError> {
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
                        && failed
                            .peek(*d)
                            .is_none_or(|(at, e)| at.elapsed() >= failure_ttl(e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_lookups_are_not_repeated_for_a_while() {
        // Nothing listens on port 9 of loopback: every lookup fails at once.
        let r = HttpResolver::new(
            "http://127.0.0.1:9",
            Duration::from_secs(3600),
            crate::net::Http::new(false).unwrap(),
        );
        r.prefetch(&[
            "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
            "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb",
        ]);
        let e = r
            .signing_key("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
            .unwrap_err();
        // Remembered: the same error again (for a few seconds: an outage).
        assert!(matches!(e, IdentityError::Unavailable(_)), "{e}");
        let again = r
            .signing_key("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
            .unwrap_err();
        assert_eq!(again, e);
        // An #identity event clears it: the next lookup goes out again.
        r.invalidate("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa");
        let e = r
            .signing_key("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
            .unwrap_err();
        assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    }

    #[test]
    fn every_production_document_has_a_key() {
        let docs: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/jetstream/did_docs.json"
            ))
            .unwrap(),
        )
        .unwrap();
        let n = docs.as_object().unwrap().len();
        assert_eq!(StaticResolver::from_documents(&docs).0.len(), n);
    }
}
