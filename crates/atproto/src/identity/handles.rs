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

    /// Whether `handle` is `did`'s, both ways.
    pub fn check(&self, did: &str, handle: &str) -> bool {
        let handle = handle.to_ascii_lowercase();
        if !crate::syntax::is_valid_handle(&handle) {
            return false;
        }
        let claimed = self.resolver.also_known_as(did).is_ok_and(|aka| {
            aka.iter().any(|a| {
                a.strip_prefix("at://")
                    .is_some_and(|h| h.eq_ignore_ascii_case(&handle))
            })
        });
        claimed && self.resolve_handle(&handle).as_deref() == Some(did)
    }

    /// The DID a handle names, if it can be found.
    fn resolve_handle(&self, handle: &str) -> Option<String> {
        match &self.via {
            Via::Service(url) => {
                let v: serde_json::Value = self
                    .http
                    .get_json(
                        &format!("{url}/xrpc/com.atproto.identity.resolveHandle?handle={handle}"),
                        Trust::Configured,
                        DEADLINE,
                        LIMIT,
                    )
                    .ok()?;
                v["did"].as_str().map(str::to_string)
            }
            Via::DnsAndHttps => self.dns_txt(handle).or_else(|| self.well_known(handle)),
        }
    }

    fn dns_txt(&self, handle: &str) -> Option<String> {
        let dns = self
            .dns
            .get_or_init(|| {
                Dns::new()
                    .inspect_err(|e| {
                        tracing::warn!("no DNS for handle checks (HTTPS is still tried): {e}")
                    })
                    .ok()
            })
            .as_ref()?;
        let lookup = dns
            .rt
            .block_on(dns.resolver.txt_lookup(format!("_atproto.{handle}.")))
            .ok()?;
        // Exactly one `did=` record, as the handle spec asks.
        let dids: Vec<String> = lookup
            .iter()
            .map(|txt| txt.to_string())
            .filter_map(|t| t.strip_prefix("did=").map(str::to_string))
            .collect();
        match dids.as_slice() {
            [did] => Some(did.clone()),
            _ => None,
        }
    }

    fn well_known(&self, handle: &str) -> Option<String> {
        let body = self
            .http
            .get_bytes(
                &format!("https://{handle}/.well-known/atproto-did"),
                Trust::Named,
                DEADLINE,
                LIMIT,
            )
            .ok()?;
        let did = std::str::from_utf8(&body).ok()?.trim();
        crate::syntax::is_valid_did(did).then(|| did.to_string())
    }
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
