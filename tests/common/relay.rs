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
}

/// Starts the server on its own thread and runtime; it lives until the test ends.
pub fn start(frames: Vec<Vec<u8>>, close_after: usize) -> Relay {
    let seqs: Vec<i64> = frames
        .iter()
        .map(|f| {
            lexview::decode::frame::decode_frame(f)
                .expect("frame")
                .seq()
                .expect("seq")
        })
        .collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let frames = Arc::new(frames);
    let seqs = Arc::new(seqs);
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
                let (frames, seqs) = (frames.clone(), seqs.clone());
                tokio::spawn(async move {
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
    Relay { url, connections }
}
