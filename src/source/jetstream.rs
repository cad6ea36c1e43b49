//! Jetstream (`jetstream+wss://host`): Bluesky's JSON re-encoding of the
//! firehose. Asks for the loaded collections only (`wantedCollections`),
//! resumes from a `time_us` cursor rewound by [`REWIND_US`] (Jetstream's
//! events are not strictly ordered by time, and another instance assigns other
//! times), and relies on applying an event twice being harmless. Reconnects
//! with the firehose's backoff.
//!
//! What this mode cannot verify: Jetstream sends records as JSON without the
//! signed commit, the MST or the record's DAG-CBOR bytes, so neither the
//! commit signature nor the record's CID can be checked; the index is only as
//! trustworthy as the Jetstream instance. Use a firehose source with
//! verification for an authenticated index.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::firehose::{backoff, split_cursor};
use super::{RawFrame, Wire};
use crate::metrics::Metrics;

/// How far behind the last seen event a (re)connection starts.
pub const REWIND_US: i64 = 2_000_000;

/// Jetstream accepts at most this many `wantedCollections`; with more, the
/// whole stream is requested and filtered locally.
const MAX_WANTED: usize = 100;

/// The subscribe URL: `/subscribe` appended to a bare host, the wanted
/// collections, and the cursor.
pub fn endpoint(url: &str, collections: &[String], cursor: Option<i64>) -> String {
    let base = url.trim_end_matches('/');
    let mut out = if base.contains("/subscribe") {
        base.to_string()
    } else {
        format!("{base}/subscribe")
    };
    let mut query: Vec<String> = Vec::new();
    if collections.len() <= MAX_WANTED {
        query.extend(collections.iter().map(|c| format!("wantedCollections={c}")));
    }
    if let Some(c) = cursor {
        query.push(format!("cursor={c}"));
    }
    if !query.is_empty() {
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&query.join("&"));
    }
    out
}

/// Just the cursor of an event, read without decoding the rest.
#[derive(serde::Deserialize)]
struct Stamp {
    time_us: i64,
}

/// Runs until shutdown: connect, forward every event, reconnect from the last
/// seen `time_us` minus [`REWIND_US`].
pub async fn run(
    source: Arc<str>,
    url: String,
    start_cursor: Option<i64>,
    collections: Vec<String>,
    tx: mpsc::Sender<RawFrame>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (url, initial) = split_cursor(&url);
    let mut last_seen = start_cursor.or(initial);
    let mut attempt = 0u32;
    loop {
        let target = endpoint(
            &url,
            &collections,
            last_seen.map(|c| (c - REWIND_US).max(0)),
        );
        tracing::info!(%target, "connecting to Jetstream");
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio_tungstenite::connect_async(&target) => r,
        };
        match connected {
            Ok((mut ws, _)) => {
                tracing::info!(%target, "Jetstream connected");
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => { let _ = ws.close(None).await; return; }
                        m = ws.next() => m,
                    };
                    let bytes: Vec<u8> = match msg {
                        Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                        Some(Ok(Message::Binary(_))) => {
                            // zstd-compressed events need Jetstream's dictionary,
                            // which this version does not ship: never requested.
                            Metrics::inc(&metrics.frames_malformed_total);
                            tracing::warn!(
                                "binary Jetstream message ignored (compression is not requested)"
                            );
                            continue;
                        }
                        Some(Ok(Message::Close(frame))) => {
                            tracing::warn!(?frame, "Jetstream closed by server");
                            break;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "Jetstream connection error");
                            break;
                        }
                        None => break,
                    };
                    attempt = 0;
                    if let Ok(s) = serde_json::from_slice::<Stamp>(&bytes) {
                        last_seen = Some(last_seen.map_or(s.time_us, |l| l.max(s.time_us)));
                    }
                    let frame = RawFrame {
                        source: source.clone(),
                        bytes,
                        wire: Wire::Jetstream,
                    };
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!(%target, error = %e, "Jetstream connect failed"),
        }
        Metrics::inc(&metrics.reconnects_total);
        let wait = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tracing::info!(?wait, ?last_seen, "reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_asks_for_collections_and_cursor() {
        let c = vec![
            "app.bsky.feed.post".to_string(),
            "app.bsky.feed.like".to_string(),
        ];
        assert_eq!(
            endpoint("wss://jetstream1.us-east.bsky.network", &c, Some(5)),
            "wss://jetstream1.us-east.bsky.network/subscribe?wantedCollections=app.bsky.feed.post&wantedCollections=app.bsky.feed.like&cursor=5"
        );
        assert_eq!(
            endpoint("ws://h:1/subscribe", &[], None),
            "ws://h:1/subscribe"
        );
        let many: Vec<String> = (0..101).map(|i| format!("a.b.c{i}")).collect();
        assert_eq!(endpoint("ws://h", &many, None), "ws://h/subscribe");
    }
}
