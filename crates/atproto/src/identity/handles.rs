//! Bidirectional handle verification: a handle from an `#identity` event is
//! shown only if the DID document claims it (`alsoKnownAs` holds
//! `at://<handle>`) and the handle points back at the DID, through its DNS
//! TXT record `_atproto.<handle>` (`did=<did>`) or
//! `https://<handle>/.well-known/atproto-did`, or, with `--handle-resolver`,
//! through that service's `com.atproto.identity.resolveHandle` (e.g. a PDS
//! for the handles it hosts, or an AppView one trusts). Otherwise answers
//! show `handle.invalid`, as Bluesky's do.
//!
//! Blocking: run it on a thread of its own (lexview's ingest does, see
//! `ingest::handles`). DNS is hickory-resolver's (the system's
//! configuration).

use std::sync::Arc;
use std::time::Duration;

use super::Resolve;
use crate::net::Trust;

/// How long one lookup may take, and how large its answer may be.
const DEADLINE: Duration = Duration::from_secs(5);
const LIMIT: u64 = 8 * 1024;

/// How a handle is resolved to a DID.
#[derive(Debug, Clone)]
pub enum Via {
    /// DNS TXT, then HTTPS `/.well-known/atproto-did`.
    DnsAndHttps,
    /// `com.atproto.identity.resolveHandle` on this service.
    Service(String),
}

/// Checks handles both ways.
pub struct HandleChecker {
    resolver: Arc<dyn Resolve>,
    via: Via,
    http: crate::net::Http,
    /// DNS lookups, built on first use: on the checking thread, outside any
    /// async runtime. Building it in `new` (called from `serve`'s runtime)
    /// made `block_on` panic with "Cannot start a runtime from within a
    /// runtime" on the default path. `None` inside: DNS could not be set up
    /// (logged once); HTTPS is still tried.
    dns: std::sync::OnceLock<Option<Dns>>,
}

/// A current-thread runtime of its own and hickory's resolver on it.
struct Dns {
    rt: tokio::runtime::Runtime,
    resolver: hickory_resolver::TokioResolver,
}

impl Dns {
    fn new() -> Result<Dns, Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let resolver = rt.block_on(async {
            hickory_resolver::TokioResolver::builder_tokio().map(|b| b.build())
        })?;
        Ok(Dns { rt, resolver })
    }
}

impl HandleChecker {
    /// Safe to call from inside an async runtime: nothing here blocks.
    pub fn new(resolver: Arc<dyn Resolve>, via: Via, http: crate::net::Http) -> HandleChecker {
        HandleChecker {
            resolver,
            via,
            http,
            dns: std::sync::OnceLock::new(),
        }
    }

    /// Whether `handle` is `did`'s, both ways (an undecided check is false).
    pub fn check(&self, did: &str, handle: &str) -> bool {
        matches!(self.verdict(did, handle), Verdict::Valid)
    }

    /// Whether `handle` is `did`'s, both ways, or undecided for now.
    pub fn verdict(&self, did: &str, handle: &str) -> Verdict {
        let handle = handle.to_ascii_lowercase();
        if !crate::syntax::is_valid_handle(&handle) {
            return Verdict::Invalid;
        }
        let aka = match self.resolver.also_known_as(did) {
            Ok(aka) => aka,
            Err(super::IdentityError::Unavailable(why)) => return Verdict::Unknown(why),
            Err(_) => return Verdict::Invalid,
        };
        let claimed = aka.iter().any(|a| {
            a.strip_prefix("at://")
                .is_some_and(|h| h.eq_ignore_ascii_case(&handle))
        });
        if !claimed {
            return Verdict::Invalid;
        }
        match self.resolve_handle(&handle) {
            Ok(Some(found)) if found == did => Verdict::Valid,
            Ok(_) => Verdict::Invalid,
            Err(why) => Verdict::Unknown(why),
        }
    }

    /// The DID a handle names: `Ok(None)` when it names none (or not one),
    /// `Err` when that cannot be told now (a lookup timed out or failed).
    fn resolve_handle(&self, handle: &str) -> Lookup {
        match &self.via {
            Via::Service(url) => {
                let answer = self.http.get_json::<serde_json::Value>(
                    &format!("{url}/xrpc/com.atproto.identity.resolveHandle?handle={handle}"),
                    Trust::Configured,
                    DEADLINE,
                    LIMIT,
                );
                match answer {
                    Ok(v) => Ok(v["did"].as_str().map(str::to_string)),
                    Err(e) if e.is_transient() => Err(e.to_string()),
                    Err(_) => Ok(None),
                }
            }
            Via::DnsAndHttps => match self.dns_txt(handle) {
                Ok(Some(did)) => Ok(Some(did)),
                dns => match (dns, self.well_known(handle)) {
                    (_, Ok(Some(did))) => Ok(Some(did)),
                    (Err(why), _) | (_, Err(why)) => Err(why),
                    (Ok(_), Ok(None)) => Ok(None),
                },
            },
        }
    }

    fn dns_txt(&self, handle: &str) -> Lookup {
        let Some(dns) = self
            .dns
            .get_or_init(|| {
                Dns::new()
                    .inspect_err(|e| {
                        tracing::warn!("no DNS for handle checks (HTTPS is still tried): {e}")
                    })
                    .ok()
            })
            .as_ref()
        else {
            return Ok(None);
        };
        let lookup = match dns
            .rt
            .block_on(dns.resolver.txt_lookup(format!("_atproto.{handle}.")))
        {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(None),
            Err(e) => return Err(format!("DNS: {e}")),
        };
        // Exactly one `did=` record, as the handle spec asks.
        let dids: Vec<String> = lookup
            .iter()
            .map(|txt| txt.to_string())
            .filter_map(|t| t.strip_prefix("did=").map(str::to_string))
            .collect();
        Ok(match dids.as_slice() {
            [did] => Some(did.clone()),
            _ => None,
        })
    }

    fn well_known(&self, handle: &str) -> Lookup {
        let body = match self.http.get_bytes(
            &format!("https://{handle}/.well-known/atproto-did"),
            Trust::Named,
            DEADLINE,
            LIMIT,
        ) {
            Ok(body) => body,
            Err(e) if e.is_transient() => return Err(e.to_string()),
            Err(_) => return Ok(None),
        };
        let did = std::str::from_utf8(&body).unwrap_or_default().trim();
        Ok(crate::syntax::is_valid_did(did).then(|| did.to_string()))
    }
}

/// What a handle lookup found (see [`HandleChecker::resolve_handle`]).
type Lookup = Result<Option<String>, String>;

/// A handle check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The DID document claims the handle and the handle names the DID.
    Valid,
    /// One of the two does not hold.
    Invalid,
    /// Cannot be told now (a directory, DNS or host outage): ask again later.
    Unknown(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolver(aka: &[&str]) -> Arc<dyn Resolve> {
        Arc::new(crate::identity::StaticResolver::from_documents(&json!({
            "did:plc:alice": {"id": "did:plc:alice", "alsoKnownAs": aka}
        })))
    }

    fn http() -> crate::net::Http {
        crate::net::Http::new(false).unwrap()
    }

    /// A `resolveHandle` service on loopback that knows one handle.
    fn service() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/xrpc/com.atproto.identity.resolveHandle",
                    axum::routing::get(
                        |q: axum::extract::Query<std::collections::HashMap<String, String>>| async move {
                            match q.get("handle").map(String::as_str) {
                                Some("alice.test") => {
                                    axum::Json(json!({"did": "did:plc:alice"})).into_response()
                                }
                                _ => axum::http::StatusCode::BAD_REQUEST.into_response(),
                            }
                        },
                    ),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        url
    }

    use axum::response::IntoResponse;

    /// A directory outage decides nothing: the check is asked again later,
    /// not turned into `handle.invalid`.
    #[test]
    fn an_outage_leaves_the_check_undecided() {
        // Nothing listens on port 9 of loopback.
        let resolver = Arc::new(crate::identity::HttpResolver::new(
            "http://127.0.0.1:9",
            Duration::from_secs(3600),
            http(),
        ));
        let checker =
            HandleChecker::new(resolver, Via::Service("http://127.0.0.1:9".into()), http());
        assert!(matches!(
            checker.verdict("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "alice.test"),
            Verdict::Unknown(_)
        ));
        // A handle that is not one is decided at once.
        assert_eq!(
            checker.verdict("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "not a handle"),
            Verdict::Invalid
        );
    }

    #[test]
    fn a_handle_must_be_claimed_by_the_did_and_point_back_at_it() {
        let url = service();
        let via = Via::Service(url);
        let ok = HandleChecker::new(resolver(&["at://alice.test"]), via.clone(), http());
        assert!(ok.check("did:plc:alice", "alice.test"));
        assert!(ok.check("did:plc:alice", "Alice.Test"), "case-insensitive");
        // The document does not claim it.
        let unclaimed = HandleChecker::new(resolver(&["at://other.test"]), via.clone(), http());
        assert!(!unclaimed.check("did:plc:alice", "alice.test"));
        // Claimed, but the handle does not point back (or not at this DID).
        let wrong = HandleChecker::new(resolver(&["at://bob.test"]), via, http());
        assert!(!wrong.check("did:plc:alice", "bob.test"));
        assert!(!ok.check("did:plc:unknown", "alice.test"));
        assert!(!ok.check("did:plc:alice", "not a handle"));
    }
}
