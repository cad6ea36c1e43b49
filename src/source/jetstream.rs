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
//!
//! Compressed mode (`compress=true`): with a zstd dictionary (Jetstream's own,
//! `pkg/models/zstd_dictionary` in its repository, later
//! `internal/subscribe/dictionaries/legacy_subscribe.zdict`; `--jetstream-dictionary`),
//! each event arrives as one zstd frame in a binary message, about half the
//! bytes of the JSON. Without a dictionary compression is not requested.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::firehose::{backoff, split_cursor, ws_config, CONNECT_TIMEOUT, IDLE_TIMEOUT};
use super::{LinkState, Links, RawFrame, Wire};
use crate::metrics::Metrics;

/// How far behind the last seen event a (re)connection starts.
pub const REWIND_US: i64 = 2_000_000;

/// Jetstream accepts at most this many `wantedCollections`; with more, the
/// whole stream is requested and filtered locally.
const MAX_WANTED: usize = 100;

/// The largest event accepted from a compressed message, decompressed (a
/// record is at most a few hundred KiB; this stops a decompression bomb).
const MAX_EVENT_BYTES: usize = 16 << 20;

/// A zstd dictionary for Jetstream's compressed mode, checked and loaded once.
#[derive(Clone)]
pub struct Dictionary(Arc<[u8]>);

impl Dictionary {
    /// Reads a dictionary file. Jetstream compresses with a trained
    /// dictionary, which starts with zstd's dictionary magic number; a file
    /// without it is refused rather than silently used as raw content, which
    /// would fail on the first event.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Dictionary> {
        let bytes = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!("reading the Jetstream dictionary {}: {e}", path.display())
        })?;
        anyhow::ensure!(
            bytes.len() > 8 && bytes[..4] == [0x37, 0xA4, 0x30, 0xEC],
            "{} is not a zstd dictionary (no dictionary magic number); Jetstream's is \
             pkg/models/zstd_dictionary in its repository",
            path.display()
        );
        // Fails here, not on the first event, if the tables are corrupt.
        zstd::bulk::Decompressor::with_dictionary(&bytes).map_err(|e| {
            anyhow::anyhow!("loading the Jetstream dictionary {}: {e}", path.display())
        })?;
        Ok(Dictionary(bytes.into()))
    }

    /// A decompressor for one connection (the dictionary's tables are built
    /// once per connection, not per event).
    pub fn inflater(&self) -> std::io::Result<Inflater> {
        Ok(Inflater {
            ctx: zstd::bulk::Decompressor::with_dictionary(&self.0)?,
            buf: Vec::new(),
        })
    }
}

/// Decompresses Jetstream's binary messages, one zstd frame each.
pub struct Inflater {
    ctx: zstd::bulk::Decompressor<'static>,
    buf: Vec<u8>,
}

impl Inflater {
    /// One event's JSON. The frame's declared content size is used when it
    /// has one; otherwise the buffer grows until the event fits, up to
    /// [`MAX_EVENT_BYTES`].
    pub fn inflate(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let too_big = || std::io::Error::other(format!("event over {MAX_EVENT_BYTES} bytes"));
        let declared = zstd::zstd_safe::get_frame_content_size(data)
            .map_err(|_| std::io::Error::other("not a zstd frame"))?;
        let mut capacity = match declared {
            Some(n) if n > MAX_EVENT_BYTES as u64 => return Err(too_big()),
            Some(n) => n as usize,
            None => (data.len() * 8).clamp(64 << 10, MAX_EVENT_BYTES),
        };
        loop {
            self.buf.clear();
            self.buf.reserve(capacity);
            match self.ctx.decompress_to_buffer(data, &mut self.buf) {
                Ok(_) => return Ok(self.buf.clone()),
                Err(e) if declared.is_some() || capacity >= MAX_EVENT_BYTES => {
                    return Err(if declared.is_none() { too_big() } else { e })
                }
                Err(_) => capacity = (capacity * 4).min(MAX_EVENT_BYTES),
            }
        }
    }
}

/// The subscribe URL: `/subscribe` appended to a bare host, the wanted
/// collections, `compress=true` with a dictionary, and the cursor.
pub fn endpoint(url: &str, collections: &[String], compress: bool, cursor: Option<i64>) -> String {
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
    if compress {
        query.push("compress=true".to_string());
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
/// seen `time_us` minus [`REWIND_US`]. With a dictionary, asks for
/// compressed events and decompresses them; a message that does not
/// decompress is counted as malformed and skipped.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    source: Arc<str>,
    url: String,
    start_cursor: Option<i64>,
    collections: Vec<String>,
    dictionary: Option<Dictionary>,
    tx: mpsc::Sender<RawFrame>,
    metrics: Arc<Metrics>,
    links: Arc<Links>,
    shutdown: CancellationToken,
) {
    let (url, initial) = split_cursor(&url);
    let mut last_seen = start_cursor.or(initial);
    let mut attempt = 0u32;
    loop {
        let target = endpoint(
            &url,
            &collections,
            dictionary.is_some(),
            last_seen.map(|c| (c - REWIND_US).max(0)),
        );
        tracing::info!(%target, "connecting to Jetstream");
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
                tracing::info!(%target, "Jetstream connected");
                links.set(&source, LinkState::Connected, None);
                let mut inflater = match dictionary.as_ref().map(Dictionary::inflater).transpose() {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::error!(error = %e, "zstd decompressor");
                        return;
                    }
                };
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
                    let bytes: Vec<u8> = match msg {
                        Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
                        Some(Ok(Message::Binary(data))) => match inflater.as_mut() {
                            Some(inflater) => match inflater.inflate(&data) {
                                Ok(json) => json,
                                Err(e) => {
                                    Metrics::inc(&metrics.frames_malformed_total);
                                    tracing::warn!(error = %e, bytes = data.len(),
                                        "compressed Jetstream message skipped: it does not decompress with the dictionary");
                                    continue;
                                }
                            },
                            None => {
                                Metrics::inc(&metrics.frames_malformed_total);
                                tracing::warn!(
                                    "binary Jetstream message skipped: compression was not requested (no --jetstream-dictionary)"
                                );
                                continue;
                            }
                        },
                        Some(Ok(Message::Close(frame))) => {
                            tracing::warn!(?frame, "Jetstream closed by server");
                            ended = Some("closed by the server".into());
                            break;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "Jetstream connection error");
                            ended = Some(e.to_string());
                            break;
                        }
                        None => {
                            ended = Some("connection ended".into());
                            break;
                        }
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
            Err(e) => {
                tracing::warn!(%target, error = %e, "Jetstream connect failed");
                ended = Some(format!("connect failed: {e}"));
            }
        }
        links.set(&source, LinkState::Disconnected, ended);
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
            endpoint("wss://jetstream1.us-east.bsky.network", &c, false, Some(5)),
            "wss://jetstream1.us-east.bsky.network/subscribe?wantedCollections=app.bsky.feed.post&wantedCollections=app.bsky.feed.like&cursor=5"
        );
        assert_eq!(
            endpoint("ws://h:1/subscribe", &[], true, None),
            "ws://h:1/subscribe?compress=true"
        );
        let many: Vec<String> = (0..101).map(|i| format!("a.b.c{i}")).collect();
        assert_eq!(endpoint("ws://h", &many, false, None), "ws://h/subscribe");
    }

    #[test]
    fn inflates_frames_with_and_without_a_declared_size() {
        let samples: Vec<Vec<u8>> = (0..200)
            .map(|i| {
                format!(r#"{{"did":"did:plc:{i:024}","time_us":{i},"kind":"commit"}}"#).into_bytes()
            })
            .collect();
        let raw = zstd::dict::from_samples(&samples, 4096).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dict");
        std::fs::write(&path, &raw).unwrap();
        let dict = Dictionary::load(&path).unwrap();
        let mut inflater = dict.inflater().unwrap();
        let event = br#"{"did":"did:plc:000000000000000000000007","time_us":7,"kind":"commit"}"#;
        let mut c = zstd::bulk::Compressor::with_dictionary(3, &raw).unwrap();
        assert_eq!(
            inflater.inflate(&c.compress(event).unwrap()).unwrap(),
            event
        );
        // A frame without its content size (as a streaming encoder writes it).
        c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
            .unwrap();
        let big: Vec<u8> = event.repeat(20_000);
        let frame = c.compress(&big).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&frame).unwrap(),
            None
        );
        assert_eq!(inflater.inflate(&frame).unwrap(), big);
        assert!(inflater.inflate(b"not zstd").is_err());
        // A raw file is refused at load, with the reason.
        std::fs::write(&path, b"plain text, not a dictionary").unwrap();
        let err = Dictionary::load(&path).err().unwrap().to_string();
        assert!(err.contains("not a zstd dictionary"), "{err}");
    }
}
