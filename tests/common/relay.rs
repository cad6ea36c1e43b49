//! A tiny `subscribeRepos` server for tests: serves recorded frames with the
//! relay's cursor semantics (frames with seq > cursor) and closes every
//! connection after `close_after` frames, so a consumer must reconnect.
#![allow(dead_code)]
// tungstenite's handshake callback type has a large error variant; not ours to change.
#![allow(clippy::result_large_err)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

pub struct Relay {
    pub url: String,
    pub connections: Arc<AtomicUsize>,
    /// Which set of frames new connections are served (see [`start_sets`]).
    pub set: Arc<AtomicUsize>,
}

/// An error frame (`op: -1`), as a relay sends one before closing.
pub fn error_frame(error: &str, message: &str) -> Vec<u8> {
    let mut f = serde_ipld_dagcbor::to_vec(&serde_json::json!({"op": -1})).unwrap();
    f.extend(
        serde_ipld_dagcbor::to_vec(&serde_json::json!({"error": error, "message": message}))
            .unwrap(),
    );
    f
}

/// `frame` with its `seq` replaced (a relay whose sequence restarted).
pub fn with_seq(frame: &[u8], seq: i64) -> Vec<u8> {
    use ipld_core::ipld::Ipld;
    let n = lexview::decode::frame::cbor_item_len(frame).unwrap();
    let mut body: std::collections::BTreeMap<String, Ipld> =
        serde_ipld_dagcbor::from_slice(&frame[n..]).unwrap();
    body.insert("seq".into(), Ipld::Integer(seq.into()));
    let mut out = frame[..n].to_vec();
    out.extend(serde_ipld_dagcbor::to_vec(&body).unwrap());
    out
}

/// Starts the server on its own thread and runtime; it lives until the test ends.
pub fn start(frames: Vec<Vec<u8>>, close_after: usize) -> Relay {
    start_sets(vec![frames], close_after)
}

/// As [`start`], with several sets of frames: new connections are served
/// the set `Relay::set` names (a relay whose sequence was reset). A cursor
/// past the set's last seq is answered with `FutureCursor`, as a relay
/// answers it.
pub fn start_sets(sets: Vec<Vec<Vec<u8>>>, close_after: usize) -> Relay {
    let sets: Vec<(Vec<Vec<u8>>, Vec<i64>)> = sets
        .into_iter()
        .map(|frames| {
            let seqs = frames
                .iter()
                .map(|f| {
                    lexview::decode::frame::decode_frame(f)
                        .expect("frame")
                        .seq()
                        .expect("seq")
                })
                .collect();
            (frames, seqs)
        })
        .collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let set = Arc::new(AtomicUsize::new(0));
    let which = set.clone();
    let sets = Arc::new(sets);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let (sets, now) = (sets.clone(), which.load(Ordering::SeqCst));
                tokio::spawn(async move {
                    let (frames, seqs) = &sets[now];
                    let mut cursor: Option<i64> = None;
                    let ws = tokio_tungstenite::accept_hdr_async(
                        stream,
                        |req: &Request, resp: Response| {
                            let query = req.uri().query().unwrap_or("");
                            cursor = query
                                .split('&')
                                .find_map(|kv| kv.strip_prefix("cursor="))
                                .and_then(|c| c.parse().ok());
                            Ok(resp)
                        },
                    )
                    .await;
                    let Ok(mut ws) = ws else { return };
                    if cursor.is_some_and(|c| seqs.last().is_some_and(|last| c > *last)) {
                        let frame = error_frame("FutureCursor", "cursor in the future");
                        let _ = ws.send(Message::Binary(frame.into())).await;
                        let _ = ws.close(None).await;
                        return;
                    }
                    let mut sent = 0;
                    for (frame, seq) in frames.iter().zip(seqs.iter()) {
                        if cursor.is_some_and(|c| *seq <= c) {
                            continue;
                        }
                        if ws
                            .send(Message::Binary(frame.clone().into()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        sent += 1;
                        if sent == close_after {
                            let _ = ws.close(None).await;
                            return;
                        }
                    }
                    // Stay open like a quiet live stream.
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
    });
    Relay {
        url,
        connections,
        set,
    }
}
