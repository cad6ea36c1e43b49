//! Sources yield raw frames with nothing decoded: the firehose over WebSocket
//! (relay or PDS) and recorded frames files. Each runs on its own task and
//! feeds a bounded channel, so a slow writer slows the source down.

pub mod firehose;
pub mod jetstream;
pub mod replay;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

/// A raw message from a source.
#[derive(Debug)]
pub struct RawFrame {
    pub source: std::sync::Arc<str>,
    pub bytes: Vec<u8>,
    pub wire: Wire,
}

/// How a raw message is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// A `subscribeRepos` frame (DAG-CBOR header and body, CAR blocks).
    Firehose,
    /// One Jetstream JSON event.
    Jetstream,
}

/// Where events come from, as given by `--source`.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// `wss://host` or `ws://host[:port]`: `com.atproto.sync.subscribeRepos` of a relay or PDS.
    Firehose { url: String },
    /// `replay:PATH[?rate=N]`: a recorded frames file, optionally paced to N frames/s.
    Replay { path: PathBuf, rate: Option<u32> },
    /// `jetstream+wss://host[/subscribe]`: Jetstream's JSON stream.
    Jetstream { url: String },
}

impl SourceSpec {
    /// The name the source's cursor is stored under: the source without
    /// options that do not change what it delivers (pacing, a starting cursor).
    pub fn id(&self) -> String {
        match self {
            SourceSpec::Firehose { url } => firehose::split_cursor(url).0,
            SourceSpec::Replay { path, .. } => format!("replay:{}", path.display()),
            SourceSpec::Jetstream { url } => format!("jetstream+{}", firehose::split_cursor(url).0),
        }
    }

    /// Parses a `--source` value.
    pub fn parse(s: &str) -> Result<SourceSpec, String> {
        if let Some(rest) = s.strip_prefix("replay:") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let mut rate = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("rate", v)) => {
                        rate = Some(v.parse().map_err(|_| {
                            format!("replay rate must be a positive integer, got {v:?}")
                        })?)
                    }
                    _ => return Err(format!("unknown replay option {pair:?} (known: rate=N)")),
                }
            }
            if path.is_empty() {
                return Err(
                    "replay: needs a file path, e.g. replay:tests/fixtures/frames.bin".into(),
                );
            }
            return Ok(SourceSpec::Replay {
                path: PathBuf::from(path),
                rate,
            });
        }
        if let Some(rest) = s.strip_prefix("jetstream+") {
            return Ok(SourceSpec::Jetstream {
                url: rest.to_string(),
            });
        }
        if s.starts_with("wss://") || s.starts_with("ws://") {
            return Ok(SourceSpec::Firehose { url: s.to_string() });
        }
        Err(format!("unknown source {s:?}: use wss://host (relay or PDS), jetstream+wss://host, or replay:PATH"))
    }
}

/// What a source is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Opening a connection (the first try, or a retry after a failure).
    Connecting,
    /// Connected and receiving.
    Connected,
    /// Not connected; waiting before the next try.
    Disconnected,
    /// A recording that has been read to its end.
    Finished,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
            LinkState::Finished => "finished",
        }
    }
}

/// One source's connection, as `/_health` shows it.
#[derive(Debug, Clone)]
pub struct Link {
    pub state: LinkState,
    /// When the source went up (connected, finished) or down (connecting,
    /// disconnected): retries while down keep it.
    pub since: chrono::DateTime<chrono::Utc>,
    /// Why the last connection failed or ended, if it did.
    pub last_error: Option<String>,
    /// Connection attempts that failed in a row (0 once connected).
    pub failures: u32,
}

/// The connection state of every source, by source id (the id its cursor
/// is stored under).
#[derive(Debug, Default)]
pub struct Links(RwLock<BTreeMap<String, Link>>);

impl Links {
    /// Records that `source` is now in `state`; `error` says why it left
    /// the connected state or failed to reach it.
    pub fn set(&self, source: &str, state: LinkState, error: Option<String>) {
        let mut links = self.0.write().expect("links lock");
        let now = chrono::Utc::now();
        let link = links.entry(source.to_string()).or_insert(Link {
            state,
            since: now,
            last_error: None,
            failures: 0,
        });
        // `since` is when the source went up or down: retries while down
        // (connecting, failing, connecting again) keep it.
        let up = |s: LinkState| matches!(s, LinkState::Connected | LinkState::Finished);
        if up(link.state) != up(state) {
            link.since = now;
        }
        link.state = state;
        match state {
            LinkState::Connected => link.failures = 0,
            LinkState::Disconnected => link.failures = link.failures.saturating_add(1),
            LinkState::Connecting | LinkState::Finished => {}
        }
        if error.is_some() {
            link.last_error = error;
        }
    }

    pub fn get(&self, source: &str) -> Option<Link> {
        self.0.read().expect("links lock").get(source).cloned()
    }

    pub fn snapshot(&self) -> BTreeMap<String, Link> {
        self.0.read().expect("links lock").clone()
    }
}
