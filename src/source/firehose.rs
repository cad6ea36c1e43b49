//! `com.atproto.sync.subscribeRepos` over WebSocket, from a relay or a PDS.
//! Reconnects with exponential backoff and jitter and resumes from the last
//! seq it handed on (on a fresh start, from the stored cursor).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{LinkState, Links, RawFrame, Wire};
use crate::decode::frame::{peek, Peek};
use crate::metrics::Metrics;

/// How long opening a connection (DNS, TCP, TLS, the WebSocket handshake)
/// may take before it counts as failed and is retried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may stay silent before it is dropped and opened
/// again (a relay that stalls without closing). The live network sends
/// many events a second; a quiet PDS may not, and a reconnect resumes from
/// the last seq, so nothing is lost by it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The largest message a source may send. A relay's frames carry a commit's
/// changed blocks, which the sync spec caps well below this (a bigger commit
/// is sent `tooBig`); a larger message is refused by the WebSocket layer and
/// the connection reopened from the last seq.
pub const MAX_MESSAGE: usize = 5 << 20;

/// The WebSocket settings of every source: messages capped at
/// [`MAX_MESSAGE`].
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The subscribeRepos endpoint for a `--source` URL: a bare host gets the
/// XRPC path appended; a URL that already names it is used as is.
pub fn endpoint(url: &str, cursor: Option<i64>) -> String {
    let base = url.trim_end_matches('/');
    let mut out = if base.contains("/xrpc/") {
        base.to_string()
    } else {
        format!("{base}/xrpc/com.atproto.sync.subscribeRepos")
    };
    if let Some(c) = cursor {
        out.push_str(if out.contains('?') { "&" } else { "?" });
        out.push_str(&format!("cursor={c}"));
    }
    out
}

/// Splits a `cursor=N` query parameter off a source URL: `(url without it, N)`.
/// It is the starting point when the store has no cursor for the source yet.
pub fn split_cursor(url: &str) -> (String, Option<i64>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut cursor = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(
            |kv| match kv.strip_prefix("cursor=").map(str::parse::<i64>) {
                Some(Ok(c)) => {
                    cursor = Some(c);
                    false
                }
                _ => true,
            },
        )
        .collect();
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    (url, cursor)
}

/// Backoff before reconnect attempt `attempt` (0-based): 1 s doubling to 60 s,
/// with ±25 % jitter so that many consumers do not reconnect in step.
pub fn backoff(attempt: u32) -> Duration {
    let base = 1000u64.saturating_mul(1 << attempt.min(6)).min(60_000);
    let jitter = rand::rng().random_range(0.75..1.25);
    Duration::from_millis((base as f64 * jitter) as u64)
}

/// Runs until shutdown: connect, forward every binary message, reconnect.
pub async fn run(
    source: Arc<str>,
    url: String,
    start_cursor: Option<i64>,
    tx: mpsc::Sender<RawFrame>,
    metrics: Arc<Metrics>,
    links: Arc<Links>,
    shutdown: CancellationToken,
) {
    let (url, initial) = split_cursor(&url);
    let mut cursor = start_cursor.or(initial);
    let mut attempt = 0u32;
    loop {
        let target = endpoint(&url, cursor);
        tracing::info!(%target, "connecting to firehose");
        links.set(&source, LinkState::Connecting, None);
        let ended: Option<String>;
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async_with_config(&target, Some(ws_config()), true)) => {
                r.unwrap_or_else(|_| Err(tokio_tungstenite::tungstenite::Error::Io(
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                )))
            }
        };
        match connected {
            Ok((mut ws, _)) => {
                tracing::info!(%target, "firehose connected");
                links.set(&source, LinkState::Connected, None);
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => { let _ = ws.close(None).await; return; }
                        m = tokio::time::timeout(IDLE_TIMEOUT, ws.next()) => match m {
                            Ok(m) => m,
                            Err(_) => {
                                tracing::warn!(%target, "no message for {} s: reconnecting", IDLE_TIMEOUT.as_secs());
                                ended = Some("idle: no message within the idle timeout".into());
                                break;
                            }
                        },
                    };
                    match msg {
                        Some(Ok(Message::Binary(bytes))) => {
                            attempt = 0;
                            // Only the seq and error frames matter here; the
                            // body is decoded downstream, once.
                            match peek(&bytes) {
                                Ok(Peek::Error(e)) => {
                                    if e.error == "FutureCursor" {
                                        // Our cursor is ahead of the server's sequence
                                        // (e.g. a relay reset): continue live.
                                        tracing::warn!(?cursor, "cursor is in the future for this server; resuming live without a cursor");
                                        cursor = None;
                                    }
                                    ended = Some(format!("error frame {}", e.error));
                                    // Handed on (counted and acted on downstream:
                                    // the ingestor forgets the old seq), then
                                    // the connection is opened again.
                                    let _ = tx
                                        .send(RawFrame {
                                            source: source.clone(),
                                            bytes: bytes.to_vec(),
                                            wire: Wire::Firehose,
                                        })
                                        .await;
                                    break;
                                }
                                Ok(Peek::Seq(Some(seq))) => cursor = Some(seq),
                                Ok(Peek::Seq(None)) | Err(_) => {} // counted and reported downstream
                            }
                            if tx
                                .send(RawFrame {
                                    source: source.clone(),
                                    bytes: bytes.to_vec(),
                                    wire: Wire::Firehose,
                                })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            tracing::warn!(?frame, "firehose closed by server");
                            ended = Some("closed by the server".into());
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "firehose connection error");
                            ended = Some(e.to_string());
                            break;
                        }
                        None => {
                            ended = Some("connection ended".into());
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%target, error = %e, "firehose connect failed");
                ended = Some(format!("connect failed: {e}"));
            }
        }
        links.set(&source, LinkState::Disconnected, ended);
        Metrics::inc(&metrics.reconnects_total);
        let wait = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tracing::info!(?wait, ?cursor, "reconnecting");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
