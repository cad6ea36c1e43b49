//! The one HTTP client of atproto lookups: DID documents, handles, and
//! repositories fetched from a PDS.
//!
//! URLs come from two kinds of places. Those the operator configured (the
//! PLC directory, a relay or PDS to backfill from, a handle resolver) are
//! fetched as given ([`Trust::Configured`]). Those the network names (a PDS
//! endpoint in a DID document, a did:web host, a handle's
//! `/.well-known/atproto-did`) could point anywhere, including at the
//! operator's own private services ([`Trust::Named`]): they are fetched
//! over HTTPS only, never from a loopback, private, link-local or otherwise
//! non-public address (checked after DNS, so a name that resolves to one is
//! refused too, and again on every redirect), with at most three
//! redirects. Every answer's body is read up to a size cap, and every
//! request has a deadline.
//!
//! Tests run PDSes and PLC directories on loopback: `allow_private` lets
//! named URLs be plain HTTP on private addresses (an explicit, unsafe flag
//! of the commands).
//!
//! Written here because reqwest offers the pieces (a DNS resolver hook, a
//! redirect policy) but no policy of its own.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Where a URL comes from (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Configured by the operator: fetched as given.
    Configured,
    /// Named by the network: HTTPS to public addresses only.
    Named,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The URL is not one lexview fetches (scheme, address).
    #[error("{url}: refused: {reason}")]
    Refused { url: String, reason: String },
    /// The connection failed, timed out or broke off.
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    /// The answer is larger than the cap for its kind.
    #[error("{url}: the answer is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    /// The answer could not be read or parsed.
    #[error("{url}: {message}")]
    Body { url: String, message: String },
}

impl NetError {
    /// Whether trying again later may succeed: a connection failure or
    /// timeout, a 5xx answer, or 429 (rate limited).
    pub fn is_transient(&self) -> bool {
        match self {
            NetError::Transport { .. } => true,
            NetError::Status { status, .. } => *status == 429 || *status >= 500,
            NetError::Refused { .. } | NetError::TooLarge { .. } | NetError::Body { .. } => false,
        }
    }
}

/// The HTTP client shared by identity resolution, handle checks, resyncs
/// and backfills: one connection pool per kind of trust.
#[derive(Clone)]
pub struct Http {
    configured: reqwest::blocking::Client,
    named: reqwest::blocking::Client,
    allow_private: bool,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

const USER_AGENT: &str = concat!("lexview/", env!("CARGO_PKG_VERSION"));

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Http {
    /// `allow_private`: named URLs may be plain HTTP on private and loopback
    /// addresses (tests only).
    pub fn new(allow_private: bool) -> Result<Http, NetError> {
        let build = |b: reqwest::blocking::ClientBuilder| {
            b.user_agent(USER_AGENT)
                .connect_timeout(CONNECT_TIMEOUT)
                // Deadlines are per request (`get`).
                .timeout(None)
                .build()
                .map_err(|e| NetError::Transport {
                    url: String::new(),
                    message: format!("HTTP client: {e}"),
                })
        };
        let configured = build(
            reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::limited(5)),
        )?;
        let mut named =
            reqwest::blocking::Client::builder().redirect(redirect_policy(allow_private));
        if !allow_private {
            named = named
                .https_only(true)
                .dns_resolver(Arc::new(PublicAddressesOnly));
        }
        Ok(Http {
            configured,
            named: build(named)?,
            allow_private,
        })
    }

    /// Whether named URLs may point at private addresses (tests).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// GETs `url`, which must answer 2xx within `deadline` (the whole
    /// request; the body is read by the caller, see [`Http::get_bytes`]).
    pub fn get(
        &self,
        url: &str,
        trust: Trust,
        deadline: Duration,
    ) -> Result<reqwest::blocking::Response, NetError> {
        let client = match trust {
            Trust::Configured => &self.configured,
            Trust::Named => {
                check_named(url, self.allow_private)?;
                &self.named
            }
        };
        let resp = client
            .get(url)
            .timeout(deadline)
            .send()
            .map_err(|e| NetError::Transport {
                url: url.to_string(),
                message: error_chain(&e),
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(NetError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(resp)
    }

    /// GETs `url` and reads its body, at most `limit` bytes.
    pub fn get_bytes(
        &self,
        url: &str,
        trust: Trust,
        deadline: Duration,
        limit: u64,
    ) -> Result<Vec<u8>, NetError> {
        let resp = self.get(url, trust, deadline)?;
        let mut body = Vec::new();
        read_capped(resp, url, limit, &mut body)?;
        Ok(body)
    }

    /// GETs `url` and parses its body (at most `limit` bytes) as JSON.
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        trust: Trust,
        deadline: Duration,
        limit: u64,
    ) -> Result<T, NetError> {
        let body = self.get_bytes(url, trust, deadline, limit)?;
        serde_json::from_slice(&body).map_err(|e| NetError::Body {
            url: url.to_string(),
            message: format!("not the JSON expected: {e}"),
        })
    }

    /// GETs `url` into the file at `path` (created or truncated), at most
    /// `limit` bytes; returns the bytes written.
    pub fn get_to_file(
        &self,
        url: &str,
        trust: Trust,
        deadline: Duration,
        limit: u64,
        path: &std::path::Path,
    ) -> Result<u64, NetError> {
        let resp = self.get(url, trust, deadline)?;
        let mut file = std::fs::File::create(path).map_err(|e| NetError::Body {
            url: url.to_string(),
            message: format!("{}: {e}", path.display()),
        })?;
        read_capped(resp, url, limit, &mut file)
    }
}

/// Copies at most `limit` bytes of `resp` to `out`; more is an error.
fn read_capped(
    resp: reqwest::blocking::Response,
    url: &str,
    limit: u64,
    out: &mut impl std::io::Write,
) -> Result<u64, NetError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(NetError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let mut capped = resp.take(limit + 1);
    let n = std::io::copy(&mut capped, out).map_err(|e| NetError::Transport {
        url: url.to_string(),
        message: format!("reading the answer: {e}"),
    })?;
    if n > limit {
        return Err(NetError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    Ok(n)
}

/// The error and its causes in one line (reqwest's own message is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A named URL must be HTTPS and must not name a non-public address
/// literally (names are checked when they are resolved).
fn check_named(url: &str, allow_private: bool) -> Result<(), NetError> {
    let refused = |reason: &str| NetError::Refused {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| refused(&e.to_string()))?;
    if allow_private {
        return match parsed.scheme() {
            "https" | "http" => Ok(()),
            _ => Err(refused("only http(s) URLs are fetched")),
        };
    }
    if parsed.scheme() != "https" {
        return Err(refused(
            "only https URLs are fetched from hosts the network names",
        ));
    }
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
            Err(refused("a non-public address"))
        }
        Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
            Err(refused("a non-public address"))
        }
        Some(url::Host::Domain(d)) if is_local_name(d) => Err(refused("a local name")),
        Some(_) => Ok(()),
        None => Err(refused("no host")),
    }
}

/// Names that are local by definition (RFC 6761 and friends).
fn is_local_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h.ends_with(".local")
        || h.ends_with(".internal")
}

/// Redirects of named URLs: at most three, each to a URL a named URL could
/// be.
fn redirect_policy(allow_private: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 3 {
            return attempt.error("more than 3 redirects");
        }
        match check_named(attempt.url().as_str(), allow_private) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e.to_string()),
        }
    })
}

/// Whether `ip` is an address on the public internet: not loopback,
/// private, link-local, shared (CGNAT), unspecified, multicast, broadcast,
/// documentation or reserved, and not an IPv6 form of such an IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            is_public_v6(v6)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (embeds IPv4)
        || s[0] == 0x2002 // 6to4 (embeds IPv4)
        || (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0))
    // IPv4-compatible
}

/// DNS for named URLs: the system's resolver, keeping only public
/// addresses; a name with none is an error.
struct PublicAddressesOnly;

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn named_urls_are_https_to_public_hosts_only() {
        let ok = |u: &str| check_named(u, false).is_ok();
        assert!(ok("https://pds.example.com/xrpc/x"));
        assert!(!ok("http://pds.example.com/xrpc/x"), "plain http");
        assert!(!ok("https://127.0.0.1/"), "loopback literal");
        assert!(!ok("https://[::1]:443/"), "loopback v6 literal");
        assert!(
            !ok("https://169.254.169.254/latest/meta-data"),
            "link-local"
        );
        assert!(!ok("https://10.0.0.1/"), "private");
        assert!(!ok("https://localhost/"), "local name");
        assert!(!ok("https://x.localhost/"), "local name");
        assert!(!ok("file:///etc/passwd"), "scheme");
        // Tests may point named URLs at loopback, explicitly.
        assert!(check_named("http://127.0.0.1:2583/x", true).is_ok());
        assert!(check_named("file:///etc/passwd", true).is_err());
    }

    /// A loopback server is refused to named URLs (by address, and by a
    /// name that resolves to it), while configured URLs reach it; a body
    /// over the cap is an error, not a partial read.
    #[test]
    fn a_fetch_is_refused_before_it_reaches_a_private_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let mut buf = [0u8; 1024];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let body = "x".repeat(100);
                let _ = std::io::Write::write_all(
                    &mut s,
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        let http = Http::new(false).unwrap();
        let deadline = Duration::from_secs(5);
        let url = format!("http://127.0.0.1:{port}/");
        let named = http.get_bytes(&url, Trust::Named, deadline, 1000);
        assert!(matches!(named, Err(NetError::Refused { .. })), "{named:?}");
        let configured = http
            .get_bytes(&url, Trust::Configured, deadline, 1000)
            .unwrap();
        assert_eq!(configured.len(), 100);
        let capped = http.get_bytes(&url, Trust::Configured, deadline, 10);
        assert!(
            matches!(capped, Err(NetError::TooLarge { .. })),
            "{capped:?}"
        );
        // A name that resolves only to loopback has no address to connect to.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let resolved = rt.block_on(reqwest::dns::Resolve::resolve(&PublicAddressesOnly, name));
        let err = resolved.err().expect("localhost is refused").to_string();
        assert!(err.contains("no public address"), "{err}");
        // With the test flag, a named URL may reach loopback.
        let lax = Http::new(true).unwrap();
        assert_eq!(
            lax.get_bytes(&url, Trust::Named, deadline, 1000)
                .unwrap()
                .len(),
            100
        );
    }
}
